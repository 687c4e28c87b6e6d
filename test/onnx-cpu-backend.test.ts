/**
 * OnnxCpuBackend and the graph's I/O contract, on tiny sharpened exports (onnx-fixtures.ts):
 * the attention mask it builds, the raw contract through onnxruntime-node itself, KV-cache
 * consistency (chunked prefill, decode vs prefill, reset), 'last' vs 'all', the P-Tuning
 * prefix extension point, and refused inputs. Needs no Python; numerics against the PyTorch
 * reference are in onnx-parity.test.ts.
 */
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import * as ort from 'onnxruntime-node'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {attentionBias, OnnxCpuBackend} from '../src/runtime/backends/onnx-cpu.js'
import type {ForwardInput} from '../src/runtime/backend.js'
import {compareLogits} from './helpers/reference.js'
import {sharpenedOnnxPair} from './onnx-fixtures.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-onnx-cpu-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
let onnx: Record<'v1' | 'v2', string> = {v1: '', v2: ''}

beforeAll(async () => {
  onnx = await sharpenedOnnxPair(work)
})

const M = -10000

describe('attentionBias', () => {
  it('is causal with bidirectional 0', () => {
    expect([...attentionBias(0, 3, 0)]).toEqual([0, M, M, 0, 0, M, 0, 0, 0])
  })
  it('lets the first `bidirectional` tokens see each other both ways (v1 context), later tokens causal', () => {
    // tokens 0..2 are context; token 3 (<sop>) sees 0..3; token 4 sees 0..4
    expect([...attentionBias(0, 5, 3)]).toEqual([
      0, 0, 0, M, M,
      0, 0, 0, M, M,
      0, 0, 0, M, M,
      0, 0, 0, 0, M,
      0, 0, 0, 0, 0,
    ])
  })
  it('offsets rows by the cached tokens and keeps prefix columns visible', () => {
    // 2 prefix entries, 3 cached tokens, 2 new ones; all 5 tokens context, then none
    expect([...attentionBias(3, 2, 5, 2)]).toEqual([
      0, 0, 0, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0,
    ])
    expect([...attentionBias(3, 2, 0, 2)]).toEqual([
      0, 0, 0, 0, 0, 0, M,
      0, 0, 0, 0, 0, 0, 0,
    ])
  })
})

const v1Prompt = (n: number) => {
  const ids = [...Array.from({length: n}, (_, i) => 100 + 13 * i), 130001, 130004]
  return {ids, positions: [...Array.from({length: n + 1}, (_, i) => i), n], blockPositions: [...Array(n + 1).fill(0), 1], bidirectional: n + 1}
}
const v2Prompt = (n: number): {ids: number[], positions: number[], blockPositions?: number[], bidirectional: number} => {
  const ids = [64790, 64792, ...Array.from({length: n}, (_, i) => 100 + 13 * i)]
  return {ids, positions: ids.map((_, i) => i), bidirectional: 0}
}
const slice = <T>(x: readonly T[] | undefined, a: number, b?: number) => x?.slice(a, b)
function part(p: Omit<ForwardInput, 'logits'>, a: number, b: number, logits: 'all' | 'last'): ForwardInput {
  return {ids: p.ids.slice(a, b), positions: p.positions.slice(a, b), blockPositions: slice(p.blockPositions, a, b), bidirectional: p.bidirectional, logits}
}

for (const gen of ['v1', 'v2'] as const) {
  describe(`OnnxCpuBackend (${gen})`, () => {
    const prompt = gen === 'v1' ? v1Prompt(9) : v2Prompt(9)
    const n = prompt.ids.length

    it('loads the export: arch, config, maximum length from the rotary table', async () => {
      const b = await OnnxCpuBackend.load(onnx[gen], {threads: 1})
      expect(b.name).toBe('onnx-cpu')
      expect(b.arch.id).toBe(gen === 'v1' ? 'chatglm-6b' : 'chatglm2-6b')
      expect(b.maxLength).toBe(gen === 'v1' ? 2048 : 32768)
      expect(b.length).toBe(0)
      await b.dispose()
      const c = await OnnxCpuBackend.load(onnx[gen], {maxLength: 16, threads: 1})
      expect(c.maxLength).toBe(16)
      await c.dispose()
    })

    it("prefill in chunks equals prefill at once; 'last' is the last row of 'all'; reset starts over", async () => {
      const b = await OnnxCpuBackend.load(onnx[gen], {threads: 1})
      const whole = await b.forward({...prompt, logits: 'all'})
      expect(whole.rows).toBe(n)
      expect(b.length).toBe(n)
      b.reset()
      expect(b.length).toBe(0)
      // v1's context is bidirectional: its tokens' K/V depend on the whole context, so a chunk
      // boundary may not fall inside it (the runtime prefills a v1 prompt in one call).
      const cuts = gen === 'v1' ? [0, n - 1, n] : [0, 4, n - 2, n]
      const V = whole.vocab
      for (let c = 0; c + 1 < cuts.length; c++) {
        const o = await b.forward(part(prompt, cuts[c], cuts[c + 1], 'all'))
        expect(o.rows).toBe(cuts[c + 1] - cuts[c])
        expect(compareLogits(o.logits, whole.logits.subarray(cuts[c] * V, cuts[c + 1] * V), 1e-5, V).ok).toBe(true)
      }
      expect(b.length).toBe(n)
      b.reset()
      const last = await b.forward({...prompt, logits: 'last'})
      expect(last.rows).toBe(1)
      expect(compareLogits(last.logits, whole.logits.subarray((n - 1) * V), 1e-6, V).ok).toBe(true)
      await b.dispose()
    })

    it('a decode step through the cache equals the same token in a full prefill', async () => {
      const b = await OnnxCpuBackend.load(onnx[gen], {threads: 1})
      const next = 777
      const extended = gen === 'v1'
        ? {ids: [...prompt.ids, next], positions: [...prompt.positions, n - 2], blockPositions: [...prompt.blockPositions!, 2], bidirectional: prompt.bidirectional}
        : {ids: [...prompt.ids, next], positions: [...prompt.positions, n], bidirectional: 0}
      const full = await b.forward({...extended, logits: 'all'})
      b.reset()
      await b.forward({...prompt, logits: 'last'})
      const step = await b.forward(part(extended, n, n + 1, 'last'))
      expect(compareLogits(step.logits, full.logits.subarray(n * full.vocab), 1e-5, full.vocab).ok).toBe(true)
      await b.dispose()
    })

    it('refuses inputs outside the contract with a clear error', async () => {
      const b = await OnnxCpuBackend.load(onnx[gen], {maxLength: n + 1, threads: 1})
      await expect(b.forward({...prompt, ids: [], positions: [], logits: 'last'})).rejects.toThrow(/at least one token/)
      await expect(b.forward({...prompt, positions: prompt.positions.slice(1), logits: 'last'})).rejects.toThrow(/positions/)
      await expect(b.forward({...prompt, ids: [...prompt.ids.slice(1), 10 ** 7], logits: 'last'})).rejects.toThrow(/outside the vocabulary/)
      await expect(b.forward({...part(prompt, 0, 1, 'last'), positions: [1 << 20]})).rejects.toThrow(/outside the rotary table/)
      if (gen === 'v1') await expect(b.forward({...prompt, blockPositions: undefined, logits: 'last'})).rejects.toThrow(/block position/)
      await b.forward({...prompt, logits: 'last'})
      await expect(b.forward(part(prompt, 0, 2, 'last'))).rejects.toThrow(/exceed the maximum length/)
      expect(b.length).toBe(n)
      await b.dispose()
    })
  })
}

describe('the graph I/O contract, straight through onnxruntime-node', () => {
  it('v2: prefill then decode with hand-built feeds; present K/V grow by S; P-Tuning-style prefix KV', async () => {
    const session = await ort.InferenceSession.create(join(onnx.v2, 'model.onnx'), {intraOpNumThreads: 1})
    const i64 = (xs: number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(xs, BigInt), dims)
    const empty = () => new ort.Tensor('float32', new Float32Array(0), [1, 2, 0, 16])
    const x = v2Prompt(4)
    const S = x.ids.length
    const feeds: Record<string, ort.Tensor> = {
      input_ids: i64(x.ids, [1, S]),
      position_ids: i64(x.positions, [1, S]),
      attention_bias: new ort.Tensor('float32', attentionBias(0, S, 0), [1, 1, S, S]),
      logits_index: i64([S - 1], [1]),
    }
    for (let i = 0; i < 2; i++) Object.assign(feeds, {[`past_key_${i}`]: empty(), [`past_value_${i}`]: empty()})
    const out = await session.run(feeds)
    expect(out.logits.dims).toEqual([1, 1, 65024])
    expect(out.present_key_1.dims).toEqual([1, 2, S, 16])
    expect(out.present_value_0.dims).toEqual([1, 2, S, 16])

    // The extension point for P-Tuning v2 prefixes: the prompt's K/V given as a prefix make the
    // next tokens' logits equal to running them after the prompt (v2: causal, prefix visible).
    const y = {ids: [555, 556, 557], positions: [S, S + 1, S + 2], bidirectional: 0}
    const after = await OnnxCpuBackend.load(onnx.v2, {threads: 1})
    await after.forward({...x, logits: 'last'})
    const want = await after.forward({...y, logits: 'all'})
    await after.dispose()
    const kv = (name: string) => Array.from({length: 2}, (_, i) => out[`${name}_${i}`].data as Float32Array)
    const withPrefix = await OnnxCpuBackend.load(onnx.v2, {threads: 1, prefix: {length: S, keys: kv('present_key'), values: kv('present_value')}})
    const got = await withPrefix.forward({...y, logits: 'all'})
    expect(withPrefix.length).toBe(3)
    expect(compareLogits(got.logits, want.logits, 1e-5, want.vocab).ok).toBe(true)
    withPrefix.reset()
    expect(compareLogits((await withPrefix.forward({...y, logits: 'all'})).logits, want.logits, 1e-5, want.vocab).ok).toBe(true)
    await withPrefix.dispose()
    await expect(OnnxCpuBackend.load(onnx.v2, {prefix: {length: 3, keys: kv('present_key'), values: kv('present_value')}})).rejects.toThrow(/prefix KV must hold 2 layers/)
    await session.release()
  })

  it('a directory that is not an ONNX export is refused by name', async () => {
    await expect(OnnxCpuBackend.load(work)).rejects.toThrow(/glmtool-onnx\.json: missing; not a glmtool ONNX export/)
  })
})
