import {f16Table} from './fp16.js'
import {chooseScaleDiagonal, effectiveErrors, quantizeScaledFast, searchClippingDiagonal} from './calibrate-kernels.js'
import {checkBits, checkShape, qmax, QuantizationError, type QuantBits, type QuantizedWeight} from './rtn.js'

/**
 * Calibration-aware choice of quantization parameters for one linear layer y = x W^T, W [rows,
 * cols], from statistics of the layer's input x. Pure: the caller collects the statistics (by
 * running the fp16 model on calibration text) and applies the result.
 *
 * The objective is the layer's output error, not the weight error: with only the diagonal of
 * E[x x^T] (meanSq), sum_o sum_i E[x_i^2] (W[o,i] - Ŵ[o,i])^2 (error.ts weightedOutputError);
 * with sampled input rows X [n, cols], (1/n) ||X W^T - X Ŵ^T||^2. Both are the objective of
 * AWQ's search (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression
 * and Acceleration", arXiv:2306.00978, section 3.2, which measures ||Q(W s)(s^-1 X) - W X||).
 *
 * Two searches, in AWQ's order:
 * 1. Activation-aware input-channel scaling (AWQ section 3.2): s_i = mean|x_i|^beta, normalised
 *    by sqrt(max(s) min(s)) as the AWQ reference code does, with beta on a grid (default 0, 0.1,
 *    ..., 1). W·diag(s) is quantized with plain RTN and the beta with the least output error wins
 *    (beta = 0, s = 1, is exactly the published RTN quantization). Salient input channels (large
 *    activations) get larger weights before quantization, so a smaller relative rounding error.
 *    The caller must fold 1/s into whatever produces x (x' = x / s): the LayerNorm/RMSNorm weight
 *    (and LayerNorm bias) before QKV and dense_h_to_4h, or the rows of a preceding linear. Where
 *    nothing linear precedes the layer (v1's dense_4h_to_h follows a GELU), pass betaGrid [0].
 * 2. Clipping (AWQ's weight-clipping step, also the "MSE-optimal clipping" of earlier PTQ work):
 *    per (row, group), scale = fp16(alpha * max|W s| / qmax) with alpha on a grid (default 1.0
 *    down to 0.5 in steps of 0.05), q = clamp(round(fp16(W s / scale)), +-qmax). Under the
 *    diagonal metric the groups are independent and each takes its best alpha; with samples the
 *    groups of a row interact through X, so one coordinate-descent sweep over groups, starting
 *    from alpha = 1, keeps each group's best alpha given the others.
 * The searches score candidates with a cheap float surrogate of the quantizer (see below); the
 * result is then quantized with the exact published arithmetic and every reported error is
 * recomputed exactly. A step that the exact measure rates worse than the step before it is
 * dropped (clipping, then scaling), so the calibrated error is never above RTN's under the
 * chosen metric.
 *
 * The quantized result is in the published layout (int8 q, fp16 scale per row or group), so
 * pack.ts and dequant.ts apply unchanged; only the fold of 1/s into the preceding op is new, and
 * the rounding of the folded norm weights (fp16) is the caller's to account for.
 * Costs: diagonal metric O(rows * cols * (|betas| + |alphas| + 6)) at most, run by the kernels
 * of calibrate-kernels.ts (bit for bit the plain formulas, with candidates that cannot win
 * stopped early): ~170 ns per weight, ~36 s for a ChatGLM2-6B layer's four linears on one core
 * of the dev VM (bench/calibrate-search.mjs); samples O(rows * cols * n * (|betas| + |alphas| +
 * 3)) in the plain code below, meant for a few hundred sampled rows.
 */

export interface ActivationStats {
  /** E[x_i^2] per input channel (the diagonal second moment). */
  readonly meanSq: ArrayLike<number>
  /** E[|x_i|] per input channel (AWQ's activation salience). */
  readonly meanAbs: ArrayLike<number>
}

export interface CalibrateOptions {
  bits: QuantBits
  /** Columns per scale; default all columns (per output channel). */
  groupSize?: number
  /** Clipping ratios to try; default 1.0, 0.95, ..., 0.5. */
  alphaGrid?: readonly number[]
  /** Exponents for s = mean|x|^beta; default 0, 0.1, ..., 1. [0] turns input scaling off. */
  betaGrid?: readonly number[]
  /** Sampled input rows X [n, cols]; when given, the objective is ||X W^T - X Ŵ^T||^2 / n. */
  samples?: {readonly x: ArrayLike<number>, readonly n: number}
}

export interface CalibrationResult {
  /** Quantization of W·diag(inputScale), published layout. */
  readonly quantized: QuantizedWeight
  /** s [cols]: fold 1/s into the op that produces this layer's input. All ones when beta = 0. */
  readonly inputScale: Float32Array
  readonly beta: number
  /** Chosen clipping ratio per (row, group), [rows, cols / groupSize]. */
  readonly alpha: Float32Array
  readonly metric: 'diagonal' | 'samples'
  /** Output error under `metric`: published RTN, after the input scaling alone, and final. */
  readonly outputError: {readonly rtn: number, readonly scaled: number, readonly calibrated: number}
  /** Relative Frobenius error of the effective weight Ŵ = q * scale / s, RTN and final. */
  readonly weightError: {readonly rtn: number, readonly calibrated: number}
}

export const DEFAULT_ALPHAS: readonly number[] = Array.from({length: 11}, (_, i) => 1 - i * 0.05)
export const DEFAULT_BETAS: readonly number[] = Array.from({length: 11}, (_, i) => i / 10)

/** AWQ's per-input-channel scale for exponent beta, normalised to geometric mid-range 1. */
export function activationScale(meanAbs: ArrayLike<number>, beta: number): Float32Array {
  const n = meanAbs.length
  let top = 0
  for (let i = 0; i < n; i++) top = Math.max(top, meanAbs[i])
  const floor = top > 0 ? top * 1e-6 : 1 // dead channels: keep s finite and positive
  const s = new Float64Array(n)
  let lo = Infinity
  let hi = 0
  for (let i = 0; i < n; i++) {
    s[i] = Math.max(meanAbs[i], floor) ** beta
    lo = Math.min(lo, s[i])
    hi = Math.max(hi, s[i])
  }
  const norm = Math.sqrt(lo * hi)
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) out[i] = s[i] / norm
  return out
}

/** Ŵ = q * scale / s in original coordinates, f64 [rows, cols]. */
export function effectiveWeight(qw: QuantizedWeight, inputScale?: ArrayLike<number>): Float64Array {
  const out = new Float64Array(qw.rows * qw.cols)
  for (let r = 0; r < qw.rows; r++) effectiveRow(qw, inputScale, r, out.subarray(r * qw.cols, (r + 1) * qw.cols))
  return out
}

/**
 * Row r of Ŵ into out [cols]. calibrateLinear measures errors row by row with it, so that no
 * f64 copy of a whole layer is held (27392 x 4096 x 8 bytes = 0.9 GB for a 6B dense_h_to_4h).
 */
function effectiveRow(qw: QuantizedWeight, inputScale: ArrayLike<number> | undefined, r: number, out: Float64Array): void {
  const t = f16Table()
  const groups = qw.cols / qw.groupSize
  for (let i = 0; i < qw.cols; i++) {
    const s = t[qw.scales[r * groups + Math.floor(i / qw.groupSize)]]
    out[i] = qw.q[r * qw.cols + i] * s / (inputScale ? inputScale[i] : 1)
  }
}

export function calibrateLinear(w: Float32Array, rows: number, cols: number, stats: ActivationStats, opts: CalibrateOptions): CalibrationResult {
  checkBits(opts.bits)
  const groupSize = opts.groupSize ?? cols
  checkShape(w.length, rows, cols, groupSize)
  if (stats.meanSq.length !== cols || stats.meanAbs.length !== cols) throw new QuantizationError(`activation statistics have ${stats.meanSq.length}/${stats.meanAbs.length} channels, the layer has ${cols} inputs`, 'quant-shape')
  const samples = opts.samples
  if (samples && (samples.n < 1 || samples.x.length !== samples.n * cols)) throw new QuantizationError(`samples must be [n, ${cols}], got ${samples.x.length} values for n = ${samples.n}`, 'quant-shape')
  const alphas = opts.alphaGrid ?? DEFAULT_ALPHAS
  const betas = opts.betaGrid ?? DEFAULT_BETAS
  if (alphas.length === 0 || alphas.some(a => !(a > 0 && a <= 1))) throw new QuantizationError('alpha grid values must lie in (0, 1]', 'quant-grid')
  if (betas.length === 0 || betas.some(b => !(b >= 0 && b <= 1))) throw new QuantizationError('beta grid values must lie in [0, 1]', 'quant-grid')
  const ctx: Ctx | undefined = samples ? {w, rows, cols, groupSize, bits: opts.bits, samples} : undefined
  const ones = new Float32Array(cols).fill(1)

  // 1. Input scaling: surrogate error of plain RTN of W·diag(s) for each beta.
  const candidates = betas.map(b => b === 0 ? ones : activationScale(stats.meanAbs, b))
  let beta = betas[0]
  let s = candidates[0]
  if (ctx) {
    let bestSurrogate = surrogateError(ctx, s, null)
    for (let k = 1; k < betas.length; k++) {
      const e = surrogateError(ctx, candidates[k], null)
      if (e < bestSurrogate) [beta, s, bestSurrogate] = [betas[k], candidates[k], e]
    }
  } else {
    const k = chooseScaleDiagonal(w, rows, cols, groupSize, opts.bits, candidates, candidates.map(sb => sb === ones), stats.meanSq).index
    beta = betas[k]
    s = candidates[k]
  }
  // 2. Clipping with s fixed.
  const alpha = ctx ? searchClipping(ctx, s, alphas) : searchClippingDiagonal(w, rows, cols, groupSize, opts.bits, s, s === ones, alphas, stats.meanSq)
  const clipped = !alpha.every(a => a === 1)

  // Exact quantization and exact errors; drop a step the exact measure rates worse. (The
  // clipped quantization is made with the scaled one, from the same fp16 rows, and made again
  // only if the scaling is dropped.)
  const errors = new Map<QuantizedWeight, {output: number, rel: number}>()
  const measure = (qw: QuantizedWeight, sc: Float32Array): {output: number, rel: number} => {
    let m = errors.get(qw)
    if (!m) {
      const e = effectiveErrors(w, qw, sc, sc === ones, samples ? null : stats.meanSq)
      m = {output: ctx ? outputError(ctx, qw, sc) : e.output, rel: e.den === 0 ? 0 : Math.sqrt(e.num / e.den)}
      errors.set(qw, m)
    }
    return m
  }
  const rtn = quantizeScaledFast(w, rows, cols, groupSize, opts.bits, ones, null).first
  const rtnError = measure(rtn, ones).output
  let scaledQ = rtn
  let clippedQ: QuantizedWeight | undefined
  if (beta !== 0) {
    const both = quantizeScaledFast(w, rows, cols, groupSize, opts.bits, s, null, clipped ? alpha : undefined)
    scaledQ = both.first
    clippedQ = both.second
  }
  let scaledError = beta === 0 ? rtnError : measure(scaledQ, s).output
  if (scaledError > rtnError) {
    [beta, s, scaledQ, scaledError] = [0, ones, rtn, rtnError]
    clippedQ = undefined
  }
  let final = !clipped ? scaledQ : clippedQ ?? quantizeScaledFast(w, rows, cols, groupSize, opts.bits, s, alpha).first
  let finalError = final === scaledQ ? scaledError : measure(final, s).output
  if (finalError > scaledError) {
    alpha.fill(1)
    final = scaledQ
    finalError = scaledError
  }
  return {
    quantized: final,
    inputScale: s,
    beta,
    alpha,
    metric: samples ? 'samples' : 'diagonal',
    outputError: {rtn: rtnError, scaled: scaledError, calibrated: finalError},
    weightError: {rtn: measure(rtn, ones).rel, calibrated: measure(final, s).rel},
  }
}

/** Sampled input rows X [n, cols]: the metric of the plain (sampled) code below. */
interface Samples {readonly x: ArrayLike<number>, readonly n: number}

/** A layer under the sampled metric (the diagonal metric's code is calibrate-kernels.ts's). */
interface Ctx {
  w: Float32Array
  rows: number
  cols: number
  groupSize: number
  bits: QuantBits
  samples: Samples
}

/** Exact sampled output error of the effective weight of qw (input scale s). */
function outputError(ctx: Ctx, qw: QuantizedWeight, s: Float32Array): number {
  const {w, rows, cols, samples} = ctx
  const d = new Float64Array(cols)
  const row = new Float64Array(cols)
  let e = 0
  for (let r = 0; r < rows; r++) {
    effectiveRow(qw, s, r, row)
    for (let i = 0; i < cols; i++) d[i] = w[r * cols + i] - row[i]
    e += rowError(d, samples)
  }
  return e / samples.n
}

/** ||X d||^2 of one row's residual d. */
function rowError(d: Float64Array, samples: Samples): number {
  const cols = d.length
  let e = 0
  for (let n = 0; n < samples.n; n++) {
    let y = 0
    for (let i = 0; i < cols; i++) y += samples.x[n * cols + i] * d[i]
    e += y * y
  }
  return e
}

/*
 * The searches score candidates with a float surrogate of the quantizer -- scale = alpha *
 * max|w s| / qmax and q = clamp(round(w s / scale)) in f64, skipping the fp16 roundings of
 * W·s, the scale and the quotient -- which is ~20x cheaper than the exact arithmetic. It differs
 * from the exact quantizer only at the level of fp16 rounding (2^-11 relative), i.e. only in
 * which of two near-equal grid points wins; calibrateLinear re-quantizes exactly, recomputes
 * every reported error exactly, and falls back from any step the exact measure rates worse.
 */

/** Surrogate residual d = w - Ŵ of one group, written to d[off...]; returns nothing. */
function surrogateGroup(w: Float32Array, rowOff: number, start: number, len: number, s: Float32Array, alpha: number, m: number, d: Float64Array, dOff: number): void {
  let max = 0
  for (let i = 0; i < len; i++) {
    const a = Math.abs(w[rowOff + start + i] * s[start + i])
    if (a > max) max = a
  }
  const scale = alpha * max / m
  if (scale === 0) {
    for (let i = 0; i < len; i++) d[dOff + i] = w[rowOff + start + i]
    return
  }
  for (let i = 0; i < len; i++) {
    const wi = w[rowOff + start + i]
    const si = s[start + i]
    let q = Math.round(wi * si / scale)
    q = q > m ? m : q < -m ? -m : q
    d[dOff + i] = wi - q * scale / si
  }
}

/** Surrogate sampled output error of quantizing W·diag(s) with clipping ratios (null: all 1); the diagonal metric is calibrate-kernels.ts's. */
function surrogateError(ctx: Ctx, s: Float32Array, alpha: Float32Array | null): number {
  const {w, rows, cols, groupSize, bits, samples} = ctx
  const groups = cols / groupSize
  const m = qmax(bits)
  const d = new Float64Array(cols)
  let e = 0
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) surrogateGroup(w, r * cols, g * groupSize, groupSize, s, alpha ? alpha[r * groups + g] : 1, m, d, g * groupSize)
    e += rowError(d, samples)
  }
  return e / samples.n
}

/** Per-(row, group) clipping search with input scale s fixed, sampled metric (see the module comment; the diagonal one is calibrate-kernels.ts's). */
function searchClipping(ctx: Ctx, s: Float32Array, alphas: readonly number[]): Float32Array {
  const {w, rows, cols, groupSize, bits, samples} = ctx
  const groups = cols / groupSize
  const m = qmax(bits)
  const alpha = new Float32Array(rows * groups).fill(1)
  const dNew = new Float64Array(groupSize)
  const d = new Float64Array(cols)
  const res = new Float64Array(samples.n)
  for (let r = 0; r < rows; r++) {
    // Start from alpha = 1 for every group of the row.
    for (let g = 0; g < groups; g++) surrogateGroup(w, r * cols, g * groupSize, groupSize, s, 1, m, d, g * groupSize)
    for (let n = 0; n < samples.n; n++) {
      let y = 0
      for (let i = 0; i < cols; i++) y += samples.x[n * cols + i] * d[i]
      res[n] = y
    }
    for (let g = 0; g < groups; g++) {
      const c0 = g * groupSize
      // Error of the row with group g's residual replaced by cand (null: the current one).
      const groupErr = (cand: Float64Array | null): number => {
        let e = 0
        for (let n = 0; n < samples.n; n++) {
          let y = res[n]
          if (cand) for (let i = 0; i < groupSize; i++) y += samples.x[n * cols + c0 + i] * (cand[i] - d[c0 + i])
          e += y * y
        }
        return e
      }
      let bestErr = groupErr(null)
      for (const a of alphas) {
        if (a === 1) continue // the starting point
        surrogateGroup(w, r * cols, c0, groupSize, s, a, m, dNew, 0)
        const e = groupErr(dNew)
        if (e < bestErr) {
          bestErr = e
          alpha[r * groups + g] = a
          for (let n = 0; n < samples.n; n++) {
            let y = 0
            for (let i = 0; i < groupSize; i++) y += samples.x[n * cols + c0 + i] * (dNew[i] - d[c0 + i])
            res[n] += y
          }
          for (let i = 0; i < groupSize; i++) d[c0 + i] = dNew[i]
        }
      }
    }
  }
  return alpha
}
