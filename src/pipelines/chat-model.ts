import {existsSync} from 'node:fs'
import {join} from 'node:path'
import {ModelError, UsageError} from '../errors.js'
import {exportOnnx} from './export-onnx.js'
import {assertCacheRoom, estimateOnnxBytes, onnxCacheDir, recordCacheEntry, touchCacheEntry} from './model-cache.js'
import {detectModelDir} from './model-dir.js'
import type {Arch, ArchId} from '../models/index.js'
import type {DecoderBackend, KvDtype} from '../runtime/backend.js'
import {CudaBackend} from '../runtime/backends/cuda.js'
import {OnnxCpuBackend} from '../runtime/backends/onnx-cpu.js'
import {loadModelTokenizer} from '../runtime/tokenizer/model-tokenizer.js'
import type {ChatTokenizer} from '../runtime/tokenizer/index.js'

export interface ChatModel {
  backend: DecoderBackend
  tokenizer: ChatTokenizer
  /** The model's generation: its chat format and defaults. */
  arch: Arch
  /** CPU backend: the ONNX directory actually run (the input itself, or its cached conversion). */
  onnxDir?: string
}

export type BackendKind = 'cpu' | 'cuda'

/**
 * Open a model for chat. CPU: an ONNX directory (glmtool's `convert --to onnx` output) runs as
 * is; a torch or safetensors directory is converted once to ONNX in the cache (float16 weights kept float16, else float32) and the
 * cached copy reused while the source is unchanged. CUDA: glmtool's safetensors output (or a
 * torch directory) is streamed straight onto the GPU.
 */
export async function loadChatModel(
  path: string,
  opts: {
    maxLength?: number, backend?: BackendKind, arch?: ArchId, onNote?: (m: string) => void,
    /** The KV cache's element type (default f16; int8 needs the CUDA backend). */
    kvDtype?: KvDtype,
    /** Called once the generation is known, before any conversion or GPU load (a command's checks of it). */
    onArch?: (arch: Arch) => void
    /** A progress display for the one-time ONNX conversion (the command's bar; none by default). */
    progress?: (label: string, totalBytes: number) => {add(bytes: number): void, stop(): void}
  } = {},
): Promise<ChatModel> {
  if (opts.kvDtype === 'int8' && opts.backend !== 'cuda') {
    throw new UsageError('--kv-dtype int8 is implemented by the CUDA engine only: add --backend cuda (the CPU runtime keeps its KV cache in the model\'s float type)')
  }
  // config.json is read and the generation detected here, once; the tokenizer, the conversion
  // and the GPU load are handed both rather than each reading and detecting again.
  const detected = await detectModelDir(path, {arch: opts.arch, onNote: opts.onNote})
  // The tokenizer is loaded and checked against config.json first, from the user's directory:
  // a bad tokenizer fails in a second, naming the user's file, before any conversion or GPU load.
  const {tokenizer, arch} = await loadModelTokenizer(path, detected)
  opts.onArch?.(arch)
  if (opts.backend === 'cuda') {
    const backend = await CudaBackend.load(path, {maxLength: opts.maxLength, arch: arch.id, detected, kvDtype: opts.kvDtype})
    return {backend, tokenizer, arch}
  }
  let onnxDir = path
  if (!existsSync(join(path, 'model.onnx'))) {
    onnxDir = onnxCacheDir(path, arch.id)
    if (existsSync(join(onnxDir, 'model.onnx'))) {
      opts.onNote?.(`using the cached ONNX conversion of ${path} in ${onnxDir}`)
      touchCacheEntry(onnxDir)
    } else {
      // The disk must hold the whole conversion: refused before it starts, never filled silently.
      const need = estimateOnnxBytes(path, detected.config)
      assertCacheRoom(path, onnxDir, need)
      opts.onNote?.(`converting ${path} to ONNX once (about ${(need / 1e9).toFixed(2)} GB, cached in ${onnxDir}; \`glmtool cache ls\` lists conversions) ...`)
      let bar: {add(bytes: number): void, stop(): void} | undefined
      try {
        await exportOnnx({
          // float16 checkpoints stay float16, resident in the session (half the memory of
          // float32: a 6B model fits a 24 GB machine); bfloat16 and float32 become float32,
          // which keeps their values (docs/architecture.md, the CPU cache).
          // A quantized checkpoint's linears compute with int8 activations, as `quantize
          // --format onnx` writes them by default (float32 activations leave INT8 at 0.07 tok/s at 6B).
          input: path, out: onnxDir, residentF16: true, cpuCompute: 'int8', force: true, arch: arch.id, detected,
          onStart: total => { bar = opts.progress?.('converting to ONNX', total) },
          onBytes: n => bar?.add(n),
        })
      } finally {
        bar?.stop()
      }
      recordCacheEntry(onnxDir, path, arch.id)
    }
  }
  const backend = await OnnxCpuBackend.load(onnxDir, {maxLength: opts.maxLength})
  if (backend.arch.id !== arch.id) {
    await backend.dispose()
    throw new ModelError(`${onnxDir}: holds a ${backend.arch.id} graph, but ${join(path, 'config.json')} describes ${arch.id}`, 'arch-mismatch')
  }
  return {backend, tokenizer, arch, onnxDir}
}
