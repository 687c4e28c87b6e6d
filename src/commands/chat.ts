import {createInterface} from 'node:readline'
import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../cli/base-command.js'
import {UsageError} from '../errors.js'
import {loadChatModel} from '../runtime/chat-model.js'
import {chatResponse, ResponseStream} from '../runtime/chat-response.js'
import {defaultReserve, fitChatPrompt} from '../runtime/chat-prompt.js'
import {CHAT_DEFAULTS} from '../runtime/chat-template.js'
import {generate, type GenerateResult} from '../runtime/generate.js'

export default class Chat extends BaseCommand {
  static override summary = 'Chat with a ChatGLM model, streaming the answer as it is generated'
  static override description = 'Runs in-process: onnxruntime-node on the CPU (--backend cpu), or glmtool\'s CUDA engine on an NVIDIA GPU (--backend cuda; build it with `npm run build:native`). On the CPU the model may be a torch model directory (converted once to a cached ONNX model), glmtool\'s safetensors output, or its ONNX output; CUDA reads safetensors (or torch) weights in float16 or bfloat16 straight onto the GPU. Interactive by default: `clear` empties the history, `stop`/`exit`/Ctrl-D ends, Ctrl-C interrupts the answer in progress and keeps the history. With --prompt (repeatable, one per turn) it runs non-interactively.'
  static override examples = [
    '<%= config.bin %> chat ./chatglm2-6b',
    '<%= config.bin %> chat ./chatglm-6b-onnx --prompt "你好" --prompt "What can you do?" --json',
    '<%= config.bin %> chat ./tiny-v2 --prompt hello --greedy --max-length 64',
    '<%= config.bin %> chat ./chatglm2-6b-safetensors --backend cuda',
  ]

  static override args = {
    model: Args.string({required: true, description: 'model directory: torch, glmtool safetensors, or glmtool ONNX'}),
  }

  static override flags = {
    backend: Flags.string({default: 'cpu', options: ['cpu', 'cuda'], description: 'cpu: onnxruntime-node; cuda: glmtool\'s CUDA engine'}),
    prompt: Flags.string({multiple: true, description: 'run non-interactively: one turn per --prompt'}),
    temperature: Flags.string({description: 'sampling temperature [default: 0.95 v1, 0.8 v2]'}),
    'top-p': Flags.string({description: 'nucleus sampling [default: 0.7 v1, 0.8 v2]'}),
    'top-k': Flags.integer({default: 0, description: 'keep the k most likely tokens (0: off)'}),
    'repetition-penalty': Flags.string({default: '1.0', description: '> 1 discourages repeats'}),
    greedy: Flags.boolean({default: false, description: 'always take the most likely token'}),
    'max-length': Flags.integer({description: 'prompt + answer tokens [default: 2048 v1, 8192 v2]'}),
    'max-new-tokens': Flags.integer({description: 'also stop each answer after this many tokens'}),
    seed: Flags.integer({description: 'random seed for sampling [default: random]'}),
  }

  async run() {
    const {args, flags} = await this.parse(Chat)
    const num = (v: string | undefined, name: string): number | undefined => {
      if (v === undefined) return undefined
      const x = Number(v)
      if (!Number.isFinite(x) || x < 0) throw new UsageError(`--${name} must be a non-negative number, got ${v}`)
      return x
    }
    const model = await loadChatModel(args.model, {
      maxLength: flags['max-length'],
      backend: flags.backend as 'cpu' | 'cuda',
      onNote: m => this.note(m),
    })
    const gen = model.backend.arch.generation
    const d = CHAT_DEFAULTS[gen]
    const seed = flags.seed ?? Math.floor(Math.random() * 2 ** 31)
    const opts = {
      temperature: num(flags.temperature, 'temperature') ?? d.temperature,
      topP: num(flags['top-p'], 'top-p') ?? d.topP,
      topK: flags['top-k'],
      repetitionPenalty: num(flags['repetition-penalty'], 'repetition-penalty') ?? 1,
      greedy: flags.greedy,
      maxLength: flags['max-length'] ?? d.maxLength,
      maxNewTokens: flags['max-new-tokens'],
      seed,
    }
    const history: [string, string][] = []
    // A turn's text is what the published chat() returns for the generated ids (decode, then
    // process_response), streamed as it becomes final; the history keeps that text, as chat() does.
    // History that no longer fits the context loses its oldest turns (said on stderr), as
    // chatglm.cpp does; only a query too long on its own is an error.
    const turn = async (query: string, signal?: AbortSignal, stream = true): Promise<GenerateResult & {response: string, droppedTurns: number}> => {
      const context = Math.min(opts.maxLength, model.backend.maxLength)
      const fitted = fitChatPrompt(model.tokenizer, gen, query, history, context, defaultReserve(context, opts.maxNewTokens))
      if (fitted.droppedTurns > 0) this.note(`(left out the ${fitted.droppedTurns} oldest turn(s) of the history to fit the maximum length ${context})`)
      const ids = fitted.ids
      const response = new ResponseStream(model.tokenizer.responseStyle)
      const r = await generate(model.backend, model.tokenizer, ids, {...opts, signal}, t => {
        const out = response.push(t)
        if (stream && out) process.stdout.write(out)
      })
      const rest = response.flush()
      if (stream && rest) process.stdout.write(rest)
      return {...r, response: chatResponse(model.tokenizer.responseStyle, r.text), droppedTurns: fitted.droppedTurns}
    }
    try {
      if (flags.prompt?.length) {
        const turns = []
        for (const query of flags.prompt) {
          const r = await turn(query, undefined, !this.jsonEnabled())
          if (!this.jsonEnabled()) process.stdout.write('\n')
          history.push([query, r.response])
          turns.push({
            prompt: query, promptIds: r.promptIds, generatedIds: r.generatedIds, text: r.response, decoded: r.text, stoppedBy: r.stoppedBy, droppedTurns: r.droppedTurns,
            timing: {promptSeconds: r.promptSeconds, generateSeconds: r.generateSeconds, promptTokensPerSecond: r.promptTokensPerSecond, generatedTokensPerSecond: r.generatedTokensPerSecond},
          })
        }
        return {model: args.model, architecture: model.backend.arch.id, backend: model.backend.name, seed, sampling: opts, turns}
      }
      await this.interactive(turn, history)
      return {model: args.model, turns: history.length}
    } finally {
      await model.backend.dispose()
    }
  }

  /** The read-eval loop: one turn per line; Ctrl-C stops the answer, not the session. */
  private async interactive(turn: (q: string, signal?: AbortSignal) => Promise<GenerateResult & {response: string}>, history: [string, string][]): Promise<void> {
    const rl = createInterface({input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY})
    let current: AbortController | undefined
    const onInterrupt = () => {
      if (current) current.abort()
      else rl.close()
    }
    rl.on('SIGINT', onInterrupt)
    process.on('SIGINT', onInterrupt)
    const tty = process.stdin.isTTY
    if (tty) process.stdout.write('glmtool chat: type a message; `clear` empties the history, `exit` or Ctrl-D quits, Ctrl-C stops an answer.\n')
    try {
      const lines = rl[Symbol.asyncIterator]()
      for (;;) {
        if (tty) process.stdout.write('\nyou> ')
        const next = await lines.next()
        if (next.done) break
        const query = next.value.trim()
        if (!query) continue
        if (query === 'exit' || query === 'stop') break
        if (query === 'clear') {
          history.length = 0
          process.stdout.write(tty ? 'history cleared\n' : '')
          continue
        }
        if (tty) process.stdout.write('glm> ')
        current = new AbortController()
        const r = await turn(query, current.signal)
        current = undefined
        process.stdout.write(r.stoppedBy === 'interrupted' ? ' [interrupted]\n' : '\n')
        // An interrupted answer is not kept: the history holds only complete turns.
        if (r.stoppedBy !== 'interrupted') history.push([query, r.response])
      }
    } finally {
      process.off('SIGINT', onInterrupt)
      rl.close()
    }
  }
}
