/**
 * A model directory's tokenizer, checked against the model before any heavy work: the ids it can
 * produce must fit the word embedding that config.json describes, and the special ids that the
 * published modeling code reads from config.json must be the tokenizer's. A mismatch (the first
 * release's 150528-row checkpoints with the current 130344-piece tokenizer, a tokenizer_config.json
 * without num_image_tokens, a tokenizer of the other generation) is an error naming both files, so
 * `chat`, `quantize` and `bench` fail in a second instead of after a conversion.
 */
import {existsSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {ModelError} from '../../errors.js'
import {detectModelArch, type OpenModelOptions, readModelConfig} from '../../pipelines/model-dir.js'
import type {Arch, ModelConfig} from '../../models/index.js'
import {decodeModelProto, ModelType, PieceType} from './sentencepiece-model.js'
import {type ChatTokenizer, type LoadedTokenizer, loadTokenizerFiles, type TokenizerSpecials} from './index.js'

export interface ModelTokenizer extends LoadedTokenizer {
  arch: Arch
  config: ModelConfig
  configPath: string
}

/** Load `dir`'s tokenizer for the generation its config.json names, and check that they fit. */
export async function loadModelTokenizer(
  dir: string, known?: {arch: Arch, config: ModelConfig}, opts: OpenModelOptions & {onNote?: (m: string) => void} = {},
): Promise<ModelTokenizer> {
  const configPath = join(dir, 'config.json')
  const config = known?.config ?? await readModelConfig(configPath)
  const arch = known?.arch ?? await detectModelArch(dir, config, [], opts)
  const loaded = await loadTokenizerFiles(dir, arch.id)
  const t: ModelTokenizer = {...loaded, arch, config, configPath}
  checkTokenizerFits(t)
  return t
}

function imageTokensNote(t: LoadedTokenizer): string {
  const n = t.numImageTokens
  if (!n) return ''
  return n.from ? ` with num_image_tokens ${n.value} (${n.from})` : ` with num_image_tokens ${n.value} (the published default: no tokenizer_config.json sets it)`
}

/** Throws a ModelError naming the tokenizer and config.json when they do not belong together. */
export function checkTokenizerFits(t: ModelTokenizer): void {
  const rows = t.arch.embeddingRows(t.config)
  const vocab = t.tokenizer.vocabSize
  if (vocab > rows) {
    const n = t.numImageTokens
    // A model whose embedding has room for the text ids alone has no image tokens: say how to tell glmtool.
    const hint = n && n.value > 0 && vocab - n.value <= rows ? `; if the model has no image tokens, set "num_image_tokens": 0 in ${join(dirname(t.path), 'tokenizer_config.json')}` : ''
    throw new ModelError(`${t.path}${imageTokensNote(t)} has ids up to ${vocab - 1}, but ${t.configPath} gives the word embedding ${rows} rows; the tokenizer does not belong to this model${hint}`, 'tokenizer-mismatch')
  }
  for (const [key, special] of Object.entries(t.arch.configSpecials)) {
    const want = t.config[key]
    if (want === undefined || want === null) continue
    const have = t.tokenizer.specials[special as keyof TokenizerSpecials] as number
    if (want !== have) {
      throw new ModelError(`${t.configPath} has ${key} ${JSON.stringify(want)}, but ${t.path}${imageTokensNote(t)} has ${special} at ${have}; the tokenizer does not belong to this model`, 'tokenizer-mismatch')
    }
  }
}

/** What `inspect` and `tokenize` report about a tokenizer. */
export interface TokenizerReport {
  file: string
  type: string
  pieces: number
  /** Ids the tokenizer can produce or decode (pieces + num_image_tokens, or + v2's specials). */
  vocabSize: number
  numImageTokens?: number
  numImageTokensFrom?: string
  byteFallback: boolean
  normalizer: string
  /** gmask, mask, sop, eop, eos, pad; ChatGLM3-6B also its roles system, user, assistant, observation. */
  specials: Record<string, number>
  /** The ids that end generation (v3: eos, <|user|>, <|observation|>). */
  stop: number[]
  controlPieces?: number
  userDefinedPieces?: number
  bytePieces?: number
  embeddingRows?: number
  fitsEmbedding?: boolean
  /** Why it does not belong to the model (too many ids, other special ids), when it does not. */
  problem?: string
}

export function describeTokenizer(t: LoadedTokenizer, model?: {arch: Arch, config: ModelConfig, configPath: string}): TokenizerReport {
  const proto = decodeModelProto(t.bytes, t.path)
  const type = Object.entries(ModelType).find(([, v]) => v === (proto.trainerSpec?.modelType ?? ModelType.UNIGRAM))?.[0] ?? 'unknown'
  const tok: ChatTokenizer = t.tokenizer
  const {stop, roles, ...specials} = tok.specials
  const report: TokenizerReport = {
    file: t.path,
    type,
    pieces: proto.pieces.length,
    vocabSize: tok.vocabSize,
    byteFallback: proto.trainerSpec?.byteFallback ?? false,
    normalizer: proto.normalizerSpec?.name ?? 'nmt_nfkc',
    specials: {...specials, ...roles},
    stop: [...stop],
  }
  if (t.numImageTokens) {
    report.numImageTokens = t.numImageTokens.value
    report.numImageTokensFrom = t.numImageTokens.from ?? 'published default'
  }
  report.controlPieces = proto.pieces.filter(p => p.type === PieceType.CONTROL).length
  report.userDefinedPieces = proto.pieces.filter(p => p.type === PieceType.USER_DEFINED).length
  report.bytePieces = proto.pieces.filter(p => p.type === PieceType.BYTE).length
  if (model) {
    report.embeddingRows = model.arch.embeddingRows(model.config)
    report.fitsEmbedding = tok.vocabSize <= report.embeddingRows
    try {
      checkTokenizerFits({...t, ...model})
    } catch (error) {
      report.problem = (error as Error).message
    }
  }
  return report
}

/** Whether `dir` holds the tokenizer file of `arch`. */
export function hasTokenizer(dir: string, arch: Arch): boolean {
  return existsSync(join(dir, arch.tokenizerFile))
}

/**
 * inspect's tokenizer section for a model directory: the report, or why the tokenizer cannot be
 * used (missing, unreadable, not of this generation); null when the directory has no tokenizer
 * file at all (a bare weights directory is fine to inspect).
 */
export async function inspectTokenizer(dir: string, arch: Arch, config: ModelConfig): Promise<TokenizerReport | {file: string, error: string} | null> {
  if (!hasTokenizer(dir, arch)) return null
  try {
    const loaded = await loadTokenizerFiles(dir, arch.id)
    return describeTokenizer(loaded, {arch, config, configPath: join(dir, 'config.json')})
  } catch (error) {
    return {file: join(dir, arch.tokenizerFile), error: (error as Error).message}
  }
}
