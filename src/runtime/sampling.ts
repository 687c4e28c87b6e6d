/**
 * Next-token selection, as the reference `model.chat` does it through transformers' generate:
 * logits processors (repetition penalty, the invalid-score rule) and then warpers (temperature,
 * top-k, top-p), then greedy or seeded sampling. Pure functions over one logits row.
 */

export interface SamplingOptions {
  /** 0 (or greedy: true) picks the argmax. */
  temperature: number
  topP: number
  /** 0 disables top-k. */
  topK: number
  /** 1 disables it; > 1 discourages tokens already in the sequence (CTRL paper, as HF does it). */
  repetitionPenalty: number
  greedy: boolean
}

/** Seeded PRNG (mulberry32): reproducible sampling with --seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * The published InvalidScoreLogitsProcessor (docs/chatglm.md section 3): a row with NaN or Inf is
 * replaced by zeros with index 5 set to 5e4. Returns whether it fired.
 */
export function fixInvalidScores(logits: Float32Array): boolean {
  for (let i = 0; i < logits.length; i++) {
    if (!Number.isFinite(logits[i])) {
      logits.fill(0)
      logits[5] = 5e4
      return true
    }
  }
  return false
}

/** HF RepetitionPenaltyLogitsProcessor: for every token id seen, score<0 ? score*p : score/p. */
export function applyRepetitionPenalty(logits: Float32Array, seen: Iterable<number>, penalty: number): void {
  if (penalty === 1) return
  for (const id of new Set(seen)) {
    if (id < 0 || id >= logits.length) continue
    const s = logits[id]
    logits[id] = s < 0 ? s * penalty : s / penalty
  }
}

export function argmax(logits: Float32Array): number {
  let best = 0
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i
  return best
}

/**
 * Candidates after temperature, top-k and top-p, as (id, probability) sorted by probability
 * descending. top-p keeps the smallest set whose cumulative probability reaches topP (HF keeps
 * at least one token).
 */
export function candidates(logits: Float32Array, opts: Pick<SamplingOptions, 'temperature' | 'topK' | 'topP'>): {ids: number[], probs: number[]} {
  const n = logits.length
  const order = Array.from({length: n}, (_, i) => i)
  order.sort((a, b) => logits[b] - logits[a] || a - b)
  let keep = opts.topK > 0 ? Math.min(opts.topK, n) : n
  const t = opts.temperature
  const maxL = logits[order[0]] / t
  const exps = new Float64Array(keep)
  let sum = 0
  for (let i = 0; i < keep; i++) {
    exps[i] = Math.exp(logits[order[i]] / t - maxL)
    sum += exps[i]
  }
  if (opts.topP < 1) {
    let cum = 0
    for (let i = 0; i < keep; i++) {
      cum += exps[i] / sum
      if (cum >= opts.topP) {
        keep = i + 1
        break
      }
    }
  }
  let kept = 0
  for (let i = 0; i < keep; i++) kept += exps[i]
  return {ids: order.slice(0, keep), probs: Array.from(exps.subarray(0, keep), e => e / kept)}
}

/** Pick the next token from one logits row (the row may be modified in place). */
export function selectToken(logits: Float32Array, seen: readonly number[], opts: SamplingOptions, random: () => number): number {
  applyRepetitionPenalty(logits, seen, opts.repetitionPenalty)
  fixInvalidScores(logits)
  if (opts.greedy || opts.temperature <= 0) return argmax(logits)
  const {ids, probs} = candidates(logits, opts)
  let r = random()
  for (let i = 0; i < ids.length; i++) {
    r -= probs[i]
    if (r <= 0) return ids[i]
  }
  return ids[ids.length - 1]
}
