/**
 * The plain calibration code as it stood before the calibrate-kernels.ts rewrite (commit c08b435,
 * src/quant/calibrate.ts, verbatim but for the import paths, this comment, and the types, grids
 * and activationScale the rewrite left alone, which are imported from src): the reference
 * test/quant-calibrate-kernels.test.ts holds the fast code to, bit for bit. Not for src/.
 */
import {f16Table, f32ToF16Bits} from '../../src/quant/fp16.js'
import {checkBits, checkShape, groupScaleBits, qmax, QuantizationError, quantizeGroup, type QuantBits, type QuantizedWeight} from '../../src/quant/rtn.js'
// Unchanged by the rewrite, so taken from src rather than copied: the option and result types,
// the grids and AWQ's input scale.
import {activationScale, type ActivationStats, type CalibrateOptions, type CalibrationResult, DEFAULT_ALPHAS, DEFAULT_BETAS} from '../../src/quant/calibrate.js'

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
 * Costs: diagonal metric O(rows * cols * (|betas| + |alphas| + 6)), a few seconds for a
 * 4096 x 4096 layer; samples O(rows * cols * n * (|betas| + |alphas| + 3)), meant for a few
 * hundred sampled rows.
 */

/** Row r of Ŵ = q * scale / s into out [cols] (calibrate.ts keeps it private). */
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
  const ctx: Ctx = {w, rows, cols, groupSize, bits: opts.bits, meanSq: stats.meanSq, samples}
  const ones = new Float32Array(cols).fill(1)

  // 1. Input scaling: surrogate error of plain RTN of W·diag(s) for each beta.
  let beta = betas[0]
  let s = beta === 0 ? ones : activationScale(stats.meanAbs, beta)
  let bestSurrogate = surrogateError(ctx, s, null)
  for (const b of betas.slice(1)) {
    const sb = b === 0 ? ones : activationScale(stats.meanAbs, b)
    const e = surrogateError(ctx, sb, null)
    if (e < bestSurrogate) [beta, s, bestSurrogate] = [b, sb, e]
  }
  // 2. Clipping with s fixed.
  const alpha = searchClipping(ctx, s, alphas)

  // Exact quantization and exact errors; drop a step the exact measure rates worse.
  const rtn = quantizeScaled(ctx, ones, null)
  const rtnError = outputError(ctx, rtn, ones)
  let scaledQ = beta === 0 ? rtn : quantizeScaled(ctx, s, null)
  let scaledError = beta === 0 ? rtnError : outputError(ctx, scaledQ, s)
  if (scaledError > rtnError) [beta, s, scaledQ, scaledError] = [0, ones, rtn, rtnError]
  let final = alpha.every(a => a === 1) ? scaledQ : quantizeScaled(ctx, s, alpha)
  let finalError = final === scaledQ ? scaledError : outputError(ctx, final, s)
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
    weightError: {rtn: relErr(w, rtn, ones), calibrated: relErr(w, final, s)},
  }
}

export interface Ctx {
  w: Float32Array
  rows: number
  cols: number
  groupSize: number
  bits: QuantBits
  meanSq: ArrayLike<number>
  samples?: {readonly x: ArrayLike<number>, readonly n: number}
}

/** fp16 bits of W·diag(s), row r. */
function scaledRow(ctx: Ctx, s: Float32Array, r: number): Uint16Array {
  const out = new Uint16Array(ctx.cols)
  for (let i = 0; i < ctx.cols; i++) {
    const x = ctx.w[r * ctx.cols + i] * s[i]
    const h = f32ToF16Bits(x)
    if ((h & 0x7c00) === 0x7c00) throw new QuantizationError(`weight ${x} at row ${r}, column ${i} is not finite in fp16 after input scaling`, 'quant-range')
    out[i] = h
  }
  return out
}

/** Exact quantization of W·diag(s) (published arithmetic), clipping ratio per group (default 1). */
export function quantizeScaled(ctx: Ctx, s: Float32Array, alpha: Float32Array | null): QuantizedWeight {
  const {rows, cols, groupSize, bits} = ctx
  const groups = cols / groupSize
  const q = new Int8Array(rows * cols)
  const scales = new Uint16Array(rows * groups)
  for (let r = 0; r < rows; r++) {
    const ws = scaledRow(ctx, s, r)
    for (let g = 0; g < groups; g++) {
      const start = g * groupSize
      const sb = groupScaleBits(ws, start, groupSize, bits, alpha ? alpha[r * groups + g] : 1)
      scales[r * groups + g] = sb
      quantizeGroup(ws, start, groupSize, sb, bits, q, r * cols + start)
    }
  }
  return {bits, rows, cols, groupSize, q, scales}
}

/** Exact output error of the effective weight of qw (input scale s) under the chosen metric. */
export function outputError(ctx: Ctx, qw: QuantizedWeight, s: Float32Array): number {
  const {w, rows, cols, meanSq, samples} = ctx
  const d = new Float64Array(cols)
  const row = new Float64Array(cols)
  let e = 0
  for (let r = 0; r < rows; r++) {
    effectiveRow(qw, s, r, row)
    for (let i = 0; i < cols; i++) d[i] = w[r * cols + i] - row[i]
    e += rowError(d, meanSq, samples)
  }
  return samples ? e / samples.n : e
}

function rowError(d: Float64Array, meanSq: ArrayLike<number>, samples?: {readonly x: ArrayLike<number>, readonly n: number}): number {
  const cols = d.length
  let e = 0
  if (!samples) {
    for (let i = 0; i < cols; i++) e += meanSq[i] * d[i] * d[i]
    return e
  }
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

/** max |w s| over one group (surrogateGroup's first pass). */
function groupMax(w: Float32Array, rowOff: number, start: number, len: number, s: Float32Array): number {
  let max = 0
  for (let i = 0; i < len; i++) {
    const a = Math.abs(w[rowOff + start + i] * s[start + i])
    if (a > max) max = a
  }
  return max
}

/**
 * surrogateGroup's residual at the given scale and the diagonal error sum_i meanSq_i d_i^2 in
 * one pass: `acc` plus each term, computed and added in the order rowError (a running sum over
 * the row) and searchClipping's groupErr (a sum over the group from 0) use, so the sums are bit
 * for bit theirs.
 */
function diagonalGroup(w: Float32Array, rowOff: number, start: number, len: number, s: Float32Array, scale: number, m: number, meanSq: ArrayLike<number>, acc: number): number {
  let e = acc
  for (let i = 0; i < len; i++) {
    const wi = w[rowOff + start + i]
    let di: number
    if (scale === 0) {
      di = wi
    } else {
      const si = s[start + i]
      let q = Math.round(wi * si / scale)
      q = q > m ? m : q < -m ? -m : q
      di = wi - q * scale / si
    }
    e += meanSq[start + i] * di * di
  }
  return e
}

/** Surrogate output error of quantizing W·diag(s) with clipping ratios (null: all 1). */
export function surrogateError(ctx: Ctx, s: Float32Array, alpha: Float32Array | null): number {
  const {w, rows, cols, groupSize, bits, meanSq, samples} = ctx
  const groups = cols / groupSize
  const m = qmax(bits)
  if (!samples) {
    // Diagonal metric, fused (diagonalGroup): the same values as the loop below, in one pass per group.
    let e = 0
    for (let r = 0; r < rows; r++) {
      let rowE = 0
      for (let g = 0; g < groups; g++) {
        const start = g * groupSize
        rowE = diagonalGroup(w, r * cols, start, groupSize, s, (alpha ? alpha[r * groups + g] : 1) * groupMax(w, r * cols, start, groupSize, s) / m, m, meanSq, rowE)
      }
      e += rowE
    }
    return e
  }
  const d = new Float64Array(cols)
  let e = 0
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) surrogateGroup(w, r * cols, g * groupSize, groupSize, s, alpha ? alpha[r * groups + g] : 1, m, d, g * groupSize)
    e += rowError(d, meanSq, samples)
  }
  return samples ? e / samples.n : e
}

/** Per-(row, group) clipping search with input scale s fixed; see the module comment. */
export function searchClipping(ctx: Ctx, s: Float32Array, alphas: readonly number[]): Float32Array {
  const {w, rows, cols, groupSize, bits, meanSq, samples} = ctx
  const groups = cols / groupSize
  const m = qmax(bits)
  const alpha = new Float32Array(rows * groups).fill(1)
  const dNew = new Float64Array(groupSize)
  const d = new Float64Array(cols)
  const res = samples ? new Float64Array(samples.n) : null
  if (!samples) {
    // Diagonal metric: groups are independent. The group's max is the same for every alpha, so
    // it is taken once, and each candidate's residual and error come in one pass (diagonalGroup).
    for (let r = 0; r < rows; r++) {
      for (let g = 0; g < groups; g++) {
        const c0 = g * groupSize
        const max = groupMax(w, r * cols, c0, groupSize, s)
        let bestErr = diagonalGroup(w, r * cols, c0, groupSize, s, 1 * max / m, m, meanSq, 0)
        for (const a of alphas) {
          if (a === 1) continue // the starting point
          const e = diagonalGroup(w, r * cols, c0, groupSize, s, a * max / m, m, meanSq, 0)
          if (e < bestErr) {
            bestErr = e
            alpha[r * groups + g] = a
          }
        }
      }
    }
    return alpha
  }
  for (let r = 0; r < rows; r++) {
    // Start from alpha = 1 for every group of the row.
    for (let g = 0; g < groups; g++) surrogateGroup(w, r * cols, g * groupSize, groupSize, s, 1, m, d, g * groupSize)
    if (res && samples) {
      for (let n = 0; n < samples.n; n++) {
        let y = 0
        for (let i = 0; i < cols; i++) y += samples.x[n * cols + i] * d[i]
        res[n] = y
      }
    }
    for (let g = 0; g < groups; g++) {
      const c0 = g * groupSize
      // Error of the row with group g's residual replaced by cand (null: the current one).
      const groupErr = (cand: Float64Array | null): number => {
        let e = 0
        if (!res || !samples) {
          for (let i = 0; i < groupSize; i++) {
            const di = cand ? cand[i] : d[c0 + i]
            e += meanSq[c0 + i] * di * di
          }
          return e
        }
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
          if (res && samples) {
            for (let n = 0; n < samples.n; n++) {
              let y = 0
              for (let i = 0; i < groupSize; i++) y += samples.x[n * cols + c0 + i] * (dNew[i] - d[c0 + i])
              res[n] += y
            }
          }
          for (let i = 0; i < groupSize; i++) d[c0 + i] = dNew[i]
        }
      }
    }
  }
  return alpha
}

/** Relative Frobenius error of the effective weight of qw (input scale s), row by row. */
export function relErr(w: Float32Array, qw: QuantizedWeight, s: Float32Array): number {
  const cols = qw.cols
  const row = new Float64Array(cols)
  let num = 0
  let den = 0
  for (let r = 0; r < qw.rows; r++) {
    effectiveRow(qw, s, r, row)
    for (let i = 0; i < cols; i++) {
      const e = w[r * cols + i] - row[i]
      num += e * e
      den += w[r * cols + i] * w[r * cols + i]
    }
  }
  return den === 0 ? 0 : Math.sqrt(num / den)
}
