import {readFileSync} from 'node:fs'
import protobuf from 'protobufjs'
import {GlmtoolError} from '../../errors.js'
import type {DType} from '../dtype.js'

/**
 * A small graph builder over ONNX's ModelProto (./onnx.proto, the ONNX project's onnx.proto of
 * onnx 1.12, IR version 8, vendored with its licence header), encoded by protobufjs's reflection
 * (the protobufjs glmtool already uses for SentencePiece; the build copies the .proto into
 * dist/formats/onnx/). It only collects nodes, value infos and initializer *metadata*;
 * initializer bytes live in the external data file (external-data.ts), so a model of any size
 * encodes to a protobuf of a few hundred kilobytes.
 *
 * The interfaces below are the subset of onnx.proto glmtool writes and reads back, with
 * protobufjs's camelCase field names; decoded int64 fields are plain numbers (decodeModel).
 */
export const onnxRoot: protobuf.Root = protobuf.parse(readFileSync(new URL('./onnx.proto', import.meta.url), 'utf8')).root
const ModelProtoType = onnxRoot.lookupType('onnx.ModelProto')
const enumValues = (name: string) => onnxRoot.lookupEnum(name).values

/** Enums of onnx.proto, read from the schema (not retyped). */
export const onnx = {
  TensorProto: {
    DataType: enumValues('onnx.TensorProto.DataType'),
    DataLocation: enumValues('onnx.TensorProto.DataLocation') as {DEFAULT: number, EXTERNAL: number},
  },
  AttributeProto: {
    AttributeType: enumValues('onnx.AttributeProto.AttributeType') as {FLOAT: number, INT: number, STRING: number, INTS: number} & Record<string, number>,
  },
} as const

export interface StringStringEntryProto {key?: string, value?: string}
export interface TensorProto {
  name?: string
  dataType?: number
  dims?: number[]
  rawData?: Uint8Array
  dataLocation?: number
  externalData?: StringStringEntryProto[]
}
export interface AttributeProto {name?: string, type?: number, i?: number, f?: number, s?: Uint8Array, ints?: number[]}
export interface NodeProto {name?: string, opType?: string, domain?: string, input?: string[], output?: string[], attribute?: AttributeProto[]}
export interface TensorShapeDim {dimValue?: number, dimParam?: string}
export interface ValueInfoProto {name?: string, type?: {tensorType?: {elemType?: number, shape?: {dim?: TensorShapeDim[]}}}}
export interface GraphProto {name?: string, node?: NodeProto[], initializer?: TensorProto[], input?: ValueInfoProto[], output?: ValueInfoProto[]}
export interface ModelProto {
  irVersion?: number
  opsetImport?: {domain?: string, version?: number}[]
  producerName?: string
  producerVersion?: string
  docString?: string
  graph?: GraphProto
  metadataProps?: StringStringEntryProto[]
}

/** Encode a ModelProto (plain object, camelCase fields) to model.onnx bytes. */
export function encodeModel(model: ModelProto): Uint8Array {
  const problem = ModelProtoType.verify(model)
  if (problem) throw new GlmtoolError('onnx-encode', `internal error: the ONNX model does not fit onnx.proto (${problem})`)
  return ModelProtoType.encode(model).finish()
}

/** ONNX TensorProto.DataType numbers (onnx.proto). */
export const ELEM = {FLOAT: 1, UINT8: 2, INT8: 3, INT32: 6, INT64: 7, FLOAT16: 10, BFLOAT16: 16} as const
export type ElemType = typeof ELEM[keyof typeof ELEM]

export function elemTypeOf(dtype: DType): ElemType {
  switch (dtype) {
    case 'F32': return ELEM.FLOAT
    case 'F16': return ELEM.FLOAT16
    case 'BF16': return ELEM.BFLOAT16
    case 'I8': return ELEM.INT8
    case 'U8': return ELEM.UINT8
    case 'I32': return ELEM.INT32
    case 'I64': return ELEM.INT64
    default: throw new GlmtoolError('onnx-dtype', `no ONNX export for tensors of dtype ${dtype}`)
  }
}

/** IR version and opsets that onnx 1.12's checker (Debian's python3-onnx) and ORT 1.30 accept. */
export const IR_VERSION = 8
export const DEFAULT_OPSET = 17
export const MS_DOMAIN = 'com.microsoft'
export const MS_OPSET = 1

/**
 * Attribute values: a plain number is an INT attribute, `{float: x}` a FLOAT (so `epsilon: 1`
 * cannot silently become an int), number[] INTS, string STRING.
 */
export type Attr = number | {float: number} | number[] | string
export const float = (x: number): {float: number} => ({float: x})

/** A dimension: a fixed size or a symbolic name (`S`, `past_sequence_length`, ...). */
export type Dim = number | string

function encodeAttr(name: string, v: Attr): AttributeProto {
  const T = onnx.AttributeProto.AttributeType
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new Error(`attribute ${name}: ${v} is not an integer; wrap floats in float()`)
    return {name, type: T.INT, i: v}
  }
  if (typeof v === 'string') return {name, type: T.STRING, s: new TextEncoder().encode(v)}
  if (Array.isArray(v)) return {name, type: T.INTS, ints: v}
  return {name, type: T.FLOAT, f: v.float}
}

export function valueInfo(name: string, elemType: ElemType, dims: readonly Dim[]): ValueInfoProto {
  return {
    name,
    type: {tensorType: {elemType, shape: {dim: dims.map(d => (typeof d === 'number' ? {dimValue: d} : {dimParam: d}))}}},
  }
}

export class GraphBuilder {
  readonly nodes: NodeProto[] = []
  readonly initializers: TensorProto[] = []
  readonly inputs: ValueInfoProto[] = []
  readonly outputs: ValueInfoProto[] = []
  private readonly used = new Set<string>()
  private readonly counters = new Map<string, number>()
  private readonly constants = new Map<string, string>()
  private scopeName = ''

  /** Run `fn` with node and value names prefixed by `name/` (readable graphs, unique names). */
  scope<T>(name: string, fn: () => T): T {
    const saved = this.scopeName
    this.scopeName = saved ? `${saved}/${name}` : name
    try {
      return fn()
    } finally {
      this.scopeName = saved
    }
  }

  /** A value name not used before, derived from `base` and the current scope. */
  fresh(base: string): string {
    const stem = this.scopeName ? `${this.scopeName}/${base}` : base
    let n = this.counters.get(stem) ?? 0
    let name = n === 0 ? stem : `${stem}_${n}`
    while (this.used.has(name)) name = `${stem}_${++n}`
    this.counters.set(stem, n + 1)
    this.used.add(name)
    return name
  }

  private claim(name: string): string {
    if (this.used.has(name)) throw new Error(`ONNX graph: value name ${name} used twice`)
    this.used.add(name)
    return name
  }

  input(name: string, elemType: ElemType, dims: readonly Dim[]): string {
    this.inputs.push(valueInfo(this.claim(name), elemType, dims))
    return name
  }

  /** Declare `value` a graph output named `name` (an Identity is added when the names differ). */
  output(value: string, name: string, elemType: ElemType, dims: readonly Dim[]): void {
    if (value !== name) this.node('Identity', [value], [this.claim(name)])
    this.outputs.push(valueInfo(name, elemType, dims))
  }

  /**
   * Add a node. `outputs` is a count (fresh names from the op type) or explicit names; an empty
   * string in either list is ONNX's "optional input/output not given". Returns the output names.
   */
  node(opType: string, inputs: readonly string[], outputs: number | readonly string[] = 1, attrs: Record<string, Attr> = {}, domain = ''): string[] {
    const outs = typeof outputs === 'number'
      ? Array.from({length: outputs}, () => this.fresh(opType))
      : outputs.map(o => (o === '' ? '' : this.used.has(o) ? o : this.claim(o)))
    const name = this.fresh(`${opType}_node`)
    this.nodes.push({
      name, opType, domain: domain || undefined, input: [...inputs], output: outs,
      attribute: Object.entries(attrs).map(([k, v]) => encodeAttr(k, v)),
    })
    return outs
  }

  /** One-output node. */
  op(opType: string, inputs: readonly string[], attrs: Record<string, Attr> = {}, domain = ''): string {
    return this.node(opType, inputs, 1, attrs, domain)[0]
  }

  /** com.microsoft contrib op with one output. */
  ms(opType: string, inputs: readonly string[], attrs: Record<string, Attr> = {}): string {
    return this.op(opType, inputs, attrs, MS_DOMAIN)
  }

  /** An int64 constant initializer (shapes, axes, indices), shared between uses. */
  int64(values: readonly number[], dims: readonly number[] = [values.length]): string {
    return this.constant(ELEM.INT64, values, dims)
  }

  /** An int32 constant initializer. */
  int32(values: readonly number[], dims: readonly number[] = [values.length]): string {
    return this.constant(ELEM.INT32, values, dims)
  }

  /** A float32 constant initializer, inline in the protobuf (keep these small). */
  float32(values: readonly number[], dims: readonly number[] = [values.length]): string {
    return this.constant(ELEM.FLOAT, values, dims)
  }

  private constant(elemType: ElemType, values: readonly number[], dims: readonly number[]): string {
    const key = `${elemType}:${dims.join('x')}:${values.join(',')}`
    const have = this.constants.get(key)
    if (have) return have
    const name = this.fresh(elemType === ELEM.INT64 ? 'const_i64' : elemType === ELEM.INT32 ? 'const_i32' : 'const_f32')
    let raw: Buffer
    if (elemType === ELEM.INT64) {
      raw = Buffer.alloc(values.length * 8)
      values.forEach((v, i) => raw.writeBigInt64LE(BigInt(v), i * 8))
    } else if (elemType === ELEM.INT32) {
      raw = Buffer.alloc(values.length * 4)
      values.forEach((v, i) => raw.writeInt32LE(v, i * 4))
    } else {
      raw = Buffer.alloc(values.length * 4)
      values.forEach((v, i) => raw.writeFloatLE(v, i * 4))
    }
    this.initializers.push({name, dataType: elemType, dims: [...dims], rawData: raw})
    this.constants.set(key, name)
    return name
  }

  /** Register an initializer whose proto (typically external data) was made elsewhere. */
  initializer(proto: TensorProto): string {
    this.initializers.push(proto)
    return proto.name!
  }

  /** Reserve a name for an initializer that will be added later (external weights). */
  reserve(name: string): string {
    return this.claim(name)
  }

  toModel(opts: {graphName: string, producerVersion: string, docString?: string, metadata?: Record<string, string>}): Uint8Array {
    const model: ModelProto = {
      irVersion: IR_VERSION,
      opsetImport: [{domain: '', version: DEFAULT_OPSET}, {domain: MS_DOMAIN, version: MS_OPSET}],
      producerName: 'glmtool',
      producerVersion: opts.producerVersion,
      docString: opts.docString,
      graph: {
        name: opts.graphName,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
      metadataProps: Object.entries(opts.metadata ?? {}).map(([key, value]) => ({key, value})),
    }
    return encodeModel(model)
  }
}

/**
 * Decode a model.onnx (only metadata when weights are external) for verification: a plain object
 * with int64 fields as numbers and enums as their numbers.
 */
export function decodeModel(bytes: Uint8Array): ModelProto {
  return ModelProtoType.toObject(ModelProtoType.decode(bytes), {longs: Number, enums: Number, defaults: false}) as ModelProto
}
