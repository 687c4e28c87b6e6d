/**
 * The text the published `model.chat()` returns for the ids it generated (spec/chatglm.md
 * section 5; the published modeling_chatglm.py and tokenization_chatglm.py are the authority):
 *
 * - ChatGLM-6B: `tokenizer.decode(ids)` is transformers' (4.27, the version the repository
 *   pins), whose default `clean_up_tokenization_spaces=True` runs `clean_up_tokenization` on the
 *   decoded text; then `process_response`: strip, "[[训练时间]]" -> "2023年", and the ASCII
 *   `, ! : ; ?` next to a CJK character (U+4E00..U+9FFF) become full-width.
 * - ChatGLM2-6B: its tokenizer passes `clean_up_tokenization_spaces=False`; `process_response` is
 *   strip and "[[训练时间]]" -> "2023年".
 *
 * The same text is the history of the next turn (chat() stores the processed response).
 *
 * `ResponseStream` hands the text out as it is generated: every chunk is final (never taken back)
 * and the chunks concatenate to exactly `chatResponse(raw)`.
 */
import type {TokenizerArch} from './tokenizer.js'

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
 * What the published tokenizer's decode() returns for the text of glmtool's decode: ChatGLM-6B's
 * goes through transformers' clean-up (4.27 default clean_up_tokenization_spaces=True);
 * ChatGLM2-6B's tokenizer turns it off.
 */
export function publishedDecode(arch: TokenizerArch, text: string): string {
  return arch === 'chatglm-6b' ? cleanUpTokenization(text) : text
}

const TRAINING_TIME = '[[训练时间]]'

/** v1 process_response's punctuation: [ascii, full-width], in the published order. */
const PUNCTS: readonly (readonly [RegExp, RegExp, string])[] = [',', '!', ':', ';', '?'].map((p) => {
  const e = p === '?' ? '\\?' : p
  return [new RegExp(`([\\u4e00-\\u9fff])${e}`, 'g'), new RegExp(`${e}([\\u4e00-\\u9fff])`, 'g'), String.fromCharCode(p.charCodeAt(0) + 0xfee0)] as const
})

/** Everything but the trailing strip: each step looks at most 8 characters around a point. */
function processBody(arch: TokenizerArch, text: string, atStart: boolean): string {
  let s = publishedDecode(arch, text)
  if (atStart) s = pyLstrip(s)
  s = s.replaceAll(TRAINING_TIME, '2023年')
  if (arch === 'chatglm-6b') {
    for (const [before, after, full] of PUNCTS) {
      s = s.replace(before, `$1${full}`).replace(after, `${full}$1`)
    }
  }
  return s
}

/** The published chat()'s text for the decoded ids (`raw` = the tokenizer's decode). */
export function chatResponse(arch: TokenizerArch, raw: string): string {
  return pyRstrip(processBody(arch, raw, true))
}

/**
 * No rule matches across a "\n" (none of their patterns holds one, and "\n" is not CJK), so the
 * text up to a newline after the first non-space character is processed once and kept; only the
 * line being written is processed again per chunk.
 */
const MARGIN = 10

export class ResponseStream {
  /** Raw text before `cut` is processed into `donePrefix`. */
  private raw = ''
  private cut = 0
  private donePrefix = ''
  private emitted = 0

  constructor(private readonly arch: TokenizerArch) {}

  /** Add decoded text; returns the part of the response that is now final. */
  push(text: string): string {
    if (!text) return ''
    this.raw += text
    // Advance the cut to the last newline once the leading strip is over (some non-space seen).
    const nl = this.raw.lastIndexOf('\n')
    if (nl > this.cut && pyLstrip(this.raw.slice(0, nl)) !== '') {
      this.donePrefix += processBody(this.arch, this.raw.slice(this.cut, nl), this.cut === 0)
      this.cut = nl
    }
    const body = this.donePrefix + processBody(this.arch, this.raw.slice(this.cut), this.cut === 0)
    // The last MARGIN characters may still change (a pattern can complete with the next chunk);
    // trailing whitespace may still be stripped.
    let end = Math.max(0, body.length - MARGIN)
    // Never end a chunk between the two halves of a surrogate pair.
    if (end > 0 && end < body.length && isHighSurrogate(body.charCodeAt(end - 1))) end--
    return this.take(pyRstrip(body.slice(0, end)))
  }

  /** The rest of the response. */
  flush(): string {
    return this.take(chatResponse(this.arch, this.raw))
  }

  private take(upTo: string): string {
    if (upTo.length <= this.emitted) return ''
    const out = upTo.slice(this.emitted)
    this.emitted = upTo.length
    return out
  }
}
