import {toFloat16Bits, toBFloat16Bits} from '../formats/dtype-convert.js'
import type {DType} from '../formats/dtype.js'

/**
 * Seeded random numbers for synthetic weights. Speed matters (the full 6B synth draws 6.2e9
 * values), so a sample is one table lookup: a 16-bit uniform index into 65,536 precomputed
 * quantiles of N(0, 1), already encoded in the output dtype. That is an exact sample of the
 * normal distribution quantised to 2^16 levels, far finer than fp16 itself resolves.
 */

/** Acklam's rational approximation of the inverse normal CDF (relative error < 1.2e-9). */
export function normalQuantile(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239]
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1]
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783]
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416]
  const lo = 0.02425
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p))
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
  }
  if (p > 1 - lo) return -normalQuantile(1 - p)
  const q = p - 0.5
  const r = q * q
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
}

const QUANTILES = (() => {
  const t = new Float64Array(65536)
  for (let i = 0; i < 65536; i++) t[i] = normalQuantile((i + 0.5) / 65536)
  return t
})()

const tables = new Map<string, Uint16Array>()
/** The 65,536 quantiles of N(mean, std) encoded as F16 or BF16 bits, built once per (dtype, mean, std). */
function encodedQuantiles(dtype: 'F16' | 'BF16', mean: number, std: number): Uint16Array {
  const key = `${dtype}:${mean}:${std}`
  let t = tables.get(key)
  if (!t) {
    const enc = dtype === 'F16' ? toFloat16Bits : toBFloat16Bits
    t = new Uint16Array(65536)
    for (let i = 0; i < 65536; i++) t[i] = enc(mean + std * QUANTILES[i])
    tables.set(key, t)
  }
  return t
}

/** 32-bit FNV-1a of a string: derives a per-tensor stream from (seed, name). */
export function hash32(s: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) >>> 0
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0
  return h
}

/**
 * Fill `out` (bytes of `count` elements of dtype) with mean + std * N(0,1) samples from the
 * xorshift32 stream starting at state; returns the next state.
 */
export function fillNormal(out: Buffer, dtype: DType, count: number, mean: number, std: number, state: number): number {
  let s = state || 0x9e3779b9
  const next = () => {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    return s >>> 0
  }
  if (dtype === 'F16' || dtype === 'BF16') {
    const table = encodedQuantiles(dtype, mean, std)
    const u16 = new Uint16Array(out.buffer, out.byteOffset, count)
    let i = 0
    for (; i + 1 < count; i += 2) {
      const r = next()
      u16[i] = table[r & 0xffff]
      u16[i + 1] = table[r >>> 16]
    }
    if (i < count) u16[i] = table[next() & 0xffff]
  } else if (dtype === 'F32') {
    const f32 = new Float32Array(out.buffer, out.byteOffset, count)
    for (let i = 0; i < count; i++) f32[i] = mean + std * QUANTILES[next() & 0xffff]
  } else {
    throw new Error(`synthetic weights in ${dtype} are not supported`)
  }
  return s
}
