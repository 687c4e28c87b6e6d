/**
 * What glmtool knows about one ChatGLM generation. v1 (ChatGLM-6B) and v2 (ChatGLM2-6B) each
 * implement this in their own module, so a further generation is one more module (STYLE.md).
 */
export type ArchId = 'chatglm-6b' | 'chatglm2-6b'
export type SynthSize = 'tiny' | 'small' | 'full'
export type ModelConfig = Record<string, unknown>

export interface TensorSpec {
  readonly shape: readonly number[]
  /** Recomputable buffers (rotary inv_freq) that published checkpoints may omit. */
  readonly optional?: boolean
  /** How synth initialises it: N(0, 0.02), ~1 (norm weights), ~0 (biases) or computed. */
  readonly init: 'normal' | 'ones' | 'zeros' | 'inv_freq'
}

export interface Arch {
  readonly id: ArchId
  readonly generation: 1 | 2
  /** Published shard count (chatglm.md section 1). */
  readonly shardCount: number
  readonly tokenizerFile: string
  /** True when config.json describes this generation. */
  matchesConfig(config: ModelConfig): boolean
  /** Every tensor of a checkpoint of this config, in published order, with its shape. */
  tensors(config: ModelConfig): Map<string, TensorSpec>
  /** config.json of a synth model of this size, with the real keys. */
  synthConfig(size: SynthSize): ModelConfig
  /** Rows of the word embedding (and output layer) that config.json gives. */
  embeddingRows(config: ModelConfig): number
  /**
   * The config.json keys that the published modeling code reads as special-token ids, each with
   * the tokenizer special it must equal (absent keys take the published defaults, unchecked).
   */
  readonly configSpecials: Readonly<Record<string, 'gmask' | 'mask' | 'sop' | 'eop' | 'eos'>>
  /** A few lines describing the config, for inspect. */
  summary(config: ModelConfig): Record<string, string | number | boolean>
}

/** Read a required positive integer from config.json, with an error naming the key. */
export function configInt(config: ModelConfig, key: string, fallback?: number): number {
  const v = config[key] ?? fallback
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new Error(`config.json: ${key} must be a positive integer (got ${JSON.stringify(config[key])})`)
  }
  return v
}

/**
 * Where `merge-adapter` stores a P-Tuning v2 prefix (chatglm.md section 7): per layer i,
 * `transformer.prefix_cache.<i>.key` and `.value`, float32 [kvHeads, pre_seq_len, headDim],
 * the keys and values the runtime puts in front of the KV cache.
 */
export const PREFIX_CACHE_MARKER = 'prefix_cache'

export function prefixCacheName(layer: number, part: 'key' | 'value'): string {
  return `transformer.prefix_cache.${layer}.${part}`
}

/**
 * Add the prefix-cache tensors to an architecture's table when config.json has pre_seq_len.
 * They are required when the config says glmtool stored them (glmtool_prefix), optional
 * otherwise (a trainer's config with pre_seq_len describes a prefix kept elsewhere).
 */
export function addPrefixCacheSpecs(m: Map<string, TensorSpec>, config: ModelConfig, layers: number, kvHeads: number, headDim: number): void {
  if (config.pre_seq_len === undefined || config.pre_seq_len === null) return
  const P = configInt(config, 'pre_seq_len')
  const optional = config.glmtool_prefix !== PREFIX_CACHE_MARKER
  for (let i = 0; i < layers; i++) {
    for (const part of ['key', 'value'] as const) {
      m.set(prefixCacheName(i, part), {shape: [kvHeads, P, headDim], init: 'normal', ...(optional ? {optional} : {})})
    }
  }
}
