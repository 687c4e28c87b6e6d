import {readFileSync} from 'node:fs'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {dequantToF16, dequantToF32} from '../src/quant/dequant.js'
import {f16Table} from '../src/quant/fp16.js'
import {packInt4Published, publishedWeight, unpackInt4Published} from '../src/quant/pack.js'
import {qmax, quantizeRtn, toFp16Weight, type QuantBits} from '../src/quant/rtn.js'

/**
 * glmtool's RTN quantizer against ChatGLM's published quantization.py math as real torch
 * computed it (test/fixtures/quant/make_quant_fixtures.py, torch 1.13 CPU with the fp16 ops
 * emulated and cross-checked; the same file checks the verbatim expressions on CUDA).
 */
interface Case {
  bits: QuantBits
  rows: number
  cols: number
  groupSize: number
  rowNames: string[]
  sourceDtype: 'F16' | 'F32' | 'BF16'
  weightF16: string
  scales: string
  qRound: string
  qTorch: string
  dequantF16: string
  packedTorch?: string
  source?: string
}
const fixture: {torch: string, conversions: Record<string, number[] | number>, cases: Record<string, Case>} =
  JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures/quant/published.json'), 'utf8'))

const bytes = (b64: string) => {
  const b = Buffer.from(b64, 'base64')
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.length)
}
const u16 = (b64: string) => new Uint16Array(bytes(b64))
const i8 = (b64: string) => new Int8Array(bytes(b64))
const f32 = (b64: string) => new Float32Array(bytes(b64))

describe('published ChatGLM quantization (fixtures by torch ' + fixture.torch + ')', () => {
  it('records torch\'s float -> int8 conversion of NaN and inf as 0, and wrap-around at 128', () => {
    expect(fixture.conversions.nanToInt8).toEqual([0])
    expect(fixture.conversions.halfNanToInt8).toEqual([0])
    expect(fixture.conversions.infToInt8).toEqual([0])
    expect(fixture.conversions.negInfToInt8).toEqual([0])
    expect(fixture.conversions.int128ToInt8).toBe(-128)
  })

  for (const [name, c] of Object.entries(fixture.cases)) {
    describe(`${name}: ${c.bits}-bit, [${c.rows}, ${c.cols}], group ${c.groupSize}, from ${c.sourceDtype}`, () => {
      const weight = u16(c.weightF16)
      const m = qmax(c.bits)

      if (c.source) {
        it('converts the source weight to fp16 as torch .half() does', () => {
          const src = c.sourceDtype === 'F32' ? f32(c.source!) : u16(c.source!)
          expect(Array.from(toFp16Weight(src, c.sourceDtype))).toEqual(Array.from(weight))
        })
      }

      const ours = quantizeRtn(weight, c.rows, c.cols, {bits: c.bits, groupSize: c.groupSize})

      it('computes bit-identical fp16 scales', () => {
        expect(Array.from(ours.scales)).toEqual(Array.from(u16(c.scales)))
      })

      it('computes the published integers, clamping only where torch overflows', () => {
        const t = f16Table()
        const qRound = u16(c.qRound)
        const qTorch = i8(c.qTorch)
        const overflowRows = new Set<string>()
        for (let k = 0; k < ours.q.length; k++) {
          const v = t[qRound[k]]
          const want = Number.isFinite(v) ? Math.max(-m, Math.min(m, v)) : 0
          if (ours.q[k] !== want) expect.fail(`element ${k}: got ${ours.q[k]}, want ${want} (torch round ${v})`)
          if (Number.isFinite(v) && Math.abs(v) > m) overflowRows.add(c.rowNames[Math.floor(k / c.cols)])
          else if (ours.q[k] !== qTorch[k]) expect.fail(`element ${k}: got ${ours.q[k]}, torch int8 ${qTorch[k]}`)
        }
        // Only subnormal scales can push |W / scale| past qmax (see rtn.ts).
        for (const r of overflowRows) expect(r).toMatch(/^subnormal/)
        if (c.rowNames.includes('subnormal_overflow')) expect(overflowRows.has('subnormal_overflow')).toBe(true)
      })

      if (c.bits === 4) {
        it('packs int4 as compress_int4_weight does (even column in the high nibble)', () => {
          const packedTorch = i8(c.packedTorch!)
          const mine = packInt4Published(ours.q, c.rows, c.cols)
          expect(publishedWeight(ours)).toEqual(mine)
          const half = c.cols / 2
          for (let r = 0; r < c.rows; r++) {
            if (c.rowNames[r] === 'subnormal_overflow') continue // torch packed an 8 there
            expect(Array.from(mine.subarray(r * half, (r + 1) * half)), c.rowNames[r]).toEqual(Array.from(packedTorch.subarray(r * half, (r + 1) * half)))
          }
          // Unpacking torch's bytes gives torch's integers read as 4-bit two's complement.
          const qTorch = i8(c.qTorch)
          expect(Array.from(unpackInt4Published(packedTorch, c.rows, c.cols))).toEqual(Array.from(qTorch, v => ((v + 8) & 15) - 8))
        })
      }

      it('dequantizes the published tensors to the same fp16 bits as the published kernels', () => {
        const published = {bits: c.bits, rows: c.rows, cols: c.cols, groupSize: c.groupSize, weight: c.bits === 4 ? i8(c.packedTorch!) : i8(c.qTorch), scales: u16(c.scales)}
        expect(Array.from(dequantToF16(published))).toEqual(Array.from(u16(c.dequantF16)))
        // f32 is the exact product; rounding it gives the fp16 result.
        const exact = dequantToF32(ours)
        const t = f16Table()
        const s = u16(c.scales)
        const groups = c.cols / c.groupSize
        for (let k = 0; k < exact.length; k += 7) {
          expect(exact[k]).toBe(ours.q[k] * t[s[Math.floor(k / c.cols) * groups + Math.floor((k % c.cols) / c.groupSize)]])
        }
      })
    })
  }
})
