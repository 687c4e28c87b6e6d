import {describe, expect, it} from 'vitest'
import {PyDict, unpickle} from '../src/formats/pickle.js'
import {readStateDict} from '../src/formats/torch-pickle.js'

const hooks = {
  resolveGlobal(m: string, n: string) {
    throw Object.assign(new Error(`forbidden ${m}.${n}`), {code: 'pickle-forbidden'})
  },
  persistentLoad() {
    throw new Error('no pid')
  },
}

const b = (...parts: (number[] | string)[]) => Buffer.concat(parts.map(p => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))))

describe('restricted unpickler', () => {
  it('builds dicts, lists, tuples, ints, strings and memo references', () => {
    // {'a': [1, 300, -5], 'b': ('x', 'x')} with the second 'x' fetched from the memo
    const data = b([0x80, 2, 0x7d, 0x28], [0x58, 1, 0, 0, 0], 'a', [0x5d, 0x28, 0x4b, 1, 0x4d, 44, 1, 0x4a, 0xfb, 0xff, 0xff, 0xff, 0x65],
      [0x58, 1, 0, 0, 0], 'b', [0x8c, 1], 'x', [0x71, 0, 0x68, 0, 0x86, 0x75, 0x2e])
    const d = unpickle(data, hooks) as PyDict
    expect(d).toBeInstanceOf(PyDict)
    expect(d.get('a')).toEqual([1, 300, -5])
    expect([...(d.get('b') as unknown[])]).toEqual(['x', 'x'])
  })

  it('refuses GLOBAL and STACK_GLOBAL through the hook before anything runs', () => {
    expect(() => unpickle(b([0x80, 2], 'cos\nsystem\n', [0x2e]), hooks)).toThrow(/forbidden os\.system/)
    expect(() => unpickle(b([0x80, 4, 0x8c, 2], 'os', [0x8c, 6], 'system', [0x93, 0x2e]), hooks)).toThrow(/forbidden os\.system/)
  })

  it('refuses the object-building opcodes INST and OBJ outright', () => {
    expect(() => unpickle(b([0x28], 'ios\nsystem\n', [0x2e]), hooks)).toThrow(/not allowed/)
    expect(() => unpickle(b([0x28, 0x6f, 0x2e]), hooks)).toThrow(/not allowed/)
  })

  it('reports truncation instead of reading past the end', () => {
    expect(() => unpickle(b([0x80, 2, 0x58, 100, 0, 0, 0], 'abc'), hooks)).toThrow(/truncated/)
    expect(() => unpickle(b([0x80, 2, 0x7d]), hooks)).toThrow(/truncated/)
  })

  it('torch allowlist refuses non-state-dict globals by name', () => {
    expect(() => readStateDict(b([0x80, 2], 'csubprocess\nPopen\n', [0x2e]), 'x.bin')).toThrow(/refusing pickle global subprocess\.Popen/)
    expect(() => readStateDict(b([0x80, 2], 'ctorch\nload\n', [0x2e]), 'x.bin')).toThrow(/refusing pickle global torch\.load/)
  })
})

describe('hostile pickles: bounded time and memory, one-line errors naming the file', () => {
  const SRC = 'hostile/data.pkl'
  const run = (data: Buffer) => () => readStateDict(data, SRC)
  const oneLine = (f: () => unknown, re: RegExp) => {
    let err: Error | undefined
    try {
      f()
    } catch (error) {
      err = error as Error
    }
    expect(err, 'must throw').toBeDefined()
    expect(err!.message).toMatch(re)
    expect(err!.message.startsWith(`${SRC}:`)).toBe(true)
    expect(err!.message).not.toMatch(/\n|Maximum call stack|Map maximum size/)
  }

  it('refuses a "billion laughs" of 48 dict levels sharing references, at once', () => {
    // level i = {'x': level i-1, 'y': level i-1}: 2^48 leaves if expanded. ~1 KB.
    const parts: (number[] | string)[] = [[0x80, 2, 0x7d, 0x71, 0]]
    for (let i = 1; i <= 48; i++) parts.push([0x7d, 0x71, i, 0x28, 0x8c, 1], 'x', [0x68, i - 1, 0x8c, 1], 'y', [0x68, i - 1, 0x75])
    parts.push([0x2e])
    const data = b(...parts)
    expect(data.length).toBeLessThan(2048)
    const t0 = Date.now()
    oneLine(run(data), /memo GET of a container that is already referenced/)
    expect(Date.now() - t0).toBeLessThan(1000)
  })

  it('refuses self-referencing dicts and lists (GET and DUP)', () => {
    // d = {}; d['a'] = d
    oneLine(run(b([0x80, 2, 0x7d, 0x71, 0, 0x8c, 1], 'a', [0x68, 0, 0x73, 0x2e])), /already referenced/)
    // l = []; l.append(l) through DUP
    oneLine(run(b([0x80, 2, 0x5d, 0x32, 0x61, 0x2e])), /DUP of a container/)
  })

  it('refuses 1e5-deep nesting without overflowing the stack', () => {
    const n = 100_000
    const data = Buffer.concat([Buffer.from([0x80, 2, 0x7d]), Buffer.alloc(n, 0x5d), Buffer.alloc(n - 1, 0x61), Buffer.from([0x2e])])
    oneLine(run(data), /nested deeper than 100 levels/)
    // The same depth through MARK ... LIST.
    const marks = Buffer.concat([Buffer.from([0x80, 2]), Buffer.from('('.repeat(n) + 'l'.repeat(n), 'latin1'), Buffer.from([0x2e])])
    oneLine(run(marks), /more than 10000 open MARKs/)
  })

  it('refuses 17M memo entries before Map runs out', () => {
    // NONE, then MEMOIZE 17M times: one byte per memo entry.
    const data = Buffer.concat([Buffer.from([0x80, 4, 0x4e]), Buffer.alloc(17_000_000, 0x94), Buffer.from([0x2e])])
    oneLine(run(data), /more than 4194304 memo entries/)
  })

  it('refuses too many container entries, and appends a million items without a stack overflow', () => {
    // One list, APPENDS of 1e6 NONEs: legal, and must not overflow push(...items).
    const million = Buffer.concat([Buffer.from([0x80, 2, 0x7d, 0x8c, 1]), Buffer.from('k'), Buffer.from([0x5d, 0x28]), Buffer.alloc(1_000_000, 0x4e), Buffer.from([0x65, 0x73, 0x2e])])
    const {ignored} = readStateDict(million, SRC)
    expect(ignored).toEqual(['k'])
    const tooMany = Buffer.concat([Buffer.from([0x80, 2, 0x5d, 0x28]), Buffer.alloc((1 << 22) + 1, 0x4e), Buffer.from([0x65, 0x2e])])
    oneLine(run(tooMany), /more than 4194304 container entries/)
  })

  it('still shares strings, tensors and storages through the memo (legal in torch.save output)', () => {
    // {'a': 'v', 'b': 'v'} where the second 'v' is a memo GET of a string.
    const d = unpickle(b([0x80, 2, 0x7d, 0x28, 0x8c, 1], 'a', [0x8c, 1], 'v', [0x71, 0, 0x8c, 1], 'b', [0x68, 0, 0x75, 0x2e]), hooks) as PyDict
    expect([...d.values()]).toEqual(['v', 'v'])
  })

  it('refuses a LONG4 of 10 MB (decoding it is quadratic) at once', () => {
    const n = 10_000_000
    const len = Buffer.alloc(4)
    len.writeInt32LE(n)
    const data = Buffer.concat([Buffer.from([0x80, 2, 0x8b]), len, Buffer.alloc(n, 1), Buffer.from([0x2e])])
    const t0 = Date.now()
    oneLine(run(data), /a 10000000-byte integer/)
    expect(Date.now() - t0).toBeLessThan(1000)
  })

  it('names the file when a tensor rebuild is malformed', () => {
    // _rebuild_tensor_v2 called with a non-storage: the stand-in's error gets the file name.
    const data = b([0x80, 2], 'ctorch._utils\n_rebuild_tensor_v2\n', [0x4e, 0x85, 0x52, 0x2e])
    oneLine(run(data), /tensor rebuilt from something that is not a storage/)
  })
})
