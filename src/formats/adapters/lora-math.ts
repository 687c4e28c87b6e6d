/**
 * The LoRA merge, W += scale * (B @ A), as pure functions over Float32Arrays (docs/chatglm.md
 * section 7). No I/O, so the tests check them on hand-made numbers.
 */

/** One module's LoRA factors, decoded to float32, and how they apply to its [rows, cols] weight. */
export interface LoraDelta {
  /** lora_A weight, row-major: [rank, cols], or [rank, rows] with fanInFanOut. */
  readonly a: Float32Array
  /** lora_B weight, row-major: [rows, rank], or [cols, rank] with fanInFanOut. */
  readonly b: Float32Array
  readonly rank: number
  /** The base weight's shape, [out, in] as PyTorch stores a Linear weight. */
  readonly rows: number
  readonly cols: number
  readonly scale: number
  /** The delta is (B @ A) transposed (PEFT's fan_in_fan_out, for weights stored [in, out]). */
  readonly fanInFanOut: boolean
}

/** PEFT's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora (rsLoRA, arXiv:2312.03732). */
export function loraScale(alpha: number, rank: number, useRslora: boolean): number {
  return useRslora ? alpha / Math.sqrt(rank) : alpha / rank
}

/**
 * Add the delta to whole rows of the base weight, in place: `w` holds rows
 * [firstRow, firstRow + w.length / cols), row-major, as float32.
 *
 * The arithmetic is PEFT's merge, `W + (B @ A) * scale`, in float32, each step rounded to
 * float32 as torch does it: the B @ A entry (its r products summed in double, then rounded
 * once, so it is the correctly rounded float32 matmul), times the scale rounded to float32
 * (torch multiplies a float32 tensor by a Python float in float32), then added to W.
 * Rounding the sum of two floats computed in double to float32 is exact rounding (double
 * has more than 2*24+2 bits), so every step equals the float32 operation.
 *
 * Cost is rows * cols * rank multiply-adds; each output row is built from A's rows (or,
 * transposed, from B's rows) read contiguously.
 */
export function addLoraRows(w: Float32Array, firstRow: number, d: LoraDelta, scratch: Float64Array = new Float64Array(d.cols)): void {
  const {a, b, rank: r, rows, cols} = d
  if (w.length % cols !== 0) throw new RangeError(`addLoraRows: ${w.length} values are not whole rows of ${cols}`)
  const n = w.length / cols
  if (firstRow < 0 || firstRow + n > rows) throw new RangeError(`addLoraRows: rows ${firstRow}..${firstRow + n - 1} outside [0, ${rows})`)
  const s = Math.fround(d.scale)
  const acc = scratch
  const aCol = new Float64Array(r)
  for (let j = 0; j < n; j++) {
    const o = firstRow + j
    if (!d.fanInFanOut) {
      // delta[o, :] = sum_k B[o, k] * A[k, :]
      // Four ranks per pass over the row: a quarter of the loads and stores of acc. Every
      // product of two floats is exact in double, so only the double sum's rounding (2^-53)
      // depends on the grouping.
      acc.fill(0, 0, cols)
      let k = 0
      for (; k + 4 <= r; k += 4) {
        const b0 = b[o * r + k]
        const b1 = b[o * r + k + 1]
        const b2 = b[o * r + k + 2]
        const b3 = b[o * r + k + 3]
        if (b0 === 0 && b1 === 0 && b2 === 0 && b3 === 0) continue // an untrained B is all zeros
        const o0 = k * cols
        const o1 = o0 + cols
        const o2 = o1 + cols
        const o3 = o2 + cols
        for (let i = 0; i < cols; i++) acc[i] += (b0 * a[o0 + i] + b1 * a[o1 + i]) + (b2 * a[o2 + i] + b3 * a[o3 + i])
      }
      for (; k < r; k++) {
        const bk = b[o * r + k]
        if (bk === 0) continue
        const off = k * cols
        for (let i = 0; i < cols; i++) acc[i] += bk * a[off + i]
      }
    } else {
      // delta = (B @ A)^T with A [r, rows], B [cols, r]: delta[o, i] = sum_k B[i, k] * A[k, o]
      for (let k = 0; k < r; k++) aCol[k] = a[k * rows + o]
      for (let i = 0; i < cols; i++) {
        let sum = 0
        const off = i * r
        for (let k = 0; k < r; k++) sum += b[off + k] * aCol[k]
        acc[i] = sum
      }
    }
    const base = j * cols
    for (let i = 0; i < cols; i++) w[base + i] = w[base + i] + Math.fround(Math.fround(acc[i]) * s)
  }
}

/** Index of the first NaN or infinite value, or -1. */
export function firstNonFinite(values: Float32Array): number {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) return i
  return -1
}

/**
 * Index of the first element of `encoded` (the `values` cast to `dtype`) that is NaN or
 * infinite, or -1. A finite float32 above 65504 becomes Inf in F16 (above ~3.4e38 in BF16),
 * so the check is on the encoded bits: exponent all ones.
 */
export function firstNonFiniteEncoded(encoded: Buffer, values: Float32Array, dtype: string): number {
  if (dtype === 'F16' || dtype === 'BF16') {
    const mask = dtype === 'F16' ? 0x7c00 : 0x7f80
    // A typed view when aligned (the usual case, and ~10x faster than readUInt16LE); x86 and
    // ARM are little-endian like the encoding.
    const u16 = encoded.byteOffset % 2 === 0 ? new Uint16Array(encoded.buffer, encoded.byteOffset, values.length) : undefined
    for (let i = 0; i < values.length; i++) if (((u16 ? u16[i] : encoded.readUInt16LE(2 * i)) & mask) === mask) return i
    return -1
  }
  return firstNonFinite(values)
}
