import {Args, Flags} from '@oclif/core'
import {archFlag, archOf, BaseCommand, FLAG_CHARS} from '../cli/base-command.js'
import {MODEL_ID_HELP} from '../cli/model-arg.js'
import {byteProgress, formatBytes, type Progress} from '../cli/progress.js'
import type {AdapterType} from '../formats/adapters/adapter-source.js'
import {mergeAdapter} from '../pipelines/merge-adapter.js'
import type {DType} from '../formats/dtype.js'
import {parseSize} from '../formats/size.js'

const DTYPES: Record<string, DType | 'keep'> = {keep: 'keep', f16: 'F16', bf16: 'BF16', f32: 'F32'}

export default class MergeAdapter extends BaseCommand {
  static override summary = 'Merge a LoRA adapter (PEFT) or a P-Tuning v2 prefix into a ChatGLM model'
  static override description = 'LoRA: W += scale * (B @ A) in float32 for every adapted weight, cast once to the output dtype; other tensors stream through unchanged. P-Tuning v2 (THUDM\'s ptuning trainer checkpoints): the prefix keys and values are computed once and stored as float32 tensors transformer.prefix_cache.<layer>.{key,value} [kv_heads, pre_seq_len, head_dim], with pre_seq_len in config.json. The output is a complete safetensors model directory (config and tokenizer files copied from the base), written to a temporary directory and renamed into place only when verified; on any error nothing is written.'
  static override examples = [
    '<%= config.bin %> merge-adapter ./chatglm2-6b --adapter ./lora-out --out ./chatglm2-6b-lora',
    '<%= config.bin %> merge-adapter ./chatglm-6b --adapter ./ptuning/output/checkpoint-3000 --type prefix',
    '<%= config.bin %> merge-adapter ./chatglm2-6b --adapter ./lora-out/adapter_model.bin --dtype f16 --json',
  ]

  static override args = {
    base: Args.string({required: true, description: `base model directory (torch shards + config.json, or glmtool safetensors output); ${MODEL_ID_HELP}`}),
  }

  static override flags = {
    arch: archFlag(),
    adapter: Flags.string({required: true, description: 'adapter directory or weights file: a PEFT LoRA (adapter_config.json + adapter_model.bin/.safetensors) or a P-Tuning v2 checkpoint (config.json + pytorch_model.bin); or a Hugging Face id in the local cache'}),
    type: Flags.string({options: ['lora', 'prefix'], description: 'adapter type [default: detected from its files]'}),
    out: Flags.string({char: FLAG_CHARS.out, description: 'output directory [default: <base>-merged]'}),
    dtype: Flags.string({char: FLAG_CHARS.dtype, default: 'keep', options: Object.keys(DTYPES), description: 'float dtype of the model weights in the output (prefix tensors are always f32)'}),
    'max-shard-size': Flags.string({default: '4GB', description: 'largest shard (GB = 1e9 bytes, GiB = 2^30)'}),
    force: Flags.boolean({char: FLAG_CHARS.force, default: false, description: 'replace --out if it exists'}),
  }

  async run() {
    const {args, flags} = await this.parse(MergeAdapter)
    const base = this.resolveModel(args.base)
    const adapter = this.resolveModel(flags.adapter)
    const out = flags.out ?? `${base.outBase}-merged`
    let progress: Progress | undefined
    try {
      const result = await mergeAdapter({
        arch: archOf(flags),
        base: base.path, adapter: adapter.path, type: flags.type as AdapterType | undefined, out,
        dtype: DTYPES[flags.dtype], force: flags.force, maxShardBytes: parseSize(flags['max-shard-size']),
        onStart: total => {
          progress = byteProgress('merge', total, !this.jsonEnabled())
        },
        onBytes: n => progress?.add(n),
        onWarning: w => this.note(`warning: ${w}`),
      })
      progress?.stop()
      const what = result.lora
        ? `LoRA (r ${result.lora.rank}, alpha ${result.lora.alpha}, scale ${+result.lora.scale.toFixed(6)}${result.lora.fanInFanOut ? ', fan_in_fan_out' : ''}) into ${result.lora.merged.length} weight(s)`
        : `P-Tuning v2 prefix (pre_seq_len ${result.prefix!.preSeqLen}${result.prefix!.prefixProjection ? ', projected' : ''}) as ${result.prefix!.tensors.length} f32 tensors [${result.prefix!.shape.join(', ')}]`
      this.log(`merged ${what} of ${result.architecture} to ${out}: ${result.tensors} tensors, ${formatBytes(result.bytes)} in ${result.files.length - result.copied.length} file(s), ${result.seconds.toFixed(1)} s`)
      return result
    } finally {
      progress?.stop()
    }
  }
}
