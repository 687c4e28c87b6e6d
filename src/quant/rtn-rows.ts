import {f16Table, f32ToF16Bits, roundHalfEven} from './fp16.js'
import {qmax, QuantizationError, type QuantBits} from './rtn.js'

/**
 * The published RTN quantizer (rtn.ts) over a block of whole rows, writing the *published*
 * tensors directly (int8 [rows, cols], or int4 packed [rows, cols/2], even column in the high
 * nibble) and the fp16 scales, and summing the error measures of the report on the way. This is
 * the hot loop of `glmtool quantize` (6.2e9 weights for a 6B model), run by worker threads on
 * row ranges (rtn-pool.ts), so it avoids per-element fp16 rounding:
 *
 * rtn.ts computes q = round_half_even(fp16(w / scale)). fp16 rounding moves x = w / scale by at
 * most |x| * 2^-11 (+ 2^-25 in the subnormal range), so unless x lies within that distance of a
 * half-integer, fp16(x) rounds to the same integer as x itself, which is then never a tie:
 * q = floor(x + 0.5). Only the rare x near a half-integer takes the exact path (fp16 rounding,
 * then round half to even). Results are bit-identical to quantizeRtn + publishedWeight
 * (test/quant-rtn-rows.test.ts).
 */

export interface RowBlockErrors {
  /** sum (W - Ŵ)^2 and sum W^2 over the block (relative Frobenius error = sqrt(err / ref)). */
  errSq: number
  refSq: number
  /** sum_o sum_i E[x_i^2] (W - Ŵ)^2 and sum E[x_i^2] W^2, when meanSq is given (else 0). */
  weightedErr: number
  weightedRef: number
}

export function emptyErrors(): RowBlockErrors {
  return {errSq: 0, refSq: 0, weightedErr: 0, weightedRef: 0}
}

export function addErrors(a: RowBlockErrors, b: RowBlockErrors): void {
  a.errSq += b.errSq
  a.refSq += b.refSq
  a.weightedErr += b.weightedErr
  a.weightedRef += b.weightedRef
}

/**
 * Quantize rows [r0, r1) of the fp16 block `w` ([*, cols], row-major) into `outWeight` (same row
 * indexing: int8 [*, cols] or packed [*, cols/2]) and `outScales` ([*, cols/groupSize] fp16 bits).
 * `name` only labels errors (non-finite weights).
 */
export function quantizeRowsPublished(
  w: Uint16Array, cols: number, r0: number, r1: number, groupSize: number, bits: QuantBits,
  outWeight: Int8Array, outScales: Uint16Array, meanSq?: ArrayLike<number>, name = 'weight', rowOffset = 0,
): RowBlockErrors {
  const t = f16Table()
  const m = qmax(bits)
  const groups = cols / groupSize
  const q = new Int8Array(groupSize)
  // Sums in locals: double-valued object fields would box on every update in the hot loop.
  let errSq = 0
  let refSq = 0
  let weightedErr = 0
  let weightedRef = 0
  for (let r = r0; r < r1; r++) {
    for (let g = 0; g < groups; g++) {
      const base = r * cols + g * groupSize
      let max = 0
      for (let i = 0; i < groupSize; i++) {
        const h = w[base + i]
        if ((h & 0x7c00) === 0x7c00) {
          throw new QuantizationError(`${name}: non-finite weight ${t[h]} at row ${rowOffset + r}, column ${g * groupSize + i}`, 'quant-nonfinite')
        }
        const a = t[h & 0x7fff]
        if (a > max) max = a
      }
      const sBits = f32ToF16Bits(max / m)
      outScales[r * groups + g] = sBits
      const s = t[sBits]
      const inv = 1 / s // the fast path's quotient; within 2^-52 of w / s, far inside its margin
      for (let i = 0; i < groupSize; i++) {
        const wi = t[w[base + i]]
        let v = 0
        if (s !== 0) { // else 0/0 and w/0 give 0, as torch's float -> int8 conversion does (rtn.ts)
          const x = wi * inv
          // v = floor(x + 0.5) = round(x) unless x + 0.5 is within the margin of an integer, i.e.
          // x near a half-integer: then the exact path (fp16 rounding of w / s, half to even).
          const y = x + 0.5
          v = Math.floor(y)
          if (Math.abs(y - v - 0.5) >= 0.5 - Math.abs(x) * 9.8e-4 - 6e-8) v = roundHalfEven(t[f32ToF16Bits(wi / s)])
          v = v > m ? m : v < -m ? -m : v
        }
        q[i] = v
        const d = wi - v * s
        errSq += d * d
        refSq += wi * wi
        if (meanSq) {
          const ms = meanSq[g * groupSize + i]
          weightedErr += ms * d * d
          weightedRef += ms * wi * wi
        }
      }
      if (bits === 8) {
        outWeight.set(q, base)
      } else {
        const ob = base >> 1
        for (let i = 0; i < groupSize; i += 2) outWeight[ob + (i >> 1)] = ((q[i] & 0xf) << 4) | (q[i + 1] & 0xf)
      }
    }
  }
  return {errSq, refSq, weightedErr, weightedRef}
}
