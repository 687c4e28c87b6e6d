import type {Arch, ModelConfig} from '../models/index.js'
import type {ModelDims} from '../models/arch.js'

/**
 * Where each quantized linear's activation-aware input scaling (AWQ, calibrate.ts) can be folded
 * so that the model computes exactly the same function before quantization: y = x W^T =
 * (x / s)(W diag(s))^T, with x / s produced by the op before the linear. Per generation
 * (docs/chatglm.md sections 3, 4):
 *
 * ChatGLM2-6B (pre-norm): the residual stream bypasses the norms, so
 *   query_key_value  <- input_layernorm.weight / s              (RMSNorm: x_ln = n(x) * w)
 *   dense_h_to_4h    <- post_attention_layernorm.weight / s
 *   dense            <- the value rows of query_key_value (weight and bias) / s: attention mixes
 *                       each value channel linearly. Multi-query: query heads h of one group share
 *                       its value rows, so their channels share s (tie).
 *   dense_4h_to_h    <- the "up" half (rows F..2F) of dense_h_to_4h / s: swiglu(y) =
 *                       silu(y[:F]) * y[F:] is linear in y[F:].
 *   output_layer     <- final_layernorm.weight / s (when quantized).
 * ChatGLM-6B (post-DeepNorm): h = x_ln * alpha + Attn(x_ln) takes the residual from the *normed*
 * input, so scaling a LayerNorm would change the residual too: query_key_value and
 * dense_h_to_4h get no input scaling (clipping only), nor does dense_4h_to_h (after GELU).
 *   dense            <- the value rows of query_key_value (per head, rows h*3D + 2D .. h*3D + 3D) / s
 *   lm_head          <- final_layernorm.{weight, bias} / s (only lm_head reads it).
 *
 * Linears are listed in the order they must be calibrated: a linear whose scaling is folded into
 * another linear comes first, so the other is quantized after the fold.
 *
 * The generation modules (src/models, Arch.calibrationUnits) call unitsV1 / unitsV2 with the
 * sizes their config parser read; nothing here reads config.json.
 */

export type Fold =
  | {readonly kind: 'none', readonly why: string}
  | {readonly kind: 'norm', readonly weight: string, readonly bias?: string}
  /** Input channel c of this linear is produced by row rowOf[c] of `weight` (and `bias`). */
  | {readonly kind: 'rows', readonly weight: string, readonly bias?: string, readonly rowOf: Int32Array}

export interface LinearPlan {
  /** `<module>.weight` of the linear. */
  readonly weight: string
  readonly fold: Fold
}

/** Linears calibrated together because folds tie them (one transformer layer, or the output layer). */
export interface CalibrationUnit {
  readonly linears: readonly LinearPlan[]
}

function valueRowsV1(heads: number, headDim: number): Int32Array {
  // QKV rows are grouped per head: [heads, 3 * D] -> q, k, v (docs/chatglm.md section 3).
  return Int32Array.from({length: heads * headDim}, (_, c) => Math.floor(c / headDim) * 3 * headDim + 2 * headDim + (c % headDim))
}

function valueRowsV2(heads: number, groups: number, headDim: number): Int32Array {
  // q = rows [0, N*D), k = [N*D, N*D + G*D), v = [N*D + G*D, N*D + 2*G*D); head h reads group h / (N/G).
  const vStart = heads * headDim + groups * headDim
  return Int32Array.from({length: heads * headDim}, (_, c) => vStart + Math.floor(Math.floor(c / headDim) / (heads / groups)) * headDim + (c % headDim))
}

/** ChatGLM-6B's units (post-DeepNorm: only the attention output folds). */
export function unitsV1(d: Pick<ModelDims, 'layers' | 'heads' | 'headDim'>, lmHead: boolean): CalibrationUnit[] {
  const {layers: L, heads, headDim} = d
  const deepNorm = 'ChatGLM-6B takes the residual from the LayerNorm output (post-DeepNorm), so the norm cannot absorb a scale'
  const units: CalibrationUnit[] = []
  for (let i = 0; i < L; i++) {
    const p = `transformer.layers.${i}.`
    units.push({linears: [
      {weight: `${p}attention.dense.weight`, fold: {kind: 'rows', weight: `${p}attention.query_key_value.weight`, bias: `${p}attention.query_key_value.bias`, rowOf: valueRowsV1(heads, headDim)}},
      {weight: `${p}attention.query_key_value.weight`, fold: {kind: 'none', why: deepNorm}},
      {weight: `${p}mlp.dense_4h_to_h.weight`, fold: {kind: 'none', why: 'its input comes out of GELU'}},
      {weight: `${p}mlp.dense_h_to_4h.weight`, fold: {kind: 'none', why: deepNorm}},
    ]})
  }
  if (lmHead) units.push({linears: [{weight: 'lm_head.weight', fold: {kind: 'norm', weight: 'transformer.final_layernorm.weight', bias: 'transformer.final_layernorm.bias'}}]})
  return units
}

/**
 * The ChatGLM2-6B network's units; `qkvBias` (config.json add_qkv_bias) and `finalNorm`
 * (post_layer_norm) say whether those tensors exist.
 */
export function unitsV2(d: Pick<ModelDims, 'layers' | 'heads' | 'kvHeads' | 'headDim' | 'ffn'>, opts: {qkvBias: boolean, finalNorm: boolean}, lmHead: boolean): CalibrationUnit[] {
  const {layers: L, heads, kvHeads: G, headDim: D, ffn: F} = d
  const {qkvBias} = opts
  const units: CalibrationUnit[] = []
  for (let i = 0; i < L; i++) {
    const p = `transformer.encoder.layers.${i}.`
    const qkv = `${p}self_attention.query_key_value.`
    units.push({linears: [
      {weight: `${p}self_attention.dense.weight`, fold: {kind: 'rows', weight: `${qkv}weight`, ...(qkvBias ? {bias: `${qkv}bias`} : {}), rowOf: valueRowsV2(heads, G, D)}},
      {weight: `${qkv}weight`, fold: {kind: 'norm', weight: `${p}input_layernorm.weight`}},
      {weight: `${p}mlp.dense_4h_to_h.weight`, fold: {kind: 'rows', weight: `${p}mlp.dense_h_to_4h.weight`, rowOf: Int32Array.from({length: F}, (_, c) => F + c)}},
      {weight: `${p}mlp.dense_h_to_4h.weight`, fold: {kind: 'norm', weight: `${p}post_attention_layernorm.weight`}},
    ]})
  }
  if (lmHead) {
    const fold: Fold = !opts.finalNorm
      ? {kind: 'none', why: 'the model has no final norm'}
      : {kind: 'norm', weight: 'transformer.encoder.final_layernorm.weight'}
    units.push({linears: [{weight: 'transformer.output_layer.weight', fold}]})
  }
  return units
}

/** The calibration units of a model: its layers' four linears, and the output layer when quantized (the generation module's Arch.calibrationUnits). */
export function calibrationUnits(arch: Arch, config: ModelConfig, lmHead: boolean): CalibrationUnit[] {
  return arch.calibrationUnits(config, lmHead)
}

/**
 * AWQ statistics with channels that must share a scale made equal: channels feeding from the
 * same producer row get their mean |x| averaged, so activationScale gives them one s.
 */
export function tieMeanAbs(meanAbs: ArrayLike<number>, rowOf: Int32Array): Float64Array {
  const sum = new Map<number, {s: number, n: number}>()
  for (let c = 0; c < rowOf.length; c++) {
    const e = sum.get(rowOf[c]) ?? {s: 0, n: 0}
    e.s += meanAbs[c]
    e.n++
    sum.set(rowOf[c], e)
  }
  return Float64Array.from({length: rowOf.length}, (_, c) => {
    const e = sum.get(rowOf[c])!
    return e.s / e.n
  })
}
