import {chatglmV2Graph} from '../formats/onnx/chatglm-v2-graph.js'
import {unitsV2} from '../quant/calibration-plan.js'
import {CHATGLM2_6B_CHAT} from '../runtime/chat-template.js'
import {framePromptV2, layoutV2} from '../runtime/positions.js'
import {ChatGLM2Tokenizer, V2_SPECIAL_NAMES} from '../runtime/tokenizer/chatglm2-6b.js'
import {SentencePieceProcessor} from '../runtime/tokenizer/sentencepiece.js'
import {synthChatglm2Tokenizer} from '../synth/synth-tokenizer.js'
import {
  addPrefixCacheSpecs, type Arch, configInt, type EngineTensor, engineUnsupported, isChatglm3Config, type ModelConfig, type ModelDims,
  type PrefixRules, ropeRatio, type SynthSize, type TensorSpec, type EngineFlags,
} from './arch.js'
import {GlmtoolError} from '../errors.js'

/**
 * ChatGLM2-6B's rotary base: 10000. ChatGLM2-6B-32k's config.json sets rope_ratio, which its
 * published RotaryEmbedding.forward_impl applies as position interpolation (`seq_idx =
 * arange(seq_len) / self.rope_ratio`); glmtool does not implement that and says so. (ChatGLM3-6B's
 * rope_ratio scales the base instead: src/models/chatglm3.ts.)
 */
function v2RopeBase(config: ModelConfig): number {
  const ratio = ropeRatio(config)
  if (ratio !== 1) {
    throw new GlmtoolError('unsupported', `config.json: rope_ratio ${ratio} on ChatGLM2-6B is ChatGLM2-6B-32k's position interpolation, which glmtool does not implement (for ChatGLM3-6B-32k, whose rope_ratio scales the rotary base, pass --arch chatglm3-6b)`)
  }
  return 10000
}

/** The CUDA engine's flags of the ChatGLM2-6B network with a given rotary base (ChatGLM2-6B, ChatGLM3-6B). */
export function v2EngineFlags(config: ModelConfig, ropeBase: number): EngineFlags {
  return {
    interleavedQkv: false, rotary2d: false, rmsnorm: true, deepnormAlpha: 0, swiglu: true, ropeBase, roundInvFreqToHalf: false,
    qkvBias: config.add_qkv_bias !== false, denseBias: config.add_bias_linear === true, mlpBias: config.add_bias_linear === true,
    postLayerNorm: config.post_layer_norm !== false,
  }
}

/**
 * The sizes of the ChatGLM2-6B network (ChatGLM2-6B, ChatGLM3-6B): K/V heads are the
 * multi-query groups (every head when multi_query_attention is false), head dim kv_channels
 * (hidden_size / num_attention_heads when absent).
 */
export function v2Dims(config: ModelConfig, source = 'config.json'): ModelDims {
  const int = (key: string, fallback?: number) => configInt(config, key, fallback, source)
  const hidden = int('hidden_size')
  const heads = int('num_attention_heads')
  return {
    layers: int('num_layers'), hidden, heads, kvHeads: config.multi_query_attention === false ? heads : int('multi_query_group_num'),
    headDim: int('kv_channels', hidden / heads), ffn: int('ffn_hidden_size'), vocab: int('padded_vocab_size'), maxPositions: int('seq_length', 32768),
  }
}

/** ChatGLM2-6B's P-Tuning v2 encoder: always projects (the published config's tuple), embedding kv_size wide. */
const V2_PREFIX: PrefixRules = {kvUnit: 'groups', alwaysProjects: true, embeddingIsKvSize: true}

/** Every tensor of a ChatGLM2-6B-network checkpoint of this config, with the generation's P-Tuning rules (ChatGLM2-6B, ChatGLM3-6B). */
export function v2Tensors(config: ModelConfig, prefix: PrefixRules): Map<string, TensorSpec> {
  const d = v2Dims(config)
  const {hidden: H, ffn: F, layers: L, heads, headDim: D, kvHeads: G, vocab: V} = d
  const qkv = heads * D + 2 * G * D
  const m = new Map<string, TensorSpec>()
  m.set('transformer.embedding.word_embeddings.weight', {shape: [V, H], init: 'normal'})
  m.set('transformer.rotary_pos_emb.inv_freq', {shape: [D / 4], init: 'inv_freq', optional: true})
  for (let i = 0; i < L; i++) {
    const p = `transformer.encoder.layers.${i}.`
    m.set(`${p}input_layernorm.weight`, {shape: [H], init: 'ones'})
    m.set(`${p}self_attention.query_key_value.weight`, {shape: [qkv, H], init: 'normal'})
    if (config.add_qkv_bias !== false) m.set(`${p}self_attention.query_key_value.bias`, {shape: [qkv], init: 'zeros'})
    m.set(`${p}self_attention.dense.weight`, {shape: [H, heads * D], init: 'normal'})
    m.set(`${p}post_attention_layernorm.weight`, {shape: [H], init: 'ones'})
    m.set(`${p}mlp.dense_h_to_4h.weight`, {shape: [2 * F, H], init: 'normal'})
    m.set(`${p}mlp.dense_4h_to_h.weight`, {shape: [H, F], init: 'normal'})
  }
  if (config.post_layer_norm !== false) m.set('transformer.encoder.final_layernorm.weight', {shape: [H], init: 'ones'})
  m.set('transformer.output_layer.weight', {shape: [V, H], init: 'normal'})
  // P-Tuning v2 prefix keys/values: one per multi-query group, as get_prompt views them.
  addPrefixCacheSpecs(m, config, d, prefix)
  return m
}

const SIZES: Record<SynthSize, {hidden: number, ffn: number, layers: number, heads: number, kv: number}> = {
  tiny: {hidden: 64, ffn: 160, layers: 2, heads: 4, kv: 16},
  small: {hidden: 512, ffn: 1712, layers: 4, heads: 8, kv: 64},
  full: {hidden: 4096, ffn: 13696, layers: 28, heads: 32, kv: 128},
}

/** A config of the ChatGLM2-6B network (ChatGLM2-6B, ChatGLM3-6B and their variants). */
export function isChatglm2Network(config: ModelConfig): boolean {
  return config.multi_query_attention !== undefined || config.padded_vocab_size !== undefined || config.ffn_hidden_size !== undefined
}

/** ChatGLM2-6B: pre-norm RMSNorm, multi-query attention, SwiGLU (docs/chatglm.md sections 1, 2, 4). */
export const chatglmV2: Arch = {
  id: 'chatglm2-6b',
  network: 'chatglm2-6b',
  displayName: 'ChatGLM2-6B',
  generation: 2,
  shardCount: 7,
  tokenizerFile: 'tokenizer.model',

  matchesConfig(config) {
    return isChatglm2Network(config) && !isChatglm3Config(config)
  },

  tensors: config => v2Tensors(config, V2_PREFIX),

  embeddingRows(config) {
    return configInt(config, 'padded_vocab_size')
  },

  // Generation stops at eos_token_id (</s>).
  configSpecials: {eos_token_id: 'eos'},

  synthConfig(size): ModelConfig {
    const s = SIZES[size]
    return {
      _name_or_path: 'THUDM/chatglm2-6b',
      model_type: 'chatglm',
      architectures: ['ChatGLMModel'],
      auto_map: {
        AutoConfig: 'configuration_chatglm.ChatGLMConfig',
        AutoModel: 'modeling_chatglm.ChatGLMForConditionalGeneration',
        AutoModelForCausalLM: 'modeling_chatglm.ChatGLMForConditionalGeneration',
        AutoModelForSeq2SeqLM: 'modeling_chatglm.ChatGLMForConditionalGeneration',
      },
      add_bias_linear: false,
      add_qkv_bias: true,
      apply_query_key_layer_scaling: true,
      apply_residual_connection_post_layernorm: false,
      attention_dropout: 0.0,
      attention_softmax_in_fp32: true,
      bias_dropout_fusion: true,
      ffn_hidden_size: s.ffn,
      fp32_residual_connection: false,
      hidden_dropout: 0.0,
      hidden_size: s.hidden,
      kv_channels: s.kv,
      layernorm_epsilon: 1e-5,
      multi_query_attention: true,
      multi_query_group_num: 2,
      num_attention_heads: s.heads,
      num_layers: s.layers,
      original_rope: true,
      padded_vocab_size: 65024,
      post_layer_norm: true,
      rmsnorm: true,
      seq_length: 32768,
      use_cache: true,
      torch_dtype: 'float16',
      transformers_version: '4.27.1',
      tie_word_embeddings: false,
      eos_token_id: 2,
      pad_token_id: 0,
    }
  },

  summary(config) {
    return {
      generation: 'ChatGLM2-6B (v2: RMSNorm, multi-query attention)',
      hidden_size: configInt(config, 'hidden_size'),
      ffn_hidden_size: configInt(config, 'ffn_hidden_size'),
      num_layers: configInt(config, 'num_layers'),
      num_attention_heads: configInt(config, 'num_attention_heads'),
      kv_channels: configInt(config, 'kv_channels', 128),
      multi_query_group_num: Number(config.multi_query_group_num ?? 0),
      padded_vocab_size: configInt(config, 'padded_vocab_size'),
      seq_length: Number(config.seq_length ?? 0),
      torch_dtype: String(config.torch_dtype ?? 'unknown'),
    }
  },

  framePrompt: framePromptV2,

  promptLayout(ids) {
    return layoutV2(ids)
  },

  quantizable: {
    embeddings: 'transformer.embedding.word_embeddings.weight',
    lmHead: 'transformer.output_layer.weight',
    layerLinear: /^transformer\.encoder\.layers\.\d+\.(self_attention\.(query_key_value|dense)|mlp\.(dense_h_to_4h|dense_4h_to_h))\.weight$/,
  },

  chat: CHATGLM2_6B_CHAT,
  chatDefaults: {temperature: 0.8, topP: 0.8, maxLength: 8192},

  engineDims(config) {
    if (config.rmsnorm === false) engineUnsupported('rmsnorm false')
    if (config.apply_residual_connection_post_layernorm === true) engineUnsupported('apply_residual_connection_post_layernorm true')
    if (config.original_rope === false) engineUnsupported('original_rope false')
    return {...v2Dims(config), eps: Number(config.layernorm_epsilon ?? 1e-5)}
  },

  // The published modeling_chatglm.py (chatglm.md section 4): [q heads; k groups; v groups] rows,
  // rotary on the first half of each head in interleaved pairs (float32 theta), RMSNorm, pre-norm
  // residual, SwiGLU; biases and the final norm as config.json says.
  engineFlags(config) {
    return v2EngineFlags(config, v2RopeBase(config))
  },

  ropeBase: v2RopeBase,

  engineTensors(config) {
    const t: EngineTensor[] = [{name: 'transformer.embedding.word_embeddings.weight', slot: 'W_EMBED', layer: 0}]
    const bias = config.add_bias_linear === true
    for (let i = 0, n = v2Dims(config).layers; i < n; i++) {
      const p = `transformer.encoder.layers.${i}.`
      const put = (suffix: string, slot: EngineTensor['slot']) => t.push({name: p + suffix, slot, layer: i})
      put('input_layernorm.weight', 'W_LN1')
      put('self_attention.query_key_value.weight', 'W_QKV')
      if (config.add_qkv_bias !== false) put('self_attention.query_key_value.bias', 'B_QKV')
      put('self_attention.dense.weight', 'W_DENSE')
      put('post_attention_layernorm.weight', 'W_LN2')
      put('mlp.dense_h_to_4h.weight', 'W_UP')
      put('mlp.dense_4h_to_h.weight', 'W_DOWN')
      if (bias) {
        put('self_attention.dense.bias', 'B_DENSE')
        put('mlp.dense_h_to_4h.bias', 'B_UP')
        put('mlp.dense_4h_to_h.bias', 'B_DOWN')
      }
    }
    if (config.post_layer_norm !== false) t.push({name: 'transformer.encoder.final_layernorm.weight', slot: 'W_FINAL', layer: 0})
    t.push({name: 'transformer.output_layer.weight', slot: 'W_LMHEAD', layer: 0})
    return t
  },

  // The tokenizer: tokenizer.model, the five specials appended after its pieces by the wrapper
  // (so a file holding [gMASK] as a piece is ChatGLM-6B's, not this).
  tokenizer: {
    fromBytes: (bytes, source) => new ChatGLM2Tokenizer(SentencePieceProcessor.load(bytes, source), source),
    takesNumImageTokens: false,
    filePieces: pieces => !pieces.has('[gMASK]'),
    appendedSpecials: V2_SPECIAL_NAMES,
  },
  synthTokenizer: () => synthChatglm2Tokenizer('THUDM/chatglm2-6b'),
  // Network-keyed rules (issue 14): sizes, P-Tuning, LoRA, ONNX graph, calibration, GGUF.
  dims: v2Dims,
  prefix: V2_PREFIX,
  loraLayerPattern: /^transformer\.encoder\.layers\.\d+\.(self_attention|mlp)\./,
  onnxGraph: chatglmV2Graph({dims: v2Dims}),
  calibrationUnits: (config, lmHead) => unitsV2(v2Dims(config), {qkvBias: config.add_qkv_bias !== false, finalNorm: config.post_layer_norm !== false}, lmHead),
  gguf: {roleTokens: false},
}
