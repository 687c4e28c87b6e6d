import {Args, Flags} from '@oclif/core'
import {archFlag, archOf, BaseCommand, FLAG_CHARS} from '../cli/base-command.js'
import {MODEL_ID_HELP} from '../cli/model-arg.js'
import {byteProgress, formatBytes, type Progress} from '../cli/progress.js'
import {convertToSafetensors} from '../pipelines/convert-safetensors.js'
import type {DType} from '../formats/dtype.js'
import {convertToGguf} from '../pipelines/convert-gguf.js'
import {GGUF_FILE_TYPES, type GgufFileType} from '../formats/gguf/chatglm2.js'
import {exportOnnx, type OnnxWeightDtype} from '../pipelines/export-onnx.js'
import {parseSize} from '../formats/size.js'
import {UsageError} from '../errors.js'

const DTYPES: Record<string, DType | 'keep'> = {keep: 'keep', f16: 'F16', bf16: 'BF16', f32: 'F32'}
const ONNX_DTYPES: Record<string, OnnxWeightDtype> = {f16: 'F16', f32: 'F32'}

export default class Convert extends BaseCommand {
  static override summary = 'Convert a ChatGLM checkpoint (PyTorch shards) to safetensors, to an ONNX decoder graph or to GGUF (llama.cpp)'
  static override description = 'Streams shard by shard and tensor by tensor in bounded memory, copies config and tokenizer files alongside, and writes into a temporary directory that is renamed into place only when everything is written and verified. The input is never modified.\n\n--to gguf writes one GGUF file for llama.cpp\'s chatglm architecture (ChatGLM2-6B/ChatGLM3-6B only), with the metadata, tensor names and vocabulary llama.cpp\'s own converter writes; --type f16 (default), bf16, f32, q8_0 or q4_0 (ggml\'s block layouts; norms and biases stay f32). --out is a directory (default <model>-gguf) or a path ending in .gguf.\n\n--to onnx writes model.onnx (one decoder graph with a KV cache, for prefill and decode; onnxruntime contrib ops), model.onnx.data (the weights) and glmtool-onnx.json (the graph\'s inputs and outputs). Weights are stored as --dtype (default: f16 when the checkpoint is float16, else f32) and computed in float32.'
  static override examples = [
    '<%= config.bin %> convert ./chatglm2-6b --to safetensors --out ./chatglm2-6b-st',
    '<%= config.bin %> convert ./chatglm-6b --to safetensors --dtype bf16 --max-shard-size 2GB',
    '<%= config.bin %> convert ./chatglm2-6b --to onnx --dtype f16 --out ./chatglm2-6b-onnx',
    '<%= config.bin %> convert ./chatglm2-6b --to gguf --type q8_0 --out ./chatglm2-6b-q8_0.gguf',
  ]

  static override args = {
    model: Args.string({required: true, description: `model directory (torch shards + config.json, or glmtool safetensors output); ${MODEL_ID_HELP}`}),
  }

  static override flags = {
    arch: archFlag(),
    to: Flags.string({required: true, options: ['safetensors', 'onnx', 'gguf'], description: 'output format'}),
    out: Flags.string({char: FLAG_CHARS.out, description: 'output directory [default: <model>-safetensors, <model>-onnx or <model>-gguf]; for gguf also a file path ending in .gguf'}),
    dtype: Flags.string({char: FLAG_CHARS.dtype, options: Object.keys(DTYPES), description: 'float dtype of the output; safetensors: keep|f16|bf16|f32 [default: keep]; onnx: f16|f32 [default: f16 for float16 checkpoints, else f32]'}),
    type: Flags.string({options: Object.keys(GGUF_FILE_TYPES), description: 'GGUF tensor type of the weights (--to gguf only) [default: f16]'}),
    'max-shard-size': Flags.string({default: '4GB', description: 'largest shard (GB = 1e9 bytes, GiB = 2^30)'}),
    force: Flags.boolean({char: FLAG_CHARS.force, default: false, description: 'replace --out if it exists'}),
  }

  async run() {
    const {args, flags} = await this.parse(Convert)
    const model = this.resolveModel(args.model)
    // The output-directory code refuses an --out that is, holds or lies inside the input (real paths).
    const out = flags.out ?? `${model.outBase}-${flags.to}`
    let progress: Progress | undefined
    const onStart = (total: number) => {
      progress = byteProgress('convert', total, !this.jsonEnabled())
    }
    const onBytes = (n: number) => progress?.add(n)
    const onWarning = (w: string) => this.note(`warning: ${w}`)
    try {
      if (flags.type !== undefined && flags.to !== 'gguf') throw new UsageError('--type is for --to gguf; use --dtype for safetensors and onnx')
      if (flags.to === 'gguf') {
        if (flags.dtype !== undefined) throw new UsageError('--to gguf takes --type (f16|bf16|f32|q8_0|q4_0), not --dtype')
        const result = await convertToGguf({
          arch: archOf(flags),
          input: model.path, out, type: (flags.type ?? 'f16') as GgufFileType, force: flags.force, onStart, onBytes, onWarning,
        })
        progress?.stop()
        const types = Object.entries(result.tensorTypes).map(([t, n]) => `${n} ${t}`).join(', ')
        this.log(`converted ${result.architecture} to ${result.file}: GGUF (llama.cpp chatglm), ${result.tensors} tensors (${types}), ${formatBytes(result.bytes)}, ${result.seconds.toFixed(1)} s`)
        return result
      }
      if (flags.to === 'onnx') {
        if (flags.dtype !== undefined && !(flags.dtype in ONNX_DTYPES)) throw new UsageError(`--to onnx stores weights as f16 or f32, not ${flags.dtype}`)
        const result = await exportOnnx({
          arch: archOf(flags),
          input: model.path, out, dtype: flags.dtype === undefined ? undefined : ONNX_DTYPES[flags.dtype], force: flags.force, onStart, onBytes, onWarning,
        })
        progress?.stop()
        this.log(`exported ${result.architecture} to ${out}: ONNX decoder with KV cache, ${result.tensors} weights as ${result.dtype} (${formatBytes(result.bytes)}), computed in float32, ${result.seconds.toFixed(1)} s`)
        return result
      }
      const result = await convertToSafetensors({
        arch: archOf(flags),
        input: model.path, out, dtype: DTYPES[flags.dtype ?? 'keep'], maxShardBytes: parseSize(flags['max-shard-size']), force: flags.force,
        onStart, onBytes, onWarning,
      })
      progress?.stop()
      this.log(`converted ${result.architecture} to ${out}: ${result.tensors} tensors, ${formatBytes(result.bytes)} in ${result.files.length - result.copied.length} file(s), ${result.seconds.toFixed(1)} s`)
      return result
    } finally {
      progress?.stop()
    }
  }
}
