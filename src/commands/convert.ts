import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../cli/base-command.js'
import {byteProgress, formatBytes, type Progress} from '../cli/progress.js'
import {convertToSafetensors} from '../formats/convert-safetensors.js'
import type {DType} from '../formats/dtype.js'
import {parseSize} from '../formats/size.js'
import {UsageError} from '../errors.js'

const DTYPES: Record<string, DType | 'keep'> = {keep: 'keep', f16: 'F16', bf16: 'BF16', f32: 'F32'}

export default class Convert extends BaseCommand {
  static override summary = 'Convert a ChatGLM checkpoint (PyTorch shards) to safetensors'
  static override description = 'Streams shard by shard and tensor by tensor in bounded memory, copies config and tokenizer files alongside, and writes into a temporary directory that is renamed into place only when everything is written and verified. The input is never modified.'
  static override examples = [
    '<%= config.bin %> convert ./chatglm2-6b --to safetensors --out ./chatglm2-6b-st',
    '<%= config.bin %> convert ./chatglm-6b --to safetensors --dtype bf16 --max-shard-size 2GB',
  ]

  static override args = {
    model: Args.string({required: true, description: 'model directory (torch shards + config.json, or glmtool safetensors output)'}),
  }

  static override flags = {
    to: Flags.string({required: true, options: ['safetensors'], description: 'output format'}),
    out: Flags.string({description: 'output directory [default: <model>-safetensors]'}),
    dtype: Flags.string({default: 'keep', options: Object.keys(DTYPES), description: 'float dtype of the output (integer tensors keep theirs)'}),
    'max-shard-size': Flags.string({default: '4GB', description: 'largest shard (GB = 1e9 bytes, GiB = 2^30)'}),
    force: Flags.boolean({default: false, description: 'replace --out if it exists'}),
  }

  async run() {
    const {args, flags} = await this.parse(Convert)
    const out = flags.out ?? `${args.model.replace(/\/+$/, '')}-safetensors`
    if (out.replace(/\/+$/, '') === args.model.replace(/\/+$/, '')) throw new UsageError('--out must differ from the input model directory')
    let progress: Progress | undefined
    try {
      const result = await convertToSafetensors({
        input: args.model, out, dtype: DTYPES[flags.dtype], maxShardBytes: parseSize(flags['max-shard-size']), force: flags.force,
        onStart: total => {
          progress = byteProgress('convert', total, !this.jsonEnabled())
        },
        onBytes: n => progress?.add(n),
        onWarning: w => this.note(`warning: ${w}`),
      })
      progress?.stop()
      this.log(`converted ${result.architecture} to ${out}: ${result.tensors} tensors, ${formatBytes(result.bytes)} in ${result.files.length - result.copied.length} file(s), ${result.seconds.toFixed(1)} s`)
      return result
    } finally {
      progress?.stop()
    }
  }
}
