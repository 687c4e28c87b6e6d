import {createHash} from 'node:crypto'
import {cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {mergeAdapter} from '../src/pipelines/merge-adapter.js'
import {runPrefixEncoder, splitPrefixKeyValues} from '../src/formats/adapters/prefix-math.js'
import {decodeFloats} from '../src/formats/dtype-convert.js'
import {checkTensors, openModel} from '../src/pipelines/model-dir.js'
import {readTensor} from '../src/formats/tensor.js'
import {chatglmV1} from '../src/models/chatglm-v1.js'
import {chatglmV2} from '../src/models/chatglm-v2.js'
import {chatglm3} from '../src/models/chatglm3.js'

const FIX = join(import.meta.dirname, 'fixtures')
const ADAPTERS = join(FIX, 'adapters')
interface PrefixExpectation {
  base: string, checkpoint: string, pre_seq_len: number, prefix_projection: boolean, kv_heads: number, head_dim: number,
  num_layers: number, exact: boolean, file: string, sha256: string, merged_prefix_projection: boolean
}
const expected: {prefix: Record<string, PrefixExpectation>} = JSON.parse(readFileSync(join(ADAPTERS, 'expected.json'), 'utf8'))
const torchExpected: Record<string, {sha256: string}> = JSON.parse(readFileSync(join(FIX, 'torch/expected.json'), 'utf8'))
const work = mkdtempSync(join(tmpdir(), 'glmtool-prefix-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
/** The torch fixture base; for a ChatGLM3-6B checkpoint (v3-*) a copy whose config names chatglm3. */
function baseFor(variant: string, base: string): string {
  if (!variant.startsWith('v3-')) return join(FIX, 'torch', base)
  const dir = join(work, `base-${variant}`)
  if (!existsSync(dir)) {
    cpSync(join(FIX, 'torch', base), dir, {recursive: true})
    const c = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
    writeFileSync(join(dir, 'config.json'), JSON.stringify({...c, _name_or_path: 'THUDM/chatglm3-6b'}))
  }
  return dir
}

describe('prefix math', () => {
  it('cuts [P, L*2*kvHeads*D] as get_prompt does: index 2i keys, 2i+1 values, stored [kvHeads, P, D]', () => {
    const P = 3
    const L = 2
    const Hkv = 2
    const D = 4
    // value = code of (p, j = 2i + part, h, d), so every element says where it came from
    const values = new Float32Array(P * L * 2 * Hkv * D)
    for (let p = 0; p < P; p++) for (let j = 0; j < 2 * L; j++) for (let h = 0; h < Hkv; h++) for (let d = 0; d < D; d++) {
      values[((p * 2 * L + j) * Hkv + h) * D + d] = p * 1000 + j * 100 + h * 10 + d
    }
    const layers = splitPrefixKeyValues(values, P, L, Hkv, D)
    expect(layers).toHaveLength(L)
    for (let i = 0; i < L; i++) {
      for (let h = 0; h < Hkv; h++) for (let p = 0; p < P; p++) for (let d = 0; d < D; d++) {
        expect(layers[i].key[(h * P + p) * D + d]).toBe(p * 1000 + (2 * i) * 100 + h * 10 + d)
        expect(layers[i].value[(h * P + p) * D + d]).toBe(p * 1000 + (2 * i + 1) * 100 + h * 10 + d)
      }
    }
  })

  it('runs Linear -> Tanh -> Linear on each embedding row', () => {
    const out = runPrefixEncoder({
      preSeqLen: 2, embedding: new Float32Array([1, 0, 0, 1]), embeddingWidth: 2,
      projection: {
        first: {weight: new Float32Array([1, 1]), bias: new Float32Array([0]), inFeatures: 2, outFeatures: 1},
        second: {weight: new Float32Array([2, -1, 0]), bias: new Float32Array([0, 0, 1]), inFeatures: 1, outFeatures: 3},
      },
    })
    const t = Math.fround(Math.tanh(1))
    expect(out.width).toBe(3)
    expect([...out.values]).toEqual([2 * t, -t, 1, 2 * t, -t, 1].map(Math.fround))
  })
})

describe('P-Tuning v2 checkpoints from torch', () => {
  for (const [variant, e] of Object.entries(expected.prefix)) {
    it(`${variant}: prefix keys and values ${e.exact ? 'equal' : 'match, within float32 rounding,'} torch's get_prompt`, async () => {
      const out = join(work, variant)
      const r = await mergeAdapter({base: baseFor(variant, e.base), adapter: join(ADAPTERS, e.checkpoint), out, dtype: 'keep', force: false})
      expect(r.type).toBe('prefix')
      expect(r.prefix).toMatchObject({preSeqLen: e.pre_seq_len, prefixProjection: e.prefix_projection, layers: e.num_layers, kvHeads: e.kv_heads, headDim: e.head_dim})
      const model = await openModel(out)
      try {
        expect(model.format).toBe('safetensors')
        expect(model.config).toMatchObject({pre_seq_len: e.pre_seq_len, prefix_projection: e.merged_prefix_projection, glmtool_prefix: 'prefix_cache'})
        // the architecture table expects exactly these tensors: complete, nothing extra
        const check = checkTensors(model.arch!, model.config!, model.tensors)
        expect(check.missing).toEqual([])
        expect(check.misshaped).toEqual([])
        expect(check.extra).toEqual([])
        const byName = new Map(model.tensors.map(t => [t.name, t]))
        const parts: Buffer[] = []
        for (let i = 0; i < e.num_layers; i++) {
          for (const part of ['key', 'value']) {
            const t = byName.get(`transformer.prefix_cache.${i}.${part}`)!
            expect(t.dtype).toBe('F32')
            expect(t.shape).toEqual([e.kv_heads, e.pre_seq_len, e.head_dim])
            parts.push(await readTensor(t))
          }
        }
        const got = Buffer.concat(parts)
        const want = readFileSync(join(ADAPTERS, e.file))
        expect(sha(want)).toBe(e.sha256)
        if (e.exact) {
          // an embedding row is the prefix itself: only a permutation, so bit for bit
          expect(got.equals(want)).toBe(true)
        } else {
          // Linear-Tanh-Linear: torch's sgemm and tanh round their own way; within float32 rounding
          const a = decodeFloats(got, 'F32')
          const b = decodeFloats(want, 'F32')
          const maxAbs = b.reduce((m, x) => Math.max(m, Math.abs(x)), 0)
          let worst = 0
          for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]))
          expect(worst).toBeLessThanOrEqual(maxAbs * 2 ** -19)
        }
        // The published encoder's tensors, for the published code: run as its PrefixEncoder runs
        // them (embedding, then trans.* when config.json's prefix_projection says so), they give
        // torch's get_prompt output again, in get_prompt's [P, L*2*kvHeads*D] layout.
        const enc = (n: string) => byName.get(`transformer.prefix_encoder.${n}`)
        const f32 = async (n: string) => decodeFloats(await readTensor(enc(n)!), 'F32')
        const width = e.num_layers * 2 * e.kv_heads * e.head_dim
        expect(enc('trans.0.weight') !== undefined).toBe(e.merged_prefix_projection)
        const emb = enc('embedding.weight')!
        const E = emb.shape[1]
        const linear = async (i: number) => {
          const w = enc(`trans.${i}.weight`)!
          return {weight: await f32(`trans.${i}.weight`), bias: await f32(`trans.${i}.bias`), inFeatures: w.shape[1], outFeatures: w.shape[0]}
        }
        const rows = runPrefixEncoder({
          preSeqLen: e.pre_seq_len, embedding: await f32('embedding.weight'), embeddingWidth: E,
          projection: e.merged_prefix_projection ? {first: await linear(0), second: await linear(2)} : undefined,
        })
        expect(rows.width).toBe(width)
        const again = splitPrefixKeyValues(rows.values, e.pre_seq_len, e.num_layers, e.kv_heads, e.head_dim)
          .flatMap(l => [l.key, l.value])
        const wantF = decodeFloats(want, 'F32')
        const againF = Float32Array.from(again.flatMap(a => [...a]))
        const scale = wantF.reduce((m, x) => Math.max(m, Math.abs(x)), 0)
        let off = 0
        for (let i = 0; i < wantF.length; i++) off = Math.max(off, Math.abs(againF[i] - wantF[i]))
        expect(off).toBeLessThanOrEqual(e.exact ? 0 : scale * 2 ** -19)
        // base weights pass through unchanged
        const digests = new Map(Object.entries(torchExpected).filter(([k]) => k.startsWith(`${e.base}/`)).map(([k, v]) => [k.split('::')[1], v.sha256]))
        for (const [name, digest] of digests) expect(sha(await readTensor(byName.get(name)!)), name).toBe(digest)
        expect(model.tensors.length).toBe(digests.size + 2 * e.num_layers + (e.merged_prefix_projection ? 5 : 1))
      } finally {
        await model.close()
      }
    })
  }
})

describe('ChatGLM2-6B P-Tuning checkpoints as the published code loads them', () => {
  it('refuses one without trans.*: the published ChatGLM2-6B model always builds the projection', async () => {
    const ck = join(ADAPTERS, 'ptuning/v2-no-trans')
    const out = join(work, 'v2-no-trans')
    await expect(mergeAdapter({base: join(FIX, 'torch/tiny-v2'), adapter: ck, out, dtype: 'keep', force: false}))
      .rejects.toMatchObject({code: 'adapter-unloadable', message: expect.stringMatching(/v2-no-trans\/pytorch_model\.bin: no transformer\.prefix_encoder\.trans\.\* .*tuple, always true/)})
    expect(existsSync(out)).toBe(false)
  })

  it('refuses a ChatGLM3-6B checkpoint for a ChatGLM2-6B base (their published configs read the flag differently)', async () => {
    await expect(mergeAdapter({base: join(FIX, 'torch/tiny-v2'), adapter: join(ADAPTERS, 'ptuning/v3-embedding'), out: join(work, 'v3-into-v2'), dtype: 'keep', force: false}))
      .rejects.toMatchObject({code: 'adapter-generation', message: expect.stringMatching(/trained on ChatGLM3-6B .*the base model is ChatGLM2-6B/)})
  })

  it('applies trans.* whatever the flag says (v2-tuple: [false]), and warns of nothing', async () => {
    const warnings: string[] = []
    const r = await mergeAdapter({base: join(FIX, 'torch/tiny-v2'), adapter: join(ADAPTERS, 'ptuning/v2-tuple'), out: join(work, 'v2-tuple-w'), dtype: 'keep', force: false, onWarning: w => warnings.push(w)})
    expect(r.prefix!.prefixProjection).toBe(true)
    expect(warnings).toEqual([])
  })
})

describe('architecture tables with pre_seq_len', () => {
  it('list the prefix tensors: required when glmtool stored them, optional otherwise', () => {
    const v1 = {...chatglmV1.synthConfig('tiny'), pre_seq_len: 8}
    const specs = chatglmV1.tensors(v1)
    expect(specs.get('transformer.prefix_cache.0.key')).toMatchObject({shape: [4, 8, 16], optional: true})
    expect(specs.get('transformer.prefix_cache.1.value')).toMatchObject({shape: [4, 8, 16]})
    const marked = chatglmV1.tensors({...v1, glmtool_prefix: 'prefix_cache'})
    expect(marked.get('transformer.prefix_cache.0.key')!.optional).toBeUndefined()
    const v2 = chatglmV2.tensors({...chatglmV2.synthConfig('tiny'), pre_seq_len: 5, glmtool_prefix: 'prefix_cache'})
    expect(v2.get('transformer.prefix_cache.1.key')!.shape).toEqual([2, 5, 16])
    expect([...chatglmV2.tensors(chatglmV2.synthConfig('tiny')).keys()].some(n => n.includes('prefix_cache'))).toBe(false)
    // the published encoder, optional, in the shapes the published model builds: v1 as the flag
    // says; ChatGLM2-6B always with trans.* (its config's tuple); ChatGLM3-6B as the flag says
    expect(specs.get('transformer.prefix_encoder.embedding.weight')).toMatchObject({shape: [8, 2 * 2 * 64], optional: true})
    expect(specs.has('transformer.prefix_encoder.trans.0.weight')).toBe(false)
    const v1p = chatglmV1.tensors({...v1, prefix_projection: true})
    expect(v1p.get('transformer.prefix_encoder.embedding.weight')!.shape).toEqual([8, 64])
    expect(v1p.get('transformer.prefix_encoder.trans.2.weight')!.shape).toEqual([256, 64])
    expect(v2.get('transformer.prefix_encoder.embedding.weight')!.shape).toEqual([5, 2 * 2 * 2 * 16])
    expect(v2.get('transformer.prefix_encoder.trans.0.weight')).toMatchObject({shape: [64, 128], optional: true})
    // The rule is the generation module's (Arch.prefix), not the config's name: the same config
    // read as ChatGLM2-6B builds trans.*, as ChatGLM3-6B does not.
    const v3config = {...chatglm3.synthConfig('tiny'), pre_seq_len: 5, prefix_projection: false}
    expect(chatglm3.tensors(v3config).has('transformer.prefix_encoder.trans.0.weight')).toBe(false)
    expect(chatglmV2.tensors(v3config).has('transformer.prefix_encoder.trans.0.weight')).toBe(true)
    expect(chatglm3.tensors({...v3config, prefix_projection: true}).has('transformer.prefix_encoder.trans.0.weight')).toBe(true)
  })
})
