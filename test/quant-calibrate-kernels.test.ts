import {describe, expect, it} from 'vitest'
import {calibrateLinear, activationScale, DEFAULT_ALPHAS} from '../src/quant/calibrate.js'
import {chooseScaleDiagonal, effectiveErrors, roundClamped, quantizeScaledFast, searchClippingDiagonal, surrogateErrorsDiagonal} from '../src/quant/calibrate-kernels.js'
import {f16Table, f32ToF16Bits} from '../src/quant/fp16.js'
import {qmax, type QuantBits, type QuantizedWeight} from '../src/quant/rtn.js'
import * as ref from './helpers/calibrate-reference.js'
import {gaussian, rng} from './quant-helpers.js'

/**
 * The fast calibration kernels (src/quant/calibrate-kernels.ts) and calibrateLinear built on them
 * against the plain code they replaced (test/helpers/calibrate-reference.ts, verbatim): every
 * result bit for bit (Object.is on the floats, byte equality on codes and scales), on random
 * layers with the cases where a shortcut could slip: all-zero rows, all-equal rows, rows whose
 * largest magnitude is negative, quotients exactly on half-integers (ties), subnormal fp16
 * weights and scales, weights that are not fp16 values, dead and outlier input channels.
 */

const t16 = f16Table()
const fp16 = (x: number) => t16[f32ToF16Bits(x)]

interface Case {
  name: string
  w: Float32Array
  rows: number
  cols: number
  meanAbs: Float64Array
  meanSq: Float64Array
}

function makeCase(seed: number, rows: number, cols: number, opts: {fp16?: boolean} = {}): Case {
  const g = gaussian(seed)
  const u = rng(seed + 1000)
  const w = new Float32Array(rows * cols)
  const loud = new Set([Math.floor(u() * cols), Math.floor(u() * cols)])
  for (let r = 0; r < rows; r++) {
    const kind = r % 8
    for (let c = 0; c < cols; c++) {
      let x = g() * 0.02 * (loud.has(c) ? 10 : 1)
      if (kind === 1) x = 0 // all-zero row
      if (kind === 2) x = 0.0137 // all equal
      if (kind === 3) x = -Math.abs(x) - (c === 5 ? 0.5 : 0) // negative maximum
      if (kind === 4) x = (Math.floor(u() * 15) - 7 + 0.5) * 2 ** -8 // half-integer multiples of a power of two
      if (kind === 4 && c === 0) x = 7 * 2 ** -8
      if (kind === 5) x *= 1e-4 // subnormal fp16 values and scales
      if (kind === 6 && c % 3 === 0) x = 0 // sparse row
      w[r * cols + c] = opts.fp16 === false ? x : fp16(x)
    }
  }
  const meanAbs = new Float64Array(cols)
  for (let c = 0; c < cols; c++) meanAbs[c] = Math.exp(g() * 0.5) * 0.3
  meanAbs[Math.floor(u() * cols)] *= 60
  meanAbs[1] = 0 // dead channel
  const meanSq = meanAbs.map(a => a * a * 1.6)
  meanSq[2] = 0
  return {name: `seed ${seed}, [${rows}, ${cols}]${opts.fp16 === false ? ', f32 weights' : ''}`, w, rows, cols, meanAbs, meanSq}
}

function expectSameQuantized(a: QuantizedWeight, b: QuantizedWeight): void {
  expect([a.bits, a.rows, a.cols, a.groupSize]).toEqual([b.bits, b.rows, b.cols, b.groupSize])
  expect(Buffer.from(a.q.buffer, a.q.byteOffset, a.q.byteLength).equals(Buffer.from(b.q.buffer, b.q.byteOffset, b.q.byteLength))).toBe(true)
  expect(Buffer.from(a.scales.buffer).equals(Buffer.from(b.scales.buffer))).toBe(true)
}

/** Bit equality of two floats (NaN equal to NaN, 0 unequal to -0). */
function same(a: number, b: number): boolean {
  return Object.is(a, b)
}

const cases = [
  makeCase(1, 40, 64),
  makeCase(2, 24, 96),
  makeCase(3, 16, 64, {fp16: false}),
]

describe('calibrate kernels equal the plain code', () => {
  for (const c of cases) {
    for (const bits of [4, 8] as QuantBits[]) {
      for (const groupSize of [c.cols, 32]) {
        const ctx: ref.Ctx = {w: c.w, rows: c.rows, cols: c.cols, groupSize, bits, meanSq: c.meanSq}
        const ones = new Float32Array(c.cols).fill(1)
        const scales = [ones, activationScale(c.meanAbs, 0.3), activationScale(c.meanAbs, 1)]

        it(`surrogate errors and clipping choices (${c.name}, int${bits}, group ${groupSize})`, () => {
          const fast = surrogateErrorsDiagonal(c.w, c.rows, c.cols, groupSize, bits, scales, scales.map(s => s === ones), c.meanSq)
          scales.forEach((s, k) => expect(same(fast[k], ref.surrogateError(ctx, s, null))).toBe(true))
          // Grids with repeated values and 1 inside: ties must go to the first grid position.
          const grids = [DEFAULT_ALPHAS, [0.9, 1, 0.8, 0.9, 0.6, 0.8, 1]]
          for (const s of scales) {
            for (const grid of grids) {
              const a = searchClippingDiagonal(c.w, c.rows, c.cols, groupSize, bits, s, s === ones, grid, c.meanSq)
              const b = ref.searchClipping(ctx, s, grid)
              expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true)
            }
          }
        })

        it(`beta choice with pruning, and without it for inputs that do not allow it (${c.name}, int${bits}, group ${groupSize})`, () => {
          // The grid's candidates, with a repeat (a tie) and all ones among them.
          const grid = [0, 0.1, 0.3, 0.5, 0.3, 0.7, 1, 0]
          const cands = grid.map(b => b === 0 ? ones : activationScale(c.meanAbs, b))
          for (const meanSq of [c.meanSq, c.meanSq.map((v, i) => i === 7 ? -v : v), c.meanSq.map((v, i) => i === 7 ? Number.NaN : v)]) {
            const refCtx: ref.Ctx = {...ctx, meanSq}
            const errs = cands.map(s => ref.surrogateError(refCtx, s, null))
            let index = 0
            for (let k = 1; k < errs.length; k++) if (errs[k] < errs[index]) index = k
            const got = chooseScaleDiagonal(c.w, c.rows, c.cols, groupSize, bits, cands, cands.map(s => s === ones), meanSq)
            expect(got.index).toBe(index)
            expect(same(got.error, errs[index])).toBe(true)
            const alphaFast = searchClippingDiagonal(c.w, c.rows, c.cols, groupSize, bits, cands[2], false, DEFAULT_ALPHAS, meanSq)
            expect(Buffer.from(alphaFast.buffer).equals(Buffer.from(ref.searchClipping(refCtx, cands[2], DEFAULT_ALPHAS).buffer))).toBe(true)
          }
        })

        it(`exact quantization and error measures (${c.name}, int${bits}, group ${groupSize})`, () => {
          // Every ratio of the grid, cycled over the (row, group)s.
          const alpha = Float32Array.from({length: c.rows * (c.cols / groupSize)}, (_, k) => DEFAULT_ALPHAS[k % DEFAULT_ALPHAS.length])
          for (const s of scales) {
            const {first, second} = quantizeScaledFast(c.w, c.rows, c.cols, groupSize, bits, s, null, alpha)
            expectSameQuantized(first, ref.quantizeScaled(ctx, s, null))
            expectSameQuantized(second!, ref.quantizeScaled(ctx, s, alpha))
            for (const qw of [first, second!]) {
              const e = effectiveErrors(c.w, qw, s, s === ones, c.meanSq)
              expect(same(e.output, ref.outputError(ctx, qw, s))).toBe(true)
              expect(same(e.den === 0 ? 0 : Math.sqrt(e.num / e.den), ref.relErr(c.w, qw, s))).toBe(true)
            }
          }
        })

        it(`calibrateLinear (${c.name}, int${bits}, group ${groupSize})`, () => {
          const stats = {meanAbs: c.meanAbs, meanSq: c.meanSq}
          const a = calibrateLinear(c.w, c.rows, c.cols, stats, {bits, groupSize})
          const b = ref.calibrateLinear(c.w, c.rows, c.cols, stats, {bits, groupSize})
          expectSameQuantized(a.quantized, b.quantized)
          expect(a.beta).toBe(b.beta)
          expect(Buffer.from(a.alpha.buffer).equals(Buffer.from(b.alpha.buffer))).toBe(true)
          expect(Buffer.from(a.inputScale.buffer).equals(Buffer.from(b.inputScale.buffer))).toBe(true)
          for (const k of ['rtn', 'scaled', 'calibrated'] as const) expect(same(a.outputError[k], b.outputError[k])).toBe(true)
          for (const k of ['rtn', 'calibrated'] as const) expect(same(a.weightError[k], b.weightError[k])).toBe(true)
        })

        it(`calibrateLinear with sampled inputs (${c.name}, int${bits}, group ${groupSize})`, () => {
          // The sampled metric still runs calibrate.ts's plain code: held to the reference too.
          const n = 5
          const g = gaussian(17 + c.rows)
          const x = Float32Array.from({length: n * c.cols}, () => g() * Math.sqrt(c.meanSq[0] + 1))
          expect(x.every(Number.isFinite)).toBe(true)
          const stats = {meanAbs: c.meanAbs, meanSq: c.meanSq}
          const a = calibrateLinear(c.w, c.rows, c.cols, stats, {bits, groupSize, samples: {x, n}})
          const b = ref.calibrateLinear(c.w, c.rows, c.cols, stats, {bits, groupSize, samples: {x, n}})
          expect(a.metric).toBe('samples')
          expectSameQuantized(a.quantized, b.quantized)
          expect(a.beta).toBe(b.beta)
          expect(Buffer.from(a.alpha.buffer).equals(Buffer.from(b.alpha.buffer))).toBe(true)
          for (const k of ['rtn', 'scaled', 'calibrated'] as const) expect(same(a.outputError[k], b.outputError[k])).toBe(true)
          for (const k of ['rtn', 'calibrated'] as const) expect(same(a.weightError[k], b.weightError[k])).toBe(true)
        })
      }
    }
  }

  it('takes the exact rounding on quotients that are half-integers (ties up) and beyond qmax', () => {
    // One group, s = 1, scale = max / 7 = 49 * 2^-12, whose reciprocal is inexact: the quotients
    // w / scale are exactly k + 0.5, and w * (1 / scale) lands an ulp below for k = 1, 3, 6.
    const cols = 16
    const scale = 49 * 2 ** -12
    const w = Float32Array.from({length: cols}, (_, i) => (i === 0 ? 7 : i - 8 + 0.5) * scale)
    const ones = new Float32Array(cols).fill(1)
    const meanSq = new Float64Array(cols).fill(1)
    const ctx: ref.Ctx = {w, rows: 1, cols, groupSize: cols, bits: 4, meanSq}
    const fast = surrogateErrorsDiagonal(w, 1, cols, cols, 4, [ones], [true], meanSq)
    expect(same(fast[0], ref.surrogateError(ctx, ones, null))).toBe(true)
    expect(fast[0]).toBeGreaterThan(0) // the ties and the clamp (-7.5 -> -7) leave residuals
    const alphas = [1, 0.5, 0.25, 0.1]
    expect(Buffer.from(searchClippingDiagonal(w, 1, cols, cols, 4, ones, true, alphas, meanSq).buffer)
      .equals(Buffer.from(ref.searchClipping(ctx, ones, alphas).buffer))).toBe(true)
    // The residual's square hides which way a tie went, so the rounding itself: Math.round (ties
    // up) of the quotient, where w * (1 / scale) + 0.5 floors one lower for k = 1, 3, 6.
    for (const m of [7, 127]) {
      for (let k = -9; k < 9; k++) {
        const x = (k + 0.5) * scale
        const plain = Math.round(x / scale)
        expect(roundClamped(x, scale, 1 / scale, m)).toBe(plain > m ? m : plain < -m ? -m : plain)
      }
    }
    expect(qmax(4)).toBe(7)
  })

  it('throws the plain code\'s error for a weight that scaling pushes out of fp16', () => {
    const cols = 8
    const w = new Float32Array(cols).fill(0.01)
    w[3] = 60000
    const meanAbs = Float64Array.from({length: cols}, (_, i) => (i === 3 ? 1e4 : 1))
    const stats = {meanAbs, meanSq: meanAbs.map(a => a * a)}
    const opts = {bits: 4 as const, betaGrid: [1]}
    expect(() => ref.calibrateLinear(w, 1, cols, stats, opts)).toThrow(/not finite in fp16 after input scaling/)
    const message = (() => {
      try {
        ref.calibrateLinear(w, 1, cols, stats, opts)
      } catch (error) {
        return (error as Error).message
      }
      return ''
    })()
    expect(() => calibrateLinear(w, 1, cols, stats, opts)).toThrow(message)
  })
})
