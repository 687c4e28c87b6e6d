import {rename, writeFile} from 'node:fs/promises'
import {Args, Flags} from '@oclif/core'
import Table from 'cli-table3'
import {archFlag, archOf, BaseCommand, FLAG_CHARS, kvDtypeFlag, kvDtypeOf} from '../cli/base-command.js'
import {MODEL_ID_HELP} from '../cli/model-arg.js'
import {byteProgress, formatBytes} from '../cli/progress.js'
import {UsageError} from '../errors.js'
import {cudaUnavailableReason} from '../runtime/backends/cuda-addon.js'
import {type BenchResult, benchModel} from '../pipelines/bench.js'

export default class Bench extends BaseCommand {
  static override summary = 'Measure load time, time to first token, prefill and decode speed, memory and the decode roofline'
  static override description = 'Each model is loaded, run once to warm up, then --repeat times: a --prompt-tokens prompt (pseudo-random ids plus the generation\'s specials) and greedy decoding to --gen-tokens new tokens. Medians and p90s (the slower tail) over the repeats. Several models are measured one after another and compared side by side. On CUDA it also reports peak GPU memory (the engine\'s allocations and cudaMemGetInfo) and the roofline: weight (and KV) bytes read per decoded token over the GPU\'s memory bandwidth, and the fraction of it achieved. On the CPU the roofline divides the same bytes by the memory read rate measured in the same run (onnxruntime\'s MatMul over a 1 GiB matrix, in a child process).'
  static override examples = [
    '<%= config.bin %> bench ./chatglm2-6b-safetensors',
    '<%= config.bin %> bench ./chatglm-6b-st ./chatglm2-6b-st --backend cuda --out bench.json',
    '<%= config.bin %> bench ./chatglm2-6b-st --json > bench.json',
    '<%= config.bin %> bench ./tiny-v2 --backend cpu --prompt-tokens 32 --gen-tokens 8 --repeat 3',
  ]

  // --json prints the results as JSON on stdout instead of the table (as every command); --out FILE also writes them to a file.
  static override strict = false
  static override args = {
    model: Args.string({required: true, description: `model directories (several: compared side by side); ${MODEL_ID_HELP}`}),
  }

  static override flags = {
    arch: archFlag(),
    backend: Flags.string({char: FLAG_CHARS.backend, default: 'auto', options: ['auto', 'cuda', 'cpu'], description: 'auto: cuda where glmtool\'s CUDA engine can run here, else cpu; cuda: glmtool\'s CUDA engine; cpu: onnxruntime-node'}),
    'prompt-tokens': Flags.integer({default: 512, min: 1, description: 'prompt length in tokens'}),
    'gen-tokens': Flags.integer({default: 128, min: 1, description: 'new tokens per run'}),
    repeat: Flags.integer({default: 5, min: 1, description: 'timed runs per model (after one warm-up run)'}),
    warmup: Flags.integer({default: 1, min: 0, description: 'untimed runs first'}),
    'max-length': Flags.integer({default: 2048, min: 2, description: 'KV cache length allocated (tokens)'}),
    'kv-dtype': kvDtypeFlag(),
    out: Flags.string({char: FLAG_CHARS.out, description: 'also write the results as JSON to this file (with the date and Node version)'}),
  }

  async run() {
    const {argv, flags} = await this.parse(Bench)
    const models = argv as string[]
    if (models.length === 0) throw new UsageError('give at least one model directory')
    const resolved = models.map(m => this.resolveModel(m))
    let backend = flags.backend as 'auto' | 'cuda' | 'cpu'
    if (backend === 'auto') {
      const why = cudaUnavailableReason()
      backend = why === undefined ? 'cuda' : 'cpu'
      this.note(`bench: --backend auto: ${why === undefined ? 'cuda' : `cpu (${why})`}`)
    }
    const results: BenchResult[] = []
    for (const [i, model] of resolved.entries()) {
      this.note(`bench: ${models[i]} (${backend}) ...`)
      results.push(await benchModel(model.path, {
        arch: archOf(flags), kvDtype: kvDtypeOf(flags),
        backend, promptTokens: flags['prompt-tokens'], genTokens: flags['gen-tokens'],
        repeat: flags.repeat, warmup: flags.warmup, maxLength: flags['max-length'], onNote: m => this.note(m),
        progress: (label: string, total: number) => byteProgress(label, total, !this.jsonEnabled()),
      }))
    }
    for (const [i, r] of results.entries()) r.model = models[i]
    if (!this.jsonEnabled()) {
      this.log(benchTable(results))
      for (const r of results) if (r.roofline) this.log(rooflineLine(r))
    }
    if (flags.out) {
      // Whole or not at all: written beside the target, then renamed over it.
      const tmp = `${flags.out}.tmp-${process.pid}`
      await writeFile(tmp, JSON.stringify({date: new Date().toISOString(), node: process.version, results}, null, 2) + '\n')
      await rename(tmp, flags.out)
      this.note(`bench: wrote ${flags.out}`)
    }
    return results
  }
}

const f1 = (x: number) => x.toFixed(1)

/** One column per model, one row per measure. */
export function benchTable(results: readonly BenchResult[]): string {
  const table = new Table({head: ['', ...results.map(r => r.model)], style: {head: [], border: []}})
  const row = (label: string, cell: (r: BenchResult) => string) => table.push([label, ...results.map(cell)])
  row('architecture', r => [r.architecture, r.weights ?? r.dtype, r.kvDtype === 'int8' ? '(KV cache int8)' : undefined].filter(Boolean).join(' '))
  row('backend', r => (r.device ? `${r.backend}: ${r.device.name}${r.decode ? ` (${[r.decode.graph && 'graph', r.decode.pdl && 'PDL', r.decode.stepsPerCall > 1 && `${r.decode.stepsPerCall} steps/call`, r.prefillAttention && `${r.prefillAttention} prefill`].filter(Boolean).join(', ') || 'plain launches'})` : ''}` : r.backend))
  row('prompt / new tokens', r => `${r.promptTokens} / ${r.genTokens} (x${r.repeat})`)
  row('load (s)', r => r.loadSeconds.toFixed(2))
  row('time to first token (ms) median / p90', r => `${f1(r.ttftMs.median)} / ${f1(r.ttftMs.p90)}`)
  row('prefill tok/s median / p90', r => `${f1(r.prefillTokensPerSecond.median)} / ${f1(r.prefillTokensPerSecond.p90)}`)
  row('decode tok/s median / p90', r => `${f1(r.decodeTokensPerSecond.median)} / ${f1(r.decodeTokensPerSecond.p90)}`)
  row('peak GPU memory: engine / device', r => (r.gpuMemory ? `${formatBytes(r.gpuMemory.peakAllocatedBytes)} / ${formatBytes(r.gpuMemory.peakDeviceUsedBytes)}` : 'n/a'))
  row('GPU weights / KV cache / prefill scratch', r => (r.gpuMemory
    ? `${formatBytes(r.gpuMemory.weightBytes)} / ${formatBytes(r.gpuMemory.kvCacheBytes)}${r.kvDtype === 'int8' ? ` int8 (+ ${formatBytes(r.gpuMemory.kvStageBytes)} prefill copy)` : ''} / ${formatBytes(r.gpuMemory.scratchBytes)}`
    : 'n/a'))
  row('peak host RSS', r => formatBytes(r.peakHostRssBytes))
  row('decode roofline tok/s (achieved)', r => (r.roofline ? `${f1(r.roofline.rooflineTokensPerSecond)} (${(100 * r.roofline.achievedFraction).toFixed(1)}%)` : 'n/a'))
  return table.toString()
}

export function rooflineLine(r: BenchResult): string {
  const t = r.roofline!
  const tb = (x: number) => `${(x / 1e12).toFixed(2)} TB/s`
  if (t.measuredReadBandwidth) {
    return `roofline ${r.model}: ${formatBytes(t.weightBytesPerToken)} weights + ${formatBytes(t.kvBytesPerToken)} KV read per decoded token / ${(t.measuredReadBandwidth / 1e9).toFixed(1)} GB/s read rate measured in this run (onnxruntime MatMul of a 1 GiB matrix, the faster of before and after the model's runs) = ${f1(t.rooflineTokensPerSecond)} tok/s; achieved ${f1(r.decodeTokensPerSecond.median)} tok/s = ${(100 * t.achievedFraction).toFixed(1)}% of it`
  }
  return `roofline ${r.model}: ${formatBytes(t.weightBytesPerToken)} weights + ${formatBytes(t.kvBytesPerToken)} KV read per decoded token / ${tb(t.peakBandwidth)} peak = ${f1(t.rooflineTokensPerSecond)} tok/s; achieved ${f1(r.decodeTokensPerSecond.median)} tok/s = ${(100 * t.achievedFraction).toFixed(1)}% of it (${(100 * t.achievedFractionOfCopy).toFixed(1)}% at the measured copy rate ${tb(t.measuredCopyBandwidth)})`
}
