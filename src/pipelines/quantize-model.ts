import {mkdir, readdir, rm} from 'node:fs/promises'
import {existsSync} from 'node:fs'
import {availableParallelism, freemem, totalmem} from 'node:os'
import {join} from 'node:path'
import {GlmtoolError, ModelError, UsageError} from '../errors.js'
import {byteLength, isFloat} from '../formats/dtype.js'
import {assertComplete, checkTensors, type ModelSource, openModel} from './model-dir.js'
import {exportOnnxFrom} from './export-onnx.js'
import {writeCompanionFiles} from './model-output.js'
import {claimOutput, openClaimed} from './output-dir.js'
import {writeSafetensorsModel} from '../formats/safetensors-writer.js'
import type {TensorEntry} from '../formats/tensor.js'
import type {Arch, ArchId, ModelConfig} from '../models/index.js'
import {GLMTOOL_QUANT_KEY, isQuantizedWeight, type QuantLayout, scaleNameOf} from '../models/quantized-layout.js'
import {loadModelTokenizer} from '../runtime/tokenizer/model-tokenizer.js'
import {VERSION} from '../version.js'
import {collectActivationStats, type LinearStats, type StatsCollector} from './quantize/activation-stats.js'
import {type LinearReport, type UnitResult} from './quantize/calibrated-unit.js'
import {CalibratePool} from './quantize/calibrate-pool.js'
import {calibrationUnits} from '../quant/calibration-plan.js'
import {splitParagraphs, tokenSequences} from './quantize/calibration-data.js'
import {CALIBRATION_TEXT, HELD_OUT_TEXT} from '../quant/calibration-text.js'
import {type EndToEnd, evaluateStreamed} from './quantize/evaluate.js'
import {finiteChecked, rtnTensors} from './quantize/quantized-tensors.js'
import {QuantizationError, type QuantBits} from '../quant/rtn.js'
import {RtnPool} from './quantize/rtn-pool.js'
import {largestLayerBytes, streamedPeakBytes} from './quantize/streamed-forward.js'

/**
 * `glmtool quantize`: a float ChatGLM checkpoint -> a weight-quantized model directory in the
 * published layout (models/quantized-layout.ts), as safetensors, ONNX (MatMulNBits), or both.
 *
 * - rtn: the published round-to-nearest scheme, bit-identical to quantization.py for
 *   per-channel scales, streamed tensor by tensor and row block by row block over worker
 *   threads (quantized-tensors.ts), so any model size runs in bounded memory.
 * - calibrated: the float model runs over calibration text in onnxruntime, one layer at a
 *   time (streamed-forward.ts), to collect each linear's input statistics (activation-stats.ts);
 *   each layer then gets AWQ input scaling
 *   (folded into the preceding norm or linear where the math allows, calibration-plan.ts) and
 *   a clipping search (calibrate.ts), quantized with the same published arithmetic.
 * The report has per-layer weight and activation-weighted output errors (RTN and the method
 * used), and end to end, on held-out text, the KL divergence and top-1 agreement of the
 * quantized model's next-token distributions against the float model's (evaluate.ts), streamed
 * the same way. Memory is bounded by one layer at a time in every step, not by the model.
 * --format onnx hands the quantized tensors, computed as they are read, straight to the ONNX
 * exporter (export-onnx.ts exportOnnxFrom): no safetensors copy is written to be re-read,
 * except in scratch when the evaluation runs, since it reads each candidate layer by layer.
 */

export type QuantMethod = 'rtn' | 'calibrated'
export type QuantFormat = 'safetensors' | 'onnx' | 'both'
export const GROUP_SIZES: readonly number[] = [0, 32, 64, 128]

export interface QuantizeOptions {
  /** The user's --arch (src/pipelines/model-dir.ts OpenModelOptions). */
  arch?: ArchId
  /** The ONNX output's MatMulNBits compute on the CPU (export-onnx.ts OnnxExportOptions.cpuCompute); default exact. */
  cpuCompute?: 'exact' | 'int8'
  input: string
  out: string
  bits: number
  /** 0: one scale per output channel (published); else input columns per scale. */
  groupSize: number
  method: QuantMethod
  /** Also quantize the output layer / the word embeddings (the published checkpoints keep both float16). */
  lmHead: boolean
  embeddings: boolean
  format: QuantFormat
  force: boolean
  /** Calibration text (default: the built-in set) and where it came from, for the report. */
  calibration?: {text: string, source: string, file?: string}
  /** Calibration sequences used at most (each up to seqLen tokens). */
  calibSamples: number
  seqLen?: number
  /** End-to-end evaluation on held-out text: auto = when the float model fits comfortably in memory. */
  evaluate: 'auto' | 'on' | 'off'
  /** Worker threads for RTN (default: every core). */
  threads?: number
  maxShardBytes?: number
  onStage?: (message: string) => void
  onStart?: (totalBytes: number) => void
  onBytes?: (n: number) => void
  onWarning?: (message: string) => void
  /** TEST ONLY: collects the activation statistics instead of the streamed run (the whole-graph reference, test/quantize-helpers.ts). */
  statsCollector?: StatsCollector
}

export interface QuantizeResult {
  input: string
  out: string
  architecture: string
  bits: QuantBits
  groupSize: number
  method: QuantMethod
  format: QuantFormat
  lmHead: boolean
  embeddings: boolean
  /** Weights quantized. */
  quantized: number
  sourceBytes: number
  /** Bytes of the quantized tensors (as safetensors holds them, also when only ONNX is written), and of the ONNX initializers when written. */
  bytes: number
  onnxBytes?: number
  files: string[]
  layers: LinearReport[]
  summary: {weightError: {rtn: number, chosen: number}, outputError?: {rtn: number, chosen: number}}
  calibration?: {source: string, sequences: number, tokens: number, seconds: number}
  endToEnd?: {text: string, sequences: number, positions: number, models: EndToEnd[], seconds: number} | {skipped: string}
  threads: number
  /** With --format onnx and no evaluation, quantize and onnx are one streamed step (the same interval). */
  seconds: {total: number, quantize: number, calibration?: number, onnx?: number, evaluation?: number}
  peakRssBytes: number
}

/** Most RTN worker threads quantize starts (each holds a block of rows). */
const MAX_THREADS = 256

function checkOptions(o: QuantizeOptions): asserts o is QuantizeOptions & {bits: QuantBits} {
  if (o.bits !== 4 && o.bits !== 8) throw new QuantizationError(`unsupported --bits ${o.bits}: glmtool quantizes weights to 4 or 8 bits`, 'quant-bits')
  if (!GROUP_SIZES.includes(o.groupSize)) throw new QuantizationError(`unsupported --group-size ${o.groupSize}: use 0 (one scale per output channel, the published scheme), 32, 64 or 128`, 'quant-group')
  if (!Number.isSafeInteger(o.calibSamples) || o.calibSamples < 1) throw new UsageError(`--calib-samples must be a positive integer, got ${o.calibSamples}`)
  // 0 and negative counts used to fall back to one thread silently; a huge one would start that many workers.
  if (o.threads !== undefined && (!Number.isSafeInteger(o.threads) || o.threads < 1 || o.threads > MAX_THREADS)) {
    throw new UsageError(`--threads must be an integer from 1 to ${MAX_THREADS}, got ${o.threads}`)
  }
}

/** Held-out sequences the evaluation runs (each up to seqLen tokens). */
const EVAL_SEQUENCES = 8

export async function quantizeModel(opts: QuantizeOptions): Promise<QuantizeResult> {
  const started = Date.now()
  checkOptions(opts)
  const bits = opts.bits
  const inputs = [{what: 'input model', path: opts.input}, ...(opts.calibration?.file ? [{what: 'calibration file', path: opts.calibration.file}] : [])]
  const output = await claimOutput(opts.out, {force: opts.force, inputs})
  const model = await openClaimed(output, () => openModel(opts.input, {arch: opts.arch}))
  // Scratch (float ONNX for calibration, RTN baseline) beside the target: same disk as the
  // output rather than a small /tmp, and removed with the claim, also after Ctrl-C or (by the
  // next run) SIGKILL.
  let scratch: string
  let pool: RtnPool
  let calPool: CalibratePool
  try {
    scratch = await output.tempDir()
    pool = RtnPool.create(opts.threads)
    // Calibration workers: every core, as far as memory allows (each holds a layer's working
    // copies, about twice its float32 size).
    const perUnit = 2 * largestLayerBytes(model)
    const byMemory = Math.max(1, Math.floor(0.4 * totalmem() / Math.max(perUnit, 1)))
    calPool = CalibratePool.create(opts.method === 'calibrated' ? Math.min(opts.threads ?? availableParallelism(), byMemory) : 1)
  } catch (error) {
    await model.close()
    output.release()
    throw error
  }
  try {
    if (!model.dir || !model.arch || !model.config) {
      throw new ModelError(`${opts.input}: quantize needs a model directory with config.json, not a single file`, 'not-a-model-dir')
    }
    const {arch, config} = model
    const dir = model.dir
    if (config.quantization_bit !== undefined && config.quantization_bit !== null) {
      throw new QuantizationError(`${opts.input} is already quantized (quantization_bit ${JSON.stringify(config.quantization_bit)} in config.json); quantize the float16 model instead`, 'already-quantized')
    }
    const check = checkTensors(arch, config, model.tensors)
    assertComplete(arch, check, opts.input)
    for (const w of model.warnings) opts.onWarning?.(w)
    const layout: QuantLayout = {bits, groupSize: opts.groupSize, lmHead: opts.lmHead, embeddings: opts.embeddings, method: opts.method}
    const targets = model.tensors.filter(t => t.shape.length === 2 && isQuantizedWeight(arch, layout, t.name))
    checkTargets(targets, layout)

    // Calibration and evaluation run the model one slice at a time (streamed-forward.ts): the
    // memory they need is one layer's weights and the sequences' hidden states, not the model.
    const seqLen = opts.seqLen ?? 128
    const calibNeed = streamedPeakBytes(model, opts.calibSamples * seqLen, 0)
    const evalNeed = streamedPeakBytes(model, EVAL_SEQUENCES * seqLen, 2 * EVAL_SEQUENCES * seqLen)
    const available = Math.max(freemem(), 0.5 * totalmem())
    const gb = (n: number) => `${(n / 1e9).toFixed(1)} GB`
    // A P-Tuning prefix (pre_seq_len) is not carried into ONNX yet, so such a model cannot run there.
    const prefixed = config.pre_seq_len !== undefined && config.pre_seq_len !== null
    // --evaluate auto skips (and says why) rather than fail: no tokenizer to make text with, a
    // prefix the ONNX graph lacks, or not enough memory.
    const tokenizerPath = join(dir, arch.tokenizerFile)
    const skipWhy = opts.evaluate === 'off' ? '--evaluate off'
      : opts.evaluate === 'on' ? undefined
      : !existsSync(tokenizerPath) ? `no tokenizer to make evaluation text with (${tokenizerPath} is missing)`
      : prefixed ? 'the model has a P-Tuning prefix (pre_seq_len), which the ONNX runtime does not carry yet'
      : evalNeed > available ? `the streamed evaluation needs ~${gb(evalNeed)} of memory, ${gb(available)} are available; pass --evaluate on to run it anyway`
      : undefined
    const evaluate = skipWhy === undefined
    if (opts.method === 'calibrated' && calibNeed > 0.8 * totalmem()) {
      throw new GlmtoolError('quant-memory', `streamed calibration needs ~${gb(calibNeed)} (one layer as float32 and the calibration hidden states), more than this machine's ${gb(totalmem())} allow; use --method rtn or fewer --calib-samples`)
    }
    let stats: Map<string, LinearStats> | undefined
    let calibration: QuantizeResult['calibration']
    // Loaded and checked against config.json before any heavy work, so a bad tokenizer fails at once.
    const tokenizer = opts.method === 'calibrated' || evaluate ? (await loadModelTokenizer(dir, {arch, config})).tokenizer : undefined
    const seconds: QuantizeResult['seconds'] = {total: 0, quantize: 0}
    if (tokenizer) {
      const t0 = Date.now()
      const cal = opts.calibration ?? {text: CALIBRATION_TEXT.join('\n\n'), source: 'built-in bilingual calibration text'}
      const sequences = tokenSequences(tokenizer, splitParagraphs(cal.text), seqLen, opts.calibSamples)
      opts.onStage?.(`collecting activation statistics over ${sequences.length} sequence(s) of ${cal.source}, one layer at a time ...`)
      const collect = opts.statsCollector ?? collectActivationStats
      const r = await collect(model, tokenizer, sequences, {scratch, threads: opts.threads, onLayer: (k, total) => opts.onStage?.(`  slice ${k + 1}/${total} (${((Date.now() - t0) / 1000).toFixed(0)} s)`)})
      stats = r.stats
      seconds.calibration = (Date.now() - t0) / 1000
      calibration = {source: cal.source, sequences: r.sequences, tokens: r.tokens, seconds: seconds.calibration}
    }

    const quantConfig: ModelConfig = {
      ...config,
      quantization_bit: bits,
      [GLMTOOL_QUANT_KEY]: {bits, group_size: opts.groupSize, method: opts.method, lm_head: opts.lmHead, embeddings: opts.embeddings},
    }
    const sourceBytes = model.tensors.reduce((a, t) => a + byteLength(t.dtype, t.shape), 0)
    return await output.write(async tmp => {
      const t0 = Date.now()
      opts.onStage?.(`quantizing ${targets.length} weights to int${bits} (${opts.method}, ${opts.method === 'rtn' ? pool.threads : calPool.threads} thread(s)) ...`)
      // The quantized safetensors: the output itself, or (--format onnx) a copy in scratch only
      // when the evaluation runs, which re-reads each layer's weights. Otherwise --format onnx
      // streams the quantized tensors straight into the ONNX export.
      const stDir = opts.format !== 'onnx' ? tmp : evaluate ? join(scratch, 'quantized-safetensors') : undefined
      let q: {bytes: number, layers: LinearReport[]}
      let onnxBytes: number | undefined
      if (stDir) {
        q = await writeQuantizedDir(model, arch, quantConfig, stDir, layout, opts.method, stats, pool, opts, calPool)
        seconds.quantize = (Date.now() - t0) / 1000
        if (opts.format !== 'safetensors') {
          const t1 = Date.now()
          opts.onStage?.('exporting ONNX (MatMulNBits) ...')
          const written = await openModel(stDir)
          try {
            onnxBytes = (await exportOnnxFrom(written, tmp, {input: stDir, cpuCompute: opts.cpuCompute}, {companions: opts.format === 'onnx'})).bytes
          } finally {
            await written.close()
          }
          seconds.onnx = (Date.now() - t1) / 1000
        }
      } else {
        // One pass: each tensor quantized as the exporter reads it (graph order, once).
        opts.onStage?.('exporting ONNX (MatMulNBits) as the weights are quantized ...')
        const qt = quantizedTensors(model, arch, layout, opts.method, stats, pool, calPool)
        const source: ModelSource = {...model, config: quantConfig, tensors: qt.tensors, warnings: [], close: async () => {}}
        const r = await exportOnnxFrom(source, tmp, {input: opts.input, cpuCompute: opts.cpuCompute, onStart: opts.onStart, onBytes: opts.onBytes}, {companions: true})
        q = {bytes: qt.tensors.reduce((a, t) => a + byteLength(t.dtype, t.shape), 0), layers: qt.layers()}
        onnxBytes = r.bytes
        seconds.quantize = seconds.onnx = (Date.now() - t0) / 1000
      }
      let endToEnd: QuantizeResult['endToEnd']
      if (evaluate && tokenizer) {
        const t2 = Date.now()
        const candidates: {label: string, dir: string}[] = []
        if (opts.method === 'calibrated') {
          opts.onStage?.('quantizing the RTN baseline for comparison ...')
          const rtnSt = join(scratch, 'rtn-safetensors')
          await writeQuantizedDir(model, arch, {...quantConfig, [GLMTOOL_QUANT_KEY]: {...quantConfig[GLMTOOL_QUANT_KEY] as object, method: 'rtn'}}, rtnSt, layout, 'rtn', stats, pool, {...opts, onBytes: undefined, onStart: undefined})
          candidates.push({label: 'rtn', dir: rtnSt})
        }
        candidates.push({label: opts.method, dir: stDir!})
        const sequences = tokenSequences(tokenizer, HELD_OUT_TEXT, seqLen, EVAL_SEQUENCES)
        opts.onStage?.(`evaluating on ${sequences.length} held-out sequence(s), one layer at a time (float, ${candidates.map(c => c.label).join(', ')}) ...`)
        const opened: ModelSource[] = []
        let e
        try {
          for (const c of candidates) opened.push(await openModel(c.dir))
          e = await evaluateStreamed(model, candidates.map((c, i) => ({label: c.label, model: opened[i]})), tokenizer, sequences, {
            scratch, threads: opts.threads, onModel: label => opts.onStage?.(`  ${label} model (${((Date.now() - t2) / 1000).toFixed(0)} s)`),
          })
        } finally {
          for (const m of opened) await m.close()
        }
        endToEnd = {text: 'built-in held-out text', sequences: e.sequences, positions: e.positions, models: e.models, seconds: e.seconds}
        seconds.evaluation = (Date.now() - t2) / 1000
      } else {
        endToEnd = {skipped: skipWhy ?? 'no tokenizer'}
      }
      if (stDir && stDir !== tmp) await rm(stDir, {recursive: true, force: true})
      seconds.total = (Date.now() - started) / 1000
      return {
        input: opts.input, out: opts.out, architecture: arch.id, bits, groupSize: opts.groupSize, method: opts.method, format: opts.format,
        lmHead: opts.lmHead, embeddings: opts.embeddings, quantized: targets.length, sourceBytes, bytes: q.bytes,
        ...(onnxBytes !== undefined ? {onnxBytes} : {}),
        files: (await readdir(tmp)).filter(f => !f.startsWith('.')).sort(),
        layers: q.layers, summary: summarize(q.layers), ...(calibration ? {calibration} : {}), endToEnd,
        threads: opts.method === 'calibrated' ? calPool.threads : pool.threads, seconds, peakRssBytes: process.resourceUsage().maxRSS * 1024,
      }
    })
  } finally {
    await pool.close()
    await calPool.close()
    await model.close()
    output.release()
  }
}

/** Every weight to quantize must be float, and its width must suit the bits and group size. */
function checkTargets(targets: readonly TensorEntry[], layout: QuantLayout): void {
  for (const t of targets) {
    const cols = t.shape[1]
    if (!isFloat(t.dtype)) throw new QuantizationError(`${t.file}: tensor ${t.name} is ${t.dtype}; only float weights can be quantized`, 'quant-dtype')
    if (layout.bits === 4 && cols % 2 !== 0) throw new QuantizationError(`tensor ${t.name}: 4-bit packing needs an even input width, it has ${cols}`, 'quant-shape')
    if (layout.groupSize !== 0 && cols % layout.groupSize !== 0) {
      throw new QuantizationError(`--group-size ${layout.groupSize} does not divide the input width ${cols} of ${t.name}; use a group size that divides every quantized layer's width, or 0 (per output channel)`, 'quant-group')
    }
  }
}

function mean(xs: number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0
}

function summarize(layers: readonly LinearReport[]): QuantizeResult['summary'] {
  const withOut = layers.filter(l => l.outputError)
  return {
    weightError: {rtn: mean(layers.map(l => l.weightError.rtn)), chosen: mean(layers.map(l => l.weightError.chosen))},
    ...(withOut.length ? {outputError: {rtn: mean(withOut.map(l => l.outputError!.rtn)), chosen: mean(withOut.map(l => l.outputError!.chosen))}} : {}),
  }
}

/** The quantized model's tensors, computed as they are read, and the per-layer report they fill. */
interface QuantizedTensors {
  /** In the source's order; each quantized weight followed by its scale. Each is read once. */
  tensors: TensorEntry[]
  /** The layers' errors, in the source's order: complete once every tensor has been read. */
  layers(): LinearReport[]
}

/**
 * Write the quantized safetensors model (quantizedTensors) and its companion files into `dir`,
 * then re-open and check it.
 */
async function writeQuantizedDir(
  model: ModelSource, arch: Arch, quantConfig: ModelConfig, dir: string, layout: QuantLayout, method: 'rtn' | 'calibrated',
  stats: Map<string, LinearStats> | undefined, pool: RtnPool, opts: QuantizeOptions, calPool?: CalibratePool,
): Promise<{bytes: number, layers: LinearReport[]}> {
  await mkdir(dir, {recursive: true})
  const q = quantizedTensors(model, arch, layout, method, stats, pool, calPool)
  const tensors = q.tensors
  const total = tensors.reduce((a, t) => a + byteLength(t.dtype, t.shape), 0)
  opts.onStart?.(total)
  let last = 0
  const written = await writeSafetensorsModel(dir, tensors, {
    maxShardBytes: opts.maxShardBytes,
    metadata: {
      format: 'pt', source: `${model.format}:${model.files.length} file(s)`, glmtool_version: VERSION, glmtool_architecture: arch.id,
      glmtool_quantization: JSON.stringify(quantConfig[GLMTOOL_QUANT_KEY]),
    },
    onProgress: done => {
      opts.onBytes?.(done - last)
      last = done
    },
  })
  await writeCompanionFiles(model.dir!, dir, quantConfig)
  // Re-open: every format rule, and the quantized layout of config.json, checked again.
  const out = await openModel(dir)
  try {
    assertComplete(arch, checkTensors(arch, quantConfig, out.tensors), dir)
  } finally {
    await out.close()
  }
  return {bytes: written.totalBytes, layers: q.layers()}
}

/**
 * The quantized model's tensors over `model`'s: RTN ones quantized block by block on the pool
 * as they are read, calibrated ones from their unit's result (units run ahead on calPool, one
 * per worker), every other float tensor checked finite on the way. Nothing is computed until
 * read, so a writer (safetensors, or the ONNX export) streams them in bounded memory.
 */
function quantizedTensors(
  model: ModelSource, arch: Arch, layout: QuantLayout, method: 'rtn' | 'calibrated',
  stats: Map<string, LinearStats> | undefined, pool: RtnPool, calPool?: CalibratePool,
): QuantizedTensors {
  const byName = new Map(model.tensors.map(t => [t.name, t]))
  const reports = new Map<string, LinearReport>()
  const bits = layout.bits
  const g = layout.groupSize

  // Calibration units and the tensors each may rewrite.
  const units = method === 'calibrated' ? calibrationUnits(arch, model.config!, layout.lmHead) : []
  const unitOf = new Map<string, number>()
  units.forEach((u, i) => {
    for (const l of u.linears) {
      unitOf.set(l.weight, i)
      if (l.fold.kind === 'norm') {
        unitOf.set(l.fold.weight, i)
        if (l.fold.bias) unitOf.set(l.fold.bias, i)
      } else if (l.fold.kind === 'rows' && l.fold.bias) {
        unitOf.set(l.fold.bias, i)
      }
    }
  })
  const results = new Map<number, Promise<UnitResult>>()
  const start = (i: number): Promise<UnitResult> => {
    let p = results.get(i)
    if (!p) {
      p = calPool!.run(model.path, units, i, layout.lmHead, byName, stats!, {bits, groupSize: g}).then(r => {
        for (const l of r.reports) reports.set(l.name, l)
        return r
      })
      p.catch(() => {}) // a prefetched unit's failure surfaces when the writer asks for it
      results.set(i, p)
    }
    return p
  }
  // The writer asks for units in its order; the next ones start meanwhile, one per worker.
  const unitResult = (i: number): Promise<UnitResult> => {
    const p = start(i)
    for (let k = i + 1; k < Math.min(units.length, i + calPool!.threads); k++) start(k)
    return p
  }
  const fromUnit = (i: number, name: string, dtype: TensorEntry['dtype'], shape: readonly number[], fallback: TensorEntry): TensorEntry => ({
    name, dtype, shape, file: fallback.file,
    async *chunks(max = 64 * 1024 * 1024) {
      const r = await unitResult(i)
      const e = r.tensors.get(name)
      if (!e) {
        yield* finiteChecked(fallback).chunks(max) // a norm the unit left alone (no input scaling chosen)
        return
      }
      r.tensors.delete(name) // written once; free it
      for (let o = 0; o < e.data.length; o += max) yield e.data.subarray(o, Math.min(e.data.length, o + max))
    },
  })

  const tensors: TensorEntry[] = []
  for (const t of model.tensors) {
    const quantize = t.shape.length === 2 && isQuantizedWeight(arch, layout, t.name)
    const u = unitOf.get(t.name)
    if (quantize && u !== undefined && stats) {
      const [rows, cols] = t.shape
      tensors.push(fromUnit(u, t.name, 'I8', [rows, bits === 4 ? cols / 2 : cols], t))
      tensors.push(fromUnit(u, scaleNameOf(t.name), 'F16', g ? [rows, cols / g] : [rows], t))
    } else if (quantize) {
      const meanSq = stats?.get(t.name)?.meanSq
      tensors.push(...rtnTensors(t, bits, g, pool, meanSq, s => {
        const rel = (e: number, r: number) => (r === 0 ? (e === 0 ? 0 : Infinity) : Math.sqrt(e / r))
        const we = rel(s.errSq, s.refSq)
        reports.set(t.name, {
          name: t.name, rows: s.rows, cols: s.cols, method: 'rtn', weightError: {rtn: we, chosen: we},
          ...(meanSq ? {outputError: {rtn: rel(s.weightedErr, s.weightedRef), chosen: rel(s.weightedErr, s.weightedRef)}} : {}),
        })
      }))
    } else if (u !== undefined) {
      tensors.push(fromUnit(u, t.name, t.dtype, t.shape, t))
    } else {
      tensors.push(finiteChecked(t))
    }
  }
  const order = new Map(model.tensors.map((t, i) => [t.name, i]))
  return {tensors, layers: () => [...reports.values()].sort((a, b) => order.get(a.name)! - order.get(b.name)!)}
}
