import {Args, Flags} from '@oclif/core'
import Table from 'cli-table3'
import {archFlag, archOf, BaseCommand, FLAG_CHARS} from '../cli/base-command.js'
import {MODEL_ID_HELP} from '../cli/model-arg.js'
import {byteProgress, formatBytes, type Progress} from '../cli/progress.js'
import {UsageError} from '../errors.js'
import {parseSize} from '../formats/size.js'
import {readCalibrationFile} from '../pipelines/quantize/calibration-data.js'
import {type QuantFormat, type QuantizeResult, quantizeModel, type QuantMethod} from '../pipelines/quantize-model.js'

const SKIPPABLE = ['lm_head', 'embeddings'] as const

export default class Quantize extends BaseCommand {
  static override summary = 'Quantize a ChatGLM model\'s weights to INT8 or INT4 (published layout), optionally calibrated, with a quality report'
  static override description = `Weight-only symmetric quantization of the four linears of every layer (query_key_value, dense, dense_h_to_4h, dense_4h_to_h), as ChatGLM's published quantization.py does: --method rtn is its round-to-nearest scheme, bit for bit with --group-size 0 (one fp16 scale per output channel); 32/64/128 give one scale per group of input columns. Output is a model directory every glmtool command reads (safetensors with the published names: int8 "weight", fp16 "weight_scale", "quantization_bit" in config.json), and/or an ONNX graph whose quantized linears are com.microsoft MatMulNBits.

--method calibrated (the default when --calib is given) runs the float model over calibration text (a built-in bilingual set, or --calib FILE), one layer at a time so that memory holds one layer's weights and the calibration activations rather than the model, and chooses each layer's scales to minimise its activation-weighted output error: AWQ input-channel scaling (Lin et al. 2023), folded into the preceding norm or linear where that is exact, then a clipping search per scale group.

The report gives each layer's weight error and activation-weighted output error (RTN vs the method used) and, end to end on held-out text, the mean KL divergence and top-1 agreement of the next-token distributions against the float model, streamed the same way (see --evaluate).`

  static override examples = [
    '<%= config.bin %> quantize ./chatglm2-6b --bits 4 --out ./chatglm2-6b-int4',
    '<%= config.bin %> quantize ./chatglm-6b --bits 8 --format both',
    '<%= config.bin %> quantize ./chatglm2-6b --bits 4 --group-size 128 --calib ./my-domain.txt --json',
    '<%= config.bin %> quantize ./tiny-v2 --bits 4 --method calibrated --skip embeddings',
  ]

  static override args = {
    model: Args.string({required: true, description: `float model directory: torch shards + config.json, or glmtool safetensors; ${MODEL_ID_HELP}`}),
  }

  static override flags = {
    arch: archFlag(),
    bits: Flags.integer({required: true, description: 'weight bits: 8 or 4'}),
    'group-size': Flags.integer({default: 0, description: 'input columns per scale: 0 = one scale per output channel (published), 32, 64 or 128'}),
    method: Flags.string({options: ['rtn', 'calibrated'], description: 'rtn (published round-to-nearest) or calibrated [default: calibrated with --calib, else rtn]'}),
    calib: Flags.string({description: 'UTF-8 text file to calibrate on (paragraphs separated by blank lines) [default: built-in bilingual text]'}),
    'calib-samples': Flags.integer({default: 32, description: 'calibration sequences (of up to 128 tokens) to use at most'}),
    skip: Flags.string({default: 'lm_head,embeddings', description: 'weights kept float: lm_head and/or embeddings (comma-separated), or none'}),
    format: Flags.string({default: 'safetensors', options: ['safetensors', 'onnx', 'both'], description: 'output: safetensors, ONNX (MatMulNBits), or both in one directory'}),
    'cpu-compute': Flags.string({options: ['exact', 'int8'], description: 'ONNX output: how the CPU runtime computes the quantized linears: int8 (activations quantized to int8 per block, MatMulNBits accuracy_level 4, as llama.cpp\'s CPU kernels do: ~80x faster INT8 and ~2x faster INT4 decode at full size; mean KL vs exact ~2e-5, bench/RESULTS.md) or exact (float32 activations: the dequantized model, bit for bit; INT8 then has no fast CPU kernel) [default: int8]'}),
    out: Flags.string({char: FLAG_CHARS.out, description: 'output directory [default: <model>-int<bits>]'}),
    force: Flags.boolean({char: FLAG_CHARS.force, default: false, description: 'replace --out if it exists'}),
    evaluate: Flags.string({default: 'auto', options: ['auto', 'on', 'off'], description: 'end-to-end KL / top-1 on held-out text; auto: run it unless there is no tokenizer or not enough memory (then say why)'}),
    threads: Flags.integer({description: 'worker threads for RTN and calibration, and onnxruntime threads for calibration and evaluation [default: every core]'}),
    'max-shard-size': Flags.string({default: '4GB', description: 'largest safetensors shard'}),
  }

  async run() {
    const {args, flags} = await this.parse(Quantize)
    const skip = parseSkip(flags.skip)
    if (flags.calib !== undefined && flags.method === 'rtn') throw new UsageError('--calib is calibration text for --method calibrated; --method rtn uses no data')
    const method = (flags.method ?? (flags.calib !== undefined ? 'calibrated' : 'rtn')) as QuantMethod
    if (flags['cpu-compute'] !== undefined && flags.format === 'safetensors') throw new UsageError('--cpu-compute sets how the ONNX output computes; give --format onnx or both')
    const model = this.resolveModel(args.model)
    // The output-directory code refuses an --out that is, holds or lies inside the input (real paths).
    const out = flags.out ?? `${model.outBase}-int${flags.bits}`
    const calibration = flags.calib === undefined ? undefined : {text: await readCalibrationFile(flags.calib), source: flags.calib, file: flags.calib}
    let progress: Progress | undefined
    let result: QuantizeResult
    try {
      result = await quantizeModel({
        arch: archOf(flags),
        input: model.path, out, bits: flags.bits, groupSize: flags['group-size'], method, calibration,
        calibSamples: flags['calib-samples'], lmHead: !skip.has('lm_head'), embeddings: !skip.has('embeddings'),
        format: flags.format as QuantFormat, cpuCompute: (flags['cpu-compute'] ?? 'int8') as 'exact' | 'int8', force: flags.force, evaluate: flags.evaluate as 'auto' | 'on' | 'off',
        threads: flags.threads, maxShardBytes: parseSize(flags['max-shard-size']),
        onStage: m => {
          progress?.stop()
          progress = undefined
          this.note(m)
        },
        onStart: total => {
          progress = byteProgress('quantize', total, !this.jsonEnabled())
        },
        onBytes: n => progress?.add(n),
        onWarning: w => this.note(`warning: ${w}`),
      })
    } finally {
      progress?.stop()
    }
    if (!this.jsonEnabled()) this.printReport(result)
    return result
  }

  private printReport(r: QuantizeResult): void {
    const pct = (x: number | undefined) => (x === undefined ? '-' : `${(100 * x).toFixed(2)}%`)
    const short = (n: string) => n.replace(/^transformer\.(encoder\.)?/, '').replace(/\.weight$/, '')
    const compact = {chars: {'mid': '', 'left-mid': '', 'mid-mid': '', 'right-mid': ''}, style: {head: [], border: []}}
    const calibrated = r.method === 'calibrated'
    const table = new Table({
      head: calibrated
        ? ['layer', 'shape', 'weight err rtn', 'weight err cal', 'output err rtn', 'output err cal', 'input scaling (AWQ), clipping']
        : ['layer', 'shape', 'weight err', 'output err'],
      ...compact,
    })
    for (const l of r.layers) {
      const row = [short(l.name), `${l.rows}x${l.cols}`]
      if (!calibrated) {
        table.push([...row, pct(l.weightError.chosen), pct(l.outputError?.chosen)])
        continue
      }
      const scaling = l.method !== 'calibrated' ? 'rtn (no activations)'
        : `${l.beta ? `beta ${l.beta.toFixed(1)} into ${short(l.foldedInto!)}` : 'none'}${l.meanAlpha !== undefined && l.meanAlpha < 1 ? `; clip ${l.meanAlpha.toFixed(3)}` : ''}`
      table.push([...row, pct(l.weightError.rtn), pct(l.weightError.chosen), pct(l.outputError?.rtn), pct(l.outputError?.chosen), scaling])
    }
    this.log(table.toString())
    const s = r.summary
    const both = (x: {rtn: number, chosen: number}) => (calibrated ? `${pct(x.rtn)} rtn, ${pct(x.chosen)} calibrated` : pct(x.chosen))
    this.log(`mean over ${r.layers.length} layers (relative): weight error ${both(s.weightError)}` +
      (s.outputError ? `, activation-weighted output error ${both(s.outputError)}` : ' (output errors need activation statistics: --method calibrated or --evaluate on)'))
    if (r.calibration) this.log(`calibration: ${r.calibration.sequences} sequences, ${r.calibration.tokens} tokens of ${r.calibration.source}, ${r.calibration.seconds.toFixed(1)} s`)
    const e = r.endToEnd
    if (e && 'skipped' in e) {
      this.log(`end to end: skipped (${e.skipped})`)
    } else if (e) {
      const t = new Table({head: ['vs float model', 'mean KL (nats)', 'max KL', 'top-1 agreement'], ...compact})
      for (const m of e.models) t.push([m.label, m.meanKl.toExponential(3), m.maxKl.toExponential(2), pct(m.top1)])
      this.log(`end to end on ${e.text} (${e.sequences} sequences, ${e.positions} positions):`)
      this.log(t.toString())
    }
    const sec = r.seconds
    this.log(`wrote ${r.out} (${r.format}): ${r.quantized} weights as int${r.bits}${r.groupSize ? `, groups of ${r.groupSize}` : ', one scale per output channel'}, ` +
      `${formatBytes(r.sourceBytes)} -> ${formatBytes(r.bytes)}${r.onnxBytes ? ` (+ ONNX ${formatBytes(r.onnxBytes)})` : ''}; ` +
      `quantize ${sec.quantize.toFixed(1)} s on ${r.threads} thread(s)${sec.calibration ? `, calibration ${sec.calibration.toFixed(1)} s` : ''}` +
      `${sec.onnx ? `, ONNX ${sec.onnx.toFixed(1)} s` : ''}${sec.evaluation ? `, evaluation ${sec.evaluation.toFixed(1)} s` : ''}, total ${sec.total.toFixed(1)} s, peak RSS ${formatBytes(r.peakRssBytes)}`)
  }
}

function parseSkip(v: string): Set<string> {
  const items = v.split(',').map(s => s.trim()).filter(Boolean)
  if (items.length === 1 && items[0] === 'none') return new Set()
  for (const i of items) {
    if (!(SKIPPABLE as readonly string[]).includes(i)) throw new UsageError(`--skip takes lm_head, embeddings or none, not ${JSON.stringify(i)}`)
  }
  return new Set(items)
}

