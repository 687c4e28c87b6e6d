/**
 * Issue 13: the CPU runtime's shared KV cache (OnnxCpuBackend kvCache 'shared': one buffer per
 * layer given as past and bound as the preallocated present, which GroupQueryAttention appends
 * to in place) against the feed-back path (each run's present becomes the next past, the way the
 * runtime ran before), on tiny sharpened exports of both generations (onnx-fixtures.ts: peaked
 * attention, so a wrong cache row or mask entry shows): a prefill (v1: bidirectional context),
 * decode steps, a several-token continuation, and the buffer's growth past its first capacity,
 * with and without a P-Tuning prefix; logits within 1e-4 relative, greedy identical. Then the
 * property the speed rests on: the graph's presents come straight from GroupQueryAttention (no
 * Concat on the KV path), and a run bound that way writes only the new rows of the buffer.
 */
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import * as ort from 'onnxruntime-node'
import {afterAll, beforeAll, expect, it} from 'vitest'
import {decodeModel} from '../src/formats/onnx/onnx-builder.js'
import type {ForwardInput} from '../src/runtime/backend.js'
import {attentionBias, OnnxCpuBackend, type PrefixKV} from '../src/runtime/backends/onnx-cpu.js'
import {argmax} from '../src/runtime/sampling.js'
import {glmtool} from './helpers/cli.js'
import {compareLogits} from './helpers/reference.js'
import {sharpenedModel, synthTiny} from './onnx-fixtures.js'

const REL_TOL = 1e-4
const work = mkdtempSync(join(tmpdir(), 'glmtool-onnx-kv-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const onnx: Record<'v1' | 'v2', string> = {v1: '', v2: ''}

beforeAll(async () => {
  for (const [key, arch] of [['v1', 'chatglm-6b'], ['v2', 'chatglm2-6b']] as const) {
    const model = await sharpenedModel(synthTiny(work, arch), join(work, `${arch}-sharp`), 16)
    onnx[key] = `${model}-onnx`
    const r = glmtool(['convert', model, '--to', 'onnx', '--dtype', 'f32', '--out', onnx[key]])
    expect(r.code, r.stderr).toBe(0)
  }
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

for (const gen of ['v1', 'v2'] as const) {
  for (const prefixLength of [0, 5]) {
    it(`${gen}${prefixLength ? ', P-Tuning prefix' : ''}: the shared cache gives the feed-back path's logits and greedy tokens (prefill, decode, continuation, growth)`, async () => {
      const probe = await OnnxCpuBackend.load(onnx[gen], {threads: 1, maxLength: 8})
      const prefix = prefixLength ? randomPrefix(probe, prefixLength) : undefined
      await probe.dispose()
      const opts = {threads: 1, maxLength: 400, prefix}
      const shared = await OnnxCpuBackend.load(onnx[gen], {...opts, kvCache: 'shared'})
      const fed = await OnnxCpuBackend.load(onnx[gen], {...opts, kvCache: 'feed-back'})
      expect(shared.sharedCache).toBe(true)
      expect(fed.sharedCache).toBe(false)
      // 240 text tokens: the cache's first capacity (256 rows past the prefix) fills during the decode steps.
      const p = prompt(gen, 240)
      const steps: ForwardInput[] = [{...p, logits: 'all'}]
      const run = async (input: ForwardInput) => {
        const [a, b] = [await shared.forward(input), await fed.forward(input)]
        const c = compareLogits(a.logits, b.logits, REL_TOL, b.vocab)
        expect(c.ok, `${gen}: ${input.ids.length} token(s) at ${shared.length - input.ids.length}: max rel ${c.maxRel}`).toBe(true)
        expect(a.rows).toBe(b.rows)
        const last = b.logits.subarray((b.rows - 1) * b.vocab)
        expect(argmax(a.logits.subarray((a.rows - 1) * a.vocab))).toBe(argmax(last))
        return argmax(last)
      }
      let token = await run(steps[0])
      for (let k = 0; k < 12; k++) token = await run(next(gen, p, shared.length, [token]))
      token = await run(next(gen, p, shared.length, [token, 321, 654]))
      for (let k = 0; k < 4; k++) token = await run(next(gen, p, shared.length, [token]))
      expect(shared.length).toBe(p.ids.length + 19)
      expect(shared.length + prefixLength).toBeGreaterThan(256)
      // reset starts over in both (the shared buffers are refilled with the prefix only).
      shared.reset()
      fed.reset()
      await run({...prompt(gen, 7), logits: 'all'})
      await shared.dispose()
      await fed.dispose()
    })
  }

  it(`${gen}: every present_key/value comes straight from GroupQueryAttention (no Concat on the KV path)`, () => {
    const g = decodeModel(readFileSync(join(onnx[gen], 'model.onnx'))).graph!
    const producer = new Map(g.node!.flatMap(n => n.output!.map(o => [o, n])))
    const presents = g.output!.map(o => o.name!).filter(n => n.startsWith('present_'))
    expect(presents).toHaveLength(4)
    for (const name of presents) expect(producer.get(name)?.opType, name).toBe('GroupQueryAttention')
    expect(g.node!.some(n => n.opType === 'MultiHeadAttention')).toBe(false)
    const gqa = g.node!.filter(n => n.opType === 'GroupQueryAttention')
    for (const n of gqa) expect(n.input!.slice(3, 5).every(x => x.startsWith('past_'))).toBe(true)
  })

  it(`${gen}: with present bound to past's buffer, a run writes only the new rows (the rest of the buffer is left as it was)`, async () => {
    const session = await ort.InferenceSession.create(join(onnx[gen], 'model.onnx'), {intraOpNumThreads: 1})
    const manifest = JSON.parse(readFileSync(join(onnx[gen], 'glmtool-onnx.json'), 'utf8'))
    const {layers, kvHeads, headDim} = manifest.dims
    const C = 16
    const SENTINEL = 7.25
    const i64 = (xs: readonly number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(xs, BigInt), dims)
    const feedsFor = (x: Omit<ForwardInput, 'logits'>, past: number, kv: (name: string) => ort.Tensor) => {
      const S = x.ids.length
      const feeds: Record<string, ort.Tensor> = {
        input_ids: i64(x.ids, [1, S]),
        position_ids: gen === 'v1' ? i64([...x.positions, ...x.blockPositions!], [1, 2, S]) : i64(x.positions, [1, S]),
        attention_bias: new ort.Tensor('float32', attentionBias(past, S, x.bidirectional), [1, 1, S, past + S]),
        logits_index: i64([S - 1], [1]),
      }
      for (let i = 0; i < layers; i++) for (const kind of ['key', 'value']) feeds[`past_${kind}_${i}`] = kv(`${kind}_${i}`)
      return feeds
    }
    const p = prompt(gen, 4)
    const S = p.ids.length
    // The feed-back way: present = the S rows.
    const empty = () => new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim])
    const plain = await session.run(feedsFor(p, 0, empty))
    // The bound way: one buffer of C rows, filled with a sentinel, as past and as present.
    const buffers = new Map<string, ort.Tensor>()
    for (let i = 0; i < layers; i++) {
      for (const kind of ['key', 'value']) buffers.set(`${kind}_${i}`, new ort.Tensor('float32', new Float32Array(kvHeads * C * headDim).fill(SENTINEL), [1, kvHeads, C, headDim]))
    }
    const fetches: Record<string, ort.Tensor | null> = {logits: null}
    for (const [name, t] of buffers) fetches[`present_${name}`] = t
    const bound = await session.run(feedsFor(p, 0, name => buffers.get(name)!), fetches)
    expect(compareLogits(bound.logits.data as Float32Array, plain.logits.data as Float32Array, REL_TOL).ok).toBe(true)
    expect(bound.present_key_0.dims).toEqual([1, kvHeads, C, headDim])
    for (const [name, t] of buffers) {
      const data = t.data as Float32Array
      const want = plain[`present_${name}`].data as Float32Array
      for (let h = 0; h < kvHeads; h++) {
        const rows = data.subarray(h * C * headDim, (h + 1) * C * headDim)
        expect([...rows.subarray(0, S * headDim)], `${name} head ${h}: the new rows`).toEqual([...want.subarray(h * S * headDim, (h + 1) * S * headDim)])
        expect(rows.subarray(S * headDim).every(v => v === SENTINEL), `${name} head ${h}: rows past the cache untouched`).toBe(true)
      }
    }
    // A decode step on the same buffers appends one row per head and keeps the earlier ones.
    const before = new Float32Array(buffers.get('key_0')!.data as Float32Array)
    const step = next(gen, p, S, [555])
    await session.run(feedsFor(step, S, name => buffers.get(name)!), fetches)
    const after = buffers.get('key_0')!.data as Float32Array
    for (let h = 0; h < kvHeads; h++) {
      const base = h * C * headDim
      expect([...after.subarray(base, base + S * headDim)]).toEqual([...before.subarray(base, base + S * headDim)])
      expect(after.subarray(base + S * headDim, base + (S + 1) * headDim).some(v => v !== SENTINEL)).toBe(true)
      expect(after.subarray(base + (S + 1) * headDim, base + C * headDim).every(v => v === SENTINEL)).toBe(true)
    }
    await session.release()
  })
}

it('kvCache takes shared or feed-back only', async () => {
  await expect(OnnxCpuBackend.load(onnx.v2, {kvCache: 'copy' as never})).rejects.toThrow(/kvCache must be 'shared' or 'feed-back' \(got copy\)/)
})
