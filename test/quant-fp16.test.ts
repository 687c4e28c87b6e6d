import {describe, expect, it} from 'vitest'
import {decodeFloats, toFloat16Bits} from '../src/formats/dtype-convert.js'
import {f16Table, f16ToNumber, f32ToF16Bits, roundHalfEven} from '../src/quant/fp16.js'

/**
 * The quantizers' fast fp16 helpers against the project's reference conversions
 * (@petamoriken/float16 through dtype-convert.ts), on every fp16 value, every midpoint between
 * neighbouring fp16 values (the round-half-even ties) and the f32 values either side of each.
 */
describe('fp16 helpers', () => {
  it('decodes all 65,536 fp16 bit patterns exactly', () => {
    const all = Buffer.alloc(65536 * 2)
    for (let h = 0; h < 65536; h++) all.writeUInt16LE(h, 2 * h)
    const ref = decodeFloats(all, 'F16')
    const t = f16Table()
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(ref[h])) expect(Number.isNaN(t[h])).toBe(true)
      else expect(Object.is(t[h], ref[h]), `bits ${h.toString(16)}`).toBe(true)
    }
    expect(f16ToNumber(0x3c00)).toBe(1)
  })

  it('rounds to nearest even exactly as the reference encoder, ties and neighbours included', () => {
    const t = f16Table()
    const f = new Float32Array(1)
    const u = new Uint32Array(f.buffer)
    let checked = 0
    const check = (x: number) => {
      f[0] = x
      const ref = toFloat16Bits(f[0])
      const got = f32ToF16Bits(f[0])
      if (Number.isNaN(f[0])) expect((got & 0x7c00) === 0x7c00 && (got & 0x3ff) !== 0).toBe(true)
      else if (got !== ref) expect.fail(`x=${f[0]} (f32 ${u[0].toString(16)}): got ${got.toString(16)}, want ${ref.toString(16)}`)
      checked++
    }
    for (let h = 0; h < 0x7c00; h++) {
      for (const sign of [1, -1]) {
        const a = sign * t[h]
        check(a)
        const b = sign * t[h + 1] // 0x7c00 is inf: the midpoint 65520 rounds to inf
        const mid = (a + b) / 2 // exact in f32: fp16 midpoints need 12 significant bits
        check(mid)
        f[0] = mid
        const m = u[0]
        u[0] = m + 1
        check(f[0])
        u[0] = m - 1
        check(f[0])
      }
    }
    for (const x of [0, -0, Infinity, -Infinity, NaN, 65504, 65519.99, 65520, 1e-8, 2 ** -25, 2 ** -24, 3 * 2 ** -26, 1e30, -1e-30, 2 ** -149]) check(x)
    expect(checked).toBeGreaterThan(240_000)
  })

  it('rounds half to even like torch.round', () => {
    const cases: [number, number][] = [[0.5, 0], [1.5, 2], [2.5, 2], [-0.5, -0], [-1.5, -2], [-2.5, -2], [126.5, 126], [125.5, 126], [-6.5, -6], [2.4999, 2], [2.5001, 3], [7, 7]]
    for (const [x, want] of cases) expect(Object.is(roundHalfEven(x), want) || roundHalfEven(x) === want, `${x}`).toBe(true)
    expect(Number.isNaN(roundHalfEven(NaN))).toBe(true)
    expect(roundHalfEven(Infinity)).toBe(Infinity)
  })
})
