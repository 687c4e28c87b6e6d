import {describe, expect, it} from 'vitest'
import {dequantToF32} from '../src/quant/dequant.js'
import {f16Table, f32ToF16Bits} from '../src/quant/fp16.js'
import {packInt4Published, unpackInt4Published} from '../src/quant/pack.js'
import {qmax, quantizeRtn, quantizeWithScales, toFp16Weight, type QuantBits} from '../src/quant/rtn.js'
import {randomWeight} from './quant-helpers.js'

describe('RTN quantization invariants', () => {
  const rows = 8
  const cols = 256
  const w = toFp16Weight(randomWeight(rows, cols, 42, 0.05), 'F32')
  const t = f16Table()

  for (const bits of [4, 8] as QuantBits[]) {
    for (const groupSize of [32, 64, 128, 256]) {
      it(`${bits}-bit, group ${groupSize}: each group's scale is fp16(max/qmax) and its largest weight maps to +-qmax`, () => {
        const m = qmax(bits)
        const qw = quantizeRtn(w, rows, cols, {bits, groupSize})
        const groups = cols / groupSize
        expect(qw.scales.length).toBe(rows * groups)
        for (let r = 0; r < rows; r++) {
          for (let g = 0; g < groups; g++) {
            let max = 0
            let arg = 0
            for (let i = 0; i < groupSize; i++) {
              const v = Math.abs(t[w[r * cols + g * groupSize + i]])
              if (v > max) [max, arg] = [v, i]
            }
            expect(qw.scales[r * groups + g]).toBe(f32ToF16Bits(max / m))
            expect(Math.abs(qw.q[r * cols + g * groupSize + arg])).toBe(m)
          }
        }
        for (const v of qw.q) expect(Math.abs(v)).toBeLessThanOrEqual(m)
        // Grouped quantization is per-channel quantization of the [rows * groups, groupSize] view.
        const view = quantizeRtn(w, rows * groups, groupSize, {bits})
        expect(view.q).toEqual(qw.q)
        expect(view.scales).toEqual(qw.scales)
        // Rounding error is at most half a step (fp16 rounding of W / scale adds < 2^-11 relative).
        const deq = dequantToF32(qw)
        for (let k = 0; k < deq.length; k++) {
          const s = t[qw.scales[Math.floor(k / cols) * groups + Math.floor((k % cols) / groupSize)]]
          expect(Math.abs(deq[k] - t[w[k]])).toBeLessThanOrEqual(s * (0.5 + m * 2 ** -11))
        }
        expect(quantizeWithScales(w, rows, cols, qw.scales, bits, groupSize)).toEqual(qw.q)
      })
    }
  }

  it('smaller groups never raise the weight error of these weights', () => {
    const err = (groupSize: number) => {
      const d = dequantToF32(quantizeRtn(w, rows, cols, {bits: 4, groupSize}))
      return d.reduce((a, v, k) => a + (v - t[w[k]]) ** 2, 0)
    }
    expect(err(32)).toBeLessThan(err(128))
    expect(err(128)).toBeLessThan(err(256))
  })

  it('rejects unsupported bits, group sizes that do not divide the columns, bad shapes and non-finite weights', () => {
    expect(() => quantizeRtn(w, rows, cols, {bits: 2 as QuantBits})).toThrow(/unsupported quantization bits 2: only 4 and 8/)
    expect(() => quantizeRtn(w, rows, cols, {bits: 4, groupSize: 48})).toThrow(/group size 48 does not divide the 256 input columns/)
    expect(() => quantizeRtn(w, rows, cols, {bits: 4, groupSize: 0})).toThrow(/group size/)
    expect(() => quantizeRtn(w, rows + 1, cols, {bits: 4})).toThrow(/expected 9 x 256/)
    const bad = w.slice()
    bad[300] = 0x7c00 // +inf
    expect(() => quantizeRtn(bad, rows, cols, {bits: 8})).toThrow(/non-finite weight Infinity at row 1, column 44/)
    bad[300] = 0x7e00
    expect(() => quantizeRtn(bad, rows, cols, {bits: 8})).toThrow(/non-finite/)
  })

  it('converts f32 and bf16 weights to fp16 first, refusing values beyond fp16 range', () => {
    expect(Array.from(toFp16Weight(new Float32Array([1, -2.5, 65504, 65519, 1e-8]), 'F32'))).toEqual([0x3c00, 0xc100, 0x7bff, 0x7bff, 0])
    expect(() => toFp16Weight(new Float32Array([70000]), 'F32')).toThrow(/outside fp16's range/)
    // bf16 0x3f80 = 1.0, 0xc020 = -2.5, 0x4780 = 65536 (too large)
    expect(Array.from(toFp16Weight(new Uint16Array([0x3f80, 0xc020]), 'BF16'))).toEqual([0x3c00, 0xc100])
    expect(() => toFp16Weight(new Uint16Array([0x4780]), 'BF16')).toThrow(/outside fp16's range/)
    expect(() => toFp16Weight(new Float32Array(1), 'BF16')).toThrow(/Uint16Array/)
  })
})

describe('published int4 packing', () => {
  it('stores column 2j in the high nibble and 2j+1 in the low nibble, for all 256 pairs', () => {
    const q = new Int8Array(512)
    for (let hi = -8; hi < 8; hi++) for (let lo = -8; lo < 8; lo++) {
      const k = (hi + 8) * 16 + (lo + 8)
      q[2 * k] = hi
      q[2 * k + 1] = lo
    }
    const packed = packInt4Published(q, 1, 512)
    for (let k = 0; k < 256; k++) expect(packed[k] & 0xff).toBe((((q[2 * k] & 15) << 4) | (q[2 * k + 1] & 15)))
    expect(packed[0] & 0xff).toBe(0x88) // (-8, -8)
    expect(unpackInt4Published(packed, 1, 512)).toEqual(q)
    expect(Array.from(packInt4Published(new Int8Array([1, -2, -7, 7]), 1, 4))).toEqual([0x1e, 0x97 - 256])
  })

  it('refuses odd column counts and values outside 4 bits', () => {
    expect(() => packInt4Published(new Int8Array(3), 1, 3)).toThrow(/even number of columns/)
    expect(() => packInt4Published(new Int8Array([8, 0]), 1, 2)).toThrow(/does not fit in 4 bits/)
  })
})
