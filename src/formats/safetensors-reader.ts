/**
 * safetensors reader (docs/formats.md, "safetensors"). The header is parsed and every rule of the
 * format is checked before any tensor is handed out; tensor bytes are then read on demand with
 * positional reads, so opening a 12 GB model costs only its headers.
 */
import {open, readFile, stat} from 'node:fs/promises'
import {dirname, join, relative, resolve, isAbsolute} from 'node:path'
import {SafetensorsError, withPath} from '../errors.js'
import {DTYPE_SIZE, isDType, type DType} from './dtype.js'
import {findDuplicateKey} from './json-keys.js'
import {DEFAULT_CHUNK_BYTES, type TensorEntry} from './tensor.js'

/** Largest header we accept, as the Rust crate does (MAX_HEADER_SIZE = 100_000_000). */
export const MAX_HEADER_BYTES = 100_000_000

/** Largest model.safetensors.index.json we read (a million-tensor index is ~60 MB). */
export const MAX_INDEX_BYTES = 128 * 1024 * 1024

export const INDEX_FILE = 'model.safetensors.index.json'
export const SINGLE_FILE = 'model.safetensors'

export interface SafetensorsTensor extends TensorEntry {
  /** Byte range within the data buffer (relative to dataStart), as the header states it. */
  readonly dataOffsets: readonly [number, number]
}

export interface SafetensorsFile {
  readonly path: string
  readonly metadata: Record<string, string> | undefined
  /** Sorted by data offset (header order among equal offsets), i.e. the order on disk. */
  readonly tensors: SafetensorsTensor[]
  /** N, the header's length in bytes (padding included). */
  readonly headerSize: number
  /** Absolute file offset of the data buffer: 8 + N. */
  readonly dataStart: number
}

export interface SafetensorsModel {
  /** Absolute paths of the files read, in the order their tensors are listed. */
  readonly files: string[]
  readonly tensors: SafetensorsTensor[]
  /** `__metadata__` of the first file (shards written together carry the same). */
  readonly metadata: Record<string, string> | undefined
  /** The index's own "metadata" object (e.g. total_size), when there is an index. */
  readonly indexMetadata?: Record<string, unknown>
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function q(name: string): string {
  return JSON.stringify(name)
}

interface ParsedHeader {
  metadata: Record<string, string> | undefined
  entries: {name: string, dtype: DType, shape: number[], begin: number, end: number}[]
}

/**
 * Validate a header's JSON text against docs/formats.md and a data buffer of `bufferLength` bytes.
 * Pure (no I/O) so every rule is testable on hand-made bytes.
 */
export function parseSafetensorsHeader(headerBytes: Uint8Array, bufferLength: number, file: string): ParsedHeader {
  let text: string
  try {
    text = new TextDecoder('utf-8', {fatal: true}).decode(headerBytes)
  } catch {
    throw new SafetensorsError('invalid-header', `${file}: header is not valid UTF-8`)
  }
  // The Rust crate insists on '{' first; padding (spaces) may only follow the JSON.
  if (!text.startsWith('{')) throw new SafetensorsError('invalid-header', `${file}: header does not start with '{'`)
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw new SafetensorsError('invalid-header', `${file}: header is not valid JSON (${(e as Error).message})`)
  }
  if (!isPlainObject(json)) throw new SafetensorsError('invalid-header', `${file}: header is not a JSON object`)
  const dup = findDuplicateKey(text)
  if (dup !== undefined) throw new SafetensorsError('duplicate-key', `${file}: header has the key ${q(dup)} twice; refusing to guess which one is meant`)

  let metadata: Record<string, string> | undefined
  const entries: ParsedHeader['entries'] = []
  for (const [name, info] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(info)) throw new SafetensorsError('invalid-metadata', `${file}: __metadata__ is not an object of string values`)
      for (const [k, v] of Object.entries(info)) {
        if (typeof v !== 'string') throw new SafetensorsError('invalid-metadata', `${file}: __metadata__ value for ${q(k)} is ${v === null ? 'null' : typeof v}, not a string`)
      }
      // fromEntries defines own properties, so a key "__proto__" stays data, not a prototype.
      metadata = Object.fromEntries(Object.entries(info)) as Record<string, string>
      continue
    }
    const where = `${file}: tensor ${q(name)}`
    if (!isPlainObject(info)) throw new SafetensorsError('invalid-header', `${where}: entry is not an object`)
    const {dtype, shape, data_offsets: offsets} = info
    if (typeof dtype !== 'string' || !isDType(dtype)) {
      throw new SafetensorsError('unknown-dtype', `${where}: unsupported dtype ${JSON.stringify(dtype)} (glmtool reads ${Object.keys(DTYPE_SIZE).join(', ')})`)
    }
    if (!Array.isArray(shape) || !shape.every(d => Number.isSafeInteger(d) && d >= 0)) {
      throw new SafetensorsError('invalid-shape', `${where}: shape ${JSON.stringify(shape)} is not an array of non-negative integers`)
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(o => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]) {
      throw new SafetensorsError('invalid-offsets', `${where}: data_offsets ${JSON.stringify(offsets)} is not [begin, end] with 0 <= begin <= end`)
    }
    const [begin, end] = offsets as [number, number]
    // BigInt: a product of safe dims can itself exceed 2^53 and must not round into a match.
    const expected = (shape as number[]).reduce((n, d) => n * BigInt(d), BigInt(DTYPE_SIZE[dtype]))
    if (BigInt(end - begin) !== expected) {
      throw new SafetensorsError('size-mismatch', `${where}: data_offsets span ${end - begin} bytes but ${dtype}${JSON.stringify(shape)} needs ${expected}`)
    }
    entries.push({name, dtype, shape: shape as number[], begin, end})
  }

  // Stable sort keeps header order among zero-size tensors sharing an offset.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end)
  let covered = 0
  let prev: string | undefined
  for (const e of entries) {
    if (e.begin < covered) {
      throw new SafetensorsError('overlap', `${file}: tensor ${q(e.name)} bytes [${e.begin}, ${e.end}) overlap tensor ${q(prev ?? '')} ending at ${covered}`)
    }
    if (e.begin > covered) {
      throw new SafetensorsError('gap', `${file}: tensor ${q(e.name)} starts at ${e.begin} but the previous tensor ends at ${covered}; bytes [${covered}, ${e.begin}) belong to no tensor`)
    }
    if (e.end > bufferLength) {
      throw new SafetensorsError('incomplete', `${file}: tensor ${q(e.name)} ends at buffer offset ${e.end} but the file's buffer holds only ${bufferLength} bytes (truncated file?)`)
    }
    covered = e.end
    prev = e.name
  }
  if (covered !== bufferLength) {
    throw new SafetensorsError('gap', `${file}: ${bufferLength - covered} trailing bytes after the last tensor belong to no tensor`)
  }
  return {metadata, entries}
}

/** Open one .safetensors file: read and validate its header; tensor bytes stay on disk. */
export async function openSafetensors(path: string): Promise<SafetensorsFile> {
  const fh = await open(path, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new SafetensorsError(e.code === 'ENOENT' ? 'not-found' : 'unreadable', `${path}: cannot open (${e.code ?? e.message})`)
  })
  try {
    const {size} = await fh.stat()
    if (size < 8) throw new SafetensorsError('incomplete', `${path}: file is ${size} bytes, too short for the 8-byte header length`)
    const lenBuf = Buffer.alloc(8)
    await readExactly(fh, lenBuf, 0, path)
    // Compare as BigInt before converting: a claim of 2^60 must fail here, not in an allocation.
    const n = lenBuf.readBigUInt64LE(0)
    if (n > BigInt(MAX_HEADER_BYTES)) throw new SafetensorsError('header-too-large', `${path}: header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`)
    const headerSize = Number(n)
    if (headerSize > size - 8) throw new SafetensorsError('incomplete', `${path}: header length ${headerSize} exceeds the ${size - 8} bytes after the length field (truncated file?)`)
    const header = Buffer.alloc(headerSize)
    await readExactly(fh, header, 8, path)
    const dataStart = 8 + headerSize
    const {metadata, entries} = parseSafetensorsHeader(header, size - dataStart, path)
    const tensors = entries.map(e => fileTensor(path, e.name, e.dtype, e.shape, dataStart, e.begin, e.end))
    return {path, metadata, tensors, headerSize, dataStart}
  } finally {
    await fh.close()
  }
}

type Handle = Awaited<ReturnType<typeof open>>

async function readExactly(fh: Handle, buf: Buffer, position: number, path: string, tensor?: string): Promise<void> {
  let done = 0
  while (done < buf.length) {
    const {bytesRead} = await withPath(path, () => fh.read(buf, done, buf.length - done, position + done))
    if (bytesRead === 0) {
      const what = tensor === undefined ? '' : ` reading tensor ${q(tensor)}`
      throw new SafetensorsError('incomplete', `${path}: unexpected end of file at offset ${position + done}${what} (file changed after open?)`)
    }
    done += bytesRead
  }
}

function fileTensor(path: string, name: string, dtype: DType, shape: number[], dataStart: number, begin: number, end: number): SafetensorsTensor {
  const elem = DTYPE_SIZE[dtype]
  return {
    name, dtype, shape, file: path, dataOffsets: [begin, end],
    async *chunks(maxChunkBytes = DEFAULT_CHUNK_BYTES) {
      if (!(maxChunkBytes > 0)) throw new RangeError(`maxChunkBytes must be positive, got ${maxChunkBytes}`)
      const total = end - begin
      if (total === 0) return
      // Whole elements per piece (tensor.ts contract), at least one element.
      const step = Math.max(elem, Math.floor(maxChunkBytes / elem) * elem)
      // One handle per stream: no shared state between concurrent readers, closed on early exit.
      const fh = await open(path, 'r')
      try {
        // Reused buffer (allowed by TensorEntry): bounded memory and no per-piece allocation.
        const buf = Buffer.allocUnsafe(Math.min(step, total))
        for (let o = 0; o < total; o += step) {
          const piece = buf.subarray(0, Math.min(step, total - o))
          await readExactly(fh, piece, dataStart + begin + o, path, name)
          yield piece
        }
      } finally {
        await fh.close()
      }
    },
  }
}

async function isFile(p: string): Promise<boolean> {
  return stat(p).then(s => s.isFile(), () => false)
}

/**
 * Open a model stored as safetensors: a single file, a directory holding
 * model.safetensors.index.json (sharded), or a directory holding model.safetensors.
 */
export async function openSafetensorsModel(pathOrDir: string): Promise<SafetensorsModel> {
  const st = await stat(pathOrDir).catch(() => undefined)
  if (!st) throw new SafetensorsError('not-found', `${pathOrDir}: no such file or directory`)
  if (st.isFile()) return fromFiles([await openSafetensors(resolve(pathOrDir))])

  const dir = resolve(pathOrDir)
  const indexPath = join(dir, INDEX_FILE)
  if (await isFile(indexPath)) return openIndexed(dir, indexPath)
  const single = join(dir, SINGLE_FILE)
  if (await isFile(single)) return fromFiles([await openSafetensors(single)])
  throw new SafetensorsError('not-found', `${pathOrDir}: no ${INDEX_FILE} or ${SINGLE_FILE} in this directory`)
}

function fromFiles(files: SafetensorsFile[], indexMetadata?: Record<string, unknown>): SafetensorsModel {
  return {
    files: files.map(f => f.path),
    tensors: files.flatMap(f => f.tensors),
    metadata: files[0]?.metadata,
    ...(indexMetadata === undefined ? {} : {indexMetadata}),
  }
}

async function openIndexed(dir: string, indexPath: string): Promise<SafetensorsModel> {
  let index: unknown
  const {size} = await stat(indexPath)
  // As the header cap below: a 600 MB index would otherwise fail with "Invalid string length".
  if (size > MAX_INDEX_BYTES) throw new SafetensorsError('invalid-index', `${indexPath}: ${size} bytes, over the ${MAX_INDEX_BYTES}-byte limit for an index`)
  try {
    index = JSON.parse(await readFile(indexPath, 'utf8'))
  } catch (e) {
    throw new SafetensorsError('invalid-index', `${indexPath}: not valid JSON (${(e as Error).message})`)
  }
  if (!isPlainObject(index) || !isPlainObject(index.weight_map)) {
    throw new SafetensorsError('invalid-index', `${indexPath}: expected {"metadata": {...}, "weight_map": {name: file}}`)
  }
  const indexMetadata = isPlainObject(index.metadata) ? index.metadata : undefined

  const byFile = new Map<string, string[]>()
  for (const [name, file] of Object.entries(index.weight_map)) {
    if (typeof file !== 'string' || file === '') throw new SafetensorsError('invalid-index', `${indexPath}: weight_map entry for tensor ${q(name)} is not a file name`)
    const abs = resolve(dir, file)
    // The index is data from a download: it must not point outside its own directory.
    const rel = relative(dir, abs)
    if (rel.startsWith('..') || isAbsolute(rel)) throw new SafetensorsError('invalid-index', `${indexPath}: tensor ${q(name)} points outside the model directory (${file})`)
    const names = byFile.get(abs) ?? []
    names.push(name)
    byFile.set(abs, names)
  }
  // Shard names sort into shard order (model-00001-of-0000n, ...), so reads go file by file.
  const paths = [...byFile.keys()].sort()
  for (const p of paths) {
    if (!(await isFile(p))) {
      const first = byFile.get(p)![0]
      throw new SafetensorsError('index-mismatch', `${indexPath}: file ${relative(dir, p)} (holding tensor ${q(first)}, among others) does not exist`)
    }
  }
  const files: SafetensorsFile[] = []
  for (const p of paths) {
    const f = await openSafetensors(p)
    const present = new Set(f.tensors.map(t => t.name))
    const listed = new Set(byFile.get(p))
    for (const name of listed) {
      if (!present.has(name)) throw new SafetensorsError('index-mismatch', `${indexPath}: tensor ${q(name)} is listed in ${relative(dirname(indexPath), p)} but that file does not contain it`)
    }
    for (const name of present) {
      if (!listed.has(name)) throw new SafetensorsError('index-mismatch', `${indexPath}: file ${relative(dirname(indexPath), p)} contains tensor ${q(name)}, which the index does not assign to it`)
    }
    files.push(f)
  }
  return fromFiles(files, indexMetadata)
}
