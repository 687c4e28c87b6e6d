import {GlmtoolError} from '../errors.js'
import {archById} from '../models/index.js'
import type {DecoderBackend, ForwardInput} from './backend.js'
import type {PromptLayout} from './positions.js'
import {type SamplingOptions, seededRandom, selectToken} from './sampling.js'
import type {ChatTokenizer} from './tokenizer/index.js'

export interface GenerateOptions extends SamplingOptions {
  /** Total length (prompt + generated) at which generation stops, as transformers' max_length. */
  maxLength: number
  /** Also stop after this many new tokens (transformers' max_new_tokens); undefined: no limit. */
  maxNewTokens?: number
  seed: number
  /** Stops generation between tokens (Ctrl-C). */
  signal?: AbortSignal
  /** Generate through stop tokens, to the length limits (bench: a fixed number of tokens). */
  ignoreStop?: boolean
}

export interface GenerateResult {
  promptIds: number[]
  generatedIds: number[]
  text: string
  /** What ended it: a stop token, --max-length (prompt + answer), --max-new-tokens, or an interrupt. */
  stoppedBy: 'stop-token' | 'max-length' | 'max-new-tokens' | 'interrupted'
  promptSeconds: number
  generateSeconds: number
  /** prompt tokens / prefill time, and generated tokens / decode time (first token excluded). */
  promptTokensPerSecond: number
  generatedTokensPerSecond: number
}

/** The positions of a prompt the tokenizer framed, as its generation lays them out. */
export function promptLayout(tokenizer: ChatTokenizer, ids: readonly number[]): PromptLayout {
  return archById(tokenizer.arch).promptLayout(ids, tokenizer.specials)
}

/**
 * Generate a continuation of `promptIds` (already holding the generation's special tokens):
 * prefill the whole prompt, then one decode step per token, streaming text through `onText`.
 */
export async function generate(
  backend: DecoderBackend, tokenizer: ChatTokenizer, promptIds: readonly number[], opts: GenerateOptions,
  onText: (text: string) => void = () => {},
  /** Awaited after every generated token (a server's pacing hook); undefined: none. */
  afterToken?: () => Promise<void>,
): Promise<GenerateResult> {
  const layout = promptLayout(tokenizer, promptIds)
  const stop = new Set(opts.ignoreStop ? [] : tokenizer.specials.stop)
  const random = seededRandom(opts.seed)
  const stream = tokenizer.streamDecoder()
  const generated: number[] = []
  const seen = [...promptIds]
  let stoppedBy: GenerateResult['stoppedBy'] = 'max-length'
  backend.reset()
  const lengthLimit = Math.min(opts.maxLength, backend.maxLength)
  const newTokensLimit = promptIds.length + (opts.maxNewTokens ?? Number.POSITIVE_INFINITY)
  const limit = Math.min(lengthLimit, newTokensLimit)
  if (promptIds.length >= Math.min(opts.maxLength, backend.maxLength)) {
    throw new GlmtoolError('prompt-too-long', `the prompt is ${promptIds.length} tokens, at or over --max-length ${Math.min(opts.maxLength, backend.maxLength)}; raise --max-length or clear the history`)
  }
  // A backend that chooses tokens itself (CUDA) returns only the id; the repetition penalty needs
  // the logits here.
  const onDevice = backend.forwardSample !== undefined && opts.repetitionPenalty === 1
  const step = async (input: Omit<ForwardInput, 'logits'>): Promise<number> => {
    if (onDevice) {
      const greedy = opts.greedy || opts.temperature <= 0
      return backend.forwardSample!(input, {
        greedy, temperature: opts.temperature, topK: opts.topK, topP: opts.topP, random: greedy ? 0 : random(), vocabLimit: tokenizer.vocabSize,
      })
    }
    const out = await backend.forward({...input, logits: 'last'})
    // Only ids the tokenizer knows: the padded embedding rows beyond its vocabulary (v1 130344 of
    // 130528, v2 64794 of 65024) are never produced.
    return selectToken(out.logits.slice(0, Math.min(out.vocab, tokenizer.vocabSize)), seen, opts, random)
  }
  // Batches of decode steps in one backend call (CUDA: back to back on the GPU); the tokens
  // come back together and are handled here one by one, as the per-step path does.
  const batch = onDevice && backend.decodeMany !== undefined && (backend.decodeBatch ?? 0) > 1 ? backend.decodeBatch! : 0
  let pending: number[] = []
  let fed = 0
  const t0 = performance.now()
  let token: number
  try {
    token = await step({
      ids: promptIds, positions: layout.positions, blockPositions: layout.blockPositions, bidirectional: layout.bidirectional, signal: opts.signal,
    })
  } catch (error) {
    // a long prompt stopped between its pieces (CUDA): nothing was generated
    if (!(error instanceof GlmtoolError && error.code === 'interrupted' && opts.signal?.aborted)) throw error
    backend.reset()
    const t = (performance.now() - t0) / 1000
    return {promptIds: [...promptIds], generatedIds: [], text: '', stoppedBy: 'interrupted', promptSeconds: t, generateSeconds: 0, promptTokensPerSecond: 0, generatedTokensPerSecond: 0}
  }
  // t1: the prompt is encoded and the first token chosen
  const t1 = performance.now()
  while (promptIds.length + generated.length < limit) {
    if (stop.has(token)) {
      stoppedBy = 'stop-token'
      break
    }
    generated.push(token)
    seen.push(token)
    const piece = stream.push(token)
    if (piece) onText(piece)
    if (afterToken) await afterToken()
    if (opts.signal?.aborted) {
      stoppedBy = 'interrupted'
      break
    }
    if (promptIds.length + generated.length >= limit) break
    if (batch) {
      if (!pending.length) {
        const n = Math.min(batch, limit - promptIds.length - generated.length)
        const positions: number[] = []
        const blocks: number[] = []
        for (let i = 0; i < n; i++) {
          const next = layout.next(generated.length + i)
          positions.push(next.position)
          if (next.blockPosition !== undefined) blocks.push(next.blockPosition)
        }
        const greedy = opts.greedy || opts.temperature <= 0
        const randoms = Array.from({length: n}, () => greedy ? 0 : random())
        pending = await backend.decodeMany!({id: token, positions, blockPositions: blocks.length ? blocks : undefined, bidirectional: layout.bidirectional},
          {greedy, temperature: opts.temperature, topK: opts.topK, topP: opts.topP, vocabLimit: tokenizer.vocabSize}, randoms)
      }
      token = pending.shift()!
      fed++
      continue
    }
    const next = layout.next(generated.length)
    token = await step({
      ids: [token], positions: [next.position], blockPositions: next.blockPosition === undefined ? undefined : [next.blockPosition],
      bidirectional: layout.bidirectional,
    })
  }
  if (batch) backend.truncate?.(promptIds.length + fed)
  // The length bound that was reached: --max-new-tokens when it is the tighter one (or both agree).
  if (stoppedBy === 'max-length' && newTokensLimit <= lengthLimit) stoppedBy = 'max-new-tokens'
  const rest = stream.flush()
  if (rest) onText(rest)
  const t3 = performance.now()
  const decodeSteps = Math.max(0, generated.length - 1)
  return {
    promptIds: [...promptIds],
    generatedIds: generated,
    text: tokenizer.decode(generated),
    stoppedBy,
    promptSeconds: (t1 - t0) / 1000,
    generateSeconds: (t3 - t1) / 1000,
    promptTokensPerSecond: promptIds.length / Math.max(1e-9, (t1 - t0) / 1000),
    generatedTokensPerSecond: decodeSteps / Math.max(1e-9, (t3 - t1) / 1000),
  }
}
