import {getFloat16, setFloat16} from '@petamoriken/float16'
import {GlmtoolError} from '../errors.js'
import {DTYPE_SIZE, type DType, isFloat} from './dtype.js'

/**
 * Float conversions between F16, BF16, F32 and F64, chunk by chunk. Scalar encoding of fp16
 * uses @petamoriken/float16 (round to nearest even); bulk decoding of 16-bit types goes through
 * 65,536-entry tables built once from it, because a per-element DataView call is ~20x slower and
 * convert streams gigabytes. bf16 is the top half of an f32, rounded to nearest even.
 */

const scratch = new DataView(new ArrayBuffer(4))

export function toFloat16Bits(x: number): number {
  setFloat16(scratch, 0, x, true)
  return scratch.getUint16(0, true)
}

export function toBFloat16Bits(x: number): number {
  scratch.setFloat32(0, x, true)
  const bits = scratch.getUint32(0, true)
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
      for (let i = 0; i < n; i++) out.writeUInt16LE(toFloat16Bits(values[i]), i * 2)
      break
    case 'BF16':
      for (let i = 0; i < n; i++) out.writeUInt16LE(toBFloat16Bits(values[i]), i * 2)
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
