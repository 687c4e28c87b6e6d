/**
 * Read and write SentencePiece model files (ChatGLM-6B's ice_text.model, ChatGLM2-6B's
 * tokenizer.model; docs/chatglm.md section 5) as typed objects.
 *
 * The schema is ./sentencepiece_model.proto, read from beside this module (the build copies it
 * into dist/runtime/, so src/ under vitest and the compiled CLI read the same file). Field names are
 * protobufjs's camelCase forms of the proto names (byte_fallback -> byteFallback). Optional spec
 * fields are present only when the file sets them; effectiveTrainerSpec/effectiveNormalizerSpec
 * fill in the proto defaults, which matter (add_dummy_prefix and remove_extra_whitespaces
 * default to true).
 */
import {readFileSync} from 'node:fs'
import protobuf from 'protobufjs'

import {ModelError} from '../../errors.js'

/** ModelProto.SentencePiece.Type. */
export const PieceType = {NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6} as const
export type PieceType = (typeof PieceType)[keyof typeof PieceType]

/** TrainerSpec.ModelType. */
export const ModelType = {UNIGRAM: 1, BPE: 2, WORD: 3, CHAR: 4} as const
export type ModelType = (typeof ModelType)[keyof typeof ModelType]

/** One vocabulary entry; its id is its index in SentencePieceModel.pieces. */
export interface SentencePiece {
  piece: string
  /** Merge priority for BPE (higher merges first), log probability for unigram. */
  score: number
  type: PieceType
}

export interface TrainerSpec {
  input?: string[]
  inputFormat?: string
  modelPrefix?: string
  modelType?: ModelType
  vocabSize?: number
  acceptLanguage?: string[]
  selfTestSampleSize?: number
  enableDifferentialPrivacy?: boolean
  differentialPrivacyNoiseLevel?: number
  differentialPrivacyClippingThreshold?: number
  characterCoverage?: number
  inputSentenceSize?: number
  shuffleInputSentence?: boolean
  miningSentenceSize?: number
  trainingSentenceSize?: number
  seedSentencepieceSize?: number
  shrinkingFactor?: number
  maxSentenceLength?: number
  numThreads?: number
  numSubIterations?: number
  maxSentencepieceLength?: number
  splitByUnicodeScript?: boolean
  splitByNumber?: boolean
  splitByWhitespace?: boolean
  treatWhitespaceAsSuffix?: boolean
  allowWhitespaceOnlyPieces?: boolean
  splitDigits?: boolean
  pretokenizationDelimiter?: string
  controlSymbols?: string[]
  userDefinedSymbols?: string[]
  requiredChars?: string
  byteFallback?: boolean
  vocabularyOutputPieceScore?: boolean
  hardVocabLimit?: boolean
  useAllVocab?: boolean
  unkId?: number
  bosId?: number
  eosId?: number
  padId?: number
  unkPiece?: string
  bosPiece?: string
  eosPiece?: string
  padPiece?: string
  unkSurface?: string
  trainExtremelyLargeCorpus?: boolean
  seedSentencepiecesFile?: string
}

export interface NormalizerSpec {
  name?: string
  /** Compiled character map (Darts-clone trie + replacement strings); absent = no mapping. */
  precompiledCharsmap?: Uint8Array
  addDummyPrefix?: boolean
  removeExtraWhitespaces?: boolean
  escapeWhitespaces?: boolean
  normalizationRuleTsv?: string
}

export interface SelfTestSample {
  input?: string
  expected?: string
}

export interface SelfTestData {
  samples?: SelfTestSample[]
}

export interface SentencePieceModel {
  pieces: SentencePiece[]
  trainerSpec?: TrainerSpec
  normalizerSpec?: NormalizerSpec
  selfTestData?: SelfTestData
  denormalizerSpec?: NormalizerSpec
}

type ScalarKeys<T> = {[K in keyof T]-?: NonNullable<T[K]> extends unknown[] ? never : K}[keyof T]
/** A trainer spec with every scalar field resolved to the file's value or the proto default. */
export type EffectiveTrainerSpec = Required<Pick<TrainerSpec, ScalarKeys<TrainerSpec>>> & TrainerSpec
/** A normalizer spec with every field resolved to the file's value or the proto default. */
export type EffectiveNormalizerSpec = Required<NormalizerSpec>

/** The parsed schema, resolved (defaults filled in); exported for tools and schema tests. */
export const sentencepieceRoot: protobuf.Root = protobuf.parse(readFileSync(new URL('./sentencepiece_model.proto', import.meta.url), 'utf8')).root
sentencepieceRoot.resolveAll()

const ModelProtoType = sentencepieceRoot.lookupType('sentencepiece.ModelProto')

const TO_OBJECT: protobuf.IConversionOptions = {longs: Number, enums: Number, defaults: false}

/** Scalar defaults of a message, read from the schema so they cannot drift from it. */
function scalarDefaults(typeName: string): Record<string, unknown> {
  const type = sentencepieceRoot.lookupType(typeName)
  const out: Record<string, unknown> = {}
  for (const field of type.fieldsArray) {
    if (field.repeated) continue
    let value: unknown = field.defaultValue
    // uint64 defaults come back as Long objects; every one here is small.
    if (value !== null && typeof value === 'object' && 'low' in value) value = Number(value.toString())
    out[field.name] = value
  }
  return out
}

/** Proto defaults of TrainerSpec's scalar fields. */
export const TRAINER_SPEC_DEFAULTS = Object.freeze(scalarDefaults('sentencepiece.TrainerSpec')) as Readonly<
  Required<Pick<TrainerSpec, ScalarKeys<TrainerSpec>>>
>
/** Proto defaults of NormalizerSpec (add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces true). */
export const NORMALIZER_SPEC_DEFAULTS = Object.freeze(scalarDefaults('sentencepiece.NormalizerSpec')) as Readonly<
  EffectiveNormalizerSpec
>

export function effectiveTrainerSpec(model: SentencePieceModel): EffectiveTrainerSpec {
  return {...TRAINER_SPEC_DEFAULTS, ...model.trainerSpec}
}

export function effectiveNormalizerSpec(model: SentencePieceModel): EffectiveNormalizerSpec {
  return {...NORMALIZER_SPEC_DEFAULTS, ...model.normalizerSpec}
}

/**
 * Parse a SentencePiece model file. `source` names the file in error messages.
 * Throws ModelError (code 'tokenizer-model') when the bytes are not a ModelProto with pieces.
 */
export function decodeModelProto(buf: Uint8Array, source = 'tokenizer model'): SentencePieceModel {
  let message: protobuf.Message
  try {
    message = ModelProtoType.decode(buf)
  } catch (err) {
    throw new ModelError(`${source}: not a SentencePiece model (${(err as Error).message})`, 'tokenizer-model')
  }
  const obj = ModelProtoType.toObject(message, TO_OBJECT) as Omit<SentencePieceModel, 'pieces'> & {
    pieces?: Array<Partial<SentencePiece>>
  }
  const raw = obj.pieces ?? []
  if (raw.length === 0) throw new ModelError(`${source}: not a SentencePiece model (no pieces)`, 'tokenizer-model')
  // Pieces are the bulk of a model (130k in ChatGLM-6B); fill their proto2 defaults here so
  // callers never see a missing score or type.
  const pieces = new Array<SentencePiece>(raw.length)
  for (let i = 0; i < raw.length; i++) {
    const p = raw[i]
    if (!p.piece) throw new ModelError(`${source}: piece ${i} is empty`, 'tokenizer-model')
    pieces[i] = {piece: p.piece, score: p.score ?? 0, type: (p.type ?? PieceType.NORMAL) as PieceType}
  }
  const model: SentencePieceModel = {pieces}
  if (obj.trainerSpec) model.trainerSpec = obj.trainerSpec
  if (obj.normalizerSpec) model.normalizerSpec = normalizerOut(obj.normalizerSpec)
  if (obj.selfTestData) model.selfTestData = obj.selfTestData
  if (obj.denormalizerSpec) model.denormalizerSpec = normalizerOut(obj.denormalizerSpec)
  return model
}

/** protobufjs hands bytes back as a Buffer view into the input; give callers their own Uint8Array. */
function normalizerOut(spec: NormalizerSpec): NormalizerSpec {
  if (spec.precompiledCharsmap === undefined) return spec
  return {...spec, precompiledCharsmap: new Uint8Array(spec.precompiledCharsmap)}
}

/**
 * Serialize a model. Pieces of type NORMAL are written without their type field (the proto
 * default), as sentencepiece's own trainer does, which keeps 130k-piece files small; decoding
 * restores it, so decodeModelProto(encodeModelProto(m)) deep-equals m.
 */
export function encodeModelProto(model: SentencePieceModel): Buffer {
  const pieces = model.pieces.map((p, i) => {
    if (!p.piece) throw new ModelError(`piece ${i} is empty; SentencePiece rejects empty pieces`, 'tokenizer-model')
    return p.type === PieceType.NORMAL ? {piece: p.piece, score: p.score} : {piece: p.piece, score: p.score, type: p.type}
  })
  const message = ModelProtoType.fromObject({...model, pieces})
  const bytes = ModelProtoType.encode(message).finish()
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
}
