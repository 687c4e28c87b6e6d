import {setImmediate as nextTurn} from 'node:timers/promises'
import {GlmtoolError, ModelError} from '../../errors.js'
import {convertChunk} from '../../formats/dtype-convert.js'
import {dequantizedTensor} from '../../formats/dequantized-tensor.js'
import {type DType, numel} from '../../formats/dtype.js'
import {type DetectedModel, openModel} from '../../pipelines/model-dir.js'
import type {TensorEntry} from '../../formats/tensor.js'
import type {Arch, ArchId, ModelConfig} from '../../models/index.js'
import {PREFIX_CACHE_MARKER} from '../../models/arch.js'
import {GLMTOOL_QUANT_KEY, quantizableNames, quantLayoutOf, type QuantLayout, scaleNameOf} from '../../models/quantized-layout.js'
import {type DecodeManyInput, type DecoderBackend, type DeviceSampling, type ForwardInput, type ForwardOutput, type KvDtype, promptInterrupted} from '../backend.js'
import {
  type CudaAddon, type CudaEngine, type CudaEngineConfig, type CudaEngineInfo, type CudaMemoryStats, type CudaProbe, loadCudaAddon, WEIGHT_KINDS,
} from './cuda-addon.js'

export interface CudaBackendOptions {
  /** The user's --arch (src/pipelines/model-dir.ts OpenModelOptions). */
  arch?: ArchId
  /** config.json and the generation, already read and detected by the caller (chat-model.ts): not again. */
  detected?: DetectedModel
  /** Tokens the KV cache holds, allocated up front (default: the reference's max_length, 2048 v1 / 8192 v2, within the model's positions). */
  maxLength?: number
  /** Capture the decode step as a CUDA graph (default true; false runs the same kernels launch by launch). */
  useGraph?: boolean
  /** The KV cache's element type: 'f16' (default) the model's float type, 'int8' int8 with a scale per KV group and token. */
  kvDtype?: KvDtype
  /** Bytes streamed so far / in all, while loading. */
  onBytes?: (bytes: number) => void
  onStart?: (totalBytes: number) => void
}

/** One tensor's place in the engine. */
interface Placement {
  tensor: TensorEntry
  kind: number
  layer: number
}

const K = WEIGHT_KINDS
const PREFIX_RE = /^transformer\.prefix_cache\.(\d+)\.(key|value)$/

/** Every tensor name the engine needs for this config (the generation module's table), with its slot; prefix caches separately. */
function tensorSlots(arch: Arch, config: ModelConfig): Map<string, {kind: number, layer: number}> {
  return new Map(arch.engineTensors(config).map(t => [t.name, {kind: K[t.slot], layer: t.layer}]))
}

/**
 * The engine's sizes and feature flags from config.json (the generation module's engineDims and
 * engineFlags); refuses layouts it does not implement.
 */
export function engineDims(arch: Arch, config: ModelConfig): Omit<CudaEngineConfig, 'dtype' | 'maxLength' | 'prefixLength' | 'useGraph'> & {maxPositions: number} {
  return {...arch.engineDims(config), ...arch.engineFlags(config)}
}

/**
 * The KV cache length when the caller gives none: the published chat() max_length (the
 * module's chatDefaults: 2048 ChatGLM-6B, 8192 ChatGLM2-6B and ChatGLM3-6B).
 */
function defaultMaxLength(arch: Arch): number {
  return arch.chatDefaults.maxLength
}

/** Most steps one decodeMany call takes (native/kernels.cuh MANY_MAX). */
export const DECODE_MANY_MAX = 512

/**
 * Decode steps per host call (GLMTOOL_CUDA_STEPS, default 16): that many steps run back to back
 * on the GPU, the next token's embedding row gathered by the GPU; 1: one engine call per token
 * (the earlier path, kept for same-lease A/B). 16 steps keep streamed text responsive (about
 * 80 ms of tokens at a time on an H100).
 */
export function cudaDecodeBatch(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.GLMTOOL_CUDA_STEPS
  if (raw === undefined || raw === '') return 16
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < 1 || n > DECODE_MANY_MAX) {
    throw new GlmtoolError('usage', `GLMTOOL_CUDA_STEPS must be an integer 1..${DECODE_MANY_MAX} (got ${JSON.stringify(raw)})`)
  }
  return n
}

const ENGINE_DTYPES: Partial<Record<DType, 0 | 1>> = {F16: 0, BF16: 1}

/** One tensor's place in the engine and how it travels: as is, or converted to the slot's float type. */
export interface UploadPlacement extends Placement {
  /** Bytes the engine's slot takes from this tensor (int8 / packed int4: one byte per stored element). */
  bytes: number
  /** The element type the slot holds (I8: quantized weights, sent as they are). */
  to: DType
}

export interface CudaUploadPlan {
  /** The float type of activations, norms, biases, embeddings and the output layer. */
  dtype: 'F16' | 'BF16'
  /** Weight-only quantization of the per-layer linears (undefined: a float checkpoint). */
  quant?: QuantLayout
  prefixLength: number
  placements: UploadPlacement[]
}

const SCALE_KIND: Record<number, number> = {[K.W_QKV]: K.S_QKV, [K.W_DENSE]: K.S_DENSE, [K.W_UP]: K.S_UP, [K.W_DOWN]: K.S_DOWN}

/**
 * Where every tensor of a checkpoint goes in the engine, checked before anything is allocated:
 * a float checkpoint (fp16 / bf16), or a quantized one (glmtool `quantize` output or the
 * published int4 layout: config.json quantization_bit 4 / 8, each per-layer linear an int8
 * `weight` (int4: two per byte) with its `weight_scale`, per output row or per group of
 * columns). Quantized weights go to the GPU as stored (never as fp16); scales as fp16. A
 * quantized embedding table is dequantized on the host (it lives there); a quantized output
 * layer is refused, naming the tensor and the file.
 */
export function planCudaUpload(path: string, arch: Arch, config: ModelConfig, tensors: readonly TensorEntry[], layers: number): CudaUploadPlan {
  const quant = quantLayoutOf(config, `${path}/config.json`)
  const byName = new Map(tensors.map(t => [t.name, t]))
  const names = quantizableNames(arch)
  if (quant) {
    const t = byName.get(names.lmHead)
    if (quant.lmHead || (t && t.dtype === 'I8') || byName.has(scaleNameOf(names.lmHead))) {
      throw new GlmtoolError('cuda-unsupported', `${t?.file ?? path}: tensor ${names.lmHead} (the output layer) is quantized; the CUDA backend runs quantized per-layer linears with a float16 output layer (quantize with \`--skip lm_head\`; the default keeps the embeddings float too)`)
    }
    const e = byName.get(names.embeddings)
    if (!quant.embeddings && ((e && e.dtype === 'I8') || byName.has(scaleNameOf(names.embeddings)))) {
      throw new ModelError(`${e?.file ?? path}: tensor ${names.embeddings} is int8, but config.json's ${GLMTOOL_QUANT_KEY} says the embeddings are float`, 'bad-dtype')
    }
  }
  // the float type: a norm weight (the first layer's input norm), never quantized
  const slots = tensorSlots(arch, config)
  const normName = [...slots].find(([, s]) => s.kind === K.W_LN1 && s.layer === 0)?.[0]
  const norm = normName === undefined ? undefined : byName.get(normName)
  if (!norm) throw new ModelError(`${path}: no input_layernorm weight of layer 0`, 'incomplete-model')
  const dtypeCode = ENGINE_DTYPES[norm.dtype]
  if (dtypeCode === undefined) {
    throw new GlmtoolError('cuda-unsupported', `${path}: weights are ${norm.dtype}; the CUDA backend runs float16 and bfloat16 checkpoints (convert with \`glmtool convert --to safetensors --dtype f16\`)`)
  }
  const dtype: 'F16' | 'BF16' = dtypeCode === 0 ? 'F16' : 'BF16'
  if (quant) {
    for (const [name, s] of [...slots]) {
      const scaleKind = SCALE_KIND[s.kind]
      if (scaleKind !== undefined) slots.set(scaleNameOf(name), {kind: scaleKind, layer: s.layer})
    }
  }
  const placements: UploadPlacement[] = []
  const unexpected: string[] = []
  // merge-adapter's output carries the published prefix encoder beside the prefix cache, for
  // the published modeling code; the engine runs the cache. Elsewhere the encoder is refused.
  const publishedEncoderCopy = config.glmtool_prefix === PREFIX_CACHE_MARKER
  let prefixLength = 0
  // A quantized embedding table (`quantize --skip lm_head`): the engine keeps the table in host
  // memory as the model's float type and reads one row a token, so it is dequantized on the way
  // (dequantizedTensor: fp16(q * scale), block by block); its scale is consumed with it.
  const embeddingScale = quant?.embeddings ? scaleNameOf(names.embeddings) : undefined
  for (const t of tensors) {
    const s = slots.get(t.name)
    const prefix = PREFIX_RE.exec(t.name)
    if (s && quant?.embeddings && t.name === names.embeddings) {
      const scale = byName.get(embeddingScale!)
      if (!scale) throw new GlmtoolError('incomplete-model', `${t.file}: tensor ${t.name} is quantized (config.json) but ${embeddingScale} is missing`)
      const cols = arch.tensors(config).get(t.name)!.shape[1]
      const table = dequantizedTensor(t, scale, quant, cols, dtype)
      placements.push({tensor: table, ...s, to: dtype, bytes: numel(table.shape) * 2})
      slots.delete(t.name)
    } else if (t.name === embeddingScale) {
      continue
    } else if (s) {
      const quantized = quant !== undefined && SCALE_KIND[s.kind] !== undefined
      const isScale = quant !== undefined && Object.values(SCALE_KIND).includes(s.kind)
      if (quantized && t.dtype !== 'I8') {
        throw new ModelError(`${t.file}: tensor ${t.name} is ${t.dtype}; a quantization_bit ${quant.bits} checkpoint stores it as int8`, 'bad-dtype')
      }
      if (!quantized && t.dtype === 'I8') {
        throw new GlmtoolError('cuda-unsupported', `${t.file}: tensor ${t.name} is int8; the CUDA backend quantizes only the per-layer linears (query_key_value, dense, dense_h_to_4h, dense_4h_to_h)`)
      }
      if (!quantized && ENGINE_DTYPES[t.dtype] === undefined && t.dtype !== 'F32') {
        throw new ModelError(`${t.file}: tensor ${t.name} is ${t.dtype}, not a float type`, 'bad-dtype')
      }
      const to: DType = quantized ? 'I8' : isScale ? 'F16' : dtype
      placements.push({tensor: t, ...s, to, bytes: numel(t.shape) * (to === 'I8' ? 1 : 2)})
      slots.delete(t.name)
    } else if (prefix) {
      const layer = Number(prefix[1])
      if (t.shape.length !== 3 || layer >= layers) throw new ModelError(`${path}: tensor ${t.name} has shape [${t.shape}], expected [kvHeads, pre_seq_len, headDim] of a layer below ${layers}`, 'bad-prefix')
      prefixLength = t.shape[1]
      placements.push({tensor: t, kind: prefix[2] === 'key' ? K.PREFIX_K : K.PREFIX_V, layer, to: dtype, bytes: numel(t.shape) * 2})
    } else if (!t.name.endsWith('inv_freq') && !(publishedEncoderCopy && t.name.startsWith('transformer.prefix_encoder.'))) {
      unexpected.push(t.name)
    }
  }
  if (slots.size) {
    const missing = [...slots.keys()]
    throw new GlmtoolError('incomplete-model', `${path}: not a complete ${arch.id} checkpoint${quant ? ` (int${quant.bits})` : ''}: missing ${missing.length} tensor(s): ${missing.slice(0, 4).join(', ')}${missing.length > 4 ? ` and ${missing.length - 4} more` : ''}`)
  }
  if (unexpected.length) {
    throw new GlmtoolError('cuda-unsupported', `${path}: tensors the CUDA backend does not know: ${unexpected.slice(0, 4).join(', ')}${unexpected.length > 4 ? ` and ${unexpected.length - 4} more` : ''} (unmerged adapters? use \`glmtool merge-adapter\` first)`)
  }
  return {dtype, quant, prefixLength, placements}
}

/**
 * ChatGLM decoder on glmtool's CUDA engine (native/): weights of a safetensors (glmtool's
 * convert output) or torch model directory stream tensor by tensor, in pieces, from disk through
 * the engine's pinned staging buffers to the GPU; the model is never whole in host memory (only
 * the embedding table stays there, pinned: the GPU reads one row per token from it). fp16 and bf16 checkpoints; the
 * KV cache is allocated for maxLength up front. A P-Tuning v2 prefix merged by `merge-adapter`
 * (transformer.prefix_cache.<i>.key/value) is placed in front of the cache.
 */
export class CudaBackend implements DecoderBackend {
  readonly name = 'cuda'
  readonly decodeBatch = cudaDecodeBatch()
  private tokens = 0
  private disposed = false

  private constructor(
    private readonly engine: CudaEngine,
    readonly arch: Arch,
    readonly config: ModelConfig,
    readonly maxLength: number,
    readonly dtype: 'f16' | 'bf16',
    readonly device: CudaProbe,
    readonly addon: CudaAddon,
    private readonly vocab: number,
    private readonly maxChunk: number,
    readonly loadSeconds: number,
    /** Whether the engine rotates by block positions too (2D rotary), so every token needs one. */
    private readonly blockPositions: boolean,
    /** The checkpoint's weight-only quantization (undefined: float weights). */
    readonly quant?: QuantLayout,
    /** The KV cache's element type. */
    readonly kvDtype: KvDtype = 'f16',
  ) {}

  static async load(path: string, opts: CudaBackendOptions = {}): Promise<CudaBackend> {
    const started = performance.now()
    const {addon, device} = loadCudaAddon()
    const model = await openModel(path, {arch: opts.arch, detected: opts.detected})
    try {
      if (!model.arch || !model.config) throw new ModelError(`${path}: config.json is missing`, 'missing-file')
      const arch = model.arch
      const config = model.config
      const dims = engineDims(arch, config)
      if (opts.maxLength !== undefined && (!Number.isSafeInteger(opts.maxLength) || opts.maxLength < 1)) {
        throw new GlmtoolError('usage', `maxLength must be a positive integer (got ${opts.maxLength})`)
      }
      const maxLength = Math.min(opts.maxLength ?? defaultMaxLength(arch), dims.maxPositions)
      const plan = planCudaUpload(path, arch, config, model.tensors, dims.layers)
      const {placements, prefixLength} = plan
      const dtypeCode = ENGINE_DTYPES[plan.dtype]!
      const quantBits = plan.quant?.bits ?? 0
      const groupSize = plan.quant?.groupSize ?? 0
      const {maxPositions: _unused, ...engineDimsOnly} = dims
      void _unused
      let engine: CudaEngine
      try {
        engine = new addon.Engine({
          ...engineDimsOnly, dtype: dtypeCode, maxLength, prefixLength, useGraph: opts.useGraph ?? true, quantBits, groupSize,
          kvDtype: opts.kvDtype === 'int8' ? 1 : 0,
        })
      } catch (error) {
        throw new GlmtoolError('cuda-error', `CUDA engine for ${path}: ${(error as Error).message}`)
      }
      try {
        for (const p of placements) {
          const want = engine.slotBytes(p.kind, p.layer)
          if (want !== p.bytes) {
            throw new ModelError(`${p.tensor.file}: tensor ${p.tensor.name} is [${p.tensor.shape}] (${p.bytes} bytes as ${p.to}), the config needs ${want} bytes`, 'bad-shape')
          }
        }
        opts.onStart?.(placements.reduce((a, p) => a + p.bytes, 0))
        for (const p of placements) {
          let offset = 0
          for await (const chunk of p.tensor.chunks()) {
            const data = p.tensor.dtype === p.to ? chunk : convertChunk(chunk, p.tensor.dtype, p.to)
            engine.upload(p.kind, p.layer, offset, data)
            offset += data.length
            opts.onBytes?.(data.length)
          }
        }
        engine.finishLoad()
      } catch (error) {
        engine.dispose()
        if (error instanceof GlmtoolError) throw error
        throw new GlmtoolError('cuda-error', `loading ${path} onto the GPU: ${(error as Error).message}`)
      }
      return new CudaBackend(engine, arch, config, maxLength, dtypeCode === 0 ? 'f16' : 'bf16', device, addon, dims.vocab,
        engine.info().maxChunk, (performance.now() - started) / 1000, dims.rotary2d, plan.quant, opts.kvDtype ?? 'f16')
    } finally {
      await model.close()
    }
  }

  get length(): number {
    return this.tokens
  }

  reset(): void {
    this.tokens = 0
  }

  memory(): CudaMemoryStats {
    return this.live().memory()
  }

  info(): CudaEngineInfo {
    return this.live().info()
  }

  /** The prefill attention that runs: 'cublas' (scores, masked softmax, cuBLAS), 'flash' or 'flash MT2'; undefined from an addon built before the switch. */
  prefillAttention(): string | undefined {
    const f = this.info().prefillFlash
    return f === undefined ? undefined : f === 0 ? 'cublas' : f === 2 ? 'flash MT2' : 'flash'
  }

  /** Turn the decode graph on or off (tests compare both). */
  setUseGraph(on: boolean): void {
    this.live().setUseGraph(on)
  }

  /** Turn programmatic dependent launch on or off (tests compare both). */
  setUsePdl(on: boolean): void {
    this.live().setUsePdl(on)
  }

  async forward(input: ForwardInput): Promise<ForwardOutput> {
    const rows = input.logits === 'last' ? 1 : input.ids.length
    const logits = new Float32Array(rows * this.vocab)
    await this.run(input, input.logits === 'last' ? 1 : 2, logits, null)
    return {logits, rows, vocab: this.vocab}
  }

  async forwardSample(input: Omit<ForwardInput, 'logits'>, sampling: DeviceSampling): Promise<number> {
    return this.run({...input, logits: 'last'}, 0, null, sampling)
  }

  async decodeMany(input: DecodeManyInput, sampling: Omit<DeviceSampling, 'random'>, randoms: readonly number[]): Promise<number[]> {
    const engine = this.live()
    const n = input.positions.length
    const bad = (why: string): never => {
      throw new GlmtoolError('forward-input', `${this.name}: ${why}`)
    }
    if (n < 1 || n > DECODE_MANY_MAX) bad(`decodeMany takes 1..${DECODE_MANY_MAX} steps (got ${n})`)
    if (this.blockPositions && input.blockPositions?.length !== n) bad(`${this.arch.id} needs one block position per step (got ${input.blockPositions?.length ?? 'none'})`)
    if (!sampling.greedy && randoms.length !== n) bad(`decodeMany needs one random draw per step (got ${randoms.length} for ${n})`)
    if (this.tokens + n > this.maxLength) bad(`${this.tokens} cached + ${n} new tokens exceed the maximum length ${this.maxLength}`)
    if (!Number.isInteger(input.id) || input.id < 0 || input.id >= this.vocab) bad(`token id ${input.id} is outside the vocabulary (0..${this.vocab - 1})`)
    const out = new Int32Array(n)
    try {
      engine.decodeMany(input.id, Int32Array.from(input.positions), input.blockPositions ? Int32Array.from(input.blockPositions) : null,
        this.tokens, input.bidirectional, {...sampling, random: 0}, sampling.greedy ? null : Float32Array.from(randoms), out)
    } catch (error) {
      throw new GlmtoolError('cuda-error', `${this.name}: ${(error as Error).message}`)
    }
    this.tokens += n
    return Array.from(out)
  }

  truncate(length: number): void {
    if (Number.isSafeInteger(length) && length >= 0 && length < this.tokens) this.tokens = length
  }

  private async run(input: ForwardInput, mode: 0 | 1 | 2, logits: Float32Array | null, sampling: DeviceSampling | null): Promise<number> {
    const engine = this.live()
    this.check(input)
    const S = input.ids.length
    // v2's causal prompt may be longer than one engine call takes: run it in pieces. v1's
    // bidirectional context must be one piece (earlier tokens see later ones). Each engine call
    // blocks the thread until the GPU is done, so the event loop gets a turn between pieces: a
    // 32k-token prompt (16 pieces) leaves a server answering (/health, disconnects, other
    // streams' writes) every piece instead of after the whole prompt.
    const step = this.maxChunk
    if (S > step && input.bidirectional > this.tokens) {
      throw new GlmtoolError('prompt-too-long', `${this.name}: a ${S}-token prompt with a bidirectional context longer than ${step} tokens cannot be run in pieces`)
    }
    let token = -1
    for (let s0 = 0; s0 < S; s0 += step) {
      if (s0 > 0) {
        await nextTurn()
        if (input.signal?.aborted) throw promptInterrupted(this.name, s0, S)
      }
      const s1 = Math.min(S, s0 + step)
      const last = s1 === S
      const pieceMode = mode === 2 ? 2 : last ? mode : 0
      const out = pieceMode === 2 ? logits!.subarray(s0 * this.vocab, s1 * this.vocab) : pieceMode === 1 ? logits : null
      try {
        token = engine.forward(Int32Array.from(input.ids.slice(s0, s1)), Int32Array.from(input.positions.slice(s0, s1)),
          input.blockPositions ? Int32Array.from(input.blockPositions.slice(s0, s1)) : null, this.tokens, input.bidirectional,
          pieceMode, out, last ? sampling : null)
      } catch (error) {
        throw new GlmtoolError('cuda-error', `${this.name}: ${(error as Error).message}`)
      }
      this.tokens += s1 - s0
    }
    return token
  }

  private check(input: ForwardInput): void {
    const S = input.ids.length
    const bad = (why: string): never => {
      throw new GlmtoolError('forward-input', `${this.name}: ${why}`)
    }
    if (S === 0) bad('forward needs at least one token')
    if (input.positions.length !== S) bad(`${S} ids but ${input.positions.length} positions`)
    if (this.blockPositions && input.blockPositions?.length !== S) bad(`${this.arch.id} needs one block position per id (got ${input.blockPositions?.length ?? 'none'})`)
    if (this.tokens + S > this.maxLength) bad(`${this.tokens} cached + ${S} new tokens exceed the maximum length ${this.maxLength}`)
    for (const id of input.ids) if (!Number.isInteger(id) || id < 0 || id >= this.vocab) bad(`token id ${id} is outside the vocabulary (0..${this.vocab - 1})`)
  }

  private live(): CudaEngine {
    if (this.disposed) throw new GlmtoolError('cuda-error', `${this.name}: the backend was disposed`)
    return this.engine
  }

  async dispose(): Promise<void> {
    if (this.disposed) return
    this.disposed = true
    this.engine.dispose()
  }
}
