import {QuantizationError} from './rtn.js'

/**
 * Error measures for the quantization report: per layer (weight and activation-weighted output
 * error) and end to end (KL divergence and top-1 agreement of next-token logits). All sums in f64.
 */

/** ||W - Ŵ||_F / ||W||_F (0 for an all-zero W reproduced exactly). */
export function relativeFrobenius(w: ArrayLike<number>, wHat: ArrayLike<number>): number {
  sameLength(w, wHat)
  let num = 0
  let den = 0
  for (let i = 0; i < w.length; i++) {
    const d = w[i] - wHat[i]
    num += d * d
    den += w[i] * w[i]
  }
  if (den === 0) return num === 0 ? 0 : Infinity
  return Math.sqrt(num / den)
}

/**
 * sum_o sum_i E[x_i^2] (W[o,i] - Ŵ[o,i])^2: the expected squared output error E||x (W - Ŵ)^T||^2
 * when input channels are uncorrelated (the diagonal of the second moment E[x x^T]). This is the
 * objective AWQ-style and activation-weighted clipping searches minimise (calibrate.ts).
 */
export function weightedOutputError(w: ArrayLike<number>, wHat: ArrayLike<number>, rows: number, cols: number, meanSq: ArrayLike<number>): number {
  sameLength(w, wHat)
  if (w.length !== rows * cols || meanSq.length !== cols) throw new QuantizationError(`weightedOutputError: shapes do not match [${rows}, ${cols}]`, 'quant-shape')
  let e = 0
  for (let r = 0; r < rows; r++) {
    const base = r * cols
    for (let i = 0; i < cols; i++) {
      const d = w[base + i] - wHat[base + i]
      e += meanSq[i] * d * d
    }
  }
  return e
}

/** (1/n) ||X W^T - X Ŵ^T||_F^2 over sampled input rows X [n, cols]. */
export function sampledOutputError(w: ArrayLike<number>, wHat: ArrayLike<number>, rows: number, cols: number, x: ArrayLike<number>, n: number): number {
  sameLength(w, wHat)
  if (w.length !== rows * cols || x.length !== n * cols || n < 1) throw new QuantizationError(`sampledOutputError: shapes do not match [${rows}, ${cols}] and [${n}, ${cols}]`, 'quant-shape')
  const d = new Float64Array(cols)
  let e = 0
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < cols; i++) d[i] = w[r * cols + i] - wHat[r * cols + i]
    for (let s = 0; s < n; s++) {
      let y = 0
      for (let i = 0; i < cols; i++) y += x[s * cols + i] * d[i]
      e += y * y
    }
  }
  return e / n
}

/** log-softmax of one logits row, in f64 (max-shifted log-sum-exp). */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i]
  let sum = 0
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max)
  const lse = max + Math.log(sum)
  const out = new Float64Array(logits.length)
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse
  return out
}

/**
 * KL(P || Q) in nats, P = softmax(reference), Q = softmax(test): how much the quantized model's
 * next-token distribution loses against the reference. Terms with p = 0 contribute 0.
 */
export function klDivergence(reference: ArrayLike<number>, test: ArrayLike<number>): number {
  sameLength(reference, test)
  const lp = logSoftmax(reference)
  const lq = logSoftmax(test)
  let kl = 0
  for (let i = 0; i < lp.length; i++) {
    const p = Math.exp(lp[i])
    if (p > 0) kl += p * (lp[i] - lq[i])
  }
  return Math.max(0, kl) // rounding can leave -1e-17 for identical rows
}

/** Index of the largest logit (the first, on ties). */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i
  return best
}

/** Fraction of rows whose top-1 token agrees between reference and test logits. */
export function top1Agreement(reference: readonly ArrayLike<number>[], test: readonly ArrayLike<number>[]): number {
  if (reference.length !== test.length || reference.length === 0) throw new QuantizationError(`top1Agreement needs the same non-zero number of rows, got ${reference.length} and ${test.length}`, 'quant-shape')
  let same = 0
  for (let i = 0; i < reference.length; i++) if (argmax(reference[i]) === argmax(test[i])) same++
  return same / reference.length
}

/** Mean KL(P || Q) over rows. */
export function meanKl(reference: readonly ArrayLike<number>[], test: readonly ArrayLike<number>[]): number {
  if (reference.length !== test.length || reference.length === 0) throw new QuantizationError(`meanKl needs the same non-zero number of rows, got ${reference.length} and ${test.length}`, 'quant-shape')
  let s = 0
  for (let i = 0; i < reference.length; i++) s += klDivergence(reference[i], test[i])
  return s / reference.length
}

function sameLength(a: ArrayLike<number>, b: ArrayLike<number>): void {
  if (a.length !== b.length) throw new QuantizationError(`length mismatch: ${a.length} vs ${b.length}`, 'quant-shape')
}
