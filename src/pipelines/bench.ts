/**
 * `glmtool bench`: load time, time to first token, prefill and decode speed, memory and the
 * decode roofline of one model on one backend (issue 6). Pure measurement: the command only
 * parses, calls and prints.
 *
 * Per model: load (timed), one warm-up run, then `repeat` runs of: reset, prefill a prompt of
 * `promptTokens` ids (deterministic pseudo-random text ids plus the generation's specials), then
 * greedy decode until `genTokens` new tokens exist. Time to first token = prefill + choosing the
 * first token; decode tokens/s counts the genTokens - 1 decode steps after it (as generate() does;
 * on CUDA in decodeMany batches of GLMTOOL_CUDA_STEPS steps, as generate() runs them). Medians and p90s are over the repeats; p90 is the slower tail (90th percentile of the time).
 */
import {readFileSync} from 'node:fs'
import {join} from 'node:path'
import {GlmtoolError} from '../errors.js'
import {TORCH_DTYPE_OF} from '../formats/dtype.js'
import type {ModelConfig} from '../models/arch.js'
import {archById, type ArchId} from '../models/index.js'
import {quantLayoutOf} from '../models/quantized-layout.js'
import type {DecoderBackend} from '../runtime/backend.js'
import type {KvDtype} from '../runtime/backend.js'
import type {CudaBackend} from '../runtime/backends/cuda.js'
import type {OnnxCpuBackend} from '../runtime/backends/onnx-cpu.js'
import {measureReadBandwidth} from './cpu-read-bandwidth.js'
import {decodeReadBytes} from './export-onnx.js'
import {type BackendKind, loadChatModel} from './chat-model.js'
import {generate} from '../runtime/generate.js'
import type {ChatTokenizer} from '../runtime/tokenizer/index.js'

export interface BenchOptions {
  backend: BackendKind
  promptTokens: number
  genTokens: number
  repeat: number
  maxLength: number
  warmup?: number
  /** The user's --arch. */
  arch?: ArchId
  /** The KV cache's element type (--kv-dtype; int8 on CUDA only). */
  kvDtype?: KvDtype
  onNote?: (message: string) => void
  /** A progress display for a one-time ONNX conversion of the model (chat-model.ts). */
  progress?: (label: string, totalBytes: number) => {add(bytes: number): void, stop(): void}
}

export interface Spread {
  median: number
  p90: number
}

export interface BenchRun {
  ttftMs: number
  prefillTokensPerSecond: number
  decodeTokensPerSecond: number
}

export interface BenchResult {
  model: string
  architecture: string
  backend: string
  dtype?: string
  /** CUDA: the KV cache's element type. */
  kvDtype?: KvDtype
  /** How the model directory stores its weights (config.json): f16, bf16, f32, int8, int4 (g<group size>). */
  weights?: string
  device?: {name: string, computeCapability: string, totalMemoryBytes: number, peakBandwidthBytesPerSecond: number, driverVersion: number, cublas: string}
  /** CUDA: how the decode step ran. */
  decode?: {graph: boolean, pdl: boolean, splits: number, headsPerBlock: number, fusedNorm: boolean, stepsPerCall: number}
  /** CUDA: the prefill attention ('flash', 'flash MT2': tiled online softmax, no score matrix; 'cublas': scores, masked softmax, cuBLAS). */
  prefillAttention?: string
  promptTokens: number
  genTokens: number
  repeat: number
  maxLength: number
  loadSeconds: number
  ttftMs: Spread
  prefillTokensPerSecond: Spread
  decodeTokensPerSecond: Spread
  runs: BenchRun[]
  /** The greedy tokens of the last run (same every run: a quick determinism check). */
  generatedIds: number[]
  gpuMemory?: {
    peakAllocatedBytes: number
    peakDeviceUsedBytes: number
    deviceTotalBytes: number
    weightBytes: number
    kvCacheBytes: number
    hostEmbeddingBytes: number
    /** Quantized models: the prefill's buffer for one dequantized weight (part of peakAllocatedBytes). */
    scratchBytes: number
    /** INT8 KV cache: the prefill attention's float copy of one layer's keys and values (part of peakAllocatedBytes). */
    kvStageBytes: number
  }
  /** process.resourceUsage().maxRSS after this model's runs: the process's peak so far. */
  peakHostRssBytes: number
  roofline?: Roofline
}

export interface Roofline {
  /** Weight bytes read per decoded token (everything on the GPU: every layer and the output layer). */
  weightBytesPerToken: number
  /** KV cache bytes read per decoded token, averaged over the decode steps. */
  kvBytesPerToken: number
  /**
   * The GPU's peak memory bandwidth (memory clock x bus width), and a measured device-to-device
   * copy rate. CPU: both are the read rate measured in the same run (cpu-read-bandwidth.ts).
   */
  peakBandwidth: number
  measuredCopyBandwidth: number
  /** CPU only: the memory read rate measured in this run, the roofline's bandwidth. */
  measuredReadBandwidth?: number
  /** (weights + KV) / peak bandwidth, as tokens/s: the decode speed no implementation exceeds. */
  rooflineTokensPerSecond: number
  /** Median decode tokens/s over the roofline, and over the roofline at the measured copy rate. */
  achievedFraction: number
  achievedFractionOfCopy: number
}

export function spread(values: readonly number[], higherIsFaster: boolean): Spread {
  const s = [...values].sort((a, b) => a - b)
  const at = (q: number) => {
    const i = (s.length - 1) * q
    const lo = Math.floor(i)
    return s[lo] + (s[Math.min(s.length - 1, lo + 1)] - s[lo]) * (i - lo)
  }
  return {median: at(0.5), p90: at(higherIsFaster ? 0.1 : 0.9)}
}

/** A prompt of exactly `n` ids: pseudo-random text ids the tokenizer knows, plus the specials. */
export function benchPrompt(tokenizer: ChatTokenizer, n: number): number[] {
  const specials = 2
  if (n <= specials) throw new GlmtoolError('usage', `--prompt-tokens must be at least ${specials + 1}`)
  let seed = 12345
  const lo = 1000
  const hi = Math.min(tokenizer.vocabSize, 60000)
  const text = Array.from({length: n - specials}, () => {
    // (seed * 1103515245 + 12345) mod 2^31 in exact 32-bit integer arithmetic (a float product
    // would round), so bench/peers/torch_baseline.py builds the very same prompt.
    seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff
    return lo + (seed % (hi - lo))
  })
  const s = tokenizer.specials
  return archById(tokenizer.arch).framePrompt(text, s)
}

/**
 * One timed run: prefill, then exactly genTokens - 1 greedy decode steps, through generate()
 * (the loop chat and serve run, device batches included), stop tokens ignored.
 */
async function oneRun(backend: DecoderBackend, tokenizer: ChatTokenizer, ids: number[], genTokens: number): Promise<BenchRun & {generated: number[]}> {
  const r = await generate(backend, tokenizer, ids, {
    greedy: true, temperature: 1, topP: 1, topK: 0, repetitionPenalty: 1, seed: 0,
    maxLength: ids.length + genTokens, maxNewTokens: genTokens, ignoreStop: true,
  })
  return {
    ttftMs: r.promptSeconds * 1000,
    prefillTokensPerSecond: r.promptTokensPerSecond,
    decodeTokensPerSecond: genTokens > 1 ? r.generatedTokensPerSecond : 0,
    generated: r.generatedIds,
  }
}

let copyBandwidth: number | undefined
let readBandwidth: number | undefined

/** The stored weight format a model directory's config.json declares, for telling FP16 / INT8 /
 * INT4 copies of one model apart side by side; undefined when it says nothing. */
export function weightsLabel(dir: string): string | undefined {
  let config: ModelConfig
  try {
    config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as ModelConfig
  } catch {
    return undefined
  }
  const q = quantLayoutOf(config)
  if (q) return `int${q.bits}${q.groupSize ? ` g${q.groupSize}` : ''}`
  const dtype = Object.entries(TORCH_DTYPE_OF).find(([, name]) => name === config.torch_dtype)?.[0]
  return dtype?.toLowerCase()
}

/** Benchmark one model. The backend is loaded here and disposed before returning. */
export async function benchModel(path: string, opts: BenchOptions): Promise<BenchResult> {
  const {promptTokens, genTokens, repeat, maxLength} = opts
  if (!(promptTokens >= 3 && genTokens >= 1 && repeat >= 1)) throw new GlmtoolError('usage', 'bench needs --prompt-tokens >= 3, --gen-tokens >= 1 and --repeat >= 1')
  if (promptTokens + genTokens > maxLength) {
    throw new GlmtoolError('usage', `--prompt-tokens ${promptTokens} + --gen-tokens ${genTokens} exceed --max-length ${maxLength}`)
  }
  if (opts.backend === 'cuda' && copyBandwidth === undefined) {
    // Measured before any model is on the GPU (it takes 2 GiB for a moment).
    const {loadCudaAddon} = await import('../runtime/backends/cuda-addon.js')
    copyBandwidth = loadCudaAddon().addon.measureCopyBandwidth(1 << 30, 10)
  }
  if (opts.backend === 'cpu' && readBandwidth === undefined) {
    readBandwidth = measureReadBandwidth().bytesPerSecond
  }
  const t0 = performance.now()
  const model = await loadChatModel(path, {backend: opts.backend, maxLength, arch: opts.arch, kvDtype: opts.kvDtype, onNote: opts.onNote, progress: opts.progress})
  const loadSeconds = (performance.now() - t0) / 1000
  const {backend, tokenizer} = model
  try {
    if (backend.maxLength < promptTokens + genTokens) {
      throw new GlmtoolError('usage', `${path}: the model holds at most ${backend.maxLength} tokens, fewer than --prompt-tokens + --gen-tokens`)
    }
    const ids = benchPrompt(tokenizer, promptTokens)
    for (let i = 0; i < (opts.warmup ?? 1); i++) await oneRun(backend, tokenizer, ids, genTokens)
    const runs: BenchRun[] = []
    let generated: number[] = []
    for (let i = 0; i < repeat; i++) {
      const r = await oneRun(backend, tokenizer, ids, genTokens)
      generated = r.generated
      runs.push({ttftMs: r.ttftMs, prefillTokensPerSecond: r.prefillTokensPerSecond, decodeTokensPerSecond: r.decodeTokensPerSecond})
    }
    const decode = spread(runs.map(r => r.decodeTokensPerSecond), true)
    const result: BenchResult = {
      model: path, architecture: backend.arch.id, backend: backend.name,
      promptTokens, genTokens, repeat, maxLength, loadSeconds,
      ttftMs: spread(runs.map(r => r.ttftMs), false),
      prefillTokensPerSecond: spread(runs.map(r => r.prefillTokensPerSecond), true),
      decodeTokensPerSecond: decode,
      runs, generatedIds: generated,
      peakHostRssBytes: process.resourceUsage().maxRSS * 1024,
    }
    const weights = weightsLabel(path)
    if (weights) result.weights = weights
    if (backend.name === 'cuda') {
      const cuda = backend as CudaBackend
      const m = cuda.memory()
      const d = cuda.device
      result.dtype = cuda.dtype
      result.kvDtype = cuda.kvDtype
      const info = cuda.info()
      result.decode = {
        graph: info.graphCaptured, pdl: info.pdl, splits: info.decodeSplits, headsPerBlock: info.decodeHeadsPerBlock,
        fusedNorm: info.decodeFusedNorm, stepsPerCall: cuda.decodeBatch,
      }
      const prefill = cuda.prefillAttention()
      if (prefill) result.prefillAttention = prefill
      result.device = {name: d.name, computeCapability: d.computeCapability, totalMemoryBytes: d.totalMemory, peakBandwidthBytesPerSecond: d.peakBandwidth, driverVersion: d.driverVersion, cublas: d.cublasPath}
      result.gpuMemory = {
        peakAllocatedBytes: m.peakAllocated, peakDeviceUsedBytes: m.peakDeviceUsed, deviceTotalBytes: m.deviceTotal,
        weightBytes: m.weightBytes, kvCacheBytes: m.kvCacheBytes, hostEmbeddingBytes: m.hostEmbeddingBytes,
        scratchBytes: m.scratchBytes, kvStageBytes: m.kvStageBytes,
      }
      // Decode step k (1..genTokens-1) reads the K/V of promptTokens + k tokens.
      const avgContext = promptTokens + genTokens / 2
      const kv = m.kvBytesPerToken * avgContext
      const perToken = m.weightBytes + kv
      const roof = d.peakBandwidth / perToken
      result.roofline = {
        weightBytesPerToken: m.weightBytes, kvBytesPerToken: kv, peakBandwidth: d.peakBandwidth,
        measuredCopyBandwidth: copyBandwidth ?? 0, rooflineTokensPerSecond: roof,
        achievedFraction: decode.median / roof,
        achievedFractionOfCopy: copyBandwidth ? decode.median / (copyBandwidth / perToken) : 0,
      }
    }
    if (backend.name === 'onnx-cpu' && model.onnxDir && readBandwidth) {
      // Measured again after the runs, the faster kept: a probe that met background work (the
      // kernel writing back a just-written model, say) would understate the rate, and the
      // fraction with it.
      readBandwidth = Math.max(readBandwidth, measureReadBandwidth().bytesPerSecond)
      // float32 K and V of every layer for each token of context, read once per decode step.
      const d = (backend as OnnxCpuBackend).manifest.dims
      const kv = d.layers * 2 * d.kvHeads * d.headDim * 4 * (promptTokens + genTokens / 2)
      const perToken = await decodeReadBytes(model.onnxDir) + kv
      const roof = readBandwidth / perToken
      result.roofline = {
        weightBytesPerToken: perToken - kv, kvBytesPerToken: kv, peakBandwidth: readBandwidth,
        measuredCopyBandwidth: readBandwidth, measuredReadBandwidth: readBandwidth, rooflineTokensPerSecond: roof,
        achievedFraction: decode.median / roof, achievedFractionOfCopy: decode.median / roof,
      }
    }
    return result
  } finally {
    await backend.dispose()
  }
}
