/**
 * Q8_0 and Q4_0 against the block layouts of ggml-common.h and the reference quantizers of
 * ggml-quants.c (quantize_row_q8_0_ref / quantize_row_q4_0_ref), from small vectors whose bytes
 * are worked out by hand in the comments: the fp16 scale, the rounding rule (roundf: half away
 * from zero for Q8_0; trunc(x/d + 8.5) clamped to 15 for Q4_0), the sign of the Q4_0 scale
 * (the largest-magnitude value maps to -8, the first on a tie) and the nibble order (value j
 * low nibble of byte j, value j+16 its high nibble). llama.cpp reading these bytes is checked
 * through logits in gguf-llama.test.ts.
 */
import {describe, expect, it} from 'vitest'
import {dequantizeQ4_0, dequantizeQ8_0, quantizeQ4_0, quantizeQ8_0} from '../src/formats/gguf/quant-blocks.js'

const block = (head: number[]) => Float32Array.from({length: 32}, (_, j) => head[j] ?? 0)
const q8 = (x: Float32Array) => {
  const out = Buffer.alloc((x.length / 32) * 34)
  expect(quantizeQ8_0(x, out)).toBe(out.length)
  return out
}
const q4 = (x: Float32Array) => {
  const out = Buffer.alloc((x.length / 32) * 18)
  expect(quantizeQ4_0(x, out)).toBe(out.length)
  return out
}

describe('Q8_0 (34-byte blocks: fp16 d, int8 q[32])', () => {
  it('amax 127 gives d = 1 (fp16 0x3C00) and q = roundf(x): halves go away from zero', () => {
    const out = q8(block([127, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.49, -127]))
    expect(out.readUInt16LE(0)).toBe(0x3c00)
    const q = [...out.subarray(2, 34)].map(b => (b << 24) >> 24)
    // Half to even would give 0, 0, 2, -2, 2, -2 for the halves.
    expect(q.slice(0, 9)).toEqual([127, 1, -1, 2, -2, 3, -3, 126, -127])
    expect(q.slice(9)).toEqual(new Array(23).fill(0))
  })

  it('a scale that fp16 must round: amax 100, d = 100/127 = 0.787401... -> fp16 0x3A4D (0.78759765625)', () => {
    // 0.787401 = 1.574803 * 2^-1: exponent field 14, mantissa 0.574803 * 1024 = 588.6 -> 589.
    const out = q8(block([100, 10, -30, 1, -0.3]))
    expect(out.readUInt16LE(0)).toBe(0x3a4d)
    // q = x * 127/100 (1/d in f32): 127, 12.7 -> 13, -38.1 -> -38, 1.27 -> 1, -0.381 -> 0.
    expect([...out.subarray(2, 7)].map(b => (b << 24) >> 24)).toEqual([127, 13, -38, 1, 0])
  })

  it('an all-zero block has d = 0 and q = 0', () => {
    expect([...q8(new Float32Array(32))]).toEqual(new Array(34).fill(0))
  })

  it('blocks follow each other; dequantization is q * d', () => {
    const x = new Float32Array(64)
    x[0] = 127
    x[32] = -254 // second block: d = 2, q[0] = -127
    x[33] = 3 // 1.5 -> 2
    const out = q8(x)
    expect(out.readUInt16LE(34)).toBe(0x4000) // fp16 2.0
    expect(out.readInt8(36)).toBe(-127)
    expect(out.readInt8(37)).toBe(2)
    const y = dequantizeQ8_0(out, 64)
    expect([y[0], y[32], y[33]]).toEqual([127, -254, 4])
  })

  it('refuses a length that is not whole blocks', () => {
    expect(() => quantizeQ8_0(new Float32Array(33), Buffer.alloc(68))).toThrow(/multiple of 32/)
  })
})

describe('Q4_0 (18-byte blocks: fp16 d, 16 bytes of nibbles)', () => {
  it('largest magnitude -8 gives d = 1; nibble = min(15, trunc(x + 8.5)); value j+16 in the high nibble', () => {
    const x = block([-8, 7, 0, -0.5, 0.49, 0.5, 7.6, -7.6, -3.2])
    x[16] = 7 // high nibble of byte 0
    x[17] = -3.2 // high nibble of byte 1
    const out = q4(x)
    expect(out.readUInt16LE(0)).toBe(0x3c00)
    // lows: -8 -> 0, 7 -> 15, 0 -> 8, -0.5 -> 8, 0.49 -> 8, 0.5 -> 9, 7.6 -> 16.1 -> 15, -7.6 -> 0, -3.2 -> 5
    const lows = [...out.subarray(2, 18)].map(b => b & 15)
    expect(lows.slice(0, 9)).toEqual([0, 15, 8, 8, 8, 9, 15, 0, 5])
    expect(lows.slice(9)).toEqual(new Array(7).fill(8))
    const highs = [...out.subarray(2, 18)].map(b => b >> 4)
    expect(highs.slice(0, 2)).toEqual([15, 5])
    expect(out[2]).toBe(0xf0)
    expect(out[3]).toBe(0x5f)
  })

  it('a positive maximum gives a negative scale: max 4 -> d = -0.5 (fp16 0xB800)', () => {
    const out = q4(block([4, -4, 1, 0]))
    expect(out.readUInt16LE(0)).toBe(0xb800)
    // x / d = -2x: 4 -> -8 + 8.5 -> 0; -4 -> 16.5 -> 15; 1 -> 6.5 -> 6; 0 -> 8
    expect([...out.subarray(2, 6)].map(b => b & 15)).toEqual([0, 15, 6, 8])
  })

  it('on a tie of magnitudes the first value sets the sign: [-4, 4] -> d = 0.5 (0x3800)', () => {
    const out = q4(block([-4, 4]))
    expect(out.readUInt16LE(0)).toBe(0x3800)
    // x / d = 2x: -4 -> -8 + 8.5 -> 0; 4 -> 16.5 -> 15 (clamped)
    expect([out[2] & 15, out[3] & 15]).toEqual([0, 15])
    // Dequantized: (n - 8) * d
    const y = dequantizeQ4_0(out, 32)
    expect([y[0], y[1], y[2]]).toEqual([-4, 3.5, 0])
  })

  it('an all-zero block: d = 0.0f / -8 = -0.0 (fp16 0x8000, IEEE division in C too) and every nibble 8', () => {
    const out = q4(new Float32Array(32))
    expect(out.readUInt16LE(0)).toBe(0x8000)
    expect([...out.subarray(2)]).toEqual(new Array(16).fill(0x88))
  })

  it('round trip error stays within the step on random data (|x - y| <= |d|/2 + fp16 slack)', () => {
    let s = 12345
    const rnd = () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1
    const x = Float32Array.from({length: 32 * 64}, rnd)
    const y8 = dequantizeQ8_0(q8(x), x.length)
    const y4 = dequantizeQ4_0(q4(x), x.length)
    for (let b = 0; b < 64; b++) {
      const amax = Math.max(...x.subarray(b * 32, b * 32 + 32).map(Math.abs))
      for (let j = b * 32; j < b * 32 + 32; j++) {
        expect(Math.abs(x[j] - y8[j])).toBeLessThanOrEqual((amax / 127) * 0.5 + amax * 1e-3)
        // Q4_0's top step is clamped (value +8 -> 7), so the bound there is a whole step.
        expect(Math.abs(x[j] - y4[j])).toBeLessThanOrEqual((amax / 8) * 1 + amax * 1e-3)
      }
    }
  })
})
