/**
 * ChatGLM3-6B's process_response and its streamed text (src/runtime/chatglm3-chat.ts,
 * src/runtime/chat-response.ts) against the published process_response restated in Python
 * (test/crosscheck/chatglm_tokenizers.py; its tool call read from Python's own ast, giving
 * eval's values for literals): tool calls as the ChatGLM3 README and demos show them, metadata
 * lines, several "<|assistant|>" parts, random texts streamed in random chunks; and hostile tool
 * calls, refused without evaluating anything.
 */
import {spawnSync} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import {describe, expect, it} from 'vitest'
import {chatResponse, ResponseStream} from '../src/runtime/chat-response.js'
import {CHATGLM3_6B_RESPONSE} from '../src/runtime/tokenizer/chatglm3-6b.js'
import {
  CHATGLM3_TOOL_SYSTEM_PROMPT, type ChatMessage, MAX_LITERAL_DEPTH, MAX_TOOL_CALL_CHARS, parseChatglm3Response,
  parsePythonToolCall, pyFloatRepr, pythonJsonDumps,
} from '../src/runtime/chatglm3-chat.js'

const PYTHON = '/usr/bin/python3'
const CHECK = fileURLToPath(new URL('crosscheck/chatglm_tokenizers.py', import.meta.url))
const havePython = spawnSync(PYTHON, ['-c', 'import ast, json'], {stdio: 'ignore'}).status === 0
if (!havePython) console.log('ChatGLM3-6B process_response cross-check skipped: no /usr/bin/python3')

type PyResult = {response: unknown, history: unknown[], shown: string} | {error: string}

function published(cases: ReadonlyArray<{output: string, history: readonly ChatMessage[]}>): PyResult[] {
  const r = spawnSync(PYTHON, [CHECK], {input: JSON.stringify({responses: cases}), encoding: 'utf8', maxBuffer: 256 << 20})
  if (r.status !== 0) throw new Error(`chatglm_tokenizers.py failed: ${r.stderr}`)
  return (JSON.parse(r.stdout) as {responses: PyResult[]}).responses
}

const TOOLS: ChatMessage = {role: 'system', content: CHATGLM3_TOOL_SYSTEM_PROMPT, tools: [{name: 'get_current_weather', parameters: {}}]}
const withTools = (...rest: ChatMessage[]): ChatMessage[] => [TOOLS, ...rest, {role: 'user', content: 'q'}]
const fence = (call: string, name = 'get_current_weather'): string => `${name}\n\`\`\`python\n${call}\n\`\`\``

/** Tool calls both sides read: the README's and demos' shapes, then Python literal syntax. */
const CALLS = [
  'tool_call(location="beijing", unit="celsius")',
  'tool_call(symbol="10111")',
  'tool_call(text="你好", voice="女声", speed="中等")',
  'tool_call(image_file=\'/mnt/data/a.png\', width=100, height=200)',
  'tool_call()',
  'tool_call(a=1,)',
  'tool_call(\n    a=[1, 2, 3],\n    b={"k": (1,), "e": ()},  # a comment\n    c=(1, 2),\n    d=(5),\n)',
  'tool_call(n=-1, f=-2.5e-3, g=+7, h=--3, i=0x1F, j=0o17, k=0b101, l=1_000_000, m=.5, o=5., p=1e16, q=0, r=00)',
  'tool_call(t=True, f=False, n=None, nested=[[[]], [{}], {"a": {"b": [None]}}])',
  'tool_call(s="a" \'b\' """c""", r=r"C:\\path\\n", u=u"x", tq=\'\'\'multi\nline\'\'\', rr=r\'\\\'\')',
  'tool_call(e="\\n\\t\\r\\\\\\"\\\'\\a\\b\\f\\v\\0\\101\\x41\\u4f60\\U0001F600\\q")',
  'tool_call(d={1: "int key", "s": 2, -3: 4})',
  'tool_call(big=123456789012345678901234567890)',
  '  tool_call(x="padded")  ',
  'tool_call(x="\\\n continued")',
  'tool_call(__proto__={"polluted": True}, constructor=1)',
]

/** Refused by glmtool: not literals, or beyond what it reads. */
const HOSTILE = [
  '__import__("os").system("echo pwned")',
  'tool_call(a=__import__("os"))',
  'tool_call(a=open("/etc/passwd").read())',
  'tool_call(**{"a": 1})',
  'tool_call(1, 2)',
  'tool_call(a=1 + 1)',
  'tool_call(a="x" * 1000000000)',
  'tool_call(a=(lambda: 1)())',
  'tool_call(a=f"{x}")',
  'tool_call(a=b"bytes")',
  'tool_call(a={1, 2})',
  'tool_call(a=1j)',
  'tool_call(a=1, a=2)',
  'tool_call(a=1)\nimport os',
  'tool_call(a=1); exit()',
  'tool_call(a=x)',
  'tool_call(a=[1, 2)',
  'tool_call(a="unterminated)',
  'tool_call(a=01)',
  'print(1)',
  '',
  'tool_call(a=' + '['.repeat(MAX_LITERAL_DEPTH + 1) + ']'.repeat(MAX_LITERAL_DEPTH + 1) + ')',
  'tool_call(a=' + '['.repeat(50_000) + ')',
  'tool_call(a="' + 'x'.repeat(MAX_TOOL_CALL_CHARS) + '")',
  'tool_call(a=' + '-'.repeat(1000) + '1)',
  'tool_call(a="\\N{BULLET}")',
]

describe('ChatGLM3-6B tool calls: parsed, never evaluated', () => {
  it.skipIf(!havePython)('reads every literal tool call as the published eval does (the reference walks the Python ast)', () => {
    const cases = CALLS.map(c => ({output: fence(c), history: withTools()}))
    const want = published(cases)
    const got = cases.map(c => parseChatglm3Response(c.output, c.history))
    for (const [i, w] of want.entries()) {
      expect('error' in w ? w : {}, CALLS[i]).toEqual({})
      if ('error' in w) continue
      const {shown: _shown, ...published} = w
      expect(JSON.parse(JSON.stringify(got[i])), CALLS[i]).toEqual(published)
    }
    // The __proto__ key is an ordinary key, not the prototype.
    const proto = parseChatglm3Response(fence('tool_call(__proto__={"polluted": True})'), withTools()).response as {parameters: Record<string, unknown>}
    expect(Object.keys(proto.parameters)).toEqual(['__proto__'])
    expect(({} as Record<string, unknown>).polluted).toBeUndefined()
  })

  it('refuses hostile or unreadable calls with a reason and the raw text, without throwing', () => {
    for (const call of HOSTILE) {
      const p = parsePythonToolCall(call)
      expect(p.ok, call.slice(0, 80)).toBe(false)
      const r = parseChatglm3Response(fence(call), withTools())
      expect(r.response).toMatchObject({name: 'get_current_weather', content: `\`\`\`python\n${call}\n\`\`\``})
      expect((r.response as {error: string}).error).toMatch(/\S/)
    }
    expect(parsePythonToolCall('tool_call(a=' + '['.repeat(50_000) + ')')).toEqual({ok: false, error: expect.stringContaining(`nesting deeper than ${MAX_LITERAL_DEPTH}`)})
    expect(parsePythonToolCall('x'.repeat(MAX_TOOL_CALL_CHARS + 1))).toEqual({ok: false, error: expect.stringContaining('more than')})
    expect(parsePythonToolCall('__import__("os").system("echo pwned")')).toEqual({ok: false, error: expect.stringContaining('not tool_call')})
  })

  it('has no eval, Function or dynamic import in the module', () => {
    const src = readFileSync(fileURLToPath(new URL('../src/runtime/chatglm3-chat.ts', import.meta.url)), 'utf8')
    expect(src).not.toMatch(/\beval\s*\(|\bFunction\s*\(|\bimport\s*\(|vm\./)
  })

  it.skipIf(!havePython)('the published code fails on the hostile calls too, or would run them: none is a call of JSON-valued literals', () => {
    const safe = HOSTILE.filter(c => c.length < 1000 && !c.includes('__import__') && !c.includes('open('))
    const want = published(safe.map(c => ({output: fence(c), history: withTools()})))
    // The reference (literal values only, and JSON ones: no bytes, sets, complex) refuses every
    // one but two that glmtool refuses by design: nesting past MAX_LITERAL_DEPTH, \N{...} escapes.
    expect(safe.filter((c, i) => !('error' in want[i]))).toEqual([HOSTILE.find(c => c.includes('[[[')), 'tool_call(a="\\N{BULLET}")'])
  })
})

describe('ChatGLM3-6B process_response', () => {
  const OUTPUTS: Array<{output: string, history: ChatMessage[]}> = [
    {output: '\n 你好👋！我是人工智能助手 ChatGLM3-6B。 ', history: [{role: 'user', content: '你好'}]},
    {output: '\n训练截止于[[训练时间]]。', history: [{role: 'user', content: 'q'}]},
    {output: 'no newline at all  ', history: [{role: 'user', content: 'q'}]},
    {output: '', history: [{role: 'user', content: 'q'}]},
    {output: '\nOkay, let\'s look up the weather in Bejing today.<|assistant|>' + fence('tool_call(location="beijing", unit="celsius")'), history: withTools()},
    {output: 'interpreter\n```python\nprint(1)\n```', history: [{role: 'user', content: 'q'}]},
    {output: fence('tool_call(a=1)', 'track'), history: [{role: 'user', content: 'no tools here'}]},
    {output: '  \t\ncontent after a blank metadata line\n\n', history: [{role: 'user', content: 'q'}]},
    {output: '\nfirst<|assistant|>\nsecond<|assistant|>third', history: [{role: 'user', content: 'q'}]},
    {output: fence('tool_call(a=[1, 2)'), history: withTools()},
  ]

  it.skipIf(!havePython)('gives the published response and history', () => {
    const want = published(OUTPUTS)
    OUTPUTS.forEach((c, i) => {
      const got = parseChatglm3Response(c.output, c.history)
      const w = want[i]
      if ('error' in w) {
        // The published eval raises; glmtool keeps the text and says why.
        expect(got.response).toMatchObject({name: 'get_current_weather', error: expect.any(String)})
        return
      }
      const {shown: _shown, ...published} = w
      expect(JSON.parse(JSON.stringify(got)), c.output).toEqual(published)
    })
    // The history is a copy: the caller's is untouched.
    const h = [{role: 'user' as const, content: 'q'}]
    parseChatglm3Response('\nhi', h)
    expect(h).toEqual([{role: 'user', content: 'q'}])
  })

  /** What the stream shows: each new plain part's processed content, from the published history (the script joins them). */
  function shownText(w: PyResult): string {
    if ('error' in w) throw new Error(w.error)
    return w.shown
  }

  it.skipIf(!havePython)('streams, in any chunking, the published text of each plain part (the whole response for one part)', () => {
    let state = 0x1b873593
    const rand = (n: number): number => {
      state ^= state << 13
      state ^= state >>> 17
      state ^= state << 5
      return (state >>> 0) % n
    }
    const parts = ['\n', ' ', '  ', '\t', '\u3000', '\u001c', '\u0085', '<|assistant|>', '<|assis', 'tant|>', '<|', 'interpreter', '[[训练时间]]', '[[', '训练', '时间]]', '[', ']', 'abc', '你好', '🙂', '\ufffd', '```python\n', 'tool_call(x=1)', '\n```', 'x\ny']
    const texts = OUTPUTS.map(o => o.output)
    for (let i = 0; i < 1500; i++) {
      let t = ''
      const n = rand(12)
      for (let k = 0; k < n; k++) t += parts[rand(parts.length)]
      texts.push(t)
    }
    const history: ChatMessage[] = [{role: 'user', content: 'q'}]
    const want = published(texts.map(output => ({output, history})))
    const bad: string[] = []
    texts.forEach((t, i) => {
      const expected = shownText(want[i])
      const whole = chatResponse(CHATGLM3_6B_RESPONSE, t)
      const s = new ResponseStream(CHATGLM3_6B_RESPONSE)
      let streamed = ''
      let p = 0
      while (p < t.length) {
        // Chunks of 1..6 UTF-16 units, never splitting a surrogate pair (the decoder never does).
        let q = Math.min(t.length, p + 1 + rand(6))
        if (q < t.length && /[\ud800-\udbff]/.test(t[q - 1])) q++
        streamed += s.push(t.slice(p, q))
        p = q
      }
      streamed += s.flush()
      if (whole !== expected || streamed !== expected) bad.push(`${JSON.stringify(t)}: whole ${JSON.stringify(whole)}, streamed ${JSON.stringify(streamed)}, published ${JSON.stringify(expected)}`)
      // One part (no "<|assistant|>"): the published response itself when it is a string, '' for a call.
      const w = want[i] as {response: unknown}
      if (!t.includes('<|assistant|>') && whole !== (typeof w.response === 'string' ? w.response : '')) bad.push(`one part ${JSON.stringify(t)}: ${JSON.stringify(whole)}`)
    })
    expect(bad.slice(0, 3)).toEqual([])
  })

  it('holds trailing whitespace, a partial "<|assistant|>" or "[[训练时间]]" and a trailing U+FFFD until they are settled', () => {
    const s = new ResponseStream(CHATGLM3_6B_RESPONSE)
    expect(s.push('\n  Hello')).toBe('Hello')
    expect(s.push(' ')).toBe('')
    expect(s.push('[[训练')).toBe('')
    expect(s.push('时间]] ok\ufffd')).toBe(' 2023年 ok')
    // Still trailing (before a possible "<|assistant|>"); final once the part ends.
    expect(s.push('<|assis')).toBe('')
    expect(s.push('tant|>' + 'get_weather\n```python\n')).toBe('\ufffd')
    expect(s.push('tool_call(a=1)\n```')).toBe('')
    expect(s.flush()).toBe('')
    // A part's metadata line waits for its newline; without one the part is all content.
    const t = new ResponseStream(CHATGLM3_6B_RESPONSE)
    expect(t.push('no newline')).toBe('')
    expect(t.flush()).toBe('no newline')
  })
})

describe('json.dumps(indent=4, ensure_ascii=False) for the tools of a system message', () => {
  it.skipIf(!havePython)('writes what Python writes for the JSON text of the value', () => {
    const values: unknown[] = [
      [], {}, [[]], [{}], null, true, 'str', -0, 0.1, 1e-7, 1e16, 1e21, 2 ** 70, -1.5e-300, 5e-324, 1.7976931348623157e308, 123.456,
      {'a': [1, {'b': null}], 'ключ': 'значение', 'emoji 🙂': '\u0000\u001f\u007f\u2028"\\/'},
      [{name: 'x', parameters: {type: 'object', properties: {}, required: []}}],
    ]
    const r = spawnSync(PYTHON, ['-c', 'import json,sys; print(json.dumps([json.dumps(v, indent=4, ensure_ascii=False) for v in json.load(sys.stdin)]))'], {input: JSON.stringify(values), encoding: 'utf8'})
    expect(r.status, r.stderr).toBe(0)
    expect(values.map(v => pythonJsonDumps(v))).toEqual(JSON.parse(r.stdout))
  })

  it('writes Python\'s float repr, and refuses what JSON cannot hold as Python does', () => {
    // repr(0.5), repr(1e-05), repr(0.0001), repr(1.5e+300), repr(-0.0), repr(123.0) in Python 3.
    expect([0.5, 1e-5, 1e-4, 1.5e300, -0, 123].map(pyFloatRepr)).toEqual(['0.5', '1e-05', '0.0001', '1.5e+300', '-0.0', '123.0'])
    expect(pythonJsonDumps([Number.NaN, Infinity, -Infinity])).toBe('[\n    NaN,\n    Infinity,\n    -Infinity\n]')
    expect(() => pythonJsonDumps([undefined])).toThrow(TypeError)
    const loop: unknown[] = []
    loop.push(loop)
    expect(() => pythonJsonDumps(loop)).toThrow(/Circular/)
  })
})
