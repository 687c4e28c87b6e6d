/**
 * CudaBackend's long prompts, host side, without a GPU: a prompt longer than one engine call runs
 * in pieces of maxChunk tokens, each piece continuing the cache (past = tokens so far), the logits
 * rows landing at their offsets, and the event loop gets a turn between pieces (each engine call
 * blocks the thread until the GPU finishes, so without it a server would not answer anything
 * during a 32k-token prompt). A stand-in engine records the calls.
 */
import {describe, expect, it} from 'vitest'
import {CudaBackend} from '../src/runtime/backends/cuda.js'

interface Call { ids: number[], past: number, mode: number, turnsBefore: number }

function backend(maxChunk: number, vocab: number, calls: Call[], turns: {n: number}): CudaBackend {
  const engine = {
    forward(ids: Int32Array, _pos: Int32Array, _block: Int32Array | null, past: number, _bidir: number, mode: number, out: Float32Array | null) {
      calls.push({ids: Array.from(ids), past, mode, turnsBefore: turns.n})
      if (out && mode === 2) for (let r = 0; r < ids.length; r++) out.fill(ids[r], r * vocab, (r + 1) * vocab)
      if (out && mode === 1) out.fill(ids[ids.length - 1])
      return 7
    },
  }
  // the constructor is private (load() builds it from a model directory); the fields it sets
  return Object.assign(Object.create(CudaBackend.prototype) as CudaBackend, {
    engine, name: 'cuda', tokens: 0, disposed: false, maxChunk, vocab, maxLength: 1000, blockPositions: false,
  })
}

describe('CUDA backend: a prompt longer than one engine call', () => {
  it('runs in pieces that continue the cache, rows at their offsets, with an event-loop turn between pieces', async () => {
    const calls: Call[] = []
    const turns = {n: 0}
    const b = backend(4, 16, calls, turns)
    const ids = Array.from({length: 10}, (_, i) => i + 1)
    let ticking = true
    const tick = (): void => { turns.n++; if (ticking) setImmediate(tick) }
    setImmediate(tick)
    const out = await b.forward({ids, positions: ids.map((_, i) => i), bidirectional: 0, logits: 'all'})
    ticking = false
    expect(calls.map(c => [c.ids, c.past, c.mode])).toEqual([[[1, 2, 3, 4], 0, 2], [[5, 6, 7, 8], 4, 2], [[9, 10], 8, 2]])
    expect(calls[1].turnsBefore).toBeGreaterThan(calls[0].turnsBefore)
    expect(calls[2].turnsBefore).toBeGreaterThan(calls[1].turnsBefore)
    expect(out.rows).toBe(10)
    for (let r = 0; r < 10; r++) expect(Array.from(out.logits.subarray(r * 16, r * 16 + 16))).toEqual(Array(16).fill(r + 1))
    expect(b.length).toBe(10)
  })

  it('stops between pieces once its signal is aborted (code interrupted), not after the whole prompt', async () => {
    const calls: Call[] = []
    const b = backend(4, 16, calls, {n: 0})
    const ac = new AbortController()
    const ids = Array.from({length: 12}, (_, i) => i + 1)
    const engine = (b as unknown as {engine: {forward: (...a: unknown[]) => number}}).engine
    const forward = engine.forward.bind(engine)
    engine.forward = (...a: unknown[]) => { const r = forward(...a); ac.abort(); return r }  // a disconnect during the first piece
    await expect(b.forward({ids, positions: ids.map((_, i) => i), bidirectional: 0, logits: 'last', signal: ac.signal}))
      .rejects.toMatchObject({code: 'interrupted', message: expect.stringMatching(/interrupted after 4 of 12 tokens/)})
    expect(calls.length).toBe(1)
  })

  it('asks only the last piece for logits, and refuses a bidirectional context longer than a piece', async () => {
    const calls: Call[] = []
    const b = backend(4, 16, calls, {n: 0})
    const ids = [5, 6, 7, 8, 9, 10]
    const out = await b.forward({ids, positions: ids.map((_, i) => i), bidirectional: 0, logits: 'last'})
    expect(calls.map(c => c.mode)).toEqual([0, 1])
    expect(Array.from(out.logits)).toEqual(Array(16).fill(10))
    const v1 = backend(4, 16, [], {n: 0})
    await expect(v1.forward({ids, positions: ids.map((_, i) => i), bidirectional: 6, logits: 'last'})).rejects.toThrow(/a 6-token prompt with a bidirectional context longer than 4 tokens cannot be run in pieces/)
  })
})
