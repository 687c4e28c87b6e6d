import {existsSync} from 'node:fs'
import {availableParallelism} from 'node:os'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {Worker} from 'node:worker_threads'
import {QuantizationError, type QuantBits} from '../../quant/rtn.js'
import {addErrors, emptyErrors, quantizeRowsPublished, type RowBlockErrors} from '../../quant/rtn-rows.js'

/**
 * Worker threads for RTN quantization: a block of whole rows (in SharedArrayBuffers, so nothing
 * is copied) is split into one contiguous row range per worker. Rows are independent in the
 * published scheme (one scale per row or per row and group), so the result does not depend on
 * the split. With one thread, or when the compiled worker script is not there (running from
 * TypeScript sources without a build), the block is quantized on the calling thread.
 */

/** What a worker receives (rtn-worker.ts). */
export interface RowJob {
  id: number
  w: SharedArrayBuffer
  wByteOffset: number
  rows: number
  cols: number
  r0: number
  r1: number
  groupSize: number
  bits: QuantBits
  outW: SharedArrayBuffer
  outWByteOffset: number
  outS: SharedArrayBuffer
  outSByteOffset: number
  meanSq?: Float64Array
  name: string
  rowOffset: number
}

type Reply = {id: number, errors: RowBlockErrors} | {id: number, error: {message: string, code: string}}

function workerScript(): string | undefined {
  const here = fileURLToPath(import.meta.url)
  const js = here.endsWith('.ts') ? join(dirname(here), '../../../dist/pipelines/quantize/rtn-worker.js') : join(dirname(here), 'rtn-worker.js')
  return existsSync(js) ? js : undefined
}

/** Typed views over shared memory, as the pool needs them. */
export interface SharedBlock {
  /** fp16 bits [rows, cols]. */
  readonly w: Uint16Array
  /** int8 [rows, cols] or packed [rows, cols/2]. */
  readonly outW: Int8Array
  /** fp16 bits [rows, cols / groupSize]. */
  readonly outS: Uint16Array
}

export class RtnPool {
  private readonly workers: Worker[]
  private readonly pending = new Map<number, {resolve: (e: RowBlockErrors) => void, reject: (e: Error) => void}>()
  private nextId = 0

  private constructor(workers: Worker[]) {
    this.workers = workers
    for (const w of workers) {
      w.on('message', (r: Reply) => {
        const p = this.pending.get(r.id)
        if (!p) return
        this.pending.delete(r.id)
        if ('error' in r) p.reject(new QuantizationError(r.error.message, r.error.code))
        else p.resolve(r.errors)
      })
      w.on('error', err => {
        for (const p of this.pending.values()) p.reject(err)
        this.pending.clear()
      })
    }
  }

  /** `threads` workers (default: every core); 1 or no worker script: quantize on this thread. */
  static create(threads = availableParallelism()): RtnPool {
    const script = threads > 1 ? workerScript() : undefined
    return new RtnPool(script ? Array.from({length: threads}, () => new Worker(script)) : [])
  }

  get threads(): number {
    return Math.max(1, this.workers.length)
  }

  private slots: {w: SharedArrayBuffer, outW: SharedArrayBuffer, outS: SharedArrayBuffer}[] = []

  /**
   * `count` blocks for up to `rows` rows, over shared memory kept from call to call: the
   * buffers are allocated once at the largest size asked for, not per tensor (shared memory
   * is external to V8's heap, and dead per-tensor buffers lingered until a GC, growing RSS).
   * Callers use them one tensor at a time.
   */
  blocks(count: number, rows: number, cols: number, groupSize: number, bits: QuantBits): SharedBlock[] {
    const need = {w: rows * cols * 2, outW: bits === 4 ? rows * cols / 2 : rows * cols, outS: rows * (cols / groupSize) * 2}
    for (let i = 0; i < count; i++) {
      const s = this.slots[i]
      if (!s || s.w.byteLength < need.w || s.outW.byteLength < need.outW || s.outS.byteLength < need.outS) {
        this.slots[i] = {
          w: new SharedArrayBuffer(Math.max(need.w, s?.w.byteLength ?? 0)),
          outW: new SharedArrayBuffer(Math.max(need.outW, s?.outW.byteLength ?? 0)),
          outS: new SharedArrayBuffer(Math.max(need.outS, s?.outS.byteLength ?? 0)),
        }
      }
    }
    return this.slots.slice(0, count).map(s => ({
      w: new Uint16Array(s.w, 0, need.w / 2),
      outW: new Int8Array(s.outW, 0, need.outW),
      outS: new Uint16Array(s.outS, 0, need.outS / 2),
    }))
  }

  /** Shared buffers for blocks of up to `rows` rows. */
  static allocate(rows: number, cols: number, groupSize: number, bits: QuantBits): SharedBlock {
    return {
      w: new Uint16Array(new SharedArrayBuffer(rows * cols * 2)),
      outW: new Int8Array(new SharedArrayBuffer(bits === 4 ? rows * cols / 2 : rows * cols)),
      outS: new Uint16Array(new SharedArrayBuffer(rows * (cols / groupSize) * 2)),
    }
  }

  /** Quantize the first `rows` rows of `block` (rowOffset: index of its first row in the tensor, for messages). */
  async quantize(block: SharedBlock, rows: number, cols: number, groupSize: number, bits: QuantBits, meanSq: Float64Array | undefined, name: string, rowOffset: number): Promise<RowBlockErrors> {
    if (this.workers.length === 0) return quantizeRowsPublished(block.w, cols, 0, rows, groupSize, bits, block.outW, block.outS, meanSq, name, rowOffset)
    const n = Math.min(this.workers.length, rows)
    const per = Math.ceil(rows / n)
    const jobs: Promise<RowBlockErrors>[] = []
    for (let k = 0; k < n; k++) {
      const r0 = k * per
      const r1 = Math.min(rows, r0 + per)
      if (r0 >= r1) break
      const id = this.nextId++
      jobs.push(new Promise<RowBlockErrors>((resolve, reject) => {
        this.pending.set(id, {resolve, reject})
        const job: RowJob = {
          id, w: block.w.buffer as SharedArrayBuffer, wByteOffset: block.w.byteOffset, rows, cols, r0, r1, groupSize, bits,
          outW: block.outW.buffer as SharedArrayBuffer, outWByteOffset: block.outW.byteOffset,
          outS: block.outS.buffer as SharedArrayBuffer, outSByteOffset: block.outS.byteOffset,
          meanSq, name, rowOffset,
        }
        this.workers[k].postMessage(job)
      }))
    }
    const results = await Promise.allSettled(jobs)
    const failed = results.find(r => r.status === 'rejected')
    if (failed) throw (failed as PromiseRejectedResult).reason
    const total = emptyErrors()
    for (const r of results) addErrors(total, (r as PromiseFulfilledResult<RowBlockErrors>).value)
    return total
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map(w => w.terminate()))
  }
}
