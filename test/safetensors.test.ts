import {mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile} from 'node:fs/promises'
import {statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {SafetensorsError, UsageError} from '../src/errors.js'
import {DTYPE_SIZE, type DType} from '../src/formats/dtype.js'
import {MAX_HEADER_BYTES, openSafetensors, openSafetensorsModel} from '../src/formats/safetensors-reader.js'
import {encodeSafetensorsHeader, planShards, writeSafetensorsFile, writeSafetensorsModel} from '../src/formats/safetensors-writer.js'
import {parseSize} from '../src/formats/size.js'
import {memoryTensor, readTensor, type TensorEntry} from '../src/formats/tensor.js'
import {ALL_DTYPES, sampleBytes} from './helpers/safetensors-interop.js'

let root: string
let counter = 0
beforeAll(async () => { root = await mkdtemp(join(tmpdir(), 'glmtool-st-')) })
afterAll(async () => { await rm(root, {recursive: true, force: true}) })

function tmpPath(name = 'f.safetensors'): string {
  return join(root, `${counter++}-${name}`)
}

/** A file from raw parts: N (default: the header's length), header text, data bytes. */
async function rawFile(header: string | Buffer, data: Buffer = Buffer.alloc(0), n?: bigint): Promise<string> {
  const h = typeof header === 'string' ? Buffer.from(header, 'utf8') : header
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(n ?? BigInt(h.length))
  const p = tmpPath()
  await writeFile(p, Buffer.concat([len, h, data]))
  return p
}

/** Expect openSafetensors(path) to fail with the given code, naming the file (and tensor). */
async function expectError(path: string, code: string, tensor?: string): Promise<SafetensorsError> {
  const err = await openSafetensors(path).then(() => undefined, (e: unknown) => e)
  expect(err).toBeInstanceOf(SafetensorsError)
  const e = err as SafetensorsError
  expect(e.code).toBe(`safetensors-${code}`)
  expect(e.message).toContain(path)
  if (tensor !== undefined) expect(e.message).toContain(`"${tensor}"`)
  return e
}

function entry(dtype: DType, shape: number[], begin: number, end?: number): object {
  const size = shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[dtype]
  return {dtype, shape, data_offsets: [begin, end ?? begin + size]}
}

describe('safetensors reader on hand-made bytes', () => {
  it('parses a byte-exact file built from the spec, in offset order, with padding', async () => {
    // Header lists "b" first but its bytes come second; JSON then 3 spaces of padding.
    const json = '{"b":{"dtype":"I16","shape":[3],"data_offsets":[8,14]},"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    const header = json + '   '
    const data = Buffer.from([
      0x00, 0x00, 0x80, 0x3f, // 1.0f
      0x00, 0x00, 0x00, 0xc0, // -2.0f
      0x01, 0x00, 0xff, 0xff, 0x00, 0x80, // 1, -1, -32768
    ])
    const p = await rawFile(header, data)
    const f = await openSafetensors(p)
    expect(f.headerSize).toBe(header.length)
    expect(f.dataStart).toBe(8 + header.length)
    expect(f.metadata).toEqual({format: 'pt'})
    expect(f.tensors.map(t => t.name)).toEqual(['a', 'b'])
    expect(f.tensors.map(t => t.dataOffsets)).toEqual([[0, 8], [8, 14]])
    const a = await readTensor(f.tensors[0])
    expect([a.readFloatLE(0), a.readFloatLE(4)]).toEqual([1, -2])
    const b = await readTensor(f.tensors[1])
    expect([b.readInt16LE(0), b.readInt16LE(2), b.readInt16LE(4)]).toEqual([1, -1, -32768])
    expect(f.tensors[1].shape).toEqual([3])
    expect(f.tensors[1].dtype).toBe('I16')
  })

  it('accepts an empty header {} with no data and zero-size tensors sharing an offset', async () => {
    expect((await openSafetensors(await rawFile('{}'))).tensors).toEqual([])
    const p = await rawFile(JSON.stringify({z1: entry('F32', [0, 4], 4), a: entry('U8', [4], 0), z2: entry('F16', [0], 4)}), Buffer.from([1, 2, 3, 4]))
    const f = await openSafetensors(p)
    expect(f.tensors.map(t => t.name)).toEqual(['a', 'z1', 'z2'])
    expect(await readTensor(f.tensors[1])).toHaveLength(0)
    expect(f.metadata).toBeUndefined()
  })

  it('reader chunks are at most the size asked for and whole elements', async () => {
    const data = sampleBytes('I64', 1000, 3)
    const p = await rawFile(JSON.stringify({x: entry('I64', [1000], 0)}), data)
    const [t] = (await openSafetensors(p)).tensors
    for (const [max, piece] of [[1001, 1000], [3, 8], [8000, 8000], [1 << 20, 8000]]) {
      const sizes: number[] = []
      const parts: Buffer[] = []
      for await (const c of t.chunks(max)) { sizes.push(c.length); parts.push(Buffer.from(c)) }
      expect(Math.max(...sizes)).toBe(piece)
      expect(sizes.every(s => s % 8 === 0)).toBe(true)
      expect(Buffer.concat(parts).equals(data)).toBe(true)
    }
  })

  describe('rejects every rule breach with a named error', () => {
    it('header-too-large: N = 2^60 and N just over 100 MB', async () => {
      await expectError(await rawFile('{}', Buffer.alloc(0), 1n << 60n), 'header-too-large')
      await expectError(await rawFile('{}', Buffer.alloc(0), BigInt(MAX_HEADER_BYTES + 1)), 'header-too-large')
      await expectError(await rawFile('{}', Buffer.alloc(0), 0xffffffffffffffffn), 'header-too-large')
    })

    it('incomplete: shorter than 8 bytes, N past the end, tensor past the end', async () => {
      const tiny = tmpPath()
      await writeFile(tiny, Buffer.from([2, 0, 0]))
      await expectError(tiny, 'incomplete')
      await expectError(await rawFile('{}', Buffer.alloc(0), 1000n), 'incomplete')
      // Truncated data: F32[4] needs 16 bytes, 10 remain.
      await expectError(await rawFile(JSON.stringify({w: entry('F32', [4], 0)}), Buffer.alloc(10)), 'incomplete', 'w')
    })

    it('invalid-header: not UTF-8, not JSON, not an object, entry not an object, leading junk', async () => {
      await expectError(await rawFile(Buffer.from([0x7b, 0xff, 0xfe, 0x7d])), 'invalid-header')
      await expectError(await rawFile('{"a": '), 'invalid-header')
      await expectError(await rawFile('[1, 2]'), 'invalid-header')
      await expectError(await rawFile('  {}'), 'invalid-header')
      await expectError(await rawFile('{"a": 5}'), 'invalid-header', 'a')
      await expectError(await rawFile('{} x'), 'invalid-header')
    })

    it('unknown-dtype', async () => {
      await expectError(await rawFile(JSON.stringify({t: {dtype: 'F8_E4M3', shape: [1], data_offsets: [0, 1]}}), Buffer.alloc(1)), 'unknown-dtype', 't')
      await expectError(await rawFile(JSON.stringify({t: {shape: [1], data_offsets: [0, 1]}}), Buffer.alloc(1)), 'unknown-dtype', 't')
      await expectError(await rawFile(JSON.stringify({t: {dtype: 'f32', shape: [1], data_offsets: [0, 4]}}), Buffer.alloc(4)), 'unknown-dtype', 't')
    })

    it('invalid-shape', async () => {
      for (const shape of [[-1], [1.5], '3', [null], [2 ** 53], undefined]) {
        await expectError(await rawFile(JSON.stringify({s: {dtype: 'U8', shape, data_offsets: [0, 1]}}), Buffer.alloc(1)), 'invalid-shape', 's')
      }
    })

    it('invalid-offsets', async () => {
      for (const off of [[4, 0], [0], [0, '4'], [-1, 3], [0, 4, 8], [0.5, 4.5], undefined]) {
        await expectError(await rawFile(JSON.stringify({o: {dtype: 'F32', shape: [1], data_offsets: off}}), Buffer.alloc(4)), 'invalid-offsets', 'o')
      }
    })

    it('size-mismatch: span != numel x dtype size, also when numel overflows 2^53', async () => {
      await expectError(await rawFile(JSON.stringify({m: entry('F32', [2], 0, 4)}), Buffer.alloc(4)), 'size-mismatch', 'm')
      await expectError(await rawFile(JSON.stringify({m: entry('BF16', [3], 0, 8)}), Buffer.alloc(8)), 'size-mismatch', 'm')
      // 2^27 x 2^27 x 2 bytes = 2^55, past Number's exact range: a clean error, no overflow.
      await expectError(await rawFile(JSON.stringify({m: {dtype: 'F16', shape: [2 ** 27, 2 ** 27], data_offsets: [0, 0]}})), 'size-mismatch', 'm')
    })

    it('overlap', async () => {
      const p = await rawFile(JSON.stringify({a: entry('F32', [2], 0), b: entry('F32', [2], 4)}), Buffer.alloc(12))
      const e = await expectError(p, 'overlap', 'b')
      expect(e.message).toContain('"a"')
      // Identical ranges overlap too.
      await expectError(await rawFile(JSON.stringify({a: entry('U8', [4], 0), b: entry('U8', [4], 0)}), Buffer.alloc(4)), 'overlap')
    })

    it('gap: between tensors, before the first, after the last', async () => {
      await expectError(await rawFile(JSON.stringify({a: entry('F32', [1], 0), b: entry('F32', [1], 8)}), Buffer.alloc(12)), 'gap', 'b')
      await expectError(await rawFile(JSON.stringify({a: entry('F32', [1], 4)}), Buffer.alloc(8)), 'gap', 'a')
      await expectError(await rawFile(JSON.stringify({a: entry('F32', [1], 0)}), Buffer.alloc(8)), 'gap')
      await expectError(await rawFile('{}', Buffer.alloc(1)), 'gap')
    })

    it('invalid-metadata', async () => {
      for (const m of [{k: 1}, {k: null}, {k: {x: 'y'}}, 'text', null, ['a']]) {
        await expectError(await rawFile(JSON.stringify({__metadata__: m})), 'invalid-metadata')
      }
    })

    it('a file that does not exist', async () => {
      await expectError(join(root, 'nope.safetensors'), 'not-found')
    })
  })
})

describe('safetensors writer', () => {
  it('writes the exact bytes the spec describes (independent of the reader)', async () => {
    const p = tmpPath()
    const data = Buffer.from([0x00, 0x3c, 0x00, 0xc0]) // f16 1.0, -2.0
    await writeSafetensorsFile(p, [memoryTensor('w', 'F16', [2], data)], {format: 'pt'})
    const json = '{"__metadata__":{"format":"pt"},"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}'
    const n = Math.ceil((8 + json.length) / 8) * 8 - 8
    const expected = Buffer.alloc(8 + n + 4, 0x20)
    expected.writeBigUInt64LE(BigInt(n))
    expected.write(json, 8, 'utf8')
    data.copy(expected, 8 + n)
    expect((await readFile(p)).equals(expected)).toBe(true)
    expect((8 + n) % 8).toBe(0)
  })

  it('round-trips every dtype, a 0-d scalar and zero-size tensors, with metadata', async () => {
    const tensors: TensorEntry[] = []
    ALL_DTYPES.forEach((dt, i) => {
      for (const shape of [[2, 3, 5], [], [0], [4, 0, 2]]) {
        const n = shape.reduce((a, b) => a * b, 1)
        tensors.push(memoryTensor(`${dt}.${shape.join('x') || 'scalar'}`, dt, shape, sampleBytes(dt, n, i + 1)))
      }
    })
    // Integer-like names must keep their place (JS objects would move them first).
    tensors.push(memoryTensor('10', 'U8', [1], Buffer.from([7])))
    const p = tmpPath()
    const metadata = {format: 'pt', source: 'test', 'ключ': 'значение'}
    const size = await writeSafetensorsFile(p, tensors, metadata)
    expect(size).toBe((await stat(p)).size)
    const f = await openSafetensors(p)
    expect(f.dataStart % 8).toBe(0)
    expect(f.metadata).toEqual(metadata)
    expect(f.tensors.map(t => t.name)).toEqual(tensors.map(t => t.name))
    for (const [i, t] of f.tensors.entries()) {
      expect(t.dtype).toBe(tensors[i].dtype)
      expect(t.shape).toEqual(tensors[i].shape)
      expect((await readTensor(t)).equals(await readTensor(tensors[i]))).toBe(true)
    }
    expect(f.tensors.find(t => t.name === 'BF16.scalar')!.dataOffsets[1] - f.tensors.find(t => t.name === 'BF16.scalar')!.dataOffsets[0]).toBe(2)
  })

  it('streams a 40 MB tensor fed in 1 MB chunks, writing each before pulling the next', async () => {
    const MB = 1 << 20
    const p = tmpPath()
    const headerLen = encodeSafetensorsHeader([{name: 'big', dtype: 'U8', shape: [40 * MB]}]).length
    const pulledAt: number[] = []
    const reused = Buffer.alloc(MB)
    const big: TensorEntry = {
      name: 'big', dtype: 'U8', shape: [40 * MB], file: '<generator>',
      async *chunks() {
        for (let k = 0; k < 40; k++) {
          // The writer must have written chunk k-1 already: the file's size proves it.
          pulledAt.push(statSync(p).size - headerLen)
          reused.fill(k + 1) // reuse one buffer: a writer that held pieces would write 40s
          reused.writeUInt32LE(k, 0)
          yield reused
        }
      },
    }
    const progress: number[] = []
    await writeSafetensorsFile(p, [big], undefined, {onProgress: b => progress.push(b)})
    expect(pulledAt).toEqual(Array.from({length: 40}, (_, k) => k * MB))
    expect(progress).toHaveLength(40)
    expect(progress.at(-1)).toBe(40 * MB)

    const [t] = (await openSafetensors(p)).tensors
    let k = 0
    for await (const c of t.chunks(MB)) {
      expect(c.length).toBe(MB)
      expect(c.readUInt32LE(0)).toBe(k)
      expect(c[MB - 1]).toBe(k + 1)
      k++
    }
    expect(k).toBe(40)
  })

  it('rejects a tensor whose stream yields too few or too many bytes, naming it', async () => {
    for (const got of [7, 9]) {
      const t = memoryTensor('short', 'F16', [4], Buffer.alloc(got))
      const err = await writeSafetensorsFile(tmpPath(), [t]).then(() => undefined, (e: unknown) => e)
      expect(err).toBeInstanceOf(SafetensorsError)
      expect((err as SafetensorsError).code).toBe('safetensors-size-mismatch')
      expect((err as SafetensorsError).message).toContain('"short"')
    }
  })

  it('rejects duplicate names, non-string metadata and a tensor named __metadata__', async () => {
    const a = memoryTensor('a', 'U8', [1], Buffer.from([1]))
    await expect(writeSafetensorsFile(tmpPath(), [a, a])).rejects.toMatchObject({code: 'safetensors-duplicate-tensor'})
    await expect(writeSafetensorsFile(tmpPath(), [a], {k: 1} as unknown as Record<string, string>)).rejects.toMatchObject({code: 'safetensors-invalid-metadata'})
    await expect(writeSafetensorsFile(tmpPath(), [memoryTensor('__metadata__', 'U8', [1], Buffer.from([1]))])).rejects.toMatchObject({code: 'safetensors-invalid-name'})
  })
})

describe('sharded models', () => {
  const spec = (name: string, bytes: number) => ({name, dtype: 'U8' as DType, shape: [bytes]})

  it('plans shards: close before exceeding, oversized tensor alone, order kept', () => {
    const plan = planShards([spec('a', 100), spec('b', 100), spec('c', 250), spec('d', 50), spec('e', 0)], 200)
    expect(plan.map(s => s.tensors.map(t => t.name))).toEqual([['a', 'b'], ['c'], ['d', 'e']])
    expect(plan.map(s => s.file)).toEqual(['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors'])
    expect(plan.map(s => s.bytes)).toEqual([200, 250, 50])
    expect(planShards([spec('a', 300), spec('b', 1)], 200).map(s => s.tensors.length)).toEqual([1, 1])
    expect(planShards([spec('a', 1), spec('b', 1)]).map(s => s.file)).toEqual(['model.safetensors'])
    expect(planShards([])).toHaveLength(1)
  })

  it('writes shards and an index that read back as one model', async () => {
    const dir = tmpPath('model')
    await mkdir(dir)
    const tensors = [['emb', 'F16', [10, 6]], ['l0.w', 'F32', [8, 4]], ['l0.b', 'F32', [8]], ['l1.w', 'BF16', [40, 4]], ['head', 'I8', [12]]]
      .map(([name, dt, shape], i) => memoryTensor(name as string, dt as DType, shape as number[],
        sampleBytes(dt as DType, (shape as number[]).reduce((a, b) => a * b, 1), 50 + i)))
    const progress: number[] = []
    const out = await writeSafetensorsModel(dir, tensors, {maxShardBytes: 160, metadata: {format: 'pt', tool: 'glmtool'}, onProgress: b => progress.push(b)})
    // 120 | 128+32 | 320 | 12 bytes
    expect(out.shards.map(s => s.tensors.map(t => t.name))).toEqual([['emb'], ['l0.w', 'l0.b'], ['l1.w'], ['head']])
    expect(out.totalBytes).toBe(120 + 128 + 32 + 320 + 12)
    expect(progress.at(-1)).toBe(out.totalBytes)
    expect((await readdir(dir)).sort()).toEqual([
      'model-00001-of-00004.safetensors', 'model-00002-of-00004.safetensors', 'model-00003-of-00004.safetensors',
      'model-00004-of-00004.safetensors', 'model.safetensors.index.json'])
    const index = JSON.parse(await readFile(join(dir, 'model.safetensors.index.json'), 'utf8'))
    expect(index).toEqual({metadata: {total_size: 612}, weight_map: {
      emb: 'model-00001-of-00004.safetensors', 'l0.w': 'model-00002-of-00004.safetensors', 'l0.b': 'model-00002-of-00004.safetensors',
      'l1.w': 'model-00003-of-00004.safetensors', head: 'model-00004-of-00004.safetensors'}})

    for (const s of out.shards) expect((await openSafetensors(join(dir, s.file))).metadata).toEqual({format: 'pt', tool: 'glmtool'})
    const m = await openSafetensorsModel(dir)
    expect(m.files).toHaveLength(4)
    expect(m.indexMetadata).toEqual({total_size: 612})
    expect(m.tensors.map(t => t.name)).toEqual(tensors.map(t => t.name))
    for (const [i, t] of m.tensors.entries()) expect((await readTensor(t)).equals(await readTensor(tensors[i]))).toBe(true)
  })

  it('writes model.safetensors alone when one shard suffices; opens a dir or a file', async () => {
    const dir = tmpPath('single')
    await mkdir(dir)
    const out = await writeSafetensorsModel(dir, [memoryTensor('x', 'I32', [3], Buffer.alloc(12, 5))], {metadata: {format: 'pt'}})
    expect(out.files).toEqual(['model.safetensors'])
    expect(await readdir(dir)).toEqual(['model.safetensors'])
    expect((await openSafetensorsModel(dir)).tensors.map(t => t.name)).toEqual(['x'])
    expect((await openSafetensorsModel(join(dir, 'model.safetensors'))).metadata).toEqual({format: 'pt'})
  })

  it('index-mismatch: missing file, tensor absent from its file, unlisted tensor', async () => {
    const dir = tmpPath('bad-index')
    await mkdir(dir)
    await writeSafetensorsModel(dir, [memoryTensor('a', 'U8', [4], Buffer.alloc(4)), memoryTensor('b', 'U8', [4], Buffer.alloc(4))], {maxShardBytes: 4})
    const indexPath = join(dir, 'model.safetensors.index.json')
    const good = await readFile(indexPath, 'utf8')
    const expectIndexError = async (weightMap: Record<string, string>, code: string, ...names: string[]) => {
      await writeFile(indexPath, JSON.stringify({metadata: {}, weight_map: weightMap}))
      const err = await openSafetensorsModel(dir).then(() => undefined, (e: unknown) => e)
      expect(err).toBeInstanceOf(SafetensorsError)
      expect((err as SafetensorsError).code).toBe(`safetensors-${code}`)
      for (const n of names) expect((err as SafetensorsError).message).toContain(n)
    }
    const f1 = 'model-00001-of-00002.safetensors'
    const f2 = 'model-00002-of-00002.safetensors'
    await expectIndexError({a: f1, b: 'model-00009-of-00009.safetensors'}, 'index-mismatch', 'model-00009-of-00009.safetensors', '"b"')
    await expectIndexError({a: f1, b: f1}, 'index-mismatch', '"b"', f1)
    await writeSafetensorsFile(join(dir, 'extra.safetensors'), [memoryTensor('a', 'U8', [1], Buffer.from([1])), memoryTensor('c', 'U8', [1], Buffer.from([2]))])
    await expectIndexError({a: 'extra.safetensors', b: f2}, 'index-mismatch', '"c"', 'extra.safetensors')
    await expectIndexError({a: f1, b: '../outside.safetensors'}, 'invalid-index', '"b"')
    await writeFile(indexPath, '{"weight_map": 3}')
    await expect(openSafetensorsModel(dir)).rejects.toMatchObject({code: 'safetensors-invalid-index'})
    await writeFile(indexPath, good)
    expect((await openSafetensorsModel(dir)).tensors.map(t => t.name)).toEqual(['a', 'b'])
  })

  it('not-found: empty directory or missing path', async () => {
    const dir = tmpPath('empty')
    await mkdir(dir)
    await expect(openSafetensorsModel(dir)).rejects.toMatchObject({code: 'safetensors-not-found'})
    await expect(openSafetensorsModel(join(dir, 'missing'))).rejects.toMatchObject({code: 'safetensors-not-found'})
  })
})

describe('parseSize', () => {
  it('parses decimal and binary units as transformers does', () => {
    expect(parseSize('4GB')).toBe(4_000_000_000)
    expect(parseSize('500MB')).toBe(500_000_000)
    expect(parseSize('2GiB')).toBe(2 * 2 ** 30)
    expect(parseSize('123')).toBe(123)
    expect(parseSize('1.1GB')).toBe(1_100_000_000)
    expect(parseSize('10kib')).toBe(10240)
    expect(parseSize(' 7 mb ')).toBe(7_000_000)
    expect(parseSize('3B')).toBe(3)
  })

  it('rejects garbage with a UsageError naming the input', () => {
    for (const s of ['', 'abc', '4XB', '-1', '1.5', '0.5B', 'GB', '1e9', '4 G B', '99999999999TB']) {
      expect(() => parseSize(s)).toThrow(UsageError)
      expect(() => parseSize(s)).toThrow(`"${s}"`)
    }
  })
})

describe('hostile safetensors input (issue 11)', () => {
  const e16 = (begin: number) => entry('F16', [1], begin)

  it('refuses duplicate keys in the header JSON, which JSON.parse would silently merge', async () => {
    // Two "w" entries: JSON.parse keeps the second; a reader that keeps the first sees other bytes.
    const dup = `{"w":${JSON.stringify(e16(0))},"w":${JSON.stringify(entry('F16', [2], 0))}}`
    expect(Object.keys(JSON.parse(dup))).toEqual(['w'])
    const e = await expectError(await rawFile(dup, Buffer.alloc(4)), 'duplicate-key')
    expect(e.message).toMatch(/the key "w" twice/)
    // An escape spelling of the same key, and a duplicate field inside one entry.
    await expectError(await rawFile(`{"a":${JSON.stringify(e16(0))},"\\u0061":${JSON.stringify(e16(0))}}`, Buffer.alloc(2)), 'duplicate-key')
    const nested = await expectError(await rawFile('{"w":{"dtype":"F16","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', Buffer.alloc(4)), 'duplicate-key')
    expect(nested.message).toMatch(/"w\.dtype" twice/)
  })

  it('does not mistake repeated strings for repeated keys', async () => {
    const header = `{"__metadata__":{"note":"\\"w\\":","other":"w"},"w":${JSON.stringify(e16(0))},"v":${JSON.stringify(e16(2))}}`
    const f = await openSafetensors(await rawFile(header, Buffer.alloc(4)))
    expect(f.tensors.map(t => t.name)).toEqual(['w', 'v'])
  })

  it('caps the index size with a clear message instead of "Invalid string length"', async () => {
    const dir = tmpPath('big-index')
    await mkdir(dir)
    const index = join(dir, 'model.safetensors.index.json')
    await writeFile(index, '{}')
    // Sparse: 600 MB claimed, nothing written.
    const {truncateSync} = await import('node:fs')
    truncateSync(index, 600 * 1024 * 1024)
    const err = await openSafetensorsModel(dir).then(() => undefined, (e: Error) => e)
    expect(err).toBeInstanceOf(SafetensorsError)
    expect(err!.message).toMatch(new RegExp(`^${index.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: 629145600 bytes, over the \\d+-byte limit`))
  })

  it('names the path in system errors: EISDIR on read, ENOSPC on write', async () => {
    const {describeError} = await import('../src/cli/base-command.js')
    const dir = tmpPath('dir.safetensors')
    await mkdir(dir)
    const rd = await openSafetensors(dir).then(() => undefined, (e: Error) => e)
    expect(describeError(rd!)).toBe(`${dir}: is a directory (EISDIR)`)
    const t = memoryTensor('w', 'F32', [1024], Buffer.alloc(4096))
    const wr = await writeSafetensorsFile('/dev/full', [t]).then(() => undefined, (e: Error) => e)
    expect(wr, 'writing to /dev/full must fail').toBeInstanceOf(Error)
    expect(describeError(wr!)).toBe('/dev/full: disk full (ENOSPC)')
  })
})
