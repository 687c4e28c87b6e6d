import {copyFile, readdir, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {GlmtoolError, ModelError} from '../errors.js'
import {VERSION} from '../version.js'
import {byteLength, type DType} from './dtype.js'
import {convertChunk, targetDtype} from './dtype-convert.js'
import {assertComplete, checkTensors, isWeightFile, openModel} from './model-dir.js'
import {writeOutputDir} from './output-dir.js'
import {openSafetensorsModel} from './safetensors-reader.js'
import {writeSafetensorsModel} from './safetensors-writer.js'
import type {TensorEntry} from './tensor.js'

export interface ConvertOptions {
  input: string
  out: string
  dtype: DType | 'keep'
  maxShardBytes: number
  force: boolean
  /** Called once the total is known, then with bytes written as they go. */
  onStart?: (totalBytes: number) => void
  onBytes?: (n: number) => void
  onWarning?: (message: string) => void
}

export interface ConvertResult {
  input: string
  out: string
  architecture: string
  tensors: number
  bytes: number
  files: string[]
  copied: string[]
  seconds: number
  /** Peak resident memory of this process so far (bounded-memory check). */
  peakRssBytes: number
}

const TORCH_DTYPE: Partial<Record<DType, string>> = {F16: 'float16', BF16: 'bfloat16', F32: 'float32'}

/** A view of `t` whose chunks are converted to `to` on the fly (chunk by chunk, bounded memory). */
function castTensor(t: TensorEntry, to: DType): TensorEntry {
  if (t.dtype === to) return t
  const scale = byteLength(t.dtype, [1]) / byteLength(to, [1])
  return {
    name: t.name, dtype: to, shape: t.shape, file: t.file,
    async *chunks(max) {
      // Read pieces sized so the converted piece stays within the caller's limit.
      const srcMax = max === undefined ? undefined : Math.max(byteLength(t.dtype, [1]), Math.floor(max * scale))
      for await (const c of t.chunks(srcMax)) yield convertChunk(c, t.dtype, to)
    },
  }
}

/**
 * torch (or safetensors) model directory -> safetensors model directory, streamed tensor by
 * tensor into a temporary directory that is renamed into place only once every file is written
 * and the output re-opened and checked against the plan. The input is only ever read.
 */
export async function convertToSafetensors(opts: ConvertOptions): Promise<ConvertResult> {
  const started = Date.now()
  const model = await openModel(opts.input)
  try {
    if (!model.dir || !model.arch || !model.config) {
      throw new ModelError(`${opts.input}: convert needs a model directory with config.json, not a single file`, 'not-a-model-dir')
    }
    const check = checkTensors(model.arch, model.config, model.tensors)
    assertComplete(model.arch, check, opts.input)
    for (const w of model.warnings) opts.onWarning?.(w)
    for (const n of check.extra) opts.onWarning?.(`extra tensor ${n} (not part of ${model.arch.id}) is copied as is`)
    const tensors = model.tensors.map(t => castTensor(t, targetDtype(t.dtype, opts.dtype)))
    const total = tensors.reduce((a, t) => a + byteLength(t.dtype, t.shape), 0)
    opts.onStart?.(total)
    const inputDir = model.dir
    const config = model.config
    return await writeOutputDir(opts.out, opts.force, async tmp => {
      const written = await writeSafetensorsModel(tmp, tensors, {
        maxShardBytes: opts.maxShardBytes,
        metadata: {format: 'pt', source: `${model.format}:${model.files.length} file(s)`, glmtool_version: VERSION, glmtool_architecture: model.arch!.id},
        onProgress: (() => {
          let last = 0
          return (done: number) => {
            opts.onBytes?.(done - last)
            last = done
          }
        })(),
      })
      const copied = await copyCompanionFiles(inputDir, tmp, config, opts.dtype === 'keep' ? undefined : TORCH_DTYPE[opts.dtype])
      await verifyOutput(tmp, tensors)
      return {
        input: opts.input, out: opts.out, architecture: model.arch!.id, tensors: tensors.length, bytes: written.totalBytes,
        files: [...written.files, ...copied], copied, seconds: (Date.now() - started) / 1000,
        peakRssBytes: process.resourceUsage().maxRSS * 1024,
      }
    })
  } finally {
    await model.close()
  }
}

/** config, tokenizer and code files travel with the weights; config gets the new torch_dtype. */
async function copyCompanionFiles(from: string, to: string, config: Record<string, unknown>, torchDtype: string | undefined): Promise<string[]> {
  const copied: string[] = []
  for (const e of await readdir(from, {withFileTypes: true})) {
    if (!e.isFile() || isWeightFile(e.name) || e.name.startsWith('.')) continue
    if (e.name === 'config.json' && torchDtype) {
      await writeFile(join(to, e.name), JSON.stringify({...config, torch_dtype: torchDtype}, null, 2) + '\n')
    } else {
      await copyFile(join(from, e.name), join(to, e.name))
    }
    copied.push(e.name)
  }
  return copied
}

/** Re-open what was written (every format rule re-validated) and compare it with the plan. */
async function verifyOutput(dir: string, planned: readonly TensorEntry[]): Promise<void> {
  const out = await openSafetensorsModel(dir)
  const got = new Map(out.tensors.map(t => [t.name, t]))
  for (const t of planned) {
    const o = got.get(t.name)
    if (!o || o.dtype !== t.dtype || o.shape.join() !== t.shape.join()) {
      throw new GlmtoolError('verify-failed', `${dir}: written output does not match the plan at tensor ${t.name}`)
    }
  }
  if (got.size !== planned.length) throw new GlmtoolError('verify-failed', `${dir}: written output has ${got.size} tensors, planned ${planned.length}`)
  JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'))
}
