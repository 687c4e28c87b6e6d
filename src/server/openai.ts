/**
 * The OpenAI API's request bodies as glmtool accepts them, checked field by field (a wrong field
 * is a 400 naming it, as the OpenAI API answers), and its error bodies.
 *
 * Accepted: `model` (must be the served model's id when given), `messages` (chat) or `prompt`
 * (completions), `stream`, `stream_options.include_usage`, `temperature` (0 = greedy),
 * `top_p`, `max_tokens` (or `max_completion_tokens`), `stop` (a string or up to 4), `seed`,
 * `n` (1 only). glmtool extensions: `top_k`, `repetition_penalty`, and `max_length` (prompt +
 * answer, the reference demo's "Maximum length"). Other OpenAI fields (penalties, logprobs,
 * user, ...) are accepted and ignored.
 */
import type {ChatFormat, ChatMessage} from '../runtime/chat-template.js'


export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly type = 'invalid_request_error', readonly param: string | null = null, readonly code: string | null = null) {
    super(message)
  }

  body(): {error: {message: string, type: string, param: string | null, code: string | null}} {
    return {error: {message: this.message, type: this.type, param: this.param, code: this.code}}
  }
}

export type Role = 'system' | 'user' | 'assistant'

export interface Message {
  role: Role
  content: string
}

export interface SamplingRequest {
  stream: boolean
  includeUsage: boolean
  temperature?: number
  topP?: number
  topK?: number
  repetitionPenalty?: number
  maxTokens?: number
  maxLength?: number
  stop: string[]
  seed?: number
}

export interface ChatRequest extends SamplingRequest {
  messages: Message[]
}

export interface CompletionRequest extends SamplingRequest {
  prompt: string
}

function bad(param: string, message: string): ApiError {
  return new ApiError(400, message, 'invalid_request_error', param)
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function optNumber(body: Record<string, unknown>, key: string, min: number, max: number, opts: {integer?: boolean, exclusiveMin?: boolean} = {}): number | undefined {
  const v = body[key]
  if (v === undefined || v === null) return undefined
  if (typeof v !== 'number' || !Number.isFinite(v)) throw bad(key, `${key} must be a number`)
  if (opts.integer && !Number.isInteger(v)) throw bad(key, `${key} must be an integer`)
  if (v < min || v > max || (opts.exclusiveMin && v === min)) {
    throw bad(key, `${key} must be ${opts.exclusiveMin ? 'over' : 'at least'} ${min} and at most ${max}, got ${v}`)
  }
  return v
}

/** A message's text: a string, or OpenAI's content parts of type "text". */
function contentText(v: unknown, param: string): string {
  if (typeof v === 'string') return v
  if (Array.isArray(v)) {
    return v.map((part, i) => {
      if (!isObject(part) || part.type !== 'text' || typeof part.text !== 'string') {
        throw bad(`${param}[${i}]`, `${param}[${i}] must be a text part ({"type": "text", "text": ...}); ChatGLM reads text only`)
      }
      return part.text
    }).join('')
  }
  throw bad(param, `${param} must be a string`)
}

function sampling(body: Record<string, unknown>, contextLength: number, modelId: string): SamplingRequest {
  if (body.model !== undefined && body.model !== null) {
    if (typeof body.model !== 'string') throw bad('model', 'model must be a string')
    if (body.model !== modelId) throw new ApiError(404, `The model '${body.model}' does not exist; this server serves '${modelId}'`, 'invalid_request_error', 'model', 'model_not_found')
  }
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw bad('stream', 'stream must be a boolean')
  const n = optNumber(body, 'n', 1, 1, {integer: true})
  void n
  let stop: string[] = []
  if (typeof body.stop === 'string') stop = [body.stop]
  else if (Array.isArray(body.stop)) {
    if (body.stop.length > 4 || body.stop.some(s => typeof s !== 'string')) throw bad('stop', 'stop must be a string or an array of at most 4 strings')
    stop = body.stop as string[]
  } else if (body.stop !== undefined && body.stop !== null) throw bad('stop', 'stop must be a string or an array of at most 4 strings')
  stop = stop.filter(s => s.length > 0)
  const so = body.stream_options
  if (so !== undefined && so !== null && !isObject(so)) throw bad('stream_options', 'stream_options must be an object')
  const maxTokens = optNumber(body, 'max_tokens', 1, contextLength - 1, {integer: true}) ?? optNumber(body, 'max_completion_tokens', 1, contextLength - 1, {integer: true})
  return {
    stream: body.stream === true,
    includeUsage: isObject(so) && so.include_usage === true,
    temperature: optNumber(body, 'temperature', 0, 2),
    topP: optNumber(body, 'top_p', 0, 1, {exclusiveMin: true}),
    topK: optNumber(body, 'top_k', 0, 1e6, {integer: true}),
    repetitionPenalty: optNumber(body, 'repetition_penalty', 0, 10, {exclusiveMin: true}),
    maxTokens,
    maxLength: optNumber(body, 'max_length', 2, contextLength, {integer: true}),
    stop,
    seed: optNumber(body, 'seed', -(2 ** 53), 2 ** 53, {integer: true}),
  }
}

export function parseChatRequest(body: unknown, contextLength: number, modelId: string): ChatRequest {
  if (!isObject(body)) throw bad('body', 'the request body must be a JSON object')
  const s = sampling(body, contextLength, modelId)
  const raw = body.messages
  if (!Array.isArray(raw) || raw.length === 0) throw bad('messages', 'messages must be a non-empty array')
  const messages = raw.map((m, i): Message => {
    if (!isObject(m)) throw bad(`messages[${i}]`, `messages[${i}] must be an object`)
    if (m.role !== 'system' && m.role !== 'user' && m.role !== 'assistant') {
      throw bad(`messages[${i}].role`, `messages[${i}].role must be "system", "user" or "assistant", got ${JSON.stringify(m.role)}`)
    }
    return {role: m.role, content: contentText(m.content, `messages[${i}].content`)}
  })
  const last = messages[messages.length - 1]
  if (last.role !== 'user') throw bad('messages', 'the last message must be the user\'s')
  if (last.content.trim() === '') throw bad(`messages[${messages.length - 1}].content`, 'the last user message is empty')
  return {...s, messages}
}

export function parseCompletionRequest(body: unknown, contextLength: number, modelId: string): CompletionRequest {
  if (!isObject(body)) throw bad('body', 'the request body must be a JSON object')
  const s = sampling(body, contextLength, modelId)
  let prompt = body.prompt
  if (Array.isArray(prompt) && prompt.length === 1 && typeof prompt[0] === 'string') prompt = prompt[0]
  if (typeof prompt !== 'string') throw bad('prompt', 'prompt must be a string (one prompt per request)')
  if (prompt === '') throw bad('prompt', 'prompt is empty')
  return {...s, prompt}
}

/**
 * A request's messages as a chat format's history and query. ChatGLM3-6B has a system role: the
 * messages go in as they are (THUDM's ChatGLM3 openai_api_demo). ChatGLM-6B and ChatGLM2-6B have
 * none: the system text goes in front of the query, as THUDM's openai_api.py does, and the
 * messages before the query must be user/assistant pairs.
 */
export function chatTurns(messages: readonly Message[], format: ChatFormat): {query: string, history: ChatMessage[]} {
  const rest = [...messages]
  const last = rest.pop()!
  if (format.extraRoles.includes('system')) {
    for (let i = 0; i < rest.length; i++) {
      if (rest[i].role === 'system' && rest.slice(0, i).some(m => m.role !== 'system')) throw bad(`messages[${i}].role`, 'system messages must come first')
    }
    return {query: last.content, history: rest.map(m => ({role: m.role, content: m.content}))}
  }
  let system = ''
  while (rest.length > 0 && rest[0].role === 'system') system += rest.shift()!.content
  const history: ChatMessage[] = []
  for (let i = 0; i < rest.length; i += 2) {
    const q = rest[i]
    const a = rest[i + 1]
    if (q.role !== 'user' || a?.role !== 'assistant') {
      throw bad('messages', 'after the system messages, messages must alternate user and assistant, ending with the user\'s')
    }
    history.push({role: 'user', content: q.content}, {role: 'assistant', content: a.content})
  }
  return {query: system + last.content, history}
}
