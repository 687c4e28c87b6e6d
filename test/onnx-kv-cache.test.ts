/**
 * Issue 13: the CPU runtime's KV-cache buffer (OnnxCpuBackend: one buffer per layer that each run
 * reads in place as past_key/past_value, the run returning only its new rows, which are appended)
 * on tiny sharpened exports of both generations (onnx-fixtures.ts: peaked attention, so a wrong
 * cache row or mask entry shows). A prefill (v1: bidirectional context), decode steps, a
 * several-token continuation and the buffer's growth past its first capacity, with and without a
 * P-Tuning prefix, give the logits of running the whole sequence at once with no cache (within
 * 1e-4 relative, greedy identical), and the same again with the buffer filled with garbage
 * beyond the rows in use (masked, so it must not matter). Then the property the speed rests on:
 * in the graph nothing but the two attention products reads past_key/past_value (no Concat,
 * Transpose or copy of the cache), and present is only the run's S rows.
 * Numerics against the PyTorch reference, through the same cache, are in onnx-parity.test.ts.
 */
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import * as ort from 'onnxruntime-node'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {decodeModel} from '../src/formats/onnx/onnx-builder.js'
import type {ForwardInput} from '../src/runtime/backend.js'
import {attentionBias, bufferAttentionBias, OnnxCpuBackend, type PrefixKV} from '../src/runtime/backends/onnx-cpu.js'
import {argmax} from '../src/runtime/sampling.js'
import {compareLogits} from './helpers/reference.js'
import {sharpenedOnnxPair} from './onnx-fixtures.js'

const REL_TOL = 1e-4
const work = mkdtempSync(join(tmpdir(), 'glmtool-onnx-kv-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
let onnx: Record<'v1' | 'v2', string> = {v1: '', v2: ''}

beforeAll(async () => {
  onnx = await sharpenedOnnxPair(work, ['--dtype', 'f32'])
})

/** A prompt of n text tokens laid out as each generation lays it out (v1: [gMASK] <sop>, bidirectional context). */
function prompt(gen: 'v1' | 'v2', n: number): Omit<ForwardInput, 'logits'> {
  const text = Array.from({length: n}, (_, i) => 100 + ((13 * i) % 5000))
  if (gen === 'v1') {
    const ids = [...text, 130001, 130004]
    return {ids, positions: [...Array.from({length: n + 1}, (_, i) => i), n], blockPositions: [...Array(n + 1).fill(0), 1], bidirectional: n + 1}
  }
  const ids = [64790, 64792, ...text]
  return {ids, positions: ids.map((_, i) => i), bidirectional: 0}
}

/** The next tokens after `length` cached ones, positioned as generate() positions them. */
function next(gen: 'v1' | 'v2', p: Omit<ForwardInput, 'logits'>, length: number, ids: number[]): ForwardInput {
  const mask = p.positions[p.positions.length - 1]
  return gen === 'v1'
    ? {ids, positions: ids.map(() => mask), blockPositions: ids.map((_, i) => length - p.ids.length + 2 + i), bidirectional: p.bidirectional, logits: 'all'}
    : {ids, positions: ids.map((_, i) => length + i), bidirectional: 0, logits: 'all'}
}

/** Seeded prefix K/V of `length` entries per layer, scaled like real keys. */
function randomPrefix(b: OnnxCpuBackend, length: number): PrefixKV {
  const d = b.manifest.dims
  let seed = 11
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5) * 2
  const make = () => Array.from({length: d.layers}, () => Float32Array.from({length: d.kvHeads * length * d.headDim}, rand))
  return {length, keys: make(), values: make()}
}

/** Concatenate forward inputs into one (the whole sequence at once). */
function joined(steps: readonly ForwardInput[]): ForwardInput {
  const cat = <T>(f: (x: ForwardInput) => readonly T[] | undefined) => steps.flatMap(x => [...(f(x) ?? [])])
  return {
    ids: cat(x => x.ids), positions: cat(x => x.positions),
    ...(steps[0].blockPositions ? {blockPositions: cat(x => x.blockPositions)} : {}),
    bidirectional: steps[0].bidirectional, logits: 'all',
  }
}

for (const gen of ['v1', 'v2'] as const) {
  for (const prefixLength of [0, 5]) {
    it(`${gen}${prefixLength ? ', P-Tuning prefix' : ''}: prefill, decode steps, a continuation and the buffer's growth give the logits of the whole sequence at once`, async () => {
      const probe = await OnnxCpuBackend.load(onnx[gen], {threads: 1, maxLength: 8})
      const prefix = prefixLength ? randomPrefix(probe, prefixLength) : undefined
      await probe.dispose()
      const b = await OnnxCpuBackend.load(onnx[gen], {threads: 1, maxLength: 400, prefix})
      expect(b.bufferCache).toBe(true)
      // 240 text tokens: the buffer's first capacity (256 rows past the prefix) fills during the decode steps.
      const p = prompt(gen, 240)
      const steps: ForwardInput[] = [{...p, logits: 'all'}]
      const rows: Float32Array[] = []
      let out = await b.forward(steps[0])
      rows.push(out.logits)
      const take = async (ids: number[]) => {
        const step = next(gen, p, b.length, ids)
        steps.push(step)
        out = await b.forward(step)
        rows.push(out.logits)
      }
      const last = () => argmax(out.logits.subarray((out.rows - 1) * out.vocab))
      for (let k = 0; k < 12; k++) await take([last()])
      await take([last(), 321, 654])
      for (let k = 0; k < 4; k++) await take([last()])
      expect(b.length).toBe(p.ids.length + 19)
      expect(b.length + prefixLength).toBeGreaterThan(256)
      // The same sequence in one run, no cache rows but the prefix.
      b.reset()
      const whole = await b.forward(joined(steps))
      const incremental = new Float32Array(whole.logits.length)
      let at = 0
      for (const r of rows) {
        incremental.set(r, at)
        at += r.length
      }
      const c = compareLogits(incremental, whole.logits, REL_TOL, whole.vocab)
      expect(c.ok, `${gen}: max rel ${c.maxRel} at row ${c.worstRow}`).toBe(true)
      for (let r = 0; r < whole.rows; r++) {
        expect(argmax(incremental.subarray(r * whole.vocab, (r + 1) * whole.vocab)), `row ${r}`).toBe(argmax(whole.logits.subarray(r * whole.vocab, (r + 1) * whole.vocab)))
      }
      await b.dispose()
    })
  }

  it(`${gen}: a prompt in pieces (prefillRows 16, a P-Tuning prefix) gives the logits of one run, then the same decode`, async () => {
    const probe = await OnnxCpuBackend.load(onnx[gen], {threads: 1, maxLength: 8})
    const prefix = randomPrefix(probe, 3)
    await probe.dispose()
    // v2: 61 rows in pieces of 16; v1: the bidirectional context (41 rows) is the first piece, the rest follows in 16s
    const p = gen === 'v1' ? prompt(gen, 40) : prompt(gen, 59)
    const longer = gen === 'v1' ? {...p, ids: [...p.ids, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28],
      positions: [...p.positions, ...Array(18).fill(p.positions[p.positions.length - 1])], blockPositions: [...p.blockPositions!, ...Array.from({length: 18}, (_, i) => 2 + i)]} : p
    const outs: Record<string, {all: Float32Array, last: Float32Array, step: Float32Array}> = {}
    for (const [key, prefillRows] of [['whole', undefined], ['pieces', 16]] as const) {
      const b = await OnnxCpuBackend.load(onnx[gen], {threads: 1, maxLength: 200, prefix, prefillRows})
      const all = (await b.forward({...longer, logits: 'all'})).logits.slice()
      const step = (await b.forward(next(gen, longer, b.length, [argmax(all.subarray(all.length - b.manifest.dims.vocab))]))).logits.slice()
      b.reset()
      const last = (await b.forward({...longer, logits: 'last'})).logits.slice()
      outs[key] = {all, last, step}
      await b.dispose()
    }
    const vocab = outs.whole.last.length
    expect(outs.pieces.all.length).toBe(longer.ids.length * vocab)
    for (const k of ['all', 'last', 'step'] as const) {
      const c = compareLogits(outs.pieces[k], outs.whole[k], REL_TOL, vocab)
      expect(c.ok, `${gen} ${k}: max rel ${c.maxRel} at row ${c.worstRow}`).toBe(true)
    }
  })

  it(`${gen}: a prompt in pieces stops between them once its signal is aborted (code interrupted)`, async () => {
    const b = await OnnxCpuBackend.load(onnx[gen], {threads: 1, maxLength: 200, prefillRows: 16})
    try {
      const p = prompt(gen, gen === 'v1' ? 10 : 59)
      const longer = gen === 'v1' ? {...p, ids: [...p.ids, ...Array.from({length: 40}, (_, i) => 11 + i)],
        positions: [...p.positions, ...Array(40).fill(p.positions[p.positions.length - 1])], blockPositions: [...p.blockPositions!, ...Array.from({length: 40}, (_, i) => 2 + i)]} : p
      const ac = new AbortController()
      ac.abort()
      await expect(b.forward({...longer, logits: 'last', signal: ac.signal})).rejects.toMatchObject({code: 'interrupted'})
      expect(b.length).toBeGreaterThan(0)  // the first piece ran
      expect(b.length).toBeLessThan(longer.ids.length)
    } finally {
      await b.dispose()
    }
  })

  it(`${gen}: rows of the buffer past the ones in use do not matter (attention_bias masks them)`, async () => {
    const p = prompt(gen, 20)
    const run = async (garbage: boolean) => {
      const b = await OnnxCpuBackend.load(onnx[gen], {threads: 1, maxLength: 64})
      await b.forward({...p, logits: 'last'})
      if (garbage) {
        // Fill every row past the ones in use with large values, through the buffers the runtime feeds.
        const d = b.manifest.dims
        const bufs = (b as unknown as {keyRows: Float32Array[], valueRows: Float32Array[], capacity: number})
        for (const rows of [...bufs.keyRows, ...bufs.valueRows]) {
          for (let h = 0; h < d.kvHeads; h++) rows.fill(50, (h * bufs.capacity + b.length) * d.headDim, (h + 1) * bufs.capacity * d.headDim)
        }
      }
      const outs: Float32Array[] = []
      for (const id of [7, 8, 9]) outs.push((await b.forward(next(gen, p, b.length, [id]))).logits)
      await b.dispose()
      return outs
    }
    const [clean, dirty] = [await run(false), await run(true)]
    for (let k = 0; k < clean.length; k++) expect(compareLogits(dirty[k], clean[k], 1e-6).ok, `step ${k}`).toBe(true)
  })

  it(`${gen}: only the two attention products read past_key/past_value; present is the run's new rows`, async () => {
    const g = decodeModel(readFileSync(join(onnx[gen], 'model.onnx'))).graph!
    const layers = JSON.parse(readFileSync(join(onnx[gen], 'glmtool-onnx.json'), 'utf8')).dims.layers
    expect(g.node!.some(n => n.opType === 'MultiHeadAttention' || n.opType === 'GroupQueryAttention')).toBe(false)
    for (let i = 0; i < layers; i++) {
      for (const [kind, product] of [['key', 'FusedMatMul'], ['value', 'MatMul']]) {
        const readers = g.node!.filter(n => n.input!.includes(`past_${kind}_${i}`)).map(n => n.opType).sort()
        expect(readers, `past_${kind}_${i}`).toEqual(kind === 'key' ? [product, 'Shape'] : [product])
      }
    }
    // At runtime: a buffer of 32 rows in, the run's S rows out.
    const session = await ort.InferenceSession.create(join(onnx[gen], 'model.onnx'), {intraOpNumThreads: 1})
    const {kvHeads, headDim} = JSON.parse(readFileSync(join(onnx[gen], 'glmtool-onnx.json'), 'utf8')).dims
    const p = prompt(gen, 3)
    const S = p.ids.length
    const C = 32
    const i64 = (xs: readonly number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(xs, BigInt), dims)
    const feeds: Record<string, ort.Tensor> = {
      input_ids: i64(p.ids, [1, S]),
      position_ids: gen === 'v1' ? i64([...p.positions, ...p.blockPositions!], [1, 2, S]) : i64(p.positions, [1, S]),
      attention_bias: new ort.Tensor('float32', bufferAttentionBias(0, C, S, p.bidirectional), [1, 1, S, C + S]),
      logits_index: i64([S - 1], [1]),
    }
    for (let i = 0; i < layers; i++) {
      for (const kind of ['key', 'value']) feeds[`past_${kind}_${i}`] = new ort.Tensor('float32', new Float32Array(kvHeads * C * headDim), [1, kvHeads, C, headDim])
    }
    const out = await session.run(feeds)
    expect(out.present_key_0.dims).toEqual([1, kvHeads, S, headDim])
    expect(out[`present_value_${layers - 1}`].dims).toEqual([1, kvHeads, S, headDim])
    await session.release()
  })
}

describe('bufferAttentionBias', () => {
  it('shows the rows in use, masks the rest of the buffer, then the new tokens as attentionBias does', () => {
    // prefix 1 + 2 cached rows in a buffer of 5, 2 new tokens (causal)
    const M = -10000
    expect([...bufferAttentionBias(2, 5, 2, 0, 1)]).toEqual([0, 0, 0, M, M, 0, M, 0, 0, 0, M, M, 0, 0])
    // capacity 0 (no buffer) is attentionBias; v1's bidirectional context
    expect([...bufferAttentionBias(0, 0, 3, 2)]).toEqual([...attentionBias(0, 3, 2)])
    expect(() => bufferAttentionBias(4, 3, 1, 0)).toThrow(/4 cached rows do not fit a buffer of 3/)
  })
})
