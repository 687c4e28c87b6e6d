import {dequantToF16, dequantToF32} from '../quant/dequant.js'
import type {QuantBits} from '../quant/rtn.js'
import {ModelError} from '../errors.js'
import {convertChunk} from './dtype-convert.js'
import {DEFAULT_CHUNK_BYTES, inRowBlocks, readTensor, type TensorEntry} from './tensor.js'

/**
 * A weight stored quantized (the published layout: int8 [rows, cols], or int4 packed two to a
 * byte [rows, cols / 2] with column 2j in the high nibble; scales [rows] or [rows, cols / g])
 * read as a float tensor [rows, cols], block of rows by block of rows: for a consumer that takes
 * only float tensors (the CUDA engine's embedding table, which lives in host memory as fp16).
 * F16 values are fp16(q * scale), bit for bit as the published extraction kernels give them
 * (quant/dequant.ts); BF16 ones bf16(q * scale), the exact product rounded once. Memory: the
 * scales plus one block of rows, whatever the tensor's size.
 */
export function dequantizedTensor(weight: TensorEntry, scale: TensorEntry, q: {bits: QuantBits, groupSize: number}, cols: number, to: 'F16' | 'BF16'): TensorEntry {
  const rows = weight.shape[0]
  const rowBytes = q.bits === 4 ? cols / 2 : cols
  const groupSize = q.groupSize || cols
  const groups = cols / groupSize
  if (weight.dtype !== 'I8' || weight.shape.length !== 2 || weight.shape[1] !== rowBytes || !Number.isInteger(rowBytes) || !Number.isInteger(groups)) {
    throw new ModelError(`${weight.file}: tensor ${weight.name} is ${weight.dtype} [${weight.shape}]; int${q.bits} rows of ${cols} columns are int8 [rows, ${rowBytes}]`, 'bad-shape')
  }
  const scaleCount = scale.shape.reduce((a, b) => a * b, 1)
  if (scale.shape[0] !== rows || scaleCount !== rows * groups) {
    throw new ModelError(`${scale.file}: tensor ${scale.name} is [${scale.shape}]; ${weight.name} needs ${groups === 1 ? `[${rows}]` : `[${rows}, ${groups}]`} scales`, 'bad-shape')
  }
  return {
    name: weight.name, dtype: to, shape: [rows, cols], file: weight.file,
    async *chunks(maxChunkBytes = DEFAULT_CHUNK_BYTES) {
      const raw = await readTensor(scale)
      const f16 = convertChunk(raw, scale.dtype, 'F16')
      const scales = new Uint16Array(f16.buffer, f16.byteOffset, scaleCount)
      // rows a piece: output bytes <= maxChunkBytes, and at most 16 MB (the float32 step is twice that)
      const block = Math.max(1, Math.floor(Math.min(maxChunkBytes, 16 << 20) / (cols * 2)))
      let row = 0
      yield* inRowBlocks(weight, rowBytes, block, (bytes, n) => {
        const w = {bits: q.bits, rows: n, cols, groupSize, weight: new Int8Array(bytes.buffer, bytes.byteOffset, n * rowBytes),
          scales: scales.subarray(row * groups, (row + n) * groups)}
        row += n
        if (to === 'F16') {
          const h = dequantToF16(w)
          return Buffer.from(h.buffer, h.byteOffset, h.byteLength)
        }
        const f = dequantToF32(w)
        return convertChunk(Buffer.from(f.buffer, f.byteOffset, f.byteLength), 'F32', 'BF16')
      })
      if (row !== rows) throw new ModelError(`${weight.file}: tensor ${weight.name} ended after ${row * rowBytes} of ${rows * rowBytes} bytes`, 'truncated')
    },
  }
}
