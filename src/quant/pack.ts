import {f16Table} from './fp16.js'
import {checkBits, QuantizationError, type QuantBits, type QuantizedWeight} from './rtn.js'

/**
 * Bit layouts for quantized weights.
 *
 * 1. The published ChatGLM int4 layout (docs/chatglm.md section 8; quantization.py's
 *    compress_int4_weight and the CPU kernels in quantization_kernels.c of THUDM/chatglm-6b):
 *    weight [rows, cols/2] int8, byte j of a row = (q[2j] << 4) | (q[2j+1] & 0xf), i.e. the
 *    even column in the HIGH nibble and the odd column in the LOW nibble, each a two's-complement
 *    4-bit value. The extraction kernel reads them back as `byte >> 4` (arithmetic shift of the
 *    signed byte) for column 2j and `(int8)(byte << 4) >> 4` for column 2j+1.
 *
 * 2. ONNX Runtime's com.microsoft MatMulNBits (docs/ContribOperators.md, section
 *    "com.microsoft.MatMulNBits", inputs B / scales / zero_points):
 *    - B: uint8 [N, k_blocks, blob_size], k_blocks = ceil(K / block_size),
 *      blob_size = block_size * bits / 8, "bit-packed ... along the K dimension, packed within
 *      each block_size": for 4 bits "the first 4 bits are stored in the lower 4 bits of a byte,
 *      and the second 4 bits are stored in the higher 4 bits" -- so column 2j in the LOW nibble,
 *      2j+1 in the HIGH nibble (the opposite of the published layout); for 8 bits, one code a byte.
 *      Codes are unsigned; a last partial block is padded (we pad with the zero point, value 0).
 *    - scales: [N, k_blocks], "same data type as input A" (float32 or float16).
 *    - dequantized = (code - zero_point) * scale. zero_points is optional; "if not provided, a
 *      default zero point is used: 2^(bits - 1) (e.g., 8 for 4-bit quantization, 128 for 8-bit)".
 *    Our symmetric codes map to code = q + 2^(bits-1) (q in [-qmax, qmax] gives 1..15 or
 *    1..255), which is exactly what the default zero point undoes, so by default we omit
 *    zero_points. `explicitZeroPoints` emits them anyway, packed uint8 [N, ceil(k_blocks * bits
 *    / 8)] with "the same bit-packing method as Input B" (low nibble first), all 2^(bits-1).
 *    A per-row (or coarser) scale is written once per block: block_size must divide the
 *    quantizer's groupSize, and each block repeats its group's scale.
 *
 *    test/quant-onnx.test.ts runs this packing through onnxruntime-node's own MatMulNBits kernel.
 */

/** Pack int4 values [rows, cols] into the published layout [rows, cols/2] (even column high). */
export function packInt4Published(q: Int8Array, rows: number, cols: number): Int8Array {
  if (cols % 2 !== 0) throw new QuantizationError(`int4 packing needs an even number of columns, got ${cols}`, 'quant-shape')
  if (q.length !== rows * cols) throw new QuantizationError(`expected ${rows * cols} values, got ${q.length}`, 'quant-shape')
  const out = new Int8Array(rows * cols / 2)
  for (let k = 0; k < out.length; k++) {
    const hi = q[2 * k]
    const lo = q[2 * k + 1]
    if (hi < -8 || hi > 7 || lo < -8 || lo > 7) throw new QuantizationError(`value ${hi < -8 || hi > 7 ? hi : lo} at element ${hi < -8 || hi > 7 ? 2 * k : 2 * k + 1} does not fit in 4 bits`, 'quant-range')
    out[k] = ((hi & 0xf) << 4) | (lo & 0xf) // Int8Array stores the low 8 bits, two's complement
  }
  return out
}

/** Inverse of packInt4Published: [rows, cols/2] bytes -> int4 values [rows, cols]. */
export function unpackInt4Published(packed: Int8Array, rows: number, cols: number): Int8Array {
  if (cols % 2 !== 0 || packed.length !== rows * cols / 2) throw new QuantizationError(`packed int4 weight has ${packed.length} bytes, expected ${rows} x ${cols}/2`, 'quant-shape')
  const out = new Int8Array(rows * cols)
  for (let k = 0; k < packed.length; k++) {
    const b = packed[k]
    out[2 * k] = b >> 4
    out[2 * k + 1] = (b << 28) >> 28
  }
  return out
}

/** The published `weight` tensor for a quantized weight: int8 [rows, cols] or packed [rows, cols/2]. */
export function publishedWeight(w: QuantizedWeight): Int8Array {
  return w.bits === 4 ? packInt4Published(w.q, w.rows, w.cols) : w.q
}

export type ScaleType = 'float32' | 'float16'

/** Inputs B, scales and (optionally) zero_points of one MatMulNBits node, with its attributes. */
export interface MatMulNBitsWeight {
  readonly K: number
  readonly N: number
  readonly bits: QuantBits
  readonly blockSize: number
  /** uint8 [N, kBlocks, blobSize]. */
  readonly B: Uint8Array
  readonly bShape: readonly [number, number, number]
  /** [N, kBlocks]: Float32Array for float32, fp16 bits in a Uint16Array for float16. */
  readonly scales: Float32Array | Uint16Array
  readonly scaleType: ScaleType
  readonly scalesShape: readonly [number, number]
  /** Packed uint8 [N, ceil(kBlocks * bits / 8)], or undefined to use the default 2^(bits-1). */
  readonly zeroPoints?: Uint8Array
  readonly zeroPointsShape?: readonly [number, number]
}

export interface MatMulNBitsOptions {
  /** Power of two >= 16 dividing the weight's groupSize; default: groupSize if it qualifies, else 128, 64, 32, 16. */
  blockSize?: number
  /** Must match the graph's activation type (T1); default float32. */
  scaleType?: ScaleType
  explicitZeroPoints?: boolean
}

function isBlockSize(b: number): boolean {
  return Number.isInteger(b) && b >= 16 && (b & (b - 1)) === 0
}

function pickBlockSize(groupSize: number, requested?: number): number {
  if (requested !== undefined) {
    if (!isBlockSize(requested)) throw new QuantizationError(`MatMulNBits block_size must be a power of two >= 16, got ${requested}`, 'quant-block')
    if (groupSize % requested !== 0) throw new QuantizationError(`MatMulNBits block_size ${requested} does not divide the quantization group size ${groupSize}: a block cannot hold two scales`, 'quant-block')
    return requested
  }
  if (isBlockSize(groupSize)) return groupSize
  for (const b of [128, 64, 32, 16]) if (groupSize % b === 0) return b
  throw new QuantizationError(`no MatMulNBits block_size (a power of two >= 16) divides the quantization group size ${groupSize}`, 'quant-block')
}

/** Lay out a quantized weight as MatMulNBits inputs (see the module comment for the exact packing). */
export function packMatMulNBits(w: QuantizedWeight, opts: MatMulNBitsOptions = {}): MatMulNBitsWeight {
  checkBits(w.bits)
  const blockSize = pickBlockSize(w.groupSize, opts.blockSize)
  const K = w.cols
  const N = w.rows
  const kBlocks = Math.ceil(K / blockSize)
  const blobSize = blockSize * w.bits / 8
  const zp = 2 ** (w.bits - 1)
  const groups = w.cols / w.groupSize
  const B = new Uint8Array(N * kBlocks * blobSize)
  if (w.bits === 8) B.fill(zp)
  else B.fill(zp | (zp << 4))
  for (let i = 0; i < w.q.length; i++) {
    if (w.q[i] < -zp || w.q[i] >= zp) throw new QuantizationError(`value ${w.q[i]} at element ${i} does not fit in ${w.bits} bits`, 'quant-range')
  }
  for (let n = 0; n < N; n++) {
    const row = n * K
    const out = n * kBlocks * blobSize
    if (w.bits === 8) {
      for (let k = 0; k < K; k++) B[out + k] = w.q[row + k] + zp
    } else {
      // Blocks are contiguous in K and blob_size = block_size/2, so byte k>>1 of the row is the
      // right byte of the right block; column k even -> low nibble, odd -> high nibble.
      for (let k = 0; k < K; k++) {
        const code = w.q[row + k] + zp
        const idx = out + (k >> 1)
        B[idx] = k & 1 ? (B[idx] & 0x0f) | (code << 4) : (B[idx] & 0xf0) | code
      }
    }
  }
  const scaleType = opts.scaleType ?? 'float32'
  const scales = scaleType === 'float16' ? new Uint16Array(N * kBlocks) : new Float32Array(N * kBlocks)
  const t = f16Table()
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kBlocks; b++) {
      const s = w.scales[n * groups + Math.floor(b * blockSize / w.groupSize)]
      scales[n * kBlocks + b] = scaleType === 'float16' ? s : t[s]
    }
  }
  const result: MatMulNBitsWeight = {K, N, bits: w.bits, blockSize, B, bShape: [N, kBlocks, blobSize], scales, scaleType, scalesShape: [N, kBlocks]}
  if (!opts.explicitZeroPoints) return result
  const zpCols = Math.ceil(kBlocks * w.bits / 8)
  const zeroPoints = new Uint8Array(N * zpCols)
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kBlocks; b++) {
      if (w.bits === 8) zeroPoints[n * zpCols + b] = zp
      else zeroPoints[n * zpCols + (b >> 1)] |= b & 1 ? zp << 4 : zp
    }
  }
  return {...result, zeroPoints, zeroPointsShape: [N, zpCols]}
}

/** Dequantize MatMulNBits inputs to f32 [N, K]: (code - zero_point) * scale, as the op defines it. */
export function dequantMatMulNBits(m: MatMulNBitsWeight): Float32Array {
  const {K, N, bits, blockSize} = m
  const kBlocks = Math.ceil(K / blockSize)
  const blobSize = blockSize * bits / 8
  const zpCols = Math.ceil(kBlocks * bits / 8)
  const t = f16Table()
  const out = new Float32Array(N * K)
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) {
      const b = Math.floor(k / blockSize)
      const within = k - b * blockSize
      const base = (n * kBlocks + b) * blobSize
      const code = bits === 8 ? m.B[base + within] : (m.B[base + (within >> 1)] >> (within & 1 ? 4 : 0)) & 0xf
      let zp = 2 ** (bits - 1)
      if (m.zeroPoints) zp = bits === 8 ? m.zeroPoints[n * zpCols + b] : (m.zeroPoints[n * zpCols + (b >> 1)] >> (b & 1 ? 4 : 0)) & 0xf
      const raw = m.scales[n * kBlocks + b]
      const s = m.scaleType === 'float16' ? t[raw] : raw
      out[n * K + k] = (code - zp) * s
    }
  }
  return out
}
