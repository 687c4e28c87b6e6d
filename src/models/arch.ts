/**
 * What glmtool knows about one ChatGLM generation. v1 (ChatGLM-6B) and v2 (ChatGLM2-6B) each
 * implement this in their own module, so a further generation is one more module (STYLE.md).
 */
import {GlmtoolError, ModelError} from '../errors.js'
import type {ChatglmOnnxGraph} from '../formats/onnx/chatglm-graph.js'
import type {CalibrationUnit} from '../quant/calibration-plan.js'
import type {ChatFormat} from '../runtime/chat-template.js'
import type {FramingIds, PromptLayout} from '../runtime/positions.js'
import type {TokenizerKind} from '../runtime/tokenizer/types.js'
import type {SynthTokenizer} from '../synth/synth-tokenizer.js'

export type ArchId = 'chatglm-6b' | 'chatglm2-6b' | 'chatglm3-6b'
/**
 * The network a generation runs: its tensor names, graph and engine. ChatGLM3-6B runs the
 * ChatGLM2-6B network (docs/chatglm.md section 9), so tables of tensors key on this.
 */
export type NetworkId = 'chatglm-6b' | 'chatglm2-6b'
export type SynthSize = 'tiny' | 'small' | 'full'
export type ModelConfig = Record<string, unknown>

export interface TensorSpec {
  readonly shape: readonly number[]
  /** Recomputable buffers (rotary inv_freq) that published checkpoints may omit. */
  readonly optional?: boolean
  /** How synth initialises it: N(0, 0.02), ~1 (norm weights), ~0 (biases) or computed. */
  readonly init: 'normal' | 'ones' | 'zeros' | 'inv_freq'
}

/** The published chat()'s sampling defaults (temperature, top_p, max_length). */
export interface ChatDefaults {
  readonly temperature: number
  readonly topP: number
  readonly maxLength: number
}

/** Names of the weights the quantized layout may touch (quantization.py's quantize()). */
export interface QuantizableNames {
  readonly embeddings: string
  readonly lmHead: string
  /** The per-layer linears the published quantize() replaces, as `<name>.weight`. */
  readonly layerLinear: RegExp
}

export interface Arch {
  readonly id: ArchId
  /** The network it runs (tensor names, ONNX graph, CUDA engine tables). */
  readonly network: NetworkId
  /** A one-line name for messages: "ChatGLM3-6B". */
  readonly displayName: string
  readonly generation: 1 | 2
  /** Published shard count (docs/chatglm.md section 1). */
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
  /** A model input from text ids: [gMASK] and sop placed as the published code places them. */
  framePrompt(textIds: readonly number[], specials: FramingIds): number[]
  /** Positions and attention pattern of a framed prompt and of each generated token. */
  promptLayout(ids: readonly number[], specials: FramingIds): PromptLayout
  /** The weights the published quantize() may replace. */
  readonly quantizable: QuantizableNames
  /** How chat turns become model input, and generated text a turn's answer. */
  readonly chat: ChatFormat
  /** The published chat()'s defaults. */
  readonly chatDefaults: ChatDefaults
  /** The CUDA engine's sizes from config.json; refuses layouts the engine does not implement. */
  engineDims(config: ModelConfig): EngineDims
  /** The CUDA engine's feature flags for this config (the engine branches on these, never on a generation). */
  engineFlags(config: ModelConfig): EngineFlags
  /** Every checkpoint tensor the CUDA engine needs, with its slot (prefix caches apart). */
  engineTensors(config: ModelConfig): EngineTensor[]
  /**
   * The rotary base the published forward uses for this config (ONNX graph and CUDA engine
   * alike); a one-line error for a rope_ratio glmtool does not implement.
   */
  ropeBase(config: ModelConfig): number

  // The tokenizer (the loader, `glmtool tokenize` and synth go through these, never naming a
  // generation). Its response style (decode clean-up, process_response) is the tokenizer's own
  // responseStyle, since ChatGLM-6B's depends on which release of its file it reads.
  /** How its tokenizer is built from the bytes of tokenizerFile. */
  readonly tokenizer: TokenizerKind
  /** Synthetic tokenizer files of this generation (synth model directories). */
  synthTokenizer(): SynthTokenizer
  // Network-keyed rules that used to be tables outside the modules (issue 14): sizes, P-Tuning,
  // LoRA, ONNX graph, calibration units, GGUF. Everything outside src/models asks these.
  /**
   * The model's sizes from config.json: the one parser of sizes (tensor tables, CUDA engine,
   * ONNX graph, prefix geometry, LoRA, calibration, GGUF); a one-line error naming the key and
   * `source` (default config.json).
   */
  dims(config: ModelConfig, source?: string): ModelDims
  /** How the published model builds a P-Tuning v2 prefix encoder. */
  readonly prefix: PrefixRules
  /** Module paths of this network's layers, to tell a LoRA adapter made for another network. */
  readonly loraLayerPattern: RegExp
  /** The network's ONNX decoder graph (src/formats/onnx), wired to this module's dims. */
  readonly onnxGraph: ChatglmOnnxGraph
  /** AWQ calibration units (src/quant/calibration-plan.ts) of this config, the output layer when `lmHead`. */
  calibrationUnits(config: ModelConfig, lmHead: boolean): CalibrationUnit[]
  /** How `convert --to gguf` writes this generation, as llama.cpp's converter does. */
  readonly gguf: GgufRules
}

/** A model's sizes, as config.json gives them (Arch.dims). */
export interface ModelDims {
  layers: number
  hidden: number
  heads: number
  /** K/V heads: multi-query groups (ChatGLM2-6B multi_query_group_num), or one per head. */
  kvHeads: number
  headDim: number
  /** The MLP's inner width (SwiGLU: each half of dense_h_to_4h). */
  ffn: number
  /** Rows of the word embedding and of the output layer. */
  vocab: number
  /** The largest position the model takes. */
  maxPositions: number
}

/** P-Tuning v2 as the published modeling code builds it (docs/chatglm.md section 7). */
export interface PrefixRules {
  /** What the prefix cache holds per layer, for messages: one entry per attention head, or per multi-query group. */
  readonly kvUnit: 'heads' | 'groups'
  /**
   * The published model builds and applies the projection MLP (trans.*) whatever config.json's
   * prefix_projection says (ChatGLM2-6B: its configuration_chatglm.py stores
   * `self.prefix_projection = prefix_projection,`, a one-element tuple, always true); false: as
   * the flag says (ChatGLM-6B, ChatGLM3-6B, whose configuration has no comma).
   */
  readonly alwaysProjects: boolean
  /**
   * The encoder's embedding is kv_size (layers x 2 x kvHeads x headDim) wide whether it projects
   * or not (ChatGLM2-6B's network); false: hidden_size wide when it projects (ChatGLM-6B).
   */
  readonly embeddingIsKvSize: boolean
}

/** How `convert --to gguf` writes a generation (llama.cpp's converter, src/formats/gguf). */
export interface GgufRules {
  /** Why llama.cpp cannot take this generation (the whole error after the input's path); undefined when it can. */
  readonly unsupported?: string
  /** The vocabulary has ChatGLM3's four role tokens after the five specials (set_vocab_chatglm3). */
  readonly roleTokens: boolean
}

/** The CUDA engine's sizes (native/engine.h EngineConfig): the model's, and the norm epsilon; the KV cache never holds more than maxPositions. */
export interface EngineDims extends ModelDims {
  eps: number
}

/**
 * What the CUDA engine's decoder does, feature by feature (native/engine.h EngineConfig); each
 * generation module sets them from config.json as its published modeling_chatglm.py behaves.
 */
export interface EngineFlags {
  /**
   * query_key_value's output rows grouped per head, [q; k; v] of D rows each (ChatGLM-6B's
   * SelfAttention views the mixed layer as [.., heads, 3 * D] and splits it); false: all query
   * heads, then the K groups, then the V groups (ChatGLM2-6B). Needs kvHeads == heads.
   */
  interleavedQkv: boolean
  /**
   * 2D rotary (ChatGLM-6B, position_encoding_2d): each head's two halves rotate separately,
   * rotate_half style, the first by the position and the second by the block position; the
   * caller gives block positions. False: rotary on the first half of each head, interleaved pairs
   * (x[2j], x[2j+1]), the other half passed through (ChatGLM2-6B's apply_rotary_pos_emb).
   */
  rotary2d: boolean
  /** RMSNorm without bias (ChatGLM2-6B); false: LayerNorm with weight and bias (ChatGLM-6B). */
  rmsnorm: boolean
  /**
   * > 0: post-norm DeepNorm residual, x' = alpha * LN(x) + f(LN(x)) (ChatGLM-6B's GLMBlock,
   * alpha = sqrt(2 * 28) at every depth as published, V1_DEEPNORM_ALPHA); 0: pre-norm,
   * x' = x + f(norm(x)) (ChatGLM2-6B).
   */
  deepnormAlpha: number
  /** SwiGLU MLP, dense_h_to_4h of 2 * ffn rows (ChatGLM2-6B); false: GELU (tanh form, ChatGLM-6B). */
  swiglu: boolean
  /**
   * Rotary base: theta_j = 1 / base^(2j / rotaryDim). 10000 in the published code;
   * ChatGLM3-6B-32k multiplies it by config.json's rope_ratio (RotaryEmbedding.forward_impl:
   * `base = base * self.rope_ratio`).
   */
  ropeBase: number
  /** theta rounded to float16 before use (ChatGLM-6B's RotaryEmbedding keeps `inv_freq.half()`). */
  roundInvFreqToHalf: boolean
  qkvBias: boolean
  denseBias: boolean
  mlpBias: boolean
  /** A final norm after the last layer (ChatGLM2-6B post_layer_norm; ChatGLM-6B always). */
  postLayerNorm: boolean
}

/** The CUDA engine's weight slots (native/engine.h WeightKind), prefix caches and scales apart. */
export type EngineSlot = 'W_QKV' | 'B_QKV' | 'W_DENSE' | 'B_DENSE' | 'W_UP' | 'B_UP' | 'W_DOWN' | 'B_DOWN' | 'W_LN1' | 'B_LN1'
  | 'W_LN2' | 'B_LN2' | 'W_FINAL' | 'B_FINAL' | 'W_LMHEAD' | 'W_EMBED'

/** One checkpoint tensor in a CUDA engine slot (per-layer slots take the layer, the others 0). */
export interface EngineTensor {
  name: string
  slot: EngineSlot
  layer: number
}

/** The CUDA engine cannot run this config: a one-line error naming config.json and the key. */
export function engineUnsupported(why: string): never {
  throw new GlmtoolError('cuda-unsupported', `config.json: ${why} is not implemented by the CUDA backend`)
}

/**
 * config.json's rope_ratio (ChatGLM2-6B-32k, ChatGLM3-6B-32k), 1 when absent (the published
 * configuration_chatglm.py default). A finite number > 0, or a one-line error naming the file.
 */
export function ropeRatio(config: ModelConfig, source = 'config.json'): number {
  const v = config.rope_ratio
  if (v === undefined || v === null) return 1
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new ModelError(`${source}: rope_ratio must be a finite number > 0 (got ${JSON.stringify(v)})`, 'bad-config')
  }
  return v
}

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

/** Refuse config sizes no ChatGLM has (CONFIG_LIMITS), and a rope_ratio that is not a number > 0, naming the key and the file. */
export function checkConfigSizes(config: ModelConfig, source: string): void {
  ropeRatio(config, source)
  for (const [key, max] of Object.entries(CONFIG_LIMITS)) {
    const v = config[key]
    if (typeof v === 'number' && v > max) {
      throw new ModelError(`${source}: ${key} is ${v}, implausibly large (glmtool accepts at most ${max})`, 'bad-config')
    }
  }
}

/** Read a positive integer from config.json (`fallback` when absent), within CONFIG_LIMITS; a one-line error naming the key and `source`. */
export function configInt(config: ModelConfig, key: string, fallback?: number, source = 'config.json'): number {
  const v = config[key] ?? fallback
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new ModelError(`${source}: ${key} must be a positive integer (got ${JSON.stringify(config[key])})`, 'bad-config')
  }
  const max = CONFIG_LIMITS[key]
  if (max !== undefined && v > max) throw new ModelError(`${source}: ${key} is ${v}, implausibly large (glmtool accepts at most ${max})`, 'bad-config')
  return v
}

/**
 * Where `merge-adapter` stores a P-Tuning v2 prefix (docs/chatglm.md section 7): per layer i,
 * `transformer.prefix_cache.<i>.key` and `.value`, float32 [kvHeads, pre_seq_len, headDim],
 * the keys and values the runtime puts in front of the KV cache.
 */
export const PREFIX_CACHE_MARKER = 'prefix_cache'

export function prefixCacheName(layer: number, part: 'key' | 'value'): string {
  return `transformer.prefix_cache.${layer}.${part}`
}

/**
 * config.json's prefix_projection as the published code reads it: Python truthiness, so a
 * one-element list (how save_pretrained writes ChatGLM2-6B's tuple, `[false]`) is true.
 * Undefined for a value no published config writes (a number, a string, an object).
 */
export function prefixProjectionFlag(value: unknown): boolean | undefined {
  if (value === undefined || value === null || typeof value === 'boolean') return value === true
  if (Array.isArray(value) && value.length === 1 && typeof value[0] === 'boolean') return true
  return undefined
}

/**
 * A ChatGLM3-6B config: the same keys and tensors as ChatGLM2-6B, told apart only by the
 * `_name_or_path` that save_pretrained records (THUDM/chatglm3-6b, or a local copy's path).
 */
export function isChatglm3Config(config: ModelConfig): boolean {
  return typeof config._name_or_path === 'string' && /chatglm3/i.test(config._name_or_path)
}

/** Whether the published model builds and applies the P-Tuning projection MLP (trans.*) for this config. */
export function prefixProjects(rules: PrefixRules, config: ModelConfig): boolean {
  return rules.alwaysProjects || prefixProjectionFlag(config.prefix_projection) === true
}

/**
 * Add the P-Tuning tensors to an architecture's table when config.json has pre_seq_len: the
 * prefix cache (required when the config says glmtool stored it, glmtool_prefix; optional
 * otherwise: a trainer's config with pre_seq_len describes a prefix kept elsewhere) and,
 * optional, the published prefix encoder (transformer.prefix_encoder.*: what a whole-model
 * trainer save and merge-adapter's output carry) in the shapes the published model builds.
 */
export function addPrefixCacheSpecs(m: Map<string, TensorSpec>, config: ModelConfig, d: ModelDims, rules: PrefixRules): void {
  if (config.pre_seq_len === undefined || config.pre_seq_len === null) return
  const P = configInt(config, 'pre_seq_len')
  const optional = config.glmtool_prefix !== PREFIX_CACHE_MARKER
  for (let i = 0; i < d.layers; i++) {
    for (const part of ['key', 'value'] as const) {
      m.set(prefixCacheName(i, part), {shape: [d.kvHeads, P, d.headDim], init: 'normal', ...(optional ? {optional} : {})})
    }
  }
  const n = d.layers * 2 * d.kvHeads * d.headDim
  const projects = prefixProjects(rules, config)
  const hidden = d.hidden
  // ChatGLM-6B's projected encoder embeds to hidden_size; ChatGLM2-6B's to n (kv_size) in both cases.
  const width = projects && !rules.embeddingIsKvSize ? hidden : n
  const enc = 'transformer.prefix_encoder.'
  m.set(`${enc}embedding.weight`, {shape: [P, width], init: 'normal', optional: true})
  if (projects) {
    m.set(`${enc}trans.0.weight`, {shape: [hidden, width], init: 'normal', optional: true})
    m.set(`${enc}trans.0.bias`, {shape: [hidden], init: 'zeros', optional: true})
    m.set(`${enc}trans.2.weight`, {shape: [n, hidden], init: 'normal', optional: true})
    m.set(`${enc}trans.2.bias`, {shape: [n], init: 'zeros', optional: true})
  }
}
