import {describe, expect, it} from 'vitest'
import {argmax, klDivergence, logSoftmax, meanKl, relativeFrobenius, sampledOutputError, top1Agreement, weightedOutputError} from '../src/quant/error.js'
import {gaussian} from './quant-helpers.js'

describe('quantization error measures', () => {
  it('relative Frobenius error', () => {
    expect(relativeFrobenius([3, 4], [3, 4])).toBe(0)
    expect(relativeFrobenius([3, 4], [0, 0])).toBe(1)
    expect(relativeFrobenius([3, 4], [3, 3])).toBeCloseTo(0.2, 12)
    expect(relativeFrobenius([0, 0], [0, 0])).toBe(0)
    expect(() => relativeFrobenius([1], [1, 2])).toThrow(/length/)
  })

  it('activation-weighted error is the expected sampled error for independent channels', () => {
    const rows = 3
    const cols = 4
    const w = [1, 2, 3, 4, 0, 0, 1, 1, -1, 2, 0, 5]
    const wHat = w.map((v, i) => v + ((i % 3) - 1) * 0.1)
    const sd = [1, 3, 0.5, 2]
    expect(weightedOutputError(w, wHat, rows, cols, sd.map(s => s * s))).toBeCloseTo(
      [0, 1, 2].reduce((e, r) => e + [0, 1, 2, 3].reduce((a, i) => a + sd[i] ** 2 * (w[r * cols + i] - wHat[r * cols + i]) ** 2, 0), 0), 12)
    const n = 20000
    const g = gaussian(3)
    const x = new Float64Array(n * cols)
    for (let s = 0; s < n; s++) for (let i = 0; i < cols; i++) x[s * cols + i] = g() * sd[i]
    const sampled = sampledOutputError(w, wHat, rows, cols, x, n)
    expect(sampled / weightedOutputError(w, wHat, rows, cols, sd.map(s => s * s))).toBeCloseTo(1, 1)
  })

  it('KL divergence of softmaxes, in nats', () => {
    // P = (1/2, 1/2), Q = (3/4, 1/4): KL = 1/2 ln(4/3).
    expect(klDivergence([0, 0], [Math.log(3), 0])).toBeCloseTo(0.5 * Math.log(4 / 3), 14)
    expect(klDivergence([1, 2, 3], [1, 2, 3])).toBe(0)
    // Invariant to adding a constant to either row; stable for huge logits.
    expect(klDivergence([1000, 1000], [1000 + Math.log(3), 1000])).toBeCloseTo(0.5 * Math.log(4 / 3), 10)
    expect(klDivergence([5, 1, -2], [7, 3, 0])).toBeCloseTo(0, 14)
    // Zero-probability reference entries contribute nothing; KL(P||Q) >= 0 and asymmetric.
    expect(klDivergence([-Infinity, 0], [0, 0])).toBeCloseTo(Math.log(2), 14)
    const a = [2, 0, -1]
    const b = [0, 1, 0]
    expect(klDivergence(a, b)).toBeGreaterThan(0)
    expect(klDivergence(a, b)).not.toBeCloseTo(klDivergence(b, a), 3)
    const ls = logSoftmax([Math.log(1), Math.log(3)])
    expect(Math.exp(ls[0])).toBeCloseTo(0.25, 14)
    expect(meanKl([[0, 0], [1, 1]], [[Math.log(3), 0], [1, 1]])).toBeCloseTo(0.25 * Math.log(4 / 3), 14)
  })

  it('top-1 agreement', () => {
    expect(argmax([1, 5, 5, 2])).toBe(1)
    expect(top1Agreement([[0, 1], [2, 1], [0, 0, 3]], [[0, 2], [1, 2], [1, 0, 3]])).toBeCloseTo(2 / 3, 14)
    expect(() => top1Agreement([], [])).toThrow(/non-zero/)
  })
})
