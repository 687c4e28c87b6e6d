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
