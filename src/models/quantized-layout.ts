import {ModelError} from '../errors.js'
import type {Arch, ModelConfig, QuantizableNames, TensorSpec} from './arch.js'

/**
 * The tensor layout of a weight-quantized checkpoint (docs/chatglm.md section 8): what
 * `glmtool quantize` writes and what the published `chatglm-6b-int4` / `chatglm2-6b-int4`
 * checkpoints hold. config.json carries `quantization_bit` (4 or 8); each quantized linear
 * `<name>.weight [out, in]` becomes
 *
 *   <name>.weight        int8 [out, in]        (8-bit), or int8 [out, in/2] (4-bit: two signed
 *                        nibbles per byte, column 2j in the HIGH nibble, 2j+1 in the LOW one)
 *   <name>.weight_scale  float [out]           (per output channel: the published scheme), or
 *                        float [out, in/g]     (glmtool's grouped variant, g = group size:
 *                        scale [o, j] covers input columns j*g .. j*g+g-1 of row o)
 *
 * and W ~ q * scale. Biases, norms and everything not quantized keep their float layout.
 *
 * Which weights are quantized: the published quantize() replaces exactly the four per-layer
 * linears (query_key_value, dense, dense_h_to_4h, dense_4h_to_h; THUDM/chatglm-6b and
 * THUDM/chatglm2-6b quantization.py); word embeddings and the output layer stay float16.
 * glmtool records what it did differently under `glmtool_quantization` (absent in published
 * checkpoints, which then mean: per-channel, embeddings and output layer float):
 *   {"bits": 4, "group_size": 0 | 32 | 64 | 128, "method": "rtn" | "calibrated",
 *    "lm_head": false, "embeddings": false}
 * A quantized embedding table is [vocab, hidden] quantized like a linear (one scale per row,
 * or per row and group).
 */

export type QuantBitsConfig = 4 | 8

export interface QuantLayout {
  readonly bits: QuantBitsConfig
  /** Input columns per scale; 0 = one scale per output channel (the published scheme). */
  readonly groupSize: number
  /** The output layer (v1 lm_head, v2 transformer.output_layer) is quantized. */
  readonly lmHead: boolean
  /** The word embedding table is quantized (rows = tokens). */
  readonly embeddings: boolean
  readonly method?: string
}

/** config.json key glmtool adds beside the published `quantization_bit`. */
export const GLMTOOL_QUANT_KEY = 'glmtool_quantization'

export function quantizableNames(arch: Arch): QuantizableNames {
  return arch.quantizable
}

/** The quantization config.json describes, or undefined for a float checkpoint. */
export function quantLayoutOf(config: ModelConfig, source = 'config.json'): QuantLayout | undefined {
  const bits = config.quantization_bit
  if (bits === undefined || bits === null) return undefined
  if (bits !== 4 && bits !== 8) throw new ModelError(`${source}: quantization_bit ${JSON.stringify(bits)} is not 4 or 8`, 'bad-config')
  const g = config[GLMTOOL_QUANT_KEY]
  if (g === undefined || g === null) {
    if (config.quantization_embeddings === true) {
      throw new ModelError(`${source}: quantization_embeddings true (a chatglm-6b-int4-qe style checkpoint) is a layout glmtool does not read`, 'bad-config')
    }
    return {bits, groupSize: 0, lmHead: false, embeddings: false}
  }
  if (typeof g !== 'object' || Array.isArray(g)) throw new ModelError(`${source}: ${GLMTOOL_QUANT_KEY} must be an object`, 'bad-config')
  const o = g as Record<string, unknown>
  const groupSize = o.group_size ?? 0
  if (typeof groupSize !== 'number' || !Number.isSafeInteger(groupSize) || groupSize < 0) {
    throw new ModelError(`${source}: ${GLMTOOL_QUANT_KEY}.group_size must be a non-negative integer (got ${JSON.stringify(o.group_size)})`, 'bad-config')
  }
  return {bits, groupSize, lmHead: o.lm_head === true, embeddings: o.embeddings === true, method: typeof o.method === 'string' ? o.method : undefined}
}

/** Whether weight `name` is stored quantized under `layout`. */
export function isQuantizedWeight(arch: Arch, layout: QuantLayout, name: string): boolean {
  const n = arch.quantizable
  if (name === n.embeddings) return layout.embeddings
  if (name === n.lmHead) return layout.lmHead
  return n.layerLinear.test(name)
}

/** `<base>.weight` -> `<base>.weight_scale`. */
export function scaleNameOf(weightName: string): string {
  return `${weightName}_scale`
}

/** Shapes of a quantized [rows, cols] weight's two tensors; throws when the layout cannot hold it. */
export function quantizedShapes(layout: QuantLayout, rows: number, cols: number, name: string): {weight: number[], scale: number[]} {
  if (layout.bits === 4 && cols % 2 !== 0) throw new ModelError(`${name}: 4-bit packing needs an even input width, got ${cols}`, 'bad-config')
  if (layout.groupSize !== 0 && cols % layout.groupSize !== 0) {
    throw new ModelError(`${name}: group size ${layout.groupSize} does not divide its input width ${cols}`, 'bad-config')
  }
  return {
    weight: [rows, layout.bits === 4 ? cols / 2 : cols],
    scale: layout.groupSize === 0 ? [rows] : [rows, cols / layout.groupSize],
  }
}

/** A tensor spec with the element type a quantized checkpoint requires. */
export interface CheckpointTensorSpec extends TensorSpec {
  /** 'int8': must be I8 (quantized weights); 'float': any float dtype (scales). Unset: unchecked. */
  readonly dtype?: 'int8' | 'float'
}

/**
 * Every tensor a checkpoint of this config holds: the architecture's float layout with each
 * quantized weight replaced by its int8 weight and its scale (in that order).
 */
export function checkpointTensorSpecs(arch: Arch, config: ModelConfig): Map<string, CheckpointTensorSpec> {
  const specs: Map<string, CheckpointTensorSpec> = arch.tensors(config)
  const layout = quantLayoutOf(config)
  if (!layout) return specs
  const out = new Map<string, CheckpointTensorSpec>()
  for (const [name, spec] of specs) {
    if (spec.shape.length !== 2 || !isQuantizedWeight(arch, layout, name)) {
      out.set(name, spec)
      continue
    }
    const [rows, cols] = spec.shape
    const s = quantizedShapes(layout, rows, cols, name)
    out.set(name, {shape: s.weight, init: 'normal', dtype: 'int8'})
    out.set(scaleNameOf(name), {shape: s.scale, init: 'ones', dtype: 'float'})
  }
  return out
}

/** One line for inspect: "int4, per output channel, published layout (method rtn)". */
export function describeQuantLayout(q: QuantLayout): string {
  const extra = [q.lmHead ? 'output layer' : '', q.embeddings ? 'embeddings' : ''].filter(Boolean)
  return `int${q.bits} weights, ${q.groupSize === 0 ? 'one scale per output channel' : `one scale per ${q.groupSize} input columns`}`
    + `${extra.length ? `, also ${extra.join(' and ')}` : ''}${q.method ? ` (method ${q.method})` : ''}`
}
