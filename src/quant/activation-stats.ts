import type * as ort from 'onnxruntime-node'
import {LINEAR_INPUT_PREFIX} from '../pipelines/export-onnx.js'
import {checkpoint} from '../pipelines/output-dir.js'
import {OnnxCpuBackend} from '../runtime/backends/onnx-cpu.js'
import {promptLayout} from '../runtime/generate.js'
import type {ChatTokenizer} from '../runtime/tokenizer/index.js'
import type {ActivationStats} from './calibrate.js'

/**
 * Per-input-channel statistics of every linear layer's input, E[x_i^2] and E[|x_i|], over
 * calibration sequences: the full-precision model runs in onnxruntime from the calibration
 * variant of the ONNX export (export-onnx.ts `linearInputs`), which also outputs each linear's
 * input; each run's rows are folded into running sums and dropped, so memory is two float64
 * vectors per linear however much text is used (plus one run's activations).
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

export async function collectActivationStats(onnxDir: string, tokenizer: ChatTokenizer, sequences: readonly number[][], opts: {threads?: number} = {}): Promise<StatsResult> {
  const started = Date.now()
  const sums = new Map<string, {sq: Float64Array, abs: Float64Array, rows: number}>()
  const onOutputs = (outputs: Readonly<Record<string, ort.Tensor>>) => {
    for (const [name, t] of Object.entries(outputs)) {
      if (!name.startsWith(LINEAR_INPUT_PREFIX)) continue
      const weight = name.slice(LINEAR_INPUT_PREFIX.length)
      const cols = Number(t.dims[t.dims.length - 1])
      const x = t.data as Float32Array
      const rows = x.length / cols
      let s = sums.get(weight)
      if (!s) {
        s = {sq: new Float64Array(cols), abs: new Float64Array(cols), rows: 0}
        sums.set(weight, s)
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
  }
  const backend = await OnnxCpuBackend.load(onnxDir, {threads: opts.threads, onOutputs})
  let tokens = 0
  try {
    for (const ids of sequences) {
      await checkpoint()
      backend.reset()
      const layout = promptLayout(tokenizer, ids)
      // 'all': the output layer's input is the rows that get logits.
      await backend.forward({ids, positions: layout.positions, blockPositions: layout.blockPositions, bidirectional: layout.bidirectional, logits: 'all'})
      tokens += ids.length
    }
  } finally {
    await backend.dispose()
  }
  const stats = new Map<string, LinearStats>()
  for (const [name, s] of sums) {
    stats.set(name, {meanSq: s.sq.map(v => v / s.rows), meanAbs: s.abs.map(v => v / s.rows), rows: s.rows})
  }
  return {stats, sequences: sequences.length, tokens, seconds: (Date.now() - started) / 1000}
}
