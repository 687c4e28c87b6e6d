import {ModelError} from '../errors.js'
import {type Arch, type ArchId, isChatglm3Config, type ModelConfig, type NetworkId} from './arch.js'
import {chatglmV1} from './chatglm-v1.js'
import {chatglmV2, isChatglm2Network} from './chatglm-v2.js'
import {chatglm3} from './chatglm3.js'

export type {Arch, ArchId, ChatDefaults, ModelConfig, ModelDims, NetworkId, SynthSize, TensorSpec} from './arch.js'

/** Every generation glmtool knows, one module each. */
export const ARCHS: readonly Arch[] = [chatglmV1, chatglmV2, chatglm3]
export const ARCH_IDS = ARCHS.map(a => a.id) as readonly ArchId[]

export function archById(id: string): Arch {
  const a = ARCHS.find(x => x.id === id)
  if (!a) throw new ModelError(`unknown architecture ${id}; glmtool knows ${ARCH_IDS.join(', ')}`, 'unknown-arch')
  return a
}

export interface ArchHints {
  /** tokenizer_config.json, whose name_or_path can tell ChatGLM3-6B from ChatGLM2-6B. */
  tokenizerConfig?: ModelConfig
  /** The user's --arch: taken when it runs the network config.json describes. */
  override?: ArchId
  /** Told what was assumed where config.json does not say. */
  onNote?: (message: string) => void
}

/**
 * The generation a config.json names by the `_name_or_path` save_pretrained records, among those
 * running `network` (ChatGLM2-6B and ChatGLM3-6B share one); undefined when it records no name.
 */
export function namedArch(network: NetworkId, config: ModelConfig): Arch | undefined {
  if (typeof config._name_or_path !== 'string') return undefined
  if (network === chatglmV1.network) return chatglmV1
  return isChatglm3Config(config) ? chatglm3 : chatglmV2
}

const NETWORK_NAME: Record<NetworkId, string> = {'chatglm-6b': 'ChatGLM-6B', 'chatglm2-6b': 'ChatGLM2-6B/ChatGLM3-6B'}

function namedAs(config: ModelConfig | undefined, key: string, re: RegExp): boolean {
  const v = config?.[key]
  return typeof v === 'string' && re.test(v)
}

/**
 * Which generation a config.json describes (with the tensor names as a tie-breaker, and
 * tokenizer_config.json for ChatGLM3-6B, whose config.json has ChatGLM2-6B's keys). Refuses
 * configs that are not ChatGLM at all, naming what it saw, and an --arch of another network.
 */
export function detectArch(config: ModelConfig, tensorNames: Iterable<string> = [], source = 'config.json', hints: ArchHints = {}): Arch {
  if (config.model_type !== undefined && config.model_type !== 'chatglm') {
    throw new ModelError(`${source}: model_type "${String(config.model_type)}" is not a ChatGLM model; glmtool reads ${ARCH_IDS.join(', ')}`, 'unknown-arch')
  }
  const v1 = chatglmV1.matchesConfig(config)
  const v2 = isChatglm2Network(config)
  let network: NetworkId | undefined = v1 && !v2 ? 'chatglm-6b' : v2 && !v1 ? 'chatglm2-6b' : undefined
  if (!network) {
    const names = [...tensorNames]
    if (names.some(n => n.startsWith('transformer.encoder.layers.'))) network = 'chatglm2-6b'
    else if (names.some(n => n.startsWith('transformer.layers.'))) network = 'chatglm-6b'
  }
  if (!network) {
    throw new ModelError(`${source}: cannot tell the ChatGLM generation (no position_encoding_2d/inner_hidden_size for v1, no multi_query_attention/padded_vocab_size for v2)`, 'unknown-arch')
  }
  if (hints.override) {
    const arch = archById(hints.override)
    if (arch.network !== network) {
      throw new ModelError(`${source}: --arch ${arch.id} does not fit this model: its config.json describes the ${NETWORK_NAME[network]} network`, 'arch-mismatch')
    }
    return arch
  }
  if (network === 'chatglm-6b') return chatglmV1
  const tc = hints.tokenizerConfig
  if (isChatglm3Config(config) || namedAs(tc, 'name_or_path', /chatglm3/i)) return chatglm3
  if (!namedAs(config, '_name_or_path', /chatglm2|codegeex2/i) && !namedAs(tc, 'name_or_path', /chatglm2|codegeex2/i)) {
    hints.onNote?.(`${source}: ChatGLM2-6B and ChatGLM3-6B share this network and neither config.json nor tokenizer_config.json names the model; assuming chatglm2-6b (pass --arch chatglm3-6b for ChatGLM3-6B)`)
  }
  return chatglmV2
}
