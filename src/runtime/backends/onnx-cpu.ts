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
import {type DecoderBackend, type ForwardInput, type ForwardOutput, promptInterrupted} from '../backend.js'

/** Rows per head a KV-cache buffer starts with past the prefix (it doubles as needed, up to prefix + maxLength). */
const INITIAL_CAPACITY = 256

/**
 * A long prompt runs in pieces so that one layer's attention scores (float32 [heads, rows,
 * cache + rows], materialised by the graph) stay near this size: a 32k-token prompt would
 * otherwise need 128 GiB of scores for ChatGLM2-6B's 32 heads. Pieces are at least
 * PREFILL_MIN_ROWS rows (the linears' efficiency).
 */
export const PREFILL_SCORE_BYTES = 1 << 30
const PREFILL_MIN_ROWS = 64

export interface OnnxCpuOptions {
  /** Largest number of tokens the cache may hold (default and ceiling: the graph's rotary table rows). */
  maxLength?: number
  /** onnxruntime intra-op threads (default: onnxruntime's choice, the physical cores). */
  threads?: number
  /** Most prompt rows one graph run takes (default: from PREFILL_SCORE_BYTES and the context length); tests set it small. */
  prefillRows?: number
  /**
   * Called with every output of each run, the decoder's and any extra ones (the calibration
   * variant's linear inputs, pipelines/quantize/activation-stats.ts), before forward() returns.
   */
  onOutputs?: (outputs: Readonly<Record<string, Ort.Tensor>>) => void
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
 * The onnxruntime optimizers that turn a float16 initializer and its Cast into a float32
 * initializer at session creation (constant folding, and with folding off, a transformer that
 * does the same fusion): both off keeps a `runtime_weights: float16` export's weights float16
 * in memory, each Cast run at its point of use. The list is ';'-separated (onnxruntime 1.30
 * reads "a,b" as one name).
 */
export const KEEP_F16_DISABLED_OPTIMIZERS = 'ConstantFolding;FuseFp16InitializerToFp32NodeTransformer'

/** The session options OnnxCpuBackend loads `manifest`'s graph with. */
export function onnxCpuSessionOptions(manifest: OnnxManifest, threads?: number): Ort.InferenceSession.SessionOptions {
  return {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    ...(threads ? {intraOpNumThreads: threads} : {}),
    ...(manifest.runtime_weights === 'float16' ? {extra: {optimization: {disable_specified_optimizers: KEEP_F16_DISABLED_OPTIMIZERS}}} : {}),
  }
}

/**
 * The attention_bias of a graph that reads a KV-cache buffer (chatglm-graph.ts: T = C + S), [S, C + S]:
 * the buffer's first `prefix + past` rows (the prefix, then the cached tokens) are visible to
 * every new token (they come before it), its other rows masked; the last S columns are the new
 * tokens among themselves, as attentionBias masks them. capacity 0 (no buffer) is attentionBias.
 */
export function bufferAttentionBias(past: number, capacity: number, newTokens: number, bidirectional: number, prefix = 0): Float32Array {
  const used = prefix + past
  if (capacity < used) throw new Error(`bufferAttentionBias: ${used} cached rows do not fit a buffer of ${capacity}`)
  const inner = attentionBias(past, newTokens, bidirectional, prefix)
  const innerT = used + newTokens
  const T = capacity + newTokens
  const bias = new Float32Array(newTokens * T)
  for (let s = 0; s < newTokens; s++) {
    bias.fill(MASKED, s * T + used, s * T + capacity)
    bias.set(inner.subarray(s * innerT + used, (s + 1) * innerT), s * T + capacity)
  }
  return bias
}

/**
 * ChatGLM decoder on onnxruntime-node's CPU provider, over a `glmtool convert --to onnx`
 * directory (I/O contract in src/formats/onnx/chatglm-graph.ts).
 *
 * KV cache (issue 13): one buffer per layer and K/V, [1, Hkv, capacity, D], holding the prefix
 * then the cached tokens' rows; each run reads it in place as past_key/past_value (onnxruntime-node
 * wraps an input's memory, no copy) and returns only the new rows, which are appended here. So a
 * decode step touches the cache only where attention reads it. The capacity doubles (one copy)
 * when the rows outgrow it, up to prefix + maxLength. Exports made before that contract (past
 * [1, Hkv, P, D] -> present = past + new, [1, Hkv, P + S, D]) run the old way: each run's present
 * fed back as the next past, which copies the whole cache every step.
 */
export class OnnxCpuBackend implements DecoderBackend {
  readonly name = 'onnx-cpu'
  readonly maxLength: number
  private pastKeys: Ort.Tensor[] = []
  private pastValues: Ort.Tensor[] = []
  private tokens = 0
  /** Whether the graph reads a cache buffer and returns new rows (the issue-13 contract) rather than returning past + new. */
  readonly bufferCache: boolean
  /** Buffer mode: rows per head of each layer's buffers, and the buffers (K then V per layer). */
  private capacity = 0
  private keyRows: Float32Array[] = []
  private valueRows: Float32Array[] = []

  private constructor(
    private readonly session: Ort.InferenceSession,
    readonly arch: Arch,
    readonly config: ModelConfig,
    readonly manifest: OnnxManifest,
    maxLength: number,
    private readonly prefix: PrefixKV | undefined,
    private readonly onOutputs?: OnnxCpuOptions['onOutputs'],
    private readonly prefillRowsOpt?: number,
  ) {
    this.maxLength = maxLength
    this.bufferCache = manifest.inputs.find(t => t.name === 'past_key_0')?.shape[2] === 'C'
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
    const prefix = opts.prefix ?? await readPrefixFile(onnxDir, d)
    if (prefix) checkPrefix(prefix, d)
    let session: Ort.InferenceSession
    try {
      session = await ort().InferenceSession.create(join(onnxDir, manifest.model), onnxCpuSessionOptions(manifest, opts.threads))
    } catch (error) {
      throw new GlmtoolError('onnx-load', `${join(onnxDir, manifest.model)}: onnxruntime cannot load it (${(error as Error).message.split('\n')[0]})`)
    }
    const want = (xs: readonly {name: string}[]) => xs.map(x => x.name).join(',')
    if (session.inputNames.join(',') !== want(manifest.inputs) || session.outputNames.join(',') !== want(manifest.outputs)) {
      await session.release()
      throw new GlmtoolError('onnx-load', `${join(onnxDir, manifest.model)}: graph inputs/outputs differ from ${join(onnxDir, 'glmtool-onnx.json')}`)
    }
    const maxLength = Math.min(opts.maxLength ?? d.maxPositions, d.maxPositions)
    if (opts.prefillRows !== undefined && (!Number.isSafeInteger(opts.prefillRows) || opts.prefillRows < 1)) {
      await session.release()
      throw new GlmtoolError('usage', `prefillRows must be a positive integer (got ${opts.prefillRows})`)
    }
    return new OnnxCpuBackend(session, arch, config, manifest, maxLength, prefix, opts.onOutputs, opts.prefillRows)
  }

  get length(): number {
    return this.tokens
  }

  reset(): void {
    const d = this.manifest.dims
    const n = this.prefix?.length ?? 0
    this.tokens = 0
    if (this.bufferCache) {
      this.capacity = 0
      this.keyRows = []
      this.valueRows = []
      this.grow(n + Math.min(this.maxLength, INITIAL_CAPACITY))
      return
    }
    const make = (data: readonly Float32Array[] | undefined) => Array.from({length: d.layers}, (_, i) =>
      new (ort().Tensor)('float32', data ? data[i] : new Float32Array(0), [1, d.kvHeads, n, d.headDim]))
    this.pastKeys = make(this.prefix?.keys)
    this.pastValues = make(this.prefix?.values)
  }

  /** Buffer mode: make each buffer `rows` rows per head, keeping the rows in use (on reset: the prefix). */
  private grow(rows: number): void {
    const d = this.manifest.dims
    const n = this.prefix?.length ?? 0
    const used = n + this.tokens
    const resize = (from: Float32Array | undefined, fromRows: number): Float32Array => {
      const to = new Float32Array(d.kvHeads * rows * d.headDim)
      for (let h = 0; from && h < d.kvHeads; h++) {
        to.set(from.subarray(h * fromRows * d.headDim, (h * fromRows + used) * d.headDim), h * rows * d.headDim)
      }
      return to
    }
    const fresh = this.capacity === 0
    this.keyRows = Array.from({length: d.layers}, (_, i) => fresh ? resize(this.prefix?.keys[i], n) : resize(this.keyRows[i], this.capacity))
    this.valueRows = Array.from({length: d.layers}, (_, i) => fresh ? resize(this.prefix?.values[i], n) : resize(this.valueRows[i], this.capacity))
    this.capacity = rows
    const tensor = (data: Float32Array) => new (ort().Tensor)('float32', data, [1, d.kvHeads, rows, d.headDim])
    this.pastKeys = this.keyRows.map(tensor)
    this.pastValues = this.valueRows.map(tensor)
  }

  /** Buffer mode: append a run's present rows ([1, Hkv, S, D] per layer) after the `used` rows in use. */
  private append(out: Readonly<Record<string, Ort.Tensor>>, used: number, S: number): void {
    const d = this.manifest.dims
    const n = this.prefix?.length ?? 0
    if (used + S > this.capacity) this.grow(Math.min(n + this.maxLength, Math.max(used + S, 2 * this.capacity)))
    const C = this.capacity
    const D = d.headDim
    for (let i = 0; i < d.layers; i++) {
      for (const [rows, name] of [[this.keyRows[i], `present_key_${i}`], [this.valueRows[i], `present_value_${i}`]] as const) {
        const fresh = out[name].data as Float32Array
        for (let h = 0; h < d.kvHeads; h++) rows.set(fresh.subarray(h * S * D, (h + 1) * S * D), (h * C + used) * D)
      }
    }
  }

  /**
   * Runs the new tokens, a long prompt in pieces of at most prefillRows() rows, each piece's
   * keys and values cached before the next (the same result as one run: each row sees the
   * same keys). ChatGLM-6B's bidirectional context is one piece (its tokens see later ones);
   * the calibration variant (onOutputs) runs whole.
   */
  async forward(input: ForwardInput): Promise<ForwardOutput> {
    this.check(input)
    const S = input.ids.length
    const step = this.prefillRows(S)
    if (S <= step || this.onOutputs || !this.bufferCache) return this.run(input)
    const first = Math.min(S, Math.max(step, input.bidirectional - this.tokens))
    const parts: Float32Array[] = []
    let out: ForwardOutput | undefined
    for (let s0 = 0; s0 < S;) {
      if (s0 > 0 && input.signal?.aborted) throw promptInterrupted(this.name, s0, S)
      const s1 = Math.min(S, s0 + (s0 === 0 ? first : step))
      out = await this.run({
        ids: input.ids.slice(s0, s1), positions: input.positions.slice(s0, s1), blockPositions: input.blockPositions?.slice(s0, s1),
        bidirectional: input.bidirectional, logits: input.logits,
      })
      if (input.logits === 'all') parts.push(out.logits.slice())
      s0 = s1
    }
    if (input.logits !== 'all') return out!
    const logits = new Float32Array(S * out!.vocab)
    let off = 0
    for (const p of parts) {
      logits.set(p, off)
      off += p.length
    }
    return {logits, rows: S, vocab: out!.vocab}
  }

  /** Rows per run for S new tokens: one layer's scores near PREFILL_SCORE_BYTES (the buffer may be twice the rows in use). */
  private prefillRows(S: number): number {
    if (this.prefillRowsOpt !== undefined) return this.prefillRowsOpt
    const d = this.manifest.dims
    const total = (this.prefix?.length ?? 0) + this.tokens + S
    return Math.max(PREFILL_MIN_ROWS, Math.floor(PREFILL_SCORE_BYTES / (d.heads * 4 * 2 * total)))
  }

  private async run(input: ForwardInput): Promise<ForwardOutput> {
    const d = this.manifest.dims
    const S = input.ids.length
    const n = this.prefix?.length ?? 0
    const used = n + this.tokens
    // Buffer mode: no rows in use (a first prefill without prefix) -> no buffer (C = 0), so the
    // prompt's scores are not widened by the buffer's unused rows.
    const C = this.bufferCache && used > 0 ? this.capacity : 0
    const feeds: Record<string, Ort.Tensor> = {
      input_ids: new (ort().Tensor)('int64', BigInt64Array.from(input.ids, BigInt), [1, S]),
      position_ids: d.positionRows === 2
        ? new (ort().Tensor)('int64', BigInt64Array.from([...input.positions, ...input.blockPositions!], BigInt), [1, 2, S])
        : new (ort().Tensor)('int64', BigInt64Array.from(input.positions, BigInt), [1, S]),
      attention_bias: this.bufferCache
        ? new (ort().Tensor)('float32', bufferAttentionBias(this.tokens, C, S, input.bidirectional, n), [1, 1, S, C + S])
        : new (ort().Tensor)('float32', attentionBias(this.tokens, S, input.bidirectional, n), [1, 1, S, n + this.tokens + S]),
      logits_index: input.logits === 'last'
        ? new (ort().Tensor)('int64', BigInt64Array.of(BigInt(S - 1)), [1])
        : new (ort().Tensor)('int64', BigInt64Array.from({length: S}, (_, i) => BigInt(i)), [S]),
    }
    const none = this.bufferCache && C === 0 ? new (ort().Tensor)('float32', new Float32Array(0), [1, d.kvHeads, 0, d.headDim]) : undefined
    for (let i = 0; i < d.layers; i++) {
      feeds[`past_key_${i}`] = none ?? this.pastKeys[i]
      feeds[`past_value_${i}`] = none ?? this.pastValues[i]
    }
    const out = await this.session.run(feeds) as Record<string, Ort.Tensor>
    this.onOutputs?.(out)
    if (this.bufferCache) {
      this.append(out, used, S)
    } else {
      for (let i = 0; i < d.layers; i++) {
        this.pastKeys[i] = out[`present_key_${i}`]
        this.pastValues[i] = out[`present_value_${i}`]
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
    this.keyRows = []
    this.valueRows = []
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
