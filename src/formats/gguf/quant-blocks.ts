/**
 * ggml's Q8_0 and Q4_0 block layouts (ggml-common.h) and their reference quantizers
 * (ggml-quants.c quantize_row_q8_0_ref / quantize_row_q4_0_ref, the ones llama.cpp's converter
 * and llama-quantize use when no importance matrix is given), bit for bit.
 *
 * Both cut a row into blocks of 32 values. Every step of the reference is float32 arithmetic,
 * so each intermediate here goes through Math.fround; the fp16 scale is round-to-nearest-even
 * (GGML_FP32_TO_FP16). Layouts, little-endian:
 * - Q8_0, 34 bytes: fp16 d, then int8 q[32]; value j = q[j] * d. d = amax / 127,
 *   q[j] = roundf(x[j] / d) (half away from zero), computed as x[j] * (1/d).
 * - Q4_0, 18 bytes: fp16 d, then uint8 qs[16]; value j = ((nibble j) - 8) * d, where nibble j
 *   is the low nibble of qs[j] for j < 16 and the high nibble of qs[j - 16] otherwise.
 *   d = max / -8, `max` the value of largest magnitude (its sign kept, the first one on a tie),
 *   nibble = min(15, trunc(x * (1/d) + 8.5)).
 * Hand-written: no npm library implements ggml's quantizers (they live in llama.cpp's C code).
 */
import {toFloat16Bits} from '../dtype-convert.js'
import {f16ToNumber} from '../../quant/fp16.js'

export const QK = 32
export const Q8_0_BLOCK_BYTES = 2 + QK
export const Q4_0_BLOCK_BYTES = 2 + QK / 2

const f = Math.fround

/** Quantize `x` (a whole number of 32-value blocks) into `out` at `offset`; returns bytes written. */
export function quantizeQ8_0(x: Float32Array, out: Buffer, offset = 0): number {
  if (x.length % QK !== 0) throw new RangeError(`Q8_0 needs a multiple of ${QK} values, got ${x.length}`)
  const q = new Int8Array(out.buffer, out.byteOffset, out.byteLength)
  let o = offset
  for (let b = 0; b < x.length; b += QK) {
    let amax = 0
    for (let j = 0; j < QK; j++) {
      const a = Math.abs(x[b + j])
      if (a > amax) amax = a
    }
    const d = f(amax / 127)
    const id = d ? f(1 / d) : 0
    const h = toFloat16Bits(d)
    out[o] = h & 0xff
    out[o + 1] = h >>> 8
    for (let j = 0; j < QK; j++) {
      const v = f(x[b + j] * id)
      // roundf: half away from zero (v + 0.5 is exact in a double for |v| <= 127).
      q[o + 2 + j] = Math.trunc(v < 0 ? v - 0.5 : v + 0.5)
    }
    o += Q8_0_BLOCK_BYTES
  }
  return o - offset
}

export function quantizeQ4_0(x: Float32Array, out: Buffer, offset = 0): number {
  if (x.length % QK !== 0) throw new RangeError(`Q4_0 needs a multiple of ${QK} values, got ${x.length}`)
  let o = offset
  for (let b = 0; b < x.length; b += QK) {
    let amax = 0
    let max = 0
    for (let j = 0; j < QK; j++) {
      const v = x[b + j]
      if (amax < Math.abs(v)) {
        amax = Math.abs(v)
        max = v
      }
    }
    const d = f(max / -8)
    const id = d ? f(1 / d) : 0
    const h = toFloat16Bits(d)
    out[o] = h & 0xff
    out[o + 1] = h >>> 8
    for (let j = 0; j < QK / 2; j++) {
      // (int8_t) truncates toward zero; the sums lie in [0.5, 16.5].
      const lo = Math.min(15, Math.trunc(f(f(x[b + j] * id) + 8.5)))
      const hi = Math.min(15, Math.trunc(f(f(x[b + QK / 2 + j] * id) + 8.5)))
      out[o + 2 + j] = lo | (hi << 4)
    }
    o += Q4_0_BLOCK_BYTES
  }
  return o - offset
}

/** ggml's dequantize_row_q8_0: value = q * fp16(d). */
export function dequantizeQ8_0(buf: Uint8Array, n: number): Float32Array {
  const y = new Float32Array(n)
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  for (let b = 0, o = 0; b < n; b += QK, o += Q8_0_BLOCK_BYTES) {
    const d = f16ToNumber(v.getUint16(o, true))
    for (let j = 0; j < QK; j++) y[b + j] = v.getInt8(o + 2 + j) * d
  }
  return y
}

/** ggml's dequantize_row_q4_0: value = (nibble - 8) * fp16(d). */
export function dequantizeQ4_0(buf: Uint8Array, n: number): Float32Array {
  const y = new Float32Array(n)
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  for (let b = 0, o = 0; b < n; b += QK, o += Q4_0_BLOCK_BYTES) {
    const d = f16ToNumber(v.getUint16(o, true))
    for (let j = 0; j < QK / 2; j++) {
      const q = v.getUint8(o + 2 + j)
      y[b + j] = ((q & 0x0f) - 8) * d
      y[b + QK / 2 + j] = ((q >> 4) - 8) * d
    }
  }
  return y
}
