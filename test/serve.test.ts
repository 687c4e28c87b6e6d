/**
 * `glmtool serve` against real clients on loopback: the official `openai` npm client and curl
 * get the same answers as `glmtool chat --json` (greedy, id for id); bad requests get OpenAI-style
 * errors with the right status; the queue, disconnects, a failing backend and SIGTERM behave; 16
 * concurrent streams each get their own solo answer. Every loop is bounded in count and time, and
 * only 127.0.0.1 is ever contacted.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import {connect} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import OpenAI from 'openai'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {chatPromptV1, chatPromptV2} from '../src/runtime/chat-template.js'
import {loadTokenizer} from '../src/runtime/tokenizer/index.js'
import {glmtool} from './helpers/cli.js'
import {readEvents, type RunningServer, startServer} from './helpers/serve.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-serve-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const haveCurl = spawnSync('curl', ['--version'], {stdio: 'ignore'}).status === 0

const made = new Map<string, string>()
function makeModel(arch: 'chatglm-6b' | 'chatglm2-6b'): string {
  const done = made.get(arch)
  if (done) return done
  const torch = join(work, `${arch}-torch`)
  const onnx = join(work, arch)
  made.set(arch, onnx)
  for (const args of [['synth', '--arch', arch, '--size', 'tiny', '--out', torch, '--seed', '11'], ['convert', torch, '--to', 'onnx', '--out', onnx]]) {
    const r = glmtool(args)
    if (r.code !== 0) throw new Error(r.stderr)
  }
  return onnx
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {method: 'POST', headers: {'content-type': 'application/json', ...headers}, body: typeof body === 'string' ? body : JSON.stringify(body)})
}

describe.each(['chatglm-6b', 'chatglm2-6b'] as const)('glmtool serve %s with the official openai client', (arch) => {
  let model: string
  let server: RunningServer
  let client: OpenAI
  beforeAll(async () => {
    model = makeModel(arch)
    server = await startServer(model)
    client = new OpenAI({baseURL: `${server.url}/v1`, apiKey: 'unused'})
  })
  afterAll(async () => {
    expect(await server.stop()).toBe(0)
  })

  it('answers as glmtool chat --json does, greedy, id for id, streaming and not', async () => {
    const solo = glmtool(['chat', model, '--prompt', '你好', '--greedy', '--max-new-tokens', '12', '--json'])
    expect(solo.code, solo.stderr).toBe(0)
    const turn = JSON.parse(solo.stdout).turns[0]
    const r = await client.chat.completions.create({model: 'ignored-by-check', messages: [{role: 'user', content: '你好'}], temperature: 0, max_tokens: 12} as never).catch(e => e)
    // The model id must be the served one: a wrong id is a 404, as OpenAI answers.
    expect(r).toBeInstanceOf(OpenAI.NotFoundError)
    const models = await client.models.list()
    const id = models.data[0].id
    const whole = await client.chat.completions.create({model: id, messages: [{role: 'user', content: '你好'}], temperature: 0, max_tokens: 12})
    const ext = (whole as unknown as {glmtool: {prompt_ids: number[], generated_ids: number[]}}).glmtool
    expect(ext.prompt_ids).toEqual(turn.promptIds)
    expect(ext.generated_ids).toEqual(turn.generatedIds)
    expect(whole.choices[0].message.content).toBe(turn.text)
    expect(whole.usage).toEqual({prompt_tokens: turn.promptIds.length, completion_tokens: turn.generatedIds.length, total_tokens: turn.promptIds.length + turn.generatedIds.length})
    const stream = await client.chat.completions.create({model: id, messages: [{role: 'user', content: '你好'}], temperature: 0, max_tokens: 12, stream: true, stream_options: {include_usage: true}})
    let text = ''
    let finish: string | null = null
    let usage: unknown
    for await (const c of stream) {
      if (c.choices[0]?.delta?.content) text += c.choices[0].delta.content
      if (c.choices[0]?.finish_reason) finish = c.choices[0].finish_reason
      if (c.usage) usage = c.usage
    }
    expect(text).toBe(turn.text)
    expect(finish).toBe(whole.choices[0].finish_reason)
    expect(usage).toEqual(whole.usage)
  })

  it('maps system and history onto the generation\'s template, as the published openai_api.py does', async () => {
    const tok = await loadTokenizer(model, arch)
    const messages = [
      {role: 'system', content: 'Be brief. '}, {role: 'user', content: 'hi'}, {role: 'assistant', content: 'hello!'}, {role: 'user', content: '1+1?'},
    ] as const
    const r = await client.chat.completions.create({model: (await client.models.list()).data[0].id, messages: [...messages], temperature: 0, max_tokens: 4})
    const ext = (r as unknown as {glmtool: {prompt_ids: number[]}}).glmtool
    expect(ext.prompt_ids).toEqual(tok.encodePrompt((arch === 'chatglm-6b' ? chatPromptV1 : chatPromptV2)('Be brief. 1+1?', [['hi', 'hello!']])))
  })

  it('serves raw completions, /v1/models, /health and the page', async () => {
    const tok = await loadTokenizer(model, arch)
    const c = await client.completions.create({model: (await client.models.list()).data[0].id, prompt: 'The answer is', temperature: 0, max_tokens: 5})
    expect((c as unknown as {glmtool: {prompt_ids: number[]}}).glmtool.prompt_ids).toEqual(tok.encodePrompt('The answer is'))
    expect(c.choices[0].text).toBe(tok.decode((c as unknown as {glmtool: {generated_ids: number[]}}).glmtool.generated_ids))
    const health = await (await fetch(`${server.url}/health`)).json()
    expect(health).toMatchObject({status: 'ok', architecture: arch, backend: 'onnx-cpu'})
    const page = await (await fetch(`${server.url}/`)).text()
    expect(page).toContain('<title>glmtool chat</title>')
    expect(page).not.toContain('/*GLMTOOL_CONFIG*/')
  })

  it.skipIf(!haveCurl)('answers curl the same way', async () => {
    const body = JSON.stringify({messages: [{role: 'user', content: '你好'}], temperature: 0, max_tokens: 12})
    const r = spawnSync('curl', ['-s', '-H', 'content-type: application/json', '-d', body, `${server.url}/v1/chat/completions`], {encoding: 'utf8'})
    const viaFetch = await (await post(`${server.url}/v1/chat/completions`, body)).json()
    expect(JSON.parse(r.stdout).glmtool.generated_ids).toEqual(viaFetch.glmtool.generated_ids)
  })
})

describe('glmtool serve: bad input, limits, faults and load (chatglm2-6b)', () => {
  let model: string
  let server: RunningServer
  beforeAll(async () => {
    model = makeModel('chatglm2-6b')
    server = await startServer(model, ['--max-queue', '2', '--max-body', '4096'], {GLMTOOL_TEST_FAULT_QUERY: '__fault__'})
  })
  afterAll(async () => {
    await server.stop()
  })

  const chat = (body: unknown, headers?: Record<string, string>) => post(`${server.url}/v1/chat/completions`, body, headers)
  const user = (content: unknown) => ({messages: [{role: 'user', content}]})

  it('gives OpenAI-style errors with the right status, and keeps serving', async () => {
    const cases: [unknown, number, RegExp][] = [
      ['{not json', 400, /not valid JSON/],
      [[1, 2], 400, /must be a JSON object/],
      [{messages: []}, 400, /non-empty array/],
      [{messages: [{role: 'robot', content: 'x'}]}, 400, /role must be/],
      [{...user('hi'), temperature: 'hot'}, 400, /temperature must be a number/],
      [{...user('hi'), max_tokens: 0}, 400, /max_tokens must be at least 1/],
      [{...user('hi'), max_tokens: 1e9}, 400, /max_tokens must be at least 1 and at most/],
      [{...user('hi'), n: 2}, 400, /n must be/],
      [{...user('   ')}, 400, /last user message is empty/],
      [{messages: [{role: 'assistant', content: 'x'}]}, 400, /last message must be the user's/],
      [{...user('hi'), model: 'gpt-4'}, 404, /does not exist/],
      [{...user('x'.repeat(5000))}, 413, /over the limit of 4096 bytes/],
    ]
    for (const [body, status, message] of cases) {
      const r = await chat(body)
      const j = await r.json()
      expect([r.status, j.error?.message], JSON.stringify(body).slice(0, 80)).toEqual([status, expect.stringMatching(message)])
      expect(typeof j.error.type).toBe('string')
    }
    const nf = await fetch(`${server.url}/v1/nope`)
    expect(nf.status).toBe(404)
    const traversal = await fetch(`${server.url}/../../etc/passwd`)
    expect(traversal.status).toBe(404)
    expect((await chat({...user('hi'), max_tokens: 2})).status).toBe(200)
  })

  it('drops the oldest turns when history and query exceed the context, says so, and errs only on a query too long alone', async () => {
    const long = 'history '.repeat(20)
    const messages = []
    for (let i = 0; i < 6; i++) messages.push({role: 'user', content: `${long}${i}`}, {role: 'assistant', content: long})
    messages.push({role: 'user', content: 'now?'})
    const r = await chat({messages, max_tokens: 4, max_length: 200, temperature: 0})
    expect(r.status).toBe(200)
    const j = await r.json()
    expect(j.glmtool.dropped_turns).toBeGreaterThan(0)
    expect(j.glmtool.dropped_turns).toBeLessThan(6)
    expect(r.headers.get('x-glmtool-dropped-turns')).toBe(String(j.glmtool.dropped_turns))
    expect(j.usage.prompt_tokens + 4).toBeLessThanOrEqual(200)
    expect(server.log()).toContain(`left out the ${j.glmtool.dropped_turns} oldest turn(s)`)
    const alone = await chat({...user('word '.repeat(300)), max_length: 200})
    expect(alone.status).toBe(400)
    expect((await alone.json()).error.code).toBe('context_length_exceeded')
  })

  it('a stream whose backend fails ends with an error event, and the next request is served', async () => {
    const r = await chat({...user('__fault__'), stream: true, max_tokens: 20, temperature: 0})
    const events = await readEvents(r)
    expect(events.at(-1)).toBe('[DONE]')
    expect(JSON.parse(events.at(-2)!).error.message).toContain('injected backend fault')
    expect((await chat({...user('hi'), max_tokens: 2})).status).toBe(200)
  })

  it('queues FIFO, answers 429 with Retry-After past --max-queue, and drops a queued request whose client left', async () => {
    const slow = await startServer(model, ['--max-queue', '1'], {GLMTOOL_TEST_TOKEN_DELAY_MS: '40'})
    try {
      const long = post(`${slow.url}/v1/chat/completions`, {...user('long'), max_tokens: 40, temperature: 0})
      await new Promise(r => setTimeout(r, 300))
      const gone = new AbortController()
      const queued = fetch(`${slow.url}/v1/chat/completions`, {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({...user('queued'), max_tokens: 40}), signal: gone.signal}).catch(e => e)
      await new Promise(r => setTimeout(r, 200))
      const over = await post(`${slow.url}/v1/chat/completions`, {...user('over'), max_tokens: 2})
      expect(over.status).toBe(429)
      expect(Number(over.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
      gone.abort()
      expect(await queued).toBeInstanceOf(Error)
      expect((await long).status).toBe(200)
      const after = await post(`${slow.url}/v1/chat/completions`, {...user('after'), max_tokens: 2})
      expect(after.status).toBe(200)
    } finally {
      expect(await slow.stop()).toBe(0)
    }
    expect(slow.log()).toContain('client left while queued')
    // The dropped request never ran: only two answers were logged.
    expect(slow.log().match(/ 200: /g)).toHaveLength(2)
  })

  it('bounds a request by --timeout: a slow answer ends with finish_reason length', async () => {
    const slow = await startServer(model, ['--timeout', '1'], {GLMTOOL_TEST_TOKEN_DELAY_MS: '50'})
    try {
      const t0 = Date.now()
      const r = await post(`${slow.url}/v1/chat/completions`, {...user('slow'), max_tokens: 200, temperature: 0})
      const j = await r.json()
      expect([r.status, j.choices[0].finish_reason]).toEqual([200, 'length'])
      expect(j.usage.completion_tokens).toBeLessThan(200)
      expect(Date.now() - t0).toBeLessThan(8000)
    } finally {
      await slow.stop()
    }
    expect(slow.log()).toContain('timed out after 1 s')
  })

  it('stops a stream within a step when its client disconnects, and frees the backend', async () => {
    const slow = await startServer(model, [], {GLMTOOL_TEST_TOKEN_DELAY_MS: '30'})
    try {
      const ctl = new AbortController()
      const r = await fetch(`${slow.url}/v1/chat/completions`, {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({...user('go'), stream: true, max_tokens: 200}), signal: ctl.signal})
      const reader = r.body!.getReader()
      await reader.read()
      await reader.read()
      ctl.abort()
      const t0 = Date.now()
      // The next request runs as soon as the abandoned one stopped: well before its 200 tokens.
      const next = await post(`${slow.url}/v1/chat/completions`, {...user('next'), max_tokens: 2})
      expect(next.status).toBe(200)
      expect(Date.now() - t0).toBeLessThan(200 * 30)
      expect(slow.log()).toMatch(/ 200: \d+ prompt \+ \d+ tokens .*\(client left\)/)
      const left = /(\d+) tokens in [\d.]+ s \(client left\)/.exec(slow.log())
      expect(Number(left![1])).toBeLessThan(200)
    } finally {
      await slow.stop()
    }
  })

  it('survives half-sent bodies and slow readers', async () => {
    // Half a body, then the connection closes.
    await new Promise<void>((resolve) => {
      const s = connect(Number(new URL(server.url).port), '127.0.0.1', () => {
        s.write('POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{"messages": [')
        setTimeout(() => {
          s.destroy()
          resolve()
        }, 100)
      })
    })
    // A reader that waits before reading its stream still gets all of it.
    const r = await chat({...user('slow reader'), stream: true, max_tokens: 8, temperature: 0})
    await new Promise(res => setTimeout(res, 500))
    const events = await readEvents(r)
    expect(events.at(-1)).toBe('[DONE]')
    expect((await chat({...user('hi'), max_tokens: 2})).status).toBe(200)
  })

  it('16 concurrent streams each get their own solo answer; 300 sequential requests; bounded memory', async () => {
    const big = await startServer(model, ['--max-queue', '16'])
    const chat = (body: unknown) => post(`${big.url}/v1/chat/completions`, body)
    const server = big
    const prompts = Array.from({length: 16}, (_, i) => `question ${i}: ${'为什么'.repeat(i % 4)}`)
    const solo = [] as string[]
    for (const p of prompts) solo.push((await (await chat({...user(p), max_tokens: 8, temperature: 0})).json()).choices[0].message.content)
    const streamed = await Promise.all(prompts.map(async p => {
      const events = await readEvents(await chat({...user(p), max_tokens: 8, temperature: 0, stream: true}))
      expect(events.at(-1)).toBe('[DONE]')
      return events.slice(0, -1).map(e => JSON.parse(e).choices[0]?.delta?.content ?? '').join('')
    }))
    expect(streamed).toEqual(solo)
    const rss0 = (await (await fetch(`${server.url}/health`)).json()).rssBytes
    const t0 = Date.now()
    for (let i = 0; i < 300 && Date.now() - t0 < 90_000; i++) {
      const r = await chat({...user(`n${i % 7}`), max_tokens: 2, temperature: 0})
      expect(r.status).toBe(200)
      await r.arrayBuffer()
    }
    const rss1 = (await (await fetch(`${server.url}/health`)).json()).rssBytes
    expect(rss1 - rss0).toBeLessThan(50e6)
    expect(await big.stop()).toBe(0)
  })

  it('with --api-key needs the key on /v1/ and never echoes it; SIGTERM lets a running stream end cleanly and exits 0', async () => {
    const keyed = await startServer(model, ['--api-key', 'sekret-123'], {GLMTOOL_TEST_TOKEN_DELAY_MS: '20'})
    const url = `${keyed.url}/v1/chat/completions`
    const no = await post(url, user('hi'))
    expect(no.status).toBe(401)
    const wrong = await post(url, user('hi'), {authorization: 'Bearer guess-456'})
    const text = await wrong.text()
    expect(wrong.status).toBe(401)
    expect(text).not.toContain('guess-456')
    expect(text).not.toContain('sekret-123')
    const streaming = post(url, {...user('hi'), stream: true, max_tokens: 30, temperature: 0}, {authorization: 'Bearer sekret-123'})
    const r = await streaming
    expect(r.status).toBe(200)
    const events = readEvents(r)
    await new Promise(res => setTimeout(res, 100))
    const code = keyed.stop()
    const got = await events
    expect(got.at(-1)).toBe('[DONE]')
    expect(JSON.parse(got.at(-2)!).choices[0].finish_reason).toBeTruthy()
    expect(await code).toBe(0)
  })
})

describe('the serve queue', () => {
  it('runs jobs one at a time in arrival order', async () => {
    const {FifoQueue} = await import('../src/server/queue.js')
    const q = new FifoQueue(8)
    const order: number[] = []
    let running = 0
    let most = 0
    for (let i = 0; i < 6; i++) {
      expect(q.push({run: async () => {
        running++
        most = Math.max(most, running)
        await new Promise(r => setTimeout(r, 5 * (6 - i)))
        order.push(i)
        running--
      }})).toBe(true)
    }
    await q.idle()
    expect([order, most]).toEqual([[0, 1, 2, 3, 4, 5], 1])
  })
})
