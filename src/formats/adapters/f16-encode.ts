import {DTYPE_SIZE, type DType} from '../dtype.js'
import {encodeFloats} from '../dtype-convert.js'

/**
 * float32 -> float16 with integer bit operations, round to nearest even, as torch's cast does.
 *
 * dtype-convert's encodeFloats('F16') goes through a DataView call per element, which measured
 * ~750 ns/element here: 70 minutes for the 5.7e9 merged weights of an fp16 ChatGLM2-6B. This
 * is ~100x faster and gives the same bits (tested against toFloat16Bits on every float16, on
 * the rounding midpoints and their neighbours, and on random float32 bit patterns).
 */
const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

export function float16Bits(x: number): number {
  f32[0] = x
  const bits = u32[0]
  const sign = (bits >>> 16) & 0x8000
  const exp = (bits >>> 23) & 0xff
  const mant = bits & 0x7fffff
  if (exp === 0xff) return mant ? sign | 0x7e00 : sign | 0x7c00 // NaN (quiet), +-Inf
  const e = exp - 112 // float16 biased exponent (127 - 15)
  if (e >= 0x1f) return sign | 0x7c00 // too large: Inf
  if (e <= 0) {
    // float16 subnormal: value / 2^-24, rounded; below half the smallest subnormal it is 0
    if (e < -10) return sign
    const m = mant | 0x800000
    const shift = 14 - e
    const half = 1 << (shift - 1)
    const rem = m & ((1 << shift) - 1)
    let r = m >>> shift
    if (rem > half || (rem === half && (r & 1))) r++
    return sign | r
  }
  let r = (e << 10) | (mant >>> 13)
  const rem = mant & 0x1fff
  // a carry out of the mantissa bumps the exponent, up to Inf: the right answer in each case
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1))) r++
  return sign | r
}

/** encodeFloats, with the fast float16 path. */
export function encodeFloatsFast(values: Float32Array, dtype: DType): Buffer {
  if (dtype !== 'F16') return encodeFloats(values, dtype)
  const out = Buffer.allocUnsafe(values.length * DTYPE_SIZE.F16)
  for (let i = 0; i < values.length; i++) {
    const h = float16Bits(values[i])
    out[2 * i] = h & 0xff
    out[2 * i + 1] = h >>> 8
  }
  return out
}
