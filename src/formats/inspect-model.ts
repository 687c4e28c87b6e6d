import {basename} from 'node:path'
import {byteLength} from './dtype.js'
import {checkTensors, openModel, type TensorCheck} from './model-dir.js'
import {describeQuantLayout, quantLayoutOf} from '../models/quantized-layout.js'

export interface InspectReport {
  path: string
  format: string
  files: string[]
  architecture: string | null
  config: Record<string, string | number | boolean> | null
  tensors: {name: string, dtype: string, shape: number[], bytes: number, file: string}[]
  totals: {tensors: number, bytes: number, parameters: number, byDtype: Record<string, number>}
  check: TensorCheck | null
  warnings: string[]
  /** The model directory, when the path is one. */
  dir?: string
  /** config.json as read (for callers that look further; not printed). */
  rawConfig?: Record<string, unknown>
}

/** Everything `glmtool inspect` shows, as one data structure (the table and --json print it). */
export async function inspectModel(path: string): Promise<InspectReport> {
  const model = await openModel(path)
  try {
    const tensors = model.tensors.map(t => ({name: t.name, dtype: t.dtype, shape: [...t.shape], bytes: byteLength(t.dtype, t.shape), file: basename(t.file)}))
    const byDtype: Record<string, number> = {}
    let parameters = 0
    for (const t of tensors) {
      byDtype[t.dtype] = (byDtype[t.dtype] ?? 0) + t.bytes
      parameters += t.shape.reduce((a, b) => a * b, 1)
    }
    return {
      path,
      format: model.format,
      files: model.files.map(f => basename(f)),
      architecture: model.arch?.id ?? null,
      config: model.arch && model.config ? summarize(model.arch.summary(model.config), model.config) : null,
      tensors,
      totals: {tensors: tensors.length, bytes: tensors.reduce((a, t) => a + t.bytes, 0), parameters, byDtype},
      check: model.arch && model.config ? checkTensors(model.arch, model.config, model.tensors) : null,
      warnings: model.warnings,
      dir: model.dir,
      rawConfig: model.config,
    }
  } finally {
    await model.close()
  }
}

/** The architecture's summary plus, for a quantized checkpoint, how it is quantized. */
function summarize(summary: Record<string, string | number | boolean>, config: Record<string, unknown>): Record<string, string | number | boolean> {
  const q = quantLayoutOf(config)
  return q ? {...summary, quantization: describeQuantLayout(q)} : summary
}
