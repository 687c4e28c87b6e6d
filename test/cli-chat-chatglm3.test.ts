/**
 * `glmtool chat` on ChatGLM3-6B: the published chat format end to end (build_chat_input's ids,
 * which test/chatglm3-chat.test.ts and test/crosscheck/chatglm3_tokenizer_check.py hold to the
 * published tokenizer), the system prompt, tools and observations, and the refusals on the
 * generations that have no system role.
 */
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {chatglm3PromptIds, type ChatMessage, parseChatglm3Response} from '../src/runtime/chatglm3-chat.js'
import {CHATGLM3_6B_CHAT} from '../src/runtime/chat-template.js'
import {loadTokenizer} from '../src/runtime/tokenizer/index.js'
import {ChatGLM3Tokenizer} from '../src/runtime/tokenizer/chatglm3-6b.js'
import {glmtool} from './helpers/cli.js'

const tmp = mkdtempSync(join(tmpdir(), 'glmtool-chat3-'))
const v3 = join(tmp, 'v3')
const v2 = join(tmp, 'v2')
let tok: ChatGLM3Tokenizer

beforeAll(async () => {
  for (const [arch, dir] of [['chatglm3-6b', v3], ['chatglm2-6b', v2]]) {
    const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', dir])
    if (r.code !== 0) throw new Error(r.stderr)
  }
  tok = await loadTokenizer(v3, 'chatglm3-6b') as ChatGLM3Tokenizer
}, 120_000)
afterAll(() => rmSync(tmp, {recursive: true, force: true}))

interface Turn {prompt: string, role: string, promptIds: number[], generatedIds: number[], decoded: string, text: string}

describe('glmtool chat on ChatGLM3-6B', () => {
  it('builds each turn as build_chat_input does, with the system prompt first and the history as process_response keeps it', () => {
    const r = glmtool(['chat', v3, '--json', '--greedy', '--max-new-tokens', '6', '--system', 'You are brief.', '--prompt', '你好', '--prompt', 'and then?'])
    expect(r.code, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout) as {architecture: string, turns: Turn[]}
    expect(out.architecture).toBe('chatglm3-6b')
    let history: ChatMessage[] = [{role: 'system', content: 'You are brief.'}]
    for (const t of out.turns) {
      expect(t.promptIds).toEqual(chatglm3PromptIds(tok, history, t.prompt, 'user'))
      expect(t.promptIds.at(-1)).toBe(tok.specials.roles.assistant)
      expect(t.decoded).toBe(tok.decode(t.generatedIds))
      // Generation stops at </s>, <|user|> or <|observation|> and never returns the stop id.
      for (const id of t.generatedIds) expect(tok.specials.stop).not.toContain(id)
      history = parseChatglm3Response(t.decoded, [...history, {role: 'user', content: t.prompt}]).history
    }
  }, 120_000)

  it('puts --tools in the system message under the published tool prompt, and takes /observation turns', () => {
    const tools = join(tmp, 'tools.json')
    const weather = {name: 'get_weather', description: 'the weather of a city', parameters: {type: 'object', properties: {city: {type: 'string'}}, required: ['city']}}
    writeFileSync(tools, JSON.stringify([weather]))
    const r = glmtool(['chat', v3, '--json', '--greedy', '--max-new-tokens', '4', '--tools', tools, '--prompt', 'weather in Beijing?'])
    expect(r.code, r.stderr).toBe(0)
    const [t] = (JSON.parse(r.stdout) as {turns: Turn[]}).turns
    const system: ChatMessage = {role: 'system', content: 'Answer the following questions as best as you can. You have access to the following tools:', tools: [weather]}
    expect(t.promptIds).toEqual(chatglm3PromptIds(tok, [system], 'weather in Beijing?', 'user'))
    // An observation with no tool call before it is refused, in plain words.
    const o = glmtool(['chat', v3, '--greedy', '--max-new-tokens', '2', '--tools', tools, '--prompt', '/observation {"temp": 3}'])
    expect(o.code).not.toBe(0)
    expect(o.stderr).toMatch(/an observation answers a tool call, and the conversation has none yet/)
  }, 120_000)

  it('turns a tool call into {name, parameters} and feeds the observation back after it', () => {
    const weather = {name: 'get_weather', parameters: {}}
    const history: ChatMessage[] = [{role: 'system', content: 'tools:', tools: [weather]}, {role: 'user', content: 'weather in Beijing?'}]
    const decoded = 'get_weather\n```python\ntool_call(city=\'北京\', days=2)\n```'
    const done = CHATGLM3_6B_CHAT.finish(decoded, '', history)
    expect(done.response).toEqual({name: 'get_weather', parameters: {city: '北京', days: 2}})
    expect(done.history.at(-1)).toEqual({role: 'assistant', metadata: 'get_weather', content: '```python\ntool_call(city=\'北京\', days=2)\n```'})
    const ids = CHATGLM3_6B_CHAT.promptIds(tok, done.history, '{"temperature": 3}', 'observation')
    expect(ids).toEqual(chatglm3PromptIds(tok, done.history, '{"temperature": 3}', 'observation'))
    expect(ids.filter(id => id === tok.specials.roles.observation)).toHaveLength(1)
    expect(ids.at(-1)).toBe(tok.specials.roles.assistant)
  })

  it('refuses --system and --tools on a model without a system role, before loading it', () => {
    const r = glmtool(['chat', v2, '--system', 'be brief', '--prompt', 'hi'])
    expect(r.code).not.toBe(0)
    expect(r.stderr).toMatch(/--system needs a model with a system role \(ChatGLM3-6B\); .* is ChatGLM2-6B/)
    expect(r.stderr).not.toMatch(/converting/)
  })
})
