/**
 * `glmtool serve`: an OpenAI-compatible HTTP API over one loaded model, and the web chat page.
 *
 * HTTP is fastify's (routing, JSON body parsing, the body limit: 413; a malformed body: 400);
 * CORS is @fastify/cors, registered only with --cors. The page is one HTML document held in
 * memory and served at "/": there is no file-serving route, so there is no path to traverse.
 *
 * One backend runs one generation at a time: requests wait in a FIFO queue (429 with
 * Retry-After past --max-queue). A client that disconnects stops its generation within one decode
 * step (the abort signal is checked after every token; a long prompt, between its pieces) or,
 * while waiting, leaves the queue.
 */
import {timingSafeEqual} from 'node:crypto'
import type {ServerResponse} from 'node:http'
import cors from '@fastify/cors'
import Fastify, {type FastifyInstance, type FastifyReply, type FastifyRequest} from 'fastify'
import {GlmtoolError} from '../errors.js'
import type {ChatModel} from '../pipelines/chat-model.js'
import {fitChatPrompt, defaultReserve} from '../runtime/chat-prompt.js'
import type {ChatMessage} from '../runtime/chat-template.js'
import {ResponseStream} from '../runtime/chat-response.js'
import {generate, type GenerateOptions} from '../runtime/generate.js'
import {VERSION} from '../version.js'
import {type AnswerMessage, answerMessage, ApiError, chatTurns, parseChatRequest, parseCompletionRequest, type SamplingRequest} from './openai.js'
import {FifoQueue} from './queue.js'

export interface ServeOptions {
  modelId: string
  /** Generation defaults of the model's generation (the reference chat()'s). */
  defaults: {temperature: number, topP: number, maxLength: number}
  apiKey?: string
  maxQueue: number
  /** CORS origin to allow; undefined: CORS off. */
  cors?: string
  /** Seconds a request may take from arrival to its last token (queue wait included). */
  timeoutSeconds: number
  /** Largest request body in bytes. */
  bodyLimit: number
  page: string
  log?: (line: string) => void
  /** Test hook: a user query equal to this makes the backend fail after two tokens. */
  faultQuery?: string
  /** Test hook: wait this long after each token (to make an answer slow enough to stop). */
  tokenDelayMs?: number
}

type FinishReason = 'stop' | 'length' | 'tool_calls'

interface ServerJob {
  run(): Promise<void>
  /** Answer a job that will not run (shutdown, timeout) and release its handler. */
  cancel(e: ApiError): void
}

interface Run {
  generatedIds: number[]
  /** The text handed out (process_response's, cut at a stop string). */
  text: string
  /** The tokenizer's decode of generatedIds. */
  decoded: string
  finish: FinishReason
}

/** A chat turn whose answer is read for a tool call: the history process_response sees (query included). */
interface ToolTurn {
  history: ChatMessage[]
}

/** Cuts the streamed text at the first stop string, holding back what may still become one. */
class StopFilter {
  private held = ''
  stopped = false
  constructor(private readonly stops: readonly string[]) {}

  push(text: string): string {
    if (this.stopped) return ''
    if (this.stops.length === 0) return text
    const s = this.held + text
    let cut = -1
    for (const stop of this.stops) {
      const i = s.indexOf(stop)
      if (i >= 0 && (cut < 0 || i < cut)) cut = i
    }
    if (cut >= 0) {
      this.stopped = true
      this.held = ''
      return s.slice(0, cut)
    }
    // Hold back the longest tail that is a prefix of some stop string.
    let keep = 0
    for (const stop of this.stops) {
      for (let k = Math.min(stop.length - 1, s.length); k > keep; k--) {
        if (s.endsWith(stop.slice(0, k))) {
          keep = k
          break
        }
      }
    }
    this.held = s.slice(s.length - keep)
    return s.slice(0, s.length - keep)
  }

  flush(): string {
    const out = this.stopped ? '' : this.held
    this.held = ''
    return out
  }
}

function bearer(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization
  if (typeof h !== 'string') return undefined
  const m = /^Bearer\s+(.+)$/i.exec(h.trim())
  return m?.[1]
}

function sameKey(given: string | undefined, key: string): boolean {
  if (given === undefined) return false
  const a = Buffer.from(given)
  const b = Buffer.from(key)
  return a.length === b.length && timingSafeEqual(a, b)
}

function sendError(reply: FastifyReply, e: ApiError, headers: Record<string, string> = {}): FastifyReply {
  return reply.code(e.status).headers(headers).send(e.body())
}

function sse(res: ServerResponse, data: unknown): void {
  res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`)
}

let counter = 0
function newId(prefix: string): string {
  counter = (counter + 1) % 1e9
  return `${prefix}-${Date.now().toString(36)}${counter.toString(36)}`
}

export async function buildServer(model: ChatModel, opts: ServeOptions): Promise<{app: FastifyInstance, queue: FifoQueue, shutdown: (graceMs: number) => Promise<void>}> {
  const app = Fastify({bodyLimit: opts.bodyLimit, logger: false, forceCloseConnections: false})
  const queue = new FifoQueue(opts.maxQueue)
  const inflight = new Set<AbortController>()
  const tokenizer = model.tokenizer
  const backend = model.backend
  const format = model.arch.chat
  const context = Math.min(opts.defaults.maxLength, backend.maxLength)
  const log = opts.log ?? (() => {})
  let closing = false

  if (opts.cors) await app.register(cors, {origin: opts.cors})

  app.setErrorHandler((err: Error & {statusCode?: number, code?: string}, _req, reply) => {
    if (err instanceof ApiError) return sendError(reply, err)
    const status = err.statusCode ?? 500
    if (status === 413) return sendError(reply, new ApiError(413, `the request body is over the limit of ${opts.bodyLimit} bytes`, 'invalid_request_error', null, 'body_too_large'))
    if (status === 400 || status === 415) return sendError(reply, new ApiError(400, `the request body is not valid JSON (${err.message})`, 'invalid_request_error', null, 'invalid_json'))
    log(`error: ${err.message}`)
    return sendError(reply, new ApiError(500, 'internal error', 'server_error'))
  })
  app.setNotFoundHandler((req, reply) => sendError(reply, new ApiError(404, `no route ${req.method} ${req.url.split('?')[0]}`, 'invalid_request_error', null, 'not_found')))

  app.addHook('onRequest', async (req, reply) => {
    if (!opts.apiKey || !req.url.startsWith('/v1/')) return
    if (!sameKey(bearer(req), opts.apiKey)) {
      // Never echo what was sent.
      return sendError(reply, new ApiError(401, 'missing or wrong API key: send it as "Authorization: Bearer <key>"', 'invalid_request_error', null, 'invalid_api_key'))
    }
  })

  app.get('/', async (_req, reply) => reply.type('text/html; charset=utf-8').header('cache-control', 'no-store').send(opts.page))
  app.get('/health', async () => ({status: closing ? 'closing' : 'ok', model: opts.modelId, backend: backend.name, architecture: model.arch.id, queue: queue.length, busy: queue.busy, rssBytes: process.memoryUsage().rss, version: VERSION}))
  app.get('/v1/models', async () => ({object: 'list', data: [{id: opts.modelId, object: 'model', created: 0, owned_by: 'glmtool'}]}))

  /** Generation options of a request, with the model's defaults. */
  const generation = (r: SamplingRequest, maxLength: number, signal: AbortSignal): GenerateOptions => ({
    temperature: r.temperature ?? opts.defaults.temperature,
    topP: r.topP ?? opts.defaults.topP,
    topK: r.topK ?? 0,
    repetitionPenalty: r.repetitionPenalty ?? 1,
    greedy: r.temperature === 0,
    maxLength,
    maxNewTokens: r.maxTokens,
    seed: r.seed ?? Math.floor(Math.random() * 2 ** 31),
    signal,
  })

  /**
   * Queue one generation of `prompt` and answer it, streaming or whole; `kind` 'chat' answers the
   * published chat() text (process_response), 'completion' the plain decode.
   */
  const serve = async (req: FastifyRequest, reply: FastifyReply, r: SamplingRequest, kind: 'chat' | 'completion', prompt: {ids: number[], droppedTurns: number}, maxLength: number, query: string, tools?: ToolTurn): Promise<void> => {
    if (closing) return void sendError(reply, new ApiError(503, 'the server is shutting down', 'server_error', null, 'shutting_down'))
    const abort = new AbortController()
    const res = reply.raw
    const id = newId(kind === 'chat' ? 'chatcmpl' : 'cmpl')
    const created = Math.floor(Date.now() / 1000)
    let settle!: () => void
    const done = new Promise<void>(resolve => {
      settle = resolve
    })
    let finished = false
    let timedOut = false
    const finish = () => {
      finished = true
      clearTimeout(timer)
      settle()
    }
    const headers = {'x-glmtool-dropped-turns': String(prompt.droppedTurns)}
    if (prompt.droppedTurns > 0) log(`${req.url}: left out the ${prompt.droppedTurns} oldest turn(s) of the history to fit the maximum length ${maxLength}`)

    const chunk = (delta: Record<string, unknown>, finishReason: FinishReason | null) => kind === 'chat'
      ? {id, object: 'chat.completion.chunk', created, model: opts.modelId, choices: [{index: 0, delta, finish_reason: finishReason}]}
      : {id, object: 'text_completion', created, model: opts.modelId, choices: [{index: 0, text: delta.content ?? '', finish_reason: finishReason}]}

    const job: ServerJob = {
      cancel: (e: ApiError) => {
        if (finished) return
        if (!reply.sent && !res.destroyed) void sendError(reply, e, {'retry-after': '1'})
        finish()
      },
      run: async (): Promise<void> => {
        if (abort.signal.aborted || res.destroyed) return finish()
        inflight.add(abort)
        const t0 = performance.now()
        try {
          if (r.stream) {
            reply.hijack()
            res.writeHead(200, {'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', ...headers, ...corsHeaders(req)})
            if (kind === 'chat') sse(res, chunk({role: 'assistant', content: ''}, null))
          }
          const out = await runGeneration(prompt.ids, r, maxLength, kind, abort, query, text => {
            if (r.stream && text && !res.destroyed) sse(res, chunk({content: text}, null))
          })
          if (timedOut) out.finish = 'length'
          // With tools offered, the published process_response reads the answer for a tool call.
          const answer = tools ? answerMessage(format.finish(out.decoded, out.text, tools.history).response, out.text, () => newId('call')) : undefined
          const message: AnswerMessage = answer?.message ?? {role: 'assistant', content: out.text}
          if (answer?.toolCall) out.finish = 'tool_calls'
          if (answer?.toolCallError) log(`${req.url}: the answer's tool call is not one glmtool reads (${answer.toolCallError}); answered as text`)
          const promptTokens = prompt.ids.length
          const usage = {prompt_tokens: promptTokens, completion_tokens: out.generatedIds.length, total_tokens: promptTokens + out.generatedIds.length}
          const extra = {prompt_ids: prompt.ids, generated_ids: out.generatedIds, dropped_turns: prompt.droppedTurns, ...(answer?.toolCallError ? {tool_call_error: answer.toolCallError} : {})}
          if (r.stream) {
            if (!res.destroyed) {
              // The tool call goes out whole, in one delta, once the answer is complete (its
              // arguments are known only when the call's closing bracket has been read).
              if (message.tool_calls) sse(res, chunk({tool_calls: message.tool_calls.map((c, index) => ({index, ...c}))}, null))
              const more = message.content?.slice(out.text.length)
              if (more) sse(res, chunk({content: more}, null))
              sse(res, {...chunk({}, out.finish), glmtool: extra})
              if (r.includeUsage) sse(res, {...chunk({}, null), choices: [], usage})
              sse(res, '[DONE]')
              res.end()
            }
          } else if (!res.destroyed) {
            const choice = kind === 'chat'
              ? {index: 0, message, finish_reason: out.finish}
              : {index: 0, text: out.text, finish_reason: out.finish, logprobs: null}
            await reply.code(200).headers(headers).send({id, object: kind === 'chat' ? 'chat.completion' : 'text_completion', created, model: opts.modelId, choices: [choice], usage, glmtool: extra})
          }
          const note = res.destroyed ? ' (client left)' : timedOut ? ` (timed out after ${opts.timeoutSeconds} s)` : ''
          log(`${req.method} ${req.url} 200: ${promptTokens} prompt + ${out.generatedIds.length} tokens in ${((performance.now() - t0) / 1000).toFixed(2)} s${note}`)
        } catch (error) {
          const message = error instanceof GlmtoolError ? error.message : 'the model failed while answering'
          log(`${req.method} ${req.url}: ${(error as Error).message}`)
          const e = new ApiError(500, message, 'server_error', null, 'generation_failed')
          if (r.stream && reply.sent) {
            // The stream has begun: end it with an error event; the server goes on serving.
            if (!res.destroyed) {
              sse(res, e.body())
              sse(res, '[DONE]')
              res.end()
            }
          } else if (!reply.sent) {
            await sendError(reply, e)
          }
        } finally {
          inflight.delete(abort)
          finish()
        }
      },
    }
    const timer = setTimeout(() => {
      timedOut = true
      abort.abort()
      if (queue.remove(job)) job.cancel(new ApiError(503, `timed out after ${opts.timeoutSeconds} s waiting for the model`, 'server_error', null, 'timeout'))
    }, opts.timeoutSeconds * 1000)
    timer.unref()
    // A client that leaves stops its generation at the next token, or leaves the queue.
    res.on('close', () => {
      if (finished) return
      abort.abort()
      if (queue.remove(job)) {
        log(`${req.method} ${req.url}: client left while queued`)
        finish()
      }
    })
    if (!queue.push(job)) {
      finish()
      const retry = String(Math.max(1, queue.length))
      return void sendError(reply, new ApiError(429, `the server is busy: ${queue.length} request(s) are waiting (--max-queue ${opts.maxQueue}); retry later`, 'rate_limit_error', null, 'queue_full'), {'retry-after': retry})
    }
    // The handler stays pending until the job has answered, so fastify does not reply meanwhile.
    await done
  }

  // A hijacked (streaming) response bypasses fastify's hooks, so @fastify/cors cannot add its
  // header there: the same header, set by hand.
  const corsHeaders = (req: FastifyRequest): Record<string, string> => {
    if (!opts.cors || req.headers.origin === undefined) return {}
    return {'access-control-allow-origin': opts.cors, vary: 'Origin'}
  }

  const runGeneration = async (ids: number[], r: SamplingRequest, maxLength: number, kind: 'chat' | 'completion', abort: AbortController, query: string, emit: (text: string) => void): Promise<Run> => {
    const response = kind === 'chat' ? new ResponseStream(tokenizer.responseStyle) : undefined
    const stops = new StopFilter(r.stop)
    let text = ''
    const out = (s: string) => {
      if (!s) return
      text += s
      emit(s)
    }
    const put = (t: string) => {
      out(stops.push(t))
      if (stops.stopped) abort.abort()
    }
    let tokens = 0
    const result = await generate(backend, tokenizer, ids, generation(r, maxLength, abort.signal), piece => {
      if (opts.faultQuery !== undefined && query === opts.faultQuery && ++tokens > 2) throw new GlmtoolError('test-fault', 'injected backend fault (GLMTOOL_TEST_FAULT_QUERY)')
      put(response ? response.push(piece) : piece)
    }, opts.tokenDelayMs ? () => new Promise(resolve => setTimeout(resolve, opts.tokenDelayMs)) : undefined)
    if (response) put(response.flush())
    out(stops.flush())
    // 'length' when a limit ended it; a stop token, a stop string or the client ending it is 'stop'.
    const limited = result.stoppedBy === 'max-length' || result.stoppedBy === 'max-new-tokens'
    return {generatedIds: result.generatedIds, text, decoded: result.text, finish: limited && !stops.stopped ? 'length' : 'stop'}
  }

  app.post('/v1/chat/completions', async (req, reply) => {
    const r = parseChatRequest(req.body, context, opts.modelId)
    const maxLength = Math.min(r.maxLength ?? context, context)
    if (r.tools && !format.extraRoles.includes('observation')) {
      throw new ApiError(400, `${model.arch.displayName} has no tool format: tools need ChatGLM3-6B`, 'invalid_request_error', 'tools', 'tools_not_supported')
    }
    const {query, role, history} = chatTurns(r.messages, format, {offered: r.offerTools ? r.tools : undefined, model: model.arch.displayName})
    let fitted
    try {
      fitted = fitChatPrompt(format, tokenizer, query, history, maxLength, defaultReserve(maxLength, r.maxTokens), role)
    } catch (error) {
      // A conversation the format cannot hold (a tool result with no tool call before it), or one too long.
      if (error instanceof GlmtoolError && error.code === 'chat-format') throw new ApiError(400, error.message, 'invalid_request_error', 'messages', 'invalid_conversation')
      throw new ApiError(400, (error as Error).message, 'invalid_request_error', 'messages', 'context_length_exceeded')
    }
    const tools = r.offerTools ? {history: [...fitted.history, {role, content: query}]} : undefined
    await serve(req, reply, r, 'chat', fitted, maxLength, query, tools)
  })

  app.post('/v1/completions', async (req, reply) => {
    const r = parseCompletionRequest(req.body, context, opts.modelId)
    const maxLength = Math.min(r.maxLength ?? context, context)
    const ids = tokenizer.encodePrompt(r.prompt)
    if (ids.length >= maxLength) throw new ApiError(400, `the prompt is ${ids.length} tokens, at or over the maximum length ${maxLength}`, 'invalid_request_error', 'prompt', 'context_length_exceeded')
    await serve(req, reply, r, 'completion', {ids, droppedTurns: 0}, maxLength, r.prompt)
  })

  /** Stop taking requests; let running ones finish for graceMs, then stop them; answer the waiting. */
  const shutdown = async (graceMs: number): Promise<void> => {
    closing = true
    for (const job of queue.drain()) (job as ServerJob).cancel(new ApiError(503, 'the server is shutting down', 'server_error', null, 'shutting_down'))
    const grace = setTimeout(() => {
      for (const a of inflight) a.abort()
    }, graceMs)
    grace.unref()
    await queue.idle()
    clearTimeout(grace)
    await app.close()
  }

  return {app, queue, shutdown}
}
