/**
 * `glmtool tokenize`: open the tokenizer of a model directory, or a bare SentencePiece file,
 * and encode texts or decode ids with it, as the published tokenizer does.
 */
import {existsSync, statSync} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'
import {ModelError} from '../errors.js'
import {type Arch, archById} from '../models/index.js'
import {publishedDecode} from './chat-response.js'
import {describeTokenizer, loadModelTokenizer, type TokenizerReport} from './model-tokenizer.js'
import {decodeModelProto} from './sentencepiece-model.js'
import {type ChatTokenizer, type LoadedTokenizer, loadTokenizerFiles, TOKENIZER_FILE} from './tokenizer.js'

export interface OpenedTokenizer {
  loaded: LoadedTokenizer
  arch: Arch
  report: TokenizerReport
}

/**
 * A model directory (config.json names the generation, and the tokenizer is checked against it),
 * a directory with only a tokenizer file, or the SentencePiece file itself: ice_text.model is
 * ChatGLM-6B's, tokenizer.model ChatGLM2-6B's; another name is told apart by its pieces (only
 * ChatGLM-6B's file holds [gMASK]). A v1 file takes num_image_tokens from the
 * tokenizer_config.json beside it, else the published default.
 */
export async function openTokenizer(path: string): Promise<OpenedTokenizer> {
  if (!existsSync(path)) throw new ModelError(`${path}: no such file or directory`, 'missing-file')
  if (statSync(path).isDirectory()) {
    if (existsSync(join(path, 'config.json'))) {
      const t = await loadModelTokenizer(path)
      return {loaded: t, arch: t.arch, report: describeTokenizer(t, t)}
    }
    const present = Object.entries(TOKENIZER_FILE).filter(([, f]) => existsSync(join(path, f)))
    if (present.length !== 1) {
      throw new ModelError(`${path}: no config.json, and ${present.length === 0 ? 'no' : 'more than one'} tokenizer file (${Object.values(TOKENIZER_FILE).join(' or ')})`, 'missing-file')
    }
    const arch = archById(present[0][0])
    const loaded = await loadTokenizerFiles(path, arch.id)
    return {loaded, arch, report: describeTokenizer(loaded)}
  }
  const name = basename(path)
  let archId = Object.entries(TOKENIZER_FILE).find(([, f]) => f === name)?.[0]
  if (!archId) {
    const pieces = decodeModelProto(await readFile(path), path).pieces
    archId = pieces.some(p => p.piece === '[gMASK]') ? 'chatglm-6b' : 'chatglm2-6b'
  }
  const arch = archById(archId)
  const loaded = await loadTokenizerFiles(dirname(path), arch.id, name)
  return {loaded, arch, report: describeTokenizer(loaded)}
}

/** "1,2,3", "1 2 3" or "[1, 2, 3]" -> ids; refuses anything else, naming the flag. */
export function parseIds(spec: string): number[] {
  const body = spec.trim().replace(/^\[/, '').replace(/\]$/, '').trim()
  if (body === '') return []
  return body.split(/[\s,]+/).map((s) => {
    if (!/^\d+$/.test(s)) throw new ModelError(`--decode: ${JSON.stringify(s)} is not a token id (give ids as 1,2,3)`, 'usage')
    return Number(s)
  })
}

export interface Encoded {
  text: string
  ids: number[]
  pieces: string[]
}

export function encodeTexts(tok: ChatTokenizer, texts: readonly string[]): Encoded[] {
  return texts.map(text => ({text, ...tok.encodeWithPieces(text)}))
}

/** Decode ids as the published tokenizer's decode; an id outside the vocabulary is an error. */
export function decodeIds(tok: ChatTokenizer, ids: readonly number[], source: string): {ids: number[], text: string} {
  const bad = ids.find(id => id >= tok.vocabSize)
  if (bad !== undefined) throw new ModelError(`--decode: id ${bad} is outside ${source}'s vocabulary (ids 0..${tok.vocabSize - 1})`, 'usage')
  return {ids: [...ids], text: publishedDecode(tok.responseStyle, tok.decode(ids))}
}
