import type {ArchId} from '../models/index.js'
import {existsSync, statSync} from 'node:fs'
import {type FileHandle, open, readFile} from 'node:fs/promises'
import {basename, join, resolve} from 'node:path'
import {ModelError} from '../errors.js'
import {decodeModelProto} from '../runtime/tokenizer/sentencepiece-model.js'
import {numel} from '../formats/dtype.js'
import {checkGgufConfig, GGUF_FILE_TYPES, type GgufFileType, ggufMetadata, ggufTensorName, ggufTensorType, ggufVocab} from '../formats/gguf/chatglm2.js'
import {type GgmlType, type GgufTensorPlan, ggmlByteSize, writeGguf} from '../formats/gguf/gguf-writer.js'
import {ggufTensorData} from '../formats/gguf/tensor-data.js'
import {assertComplete, checkTensors, openModel} from './model-dir.js'
import {checkpoint, claimOutput, openClaimed} from './output-dir.js'

export interface GgufConvertOptions {
  /** The user's --arch (src/pipelines/model-dir.ts OpenModelOptions). */
  arch?: ArchId
  input: string
  /** A directory (the GGUF goes inside it) or a path ending in .gguf. */
  out: string
  type: GgufFileType
  force: boolean
  onStart?: (totalBytes: number) => void
  onBytes?: (n: number) => void
  onWarning?: (message: string) => void
}

export interface GgufConvertResult {
  input: string
  /** The GGUF file written. */
  file: string
  architecture: string
  type: GgufFileType
  tensors: number
  /** GGUF tensor types and how many tensors have each. */
  tensorTypes: Partial<Record<GgmlType, number>>
  bytes: number
  seconds: number
  peakRssBytes: number
}

/** Is `out` meant as a file (ends in .gguf and is not an existing directory)? */
export function ggufOutIsFile(out: string): boolean {
  return /\.gguf$/i.test(out) && !(existsSync(out) && statSync(out).isDirectory())
}

/**
 * ChatGLM2-6B (torch or safetensors directory) -> one GGUF file as llama.cpp's converter writes
 * it for the `chatglm` architecture, streamed tensor by tensor, written atomically. The input
 * is only read. `--out` is claimed before any work, as every writing command does
 * (output-dir.ts: apart from the input, locked, whole or not at all), as a file or a directory.
 */
export async function convertToGguf(opts: GgufConvertOptions): Promise<GgufConvertResult> {
  const started = Date.now()
  const asFile = ggufOutIsFile(opts.out)
  const output = await claimOutput(opts.out, {force: opts.force, kind: asFile ? 'file' : 'directory', inputs: [{what: 'input model', path: opts.input}]})
  const model = await openClaimed(output, () => openModel(opts.input, {arch: opts.arch}))
  try {
    if (!model.dir || !model.arch || !model.config) {
      throw new ModelError(`${opts.input}: convert needs a model directory with config.json, not a single file`, 'not-a-model-dir')
    }
    const {gguf} = model.arch
    if (gguf.unsupported !== undefined) throw new ModelError(`${opts.input}: ${gguf.unsupported}`, 'gguf-unsupported')
    const config = model.config
    const configPath = join(model.dir, 'config.json')
    const dims = model.arch.dims(config, configPath)
    checkGgufConfig(config, dims, configPath)
    const check = checkTensors(model.arch, config, model.tensors)
    assertComplete(model.arch, check, opts.input)
    for (const w of model.warnings) opts.onWarning?.(w)

    const plans: GgufTensorPlan[] = []
    let parameters = 0
    for (const t of model.tensors) {
      const name = ggufTensorName(t.name)
      if (name === undefined) {
        // inv_freq is recomputed by llama.cpp from rope.freq_base, as the converter drops it.
        if (!t.name.endsWith('.rotary_pos_emb.inv_freq')) opts.onWarning?.(`tensor ${t.name} has no GGUF counterpart; not written`)
        continue
      }
      const type = ggufTensorType(name, t.shape, opts.type)
      // Ctrl-C stops between tensors (output-dir.ts checkpoint), not only after the whole file.
      plans.push({name, dims: [...t.shape].reverse(), type, data: async function* () {
        await checkpoint()
        yield* ggufTensorData(t, type)
      }})
      parameters += numel(t.shape)
    }

    const spPath = join(model.dir, model.arch.tokenizerFile)
    let spBytes: Buffer
    try {
      spBytes = await readFile(spPath)
    } catch (error) {
      throw new ModelError(`${spPath}: cannot read the tokenizer (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}); a GGUF carries its vocabulary`, 'missing-file')
    }
    const vocab = ggufVocab(decodeModelProto(spBytes, spPath), dims.vocab, gguf.roleTokens, spPath)
    const chatTemplate = await readChatTemplate(join(model.dir, 'tokenizer_config.json'))
    const name = basename(resolve(model.dir))
    const metadata = ggufMetadata({config, dims, name, fileType: opts.type, parameters, vocab, chatTemplate})
    const total = plans.reduce((a, p) => a + ggmlByteSize(p.type, p.dims), 0)
    opts.onStart?.(total)
    const tensorTypes: Partial<Record<GgmlType, number>> = {}
    for (const p of plans) tensorTypes[p.type] = (tensorTypes[p.type] ?? 0) + 1

    const fileName = `${name}-${GGUF_FILE_TYPES[opts.type].label}.gguf`
    const write = (fh: FileHandle) => writeGguf(fh, metadata, plans, opts.onBytes)
    const file = asFile ? opts.out : join(opts.out, fileName)
    const bytes = asFile
      ? await output.writeFile(write)
      : await output.write(async tmp => {
        const fh = await open(join(tmp, fileName), 'wx')
        try {
          return await write(fh)
        } finally {
          await fh.close()
        }
      })
    return {
      input: opts.input, file, architecture: model.arch.id, type: opts.type, tensors: plans.length, tensorTypes, bytes,
      seconds: (Date.now() - started) / 1000, peakRssBytes: process.resourceUsage().maxRSS * 1024,
    }
  } finally {
    await model.close()
    output.release()
  }
}

/** tokenizer_config.json's chat_template (a string), as gguf-py's SpecialVocab carries it. */
async function readChatTemplate(path: string): Promise<string | undefined> {
  if (!existsSync(path)) return undefined
  try {
    const v = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>
    return typeof v.chat_template === 'string' ? v.chat_template : undefined
  } catch (error) {
    throw new ModelError(`${path}: invalid JSON (${(error as Error).message})`, 'bad-json')
  }
}
