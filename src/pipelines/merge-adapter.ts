/**
 * `glmtool merge-adapter`: base model + adapter -> a complete glmtool safetensors model
 * directory. LoRA is merged into the weights; a P-Tuning v2 prefix is computed once and stored
 * as extra float32 tensors (transformer.prefix_cache.*). Like convert: the base is streamed
 * tensor by tensor into a temporary directory that is renamed into place only once it is
 * written and re-opened as a complete model; every check on the adapter runs first.
 */
import {basename, resolve} from 'node:path'
import {ModelError} from '../errors.js'
import {prefixCacheName} from '../models/arch.js'
import type {ArchId, ModelConfig} from '../models/index.js'
import {VERSION} from '../version.js'
import {byteLength, type DType, TORCH_DTYPE_OF} from '../formats/dtype.js'
import {targetDtype} from '../formats/dtype-convert.js'
import {assertComplete, checkTensors, openModel} from './model-dir.js'
import {castTensor, verifyModelOutput, writeCompanionFiles} from './model-output.js'
import {claimOutput, openClaimed} from './output-dir.js'
import {writeSafetensorsModel} from '../formats/safetensors-writer.js'
import type {TensorEntry} from '../formats/tensor.js'
import {AdapterError} from '../formats/adapters/adapter-error.js'
import {type AdapterType, locateAdapter} from '../formats/adapters/adapter-source.js'
import {mergedLoraTensor, openLoraAdapter, planLora} from '../formats/adapters/lora.js'
import {computePrefixCache, openPrefixCheckpoint} from '../formats/adapters/prefix.js'

export interface MergeAdapterOptions {
  /** The user's --arch (src/pipelines/model-dir.ts OpenModelOptions). */
  arch?: ArchId
  base: string
  adapter: string
  /** Detected from the adapter's files when absent. */
  type?: AdapterType
  out: string
  /** Float dtype of the base weights in the output ('keep': the base's own). Prefix tensors are always F32. */
  dtype: DType | 'keep'
  force: boolean
  maxShardBytes?: number
  onStart?: (totalBytes: number) => void
  onBytes?: (n: number) => void
  onWarning?: (message: string) => void
}

export interface MergeAdapterResult {
  base: string
  adapter: string
  type: AdapterType
  out: string
  architecture: string
  tensors: number
  bytes: number
  files: string[]
  copied: string[]
  seconds: number
  peakRssBytes: number
  lora?: {rank: number, alpha: number, scale: number, useRslora: boolean, fanInFanOut: boolean, targetModules: readonly string[] | string, adapterName: string | null, merged: string[]}
  prefix?: {preSeqLen: number, prefixProjection: boolean, layers: number, kvHeads: number, headDim: number, shape: number[], tensors: string[]}
}


export async function mergeAdapter(opts: MergeAdapterOptions): Promise<MergeAdapterResult> {
  const started = Date.now()
  // Before reading anything: --out apart from the base and the adapter, the lock, an existing output.
  const output = await claimOutput(opts.out, {force: opts.force, inputs: [{what: 'base model', path: opts.base}, {what: 'adapter', path: opts.adapter}]})
  const loc = await openClaimed(output, async () => locateAdapter(opts.adapter, opts.type))
  const base = await openClaimed(output, () => openModel(opts.base, {arch: opts.arch}))
  const closers: (() => Promise<void>)[] = [async () => output.release(), () => base.close()]
  try {
    if (!base.dir || !base.arch || !base.config) {
      throw new ModelError(`${opts.base}: merge-adapter needs a model directory with config.json, not a single file`, 'not-a-model-dir')
    }
    const arch = base.arch
    const check = checkTensors(arch, base.config, base.tensors)
    assertComplete(arch, check, opts.base)
    for (const w of base.warnings) opts.onWarning?.(w)
    const outDtype = (t: TensorEntry) => targetDtype(t.dtype, opts.dtype)
    let tensors: TensorEntry[]
    let config: ModelConfig = {...base.config}
    const result: Partial<MergeAdapterResult> = {}
    let metadata: Record<string, string>

    if (loc.type === 'lora') {
      const adapter = await openLoraAdapter(loc.dir, loc.file)
      closers.push(() => adapter.close())
      const plan = await planLora(adapter, arch, base.config, base.tensors)
      tensors = base.tensors.map(t => {
        const p = plan.weights.get(t.name)
        return p ? mergedLoraTensor(t, p, adapter.config, outDtype(t)) : castTensor(t, outDtype(t))
      })
      const c = adapter.config
      result.lora = {
        rank: c.rank, alpha: c.alpha, scale: c.scale, useRslora: c.useRslora, fanInFanOut: c.fanInFanOut,
        targetModules: c.targetModules, adapterName: adapter.adapterName ?? null, merged: [...plan.weights.keys()],
      }
      metadata = {glmtool_adapter: 'lora', glmtool_adapter_source: basename(resolve(adapter.file))}
    } else {
      if (base.config.pre_seq_len !== undefined && base.config.pre_seq_len !== null) {
        throw new AdapterError('base', `${opts.base}: config.json already has pre_seq_len ${JSON.stringify(base.config.pre_seq_len)}; merge a prefix into a model without one`)
      }
      const ck = await openPrefixCheckpoint(loc.dir, loc.file)
      closers.push(() => ck.close())
      const prefix = await computePrefixCache(ck, arch, base.config)
      for (const w of prefix.warnings) opts.onWarning?.(w)
      tensors = [...base.tensors.map(t => castTensor(t, outDtype(t))), ...prefix.tensors, ...prefix.encoderTensors]
      config = {...config, ...prefix.configKeys}
      const g = prefix.geometry
      result.prefix = {
        preSeqLen: prefix.preSeqLen, prefixProjection: prefix.projection, layers: g.layers, kvHeads: g.kvHeads, headDim: g.headDim,
        shape: [g.kvHeads, prefix.preSeqLen, g.headDim], tensors: prefix.tensors.map(t => t.name),
      }
      metadata = {glmtool_adapter: 'prefix', glmtool_adapter_source: basename(resolve(ck.files[0])), glmtool_prefix_layout: `${prefixCacheName(0, 'key')}: F32 [kv_heads, pre_seq_len, head_dim]`}
    }
    if (opts.dtype !== 'keep' && TORCH_DTYPE_OF[opts.dtype]) config.torch_dtype = TORCH_DTYPE_OF[opts.dtype]
    for (const n of check.extra) opts.onWarning?.(`extra tensor ${n} (not part of ${arch.id}) is copied as is`)

    const total = tensors.reduce((a, t) => a + byteLength(t.dtype, t.shape), 0)
    opts.onStart?.(total)
    const baseDir = base.dir
    return await output.write(async tmp => {
      let last = 0
      const written = await writeSafetensorsModel(tmp, tensors, {
        maxShardBytes: opts.maxShardBytes,
        metadata: {format: 'pt', source: `${base.format}:${base.files.length} file(s)`, glmtool_version: VERSION, glmtool_architecture: arch.id, ...metadata},
        onProgress: done => {
          opts.onBytes?.(done - last)
          last = done
        },
      })
      const copied = await writeCompanionFiles(baseDir, tmp, config)
      await verifyModelOutput(tmp, tensors)
      return {
        base: opts.base, adapter: opts.adapter, type: loc.type, out: opts.out, architecture: arch.id,
        tensors: tensors.length, bytes: written.totalBytes, files: [...written.files, ...copied], copied,
        seconds: (Date.now() - started) / 1000, peakRssBytes: process.resourceUsage().maxRSS * 1024,
        ...result,
      }
    })
  } finally {
    for (const close of closers.reverse()) await close()
  }
}
