import {describe, expect, it} from 'vitest'
import {chatPromptV1, chatPromptV2} from '../src/runtime/chat-template.js'
import {layoutV1, layoutV2} from '../src/runtime/positions.js'
import {applyRepetitionPenalty, candidates, fixInvalidScores, seededRandom, selectToken} from '../src/runtime/sampling.js'

describe('chat templates (docs/chatglm.md sections 3, 4)', () => {
  it('v1: bare query without history, [Round i] from 0 with history', () => {
    expect(chatPromptV1('你好', [])).toBe('你好')
    expect(chatPromptV1('q2', [['q0', 'r0'], ['q1', 'r1']])).toBe('[Round 0]\n问：q0\n答：r0\n[Round 1]\n问：q1\n答：r1\n[Round 2]\n问：q2\n答：')
  })
  it('v2: always a round header, from 1, double newlines', () => {
    expect(chatPromptV2('你好', [])).toBe('[Round 1]\n\n问：你好\n\n答：')
    expect(chatPromptV2('q1', [['q0', 'r0']])).toBe('[Round 1]\n\n问：q0\n\n答：r0\n\n[Round 2]\n\n问：q1\n\n答：')
  })
})

describe('positions and masks', () => {
  it('v1: context 0..n with [gMASK] at n, <sop> and generated tokens at n; block 0, 1, 2, ...', () => {
    const l = layoutV1([11, 12, 13, 130001, 130004], 130001, 130004)
    expect(l.positions).toEqual([0, 1, 2, 3, 3])
    expect(l.blockPositions).toEqual([0, 0, 0, 0, 1])
    expect(l.bidirectional).toBe(4)
    expect(l.next(1)).toEqual({position: 3, blockPosition: 2})
    expect(l.next(5)).toEqual({position: 3, blockPosition: 6})
  })
  it('v2: positions over the whole sequence, causal', () => {
    const l = layoutV2([64790, 64792, 5, 6])
    expect(l.positions).toEqual([0, 1, 2, 3])
    expect(l.bidirectional).toBe(0)
    expect(l.next(1)).toEqual({position: 4})
  })
})

describe('sampling', () => {
  it('replaces a row with NaN/Inf by zeros with index 5 = 5e4', () => {
    const row = new Float32Array([1, 2, Number.NaN, 4, 5, 6, 7])
    expect(fixInvalidScores(row)).toBe(true)
    expect([...row]).toEqual([0, 0, 0, 0, 0, 5e4, 0])
    const ok = new Float32Array([1, 2, 3])
    expect(fixInvalidScores(ok)).toBe(false)
  })
  it('repetition penalty divides positive and multiplies negative scores of seen tokens once', () => {
    const row = new Float32Array([2, -2, 2])
    applyRepetitionPenalty(row, [0, 1, 1], 2)
    expect([...row]).toEqual([1, -4, 2])
  })
  it('top-k and top-p keep the smallest top set, renormalised', () => {
    const row = new Float32Array([Math.log(0.5), Math.log(0.3), Math.log(0.15), Math.log(0.05)])
    const c = candidates(row, {temperature: 1, topK: 0, topP: 0.7})
    expect(c.ids).toEqual([0, 1])
    expect(c.probs[0]).toBeCloseTo(0.625, 6)
    expect(candidates(row, {temperature: 1, topK: 3, topP: 1}).ids).toEqual([0, 1, 2])
    expect(candidates(row, {temperature: 1, topK: 0, topP: 0.01}).ids).toEqual([0])
  })
  it('greedy takes the argmax; seeded sampling is reproducible and follows the distribution', () => {
    const opts = {temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1, greedy: false}
    expect(selectToken(new Float32Array([0, 3, 1]), [], {...opts, greedy: true}, Math.random)).toBe(1)
    const draw = (seed: number) => {
      const r = seededRandom(seed)
      return Array.from({length: 2000}, () => selectToken(new Float32Array([Math.log(0.7), Math.log(0.2), Math.log(0.1)]), [], opts, r))
    }
    expect(draw(1)).toEqual(draw(1))
    expect(draw(1)).not.toEqual(draw(2))
    const counts = [0, 0, 0]
    for (const t of draw(3)) counts[t]++
    expect(counts[0] / 2000).toBeGreaterThan(0.65)
    expect(counts[0] / 2000).toBeLessThan(0.75)
    expect(counts[2] / 2000).toBeGreaterThan(0.07)
  })
})
