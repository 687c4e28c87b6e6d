import {existsSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {Worker} from 'node:worker_threads'
import type {DType} from '../../formats/dtype.js'
import type {TensorEntry} from '../../formats/tensor.js'
import type {LinearStats} from './activation-stats.js'
import {type LinearReport, quantizeUnit, type UnitOptions, type UnitResult} from './calibrated-unit.js'
import type {CalibrationUnit} from '../../quant/calibration-plan.js'
import {QuantizationError} from '../../quant/rtn.js'

/**
 * Calibration units (a layer's four linears, or the output layer) on worker threads, one unit
 * per worker at a time: units are independent (each reads its own tensors and statistics), so
 * N workers calibrate N layers at once. Each worker opens the model itself (calibrate-worker.ts)
 * and needs the unit's working copies (~1.6 GB at the 6B size), so the caller bounds N by
 * memory. With one thread, or without the compiled worker script (TypeScript sources without a
 * build), units run on the calling thread. The result does not depend on where a unit ran.
 */

/** What a worker receives. */
export interface UnitJob {
  id: number
  /** Model path to open (the same source the caller has open). */
  model: string
  unit: number
  lmHead: boolean
  stats: Record<string, LinearStats>
  opts: UnitOptions
}

type Reply = {id: number, tensors: [string, {dtype: DType, shape: number[], data: Uint8Array}][], reports: LinearReport[]}
  | {id: number, error: {message: string, code: string}}

function workerScript(): string | undefined {
  const here = fileURLToPath(import.meta.url)
  const js = here.endsWith('.ts') ? join(dirname(here), '../../../dist/pipelines/quantize/calibrate-worker.js') : join(dirname(here), 'calibrate-worker.js')
  return existsSync(js) ? js : undefined
}

export class CalibratePool {
  private readonly idle: Worker[]
  private readonly waiting: ((w: Worker) => void)[] = []
  private readonly pending = new Map<number, {resolve: (r: UnitResult) => void, reject: (e: Error) => void}>()
  private nextId = 0

  private constructor(private readonly workers: Worker[]) {
    this.idle = [...workers]
    for (const w of workers) {
      w.on('message', (r: Reply) => {
        const p = this.pending.get(r.id)
        if (!p) return
        this.pending.delete(r.id)
        this.release(w)
        if ('error' in r) {
          p.reject(new QuantizationError(r.error.message, r.error.code))
          return
        }
        const tensors = new Map(r.tensors.map(([name, t]) => [name, {...t, data: Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)}]))
        p.resolve({tensors, reports: r.reports})
      })
      w.on('error', err => {
        for (const p of this.pending.values()) p.reject(err)
        this.pending.clear()
      })
    }
  }

  /** `threads` workers; 1 or no worker script: units run on this thread. */
  static create(threads: number): CalibratePool {
    const script = threads > 1 ? workerScript() : undefined
    return new CalibratePool(script ? Array.from({length: threads}, () => new Worker(script)) : [])
  }

  get threads(): number {
    return Math.max(1, this.workers.length)
  }

  private release(w: Worker): void {
    const next = this.waiting.shift()
    if (next) next(w)
    else this.idle.push(w)
  }

  private async acquire(): Promise<Worker> {
    return this.idle.pop() ?? new Promise<Worker>(resolve => this.waiting.push(resolve))
  }

  /** Calibrate units[index] of the model at `modelPath` (open in the caller as byName). */
  async run(modelPath: string, units: readonly CalibrationUnit[], index: number, lmHead: boolean, byName: Map<string, TensorEntry>, stats: Map<string, LinearStats>, opts: UnitOptions): Promise<UnitResult> {
    if (this.workers.length === 0) return quantizeUnit(units[index], byName, stats, opts)
    const needed: Record<string, LinearStats> = {}
    for (const l of units[index].linears) {
      const s = stats.get(l.weight)
      if (s) needed[l.weight] = s
    }
    const w = await this.acquire()
    const id = this.nextId++
    return new Promise<UnitResult>((resolve, reject) => {
      this.pending.set(id, {resolve, reject})
      const job: UnitJob = {id, model: modelPath, unit: index, lmHead, stats: needed, opts}
      w.postMessage(job)
    })
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map(w => w.terminate()))
  }
}
