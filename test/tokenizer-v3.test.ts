/**
 * ChatGLM3-6B's tokenizer and chat format on the REAL tokenizer.model (../shared/real: ChatGLM3-6B
 * ships ChatGLM2-6B's bytes, SOURCES.txt there) against the published code restated over the
 * `sentencepiece` library (test/crosscheck/chatglm_tokenizers.py V3Tokenizer: encode, the
 * published convert_id_to_token + DecodePieces, build_chat_input with Python's own json.dumps):
 * prompt ids of single- and multi-turn chats, system prompts, tools, tool-call and observation
 * turns over varied text; encode of that text; decode (and streaming) of random id sequences over
 * the whole embedding (65024 rows), specials included. test/crosscheck/chatglm3_tokenizer_check.py
 * checks the same against the published tokenization_chatglm.py itself.
 */
import {spawnSync} from 'node:child_process'
import {existsSync, readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import {beforeAll, describe, expect, it} from 'vitest'
import {CHATGLM3_TOOL_SYSTEM_PROMPT, type ChatMessage, chatglm3PromptIds, type Role} from '../src/runtime/chatglm3-chat.js'
import {describeTokenizer} from '../src/runtime/tokenizer/model-tokenizer.js'
import {loadTokenizerFiles, tokenizerFromBytes} from '../src/runtime/tokenizer/index.js'
import {ChatGLM3Tokenizer} from '../src/runtime/tokenizer/chatglm3-6b.js'
import {fixtureModel} from './fixtures/tokenizer/load.js'

const PYTHON = '/usr/bin/python3'
const CHECK = fileURLToPath(new URL('crosscheck/chatglm_tokenizers.py', import.meta.url))
const REAL = fileURLToPath(new URL('../../shared/real', import.meta.url))
const MODEL = `${REAL}/chatglm2-6b_tokenizer.model`

function skipReason(): string | undefined {
  if (!existsSync(MODEL)) return `${MODEL} absent (CI has it)`
  if (spawnSync(PYTHON, ['-c', 'import sentencepiece'], {stdio: 'ignore'}).status !== 0) return 'python3-sentencepiece not installed; .ci/run installs it'
  return undefined
}
const reason = skipReason()
if (reason) console.log(`ChatGLM3-6B tokenizer cross-check skipped: ${reason}`)

/** A seeded xorshift32: rand(n) in [0, n). */
function generator(seed: number): (n: number) => number {
  let state = seed
  return (n) => {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    return (state >>> 0) % n
  }
}

const BASE_TEXTS = [
  '', '你好', '你好，请介绍一下你自己。', 'Hello, world!', 'What\'s the weather in Beijing today?',
  '👋😀 emoji 🇨🇳 and 𠀀', '  leading and trailing  ', 'tabs\tand\nnewlines\r\n', 'a' + ' '.repeat(40) + 'b',
  'sop', 'esop eop [gMASK] [MASK] [sMASK]', '<|user|>', 'x<|assistant|>y <|system|>\n<|observation|>', '<s></s><unk>',
  '[[训练时间]]', '```python\ntool_call(location="北京", unit="celsius")\n```', '\n', '\n\n\n', ' ', '\u3000全角空格\u3000',
  'def f():\n    return {"a": [1, 2.5, None]}', 'Ünïcödé ñ ß ø', 'ｆｕｌｌ　ｗｉｄｔｈ ＡＢＣ １２３', '\u200b\u200d zero width',
]

/** More text: fragments of BASE_TEXTS and odd characters glued at random. */
function texts(count: number): string[] {
  const rand = generator(0x6a09e667)
  const parts = [...BASE_TEXTS, '中文', 'English', ' ', '  ', '\n', '\t', '<|', '|>', 'sop', '🙂', '\u{10ffff}', '\u0301', '"', '\\', '\u0000', '\u001f']
  const out = [...BASE_TEXTS]
  for (let i = 0; i < count; i++) {
    let t = ''
    const n = 1 + rand(8)
    for (let k = 0; k < n; k++) t += parts[rand(parts.length)]
    out.push(t)
  }
  return out
}

const WEATHER_TOOLS = [
  {
    name: 'get_current_weather',
    description: 'Get the current weather in a given location',
    parameters: {
      type: 'object',
      properties: {
        location: {type: 'string', description: 'The city and state, e.g. San Francisco, CA'},
        unit: {type: 'string', enum: ['celsius', 'fahrenheit']},
      },
      required: ['location'],
    },
  },
]

/** JSON values that json.dumps writes in its own way: escapes, non-ASCII, empty containers, numbers. */
const ODD_TOOLS = [
  {name: '/text-to-speech', description: '将文本转换为语音', parameters: {type: 'object', properties: {text: {description: '需要转换成语音的文本'}}, required: []}},
  {name: 'quotes "and" \\ back\\slash', description: 'ctrl \u0001\u001f\b\f\n\r\t del \u007f nbsp\u00a0 emoji 🙂 \u2028', empty: {}, list: [], nested: [[], [{}], [1, [2, [3]]]]},
  {name: 'numbers', values: [0, -0, 1, -1, 0.5, -2.25, 1e-7, 0.0001, 1e-5, 123456789012, 1e16, 1e20, 1e21, 1.5e300, -1.5e-300, 2 ** 53 + 2, 3.141592653589793, 5e-324], flags: [true, false, null]},
]

interface Chat {
  history: ChatMessage[]
  query: string
  role: Role
}

function chats(all: string[]): Chat[] {
  const rand = generator(0xbb67ae85)
  const pick = (): string => all[rand(all.length)]
  const out: Chat[] = [
    {history: [], query: '你好', role: 'user'},
    {history: [], query: '', role: 'user'},
    {history: [{role: 'user', content: '你好'}, {role: 'assistant', content: '你好👋！我是人工智能助手 ChatGLM3-6B，很高兴见到你，欢迎问我任何问题。'}], query: '晚上睡不着应该怎么办', role: 'user'},
    {history: [{role: 'system', content: 'You are ChatGLM3, a large language model trained by Zhipu.AI. Follow the user\'s instructions carefully. Respond using markdown.'}], query: 'Hello', role: 'user'},
    {history: [{role: 'system', content: CHATGLM3_TOOL_SYSTEM_PROMPT, tools: WEATHER_TOOLS}], query: 'What\'s the weather in Beijing today?', role: 'user'},
    {
      history: [
        {role: 'system', content: CHATGLM3_TOOL_SYSTEM_PROMPT, tools: WEATHER_TOOLS},
        {role: 'user', content: 'What\'s the weather in Beijing today?'},
        {role: 'assistant', content: 'Okay, let\'s look up the weather in Bejing today.'},
        {role: 'assistant', metadata: 'get_current_weather', content: '```python\ntool_call(location="beijing", unit="celsius")\n```'},
      ],
      query: '{"temperature": 22}',
      role: 'observation',
    },
    {history: [{role: 'system', content: CHATGLM3_TOOL_SYSTEM_PROMPT, tools: ODD_TOOLS}], query: 'sop <|user|> [gMASK]', role: 'user'},
    {history: [{role: 'system', content: '', tools: []}], query: 'x', role: 'user'},
    {history: [{role: 'user', content: 'q'}, {role: 'assistant', metadata: ' interpreter ', content: '```python\nprint(1)\n```'}, {role: 'observation', content: '```result\n1\n```'}], query: '', role: 'assistant'},
  ]
  const roles: Role[] = ['system', 'user', 'assistant', 'observation']
  for (let i = 0; i < 120; i++) {
    const history: ChatMessage[] = []
    const n = rand(6)
    for (let k = 0; k < n; k++) {
      const m: ChatMessage = {role: roles[rand(4)], content: pick()}
      if (rand(4) === 0) m.metadata = pick()
      if (m.role === 'system' && rand(2) === 0) m.tools = rand(2) ? WEATHER_TOOLS : ODD_TOOLS
      history.push(m)
    }
    out.push({history, query: pick(), role: roles[rand(4)]})
  }
  return out
}

/** Id sequences over the embedding's rows, weighted to the specials, </s> <s> <unk>, bytes and past the vocabulary. */
function idSequences(count: number): number[][] {
  const rand = generator(0x3c6ef372)
  const special = [0, 1, 2, ...Array.from({length: 9}, (_, k) => 64789 + k)]
  const out: number[][] = []
  for (let i = 0; i < count; i++) {
    const seq: number[] = []
    const len = 1 + rand(20)
    for (let k = 0; k < len; k++) {
      const r = rand(10)
      seq.push(r < 3 ? 3 + rand(256) : r < 5 ? special[rand(special.length)] : r < 6 ? 64798 + rand(65024 - 64798) : rand(64789))
    }
    out.push(seq)
  }
  return out
}

/** Where two id lists part, with the text around it, for a readable failure. */
function diff(what: string, got: number[], want: number[]): string {
  let k = 0
  while (k < got.length && got[k] === want[k]) k++
  return `${what.slice(0, 300)}: from id ${k}, ${JSON.stringify(got.slice(Math.max(0, k - 3), k + 6))} != ${JSON.stringify(want.slice(Math.max(0, k - 3), k + 6))}`
}

interface Reply {
  vocab_size: number
  encode: Array<{ids: number[], text_ids: number[], decoded: string}>
  decode: string[]
  chats: number[][]
  decode_pieces: string[]
}

describe.skipIf(reason !== undefined)('ChatGLM3-6B tokenizer on the real tokenizer.model vs the published code over sentencepiece', () => {
  // The body runs even when skipped: nothing here may need the file.
  let tok: ChatGLM3Tokenizer
  beforeAll(() => {
    tok = tokenizerFromBytes(readFileSync(MODEL), 'chatglm3-6b', {source: MODEL}) as ChatGLM3Tokenizer
  })
  const all = texts(400)
  const conversations = chats(all)
  const sequences = idSequences(600)
  // DecodePieces on strings that are no piece: the role names and others, beside real pieces.
  const pieceLists = [['<|user|>'], ['<|user|>', '\u2581Hello'], ['\u2581Hello', '<|assistant|>', '\u2581Hi'], ['[gMASK]', 'sop', '\u2581Hi'], ['<0xE4>', '<|user|>', '<0xBD>'], ['', '\u2581Hi'], ['\u2581', '<|observation|>'], ['not a piece at all']]
  let reply: Reply
  const py = (): Reply => {
    if (reply) return reply
    const r = spawnSync(PYTHON, [CHECK], {
      input: JSON.stringify({model: MODEL, arch: 'chatglm3-6b', texts: all, decode: sequences, chats: conversations, decode_pieces: pieceLists}),
      encoding: 'utf8', maxBuffer: 256 << 20,
    })
    if (r.status !== 0) throw new Error(`chatglm_tokenizers.py failed: ${r.stderr}`)
    reply = JSON.parse(r.stdout) as Reply
    return reply
  }

  it('has the published layout: 64789 pieces + 9 specials, roles 64794..64797, stop at eos, <|user|>, <|observation|>', () => {
    expect(tok).toBeInstanceOf(ChatGLM3Tokenizer)
    expect(tok.vocabSize).toBe(py().vocab_size)
    expect(tok.vocabSize).toBe(64798)
    expect(tok.specials).toEqual({gmask: 64790, mask: 64789, sop: 64792, eop: 64793, eos: 2, pad: 0, stop: [2, 64795, 64797], roles: {system: 64794, user: 64795, assistant: 64796, observation: 64797}})
  })

  it('inspect and tokenize describe its roles and stop ids', async () => {
    const report = describeTokenizer(await loadTokenizerFiles(REAL, 'chatglm3-6b', 'chatglm2-6b_tokenizer.model'))
    expect(report).toMatchObject({type: 'BPE', pieces: 64789, vocabSize: 64798, stop: [2, 64795, 64797]})
    expect(report.specials).toEqual({gmask: 64790, mask: 64789, sop: 64792, eop: 64793, eos: 2, pad: 0, system: 64794, user: 64795, assistant: 64796, observation: 64797})
  })

  it('encodes every text to the published ids (role and special spellings stay text on this vocabulary)', () => {
    const bad = all.map((t, i) => [t, tok.encode(t), py().encode[i].ids] as const).filter(([, a, b]) => JSON.stringify(a) !== JSON.stringify(b))
    expect(bad.slice(0, 3).map(([t, a, b]) => diff(JSON.stringify(t), a, b))).toEqual([])
    // The plain SentencePiece ids too (build_single_message's encode).
    const plain = all.filter((t, i) => JSON.stringify(tok.encodeSentencePiece(t)) !== JSON.stringify(py().encode[i].text_ids))
    expect(plain.slice(0, 3)).toEqual([])
    // The real vocabulary holds none of the nine names as a piece ("sop" comes out as "s" "op"), so
    // on it the mapping never fires and encode is the plain ids (the fixture test below covers
    // the mapping); no special id comes from text.
    expect(py().encode.every(e => JSON.stringify(e.ids) === JSON.stringify(e.text_ids))).toBe(true)
    expect(py().encode.some(e => e.ids.some(id => id >= 64789))).toBe(false)
    expect(tok.encodePrompt('你好')).toEqual([64790, 64792, ...tok.encode('你好')])
  })

  it('builds every chat\'s prompt as build_chat_input does (system, tools as json.dumps, tool-call and observation turns)', () => {
    const got = conversations.map(c => chatglm3PromptIds(tok, c.history, c.query, c.role))
    const bad = conversations.map((c, i) => [c, got[i], py().chats[i]] as const).filter(([, a, b]) => JSON.stringify(a) !== JSON.stringify(b))
    expect(bad.slice(0, 2).map(([c, a, b]) => diff(JSON.stringify(c), a, b))).toEqual([])
    expect(got).toHaveLength(conversations.length)
    // The first: [gMASK] sop <|user|> "\n" 你好 <|assistant|>, as the published format shows.
    expect(got[0]).toEqual([64790, 64792, 64795, ...tok.encodeSentencePiece('\n'), ...tok.encodeSentencePiece('你好'), 64796])
  })

  it('DecodePieces gives a string that is no piece back as itself (the library)', () => {
    expect(py().decode_pieces).toEqual(['<|user|>', '<|user|> Hello', 'Hello<|assistant|> Hi', '[gMASK]sop Hi', '\ufffd<|user|>\ufffd', 'Hi', '<|observation|>', 'not a piece at all'])
  })

  it('decodes the corpus\'s ids and random id sequences (specials, bytes, rows past the vocabulary) as the published decode, streamed too', () => {
    const cases: Array<[number[], string]> = [...all.map((_, i) => [py().encode[i].ids, py().encode[i].decoded] as [number[], string]), ...sequences.map((s, i) => [s, py().decode[i]] as [number[], string])]
    const bad: string[] = []
    for (const [ids, text] of cases) {
      const got = tok.decode(ids)
      const d = tok.streamDecoder()
      const streamed = ids.map(id => d.push(id)).join('') + d.flush()
      if (got !== text || streamed !== text) bad.push(`${JSON.stringify(ids)}: ${JSON.stringify(got)} / ${JSON.stringify(streamed)} != ${JSON.stringify(text)}`)
    }
    expect(bad.slice(0, 3)).toEqual([])
    // The sequences reached each special, </s>, and the padded rows.
    const flat = sequences.flat()
    for (const id of [2, 64789, 64794, 64797, 64798, 65023]) expect(flat.some(x => x === id || (id === 65023 && x > 65000))).toBe(true)
    expect(tok.decode([64795, 64798, 65023, 2, 1, 0])).toBe('<|user|>')
  })
})

describe('ChatGLM3-6B tokenizer on a small fixture model (v2-bpe.model: 2500 pieces, one of them "sop")', () => {
  const tok = tokenizerFromBytes(fixtureModel('v2-bpe.model'), 'chatglm3-6b') as ChatGLM3Tokenizer

  it('puts the roles after the five specials and maps a text piece spelled like a special, as convert_token_to_id does', () => {
    expect(tok.vocabSize).toBe(2509)
    expect(tok.specials.roles).toEqual({system: 2505, user: 2506, assistant: 2507, observation: 2508})
    expect(tok.specials.stop).toEqual([2, 2506, 2508])
    // "esop" ends in the piece "sop": the special's id, as in ChatGLM2-6B (test/tokenizer.test.ts).
    expect(tok.encode('esop').at(-1)).toBe(2503)
    // build_single_message's plain encode keeps the piece.
    expect(tok.encodeSentencePiece('esop').at(-1)).not.toBe(2503)
    expect(tok.encodeSentencePiece('esop')).toHaveLength(tok.encode('esop').length)
  })

  it('decodes specials by name, ids past the vocabulary and </s> <s> <unk> as ""', () => {
    expect(tok.decode([2501, 2503, 2506])).toBe('[gMASK]sop<|user|>')
    expect(tok.decode([2509, 99999, -1, 0, 1, 2])).toBe('')
    expect(() => tok.decode([1.5])).toThrow(RangeError)
  })

  it.skipIf(reason?.includes('sentencepiece') ?? false)('decodes as the published code over the library, where a special\'s name ("sop") is also a piece', () => {
    const rand = generator(0x510e527f)
    const sequences = Array.from({length: 300}, () => Array.from({length: 1 + rand(12)}, () => {
      const r = rand(4)
      return r === 0 ? 2500 + rand(9) : r === 1 ? 3 + rand(256) : r === 2 ? rand(3) : rand(2600)
    }))
    const model = fileURLToPath(new URL('fixtures/tokenizer/v2-bpe.model', import.meta.url))
    const r = spawnSync(PYTHON, [CHECK], {input: JSON.stringify({model, arch: 'chatglm3-6b', decode: sequences}), encoding: 'utf8'})
    expect(r.status, r.stderr).toBe(0)
    const want = (JSON.parse(r.stdout) as Reply).decode
    expect(sequences.map(ids => tok.decode(ids))).toEqual(want)
    expect(sequences.flat()).toContain(2503)
  })
})

// The published tokenization_chatglm.py itself (never committed): GLMTOOL_PUB3 or
// build/xcheck/pub/v3 (where test/crosscheck/README.md puts the published copies).
const PUB3 = process.env.GLMTOOL_PUB3 ?? fileURLToPath(new URL('../build/xcheck/pub/v3', import.meta.url))
const DIST = fileURLToPath(new URL('../dist/runtime/chatglm3-chat.js', import.meta.url))
const pubReason = reason ?? (!existsSync(`${PUB3}/tokenization_chatglm.py`)
  ? `no published tokenization_chatglm.py in ${PUB3} (set GLMTOOL_PUB3; copies are never committed)`
  : !existsSync(DIST) ? 'dist/ is missing: run npm run build' : undefined)
if (pubReason) console.log(`published ChatGLM3-6B tokenizer check skipped: ${pubReason}`)

describe.skipIf(pubReason !== undefined)('ChatGLM3-6B tokenizer vs the published tokenization_chatglm.py (transformers stand-in)', () => {
  it('agrees on encode, build_chat_input, decode and process_response (chatglm3_tokenizer_check.py)', () => {
    const script = fileURLToPath(new URL('crosscheck/chatglm3_tokenizer_check.py', import.meta.url))
    const r = spawnSync(PYTHON, [script, '--pub', PUB3, '--model', MODEL, '--node', process.execPath], {encoding: 'utf8', maxBuffer: 64 << 20})
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0)
    expect(r.stdout).toMatch(/build_chat_input\s+\d+ cases, 0 mismatches/)
    expect(r.stdout).toContain('all agree')
  })
})
