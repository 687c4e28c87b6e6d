/**
 * The whole-sequence decode every ChatGLM tokenizer derives from its stream decoder, so that
 * decode(ids) and the pushes + flush of streaming are one computation (types.ts StreamDecoder).
 */
import type {StreamDecoder} from './types.js'

export function decodeByStream(decoder: StreamDecoder, ids: readonly number[]): string {
  let out = ''
  for (const id of ids) out += decoder.push(id)
  return out + decoder.flush()
}
