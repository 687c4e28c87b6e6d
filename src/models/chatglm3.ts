/**
 * ChatGLM3-6B: the ChatGLM2-6B network and tokenizer.model, with four role specials after the
 * five, its own chat format (role tokens, metadata lines, tool calls) and, in ChatGLM3-6B-32k,
 * config.json's rope_ratio scaling the rotary base (docs/chatglm.md section 9). Everything that
 * is ChatGLM2-6B's is taken from that module.
 */
import {CHATGLM3_6B_CHAT} from '../runtime/chat-template.js'
import {ChatGLM3Tokenizer, V3_SPECIAL_NAMES} from '../runtime/tokenizer/chatglm3-6b.js'
import {SentencePieceProcessor} from '../runtime/tokenizer/sentencepiece.js'
import {synthChatglm2Tokenizer} from '../synth/synth-tokenizer.js'
import {type Arch, isChatglm3Config, type ModelConfig, type PrefixRules, ropeRatio} from './arch.js'
import {chatglmV2, isChatglm2Network, v2EngineFlags, v2Tensors} from './chatglm-v2.js'

/**
 * ChatGLM3-6B(-32k)'s rotary base: 10000 * config.json's rope_ratio (1 when absent), as
 * THUDM/chatglm3-6b-32k's RotaryEmbedding.forward_impl computes it (`base = base *
 * self.rope_ratio`, theta in float32 from that base; the checkpoint's inv_freq is never read).
 */
function v3RopeBase(config: ModelConfig): number {
  return 10000 * ropeRatio(config)
}

/**
 * ChatGLM3-6B's P-Tuning v2 encoder: ChatGLM2-6B's, but its configuration_chatglm.py stores
 * prefix_projection without ChatGLM2-6B's trailing comma, so the flag is honoured.
 */
const V3_PREFIX: PrefixRules = {...chatglmV2.prefix, alwaysProjects: false}

export const chatglm3: Arch = {
  ...chatglmV2,
  id: 'chatglm3-6b',
  displayName: 'ChatGLM3-6B',

  matchesConfig(config) {
    return isChatglm2Network(config) && isChatglm3Config(config)
  },

  synthConfig(size): ModelConfig {
    // The real chatglm3-6b config.json differs from chatglm2-6b's in these keys only.
    const v2 = chatglmV2.synthConfig(size)
    return {
      ...v2,
      _name_or_path: 'THUDM/chatglm3-6b',
      auto_map: {...(v2.auto_map as object), AutoModelForSequenceClassification: 'modeling_chatglm.ChatGLMForSequenceClassification'},
      seq_length: 8192,
      transformers_version: '4.30.2',
    }
  },

  summary(config) {
    const rope = config.rope_ratio
    return {
      ...chatglmV2.summary(config),
      generation: 'ChatGLM3-6B (the ChatGLM2-6B network; role tokens and tool calls)',
      ...(rope === undefined ? {} : {rope_ratio: Number(rope)}),
    }
  },

  ropeBase: v3RopeBase,
  engineFlags: config => v2EngineFlags(config, v3RopeBase(config)),

  chat: CHATGLM3_6B_CHAT,
  // chatglm3-6b's chat(): max_length 8192, top_p 0.8, temperature 0.8.
  chatDefaults: {temperature: 0.8, topP: 0.8, maxLength: 8192},

  // The tokenizer: ChatGLM2-6B's tokenizer.model bytes, read with four role specials after the five.
  tokenizer: {
    ...chatglmV2.tokenizer,
    fromBytes: (bytes, source) => new ChatGLM3Tokenizer(SentencePieceProcessor.load(bytes, source), source),
    sharedFileDifference: 'with four role specials after the five',
    appendedSpecials: V3_SPECIAL_NAMES,
  },
  synthTokenizer: () => synthChatglm2Tokenizer('THUDM/chatglm3-6b'),
  // Network-keyed rules (issue 14): ChatGLM2-6B's, but for the prefix projection rule and the GGUF vocabulary.
  prefix: V3_PREFIX,
  tensors: config => v2Tensors(config, V3_PREFIX),
  gguf: {...chatglmV2.gguf, roleTokens: true},
}
