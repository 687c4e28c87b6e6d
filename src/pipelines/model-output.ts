import {copyFile, readdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {GlmtoolError} from '../errors.js'
import type {ModelConfig} from '../models/index.js'
import {byteLength, type DType} from '../formats/dtype.js'
import {convertChunk} from '../formats/dtype-convert.js'
import {assertComplete, checkTensors, isWeightFile, openModel} from './model-dir.js'
import type {TensorEntry} from '../formats/tensor.js'

/**
 * What every command that writes a safetensors model directory (convert, merge-adapter) shares:
 * casting tensors on the fly, carrying config and tokenizer files, and checking the result.
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

/** Writes `config` as config.json and copies the tokenizer and code files that travel with the weights. */
export async function writeCompanionFiles(from: string, to: string, config: ModelConfig): Promise<string[]> {
  const copied = ['config.json']
  await writeFile(join(to, 'config.json'), JSON.stringify(config, null, 2) + '\n')
  for (const e of await readdir(from, {withFileTypes: true})) {
    if (!e.isFile() || isWeightFile(e.name) || e.name.startsWith('.') || e.name === 'config.json') continue
    await copyFile(join(from, e.name), join(to, e.name))
    copied.push(e.name)
  }
  return copied
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
