/**
 * A test hook (GLMTOOL_TEST_SCRIPTED_ANSWER): a backend whose every step makes the next id of a
 * fixed answer the only likely token, then the tokenizer's eos. Random synth weights cannot be
 * steered to a tool call; with this, a test drives the server's whole answer path (sampling,
 * stop tokens, streaming decode, process_response, tool_calls) through real clients. It wraps
 * the loaded backend for its name, generation and sizes; the weights never run.
 */
import type {DecoderBackend, ForwardInput, ForwardOutput} from '../runtime/backend.js'

export function scriptedBackend(inner: DecoderBackend, answerIds: readonly number[], eos: number): DecoderBackend {
  let length = 0
  /** The answer's tokens chosen so far in this generation. */
  let step = 0
  const vocab = Math.max(eos, ...answerIds) + 1
  return {
    name: `${inner.name} (scripted)`,
    arch: inner.arch,
    config: inner.config,
    get length() {
      return length
    },
    maxLength: inner.maxLength,
    async forward(input: ForwardInput): Promise<ForwardOutput> {
      length += input.ids.length
      const logits = new Float32Array(vocab).fill(-1e4)
      logits[step < answerIds.length ? answerIds[step] : eos] = 1e4
      step++
      return {logits, rows: 1, vocab}
    },
    reset() {
      length = 0
      step = 0
    },
    dispose: () => inner.dispose(),
  }
}
