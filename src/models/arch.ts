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
