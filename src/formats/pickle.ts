import {PickleSecurityError, TorchFormatError} from '../errors.js'

/**
 * A restricted unpickler: a stack machine over pickle opcodes (protocols 0-5, binary forms) that
 * never imports or calls anything itself. GLOBAL names go through `resolveGlobal`, which either
 * returns an allowed stand-in object or throws; persistent ids go through `persistentLoad`.
 *
 * Written by hand rather than with an npm pickle package because the allowlist is the point:
 * the JS pickle parsers we looked at build placeholder objects for unknown globals instead of
 * refusing them, and none exposes torch's persistent_load hook. This module is the security
 * boundary for untrusted checkpoints (docs/formats.md, "Security").
 */

/** A Python tuple (kept distinct from a list so callers can tell them apart). */
export class PyTuple extends Array<unknown> {}

/** A Python dict or OrderedDict; `state` holds what BUILD set (e.g. OrderedDict._metadata). */
export class PyDict extends Map<unknown, unknown> {
  state: unknown = undefined
}

/** What an allowed GLOBAL resolves to: a callable stand-in for REDUCE/NEWOBJ, or a plain value. */
export interface PyCallable {
  readonly pyName: string
  call(args: unknown[]): unknown
}

export function isCallable(v: unknown): v is PyCallable {
  return typeof v === 'object' && v !== null && typeof (v as PyCallable).call === 'function' && typeof (v as PyCallable).pyName === 'string'
}

export interface UnpickleHooks {
  /** Return the stand-in for `module.name`, or throw PickleSecurityError. */
  resolveGlobal(module: string, name: string): unknown
  /** Turn a persistent id (BINPERSID) into a value, or throw. */
  persistentLoad(pid: unknown): unknown
  /** Apply BUILD state to an object; default handles PyDict. */
  build?(obj: unknown, state: unknown): unknown
}


/**
 * Limits on what a pickle may build (docs/formats.md, "Security"): bounded memory and time whatever
 * the bytes say. A state dict of the 6B models has a few hundred tensors, nesting depth 3 and a
 * few thousand memo entries; these caps are orders of magnitude above any real checkpoint.
 */
export const PICKLE_LIMITS = {
  /** Nesting depth of containers (dict in list in tuple ...). */
  maxDepth: 100,
  /** Entries in all containers together (dict items, list and tuple elements). */
  maxEntries: 1 << 22,
  /** Memo entries (PUT / MEMOIZE). Map's own limit is 2^24. */
  maxMemo: 1 << 22,
  /** Open MARKs at once. */
  maxMarks: 10_000,
}

/** A Python container: what the unpickler must not let be reached twice. */
function isContainer(v: unknown): v is unknown[] | PyDict {
  return v instanceof PyDict || Array.isArray(v)
}

export function unpickle(data: Buffer, hooks: UnpickleHooks, source = 'pickle'): unknown {
  let pos = 0
  let stack: unknown[] = []
  const marks: unknown[][] = []
  const memo = new Map<number, unknown>()
  // Each container's nesting depth (1 for an empty or flat one). A container can be referenced
  // only once (GET and DUP of a container are refused below), so once it is inside another one
  // nothing can change it, and the depth recorded when it was inserted stays exact.
  const depth = new WeakMap<object, number>()
  let entries = 0

  const fail = (msg: string): never => {
    throw new TorchFormatError(`${source}: ${msg} at byte ${pos}`, 'pickle-corrupt')
  }
  const hostile = (msg: string): never => {
    throw new PickleSecurityError(`${source}: ${msg} at byte ${pos}; refusing the pickle, nothing was executed`)
  }
  /** Account for `items` becoming children of `parent` (depth and entry caps). */
  const adopt = (parent: object, items: readonly unknown[]) => {
    entries += items.length
    if (entries > PICKLE_LIMITS.maxEntries) hostile(`more than ${PICKLE_LIMITS.maxEntries} container entries`)
    let d = depth.get(parent) ?? 1
    for (const v of items) {
      if (typeof v === 'object' && v !== null) {
        if (v === parent) hostile('a container that contains itself')
        const c = depth.get(v)
        if (c !== undefined && c + 1 > d) d = c + 1
      }
    }
    if (d > PICKLE_LIMITS.maxDepth) hostile(`containers nested deeper than ${PICKLE_LIMITS.maxDepth} levels`)
    depth.set(parent, d)
  }
  /** A second reference to an object (memo GET, DUP): fine for strings, tensors, storages; not for containers. */
  const reuse = (v: unknown, how: string): unknown => {
    // Shared containers are how a 1.7 KB pickle expands to 2^48 entries ("billion laughs") and how
    // cycles form; torch.save never shares one (shared storages come through persistent ids).
    if (isContainer(v)) hostile(`${how} of a container that is already referenced (shared or cyclic containers are not part of a state dict)`)
    return v
  }
  const memoize = (idx: number, v: unknown) => {
    if (!Number.isSafeInteger(idx) || idx < 0) fail('bad memo index')
    if (!memo.has(idx) && memo.size >= PICKLE_LIMITS.maxMemo) hostile(`more than ${PICKLE_LIMITS.maxMemo} memo entries`)
    memo.set(idx, v)
  }
  const need = (n: number) => {
    if (pos + n > data.length) fail('pickle truncated')
  }
  const u8 = () => (need(1), data[pos++])
  const u16 = () => (need(2), (pos += 2), data.readUInt16LE(pos - 2))
  const u32 = () => (need(4), (pos += 4), data.readUInt32LE(pos - 4))
  const i32 = () => (need(4), (pos += 4), data.readInt32LE(pos - 4))
  const bytes = (n: number) => (need(n), (pos += n), data.subarray(pos - n, pos))
  const line = () => {
    const end = data.indexOf(0x0a, pos)
    if (end < 0) fail('unterminated text argument')
    const s = data.toString('latin1', pos, end)
    pos = end + 1
    return s
  }
  const pop = () => (stack.length === 0 ? fail('stack underflow') : stack.pop())
  const top = () => (stack.length === 0 ? fail('stack underflow') : stack[stack.length - 1])
  const popMark = (): unknown[] => {
    const items = stack
    const prev = marks.pop()
    if (prev === undefined) fail('MARK missing')
    stack = prev as unknown[]
    return items
  }
  const callGlobal = (fn: unknown, args: unknown[]) => {
    if (!isCallable(fn)) fail(`REDUCE on a value that is not an allowed callable`)
    try {
      return (fn as PyCallable).call(args)
    } catch (error) {
      // The stand-ins do not know the file: name it here, so every message does.
      if (error instanceof TorchFormatError && !error.message.startsWith(source)) throw new TorchFormatError(`${source}: ${error.message} at byte ${pos}`, error.code)
      throw error
    }
  }
  const signedLE = (b: Buffer): number | bigint => {
    if (b.length === 0) return 0
    let v = 0n
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i])
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length)
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v
  }
  const setItems = (dict: unknown, items: unknown[]) => {
    if (!(dict instanceof PyDict)) fail('SETITEM(S) on a non-dict')
    if (items.length % 2) fail('odd number of items for SETITEMS')
    adopt(dict as PyDict, items)
    for (let i = 0; i < items.length; i += 2) (dict as PyDict).set(items[i], items[i + 1])
  }
  const append = (list: unknown, items: unknown[]) => {
    if (!Array.isArray(list) || list instanceof PyTuple) fail('APPEND(S) on a non-list')
    adopt(list as unknown[], items)
    // A loop, not push(...items): spreading a million items overflows the call stack.
    for (const v of items) (list as unknown[]).push(v)
  }
  /** A new tuple or list from stack items. */
  const collect = <T extends unknown[]>(c: T, items: readonly unknown[]): T => {
    adopt(c, items)
    for (const v of items) c.push(v)
    return c
  }

  for (;;) {
    const op = u8()
    switch (op) {
      case 0x80: u8(); break // PROTO
      case 0x95: bytes(8); break // FRAME: framing is only a hint for buffered readers
      case 0x2e: { // STOP
        const result = pop()
        return result
      }
      case 0x28: if (marks.length >= PICKLE_LIMITS.maxMarks) hostile(`more than ${PICKLE_LIMITS.maxMarks} open MARKs`); marks.push(stack); stack = []; break // MARK
      case 0x30: pop(); break // POP
      case 0x31: popMark(); break // POP_MARK
      case 0x32: stack.push(reuse(top(), 'DUP')); break // DUP
      case 0x4e: stack.push(null); break // NONE
      case 0x88: stack.push(true); break // NEWTRUE
      case 0x89: stack.push(false); break // NEWFALSE
      case 0x4a: stack.push(i32()); break // BININT
      case 0x4b: stack.push(u8()); break // BININT1
      case 0x4d: stack.push(u16()); break // BININT2
      case 0x8a: stack.push(signedLE(bytes(u8()))); break // LONG1
      case 0x8b: { // LONG4: torch.save never needs more than 8 bytes; decoding is quadratic in the size
        const n = i32()
        if (n < 0) fail('negative LONG4 size')
        if (n > 1024) hostile(`a ${n}-byte integer`)
        stack.push(signedLE(bytes(n)))
        break
      }
      case 0x49: { // INT (text)
        const s = line()
        stack.push(s === '01' ? true : s === '00' ? false : Number.parseInt(s, 10))
        break
      }
      case 0x4c: stack.push(Number.parseInt(line().replace(/L$/, ''), 10)); break // LONG (text)
      case 0x47: need(8); stack.push(data.readDoubleBE(pos)); pos += 8; break // BINFLOAT
      case 0x58: stack.push(bytes(u32()).toString('utf8')); break // BINUNICODE
      case 0x8c: stack.push(bytes(u8()).toString('utf8')); break // SHORT_BINUNICODE
      case 0x8d: { const lo = u32(); const hi = u32(); if (hi) fail('string too large'); stack.push(bytes(lo).toString('utf8')); break }
      case 0x54: { const n = i32(); if (n < 0) fail('negative string size'); stack.push(bytes(n).toString('latin1')); break } // BINSTRING
      case 0x55: stack.push(bytes(u8()).toString('latin1')); break // SHORT_BINSTRING
      case 0x42: stack.push(Buffer.from(bytes(u32()))); break // BINBYTES
      case 0x43: stack.push(Buffer.from(bytes(u8()))); break // SHORT_BINBYTES
      case 0x29: stack.push(new PyTuple()); break // EMPTY_TUPLE
      case 0x74: { const items = popMark(); stack.push(collect(new PyTuple(), items)); break } // TUPLE (pop first: popMark swaps `stack`)
      case 0x85: { const a = pop(); stack.push(collect(new PyTuple(), [a])); break }
      case 0x86: { const b = pop(); const a = pop(); stack.push(collect(new PyTuple(), [a, b])); break }
      case 0x87: { const c = pop(); const b = pop(); const a = pop(); stack.push(collect(new PyTuple(), [a, b, c])); break }
      case 0x5d: stack.push([]); break // EMPTY_LIST
      case 0x6c: { const items = popMark(); stack.push(collect([], items)); break } // LIST
      case 0x61: { const v = pop(); append(top(), [v]); break } // APPEND
      case 0x65: { const items = popMark(); append(top(), items); break } // APPENDS
      case 0x7d: stack.push(new PyDict()); break // EMPTY_DICT
      case 0x64: { const items = popMark(); const d = new PyDict(); setItems(d, items); stack.push(d); break } // DICT
      case 0x73: { const v = pop(); const k = pop(); setItems(top(), [k, v]); break } // SETITEM
      case 0x75: { const items = popMark(); setItems(top(), items); break } // SETITEMS
      case 0x71: memoize(u8(), top()); break // BINPUT
      case 0x72: memoize(u32(), top()); break // LONG_BINPUT
      case 0x70: memoize(Number.parseInt(line(), 10), top()); break // PUT
      case 0x94: memoize(memo.size, top()); break // MEMOIZE
      case 0x68: case 0x6a: case 0x67: { // BINGET, LONG_BINGET, GET
        const idx = op === 0x68 ? u8() : op === 0x6a ? u32() : Number.parseInt(line(), 10)
        if (!memo.has(idx)) fail(`memo key ${idx} missing`)
        stack.push(reuse(memo.get(idx), 'memo GET'))
        break
      }
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line()
        const name = line()
        stack.push(hooks.resolveGlobal(module, name))
        break
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop()
        const module = pop()
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings')
        stack.push(hooks.resolveGlobal(module as string, name as string))
        break
      }
      case 0x52: { const args = pop(); const fn = pop(); if (!Array.isArray(args)) fail('REDUCE arguments are not a tuple'); stack.push(callGlobal(fn, args as unknown[])); break }
      case 0x81: { const args = pop(); const cls = pop(); if (!Array.isArray(args)) fail('NEWOBJ arguments are not a tuple'); stack.push(callGlobal(cls, args as unknown[])); break }
      case 0x62: { // BUILD
        const state = pop()
        const obj = top()
        if (hooks.build) stack[stack.length - 1] = hooks.build(obj, state)
        else if (obj instanceof PyDict) {
          adopt(obj, [state])
          obj.state = state
        }
        else fail('BUILD on an object that takes no state')
        break
      }
      case 0x51: stack.push(hooks.persistentLoad(pop())); break // BINPERSID
      case 0x50: stack.push(hooks.persistentLoad(line())); break // PERSID
      case 0x69: case 0x6f: case 0x82: case 0x83: case 0x84: case 0x92:
        // INST, OBJ, EXT1/2/4, NEWOBJ_EX: instantiate arbitrary classes; torch.save never emits them.
        throw new PickleSecurityError(`${source}: pickle opcode 0x${op.toString(16)} (object construction) is not allowed; nothing was executed`)
      default:
        fail(`unknown pickle opcode 0x${op.toString(16)}`)
    }
  }
}
