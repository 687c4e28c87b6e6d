import {existsSync, statSync} from 'node:fs'
import {readFile, stat} from 'node:fs/promises'
import {basename, join} from 'node:path'
import {GlmtoolError, ModelError} from '../errors.js'
import {checkConfigSizes} from '../models/arch.js'
import {type Arch, type ArchId, detectArch, type ModelConfig} from '../models/index.js'
import {checkpointTensorSpecs} from '../models/quantized-layout.js'
import {openSafetensorsModel} from '../formats/safetensors-reader.js'
import {byteLength, isFloat} from '../formats/dtype.js'
import type {TensorEntry} from '../formats/tensor.js'
import {TorchCheckpoint} from '../formats/torch-checkpoint.js'

export type SourceFormat = 'torch' | 'safetensors'

/** How a checkpoint's tensors differ from what its architecture needs. */
export interface TensorCheck {
  missing: string[]
  extra: string[]
  misshaped: {name: string, expected: number[], actual: number[]}[]
  /** Tensors of the wrong element type (a quantized checkpoint's int8 weights, float scales). */
  wrongDtype: {name: string, expected: string, actual: string}[]
  /** Optional buffers (rotary inv_freq) that are absent: fine, they are recomputed. */
  absentOptional: string[]
}

/** A model (directory or single file) opened for reading, tensors indexed but not loaded. */
export interface ModelSource {
  readonly path: string
  readonly dir: string | undefined
  readonly format: SourceFormat
  readonly config: ModelConfig | undefined
  readonly arch: Arch | undefined
  readonly tensors: TensorEntry[]
  readonly files: string[]
  /** Inconsistencies that do not stop reading (stale index, tensors outside the index, ...). */
  readonly warnings: string[]
  close(): Promise<void>
}

export const TORCH_INDEX = 'pytorch_model.bin.index.json'
export const TORCH_SINGLE = 'pytorch_model.bin'

/**
 * Largest config or index JSON we read. The 6B models' index is ~30 KB; even a legal index of
 * a million tensors is ~60 MB. Past ~512 MB V8 cannot even hold the text ("Invalid string
 * length"), and parsing costs several times the size in memory.
 */
export const MAX_JSON_BYTES = 128 * 1024 * 1024

/** How many lines of one kind of warning are listed before the rest are counted. */
const WARNINGS_LISTED = 5

async function readJson(path: string): Promise<Record<string, unknown>> {
  let text: string
  try {
    const {size} = await stat(path)
    if (size > MAX_JSON_BYTES) throw new ModelError(`${path}: ${size} bytes, over the ${MAX_JSON_BYTES}-byte limit for a JSON file of a model`, 'json-too-large')
    text = await readFile(path, 'utf8')
  } catch (error) {
    if (error instanceof ModelError) throw error
    throw new ModelError(`${path}: cannot read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, 'missing-file')
  }
  try {
    const v = JSON.parse(text)
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object')
    return v
  } catch (error) {
    throw new ModelError(`${path}: invalid JSON (${(error as Error).message})`, 'bad-json')
  }
}

/**
 * A model directory's config.json, as every reader takes it: size-capped, one JSON object, and
 * sizes no ChatGLM has refused (checkConfigSizes), each with a one-line error naming the file.
 */
export async function readModelConfig(path: string): Promise<ModelConfig> {
  const config = await readJson(path)
  checkConfigSizes(config, path)
  return config
}

/** A model directory's config.json and generation, as read and detected once (detectModelDir). */
export interface DetectedModel {
  config: ModelConfig
  arch: Arch
}

/** How a command opens a model: the user's --arch, where config.json alone does not decide. */
export interface OpenModelOptions {
  arch?: ArchId
  /**
   * The directory's config.json and generation, already read and detected by the caller (chat
   * opens the tokenizer, then a backend, of one directory): taken as they are, not read again.
   */
  detected?: DetectedModel
}

/**
 * The generation of the model in `dir`: config.json, the tensor names, tokenizer_config.json
 * (whose name_or_path tells ChatGLM3-6B from ChatGLM2-6B) and the user's --arch. `onNote` is told
 * what was assumed where none of them says.
 */
export async function detectModelArch(
  dir: string, config: ModelConfig, tensorNames: Iterable<string>, opts: OpenModelOptions & {onNote?: (m: string) => void} = {},
): Promise<Arch> {
  const tcPath = join(dir, 'tokenizer_config.json')
  const tokenizerConfig = existsSync(tcPath) ? await readJson(tcPath) : undefined
  return detectArch(config, tensorNames, join(dir, 'config.json'), {tokenizerConfig, override: opts.arch, onNote: opts.onNote})
}

/**
 * Read `dir`'s config.json and detect its generation, once, for a command that opens the
 * directory more than once (chat-model.ts): the result goes to each opener (OpenModelOptions
 * `detected`, loadModelTokenizer's `known`) instead of each reading and detecting again. From
 * config.json and tokenizer_config.json alone: where they cannot tell the network, the tensor
 * names could (openModel), but a chat needs the tokenizer first, which has only these.
 */
export async function detectModelDir(dir: string, opts: OpenModelOptions & {onNote?: (m: string) => void} = {}): Promise<DetectedModel> {
  const config = await readModelConfig(join(dir, 'config.json'))
  return {config, arch: await detectModelArch(dir, config, [], opts)}
}

/** Is this file name one of a checkpoint's weight files (not to be copied as an extra)? */
export function isWeightFile(name: string): boolean {
  return /^pytorch_model.*\.bin$/.test(name) || name === TORCH_INDEX || /\.safetensors$/.test(name) || name === 'model.safetensors.index.json'
}

/**
 * Open a model: a torch directory (index + shards, or one pytorch_model.bin), a safetensors
 * directory or file, or a single torch shard. Reads config.json when there is one and detects
 * the generation; shards are indexed (zip directory + pickle), tensor bytes are not read.
 */
export async function openModel(path: string, opts: OpenModelOptions = {}): Promise<ModelSource> {
  if (!existsSync(path)) throw new ModelError(`${path}: no such file or directory`, 'missing-file')
  const isDir = statSync(path).isDirectory()
  const dir = isDir ? path : undefined
  const warnings: string[] = []
  const checkpoints: TorchCheckpoint[] = []
  const close = async () => {
    await Promise.all(checkpoints.map(c => c.close()))
  }
  try {
    let tensors: TensorEntry[]
    let files: string[]
    let format: SourceFormat
    if (!isDir) {
      if (path.endsWith('.safetensors')) {
        const st = await openSafetensorsModel(path)
        ;({tensors, files} = st)
        format = 'safetensors'
      } else {
        const ck = await TorchCheckpoint.open(path)
        checkpoints.push(ck)
        tensors = ck.tensors
        files = [basename(path)]
        format = 'torch'
        if (ck.ignored.length) warnings.push(`${basename(path)}: ${ck.ignored.length} non-tensor entries skipped (${ck.ignored.slice(0, 3).join(', ')})`)
      }
    } else if (existsSync(join(path, TORCH_INDEX)) || existsSync(join(path, TORCH_SINGLE))) {
      format = 'torch'
      ;({tensors, files} = await openTorchDir(path, checkpoints, warnings))
    } else if (existsSync(join(path, 'model.safetensors.index.json')) || existsSync(join(path, 'model.safetensors'))) {
      format = 'safetensors'
      const st = await openSafetensorsModel(path)
      ;({tensors, files} = st)
    } else {
      throw new ModelError(`${path}: no model weights found (expected ${TORCH_INDEX}, ${TORCH_SINGLE}, model.safetensors.index.json or model.safetensors)`, 'no-weights')
    }
    let config: ModelConfig | undefined
    let arch: Arch | undefined
    const configPath = dir ? join(dir, 'config.json') : undefined
    if (dir && opts.detected) {
      ;({config, arch} = opts.detected)
    } else if (configPath && existsSync(configPath)) {
      config = await readModelConfig(configPath)
      arch = await detectModelArch(dir!, config, tensors.map(t => t.name), {arch: opts.arch, onNote: m => warnings.push(m)})
    } else if (dir) {
      throw new ModelError(`${dir}: config.json is missing`, 'missing-file')
    }
    return {path, dir, format, config, arch, tensors, files, warnings, close}
  } catch (error) {
    await close()
    throw error
  }
}

async function openTorchDir(dir: string, checkpoints: TorchCheckpoint[], warnings: string[]): Promise<{tensors: TensorEntry[], files: string[]}> {
  const indexPath = join(dir, TORCH_INDEX)
  if (!existsSync(indexPath)) {
    const ck = await TorchCheckpoint.open(join(dir, TORCH_SINGLE))
    checkpoints.push(ck)
    return {tensors: ck.tensors, files: [TORCH_SINGLE]}
  }
  const index = await readJson(indexPath)
  const weightMap = index.weight_map
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new ModelError(`${indexPath}: weight_map is missing or not an object`, 'bad-index')
  }
  const map = weightMap as Record<string, unknown>
  const shardNames = [...new Set(Object.values(map).map(String))].sort()
  for (const s of shardNames) {
    if (s.includes('/') || s.includes('\\')) throw new ModelError(`${indexPath}: shard name ${s} is not a plain file name`, 'bad-index')
    if (!existsSync(join(dir, s))) throw new ModelError(`${indexPath}: names shard ${s}, which is missing from ${dir}`, 'missing-shard')
  }
  const tensors: TensorEntry[] = []
  const seen = new Map<string, string>()
  // Each kind of index inconsistency: the first few named, the rest counted (an index of 2M
  // stale entries must not print 2M lines).
  const stale = {notIndexed: [] as string[], moved: [] as string[], unshard: [] as string[]}
  let notIndexed = 0
  let moved = 0
  let unshard = 0
  for (const s of shardNames) {
    const ck = await TorchCheckpoint.open(join(dir, s))
    checkpoints.push(ck)
    if (ck.ignored.length) warnings.push(`${s}: ${ck.ignored.length} non-tensor entries skipped`)
    for (const t of ck.tensors) {
      const other = seen.get(t.name)
      if (other) throw new ModelError(`tensor ${t.name} appears in both ${other} and ${s}`, 'duplicate-tensor')
      seen.set(t.name, s)
      if (!Object.hasOwn(map, t.name)) {
        if (notIndexed++ < WARNINGS_LISTED) stale.notIndexed.push(`tensor ${t.name} is in ${s} but not in the index`)
      } else if (map[t.name] !== s) {
        if (moved++ < WARNINGS_LISTED) stale.moved.push(`tensor ${t.name}: the index says ${String(map[t.name])}, it is in ${s}`)
      }
      tensors.push(t)
    }
  }
  for (const name of Object.keys(map)) {
    if (!seen.has(name) && unshard++ < WARNINGS_LISTED) stale.unshard.push(`tensor ${name} is in the index but in no shard`)
  }
  const summarise = (lines: string[], count: number, what: string) => {
    warnings.push(...lines)
    if (count > lines.length) warnings.push(`... and ${count - lines.length} more ${what} (${count} in all)`)
  }
  summarise(stale.notIndexed, notIndexed, 'tensors in a shard but not in the index')
  summarise(stale.moved, moved, 'tensors the index places in another shard')
  summarise(stale.unshard, unshard, 'index entries in no shard')
  const declared = (index.metadata as Record<string, unknown> | undefined)?.total_size
  const actual = tensors.reduce((a, t) => a + byteLength(t.dtype, t.shape), 0)
  if (typeof declared === 'number' && declared !== actual) warnings.push(`index metadata.total_size is ${declared}, the shards hold ${actual} bytes of tensors (stale index; the shards win)`)
  return {tensors, files: shardNames}
}

/**
 * Compare a checkpoint's tensors with what its architecture and config need (a config with
 * `quantization_bit` needs the quantized layout: models/quantized-layout.ts).
 */
export function checkTensors(arch: Arch, config: ModelConfig, tensors: readonly TensorEntry[]): TensorCheck {
  let specs
  try {
    specs = checkpointTensorSpecs(arch, config)
  } catch (error) {
    throw new ModelError((error as Error).message, 'bad-config')
  }
  const have = new Map(tensors.map(t => [t.name, t]))
  const check: TensorCheck = {missing: [], extra: [], misshaped: [], wrongDtype: [], absentOptional: []}
  for (const [name, spec] of specs) {
    const t = have.get(name)
    if (!t) (spec.optional ? check.absentOptional : check.missing).push(name)
    else if (t.shape.length !== spec.shape.length || t.shape.some((d, i) => d !== spec.shape[i])) {
      check.misshaped.push({name, expected: [...spec.shape], actual: [...t.shape]})
    } else if ((spec.dtype === 'int8' && t.dtype !== 'I8') || (spec.dtype !== 'int8' && !isFloat(t.dtype))) {
      // Every tensor of the float layout is a float (weights, biases, norms, inv_freq): an I64
      // or BOOL tensor in a weight's place would be cast to nonsense by every consumer.
      check.wrongDtype.push({name, expected: spec.dtype === 'int8' ? 'I8' : 'a float dtype', actual: t.dtype})
    }
  }
  for (const name of have.keys()) if (!specs.has(name)) check.extra.push(name)
  return check
}

/** Throw one clear error when a checkpoint lacks tensors or has wrong shapes. */
export function assertComplete(arch: Arch, check: TensorCheck, source: string): void {
  const parts: string[] = []
  const list = (xs: string[]) => xs.slice(0, 4).join(', ') + (xs.length > 4 ? ` and ${xs.length - 4} more` : '')
  if (check.missing.length) parts.push(`missing ${check.missing.length} tensor(s): ${list(check.missing)}`)
  if (check.misshaped.length) {
    parts.push(`wrong shape: ${list(check.misshaped.map(m => `${m.name} is [${m.actual}], ${arch.id} needs [${m.expected}]`))}`)
  }
  if (check.wrongDtype.length) parts.push(`wrong dtype: ${list(check.wrongDtype.map(m => `${m.name} is ${m.actual}, ${arch.id} needs ${m.expected}`))}`)
  if (parts.length) throw new GlmtoolError('incomplete-model', `${source}: not a complete ${arch.id} checkpoint: ${parts.join('; ')}`)
}
