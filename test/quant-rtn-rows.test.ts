import {describe, expect, it} from 'vitest'
import {dequantToF32} from '../src/quant/dequant.js'
import {f16Table, f32ToF16Bits} from '../src/quant/fp16.js'
import {publishedWeight} from '../src/quant/pack.js'
import {quantizeRtn, toFp16Weight, type QuantBits} from '../src/quant/rtn.js'
import {quantizeRowsPublished} from '../src/quant/rtn-rows.js'
import {RtnPool} from '../src/pipelines/quantize/rtn-pool.js'
import {rtnTensors} from '../src/pipelines/quantize/quantized-tensors.js'
import {memoryTensor, readTensor} from '../src/formats/tensor.js'
import {gaussian, randomWeight, rng} from './quant-helpers.js'

/**
 * The fast row kernel used by `glmtool quantize` (and its worker pool) against the reference
 * quantizer rtn.ts, which test/quant-published.test.ts proves bit-identical to torch: same
 * published bytes and scales on weights built to hit the fast path's edge (quotients right at
 * and next to half-integers), tiny and zero groups, and plain random rows.
 */
function nastyWeight(rows: number, cols: number, seed: number): Uint16Array {
  const g = gaussian(seed)
  const u = rng(seed + 1)
  const w = new Float32Array(rows * cols)
  for (let r = 0; r < rows; r++) {
    const kind = r % 5
    for (let i = 0; i < cols; i++) {
      let v = g() * 0.02
      // Rows whose scale is exactly a power of two and whose quotients are exact half-integers,
      // or one fp16 ulp either side of one: ties (half to even) and near-ties.
      if (kind === 1) v = i === 0 ? 7 * 2 ** -7 : ((Math.floor(u() * 13) - 6) + 0.5) * 2 ** -7 + (Math.floor(u() * 3) - 1) * 2 ** -17
      if (kind === 2) v = i === 0 ? 127 * 2 ** -10 : ((Math.floor(u() * 253) - 126) + 0.5) * 2 ** -10 + (Math.floor(u() * 3) - 1) * 2 ** -20
      if (kind === 3) v = g() * 1e-6 // subnormal fp16 range: scales with few bits
      if (kind === 4 && i % 7 === 0) v = 0
      w[r * cols + i] = v
    }
  }
  if (rows > 4) w.fill(0, 4 * cols, 5 * cols) // an all-zero row: scale 0, q 0
  return toFp16Weight(w, 'F32')
}

describe('quantizeRowsPublished = quantizeRtn + publishedWeight, bit for bit', () => {
  for (const bits of [4, 8] as QuantBits[]) {
    for (const groupSize of [0, 32, 128]) {
      it(`${bits}-bit, ${groupSize ? `group ${groupSize}` : 'per channel'}`, () => {
        const rows = 40
        const cols = 256
        const g = groupSize || cols
        for (const w of [nastyWeight(rows, cols, 3 + bits + groupSize), toFp16Weight(randomWeight(rows, cols, 9 + groupSize), 'F32')]) {
          const ref = quantizeRtn(w, rows, cols, {bits, groupSize: g})
          const outW = new Int8Array(bits === 4 ? rows * cols / 2 : rows * cols)
          const outS = new Uint16Array(rows * cols / g)
          const meanSq = Float64Array.from({length: cols}, (_, i) => 1 + (i % 3))
          const e = quantizeRowsPublished(w, cols, 0, rows, g, bits, outW, outS, meanSq)
          expect(Array.from(outS)).toEqual(Array.from(ref.scales))
          expect(Array.from(outW)).toEqual(Array.from(publishedWeight(ref)))
          const t = f16Table()
          const deq = dequantToF32(ref)
          let err = 0
          let wErr = 0
          for (let k = 0; k < deq.length; k++) {
            const d = t[w[k]] - deq[k]
            err += d * d
            wErr += meanSq[k % cols] * d * d
          }
          expect(e.errSq).toBeCloseTo(err, 12)
          expect(e.weightedErr).toBeCloseTo(wErr, 12)
        }
      })
    }
  }

  it('names the tensor, row and column of a non-finite weight', () => {
    const w = toFp16Weight(randomWeight(3, 64, 1), 'F32')
    w[2 * 64 + 5] = 0x7e00 // NaN
    expect(() => quantizeRowsPublished(w, 64, 0, 3, 64, 4, new Int8Array(96), new Uint16Array(3), undefined, 'layers.0.mlp.weight'))
      .toThrow(/layers\.0\.mlp\.weight: non-finite weight NaN at row 2, column 5/)
    w[2 * 64 + 5] = f32ToF16Bits(-Infinity)
    expect(() => quantizeRowsPublished(w, 64, 0, 3, 64, 8, new Int8Array(192), new Uint16Array(3))).toThrow(/-Infinity at row 2/)
  })

  it('the worker pool gives the same bytes as one thread', async () => {
    const rows = 64
    const cols = 128
    const w = nastyWeight(rows, cols, 77)
    const pool = RtnPool.create(2)
    try {
      const block = RtnPool.allocate(rows, cols, 32, 4)
      block.w.set(w)
      await pool.quantize(block, rows, cols, 32, 4, undefined, 'w', 0)
      const ref = quantizeRtn(w, rows, cols, {bits: 4, groupSize: 32})
      expect(Array.from(block.outW)).toEqual(Array.from(publishedWeight(ref)))
      expect(Array.from(block.outS)).toEqual(Array.from(ref.scales))
    } finally {
      await pool.close()
    }
  })
})

describe('rtnTensors: streaming in row blocks over worker threads', () => {
  // Blocks of 7 rows (43 of them, the last partial) read in 1000-byte pieces that split rows
  // and even elements of F32: the pipeline (read, quantize two blocks, write) must still give
  // the published bytes, and the scales and error sums of one pass.
  const rows = 300
  const cols = 64
  const w32 = randomWeight(rows, cols, 5)
  const f16 = toFp16Weight(w32, 'F32')
  const cases: [string, 'F16' | 'F32' | 'BF16', Buffer][] = [
    ['F16', 'F16', Buffer.from(f16.buffer)],
    ['F32', 'F32', Buffer.from(w32.buffer)],
    ['BF16', 'BF16', Buffer.from(Uint16Array.from(new Uint32Array(w32.buffer), u => u >>> 16).buffer)],
  ]
  for (const [name, dtype, data] of cases) {
    for (const bits of [4, 8] as QuantBits[]) {
      it(`${name} source, ${bits}-bit, groups of 32`, async () => {
        const pool = RtnPool.create(2)
        try {
          const src = memoryTensor('layers.0.mlp.weight', dtype, [rows, cols], data)
          let stats: {errSq: number} | undefined
          const [weight, scale] = rtnTensors(src, bits, 32, pool, undefined, s => {
            stats = s
          }, {blockBytes: 7 * cols * 2, readBytes: 1000})
          const wBytes = await readTensor(weight)
          const sBytes = await readTensor(scale)
          const ref = quantizeRtn(toFp16Weight(dtype === 'F16' ? f16 : dtype === 'F32' ? w32 : new Uint16Array(data.buffer, data.byteOffset, data.length / 2), dtype), rows, cols, {bits, groupSize: 32})
          expect(wBytes.equals(Buffer.from(publishedWeight(ref).buffer))).toBe(true)
          expect(sBytes.equals(Buffer.from(ref.scales.buffer))).toBe(true)
          expect(stats!.errSq).toBeGreaterThan(0)
          // The scale alone (pulled first) runs its own pass.
          const [, scale2] = rtnTensors(src, bits, 32, pool, undefined, () => {}, {blockBytes: 7 * cols * 2, readBytes: 1000})
          expect((await readTensor(scale2)).equals(sBytes)).toBe(true)
        } finally {
          await pool.close()
        }
      })
    }
  }

  it('names the tensor when a block holds NaN, and stops', async () => {
    const bad = Uint16Array.from(f16)
    bad[250 * cols + 3] = 0x7e00
    const pool = RtnPool.create(2)
    try {
      const [weight] = rtnTensors(memoryTensor('layers.1.attn.weight', 'F16', [rows, cols], Buffer.from(bad.buffer)), 4, 0, pool, undefined, () => {}, {blockBytes: 7 * cols * 2})
      await expect(readTensor(weight)).rejects.toThrow(/tensor layers\.1\.attn\.weight: non-finite weight NaN at row 250, column 3/)
    } finally {
      await pool.close()
    }
  })
})
