/**
 * A chat turn's prompt ids within the context: when history plus query do not fit, the oldest
 * rounds are dropped, as chatglm.cpp does, and the caller says how many. A round begins at a
 * user message; leading system messages always stay. Only a query that does not fit on its own
 * is an error. Shared by `glmtool chat` and `glmtool serve`.
 */
import {GlmtoolError} from '../errors.js'
import type {ChatFormat, ChatMessage, Role} from './chat-template.js'
import type {ChatTokenizer} from './tokenizer/index.js'

export interface FittedPrompt {
  ids: number[]
  /** The history actually used: the system messages and the newest rounds. */
  history: ChatMessage[]
  /** How many of the oldest rounds were left out. */
  droppedTurns: number
}

/**
 * `reserve`: tokens to keep free for the answer while older rounds can still be dropped (the
 * answer may then be cut at maxLength); the query itself needs at least one free position.
 */
export function fitChatPrompt(
  format: ChatFormat, tokenizer: ChatTokenizer, query: string, history: readonly ChatMessage[], maxLength: number, reserve: number,
  role: Role = 'user',
): FittedPrompt {
  let head = 0
  while (head < history.length && history[head].role === 'system') head++
  const rounds: number[] = []
  for (let i = head; i < history.length; i++) if (history[i].role === 'user') rounds.push(i)
  if (rounds[0] !== head && history.length > head) rounds.unshift(head)
  const keep = (dropped: number): ChatMessage[] =>
    dropped === 0 ? [...history] : [...history.slice(0, head), ...history.slice(rounds[dropped] ?? history.length)]
  const build = (h: readonly ChatMessage[]) => format.promptIds(tokenizer, h, query, role)
  let ids = build(history)
  let dropped = 0
  if (ids.length + reserve > maxLength && rounds.length > 0) {
    // The prompt's length only shrinks as rounds go: find the fewest dropped rounds that fit by
    // bisection (each probe is one encode of the remaining text).
    let lo = 1
    let hi = rounds.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (build(keep(mid)).length + reserve <= maxLength) hi = mid
      else lo = mid + 1
    }
    dropped = lo
    ids = build(keep(dropped))
  }
  if (ids.length >= maxLength) {
    throw new GlmtoolError('prompt-too-long', `the query alone is ${ids.length} tokens, at or over the maximum length ${maxLength}; shorten it or raise --max-length`)
  }
  return {ids, history: keep(dropped), droppedTurns: dropped}
}

/** How much room a turn keeps for its answer by default: a quarter of the context, at most 1024. */
export function defaultReserve(maxLength: number, maxNewTokens?: number): number {
  return Math.min(maxNewTokens ?? Math.min(1024, Math.floor(maxLength / 4)), maxLength - 1)
}
