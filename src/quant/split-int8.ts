/**
 * A float matrix as the sum of two 8-bit terms, w ~= q1 * s1 + q2 * s2, per block of `block`
 * input columns of each row (issue 13): q1 = round(w / s1) with s1 = max|w| / 127 over the block,
 * then the remainder r = w - q1 s1 (|r| <= s1 / 2) the same way, s2 = max|r| / 127. The error is
 * at most s2 / 2 <= max|w| / 64516 of the block, below float16's own rounding (|w| / 2048) for
 * every element larger than 1/31 of its block's largest: the two terms hold a float16 weight as
 * closely as float16 holds it, in the same 2 bytes a weight, in a form onnxruntime's integer
 * MatMulNBits kernels read at their speed (a float16 or float32 MatMul on the CPU reads the
 * output layer as float32: twice the bytes). Pure: no I/O.
 */

export interface SplitInt8 {
  /** Codes of the two terms, [rows * K] row-major, each in -127..127. */
  readonly q: readonly [Int8Array, Int8Array]
  /** Their scales, [rows * K / block]: block j of row n at n * (K / block) + j. */
  readonly scales: readonly [Float32Array, Float32Array]
}

/** `terms` 1: only the first term (the second's codes and scales left zero), for a caller that needs no more. */
export function splitInt8(w: Float32Array, rows: number, K: number, block: number, terms: 1 | 2 = 2): SplitInt8 {
  if (!Number.isInteger(block) || block < 1 || K % block !== 0) throw new Error(`splitInt8: block ${block} does not divide the row width ${K}`)
  if (w.length !== rows * K) throw new Error(`splitInt8: ${w.length} values for ${rows} x ${K}`)
  const q1 = new Int8Array(rows * K)
  const q2 = new Int8Array(rows * K)
  const blocks = rows * (K / block)
  const s1 = new Float32Array(blocks)
  const s2 = new Float32Array(blocks)
  const r = new Float64Array(block)
  for (let b = 0; b < blocks; b++) {
    const o = b * block
    let m = 0
    for (let i = 0; i < block; i++) m = Math.max(m, Math.abs(w[o + i]))
    // scales are float32 in the graph: compute with the rounded value, so the remainder is of what is stored
    const a = Math.fround(m / 127)
    s1[b] = a
    let m2 = 0
    for (let i = 0; i < block; i++) {
      const c = a > 0 ? Math.max(-127, Math.min(127, Math.round(w[o + i] / a))) : 0
      q1[o + i] = c
      r[i] = w[o + i] - c * a
      m2 = Math.max(m2, Math.abs(r[i]))
    }
    if (terms === 1) continue
    const a2 = Math.fround(m2 / 127)
    s2[b] = a2
    for (let i = 0; i < block; i++) q2[o + i] = a2 > 0 ? Math.max(-127, Math.min(127, Math.round(r[i] / a2))) : 0
  }
  return {q: [q1, q2], scales: [s1, s2]}
}
