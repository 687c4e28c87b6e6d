import {describe, expect, it} from 'vitest'
import {dequantToF32} from '../src/quant/dequant.js'
import {f16Table} from '../src/quant/fp16.js'
import {dequantMatMulNBits, packMatMulNBits} from '../src/quant/pack.js'
import {quantizeRtn, toFp16Weight, type QuantBits} from '../src/quant/rtn.js'
import {randomWeight} from './quant-helpers.js'

/**
 * The MatMulNBits layout (ContribOperators.md, com.microsoft.MatMulNBits): hand-checked bytes,
 * and dequant(pack(q)) == q * scale for both bit widths, several block sizes, per-channel and
 * grouped scales, default and explicit zero points. test/quant-onnx.test.ts checks the same
 * packing against onnxruntime's kernel.
 */
describe('MatMulNBits packing', () => {
  it('puts the even column in the low nibble and offsets codes by 2^(bits-1)', () => {
    // One row, K = 32, per-channel 4-bit: q = [1, -2, 7, -7, 0, ...].
    const q = new Int8Array(32)
    q.set([1, -2, 7, -7])
    const w = {bits: 4 as QuantBits, rows: 1, cols: 32, groupSize: 32, q, scales: new Uint16Array([0x3c00])}
    const m = packMatMulNBits(w, {blockSize: 16})
    expect(m.bShape).toEqual([1, 2, 8])
    // codes 9, 6, 15, 1 -> bytes 0x69 (6 high, 9 low), 0x1f (1 high, 15 low), then 0x88 (zero)
    expect(Array.from(m.B.subarray(0, 3))).toEqual([0x69, 0x1f, 0x88])
    expect(m.scalesShape).toEqual([1, 2])
    expect(Array.from(m.scales)).toEqual([1, 1])
    expect(m.zeroPoints).toBeUndefined()
    const m8 = packMatMulNBits({...w, bits: 8}, {blockSize: 32, explicitZeroPoints: true})
    expect(Array.from(m8.B.subarray(0, 5))).toEqual([129, 126, 135, 121, 128])
    expect(Array.from(m8.zeroPoints!)).toEqual([128])
    expect(m8.zeroPointsShape).toEqual([1, 1])
  })

  it('packs 4-bit zero points two blocks a byte, low nibble first', () => {
    const w = {bits: 4 as QuantBits, rows: 2, cols: 48, groupSize: 48, q: new Int8Array(96), scales: new Uint16Array([0x3c00, 0x4000])}
    const m = packMatMulNBits(w, {blockSize: 16, explicitZeroPoints: true})
    expect(m.zeroPointsShape).toEqual([2, 2]) // ceil(3 blocks * 4 bits / 8)
    expect(Array.from(m.zeroPoints!)).toEqual([0x88, 0x08, 0x88, 0x08])
    expect(Array.from(m.scales)).toEqual([1, 1, 1, 2, 2, 2])
  })

  for (const bits of [4, 8] as QuantBits[]) {
    for (const [groupSize, blockSize] of [[256, 16], [256, 32], [256, 128], [256, 256], [64, 64], [64, 16], [32, 32], [128, 64]] as const) {
      it(`round-trips ${bits}-bit, group ${groupSize}, block ${blockSize}`, () => {
        const rows = 6
        const cols = 256
        const w = toFp16Weight(randomWeight(rows, cols, 11 + bits + blockSize), 'F32')
        const qw = quantizeRtn(w, rows, cols, {bits, groupSize})
        const want = dequantToF32(qw)
        for (const scaleType of ['float32', 'float16'] as const) {
          for (const explicitZeroPoints of [false, true]) {
            const m = packMatMulNBits(qw, {blockSize, scaleType, explicitZeroPoints})
            expect(m.bShape).toEqual([rows, cols / blockSize, blockSize * bits / 8])
            expect(m.B.length).toBe(rows * cols * bits / 8)
            expect(m.scales).toBeInstanceOf(scaleType === 'float16' ? Uint16Array : Float32Array)
            expect(Array.from(dequantMatMulNBits(m))).toEqual(Array.from(want))
          }
        }
      })
    }
  }

  it('defaults block_size to the group size when it is a valid block size', () => {
    const qw = quantizeRtn(toFp16Weight(randomWeight(2, 4096, 3), 'F32'), 2, 4096, {bits: 4, groupSize: 128})
    expect(packMatMulNBits(qw).blockSize).toBe(128)
    const pc = quantizeRtn(toFp16Weight(randomWeight(2, 96, 3), 'F32'), 2, 96, {bits: 4})
    expect(packMatMulNBits(pc).blockSize).toBe(32) // 96 is no power of two: largest block dividing it
    const t = f16Table()
    const m = packMatMulNBits(pc)
    expect(Array.from(m.scales)).toEqual([0, 0, 0, 1, 1, 1].map(r => t[pc.scales[r]]))
  })

  it('rejects block sizes the op or the scales cannot take', () => {
    const qw = quantizeRtn(toFp16Weight(randomWeight(2, 64, 5), 'F32'), 2, 64, {bits: 4, groupSize: 32})
    expect(() => packMatMulNBits(qw, {blockSize: 8})).toThrow(/power of two >= 16/)
    expect(() => packMatMulNBits(qw, {blockSize: 48})).toThrow(/power of two >= 16/)
    expect(() => packMatMulNBits(qw, {blockSize: 64})).toThrow(/does not divide the quantization group size 32/)
    const odd = quantizeRtn(toFp16Weight(randomWeight(1, 24, 5), 'F32'), 1, 24, {bits: 8})
    expect(() => packMatMulNBits(odd)).toThrow(/no MatMulNBits block_size/)
  })
})
