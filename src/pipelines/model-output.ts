import type {Dirent} from 'node:fs'
import {copyFile, readdir, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {GlmtoolError} from '../errors.js'
import type {ModelConfig} from '../models/index.js'
import {byteLength, type DType} from '../formats/dtype.js'
import {convertChunk} from '../formats/dtype-convert.js'
import {assertComplete, checkTensors, isWeightFile, openModel} from './model-dir.js'
import type {TensorEntry} from '../formats/tensor.js'

/** The files of a glmtool ONNX export (export-onnx.ts writes them; re-exported there). */
export const ONNX_MODEL_FILE = 'model.onnx'
export const ONNX_DATA_FILE = 'model.onnx.data'
export const ONNX_MANIFEST_FILE = 'glmtool-onnx.json'

/**
 * What every command that writes a model directory (convert, merge-adapter, quantize, the ONNX
 * export) shares: casting tensors on the fly, carrying config and companion files, and checking
 * a safetensors result.
 */

/** A view of `t` whose chunks are converted to `to` on the fly (chunk by chunk, bounded memory). */
export function castTensor(t: TensorEntry, to: DType): TensorEntry {
  if (t.dtype === to) return t
  const ratio = byteLength(t.dtype, [1]) / byteLength(to, [1])
  return {
    name: t.name, dtype: to, shape: t.shape, file: t.file,
    async *chunks(max) {
      // Read pieces sized so the converted piece stays within the caller's limit.
      const srcMax = max === undefined ? undefined : Math.max(byteLength(t.dtype, [1]), Math.floor(max * ratio))
      for await (const c of t.chunks(srcMax)) yield convertChunk(c, t.dtype, to)
    },
  }
}

/**
 * The one rule for the files that travel with a model's weights, for every command that writes
 * a model directory (convert to safetensors or ONNX, merge-adapter, quantize in any format):
 *
 * - config.json is always written from the config the command gives (the source's, with the
 *   new torch_dtype, the quantization keys or the merged prefix's keys), never copied;
 * - never copied: weights (pytorch_model*.bin and its index, *.safetensors and their index:
 *   the command writes its own), ONNX files (model.onnx, model.onnx.data, the glmtool-onnx.json
 *   manifest: an export writes its own, and a stale graph beside new weights would be run),
 *   hidden files (editor and tool state, output-dir.ts's own markers), and anything that is not
 *   a regular file (directories, dangling links); a symbolic link to a file counts as the file
 *   (a Hugging Face cache snapshot links every file to its blob) and its content is copied;
 * - every other file is a companion and is copied as it is: the tokenizer model and
 *   tokenizer_config.json, the remote code (*.py), generation_config.json, README and licences.
 */
export function isCompanionFile(name: string): boolean {
  return !name.startsWith('.') && name !== 'config.json' && !isWeightFile(name) && !isOnnxFile(name)
}

/** model.onnx and its external data (model.onnx.data, model.onnx_data, ...) and glmtool's ONNX manifest. */
function isOnnxFile(name: string): boolean {
  return name.startsWith('model.onnx') || name.endsWith('.onnx') || name === ONNX_MANIFEST_FILE
}

/** A regular file, or a symbolic link to one (a Hugging Face cache snapshot is all links into its blobs). */
async function isRegularFile(path: string, e: Dirent): Promise<boolean> {
  if (e.isFile()) return true
  if (!e.isSymbolicLink()) return false
  return stat(path).then(s => s.isFile(), () => false) // a dangling link is not a file
}

/**
 * Writes `config` as `to`/config.json and copies `from`'s companion files (isCompanionFile).
 * Returns the names written, config.json first, the rest sorted.
 */
export async function writeCompanionFiles(from: string, to: string, config: ModelConfig): Promise<string[]> {
  await writeFile(join(to, 'config.json'), JSON.stringify(config, null, 2) + '\n')
  const names: string[] = []
  for (const e of await readdir(from, {withFileTypes: true})) {
    if (isCompanionFile(e.name) && await isRegularFile(join(from, e.name), e)) names.push(e.name)
  }
  names.sort()
  // copyFile reads through a link: the output holds the file itself.
  for (const name of names) await copyFile(join(from, name), join(to, name))
  return ['config.json', ...names]
}

/**
 * Re-open what was written as any command would (every safetensors rule re-validated, the
 * architecture's tensor table checked) and hold it to the plan.
 */
export async function verifyModelOutput(dir: string, planned: readonly TensorEntry[]): Promise<void> {
  const out = await openModel(dir)
  try {
    if (!out.arch || !out.config) throw new GlmtoolError('verify-failed', `${dir}: written output has no recognisable config.json`)
    assertComplete(out.arch, checkTensors(out.arch, out.config, out.tensors), dir)
    const got = new Map(out.tensors.map(t => [t.name, t]))
    for (const t of planned) {
      const o = got.get(t.name)
      if (!o || o.dtype !== t.dtype || o.shape.join() !== t.shape.join()) {
        throw new GlmtoolError('verify-failed', `${dir}: written output does not match the plan at tensor ${t.name}`)
      }
    }
    if (got.size !== planned.length) throw new GlmtoolError('verify-failed', `${dir}: written output has ${got.size} tensors, planned ${planned.length}`)
  } finally {
    await out.close()
  }
}
