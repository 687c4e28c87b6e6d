/**
 * A chat turn's prompt ids within the context: when history plus query do not fit, the oldest
 * turns are dropped, as chatglm.cpp does, and the caller says how many. Only a query that does
 * not fit on its own is an error. Shared by `glmtool chat` and `glmtool serve`.
 */
import {GlmtoolError} from '../errors.js'
import {chatPrompt, type History} from './chat-template.js'
import type {ChatTokenizer} from './tokenizer.js'

export interface FittedPrompt {
  ids: number[]
  /** The history actually used (the newest turns). */
  history: History
  /** How many of the oldest turns were left out. */
  droppedTurns: number
}

/**
 * `reserve`: tokens to keep free for the answer while older turns can still be dropped (the
 * answer may then be cut at maxLength); the query itself needs at least one free position.
 */
export function fitChatPrompt(
  tokenizer: ChatTokenizer, generation: 1 | 2, query: string, history: History, maxLength: number, reserve: number,
): FittedPrompt {
  const build = (h: History) => tokenizer.encodePrompt(chatPrompt(generation, query, h))
  let ids = build(history)
  let start = 0
  if (ids.length + reserve > maxLength && history.length > 0) {
    // The prompt's length only shrinks as turns go: find the fewest dropped turns that fit by
    // bisection (each probe is one encode of the remaining text).
    let lo = 1
    let hi = history.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (build(history.slice(mid)).length + reserve <= maxLength) hi = mid
      else lo = mid + 1
    }
    start = lo
    ids = build(history.slice(start))
  }
  if (ids.length >= maxLength) {
    throw new GlmtoolError('prompt-too-long', `the query alone is ${ids.length} tokens, at or over the maximum length ${maxLength}; shorten it or raise --max-length`)
  }
  return {ids, history: history.slice(start), droppedTurns: start}
}

/** How much room a turn keeps for its answer by default: a quarter of the context, at most 1024. */
export function defaultReserve(maxLength: number, maxNewTokens?: number): number {
  return Math.min(maxNewTokens ?? Math.min(1024, Math.floor(maxLength / 4)), maxLength - 1)
}
