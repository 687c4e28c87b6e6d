import type {ModelSource} from '../model-dir.js'
import type {ChatTokenizer} from '../../runtime/tokenizer/index.js'
import type {ActivationStats} from '../../quant/calibrate.js'
import {runStreamed, streamInputs} from './streamed-forward.js'

/**
 * Per-input-channel statistics of every linear layer's input, E[x_i^2] and E[|x_i|], over
 * calibration sequences: the full-precision model runs in onnxruntime one slice at a time
 * (streamed-forward.ts: the embedding, each layer, with the calibration sequences' hidden states
 * passed from one to the next), each layer's slice also outputs its linears' inputs, and those
 * rows are folded into running sums and dropped. Memory: one layer's weights, the sequences'
 * hidden states, and two float64 vectors per linear however much text is used.
 */

export interface LinearStats extends ActivationStats {
  readonly meanSq: Float64Array
  readonly meanAbs: Float64Array
  /** Rows (tokens) seen. */
  readonly rows: number
}

export interface StatsResult {
  readonly stats: Map<string, LinearStats>
  readonly sequences: number
  readonly tokens: number
  readonly seconds: number
}

/** Running sums of x^2 and |x| per input channel of each linear, in the order rows arrive. */
export class StatsAccumulator {
  private readonly sums = new Map<string, {sq: Float64Array, abs: Float64Array, rows: number}>()

  add(weight: string, x: Float32Array, cols: number): void {
    const rows = x.length / cols
    let s = this.sums.get(weight)
    if (!s) {
      s = {sq: new Float64Array(cols), abs: new Float64Array(cols), rows: 0}
      this.sums.set(weight, s)
    }
    for (let r = 0; r < rows; r++) {
      const o = r * cols
      for (let c = 0; c < cols; c++) {
        const v = x[o + c]
        s.sq[c] += v * v
        s.abs[c] += v < 0 ? -v : v
      }
    }
    s.rows += rows
  }

  result(): Map<string, LinearStats> {
    const stats = new Map<string, LinearStats>()
    for (const [name, s] of this.sums) stats.set(name, {meanSq: s.sq.map(v => v / s.rows), meanAbs: s.abs.map(v => v / s.rows), rows: s.rows})
    return stats
  }
}

export interface StatsOptions {
  /** Directory for the slices' files. */
  readonly scratch: string
  readonly threads?: number
  readonly onLayer?: (done: number, total: number) => void
}

/** Collects the statistics for `model` (open, float); the signature tests substitute a whole-graph reference for. */
export type StatsCollector = (model: ModelSource, tokenizer: ChatTokenizer, sequences: readonly number[][], opts: StatsOptions) => Promise<StatsResult>

export const collectActivationStats: StatsCollector = async (model, tokenizer, sequences, opts) => {
  const started = Date.now()
  const acc = new StatsAccumulator()
  await runStreamed(model, streamInputs(tokenizer, sequences), {
    scratch: opts.scratch, threads: opts.threads,
    onLinearInput: (weight, x, cols) => acc.add(weight, x, cols),
    onPart: (_part, k, total) => opts.onLayer?.(k, total),
  })
  const tokens = sequences.reduce((a, s) => a + s.length, 0)
  return {stats: acc.result(), sequences: sequences.length, tokens, seconds: (Date.now() - started) / 1000}
}
