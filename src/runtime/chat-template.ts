/**
 * Chat formats: how the published `model.chat` turns a conversation into model input, and the
 * generated text into a turn's answer (docs/chatglm.md sections 3, 4, 9). One format per chat
 * style; each generation module (src/models/) names its own.
 */
import {readFile, stat} from 'node:fs/promises'
import {GlmtoolError, UsageError} from '../errors.js'
import {type ChatMessage, CHATGLM3_TOOL_SYSTEM_PROMPT, chatglm3PromptIds, type Chatglm3Response, parseChatglm3Response, type Role} from './chatglm3-chat.js'
import type {ChatTokenizer} from './tokenizer/index.js'
import {ChatGLM3Tokenizer} from './tokenizer/chatglm3-6b.js'

/**
 * One message of a conversation, as ChatGLM3's history holds it (ChatGLM-6B and ChatGLM2-6B use
 * user/assistant pairs only): role, content, ChatGLM3's metadata line and a system message's tools.
 */
export type {ChatMessage, Role} from './chatglm3-chat.js'

/**
 * A turn's answer as the published chat() returns it: text, or ChatGLM3's structured answers,
 * a tool call {name, parameters} or a named non-tool answer {name, content} (with `error` where
 * glmtool could not read a tool call the published code would have eval'd).
 */
export type ChatAnswer = Chatglm3Response['response']

export interface ChatFormat {
  /** The roles a conversation may use besides user and assistant. */
  readonly extraRoles: readonly Role[]
  /**
   * Model input ids for `history` followed by a new message of `role` (the query), ready to
   * generate its answer from. Throws a GlmtoolError for a conversation the format cannot hold.
   */
  promptIds(tokenizer: ChatTokenizer, history: readonly ChatMessage[], query: string, role: Role): number[]
  /**
   * The answer and the history after it, as chat() computes them: `decoded` is the tokenizer's
   * decode of the generated ids (stop token excluded), `streamed` the text ResponseStream gave
   * for them; `history` already ends with the query's message.
   */
  finish(decoded: string, streamed: string, history: readonly ChatMessage[]): {response: ChatAnswer, history: ChatMessage[]}
}

/** (query, response) pairs: the history ChatGLM-6B and ChatGLM2-6B's chat() take. */
export type History = readonly (readonly [query: string, response: string])[]

/** ChatGLM-6B: the bare query with no history, else "[Round i]\n问：q\n答：r\n" from i = 0. */
export function chatPromptV1(query: string, history: History): string {
  if (history.length === 0) return query
  let prompt = ''
  history.forEach(([q, r], i) => {
    prompt += `[Round ${i}]\n问：${q}\n答：${r}\n`
  })
  return `${prompt}[Round ${history.length}]\n问：${query}\n答：`
}

/** ChatGLM2-6B: "[Round i]\n\n问：q\n\n答：r\n\n" from i = 1, always with the round header. */
export function chatPromptV2(query: string, history: History): string {
  let prompt = ''
  history.forEach(([q, r], i) => {
    prompt += `[Round ${i + 1}]\n\n问：${q}\n\n答：${r}\n\n`
  })
  return `${prompt}[Round ${history.length + 1}]\n\n问：${query}\n\n答：`
}

/** The pairs of a user/assistant conversation; anything else is not expressible in `model`'s format. */
export function historyPairs(history: readonly ChatMessage[], model: string): [string, string][] {
  const pairs: [string, string][] = []
  for (let i = 0; i < history.length; i += 2) {
    const q = history[i]
    const a = history[i + 1]
    if (q.role !== 'user' || a === undefined || a.role !== 'assistant') {
      const roles = history.map(m => m.role).join(', ')
      throw new GlmtoolError('chat-format', `${model}'s chat format holds user and assistant turns in pairs only (got ${roles}); ${q.role === 'system' || a?.role === 'system' ? 'a system prompt needs ChatGLM3-6B' : 'tools and observations need ChatGLM3-6B'}`)
    }
    pairs.push([q.content, a.content])
  }
  return pairs
}

/** A "[Round N] 问：" format over a text template (ChatGLM-6B, ChatGLM2-6B). */
function roundFormat(model: string, template: (query: string, history: History) => string): ChatFormat {
  return {
    extraRoles: [],
    promptIds(tokenizer, history, query, role) {
      if (role !== 'user') throw new GlmtoolError('chat-format', `${model} has no ${role} role; its chat turns are the user's`)
      return tokenizer.encodePrompt(template(query, historyPairs(history, model)))
    },
    // chat() keeps its processed text as the turn's response (ResponseStream streamed exactly that).
    finish(_decoded, streamed, history) {
      return {response: streamed, history: [...history, {role: 'assistant', content: streamed}]}
    },
  }
}

export const CHATGLM_6B_CHAT = roundFormat('ChatGLM-6B', chatPromptV1)
export const CHATGLM2_6B_CHAT = roundFormat('ChatGLM2-6B', chatPromptV2)

/** Messages from (query, response) pairs. */
export function pairsToMessages(pairs: History): ChatMessage[] {
  return pairs.flatMap(([q, r]) => [{role: 'user' as const, content: q}, {role: 'assistant' as const, content: r}])
}

/**
 * ChatGLM3-6B: build_chat_input's ids (role tokens, metadata lines, tools in the system message)
 * and process_response's answer and history, from the decode (role tokens spelled out), as the
 * published chat() computes them (src/runtime/chatglm3-chat.ts).
 */
export const CHATGLM3_6B_CHAT: ChatFormat = {
  extraRoles: ['system', 'observation'],
  promptIds(tokenizer, history, query, role) {
    if (!(tokenizer instanceof ChatGLM3Tokenizer)) throw new GlmtoolError('chat-format', `the ChatGLM3-6B chat format needs the ChatGLM3-6B tokenizer, not ${tokenizer.arch}'s`)
    if (role === 'observation' && !history.some(m => m.role === 'assistant' && m.metadata)) {
      throw new GlmtoolError('chat-format', 'an observation answers a tool call, and the conversation has none yet')
    }
    return chatglm3PromptIds(tokenizer, history, query, role)
  },
  finish(decoded, _streamed, history) {
    return parseChatglm3Response(decoded, history)
  },
}

/** The system message of --system / --tools: the tools under the given text or the published tool prompt. */
export function systemMessage(text: string | undefined, tools: readonly unknown[] | undefined): ChatMessage | undefined {
  if (tools) return {role: 'system', content: text ?? CHATGLM3_TOOL_SYSTEM_PROMPT, tools}
  return text === undefined ? undefined : {role: 'system', content: text}
}

/** Largest --tools file read: tool descriptions are a few KB; the whole list goes into every prompt. */
const MAX_TOOLS_BYTES = 1 << 20

/**
 * A --tools file: a JSON array of tool descriptions ({name, description, parameters}, as ChatGLM3's
 * tool demo lists them), or of OpenAI-style {type: "function", function: {...}} entries, which are
 * unwrapped to the function description.
 */
export async function readToolsFile(path: string): Promise<unknown[]> {
  let text: string
  try {
    const {size} = await stat(path)
    if (size > MAX_TOOLS_BYTES) throw new UsageError(`${path}: ${size} bytes; a tools file may hold at most ${MAX_TOOLS_BYTES}`)
    text = await readFile(path, 'utf8')
  } catch (error) {
    if (error instanceof GlmtoolError) throw error
    throw new UsageError(`${path}: cannot read the tools file (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`)
  }
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch (error) {
    throw new UsageError(`${path}: invalid JSON (${(error as Error).message})`)
  }
  if (!Array.isArray(v) || v.length === 0) throw new UsageError(`${path}: a tools file is a non-empty JSON array of tool descriptions`)
  return v.map((t, i) => {
    if (typeof t !== 'object' || t === null || Array.isArray(t)) throw new UsageError(`${path}: tool ${i} is not a JSON object`)
    const o = t as Record<string, unknown>
    const f = o.type === 'function' && typeof o.function === 'object' && o.function !== null ? o.function as Record<string, unknown> : o
    if (typeof f.name !== 'string' || !f.name) throw new UsageError(`${path}: tool ${i} has no "name"`)
    return f
  })
}
