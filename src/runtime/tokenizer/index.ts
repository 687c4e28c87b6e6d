/**
 * The tokenizer the chat runtime uses: one interface over the ChatGLM generations
 * (docs/chatglm.md section 5), one module per tokenizer (./chatglm-6b.ts, ./chatglm2-6b.ts,
 * ./chatglm3-6b.ts for ChatGLM3-6B: ChatGLM2-6B's file with four role specials), all over
 * glmtool's own SentencePiece processor (./sentencepiece.ts).
 *
 * What "the published tokenizer" means here: the ids of tokenization_chatglm.py's
 * ChatGLMTokenizer.encode(text, add_special_tokens=False) under the transformers version each
 * repository pins (4.27 for chatglm-6b, 4.30 for chatglm2-6b and chatglm3-6b), with one deliberate difference
 * for chatglm-6b: text is always text. Its tokenizer_config.json registers <sop>, <eop>, <pad>,
 * <unk> and [MASK] as special tokens, and transformers splits the input on their literal
 * spellings (and strips the spaces around them) before SentencePiece sees it; glmtool encodes
 * such strings as ordinary characters, so a user cannot inject control tokens into a prompt.
 * (chatglm2-6b and chatglm3-6b register none, so there is nothing to differ on; chatglm3-6b's
 * own role-splitting, encode_special_tokens, is off by default and off here.)
 */
import {readFile} from 'node:fs/promises'
import {join} from 'node:path'

import {ModelError} from '../../errors.js'
import {archById} from '../../models/index.js'

export type {ChatTokenizer, ResponseStyle, StreamDecoder, TokenizerArch, TokenizerKind, TokenizerSpecials} from './types.js'
import type {ChatTokenizer, TokenizerArch} from './types.js'

export interface TokenizerOptions {
  /** Names the model file in errors. */
  source?: string
  /**
   * v1 only: ChatGLMTokenizer's num_image_tokens, an offset added to every SentencePiece id.
   * 0 in the current chatglm-6b checkpoints (their tokenizer_config.json says so).
   */
  numImageTokens?: number
}

/**
 * A tokenizer from the bytes of its SentencePiece model, as the generation's module builds it
 * (src/models/, Arch.tokenizer; the file each generation ships is its tokenizerFile).
 */
export function tokenizerFromBytes(bytes: Uint8Array, arch: TokenizerArch, opts: TokenizerOptions = {}): ChatTokenizer {
  const a = archById(arch)
  return a.tokenizer.fromBytes(bytes, opts.source ?? a.tokenizerFile, {numImageTokens: opts.numImageTokens})
}

/** The published ChatGLMTokenizer's num_image_tokens when tokenizer_config.json does not say. */
export const DEFAULT_NUM_IMAGE_TOKENS = 20000

/** Where a v1 tokenizer's num_image_tokens came from. */
export interface NumImageTokens {
  value: number
  /** The tokenizer_config.json that set it, or undefined for the published default. */
  from?: string
}

/** A model directory's tokenizer, with the files it came from (for messages and inspect). */
export interface LoadedTokenizer {
  tokenizer: ChatTokenizer
  /** The SentencePiece file. */
  path: string
  bytes: Uint8Array
  /** v1 only. */
  numImageTokens?: NumImageTokens
}

/**
 * Load the tokenizer of a model directory: ice_text.model (v1) or tokenizer.model (v2, v3), and for
 * v1 num_image_tokens from tokenizer_config.json, or the published class default (20000) when
 * that file or its key is absent (ChatGLMTokenizer(num_image_tokens=20000)).
 */
export async function loadTokenizer(modelDir: string, arch: TokenizerArch): Promise<ChatTokenizer> {
  return (await loadTokenizerFiles(modelDir, arch)).tokenizer
}

/** `file`: the SentencePiece file's name in `modelDir` (default: the generation's). */
export async function loadTokenizerFiles(modelDir: string, arch: TokenizerArch, file: string = archById(arch).tokenizerFile): Promise<LoadedTokenizer> {
  const path = join(modelDir, file)
  let bytes: Buffer
  try {
    bytes = await readFile(path)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    throw new ModelError(
      code === 'ENOENT' ? `${path}: missing; a ${arch} model directory holds its tokenizer as ${file}` : `${path}: cannot read (${code ?? (error as Error).message})`,
      'missing-file',
    )
  }
  if (!archById(arch).tokenizer.takesNumImageTokens) return {tokenizer: tokenizerFromBytes(bytes, arch, {source: path}), path, bytes}
  const numImageTokens = await readNumImageTokens(join(modelDir, 'tokenizer_config.json'))
  return {tokenizer: tokenizerFromBytes(bytes, arch, {source: path, numImageTokens: numImageTokens.value}), path, bytes, numImageTokens}
}

async function readNumImageTokens(path: string): Promise<NumImageTokens> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch {
    return {value: DEFAULT_NUM_IMAGE_TOKENS}
  }
  let config: unknown
  try {
    config = JSON.parse(text)
  } catch (error) {
    throw new ModelError(`${path}: invalid JSON (${(error as Error).message})`, 'bad-json')
  }
  const n = (config as Record<string, unknown> | null)?.num_image_tokens
  if (n === undefined) return {value: DEFAULT_NUM_IMAGE_TOKENS}
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 1_000_000) {
    throw new ModelError(`${path}: num_image_tokens must be an integer from 0 to 1000000, not ${JSON.stringify(n)}`, 'bad-config')
  }
  return {value: n, from: path}
}
