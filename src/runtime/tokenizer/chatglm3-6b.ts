/**
 * ChatGLM3-6B's tokenizer: the published tokenization_chatglm.py of THUDM/chatglm3-6b over the
 * same tokenizer.model bytes as ChatGLM2-6B (docs/chatglm.md sections 1, 4, 5; docs/chatglm.md
 * section 5 for the chat format, ./chatglm3-chat.ts).
 *
 * - Nine specials follow the n = 64789 SentencePiece pieces: ChatGLM2-6B's five ([MASK] n,
 *   [gMASK] n+1, [sMASK] n+2, sop n+3, eop n+4), then the roles <|system|> n+5, <|user|> n+6,
 *   <|assistant|> n+7, <|observation|> n+8 (64794..64797). bos <s>, eos </s> (2), pad <unk> (0).
 * - Generation stops at eos, <|user|> or <|observation|> (modeling_chatglm.py chat()).
 * - Encode: as ChatGLM2-6B's: EncodeAsPieces then convert_token_to_id, which maps a piece spelled
 *   like any of the nine specials to it. The published class defaults to
 *   encode_special_tokens=False: a role's spelling in the text ("<|user|>") stays text, so a
 *   user cannot inject a role.
 * - Decode (transformers' _decode with skip_special_tokens=False, clean_up_tokenization_spaces
 *   False): convert_id_to_token gives each of the nine specials its NAME, "" for </s>, <s>, <unk>,
 *   a negative id and an id past the SentencePiece vocabulary that is not a special (so the padded
 *   embedding rows 64798.. decode to "", not an error), then DecodePieces, which gives a string
 *   that is no piece back as itself (test/tokenizer-v3.test.ts proves that on the library).
 */
import {partsResponseStyle, type ResponseStyle} from '../chat-response.js'
import type {SentencePieceProcessor} from './sentencepiece.js'
import type {ChatTokenizer, TokenizerSpecials} from './types.js'
import {AppendedSpecialsTokenizer, V2_SPECIAL_NAMES} from './chatglm2-6b.js'

export const V3_ROLE_NAMES = ['<|system|>', '<|user|>', '<|assistant|>', '<|observation|>'] as const
/** The specials in id order after the SentencePiece vocabulary. */
export const V3_SPECIAL_NAMES = [...V2_SPECIAL_NAMES, ...V3_ROLE_NAMES] as const

/**
 * ChatGLM3-6B's published chat() text: no clean-up; process_response splits the text on
 * "<|assistant|>" into parts of a metadata line and content (src/runtime/chat-response.ts).
 */
export const CHATGLM3_6B_RESPONSE: ResponseStyle = partsResponseStyle('chatglm3-6b')

export class ChatGLM3Tokenizer extends AppendedSpecialsTokenizer implements ChatTokenizer {
  readonly arch = 'chatglm3-6b' as const
  readonly responseStyle = CHATGLM3_6B_RESPONSE
  /** Its published decode gives "" for an id past the vocabulary (the padded embedding rows). */
  readonly decodesAnyId = true
  readonly specials: TokenizerSpecials & {roles: NonNullable<TokenizerSpecials['roles']>}
  /** Ids decoded as "" below the specials: </s>, <s>, <unk>. */
  private readonly silent: ReadonlySet<number>

  constructor(sp: SentencePieceProcessor, source: string) {
    super(sp, source, V3_SPECIAL_NAMES, 'ChatGLM3-6B')
    const [system, user, assistant, observation] = V3_ROLE_NAMES.map((name) => this.special(name))
    const eos = sp.eosId
    this.specials = Object.freeze({
      gmask: this.special('[gMASK]'),
      mask: this.special('[MASK]'),
      sop: this.special('sop'),
      eop: this.special('eop'),
      eos,
      pad: sp.unkId,
      stop: Object.freeze([eos, user, observation]),
      roles: Object.freeze({system, user, assistant, observation}),
    })
    this.silent = new Set([sp.bosId, sp.eosId, sp.unkId].filter((id) => id >= 0))
  }

  /**
   * The published SPTokenizer.encode: the SentencePiece ids alone, without the specials'
   * mapping (build_single_message encodes each message so: a text piece "sop" stays a piece).
   */
  encodeSentencePiece(text: string): number[] {
    return this.sp.encode(text)
  }

  /** convert_id_to_token for the ids that are not ordinary pieces. Throws RangeError for a non-integer. */
  protected specialText(id: number): string | null {
    if (!Number.isInteger(id)) throw new RangeError(`token id ${id} is not an integer`)
    if (id >= this.pieceCount && id < this.vocabSize) return V3_SPECIAL_NAMES[id - this.pieceCount]
    // `index > self.sp_model.vocab_size()` in the published code: id n is [MASK], handled above.
    if (id < 0 || id >= this.vocabSize || this.silent.has(id)) return ''
    return null
  }
}
