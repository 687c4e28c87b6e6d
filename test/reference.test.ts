/**
 * The PyTorch reference implementation itself (test/reference/chatglm_ref.py), before anything
 * is checked against it: its KV-cache decode equals a full recompute, v1 positions and masks
 * follow the published functions, P-Tuning prefixes are attended as published, and its CLI
 * writes the documented output. Tiny synth models of both generations; skips without torch.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {glmtool} from './helpers/cli.js'
import {compareLogits, hasTorch, NO_TORCH_REASON, REFERENCE_PYTHON, REFERENCE_TESTS, runReference} from './helpers/reference.js'

const torchOk = hasTorch()
if (!torchOk) console.warn(`reference: ${NO_TORCH_REASON}; the reference implementation's tests are skipped`)

describe('compareLogits', () => {
  it('is max|a-b| / max|b| per row, worst row reported', () => {
    const b = new Float32Array([1, -4, 2, 0.5, 0.25, -0.5])
    const a = new Float32Array([1, -4, 2.4, 0.5, 0.35, -0.5])
    const c = compareLogits(a, b, 0.05, 3)
    expect(c.rows).toBe(2)
    expect(c.maxRel).toBeCloseTo(0.2, 6) // row 1: 0.1 / 0.5; row 0: 0.4 / 4 = 0.1
    expect(c.worstRow).toBe(1)
    expect(c.maxAbs).toBeCloseTo(0.4, 6)
    expect(c.ok).toBe(false)
    expect(compareLogits(b, b, 0, 3)).toMatchObject({maxRel: 0, ok: true})
    expect(compareLogits(new Float32Array([NaN, 0, 0]), new Float32Array([1, 0, 0]), 1).maxRel).toBe(Infinity)
    expect(() => compareLogits(a, b.subarray(1), 1)).toThrow(/lengths differ/)
  })
})

describe.skipIf(!torchOk)('PyTorch reference (chatglm_ref.py)', () => {
  const work = mkdtempSync(join(tmpdir(), 'glmtool-reftest-'))
  const dirs = {v1: join(work, 'v1'), v2: join(work, 'v2')}
  beforeAll(() => {
    for (const [arch, out] of [['chatglm-6b', dirs.v1], ['chatglm2-6b', dirs.v2]]) {
      const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', out, '--seed', '11'])
      expect(r.code, r.stderr).toBe(0)
    }
  })
  afterAll(() => rmSync(work, {recursive: true, force: true}))

  it('passes its own tests: cache == recompute, v1 positions/masks as published, prefixes', () => {
    const r = spawnSync(REFERENCE_PYTHON, [REFERENCE_TESTS, '--v1', dirs.v1, '--v2', dirs.v2], {encoding: 'utf8', timeout: 120_000})
    expect(r.status, r.stderr).not.toBeNull()
    const report = JSON.parse(r.stdout) as {ok: boolean, self_check_max_rel: Record<string, number>, results: Record<string, {ok: boolean}>}
    const failed = Object.entries(report.results).filter(([, v]) => !v.ok).map(([k, v]) => `${k}: ${JSON.stringify(v)}`)
    expect(failed).toEqual([])
    expect(report.ok).toBe(true)
    expect(r.status, r.stderr).toBe(0)
    for (const err of Object.values(report.self_check_max_rel)) expect(err).toBeLessThanOrEqual(1e-5)
  })

  describe.each([
    ['chatglm-6b', 'v1', 130528] as const,
    ['chatglm2-6b', 'v2', 65024] as const,
  ])('CLI output, %s', (arch, key, vocab) => {
    const text = [5, 6, 7, 8]
    const steps = 3

    it('writes meta.json and rows x vocab float32 logits as documented', () => {
      const all = runReference(dirs[key], text, {steps, allLogits: true, selfCheck: true})
      const m = all.meta
      const ids = arch === 'chatglm-6b' ? [...text, 130001, 130004] : [64790, 64792, ...text]
      expect(m).toMatchObject({arch, input_ids: ids, prompt_len: ids.length, steps, rows: ids.length + steps, vocab,
        all_logits: true, dtype: 'f32', rope: 'published', prefix_len: 0})
      expect(all.logits.length).toBe(m.rows * vocab)
      expect(m.generated).toHaveLength(steps + 1)
      if (arch === 'chatglm-6b') {
        // positions of the prompt, then of each fed token: <sop> and later stay at n, block +1
        expect(m.positions).toEqual([[0, 1, 2, 3, 4, 4, 4, 4, 4], [0, 0, 0, 0, 0, 1, 2, 3, 4]])
      } else {
        expect(m.positions).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8])
      }
      expect(m.self_check?.ok).toBe(true)
      expect(m.self_check?.max_rel).toBeLessThanOrEqual(1e-5)
      // generated[k] = argmax of row (last prompt row + k)
      m.generated.forEach((g, k) => {
        const row = all.row(ids.length - 1 + k)
        let best = 0
        for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i
        expect(g).toBe(best)
      })

      const last = runReference(dirs[key], text, {steps})
      expect(last.meta.rows).toBe(1 + steps)
      expect(last.meta.generated).toEqual(m.generated)
      const tail = all.logits.subarray((ids.length - 1) * vocab)
      expect(compareLogits(last.logits, tail, 1e-6, vocab).ok).toBe(true)
    })
  })
})
