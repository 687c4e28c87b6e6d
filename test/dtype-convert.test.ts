import {setFloat16} from '@petamoriken/float16'
import {describe, expect, it} from 'vitest'
import {decodeFloats, encodeFloats, toFloat16Bits} from '../src/formats/dtype-convert.js'

/** The oracle: @petamoriken/float16's encoder (round to nearest even), one DataView call per value. */
const dv = new DataView(new ArrayBuffer(2))
function libraryBits(x: number): number {
  setFloat16(dv, 0, x, true)
  return dv.getUint16(0, true)
}

describe('float16 encoding', () => {
  it('gives the library\'s bits on every float16, every rounding midpoint and its neighbours', () => {
    const all = new Uint16Array(65536).map((_, i) => i)
    const values = decodeFloats(Buffer.from(all.buffer), 'F16')
    const f = new Float32Array(1)
    const u = new Uint32Array(f.buffer)
    const neighbour = (x: number, d: number) => {
      f[0] = x
      u[0] += d
      return f[0]
    }
    let checked = 0
    for (let i = 0; i < 65536; i++) {
      const x = values[i]
      if (Number.isNaN(x)) {
        expect(Number.isNaN(decodeFloats(encodeFloats(new Float32Array([x]), 'F16'), 'F16')[0])).toBe(true)
        continue
      }
      expect(toFloat16Bits(x)).toBe(i)
      // the midpoint to the next float16 of larger magnitude (exact in float32), and one float32 ulp either side
      if ((i & 0x7fff) >= 0x7c00) continue
      const next = values[i + 1]
      const mid = Math.fround((x + next) / 2)
      for (const y of [mid, neighbour(mid, 1), neighbour(mid, -1)]) {
        expect(toFloat16Bits(y), `${y}`).toBe(libraryBits(y))
        checked++
      }
    }
    expect(checked).toBeGreaterThan(180_000)
    // random float32 bit patterns over the whole range
    let seed = 12345
    for (let k = 0; k < 100_000; k++) {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0
      u[0] = seed
      if (Number.isNaN(f[0])) continue
      expect(toFloat16Bits(f[0])).toBe(libraryBits(f[0]))
    }
    expect([toFloat16Bits(65520), toFloat16Bits(-Infinity), toFloat16Bits(2 ** -25), toFloat16Bits(Math.fround(2 ** -25 * 1.0000001))]).toEqual([0x7c00, 0xfc00, 0, 1])
  })

  it('encodes buffers element by element', () => {
    const v = new Float32Array(1000).map((_, i) => Math.sin(i) * 10 ** ((i % 13) - 8))
    const b = encodeFloats(v, 'F16')
    v.forEach((x, i) => expect(b.readUInt16LE(2 * i)).toBe(libraryBits(x)))
  })
})
