import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {Flags} from '@oclif/core'
import {BaseCommand} from '../cli/base-command.js'
import {formatBytes} from '../cli/progress.js'
import {convertToSafetensors} from '../pipelines/convert-safetensors.js'
import {inspectModel} from '../pipelines/inspect-model.js'
import {mergeAdapter} from '../pipelines/merge-adapter.js'
import {exportOnnx} from '../pipelines/export-onnx.js'
import {writeOutputDir} from '../pipelines/output-dir.js'
import {ARCHS} from '../models/index.js'
import {quantizeModel} from '../pipelines/quantize-model.js'
import {OnnxCpuBackend} from '../runtime/backends/onnx-cpu.js'
import {generate} from '../runtime/generate.js'
import {chatResponse} from '../runtime/chat-response.js'
import {loadTokenizer} from '../runtime/tokenizer/index.js'
import {writeSynthLora} from '../synth/synth-lora.js'
import {writeSynthModel} from '../synth/synth-model.js'

interface Step {
  step: string
  did: string
  seconds: number
}

export default class Demo extends BaseCommand {
  static override summary = 'Walk a tiny synthetic model through every glmtool command that exists'
  static override description = 'Synthesises tiny ChatGLM-6B, ChatGLM2-6B and ChatGLM3-6B models in the published layout, inspects them, converts them to safetensors and to ONNX, runs one chat turn on the CPU runtime, merges a synthesised LoRA adapter, quantizes the merged model to INT4 and chats with that, printing what each step did. Needs no weights, no GPU and no Python. The weights are random, so the chat answer is gibberish: the point is that every stage runs.'
  static override examples = ['<%= config.bin %> demo', '<%= config.bin %> demo --keep ./demo-models']

  static override flags = {
    keep: Flags.string({description: 'keep the demo models in this directory instead of a temporary one'}),
  }

  async run() {
    const {flags} = await this.parse(Demo)
    const base = flags.keep ?? await mkdtemp(join(tmpdir(), 'glmtool-demo-'))
    const steps: Step[] = []
    const step = async (name: string, fn: () => Promise<string>) => {
      const t0 = Date.now()
      const did = await fn()
      const s = {step: name, did, seconds: (Date.now() - t0) / 1000}
      steps.push(s)
      this.log(`[${name}] ${did} (${s.seconds.toFixed(2)} s)`)
    }
    try {
      for (const arch of ARCHS) {
        const archId = arch.id
        const torchDir = join(base, `${archId}-tiny`)
        const stDir = join(base, `${archId}-tiny-safetensors`)
        await step(`synth ${archId}`, async () => {
          const plan = await writeOutputDir(torchDir, {force: true}, d => writeSynthModel(d, {arch, size: 'tiny', seed: 0, dtype: 'F16'}))
          return `wrote ${plan.tensors.length} tensors in ${plan.shards.length} torch.save shards (${formatBytes(plan.totalBytes)}) + config.json + ${arch.tokenizerFile} to ${torchDir}`
        })
        await step(`inspect ${archId}`, async () => {
          const r = await inspectModel(torchDir)
          const ok = r.check && r.check.missing.length === 0 && r.check.misshaped.length === 0
          return `detected ${r.architecture}, ${r.totals.tensors} tensors, ${r.totals.parameters.toLocaleString('en-US')} parameters, ${ok ? 'all tensors present with the right shapes' : 'INCOMPLETE'}`
        })
        await step(`convert ${archId}`, async () => {
          const r = await convertToSafetensors({input: torchDir, out: stDir, dtype: 'keep', maxShardBytes: 4e9, force: true})
          return `streamed ${r.tensors} tensors (${formatBytes(r.bytes)}) to safetensors in ${stDir}, copied ${r.copied.join(', ')}`
        })
        const onnxDir = join(base, `${archId}-tiny-onnx`)
        await step(`convert ${archId} --to onnx`, async () => {
          const r = await exportOnnx({input: stDir, out: onnxDir, dtype: 'F32', force: true})
          return `exported one decoder graph with a KV cache (${r.tensors} weights, ${formatBytes(r.bytes)} in model.onnx.data) to ${onnxDir}`
        })
        const chatTurn = async (dir: string) => {
          const backend = await OnnxCpuBackend.load(dir, {maxLength: 128})
          try {
            const tokenizer = await loadTokenizer(dir, arch.id)
            const query = '你好, glmtool!'
            const ids = arch.chat.promptIds(tokenizer, [], query, 'user')
            const r = await generate(backend, tokenizer, ids, {greedy: true, temperature: 1, topP: 1, topK: 0, repetitionPenalty: 1, maxLength: 128, maxNewTokens: 12, seed: 0})
            return `asked ${JSON.stringify(query)} (${ids.length} prompt tokens), got ${r.generatedIds.length} tokens: ${JSON.stringify(chatResponse(tokenizer.responseStyle, r.text))} (random weights), prefill ${r.promptTokensPerSecond.toFixed(0)} tok/s`
          } finally {
            await backend.dispose()
          }
        }
        await step(`chat ${archId}`, () => chatTurn(onnxDir))
        const loraDir = join(base, `${archId}-tiny-lora`)
        const mergedDir = join(base, `${archId}-tiny-merged`)
        await step(`merge-adapter ${archId}`, async () => {
          const config = await readConfig(stDir)
          const lora = await writeSynthLora(loraDir, arch, config, {r: 4, seed: 1})
          const r = await mergeAdapter({base: stDir, adapter: loraDir, out: mergedDir, dtype: 'keep', force: true})
          return `synthesised a PEFT LoRA adapter (r=${lora.r} on ${lora.modules} query_key_value layers) and merged it: ${r.lora?.merged.length ?? 0} weights changed, ${r.tensors} tensors to ${mergedDir}`
        })
        const int4Dir = join(base, `${archId}-tiny-int4`)
        await step(`quantize ${archId} --bits 4`, async () => {
          const r = await quantizeModel({
            input: mergedDir, out: int4Dir, bits: 4, groupSize: 0, method: 'rtn', lmHead: false, embeddings: false, format: 'both',
            force: true, calibSamples: 32, evaluate: 'off',
          })
          return `RTN int4 (the published scheme) of the merged model's ${r.quantized} layer weights, mean relative weight error ${(100 * r.summary.weightError.chosen).toFixed(1)}%; safetensors (int8-packed weight + fp16 weight_scale) and ONNX (MatMulNBits) in ${int4Dir}`
        })
        await step(`chat ${archId}-int4`, () => chatTurn(int4Dir))
      }
    } finally {
      if (!flags.keep) await rm(base, {recursive: true, force: true})
    }
    this.log(flags.keep ? `models kept in ${flags.keep}` : 'done; the demo models were in a temporary directory, now removed (use --keep DIR to keep them)')
    return {steps, dir: flags.keep ?? null}
  }
}

async function readConfig(dir: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'))
}
