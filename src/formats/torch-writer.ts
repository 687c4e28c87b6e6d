import {open} from 'node:fs/promises'
import {basename} from 'node:path'
import {byteLength, DTYPE_TORCH_STORAGE, numel} from './dtype.js'
import {checkpoint} from '../pipelines/output-dir.js'
import type {TensorEntry} from './tensor.js'
import {ZipWriter} from './zip-writer.js'

/**
 * Writes a state dict as the zip-format `torch.save` does (docs/formats.md): `<root>/data.pkl`
 * (protocol-2 pickle of an OrderedDict of `_rebuild_tensor_v2` calls whose storages are
 * persistent ids), `<root>/byteorder`, one `<root>/data/<key>` record per tensor, and
 * `<root>/version`. `torch.load` reads the result (test/crosscheck/torch_load_check.py).
 */

class PickleBuilder {
  private parts: Buffer[] = []
  private memo = new Map<string, number>()

  op(...bytes: number[]) {
    this.parts.push(Buffer.from(bytes))
  }

  str(s: string) {
    const b = Buffer.from(s, 'utf8')
    const h = Buffer.alloc(5)
    h[0] = 0x58 // BINUNICODE
    h.writeUInt32LE(b.length, 1)
    this.parts.push(h, b)
  }

  int(v: number) {
    if (v >= 0 && v < 256) this.op(0x4b, v) // BININT1
    else if (v >= 0 && v < 65536) this.op(0x4d, v & 0xff, v >> 8) // BININT2
    else if (v >= -(2 ** 31) && v < 2 ** 31) {
      const b = Buffer.alloc(5)
      b[0] = 0x4a // BININT
      b.writeInt32LE(v, 1)
      this.parts.push(b)
    } else {
      const b = Buffer.alloc(10)
      b[0] = 0x8a // LONG1, 8 bytes
      b[1] = 8
      b.writeBigInt64LE(BigInt(v), 2)
      this.parts.push(b)
    }
  }

  /** GLOBAL, memoised so each name is written once (as pickle.py does). */
  global(module: string, name: string) {
    const key = `${module}\n${name}\n`
    const slot = this.memo.get(key)
    if (slot !== undefined) {
      this.op(0x68, slot) // BINGET
      return
    }
    this.parts.push(Buffer.from([0x63]), Buffer.from(key, 'latin1'))
    const n = this.memo.size
    if (n < 256) {
      this.memo.set(key, n)
      this.op(0x71, n) // BINPUT
    }
  }

  intTuple(xs: readonly number[]) {
    this.op(0x28) // MARK
    for (const x of xs) this.int(x)
    this.op(0x74) // TUPLE
  }

  bytes(): Buffer {
    return Buffer.concat(this.parts)
  }
}

function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length)
  let acc = 1
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc
    acc *= shape[i]
  }
  return s
}

/** The data.pkl of a state dict whose i-th tensor lives alone in storage key `i`. */
export function stateDictPickle(tensors: readonly Pick<TensorEntry, 'name' | 'dtype' | 'shape'>[]): Buffer {
  const p = new PickleBuilder()
  p.op(0x80, 2) // PROTO 2
  p.global('collections', 'OrderedDict')
  p.op(0x29, 0x52) // EMPTY_TUPLE, REDUCE
  p.op(0x28) // MARK
  tensors.forEach((t, i) => {
    p.str(t.name)
    p.global('torch._utils', '_rebuild_tensor_v2')
    p.op(0x28) // MARK (args)
    p.op(0x28) // MARK (persistent id)
    p.str('storage')
    p.global('torch', DTYPE_TORCH_STORAGE[t.dtype])
    p.str(String(i))
    p.str('cpu')
    p.int(numel(t.shape))
    p.op(0x74, 0x51) // TUPLE, BINPERSID
    p.int(0) // storage offset
    p.intTuple(t.shape)
    p.intTuple(contiguousStrides(t.shape))
    p.op(0x89) // NEWFALSE: requires_grad
    p.global('collections', 'OrderedDict')
    p.op(0x29, 0x52) // backward hooks: OrderedDict()
    p.op(0x74, 0x52) // TUPLE, REDUCE
  })
  p.op(0x75) // SETITEMS
  p.op(0x2e) // STOP
  return p.bytes()
}

/**
 * Write tensors to `path` as one torch.save zip file. The archive's root folder is the file
 * name without extension, as torch names it. `onBytes` reports progress.
 */
export async function writeTorchCheckpoint(path: string, tensors: readonly TensorEntry[], onBytes?: (n: number) => void, forceZip64 = false): Promise<void> {
  const root = basename(path).replace(/\.[^.]*$/, '')
  const fh = await open(path, 'w')
  try {
    const zip = new ZipWriter(fh, forceZip64, path)
    const pkl = stateDictPickle(tensors)
    await zip.addEntry(`${root}/data.pkl`, pkl.length, pkl)
    await zip.addEntry(`${root}/byteorder`, 6, Buffer.from('little'))
    for (let i = 0; i < tensors.length; i++) {
      await checkpoint()
      const t = tensors[i]
      const counted = async function* () {
        for await (const c of t.chunks()) {
          onBytes?.(c.length)
          yield c
        }
      }
      await zip.addEntry(`${root}/data/${i}`, byteLength(t.dtype, t.shape), counted())
    }
    await zip.addEntry(`${root}/version`, 2, Buffer.from('3\n'))
    await zip.finish()
  } finally {
    await fh.close()
  }
}
