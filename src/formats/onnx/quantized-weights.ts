import {GlmtoolError} from '../../errors.js'
import type {QuantLayout} from '../../models/quantized-layout.js'
import {unpackInt4Published} from '../../quant/pack.js'
import {packMatMulNBits} from '../../quant/pack.js'
import {splitInt8} from '../../quant/split-int8.js'
import {decodeFloats} from '../dtype-convert.js'
import {DTYPE_SIZE} from '../dtype.js'
import {inRowBlocks, readTensor, type TensorEntry} from '../tensor.js'
import {ELEM, type GraphBuilder} from './onnx-builder.js'

/**
 * Weight-quantized checkpoints (models/quantized-layout.ts) in the ONNX export.
 *
 * Linears become com.microsoft MatMulNBits (ONNX Runtime's ContribOperators.md): A float32
 * [M, K], B uint8 [N, k_blocks, block_size * bits / 8], scales float32 [N, k_blocks], no
 * zero_points (the default 2^(bits-1) undoes our code = q + 2^(bits-1)), so the op computes
 * A @ (q * scale)^T with q and scale exactly as stored, the dequantized published weight
 * (quant/pack.ts has the packing and test/quant-onnx.test.ts proves it on onnxruntime).
 * block_size is the checkpoint's group size, or for one scale per output channel the largest
 * of 128, 64, 32, 16 dividing the input width (each block repeats its row's scale; MatMulNBits
 * needs a power of two >= 16, and MLAS' CPU kernels are tuned for 16..256).
 *
 * A quantized embedding table is gathered as int8 rows and dequantized in the graph (below),
 * so the table stays int8 (or packed int4) in memory as well.
 */

/** MatMulNBits block size for a weight quantized with `groupSize` input columns per scale. */
export function matMulNBitsBlockSize(groupSize: number, name: string): number {
  if (groupSize >= 16 && groupSize <= 128 && (groupSize & (groupSize - 1)) === 0) return groupSize
  for (const b of [128, 64, 32, 16]) if (groupSize % b === 0) return b
  throw new GlmtoolError('onnx-unsupported', `${name}: no MatMulNBits block size (a power of two >= 16) divides its quantization group of ${groupSize} columns`)
}

/** Sizes of one quantized linear as MatMulNBits sees it. */
export interface NBitsDims {
  readonly N: number
  readonly K: number
  readonly bits: 4 | 8
  readonly groupSize: number
  readonly blockSize: number
  readonly kBlocks: number
}

export function nbitsDims(layout: QuantLayout, weight: TensorEntry): NBitsDims {
  const [N, stored] = weight.shape
  const K = layout.bits === 4 ? stored * 2 : stored
  const groupSize = layout.groupSize || K
  const blockSize = matMulNBitsBlockSize(groupSize, weight.name)
  return {N, K, bits: layout.bits, groupSize, blockSize, kBlocks: Math.ceil(K / blockSize)}
}

const ROW_BLOCK_BYTES = 8 * 1024 * 1024
const rowsPerBlock = (rowBytes: number): number => Math.max(1, Math.floor(ROW_BLOCK_BYTES / rowBytes))

/** MatMulNBits input B, streamed from the published int8 / packed int4 weight in row blocks. */
export function matMulNBitsB(weight: TensorEntry, d: NBitsDims): AsyncIterable<Buffer> {
  const rowBytes = d.bits === 4 ? d.K / 2 : d.K
  const rowsPer = rowsPerBlock(rowBytes)
  const dummyScales = new Uint16Array(rowsPer * (d.K / d.groupSize))
  return inRowBlocks(weight, rowBytes, rowsPer, (buf, rows) => {
    const packed = new Int8Array(buf.buffer, buf.byteOffset, rows * rowBytes)
    const q = d.bits === 4 ? unpackInt4Published(packed, rows, d.K) : packed
    const m = packMatMulNBits({bits: d.bits, rows, cols: d.K, groupSize: d.groupSize, q, scales: dummyScales.subarray(0, rows * (d.K / d.groupSize))}, {blockSize: d.blockSize})
    return Buffer.from(m.B.buffer, m.B.byteOffset, m.B.byteLength)
  })
}

/** MatMulNBits scales, float32 [N, k_blocks]: each block repeats the scale of the group holding it. */
export async function matMulNBitsScales(scale: TensorEntry, d: NBitsDims): Promise<Buffer> {
  const s = decodeFloats(await readTensor(scale), scale.dtype)
  const groups = d.K / d.groupSize
  if (s.length !== d.N * groups) throw new GlmtoolError('onnx-write', `${scale.file}: ${scale.name} has ${s.length} scales, expected ${d.N} x ${groups}`)
  const out = new Float32Array(d.N * d.kBlocks)
  for (let n = 0; n < d.N; n++) {
    for (let b = 0; b < d.kBlocks; b++) out[n * d.kBlocks + b] = s[n * groups + Math.floor(b * d.blockSize / d.groupSize)]
  }
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength)
}

/**
 * Rows `ids` of a quantized embedding table as float32 [S, H]: Gather the int8 rows and their
 * scales, unpack int4 nibbles, multiply. For a signed byte b = 16 * hi + lo4 (hi the high nibble
 * as a signed value, lo4 the low nibble's bits), hi = floor(b / 16) and lo4 = b - 16 * hi, and
 * the low value is lo4 - 16 when lo4 >= 8: exact in float32, and only standard ops.
 * `scales` is the (float32) scale table [V] or [V, H / groupSize].
 */
export function dequantEmbedding(b: GraphBuilder, table: string, scales: string, ids: string, hidden: number, bits: 4 | 8, groupSize: number): string {
  const rows = b.op('Cast', [b.op('Gather', [table, ids], {axis: 0})], {to: ELEM.FLOAT})
  let values = rows
  if (bits === 4) {
    const hi = b.op('Floor', [b.op('Div', [rows, b.float32([16], [])])])
    const lo4 = b.op('Sub', [rows, b.op('Mul', [hi, b.float32([16], [])])])
    const wrap = b.op('Mul', [b.op('Cast', [b.op('Greater', [lo4, b.float32([7.5], [])])], {to: ELEM.FLOAT}), b.float32([16], [])])
    const lo = b.op('Sub', [lo4, wrap])
    const pairs = b.op('Concat', [b.op('Unsqueeze', [hi, b.int64([-1])]), b.op('Unsqueeze', [lo, b.int64([-1])])], {axis: -1})
    values = b.op('Reshape', [pairs, b.int64([-1, hidden])])
  }
  const rowScales = b.op('Gather', [scales, ids], {axis: 0})
  if (groupSize === 0) return b.op('Mul', [values, b.op('Unsqueeze', [rowScales, b.int64([-1])])])
  const grouped = b.op('Reshape', [values, b.int64([-1, hidden / groupSize, groupSize])])
  const scaled = b.op('Mul', [grouped, b.op('Unsqueeze', [rowScales, b.int64([-1])])])
  return b.op('Reshape', [scaled, b.int64([-1, hidden])])
}

/**
 * An int8-compute graph's float output layer (lm_head, float16 in the published layout) as two
 * 8-bit MatMulNBits terms (quant/split-int8.ts): term 0 or 1's input B (codes + 128, [N, K /
 * block, block]) or its scales (float32 [N, K / block]), streamed in row blocks from the float
 * weight. Each call reads the weight once; the two terms and their scales are four passes.
 */
export function splitInt8Term(weight: TensorEntry, block: number, term: 0 | 1, what: 'B' | 'scales'): AsyncIterable<Buffer> {
  const K = weight.shape[1]
  const rowBytes = K * DTYPE_SIZE[weight.dtype]
  return inRowBlocks(weight, rowBytes, rowsPerBlock(rowBytes), (buf, rows) => {
    const s = splitInt8(decodeFloats(buf.subarray(0, rows * rowBytes), weight.dtype), rows, K, block, term === 0 ? 1 : 2)
    if (what === 'scales') return Buffer.from(s.scales[term].buffer, s.scales[term].byteOffset, s.scales[term].byteLength)
    const q = s.q[term]
    const out = Buffer.allocUnsafe(q.length)
    for (let i = 0; i < q.length; i++) out[i] = q[i] + 128
    return out
  })
}
