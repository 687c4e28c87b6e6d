/**
 * `glmtool tokenize`: open the tokenizer of a model directory, or a bare SentencePiece file,
 * and encode texts or decode ids with it, as the published tokenizer does.
 */
import {existsSync, statSync} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'
import {ModelError} from '../../errors.js'
import {type Arch, ARCHS, archById} from '../../models/index.js'
import {describeTokenizer, loadModelTokenizer, type TokenizerReport} from './model-tokenizer.js'
import {decodeModelProto} from './sentencepiece-model.js'
import {type ChatTokenizer, type LoadedTokenizer, loadTokenizerFiles, type TokenizerArch} from './index.js'

export const TOKENIZER_ARCHS: readonly TokenizerArch[] = ARCHS.map(a => a.id)

export interface OpenedTokenizer {
  loaded: LoadedTokenizer
  /** Whose tokenizer it was read as. */
  arch: TokenizerArch
  report: TokenizerReport
  /** Said to the user beside the result: a bare tokenizer.model read as ChatGLM2-6B's. */
  note?: string
}

/** The generations whose tokenizer reads the same file as `arch`'s (ChatGLM2-6B and ChatGLM3-6B share tokenizer.model). */
function sharingFile(arch: TokenizerArch): Arch[] {
  const file = archById(arch).tokenizerFile
  return ARCHS.filter(a => a.tokenizerFile === file)
}

function sameFile(a: TokenizerArch, b: TokenizerArch): boolean {
  return archById(a).tokenizerFile === archById(b).tokenizerFile
}

/** The generation a bare file of this name is read as: the first in ARCHS that ships it. */
function archOfFile(name: string): TokenizerArch | undefined {
  return ARCHS.find(a => a.tokenizerFile === name)?.id
}

/** When a bare file is read as `arch`'s and other generations ship the same file: how to read it as theirs. */
function sharedNote(arch: TokenizerArch, path: string): string | undefined {
  const others = sharingFile(arch).filter(a => a.id !== arch && a.tokenizer.sharedFileDifference !== undefined)
  if (others.length === 0) return undefined
  const read = others.map(o => `${o.displayName} ships the same ${o.tokenizerFile} ${o.tokenizer.sharedFileDifference} (give --arch ${o.id})`)
  return `${path}: read as ${archById(arch).displayName}'s tokenizer; ${read.join('; ')}`
}

/**
 * A model directory (config.json names the generation, and the tokenizer is checked against it),
 * a directory with only a tokenizer file, or the SentencePiece file itself: ice_text.model is
 * ChatGLM-6B's, tokenizer.model ChatGLM2-6B's unless `arch` says chatglm3-6b (the two ship the
 * same bytes, so the file cannot tell); another name is told apart by its pieces (only
 * ChatGLM-6B's file holds [gMASK]). A v1 file takes num_image_tokens from the
 * tokenizer_config.json beside it, else the published default. `arch` (the --arch flag) must
 * agree with what the files are: v1 against v2/v3 is an error naming the file; a model
 * directory whose config.json is ChatGLM2-6B's may be read with ChatGLM3-6B's tokenizer and back.
 */
export async function openTokenizer(path: string, arch?: TokenizerArch): Promise<OpenedTokenizer> {
  if (!existsSync(path)) throw new ModelError(`${path}: no such file or directory`, 'missing-file')
  const disagree = (what: string, found: TokenizerArch): never => {
    const whose = sharingFile(found).map(a => `${a.displayName}'s`).join(' or ')
    throw new ModelError(`--arch ${arch}: ${what} is ${whose}, not ${arch}'s`, 'usage')
  }
  if (statSync(path).isDirectory()) {
    if (existsSync(join(path, 'config.json'))) {
      const t = await loadModelTokenizer(path)
      const modelArch = t.arch.id as TokenizerArch
      if (!arch || arch === modelArch) return {loaded: t, arch: modelArch, report: describeTokenizer(t, t)}
      if (!sameFile(arch, modelArch)) disagree(`the model of ${t.configPath}`, modelArch)
      const loaded = await loadTokenizerFiles(path, arch)
      return {loaded, arch, report: describeTokenizer(loaded, t)}
    }
    const files = [...new Set(ARCHS.map(a => a.tokenizerFile))]
    const present = files.filter(f => existsSync(join(path, f)))
    if (present.length !== 1) {
      throw new ModelError(`${path}: no config.json, and ${present.length === 0 ? 'no' : 'more than one'} tokenizer file (${files.join(' or ')})`, 'missing-file')
    }
    const found = archOfFile(present[0]) as TokenizerArch
    if (arch && !sameFile(arch, found)) disagree(join(path, present[0]), found)
    const loaded = await loadTokenizerFiles(path, arch ?? found)
    return {loaded, arch: arch ?? found, report: describeTokenizer(loaded), note: arch ? undefined : sharedNote(found, loaded.path)}
  }
  const name = basename(path)
  let found = archOfFile(name)
  if (!found || arch) {
    const pieces = new Set(decodeModelProto(await readFile(path), path).pieces.map(p => p.piece))
    const byPieces = ARCHS.find(a => a.tokenizer.filePieces(pieces))
    if (!byPieces) throw new ModelError(`${path}: its pieces are no ChatGLM generation's tokenizer`, 'tokenizer-model')
    found = byPieces.id
  }
  if (arch && !sameFile(arch, found)) disagree(path, found)
  const loaded = await loadTokenizerFiles(dirname(path), arch ?? found, name)
  return {loaded, arch: arch ?? found, report: describeTokenizer(loaded), note: arch ? undefined : sharedNote(found, loaded.path)}
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

/**
 * Decode ids as the published tokenizer's decode; an id outside the vocabulary is an error,
 * except for ChatGLM3-6B, whose published decode gives "" for it (the padded embedding rows).
 */
export function decodeIds(tok: ChatTokenizer, ids: readonly number[], source: string): {ids: number[], text: string} {
  const bad = tok.decodesAnyId ? undefined : ids.find(id => id >= tok.vocabSize)
  if (bad !== undefined) throw new ModelError(`--decode: id ${bad} is outside ${source}'s vocabulary (ids 0..${tok.vocabSize - 1})`, 'usage')
  return {ids: [...ids], text: tok.responseStyle.publishedDecode(tok.decode(ids))}
}
