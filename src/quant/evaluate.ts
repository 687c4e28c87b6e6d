import {checkpoint} from '../pipelines/output-dir.js'
import {OnnxCpuBackend} from '../runtime/backends/onnx-cpu.js'
import {promptLayout} from '../runtime/generate.js'
import type {ChatTokenizer} from '../runtime/tokenizer/index.js'
import {argmax} from './error.js'

/**
 * End-to-end quality of quantized models against the full-precision one: every position of
 * held-out sequences (prefill, logits for all rows) through onnxruntime, then the mean
 * KL(P_ref || P_quant) of the next-token distributions (nats) and how often the top-1 token
 * agrees. All models are loaded together and each sequence runs through each, so only one
 * sequence's logits are held at a time.
 */

export interface EndToEnd {
  readonly label: string
  /** Mean KL divergence per position, nats. */
  readonly meanKl: number
  readonly maxKl: number
  /** Fraction of positions whose argmax token agrees with the reference's. */
  readonly top1: number
}

export interface EvaluationResult {
  readonly sequences: number
  readonly positions: number
  readonly models: EndToEnd[]
  readonly seconds: number
}

export async function evaluateAgainst(referenceDir: string, candidates: readonly {label: string, dir: string}[], tokenizer: ChatTokenizer, sequences: readonly number[][], opts: {threads?: number} = {}): Promise<EvaluationResult> {
  const started = Date.now()
  const ref = await OnnxCpuBackend.load(referenceDir, {threads: opts.threads})
  const models: OnnxCpuBackend[] = []
  try {
    for (const c of candidates) models.push(await OnnxCpuBackend.load(c.dir, {threads: opts.threads}))
    const kl = candidates.map(() => ({sum: 0, max: 0, agree: 0}))
    let positions = 0
    for (const ids of sequences) {
      await checkpoint()
      const layout = promptLayout(tokenizer, ids)
      const input = {ids, positions: layout.positions, blockPositions: layout.blockPositions, bidirectional: layout.bidirectional, logits: 'all' as const}
      ref.reset()
      const r = await ref.forward(input)
      const V = r.vocab
      const outs = []
      for (const m of models) {
        m.reset()
        outs.push(await m.forward(input))
      }
      const p = new Float64Array(V)
      for (let row = 0; row < r.rows; row++) {
        // KL(P || Q) = sum_i p_i ((a_i - lse_a) - (b_i - lse_b)), P computed once per row.
        const a = r.logits.subarray(row * V, (row + 1) * V)
        const lseA = logSumExp(a)
        for (let i = 0; i < V; i++) p[i] = Math.exp(a[i] - lseA)
        const top = argmax(a)
        for (let m = 0; m < models.length; m++) {
          const b = outs[m].logits.subarray(row * V, (row + 1) * V)
          const lseB = logSumExp(b)
          let k = 0
          for (let i = 0; i < V; i++) if (p[i] > 0) k += p[i] * ((a[i] - lseA) - (b[i] - lseB))
          k = Math.max(0, k)
          kl[m].sum += k
          kl[m].max = Math.max(kl[m].max, k)
          if (argmax(b) === top) kl[m].agree++
        }
      }
      positions += r.rows
    }
    return {
      sequences: sequences.length,
      positions,
      models: candidates.map((c, m) => ({label: c.label, meanKl: kl[m].sum / positions, maxKl: kl[m].max, top1: kl[m].agree / positions})),
      seconds: (Date.now() - started) / 1000,
    }
  } finally {
    await ref.dispose()
    for (const m of models) await m.dispose()
  }
}

function logSumExp(x: Float32Array): number {
  let max = -Infinity
  for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i]
  let sum = 0
  for (let i = 0; i < x.length; i++) sum += Math.exp(x[i] - max)
  return max + Math.log(sum)
}
