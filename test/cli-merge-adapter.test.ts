import {createHash} from 'node:crypto'
import {cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, truncateSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {encodeFloats} from '../src/formats/dtype-convert.js'
import {openModel} from '../src/pipelines/model-dir.js'
import {writeSafetensorsModel} from '../src/formats/safetensors-writer.js'
import {memoryTensor} from '../src/formats/tensor.js'
import {writeTorchCheckpoint} from '../src/formats/torch-writer.js'
import {glmtool} from './helpers/cli.js'

const FIX = join(import.meta.dirname, 'fixtures')
const V1 = join(FIX, 'torch/tiny-v1')
const V2 = join(FIX, 'torch/tiny-v2')
const LORA = join(FIX, 'adapters/lora')
const PTUNING = join(FIX, 'adapters/ptuning')
const work = mkdtempSync(join(tmpdir(), 'glmtool-ma-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const dirDigest = (d: string) => Object.fromEntries(readdirSync(d).sort().map(f => [f, sha(readFileSync(join(d, f)))]))

/** A copy of a fixture adapter in the work dir, with its JSON config edited. */
function adapterCopy(from: string, name: string, edit?: (cfg: Record<string, unknown>) => void, configFile = 'adapter_config.json'): string {
  const dir = join(work, name)
  cpSync(from, dir, {recursive: true})
  if (edit) {
    const cfg = JSON.parse(readFileSync(join(dir, configFile), 'utf8'))
    edit(cfg)
    writeFileSync(join(dir, configFile), JSON.stringify(cfg))
  }
  return dir
}

/** A LoRA adapter written by glmtool itself (safetensors or torch), for shapes and values torch fixtures lack. */
async function madeAdapter(name: string, factors: {name: string, shape: number[], fill: (i: number) => number}[], format: 'safetensors' | 'bin', r = 4): Promise<string> {
  const dir = join(work, name)
  mkdirSync(dir)
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({peft_type: 'LORA', r, lora_alpha: 8, target_modules: ['query_key_value'], bias: 'none'}))
  const tensors = factors.map(f => {
    const n = f.shape.reduce((a, b) => a * b, 1)
    return memoryTensor(f.name, 'F32', f.shape, encodeFloats(new Float32Array(n).map((_, i) => f.fill(i)), 'F32'))
  })
  if (format === 'bin') {
    await writeTorchCheckpoint(join(dir, 'adapter_model.bin'), tensors)
  } else {
    await writeSafetensorsModel(dir, tensors)
    renameSync(join(dir, 'model.safetensors'), join(dir, 'adapter_model.safetensors'))
  }
  return dir
}

describe('glmtool merge-adapter', () => {
  it('merges a LoRA adapter into a complete model that inspect and openModel accept, leaving the inputs untouched', async () => {
    const out = join(work, 'v2-lora')
    const before = [dirDigest(V2), dirDigest(join(LORA, 'v2-all-modules'))]
    const r = glmtool(['merge-adapter', V2, '--adapter', join(LORA, 'v2-all-modules'), '--out', out, '--json'])
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const res = JSON.parse(r.stdout)
    expect(res).toMatchObject({type: 'lora', architecture: 'chatglm2-6b', tensors: 18, lora: {rank: 4, alpha: 8, scale: 2, fanInFanOut: false}})
    expect(res.lora.merged).toHaveLength(4)
    expect([dirDigest(V2), dirDigest(join(LORA, 'v2-all-modules'))]).toEqual(before)
    expect(readdirSync(out).sort()).toEqual(['config.json', 'model.safetensors'])
    const insp = glmtool(['inspect', out, '--json'])
    expect(insp.code, insp.stderr).toBe(0)
    const report = JSON.parse(insp.stdout)
    expect(report).toMatchObject({format: 'safetensors', architecture: 'chatglm2-6b', check: {missing: [], extra: [], misshaped: []}})
    const model = await openModel(out)
    expect(model.arch!.id).toBe('chatglm2-6b')
    expect(model.config).toEqual(JSON.parse(readFileSync(join(V2, 'config.json'), 'utf8')))
    await model.close()
    expect(readdirSync(work).filter(f => f.includes('glmtool-tmp'))).toEqual([])
  })

  it('detects a P-Tuning checkpoint, writes <base>-merged by default, and the result converts like any model', () => {
    const base = join(work, 'tiny-v1')
    cpSync(V1, base, {recursive: true})
    const r = glmtool(['merge-adapter', base, '--adapter', join(PTUNING, 'v1-projection')])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/P-Tuning v2 prefix \(pre_seq_len 3, projected\) as 4 f32 tensors \[4, 3, 16\]/)
    const out = `${base}-merged`
    const insp = JSON.parse(glmtool(['inspect', out, '--json']).stdout)
    expect(insp.check).toMatchObject({missing: [], extra: [], misshaped: [], absentOptional: []})
    expect(insp.tensors.filter((t: {name: string}) => t.name.startsWith('transformer.prefix_cache.'))).toHaveLength(4)
    // the published encoder too, collapsed for v1: embedding = the projected prefix, prefix_projection false
    expect(insp.tensors.filter((t: {name: string}) => t.name.startsWith('transformer.prefix_encoder.')).map((t: {name: string, shape: number[]}) => [t.name, t.shape]))
      .toEqual([['transformer.prefix_encoder.embedding.weight', [3, 256]]])
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))).toMatchObject({pre_seq_len: 3, prefix_projection: false, glmtool_prefix: 'prefix_cache'})
    const conv = glmtool(['convert', out, '--to', 'safetensors', '--out', join(work, 'v1-prefix-f16'), '--dtype', 'f16', '--json'])
    expect(conv.code, conv.stderr).toBe(0)
    expect(conv.stderr).not.toMatch(/extra tensor/)
  })

  it('takes a weights file as --adapter, and --dtype', async () => {
    const out = join(work, 'v1-lora-f32')
    const r = glmtool(['merge-adapter', V1, '--adapter', join(LORA, 'v1-rslora/adapter_model.safetensors'), '--out', out, '--dtype', 'f32', '--json'])
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout).lora).toMatchObject({useRslora: true, rank: 8})
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).torch_dtype).toBe('float32')
    const model = await openModel(out)
    expect(new Set(model.tensors.map(t => t.dtype))).toEqual(new Set(['F32']))
    await model.close()
  })

  it('refuses an existing output without --force and replaces it with --force', () => {
    const out = join(work, 'v2-lora')
    const r = glmtool(['merge-adapter', V2, '--adapter', join(LORA, 'v2-qkv-random'), '--out', out])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/already exists; pass --force/)
    const r2 = glmtool(['merge-adapter', V2, '--adapter', join(LORA, 'v2-qkv-random'), '--out', out, '--force', '--json'])
    expect(r2.code, r2.stderr).toBe(0)
    expect(JSON.parse(r2.stdout).lora.rank).toBe(8)
  })
})

describe('merge-adapter refuses bad adapters with one clear line and writes nothing', () => {
  const cases: {name: string, base: string, adapter: () => Promise<string> | string, type?: string, code: string, message: RegExp}[] = [
    {
      name: 'a LoRA adapter for the other generation', base: V1, adapter: () => join(LORA, 'wrong-generation'),
      code: 'adapter-generation', message: /adapter was made for chatglm2-6b \(it adapts transformer\.encoder\.layers\.0\.self_attention\.query_key_value\); the base model is chatglm-6b/,
    },
    {
      name: 'a LoRA adapter for another hidden size', base: V1, adapter: () => join(LORA, 'wrong-hidden'),
      code: 'adapter-shape', message: /query_key_value: lora_B @ lora_A is \[384, 128\], but the base weight is \[192, 64\]; the adapter was made for hidden size 128, the base has 64/,
    },
    {
      name: 'r in the config disagreeing with the factors', base: V1,
      adapter: () => adapterCopy(join(LORA, 'v1-qkv-default'), 'rank-config', c => { c.r = 8 }),
      code: 'adapter-rank', message: /lora_A is \[4,64\], rank 4, but adapter_config\.json says r = 8/,
    },
    {
      name: 'lora_A and lora_B of different ranks', base: V2,
      adapter: () => madeAdapter('rank-factors', [
        {name: 'base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_A.weight', shape: [4, 64], fill: i => i * 1e-3},
        {name: 'base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_B.weight', shape: [128, 2], fill: () => 1e-3},
      ], 'safetensors'),
      code: 'adapter-rank', message: /lora_A is \[4,64\] and lora_B is \[128,2\]: their ranks 4 and 2 differ/,
    },
    {
      name: 'a target module the base does not have', base: V2,
      adapter: () => adapterCopy(join(LORA, 'v2-qkv-random'), 'target', c => { c.target_modules = ['q_proj', 'v_proj'] }),
      code: 'adapter-target', message: /target module "q_proj" does not exist in chatglm2-6b \(its linear layers: query_key_value, dense, dense_h_to_4h, dense_4h_to_h, output_layer\)/,
    },
    {
      name: 'a missing adapter_config.json', base: V1,
      adapter: () => {
        const d = adapterCopy(join(LORA, 'v1-all-modules'), 'no-config')
        rmSync(join(d, 'adapter_config.json'))
        return d
      },
      code: 'adapter-missing-config', message: /adapter_config\.json is missing; PEFT saves it beside adapter_model\.bin/,
    },
    {
      name: 'NaN in the adapter', base: V2,
      adapter: () => madeAdapter('nan', [
        {name: 'base_model.model.transformer.encoder.layers.1.self_attention.query_key_value.lora_A.default.weight', shape: [4, 64], fill: i => i * 1e-3},
        {name: 'base_model.model.transformer.encoder.layers.1.self_attention.query_key_value.lora_B.default.weight', shape: [128, 4], fill: i => (i === 77 ? NaN : 1e-3)},
      ], 'bin'),
      code: 'adapter-non-finite', message: /tensor base_model\.model\.transformer\.encoder\.layers\.1\.self_attention\.query_key_value\.lora_B\.default\.weight holds NaN at element 77/,
    },
    {
      name: 'a ReDoS regex target_modules (nested quantifiers)', base: V2,
      adapter: () => adapterCopy(join(LORA, 'v2-qkv-random'), 'redos', c => { c.target_modules = '(\\w+\\.?)+query_key_valueX' }),
      code: 'adapter-bad-config', message: /target_modules regex "\(\\\\w\+\\\\\.\?\)\+query_key_valueX" is refused: a repeated group holds a repetition \(nested quantifiers backtrack exponentially\); list the module names instead/,
    },
    {
      name: 'a 600 MB adapter_config.json', base: V2,
      adapter: () => {
        const d = adapterCopy(join(LORA, 'v2-qkv-random'), 'huge-config')
        truncateSync(join(d, 'adapter_config.json'), 600 * 1024 * 1024) // sparse
        return d
      },
      code: 'adapter-bad-config', message: /adapter_config\.json: 629145600 bytes, over the 16777216-byte limit for an adapter config/,
    },
    {
      name: 'r above min(in, out) of the layer', base: V2,
      adapter: () => madeAdapter('rank-huge', [
        {name: 'base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_A.weight', shape: [200, 64], fill: () => 1e-3},
        {name: 'base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_B.weight', shape: [128, 200], fill: () => 1e-3},
      ], 'safetensors', 200),
      code: 'adapter-rank', message: /query_key_value: adapter_config\.json says r = 200, more than min\(out, in\) = 64 of the base weight \[128, 64\]/,
    },
    {
      name: 'a 1 KB adapter of stride-0 factors with r = 2^21', base: V2, adapter: () => join(FIX, 'torch/hostile/lora-stride0'),
      code: 'torch-expanded-view', message: /adapter_model\.bin: tensor .*lora_A\.weight: a \[2097152,64\] view with strides \[0,0\]/,
    },
    {
      name: 'finite factors whose merged product overflows F16', base: V1,
      adapter: () => madeAdapter('overflow-f16', [
        {name: 'base_model.model.transformer.layers.1.attention.query_key_value.lora_A.weight', shape: [4, 64], fill: () => 200},
        {name: 'base_model.model.transformer.layers.1.attention.query_key_value.lora_B.weight', shape: [192, 4], fill: i => (i >= 8 ? 200 : 0)},
      ], 'safetensors'),
      // 2 * 4 * 200 * 200 = 320000 > 65504 from row 2 on: row 0-1 of B are zero.
      code: 'adapter-non-finite', message: /adapter_model\.safetensors: merging into tensor transformer\.layers\.1\.attention\.query_key_value\.weight gives 3\d{5}(\.\d+)? \(beyond F16\) at \[2, 0\]; the adapter's update overflows, nothing was written/,
    },
    {
      name: 'finite factors whose product is Inf in float32', base: V2,
      adapter: () => madeAdapter('overflow-f32', [
        {name: 'base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_A.weight', shape: [4, 64], fill: () => 1e20},
        {name: 'base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_B.weight', shape: [128, 4], fill: () => -1e20},
      ], 'bin'),
      code: 'adapter-non-finite', message: /adapter_model\.bin: merging into tensor transformer\.encoder\.layers\.0\.self_attention\.query_key_value\.weight gives -Infinity at \[0, 0\]/,
    },
    {
      name: 'bias other than "none"', base: V1,
      adapter: () => adapterCopy(join(LORA, 'v1-all-modules'), 'bias', c => { c.bias = 'lora_only' }),
      code: 'adapter-bias', message: /bias is "lora_only"; merge-adapter merges only adapters saved with bias "none"/,
    },
    {
      name: 'a P-Tuning config without pre_seq_len', base: V1,
      adapter: () => adapterCopy(join(PTUNING, 'v1-embedding'), 'no-pre-seq-len', c => { delete c.pre_seq_len }, 'config.json'),
      code: 'adapter-bad-config', message: /config\.json: no pre_seq_len, so this is not a P-Tuning v2 checkpoint/,
    },
    {
      name: 'a P-Tuning checkpoint for the other generation', base: V2, adapter: () => join(PTUNING, 'v1-embedding'),
      code: 'adapter-generation', message: /P-Tuning checkpoint was trained on chatglm-6b \(its config\.json\); the base model is chatglm2-6b/,
    },
    {
      name: 'a P-Tuning embedding of the wrong width (config trimmed to pre_seq_len)', base: V2, type: 'prefix',
      adapter: () => {
        const d = adapterCopy(join(PTUNING, 'v1-embedding'), 'trimmed')
        writeFileSync(join(d, 'config.json'), JSON.stringify({pre_seq_len: 4, prefix_projection: false}))
        return d
      },
      code: 'adapter-shape', message: /embedding\.weight is \[4,256\]; the base chatglm2-6b needs \[4, 128\] \(2 layers x 2 x 2 groups x 16 = 128\)/,
    },
    {
      name: 'a ChatGLM2-6B P-Tuning checkpoint without trans.* (the published ChatGLM2-6B model cannot load it)', base: V2,
      adapter: () => join(PTUNING, 'v2-no-trans'),
      code: 'adapter-unloadable', message: /v2-no-trans\/pytorch_model\.bin: no transformer\.prefix_encoder\.trans\.\* \(config\.json prefix_projection false\); the published ChatGLM2-6B config stores prefix_projection as a tuple, always true/,
    },
    {
      name: 'a P-Tuning prefix_projection that no published config writes', base: V2,
      adapter: () => adapterCopy(join(PTUNING, 'v2-tuple'), 'pp-string', c => { c.prefix_projection = 'yes' }, 'config.json'),
      code: 'adapter-bad-config', message: /config\.json: prefix_projection must be true, false or a one-element list of either \(got "yes"\)/,
    },
    {
      name: 'something that is no adapter', base: V1, adapter: () => adapterCopy(join(FIX, 'torch/edge'), 'not-adapter'),
      code: 'adapter-unknown-type', message: /cannot tell the adapter type/,
    },
  ]
  const dirs = new Map<string, string>()
  beforeAll(async () => {
    for (const c of cases) dirs.set(c.name, await c.adapter())
  })

  for (const c of cases) {
    it(c.name, () => {
      const out = join(work, `out-${c.name.replace(/\W+/g, '-')}`)
      const r = glmtool(['merge-adapter', c.base, '--adapter', dirs.get(c.name)!, '--out', out, ...(c.type ? ['--type', c.type] : []), '--json'])
      expect(r.code).toBe(1)
      // one line on stderr naming the cause; with --json the same as JSON on stdout, with its code
      expect(r.stderr.trim().split('\n')).toHaveLength(1)
      expect(r.stderr).toMatch(/^glmtool: /)
      expect(r.stderr).toMatch(c.message)
      const err = JSON.parse(r.stdout).error
      expect(err.code).toBe(c.code)
      expect(err.message).toMatch(c.message)
      expect(existsSync(out)).toBe(false)
      expect(readdirSync(work).filter(f => f.includes('glmtool-tmp'))).toEqual([])
    })
  }
})
