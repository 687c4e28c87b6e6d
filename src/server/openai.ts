/**
 * The OpenAI API's request bodies as glmtool accepts them, checked field by field (a wrong field
 * is a 400 naming it, as the OpenAI API answers), and its error bodies.
 *
 * Accepted: `model` (must be the served model's id when given), `messages` (chat) or `prompt`
 * (completions), `stream`, `stream_options.include_usage`, `temperature` (0 = greedy),
 * `top_p`, `max_tokens` (or `max_completion_tokens`), `stop` (a string or up to 4), `seed`,
 * `n` (1 only). glmtool extensions: `top_k`, `repetition_penalty`, and `max_length` (prompt +
 * answer, the reference demo's "Maximum length"). Other OpenAI fields (penalties, logprobs,
 * user, parallel_tool_calls, ...) are accepted and ignored.
 *
 * Tools (ChatGLM3-6B only; the other generations have no tool format, so `tools` is a 400 there):
 * `tools` ([{type: "function", function: {name, description?, parameters?}}]) go into the system
 * message as the published tool list (the function descriptions, as `glmtool chat --tools`
 * puts them; under the request's first system message, or the published tool prompt when there
 * is none); `tool_choice` "auto" (or absent) offers them, "none" leaves them out; "required" and
 * a forced function are refused (400: ChatGLM3 chooses for itself). In the history, an assistant
 * message's `tool_calls` become ChatGLM3's assistant turns with the function name as metadata and
 * the ```python tool_call(...)``` block as content, and `role: "tool"` messages its observations.
 */
import {isToolCallKeyword, type ToolCall, toolCallContent} from '../runtime/chatglm3-chat.js'
import {type ChatAnswer, type ChatFormat, type ChatMessage, type Role as ChatRole, systemMessage} from '../runtime/chat-template.js'

export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly type = 'invalid_request_error', readonly param: string | null = null, readonly code: string | null = null) {
    super(message)
  }

  body(): {error: {message: string, type: string, param: string | null, code: string | null}} {
    return {error: {message: this.message, type: this.type, param: this.param, code: this.code}}
  }
}

export type Role = 'system' | 'user' | 'assistant' | 'tool'

/** A function call of an assistant message in the history (OpenAI's `tool_calls` entry). */
export interface RequestToolCall {
  id: string
  name: string
  /** The `arguments` JSON, parsed: an object whose keys are Python keyword names. */
  arguments: Record<string, unknown>
}

export interface Message {
  role: Role
  content: string
  /** assistant: the calls it made. */
  toolCalls?: RequestToolCall[]
  /** tool: the call it answers. */
  toolCallId?: string
}

/** A tool offered in the request: the function description, as the client sent it. */
export type ToolFunction = Record<string, unknown> & {name: string}

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
  /** The request's tools, validated; undefined when it sends none. */
  tools?: ToolFunction[]
  /** Whether the tools go into the prompt (tool_choice "auto" or absent; not "none"). */
  offerTools: boolean
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

/** OpenAI's rule for function names. */
const FUNCTION_NAME = /^[a-zA-Z0-9_-]{1,64}$/

/** `tools`: type "function" entries, names unique, parameters a JSON Schema of type "object". */
export function parseTools(v: unknown): ToolFunction[] | undefined {
  if (v === undefined || v === null) return undefined
  if (!Array.isArray(v) || v.length === 0) throw bad('tools', 'tools must be a non-empty array of {"type": "function", "function": {...}}')
  const names = new Set<string>()
  return v.map((t, i): ToolFunction => {
    const at = `tools[${i}]`
    if (!isObject(t)) throw bad(at, `${at} must be an object`)
    if (t.type !== 'function') throw bad(`${at}.type`, `${at}.type must be "function", got ${JSON.stringify(t.type)}`)
    const f = t.function
    if (!isObject(f)) throw bad(`${at}.function`, `${at}.function must be an object ({name, description, parameters})`)
    if (typeof f.name !== 'string' || !FUNCTION_NAME.test(f.name)) {
      throw bad(`${at}.function.name`, `${at}.function.name must be 1 to 64 letters, digits, _ or -, got ${JSON.stringify(f.name)}`)
    }
    if (names.has(f.name)) throw bad(`${at}.function.name`, `${at}.function.name ${JSON.stringify(f.name)} is given twice`)
    names.add(f.name)
    if (f.description !== undefined && typeof f.description !== 'string') throw bad(`${at}.function.description`, `${at}.function.description must be a string`)
    const p = f.parameters
    if (p !== undefined) {
      if (!isObject(p) || p.type !== 'object') throw bad(`${at}.function.parameters`, `${at}.function.parameters must be a JSON Schema object ({"type": "object", "properties": {...}})`)
      if (p.properties !== undefined && !isObject(p.properties)) throw bad(`${at}.function.parameters`, `${at}.function.parameters.properties must be an object`)
      if (p.required !== undefined && (!Array.isArray(p.required) || p.required.some(r => typeof r !== 'string'))) {
        throw bad(`${at}.function.parameters`, `${at}.function.parameters.required must be an array of property names`)
      }
    }
    return f as ToolFunction
  })
}

/** tool_choice: whether the tools are offered. "required" and a named function are not supported. */
function offersTools(v: unknown): boolean {
  if (v === undefined || v === null || v === 'auto') return true
  if (v === 'none') return false
  if (v === 'required' || isObject(v)) {
    throw new ApiError(400, `tool_choice ${JSON.stringify(v)} is not supported: ChatGLM3-6B decides for itself whether to call a tool; send "auto" or "none"`, 'invalid_request_error', 'tool_choice', 'unsupported_tool_choice')
  }
  throw bad('tool_choice', `tool_choice must be "auto" or "none", got ${JSON.stringify(v)}`)
}

/** An assistant message's tool_calls: function calls whose arguments are a JSON object. */
function parseToolCalls(v: unknown, param: string): RequestToolCall[] {
  if (!Array.isArray(v)) throw bad(param, `${param} must be an array`)
  return v.map((c, j) => {
    const at = `${param}[${j}]`
    if (!isObject(c) || c.type !== 'function' || !isObject(c.function)) throw bad(at, `${at} must be {"id", "type": "function", "function": {"name", "arguments"}}`)
    if (typeof c.id !== 'string') throw bad(`${at}.id`, `${at}.id must be a string`)
    const {name, arguments: text} = c.function
    if (typeof name !== 'string' || !FUNCTION_NAME.test(name)) throw bad(`${at}.function.name`, `${at}.function.name must be 1 to 64 letters, digits, _ or -`)
    if (typeof text !== 'string') throw bad(`${at}.function.arguments`, `${at}.function.arguments must be a JSON string`)
    let args: unknown
    try {
      args = JSON.parse(text)
    } catch (error) {
      throw bad(`${at}.function.arguments`, `${at}.function.arguments is not valid JSON (${(error as Error).message})`)
    }
    if (!isObject(args)) throw bad(`${at}.function.arguments`, `${at}.function.arguments must be a JSON object`)
    for (const k of Object.keys(args)) {
      if (!isToolCallKeyword(k)) throw bad(`${at}.function.arguments`, `${at}.function.arguments has the key ${JSON.stringify(k)}, which cannot be a keyword argument of ChatGLM3's tool_call(...) (a Python name that is no keyword)`)
    }
    return {id: c.id, name, arguments: args}
  })
}

export function parseChatRequest(body: unknown, contextLength: number, modelId: string): ChatRequest {
  if (!isObject(body)) throw bad('body', 'the request body must be a JSON object')
  const s = sampling(body, contextLength, modelId)
  for (const old of ['functions', 'function_call'] as const) {
    if (body[old] !== undefined && body[old] !== null) throw bad(old, `${old} is the deprecated form of tools; send tools (and tool_choice)`)
  }
  const tools = parseTools(body.tools)
  const offerTools = offersTools(body.tool_choice) && tools !== undefined
  if (tools === undefined && body.tool_choice !== undefined && body.tool_choice !== null && body.tool_choice !== 'none') {
    throw bad('tool_choice', 'tool_choice needs tools')
  }
  const raw = body.messages
  if (!Array.isArray(raw) || raw.length === 0) throw bad('messages', 'messages must be a non-empty array')
  const messages = raw.map((m, i): Message => {
    if (!isObject(m)) throw bad(`messages[${i}]`, `messages[${i}] must be an object`)
    if (m.role !== 'system' && m.role !== 'user' && m.role !== 'assistant' && m.role !== 'tool') {
      throw bad(`messages[${i}].role`, `messages[${i}].role must be "system", "user", "assistant" or "tool", got ${JSON.stringify(m.role)}`)
    }
    if (m.role === 'assistant' && m.tool_calls !== undefined && m.tool_calls !== null) {
      const toolCalls = parseToolCalls(m.tool_calls, `messages[${i}].tool_calls`)
      return {role: 'assistant', content: m.content === undefined || m.content === null ? '' : contentText(m.content, `messages[${i}].content`), toolCalls}
    }
    if (m.role === 'tool') {
      if (typeof m.tool_call_id !== 'string') throw bad(`messages[${i}].tool_call_id`, `messages[${i}].tool_call_id must be a string (the id of the call it answers)`)
      return {role: 'tool', content: contentText(m.content, `messages[${i}].content`), toolCallId: m.tool_call_id}
    }
    return {role: m.role, content: contentText(m.content, `messages[${i}].content`)}
  })
  const last = messages[messages.length - 1]
  if (last.role !== 'user' && last.role !== 'tool') throw bad('messages', 'the last message must be the user\'s (or a tool\'s result)')
  if (last.role === 'user' && last.content.trim() === '') throw bad(`messages[${messages.length - 1}].content`, 'the last user message is empty')
  return {...s, messages, tools, offerTools}
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
 * A request's messages as a chat format's history and query (and the query's role). ChatGLM3-6B
 * has a system role: the messages go in as they are (THUDM's ChatGLM3 openai_api_demo), with the
 * offered tools in the first system message, tool calls as assistant turns and tool results as
 * observations (see the header). ChatGLM-6B and ChatGLM2-6B have none: the system text goes in
 * front of the query, as THUDM's openai_api.py does, the messages before the query must be
 * user/assistant pairs, and tools are refused.
 */
export function chatTurns(messages: readonly Message[], format: ChatFormat, opts?: {offered: readonly ToolFunction[] | undefined, model: string}): {query: string, role: ChatRole, history: ChatMessage[]} {
  const rest = [...messages]
  const last = rest.pop()!
  if (format.extraRoles.includes('observation')) {
    for (let i = 0; i < rest.length; i++) {
      if (rest[i].role === 'system' && rest.slice(0, i).some(m => m.role !== 'system')) throw bad(`messages[${i}].role`, 'system messages must come first')
    }
    const history: ChatMessage[] = []
    for (const m of rest) {
      if (m.role === 'tool') history.push({role: 'observation', content: m.content})
      else if (m.toolCalls) {
        if (m.content || m.toolCalls.length === 0) history.push({role: 'assistant', content: m.content})
        for (const c of m.toolCalls) history.push({role: 'assistant', metadata: c.name, content: toolCallContent(c.arguments)})
      } else history.push({role: m.role, content: m.content})
    }
    const offered = opts?.offered
    if (offered) {
      const system = systemMessage(history[0]?.role === 'system' ? history[0].content : undefined, offered)!
      if (history[0]?.role === 'system') history[0] = system
      else history.unshift(system)
    }
    return {query: last.content, role: last.role === 'tool' ? 'observation' : 'user', history}
  }
  const i = messages.findIndex(m => m.role === 'tool' || m.toolCalls !== undefined)
  if (i >= 0) throw bad(`messages[${i}]`, `${opts?.model ?? 'this model'} has no tool format: tool calls and tool results need ChatGLM3-6B`)
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
  return {query: system + last.content, role: 'user', history}
}

/** The assistant message of a chat answer, as OpenAI's API writes it. */
export interface AnswerMessage {
  role: 'assistant'
  content: string | null
  tool_calls?: {id: string, type: 'function', function: {name: string, arguments: string}}[]
}

/**
 * The answer's message: `shown` (the text streamed) as content, and when the published
 * process_response read a tool call from the answer (tools offered), that call as OpenAI's
 * tool_calls (arguments: the keyword arguments as a JSON string), content null when nothing
 * else was said. A tool call glmtool could not read (see parsePythonToolCall) comes back as the
 * model's text, its metadata line and all, with the reason in `toolCallError`.
 */
export function answerMessage(answer: ChatAnswer, shown: string, callId: () => string): {message: AnswerMessage, toolCall: boolean, toolCallError?: string} {
  if (typeof answer === 'object' && 'parameters' in answer) {
    const call = answer as ToolCall
    return {
      message: {role: 'assistant', content: shown || null, tool_calls: [{id: callId(), type: 'function', function: {name: call.name, arguments: JSON.stringify(call.parameters)}}]},
      toolCall: true,
    }
  }
  if (typeof answer === 'object' && answer.error !== undefined) {
    return {message: {role: 'assistant', content: `${shown}${answer.name}\n${answer.content}`}, toolCall: false, toolCallError: answer.error}
  }
  return {message: {role: 'assistant', content: shown}, toolCall: false}
}
