import {createInterface} from 'node:readline'
import {Args, Flags} from '@oclif/core'
import {archFlag, archOf, BaseCommand, FLAG_CHARS, kvDtypeFlag, kvDtypeOf} from '../cli/base-command.js'
import {MODEL_ID_HELP} from '../cli/model-arg.js'
import {GlmtoolError, UsageError} from '../errors.js'
import type {Arch} from '../models/index.js'
import {byteProgress} from '../cli/progress.js'
import {loadChatModel} from '../pipelines/chat-model.js'
import {defaultReserve, fitChatPrompt} from '../runtime/chat-prompt.js'
import {ResponseStream} from '../runtime/chat-response.js'
import {type ChatAnswer, type ChatMessage, readToolsFile, type Role, systemMessage} from '../runtime/chat-template.js'
import {generate, type GenerateResult} from '../runtime/generate.js'

/** A turn's result: the published chat() answer (`response`, text or a tool call) and how much history was left out. */
type TurnResult = GenerateResult & {response: ChatAnswer, shown: string, droppedTurns: number, role: Role}

/** Lines that are commands, in the interactive loop and in --prompt alike (ChatGLM3-6B's roles). */
const ROLE_LINE = /^\/(system|observation)(?:\s([\s\S]*))?$/

export default class Chat extends BaseCommand {
  static override summary = 'Chat with a ChatGLM model, streaming the answer as it is generated'
  static override description = 'Runs in-process: onnxruntime-node on the CPU (--backend cpu), or glmtool\'s CUDA engine on an NVIDIA GPU (--backend cuda; prebuilt for linux-x64 in the npm package, else built from source with native/build.mjs). On the CPU the model may be a torch model directory (converted once to a cached ONNX model), glmtool\'s safetensors output, or its ONNX output; CUDA reads safetensors (or torch) weights in float16 or bfloat16 straight onto the GPU. Interactive by default: `clear` empties the history, `stop`/`exit`/Ctrl-D ends, Ctrl-C interrupts the answer in progress and keeps the history. With --prompt (repeatable, one per turn, before or after the model) it runs non-interactively; with --json and no --prompt it reads one turn per line of stdin and prints only the JSON result.'
  static override examples = [
    '<%= config.bin %> chat ./chatglm2-6b',
    '<%= config.bin %> chat ./chatglm-6b-onnx --prompt "你好" --prompt "What can you do?" --json',
    '<%= config.bin %> chat ./tiny-v2 --prompt hello --greedy --max-length 64',
    '<%= config.bin %> chat ./chatglm2-6b-safetensors --backend cuda',
  ]

  static override args = {
    model: Args.string({required: true, description: `model directory: torch, glmtool safetensors, or glmtool ONNX; ${MODEL_ID_HELP}`}),
  }

  static override flags = {
    backend: Flags.string({char: FLAG_CHARS.backend, default: 'cpu', options: ['cpu', 'cuda'], description: 'cpu: onnxruntime-node; cuda: glmtool\'s CUDA engine'}),
    // Non-greedy: `--prompt hi ./model` takes one value, so the model stays the positional.
    prompt: Flags.string({char: FLAG_CHARS.prompt, multiple: true, multipleNonGreedy: true, description: 'run non-interactively: one turn per --prompt'}),
    temperature: Flags.string({description: 'sampling temperature, >= 0 (0: greedy) [default: 0.95 ChatGLM-6B, 0.8 ChatGLM2/3-6B]'}),
    'top-p': Flags.string({description: 'nucleus sampling, 0..1 [default: 0.7 ChatGLM-6B, 0.8 ChatGLM2/3-6B]'}),
    'top-k': Flags.integer({default: 0, min: 0, description: 'keep the k most likely tokens (0: off)'}),
    'repetition-penalty': Flags.string({default: '1.0', description: '> 0; > 1 discourages repeats'}),
    greedy: Flags.boolean({default: false, description: 'always take the most likely token'}),
    'max-length': Flags.integer({min: 1, description: 'prompt + answer tokens [default: the model\'s: 2048 ChatGLM-6B, 8192 ChatGLM2/3-6B]'}),
    'max-new-tokens': Flags.integer({min: 1, description: 'also stop each answer after this many tokens'}),
    seed: Flags.integer({min: 0, description: 'random seed for sampling [default: random]'}),
    system: Flags.string({description: 'ChatGLM3-6B: the system prompt (interactive: `/system TEXT` sets it and starts over)'}),
    tools: Flags.string({description: 'ChatGLM3-6B: a JSON file of tool descriptions ([{name, description, parameters}, ...]) for the system prompt; answers that call a tool are printed (and in --json returned) as {name, parameters}, and `/observation RESULT` feeds the tool\'s result back'}),
    arch: archFlag(),
    'kv-dtype': kvDtypeFlag(),
  }

  async run() {
    const {args, flags} = await this.parse(Chat)
    // Every sampling flag is checked before the model loads (a 6B load takes a while).
    const sampling = {
      temperature: numberFlag(flags.temperature, 'temperature', x => x >= 0, 'a number >= 0'),
      topP: numberFlag(flags['top-p'], 'top-p', x => x >= 0 && x <= 1, 'a number from 0 to 1'),
      repetitionPenalty: numberFlag(flags['repetition-penalty'], 'repetition-penalty', x => x > 0, 'a number > 0') ?? 1,
    }
    const tools = flags.tools === undefined ? undefined : await readToolsFile(flags.tools)
    const source = this.resolveModel(args.model)
    // Checked as soon as the generation is known, before any conversion or GPU load.
    const needsRoles = (arch: Arch) => {
      const what = flags.tools === undefined ? (flags.system === undefined ? undefined : '--system') : '--tools'
      if (what) requireSystemRole(arch, what, `${args.model} is ${arch.displayName}`)
    }
    const model = await loadChatModel(source.path, {
      maxLength: flags['max-length'],
      backend: flags.backend as 'cpu' | 'cuda',
      arch: archOf(flags),
      kvDtype: kvDtypeOf(flags),
      onNote: m => this.note(m),
      onArch: needsRoles,
      progress: (label, total) => byteProgress(label, total, !this.jsonEnabled()),
    })
    const {arch} = model
    const d = arch.chatDefaults
    const seed = flags.seed ?? Math.floor(Math.random() * 2 ** 31)
    const opts = {
      temperature: sampling.temperature ?? d.temperature,
      topP: sampling.topP ?? d.topP,
      topK: flags['top-k'],
      repetitionPenalty: sampling.repetitionPenalty,
      greedy: flags.greedy,
      maxLength: flags['max-length'] ?? d.maxLength,
      maxNewTokens: flags['max-new-tokens'],
      seed,
    }
    // The conversation as the published ChatGLM3 chat() keeps it; v1/v2 use its user/assistant pairs.
    let system = systemMessage(flags.system, tools)
    const history: ChatMessage[] = system ? [system] : []
    const json = this.jsonEnabled()
    const turns: ChatTurn[] = []
    // A turn's text is what the published chat() returns for the generated ids (decode, then
    // process_response), streamed as it becomes final; the history keeps that text, as chat() does.
    // History that no longer fits the context loses its oldest turns (said on stderr), as
    // chatglm.cpp does; only a query too long on its own is an error.
    const turn = async (line: string, signal?: AbortSignal): Promise<TurnResult | undefined> => {
      const command = ROLE_LINE.exec(line)
      if (command?.[1] === 'system') {
        // A new system prompt starts the conversation over (the prompt sits before every round).
        requireSystemRole(arch, '/system', `this is ${arch.displayName}`)
        system = systemMessage(command[2]?.trim() || undefined, tools)
        history.length = 0
        if (system) history.push(system)
        if (!json) this.note(system ? 'system prompt set; history cleared' : 'system prompt removed; history cleared')
        return undefined
      }
      const role: Role = command?.[1] === 'observation' ? 'observation' : 'user'
      const query = command ? (command[2] ?? '') : line
      const context = Math.min(opts.maxLength, model.backend.maxLength)
      const fitted = fitChatPrompt(arch.chat, model.tokenizer, query, history, context, defaultReserve(context, opts.maxNewTokens), role)
      if (fitted.droppedTurns > 0) this.note(`(left out the ${fitted.droppedTurns} oldest turn(s) of the history to fit the maximum length ${context})`)
      // The streamed pieces concatenate to chat()'s text for the ids (ResponseStream's contract).
      const stream = new ResponseStream(model.tokenizer.responseStyle)
      let shown = ''
      const show = (out: string) => {
        shown += out
        if (!json && out) process.stdout.write(out)
      }
      const r = await generate(model.backend, model.tokenizer, fitted.ids, {...opts, signal}, t => show(stream.push(t)))
      show(stream.flush())
      const finished = arch.chat.finish(r.text, shown, [...history, {role, content: query}])
      // A structured answer (a ChatGLM3 tool call) streams nothing; it is printed whole.
      if (typeof finished.response !== 'string' && !json) process.stdout.write(describeAnswer(finished.response))
      const result = {...r, response: finished.response, shown, droppedTurns: fitted.droppedTurns, role}
      // An interrupted answer is not kept: the history holds only complete turns.
      if (r.stoppedBy !== 'interrupted') history.splice(0, history.length, ...finished.history)
      if (json) turns.push(turnRecord(query, result))
      return result
    }
    const result = () => ({model: args.model, ...(source.hub ? {resolved: source.path} : {}), architecture: arch.id, backend: model.backend.name, seed, sampling: opts, turns})
    try {
      if (flags.prompt?.length) {
        for (const query of flags.prompt) {
          if (await turn(query) && !json) process.stdout.write('\n')
        }
        return result()
      }
      await this.interactive(turn, () => {
        history.length = 0
        if (system) history.push(system)
      }, json)
      return json ? result() : {model: args.model, turns: turns.length}
    } finally {
      await model.backend.dispose()
    }
  }

  /**
   * The read-eval loop: one turn per line; Ctrl-C stops the answer, not the session. On a
   * terminal readline draws the `you> ` prompt itself (setPrompt/prompt), so history recall and
   * line editing redraw it correctly. With --json nothing but the final JSON reaches stdout.
   */
  private async interactive(turn: (q: string, signal?: AbortSignal) => Promise<TurnResult | undefined>, clear: () => void, json: boolean): Promise<void> {
    const tty = Boolean(process.stdin.isTTY) && !json
    const rl = createInterface({input: process.stdin, output: tty ? process.stdout : undefined, terminal: tty})
    let current: AbortController | undefined
    const onInterrupt = () => {
      if (current) current.abort()
      else rl.close()
    }
    rl.on('SIGINT', onInterrupt)
    process.on('SIGINT', onInterrupt)
    if (tty) {
      process.stdout.write('glmtool chat: type a message; `clear` empties the history, `exit` or Ctrl-D quits, Ctrl-C stops an answer.\n' +
        'ChatGLM3-6B: `/system TEXT` sets the system prompt, `/observation RESULT` answers a tool call.\n')
      rl.setPrompt('you> ')
    }
    const say = (text: string) => {
      if (!json) process.stdout.write(text)
    }
    try {
      const lines = rl[Symbol.asyncIterator]()
      for (;;) {
        if (tty) {
          process.stdout.write('\n')
          rl.prompt()
        }
        const next = await lines.next()
        if (next.done) break
        const query = next.value.trim()
        if (!query) continue
        if (query === 'exit' || query === 'stop') break
        if (query === 'clear') {
          clear()
          if (tty) say('history cleared\n')
          continue
        }
        if (ROLE_LINE.exec(query)?.[1] !== 'system' && tty) say('glm> ')
        current = new AbortController()
        try {
          const r = await turn(query, current.signal)
          if (r) say(r.stoppedBy === 'interrupted' ? ' [interrupted]\n' : '\n')
        } catch (error) {
          // A turn the format cannot hold (an observation with no tool call before it) is said, and the session goes on.
          if (!(error instanceof UsageError || (error instanceof GlmtoolError && error.code === 'chat-format')) || !tty) throw error
          say(`${error.message}\n`)
        } finally {
          current = undefined
        }
      }
    } finally {
      process.off('SIGINT', onInterrupt)
      rl.close()
    }
  }
}

interface ChatTurn {
  prompt: string
  /** The message's role: user, or ChatGLM3-6B's observation (a tool's result). */
  role: Role
  promptIds: number[]
  generatedIds: number[]
  /** The published chat()'s text (for a tool call: what streamed, ''); `decoded`: the tokenizer's plain decode. */
  text: string
  /** ChatGLM3-6B: a structured answer (a tool call {name, parameters}), as chat() returns it. */
  toolCall?: Exclude<ChatAnswer, string>
  decoded: string
  stoppedBy: GenerateResult['stoppedBy']
  droppedTurns: number
  timing: {promptSeconds: number, generateSeconds: number, promptTokensPerSecond: number, generatedTokensPerSecond: number}
}

function turnRecord(prompt: string, r: TurnResult): ChatTurn {
  return {
    prompt, role: r.role, promptIds: r.promptIds, generatedIds: r.generatedIds, text: r.shown,
    ...(typeof r.response === 'string' ? {} : {toolCall: r.response}),
    decoded: r.text, stoppedBy: r.stoppedBy, droppedTurns: r.droppedTurns,
    timing: {promptSeconds: r.promptSeconds, generateSeconds: r.generateSeconds, promptTokensPerSecond: r.promptTokensPerSecond, generatedTokensPerSecond: r.generatedTokensPerSecond},
  }
}

/** --system, --tools and /system need a chat format with a system role (ChatGLM3-6B). */
function requireSystemRole(arch: Arch, what: string, which: string): void {
  if (!arch.chat.extraRoles.includes('system')) throw new UsageError(`${what} needs a model with a system role (ChatGLM3-6B); ${which}`)
}

/** A structured answer as the terminal shows it. */
function describeAnswer(a: Exclude<ChatAnswer, string>): string {
  return 'parameters' in a ? `[tool call] ${a.name}(${JSON.stringify(a.parameters)})` : `[${a.name}] ${a.content}`
}

/** A number flag given as a string (so `--top-p .9` and `--temperature 0` parse), checked. */
function numberFlag(v: string | undefined, name: string, ok: (x: number) => boolean, what: string): number | undefined {
  if (v === undefined) return undefined
  const x = v.trim() === '' ? Number.NaN : Number(v)
  if (!Number.isFinite(x) || !ok(x)) throw new UsageError(`--${name} must be ${what}, got ${v}`)
  return x
}
