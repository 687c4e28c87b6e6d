import {writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {byteLength, type DType, numel, TORCH_DTYPE_OF} from '../formats/dtype.js'
import {decodeFloats, encodeFloats, toBFloat16Bits, toFloat16Bits} from '../formats/dtype-convert.js'
import {TORCH_INDEX} from '../pipelines/model-dir.js'
import {DEFAULT_CHUNK_BYTES, type TensorEntry} from '../formats/tensor.js'
import {writeTorchCheckpoint} from '../formats/torch-writer.js'
import type {Arch, ModelConfig, SynthSize, TensorSpec} from '../models/index.js'
import {fillNormal, hash32} from './random.js'

export interface SynthOptions {
  arch: Arch
  size: SynthSize
  seed: number
  dtype: DType
  /** Plant activation outliers through the norm weights (see plantOutliers). */
  outliers?: boolean
  onBytes?: (n: number) => void
}

export interface SynthPlan {
  config: ModelConfig
  tensors: TensorEntry[]
  shards: TensorEntry[][]
  totalBytes: number
}


/** Standard deviations "like a trained model's" (issue 2): linears N(0, 0.02), norms 1 +- 0.02. */
const INIT: Record<TensorSpec['init'], {mean: number, std: number}> = {
  normal: {mean: 0, std: 0.02},
  ones: {mean: 1, std: 0.02},
  // Small but non-zero, so a runtime that forgets a bias is caught by parity tests.
  zeros: {mean: 0, std: 0.01},
  inv_freq: {mean: 0, std: 0},
}

/** A synthetic tensor whose bytes are generated chunk by chunk from (seed, name). */
function synthTensor(name: string, spec: TensorSpec, dtype: DType, seed: number): TensorEntry {
  const shape = [...spec.shape]
  const count = numel(shape)
  return {
    name, dtype, shape, file: '<synth>',
    async *chunks(maxChunkBytes = DEFAULT_CHUNK_BYTES) {
      const elem = byteLength(dtype, [1])
      if (spec.init === 'inv_freq') {
        // Rotary inverse frequencies, exact: 1 / 10000^(2j / rotary_dim), rotary_dim = 4 * len.
        const dim = count * 2
        const buf = Buffer.alloc(count * elem)
        for (let j = 0; j < count; j++) {
          const v = 1 / 10000 ** ((2 * j) / dim)
          if (dtype === 'F16') buf.writeUInt16LE(toFloat16Bits(v), 2 * j)
          else if (dtype === 'BF16') buf.writeUInt16LE(toBFloat16Bits(v), 2 * j)
          else buf.writeFloatLE(v, 4 * j)
        }
        yield buf
        return
      }
      const {mean, std} = INIT[spec.init]
      const perChunk = Math.max(2, Math.floor(maxChunkBytes / elem) & ~1)
      // allocUnsafeSlow: typed-array views below need an aligned, unpooled buffer.
      const buf = Buffer.allocUnsafeSlow(Math.min(perChunk, count) * elem)
      let state = hash32(name, seed)
      for (let done = 0; done < count; done += perChunk) {
        const n = Math.min(perChunk, count - done)
        state = fillNormal(buf, dtype, n, mean, std, state)
        yield buf.subarray(0, n * elem)
      }
    },
  }
}

/**
 * Split tensors, in order, into exactly `count` non-empty shards of roughly equal bytes (as the
 * published checkpoints are split; fewer when there are fewer tensors).
 */
export function planShards<T extends {dtype: DType, shape: readonly number[]}>(tensors: T[], count: number): T[][] {
  const n = Math.min(count, tensors.length)
  const total = tensors.reduce((a, t) => a + byteLength(t.dtype, t.shape), 0)
  const shards: T[][] = [[]]
  let acc = 0
  tensors.forEach((t, i) => {
    const remainingTensors = tensors.length - i
    const remainingShards = n - shards.length
    const cur = shards[shards.length - 1]
    const full = acc >= (total * shards.length) / n
    if (cur.length > 0 && remainingShards > 0 && (full || remainingTensors <= remainingShards)) shards.push([])
    shards[shards.length - 1].push(t)
    acc += byteLength(t.dtype, t.shape)
  })
  return shards
}

/** Which hidden channels get outliers and how much larger, from the seed: 4 channels (fewer when H < 64), 20x to 100x. */
export function outlierChannels(hidden: number, seed: number): {channels: number[], factors: number[]} {
  const n = Math.max(1, Math.min(4, Math.floor(hidden / 16)))
  const channels: number[] = []
  let h = hash32('outliers', seed)
  while (channels.length < n) {
    h = hash32(String(h), seed)
    const c = h % hidden
    if (!channels.includes(c)) channels.push(c)
  }
  const factors = channels.map((_, i) => 20 + Math.round((80 * i) / Math.max(1, n - 1)))
  return {channels: channels.sort((a, b) => a - b), factors}
}

const OUTLIER_NORM = /\.layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight$/

/**
 * `synth --outliers`: trained LLMs have a few hidden channels whose activations are 20-100x the
 * others', which is what makes per-channel weight quantization hard and activation-aware
 * calibration worthwhile (Dettmers et al. 2022, LLM.int8(); Xiao et al. 2023, SmoothQuant;
 * Lin et al. 2023, AWQ). Random weights have none, so they are planted where trained models
 * show them: the norm weights of those channels (input_layernorm and post_attention_layernorm
 * of every layer) are multiplied by the channel's factor, so every linear that reads a norm's
 * output (query_key_value, dense_h_to_4h) sees those input channels 20-100x larger.
 */
function plantOutliers(t: TensorEntry, spec: TensorSpec, o: {channels: number[], factors: number[]}): TensorEntry {
  if (!OUTLIER_NORM.test(t.name) || spec.shape.length !== 1) return t
  return {
    ...t,
    async *chunks(max) {
      const parts: Buffer[] = []
      for await (const c of t.chunks(max)) parts.push(Buffer.from(c))
      const values = decodeFloats(Buffer.concat(parts), t.dtype)
      o.channels.forEach((c, i) => {
        values[c] *= o.factors[i]
      })
      yield encodeFloats(values, t.dtype)
    },
  }
}

export function planSynth(opts: SynthOptions): SynthPlan {
  const base: ModelConfig = {...opts.arch.synthConfig(opts.size), torch_dtype: TORCH_DTYPE_OF[opts.dtype]}
  const outliers = opts.outliers ? outlierChannels(Number(base.hidden_size), opts.seed) : undefined
  // Recorded in config.json (transformers ignores unknown keys) so tests and reports can find them.
  const config = outliers ? {...base, glmtool_synth_outliers: outliers} : base
  const tensors = [...opts.arch.tensors(config)].map(([name, spec]) => {
    const t = synthTensor(name, spec, opts.dtype, opts.seed)
    return outliers ? plantOutliers(t, spec, outliers) : t
  })
  const shards = planShards(tensors, opts.arch.shardCount)
  const totalBytes = tensors.reduce((a, t) => a + byteLength(t.dtype, t.shape), 0)
  return {config, tensors, shards, totalBytes}
}

export function shardName(k: number, n: number): string {
  const pad = (x: number) => String(x).padStart(5, '0')
  return `pytorch_model-${pad(k)}-of-${pad(n)}.bin`
}

/** Write a synth model directory into `dir` (which exists and is empty). */
export async function writeSynthModel(dir: string, opts: SynthOptions): Promise<SynthPlan> {
  const plan = planSynth(opts)
  const weightMap: Record<string, string> = {}
  for (let k = 0; k < plan.shards.length; k++) {
    const file = shardName(k + 1, plan.shards.length)
    for (const t of plan.shards[k]) weightMap[t.name] = file
    await writeTorchCheckpoint(join(dir, file), plan.shards[k], opts.onBytes)
  }
  const sorted = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
  await writeFile(join(dir, TORCH_INDEX), JSON.stringify({metadata: {total_size: plan.totalBytes}, weight_map: sorted}, null, 2) + '\n')
  await writeFile(join(dir, 'config.json'), JSON.stringify(plan.config, null, 2) + '\n')
  const tok = opts.arch.synthTokenizer()
  await writeFile(join(dir, tok.fileName), tok.bytes)
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(tok.tokenizerConfig, null, 2) + '\n')
  return plan
}
