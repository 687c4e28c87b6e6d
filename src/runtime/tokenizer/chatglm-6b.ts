/**
 * ChatGLM-6B's tokenizer: the published tokenization_chatglm.py (THUDM/chatglm-6b) SPTokenizer
 * and ChatGLMTokenizer over ice_text.model (docs/chatglm.md sections 1, 3, 5).
 *
 * - Encode: "\n" -> "<n>", "\t" -> "<|tab|>", then runs of spaces -> "<|blank_k|>" (the
 *   reference replaces 80-space runs first, then 79, ... 2, so a run of k spaces becomes
 *   floor(k/80) x <|blank_80|> and then <|blank_r|> for the rest r >= 2, or one plain space for
 *   r = 1); then SentencePiece ids, plus num_image_tokens (0 in current checkpoints).
 * - Decode: drop the pad id (ChatGLMTokenizer._decode), subtract num_image_tokens and drop what
 *   falls below 0 (image tokens), SentencePiece-decode, then turn "<n>", "<|tab|>" and
 *   "<|blank_k|>" (2 <= k <= 80) back into whitespace anywhere in the text: the reference
 *   replaces in the decoded string, so a stand-in spelled across several pieces counts too.
 * - Specials are looked up by name in the model: [MASK], [gMASK], <sop> (bos), <eop> (eos: it
 *   ends generation, config.json eos_token_id 130005), <pad> (PieceToId, so <unk> when absent).
 * - ice_text.model is a SentencePiece UNIGRAM model. The first-release file (130000 pieces,
 *   before 2023-04-06) lacks the specials, <|tab|>, <|blank_k|> and byte pieces: its
 *   tokenization_chatglm.py appended them at load time (chatglm6bModel below does the same),
 *   and its checkpoints count num_image_tokens = 20000 image ids in front ([MASK] = 150000).
 */
import {ModelError} from '../../errors.js'
import {type ResponseStyle, textResponseStyle} from '../chat-response.js'
import {decodeByStream} from './decode.js'
import {decodeModelProto, PieceType, type SentencePiece, type SentencePieceModel} from './sentencepiece-model.js'
import {framePromptV1} from '../positions.js'
import {SentencePieceProcessor} from './sentencepiece.js'
import type {ChatTokenizer, StreamDecoder, TokenizerSpecials} from './types.js'

const MAX_BLANK = 80

/**
 * The pieces the first-release tokenization_chatglm.py (THUDM/chatglm-6b before 2023-04-06,
 * with icetk's TextTokenizer) appended to its 130000-piece ice_text.model at load time, in
 * order, each with score 0: the 8 specials as CONTROL, <|tab|> and <|blank_2..80|> as
 * USER_DEFINED, and <0x00>..<0xFF> as BYTE (it also set trainer_spec.byte_fallback). The
 * current file carries exactly these 344 pieces at ids 130000..130343.
 */
export function firstReleaseAppendedPieces(): SentencePiece[] {
  const out: SentencePiece[] = []
  for (const piece of ['[MASK]', '[gMASK]', '[sMASK]', '<unused_0>', '<sop>', '<eop>', '<ENC>', '<dBLOCK>']) {
    out.push({piece, score: 0, type: PieceType.CONTROL})
  }
  out.push({piece: '<|tab|>', score: 0, type: PieceType.USER_DEFINED})
  for (let k = 2; k <= MAX_BLANK; k++) out.push({piece: `<|blank_${k}|>`, score: 0, type: PieceType.USER_DEFINED})
  for (let b = 0; b < 256; b++) {
    out.push({piece: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, score: 0, type: PieceType.BYTE})
  }
  return out
}

/** Pieces in the first-release file (it has all 130000 of the current file's first pieces). */
export const FIRST_RELEASE_PIECES = 130000

/**
 * A ChatGLM-6B SentencePiece model as its checkpoints use it. The first-release ice_text.model
 * (130000 pieces, none of the 344 above, byte_fallback off) gets the pieces appended and
 * byte_fallback set, as its own tokenizer code did; its checkpoints put num_image_tokens (20000)
 * in front, which the caller adds. Any other file is used as it is. A file with 130000 pieces
 * that holds only some of the 344 is neither layout: refused, naming the file.
 */
export function chatglm6bModel(model: SentencePieceModel, source: string): SentencePieceModel {
  if (model.pieces.length !== FIRST_RELEASE_PIECES) return model
  const appended = firstReleaseAppendedPieces()
  const names = new Set(model.pieces.map((p) => p.piece))
  const present = appended.filter((p) => names.has(p.piece)).length
  if (present === appended.length) return model
  if (present > 0) {
    throw new ModelError(`${source}: a 130000-piece ChatGLM-6B tokenizer that already holds ${present} of the 344 pieces the first-release code appends; neither the first-release nor the current ice_text.model`, 'tokenizer-model')
  }
  return {
    ...model,
    pieces: [...model.pieces, ...appended],
    trainerSpec: {...model.trainerSpec, byteFallback: true},
  }
}

/** The SentencePiece processor of a ChatGLM-6B ice_text.model's bytes (see chatglm6bModel). */
export function loadChatGLM6BSentencePiece(bytes: Uint8Array, source: string): SentencePieceProcessor {
  return loadChatGLM6BModel(bytes, source).sp
}

/** The processor, and whether the file was the first release's (upgraded at load). */
export function loadChatGLM6BModel(bytes: Uint8Array, source: string): {sp: SentencePieceProcessor, firstRelease: boolean} {
  const model = decodeModelProto(bytes, source)
  const upgraded = chatglm6bModel(model, source)
  return {sp: SentencePieceProcessor.fromModel(upgraded, source), firstRelease: upgraded !== model}
}

/** "\n", "\t" and space runs as the reference's _preprocess writes them. */
export function preprocessV1(text: string): string {
  return text
    .replaceAll('\n', '<n>')
    .replaceAll('\t', '<|tab|>')
    .replace(/ {2,}/g, (run) => {
      const full = Math.floor(run.length / MAX_BLANK)
      const rest = run.length % MAX_BLANK
      return `<|blank_${MAX_BLANK}|>`.repeat(full) + (rest >= 2 ? `<|blank_${rest}|>` : ' '.repeat(rest))
    })
}

/**
 * The stand-ins, each ending the moment its ">" arrives. They hold "<" only as their first
 * character and ">" only as their last, so matches never overlap and replacing them in one
 * left-to-right pass equals the reference's replace-all per stand-in.
 */
const STANDIN = /<n>|<\|tab\|>|<\|blank_([2-9]|[1-7][0-9]|80)\|>/g

/** The reference's postprocess: stand-ins back to whitespace. */
export function postprocessV1(text: string): string {
  if (!text.includes('<')) return text
  return text.replace(STANDIN, (m, k: string | undefined) => (m === '<n>' ? '\n' : k === undefined ? '\t' : ' '.repeat(Number(k))))
}

/** Every proper prefix of a stand-in: text that may still become one. */
const PARTIAL_STANDINS: ReadonlySet<string> = (() => {
  const set = new Set<string>()
  const all = ['<n>', '<|tab|>']
  for (let k = 2; k <= MAX_BLANK; k++) all.push(`<|blank_${k}|>`)
  for (const s of all) for (let i = 1; i < s.length; i++) set.add(s.slice(0, i))
  return set
})()

/**
 * Split decoded text into [final, held]: held is a tail that may still grow into a stand-in.
 * Only a suffix from the last "<" can (no stand-in holds a second "<").
 */
export function splitPartialStandin(text: string): [string, string] {
  const lt = text.lastIndexOf('<')
  if (lt < 0 || !PARTIAL_STANDINS.has(text.slice(lt))) return [text, '']
  return [text.slice(0, lt), text.slice(lt)]
}

/**
 * The published chat() text of the current release: transformers 4.27's decode runs its clean-up
 * (clean_up_tokenization_spaces=True), then process_response strips, replaces "[[训练时间]]" and
 * makes ASCII punctuation next to CJK full-width.
 */
export const CHATGLM_6B_RESPONSE: ResponseStyle = textResponseStyle({name: 'chatglm-6b', cleanUp: true, fullWidthPunctuation: true})
/** The first release's: its SPTokenizer.decode was called directly, with no clean-up. */
export const CHATGLM_6B_FIRST_RELEASE_RESPONSE: ResponseStyle = textResponseStyle({name: 'chatglm-6b-first-release', cleanUp: false, fullWidthPunctuation: true})

/** ChatGLM-6B's tokenizer from the bytes of its ice_text.model (either release, see chatglm6bModel). */
export function chatglm6bTokenizerFromBytes(bytes: Uint8Array, source: string, numImageTokens = 0): ChatGLM6BTokenizer {
  const {sp, firstRelease} = loadChatGLM6BModel(bytes, source)
  return new ChatGLM6BTokenizer(sp, source, numImageTokens, firstRelease)
}

export class ChatGLM6BTokenizer implements ChatTokenizer {
  readonly arch = 'chatglm-6b' as const
  readonly vocabSize: number
  readonly specials: TokenizerSpecials
  readonly decodesAnyId = false

  /**
   * What the published decode does after SentencePiece: the current release's is transformers'
   * (clean-up of spaces before punctuation); the first release's called SPTokenizer.decode directly.
   */
  readonly responseStyle: ResponseStyle

  constructor(
    private readonly sp: SentencePieceProcessor,
    source: string,
    private readonly numImageTokens = 0,
    /** The first-release 130000-piece file, upgraded at load (chatglm6bModel). */
    private readonly firstRelease = false,
  ) {
    this.responseStyle = firstRelease ? CHATGLM_6B_FIRST_RELEASE_RESPONSE : CHATGLM_6B_RESPONSE
    const id = (piece: string): number => {
      if (!sp.hasPiece(piece)) throw new ModelError(`${source}: has no ${piece} piece; not a ChatGLM-6B tokenizer`, 'tokenizer-model')
      return sp.pieceToId(piece) + numImageTokens
    }
    const eop = id('<eop>')
    this.specials = Object.freeze({
      gmask: id('[gMASK]'),
      mask: id('[MASK]'),
      sop: id('<sop>'),
      eop,
      eos: eop,
      // ChatGLMTokenizer.pad_token_id is convert_tokens_to_ids("<pad>"): PieceToId, <unk> if absent.
      pad: sp.pieceToId('<pad>') + numImageTokens,
      stop: Object.freeze([eop]),
    })
    this.vocabSize = sp.vocabSize + numImageTokens
  }

  encode(text: string): number[] {
    const ids = this.sp.encode(preprocessV1(text))
    if (this.numImageTokens !== 0) for (let i = 0; i < ids.length; i++) ids[i] += this.numImageTokens
    return ids
  }

  encodeWithPieces(text: string): {ids: number[], pieces: string[]} {
    const {ids, pieces} = this.sp.encodeBoth(preprocessV1(text))
    if (this.numImageTokens !== 0) for (let i = 0; i < ids.length; i++) ids[i] += this.numImageTokens
    return {ids, pieces}
  }

  encodePrompt(text: string): number[] {
    return framePromptV1(this.encode(text), this.specials)
  }

  decode(ids: readonly number[]): string {
    return decodeByStream(this.streamDecoder(), ids)
  }

  streamDecoder(): StreamDecoder {
    const sp = this.sp.decoder()
    const pad = this.specials.pad
    const offset = this.numImageTokens
    let held = ''
    return {
      push: (id: number): string => {
        // Pad ids are filtered before SentencePiece sees the sequence: they do not even end a
        // run of byte pieces. Ids below num_image_tokens (image tokens): the first release's
        // SPTokenizer.decode drops them likewise; the current release's decode goes through
        // _convert_id_to_token, which names them "<image_k>", and DecodePieces, which gives a
        // string it does not know back as it is.
        if (id === pad) return ''
        if (id - offset < 0 && (this.firstRelease || id < 0)) return ''
        const decoded = id - offset < 0 ? sp.pushLiteral(`<image_${id}>`) : sp.push(id - offset)
        const [done, rest] = splitPartialStandin(held + decoded)
        held = rest
        return postprocessV1(done)
      },
      flush: (): string => {
        const text = postprocessV1(held + sp.flush())
        held = ''
        return text
      },
    }
  }
}
