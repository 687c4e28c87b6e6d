import {existsSync} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {join} from 'node:path'
import {type Ort, ort} from './ort.js'
import {GlmtoolError, ModelError} from '../../errors.js'
import {MASKED, type DecoderDims} from '../../formats/onnx/chatglm-graph.js'
import {ONNX_PREFIX_FILE, type OnnxManifest, readOnnxManifest} from '../../pipelines/export-onnx.js'
import {openSafetensors} from '../../formats/safetensors-reader.js'
import {readTensor} from '../../formats/tensor.js'
import {type Arch, archById, type ModelConfig} from '../../models/index.js'
import type {DecoderBackend, ForwardInput, ForwardOutput} from '../backend.js'

/** Rows per head a shared KV cache starts with (it doubles as needed, up to prefix + maxLength). */
const INITIAL_CAPACITY = 256

export interface OnnxCpuOptions {
  /** Largest number of tokens the cache may hold (default and ceiling: the graph's rotary table rows). */
  maxLength?: number
  /** onnxruntime intra-op threads (default: onnxruntime's choice, the physical cores). */
  threads?: number
  /**
   * Called with every output of each run, the decoder's and any extra ones (the calibration
   * variant's linear inputs, pipelines/quantize/activation-stats.ts), before forward() returns.
   */
  onOutputs?: (outputs: Readonly<Record<string, Ort.Tensor>>) => void
  /**
   * 'shared' (default where the graph allows it): present bound to past's buffer, no per-step
   * copy; 'feed-back': each run's present tensors become the next run's past (the only way for
   * graphs before issue 13; kept for A/B benchmarks and tests).
   */
  kvCache?: 'shared' | 'feed-back'
}

/**
 * Per-layer key/value entries kept in front of the KV cache and seen by every query: the
 * extension point for P-Tuning v2 prefixes (docs/chatglm.md section 7). Each tensor is
 * [1, kvHeads, prefixLength, headDim] float32; keys are used as stored (no rotary).
 * `load` reads it from the export's prefix_kv.safetensors (a prefix merged by merge-adapter).
 */
export interface PrefixKV {
  readonly length: number
  readonly keys: readonly Float32Array[]
  readonly values: readonly Float32Array[]
}

/**
 * The additive attention mask the graph takes, [S, T] row-major (T = prefix + past + S): the
 * prefix columns are visible to every row; new token s (sequence index a = past + s) sees
 * sequence index t when t <= a, or when both a and t are inside the first `bidirectional`
 * tokens (v1's prefix-bidirectional context; 0 = plain causal, v2). 0 visible, -10000 masked.
 */
export function attentionBias(past: number, newTokens: number, bidirectional: number, prefix = 0): Float32Array {
  const T = prefix + past + newTokens
  const bias = new Float32Array(newTokens * T)
  for (let s = 0; s < newTokens; s++) {
    const a = past + s
    const row = s * T + prefix
    for (let t = a + 1; t < past + newTokens; t++) {
      if (!(a < bidirectional && t < bidirectional)) bias[row + t] = MASKED
    }
  }
  return bias
}

/**
 * ChatGLM decoder on onnxruntime-node's CPU provider, over a `glmtool convert --to onnx`
 * directory (I/O contract in src/formats/onnx/chatglm-graph.ts).
 *
 * KV cache: when the graph's attention is com.microsoft.GroupQueryAttention (every export since
 * issue 13; ChatGLM2 exports before it too), each layer's cache is one buffer [1, Hkv, C, D] of
 * capacity C, given as past_key/past_value and bound as the preallocated present_key/present_value
 * output of the same run: GroupQueryAttention sees past and present share memory and writes only
 * the new tokens' rows (its past_present_share_buffer path), so a decode step does not copy the
 * cache. The capacity doubles (one copy) when a run needs more, up to prefix + maxLength.
 * Older graphs (ChatGLM-6B's MultiHeadAttention) return present = Concat(past, new), fed back
 * unchanged as the next run's past.
 */
export class OnnxCpuBackend implements DecoderBackend {
  readonly name = 'onnx-cpu'
  readonly maxLength: number
  private pastKeys: Ort.Tensor[] = []
  private pastValues: Ort.Tensor[] = []
  private tokens = 0
  /** Whether the graph writes present into past's buffer when both are bound to it (see the class comment). */
  readonly sharedCache: boolean
  /** Rows per head of each shared cache buffer (0 when not shared). */
  private capacity = 0

  private constructor(
    private readonly session: Ort.InferenceSession,
    readonly arch: Arch,
    readonly config: ModelConfig,
    readonly manifest: OnnxManifest,
    maxLength: number,
    private readonly prefix: PrefixKV | undefined,
    private readonly onOutputs?: OnnxCpuOptions['onOutputs'],
    kvCache?: OnnxCpuOptions['kvCache'],
  ) {
    this.maxLength = maxLength
    this.sharedCache = kvCache !== 'feed-back' && (manifest.ops?.attention?.startsWith('com.microsoft.GroupQueryAttention') ?? false)
    this.reset()
  }

  static async load(onnxDir: string, opts: OnnxCpuOptions & {prefix?: PrefixKV} = {}): Promise<OnnxCpuBackend> {
    const manifest = await readOnnxManifest(onnxDir)
    const arch = archById(manifest.architecture)
    let config: ModelConfig
    try {
      config = JSON.parse(await readFile(join(onnxDir, 'config.json'), 'utf8'))
    } catch (error) {
      throw new ModelError(`${join(onnxDir, 'config.json')}: cannot read (${(error as Error).message})`, 'missing-file')
    }
    const d = manifest.dims
    if (opts.maxLength !== undefined && (!Number.isSafeInteger(opts.maxLength) || opts.maxLength < 1)) {
      throw new GlmtoolError('usage', `maxLength must be a positive integer (got ${opts.maxLength})`)
    }
    if (opts.kvCache !== undefined && opts.kvCache !== 'shared' && opts.kvCache !== 'feed-back') {
      throw new GlmtoolError('usage', `kvCache must be 'shared' or 'feed-back' (got ${String(opts.kvCache)})`)
    }
    const prefix = opts.prefix ?? await readPrefixFile(onnxDir, d)
    if (prefix) checkPrefix(prefix, d)
    let session: Ort.InferenceSession
    try {
      session = await ort().InferenceSession.create(join(onnxDir, manifest.model), {
        executionProviders: ['cpu'],
        graphOptimizationLevel: 'all',
        ...(opts.threads ? {intraOpNumThreads: opts.threads} : {}),
      })
    } catch (error) {
      throw new GlmtoolError('onnx-load', `${join(onnxDir, manifest.model)}: onnxruntime cannot load it (${(error as Error).message.split('\n')[0]})`)
    }
    const want = (xs: readonly {name: string}[]) => xs.map(x => x.name).join(',')
    if (session.inputNames.join(',') !== want(manifest.inputs) || session.outputNames.join(',') !== want(manifest.outputs)) {
      await session.release()
      throw new GlmtoolError('onnx-load', `${join(onnxDir, manifest.model)}: graph inputs/outputs differ from ${join(onnxDir, 'glmtool-onnx.json')}`)
    }
    const maxLength = Math.min(opts.maxLength ?? d.maxPositions, d.maxPositions)
    return new OnnxCpuBackend(session, arch, config, manifest, maxLength, prefix, opts.onOutputs, opts.kvCache)
  }

  get length(): number {
    return this.tokens
  }

  reset(): void {
    const d = this.manifest.dims
    const n = this.prefix?.length ?? 0
    this.tokens = 0
    if (this.sharedCache) {
      this.capacity = 0
      this.pastKeys = []
      this.pastValues = []
      this.grow(Math.min(n + this.maxLength, n + INITIAL_CAPACITY))
      return
    }
    const make = (data: readonly Float32Array[] | undefined) => Array.from({length: d.layers}, (_, i) =>
      new (ort().Tensor)('float32', data ? data[i] : new Float32Array(0), [1, d.kvHeads, n, d.headDim]))
    this.pastKeys = make(this.prefix?.keys)
    this.pastValues = make(this.prefix?.values)
  }

  /**
   * Shared cache: make each layer's buffers hold `rows` rows per head, keeping the rows in use
   * (the prefix and the cached tokens). On reset (capacity 0) the prefix is the content.
   */
  private grow(rows: number): void {
    const d = this.manifest.dims
    const used = (this.prefix?.length ?? 0) + this.tokens
    const old = this.capacity
    const move = (from: Float32Array | undefined, oldRows: number): Float32Array => {
      const to = new Float32Array(d.kvHeads * rows * d.headDim)
      if (from) {
        for (let h = 0; h < d.kvHeads; h++) {
          to.set(from.subarray(h * oldRows * d.headDim, (h * oldRows + used) * d.headDim), h * rows * d.headDim)
        }
      }
      return to
    }
    const build = (current: Ort.Tensor[], prefix: readonly Float32Array[] | undefined) => Array.from({length: d.layers}, (_, i) => {
      const data = old === 0 ? move(prefix?.[i], this.prefix?.length ?? 0) : move(current[i].data as Float32Array, old)
      return new (ort().Tensor)('float32', data, [1, d.kvHeads, rows, d.headDim])
    })
    this.pastKeys = build(this.pastKeys, this.prefix?.keys)
    this.pastValues = build(this.pastValues, this.prefix?.values)
    this.capacity = rows
  }

  async forward(input: ForwardInput): Promise<ForwardOutput> {
    const d = this.manifest.dims
    const S = input.ids.length
    this.check(input)
    const used = (this.prefix?.length ?? 0) + this.tokens + S
    if (this.sharedCache && used > this.capacity) {
      this.grow(Math.min((this.prefix?.length ?? 0) + this.maxLength, Math.max(used, 2 * this.capacity)))
    }
    const feeds: Record<string, Ort.Tensor> = {
      input_ids: new (ort().Tensor)('int64', BigInt64Array.from(input.ids, BigInt), [1, S]),
      position_ids: d.positionRows === 2
        ? new (ort().Tensor)('int64', BigInt64Array.from([...input.positions, ...input.blockPositions!], BigInt), [1, 2, S])
        : new (ort().Tensor)('int64', BigInt64Array.from(input.positions, BigInt), [1, S]),
      attention_bias: new (ort().Tensor)('float32', attentionBias(this.tokens, S, input.bidirectional, this.prefix?.length ?? 0),
        [1, 1, S, (this.prefix?.length ?? 0) + this.tokens + S]),
      logits_index: input.logits === 'last'
        ? new (ort().Tensor)('int64', BigInt64Array.of(BigInt(S - 1)), [1])
        : new (ort().Tensor)('int64', BigInt64Array.from({length: S}, (_, i) => BigInt(i)), [S]),
    }
    for (let i = 0; i < d.layers; i++) {
      feeds[`past_key_${i}`] = this.pastKeys[i]
      feeds[`past_value_${i}`] = this.pastValues[i]
    }
    let out: Ort.InferenceSession.OnnxValueMapType
    if (this.sharedCache) {
      // present_* bound to past_*'s buffers: the run appends the S new rows in place.
      const fetches: Record<string, Ort.Tensor | null> = {}
      for (const name of this.session.outputNames) fetches[name] = null
      for (let i = 0; i < d.layers; i++) {
        fetches[`present_key_${i}`] = this.pastKeys[i]
        fetches[`present_value_${i}`] = this.pastValues[i]
      }
      out = await this.session.run(feeds, fetches)
    } else {
      out = await this.session.run(feeds)
    }
    this.onOutputs?.(out as Record<string, Ort.Tensor>)
    if (!this.sharedCache) {
      for (let i = 0; i < d.layers; i++) {
        this.pastKeys[i] = out[`present_key_${i}`] as Ort.Tensor
        this.pastValues[i] = out[`present_value_${i}`] as Ort.Tensor
      }
    }
    this.tokens += S
    const logits = out.logits as Ort.Tensor
    const rows = input.logits === 'last' ? 1 : S
    return {logits: logits.data as Float32Array, rows, vocab: d.vocab}
  }

  private check(input: ForwardInput): void {
    const d = this.manifest.dims
    const S = input.ids.length
    const bad = (why: string): never => {
      throw new GlmtoolError('forward-input', `${this.name}: ${why}`)
    }
    if (S === 0) bad('forward needs at least one token')
    if (input.positions.length !== S) bad(`${S} ids but ${input.positions.length} positions`)
    if (d.positionRows === 2 && input.blockPositions?.length !== S) bad(`${this.arch.id} needs one block position per id (got ${input.blockPositions?.length ?? 'none'})`)
    if (this.tokens + S > this.maxLength) bad(`${this.tokens} cached + ${S} new tokens exceed the maximum length ${this.maxLength}`)
    for (const id of input.ids) if (!Number.isInteger(id) || id < 0 || id >= d.vocab) bad(`token id ${id} is outside the vocabulary (0..${d.vocab - 1})`)
    const positions = d.positionRows === 2 ? [...input.positions, ...input.blockPositions!] : input.positions
    for (const p of positions) if (!Number.isInteger(p) || p < 0 || p >= d.maxPositions) bad(`position ${p} is outside the rotary table (0..${d.maxPositions - 1})`)
  }

  async dispose(): Promise<void> {
    this.pastKeys = []
    this.pastValues = []
    await this.session.release()
  }
}

function checkPrefix(p: PrefixKV, d: DecoderDims): void {
  const size = p.length * d.kvHeads * d.headDim
  const ok = (xs: readonly Float32Array[]) => xs.length === d.layers && xs.every(x => x.length === size)
  if (!Number.isSafeInteger(p.length) || p.length < 0 || !ok(p.keys) || !ok(p.values)) {
    throw new GlmtoolError('bad-prefix', `prefix KV must hold ${d.layers} layers of [1, ${d.kvHeads}, ${p.length}, ${d.headDim}] keys and values`)
  }
}

/** The merged P-Tuning prefix stored beside an ONNX export (export-onnx.ts), if there is one. */
async function readPrefixFile(dir: string, d: DecoderDims): Promise<PrefixKV | undefined> {
  const path = join(dir, ONNX_PREFIX_FILE)
  if (!existsSync(path)) return undefined
  const file = await openSafetensors(path)
  const byName = new Map(file.tensors.map(t => [t.name, t]))
  const keys: Float32Array[] = []
  const values: Float32Array[] = []
  let length = 0
  for (let i = 0; i < d.layers; i++) {
    for (const [kind, list] of [['key', keys], ['value', values]] as const) {
      const t = byName.get(`transformer.prefix_cache.${i}.${kind}`)
      if (!t || t.dtype !== 'F32' || t.shape.length !== 3) throw new GlmtoolError('bad-prefix', `${path}: transformer.prefix_cache.${i}.${kind} is missing or not float32 [kv_heads, pre_seq_len, head_dim]`)
      length = t.shape[1]
      const bytes = await readTensor(t)
      list.push(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4).slice())
    }
  }
  return {length, keys, values}
}
