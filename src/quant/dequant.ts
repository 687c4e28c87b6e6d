import {f16Table, f32ToF16Bits} from './fp16.js'
import {unpackInt4Published} from './pack.js'
import {checkBits, checkShape, QuantizationError, type QuantBits, type QuantizedWeight} from './rtn.js'

/**
 * Dequantize published-layout weights: W ~ q * scale.
 *
 * The published kernels (quantization.py's extract_weight_to_half; for int8 in chatglm2-6b it is
 * literally `weight.to(scale.dtype) * scale[:, None]`) multiply an int8 by an fp16 scale in fp16
 * arithmetic: the product of an integer of at most 8 bits and an 11-bit significand is exact in
 * f32, so the result is that exact product rounded once to fp16 -- which is what `toF16` gives.
 * The f32 output is the exact product, as the CPU kernels (extract_*_weight_to_float) compute it.
 */

export interface PublishedWeight {
  readonly bits: QuantBits
  readonly rows: number
  readonly cols: number
  /** Columns per scale; default cols (published per-channel). */
  readonly groupSize?: number
  /** int8 [rows, cols] for 8 bits; packed int4 [rows, cols/2] for 4 bits (even column high). */
  readonly weight: Int8Array
  /** fp16 bits [rows, cols / groupSize]. */
  readonly scales: Uint16Array
}

/** Integer values [rows, cols] of a published weight (int4 unpacked). */
export function publishedInts(w: PublishedWeight): Int8Array {
  checkBits(w.bits)
  if (w.bits === 4) return unpackInt4Published(w.weight, w.rows, w.cols)
  if (w.weight.length !== w.rows * w.cols) throw new QuantizationError(`int8 weight has ${w.weight.length} elements, expected ${w.rows} x ${w.cols}`, 'quant-shape')
  return w.weight
}

/** q * scale, exact, as f32 [rows, cols]. */
export function dequantToF32(w: PublishedWeight | QuantizedWeight): Float32Array {
  const {q, rows, cols, groupSize, scales} = ints(w)
  const groups = checkShape(q.length, rows, cols, groupSize)
  if (scales.length !== rows * groups) throw new QuantizationError(`expected ${rows * groups} scales, got ${scales.length}`, 'quant-shape')
  const t = f16Table()
  const out = new Float32Array(rows * cols)
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const s = t[scales[r * groups + g]]
      const base = r * cols + g * groupSize
      for (let i = 0; i < groupSize; i++) out[base + i] = q[base + i] * s
    }
  }
  return out
}

/** fp16(q * scale) as fp16 bits [rows, cols], bit-identical to the published extraction kernels. */
export function dequantToF16(w: PublishedWeight | QuantizedWeight): Uint16Array {
  const f = dequantToF32(w)
  const out = new Uint16Array(f.length)
  for (let i = 0; i < f.length; i++) out[i] = f32ToF16Bits(f[i])
  return out
}

function ints(w: PublishedWeight | QuantizedWeight): {q: Int8Array, rows: number, cols: number, groupSize: number, scales: Uint16Array} {
  if ('q' in w) return {q: w.q, rows: w.rows, cols: w.cols, groupSize: w.groupSize, scales: w.scales}
  return {q: publishedInts(w), rows: w.rows, cols: w.cols, groupSize: w.groupSize ?? w.cols, scales: w.scales}
}
