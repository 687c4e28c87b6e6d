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
  /** Empty the KV cache (a new conversation turn re-encodes its whole prompt). */
  reset(): void
  dispose(): Promise<void>
}
