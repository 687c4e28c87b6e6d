import {GlmtoolError} from '../../errors.js'
import {byteLength, type DType, isFloat} from '../../formats/dtype.js'
import {decodeFloats} from '../../formats/dtype-convert.js'
import {DEFAULT_CHUNK_BYTES, type TensorEntry} from '../../formats/tensor.js'
import {QuantizationError, toFp16Weight, type QuantBits} from '../../quant/rtn.js'
import {RtnPool, type SharedBlock} from './rtn-pool.js'
import {addErrors, emptyErrors, type RowBlockErrors} from '../../quant/rtn-rows.js'

/**
 * Output tensors of `glmtool quantize`, produced while the safetensors writer pulls them, so a
 * model of any size streams through in bounded memory:
 * - rtnTensors: a linear's published `weight` and `weight_scale` by RTN, in blocks of whole
 *   rows (rows are independent in the published scheme), double-buffered so that reading the
 *   next block overlaps the worker threads quantizing this one.
 * - finiteChecked: a float tensor passed through unchanged, refusing NaN and infinities.
 */

/** Input rows per block: ~32 MB of fp16, and at least one row. */
const BLOCK_BYTES = 32 * 1024 * 1024

export interface RtnTensorStats extends RowBlockErrors {
  readonly name: string
  readonly rows: number
  readonly cols: number
}

/** A float source tensor's rows as fp16 bits, filling the shared blocks in turn. */
async function* rowBlocks(src: TensorEntry, rows: number, cols: number, rowsPer: number, blocks: readonly SharedBlock[], readBytes = DEFAULT_CHUNK_BYTES): AsyncGenerator<{block: SharedBlock, rows: number, rowOffset: number}> {
  const elem = byteLength(src.dtype, [1])
  let which = 0
  let filled = 0 // elements in the current block
  let rowOffset = 0
  let cur = blocks[0]
  let bytes = new Uint8Array(cur.w.buffer, cur.w.byteOffset, cur.w.byteLength)
  const perBlock = rowsPer * cols
  for await (const chunk of src.chunks(readBytes)) {
    let off = 0 // elements of chunk consumed
    const n = chunk.length / elem
    while (off < n) {
      const take = Math.min(n - off, perBlock - filled)
      if (src.dtype === 'F16') {
        bytes.set(chunk.subarray(off * 2, (off + take) * 2), filled * 2)
      } else {
        const part = chunk.subarray(off * elem, (off + take) * elem)
        const values = src.dtype === 'F32' ? decodeFloats(part, 'F32') : new Uint16Array(Uint8Array.from(part).buffer)
        try {
          cur.w.set(toFp16Weight(values, src.dtype as 'BF16' | 'F32'), filled)
        } catch (error) {
          throw new QuantizationError(`${src.file}: tensor ${src.name}: ${(error as Error).message}`, (error as GlmtoolError).code ?? 'quant')
        }
      }
      filled += take
      off += take
      if (filled === perBlock) {
        yield {block: cur, rows: rowsPer, rowOffset}
        rowOffset += rowsPer
        filled = 0
        which = (which + 1) % blocks.length
        cur = blocks[which]
        bytes = new Uint8Array(cur.w.buffer, cur.w.byteOffset, cur.w.byteLength)
      }
    }
  }
  if (filled % cols !== 0 || rowOffset + filled / cols !== rows) {
    throw new GlmtoolError('quant-read', `${src.file}: tensor ${src.name} yielded ${rowOffset * cols + filled} elements, expected ${rows * cols}`)
  }
  if (filled > 0) yield {block: cur, rows: filled / cols, rowOffset}
}

/**
 * The published `weight` (int8 [rows, cols] or packed int4 [rows, cols/2]) and `weight_scale`
 * (fp16 [rows] or [rows, cols/groupSize]) of RTN-quantizing `src` [rows, cols]. The scale
 * tensor is produced by the weight's pass; pulled first (or alone), it runs its own pass.
 * `onDone` receives the error sums once the weight has been produced.
 */
export function rtnTensors(
  src: TensorEntry, bits: QuantBits, groupSize: number, pool: RtnPool, meanSq: Float64Array | undefined,
  onDone: (s: RtnTensorStats) => void, sizes: {blockBytes?: number, readBytes?: number} = {},
): [TensorEntry, TensorEntry] {
  const [rows, cols] = src.shape
  const g = groupSize || cols
  const groups = cols / g
  const rowsPer = Math.max(1, Math.min(rows, Math.floor((sizes.blockBytes ?? BLOCK_BYTES) / (cols * 2))))
  let scales: Uint16Array | undefined
  async function* pass(emit: boolean): AsyncGenerator<Buffer> {
    // Three blocks in rotation, so that reading block k+1, quantizing blocks k and k+1 (the
    // workers queue them) and writing block k-1's output all overlap.
    const blocks = pool.blocks(3, rowsPer, cols, g, bits)
    const out = new Uint16Array(rows * groups)
    const errors = emptyErrors()
    const it = rowBlocks(src, rows, cols, rowsPer, blocks, sizes.readBytes)
    type Job = {done: Promise<RowBlockErrors>, block: SharedBlock, n: number, rowOffset: number}
    let next = it.next()
    let pending: Job | undefined
    try {
      for (;;) {
        const r = await next
        let job: Job | undefined
        if (!r.done) {
          const {block, rows: n, rowOffset} = r.value
          job = {done: pool.quantize(block, n, cols, g, bits, meanSq, `${src.file}: tensor ${src.name}`, rowOffset), block, n, rowOffset}
          job.done.catch(() => undefined) // awaited below; keep an early failure from being unhandled
          next = it.next() // read the following block meanwhile
        }
        if (pending) {
          const {block, n, rowOffset} = pending
          addErrors(errors, await pending.done)
          out.set(block.outS.subarray(0, n * groups), rowOffset * groups)
          if (emit) yield Buffer.from(block.outW.buffer, block.outW.byteOffset, bits === 4 ? n * cols / 2 : n * cols)
        }
        pending = job
        if (!pending) break
      }
    } finally {
      // On failure or early stop, let in-flight work land before the buffers are reused.
      await pending?.done.catch(() => undefined)
      await next.catch(() => undefined)
    }
    scales = out
    onDone({name: src.name, rows, cols, ...errors})
  }
  const weight: TensorEntry = {
    name: src.name, dtype: 'I8', shape: [rows, bits === 4 ? cols / 2 : cols], file: src.file,
    chunks: () => pass(true),
  }
  const scale: TensorEntry = {
    name: `${src.name}_scale`, dtype: 'F16', shape: groupSize ? [rows, groups] : [rows], file: src.file,
    async *chunks() {
      if (!scales) for await (const _ of pass(false)) { /* scales only */ }
      yield Buffer.from(scales!.buffer, scales!.byteOffset, scales!.byteLength)
    },
  }
  return [weight, scale]
}

/** The first non-finite element of a float chunk, or -1 (bit tests, no decoding for 16-bit types). */
export function firstNonFinite(chunk: Buffer, dtype: DType): number {
  if (dtype === 'F16' || dtype === 'BF16') {
    const mask = dtype === 'F16' ? 0x7c00 : 0x7f80
    for (let i = 0; i + 1 < chunk.length; i += 2) if (((chunk[i] | (chunk[i + 1] << 8)) & mask) === mask) return i / 2
    return -1
  }
  if (dtype === 'F32') {
    for (let i = 0; i + 3 < chunk.length; i += 4) if ((chunk[i + 3] & 0x7f) === 0x7f && (chunk[i + 2] & 0x80) === 0x80) return i / 4
    return -1
  }
  if (dtype === 'F64') {
    const v = decodeFloats(chunk, 'F64')
    return v.findIndex(x => !Number.isFinite(x))
  }
  return -1
}

export function nonFiniteError(t: {name: string, file: string, dtype: DType}, index: number): QuantizationError {
  return new QuantizationError(`${t.file}: tensor ${t.name} holds a non-finite value (NaN or infinity) at element ${index}; refusing to quantize a broken checkpoint`, 'quant-nonfinite')
}

/** `t` unchanged, refusing NaN and infinities in float tensors as its bytes pass. */
export function finiteChecked(t: TensorEntry): TensorEntry {
  if (!isFloat(t.dtype)) return t
  return {
    name: t.name, dtype: t.dtype, shape: t.shape, file: t.file,
    async *chunks(max) {
      let seen = 0
      const elem = byteLength(t.dtype, [1])
      for await (const c of t.chunks(max)) {
        const k = firstNonFinite(c, t.dtype)
        if (k >= 0) throw nonFiniteError(t, seen + k)
        seen += c.length / elem
        yield c
      }
    },
  }
}
