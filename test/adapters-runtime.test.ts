/**
 * Issue 5's runtime proofs, against the independent PyTorch reference (skipped, saying why,
 * without python3-torch): a LoRA-merged model run by glmtool's CPU runtime gives the logits of the
 * base model with the LoRA applied at run time (unmerged, as PEFT's forward does), for a prompt
 * and 32 greedy steps, both generations. Adapters are the torch-written fixtures of
 * test/fixtures/adapters (made for the tiny dims that `synth --size tiny` also has).
 */
import {cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {glmtool} from './helpers/cli.js'
import {runOnnxLikeReference} from './helpers/onnx-runner.js'
import {compareLogits, hasTorch, NO_TORCH_REASON, runReference} from './helpers/reference.js'
import {synthTiny} from './onnx-fixtures.js'

const FIX = join(import.meta.dirname, 'fixtures/adapters')
const torchOk = hasTorch()
if (!torchOk) console.warn(`adapters runtime: ${NO_TORCH_REASON}; merged-model logits proofs are skipped`)
const STEPS = 32

describe.skipIf(!torchOk)('merged adapters in the CPU runtime vs the PyTorch reference', () => {
  const work = mkdtempSync(join(tmpdir(), 'glmtool-adapt-rt-'))
  afterAll(() => rmSync(work, {recursive: true, force: true}))

  it.each([
    ['chatglm-6b', 'v1-all-modules'],
    ['chatglm2-6b', 'v2-qkv-random'],
  ] as const)('%s + LoRA %s: merged logits = base with LoRA at run time', async (arch, adapter) => {
    const base = synthTiny(work, arch)
    const merged = join(work, `${arch}-${adapter}-merged`)
    const m = glmtool(['merge-adapter', base, '--adapter', join(FIX, 'lora', adapter), '--out', merged, '--dtype', 'f32'])
    expect(m.code, m.stderr).toBe(0)
    const onnx = `${merged}-onnx`
    expect(glmtool(['convert', merged, '--to', 'onnx', '--out', onnx]).code).toBe(0)
    const ids = Array.from({length: 9}, (_, i) => 200 + 31 * i)
    const ref = runReference(base, ids, {steps: STEPS, allLogits: true, lora: join(FIX, 'lora', adapter)})
    const got = await runOnnxLikeReference(onnx, ref)
    const cmp = compareLogits(got.logits, ref.logits, 1e-4, ref.meta.vocab)
    console.log(`lora ${arch} ${adapter}: max rel ${cmp.maxRel.toExponential(2)} over ${cmp.rows} rows`)
    expect(cmp.ok, `max rel ${cmp.maxRel} at row ${cmp.worstRow}`).toBe(true)
    expect(got.generated).toEqual(ref.meta.generated)
    // The adapter must matter, or the comparison proves nothing: it moves the logits well past
    // the comparison's 1e-4 tolerance (v1 with the published DeepNorm alpha sqrt(2 * 28), whose
    // residual outweighs the tiny model's branches: about 5e-4 for v1-all-modules).
    const plain = runReference(base, ids, {steps: 0, allLogits: true})
    const moved = compareLogits(plain.logits, ref.logits.subarray(0, plain.logits.length), 1e-4, ref.meta.vocab)
    console.log(`lora ${arch} ${adapter}: the adapter moves the logits by ${moved.maxRel.toExponential(2)} relative`)
    expect(moved.maxRel).toBeGreaterThan(3e-4)
  })
})

describe.skipIf(!torchOk)('merged P-Tuning v2 prefixes in the CPU runtime vs the PyTorch reference', () => {
  const work = mkdtempSync(join(tmpdir(), 'glmtool-prefix-rt-'))
  afterAll(() => rmSync(work, {recursive: true, force: true}))

  it.each([
    ['chatglm-6b', 'v1-embedding'],
    ['chatglm-6b', 'v1-projection'],
    ['chatglm2-6b', 'v2-tuple'],
    ['chatglm2-6b', 'v3-embedding'],
    ['chatglm2-6b', 'v2-projection'],
  ] as const)('%s + prefix %s: every query attends to the prefix, positions unshifted', async (arch, checkpoint) => {
    let base = synthTiny(work, arch)
    if (checkpoint.startsWith('v3-')) {
      // a ChatGLM3-6B checkpoint goes into a ChatGLM3-6B base: the same model, its config named so
      const b3 = join(work, 'chatglm3-base')
      if (!existsSync(b3)) {
        cpSync(base, b3, {recursive: true})
        const c = JSON.parse(readFileSync(join(b3, 'config.json'), 'utf8'))
        writeFileSync(join(b3, 'config.json'), JSON.stringify({...c, _name_or_path: 'THUDM/chatglm3-6b'}))
      }
      base = b3
    }
    const merged = join(work, `${arch}-${checkpoint}-merged`)
    const ckpt = join(FIX, 'ptuning', checkpoint)
    const m = glmtool(['merge-adapter', base, '--adapter', ckpt, '--out', merged])
    expect(m.code, m.stderr).toBe(0)
    const onnx = `${merged}-onnx`
    const c = glmtool(['convert', merged, '--to', 'onnx', '--out', onnx, '--json'])
    expect(c.code, c.stderr).toBe(0)
    expect(JSON.parse(c.stdout).files).toContain('prefix_kv.safetensors')
    const ids = Array.from({length: 7}, (_, i) => 300 + 17 * i)
    // The reference runs the trainer's prefix encoder itself, from the checkpoint.
    const ref = runReference(base, ids, {steps: STEPS, allLogits: true, prefix: ckpt})
    expect(ref.meta.prefix_len).toBeGreaterThan(0)
    const got = await runOnnxLikeReference(onnx, ref)
    const cmp = compareLogits(got.logits, ref.logits, 1e-4, ref.meta.vocab)
    console.log(`prefix ${arch} ${checkpoint}: max rel ${cmp.maxRel.toExponential(2)} over ${cmp.rows} rows (prefix ${ref.meta.prefix_len})`)
    expect(cmp.ok, `max rel ${cmp.maxRel} at row ${cmp.worstRow}`).toBe(true)
    expect(got.generated).toEqual(ref.meta.generated)
    const plain = runReference(base, ids, {steps: 0, allLogits: true})
    expect(compareLogits(plain.logits, ref.logits.subarray(0, plain.logits.length), 1e-4, ref.meta.vocab).maxRel).toBeGreaterThan(1e-3)
    // quantize --format onnx and both of the merged model keep the prefix beside the graph, the
    // same bytes the float export writes (the CPU runtime reads them from there).
    for (const format of ['onnx', 'both']) {
      const q = `${merged}-int8-${format}`
      const r = glmtool(['quantize', merged, '--bits', '8', '--format', format, '--evaluate', 'off', '--out', q])
      expect(r.code, r.stderr).toBe(0)
      expect(readFileSync(join(q, 'prefix_kv.safetensors')).equals(readFileSync(join(onnx, 'prefix_kv.safetensors'))), format).toBe(true)
    }
  })

  it('a raw trainer config with pre_seq_len but no merged prefix is refused by the ONNX export', () => {
    const r = glmtool(['convert', join(FIX, 'ptuning', 'v1-embedding'), '--to', 'onnx', '--out', join(work, 'raw-onnx')])
    expect(r.code).not.toBe(0)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
  })
})
