/**
 * What glmtool knows about one ChatGLM generation. v1 (ChatGLM-6B) and v2 (ChatGLM2-6B) each
 * implement this in their own module, so a further generation is one more module (STYLE.md).
 */
import {ModelError} from '../errors.js'

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
  /** A few lines describing the config, for inspect. */
  summary(config: ModelConfig): Record<string, string | number | boolean>
}

/** Read a required positive integer from config.json, with an error naming the key. */
/**
 * The largest value glmtool believes for each size key of config.json. The published models
 * have 28 layers, hidden 4096, ffn 13696 / 16384, vocab 65024 / 150528; these caps are far above
 * any ChatGLM, and keep a hostile config (num_layers: 1e9) from driving a billion-iteration
 * loop or a table of a billion tensors before anything else is checked.
 */
export const CONFIG_LIMITS: Readonly<Record<string, number>> = {
  num_layers: 1024,
  hidden_size: 1 << 16,
  num_attention_heads: 1024,
  kv_channels: 1 << 14,
  multi_query_group_num: 1024,
  ffn_hidden_size: 1 << 20,
  inner_hidden_size: 1 << 20,
  vocab_size: 1 << 22,
  padded_vocab_size: 1 << 22,
  pre_seq_len: 1 << 16,
  seq_length: 1 << 24,
  max_sequence_length: 1 << 24,
}

/** Refuse config sizes no ChatGLM has (CONFIG_LIMITS), naming the key and the file. */
export function checkConfigSizes(config: ModelConfig, source: string): void {
  for (const [key, max] of Object.entries(CONFIG_LIMITS)) {
    const v = config[key]
    if (typeof v === 'number' && v > max) {
      throw new ModelError(`${source}: ${key} is ${v}, implausibly large (glmtool accepts at most ${max})`, 'bad-config')
    }
  }
}

export function configInt(config: ModelConfig, key: string, fallback?: number): number {
  const v = config[key] ?? fallback
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new Error(`config.json: ${key} must be a positive integer (got ${JSON.stringify(config[key])})`)
  }
  const max = CONFIG_LIMITS[key]
  if (max !== undefined && v > max) throw new Error(`config.json: ${key} is ${v}, implausibly large (glmtool accepts at most ${max})`)
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
