import {f16Table, f32ToF16Bits, roundHalfEven} from './fp16.js'
import {type QuantBits, qmax, QuantizationError, type QuantizedWeight} from './rtn.js'

/**
 * The hot loops of calibrate.ts (calibrateLinear), written for speed over every weight of a 6B
 * layer (~200M weights, 23 surrogate candidates each) and bit for bit equal to the plain
 * formulas they replace (test/quant-calibrate-kernels.test.ts checks them against a verbatim
 * copy of the plain code, test/helpers/calibrate-reference.ts, on random and edge-case inputs).
 * Every float operation that feeds a result is the plain code's, with the same operands in the
 * same order; what changed is how often things are computed and what is skipped where it is
 * provably a no-op:
 *
 * - w_i * s_i is computed once per candidate s and row (it is exact in f64: a product of two
 *   f32 values has at most 48 significant bits) and reused by the max and the residual pass; a
 *   clipping search reuses it, and the group's max, for every ratio.
 * - round(ws / scale) (JavaScript's Math.round: nearest, ties up) is taken from ws * (1 / scale),
 *   which is within 2^-51 relative of the correctly rounded quotient, whenever that product is
 *   more than 1e-12 from a half-integer (|quotient| < qmax + 1, so 1e-12 is > 100 times the
 *   error) and so rounds the same way; else from the division itself. A quotient beyond
 *   +-(qmax + 1) clamps to +-qmax either way; NaN and infinities take the division.
 * - q = 0 gives the residual w itself (w - (+-0 * scale) / s = w, up to the sign of a zero that
 *   is squared away), so its division is skipped; with s all ones, x / 1 = x and is skipped.
 * - The exact quantizer's q = round_half_even(fp16(w / scale)) takes rtn-rows.ts's fast path
 *   (floor(w * (1 / scale) + 0.5) away from half-integers, the exact fp16 path near them).
 */

/**
 * sum_i meanSq_i d_i^2 (added to acc in i order) over one group, d = w - clamp(round(ws / scale))
 * * scale / s, from ws = w * s (calibrate.ts's surrogate; scale 0: d = w). `unit`: s is all ones.
 * The loop has no data-dependent branch but the rare near-tie one (a mispredicted branch per
 * weight costs more than the rest of the arithmetic).
 */
export function diagonalGroupFast(w: Float32Array, ws: Float64Array, off: number, start: number, len: number, s: Float32Array, unit: boolean,
  scale: number, m: number, meanSq: ArrayLike<number>, acc: number): number {
  let e = acc
  if (scale === 0) {
    for (let i = 0; i < len; i++) {
      const wi = w[off + start + i]
      e += meanSq[start + i] * wi * wi
    }
    return e
  }
  const inv = 1 / scale
  const end = start + len
  if (unit) {
    for (let c = start; c < end; c++) {
      const wi = w[off + c]
      const q = roundClamped(ws[c], scale, inv, m)
      const di = wi - q * scale
      e += meanSq[c] * di * di
    }
    return e
  }
  for (let c = start; c < end; c++) {
    const wi = w[off + c]
    const q = roundClamped(ws[c], scale, inv, m)
    const di = wi - q * scale / s[c]
    e += meanSq[c] * di * di
  }
  return e
}

/**
 * Math.round(x / scale) (nearest, ties up) clamped to [-m, m]; inv = 1 / scale. floor(x * inv +
 * 0.5) is that rounding unless x * inv + 0.5 is within 1e-12 of an integer (x * inv is within
 * 2^-51 relative of the quotient; beyond +-(m + 1) the clamp hides any difference), where the
 * division decides; NaN takes the division too.
 */
export function roundClamped(x: number, scale: number, inv: number, m: number): number {
  const t = x * inv + 0.5
  let q = Math.floor(t)
  if (!(Math.abs(t - q - 0.5) < 0.5 - 1e-12)) q = Math.round(x / scale)
  return q > m ? m : q < -m ? -m : q // not Math.min/max: V8's keep -0 and NaN semantics at ~4x the cost
}

/** ws[start...] = w * s over one group; returns max |ws|. */
function scaleGroup(w: Float32Array, off: number, start: number, len: number, s: Float32Array, ws: Float64Array): number {
  let max = 0
  for (let i = 0; i < len; i++) {
    const c = start + i
    const x = w[off + c] * s[c]
    ws[c] = x
    const a = Math.abs(x)
    if (a > max) max = a
  }
  return max
}

/**
 * Diagonal surrogate error of plain RTN (no clipping) of W·diag(s) for each candidate s:
 * calibrate.ts's beta search, sum over rows of (sum over the row's groups, in order).
 */
export function surrogateErrorsDiagonal(w: Float32Array, rows: number, cols: number, groupSize: number, bits: QuantBits,
  candidates: readonly Float32Array[], unit: readonly boolean[], meanSq: ArrayLike<number>): Float64Array {
  const rowError = diagonalRowError(w, cols, groupSize, bits, candidates, unit, meanSq)
  const out = new Float64Array(candidates.length)
  for (let k = 0; k < candidates.length; k++) {
    let e = 0
    for (let r = 0; r < rows; r++) e += rowError(k, r)
    out[k] = e
  }
  return out
}

/** Row r's diagonal surrogate error under candidate k (its groups summed in order), one scratch row shared. */
function diagonalRowError(w: Float32Array, cols: number, groupSize: number, bits: QuantBits,
  candidates: readonly Float32Array[], unit: readonly boolean[], meanSq: ArrayLike<number>): (k: number, r: number) => number {
  const groups = cols / groupSize
  const m = qmax(bits)
  const ws = new Float64Array(cols)
  return (k, r) => {
    const s = candidates[k]
    const off = r * cols
    let rowE = 0
    for (let g = 0; g < groups; g++) {
      const start = g * groupSize
      const max = scaleGroup(w, off, start, groupSize, s, ws)
      rowE = diagonalGroupFast(w, ws, off, start, groupSize, s, unit[k], 1 * max / m, m, meanSq, rowE)
    }
    return rowE
  }
}

/**
 * Whether every surrogate term meanSq_i d_i^2 is >= 0 and never NaN (finite weights, scales
 * positive and finite, meanSq finite and >= 0), so that a running sum only grows: then a
 * candidate whose partial sum already passes the best total cannot win, and its evaluation
 * stops there (fl(a + b) >= a for b >= 0, rounding being monotone). The choice is the plain
 * search's -- the first minimum in grid order -- whatever order candidates are tried in, as
 * long as a tie goes to the earlier grid position (better).
 */
export function prunable(w: Float32Array, s: readonly Float32Array[], meanSq: ArrayLike<number>): boolean {
  for (let i = 0; i < meanSq.length; i++) if (!(meanSq[i] >= 0 && meanSq[i] < Infinity)) return false
  for (let i = 0; i < w.length; i++) if (!Number.isFinite(w[i])) return false
  for (const x of s) for (let i = 0; i < x.length; i++) if (!(x[i] > 0 && x[i] < Infinity)) return false
  return true
}

/** Candidate `pos` (error e) beats the best so far (bestErr at bestPos): lower, or equal and earlier in the grid. */
function better(e: number, pos: number, bestErr: number, bestPos: number): boolean {
  return e < bestErr || (e === bestErr && pos < bestPos)
}

/** A partial sum e of candidate pos can no longer beat (bestErr, bestPos). */
function beaten(e: number, pos: number, bestErr: number, bestPos: number): boolean {
  return pos < bestPos ? e > bestErr : e >= bestErr
}

/**
 * The beta search's choice: the index of the first candidate s with the least diagonal
 * surrogate error (surrogateErrorsDiagonal) and that error. Candidates are tried in the order of
 * their error on every 16th row, and one whose running total passes the best is dropped
 * (prunable); without prunable inputs, every total is computed.
 */
export function chooseScaleDiagonal(w: Float32Array, rows: number, cols: number, groupSize: number, bits: QuantBits,
  candidates: readonly Float32Array[], unit: readonly boolean[], meanSq: ArrayLike<number>): {index: number, error: number} {
  if (!prunable(w, candidates, meanSq)) {
    const e = surrogateErrorsDiagonal(w, rows, cols, groupSize, bits, candidates, unit, meanSq)
    let index = 0
    for (let k = 1; k < e.length; k++) if (e[k] < e[index]) index = k
    return {index, error: e[index]}
  }
  const rowError = diagonalRowError(w, cols, groupSize, bits, candidates, unit, meanSq)
  const sampled = candidates.map((_, k) => {
    let e = 0
    for (let r = 0; r < rows; r += 16) e += rowError(k, r)
    return e
  })
  const order = candidates.map((_, k) => k).sort((a, b) => sampled[a] - sampled[b] || a - b)
  let bestPos = -1
  let bestErr = 0
  for (const k of order) {
    let e = 0
    let r = 0
    for (; r < rows; r++) {
      e += rowError(k, r)
      if (bestPos >= 0 && beaten(e, k, bestErr, bestPos)) break
    }
    if (bestPos < 0 || (r === rows && better(e, k, bestErr, bestPos))) [bestPos, bestErr] = [k, e]
  }
  return {index: bestPos, error: bestErr}
}

/** diagonalGroupFast from 0, stopping (NaN) once the partial sum can no longer beat (bestErr, bestPos); checked every 256 columns. */
function boundedGroup(w: Float32Array, ws: Float64Array, off: number, start: number, len: number, s: Float32Array, unit: boolean,
  scale: number, m: number, meanSq: ArrayLike<number>, pos: number, bestErr: number, bestPos: number): number {
  let e = 0
  for (let c = 0; c < len; c += 256) {
    e = diagonalGroupFast(w, ws, off, start + c, Math.min(256, len - c), s, unit, scale, m, meanSq, e)
    if (beaten(e, pos, bestErr, bestPos)) return Number.NaN
  }
  return e
}

/**
 * Per-(row, group) clipping ratio under the diagonal metric (groups independent): alpha = 1
 * unless a ratio of the grid scores strictly lower, the first such on ties, as calibrate.ts's
 * plain loop. With prunable inputs each group tries the previous group's winner first and drops
 * a ratio once its partial error passes the best.
 */
export function searchClippingDiagonal(w: Float32Array, rows: number, cols: number, groupSize: number, bits: QuantBits,
  s: Float32Array, unit: boolean, alphas: readonly number[], meanSq: ArrayLike<number>): Float32Array {
  const groups = cols / groupSize
  const m = qmax(bits)
  const alpha = new Float32Array(rows * groups).fill(1)
  const ws = new Float64Array(cols)
  // Grid positions: 0 is the starting point alpha = 1, then the grid without its 1s.
  const grid = [1, ...alphas.filter(a => a !== 1)]
  const prune = prunable(w, [s], meanSq)
  let first = 0
  for (let r = 0; r < rows; r++) {
    const off = r * cols
    for (let g = 0; g < groups; g++) {
      const c0 = g * groupSize
      const max = scaleGroup(w, off, c0, groupSize, s, ws)
      if (!prune) {
        let bestErr = diagonalGroupFast(w, ws, off, c0, groupSize, s, unit, 1 * max / m, m, meanSq, 0)
        for (const a of alphas) {
          if (a === 1) continue // the starting point
          const e = diagonalGroupFast(w, ws, off, c0, groupSize, s, unit, a * max / m, m, meanSq, 0)
          if (e < bestErr) {
            bestErr = e
            alpha[r * groups + g] = a
          }
        }
        continue
      }
      let bestPos = first
      let bestErr = diagonalGroupFast(w, ws, off, c0, groupSize, s, unit, grid[first] * max / m, m, meanSq, 0)
      for (let k = 0; k < grid.length; k++) {
        if (k === first) continue
        const e = boundedGroup(w, ws, off, c0, groupSize, s, unit, grid[k] * max / m, m, meanSq, k, bestErr, bestPos)
        if (better(e, k, bestErr, bestPos)) [bestPos, bestErr] = [k, e]
      }
      alpha[r * groups + g] = grid[bestPos]
      first = bestPos
    }
  }
  return alpha
}

/** fp16 bits of row r of W·diag(s) into out [cols]; throws where one is not finite in fp16. */
export function scaledRowBits(w: Float32Array, r: number, cols: number, s: Float32Array, out: Uint16Array): void {
  const off = r * cols
  for (let i = 0; i < cols; i++) {
    const x = w[off + i] * s[i]
    const h = f32ToF16Bits(x)
    if ((h & 0x7c00) === 0x7c00) throw new QuantizationError(`weight ${x} at row ${r}, column ${i} is not finite in fp16 after input scaling`, 'quant-range')
    out[i] = h
  }
}

/**
 * rtn.ts's groupScaleBits + quantizeGroup on finite fp16 bits ws[start...]: scale fp16(alpha *
 * max / qmax) (fp16(max / qmax) for alpha 1), codes clamp(round_half_even(fp16(w / scale))), 0
 * for non-finite quotients. Returns the scale bits.
 */
export function quantizeGroupFast(ws: Uint16Array, start: number, len: number, bits: QuantBits, alpha: number, out: Int8Array, outOff: number): number {
  const t = f16Table()
  const m = qmax(bits)
  let max = 0
  for (let i = 0; i < len; i++) {
    const a = Math.abs(t[ws[start + i]])
    if (a > max) max = a
  }
  const sb = f32ToF16Bits(alpha === 1 ? max / m : alpha * max / m)
  const s = t[sb]
  if (!(s > 0 && s < Infinity)) {
    // 0/0 and w/0 give 0 (rtn.ts); an infinite scale cannot come from a finite fp16 max, but
    // take quantizeGroup's own arithmetic rather than reason about it.
    for (let i = 0; i < len; i++) {
      let v = roundHalfEven(t[f32ToF16Bits(t[ws[start + i]] / s)])
      if (!Number.isFinite(v)) v = 0
      out[outOff + i] = v > m ? m : v < -m ? -m : v
    }
    return sb
  }
  const inv = 1 / s
  for (let i = 0; i < len; i++) {
    const wi = t[ws[start + i]]
    const x = wi * inv
    // rtn-rows.ts: floor(x + 0.5) is the fp16 quotient's rounding unless x is near a half-integer
    // (the margin goes negative for |x| > 510, so large quotients, inf included, are exact).
    const y = x + 0.5
    let v = Math.floor(y)
    if (Math.abs(y - v - 0.5) >= 0.5 - Math.abs(x) * 9.8e-4 - 6e-8) {
      v = roundHalfEven(t[f32ToF16Bits(wi / s)])
      if (!Number.isFinite(v)) v = 0
    }
    out[outOff + i] = v > m ? m : v < -m ? -m : v
  }
  return sb
}

/**
 * Exact quantization of W·diag(s) in the published arithmetic with clipping ratios per (row,
 * group) (null: 1): one, or with `alphaToo` two at once (alpha all 1, and `alphaToo`), sharing
 * each row's fp16 W·diag(s).
 */
export function quantizeScaledFast(w: Float32Array, rows: number, cols: number, groupSize: number, bits: QuantBits,
  s: Float32Array, alpha: Float32Array | null, alphaToo?: Float32Array): {first: QuantizedWeight, second?: QuantizedWeight} {
  const groups = cols / groupSize
  const q = new Int8Array(rows * cols)
  const scales = new Uint16Array(rows * groups)
  const q2 = alphaToo ? new Int8Array(rows * cols) : undefined
  const scales2 = alphaToo ? new Uint16Array(rows * groups) : undefined
  const ws = new Uint16Array(cols)
  for (let r = 0; r < rows; r++) {
    scaledRowBits(w, r, cols, s, ws)
    for (let g = 0; g < groups; g++) {
      const start = g * groupSize
      scales[r * groups + g] = quantizeGroupFast(ws, start, groupSize, bits, alpha ? alpha[r * groups + g] : 1, q, r * cols + start)
      if (alphaToo) scales2![r * groups + g] = quantizeGroupFast(ws, start, groupSize, bits, alphaToo[r * groups + g], q2!, r * cols + start)
    }
  }
  return {
    first: {bits, rows, cols, groupSize, q, scales},
    ...(alphaToo ? {second: {bits, rows, cols, groupSize, q: q2!, scales: scales2!}} : {}),
  }
}

/**
 * Errors of the effective weight Ŵ = q * scale / s against W in one pass: the diagonal output
 * error sum_r (sum_i meanSq_i d_i^2 over the row) (when meanSq is given, else 0), and sum d^2,
 * sum W^2 over all elements (the relative Frobenius error's terms), d = W - Ŵ.
 */
export function effectiveErrors(w: Float32Array, qw: QuantizedWeight, s: Float32Array, unit: boolean, meanSq: ArrayLike<number> | null): {output: number, num: number, den: number} {
  const t = f16Table()
  const {rows, cols, groupSize, q, scales} = qw
  const groups = cols / groupSize
  let output = 0
  let num = 0
  let den = 0
  for (let r = 0; r < rows; r++) {
    const off = r * cols
    let rowE = 0
    for (let g = 0; g < groups; g++) {
      const sc = t[scales[r * groups + g]]
      const start = g * groupSize
      for (let c = start; c < start + groupSize; c++) {
        const wi = w[off + c]
        const d = wi - (unit ? q[off + c] * sc : q[off + c] * sc / s[c])
        if (meanSq) rowE += meanSq[c] * d * d
        num += d * d
        den += wi * wi
      }
    }
    output += rowE
  }
  return {output, num, den}
}
