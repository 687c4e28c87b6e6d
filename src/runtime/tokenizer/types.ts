/**
 * What every ChatGLM tokenizer is to the runtime: the interface each generation's tokenizer
 * (./chatglm-6b.ts, ./chatglm2-6b.ts, ./chatglm3-6b.ts) implements and the loader (./index.ts)
 * returns. Types only, so the tokenizers and the loader import it and not each other.
 */
import type {ArchId} from '../../models/arch.js'
import type {ResponseStyle} from '../chat-response.js'

/** The generation whose tokenizer it is: every generation module (src/models/) has one. */
export type TokenizerArch = ArchId
export type {ResponseStyle} from '../chat-response.js'

/** Incremental decoding for streaming output. */
export interface StreamDecoder {
  /**
   * Add one generated id; returns the text that is now final (possibly ''): never half a
   * character, never part of a v1 whitespace stand-in such as "<|blank_4|>". Throws RangeError
   * for an id outside the vocabulary, as decode does (v3 has none: it decodes any integer).
   */
  push(id: number): string
  /** Everything still held back. pushes + flush concatenate to decode(all ids). */
  flush(): string
}

export interface TokenizerSpecials {
  gmask: number
  mask: number
  /** <sop> (v1) / sop (v2): the bos of a generation. */
  sop: number
  eop: number
  /** The id that ends generation: <eop> 130005 for v1, </s> 2 for v2 and v3. */
  eos: number
  pad: number
  /** Ids that stop generation (v3: eos, <|user|>, <|observation|>). */
  stop: readonly number[]
  /** ChatGLM3-6B's role specials <|system|>, <|user|>, <|assistant|>, <|observation|>. */
  roles?: Readonly<{system: number, user: number, assistant: number, observation: number}>
}

export interface ChatTokenizer {
  readonly arch: TokenizerArch
  /** Ids the tokenizer can produce or decode: v1 the model's pieces, v2 pieces + 5 specials, v3 + 9. */
  readonly vocabSize: number
  /** Text -> ids exactly as the published tokenizer's encode(text, add_special_tokens=False). */
  encode(text: string): number[]
  /** The ids of encode(text) with the SentencePiece piece each came from (the published tokenize()). */
  encodeWithPieces(text: string): {ids: number[], pieces: string[]}
  /** ids of a model input: v1 text ids + [gMASK, <sop>]; v2 [gMASK, sop] + text ids. */
  encodePrompt(text: string): number[]
  /**
   * Ids -> text as the published tokenizer's decode. Throws RangeError for an unknown id (v1,
   * v2); v3's published decode gives "" for any id past its vocabulary, and so does this.
   */
  decode(ids: readonly number[]): string
  /**
   * True when decode gives "" for any id past the vocabulary instead of throwing (ChatGLM3-6B's
   * published decode: the padded embedding rows).
   */
  readonly decodesAnyId: boolean
  /** Incremental decoding for streaming output. */
  streamDecoder(): StreamDecoder
  /**
   * Which published text rules follow the decode (src/runtime/chat-response.ts): ChatGLM-6B's
   * current release (transformers' clean-up, then its process_response), its first release (no
   * clean-up), ChatGLM2-6B's, ChatGLM3-6B's (its process_response: metadata lines, tool calls).
   */
  readonly responseStyle: ResponseStyle
  /** Special ids: gmask, mask, sop (bos), eop, eos (v1: eop 130005 stops; v2: </s> 2 stops), pad. */
  readonly specials: TokenizerSpecials
}

/** What a bare SentencePiece file shows of its tokenizer: its pieces' names. */
export type PieceNames = ReadonlySet<string>

/**
 * How a generation builds its tokenizer (each generation module, src/models/, owns one; the
 * loader ./index.ts and `glmtool tokenize` ./tokenize.ts go through it, never naming a generation).
 * The file it reads is the Arch's tokenizerFile.
 */
export interface TokenizerKind {
  /** The tokenizer from the bytes of its SentencePiece file; `source` names the file in errors. */
  fromBytes(bytes: Uint8Array, source: string, opts: {numImageTokens?: number}): ChatTokenizer
  /**
   * Whether the published ChatGLMTokenizer takes num_image_tokens (tokenizer_config.json beside
   * the file, else the class default): ChatGLM-6B's.
   */
  readonly takesNumImageTokens: boolean
  /**
   * Whether a SentencePiece file of another name, told apart by its pieces, is this kind's
   * (ChatGLM-6B's file holds its specials as pieces; ChatGLM2-6B's has them appended by the wrapper).
   */
  filePieces(pieces: PieceNames): boolean
  /**
   * For a generation that reads another's file (the same bytes): how its tokenizer differs, said
   * when a bare file is read as the other's ("with four role specials after the five").
   */
  readonly sharedFileDifference?: string
  /** The specials the wrapper appends after the file's pieces, in id order (none for ChatGLM-6B, whose file holds them). */
  readonly appendedSpecials: readonly string[]
}
