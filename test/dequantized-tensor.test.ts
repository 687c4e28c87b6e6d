/**
 * formats/dequantized-tensor.ts: a quantized weight read as a float tensor, block of rows by block
 * of rows. Expected values are computed here from the integers and scales (bf16: the exact
 * product's float32 bits rounded to nearest even in the top 16), not with quant/dequant.ts.
 */
import {getFloat16, setFloat16} from '@petamoriken/float16'
import {describe, expect, it} from 'vitest'
import {dequantizedTensor} from '../src/formats/dequantized-tensor.js'
import {memoryTensor, type TensorEntry} from '../src/formats/tensor.js'

const ROWS = 37, COLS = 24

function layout(bits: 4 | 8, group: number): {weight: TensorEntry, scale: TensorEntry, q: number[][], s: number[][]} {
  const q: number[][] = [], s: number[][] = []
  const groups = group ? COLS / group : 1
  const bytes = Buffer.alloc(ROWS * (bits === 4 ? COLS / 2 : COLS))
  const scales = new DataView(new ArrayBuffer(ROWS * groups * 2))
  for (let r = 0; r < ROWS; r++) {
    q.push([])
    s.push([])
    for (let c = 0; c < COLS; c++) q[r].push(bits === 8 ? ((r * 31 + c * 17) % 255) - 127 : ((r * 5 + c * 3) % 15) - 7)
    for (let g = 0; g < groups; g++) {
      setFloat16(scales, 2 * (r * groups + g), 0.001 * (1 + r + 3 * g), true)
      s[r].push(getFloat16(scales, 2 * (r * groups + g), true))
    }
    for (let c = 0; c < COLS; c++) {
      if (bits === 8) bytes.writeInt8(q[r][c], r * COLS + c)
      else if (c % 2 === 0) bytes[r * (COLS / 2) + c / 2] = ((q[r][c] & 15) << 4) | (q[r][c + 1] & 15)  // column 2j high
    }
  }
  return {
    weight: memoryTensor('w', 'I8', [ROWS, bits === 4 ? COLS / 2 : COLS], bytes),
    scale: memoryTensor('w_scale', 'F16', group ? [ROWS, groups] : [ROWS], Buffer.from(scales.buffer)),
    q, s,
  }
}

async function all(t: TensorEntry, piece: number): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of t.chunks(piece)) parts.push(Buffer.from(c))
  return Buffer.concat(parts)
}

function bf16(x: number): number {
  const f = new Float32Array([x])
  const u = new Uint32Array(f.buffer)[0]
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff
}

describe('dequantizedTensor', () => {
  it.each([[8, 0], [8, 8], [4, 0], [4, 12]] as const)('int%i group %i: fp16(q * scale) for every element, across pieces of any size', async (bits, group) => {
    const {weight, scale, q, s} = layout(bits, group)
    const t = dequantizedTensor(weight, scale, {bits, groupSize: group}, COLS, 'F16')
    expect([t.dtype, ...t.shape]).toEqual(['F16', ROWS, COLS])
    const want = new DataView(new ArrayBuffer(ROWS * COLS * 2))
    for (let r = 0; r < ROWS; r++) for (let c = 0; c < COLS; c++) setFloat16(want, 2 * (r * COLS + c), q[r][c] * s[r][group ? Math.floor(c / group) : 0], true)
    for (const piece of [48, 100, 1 << 20]) expect((await all(t, piece)).equals(Buffer.from(want.buffer)), `pieces of ${piece}`).toBe(true)
  })

  it('bf16: the exact product rounded once', async () => {
    const {weight, scale, q, s} = layout(4, 12)
    const got = await all(dequantizedTensor(weight, scale, {bits: 4, groupSize: 12}, COLS, 'BF16'), 200)
    for (let r = 0; r < ROWS; r++) for (let c = 0; c < COLS; c++) expect(got.readUInt16LE(2 * (r * COLS + c))).toBe(bf16(q[r][c] * s[r][Math.floor(c / 12)]))
  })

  it('refuses shapes that do not fit, and a weight that ends early', async () => {
    const {weight, scale} = layout(8, 0)
    expect(() => dequantizedTensor(weight, scale, {bits: 4, groupSize: 0}, COLS, 'F16')).toThrow(/tensor w is I8 \[37,24\]; int4 rows of 24 columns are int8 \[rows, 12\]/)
    expect(() => dequantizedTensor(weight, scale, {bits: 8, groupSize: 8}, COLS, 'F16')).toThrow(/tensor w_scale is \[37\]; w needs \[37, 3\] scales/)
    const partRow: TensorEntry = {...weight, async *chunks() { yield Buffer.alloc(5 * COLS + 3) }}
    await expect(all(dequantizedTensor(partRow, scale, {bits: 8, groupSize: 0}, COLS, 'F16'), 1 << 20)).rejects.toThrow(/tensor w is not a whole number of rows/)
    const fewRows: TensorEntry = {...weight, async *chunks() { yield Buffer.alloc(5 * COLS) }}
    await expect(all(dequantizedTensor(fewRows, scale, {bits: 8, groupSize: 0}, COLS, 'F16'), 1 << 20)).rejects.toThrow(/tensor w ended after 120 of 888 bytes/)
  })
})
