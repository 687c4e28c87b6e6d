import {Flags} from '@oclif/core'
import {BaseCommand, FLAG_CHARS} from '../cli/base-command.js'
import {byteProgress, formatBytes} from '../cli/progress.js'
import {writeOutputDir} from '../pipelines/output-dir.js'
import {ARCH_IDS, archById, type SynthSize} from '../models/index.js'
import {planSynth, writeSynthModel} from '../synth/synth-model.js'

const DTYPES = {f16: 'F16', bf16: 'BF16', f32: 'F32'} as const

export default class Synth extends BaseCommand {
  static override summary = 'Write a ChatGLM model directory with random weights in the exact published layout'
  static override description = 'Same tensor names, shard naming and count, index, config.json keys and tokenizer files as the published checkpoints, as real torch.save zip files, with seeded random weights scaled like a trained model\'s. `tiny`/`small` keep the architecture with small dimensions (tests, CPU benchmarks); `full` is the real 6B size (about 12 GB) for benchmarks.'
  static override examples = [
    '<%= config.bin %> synth --arch chatglm2-6b --size tiny --out ./tiny-v2',
    '<%= config.bin %> synth --arch chatglm-6b --size full --out /data/chatglm-6b-synth --seed 7',
  ]

  static override flags = {
    arch: Flags.string({required: true, options: [...ARCH_IDS], description: 'model generation'}),
    size: Flags.string({default: 'tiny', options: ['tiny', 'small', 'full'], description: 'tiny/small for tests, full = 6B'}),
    out: Flags.string({char: FLAG_CHARS.out, required: true, description: 'output directory (must not exist unless --force)'}),
    seed: Flags.integer({default: 0, description: 'random seed; the same seed gives the same bytes'}),
    dtype: Flags.string({char: FLAG_CHARS.dtype, default: 'f16', options: Object.keys(DTYPES), description: 'weight dtype'}),
    force: Flags.boolean({char: FLAG_CHARS.force, default: false, description: 'replace --out if it exists'}),
    outliers: Flags.boolean({default: false, description: 'plant activation outliers: 4 hidden channels 20-100x larger, through the norm weights (to judge quantization calibration)'}),
  }

  async run() {
    const {flags} = await this.parse(Synth)
    const arch = archById(flags.arch)
    const opts = {arch, size: flags.size as SynthSize, seed: flags.seed, dtype: DTYPES[flags.dtype as keyof typeof DTYPES], outliers: flags.outliers}
    const started = Date.now()
    const {totalBytes} = planSynth(opts)
    const progress = byteProgress('synth', totalBytes, !this.jsonEnabled())
    let plan
    try {
      plan = await writeOutputDir(flags.out, {force: flags.force}, dir => writeSynthModel(dir, {...opts, onBytes: n => progress.add(n)}))
    } finally {
      progress.stop()
    }
    const result = {
      out: flags.out, arch: arch.id, size: opts.size, dtype: flags.dtype, seed: flags.seed, outliers: flags.outliers,
      tensors: plan.tensors.length, shards: plan.shards.length, bytes: plan.totalBytes,
      seconds: (Date.now() - started) / 1000,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
    }
    this.log(`wrote ${arch.id} (${opts.size}, ${flags.dtype}) to ${flags.out}: ${result.tensors} tensors in ${result.shards} shards, ${formatBytes(result.bytes)}, ${result.seconds.toFixed(1)} s`)
    return result
  }
}
