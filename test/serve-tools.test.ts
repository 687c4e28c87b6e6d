/**
 * ChatGLM3-6B tool calls through `glmtool serve`'s OpenAI API: the request's `tools`,
 * `tool_choice`, assistant `tool_calls` and `role: "tool"` messages mapped onto the published
 * chat format (tools in the system message, assistant turns with the function name as metadata,
 * observations), and an answer that process_response reads as a tool call returned as OpenAI's
 * `tool_calls` (finish_reason "tool_calls"), whole and streamed. The mapping is tested on its own
 * on answers shaped like ChatGLM3-6B's; end to end, the official `openai` client talks to a tiny
 * synth ChatGLM3-6B: its prompt ids must be the ones chatglm3PromptIds builds for the same
 * conversation, and with GLMTOOL_TEST_SCRIPTED_ANSWER (every answer is a fixed text, since random
 * weights cannot be steered) the tool call comes back through the client, streaming and not.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import OpenAI from 'openai'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {answerMessage, ApiError, chatTurns, parseChatRequest, parseTools} from '../src/server/openai.js'
import {CHATGLM2_6B_CHAT, CHATGLM3_6B_CHAT, systemMessage} from '../src/runtime/chat-template.js'
import {
  CHATGLM3_TOOL_SYSTEM_PROMPT, chatglm3PromptIds, type ChatMessage, parseChatglm3Response, parsePythonToolCall, pyRepr, toolCallContent,
} from '../src/runtime/chatglm3-chat.js'
import {loadTokenizer} from '../src/runtime/tokenizer/index.js'
import type {ChatGLM3Tokenizer} from '../src/runtime/tokenizer/chatglm3-6b.js'
import {glmtool} from './helpers/cli.js'
import {readEvents, type RunningServer, startServer} from './helpers/serve.js'

const PYTHON = '/usr/bin/python3'
const havePython = spawnSync(PYTHON, ['-c', 'import json'], {stdio: 'ignore'}).status === 0

const WEATHER = {
  name: 'get_current_weather',
  description: 'Get the current weather in a given location',
  parameters: {type: 'object', properties: {location: {type: 'string', description: 'The city and state, e.g. San Francisco, CA'}, unit: {type: 'string', enum: ['celsius', 'fahrenheit']}}, required: ['location']},
}
const TOOLS = [{type: 'function' as const, function: WEATHER}]
const user = (content: string) => ({role: 'user' as const, content})

/** The ApiError a function throws (the test fails when it throws none). */
function apiError(f: () => unknown): ApiError {
  try {
    f()
  } catch (error) {
    if (error instanceof ApiError) return error
    throw error
  }
  throw new Error('no ApiError thrown')
}

describe('serve: OpenAI tools onto ChatGLM3-6B\'s chat format', () => {
  const parse = (body: Record<string, unknown>) => parseChatRequest(body, 8192, 'm')

  it('validates tools, tool_choice and tool calls with 400s naming the field', () => {
    const cases: [unknown, RegExp, string][] = [
      [[], /non-empty array/, 'tools'],
      [{}, /non-empty array/, 'tools'],
      [[{type: 'retrieval'}], /tools\[0\]\.type must be "function"/, 'tools[0].type'],
      [[{type: 'function'}], /tools\[0\]\.function must be an object/, 'tools[0].function'],
      [[{type: 'function', function: {name: 'has space'}}], /letters, digits, _ or -/, 'tools[0].function.name'],
      [[{type: 'function', function: {name: 'x'.repeat(65)}}], /1 to 64/, 'tools[0].function.name'],
      [[{type: 'function', function: {name: 'f', parameters: {type: 'string'}}}], /JSON Schema object/, 'tools[0].function.parameters'],
      [[{type: 'function', function: {name: 'f', parameters: {type: 'object', properties: []}}}], /properties must be an object/, 'tools[0].function.parameters'],
      [[{type: 'function', function: {name: 'f', parameters: {type: 'object', required: [1]}}}], /required must be an array/, 'tools[0].function.parameters'],
      [[{type: 'function', function: {name: 'f', description: 3}}], /description must be a string/, 'tools[0].function.description'],
      [[...TOOLS, ...TOOLS], /given twice/, 'tools[1].function.name'],
    ]
    for (const [tools, message, param] of cases) {
      const e = apiError(() => parseTools(tools))
      expect([e.status, e.message, e.param], JSON.stringify(tools)).toEqual([400, expect.stringMatching(message), param])
    }
    expect(parseTools(TOOLS)).toEqual([WEATHER])
    expect(parseTools(undefined)).toBeUndefined()

    const forced = apiError(() => parse({messages: [user('q')], tools: TOOLS, tool_choice: {type: 'function', function: {name: WEATHER.name}}}))
    expect([forced.status, forced.code, forced.message]).toEqual([400, 'unsupported_tool_choice', expect.stringMatching(/not supported.*"auto" or "none"/)])
    expect(apiError(() => parse({messages: [user('q')], tools: TOOLS, tool_choice: 'required'})).code).toBe('unsupported_tool_choice')
    expect(apiError(() => parse({messages: [user('q')], tools: TOOLS, tool_choice: 'sometimes'})).message).toMatch(/tool_choice must be "auto" or "none"/)
    expect(apiError(() => parse({messages: [user('q')], tool_choice: 'auto'})).message).toMatch(/tool_choice needs tools/)
    expect(apiError(() => parse({messages: [user('q')], functions: [WEATHER]})).message).toMatch(/deprecated form of tools/)
    expect(parse({messages: [user('q')], tools: TOOLS}).offerTools).toBe(true)
    expect(parse({messages: [user('q')], tools: TOOLS, tool_choice: 'auto'}).offerTools).toBe(true)
    expect(parse({messages: [user('q')], tools: TOOLS, tool_choice: 'none'}).offerTools).toBe(false)

    const call = (args: string) => ({messages: [user('q'), {role: 'assistant', content: null, tool_calls: [{id: 'c1', type: 'function', function: {name: 'f', arguments: args}}]}, {role: 'tool', tool_call_id: 'c1', content: '1'}]})
    expect(apiError(() => parse(call('{oops'))).message).toMatch(/messages\[1\]\.tool_calls\[0\]\.function\.arguments is not valid JSON/)
    expect(apiError(() => parse(call('[1]'))).message).toMatch(/must be a JSON object/)
    expect(apiError(() => parse(call('{"my-key": 1}'))).message).toMatch(/"my-key", which cannot be a keyword argument/)
    expect(apiError(() => parse(call('{"class": 1}'))).message).toMatch(/"class", which cannot be a keyword argument/)
    expect(apiError(() => parse({messages: [user('q'), {role: 'tool', content: 'x'}]})).message).toMatch(/tool_call_id must be a string/)
    expect(apiError(() => parse({messages: [user('q'), {role: 'assistant', content: 'a'}]})).message).toMatch(/last message must be the user's \(or a tool's result\)/)
    expect(parse(call('{"a": 1}')).messages[1]).toEqual({role: 'assistant', content: '', toolCalls: [{id: 'c1', name: 'f', arguments: {a: 1}}]})
  })

  it('puts the tools in the system message as chat --tools does, maps tool calls to assistant turns and tool results to observations', () => {
    const r = parse({
      messages: [
        {role: 'system', content: 'Be brief.'}, user('Weather in Beijing and Paris?'),
        {role: 'assistant', content: null, tool_calls: [{id: 'c1', type: 'function', function: {name: WEATHER.name, arguments: '{"location": "北京", "unit": "celsius"}'}}]},
        {role: 'tool', tool_call_id: 'c1', content: '{"temperature": 3}'},
        {role: 'assistant', content: 'Now Paris.', tool_calls: [{id: 'c2', type: 'function', function: {name: WEATHER.name, arguments: '{"location": "Paris"}'}}]},
        {role: 'tool', tool_call_id: 'c2', content: '{"temperature": 9}'},
      ],
      tools: TOOLS,
    })
    const turns = chatTurns(r.messages, CHATGLM3_6B_CHAT, {offered: r.tools, model: 'ChatGLM3-6B'})
    expect(turns.role).toBe('observation')
    expect(turns.query).toBe('{"temperature": 9}')
    expect(turns.history).toEqual([
      systemMessage('Be brief.', [WEATHER]),
      {role: 'user', content: 'Weather in Beijing and Paris?'},
      {role: 'assistant', metadata: WEATHER.name, content: '```python\ntool_call(location=\'北京\', unit=\'celsius\')\n```'},
      {role: 'observation', content: '{"temperature": 3}'},
      {role: 'assistant', content: 'Now Paris.'},
      {role: 'assistant', metadata: WEATHER.name, content: '```python\ntool_call(location=\'Paris\')\n```'},
    ])
    // No system message: the published tool prompt; tool_choice "none": no tools at all.
    expect(chatTurns([user('q')], CHATGLM3_6B_CHAT, {offered: [WEATHER], model: 'ChatGLM3-6B'}).history).toEqual([{role: 'system', content: CHATGLM3_TOOL_SYSTEM_PROMPT, tools: [WEATHER]}])
    expect(chatTurns([user('q')], CHATGLM3_6B_CHAT, {offered: undefined, model: 'ChatGLM3-6B'}).history).toEqual([])
    // The other generations have no tool format.
    const e = apiError(() => chatTurns(r.messages, CHATGLM2_6B_CHAT, {offered: undefined, model: 'ChatGLM2-6B'}))
    expect([e.status, e.message]).toEqual([400, expect.stringMatching(/ChatGLM2-6B has no tool format/)])
  })

  it('writes tool calls as Python literals that parse back to the arguments', () => {
    const args = [
      {location: 'beijing', unit: 'celsius'},
      {text: '你好', quote: 'it\'s', both: 'a\'b"c', nl: 'a\nb\tc\\d', ctl: '\u0000\u007f\u200b\u2028', emoji: '😀'},
      {n: 0, neg: -12, big: 2 ** 60, f: 0.5, tiny: 1e-7, huge: 1.5e300, t: true, no: false, none: null},
      {list: [1, 'a', [], {}], dict: {'k': [null], 'with space': 1, '1': 2}},
      {},
    ]
    for (const a of args) {
      const content = toolCallContent(a)
      const code = content.split('\n').slice(1, -1).join('\n')
      expect(code.split('\n'), content).toHaveLength(1)
      expect(parsePythonToolCall(code), content).toEqual({ok: true, parameters: JSON.parse(JSON.stringify(a))})
    }
    expect(() => toolCallContent({'not-a-name': 1})).toThrow(/cannot be a keyword argument/)
  })

  // Integers past 2 ** 53 have lost digits in JSON.parse already; only exact ones are compared.
  it.skipIf(!havePython)('writes each value as Python\'s repr() of json.loads\'s value', () => {
    const values = ['plain', 'it\'s', 'say "hi"', 'both \' and "', 'tab\tnl\ncr\rbs\\', '\u0000\u001f\u007f\u0080\u00a0\u00ad', '\u200b\u2028\u3000 x', '😀\ud800', '你好', 0, -5, 2 ** 52, 0.1, 1e22, -2.5e-5, true, null, [1, [2, 'x']], {a: 1, 'b c': [true]}]
    const script = 'import json,sys\nfor v in json.loads(sys.stdin.read()): print(json.dumps(repr(v)))'
    const r = spawnSync(PYTHON, ['-c', script], {input: JSON.stringify(values), encoding: 'utf8'})
    expect(r.status, r.stderr).toBe(0)
    const want = r.stdout.trim().split('\n').map(l => JSON.parse(l) as string)
    expect(values.map(pyRepr)).toEqual(want)
  })

  it('returns a parsed tool call as tool_calls, text as content, an unreadable call as the model\'s text', () => {
    const history: ChatMessage[] = [systemMessage(undefined, [WEATHER])!, user('Weather in Beijing?')]
    const ids = ['call-1', 'call-2']
    const callId = () => ids.shift()!
    // ChatGLM3-6B's answers as its demos print them (the metadata line, then the fenced call).
    const call = parseChatglm3Response('get_current_weather\n ```python\ntool_call(location=\'Beijing\', unit=\'celsius\')\n```', history).response
    expect(answerMessage(call, '', callId)).toEqual({
      message: {role: 'assistant', content: null, tool_calls: [{id: 'call-1', type: 'function', function: {name: 'get_current_weather', arguments: '{"location":"Beijing","unit":"celsius"}'}}]},
      toolCall: true,
    })
    // Text, then the call in a second part: the text is the content, the call the tool call.
    const both = parseChatglm3Response('\nLet me look that up.<|assistant|>get_current_weather\n```python\ntool_call(location="beijing")\n```', history).response
    expect(answerMessage(both, 'Let me look that up.', callId).message).toEqual({role: 'assistant', content: 'Let me look that up.', tool_calls: [{id: 'call-2', type: 'function', function: {name: 'get_current_weather', arguments: '{"location":"beijing"}'}}]})
    const plain = parseChatglm3Response('\n 北京今天晴。', history).response
    expect(answerMessage(plain, '北京今天晴。', callId)).toEqual({message: {role: 'assistant', content: '北京今天晴。'}, toolCall: false})
    const hostile = parseChatglm3Response('get_current_weather\n```python\ntool_call(location=__import__("os").getcwd())\n```', history).response
    const bad = answerMessage(hostile, '', callId)
    expect(bad).toEqual({message: {role: 'assistant', content: 'get_current_weather\n```python\ntool_call(location=__import__("os").getcwd())\n```'}, toolCall: false, toolCallError: expect.stringContaining('not a Python literal')})
  })
})

describe('serve: tool calls end to end with the official openai client (synth ChatGLM3-6B)', () => {
  const work = mkdtempSync(join(tmpdir(), 'glmtool-serve-tools-'))
  const v3 = join(work, 'v3')
  const v2 = join(work, 'v2')
  let tok: ChatGLM3Tokenizer
  let plain: RunningServer
  let scripted: RunningServer
  const ANSWER = 'get_current_weather\n ```python\ntool_call(location=\'北京\', unit=\'celsius\')\n```'
  beforeAll(async () => {
    for (const [arch, out] of [['chatglm3-6b', v3], ['chatglm2-6b', v2]]) {
      for (const args of [['synth', '--arch', arch, '--size', 'tiny', '--out', `${out}-torch`, '--seed', '5'], ['convert', `${out}-torch`, '--to', 'onnx', '--out', out]]) {
        const r = glmtool(args)
        if (r.code !== 0) throw new Error(r.stderr)
      }
    }
    tok = await loadTokenizer(v3, 'chatglm3-6b') as ChatGLM3Tokenizer
    ;[plain, scripted] = await Promise.all([startServer(v3), startServer(v3, [], {GLMTOOL_TEST_SCRIPTED_ANSWER: ANSWER})])
  }, 240_000)
  afterAll(async () => {
    await Promise.all([plain?.stop(), scripted?.stop()])
    rmSync(work, {recursive: true, force: true})
  })
  const client = (s: RunningServer) => new OpenAI({baseURL: `${s.url}/v1`, apiKey: 'unused'})
  type Ext = {glmtool: {prompt_ids: number[], generated_ids: number[]}}

  it('builds the prompt chatglm3PromptIds builds for the same conversation with tools, and for a tool result after a call', async () => {
    const r = await client(plain).chat.completions.create({model: 'v3', messages: [user('Weather in Beijing?')], tools: TOOLS, temperature: 0, max_tokens: 4})
    expect((r as unknown as Ext).glmtool.prompt_ids).toEqual(chatglm3PromptIds(tok, [systemMessage(undefined, [WEATHER])!], 'Weather in Beijing?'))
    expect(['stop', 'length', 'tool_calls']).toContain(r.choices[0].finish_reason)

    const after = await client(plain).chat.completions.create({
      model: 'v3', temperature: 0, max_tokens: 4, tools: TOOLS,
      messages: [
        {role: 'system', content: 'Be brief.'}, user('Weather in Beijing?'),
        {role: 'assistant', content: null, tool_calls: [{id: 'c1', type: 'function', function: {name: WEATHER.name, arguments: '{"location": "北京"}'}}]},
        {role: 'tool', tool_call_id: 'c1', content: '{"temperature": 3}'},
      ],
    })
    const history: ChatMessage[] = [
      {role: 'system', content: 'Be brief.', tools: [WEATHER]}, user('Weather in Beijing?'),
      {role: 'assistant', metadata: WEATHER.name, content: '```python\ntool_call(location=\'北京\')\n```'},
    ]
    const ids = (after as unknown as Ext).glmtool.prompt_ids
    expect(ids).toEqual(chatglm3PromptIds(tok, history, '{"temperature": 3}', 'observation'))
    expect(ids.filter(id => id === tok.specials.roles.observation)).toHaveLength(1)

    // tool_choice "none": the tools stay out of the prompt.
    const none = await client(plain).chat.completions.create({model: 'v3', messages: [user('Weather in Beijing?')], tools: TOOLS, tool_choice: 'none', temperature: 0, max_tokens: 2})
    expect((none as unknown as Ext).glmtool.prompt_ids).toEqual(chatglm3PromptIds(tok, [], 'Weather in Beijing?'))
  })

  it('refuses what ChatGLM3-6B cannot do, with 400s', async () => {
    const c = client(plain)
    const forced = await c.chat.completions.create({model: 'v3', messages: [user('q')], tools: TOOLS, tool_choice: {type: 'function', function: {name: WEATHER.name}}}).catch(e => e)
    expect(forced).toBeInstanceOf(OpenAI.BadRequestError)
    expect(forced.message).toMatch(/tool_choice .* is not supported/)
    const orphan = await c.chat.completions.create({model: 'v3', messages: [user('q'), {role: 'tool', tool_call_id: 'x', content: '1'}]}).catch(e => e)
    expect(orphan).toBeInstanceOf(OpenAI.BadRequestError)
    expect(orphan.message).toMatch(/an observation answers a tool call, and the conversation has none yet/)
  })

  it('returns the model\'s tool call as tool_calls with finish_reason tool_calls, whole and streamed', async () => {
    const c = client(scripted)
    const whole = await c.chat.completions.create({model: 'v3', messages: [user('Weather in Beijing?')], tools: TOOLS})
    const [choice] = whole.choices
    expect(choice.finish_reason).toBe('tool_calls')
    expect(choice.message.content).toBeNull()
    expect(choice.message.tool_calls).toHaveLength(1)
    const call = choice.message.tool_calls![0] as {id: string, type: string, function: {name: string, arguments: string}}
    expect(call.type).toBe('function')
    expect(call.id).toMatch(/^call/)
    expect(call.function.name).toBe('get_current_weather')
    expect(JSON.parse(call.function.arguments)).toEqual({location: '北京', unit: 'celsius'})
    // The answer came from the model's ids: they decode to the scripted text.
    expect(tok.decode((whole as unknown as Ext).glmtool.generated_ids)).toBe(ANSWER)

    const stream = await c.chat.completions.create({model: 'v3', messages: [user('Weather in Beijing?')], tools: TOOLS, stream: true})
    let content = ''
    const calls: {index: number, id?: string, name?: string, arguments: string}[] = []
    let finish: string | null = null
    for await (const chunk of stream) {
      const d = chunk.choices[0]?.delta
      content += d?.content ?? ''
      for (const t of d?.tool_calls ?? []) {
        calls[t.index] ??= {index: t.index, arguments: ''}
        if (t.id) calls[t.index].id = t.id
        if (t.function?.name) calls[t.index].name = t.function.name
        calls[t.index].arguments += t.function?.arguments ?? ''
      }
      finish = chunk.choices[0]?.finish_reason ?? finish
    }
    expect(content).toBe('')
    expect(finish).toBe('tool_calls')
    expect(calls).toHaveLength(1)
    expect([calls[0].name, JSON.parse(calls[0].arguments)]).toEqual(['get_current_weather', {location: '北京', unit: 'celsius'}])
    expect(calls[0].id).toMatch(/^call/)

    // Without tools offered, the same answer is no tool call (the published process_response
    // reads calls only with tools in the system message): plain text, finish_reason stop.
    const none = await c.chat.completions.create({model: 'v3', messages: [user('Weather in Beijing?')], tools: TOOLS, tool_choice: 'none'})
    expect([none.choices[0].finish_reason, none.choices[0].message.tool_calls]).toEqual(['stop', undefined])
    const events = await readEvents(await fetch(`${scripted.url}/v1/chat/completions`, {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({messages: [user('hi')], tools: TOOLS, stream: true})}))
    expect(events.at(-1)).toBe('[DONE]')
  })

  it('answers tools on ChatGLM2-6B with a 400 saying it has no tool format', async () => {
    const s = await startServer(v2)
    try {
      const r = await client(s).chat.completions.create({model: 'v2', messages: [user('q')], tools: TOOLS}).catch(e => e)
      expect(r).toBeInstanceOf(OpenAI.BadRequestError)
      expect(r.message).toMatch(/ChatGLM2-6B has no tool format: tools need ChatGLM3-6B/)
      const h = await client(s).chat.completions.create({model: 'v2', messages: [user('q'), {role: 'tool', tool_call_id: 'x', content: '1'}]}).catch(e => e)
      expect(h).toBeInstanceOf(OpenAI.BadRequestError)
      expect(h.message).toMatch(/no tool format/)
    } finally {
      expect(await s.stop()).toBe(0)
    }
  })
})
