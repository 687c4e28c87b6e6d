import {GlmtoolError} from '../errors.js'
import type {Arch, ModelConfig} from '../models/index.js'

/**
 * One decoder step of a ChatGLM model with its KV cache, whatever runs it (onnxruntime-node on
 * the CPU now, the CUDA engine later). The generation loop (src/runtime/generate.ts) owns token
 * ids, positions and sampling; a backend owns weights, the KV cache and the attention mask.
 */
export interface ForwardInput {
  /** Token ids appended after the tokens already in the cache. */
  readonly ids: readonly number[]
  /** Position of each new token (v1: `position_id`; v2: 0, 1, 2, ... over the whole sequence). */
  readonly positions: readonly number[]
  /** v1 only: the second rotary row (`block_position_id`) of each new token. */
  readonly blockPositions?: readonly number[]
  /**
   * v1's prefix-bidirectional mask: the first `bidirectional` tokens of the sequence (counted
   * from the start of the cache, prefix-adapter entries excluded) see each other both ways;
   * every later token sees everything up to and including itself. 0 = plain causal (v2).
   */
  readonly bidirectional: number
  /** 'last': logits of the last new token only (generation); 'all': one row per new token (tests). */
  readonly logits: 'last' | 'all'
  /**
   * A backend that runs a long prompt in pieces may stop between pieces once this is aborted,
   * throwing GlmtoolError code 'interrupted' (the cache then holds a partial prompt: reset it).
   */
  readonly signal?: AbortSignal
}

export interface ForwardOutput {
  /** rows x vocab, row-major, float32. */
  readonly logits: Float32Array
  readonly rows: number
  readonly vocab: number
}

/**
 * Next-token choice made where the logits are (the CUDA engine picks on the GPU and returns only
 * the id): the rules of src/runtime/sampling.ts without the repetition penalty, which needs the
 * host-side history.
 */
export interface DeviceSampling {
  greedy: boolean
  temperature: number
  topK: number
  topP: number
  /** One uniform draw in [0, 1) from the caller's seeded generator (unused when greedy). */
  random: number
  /** Only ids below this are candidates (the tokenizer's vocabulary, not the padded rows). */
  vocabLimit: number
}

/** Several decode steps in one backend call: step i > 0 feeds the token step i - 1 chose. */
export interface DecodeManyInput {
  /** The first step's input token. */
  id: number
  /** One entry per step (and one block position per step for ChatGLM-6B). */
  positions: number[]
  blockPositions?: number[]
  bidirectional: number
}

export interface DecoderBackend {
  readonly name: string
  readonly arch: Arch
  readonly config: ModelConfig
  /** Tokens in the KV cache now (prefix-adapter entries not counted). */
  readonly length: number
  /** Largest number of tokens the cache holds. */
  readonly maxLength: number
  forward(input: ForwardInput): Promise<ForwardOutput>
  /** Optional: run the step and choose the next token in the backend; only its id comes back. */
  forwardSample?(input: Omit<ForwardInput, 'logits'>, sampling: DeviceSampling): Promise<number>
  /** Optional: decode steps per decodeMany call this backend wants; absent or below 2: one call per token. */
  readonly decodeBatch?: number
  /**
   * Optional: positions.length decode steps, each choosing its token in the backend (CUDA: back
   * to back on the GPU, no host round trip between them); returns the chosen ids. randoms: one
   * draw per step (unused when greedy). Every step's K/V stays in the cache: a caller that uses
   * fewer steps calls truncate().
   */
  decodeMany?(input: DecodeManyInput, sampling: Omit<DeviceSampling, 'random'>, randoms: readonly number[]): Promise<number[]>
  /** Optional: keep only the first `length` cache entries (after decodeMany ran past a stop). */
  truncate?(length: number): void
  /** Empty the KV cache (a new conversation turn re-encodes its whole prompt). */
  reset(): void
  dispose(): Promise<void>
}

/** The KV cache's element type (`--kv-dtype`): the model's float type, or int8 (the CUDA backend only). */
export type KvDtype = 'f16' | 'int8'
export const KV_DTYPES: readonly KvDtype[] = ['f16', 'int8']

/** What a backend throws when ForwardInput.signal stops a prompt run in pieces after `done` of its `total` tokens. */
export function promptInterrupted(backend: string, done: number, total: number): GlmtoolError {
  return new GlmtoolError('interrupted', `${backend}: the prompt was interrupted after ${done} of ${total} tokens`)
}
