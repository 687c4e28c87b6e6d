import {Args, Flags} from '@oclif/core'
import Table from 'cli-table3'
import {archFlag, archOf, BaseCommand} from '../cli/base-command.js'
import {MODEL_ID_HELP} from '../cli/model-arg.js'
import {formatBytes} from '../cli/progress.js'
import {inspectModel, inspectModelTokenizer} from '../pipelines/inspect-model.js'

/**
 * Rows of the tensor table, and lines of each kind of check, printed before the rest are
 * counted: cli-table3 lays a table out in memory and overflows the call stack on a legal
 * header of a million tensors, and nobody reads that many lines. --json has them all.
 */
export const MAX_TABLE_ROWS = 1000
const MAX_CHECK_LINES = 20

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
    arch: archFlag(),
    'no-tensors': Flags.boolean({default: false, description: 'print totals only, not the tensor table'}),
  }

  async run() {
    const {args, flags} = await this.parse(Inspect)
    const model = await inspectModel(this.resolveModel(args.path).path, {arch: archOf(flags)})
    const tokenizer = await inspectModelTokenizer(model)
    const {rawConfig: _raw, ...report} = {...model, tokenizer}
    if (this.jsonEnabled()) return report
    if (!flags['no-tensors']) {
      const table = new Table({head: ['name', 'dtype', 'shape', 'bytes', 'file'], style: {head: [], border: []}})
      for (const t of report.tensors.slice(0, MAX_TABLE_ROWS)) table.push([t.name, t.dtype, `[${t.shape.join(', ')}]`, formatBytes(t.bytes), t.file])
      this.log(table.toString())
      if (report.tensors.length > MAX_TABLE_ROWS) this.log(`... and ${report.tensors.length - MAX_TABLE_ROWS} more tensors (--json lists them all)`)
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
      const some = <T>(xs: T[], line: (x: T) => string, what: string) => {
        for (const x of xs.slice(0, MAX_CHECK_LINES)) this.log(line(x))
        if (xs.length > MAX_CHECK_LINES) this.log(`... and ${xs.length - MAX_CHECK_LINES} more ${what} (--json lists them all)`)
      }
      some(c.missing, n => `missing: ${n}`, 'missing tensors')
      some(c.misshaped, m => `wrong shape: ${m.name} is [${m.actual}], expected [${m.expected}]`, 'mis-shaped tensors')
      some(c.wrongDtype, m => `wrong dtype: ${m.name} is ${m.actual}, expected ${m.expected}`, 'tensors of the wrong dtype')
      some(c.extra, n => `extra: ${n}`, 'extra tensors')
      const invFreq = c.absentOptional.filter(n => n.endsWith('inv_freq')).length
      if (invFreq) this.log(`absent (recomputed, fine): ${invFreq} rotary inv_freq buffer(s)`)
      const other = c.absentOptional.filter(n => !n.endsWith('inv_freq'))
      // P-Tuning tensors listed as optional: the prefix cache of a trainer config, the published
      // prefix encoder of a merge-adapter output made before it carried one
      if (other.length) this.log(`absent (optional): ${other.length} P-Tuning tensor(s), e.g. ${other[0]}`)
    }
    if (tokenizer && 'error' in tokenizer) this.log(`tokenizer: ${tokenizer.error}`)
    else if (tokenizer) {
      const t = tokenizer
      this.log(`tokenizer: ${t.file}: SentencePiece ${t.type}, ${t.pieces} pieces (${t.controlPieces} control, ${t.userDefinedPieces} user-defined, ${t.bytePieces} byte), normalizer ${t.normalizer}, byte_fallback ${t.byteFallback}`)
      if (t.numImageTokens !== undefined) this.log(`  num_image_tokens: ${t.numImageTokens} (${t.numImageTokensFrom})`)
      this.log(`  vocabulary: ${t.vocabSize} ids; word embedding ${t.embeddingRows} rows: ${t.fitsEmbedding ? 'fits' : 'does NOT fit'}`)
      this.log(`  specials: ${Object.entries(t.specials).map(([k, v]) => `${k} ${v}`).join(', ')}`)
      this.log(`  generation stops at: ${t.stopTokens.map(s => `${s.token} ${s.id} (${s.names.join(', ')})`).join(', ')}`)
      if (t.problem) this.log(`  problem: ${t.problem}`)
    } else if (report.architecture) this.log('tokenizer: none in this directory')
    for (const w of report.warnings) this.log(`warning: ${w}`)
    return report
  }
}
