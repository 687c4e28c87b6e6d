import {ModelError} from '../errors.js'
import {chatglmV1Graph} from '../formats/onnx/chatglm-v1-graph.js'
import {unitsV1} from '../quant/calibration-plan.js'
import {CHATGLM_6B_CHAT} from '../runtime/chat-template.js'
import {framePromptV1, layoutV1} from '../runtime/positions.js'
import {chatglm6bTokenizerFromBytes} from '../runtime/tokenizer/chatglm-6b.js'
import {synthChatglm6bTokenizer} from '../synth/synth-tokenizer.js'
import {
  addPrefixCacheSpecs, type Arch, configInt, type EngineTensor, engineUnsupported, type ModelConfig, type ModelDims, type PrefixRules,
  type SynthSize, type TensorSpec,
} from './arch.js'

/** Dimensions of synth models; `full` is the published ChatGLM-6B (docs/chatglm.md section 1). */
const SIZES: Record<SynthSize, {hidden: number, inner: number, layers: number, heads: number}> = {
  tiny: {hidden: 64, inner: 256, layers: 2, heads: 4},
  small: {hidden: 512, inner: 2048, layers: 4, heads: 8},
  full: {hidden: 4096, inner: 16384, layers: 28, heads: 32},
}

/**
 * ChatGLM-6B's DeepNorm alpha, sqrt(2 * 28), whatever num_layers says. The published
 * modeling_chatglm.py computes alpha = (2 * self.num_layers) ** 0.5 in GLMBlock, but
 * ChatGLMModel's get_layer() never passes num_layers, so every block keeps GLMBlock's default
 * num_layers=28. The spec (docs/chatglm.md section 3) says sqrt(2 * num_layers); the published code
 * is followed. Real 28-layer checkpoints are the same either way; other depths (synth tiny and
 * small) differ.
 */
export const V1_DEEPNORM_ALPHA = Math.sqrt(2 * 28)

/**
 * ChatGLM-6B's sizes: one K/V entry per attention head (SelfAttention's
 * hidden_size_per_attention_head = hidden_size // num_attention_heads, the dense layer mapping
 * heads x D back to hidden_size), inner_hidden_size defaulting to 4 x hidden_size.
 */
function v1Dims(config: ModelConfig, source = 'config.json'): ModelDims {
  const int = (key: string, fallback?: number) => configInt(config, key, fallback, source)
  const hidden = int('hidden_size')
  const heads = int('num_attention_heads')
  if (hidden % heads !== 0) throw new ModelError(`${source}: hidden_size ${hidden} is not a multiple of num_attention_heads ${heads}`, 'bad-config')
  return {
    layers: int('num_layers'), hidden, heads, kvHeads: heads, headDim: hidden / heads, ffn: int('inner_hidden_size', 4 * hidden),
    vocab: int('vocab_size'), maxPositions: int('max_sequence_length', 2048),
  }
}

/** ChatGLM-6B's P-Tuning v2 encoder: projects as prefix_projection says, embedding hidden_size wide when it does. */
const V1_PREFIX: PrefixRules = {kvUnit: 'heads', alwaysProjects: false, embeddingIsKvSize: false}

/** ChatGLM-6B: GLM with 2D rotary and post-DeepNorm (docs/chatglm.md sections 1-3). */
export const chatglmV1: Arch = {
  id: 'chatglm-6b',
  network: 'chatglm-6b',
  displayName: 'ChatGLM-6B',
  generation: 1,
  shardCount: 8,
  tokenizerFile: 'ice_text.model',

  matchesConfig(config) {
    return config.position_encoding_2d !== undefined || config.inner_hidden_size !== undefined
  },

  tensors(config) {
    const d = v1Dims(config)
    const {hidden: H, ffn: F, layers: L, vocab: V, headDim} = d
    const m = new Map<string, TensorSpec>()
    m.set('transformer.word_embeddings.weight', {shape: [V, H], init: 'normal'})
    for (let i = 0; i < L; i++) {
      const p = `transformer.layers.${i}.`
      m.set(`${p}input_layernorm.weight`, {shape: [H], init: 'ones'})
      m.set(`${p}input_layernorm.bias`, {shape: [H], init: 'zeros'})
      m.set(`${p}attention.rotary_emb.inv_freq`, {shape: [headDim / 4], init: 'inv_freq', optional: true})
      m.set(`${p}attention.query_key_value.weight`, {shape: [3 * H, H], init: 'normal'})
      m.set(`${p}attention.query_key_value.bias`, {shape: [3 * H], init: 'zeros'})
      m.set(`${p}attention.dense.weight`, {shape: [H, H], init: 'normal'})
      m.set(`${p}attention.dense.bias`, {shape: [H], init: 'zeros'})
      m.set(`${p}post_attention_layernorm.weight`, {shape: [H], init: 'ones'})
      m.set(`${p}post_attention_layernorm.bias`, {shape: [H], init: 'zeros'})
      m.set(`${p}mlp.dense_h_to_4h.weight`, {shape: [F, H], init: 'normal'})
      m.set(`${p}mlp.dense_h_to_4h.bias`, {shape: [F], init: 'zeros'})
      m.set(`${p}mlp.dense_4h_to_h.weight`, {shape: [H, F], init: 'normal'})
      m.set(`${p}mlp.dense_4h_to_h.bias`, {shape: [H], init: 'zeros'})
    }
    m.set('transformer.final_layernorm.weight', {shape: [H], init: 'ones'})
    m.set('transformer.final_layernorm.bias', {shape: [H], init: 'zeros'})
    m.set('lm_head.weight', {shape: [V, H], init: 'normal'})
    // P-Tuning v2 prefix keys/values: one per attention head, as get_prompt views them.
    addPrefixCacheSpecs(m, config, d, V1_PREFIX)
    return m
  },

  embeddingRows(config) {
    return configInt(config, 'vocab_size')
  },

  // modeling_chatglm.py takes <sop> from bos_token_id and [MASK]/[gMASK] from the config when it
  // lays out positions, and stops at eos_token_id.
  configSpecials: {bos_token_id: 'sop', eos_token_id: 'eop', mask_token_id: 'mask', gmask_token_id: 'gmask'},

  synthConfig(size): ModelConfig {
    const s = SIZES[size]
    return {
      _name_or_path: 'THUDM/chatglm-6b',
      architectures: ['ChatGLMModel'],
      auto_map: {
        AutoConfig: 'configuration_chatglm.ChatGLMConfig',
        AutoModel: 'modeling_chatglm.ChatGLMForConditionalGeneration',
        AutoModelForSeq2SeqLM: 'modeling_chatglm.ChatGLMForConditionalGeneration',
      },
      bos_token_id: 130004,
      eos_token_id: 130005,
      mask_token_id: 130000,
      gmask_token_id: 130001,
      pad_token_id: 3,
      hidden_size: s.hidden,
      inner_hidden_size: s.inner,
      layernorm_epsilon: 1e-5,
      max_sequence_length: 2048,
      model_type: 'chatglm',
      num_attention_heads: s.heads,
      num_layers: s.layers,
      position_encoding_2d: true,
      torch_dtype: 'float16',
      transformers_version: '4.27.1',
      use_cache: true,
      vocab_size: 130528,
    }
  },

  summary(config) {
    return {
      generation: 'ChatGLM-6B (v1: GLM, 2D rotary, post-DeepNorm)',
      hidden_size: configInt(config, 'hidden_size'),
      inner_hidden_size: configInt(config, 'inner_hidden_size', 4 * configInt(config, 'hidden_size')),
      num_layers: configInt(config, 'num_layers'),
      num_attention_heads: configInt(config, 'num_attention_heads'),
      vocab_size: configInt(config, 'vocab_size'),
      max_sequence_length: Number(config.max_sequence_length ?? 2048),
      torch_dtype: String(config.torch_dtype ?? 'unknown'),
    }
  },

  framePrompt: framePromptV1,

  promptLayout(ids, {gmask, sop}) {
    return layoutV1(ids, gmask, sop)
  },

  quantizable: {
    embeddings: 'transformer.word_embeddings.weight',
    lmHead: 'lm_head.weight',
    layerLinear: /^transformer\.layers\.\d+\.(attention\.(query_key_value|dense)|mlp\.(dense_h_to_4h|dense_4h_to_h))\.weight$/,
  },

  chat: CHATGLM_6B_CHAT,
  chatDefaults: {temperature: 0.95, topP: 0.7, maxLength: 2048},

  engineDims(config) {
    if (config.position_encoding_2d === false) engineUnsupported('position_encoding_2d false')
    return {...v1Dims(config), eps: Number(config.layernorm_epsilon ?? 1e-5)}
  },

  // The published modeling_chatglm.py (chatglm.md section 3): per-head [q; k; v] rows, 2D rotary
  // (position, block position) with RotaryEmbedding's fp16 inv_freq and base 10000, LayerNorm
  // with bias, post-DeepNorm residual with GLMBlock's alpha, GELU MLP, biases on every linear,
  // final_layernorm.
  engineFlags() {
    return {
      interleavedQkv: true, rotary2d: true, rmsnorm: false, deepnormAlpha: V1_DEEPNORM_ALPHA, swiglu: false,
      ropeBase: 10000, roundInvFreqToHalf: true, qkvBias: true, denseBias: true, mlpBias: true, postLayerNorm: true,
    }
  },

  ropeBase: () => 10000,

  engineTensors(config) {
    const t: EngineTensor[] = [{name: 'transformer.word_embeddings.weight', slot: 'W_EMBED', layer: 0}]
    const per: [string, EngineTensor['slot']][] = [
      ['input_layernorm.weight', 'W_LN1'], ['input_layernorm.bias', 'B_LN1'],
      ['attention.query_key_value.weight', 'W_QKV'], ['attention.query_key_value.bias', 'B_QKV'],
      ['attention.dense.weight', 'W_DENSE'], ['attention.dense.bias', 'B_DENSE'],
      ['post_attention_layernorm.weight', 'W_LN2'], ['post_attention_layernorm.bias', 'B_LN2'],
      ['mlp.dense_h_to_4h.weight', 'W_UP'], ['mlp.dense_h_to_4h.bias', 'B_UP'],
      ['mlp.dense_4h_to_h.weight', 'W_DOWN'], ['mlp.dense_4h_to_h.bias', 'B_DOWN'],
    ]
    for (let i = 0, n = v1Dims(config).layers; i < n; i++) {
      for (const [suffix, slot] of per) t.push({name: `transformer.layers.${i}.${suffix}`, slot, layer: i})
    }
    t.push({name: 'transformer.final_layernorm.weight', slot: 'W_FINAL', layer: 0})
    t.push({name: 'transformer.final_layernorm.bias', slot: 'B_FINAL', layer: 0})
    t.push({name: 'lm_head.weight', slot: 'W_LMHEAD', layer: 0})
    return t
  },

  // The tokenizer: ice_text.model, with the specials as pieces of the file, ids shifted by
  // tokenizer_config.json's num_image_tokens.
  tokenizer: {
    fromBytes: (bytes, source, {numImageTokens}) => chatglm6bTokenizerFromBytes(bytes, source, numImageTokens ?? 0),
    takesNumImageTokens: true,
    filePieces: pieces => pieces.has('[gMASK]'),
    appendedSpecials: [],
  },
  synthTokenizer: synthChatglm6bTokenizer,
  // Network-keyed rules (issue 14): sizes, P-Tuning, LoRA, ONNX graph, calibration, GGUF.
  dims: v1Dims,
  prefix: V1_PREFIX,
  loraLayerPattern: /^transformer\.layers\.\d+\.(attention|mlp)\./,
  onnxGraph: chatglmV1Graph({dims: v1Dims, deepnormAlpha: V1_DEEPNORM_ALPHA}),
  calibrationUnits: (config, lmHead) => unitsV1(v1Dims(config), lmHead),
  gguf: {
    unsupported: 'ChatGLM-6B (v1) cannot be written as GGUF: llama.cpp has no architecture for it (its "chatglm" architecture is ChatGLM2/ChatGLM3: RMSNorm, multi-query attention, 1-D rotary); use --to safetensors or --to onnx',
    roleTokens: false,
  },
}
