/**
 * GGUF version 3, as ggml's gguf.cpp reads it and gguf-py's GGUFWriter writes it (docs/gguf.md
 * in ggml): little-endian; "GGUF", version, tensor count and metadata count (u64); the
 * metadata key/value pairs; one info record per tensor (name, dims innermost first, ggml type,
 * offset into the data section); padding to `general.alignment` (default 32); then each
 * tensor's bytes, each padded to the alignment.
 *
 * The header (metadata and tensor infos) is built in memory: the largest part is the
 * tokenizer's vocabulary, about 1 MB for ChatGLM2. Tensor data is streamed from producers, so
 * memory stays bounded whatever the model size. Hand-written: the npm packages that know GGUF
 * (node-llama-cpp's and @huggingface/gguf's parsers) only read it.
 */
import {type FileHandle} from 'node:fs/promises'
import {GlmtoolError} from '../../errors.js'

export const GGUF_MAGIC = 'GGUF'
export const GGUF_VERSION = 3
export const GGUF_ALIGNMENT = 32

/** gguf_type (ggml gguf.h). */
const VT = {u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12} as const
type Scalar = 'u32' | 'i32' | 'f32' | 'bool' | 'string' | 'u64'

export type GgufValue =
  | {type: 'u32' | 'i32' | 'f32' | 'u64', value: number}
  | {type: 'bool', value: boolean}
  | {type: 'string', value: string}
  | {type: 'array', elem: 'string', values: readonly string[]}
  | {type: 'array', elem: 'f32' | 'i32' | 'u32', values: ArrayLike<number>}

/** ggml_type values (ggml.h) of the tensor types glmtool writes. */
export const GGML_TYPE = {F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, BF16: 30} as const
export type GgmlType = keyof typeof GGML_TYPE

/** Elements per block and bytes per block of each type (ggml's type traits). */
export const GGML_BLOCK: Record<GgmlType, {elems: number, bytes: number}> = {
  F32: {elems: 1, bytes: 4}, F16: {elems: 1, bytes: 2}, BF16: {elems: 1, bytes: 2},
  Q8_0: {elems: 32, bytes: 34}, Q4_0: {elems: 32, bytes: 18},
}

export interface GgufTensorPlan {
  name: string
  /** ggml order: innermost (contiguous) dimension first, i.e. the torch shape reversed. */
  dims: readonly number[]
  type: GgmlType
  /** The tensor's bytes in `type`'s layout, exactly byteSize of them in all. */
  data: () => AsyncIterable<Uint8Array>
}

export function ggmlByteSize(type: GgmlType, dims: readonly number[]): number {
  const b = GGML_BLOCK[type]
  if (dims[0] % b.elems !== 0) throw new RangeError(`${type} rows need a multiple of ${b.elems} values, got ${dims[0]}`)
  return (dims.reduce((a, d) => a * d, 1) / b.elems) * b.bytes
}

const pad = (n: number, a = GGUF_ALIGNMENT) => (a - (n % a)) % a

/** Growable little-endian byte builder for the header. */
class Bytes {
  private buf = Buffer.alloc(1 << 16)
  length = 0
  private room(n: number) {
    if (this.length + n <= this.buf.length) return
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n))
    this.buf.copy(next, 0, 0, this.length)
    this.buf = next
  }
  u32(v: number) { this.room(4); this.buf.writeUInt32LE(v, this.length); this.length += 4 }
  i32(v: number) { this.room(4); this.buf.writeInt32LE(v, this.length); this.length += 4 }
  u64(v: number) { this.room(8); this.buf.writeBigUInt64LE(BigInt(v), this.length); this.length += 8 }
  f32(v: number) { this.room(4); this.buf.writeFloatLE(v, this.length); this.length += 4 }
  u8(v: number) { this.room(1); this.buf[this.length++] = v }
  str(s: string) {
    const b = Buffer.from(s, 'utf8')
    this.u64(b.length)
    this.room(b.length)
    b.copy(this.buf, this.length)
    this.length += b.length
  }
  zeros(n: number) { this.room(n); this.buf.fill(0, this.length, this.length + n); this.length += n }
  bytes(): Buffer { return this.buf.subarray(0, this.length) }
}

function writeScalar(out: Bytes, type: Scalar | 'u32', v: number | boolean | string) {
  switch (type) {
    case 'u32': out.u32(v as number); break
    case 'i32': out.i32(v as number); break
    case 'f32': out.f32(v as number); break
    case 'u64': out.u64(v as number); break
    case 'bool': out.u8(v ? 1 : 0); break
    case 'string': out.str(v as string); break
  }
}

/** The header bytes (through the padding before the data section) and where each tensor's data starts. */
export function encodeGgufHeader(metadata: ReadonlyMap<string, GgufValue>, tensors: readonly GgufTensorPlan[]): {header: Buffer, offsets: number[], sizes: number[], dataBytes: number} {
  const out = new Bytes()
  for (const c of GGUF_MAGIC) out.u8(c.charCodeAt(0))
  out.u32(GGUF_VERSION)
  out.u64(tensors.length)
  out.u64(metadata.size)
  for (const [key, v] of metadata) {
    out.str(key)
    if (v.type === 'array') {
      out.u32(VT.array)
      out.u32(VT[v.elem])
      out.u64(v.values.length)
      for (let i = 0; i < v.values.length; i++) writeScalar(out, v.elem, v.values[i])
    } else {
      out.u32(VT[v.type])
      writeScalar(out, v.type, v.value)
    }
  }
  const offsets: number[] = []
  const sizes: number[] = []
  let offset = 0
  const names = new Set<string>()
  for (const t of tensors) {
    if (names.has(t.name)) throw new GlmtoolError('gguf-duplicate-tensor', `GGUF: tensor ${t.name} planned twice`)
    names.add(t.name)
    const size = ggmlByteSize(t.type, t.dims)
    out.str(t.name)
    out.u32(t.dims.length)
    for (const d of t.dims) out.u64(d)
    out.u32(GGML_TYPE[t.type])
    out.u64(offset)
    offsets.push(offset)
    sizes.push(size)
    offset += size + pad(size)
  }
  out.zeros(pad(out.length))
  return {header: out.bytes(), offsets, sizes, dataBytes: offset}
}

/**
 * Write a whole GGUF file into `fh` (positioned writes from 0). Each tensor's producer must
 * yield exactly its planned byte count; a short or long tensor is an error, not a corrupt file.
 */
export async function writeGguf(fh: FileHandle, metadata: ReadonlyMap<string, GgufValue>, tensors: readonly GgufTensorPlan[], onBytes?: (n: number) => void): Promise<number> {
  const {header, sizes} = encodeGgufHeader(metadata, tensors)
  let pos = 0
  const put = async (b: Uint8Array) => {
    let done = 0
    while (done < b.length) {
      const {bytesWritten} = await fh.write(b, done, b.length - done, pos + done)
      done += bytesWritten
    }
    pos += b.length
  }
  await put(header)
  const zeros = Buffer.alloc(GGUF_ALIGNMENT)
  for (let i = 0; i < tensors.length; i++) {
    let n = 0
    for await (const piece of tensors[i].data()) {
      n += piece.length
      if (n > sizes[i]) break
      await put(piece)
      onBytes?.(piece.length)
    }
    if (n !== sizes[i]) throw new GlmtoolError('gguf-size', `GGUF: tensor ${tensors[i].name} produced ${n} bytes, planned ${sizes[i]}`)
    await put(zeros.subarray(0, pad(sizes[i])))
  }
  return pos
}
