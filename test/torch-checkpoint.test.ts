import {createHash} from 'node:crypto'
import {existsSync, readFileSync} from 'node:fs'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {readTensor} from '../src/formats/tensor.js'
import {TorchCheckpoint} from '../src/formats/torch-checkpoint.js'

/**
 * glmtool's torch reader against checkpoints that real torch 1.13 wrote
 * (test/fixtures/make_torch_fixtures.py); expected.json holds torch's own view of every tensor.
 */
const FIX = join(import.meta.dirname, 'fixtures/torch')
const expected: Record<string, {dtype: string, shape: number[], sha256: string, nbytes: number, storage: {key: string, numel: number}, storage_offset: number, stride: number[]}> =
  JSON.parse(readFileSync(join(FIX, 'expected.json'), 'utf8'))

const byFile = new Map<string, string[]>()
for (const key of Object.keys(expected)) {
  const [file, name] = key.split('::')
  byFile.set(file, [...(byFile.get(file) ?? []), name])
}

describe('torch zip checkpoints written by torch 1.13', () => {
  for (const [file, names] of byFile) {
    it(`reads every tensor of ${file} byte for byte`, async () => {
      const ck = await TorchCheckpoint.open(join(FIX, file))
      try {
        expect(ck.tensors.map(t => t.name).sort()).toEqual([...names].sort())
        for (const t of ck.tensors) {
          const e = expected[`${file}::${t.name}`]
          expect(t.dtype, t.name).toBe(e.dtype)
          expect([...t.shape], t.name).toEqual(e.shape)
          expect(t.ref.storageOffset, t.name).toBe(e.storage_offset)
          expect(t.ref.stride, t.name).toEqual(e.stride)
          expect(t.ref.storage.key, t.name).toBe(e.storage.key)
          // Small chunks force the chunked paths (contiguous and strided) to stitch correctly.
          const parts: Buffer[] = []
          for await (const c of t.chunks(16)) parts.push(Buffer.from(c))
          const bytes = Buffer.concat(parts)
          expect(bytes.length, t.name).toBe(e.nbytes)
          expect(createHash('sha256').update(bytes).digest('hex'), t.name).toBe(e.sha256)
          expect(createHash('sha256').update(await readTensor(t)).digest('hex'), t.name).toBe(e.sha256)
        }
      } finally {
        await ck.close()
      }
    })
  }

  it('covers the edge cases the fixtures were made for', () => {
    // Guards against the fixture set silently shrinking.
    expect(expected['edge/shared.pt::b'].storage_offset).toBe(50)
    expect(expected['edge/strided.pt::expanded'].stride).toEqual([0, 1])
    expect(Object.values(expected).map(e => e.dtype)).toEqual(expect.arrayContaining(['F16', 'BF16', 'F32', 'F64', 'I8', 'U8', 'I16', 'I32', 'I64', 'BOOL']))
  })
})

describe('bad torch files are refused with a clear error', () => {
  const open = (f: string) => TorchCheckpoint.open(join(FIX, 'edge', f))

  it('refuses a pickle calling os.system, naming the global, executing nothing', async () => {
    const marker = '/tmp/glmtool_pwned'
    const before = existsSync(marker)
    await expect(open('evil.pt')).rejects.toThrow(/refusing pickle global os\.system/)
    await expect(open('evil.pt')).rejects.toMatchObject({code: 'pickle-forbidden'})
    if (!before) expect(existsSync(marker)).toBe(false)
  })

  it('refuses builtins.eval', async () => {
    await expect(open('evil-builtins.pt')).rejects.toThrow(/refusing pickle global builtins\.eval/)
  })

  it('names the legacy non-zip format', async () => {
    await expect(open('legacy.pt')).rejects.toMatchObject({code: 'torch-legacy', message: expect.stringMatching(/legacy .*non-zip/)})
  })

  it('rejects a truncated shard', async () => {
    await expect(open('truncated.pt')).rejects.toMatchObject({code: 'zip-corrupt', message: expect.stringContaining('truncated.pt')})
  })

  it('rejects a corrupt zip directory', async () => {
    await expect(open('corrupt-cd.pt')).rejects.toMatchObject({code: 'zip-corrupt', message: expect.stringContaining('corrupt-cd.pt')})
  })

  it('rejects a tensor whose storage record is too short, naming the tensor', async () => {
    await expect(open('short-storage.pt')).rejects.toMatchObject({code: 'torch-storage-short', message: expect.stringMatching(/tensor \S+: storage data\/\d+ holds \d+ bytes/)})
  })

  it('rejects a file that is not a checkpoint', async () => {
    await expect(TorchCheckpoint.open(join(FIX, 'expected.json'))).rejects.toMatchObject({code: 'torch-not-zip'})
  })
})
