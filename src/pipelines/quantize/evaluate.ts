import type {ModelSource} from '../model-dir.js'
import type {ChatTokenizer} from '../../runtime/tokenizer/index.js'
import {argmax} from '../../quant/error.js'
import {runStreamed, streamInputs} from './streamed-forward.js'

/**
 * End-to-end quality of quantized models against the full-precision one: every position of
 * held-out sequences (prefill, logits for all rows), then the mean KL(P_ref || P_quant) of the
 * next-token distributions (nats) and how often the top-1 token agrees. Each model runs streamed
 * (streamed-forward.ts: one layer's weights in memory at a time, every sequence through a layer
 * before the next), so memory holds one slice, the hidden states, and two models' logits: the
 * reference's, kept, and one candidate's at a time.
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

/** KL(P_ref || P_quant) and top-1 agreement summed over positions, row by row. */
export class KlAccumulator {
  private sum = 0
  private max = 0
  private agree = 0
  private positions = 0
  private readonly p: Float64Array

  constructor(readonly label: string, private readonly vocab: number) {
    this.p = new Float64Array(vocab)
  }

  /** Rows of reference and candidate logits, [rows, vocab] each. */
  add(ref: Float32Array, cand: Float32Array, rows: number): void {
    const V = this.vocab
    const p = this.p
    for (let row = 0; row < rows; row++) {
      // KL(P || Q) = sum_i p_i ((a_i - lse_a) - (b_i - lse_b)).
      const a = ref.subarray(row * V, (row + 1) * V)
      const b = cand.subarray(row * V, (row + 1) * V)
      const lseA = logSumExp(a)
      for (let i = 0; i < V; i++) p[i] = Math.exp(a[i] - lseA)
      const lseB = logSumExp(b)
      let k = 0
      for (let i = 0; i < V; i++) if (p[i] > 0) k += p[i] * ((a[i] - lseA) - (b[i] - lseB))
      k = Math.max(0, k)
      this.sum += k
      this.max = Math.max(this.max, k)
      if (argmax(b) === argmax(a)) this.agree++
      this.positions++
    }
  }

  result(): EndToEnd {
    return {label: this.label, meanKl: this.sum / this.positions, maxKl: this.max, top1: this.agree / this.positions}
  }
}

export async function evaluateStreamed(
  reference: ModelSource, candidates: readonly {label: string, model: ModelSource}[], tokenizer: ChatTokenizer, sequences: readonly number[][],
  opts: {scratch: string, threads?: number, onModel?: (label: string) => void},
): Promise<EvaluationResult> {
  const started = Date.now()
  const inputs = streamInputs(tokenizer, sequences)
  const refLogits: Float32Array[] = []
  opts.onModel?.('float')
  await runStreamed(reference, inputs, {scratch: opts.scratch, threads: opts.threads, onLogits: (s, logits) => {
    refLogits[s] = logits
  }})
  const models: EndToEnd[] = []
  for (const c of candidates) {
    opts.onModel?.(c.label)
    let acc: KlAccumulator | undefined
    await runStreamed(c.model, inputs, {scratch: opts.scratch, threads: opts.threads, onLogits: (s, logits, rows, vocab) => {
      acc ??= new KlAccumulator(c.label, vocab)
      acc.add(refLogits[s], logits, rows)
    }})
    models.push(acc!.result())
  }
  return {
    sequences: sequences.length,
    positions: sequences.reduce((a, s) => a + s.length, 0),
    models,
    seconds: (Date.now() - started) / 1000,
  }
}

function logSumExp(x: Float32Array): number {
  let max = -Infinity
  for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i]
  let sum = 0
  for (let i = 0; i < x.length; i++) sum += Math.exp(x[i] - max)
  return max + Math.log(sum)
}
