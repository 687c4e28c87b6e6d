/**
 * Chat prompts exactly as the published `model.chat` builds them (docs/chatglm.md sections 3, 4),
 * one function per generation.
 */
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

export function chatPrompt(generation: 1 | 2, query: string, history: History): string {
  return generation === 1 ? chatPromptV1(query, history) : chatPromptV2(query, history)
}

/** The published chat()'s sampling defaults per generation (docs/chatglm.md sections 3, 4). */
export const CHAT_DEFAULTS = {
  1: {temperature: 0.95, topP: 0.7, maxLength: 2048},
  2: {temperature: 0.8, topP: 0.8, maxLength: 8192},
} as const
