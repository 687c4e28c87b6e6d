import {open, type FileHandle} from 'node:fs/promises'
import {basename} from 'node:path'
import {TorchFormatError, withPath} from '../errors.js'
import {DTYPE_SIZE, type DType, numel} from './dtype.js'
import {DEFAULT_CHUNK_BYTES, type TensorEntry} from './tensor.js'
import {readStateDict, type TensorRef} from './torch-pickle.js'
import {crc32Async} from './crc-worker.js'
import {crc32, readZipIndex, type ZipEntry} from './zip-reader.js'

/** A tensor of a torch checkpoint, with the pickle-level facts (storage, offset, strides). */
export interface TorchTensorEntry extends TensorEntry {
  readonly ref: TensorRef
}

/** Largest storage span we read in one go to gather a non-contiguous tensor. */
const MAX_GATHER_SPAN = 256 * 1024 * 1024

/**
 * How many bytes all the tensors of one checkpoint may hold beyond their storage records
 * together. Expanded views (stride 0) are legal torch, but a 16-byte storage viewed as
 * [32768, 32768] would make every reader write 2 GiB: views may repeat storage only this much.
 */
export const MAX_EXPANSION_BYTES = 64 * 1024 * 1024

/**
 * Many views of one storage multiply bytes too (ten thousand full views of a 1 MB storage
 * would write 10 GB from a 1 MB file): all tensors of a file together may hold at most this
 * many times the bytes of the records they view, plus MAX_EXPANSION_BYTES. A tensor saved
 * under two names (tied weights) is 2x.
 */
export const MAX_VIEW_FACTOR = 4

/** Largest data.pkl we read (it is held in memory whole): a 6B state dict's is ~50 KB. */
export const MAX_PICKLE_BYTES = 256 * 1024 * 1024

const LEGACY_MAGIC = Buffer.from([0x80, 0x02, 0x8a, 0x0a])

/**
 * A zip-format `torch.save` file (docs/formats.md), opened lazily: the zip directory and the pickle
 * are read at open, tensor bytes only when a tensor's chunks are pulled.
 */
export class TorchCheckpoint {
  private constructor(
    readonly path: string,
    readonly tensors: TorchTensorEntry[],
    /** State-dict keys whose values are not tensors (skipped). */
    readonly ignored: string[],
    private readonly fh: FileHandle,
  ) {}

  static async open(path: string): Promise<TorchCheckpoint> {
    const fh = await open(path, 'r')
    try {
      const head = Buffer.alloc(512)
      const {bytesRead} = await withPath(path, () => fh.read(head, 0, 512, 0))
      if (bytesRead >= 4 && head.subarray(0, 4).equals(LEGACY_MAGIC)) {
        throw new TorchFormatError(`${path}: legacy (pre-1.6, non-zip) torch.save format, which glmtool does not read; re-save it with torch.save(torch.load(f), f2) in a current torch`, 'torch-legacy')
      }
      if (bytesRead >= 262 && head.toString('latin1', 257, 262) === 'ustar') {
        throw new TorchFormatError(`${path}: legacy tar-format torch checkpoint, which glmtool does not read; re-save it with a current torch`, 'torch-legacy')
      }
      if (bytesRead < 4 || head.readUInt32LE(0) !== 0x04034b50) {
        throw new TorchFormatError(`${path}: not a zip-format torch checkpoint (bad magic bytes)`, 'torch-not-zip')
      }
      const entries = await readZipIndex(path)
      const pklEntries = [...entries.keys()].filter(n => /^[^/]+\/data\.pkl$/.test(n))
      if (pklEntries.length !== 1) throw new TorchFormatError(`${path}: expected one <root>/data.pkl record, found ${pklEntries.length}`, 'torch-format')
      const root = pklEntries[0].slice(0, -'data.pkl'.length)
      const pklRec = entries.get(pklEntries[0])!
      if (pklRec.size > MAX_PICKLE_BYTES) throw new TorchFormatError(`${path}: ${pklRec.name} is ${pklRec.size} bytes, over the ${MAX_PICKLE_BYTES}-byte limit for a state dict's pickle`, 'pickle-too-large')
      const pkl = await readRange(fh, path, pklRec, 0, pklRec.size)
      if (crc32(pkl, 0) !== pklRec.crc32) throw crcError(path, pklRec)
      const {tensors: refs, ignored} = readStateDict(pkl, path)
      const tensors: TorchTensorEntry[] = []
      const verified = new Set<string>()
      let expansion = 0
      let viewed = 0
      const records = new Set<string>()
      let recordBytes = 0
      for (const [name, ref] of refs) {
        const rec = entries.get(`${root}data/${ref.storage.key}`)
        if (!rec) throw new TorchFormatError(`${path}: tensor ${name}: storage record data/${ref.storage.key} is missing`, 'torch-storage-missing')
        checkStorageBounds(path, name, ref, rec)
        expansion += Math.max(0, numel(ref.shape) * DTYPE_SIZE[ref.storage.dtype] - rec.size)
        if (expansion > MAX_EXPANSION_BYTES) {
          throw new TorchFormatError(`${path}: tensor ${name}: a [${ref.shape}] view with strides [${ref.stride}] of the ${rec.size}-byte storage data/${ref.storage.key}; expanded views may repeat storage bytes by at most ${MAX_EXPANSION_BYTES} bytes per file`, 'torch-expanded-view')
        }
        if (!records.has(rec.name)) {
          records.add(rec.name)
          recordBytes += rec.size
        }
        viewed += numel(ref.shape) * DTYPE_SIZE[ref.storage.dtype]
        if (viewed > MAX_VIEW_FACTOR * recordBytes + MAX_EXPANSION_BYTES) {
          throw new TorchFormatError(`${path}: tensor ${name}: the tensors so far view ${viewed} bytes of ${recordBytes} bytes of storage; views may repeat storage at most ${MAX_VIEW_FACTOR}x (+${MAX_EXPANSION_BYTES} bytes) per file`, 'torch-expanded-view')
        }
        tensors.push(torchTensor(fh, path, name, ref, rec, verified))
      }
      return new TorchCheckpoint(path, tensors, ignored, fh)
    } catch (error) {
      await fh.close()
      throw error
    }
  }

  async close(): Promise<void> {
    await this.fh.close()
  }
}

function checkStorageBounds(path: string, name: string, ref: TensorRef, rec: ZipEntry): void {
  const elem = DTYPE_SIZE[ref.storage.dtype]
  if (rec.size < ref.storage.numel * elem) {
    throw new TorchFormatError(`${path}: tensor ${name}: storage data/${ref.storage.key} holds ${rec.size} bytes, its header says ${ref.storage.numel * elem}`, 'torch-storage-short')
  }
  if (ref.shape.some(d => d < 0) || ref.stride.some(d => d < 0)) throw new TorchFormatError(`${path}: tensor ${name}: negative size or stride`, 'torch-format')
  // BigInt: products of safe integers can pass 2^53 and round into a false fit.
  const count = ref.shape.reduce((n, d) => n * BigInt(d), 1n)
  if (count * BigInt(elem) > BigInt(Number.MAX_SAFE_INTEGER)) throw new TorchFormatError(`${path}: tensor ${name}: shape [${ref.shape}] is implausibly large`, 'torch-format')
  if (count === 0n) return
  let last = BigInt(ref.storageOffset)
  for (let i = 0; i < ref.shape.length; i++) last += BigInt(ref.shape[i] - 1) * BigInt(ref.stride[i])
  if ((last + 1n) * BigInt(elem) > BigInt(rec.size)) {
    throw new TorchFormatError(`${path}: tensor ${name}: needs ${(last + 1n) * BigInt(elem)} bytes of storage data/${ref.storage.key}, which holds ${rec.size}`, 'torch-storage-short')
  }
}

function crcError(path: string, rec: ZipEntry, tensor?: string): TorchFormatError {
  return new TorchFormatError(`${path}: ${tensor ? `tensor ${tensor}: ` : ''}record ${rec.name} fails its CRC-32 check (corrupt file)`, 'zip-crc')
}

/** Check a whole record's CRC-32 once per checkpoint (for tensors that are views of part of it). */
async function verifyRecord(fh: FileHandle, path: string, rec: ZipEntry, verified: Set<string>, tensor: string): Promise<void> {
  if (verified.has(rec.name)) return
  const buf = Buffer.allocUnsafe(Math.min(rec.size, DEFAULT_CHUNK_BYTES))
  let crc = 0
  for (let o = 0; o < rec.size; o += buf.length) {
    const n = Math.min(buf.length, rec.size - o)
    crc = crc32(await readRange(fh, path, rec, o, n, buf.subarray(0, n)), crc)
  }
  if (crc !== rec.crc32) throw crcError(path, rec, tensor)
  verified.add(rec.name)
}

async function readRange(fh: FileHandle, path: string, rec: ZipEntry, start: number, length: number, into?: Buffer): Promise<Buffer> {
  const buf = into ?? Buffer.allocUnsafe(length)
  let done = 0
  while (done < length) {
    const {bytesRead} = await withPath(path, () => fh.read(buf, done, length - done, rec.dataOffset + start + done))
    if (bytesRead === 0) throw new TorchFormatError(`${path}: truncated: record ${rec.name} ends past the end of the file`, 'torch-truncated')
    done += bytesRead
  }
  return buf
}

/**
 * Read buffers are reused from tensor to tensor: allocating two fresh 64 MB buffers per tensor
 * costs page faults and GC time that showed up in convert's profile. A generator takes a pair
 * and gives it back when done; concurrent generators simply get their own.
 */
const bufferPool: Buffer[][] = []
function takeBuffers(size: number): Buffer[] {
  const i = bufferPool.findIndex(p => p[0].length >= size)
  if (i >= 0) return bufferPool.splice(i, 1)[0]
  // Shared memory, so the CRC worker reads the pieces in place.
  return [Buffer.from(new SharedArrayBuffer(size)), Buffer.from(new SharedArrayBuffer(size))]
}
function returnBuffers(bufs: Buffer[]): void {
  bufferPool.push(bufs)
  // Keep the two largest pairs.
  bufferPool.sort((a, b) => b[0].length - a[0].length)
  bufferPool.length = Math.min(bufferPool.length, 2)
}

function isContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expected = 1
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expected) return false
    expected *= shape[i]
  }
  return true
}

function torchTensor(fh: FileHandle, path: string, name: string, ref: TensorRef, rec: ZipEntry, verified: Set<string>): TorchTensorEntry {
  const dtype: DType = ref.storage.dtype
  const elem = DTYPE_SIZE[dtype]
  const total = numel(ref.shape) * elem
  const contiguous = isContiguous(ref.shape, ref.stride)
  // The usual case: the tensor is its whole record, so its CRC-32 is computed as it streams.
  const wholeRecord = contiguous && ref.storageOffset === 0 && total === rec.size
  return {
    name, dtype, shape: ref.shape, file: basename(path), ref,
    async *chunks(maxChunkBytes = DEFAULT_CHUNK_BYTES) {
      if (!wholeRecord) await verifyRecord(fh, path, rec, verified, name)
      if (total === 0) return
      const step = Math.max(elem, maxChunkBytes - (maxChunkBytes % elem))
      if (contiguous) {
        // Two buffers: while the caller writes piece i (buffer i%2), piece i+1 is already being
        // read into the other one, so reading and writing overlap (convert's speed vs cp).
        const bufs = takeBuffers(Math.min(step, total))
        const start = ref.storageOffset * elem
        const readPiece = (o: number, i: number) => readRange(fh, path, rec, start + o, Math.min(step, total - o), bufs[i].subarray(0, Math.min(step, total - o)))
        let pending = readPiece(0, 0)
        // The record's running CRC-32, computed on a worker while the caller writes each piece
        // (crc-worker.ts). A piece's buffer is read into again only once its CRC is done.
        let crc: Promise<number> = Promise.resolve(0)
        try {
          for (let o = 0, i = 0; o < total; o += step, i ^= 1) {
            const piece = await pending
            if (o + step < total) {
              if (wholeRecord) await crc // the other buffer's piece
              pending = readPiece(o + step, i ^ 1)
            }
            if (wholeRecord) crc = crc.then(c => crc32Async(piece, c))
            yield piece
          }
          // After the last piece: the caller may have written the bytes, but the stream fails
          // before it ends, so the output (written to a temporary directory) is discarded.
          if (wholeRecord && (await crc) !== rec.crc32) throw crcError(path, rec, name)
        } finally {
          // A consumer that stops early leaves a read (and a CRC) in flight: let them land before reuse.
          await pending.catch(() => undefined)
          await crc.catch(() => undefined)
          returnBuffers(bufs)
        }
        return
      }
      yield* gatherStrided(fh, path, rec, ref, elem, step)
    },
  }
}

/**
 * Materialise a non-contiguous tensor (transposes, slices with steps, expanded views) as
 * contiguous row-major bytes, copying the longest contiguous inner run at a time.
 */
async function* gatherStrided(fh: FileHandle, path: string, rec: ZipEntry, ref: TensorRef, elem: number, step: number): AsyncGenerator<Buffer> {
  const {shape, stride} = ref
  const nd = shape.length
  // Innermost dims that are contiguous among themselves form one run.
  let k = nd
  let run = 1
  while (k > 0 && stride[k - 1] === run) {
    run *= shape[k - 1]
    k--
  }
  let maxIndex = ref.storageOffset
  for (let i = 0; i < nd; i++) maxIndex += (shape[i] - 1) * stride[i]
  const span = (maxIndex - ref.storageOffset + 1) * elem
  const spanBuf = span <= MAX_GATHER_SPAN ? await readRange(fh, path, rec, ref.storageOffset * elem, span) : undefined
  const runBytes = run * elem
  const outer = numel(shape.slice(0, k))
  const idx = new Array<number>(k).fill(0)
  let out = Buffer.allocUnsafe(Math.max(step - (step % runBytes), runBytes))
  let filled = 0
  for (let n = 0; n < outer; n++) {
    let off = 0
    for (let i = 0; i < k; i++) off += idx[i] * stride[i]
    if (spanBuf) spanBuf.copy(out, filled, off * elem, off * elem + runBytes)
    else await readRange(fh, path, rec, (ref.storageOffset + off) * elem, runBytes, out.subarray(filled, filled + runBytes))
    filled += runBytes
    if (filled + runBytes > out.length) {
      yield out.subarray(0, filled)
      out = Buffer.allocUnsafe(out.length)
      filled = 0
    }
    for (let i = k - 1; i >= 0; i--) {
      if (++idx[i] < shape[i]) break
      idx[i] = 0
    }
  }
  if (filled > 0) yield out.subarray(0, filled)
}
