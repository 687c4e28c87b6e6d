/**
 * Which generation a model is (src/models/index.ts detectArch): the real config.json and
 * tokenizer_config.json files of ../shared/real (SOURCES.txt there), the user's --arch, and the
 * note where neither file names the model. And the rounds that chat drops to fit its context.
 */
import {cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, describe, expect, it} from 'vitest'
import {detectArch} from '../src/models/index.js'
import {fitChatPrompt} from '../src/runtime/chat-prompt.js'
import {type ChatFormat, type ChatMessage, readToolsFile} from '../src/runtime/chat-template.js'
import type {ChatTokenizer} from '../src/runtime/tokenizer/index.js'
import {chatTurns} from '../src/server/openai.js'
import {glmtool} from './helpers/cli.js'

const REAL = fileURLToPath(new URL('../../shared/real', import.meta.url))
const real = (name: string) => JSON.parse(readFileSync(join(REAL, name), 'utf8')) as Record<string, unknown>
const hasReal = existsSync(join(REAL, 'chatglm3-6b_config.json'))

describe.skipIf(!hasReal)('detectArch on the real configs (../shared/real absent: skipped)', () => {
  it('names each published generation from its own config.json', () => {
    const notes: string[] = []
    const onNote = (m: string) => notes.push(m)
    expect(detectArch(real('chatglm-6b_config.json'), [], 'c', {onNote}).id).toBe('chatglm-6b')
    expect(detectArch(real('chatglm2-6b_config.json'), [], 'c', {onNote}).id).toBe('chatglm2-6b')
    expect(detectArch(real('chatglm2-6b-int4_config.json'), [], 'c', {onNote}).id).toBe('chatglm2-6b')
    expect(detectArch(real('chatglm3-6b_config.json'), [], 'c', {onNote}).id).toBe('chatglm3-6b')
    // The user-made int4 of chatglm3-6b-32k (rope_ratio 50).
    expect(detectArch(real('chatglm3-6b-int4_config.json.draco'), [], 'c', {onNote}).id).toBe('chatglm3-6b')
    expect(notes).toEqual([])
  })

  it('reads tokenizer_config.json where config.json names a local path, and says what it assumed where neither names the model', () => {
    const local = {...real('chatglm3-6b_config.json'), _name_or_path: '/home/me/models/my-finetune'}
    const notes: string[] = []
    const onNote = (m: string) => notes.push(m)
    expect(detectArch(local, [], 'x/config.json', {tokenizerConfig: real('chatglm3-6b_tokenizer_config.json'), onNote}).id).toBe('chatglm3-6b')
    expect(detectArch(local, [], 'x/config.json', {tokenizerConfig: real('chatglm2-6b_tokenizer_config.json'), onNote}).id).toBe('chatglm2-6b')
    expect(notes).toEqual([])
    expect(detectArch(local, [], 'x/config.json', {onNote}).id).toBe('chatglm2-6b')
    expect(notes).toHaveLength(1)
    expect(notes[0]).toMatch(/x\/config\.json: .*assuming chatglm2-6b \(pass --arch chatglm3-6b/)
  })

  it('takes --arch within the network config.json describes, and refuses one of the other network', () => {
    expect(detectArch(real('chatglm2-6b_config.json'), [], 'c', {override: 'chatglm3-6b'}).id).toBe('chatglm3-6b')
    expect(detectArch(real('chatglm3-6b_config.json'), [], 'c', {override: 'chatglm2-6b'}).id).toBe('chatglm2-6b')
    expect(() => detectArch(real('chatglm2-6b_config.json'), [], 'a/config.json', {override: 'chatglm-6b'}))
      .toThrow(/a\/config\.json: --arch chatglm-6b does not fit this model: its config.json describes the ChatGLM2-6B\/ChatGLM3-6B network/)
    expect(() => detectArch(real('chatglm-6b_config.json'), [], 'c', {override: 'chatglm3-6b'})).toThrow(/describes the ChatGLM-6B network/)
  })
})

describe('the CLI: synth --arch chatglm3-6b, detection on disk, --arch, the note', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'glmtool-arch-'))
  afterAll(() => rmSync(tmp, {recursive: true, force: true}))

  it('synth writes a ChatGLM3-6B that inspect and convert call chatglm3-6b; a renamed copy is assumed chatglm2-6b, saying so, unless --arch says', () => {
    const v3 = join(tmp, 'v3')
    expect(glmtool(['synth', '--arch', 'chatglm3-6b', '--size', 'tiny', '--out', v3]).code).toBe(0)
    const config = JSON.parse(readFileSync(join(v3, 'config.json'), 'utf8'))
    expect(config._name_or_path).toBe('THUDM/chatglm3-6b')
    const r = glmtool(['inspect', v3, '--json', '--no-tensors'])
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout).architecture).toBe('chatglm3-6b')
    const st = join(tmp, 'v3-st')
    const c = glmtool(['convert', v3, '--to', 'safetensors', '--out', st])
    expect(c.code, c.stderr).toBe(0)
    expect(c.stdout).toMatch(/converted chatglm3-6b/)

    // The same weights with config.json naming a local path and no tokenizer_config.json.
    const anon = join(tmp, 'anon')
    cpSync(v3, anon, {recursive: true})
    rmSync(join(anon, 'tokenizer_config.json'))
    writeFileSync(join(anon, 'config.json'), JSON.stringify({...config, _name_or_path: '/data/ckpt'}))
    const a = glmtool(['inspect', anon, '--no-tensors'])
    expect(a.code, a.stderr).toBe(0)
    expect(a.stdout + a.stderr).toMatch(/assuming chatglm2-6b \(pass --arch chatglm3-6b for ChatGLM3-6B\)/)
    const b = glmtool(['inspect', anon, '--json', '--no-tensors', '--arch', 'chatglm3-6b'])
    expect(JSON.parse(b.stdout).architecture).toBe('chatglm3-6b')
    const bad = glmtool(['inspect', anon, '--arch', 'chatglm-6b'])
    expect(bad.code).not.toBe(0)
    expect(bad.stderr).toMatch(/--arch chatglm-6b does not fit this model/)
  })
})

/** A tokenizer whose every message costs 10 ids: enough to see what fitChatPrompt keeps. */
const tenEach: ChatFormat = {
  extraRoles: ['system', 'observation'],
  promptIds: (_t, history, query) => [...history.flatMap(m => Array(10).fill(m.role.length)), ...Array(10).fill(query.length)],
  finish: (_d, s, h) => ({response: s, history: [...h]}),
}

describe('fitChatPrompt over messages', () => {
  const history: ChatMessage[] = [
    {role: 'system', content: 's'},
    {role: 'user', content: 'u1'}, {role: 'assistant', content: 'a1'},
    {role: 'user', content: 'u2'}, {role: 'assistant', metadata: 'tool', content: 'call'}, {role: 'observation', content: 'r'}, {role: 'assistant', content: 'a2'},
    {role: 'user', content: 'u3'}, {role: 'assistant', content: 'a3'},
  ]
  const tok = {} as ChatTokenizer
  it('drops whole rounds from the oldest, keeps the system message, and says how many', () => {
    expect(fitChatPrompt(tenEach, tok, 'q', history, 1000, 0).droppedTurns).toBe(0)
    // 10 messages x 10 ids = 100; 60 + reserve 5 fits the system message, round 3 and the query.
    const f = fitChatPrompt(tenEach, tok, 'q', history, 70, 5)
    expect(f.droppedTurns).toBe(2)
    expect(f.history.map(m => m.content)).toEqual(['s', 'u3', 'a3'])
    expect(f.ids).toHaveLength(40)
    // Round 2 (a tool call, its observation and the answer) goes as one.
    expect(fitChatPrompt(tenEach, tok, 'q', history, 95, 0).history.map(m => m.content)).toEqual(['s', 'u2', 'call', 'r', 'a2', 'u3', 'a3'])
    expect(() => fitChatPrompt(tenEach, tok, 'q', history, 15, 0)).toThrow(/the query alone is 20 tokens/)
  })
})

describe('the server\'s messages per chat format', () => {
  const roles: ChatFormat = {...tenEach}
  const pairs: ChatFormat = {...tenEach, extraRoles: []}
  const msgs = [{role: 'system' as const, content: 'Be brief. '}, {role: 'user' as const, content: 'hi'}, {role: 'assistant' as const, content: 'hello'}, {role: 'user' as const, content: '1+1?'}]
  it('ChatGLM3-6B keeps the system message as one; ChatGLM-6B/ChatGLM2-6B put it before the query', () => {
    expect(chatTurns(msgs, roles)).toEqual({query: '1+1?', role: 'user', history: msgs.slice(0, 3)})
    expect(chatTurns(msgs, pairs)).toEqual({query: 'Be brief. 1+1?', role: 'user', history: msgs.slice(1, 3)})
    expect(() => chatTurns([msgs[1], msgs[0], msgs[3]], roles)).toThrow(/system messages must come first/)
  })
})

describe('--tools files', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'glmtool-tools-'))
  afterAll(() => rmSync(tmp, {recursive: true, force: true}))
  const file = (name: string, text: string) => {
    writeFileSync(join(tmp, name), text)
    return join(tmp, name)
  }
  it('reads ChatGLM3 tool lists and unwraps OpenAI function tools; refuses others naming the file', async () => {
    const weather = {name: 'get_weather', description: 'weather of a city', parameters: {type: 'object', properties: {city: {type: 'string'}}}}
    expect(await readToolsFile(file('a.json', JSON.stringify([weather])))).toEqual([weather])
    expect(await readToolsFile(file('b.json', JSON.stringify([{type: 'function', function: weather}])))).toEqual([weather])
    await expect(readToolsFile(file('c.json', '{"name": "x"}'))).rejects.toThrow(/c\.json: a tools file is a non-empty JSON array/)
    await expect(readToolsFile(file('d.json', '[{"description": "no name"}]'))).rejects.toThrow(/d\.json: tool 0 has no "name"/)
    await expect(readToolsFile(file('e.json', '[1,'))).rejects.toThrow(/e\.json: invalid JSON/)
    await expect(readToolsFile(join(tmp, 'missing.json'))).rejects.toThrow(/missing\.json: cannot read the tools file \(ENOENT\)/)
  })
})
