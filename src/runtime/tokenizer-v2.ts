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
 */
import {ModelError} from '../errors.js'
import type {SentencePieceProcessor} from './sentencepiece.js'
import type {ChatTokenizer, StreamDecoder, TokenizerSpecials} from './tokenizer.js'

/** The wrapper's specials in id order after the SentencePiece vocabulary. */
export const V2_SPECIAL_NAMES = ['[MASK]', '[gMASK]', '[sMASK]', 'sop', 'eop'] as const

export class ChatGLM2Tokenizer implements ChatTokenizer {
  readonly arch = 'chatglm2-6b' as const
  readonly responseStyle = 'chatglm2-6b' as const
  readonly vocabSize: number
  readonly specials: TokenizerSpecials
  private readonly specialByName: ReadonlyMap<string, number>
  /** Ids decoded as "": the specials, <s>, </s>, <unk>. */
  private readonly silent: ReadonlySet<number>

  constructor(private readonly sp: SentencePieceProcessor, source: string) {
    const n = sp.vocabSize
    this.specialByName = new Map(V2_SPECIAL_NAMES.map((name, k) => [name, n + k]))
    if (sp.eosId < 0) throw new ModelError(`${source}: has no </s> piece; not a ChatGLM2-6B tokenizer`, 'tokenizer-model')
    const [mask, gmask, , sop, eop] = V2_SPECIAL_NAMES.map((_, k) => n + k)
    this.specials = Object.freeze({gmask, mask, sop, eop, eos: sp.eosId, pad: sp.unkId, stop: Object.freeze([sp.eosId])})
    this.vocabSize = n + V2_SPECIAL_NAMES.length
    this.silent = new Set([...this.specialByName.values(), sp.bosId, sp.eosId, sp.unkId].filter((id) => id >= 0))
  }

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

  encodePrompt(text: string): number[] {
    return [this.specials.gmask, this.specials.sop, ...this.encode(text)]
  }

  decode(ids: readonly number[]): string {
    const d = this.streamDecoder()
    let out = ''
    for (const id of ids) out += d.push(id)
    return out + d.flush()
  }

  streamDecoder(): StreamDecoder {
    const sp = this.sp.decoder()
    return {
      push: (id: number): string => (id < 0 || this.silent.has(id) ? sp.pushEmpty() : sp.push(id)),
      flush: (): string => sp.flush(),
    }
  }
}
