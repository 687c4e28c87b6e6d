import {createHash} from 'node:crypto'
import {cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {openSafetensorsModel} from '../src/formats/safetensors-reader.js'
import {readTensor} from '../src/formats/tensor.js'
import {decodeFloats} from '../src/formats/dtype-convert.js'
import {glmtool} from './helpers/cli.js'

const FIX = join(import.meta.dirname, 'fixtures/torch')
const expected: Record<string, {dtype: string, shape: number[], sha256: string}> = JSON.parse(readFileSync(join(FIX, 'expected.json'), 'utf8'))
const work = mkdtempSync(join(tmpdir(), 'glmtool-cv-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
function dirDigest(d: string): Record<string, string> {
  return Object.fromEntries(readdirSync(d).sort().map(f => [f, sha(readFileSync(join(d, f)))]))
}
function expectedFor(model: string): Map<string, {dtype: string, shape: number[], sha256: string}> {
  return new Map(Object.entries(expected).filter(([k]) => k.startsWith(`${model}/`)).map(([k, v]) => [k.split('::')[1], v]))
}

describe('glmtool convert --to safetensors', () => {
  it('converts a sharded v1 torch model byte for byte, copying config and leaving the input untouched', () => {
    const input = join(FIX, 'tiny-v1')
    const before = dirDigest(input)
    const out = join(work, 'v1-st')
    const r = glmtool(['convert', input, '--to', 'safetensors', '--out', out, '--max-shard-size', '150kB', '--json'])
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const res = JSON.parse(r.stdout)
    expect(res).toMatchObject({architecture: 'chatglm-6b', tensors: 30})
    expect(dirDigest(input)).toEqual(before)
    expect(readdirSync(out).sort()).toEqual(['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json'])
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))).toEqual(JSON.parse(readFileSync(join(input, 'config.json'), 'utf8')))
    expect(readdirSync(work).filter(f => f.includes('glmtool-tmp'))).toEqual([])
  })

  it('the converted tensors equal what torch saved', async () => {
    const st = await openSafetensorsModel(join(work, 'v1-st'))
    expect(st.metadata).toMatchObject({format: 'pt', glmtool_architecture: 'chatglm-6b'})
    const exp = expectedFor('tiny-v1')
    expect(st.tensors.length).toBe(exp.size)
    for (const t of st.tensors) {
      const e = exp.get(t.name)!
      expect(t.dtype).toBe(e.dtype)
      expect(sha(await readTensor(t)), t.name).toBe(e.sha256)
    }
  })

  it('casts bf16 to f32 exactly and updates torch_dtype', async () => {
    const out = join(work, 'v2-f32')
    const r = glmtool(['convert', join(FIX, 'tiny-v2'), '--to', 'safetensors', '--out', out, '--dtype', 'f32'])
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).torch_dtype).toBe('float32')
    const st = await openSafetensorsModel(out)
    const emb = st.tensors.find(t => t.name === 'transformer.embedding.word_embeddings.weight')!
    expect(emb.dtype).toBe('F32')
    const ref = expected['tiny-v2/pytorch_model.bin::transformer.embedding.word_embeddings.weight'] as unknown as {first: number[]}
    const got = decodeFloats((await readTensor(emb)).subarray(0, 32), 'F32')
    expect([...got]).toEqual(ref.first)
  })

  it('refuses an existing output without --force, and replaces it with --force', () => {
    const out = join(work, 'v1-st')
    const r = glmtool(['convert', join(FIX, 'tiny-v1'), '--to', 'safetensors', '--out', out])
    expect(r.code).not.toBe(0)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toMatch(/already exists; pass --force/)
    const r2 = glmtool(['convert', join(FIX, 'tiny-v1'), '--to', 'safetensors', '--out', out, '--force'])
    expect(r2.code, r2.stderr).toBe(0)
  })

  it('a bad shard fails with one line and leaves no output behind', () => {
    const input = join(work, 'broken-v1')
    cpSync(join(FIX, 'tiny-v1'), input, {recursive: true})
    const shard = join(input, 'pytorch_model-00002-of-00002.bin')
    truncateSync(shard, Math.floor(statSync(shard).size / 2))
    const out = join(work, 'broken-out')
    const r = glmtool(['convert', input, '--to', 'safetensors', '--out', out])
    expect(r.code).toBe(1)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toMatch(/^glmtool: .*pytorch_model-00002-of-00002\.bin/)
    expect(existsSync(out)).toBe(false)
    expect(readdirSync(work).filter(f => f.includes('glmtool-tmp'))).toEqual([])
  })

  it('--json errors are JSON on stdout', () => {
    const r = glmtool(['convert', join(work, 'nope'), '--to', 'safetensors', '--json'])
    expect(r.code).toBe(1)
    expect(JSON.parse(r.stdout).error.message).toMatch(/no such file or directory/)
  })
})
