/**
 * The text the published `model.chat()` returns for the ids it generated (docs/chatglm.md
 * section 5; the published modeling_chatglm.py and tokenization_chatglm.py are the authority):
 *
 * - ChatGLM-6B: `tokenizer.decode(ids)` is transformers' (4.27, the version the repository
 *   pins), whose default `clean_up_tokenization_spaces=True` runs `clean_up_tokenization` on the
 *   decoded text; then `process_response`: strip, "[[训练时间]]" -> "2023年", and the ASCII
 *   `, ! : ; ?` next to a CJK character (U+4E00..U+9FFF) become full-width.
 * - ChatGLM2-6B: its tokenizer passes `clean_up_tokenization_spaces=False`; `process_response` is
 *   strip and "[[训练时间]]" -> "2023年".
 * - ChatGLM3-6B: no clean-up either; its `process_response` splits the text on "<|assistant|>"
 *   and each part into a metadata line and content (./chatglm3-chat.ts parseChatglm3Response
 *   gives the published result: a string, a tool call, or {name, content}). What is shown as
 *   text here is the content of each part whose metadata line is empty (strip, "[[训练时间]]" ->
 *   "2023年"); a part with metadata (a tool call, the code interpreter) shows nothing, since the
 *   caller prints the parsed call. For the usual output, one part, that is exactly the published
 *   string response ('' for a tool call); with several parts the published response is the last
 *   part alone, while a stream cannot take back the earlier parts already shown (stream_chat's
 *   consumers showed them too).
 *
 * The same text is the history of the next turn (chat() stores the processed response).
 *
 * `ResponseStream` hands the text out as it is generated: every chunk is final (never taken back)
 * and the chunks concatenate to exactly `chatResponse(raw)`.
 */
const TRAINING_TIME = '[[训练时间]]'

/**
 * Python's str.isspace() characters, which str.strip() removes. JavaScript's trim() differs:
 * it also strips U+FEFF, and keeps U+001C..U+001F and U+0085.
 */
const PY_SPACE = '\t\n\u000b\f\r\u001c\u001d\u001e\u001f \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000'

function isPySpace(ch: string): boolean {
  return PY_SPACE.includes(ch)
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff
}

function pyLstrip(s: string): string {
  let i = 0
  while (i < s.length && isPySpace(s[i])) i++
  return s.slice(i)
}

function pyRstrip(s: string): string {
  let j = s.length
  while (j > 0 && isPySpace(s[j - 1])) j--
  return s.slice(0, j)
}

/** Python's str.strip() (no argument). */
export function pyStrip(s: string): string {
  return pyRstrip(pyLstrip(s))
}

/** transformers' PreTrainedTokenizerBase.clean_up_tokenization, the same chain of replaces. */
export function cleanUpTokenization(text: string): string {
  return text
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(' \' ', '\'')
    .replaceAll(' n\'t', 'n\'t')
    .replaceAll(' \'m', '\'m')
    .replaceAll(' \'s', '\'s')
    .replaceAll(' \'ve', '\'ve')
    .replaceAll(' \'re', '\'re')
}

/**
 * The published text rules that follow a tokenizer's decode: what its decode() does after
 * SentencePiece, and what chat()'s process_response makes of that. Each tokenizer carries its
 * own (src/runtime/tokenizer/chatglm-6b.ts, chatglm2-6b.ts, chatglm3-6b.ts), built here by
 * textResponseStyle or partsResponseStyle.
 */
export interface ResponseStyle {
  /** A name for tests and messages: "chatglm-6b", "chatglm-6b-first-release", ... */
  readonly name: string
  /** What the published tokenizer's decode() returns for the text of glmtool's decode. */
  publishedDecode(text: string): string
  /**
   * The published chat()'s text for the decoded ids (`raw` = the tokenizer's decode); for
   * ChatGLM3-6B the text its parts show (see the header).
   */
  respond(raw: string): string
  /** The same text handed out as it is generated (ResponseStream). */
  stream(): TextStream
}

/** Text in, final text out: every chunk final, the chunks concatenating to the whole response. */
export interface TextStream {
  push(text: string): string
  flush(): string
}

/** The rules of a process_response that strips and replaces "[[训练时间]]" (ChatGLM-6B, ChatGLM2-6B). */
export interface TextResponseRules {
  readonly name: string
  /** The decode runs transformers' clean_up_tokenization (clean_up_tokenization_spaces=True). */
  readonly cleanUp: boolean
  /** process_response makes the ASCII `, ! : ; ?` next to a CJK character full-width. */
  readonly fullWidthPunctuation: boolean
}

/** v1 process_response's punctuation: [ascii, full-width], in the published order. */
const PUNCTS: readonly (readonly [RegExp, RegExp, string])[] = [',', '!', ':', ';', '?'].map((p) => {
  const e = p === '?' ? '\\?' : p
  return [new RegExp(`([\\u4e00-\\u9fff])${e}`, 'g'), new RegExp(`${e}([\\u4e00-\\u9fff])`, 'g'), String.fromCharCode(p.charCodeAt(0) + 0xfee0)] as const
})

/**
 * Streaming rests on split points: a position in the raw text after a character that no rule can
 * touch (it is in no pattern and not whitespace). No match can span such a point, so the text up to
 * it is processed once and final, whatever follows. The one rule that looks across it is v1's
 * "CJK then ASCII punctuation", which changes only the character after the point; so each piece
 * is processed with the character before it as context. The characters each rule looks at:
 */
const CLEAN_UP_CHARS = ' .?!,\'ntmsvre'
const PUNCT_CHARS = ',!:;?'

/** A process_response of strip, "[[训练时间]]" -> "2023年" and, as `rules` say, clean-up and punctuation. */
export function textResponseStyle(rules: TextResponseRules): ResponseStyle {
  const unsafe = new Set([...TRAINING_TIME, ...(rules.cleanUp ? CLEAN_UP_CHARS : ''), ...(rules.fullWidthPunctuation ? PUNCT_CHARS : '')])
  const publishedDecode = rules.cleanUp ? cleanUpTokenization : (text: string) => text
  /** Everything but the trailing strip: each step looks at most 8 characters around a point. */
  const processBody = (text: string, atStart: boolean): string => {
    let s = publishedDecode(text)
    if (atStart) s = pyLstrip(s)
    s = s.replaceAll(TRAINING_TIME, '2023年')
    if (rules.fullWidthPunctuation) {
      for (const [before, after, full] of PUNCTS) {
        s = s.replace(before, `$1${full}`).replace(after, `${full}$1`)
      }
    }
    return s
  }
  const respond = (raw: string): string => pyRstrip(processBody(raw, true))
  const isSplitChar = (ch: string): boolean => !isPySpace(ch) && !isHighSurrogate(ch.charCodeAt(0)) && !unsafe.has(ch)
  return {
    name: rules.name,
    publishedDecode,
    respond,
    stream() {
      let raw = ''
      /** raw[0, cut) is processed into `done`, which has been handed out. */
      let cut = 0
      let done = ''
      return {
        push(text) {
          if (!text) return ''
          raw += text
          let p = raw.length
          while (p > cut && !isSplitChar(raw[p - 1])) p--
          if (p <= cut) return ''
          const context = cut === 0 ? '' : raw[cut - 1]
          const piece = processBody(context + raw.slice(cut, p), cut === 0).slice(context.length)
          cut = p
          done += piece
          return piece
        },
        flush: () => respond(raw).slice(done.length),
      }
    },
  }
}

/**
 * ChatGLM3-6B's process_response: the text split on "<|assistant|>", each part a metadata line
 * and content; the text shown is the plain parts' content (see the header). No clean-up.
 */
export function partsResponseStyle(name: string): ResponseStyle {
  return {
    name,
    publishedDecode: text => text,
    respond(raw) {
      const s = new Chatglm3Stream()
      return s.push(raw) + s.flush()
    },
    stream: () => new Chatglm3Stream(),
  }
}

/** The published chat()'s text for the decoded ids, by the tokenizer's style. */
export function chatResponse(style: ResponseStyle, raw: string): string {
  return style.respond(raw)
}

const ASSISTANT = '<|assistant|>'

/** The length of the longest proper prefix of `pattern` that raw[from, to) ends with (0 if none). */
function partialSuffix(raw: string, from: number, to: number, pattern: string): number {
  for (let k = Math.min(pattern.length - 1, to - from); k > 0; k--) {
    if (raw.startsWith(pattern.slice(0, k), to - k)) return k
  }
  return 0
}

/**
 * ChatGLM3-6B's text, streamed: a part's metadata line is held until its "\n" (without one, the
 * whole part is content, known at the part's end); a plain part's content is handed out up to
 * the last point no rule can change: before trailing whitespace (strip), a trailing U+FFFD
 * (stream_chat yields nothing while the text ends in one) or high surrogate, and a trailing
 * beginning of "<|assistant|>" or "[[训练时间]]". No occurrence of either can span a point so
 * chosen, so each piece is processed once and final.
 */
class Chatglm3Stream implements TextStream {
  private raw = ''
  /** Start of the current part in raw. */
  private seg = 0
  /** raw[seg, scanned) holds no "<|assistant|>" start. */
  private scanned = 0
  private mode: 'meta' | 'plain' | 'tool' = 'meta'
  /** plain: raw[.., cut) is processed and handed out. */
  private cut = 0
  /** plain: whether the content's leading whitespace is behind. */
  private started = false

  push(text: string): string {
    this.raw += text
    return this.advance(false)
  }

  flush(): string {
    return this.advance(true)
  }

  private advance(final: boolean): string {
    const raw = this.raw
    let out = ''
    for (;;) {
      const next = raw.indexOf(ASSISTANT, Math.max(this.seg, this.scanned))
      if (next < 0) this.scanned = Math.max(this.seg, raw.length - ASSISTANT.length + 1)
      const end = next >= 0 ? next : final ? raw.length : -1
      if (this.mode === 'meta') {
        const nl = raw.indexOf('\n', this.seg)
        if (nl >= 0 && (end < 0 || nl < end)) {
          this.mode = pyStrip(raw.slice(this.seg, nl)) ? 'tool' : 'plain'
          this.cut = nl + 1
        } else if (end >= 0) {
          this.mode = 'plain'
          this.cut = this.seg
        } else {
          return out
        }
        this.started = false
      }
      if (this.mode === 'plain') out += this.content(end >= 0 ? end : raw.length, end < 0)
      if (next < 0) return out
      this.seg = next + ASSISTANT.length
      this.scanned = this.seg
      this.mode = 'meta'
    }
  }

  /** Hand out the plain content up to `limit`, holding what may still change when `open`. */
  private content(limit: number, open: boolean): string {
    const raw = this.raw
    let p = limit
    for (;;) {
      const before = p
      while (p > this.cut && (isPySpace(raw[p - 1]) || (open && (raw[p - 1] === '\ufffd' || isHighSurrogate(raw.charCodeAt(p - 1)))))) p--
      if (open) p -= Math.max(partialSuffix(raw, this.cut, p, ASSISTANT), partialSuffix(raw, this.cut, p, TRAINING_TIME))
      if (p === before) break
    }
    if (p <= this.cut) return ''
    let piece = raw.slice(this.cut, p)
    this.cut = p
    if (!this.started) {
      piece = pyLstrip(piece)
      this.started = piece.length > 0
    }
    return piece.replaceAll(TRAINING_TIME, '2023年')
  }
}

/** A response handed out as it is generated, by the tokenizer's style (ResponseStyle.stream). */
export class ResponseStream implements TextStream {
  private readonly inner: TextStream

  constructor(style: ResponseStyle) {
    this.inner = style.stream()
  }

  /** Add decoded text; returns the part of the response that is now final. */
  push(text: string): string {
    return this.inner.push(text)
  }

  /** The rest of the response. */
  flush(): string {
    return this.inner.flush()
  }
}
