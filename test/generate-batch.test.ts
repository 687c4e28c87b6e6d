// generate()'s batched decode path (DecoderBackend.decodeMany, the CUDA backend's steps back to
// back on the GPU) against its one-call-per-token path, on a fake backend whose next token is a
// function of (input token, position, draw): the same ids, stop reason, draws and cache length.
import {describe, expect, it} from 'vitest'
import type {DecodeManyInput, DecoderBackend, DeviceSampling, ForwardInput} from '../src/runtime/backend.js'
import {GlmtoolError} from '../src/errors.js'
import {cudaDecodeBatch} from '../src/runtime/backends/cuda.js'
import {generate} from '../src/runtime/generate.js'
import type {ChatTokenizer} from '../src/runtime/tokenizer/index.js'

const V = 50
const STOP = 2

function fakeBackend(batch: number, stopAfter: number): DecoderBackend & {calls: number, draws: number[]} {
  let tokens = 0
  const next = (id: number, position: number, random: number, greedy: boolean) => {
    // a stop token once `stopAfter` decode positions are reached; otherwise a pseudo-random id >= 3
    if (position >= stopAfter) return STOP
    return 3 + ((id * 31 + position * 7 + (greedy ? 0 : Math.floor(random * 1000))) % (V - 3))
  }
  const b = {
    name: 'fake', arch: {generation: 2} as never, config: {} as never, maxLength: 200, calls: 0, draws: [] as number[],
    get length() {
      return tokens
    },
    async forward(): Promise<never> {
      throw new Error('logits path not expected')
    },
    async forwardSample(input: Omit<ForwardInput, 'logits'>, s: DeviceSampling) {
      b.calls++
      tokens += input.ids.length
      if (!s.greedy) b.draws.push(s.random)
      return next(input.ids.at(-1)!, input.positions.at(-1)!, s.random, s.greedy)
    },
    decodeBatch: batch,
    async decodeMany(input: DecodeManyInput, s: Omit<DeviceSampling, 'random'>, randoms: readonly number[]) {
      b.calls++
      const out: number[] = []
      let id = input.id
      for (let i = 0; i < input.positions.length; i++) {
        if (!s.greedy) b.draws.push(randoms[i])
        id = next(id, input.positions[i], randoms[i], s.greedy)
        out.push(id)
      }
      tokens += input.positions.length
      return out
    },
    truncate(length: number) {
      tokens = Math.min(tokens, length)
    },
    reset() {
      tokens = 0
    },
    async dispose() {},
  }
  return b
}

const tokenizer = {
  arch: 'chatglm2-6b', vocabSize: V,
  specials: {gmask: 0, mask: 1, sop: 1, eop: STOP, eos: STOP, pad: 0, stop: [STOP]},
  decode: (ids: readonly number[]) => ids.map(i => String.fromCharCode(97 + (i % 26))).join(''),
  streamDecoder: () => ({push: (i: number) => String.fromCharCode(97 + (i % 26)), flush: () => ''}),
  encode: () => [], encodePrompt: () => [],
} as unknown as ChatTokenizer

describe('generate: decode steps in batches (decodeMany)', () => {
  const prompt = [0, 1, 10, 11, 12]
  for (const [what, opts] of [
    ['greedy, stops on a stop token mid-batch', {stopAfter: 30, maxLength: 200, greedy: true}],
    ['sampled, stops on a stop token', {stopAfter: 27, maxLength: 200, greedy: false}],
    ['greedy, stops at max length', {stopAfter: 1000, maxLength: 43, greedy: true}],
  ] as const) {
    it(what, async () => {
      const run = async (batch: number) => {
        const b = fakeBackend(batch, opts.stopAfter)
        let text = ''
        const r = await generate(b, tokenizer, prompt, {maxLength: opts.maxLength, seed: 3, greedy: opts.greedy, temperature: 0.8, topK: 0, topP: 1, repetitionPenalty: 1}, t => (text += t))
        return {ids: r.generatedIds, stoppedBy: r.stoppedBy, text, length: b.length, calls: b.calls, draws: b.draws.slice(0, r.generatedIds.length)}
      }
      const one = await run(0)
      for (const batch of [4, 16]) {
        const many = await run(batch)
        expect({...many, calls: 0}).toEqual({...one, calls: 0})
        expect(many.calls).toBeLessThan(one.calls)
      }
    })
  }
  it('a prompt interrupted between its pieces (CUDA, code interrupted): no token, stoppedBy interrupted, the cache reset', async () => {
    const b = fakeBackend(16, 30)
    const ac = new AbortController()
    let seen: AbortSignal | undefined
    b.forwardSample = async input => {
      seen = input.signal
      ac.abort()
      throw new GlmtoolError('interrupted', 'fake: interrupted after 4 of 5 tokens')
    }
    let text = ''
    const r = await generate(b, tokenizer, prompt, {maxLength: 200, seed: 3, greedy: true, temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1, signal: ac.signal}, t => (text += t))
    expect(seen).toBe(ac.signal)  // the prompt step carries the signal
    expect([r.stoppedBy, r.generatedIds, text, b.length]).toEqual(['interrupted', [], '', 0])
    // without an abort the same error is a failure, not an interruption
    const c = fakeBackend(16, 30)
    c.forwardSample = async () => { throw new GlmtoolError('interrupted', 'fake') }
    await expect(generate(c, tokenizer, prompt, {maxLength: 200, seed: 3, greedy: true, temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1})).rejects.toThrow('fake')
  })
  it('GLMTOOL_CUDA_STEPS: default 16, 1 = one call per token, bad values refused', () => {
    expect(cudaDecodeBatch({})).toBe(16)
    expect(cudaDecodeBatch({GLMTOOL_CUDA_STEPS: '1'})).toBe(1)
    expect(cudaDecodeBatch({GLMTOOL_CUDA_STEPS: '64'})).toBe(64)
    expect(() => cudaDecodeBatch({GLMTOOL_CUDA_STEPS: '0'})).toThrow(/1\.\.512/)
    expect(() => cudaDecodeBatch({GLMTOOL_CUDA_STEPS: 'x'})).toThrow(/1\.\.512/)
  })
})
