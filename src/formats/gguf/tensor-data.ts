/**
 * A checkpoint tensor's bytes re-encoded as a GGUF tensor type, chunk by chunk: floats are cast
 * (F32/F16/BF16), Q8_0/Q4_0 are quantized block by block, with a carry of at most one block
 * between chunks, so memory stays at one chunk whatever the tensor's size.
 */
import type {DType} from '../dtype.js'
import {decodeFloats, encodeFloats} from '../dtype-convert.js'
import type {TensorEntry} from '../tensor.js'
import type {GgmlType} from './gguf-writer.js'
import {Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK, quantizeQ4_0, quantizeQ8_0} from './quant-blocks.js'

const CHUNK_BYTES = 16 * 1024 * 1024
const FLOAT_DTYPE: Partial<Record<GgmlType, DType>> = {F32: 'F32', F16: 'F16', BF16: 'BF16'}

export async function* ggufTensorData(t: TensorEntry, type: GgmlType): AsyncIterable<Uint8Array> {
  const float = FLOAT_DTYPE[type]
  if (float) {
    for await (const c of t.chunks(CHUNK_BYTES)) yield t.dtype === float ? c : encodeFloats(decodeFloats(c, t.dtype), float)
    return
  }
  const quantize = type === 'Q8_0' ? quantizeQ8_0 : quantizeQ4_0
  const blockBytes = type === 'Q8_0' ? Q8_0_BLOCK_BYTES : Q4_0_BLOCK_BYTES
  let carry = new Float32Array(0)
  for await (const c of t.chunks(CHUNK_BYTES)) {
    const fresh = decodeFloats(c, t.dtype)
    const values = carry.length ? concat(carry, fresh) : fresh
    const whole = values.length - (values.length % QK)
    if (whole > 0) {
      const out = Buffer.allocUnsafe((whole / QK) * blockBytes)
      quantize(values.subarray(0, whole), out)
      yield out
    }
    carry = values.slice(whole)
  }
  // A tail that is not a whole block cannot happen for planned tensors (rows are multiples of 32).
  if (carry.length) throw new RangeError(`${t.name}: ${carry.length} values left over after the last ${type} block`)
}

function concat(a: Float32Array, b: Float32Array): Float32Array {
  const r = new Float32Array(a.length + b.length)
  r.set(a)
  r.set(b, a.length)
  return r
}
