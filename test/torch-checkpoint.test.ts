import {createHash} from 'node:crypto'
import {existsSync, readFileSync} from 'node:fs'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {readTensor} from '../src/formats/tensor.js'
import {TorchCheckpoint} from '../src/formats/torch-checkpoint.js'
import {hasTorch, NO_TORCH_REASON, REFERENCE_PYTHON} from './helpers/reference.js'

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

/**
 * Hostile and damaged torch files of issue 11 (test/fixtures/make_hostile_fixtures.py, written
 * by torch 1.13; torch.load itself reads the legal ones the same way, the script checks that).
 */
describe('hostile torch files: bounded, refused with one line naming the file', () => {
  const H = join(FIX, 'hostile')
  const refusal = async (path: string, re: RegExp) => {
    const err = await TorchCheckpoint.open(path).then(async ck => {
      // Some refusals come only when the bytes are read.
      try {
        for (const t of ck.tensors) await readTensor(t)
      } finally {
        await ck.close()
      }
      return undefined
    }, (error: Error) => error).catch((error: Error) => error)
    expect(err, 'must fail').toBeInstanceOf(Error)
    expect(err!.message).toMatch(re)
    expect(err!.message.startsWith(path)).toBe(true)
    expect(err!.message).not.toContain('\n')
  }

  it('refuses 16 bytes of storage viewed as F16 [32768, 32768] (2 GiB) at open', async () => {
    const t0 = Date.now()
    await refusal(join(H, 'expanded.pt'), /tensor w: a \[32768,32768\] view with strides \[0,0\].*expanded views may repeat/)
    expect(Date.now() - t0).toBeLessThan(2000)
  })

  it('still reads small expanded views and tensors shared under two names', async () => {
    const ck = await TorchCheckpoint.open(join(H, 'expanded-small.pt'))
    const get = async (c: TorchCheckpoint, n: string) => new Float32Array(new Uint8Array(await readTensor(c.tensors.find(t => t.name === n)!)).buffer)
    expect([...await get(ck, 'expanded')]).toEqual([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3])
    const wide = await get(ck, 'wide')
    expect(wide.length).toBe(4096)
    expect(wide[3 * 1024 + 1000]).toBe(1000)
    await ck.close()
    const tied = await TorchCheckpoint.open(join(H, 'tied.pt'))
    expect(tied.tensors.map(t => t.name)).toEqual(['embed.weight', 'lm_head.weight', 'view'])
    const arange = Array.from({length: 12}, (_, i) => i)
    expect([...await get(tied, 'embed.weight')]).toEqual(arange)
    expect([...await get(tied, 'lm_head.weight')]).toEqual(arange)
    expect([...await get(tied, 'view')]).toEqual(arange.slice(4))
    await tied.close()
  })

  it.skipIf(!hasTorch())('refuses thousands of full views of one storage (the bytes multiply), written by torch', async () => {
    const {mkdtempSync, rmSync} = await import('node:fs')
    const {tmpdir} = await import('node:os')
    const {spawnSync} = await import('node:child_process')
    const dir = mkdtempSync(join(tmpdir(), 'glmtool-views-'))
    try {
      const f = join(dir, 'views.pt')
      // 16 KB of storage, 4200 distinct full views of it: 67 MB of tensors from a ~300 KB file.
      const py = `import torch\nb = torch.zeros(4096)\ntorch.save({f"v{i}": b[:] for i in range(4200)}, ${JSON.stringify(f)})`
      const r = spawnSync(REFERENCE_PYTHON, ['-c', py], {encoding: 'utf8'})
      expect(r.status, r.stderr).toBe(0)
      await refusal(f, /tensor v\d+: the tensors so far view \d+ bytes of 16384 bytes of storage; views may repeat storage at most 4x/)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })
  if (!hasTorch()) console.warn(`torch-checkpoint: ${NO_TORCH_REASON}; the many-views case is skipped`)

  it('refuses a zip with a record stored twice', async () => {
    await refusal(join(H, 'duplicate-entry.pt'), /zip entry archive\/data\/0 appears twice/)
  })

  it('refuses a LoRA factor that is a stride-0 view of r = 2^21 rows (1 KB file) at open', async () => {
    await refusal(join(H, 'lora-stride0/adapter_model.bin'), /lora_A\.weight: a \[2097152,64\] view/)
  })

  it('verifies the CRC-32 of multi-megabyte records on the worker thread, piece by piece', async () => {
    const {mkdtempSync, writeFileSync, rmSync} = await import('node:fs')
    const {tmpdir} = await import('node:os')
    const {memoryTensor} = await import('../src/formats/tensor.js')
    const {writeTorchCheckpoint} = await import('../src/formats/torch-writer.js')
    const {readZipIndex} = await import('../src/formats/zip-reader.js')
    const dir = mkdtempSync(join(tmpdir(), 'glmtool-crcw-'))
    try {
      const data = createHash('sha512').update('seed').digest()
      const big = Buffer.alloc(6 << 20)
      for (let o = 0; o < big.length; o += data.length) data.copy(big, o)
      const f = join(dir, 'big.bin')
      await writeTorchCheckpoint(f, [memoryTensor('w', 'F32', [big.length / 4], big), memoryTensor('v', 'F32', [big.length / 4], big)])
      const read = async (path: string) => {
        const ck = await TorchCheckpoint.open(path)
        try {
          const parts: Buffer[] = []
          // 1 MB pieces: each goes to the worker (crc-worker.ts INLINE_BYTES).
          for (const t of ck.tensors) for await (const c of t.chunks(1 << 20)) parts.push(Buffer.from(c))
          return Buffer.concat(parts)
        } finally {
          await ck.close()
        }
      }
      expect((await read(f)).equals(Buffer.concat([big, big]))).toBe(true)
      const rec = [...(await readZipIndex(f)).values()].find(e => e.name.endsWith('/data/1'))!
      const bytes = readFileSync(f)
      bytes[rec.dataOffset + (5 << 20) + 3] ^= 0x80 // in the sixth piece of the second tensor
      const bad = join(dir, 'bad.bin')
      writeFileSync(bad, bytes)
      await expect(read(bad)).rejects.toThrow(/tensor v: record big\/data\/1 fails its CRC-32 check/)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('verifies CRC-32 while streaming: a flipped byte in a tensor or in data.pkl is refused', async () => {
    const {mkdtempSync, writeFileSync, rmSync} = await import('node:fs')
    const {tmpdir} = await import('node:os')
    const dir = mkdtempSync(join(tmpdir(), 'glmtool-crc-'))
    try {
      const src = join(FIX, 'tiny-v2/pytorch_model.bin')
      const good = readFileSync(src)
      const ck = await TorchCheckpoint.open(src)
      const t = ck.tensors.find(x => x.name === 'transformer.encoder.layers.0.mlp.dense_4h_to_h.weight')!
      const {readZipIndex} = await import('../src/formats/zip-reader.js')
      const rec = [...(await readZipIndex(src)).values()].find(e => e.name.endsWith(`/data/${t.ref.storage.key}`))!
      const pkl = [...(await readZipIndex(src)).values()].find(e => e.name.endsWith('/data.pkl'))!
      await ck.close()
      const flipped = Buffer.from(good)
      flipped[rec.dataOffset + 100] ^= 0x01
      const bad = join(dir, 'tensor.bin')
      writeFileSync(bad, flipped)
      await refusal(bad, /tensor transformer\.encoder\.layers\.0\.mlp\.dense_4h_to_h\.weight: record .*fails its CRC-32 check/)
      // The other tensors are intact and still read.
      const ck2 = await TorchCheckpoint.open(bad)
      await expect(readTensor(ck2.tensors.find(x => x.name === 'transformer.encoder.final_layernorm.weight')!)).resolves.toBeInstanceOf(Buffer)
      await ck2.close()
      // data.pkl: flip a byte of a string inside it (the pickle still parses, the CRC does not match).
      const p2 = Buffer.from(good)
      const at = good.indexOf('transformer', pkl.dataOffset)
      p2[at] = 'T'.charCodeAt(0)
      const badPkl = join(dir, 'pkl.bin')
      writeFileSync(badPkl, p2)
      await refusal(badPkl, /record .*data\.pkl fails its CRC-32 check/)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })
})
