import {getFloat16} from '@petamoriken/float16'
import {GlmtoolError} from '../errors.js'
import {DTYPE_SIZE, type DType, isFloat} from './dtype.js'

/**
 * Float conversions between F16, BF16, F32 and F64, chunk by chunk. Decoding fp16 goes through a
 * 65,536-entry table built once from @petamoriken/float16; encoding fp16 is done here with
 * integer bit operations (round to nearest even, as torch's cast does), because the library's
 * per-element DataView call measured ~750 ns/element: over an hour for the 5.7e9 weights of a
 * 6B model, against ~100x less here. test/dtype-convert.test.ts checks it against the library
 * on every fp16 value, every rounding midpoint and its neighbours, and random f32 patterns.
 * bf16 is the top half of an f32, rounded to nearest even.
 */

const f32Scratch = new Float32Array(1)
const u32Scratch = new Uint32Array(f32Scratch.buffer)

/** fp16 bits of x: first rounded to f32 (as torch's f32 opmath does), then to nearest even fp16. */
export function toFloat16Bits(x: number): number {
  f32Scratch[0] = x
  const bits = u32Scratch[0]
  const sign = (bits >>> 16) & 0x8000
  const exp = (bits >>> 23) & 0xff
  const mant = bits & 0x7fffff
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0) // inf, or a quiet NaN
  const e = exp - 112 // fp16 biased exponent (127 - 15)
  if (e >= 0x1f) return sign | 0x7c00 // overflow to inf
  if (e <= 0) {
    // fp16 subnormal (or zero): units of 2^-24; below half the smallest subnormal it is 0.
    const shift = 14 - e
    if (shift > 24) return sign
    const m = mant | 0x800000
    let h = m >>> shift
    const rem = m & ((1 << shift) - 1)
    const halfway = 1 << (shift - 1)
    if (rem > halfway || (rem === halfway && (h & 1) === 1)) h++
    return sign | h
  }
  let h = (e << 10) | (mant >>> 13)
  const rem = mant & 0x1fff
  // A carry out of the mantissa bumps the exponent, up to 0x7c00 (inf): both correct.
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++
  return sign | h
}

export function toBFloat16Bits(x: number): number {
  f32Scratch[0] = x
  const bits = u32Scratch[0]
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fc0 // NaN stays NaN
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff
}

let f16Table: Float32Array | undefined
function f16ToF32Table(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536)
    const dv = new DataView(new ArrayBuffer(2))
    for (let i = 0; i < 65536; i++) {
      dv.setUint16(0, i, true)
      f16Table[i] = getFloat16(dv, 0, true)
    }
  }
  return f16Table
}

/** Decode `count` elements of a float dtype into a Float32Array (F64 is narrowed). */
export function decodeFloats(buf: Buffer, dtype: DType): Float32Array {
  const n = buf.length / DTYPE_SIZE[dtype]
  const out = new Float32Array(n)
  switch (dtype) {
    case 'F32':
      for (let i = 0; i < n; i++) out[i] = buf.readFloatLE(i * 4)
      break
    case 'F64':
      for (let i = 0; i < n; i++) out[i] = buf.readDoubleLE(i * 8)
      break
    case 'F16': {
      const t = f16ToF32Table()
      for (let i = 0; i < n; i++) out[i] = t[buf[2 * i] | (buf[2 * i + 1] << 8)]
      break
    }
    case 'BF16': {
      const u32 = new Uint32Array(out.buffer)
      for (let i = 0; i < n; i++) u32[i] = (buf[2 * i] | (buf[2 * i + 1] << 8)) << 16
      break
    }
    default:
      throw new GlmtoolError('dtype', `cannot decode ${dtype} as floats`)
  }
  return out
}

/** Encode floats into bytes of a float dtype. */
export function encodeFloats(values: Float32Array, dtype: DType): Buffer {
  const n = values.length
  const out = Buffer.allocUnsafe(n * DTYPE_SIZE[dtype])
  switch (dtype) {
    case 'F32':
      for (let i = 0; i < n; i++) out.writeFloatLE(values[i], i * 4)
      break
    case 'F64':
      for (let i = 0; i < n; i++) out.writeDoubleLE(values[i], i * 8)
      break
    case 'F16':
      for (let i = 0; i < n; i++) {
        const h = toFloat16Bits(values[i])
        out[2 * i] = h & 0xff
        out[2 * i + 1] = h >>> 8
      }
      break
    case 'BF16':
      for (let i = 0; i < n; i++) {
        const h = toBFloat16Bits(values[i])
        out[2 * i] = h & 0xff
        out[2 * i + 1] = h >>> 8
      }
      break
    default:
      throw new GlmtoolError('dtype', `cannot encode floats as ${dtype}`)
  }
  return out
}

/**
 * Convert one chunk between dtypes. Only float-to-float conversions exist; integer and bool
 * tensors (and same-dtype chunks) pass through unchanged.
 */
export function convertChunk(buf: Buffer, from: DType, to: DType): Buffer {
  if (from === to || !isFloat(from) || !isFloat(to)) return buf
  // Through an f32 intermediate: exact for F16/BF16 -> F32, correctly rounded for F32 -> F16/BF16;
  // F64 -> F16 rounds twice, which no checkpoint of these models needs.
  return encodeFloats(decodeFloats(buf, from), to)
}

/** The dtype a tensor gets when converting a model to `target` (ints and bools keep theirs). */
export function targetDtype(source: DType, target: DType | 'keep'): DType {
  if (target === 'keep' || !isFloat(source)) return source
  return target
}
