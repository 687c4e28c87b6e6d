/**
 * ChatGLM2-6B's tokenizer: the published tokenization_chatglm.py (THUDM/chatglm2-6b) over
 * tokenizer.model (docs/chatglm.md sections 1, 4, 5). Also the tokenizer of CodeGeeX2-6B.
 *
 * - Five specials follow the SentencePiece vocabulary of n pieces: [MASK] n, [gMASK] n+1,
 *   [sMASK] n+2, sop n+3, eop n+4 (64789..64793 for the real model). bos is the model's <s>,
 *   eos its </s> (2; it ends generation), pad its <unk> (0).
 * - Encode: PreTrainedTokenizer.encode goes through EncodeAsPieces and _convert_token_to_id,
 *   which answers a special's id for a piece spelled like a special. So a text piece "sop" (as
 *   in "esop") becomes 64792 in the reference, and here too.
 * - Decode: _convert_id_to_token turns the specials, <s>, </s> and <unk> into "", and
 *   DecodePieces decodes "" as nothing; an id past the specials fails (RangeError here,
 *   IndexError there). The "" pieces still end a run of byte pieces.
 *
 * ChatGLM3-6B's tokenizer (./chatglm3-6b.ts) is the same wrapper with four more specials and
 * another decode of them; what the two share is AppendedSpecialsTokenizer below.
 */
import {ModelError} from '../../errors.js'
import {type ResponseStyle, textResponseStyle} from '../chat-response.js'
import {framePromptV2} from '../positions.js'
import {decodeByStream} from './decode.js'
import type {SentencePieceProcessor} from './sentencepiece.js'
import type {ChatTokenizer, StreamDecoder, TokenizerSpecials} from './types.js'

/** The wrapper's specials in id order after the SentencePiece vocabulary. */
export const V2_SPECIAL_NAMES = ['[MASK]', '[gMASK]', '[sMASK]', 'sop', 'eop'] as const

/**
 * The SPTokenizer + ChatGLMTokenizer pair of chatglm2-6b and chatglm3-6b: named specials
 * appended after the SentencePiece vocabulary, encode through EncodeAsPieces and
 * _convert_token_to_id, decode through _convert_id_to_token and DecodePieces. A subclass says
 * what _convert_id_to_token makes of an id that is no ordinary piece (specialText).
 */
export abstract class AppendedSpecialsTokenizer {
  readonly vocabSize: number
  /** The SentencePiece vocabulary size n: the first special's id. */
  protected readonly pieceCount: number
  protected readonly specialByName: ReadonlyMap<string, number>
  /** Specials' names that are also pieces of the model (none in the real files), with that piece's id. */
  private readonly namesAsPieces: ReadonlyMap<string, number>

  protected constructor(protected readonly sp: SentencePieceProcessor, source: string, readonly specialNames: readonly string[], what: string) {
    this.pieceCount = sp.vocabSize
    this.specialByName = new Map(specialNames.map((name, k) => [name, this.pieceCount + k]))
    if (sp.eosId < 0) throw new ModelError(`${source}: has no </s> piece; not a ${what} tokenizer`, 'tokenizer-model')
    this.vocabSize = this.pieceCount + specialNames.length
    this.namesAsPieces = new Map(specialNames.filter((name) => sp.hasPiece(name)).map((name) => [name, sp.pieceToId(name)]))
  }

  /** The id of a special by its published name ("[gMASK]", "sop", "<|user|>"...). */
  protected special(name: string): number {
    const id = this.specialByName.get(name)
    if (id === undefined) throw new Error(`no special ${name}`)
    return id
  }

  /**
   * The token string _convert_id_to_token gives for an id that does not decode as its own
   * SentencePiece piece ("" or a special's name), or null for an ordinary piece id.
   */
  protected abstract specialText(id: number): string | null

  encode(text: string): number[] {
    return this.encodeWithPieces(text).ids
  }

  encodeWithPieces(text: string): {ids: number[], pieces: string[]} {
    const {ids, pieces} = this.sp.encodeBoth(text)
    for (let i = 0; i < ids.length; i++) {
      const special = this.specialByName.get(pieces[i])
      if (special !== undefined) ids[i] = special
    }
    return {ids, pieces}
  }

  /** build_inputs_with_special_tokens: [gMASK, sop] + the text's ids. */
  encodePrompt(text: string): number[] {
    return framePromptV2(this.encode(text), {gmask: this.special('[gMASK]'), sop: this.special('sop')})
  }

  decode(ids: readonly number[]): string {
    return decodeByStream(this.streamDecoder(), ids)
  }

  /**
   * DecodePieces over the token strings: an ordinary id decodes as its piece (IdToPiece then
   * PieceToId is the identity on a valid model); a special's name that is a piece of the model
   * as that piece (PieceToId finds it); any other token string as DecodePieces decodes a string
   * that is no piece: itself, "" included, ending a run of byte pieces.
   */
  streamDecoder(): StreamDecoder {
    const sp = this.sp.decoder()
    return {
      push: (id: number): string => {
        const text = this.specialText(id)
        if (text === null) return sp.push(id)
        const piece = this.namesAsPieces.get(text)
        return piece === undefined ? sp.pushLiteral(text) : sp.push(piece)
      },
      flush: (): string => sp.flush(),
    }
  }
}

/**
 * ChatGLM2-6B's published chat() text: its tokenizer passes clean_up_tokenization_spaces=False;
 * process_response strips and replaces "[[训练时间]]".
 */
export const CHATGLM2_6B_RESPONSE: ResponseStyle = textResponseStyle({name: 'chatglm2-6b', cleanUp: false, fullWidthPunctuation: false})

export class ChatGLM2Tokenizer extends AppendedSpecialsTokenizer implements ChatTokenizer {
  readonly arch = 'chatglm2-6b' as const
  readonly responseStyle = CHATGLM2_6B_RESPONSE
  readonly decodesAnyId = false
  readonly specials: TokenizerSpecials
  /** Ids decoded as "": the specials, <s>, </s>, <unk>. */
  private readonly silent: ReadonlySet<number>

  constructor(sp: SentencePieceProcessor, source: string) {
    super(sp, source, V2_SPECIAL_NAMES, 'ChatGLM2-6B')
    const [mask, gmask, , sop, eop] = V2_SPECIAL_NAMES.map((name) => this.special(name))
    this.specials = Object.freeze({gmask, mask, sop, eop, eos: sp.eosId, pad: sp.unkId, stop: Object.freeze([sp.eosId])})
    this.silent = new Set([...this.specialByName.values(), sp.bosId, sp.eosId, sp.unkId].filter((id) => id >= 0))
  }

  /** "" for the specials, <s>, </s>, <unk> and negative ids; an id past the specials is a piece id (RangeError). */
  protected specialText(id: number): string | null {
    return id < 0 || this.silent.has(id) ? '' : null
  }
}
