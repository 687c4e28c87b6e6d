import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {Flags} from '@oclif/core'
import {BaseCommand} from '../cli/base-command.js'
import {formatBytes} from '../cli/progress.js'
import {convertToSafetensors} from '../formats/convert-safetensors.js'
import {inspectModel} from '../formats/inspect-model.js'
import {writeOutputDir} from '../formats/output-dir.js'
import {archById} from '../models/index.js'
import {writeSynthModel} from '../synth/synth-model.js'

interface Step {
  step: string
  did: string
  seconds: number
}

export default class Demo extends BaseCommand {
  static override summary = 'Walk a tiny synthetic model through every glmtool command that exists'
  static override description = 'Synthesises tiny ChatGLM-6B and ChatGLM2-6B models in the published layout, inspects them, and converts them to safetensors, printing what each step did. Needs no weights, no GPU and no Python.'
  static override examples = ['<%= config.bin %> demo', '<%= config.bin %> demo --keep ./demo-models']

  static override flags = {
    keep: Flags.string({description: 'keep the demo models in this directory instead of a temporary one'}),
  }

  async run() {
    const {flags} = await this.parse(Demo)
    const base = flags.keep ?? await mkdtemp(join(tmpdir(), 'glmtool-demo-'))
    const steps: Step[] = []
    const step = async (name: string, fn: () => Promise<string>) => {
      const t0 = Date.now()
      const did = await fn()
      const s = {step: name, did, seconds: (Date.now() - t0) / 1000}
      steps.push(s)
      this.log(`[${name}] ${did} (${s.seconds.toFixed(2)} s)`)
    }
    try {
      for (const archId of ['chatglm-6b', 'chatglm2-6b'] as const) {
        const arch = archById(archId)
        const torchDir = join(base, `${archId}-tiny`)
        const stDir = join(base, `${archId}-tiny-safetensors`)
        await step(`synth ${archId}`, async () => {
          const plan = await writeOutputDir(torchDir, true, d => writeSynthModel(d, {arch, size: 'tiny', seed: 0, dtype: 'F16'}))
          return `wrote ${plan.tensors.length} tensors in ${plan.shards.length} torch.save shards (${formatBytes(plan.totalBytes)}) + config.json + ${arch.tokenizerFile} to ${torchDir}`
        })
        await step(`inspect ${archId}`, async () => {
          const r = await inspectModel(torchDir)
          const ok = r.check && r.check.missing.length === 0 && r.check.misshaped.length === 0
          return `detected ${r.architecture}, ${r.totals.tensors} tensors, ${r.totals.parameters.toLocaleString('en-US')} parameters, ${ok ? 'all tensors present with the right shapes' : 'INCOMPLETE'}`
        })
        await step(`convert ${archId}`, async () => {
          const r = await convertToSafetensors({input: torchDir, out: stDir, dtype: 'keep', maxShardBytes: 4e9, force: true})
          return `streamed ${r.tensors} tensors (${formatBytes(r.bytes)}) to safetensors in ${stDir}, copied ${r.copied.join(', ')}`
        })
      }
    } finally {
      if (!flags.keep) await rm(base, {recursive: true, force: true})
    }
    this.log(flags.keep ? `models kept in ${flags.keep}` : 'done; the demo models were in a temporary directory, now removed (use --keep DIR to keep them)')
    return {steps, dir: flags.keep ?? null}
  }
}
