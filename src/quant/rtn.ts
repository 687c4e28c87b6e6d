import {GlmtoolError} from '../errors.js'
import {f16Table, f32ToF16Bits, roundHalfEven} from './fp16.js'

/**
 * Round-to-nearest symmetric weight quantization, as ChatGLM's published `quantization.py`
 * does it (docs/chatglm.md section 8; THUDM/chatglm-6b and THUDM/chatglm2-6b, class
 * QuantizedLinear):
 *
 *     weight_scale = weight.abs().max(dim=-1).values / (2 ** (bits - 1) - 1)    # fp16 tensor
 *     weight       = torch.round(weight / weight_scale[:, None]).to(torch.int8)
 *
 * on fp16 weights (the model is loaded `.half()` and moved to CUDA before quantize() runs).
 * Every step is fp16 arithmetic: |W| and max are exact, the division by the Python int
 * 2^(bits-1)-1 and the division W / scale are each one correctly rounded fp16 result (see
 * fp16.ts for why computing in f32 and rounding reproduces that), and torch.round rounds half
 * to even. The grouped variant applies the same formula to each run of `groupSize` input
 * columns, giving one scale per (row, group); groupSize = cols is the published per-channel case.
 *
 * Bits are bit-identical to torch (test/fixtures/quant/make_quant_fixtures.py). Cases the
 * published code does not spell out:
 * - An all-zero group: scale is 0, 0/0 is NaN, round(NaN) is NaN, and NaN.to(torch.int8)
 *   gives 0 (torch 1.13 CPU, recorded in the fixtures, and torch 2.11 on CUDA, checked with
 *   make_quant_fixtures.py --check-cuda on an H200). So q = 0, scale = 0: the group dequantizes to 0.
 * - A scale that underflows to 0 while the group holds tiny non-zero weights (max|W| < qmax *
 *   2^-25) makes W/0 = +-inf. torch's CPU conversion gives 0 for +-inf, CUDA gives -1 for +inf
 *   and 0 for -inf; we give 0. The dequantized value is q * 0 = 0 whatever q is.
 * - The int8 result is clamped to [-qmax, qmax]. The published code does not clamp, and with a
 *   normal fp16 scale never needs to (|W / fp16(max/qmax)| <= qmax * (1 + 2^-11) < qmax + 0.5).
 *   But a subnormal scale (max|W| < qmax * 2^-14) has so few bits that max/scale can round to
 *   qmax + 1 or more: torch then stores 8 (int4: packs as -8) or 128 (wraps to -128 in int8),
 *   flipping the weight's sign. We clamp instead, the one place we knowingly differ from the
 *   published bits (the fixtures record both). The clamp also serves clipped scales (calibrate.ts).
 * - Non-finite weights (NaN, +-inf) are rejected: torch would turn the whole row into zeros.
 */

export type QuantBits = 4 | 8

/** A quantized [rows, cols] weight in the published (unpacked) layout. */
export interface QuantizedWeight {
  readonly bits: QuantBits
  readonly rows: number
  readonly cols: number
  /** Input columns per scale; `cols` for the published per-output-channel scheme. */
  readonly groupSize: number
  /** Signed integers in [-qmax, qmax], row-major [rows, cols]. */
  readonly q: Int8Array
  /** fp16 bits, row-major [rows, cols / groupSize]. */
  readonly scales: Uint16Array
}

export class QuantizationError extends GlmtoolError {
  constructor(message: string, code = 'quant') {
    super(code, message)
  }
}

/** Largest code magnitude of symmetric `bits`-bit quantization: 2^(bits-1) - 1 (7 or 127). */
export function qmax(bits: QuantBits): number {
  return 2 ** (bits - 1) - 1
}

export function checkBits(bits: number): asserts bits is QuantBits {
  if (bits !== 4 && bits !== 8) throw new QuantizationError(`unsupported quantization bits ${bits}: only 4 and 8 are supported`, 'quant-bits')
}

/** Validates shape and group size; returns the number of groups per row. */
export function checkShape(length: number, rows: number, cols: number, groupSize: number): number {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1) {
    throw new QuantizationError(`bad weight shape [${rows}, ${cols}]`, 'quant-shape')
  }
  if (length !== rows * cols) {
    throw new QuantizationError(`weight has ${length} elements, expected ${rows} x ${cols} = ${rows * cols}`, 'quant-shape')
  }
  if (!Number.isInteger(groupSize) || groupSize < 1 || cols % groupSize !== 0) {
    throw new QuantizationError(`group size ${groupSize} does not divide the ${cols} input columns`, 'quant-group')
  }
  return cols / groupSize
}

export interface RtnOptions {
  bits: QuantBits
  /** Columns per scale (e.g. 32, 64, 128); default: all columns (published per-channel scheme). */
  groupSize?: number
}

/** Quantize fp16 weight bits [rows, cols] (see the module comment for the exact arithmetic). */
export function quantizeRtn(weight: Uint16Array, rows: number, cols: number, opts: RtnOptions): QuantizedWeight {
  checkBits(opts.bits)
  const groupSize = opts.groupSize ?? cols
  const groups = checkShape(weight.length, rows, cols, groupSize)
  const t = f16Table()
  for (let k = 0; k < weight.length; k++) {
    if (!Number.isFinite(t[weight[k]])) throw new QuantizationError(`non-finite weight ${t[weight[k]]} at row ${Math.floor(k / cols)}, column ${k % cols}`, 'quant-nonfinite')
  }
  const q = new Int8Array(rows * cols)
  const scales = new Uint16Array(rows * groups)
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const base = r * cols + g * groupSize
      const s = groupScaleBits(weight, base, groupSize, opts.bits)
      scales[r * groups + g] = s
      quantizeGroup(weight, base, groupSize, s, opts.bits, q, base)
    }
  }
  return {bits: opts.bits, rows, cols, groupSize, q, scales}
}

/**
 * fp16 scale of one group: fp16(alpha * max|W| / qmax). With alpha = 1 (the published scheme)
 * that is one correctly rounded fp16 division of the exact fp16 max, as torch computes it.
 * alpha < 1 (clipping, calibrate.ts) rounds the exact product-quotient once.
 */
export function groupScaleBits(weight: Uint16Array, start: number, len: number, bits: QuantBits, alpha = 1): number {
  const t = f16Table()
  let max = 0
  for (let i = 0; i < len; i++) {
    const a = Math.abs(t[weight[start + i]])
    if (a > max) max = a
  }
  return f32ToF16Bits(alpha === 1 ? max / qmax(bits) : alpha * max / qmax(bits))
}

/**
 * Codes of one group for an fp16 scale: q = clamp(round_half_even(fp16(W / scale)), +-qmax),
 * non-finite quotients (0/0, w/0) -> 0. Writes `len` codes to out[outOff...].
 */
export function quantizeGroup(weight: Uint16Array, start: number, len: number, scaleBits: number, bits: QuantBits, out: Int8Array, outOff: number): void {
  const t = f16Table()
  const m = qmax(bits)
  const s = t[scaleBits]
  for (let i = 0; i < len; i++) {
    let v = roundHalfEven(t[f32ToF16Bits(t[weight[start + i]] / s)])
    if (!Number.isFinite(v)) v = 0 // 0/0 or w/0: torch's float -> int8 gives 0
    out[outOff + i] = v > m ? m : v < -m ? -m : v
  }
}

/** The second half of the published formula with given fp16 scales [rows, cols / groupSize]. */
export function quantizeWithScales(weight: Uint16Array, rows: number, cols: number, scales: Uint16Array, bits: QuantBits, groupSize: number): Int8Array {
  checkBits(bits)
  const groups = checkShape(weight.length, rows, cols, groupSize)
  if (scales.length !== rows * groups) throw new QuantizationError(`expected ${rows * groups} scales, got ${scales.length}`, 'quant-shape')
  const q = new Int8Array(rows * cols)
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const base = r * cols + g * groupSize
      quantizeGroup(weight, base, groupSize, scales[r * groups + g], bits, q, base)
    }
  }
  return q
}

export type WeightDType = 'F16' | 'BF16' | 'F32'

/**
 * Bring a weight to fp16 bits before quantizing, as the published code only ever quantizes fp16
 * weights (v1 loads the model `.half()`; v2 quantizes in the checkpoint's dtype, which is fp16 for
 * the published chatglm2-6b). f32 and bf16 round to nearest even, as torch's `.half()` does
 * (bf16 -> fp16 goes through an exact f32). A value beyond fp16's range (|x| > 65504 after
 * rounding) is an error rather than a silent inf; values below 2^-25 become zero, as in torch.
 */
export function toFp16Weight(data: Uint16Array | Float32Array, dtype: WeightDType): Uint16Array {
  if (dtype === 'F16') {
    if (!(data instanceof Uint16Array)) throw new QuantizationError('F16 weights must be given as Uint16Array bits', 'quant-dtype')
    return data
  }
  const out = new Uint16Array(data.length)
  if (dtype === 'BF16') {
    if (!(data instanceof Uint16Array)) throw new QuantizationError('BF16 weights must be given as Uint16Array bits', 'quant-dtype')
    const f = new Float32Array(1)
    const u = new Uint32Array(f.buffer)
    for (let i = 0; i < data.length; i++) {
      u[0] = data[i] << 16
      out[i] = checkedF16(f[0], i)
    }
  } else if (dtype === 'F32') {
    if (!(data instanceof Float32Array)) throw new QuantizationError('F32 weights must be given as Float32Array', 'quant-dtype')
    for (let i = 0; i < data.length; i++) out[i] = checkedF16(data[i], i)
  } else {
    throw new QuantizationError(`cannot quantize ${dtype as string} weights`, 'quant-dtype')
  }
  return out
}

function checkedF16(x: number, i: number): number {
  const h = f32ToF16Bits(x)
  if ((h & 0x7c00) === 0x7c00 && Number.isFinite(x)) throw new QuantizationError(`weight ${x} at element ${i} is outside fp16's range`, 'quant-range')
  return h
}
