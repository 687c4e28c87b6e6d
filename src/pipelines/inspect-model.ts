import {existsSync, statSync} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'
import {byteLength} from '../formats/dtype.js'
import {checkTensors, detectModelArch, type OpenModelOptions, openModel, readModelConfig, type TensorCheck} from './model-dir.js'
import {ONNX_MANIFEST_FILE, verifyOnnxDir} from './export-onnx.js'
import {externalRangeOf} from '../formats/onnx/external-data.js'
import {decodeModel, ELEM} from '../formats/onnx/onnx-builder.js'
import type {ModelConfig} from '../models/arch.js'
import {describeQuantLayout, quantLayoutOf} from '../models/quantized-layout.js'
import {archById} from '../models/index.js'
import {decodeModelProto} from '../runtime/tokenizer/sentencepiece-model.js'
import {inspectTokenizer, type TokenizerReport} from '../runtime/tokenizer/model-tokenizer.js'

/** Weight files that make a directory a torch or safetensors model (a --format both quantize output has both). */
const WEIGHT_FILES = ['pytorch_model.bin.index.json', 'pytorch_model.bin', 'model.safetensors.index.json', 'model.safetensors']

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
export async function inspectModel(path: string, opts: OpenModelOptions = {}): Promise<InspectReport> {
  const onnxDir = path.endsWith('.onnx') && existsSync(path) && statSync(path).isFile() ? dirname(path) : path
  if (existsSync(join(onnxDir, ONNX_MANIFEST_FILE)) && !WEIGHT_FILES.some(f => existsSync(join(onnxDir, f)))) return inspectOnnx(path, onnxDir, opts)
  const model = await openModel(path, opts)
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

const ELEM_DTYPE: Record<number, string> = {[ELEM.FLOAT]: 'F32', [ELEM.FLOAT16]: 'F16', [ELEM.BFLOAT16]: 'BF16', [ELEM.INT8]: 'I8', [ELEM.UINT8]: 'U8', [ELEM.INT32]: 'I32', [ELEM.INT64]: 'I64'}

/**
 * A glmtool ONNX directory (convert --to onnx, quantize --format onnx): the graph's initializers
 * as tensors (their bytes in model.onnx.data, small constants inline in model.onnx), after the
 * same structural check convert runs on its output. The initializer names are the graph's, so
 * there is no checkpoint-name check; the architecture and summary come from config.json.
 */
async function inspectOnnx(path: string, dir: string, opts: OpenModelOptions): Promise<InspectReport> {
  const manifest = await verifyOnnxDir(dir)
  const proto = decodeModel(await readFile(join(dir, manifest.model)))
  const tensors = (proto.graph?.initializer ?? []).map(t => {
    const ext = externalRangeOf(t)
    const shape = (t.dims ?? []).map(Number)
    return {name: t.name ?? '', dtype: ELEM_DTYPE[t.dataType ?? 0] ?? `onnx-type-${t.dataType}`, shape, bytes: ext ? ext.length : (t.rawData?.length ?? 0), file: ext ? ext.location : manifest.model}
  })
  const byDtype: Record<string, number> = {}
  let parameters = 0
  for (const t of tensors) {
    byDtype[t.dtype] = (byDtype[t.dtype] ?? 0) + t.bytes
    parameters += t.shape.reduce((a, b) => a * b, 1)
  }
  const configPath = join(dir, 'config.json')
  let config: ModelConfig | undefined
  if (existsSync(configPath)) config = await readModelConfig(configPath)
  const arch = config ? await detectModelArch(dir, config, [], opts) : undefined
  return {
    path,
    format: 'onnx',
    files: [manifest.model, manifest.data],
    architecture: arch?.id ?? manifest.architecture ?? null,
    config: arch && config ? summarize({...arch.summary(config), 'onnx weights': manifest.weights_dtype}, config) : null,
    tensors,
    totals: {tensors: tensors.length, bytes: tensors.reduce((a, t) => a + t.bytes, 0), parameters, byDtype},
    check: null,
    warnings: [],
  }
}

/** A token that ends generation: its id, its spelling in the tokenizer, and which specials it is. */
export interface StopToken {
  id: number
  token: string
  /** The specials' names it stands for: eos (ChatGLM-6B: eop too); ChatGLM3-6B's user, observation. */
  names: string[]
}

/** inspect's tokenizer section: the tokenizer's report, plus the tokens that end generation. */
export type InspectTokenizer = (TokenizerReport & {stopTokens: StopToken[]}) | {file: string, error: string}

/**
 * The spelling of each stop id: the SentencePiece piece (ChatGLM-6B's ids are its pieces' ids plus
 * num_image_tokens), or, past the pieces, the special appended there (ChatGLM2-6B's five,
 * ChatGLM3-6B's nine: <|user|>, <|observation|>). `pieces`: the SentencePiece file's pieces in order.
 */
export function stopTokens(report: TokenizerReport, pieces: readonly string[], arch: string): StopToken[] {
  const appended = archById(arch).tokenizer.appendedSpecials
  const offset = report.numImageTokens ?? 0
  return report.stop.map(id => {
    const i = id - offset
    const token = i >= 0 && i < pieces.length ? pieces[i] : appended[id - offset - pieces.length] ?? `<id ${id}>`
    return {id, token, names: Object.entries(report.specials).filter(([, v]) => v === id).map(([k]) => k)}
  })
}

/** The tokenizer of an inspected model directory (null when there is none), with its stop tokens. */
export async function inspectModelTokenizer(report: InspectReport): Promise<InspectTokenizer | null> {
  if (!report.architecture || !report.dir || !report.rawConfig) return null
  const t = await inspectTokenizer(report.dir, archById(report.architecture), report.rawConfig)
  if (t === null || 'error' in t) return t
  const pieces = decodeModelProto(await readFile(t.file), t.file).pieces.map(p => p.piece)
  return {...t, stopTokens: stopTokens(t, pieces, report.architecture)}
}
