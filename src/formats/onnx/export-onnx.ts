import {copyFile, readFile, stat, writeFile} from 'node:fs/promises'
import {existsSync} from 'node:fs'
import {join} from 'node:path'
import {GlmtoolError, ModelError} from '../../errors.js'
import type {Arch, ArchId, ModelConfig} from '../../models/index.js'
import {VERSION} from '../../version.js'
import {byteLength, type DType, isFloat, numel} from '../dtype.js'
import {decodeFloats, encodeFloats} from '../dtype-convert.js'
import {assertComplete, checkTensors, openModel} from '../model-dir.js'
import {writeOutputDir} from '../output-dir.js'
import type {TensorEntry} from '../tensor.js'
import {type ChatglmOnnxGraph, decoderIO, type DecoderDims, type DecoderIO, type GraphContext, MASKED} from './chatglm-graph.js'
import {chatglmV1Graph} from './chatglm-v1-graph.js'
import {chatglmV2Graph} from './chatglm-v2-graph.js'
import {ExternalDataWriter, externalRangeOf} from './external-data.js'
import {decodeModel, DEFAULT_OPSET, ELEM, elemTypeOf, GraphBuilder, IR_VERSION, MS_DOMAIN, MS_OPSET} from './onnx-builder.js'

export const ONNX_MODEL_FILE = 'model.onnx'
export const ONNX_DATA_FILE = 'model.onnx.data'
export const ONNX_MANIFEST_FILE = 'glmtool-onnx.json'

const GRAPHS: Record<ArchId, ChatglmOnnxGraph> = {'chatglm-6b': chatglmV1Graph, 'chatglm2-6b': chatglmV2Graph}

export function onnxGraphFor(arch: Arch): ChatglmOnnxGraph {
  return GRAPHS[arch.id]
}

/**
 * Storage dtype of the weights in model.onnx.data.
 *
 * The f16 decision: onnxruntime's CPU provider has no fast float16 GEMM on x86 (MLAS' fp16
 * kernels are ARM64-only; on x86 a float16 MatMul/Gemm either has no kernel or is emulated), so
 * the graph always *computes* in float32. With `F16` the file stores float16 (half the disk
 * size, lossless for the published float16 checkpoints) and every weight is followed by a
 * `Cast` to float32 at its point of use; ORT constant-folds those Casts when the session is
 * created, so a loaded session holds float32 weights and runs float32 kernels: the same speed
 * and the same session memory as an `F32` export of the f16-rounded weights. The embedding
 * table is the exception: it is gathered in its stored dtype and only the S gathered rows are
 * cast, so with `F16` the largest table stays float16 in memory too.
 */
export type OnnxWeightDtype = 'F32' | 'F16'

export interface OnnxExportOptions {
  input: string
  out: string
  /** Undefined: F16 when every weight of the checkpoint is float16, F32 otherwise (bf16 and f32 sources keep their precision). */
  dtype?: OnnxWeightDtype
  force: boolean
  onStart?: (totalBytes: number) => void
  onBytes?: (n: number) => void
  onWarning?: (message: string) => void
}

export interface OnnxManifest {
  format: 'glmtool-onnx'
  version: 1
  architecture: ArchId
  model: string
  data: string
  weights_dtype: 'float32' | 'float16'
  compute_dtype: 'float32'
  ir_version: number
  opset: Record<string, number>
  dims: DecoderDims
  mask: {visible: number, masked: number}
  inputs: DecoderIO['inputs']
  outputs: DecoderIO['outputs']
  graph: string
  ops: Record<string, string>
  glmtool_version: string
}

export interface OnnxExportResult {
  input: string
  out: string
  architecture: ArchId
  dtype: 'f32' | 'f16'
  tensors: number
  bytes: number
  files: string[]
  copied: string[]
  io: DecoderIO
  seconds: number
  peakRssBytes: number
}

const CHUNK_BYTES = 16 * 1024 * 1024
const F16_MAX_FINITE = 65504

/** Bytes of `t` in `to`, chunk by chunk; refuses values that would overflow float16. */
async function* storedChunks(t: TensorEntry, to: DType): AsyncIterable<Buffer> {
  if (t.dtype === to) {
    yield* t.chunks(CHUNK_BYTES)
    return
  }
  for await (const c of t.chunks(CHUNK_BYTES)) {
    const values = decodeFloats(c, t.dtype)
    if (to === 'F16') {
      for (let i = 0; i < values.length; i++) {
        // Values in [65504, 65520) round down to 65504; from 65520 on they would become inf.
        if (Math.abs(values[i]) >= F16_MAX_FINITE + 16 && Number.isFinite(values[i])) {
          throw new GlmtoolError('onnx-f16-overflow', `${t.file}: tensor ${t.name} holds ${values[i]}, beyond float16's range; export with --dtype f32`)
        }
      }
    }
    yield encodeFloats(values, to)
  }
}

/** Files that travel with the graph: config, tokenizer model and tokenizer config. */
function companionFiles(arch: Arch): string[] {
  return ['config.json', arch.tokenizerFile, 'tokenizer_config.json']
}

/**
 * Export a ChatGLM checkpoint (torch directory or glmtool safetensors directory) as one ONNX
 * decoder graph with a KV cache (chatglm-graph.ts has the I/O contract). Weights stream tensor
 * by tensor from the shards into model.onnx.data; model.onnx holds only the graph and
 * initializer metadata, so the model is never in memory whole. Written into a temporary
 * directory that is verified and renamed into place (output-dir.ts).
 */
export async function exportOnnx(opts: OnnxExportOptions): Promise<OnnxExportResult> {
  const started = Date.now()
  const model = await openModel(opts.input)
  try {
    if (!model.dir || !model.arch || !model.config) {
      throw new ModelError(`${opts.input}: ONNX export needs a model directory with config.json, not a single file`, 'not-a-model-dir')
    }
    const {arch, config, dir} = model
    if (config.quantization_bit !== undefined) {
      throw new GlmtoolError('onnx-unsupported', `${opts.input}: quantized checkpoints (quantization_bit ${String(config.quantization_bit)}) cannot be exported to ONNX; export the float16 model`)
    }
    if (config.pre_seq_len !== undefined && config.pre_seq_len !== null) {
      // The graph takes a prefix as extra past K/V (OnnxCpuBackend's PrefixKV), but nothing
      // carries it from a checkpoint into an ONNX directory yet; dropping it silently would
      // change every answer.
      throw new GlmtoolError('onnx-unsupported', `${opts.input}: config.json has pre_seq_len ${String(config.pre_seq_len)} (a P-Tuning v2 prefix); the ONNX export does not carry prefixes yet`)
    }
    const check = checkTensors(arch, config, model.tensors)
    assertComplete(arch, check, opts.input)
    for (const w of model.warnings) opts.onWarning?.(w)
    for (const n of check.extra) opts.onWarning?.(`extra tensor ${n} (not part of ${arch.id}) is not exported`)

    const graph = onnxGraphFor(arch)
    const dims = graph.dims(config)
    const byName = new Map(model.tensors.map(t => [t.name, t]))
    const plan = planGraph(graph, dims, config, byName, opts.dtype)
    const total = plan.weights.reduce((a, t) => a + byteLength(plan.dtype, t.shape), 0) + plan.computed.reduce((a, c) => a + c.data.byteLength, 0)
    opts.onStart?.(total)

    return await writeOutputDir(opts.out, opts.force, async tmp => {
      const writer = await ExternalDataWriter.create(join(tmp, ONNX_DATA_FILE), ONNX_DATA_FILE)
      try {
        for (const t of plan.weights) {
          const len = byteLength(plan.dtype, t.shape)
          plan.builder.initializer(await writer.add(t.name, elemTypeOf(plan.dtype), t.shape, len, storedChunks(t, plan.dtype)))
          opts.onBytes?.(len)
        }
        for (const c of plan.computed) {
          const bytes = Buffer.from(c.data.buffer, c.data.byteOffset, c.data.byteLength)
          plan.builder.initializer(await writer.add(c.name, ELEM.FLOAT, c.dims, bytes.length, (async function* () {
            yield bytes
          })()))
          opts.onBytes?.(bytes.length)
        }
      } finally {
        await writer.close()
      }
      const weightsDtype = plan.dtype === 'F16' ? 'float16' : 'float32'
      const io = decoderIO(dims)
      const modelBytes = plan.builder.toModel({
        graphName: `${arch.id} decoder`,
        producerVersion: VERSION,
        docString: graph.description,
        metadata: {glmtool_architecture: arch.id, glmtool_weights_dtype: weightsDtype},
      })
      await writeFile(join(tmp, ONNX_MODEL_FILE), modelBytes)

      const copied: string[] = []
      for (const f of companionFiles(arch)) {
        if (!existsSync(join(dir, f))) {
          if (f !== 'config.json') opts.onWarning?.(`${f} is missing from ${dir}; the ONNX directory has no ${f}`)
          continue
        }
        await copyFile(join(dir, f), join(tmp, f))
        copied.push(f)
      }
      const manifest: OnnxManifest = {
        format: 'glmtool-onnx',
        version: 1,
        architecture: arch.id,
        model: ONNX_MODEL_FILE,
        data: ONNX_DATA_FILE,
        weights_dtype: weightsDtype,
        compute_dtype: 'float32',
        ir_version: IR_VERSION,
        opset: {'ai.onnx': DEFAULT_OPSET, [MS_DOMAIN]: MS_OPSET},
        dims,
        mask: {visible: 0, masked: MASKED},
        inputs: io.inputs,
        outputs: io.outputs,
        graph: graph.description,
        ops: graph.ops,
        glmtool_version: VERSION,
      }
      await writeFile(join(tmp, ONNX_MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n')
      await verifyOnnxDir(tmp, plan.builder.initializers.length)
      return {
        input: opts.input, out: opts.out, architecture: arch.id, dtype: plan.dtype === 'F16' ? 'f16' : 'f32',
        tensors: plan.weights.length, bytes: total, files: [ONNX_MODEL_FILE, ONNX_DATA_FILE, ONNX_MANIFEST_FILE, ...copied], copied, io,
        seconds: (Date.now() - started) / 1000, peakRssBytes: process.resourceUsage().maxRSS * 1024,
      }
    })
  } finally {
    await model.close()
  }
}

interface GraphPlan {
  builder: GraphBuilder
  dtype: OnnxWeightDtype
  /** Checkpoint tensors the graph uses, in the order it first uses them. */
  weights: TensorEntry[]
  computed: {name: string, dims: readonly number[], data: Float32Array}[]
}

/** Build the graph (no tensor bytes read), recording which tensors it uses. */
function planGraph(graph: ChatglmOnnxGraph, dims: DecoderDims, config: ModelConfig, byName: Map<string, TensorEntry>, requested?: OnnxWeightDtype): GraphPlan {
  const b = new GraphBuilder()
  const used = new Set<string>()
  const asFloat = new Map<string, string>()
  const computed: GraphPlan['computed'] = []
  let dtype: OnnxWeightDtype | undefined = requested
  const source = (name: string): TensorEntry => {
    const t = byName.get(name)
    if (!t) throw new ModelError(`the ${graph.arch} ONNX graph needs tensor ${name}, which the checkpoint lacks`, 'incomplete-model')
    if (!isFloat(t.dtype)) throw new GlmtoolError('onnx-unsupported', `${t.file}: tensor ${name} is ${t.dtype}; ONNX export takes float checkpoints`)
    if (!used.has(name)) {
      used.add(name)
      b.reserve(name)
    }
    return t
  }
  // The storage dtype is decided before any node is added: it changes whether Casts exist.
  if (!dtype) {
    const floats = [...byName.values()].filter(t => isFloat(t.dtype))
    dtype = floats.length > 0 && floats.every(t => t.dtype === 'F16') ? 'F16' : 'F32'
  }
  const storage = dtype
  const ctx: GraphContext = {
    config,
    weight(name) {
      source(name)
      if (storage === 'F32') return name
      let v = asFloat.get(name)
      if (!v) {
        v = b.op('Cast', [name], {to: ELEM.FLOAT})
        asFloat.set(name, v)
      }
      return v
    },
    embed(name, ids) {
      source(name)
      const rows = b.op('Gather', [name, ids], {axis: 0})
      return storage === 'F32' ? rows : b.op('Cast', [rows], {to: ELEM.FLOAT})
    },
    computed(name, shape, data) {
      if (data.length !== numel(shape)) throw new Error(`computed tensor ${name}: ${data.length} values for shape [${shape}]`)
      computed.push({name: b.reserve(name), dims: shape, data})
      return name
    },
  }
  graph.build(b, ctx, dims)
  // Graph order (layer by layer), whatever the source format or shard layout: the same model
  // gives the same model.onnx.data from torch shards or from safetensors.
  const weights = [...used].map(n => byName.get(n)!)
  return {builder: b, dtype: storage, weights, computed}
}

/**
 * Re-open what was written: the protobuf decodes, every initializer's external range lies
 * inside model.onnx.data with the length its dtype and shape need, the graph's inputs and
 * outputs are exactly the manifest's (the runtime's contract). Structural only: running the
 * graph would load the whole model (the tests run it on tiny models).
 */
export async function verifyOnnxDir(dir: string, expectedInitializers?: number): Promise<OnnxManifest> {
  const manifest = await readOnnxManifest(dir)
  const proto = decodeModel(await readFile(join(dir, manifest.model)))
  const dataSize = (await stat(join(dir, manifest.data))).size
  const fail = (why: string) => {
    throw new GlmtoolError('verify-failed', `${join(dir, manifest.model)}: ${why}`)
  }
  const g = proto.graph
  if (!g) return fail('no graph')
  const initializers = g.initializer ?? []
  if (expectedInitializers !== undefined && initializers.length !== expectedInitializers) fail(`${initializers.length} initializers, planned ${expectedInitializers}`)
  const elemSize: Record<number, number> = {[ELEM.FLOAT]: 4, [ELEM.FLOAT16]: 2, [ELEM.BFLOAT16]: 2, [ELEM.INT32]: 4, [ELEM.INT64]: 8}
  for (const t of initializers) {
    const r = externalRangeOf(t)
    if (!r) continue
    const want = numel((t.dims ?? []).map(Number)) * (elemSize[t.dataType ?? 0] ?? NaN)
    if (r.location !== manifest.data) fail(`initializer ${t.name} points to ${r.location}, not ${manifest.data}`)
    if (r.length !== want) fail(`initializer ${t.name} has ${r.length} bytes, its shape needs ${want}`)
    if (r.offset < 0 || r.offset + r.length > dataSize) fail(`initializer ${t.name} [${r.offset}, ${r.offset + r.length}) lies outside ${manifest.data} (${dataSize} bytes)`)
  }
  const names = (xs: readonly {name?: string | null}[] | null | undefined) => (xs ?? []).map(x => x.name ?? '').join(',')
  if (names(g.input) !== names(manifest.inputs)) fail(`graph inputs ${names(g.input)} differ from ${ONNX_MANIFEST_FILE}`)
  if (names(g.output) !== names(manifest.outputs)) fail(`graph outputs ${names(g.output)} differ from ${ONNX_MANIFEST_FILE}`)
  return manifest
}

export async function readOnnxManifest(dir: string): Promise<OnnxManifest> {
  const path = join(dir, ONNX_MANIFEST_FILE)
  let m: OnnxManifest
  try {
    m = JSON.parse(await readFile(path, 'utf8'))
  } catch (error) {
    const e = error as NodeJS.ErrnoException
    throw new ModelError(`${path}: ${e.code === 'ENOENT' ? 'missing; not a glmtool ONNX export (run glmtool convert --to onnx)' : `unreadable (${e.message})`}`, 'not-an-onnx-export')
  }
  if (m.format !== 'glmtool-onnx' || m.version !== 1) throw new ModelError(`${path}: not a glmtool ONNX manifest of version 1`, 'not-an-onnx-export')
  return m
}
