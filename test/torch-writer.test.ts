import {execFileSync, spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {memoryTensor, readTensor} from '../src/formats/tensor.js'
import {TorchCheckpoint} from '../src/formats/torch-checkpoint.js'
import {writeTorchCheckpoint} from '../src/formats/torch-writer.js'
import {readZipIndex} from '../src/formats/zip-reader.js'

const PY = '/usr/bin/python3'
const hasTorch = spawnSync(PY, ['-c', 'import torch'], {stdio: 'ignore'}).status === 0
if (!hasTorch) console.warn('torch-writer: python3-torch not installed, torch.load cross-checks skipped (.ci/run installs it)')

const dir = mkdtempSync(join(tmpdir(), 'glmtool-tw-'))
afterAll(() => rmSync(dir, {recursive: true, force: true}))

function f32(values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 4)
  values.forEach((v, i) => b.writeFloatLE(v, i * 4))
  return b
}

const tensors = [
  memoryTensor('w', 'F32', [2, 3], f32([0, 1.5, -2, 3.25, 4, -5.5])),
  memoryTensor('q', 'I8', [4], Buffer.from([1, 255, 127, 128])),
  memoryTensor('h', 'F16', [2], Buffer.from([0x00, 0x3c, 0x00, 0xc0])), // 1.0, -2.0
  memoryTensor('scalar', 'I64', [], Buffer.from([7, 0, 0, 0, 0, 0, 0, 0])),
  memoryTensor('empty', 'F32', [0, 3], Buffer.alloc(0)),
]

describe('torch checkpoint writer', () => {
  it('aligns every record to 64 bytes and reads back byte for byte', async () => {
    const path = join(dir, 'a.bin')
    await writeTorchCheckpoint(path, tensors)
    const zip = await readZipIndex(path)
    expect([...zip.keys()]).toEqual(['a/data.pkl', 'a/byteorder', 'a/data/0', 'a/data/1', 'a/data/2', 'a/data/3', 'a/data/4', 'a/version'])
    for (const e of zip.values()) expect(e.dataOffset % 64, e.name).toBe(0)
    const ck = await TorchCheckpoint.open(path)
    for (const [i, t] of ck.tensors.entries()) {
      expect(t.name).toBe(tensors[i].name)
      expect(t.dtype).toBe(tensors[i].dtype)
      expect([...t.shape]).toEqual([...tensors[i].shape])
      expect((await readTensor(t)).equals(await readTensor(tensors[i]))).toBe(true)
    }
    await ck.close()
  })

  it('writes zip64 records that yauzl and Python zipfile read', async () => {
    const path = join(dir, 'z64.bin')
    await writeTorchCheckpoint(path, tensors, undefined, true)
    const ck = await TorchCheckpoint.open(path)
    expect(ck.tensors.map(t => t.name)).toEqual(tensors.map(t => t.name))
    expect((await readTensor(ck.tensors[0])).equals(await readTensor(tensors[0]))).toBe(true)
    await ck.close()
    const names = execFileSync(PY, ['-c', 'import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(",".join(z.namelist()))', path]).toString().trim()
    expect(names.split(',')).toContain('z64/data/0')
  })

  it.skipIf(!hasTorch)('is read by torch.load, also with weights_only=True', () => {
    const path = join(dir, 'a.bin')
    const out = execFileSync(PY, ['-c', `
import sys, torch, json
d = torch.load(sys.argv[1], map_location='cpu', weights_only=True)
print(json.dumps({k: [str(v.dtype), list(v.shape), v.flatten().tolist()] for k, v in d.items()}))`, path]).toString()
    expect(JSON.parse(out)).toEqual({
      w: ['torch.float32', [2, 3], [0, 1.5, -2, 3.25, 4, -5.5]],
      q: ['torch.int8', [4], [1, -1, 127, -128]],
      h: ['torch.float16', [2], [1, -2]],
      scalar: ['torch.int64', [], [7]],
      empty: ['torch.float32', [0, 3], []],
    })
  })
})
