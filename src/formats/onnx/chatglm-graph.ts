import {decodeFloats, toFloat16Bits} from '../dtype-convert.js'
import type {ArchId, ModelConfig} from '../../models/index.js'
import {type Dim, ELEM, type ElemType, float, type GraphBuilder} from './onnx-builder.js'

/**
 * What every ChatGLM generation's ONNX decoder shares: the I/O contract (one graph with a KV
 * cache, used for both prefill and decode), the sizes a runtime needs, and building blocks
 * (linear layers, embedding, rotary tables, logits head). One module per generation
 * (chatglm-v1-graph.ts, chatglm-v2-graph.ts) implements ChatglmOnnxGraph on top of these.
 *
 * I/O contract (the runtime, src/runtime/backends/onnx-cpu.ts, and the tests rely on it):
 *   inputs   input_ids       int64   [1, S]
 *            position_ids    int64   [1, S] (v2) | [1, 2, S] (v1: position_id, block_position_id)
 *            attention_bias  float32 [1, 1, S, T]  additive: 0 visible, -10000 masked; T = C + S:
 *                                    the C cache-buffer rows, then the S new tokens
 *            logits_index    int64   [K]           rows of the S new positions that get logits
 *            past_key_<i>    float32 [1, Hkv, C, D]  for each layer i (and past_value_<i>): the
 *                                    KV-cache buffer, read in place; rows the cache does not use
 *                                    are masked by attention_bias (C = 0: no cache)
 *   outputs  logits          float32 [1, K, V]
 *            present_key_<i> float32 [1, Hkv, S, D]  this run's K/V rows only (and present_value_<i>),
 *                                    which the runtime appends to its buffer: no run copies the cache (issue 13)
 */

export const MASKED = -10000

export interface DecoderDims {
  readonly arch: ArchId
  readonly layers: number
  readonly hidden: number
  readonly heads: number
  /** Heads of the KV cache: v1 = heads, v2 = multi_query_group_num. */
  readonly kvHeads: number
  readonly headDim: number
  readonly vocab: number
  /** Rows of the rotary cos/sin tables: the largest position id + 1 the graph accepts. */
  readonly maxPositions: number
  /** 1: position_ids [1, S]; 2: [1, 2, S] (v1's 2D positions). */
  readonly positionRows: 1 | 2
}

export interface TensorIO {
  readonly name: string
  readonly dtype: 'int64' | 'float32'
  readonly shape: readonly Dim[]
}

export interface DecoderIO {
  readonly inputs: readonly TensorIO[]
  readonly outputs: readonly TensorIO[]
}

/** The exact graph inputs and outputs for these sizes (also written to glmtool-onnx.json). */
export function decoderIO(d: DecoderDims): DecoderIO {
  const kv = (prefix: string, len: Dim): TensorIO[] => Array.from({length: d.layers}, (_, i) => [
    {name: `${prefix}_key_${i}`, dtype: 'float32' as const, shape: [1, d.kvHeads, len, d.headDim]},
    {name: `${prefix}_value_${i}`, dtype: 'float32' as const, shape: [1, d.kvHeads, len, d.headDim]},
  ]).flat()
  return {
    inputs: [
      {name: 'input_ids', dtype: 'int64', shape: [1, 'S']},
      {name: 'position_ids', dtype: 'int64', shape: d.positionRows === 2 ? [1, 2, 'S'] : [1, 'S']},
      {name: 'attention_bias', dtype: 'float32', shape: [1, 1, 'S', 'T']},
      {name: 'logits_index', dtype: 'int64', shape: ['K']},
      ...kv('past', 'C'),
    ],
    outputs: [
      {name: 'logits', dtype: 'float32', shape: [1, 'K', d.vocab]},
      ...kv('present', 'S'),
    ],
  }
}

/** What a generation's graph needs from the exporter while it builds. */
export interface GraphContext {
  readonly config: ModelConfig
  /** The rotary base the generation's published forward uses (src/models: Arch.ropeBase). */
  readonly rotaryBase: number
  /** A checkpoint tensor as a float32 value (a Cast follows it when stored as f16). */
  weight(name: string): string
  /** Rows `ids` ([S] int64) of an embedding table as float32 [S, H]; the table keeps its stored dtype in memory. */
  embed(name: string, ids: string): string
  /** A float32 table computed by the exporter (rotary cos/sin), stored beside the weights. */
  computed(name: string, dims: readonly number[], data: Float32Array): string
  /**
   * y = x W^T (+ bias) for the checkpoint's linear weight `weight` ([out, in]) and bias tensor:
   * Gemm transB=1 on a float weight, com.microsoft.MatMulNBits on a weight-quantized one.
   */
  linear(x: string, weight: string, bias?: string): string
}

/** The graph's named inputs, declared per decoderIO. */
export interface DecoderInputs {
  readonly inputIds: string
  readonly positionIds: string
  readonly attentionBias: string
  readonly logitsIndex: string
  readonly pastKey: readonly string[]
  readonly pastValue: readonly string[]
}

export interface ChatglmOnnxGraph {
  readonly arch: ArchId
  /** Sizes from config.json; throws a GlmtoolError for configs the graph does not implement. */
  dims(config: ModelConfig): DecoderDims
  /** Build the decoder into `b` (inputs and outputs per decoderIO(dims)). */
  build(b: GraphBuilder, ctx: GraphContext, dims: DecoderDims): void
  /** Build one slice of the decoder into `b` (inputs and outputs per partIO(dims, part, boundary)). */
  buildPart(b: GraphBuilder, ctx: GraphContext, dims: DecoderDims, part: GraphPart): void
  /** Names of the tensors carried from one slice to the next (partIO): v1 the normed hidden state, v2 also the residual. */
  readonly boundary: readonly string[]
  /** One-line description of the compute, recorded in glmtool-onnx.json. */
  readonly description: string
  /** The contrib and standard ops used for each block and why, recorded in glmtool-onnx.json. */
  readonly ops: Record<string, string>
}

const ELEM_OF: Record<TensorIO['dtype'], ElemType> = {int64: ELEM.INT64, float32: ELEM.FLOAT}

/**
 * One slice of the decoder, for runs that hold one layer's weights at a time (quantize's
 * streamed calibration and evaluation, src/pipelines/quantize/streamed-forward.ts): the embedding (and what
 * the whole graph computes before layer 0's first linear), one layer (up to the next layer's
 * first linear), or the logits head. Each slice is built by the same code as the whole graph,
 * so it has the same nodes; only the tensors at the cuts become graph inputs and outputs:
 *   embedding  input_ids [1, S]                                   -> <boundary>_out [S, H]
 *   layer i    <boundary> [S, H], position_ids, attention_bias,
 *              past_key / past_value [1, Hkv, C, D]               -> <boundary>_out [S, H], present_key, present_value
 *   head       <boundary>[0] [S, H], logits_index [K]            -> logits [1, K, V]
 * A head part with `rows` [a, b) holds only those rows of the output layer (its logits [1, K, b - a]
 * are the vocabulary's columns a..b-1), so a runtime can hold the layer a piece at a time.
 */
export type GraphPart = {readonly kind: 'embedding'} | {readonly kind: 'layer', readonly index: number} | {readonly kind: 'head', readonly rows?: readonly [number, number]}

export function partIO(d: DecoderDims, part: GraphPart, boundary: readonly string[]): DecoderIO {
  const state = (suffix: string): TensorIO[] => boundary.map(name => ({name: `${name}${suffix}`, dtype: 'float32' as const, shape: ['S', d.hidden]}))
  const whole = decoderIO(d)
  const named = (name: string) => whole.inputs.find(t => t.name === name)!
  if (part.kind === 'embedding') return {inputs: [named('input_ids')], outputs: state('_out')}
  if (part.kind === 'head') {
    const logits = part.rows ? {...whole.outputs[0], shape: [1, 'K', part.rows[1] - part.rows[0]] as Dim[]} : whole.outputs[0]
    return {inputs: [state('')[0], named('logits_index')], outputs: [logits]}
  }
  const kv = (n: string, len: Dim): TensorIO => ({name: n, dtype: 'float32', shape: [1, d.kvHeads, len, d.headDim]})
  return {
    inputs: [...state(''), named('position_ids'), named('attention_bias'), kv('past_key', 'C'), kv('past_value', 'C')],
    outputs: [...state('_out'), kv('present_key', 'S'), kv('present_value', 'S')],
  }
}

/** Declare a slice's inputs (partIO order); returns their names. */
export function declarePartInputs(b: GraphBuilder, io: DecoderIO): string[] {
  return io.inputs.map(t => b.input(t.name, ELEM_OF[t.dtype], t.shape))
}

/** Declare a slice's outputs (partIO order) from the values that produce them. */
export function declarePartOutputs(b: GraphBuilder, io: DecoderIO, values: readonly string[]): void {
  io.outputs.forEach((t, i) => b.output(values[i], t.name, ELEM_OF[t.dtype], t.shape))
}

export function declareInputs(b: GraphBuilder, d: DecoderDims): DecoderInputs {
  for (const t of decoderIO(d).inputs) b.input(t.name, ELEM_OF[t.dtype], t.shape)
  return {
    inputIds: 'input_ids',
    positionIds: 'position_ids',
    attentionBias: 'attention_bias',
    logitsIndex: 'logits_index',
    pastKey: Array.from({length: d.layers}, (_, i) => `past_key_${i}`),
    pastValue: Array.from({length: d.layers}, (_, i) => `past_value_${i}`),
  }
}

/** Declare the outputs; `logits` [1, K, V] and each layer's present K/V as produced. */
export function declareOutputs(b: GraphBuilder, d: DecoderDims, logits: string, presentKey: readonly string[], presentValue: readonly string[]): void {
  const io = decoderIO(d).outputs
  const values = [logits, ...presentKey.flatMap((k, i) => [k, presentValue[i]])]
  io.forEach((t, i) => b.output(values[i], t.name, ELEM_OF[t.dtype], t.shape))
}

/** y = x W^T (+ bias) for torch's [out, in] weights: Gemm with transB, no transposed copy. */
export function linear(b: GraphBuilder, x: string, weight: string, bias?: string): string {
  return b.op('Gemm', bias ? [x, weight, bias] : [x, weight], {transB: 1})
}

/** input_ids [1, S] -> embedding rows [S, H] float32. */
export function embedTokens(b: GraphBuilder, ctx: GraphContext, table: string, inputIds: string): string {
  const ids = b.op('Reshape', [inputIds, b.int64([-1])])
  return ctx.embed(table, ids)
}

/** Final hidden rows [S, H] -> logits [1, K, V] of the rows in logits_index; `weight` is the checkpoint's output layer. */
export function logitsHead(b: GraphBuilder, ctx: GraphContext, hidden: string, logitsIndex: string, weight: string): string {
  const rows = b.op('Gather', [hidden, logitsIndex], {axis: 0})
  const logits = ctx.linear(rows, weight)
  return b.op('Unsqueeze', [logits, b.int64([0])])
}

/**
 * Attention of the S new tokens over the KV-cache buffer and themselves, reading the buffer in
 * place (issue 13: nothing the size of the cache is copied or written per run).
 *   q [1, S, N*D], k and v [1, S, G*D]: this run's rows, rotary applied (N query heads, G KV heads,
 *     query head h reads KV head h / (N / G): ChatGLM2's multi-query groups; v1: G = N)
 *   pastKey, pastValue [1, G, C, D]: the cache buffer, C rows per head of which the runtime uses
 *     the first ones (prefix, then cached tokens); attentionBias [1, 1, S, C + S] masks the rest
 *   -> attention output [S, N*D] and this run's K/V rows [1, G, S, D], named `presentNames` (the
 *     graph's present outputs, which the runtime writes into the buffer after the run).
 * softmax(q.k / sqrt(D) + bias) over the C buffer columns then the S new ones: com.microsoft.
 * FusedMatMul (transB, alpha = 1/sqrt(D)) of each group's stacked query heads against the buffer
 * as given (no transposed or reshaped copy of it: the two products are the only ops that read
 * it), Concat of the small score blocks, Softmax, and the two value products summed.
 */
export function cacheAttention(b: GraphBuilder, d: DecoderDims, q: string, k: string, v: string, pastKey: string, pastValue: string, attentionBias: string,
  presentNames: readonly [string, string]): {attn: string, presentKey: string, presentValue: string} {
  const {heads: N, kvHeads: G, headDim: D} = d
  const r = N / G
  const alpha = float(1 / Math.sqrt(D))
  // q: [1, S, N*D] -> [1, S, G, r, D] -> [1, G, r, S, D] -> [1, G, r*S, D] (a group's query heads stacked)
  const q5 = b.op('Transpose', [b.op('Reshape', [q, b.int64([1, -1, G, r, D])])], {perm: [0, 2, 3, 1, 4]})
  const qg = b.op('Reshape', [q5, b.int64([1, G, -1, D])])
  // this run's k/v: [1, S, G*D] -> [1, G, S, D] (the present outputs)
  const rows = (t: string, name: string) => b.node('Transpose', [b.op('Reshape', [t, b.int64([1, -1, G, D])])], [name], {perm: [0, 2, 1, 3]})[0]
  const presentKey = rows(k, presentNames[0])
  const presentValue = rows(v, presentNames[1])
  // Scores [1, G, r*S, C + S]: the buffer (used as given: no op but these products touches it) then the new rows.
  const scores = b.op('Concat', [
    b.ms('FusedMatMul', [qg, pastKey], {transB: 1, alpha}),
    b.ms('FusedMatMul', [qg, presentKey], {transB: 1, alpha}),
  ], {axis: -1})
  // + bias [1, 1, S, C + S] per query head: scores viewed as [1, G, r, S, C + S], bias as [1, 1, 1, S, C + S]
  const split = b.op('Concat', [b.int64([1, G, r]), b.op('Shape', [attentionBias], {start: 2})], {axis: 0})
  const biased = b.op('Add', [b.op('Reshape', [scores, split]), b.op('Unsqueeze', [attentionBias, b.int64([2])])])
  const probs = b.op('Reshape', [b.op('Softmax', [biased], {axis: -1}), b.op('Shape', [scores])])
  const c = b.op('Shape', [pastKey], {start: 2, end: 3})
  const last = b.int64([-1])
  const fromCache = b.op('MatMul', [b.op('Slice', [probs, b.int64([0]), c, last]), pastValue])
  const fromNew = b.op('MatMul', [b.op('Slice', [probs, c, b.int64([Number.MAX_SAFE_INTEGER]), last]), presentValue])
  // [1, G, r*S, D] -> [1, G, r, S, D] -> [1, S, G, r, D] -> [S, N*D]
  const heads = b.op('Reshape', [b.op('Add', [fromCache, fromNew]), b.int64([1, G, r, -1, D])])
  const attn = b.op('Reshape', [b.op('Transpose', [heads], {perm: [0, 3, 1, 2, 4]}), b.int64([-1, N * D])])
  return {attn, presentKey, presentValue}
}

/** The present output names of a layer's past inputs: past_key_<i> -> present_key_<i> (a slice's past_key -> present_key). */
export function presentNames(pastKey: string, pastValue: string): [string, string] {
  return [pastKey.replace(/^past_/, 'present_'), pastValue.replace(/^past_/, 'present_')]
}

/** float32 zeros of `like`'s shape (a zero skip input); ConstantOfShape defaults to float32 0. */
export function zerosLike(b: GraphBuilder, like: string): string {
  return b.op('ConstantOfShape', [b.op('Shape', [like])])
}

export const eps = (config: ModelConfig): {float: number} => float(Number(config.layernorm_epsilon ?? 1e-5))

/**
 * cos/sin tables [rows, rotaryDim/2] of a rotary embedding with rotary dimension `rotaryDim`:
 * theta_j = 1 / base^(2j / rotaryDim) (base 10000, or ChatGLM3-6B-32k's 10000 * rope_ratio:
 * the generation module's ropeBase), angle = position * theta_j, as the reference computes
 * them in float32: theta from float32 operands (`1. / base ** (arange(0, dim, 2).float() / dim)`),
 * the angle a float32 product (`torch.outer` / einsum of float32 tensors), cos and sin of that
 * float32 angle, rounded to float32. `thetaAsFloat16`: theta rounded to float16 first, as v1's
 * published RotaryEmbedding does (`inv_freq.half()` in __init__, whatever dtype the model
 * then runs in; test/reference/chatglm_ref.py note 1).
 */
export function rotaryTables(rows: number, rotaryDim: number, opts: {thetaAsFloat16?: boolean, base?: number} = {}): {cos: Float32Array, sin: Float32Array} {
  const half = rotaryDim / 2
  const f = Math.fround
  const base = opts.base ?? 10000
  const theta = Array.from({length: half}, (_, j) => {
    const t = f(1 / f(base ** f((2 * j) / rotaryDim)))
    return opts.thetaAsFloat16 ? float16Round(t) : t
  })
  const cos = new Float32Array(rows * half)
  const sin = new Float32Array(rows * half)
  for (let p = 0; p < rows; p++) {
    for (let j = 0; j < half; j++) {
      const angle = f(f(p) * theta[j])
      cos[p * half + j] = Math.cos(angle)
      sin[p * half + j] = Math.sin(angle)
    }
  }
  return {cos, sin}
}

function float16Round(x: number): number {
  const b = Buffer.alloc(2)
  b.writeUInt16LE(toFloat16Bits(x))
  return decodeFloats(b, 'F16')[0]
}
