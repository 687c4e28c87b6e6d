import {Args, Flags} from '@oclif/core'
import Table from 'cli-table3'
import {BaseCommand} from '../cli/base-command.js'
import {MODEL_ID_HELP} from '../cli/model-arg.js'
import {formatBytes} from '../cli/progress.js'
import {inspectModel} from '../formats/inspect-model.js'

export default class Inspect extends BaseCommand {
  static override summary = 'Show the tensors, totals, generation and config of a model, shard or safetensors file'
  static override examples = [
    '<%= config.bin %> inspect ./chatglm2-6b',
    '<%= config.bin %> inspect ./chatglm-6b/pytorch_model-00001-of-00008.bin',
    '<%= config.bin %> inspect ./chatglm2-6b-safetensors --json',
    '<%= config.bin %> inspect ./chatglm2-6b-onnx',
    '<%= config.bin %> inspect THUDM/chatglm2-6b',
  ]

  static override args = {
    path: Args.string({required: true, description: `torch model directory, torch shard, safetensors file or directory, glmtool ONNX directory; ${MODEL_ID_HELP}`}),
  }

  static override flags = {
    'no-tensors': Flags.boolean({default: false, description: 'print totals only, not the tensor table'}),
  }

  async run() {
    const {args, flags} = await this.parse(Inspect)
    const report = await inspectModel(this.resolveModel(args.path).path)
    if (this.jsonEnabled()) return report
    if (!flags['no-tensors']) {
      const table = new Table({head: ['name', 'dtype', 'shape', 'bytes', 'file'], style: {head: [], border: []}})
      for (const t of report.tensors) table.push([t.name, t.dtype, `[${t.shape.join(', ')}]`, formatBytes(t.bytes), t.file])
      this.log(table.toString())
    }
    this.log(`${report.format} ${report.files.length === 1 ? 'file' : `model, ${report.files.length} files`}: ${report.totals.tensors} tensors, ${report.totals.parameters.toLocaleString('en-US')} parameters, ${formatBytes(report.totals.bytes)} (${Object.entries(report.totals.byDtype).map(([d, b]) => `${d} ${formatBytes(b)}`).join(', ')})`)
    if (report.architecture && report.config) {
      this.log(`architecture: ${report.architecture}`)
      for (const [k, v] of Object.entries(report.config)) this.log(`  ${k}: ${v}`)
    } else {
      this.log('architecture: unknown (no config.json)')
    }
    const c = report.check
    if (c) {
      if (c.missing.length === 0 && c.misshaped.length === 0 && c.wrongDtype.length === 0) this.log('tensors: complete')
      for (const n of c.missing) this.log(`missing: ${n}`)
      for (const m of c.misshaped) this.log(`wrong shape: ${m.name} is [${m.actual}], expected [${m.expected}]`)
      for (const m of c.wrongDtype) this.log(`wrong dtype: ${m.name} is ${m.actual}, expected ${m.expected}`)
      for (const n of c.extra) this.log(`extra: ${n}`)
      if (c.absentOptional.length) this.log(`absent (recomputed, fine): ${c.absentOptional.length} rotary inv_freq buffer(s)`)
    }
    for (const w of report.warnings) this.log(`warning: ${w}`)
    return report
  }
}
