import type {ArchId} from '../models/index.js'
import {ModelError} from '../errors.js'
import {VERSION} from '../version.js'
import {byteLength, type DType, TORCH_DTYPE_OF} from '../formats/dtype.js'
import {targetDtype} from '../formats/dtype-convert.js'
import {assertComplete, checkTensors, openModel} from './model-dir.js'
import {castTensor, verifyModelOutput, writeCompanionFiles} from './model-output.js'
import {claimOutput, openClaimed} from './output-dir.js'
import {writeSafetensorsModel} from '../formats/safetensors-writer.js'

export interface ConvertOptions {
  /** The user's --arch (src/pipelines/model-dir.ts OpenModelOptions). */
  arch?: ArchId
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


/**
 * torch (or safetensors) model directory -> safetensors model directory, streamed tensor by
 * tensor into a temporary directory that is renamed into place only once every file is written
 * and the output re-opened and checked against the plan. The input is only ever read.
 */
export async function convertToSafetensors(opts: ConvertOptions): Promise<ConvertResult> {
  const started = Date.now()
  const output = await claimOutput(opts.out, {force: opts.force, inputs: [{what: 'input model', path: opts.input}]})
  const model = await openClaimed(output, () => openModel(opts.input, {arch: opts.arch}))
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
    return await output.write(async tmp => {
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
      const torchDtype = opts.dtype === 'keep' ? undefined : TORCH_DTYPE_OF[opts.dtype]
      const copied = await writeCompanionFiles(inputDir, tmp, torchDtype ? {...config, torch_dtype: torchDtype} : config)
      await verifyModelOutput(tmp, tensors)
      return {
        input: opts.input, out: opts.out, architecture: model.arch!.id, tensors: tensors.length, bytes: written.totalBytes,
        files: [...written.files, ...copied], copied, seconds: (Date.now() - started) / 1000,
        peakRssBytes: process.resourceUsage().maxRSS * 1024,
      }
    })
  } finally {
    await model.close()
    output.release()
  }
}
