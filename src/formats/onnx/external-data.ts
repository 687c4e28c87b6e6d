import {open, type FileHandle} from 'node:fs/promises'
import {GlmtoolError, withPath} from '../../errors.js'
import {onnx, type ElemType, type TensorProto} from './onnx-builder.js'

/**
 * The weights of an exported model, streamed tensor by tensor into one external data file
 * (`model.onnx.data`) beside `model.onnx`, which records only `location`, `offset` and `length`
 * per initializer (onnx.proto's external data convention; docs/formats.md).
 *
 * Alignment: ONNX Runtime memory-maps an external initializer on the CPU only when its offset
 * is a multiple of the OS allocation granularity (4 KiB pages on Linux/macOS, 64 KiB on
 * Windows; ORT's own writer pads tensors over 1 MB this way, see its ModelSavingOptions). So
 * tensors of at least LARGE_TENSOR bytes start at a 64 KiB boundary, which satisfies every OS;
 * smaller ones (norm weights, biases) at 64 bytes, so every element is naturally aligned and
 * small tensors do not waste a granule each.
 */
export const LARGE_TENSOR = 1 << 20
export const LARGE_ALIGN = 64 * 1024
export const SMALL_ALIGN = 64

export function alignmentFor(length: number): number {
  return length >= LARGE_TENSOR ? LARGE_ALIGN : SMALL_ALIGN
}

export interface ExternalRange {
  location: string
  offset: number
  length: number
}

export class ExternalDataWriter {
  private offset = 0
  private constructor(private readonly fh: FileHandle, readonly path: string, readonly location: string) {}

  /** `path` is where the file is written; `location` the name model.onnx records (relative). */
  static async create(path: string, location: string): Promise<ExternalDataWriter> {
    return new ExternalDataWriter(await open(path, 'wx'), path, location)
  }

  get size(): number {
    return this.offset
  }

  /**
   * Append one tensor, padding with zeros up to its alignment first, and return its
   * initializer proto. `chunks` must yield exactly `length` bytes.
   */
  async add(name: string, elemType: ElemType, dims: readonly number[], length: number, chunks: AsyncIterable<Buffer>): Promise<TensorProto> {
    const align = alignmentFor(length)
    const start = Math.ceil(this.offset / align) * align
    if (start > this.offset) await withPath(this.path, () => this.fh.write(Buffer.alloc(start - this.offset), 0, start - this.offset, this.offset))
    let pos = start
    const wrong = (got: string) => new GlmtoolError('onnx-write', `${this.path}: tensor ${name} yielded ${got} bytes, expected ${length}`)
    for await (const c of chunks) {
      if (pos + c.length > start + length) throw wrong(`more than ${length}`)
      await withPath(this.path, () => this.fh.write(c, 0, c.length, pos))
      pos += c.length
    }
    if (pos !== start + length) throw wrong(String(pos - start))
    this.offset = pos
    return externalTensorProto(name, elemType, dims, {location: this.location, offset: start, length})
  }

  async close(): Promise<void> {
    await this.fh.sync()
    await this.fh.close()
  }
}

export function externalTensorProto(name: string, elemType: ElemType, dims: readonly number[], r: ExternalRange): TensorProto {
  return {
    name,
    dataType: elemType,
    dims: [...dims],
    dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
    externalData: [
      {key: 'location', value: r.location},
      {key: 'offset', value: String(r.offset)},
      {key: 'length', value: String(r.length)},
    ],
  }
}

/** Read back an initializer's external range (for verification); undefined when not external. */
export function externalRangeOf(t: TensorProto): ExternalRange | undefined {
  if (t.dataLocation !== onnx.TensorProto.DataLocation.EXTERNAL) return undefined
  const kv = new Map((t.externalData ?? []).map(e => [e.key ?? '', e.value ?? '']))
  const location = kv.get('location')
  if (location === undefined) return undefined
  return {location, offset: Number(kv.get('offset') ?? 0), length: Number(kv.get('length') ?? -1)}
}
