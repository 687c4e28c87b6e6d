import {ModelError} from '../errors.js'
import type {Arch, ModelConfig} from './arch.js'
import {chatglmV1} from './chatglm-v1.js'
import {chatglmV2} from './chatglm-v2.js'

export type {Arch, ArchId, ModelConfig, SynthSize, TensorSpec} from './arch.js'

export const ARCHS: readonly Arch[] = [chatglmV1, chatglmV2]

export function archById(id: string): Arch {
  const a = ARCHS.find(x => x.id === id)
  if (!a) throw new ModelError(`unknown architecture ${id}; glmtool knows ${ARCHS.map(x => x.id).join(', ')}`, 'unknown-arch')
  return a
}

/**
 * Which generation a config.json (and, as a tie-breaker, the tensor names) describes.
 * Refuses configs that are not ChatGLM at all, naming what it saw.
 */
export function detectArch(config: ModelConfig, tensorNames: Iterable<string> = [], source = 'config.json'): Arch {
  if (config.model_type !== undefined && config.model_type !== 'chatglm') {
    throw new ModelError(`${source}: model_type "${String(config.model_type)}" is not a ChatGLM model; glmtool reads chatglm-6b and chatglm2-6b`, 'unknown-arch')
  }
  const byConfig = ARCHS.filter(a => a.matchesConfig(config))
  if (byConfig.length === 1) return byConfig[0]
  const names = [...tensorNames]
  if (names.some(n => n.startsWith('transformer.encoder.layers.'))) return chatglmV2
  if (names.some(n => n.startsWith('transformer.layers.'))) return chatglmV1
  throw new ModelError(`${source}: cannot tell the ChatGLM generation (no position_encoding_2d/inner_hidden_size for v1, no multi_query_attention/padded_vocab_size for v2)`, 'unknown-arch')
}
