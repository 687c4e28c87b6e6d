import {execFileSync, spawnSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {glmtool} from './helpers/cli.js'

const PY = '/usr/bin/python3'
const hasTorch = spawnSync(PY, ['-c', 'import torch'], {stdio: 'ignore'}).status === 0
if (!hasTorch) console.warn('cli-synth-inspect: python3-torch not installed, torch.load checks of synth output skipped (.ci/run installs it)')
const CHECK = join(import.meta.dirname, 'crosscheck/torch_load_check.py')

const work = mkdtempSync(join(tmpdir(), 'glmtool-sy-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex')

describe.each([
  ['chatglm-6b', 8, 'ice_text.model', 130528],
  ['chatglm2-6b', 7, 'tokenizer.model', 65024],
] as const)('glmtool synth --arch %s', (arch, shards, tokenizer, vocab) => {
  const out = join(work, arch)

  it('writes the published layout', () => {
    const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', out, '--seed', '3', '--json'])
    expect(r.code, r.stderr).toBe(0)
    const res = JSON.parse(r.stdout)
    expect(res).toMatchObject({arch, size: 'tiny', shards})
    const files = readdirSync(out).sort()
    const shardFiles = files.filter(f => f.endsWith('.bin'))
    expect(shardFiles).toEqual(Array.from({length: shards}, (_, i) => `pytorch_model-${String(i + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.bin`))
    expect(files).toEqual(expect.arrayContaining(['config.json', 'pytorch_model.bin.index.json', tokenizer, 'tokenizer_config.json']))
    const index = JSON.parse(readFileSync(join(out, 'pytorch_model.bin.index.json'), 'utf8'))
    expect(new Set(Object.values(index.weight_map))).toEqual(new Set(shardFiles))
    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))
    expect(config.model_type).toBe('chatglm')
    expect(config[arch === 'chatglm-6b' ? 'vocab_size' : 'padded_vocab_size']).toBe(vocab)
  })

  it.skipIf(!hasTorch)('is read by torch.load (weights_only) with every tensor at its published shape', () => {
    const r = spawnSync(PY, [CHECK, out], {encoding: 'utf8'})
    const summary = JSON.parse(r.stdout)
    expect(summary.problems).toEqual([])
    expect(summary.ok).toBe(true)
    expect(r.status).toBe(0)
  })

  it('inspect finds it complete and reports the generation', () => {
    const r = glmtool(['inspect', out, '--json'])
    expect(r.code, r.stderr).toBe(0)
    const rep = JSON.parse(r.stdout)
    expect(rep.architecture).toBe(arch)
    expect(rep.check).toMatchObject({missing: [], misshaped: [], extra: []})
    expect(rep.totals.byDtype).toEqual({F16: rep.totals.bytes})
    const table = glmtool(['inspect', out])
    expect(table.code).toBe(0)
    expect(table.stdout).toMatch(/tensors: complete/)
    expect(table.stdout).toMatch(new RegExp(`architecture: ${arch}`))
  })

  it('is deterministic for a seed and differs across seeds', () => {
    const again = join(work, `${arch}-again`)
    const other = join(work, `${arch}-other`)
    expect(glmtool(['synth', '--arch', arch, '--out', again, '--seed', '3']).code).toBe(0)
    expect(glmtool(['synth', '--arch', arch, '--out', other, '--seed', '4']).code).toBe(0)
    const first = `pytorch_model-00001-of-0000${shards}.bin`
    expect(sha(join(again, first))).toBe(sha(join(out, first)))
    expect(sha(join(other, first))).not.toBe(sha(join(out, first)))
  })
})

describe('weights look like a trained model\'s', () => {
  it.skipIf(!hasTorch)('linear std ~0.02, norm weights ~1, biases small', () => {
    const out = join(work, 'chatglm-6b')
    const stats = JSON.parse(execFileSync(PY, ['-c', `
import sys, json, torch
d = torch.load(sys.argv[1] + '/pytorch_model-00004-of-00008.bin', weights_only=True)
d.update(torch.load(sys.argv[1] + '/pytorch_model-00001-of-00008.bin', weights_only=True))
w = {k: v.float() for k, v in d.items()}
lin = [v for k, v in w.items() if k.endswith('query_key_value.weight') or k.endswith('word_embeddings.weight')]
ln = [v for k, v in w.items() if k.endswith('layernorm.weight')]
print(json.dumps({'lin_std': torch.cat([x.flatten() for x in lin]).std().item(), 'lin_mean': torch.cat([x.flatten() for x in lin]).mean().item(),
  'ln_mean': torch.cat([x.flatten() for x in ln]).mean().item() if ln else None}))`, out]).toString())
    expect(stats.lin_std).toBeGreaterThan(0.019)
    expect(stats.lin_std).toBeLessThan(0.021)
    expect(Math.abs(stats.lin_mean)).toBeLessThan(0.001)
  })
})

describe('inspect of other inputs', () => {
  it('reads a single torch shard and a safetensors directory', () => {
    const shard = glmtool(['inspect', join(work, 'chatglm2-6b', 'pytorch_model-00001-of-00007.bin'), '--json'])
    expect(shard.code, shard.stderr).toBe(0)
    expect(JSON.parse(shard.stdout)).toMatchObject({format: 'torch', architecture: null})
    const st = join(work, 'v2-st')
    expect(glmtool(['convert', join(work, 'chatglm2-6b'), '--to', 'safetensors', '--out', st]).code).toBe(0)
    const r = glmtool(['inspect', st, '--json'])
    expect(JSON.parse(r.stdout)).toMatchObject({format: 'safetensors', architecture: 'chatglm2-6b', check: {missing: [], misshaped: []}})
  })

  it('an unknown flag or a missing path exits non-zero with one line', () => {
    const r = glmtool(['inspect', join(work, 'does-not-exist')])
    expect(r.code).toBe(1)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toMatch(/does-not-exist: no such file or directory/)
  })
})

describe('glmtool demo', () => {
  it('walks every generation through synth, inspect, convert (safetensors, ONNX), a chat turn, merge-adapter, quantize and a chat turn on that', () => {
    const r = glmtool(['demo', '--json'])
    expect(r.code, r.stderr).toBe(0)
    const res = JSON.parse(r.stdout)
    expect(res.steps.map((s: {step: string}) => s.step)).toEqual([
      'synth chatglm-6b', 'inspect chatglm-6b', 'convert chatglm-6b', 'convert chatglm-6b --to onnx', 'chat chatglm-6b', 'merge-adapter chatglm-6b', 'quantize chatglm-6b --bits 4', 'chat chatglm-6b-int4',
      'synth chatglm2-6b', 'inspect chatglm2-6b', 'convert chatglm2-6b', 'convert chatglm2-6b --to onnx', 'chat chatglm2-6b', 'merge-adapter chatglm2-6b', 'quantize chatglm2-6b --bits 4', 'chat chatglm2-6b-int4',
      'synth chatglm3-6b', 'inspect chatglm3-6b', 'convert chatglm3-6b', 'convert chatglm3-6b --to onnx', 'chat chatglm3-6b', 'merge-adapter chatglm3-6b', 'quantize chatglm3-6b --bits 4', 'chat chatglm3-6b-int4',
    ])
    // ChatGLM3-6B is detected as itself at every stage (inspect, and the chat turns' prompts: role tokens).
    expect(res.steps[17].did).toMatch(/detected chatglm3-6b/)
    expect(res.steps[4].did).toMatch(/got \d+ tokens/)
    expect(res.steps[5].did).toMatch(/merged it: 2 weights changed/)
    expect(res.steps[7].did).toMatch(/got \d+ tokens/)
    expect(res.steps[1].did).toMatch(/all tensors present/)
  })
})
