/**
 * Streaming, sharded safetensors writer (docs/formats.md, "safetensors"). Every size is known from
 * dtype and shape, so shards are planned and each header written before any data; tensor bytes
 * then flow chunk by chunk from the TensorEntry to disk, never held whole.
 */
import {open, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {SafetensorsError, withPath} from '../errors.js'
import {checkpoint} from '../pipelines/output-dir.js'
import {DTYPE_SIZE, isDType, type DType} from './dtype.js'
import {INDEX_FILE, MAX_HEADER_BYTES, SINGLE_FILE} from './safetensors-reader.js'
import {DEFAULT_CHUNK_BYTES, type TensorEntry} from './tensor.js'

/** What a header needs to know about a tensor. */
export interface TensorSpec {
  readonly name: string
  readonly dtype: DType
  readonly shape: readonly number[]
}

export interface WriteModelOptions {
  /** Shard size limit in tensor bytes (headers not counted, as transformers counts). Default: no limit. */
  readonly maxShardBytes?: number
  /** `__metadata__` of every shard, e.g. {format: 'pt'}; string values only. */
  readonly metadata?: Record<string, string>
  /** Called after each chunk with the tensor bytes written so far, over all shards. */
  readonly onProgress?: (bytesDone: number) => void
  /** Largest piece pulled from a TensorEntry at once. Default DEFAULT_CHUNK_BYTES. */
  readonly chunkBytes?: number
}

export interface ShardPlan<T extends TensorSpec = TensorSpec> {
  /** File name within the output directory. */
  readonly file: string
  readonly tensors: T[]
  /** Sum of the tensors' bytes. */
  readonly bytes: number
}

export interface WrittenModel {
  /** File names written, shards in order, then the index if one was written. */
  readonly files: string[]
  readonly shards: ShardPlan<TensorEntry>[]
  /** Sum of all tensor bytes (the index's total_size). */
  readonly totalBytes: number
}

/** Bytes of a tensor's data, checked to be a safe integer. */
export function tensorBytes(t: TensorSpec): number {
  if (!isDType(t.dtype)) throw new SafetensorsError('unknown-dtype', `tensor ${JSON.stringify(t.name)}: unsupported dtype ${JSON.stringify(t.dtype)}`)
  let n = DTYPE_SIZE[t.dtype]
  for (const d of t.shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new SafetensorsError('invalid-shape', `tensor ${JSON.stringify(t.name)}: shape ${JSON.stringify(t.shape)} is not an array of non-negative integers`)
    n *= d
  }
  if (!Number.isSafeInteger(n)) throw new SafetensorsError('invalid-shape', `tensor ${JSON.stringify(t.name)}: shape ${JSON.stringify(t.shape)} is too large`)
  return n
}

/** HF/transformers shard naming: model-00001-of-00003.safetensors; model.safetensors when alone. */
export function shardFileName(k: number, n: number): string {
  if (n === 1) return SINGLE_FILE
  const pad = (i: number) => String(i).padStart(5, '0')
  return `model-${pad(k)}-of-${pad(n)}.safetensors`
}

/**
 * Split tensors, in the order given, into shards: a shard closes before a tensor would take it
 * past maxShardBytes, and a tensor larger than the limit gets a shard of its own (as
 * transformers does). No tensors still gives one (empty) shard, so a file is always written.
 */
export function planShards<T extends TensorSpec>(tensors: readonly T[], maxShardBytes = Infinity): ShardPlan<T>[] {
  if (!(maxShardBytes > 0)) throw new RangeError(`maxShardBytes must be positive, got ${maxShardBytes}`)
  const groups: {tensors: T[], bytes: number}[] = []
  let cur: {tensors: T[], bytes: number} = {tensors: [], bytes: 0}
  for (const t of tensors) {
    const b = tensorBytes(t)
    if (cur.tensors.length > 0 && cur.bytes + b > maxShardBytes) {
      groups.push(cur)
      cur = {tensors: [], bytes: 0}
    }
    cur.tensors.push(t)
    cur.bytes += b
  }
  if (cur.tensors.length > 0 || groups.length === 0) groups.push(cur)
  return groups.map((g, i) => ({file: shardFileName(i + 1, groups.length), ...g}))
}

function checkMetadata(metadata: Record<string, string> | undefined, where: string): void {
  if (metadata === undefined) return
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw new SafetensorsError('invalid-metadata', `${where}: __metadata__ value for ${JSON.stringify(k)} is ${typeof v}, not a string`)
  }
}

/**
 * The bytes before a file's data buffer: 8-byte little-endian N, then N bytes of JSON padded
 * with spaces so the buffer starts 8-byte aligned (as the Python package pads). Tensors are
 * laid out back to back in the order given; `__metadata__` comes first, as Python writes it.
 */
export function encodeSafetensorsHeader(tensors: readonly TensorSpec[], metadata?: Record<string, string>, file = '<header>'): Buffer {
  checkMetadata(metadata, file)
  // Built by hand, not with JSON.stringify on an object: objects put integer-like keys
  // ("0", "1") first, which would reorder tensors named that way.
  const parts: string[] = []
  if (metadata !== undefined) parts.push(`"__metadata__":${JSON.stringify(metadata)}`)
  const seen = new Set<string>()
  let offset = 0
  for (const t of tensors) {
    if (t.name === '__metadata__') throw new SafetensorsError('invalid-name', `${file}: a tensor may not be named "__metadata__"`)
    if (seen.has(t.name)) throw new SafetensorsError('duplicate-tensor', `${file}: tensor ${JSON.stringify(t.name)} appears twice`)
    seen.add(t.name)
    const b = tensorBytes(t)
    parts.push(`${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":${JSON.stringify(t.shape)},"data_offsets":[${offset},${offset + b}]}`)
    offset += b
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8')
  const n = Math.ceil((8 + json.length) / 8) * 8 - 8
  if (n > MAX_HEADER_BYTES) throw new SafetensorsError('header-too-large', `${file}: header would be ${n} bytes, over the ${MAX_HEADER_BYTES}-byte limit readers accept`)
  const out = Buffer.alloc(8 + n, 0x20)
  out.writeBigUInt64LE(BigInt(n), 0)
  json.copy(out, 8)
  return out
}

interface StreamState {
  done: number
  readonly onProgress?: (bytesDone: number) => void
  readonly chunkBytes: number
}

async function writeAll(fh: Awaited<ReturnType<typeof open>>, buf: Uint8Array, path: string): Promise<void> {
  // withPath: a failed write (ENOSPC) carries no path of its own; the message must name the file.
  await withPath(path, async () => {
    let o = 0
    while (o < buf.length) {
      const {bytesWritten} = await fh.write(buf, o, buf.length - o)
      o += bytesWritten
    }
  })
}

async function writeFileStreaming(path: string, tensors: readonly TensorEntry[], metadata: Record<string, string> | undefined, state: StreamState): Promise<number> {
  const header = encodeSafetensorsHeader(tensors, metadata, path)
  const fh = await open(path, 'w')
  let written = header.length
  try {
    await writeAll(fh, header, path)
    for (const t of tensors) {
      await checkpoint()
      const expected = tensorBytes(t)
      let got = 0
      // Each chunk is written before the next is pulled: pieces may be reused buffers.
      for await (const chunk of t.chunks(state.chunkBytes)) {
        got += chunk.length
        // Fail before writing: a long stream would otherwise push the file past its header.
        if (got > expected) throw sizeMismatch(path, t, expected, `more than ${expected}`)
        await writeAll(fh, chunk, path)
        state.done += chunk.length
        state.onProgress?.(state.done)
      }
      if (got !== expected) throw sizeMismatch(path, t, expected, String(got))
      written += got
    }
  } finally {
    await fh.close()
  }
  return written
}

function sizeMismatch(path: string, t: TensorEntry, expected: number, got: string): SafetensorsError {
  return new SafetensorsError('size-mismatch', `${path}: tensor ${JSON.stringify(t.name)} (${t.dtype}${JSON.stringify(t.shape)}, from ${t.file}) yielded ${got} bytes, expected ${expected}`)
}

/**
 * Write one .safetensors file from tensors, in the order given. Returns the file's size.
 * The file is written in place; on error it is left partial (callers write into a temp dir).
 */
export async function writeSafetensorsFile(
  path: string, tensors: Iterable<TensorEntry>, metadata?: Record<string, string>,
  options: Pick<WriteModelOptions, 'onProgress' | 'chunkBytes'> = {},
): Promise<number> {
  const state: StreamState = {done: 0, onProgress: options.onProgress, chunkBytes: options.chunkBytes ?? DEFAULT_CHUNK_BYTES}
  return writeFileStreaming(path, [...tensors], metadata, state)
}

/**
 * Write a model into outDir: model.safetensors, or model-0000k-of-0000n.safetensors shards plus
 * model.safetensors.index.json (the transformers layout). The directory must exist.
 */
export async function writeSafetensorsModel(outDir: string, tensors: Iterable<TensorEntry>, options: WriteModelOptions = {}): Promise<WrittenModel> {
  const list = [...tensors]
  const metadata = options.metadata
  checkMetadata(metadata, outDir)
  // Duplicates across shards would make the index ambiguous; the header check sees only one shard.
  const seen = new Set<string>()
  for (const t of list) {
    if (seen.has(t.name)) throw new SafetensorsError('duplicate-tensor', `${outDir}: tensor ${JSON.stringify(t.name)} appears twice`)
    seen.add(t.name)
  }
  const shards = planShards(list, options.maxShardBytes ?? Infinity)
  const state: StreamState = {done: 0, onProgress: options.onProgress, chunkBytes: options.chunkBytes ?? DEFAULT_CHUNK_BYTES}
  const files: string[] = []
  for (const s of shards) {
    await writeFileStreaming(join(outDir, s.file), s.tensors, metadata, state)
    files.push(s.file)
  }
  const totalBytes = shards.reduce((n, s) => n + s.bytes, 0)
  if (shards.length > 1) {
    await withPath(join(outDir, INDEX_FILE), () => writeFile(join(outDir, INDEX_FILE), encodeIndex(shards, totalBytes)))
    files.push(INDEX_FILE)
  }
  return {files, shards, totalBytes}
}

/**
 * The index as transformers writes it (json.dumps(indent=2, sort_keys=True) + "\n"), built by
 * hand so that weight_map keeps sorted order even for integer-like names.
 */
export function encodeIndex(shards: readonly ShardPlan[], totalBytes: number): string {
  const entries = shards.flatMap(s => s.tensors.map(t => [t.name, s.file] as const))
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  const map = entries.map(([name, file]) => `    ${JSON.stringify(name)}: ${JSON.stringify(file)}`).join(',\n')
  return `{\n  "metadata": {\n    "total_size": ${totalBytes}\n  },\n  "weight_map": {\n${map}\n  }\n}\n`
}
