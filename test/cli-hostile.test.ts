import {cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, unlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {openModel} from '../src/pipelines/model-dir.js'
import {memoryTensor} from '../src/formats/tensor.js'
import {writeTorchCheckpoint} from '../src/formats/torch-writer.js'
import {readZipIndex} from '../src/formats/zip-reader.js'
import {glmtool} from './helpers/cli.js'

/**
 * Hostile and faulty inputs at the CLI (issue 11, items 5-9): every one ends with one line on
 * stderr naming the file, a non-zero exit, no output, in bounded time; legal extremes work.
 */
const V2 = join(import.meta.dirname, 'fixtures/torch/tiny-v2')
const work = mkdtempSync(join(tmpdir(), 'glmtool-hostile-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
let n = 0
const copy = (from = V2) => {
  const d = join(work, `m${n++}`)
  cpSync(from, d, {recursive: true})
  return d
}

function oneLineFailure(args: string[], re: RegExp, maxMs = 15_000): string {
  const t0 = Date.now()
  const r = glmtool(args)
  expect(Date.now() - t0).toBeLessThan(maxMs)
  expect(r.code, r.stdout).not.toBe(0)
  const lines = r.stderr.trim().split('\n')
  expect(lines, r.stderr).toHaveLength(1)
  expect(lines[0]).toMatch(re)
  return lines[0]
}

/** A safetensors file of `count` one-element F16 tensors: a legal header, ~70 bytes each. */
function manyTensors(path: string, count: number) {
  const parts: string[] = []
  for (let i = 0; i < count; i++) parts.push(`"t.${i}":{"dtype":"F16","shape":[1],"data_offsets":[${2 * i},${2 * i + 2}]}`)
  const h = Buffer.from(`{${parts.join(',')}}`)
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(h.length))
  writeFileSync(path, Buffer.concat([len, h, Buffer.alloc(2 * count)]))
}

describe('inspect on legal extremes', () => {
  it('prints a capped table for 150k tensors (cli-table3 overflowed the stack), --json lists all', () => {
    const f = join(work, 'many.safetensors')
    manyTensors(f, 150_000)
    const r = glmtool(['inspect', f])
    expect(r.code, r.stderr).toBe(0)
    const rows = r.stdout.split('\n').filter(l => /│ t\.\d+ /.test(l))
    expect(rows).toHaveLength(1000)
    expect(r.stdout).toContain('... and 149000 more tensors (--json lists them all)')
    expect(r.stdout).toContain('150000 tensors')
    const j = glmtool(['inspect', f, '--json'])
    expect(j.code, j.stderr).toBe(0)
    expect(JSON.parse(j.stdout).tensors).toHaveLength(150_000)
  })

  it('summarises an index of 200k stale entries instead of printing 200k warning lines', () => {
    const d = copy()
    const map: Record<string, string> = {}
    for (let i = 0; i < 200_000; i++) map[`ghost.${i}`] = 'pytorch_model.bin'
    writeFileSync(join(d, 'pytorch_model.bin.index.json'), JSON.stringify({metadata: {}, weight_map: map}))
    const r = glmtool(['inspect', d, '--no-tensors'])
    expect(r.code, r.stderr).toBe(0)
    const warnings = r.stdout.split('\n').filter(l => l.startsWith('warning: '))
    // The 18 real tensors are not in this index (5 listed + a count), the ghosts in no shard (5 + a count).
    expect(warnings.length).toBeLessThanOrEqual(12)
    expect(warnings).toContain('warning: ... and 199995 more index entries in no shard (200000 in all)')
    expect(warnings).toContain('warning: ... and 13 more tensors in a shard but not in the index (18 in all)')
  })
})

describe('hostile model directories: one line naming the file, bounded', () => {
  it('refuses num_layers: 1e9 up front, naming the key and config.json', () => {
    const d = copy()
    const cfgPath = join(d, 'config.json')
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'))
    cfg.num_layers = 1e9
    writeFileSync(cfgPath, JSON.stringify(cfg))
    const line = oneLineFailure(['inspect', d], /config\.json: num_layers is 1000000000, implausibly large \(glmtool accepts at most 1024\)$/, 10_000)
    expect(line).toContain(cfgPath)
    oneLineFailure(['convert', d, '--to', 'safetensors', '--out', join(work, 'never')], /num_layers is 1000000000/, 10_000)
    expect(existsSync(join(work, 'never'))).toBe(false)
  })

  it('caps the index size: a 600 MB index gets a clear message, not "Invalid string length"', () => {
    const d = copy()
    const idx = join(d, 'pytorch_model.bin.index.json')
    writeFileSync(idx, '{}')
    truncateSync(idx, 600 * 1024 * 1024) // sparse: costs no disk
    oneLineFailure(['inspect', d], new RegExp(`${idx.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: 629145600 bytes, over the \\d+-byte limit`))
  })

  it('names the path of a shard that is a directory (EISDIR)', () => {
    const d = copy()
    unlinkSync(join(d, 'pytorch_model.bin'))
    mkdirSync(join(d, 'pytorch_model.bin'))
    oneLineFailure(['inspect', d], new RegExp(`${join(d, 'pytorch_model.bin').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: is a directory \\(EISDIR\\)$`))
  })

  it('refuses an int64 tensor where a float weight belongs, naming it', async () => {
    const d = copy()
    const m = await openModel(V2)
    const name = 'transformer.encoder.layers.1.mlp.dense_4h_to_h.weight'
    const tensors = m.tensors.map(t => (t.name === name ? memoryTensor(name, 'I64', t.shape, Buffer.alloc(8 * t.shape.reduce((a, b) => a * b, 1))) : t))
    await writeTorchCheckpoint(join(d, 'pytorch_model.bin'), tensors)
    await m.close()
    const out = join(work, 'int64-out')
    oneLineFailure(['convert', d, '--to', 'safetensors', '--out', out], new RegExp(`wrong dtype: ${name.replace(/\./g, '\\.')} is I64, chatglm2-6b needs a float dtype`))
    expect(existsSync(out)).toBe(false)
    const insp = glmtool(['inspect', d])
    expect(insp.stdout).toContain(`wrong dtype: ${name} is I64, expected a float dtype`)
  })

  it('refuses a shard whose tensor bytes fail the CRC-32, writing nothing', async () => {
    const d = copy()
    const shard = join(d, 'pytorch_model.bin')
    const rec = [...(await readZipIndex(shard)).values()].find(e => e.name.endsWith('/data/3'))!
    const bytes = readFileSync(shard)
    bytes[rec.dataOffset + 7] ^= 0x40
    writeFileSync(shard, bytes)
    const out = join(work, 'crc-out')
    oneLineFailure(['convert', d, '--to', 'safetensors', '--out', out], new RegExp(`${shard.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: tensor \\S+: record pytorch_model/data/3 fails its CRC-32 check \\(corrupt file\\)`))
    expect(existsSync(out)).toBe(false)
  })
})

describe('quantize --threads', () => {
  for (const bad of ['0', '-3']) {
    it(`refuses --threads ${bad} before reading the model`, () => {
      const out = join(work, `q${bad}`)
      oneLineFailure(['quantize', V2, '--bits', '8', `--threads=${bad}`, '--out', out], new RegExp(`--threads must be an integer from 1 to 256, got ${bad}`))
      expect(existsSync(out)).toBe(false)
    })
  }
})
