/**
 * ChatGLM3-6B's chat format (docs/chatglm.md section 5), as its published code builds and reads it:
 * tokenization_chatglm.py build_chat_input / build_single_message for the prompt ids, and
 * modeling_chatglm.py process_response for the text the model generated (metadata lines, tool
 * calls). Pure functions over ./tokenizer/chatglm3-6b.ts; the chat and serve commands call them.
 *
 * A conversation is a list of messages; each is one role special, its metadata (usually empty)
 * and "\n", then its content, all encoded with the plain SentencePiece ids (not the specials'
 * mapping of encode()). The prompt is [gMASK] sop, the history, the new message, <|assistant|>.
 * The model answers "metadata\ncontent": an empty metadata line is a plain answer; a non-empty
 * one names a tool (with a system message holding `tools`, the content is a ```python block with
 * `tool_call(k=v, ...)`) or the code interpreter.
 *
 * The published code runs that block through Python's eval. glmtool never evaluates it: a small
 * parser (parsePythonToolCall) reads keyword arguments whose values are Python literals, within
 * limits of length and depth, and anything else is kept as text with the reason.
 */
import {pyStrip} from './chat-response.js'
import type {ChatGLM3Tokenizer} from './tokenizer/chatglm3-6b.js'

export type Role = 'system' | 'user' | 'assistant' | 'observation'
export const ROLES: readonly Role[] = ['system', 'user', 'assistant', 'observation']

export interface ChatMessage {
  role: Role
  content: string
  metadata?: string
  /** A system message's tools: appended to its content as json.dumps(tools, indent=4, ensure_ascii=False). */
  tools?: readonly unknown[]
}

/**
 * The system prompt of ChatGLM3's tool-using demo (THUDM/ChatGLM3
 * tools_using_demo/cli_demo_tool.py @a7648f4, the `system_item` content; PROMPT_en.md shows the
 * same line above the tools' JSON). Send it as {role: 'system', content: this, tools}.
 */
export const CHATGLM3_TOOL_SYSTEM_PROMPT = 'Answer the following questions as best as you can. You have access to the following tools:'

/** build_single_message: <|role|> + encode(metadata + "\n") + encode(message), plain SentencePiece ids. */
function singleMessage(tok: ChatGLM3Tokenizer, role: Role, metadata: string, message: string): number[] {
  if (!ROLES.includes(role)) throw new Error(`ChatGLM3-6B has no role ${JSON.stringify(role)} (it has ${ROLES.join(', ')})`)
  return [tok.specials.roles[role], ...tok.encodeSentencePiece(`${metadata}\n`), ...tok.encodeSentencePiece(message)]
}

/** A message's text as build_chat_input sees it: a system message with tools gets them as JSON. */
function messageText(m: ChatMessage): string {
  return m.role === 'system' && m.tools !== undefined ? `${m.content}\n${pythonJsonDumps(m.tools)}` : m.content
}

/**
 * The published build_chat_input(query, history, role)['input_ids']: [gMASK] sop (from
 * batch_encode_plus's build_inputs_with_special_tokens), each history message, the new one as
 * `role` with empty metadata, then <|assistant|>.
 */
export function chatglm3PromptIds(tok: ChatGLM3Tokenizer, history: readonly ChatMessage[], query: string, role: Role = 'user'): number[] {
  const ids = [tok.specials.gmask, tok.specials.sop]
  for (const m of history) ids.push(...singleMessage(tok, m.role, m.metadata ?? '', messageText(m)))
  ids.push(...singleMessage(tok, role, '', query), tok.specials.roles.assistant)
  return ids
}

// ---------------------------------------------------------------------------------------------
// json.dumps(obj, indent=4, ensure_ascii=False), written out because JSON.stringify differs in
// its separators (Python puts ", " nowhere with an indent, but ": " after keys; empty containers
// are "[]" / "{}" in both), string escapes (Python escapes only the C0 controls, '"' and '\',
// with \u00XX in lower case, and nothing else under ensure_ascii=False) and numbers.
//
// Where JavaScript and Python differ and this cannot help it:
// - Numbers: a JSON text's 1 and 1.0 are both the number 1 here; Python keeps 1.0 a float and
//   writes "1.0". glmtool writes a number as Python would after reading JSON.stringify's text
//   of it: an integral number below 1e21 as an int ("1", "-0" as "0"), any other as Python's
//   repr(float) ("0.5", "1e-05", "1.5e+300"). Integers past 2**53 have already lost digits.
// - Key order: Python keeps insertion order; a JavaScript object lists integer-like keys
//   ("1", "42") first, in ascending order, then the rest in insertion order.
// - NaN and Infinity: written as Python does (NaN, Infinity, -Infinity; allow_nan=True).

const PY_JSON_ESCAPES: Readonly<Record<string, string>> = {'\\': '\\\\', '"': '\\"', '\b': '\\b', '\f': '\\f', '\n': '\\n', '\r': '\\r', '\t': '\\t'}

function pyJsonString(s: string): string {
  // eslint-disable-next-line no-control-regex
  return `"${s.replaceAll(/[\u0000-\u001f\\"]/g, (c) => PY_JSON_ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)}"`
}

/** Python's repr(float) for a finite double: the shortest round-trip digits, fixed notation for exponents -4..15. */
export function pyFloatRepr(x: number): string {
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0'
  const [mantissa, expText] = x.toExponential().split('e')
  const exp = Number(expText)
  const sign = mantissa.startsWith('-') ? '-' : ''
  const digits = mantissa.replace('-', '').replace('.', '')
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits
    return `${sign}${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`
  return `${sign}${digits.slice(0, exp + 1).padEnd(exp + 1, '0')}.${digits.slice(exp + 1) || '0'}`
}

function pyJsonNumber(x: number): string {
  if (Number.isNaN(x)) return 'NaN'
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity'
  // JSON.stringify writes integral numbers below 1e21 as digits, which Python reads as an int.
  return Number.isInteger(x) && Math.abs(x) < 1e21 ? BigInt(x).toString() : pyFloatRepr(x)
}

/** json.dumps(value, indent=4, ensure_ascii=False). Throws TypeError, as Python does, for what JSON cannot hold. */
export function pythonJsonDumps(value: unknown): string {
  const seen = new Set<object>()
  const dump = (v: unknown, level: number): string => {
    if (v === null) return 'null'
    if (v === true) return 'true'
    if (v === false) return 'false'
    if (typeof v === 'number') return pyJsonNumber(v)
    if (typeof v === 'bigint') return v.toString()
    if (typeof v === 'string') return pyJsonString(v)
    if (typeof v !== 'object') throw new TypeError(`Object of type ${typeof v} is not JSON serializable`)
    if (seen.has(v)) throw new TypeError('Circular reference detected')
    seen.add(v)
    const inner = ' '.repeat(4 * (level + 1))
    const outer = ' '.repeat(4 * level)
    let out: string
    if (Array.isArray(v)) {
      out = v.length === 0 ? '[]' : `[\n${v.map((x) => inner + dump(x, level + 1)).join(',\n')}\n${outer}]`
    } else {
      const entries = Object.entries(v as Record<string, unknown>)
      out = entries.length === 0 ? '{}' : `{\n${entries.map(([k, x]) => `${inner}${pyJsonString(k)}: ${dump(x, level + 1)}`).join(',\n')}\n${outer}}`
    }
    seen.delete(v)
    return out
  }
  return dump(value, 0)
}

// ---------------------------------------------------------------------------------------------
// The tool call: `tool_call(k=v, ...)` with Python literal values, parsed, never evaluated.
// Hand-written: no maintained npm library parses Python literals without running Python, and
// the grammar needed is small. Accepted: str ('', "", triple-quoted, r/u prefixes, adjacent
// literals joined, Python's escapes), int (decimal, 0x/0o/0b, underscores), float, True, False,
// None, list, tuple, dict (str or int keys), unary +/- on numbers, comments and newlines inside
// the brackets. Refused: anything else (names, calls, attribute access, operators, f-strings,
// bytes, sets, complex numbers), more than MAX_TOOL_CALL_CHARS characters, nesting deeper than
// MAX_LITERAL_DEPTH.

export type PyValue = string | number | boolean | null | PyValue[] | {[key: string]: PyValue}

export const MAX_TOOL_CALL_CHARS = 100_000
export const MAX_LITERAL_DEPTH = 32

class LiteralError extends Error {}

/** Set a key without ever invoking a setter (a key "__proto__" is an ordinary key). */
function setKey(o: Record<string, PyValue>, key: string, value: PyValue): void {
  Object.defineProperty(o, key, {value, enumerable: true, writable: true, configurable: true})
}

const IDENT_START = /[A-Za-z_]/
const IDENT = /[A-Za-z0-9_]/

class PythonLiteralParser {
  private pos = 0
  private depth = 0

  constructor(private readonly src: string) {}

  private fail(message: string): never {
    throw new LiteralError(`${message} at offset ${this.pos}`)
  }

  /** Whitespace, newlines and comments (all inside the call's parentheses, where Python allows them). */
  private ws(): void {
    const s = this.src
    while (this.pos < s.length) {
      const c = s[this.pos]
      if (c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f') this.pos++
      else if (c === '#') {
        while (this.pos < s.length && s[this.pos] !== '\n') this.pos++
      } else if (c === '\\' && (s[this.pos + 1] === '\n' || (s[this.pos + 1] === '\r' && s[this.pos + 2] === '\n'))) {
        this.pos += s[this.pos + 1] === '\n' ? 2 : 3
      } else break
    }
  }

  private peek(): string {
    return this.src[this.pos] ?? ''
  }

  private expect(c: string): void {
    this.ws()
    if (this.peek() !== c) this.fail(`expected ${JSON.stringify(c)}${this.pos < this.src.length ? `, found ${JSON.stringify(this.peek())}` : ', found the end'}`)
    this.pos++
  }

  private identifier(): string {
    const start = this.pos
    if (!IDENT_START.test(this.peek())) this.fail('expected a name')
    while (this.pos < this.src.length && IDENT.test(this.src[this.pos])) this.pos++
    return this.src.slice(start, this.pos)
  }

  call(): Record<string, PyValue> {
    this.ws()
    const name = IDENT_START.test(this.peek()) ? this.identifier() : ''
    if (name !== 'tool_call') this.fail(name ? `the call is to ${JSON.stringify(name)}, not tool_call` : 'not a tool_call(...) expression')
    this.expect('(')
    const kwargs: Record<string, PyValue> = {}
    const seen = new Set<string>()
    for (;;) {
      this.ws()
      if (this.peek() === ')') break
      const at = this.pos
      if (!IDENT_START.test(this.peek())) this.fail('tool_call takes keyword arguments only')
      const key = this.identifier()
      this.ws()
      if (this.peek() !== '=' || this.src[this.pos + 1] === '=') {
        this.pos = at
        this.fail('tool_call takes keyword arguments only')
      }
      this.pos++
      if (seen.has(key)) this.fail(`keyword argument ${key} repeated`)
      seen.add(key)
      setKey(kwargs, key, this.value())
      this.ws()
      if (this.peek() === ',') this.pos++
      else if (this.peek() !== ')') this.fail('expected "," or ")"')
    }
    this.pos++
    this.ws()
    if (this.pos < this.src.length) this.fail('text after the call')
    return kwargs
  }

  private nested<T>(f: () => T): T {
    if (++this.depth > MAX_LITERAL_DEPTH) this.fail(`nesting deeper than ${MAX_LITERAL_DEPTH}`)
    const v = f()
    this.depth--
    return v
  }

  private value(): PyValue {
    this.ws()
    const c = this.peek()
    if (c === '[') return this.nested(() => this.sequence(']'))
    if (c === '(') return this.nested(() => this.parenthesized())
    if (c === '{') return this.nested(() => this.dict())
    if (c === '"' || c === '\'') return this.strings()
    if (c === '-' || c === '+' || c === '.' || (c >= '0' && c <= '9')) return this.signedNumber()
    if (IDENT_START.test(c)) {
      const start = this.pos
      const word = this.identifier()
      if (word === 'True') return true
      if (word === 'False') return false
      if (word === 'None') return null
      if (/^[rRuU]$/.test(word) && (this.peek() === '"' || this.peek() === '\'')) {
        this.pos = start
        return this.strings()
      }
      this.pos = start
      if (/^[bBfF][rR]?$|^[rR][bBfF]$/.test(word) && (this.src[start + word.length] === '"' || this.src[start + word.length] === '\'')) this.fail('bytes and f-strings are not literals glmtool reads')
      this.fail(`${JSON.stringify(word)} is not a Python literal`)
    }
    if (this.pos >= this.src.length) this.fail('expected a value, found the end')
    this.fail(`expected a value, found ${JSON.stringify(c)}`)
  }

  private sequence(close: string): PyValue[] {
    this.pos++
    return this.items(close, [])
  }

  /** Items up to `close` (a trailing comma allowed), after the opening bracket or a first item's comma. */
  private items(close: string, items: PyValue[]): PyValue[] {
    for (;;) {
      this.ws()
      if (this.peek() === close) break
      items.push(this.value())
      this.ws()
      if (this.peek() === ',') this.pos++
      else if (this.peek() !== close) this.fail(`expected "," or ${JSON.stringify(close)}`)
    }
    this.pos++
    return items
  }

  /** ( ) is an empty tuple, (x) is x, (x,) and (x, y) are tuples (arrays here). */
  private parenthesized(): PyValue {
    this.pos++
    this.ws()
    if (this.peek() === ')') {
      this.pos++
      return []
    }
    const first = this.value()
    this.ws()
    if (this.peek() === ')') {
      this.pos++
      return first
    }
    if (this.peek() !== ',') this.fail('expected "," or ")"')
    this.pos++
    return this.items(')', [first])
  }

  private dict(): {[key: string]: PyValue} {
    this.pos++
    const out: Record<string, PyValue> = {}
    for (;;) {
      this.ws()
      if (this.peek() === '}') break
      const key = this.value()
      this.ws()
      if (this.peek() !== ':') this.fail('sets are not literals glmtool reads (expected ":")')
      this.pos++
      if (typeof key === 'string') setKey(out, key, this.value())
      else if (typeof key === 'number' && Number.isInteger(key)) setKey(out, String(key), this.value())
      else this.fail('a dict key must be a str or an int')
      this.ws()
      if (this.peek() === ',') this.pos++
      else if (this.peek() !== '}') this.fail('expected "," or "}"')
    }
    this.pos++
    return out
  }

  private signedNumber(): number {
    let sign = 1
    let signs = 0
    for (;;) {
      this.ws()
      const c = this.peek()
      if (c !== '-' && c !== '+') break
      if (++signs > MAX_LITERAL_DEPTH) this.fail('too many signs')
      if (c === '-') sign = -sign
      this.pos++
    }
    this.ws()
    return sign * this.number()
  }

  /** Match a sticky regex at this.pos (no copy of the rest of the text). */
  private match(re: RegExp): string {
    re.lastIndex = this.pos
    return re.exec(this.src)?.[0] ?? ''
  }

  private number(): number {
    const s = this.src
    const start = this.pos
    const prefix = s.slice(start, start + 2).toLowerCase()
    if (prefix === '0x' || prefix === '0o' || prefix === '0b') {
      const whole = this.match(/0[xXoObB](?:_?[0-9a-zA-Z])+/y)
      const text = whole.replaceAll('_', '').slice(2)
      const valid = {'0x': /^[0-9a-fA-F]+$/, '0o': /^[0-7]+$/, '0b': /^[01]+$/}[prefix]
      if (!whole || !valid.test(text)) this.fail('invalid number')
      this.pos += whole.length
      this.noSuffix()
      return Number(BigInt(`${prefix}${text}`))
    }
    const text = this.match(/(?:\d(?:_?\d)*)?(?:\.(?:\d(?:_?\d)*)?)?(?:[eE][+-]?\d(?:_?\d)*)?/y)
    if (!/\d/.test(text.split(/[eE]/)[0])) this.fail('expected a number')
    this.pos += text.length
    this.noSuffix()
    const plain = text.replaceAll('_', '')
    if (/^\d+$/.test(plain)) {
      // Python refuses leading zeros in a non-zero decimal int ("01").
      if (/^0+[1-9]/.test(plain)) this.fail('leading zeros in a decimal integer')
      return Number(BigInt(plain))
    }
    return Number(plain)
  }

  private noSuffix(): void {
    const c = this.peek()
    if (c === 'j' || c === 'J') this.fail('complex numbers are not literals glmtool reads')
    if (IDENT.test(c) || c === '.') this.fail('invalid number')
  }

  /** One or more adjacent string literals, joined (Python's implicit concatenation). */
  private strings(): string {
    let out = ''
    for (;;) {
      out += this.string()
      this.ws()
      const c = this.peek()
      const next = this.src[this.pos + 1]
      if (c === '"' || c === '\'') continue
      if (/[rRuU]/.test(c) && (next === '"' || next === '\'')) continue
      return out
    }
  }

  private string(): string {
    const s = this.src
    let raw = false
    if (/[rRuU]/.test(s[this.pos])) {
      raw = s[this.pos] === 'r' || s[this.pos] === 'R'
      this.pos++
    }
    const q = s[this.pos]
    const triple = s.startsWith(q.repeat(3), this.pos)
    this.pos += triple ? 3 : 1
    let out = ''
    for (;;) {
      if (this.pos >= s.length) this.fail('unterminated string')
      const c = s[this.pos]
      if (c === q && (!triple || s.startsWith(q.repeat(3), this.pos))) {
        this.pos += triple ? 3 : 1
        return out
      }
      if ((c === '\n' || c === '\r') && !triple) this.fail('unterminated string (a newline in a one-line string)')
      if (c !== '\\') {
        out += c
        this.pos++
        continue
      }
      const e = s[this.pos + 1] ?? ''
      if (raw) {
        // A raw string keeps the backslash; it still protects the next character from ending the string.
        out += c + e
        this.pos += 2
        continue
      }
      this.pos += 2
      out += this.escape(e)
    }
  }

  private static readonly SIMPLE: Readonly<Record<string, string>> = {'\\': '\\', '\'': '\'', '"': '"', a: '\u0007', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '\n': ''}

  /** Python's escape after the backslash (this.pos is past `e`). */
  private escape(e: string): string {
    const s = this.src
    const simple = PythonLiteralParser.SIMPLE[e]
    if (simple !== undefined) return simple
    if (e === '\r') {
      if (s[this.pos] === '\n') this.pos++
      return ''
    }
    if (e >= '0' && e <= '7') {
      let digits = e
      while (digits.length < 3 && s[this.pos] >= '0' && s[this.pos] <= '7') digits += s[this.pos++]
      return String.fromCodePoint(Number.parseInt(digits, 8))
    }
    const hex = {x: 2, u: 4, U: 8}[e]
    if (hex !== undefined) {
      const digits = s.slice(this.pos, this.pos + hex)
      if (!new RegExp(`^[0-9a-fA-F]{${hex}}$`).test(digits)) this.fail(`truncated \\${e} escape`)
      const cp = Number.parseInt(digits, 16)
      if (cp > 0x10ffff) this.fail(`\\${e}${digits} is not a code point`)
      this.pos += hex
      return cp >= 0xd800 && cp <= 0xdfff ? String.fromCharCode(cp) : String.fromCodePoint(cp)
    }
    if (e === 'N') this.fail('\\N{...} escapes are not read')
    // An unknown escape keeps its backslash (Python warns, and keeps it).
    return `\\${e}`
  }
}

export type ToolCallParse = {ok: true, parameters: Record<string, PyValue>} | {ok: false, error: string}

/**
 * The keyword arguments of a `tool_call(...)` expression, as the published process_response's
 * eval gives them (with its `tool_call(**kwargs): return kwargs`), for literal values only.
 * Never evaluates anything; never throws: anything else comes back as {ok: false, error}.
 */
export function parsePythonToolCall(code: string): ToolCallParse {
  if (code.length > MAX_TOOL_CALL_CHARS) return {ok: false, error: `the tool call is ${code.length} characters, more than ${MAX_TOOL_CALL_CHARS}`}
  try {
    return {ok: true, parameters: new PythonLiteralParser(code).call()}
  } catch (error) {
    if (error instanceof LiteralError) return {ok: false, error: error.message}
    // A RangeError from a pathological number; the parser's recursion is bounded by MAX_LITERAL_DEPTH.
    return {ok: false, error: (error as Error).message}
  }
}

// ---------------------------------------------------------------------------------------------
// process_response

export interface ToolCall {
  name: string
  parameters: Record<string, PyValue>
}

/**
 * A message with metadata that is no parsed tool call: the code interpreter's code, a tool named
 * without tools in the system message, or (with `error`) a tool call glmtool could not read,
 * where the published code's eval would have run it or raised.
 */
export interface MetadataResponse {
  name: string
  content: string
  error?: string
}

export interface Chatglm3Response {
  response: string | ToolCall | MetadataResponse
  history: ChatMessage[]
}

const TRAINING_TIME = '[[训练时间]]'

/**
 * The published process_response(output, history): `history` is the conversation so far, the
 * last query included (chat() appends it before calling); each "<|assistant|>"-separated part of
 * `output` becomes an assistant message in the returned copy, and the last part is the response:
 * a plain answer (empty metadata line; stripped, "[[训练时间]]" -> "2023年" in the response but
 * not in the history), a tool call when history[0] is a system message with tools (the content's
 * lines between the first and the last, read by parsePythonToolCall), else {name, content}.
 */
export function parseChatglm3Response(text: string, history: readonly ChatMessage[]): Chatglm3Response {
  const out: ChatMessage[] = structuredClone(history) as ChatMessage[]
  let response: Chatglm3Response['response'] = ''
  for (const part of text.split('<|assistant|>')) {
    const nl = part.indexOf('\n')
    const metadata = nl >= 0 ? part.slice(0, nl) : ''
    let content = nl >= 0 ? part.slice(nl + 1) : part
    if (!pyStrip(metadata)) {
      content = pyStrip(content)
      out.push({role: 'assistant', metadata, content})
      response = content.replaceAll(TRAINING_TIME, '2023年')
      continue
    }
    out.push({role: 'assistant', metadata, content})
    const name = pyStrip(metadata)
    if (out[0].role === 'system' && out[0].tools !== undefined) {
      const code = content.split('\n').slice(1, -1).join('\n')
      const parsed = parsePythonToolCall(code)
      response = parsed.ok ? {name, parameters: parsed.parameters} : {name, content, error: parsed.error}
    } else {
      response = {name, content}
    }
  }
  return {response, history: out}
}

// ---------------------------------------------------------------------------------------------
// A tool call written back: the assistant turn the model would have produced for it, for a
// conversation whose tool calls come as data (serve's OpenAI `tool_calls`), not as the model's text.

/** Python's keywords: not usable as keyword-argument names. */
const PY_KEYWORDS = new Set(['False', 'None', 'True', 'and', 'as', 'assert', 'async', 'await', 'break', 'class', 'continue', 'def', 'del', 'elif', 'else', 'except', 'finally', 'for', 'from', 'global', 'if', 'import', 'in', 'is', 'lambda', 'nonlocal', 'not', 'or', 'pass', 'raise', 'return', 'try', 'while', 'with', 'yield'])

/** Whether `name` can be a keyword argument of tool_call(...) (an ASCII identifier, no keyword). */
export function isToolCallKeyword(name: string): boolean {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(name) && !PY_KEYWORDS.has(name)
}

// str.isprintable() is false for these categories (and true for the space among Zs).
const PY_UNPRINTABLE = /^[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]$/u
const PY_STR_ESCAPES: Readonly<Record<string, string>> = {'\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r'}

/** Python's repr(str): single quotes unless the text has ' and no ", Python's escapes for the unprintable. */
export function pyStrRepr(s: string): string {
  const quote = s.includes('\'') && !s.includes('"') ? '"' : '\''
  let out = quote
  for (const c of s) {
    const simple = PY_STR_ESCAPES[c]
    if (simple !== undefined) out += simple
    else if (c === quote) out += `\\${c}`
    else if (c !== ' ' && PY_UNPRINTABLE.test(c)) {
      const cp = c.codePointAt(0)!
      out += cp < 0x100 ? `\\x${cp.toString(16).padStart(2, '0')}` : cp < 0x10000 ? `\\u${cp.toString(16).padStart(4, '0')}` : `\\U${cp.toString(16).padStart(8, '0')}`
    } else out += c
  }
  return out + quote
}

/** Python's repr() of a value read from JSON (json.loads's types: dict, list, str, int, float, bool, None). */
export function pyRepr(v: unknown): string {
  if (v === null) return 'None'
  if (v === true) return 'True'
  if (v === false) return 'False'
  if (typeof v === 'string') return pyStrRepr(v)
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) return Number.isNaN(v) ? 'nan' : v > 0 ? 'inf' : '-inf'
    // JSON.parse gives 1 for both "1" and "1.0"; written as json.loads reads "1" (an int), as pyJsonNumber does.
    return Number.isInteger(v) && Math.abs(v) < 1e21 ? BigInt(v).toString() : pyFloatRepr(v)
  }
  if (Array.isArray(v)) return `[${v.map(pyRepr).join(', ')}]`
  if (typeof v === 'object') return `{${Object.entries(v).map(([k, x]) => `${pyStrRepr(k)}: ${pyRepr(x)}`).join(', ')}}`
  throw new TypeError(`${typeof v} is not a JSON value`)
}

/**
 * The content of the assistant turn that calls a tool with `parameters`: the ```python block
 * around `tool_call(k=repr(v), ...)` that the model writes after the tool's name on the metadata
 * line (THUDM's openai_api_demo strips the model's text to this before putting it back in the
 * history), read back by parsePythonToolCall as `parameters`. Keys must pass isToolCallKeyword.
 */
export function toolCallContent(parameters: Readonly<Record<string, unknown>>): string {
  const args = Object.entries(parameters).map(([k, v]) => {
    if (!isToolCallKeyword(k)) throw new TypeError(`${JSON.stringify(k)} cannot be a keyword argument of tool_call(...)`)
    return `${k}=${pyRepr(v)}`
  })
  return `\`\`\`python\ntool_call(${args.join(', ')})\n\`\`\``
}
