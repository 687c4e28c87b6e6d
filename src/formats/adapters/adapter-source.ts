import {existsSync, statSync} from 'node:fs'
import {readFile, stat} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'
import {openSafetensors} from '../safetensors-reader.js'
import type {TensorEntry} from '../tensor.js'
import {TorchCheckpoint} from '../torch-checkpoint.js'
import {AdapterError} from './adapter-error.js'

/** Largest adapter_config.json / config.json of an adapter we read (they are a few hundred bytes). */
const MAX_CONFIG_BYTES = 16 * 1024 * 1024

/** LoRA as PEFT saves it, or a P-Tuning v2 prefix as THUDM's ptuning trainer saves it (docs/chatglm.md section 7). */
export type AdapterType = 'lora' | 'prefix'

export const LORA_CONFIG = 'adapter_config.json'
export const LORA_WEIGHTS = ['adapter_model.safetensors', 'adapter_model.bin'] as const

/** Where an adapter's files are: its directory, and the weights file when the user named one. */
export interface AdapterLocation {
  readonly type: AdapterType
  readonly dir: string
  readonly file?: string
}

/**
 * Find the adapter at `path` (a directory, or its weights file) and tell its type unless the
 * user gave one: adapter_config.json or adapter_model.* mean LoRA; config.json or
 * pytorch_model.bin (the ptuning trainer's checkpoint-N directory) mean P-Tuning v2.
 */
export function locateAdapter(path: string, type?: AdapterType): AdapterLocation {
  if (!existsSync(path)) throw new AdapterError('not-found', `${path}: no such file or directory`)
  const isFile = statSync(path).isFile()
  const dir = isFile ? dirname(path) : path
  const file = isFile ? path : undefined
  if (type) return {type, dir, file}
  const has = (n: string) => existsSync(join(dir, n))
  if (file) {
    if (basename(file).startsWith('adapter_model.') || has(LORA_CONFIG)) return {type: 'lora', dir, file}
    if (has('config.json')) return {type: 'prefix', dir, file}
  } else {
    if (has(LORA_CONFIG) || LORA_WEIGHTS.some(has)) return {type: 'lora', dir}
    if (has('config.json') || has('pytorch_model.bin')) return {type: 'prefix', dir}
  }
  throw new AdapterError('unknown-type', `${path}: cannot tell the adapter type: no ${LORA_CONFIG} or adapter_model.bin (LoRA, as PEFT saves it) and no config.json or pytorch_model.bin (a P-Tuning v2 checkpoint); pass --type`)
}

/** A JSON object from disk, with one-line errors naming the file. */
export async function readJsonObject(path: string): Promise<Record<string, unknown>> {
  let text: string
  try {
    // An adapter's config is a few hundred bytes; a huge one would fail as "Invalid string length".
    const {size} = await stat(path)
    if (size > MAX_CONFIG_BYTES) throw new AdapterError('bad-config', `${path}: ${size} bytes, over the ${MAX_CONFIG_BYTES}-byte limit for an adapter config`)
    text = await readFile(path, 'utf8')
  } catch (error) {
    if (error instanceof AdapterError) throw error
    throw new AdapterError('missing-config', `${path}: cannot read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`)
  }
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch (error) {
    throw new AdapterError('bad-config', `${path}: invalid JSON (${(error as Error).message})`)
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new AdapterError('bad-config', `${path}: not a JSON object`)
  return v as Record<string, unknown>
}

/** The tensors of one adapter weights file (torch zip or safetensors), indexed, not loaded. */
export interface TensorFile {
  readonly path: string
  readonly tensors: TensorEntry[]
  close(): Promise<void>
}

export async function openTensorFile(path: string): Promise<TensorFile> {
  if (path.endsWith('.safetensors')) {
    const st = await openSafetensors(path)
    return {path, tensors: st.tensors, close: async () => undefined}
  }
  const ck = await TorchCheckpoint.open(path)
  return {path, tensors: ck.tensors, close: () => ck.close()}
}
