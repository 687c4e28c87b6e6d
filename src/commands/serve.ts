import {basename, resolve} from 'node:path'
import {Args, Flags} from '@oclif/core'
import {archFlag, archOf, BaseCommand, FLAG_CHARS, kvDtypeFlag, kvDtypeOf} from '../cli/base-command.js'
import {MODEL_ID_HELP} from '../cli/model-arg.js'
import {UsageError} from '../errors.js'
import {byteProgress} from '../cli/progress.js'
import {loadChatModel} from '../pipelines/chat-model.js'
import {buildServer} from '../server/app.js'
import {chatPage} from '../server/page.js'
import {scriptedBackend} from '../server/scripted-backend.js'

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|::1|\[::1\])$/

export default class Serve extends BaseCommand {
  static override summary = 'Serve a model over an OpenAI-compatible HTTP API, with a web chat page at /'
  static override description = 'POST /v1/chat/completions and /v1/completions (streaming with server-sent events, or one JSON answer), GET /v1/models, GET /health, and the chat page at /. One model, one generation at a time: requests wait in a FIFO queue (429 past --max-queue). Binds 127.0.0.1 unless --host says otherwise. SIGINT/SIGTERM stop taking requests, let running answers finish (up to --shutdown-grace seconds) and exit 0.'
  static override examples = [
    '<%= config.bin %> serve ./chatglm2-6b',
    '<%= config.bin %> serve ./chatglm2-6b-safetensors --backend cuda --port 8080 --api-key "$KEY"',
    'curl http://127.0.0.1:8000/v1/chat/completions -H "content-type: application/json" -d \'{"messages":[{"role":"user","content":"你好"}]}\'',
  ]

  static override args = {
    model: Args.string({required: true, description: `model directory: torch, glmtool safetensors, or glmtool ONNX; ${MODEL_ID_HELP}`}),
  }

  static override flags = {
    backend: Flags.string({char: FLAG_CHARS.backend, default: 'cpu', options: ['cpu', 'cuda'], description: 'cpu: onnxruntime-node; cuda: glmtool\'s CUDA engine'}),
    host: Flags.string({default: '127.0.0.1', description: 'address to bind (loopback by default)'}),
    port: Flags.integer({default: 8000, description: 'port to listen on (0: any free port)'}),
    'api-key': Flags.string({description: 'require "Authorization: Bearer KEY" on /v1/ (default: $GLMTOOL_API_KEY)', env: 'GLMTOOL_API_KEY'}),
    'max-queue': Flags.integer({default: 16, description: 'requests that may wait while one runs; more get 429'}),
    cors: Flags.string({description: 'allow this origin cross-origin (CORS is off without it)'}),
    'max-length': Flags.integer({description: 'context: prompt + answer tokens [default: the model\'s: 2048 ChatGLM-6B, 8192 ChatGLM2/3-6B]'}),
    timeout: Flags.integer({default: 600, description: 'seconds a request may take, queue wait included'}),
    'max-body': Flags.integer({default: 1 << 20, description: 'largest request body, bytes (413 beyond)'}),
    'shutdown-grace': Flags.integer({default: 30, description: 'seconds running answers get to finish on SIGTERM'}),
    name: Flags.string({description: 'model id in the API [default: the directory\'s name]'}),
    arch: archFlag(),
    'kv-dtype': kvDtypeFlag(),
  }

  async run() {
    const {args, flags} = await this.parse(Serve)
    for (const [k, v, min] of [['port', flags.port, 0], ['max-queue', flags['max-queue'], 0], ['timeout', flags.timeout, 1], ['max-body', flags['max-body'], 1024], ['shutdown-grace', flags['shutdown-grace'], 0]] as const) {
      if (!Number.isInteger(v) || v < min) throw new UsageError(`--${k} must be an integer of at least ${min}, got ${v}`)
    }
    if (flags.port > 65535) throw new UsageError(`--port must be at most 65535, got ${flags.port}`)
    const source = this.resolveModel(args.model)
    const model = await loadChatModel(source.path, {maxLength: flags['max-length'], backend: flags.backend as 'cpu' | 'cuda', arch: archOf(flags), kvDtype: kvDtypeOf(flags), onNote: m => this.note(m), progress: (label, total) => byteProgress(label, total, true)})
    // Test hook: every answer is this text (src/server/scripted-backend.ts).
    const scripted = process.env.GLMTOOL_TEST_SCRIPTED_ANSWER
    if (scripted !== undefined) model.backend = scriptedBackend(model.backend, model.tokenizer.encode(scripted), model.tokenizer.specials.eos)
    const d = model.arch.chatDefaults
    const maxLength = Math.min(flags['max-length'] ?? d.maxLength, model.backend.maxLength)
    const modelId = flags.name ?? (source.hub ? args.model : basename(resolve(source.path)))
    const log = (line: string) => process.stderr.write(`glmtool serve: ${line}\n`)
    const page = chatPage({model: modelId, architecture: model.arch.id, backend: model.backend.name, maxLength, contextLength: maxLength, topP: d.topP, temperature: d.temperature})
    const {app, shutdown} = await buildServer(model, {
      modelId, defaults: {...d, maxLength}, apiKey: flags['api-key'], maxQueue: flags['max-queue'], cors: flags.cors,
      timeoutSeconds: flags.timeout, bodyLimit: flags['max-body'], page, log,
      faultQuery: process.env.GLMTOOL_TEST_FAULT_QUERY,
      tokenDelayMs: process.env.GLMTOOL_TEST_TOKEN_DELAY_MS ? Number(process.env.GLMTOOL_TEST_TOKEN_DELAY_MS) : undefined,
    })
    if (!LOOPBACK.test(flags.host) && !flags['api-key']) {
      log(`warning: listening on ${flags.host}, reachable beyond this machine, with no --api-key: anyone who can reach it can use the model`)
    }
    const address = await app.listen({host: flags.host, port: flags.port})
    log(`serving ${modelId} (${model.arch.id}, ${model.backend.name}) at ${address}  (chat page: ${address}/, API: ${address}/v1)`)
    await new Promise<void>(resolveStop => {
      let stopping = false
      const stop = (signal: string) => {
        if (stopping) return
        stopping = true
        log(`${signal}: finishing running answers (up to ${flags['shutdown-grace']} s), then exiting`)
        shutdown(flags['shutdown-grace'] * 1000).then(resolveStop, resolveStop)
      }
      process.once('SIGTERM', () => stop('SIGTERM'))
      process.once('SIGINT', () => stop('SIGINT'))
    })
    await model.backend.dispose()
    log('stopped')
    return {model: modelId, address}
  }
}
