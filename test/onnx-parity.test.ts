/**
 * Numerical parity of the ONNX export run by OnnxCpuBackend against the independent PyTorch
 * reference (test/reference/chatglm_ref.py, float32): every prompt position's logits
 * (prefill, logits 'all'), then 64 greedy decode steps through the KV cache, within 1e-4
 * relative (max|a-b| / max|b| per row), with identical greedy tokens. Tiny and small synth models of both
 * generations, plain and "sharpened" (onnx-fixtures.ts: peaked attention, so rotary, mask
 * and cache mistakes move the logits well past the tolerance); v1 prompts of several lengths
 * and a multi-turn history prompt. ChatGLM3-6B-32k's rope_ratio (rotary base 10000 * 50): a sharpened
 * tiny ChatGLM2-architecture model whose config.json says rope_ratio 50 and names chatglm3, against
 * the reference reading the same config.json; and the reference's own logits with rope_ratio 50 and 1
 * differ far beyond the tolerance, so an export that ignored rope_ratio would fail.
 * Skips, saying why, without python3-torch.
 */
import {cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {glmtool} from './helpers/cli.js'
import {runOnnxLikeReference as runOnnx} from './helpers/onnx-runner.js'
import {compareLogits, hasTorch, NO_TORCH_REASON, runReference} from './helpers/reference.js'
import {chatPromptV1} from '../src/runtime/chat-template.js'
import {loadTokenizer} from '../src/runtime/tokenizer/index.js'
import {sharpenedModel, synthTiny, type TinyArch} from './onnx-fixtures.js'

const REL_TOL = 1e-4
const STEPS = 64
const SHARPEN = 16

const torchOk = hasTorch()
if (!torchOk) console.warn(`onnx parity: ${NO_TORCH_REASON}; ONNX-vs-PyTorch parity is skipped`)

describe.skipIf(!torchOk)('ONNX (onnxruntime CPU) vs the PyTorch reference, float32', () => {
  const work = mkdtempSync(join(tmpdir(), 'glmtool-onnx-parity-'))
  afterAll(() => rmSync(work, {recursive: true, force: true}))
  const dirs: Record<string, {model: string, onnx: string}> = {}

  beforeAll(async () => {
    for (const arch of ['chatglm-6b', 'chatglm2-6b'] as TinyArch[]) {
      const plain = synthTiny(work, arch)
      const sharp = await sharpenedModel(plain, join(work, `${arch}-sharp`), SHARPEN)
      for (const [key, model] of [[`${arch}`, plain], [`${arch}-sharp`, sharp]]) {
        const onnx = `${model}-onnx`
        const r = glmtool(['convert', model, '--to', 'onnx', '--out', onnx])
        expect(r.code, r.stderr).toBe(0)
        dirs[key] = {model, onnx}
      }
      // `synth --size small` (hidden 512, 4 layers, the full vocabulary) as the issue asks.
      const small = join(work, `${arch}-small`)
      expect(glmtool(['synth', '--arch', arch, '--size', 'small', '--out', small]).code).toBe(0)
      expect(glmtool(['convert', small, '--to', 'onnx', '--out', `${small}-onnx`]).code).toBe(0)
      dirs[`${arch}-small`] = {model: small, onnx: `${small}-onnx`}
    }
    // ChatGLM3-6B-32k: the sharpened ChatGLM2-6B tiny model with config.json's rope_ratio 50
    const rope = withConfig(dirs['chatglm2-6b-sharp'].model, join(work, 'chatglm3-6b-32k-sharp'), {rope_ratio: 50, _name_or_path: 'THUDM/chatglm3-6b-32k'})
    const r = glmtool(['convert', rope, '--to', 'onnx', '--out', `${rope}-onnx`])
    expect(r.code, r.stderr).toBe(0)
    dirs['chatglm3-6b-32k-sharp'] = {model: rope, onnx: `${rope}-onnx`}
    // v1 multi-turn history: the template's whole prompt ([Round i] 问/答 turns) is re-encoded.
    const tok = await loadTokenizer(dirs['chatglm-6b-sharp'].model, 'chatglm-6b')
    multiTurnIds.push(...tok.encode(chatPromptV1('再说一遍', [['你好', '你好！有什么可以帮你？'], ['what is 2+2?', '4']])))
  })
  const multiTurnIds: number[] = []

  const text = (n: number, start: number) => Array.from({length: n}, (_, i) => start + 37 * i)
  const cases: {model: string, ids: number[]}[] = [
    {model: 'chatglm-6b', ids: text(6, 100)},
    {model: 'chatglm-6b-sharp', ids: text(1, 5000)},
    {model: 'chatglm-6b-sharp', ids: text(29, 20)},
    {model: 'chatglm2-6b', ids: text(6, 100)},
    {model: 'chatglm2-6b-sharp', ids: text(23, 40)},
    {model: 'chatglm-6b-small', ids: text(17, 300)},
    {model: 'chatglm2-6b-small', ids: text(17, 300)},
    {model: 'chatglm-6b-sharp', ids: multiTurnIds},
    {model: 'chatglm3-6b-32k-sharp', ids: text(23, 40)},
    {model: 'chatglm3-6b-32k-sharp', ids: text(61, 7)},
  ]

  for (const c of cases) {
    it(`${c.model}, ${c.ids === multiTurnIds ? 'multi-turn history' : `${c.ids.length} text token(s)`}: all prompt logits and ${STEPS} greedy steps`, async () => {
      const ref = runReference(dirs[c.model].model, c.ids, {steps: STEPS, allLogits: true})
      const got = await runOnnx(dirs[c.model].onnx, ref)
      const cmp = compareLogits(got.logits, ref.logits, REL_TOL, ref.meta.vocab)
      console.log(`onnx parity ${c.model} prompt ${ref.meta.prompt_len}: max rel ${cmp.maxRel.toExponential(2)} (row ${cmp.worstRow} of ${cmp.rows}), max abs ${cmp.maxAbs.toExponential(2)}`)
      expect(cmp.rows).toBe(ref.meta.prompt_len + STEPS)
      expect(cmp.ok, `max rel ${cmp.maxRel} at row ${cmp.worstRow}`).toBe(true)
      expect(got.generated).toEqual(ref.meta.generated)
    })
  }

  it('rope_ratio 50 moves the reference\'s prompt logits far beyond the tolerance (the rope_ratio cases can fail)', () => {
    const ids = text(23, 40)
    const r50 = runReference(dirs['chatglm3-6b-32k-sharp'].model, ids, {allLogits: true})
    const r1 = runReference(dirs['chatglm2-6b-sharp'].model, ids, {allLogits: true})
    const n = r50.meta.prompt_len * r50.meta.vocab
    const cmp = compareLogits(r50.logits.subarray(0, n), r1.logits.subarray(0, n), REL_TOL, r50.meta.vocab)
    console.log(`onnx parity rope_ratio 50 vs 1 (reference, ${r50.meta.prompt_len} prompt rows): max rel ${cmp.maxRel.toExponential(2)}`)
    expect(cmp.maxRel).toBeGreaterThan(100 * REL_TOL)
  })
})

/** A copy of model directory `src` at `out` with config.json's keys replaced by `edit`. */
function withConfig(src: string, out: string, edit: Record<string, unknown>): string {
  cpSync(src, out, {recursive: true})
  const path = join(out, 'config.json')
  writeFileSync(path, JSON.stringify({...JSON.parse(readFileSync(path, 'utf8')), ...edit}, null, 2))
  return out
}

describe('rope_ratio in config.json', () => {
  const work = mkdtempSync(join(tmpdir(), 'glmtool-rope-ratio-'))
  afterAll(() => rmSync(work, {recursive: true, force: true}))

  it('ChatGLM2-6B-32k\'s (position interpolation, not implemented) is refused by the ONNX export in one line naming config.json', () => {
    const model = withConfig(synthTiny(work, 'chatglm2-6b'), join(work, 'chatglm2-6b-32k'), {rope_ratio: 16, _name_or_path: 'THUDM/chatglm2-6b-32k'})
    const r = glmtool(['convert', model, '--to', 'onnx', '--out', join(work, 'out-onnx')])
    expect(r.code).not.toBe(0)
    expect(r.stderr.trim()).toMatch(/config\.json: rope_ratio 16 on ChatGLM2-6B is ChatGLM2-6B-32k's position interpolation, which glmtool does not implement \(for ChatGLM3-6B-32k.*pass --arch chatglm3-6b\)$/)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
  })

  it.each([[0], [-1], ['50'], [true]])('rope_ratio %j is refused where config.json is read, naming the file', bad => {
    const model = withConfig(synthTiny(work, 'chatglm2-6b'), join(work, `bad-${String(bad)}`), {rope_ratio: bad, _name_or_path: 'THUDM/chatglm3-6b-32k'})
    const r = glmtool(['inspect', model])
    expect(r.code).not.toBe(0)
    expect(r.stderr.trim()).toMatch(/config\.json: rope_ratio must be a finite number > 0 \(got /)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
  })
})
