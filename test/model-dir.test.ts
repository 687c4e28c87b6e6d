import {cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {assertComplete, checkTensors, openModel} from '../src/pipelines/model-dir.js'

const FIX = join(import.meta.dirname, 'fixtures/torch')
const work = mkdtempSync(join(tmpdir(), 'glmtool-md-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

function copyFixture(name: string): string {
  const d = join(work, `${name}-${Math.random().toString(36).slice(2)}`)
  cpSync(join(FIX, name), d, {recursive: true})
  return d
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests edit arbitrary JSON
function editJson(path: string, edit: (j: Record<string, any>) => void) {
  const j = JSON.parse(readFileSync(path, 'utf8'))
  edit(j)
  writeFileSync(path, JSON.stringify(j))
}

describe('model directories', () => {
  it('detects v1 from a sharded torch directory and finds it complete', async () => {
    const m = await openModel(join(FIX, 'tiny-v1'))
    expect(m.arch?.id).toBe('chatglm-6b')
    expect(m.files).toEqual(['pytorch_model-00001-of-00002.bin', 'pytorch_model-00002-of-00002.bin'])
    const c = checkTensors(m.arch!, m.config!, m.tensors)
    expect(c).toMatchObject({missing: [], misshaped: [], extra: []})
    await m.close()
  })

  it('detects v2 from a single pytorch_model.bin (bf16)', async () => {
    const m = await openModel(join(FIX, 'tiny-v2'))
    expect(m.arch?.id).toBe('chatglm2-6b')
    expect(new Set(m.tensors.map(t => t.dtype))).toContain('BF16')
    expect(checkTensors(m.arch!, m.config!, m.tensors)).toMatchObject({missing: [], misshaped: []})
    await m.close()
  })

  it('refuses an index naming a shard that is missing', async () => {
    const d = copyFixture('tiny-v1')
    unlinkSync(join(d, 'pytorch_model-00002-of-00002.bin'))
    await expect(openModel(d)).rejects.toMatchObject({code: 'missing-shard', message: expect.stringContaining('pytorch_model-00002-of-00002.bin')})
  })

  it('refuses a config of an unknown architecture', async () => {
    const d = copyFixture('tiny-v2')
    editJson(join(d, 'config.json'), j => {
      j.model_type = 'llama'
    })
    await expect(openModel(d)).rejects.toMatchObject({code: 'unknown-arch', message: expect.stringContaining('llama')})
  })

  it('warns about a stale index and tensors outside it, and names missing and mis-shaped tensors', async () => {
    const d = copyFixture('tiny-v1')
    editJson(join(d, 'pytorch_model.bin.index.json'), j => {
      j.metadata.total_size = 1
      delete j.weight_map['lm_head.weight']
      j.weight_map['transformer.ghost.weight'] = 'pytorch_model-00001-of-00002.bin'
    })
    editJson(join(d, 'config.json'), j => {
      j.inner_hidden_size = 128
    })
    const m = await openModel(d)
    expect(m.warnings.join('\n')).toMatch(/total_size is 1/)
    expect(m.warnings.join('\n')).toMatch(/lm_head\.weight is in pytorch_model-00002-of-00002\.bin but not in the index/)
    expect(m.warnings.join('\n')).toMatch(/transformer\.ghost\.weight is in the index but in no shard/)
    const c = checkTensors(m.arch!, m.config!, m.tensors)
    expect(c.misshaped.map(x => x.name)).toContain('transformer.layers.0.mlp.dense_h_to_4h.weight')
    expect(() => assertComplete(m.arch!, c, d)).toThrow(/wrong shape: transformer\.layers\.0\.mlp\.dense_h_to_4h\.weight is \[256,64\], chatglm-6b needs \[128,64\]/)
    await m.close()
  })

  it('names missing tensors', async () => {
    const m = await openModel(join(FIX, 'tiny-v2'))
    const c = checkTensors(m.arch!, m.config!, m.tensors.filter(t => !t.name.includes('layers.1.mlp')))
    expect(() => assertComplete(m.arch!, c, 'x')).toThrow(/missing 2 tensor\(s\): transformer\.encoder\.layers\.1\.mlp\.dense_h_to_4h\.weight, transformer\.encoder\.layers\.1\.mlp\.dense_4h_to_h\.weight/)
    await m.close()
  })
})

describe('memoryTensor', () => {
  it('yields whole elements whatever the requested piece size', async () => {
    const {memoryTensor} = await import('../src/formats/tensor.js')
    const t = memoryTensor('x', 'F32', [5], Buffer.alloc(20, 1))
    const sizes: number[] = []
    for await (const c of t.chunks(6)) sizes.push(c.length)
    expect(sizes).toEqual([4, 4, 4, 4, 4])
    const big: number[] = []
    for await (const c of t.chunks(1)) big.push(c.length)
    expect(big).toEqual([4, 4, 4, 4, 4])
  })
})
