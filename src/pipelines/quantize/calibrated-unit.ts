import {type DType} from '../../formats/dtype.js'
import {decodeFloats, encodeFloats} from '../../formats/dtype-convert.js'
import {readTensor, type TensorEntry} from '../../formats/tensor.js'
import {calibrateLinear, DEFAULT_BETAS} from '../../quant/calibrate.js'
import {tieMeanAbs, type CalibrationUnit} from '../../quant/calibration-plan.js'
import {publishedWeight} from '../../quant/pack.js'
import {toFp16Weight, type QuantBits} from '../../quant/rtn.js'
import {quantizeRowsPublished} from '../../quant/rtn-rows.js'
import type {LinearStats} from './activation-stats.js'
import {firstNonFinite, nonFiniteError} from './quantized-tensors.js'

/**
 * One calibration unit (calibration-plan.ts: a layer's linears, or the output layer) quantized
 * with activation-aware scales, in memory: read the unit's tensors, then for each linear in plan
 * order choose its input scaling and clipping with calibrateLinear (AWQ, Lin et al. 2023), fold
 * 1/s into the norm or the producing linear's rows, and quantize. Produces the new bytes of
 * every tensor it touched (quantized weights and scales; rescaled norms, biases) and a report
 * line per linear. A unit of the 6B models is ~200M weights (~1 GB as f32 working copies).
 */

export interface LinearReport {
  readonly name: string
  readonly rows: number
  readonly cols: number
  readonly method: 'rtn' | 'calibrated'
  /** Relative Frobenius error of the effective weight: published RTN, and what was written. */
  readonly weightError: {readonly rtn: number, readonly chosen: number}
  /** sqrt(sum_i E[x_i^2] ||W[:, i] - Ŵ[:, i]||^2 / sum_i E[x_i^2] ||W[:, i]||^2), when activation statistics exist. */
  readonly outputError?: {readonly rtn: number, readonly chosen: number}
  /** AWQ input-scaling exponent chosen (0: none) and where 1/s went. */
  readonly beta?: number
  readonly foldedInto?: string
  /** Mean clipping ratio over groups (1: no clipping). */
  readonly meanAlpha?: number
}

export interface UnitResult {
  /** New bytes per output tensor name (weights: published int8/int4; scales: fp16). */
  readonly tensors: Map<string, {dtype: DType, shape: number[], data: Buffer}>
  readonly reports: LinearReport[]
}

export interface UnitOptions {
  readonly bits: QuantBits
  /** 0: per output channel. */
  readonly groupSize: number
  readonly alphaGrid?: readonly number[]
  readonly betaGrid?: readonly number[]
}

async function floats(t: TensorEntry): Promise<Float32Array> {
  const bytes = await readTensor(t)
  const k = firstNonFinite(bytes, t.dtype)
  if (k >= 0) throw nonFiniteError(t, k)
  return decodeFloats(bytes, t.dtype)
}

function relative(err: number, ref: number): number {
  return ref === 0 ? (err === 0 ? 0 : Infinity) : Math.sqrt(err / ref)
}

export async function quantizeUnit(unit: CalibrationUnit, byName: Map<string, TensorEntry>, stats: Map<string, LinearStats>, opts: UnitOptions): Promise<UnitResult> {
  const entry = (name: string): TensorEntry => {
    const t = byName.get(name)
    if (!t) throw new Error(`calibration needs tensor ${name}`)
    return t
  }
  // Working copies of everything the unit reads or rewrites.
  const values = new Map<string, Float32Array>()
  const load = async (name: string) => {
    if (!values.has(name)) values.set(name, await floats(entry(name)))
    return values.get(name)!
  }
  const touched = new Set<string>()
  const out = new Map<string, {dtype: DType, shape: number[], data: Buffer}>()
  const reports: LinearReport[] = []
  for (const lin of unit.linears) {
    const t = entry(lin.weight)
    const [rows, cols] = t.shape
    const g = opts.groupSize || cols
    const w = await load(lin.weight)
    const st = stats.get(lin.weight)
    if (!st) throw new Error(`no activation statistics for ${lin.weight}`)
    const fold = lin.fold
    const meanAbs = fold.kind === 'rows' ? tieMeanAbs(st.meanAbs, fold.rowOf) : st.meanAbs
    const res = calibrateLinear(w, rows, cols, {meanSq: st.meanSq, meanAbs}, {
      bits: opts.bits, groupSize: g, alphaGrid: opts.alphaGrid,
      betaGrid: fold.kind === 'none' ? [0] : (opts.betaGrid ?? DEFAULT_BETAS),
    })
    // Fold 1/s into what produces this linear's input.
    const s = res.inputScale
    if (res.beta !== 0 && fold.kind === 'norm') {
      for (const n of [fold.weight, fold.bias]) {
        if (!n) continue
        const v = await load(n)
        for (let c = 0; c < cols; c++) v[c] /= s[c]
        touched.add(n)
      }
    } else if (res.beta !== 0 && fold.kind === 'rows') {
      const pw = await load(fold.weight)
      const pCols = entry(fold.weight).shape[1]
      const pb = fold.bias ? await load(fold.bias) : undefined
      const done = new Set<number>()
      for (let c = 0; c < cols; c++) {
        const r = fold.rowOf[c]
        if (done.has(r)) continue // tied channels share one s (tieMeanAbs)
        done.add(r)
        for (let k = 0; k < pCols; k++) pw[r * pCols + k] /= s[c]
        if (pb) pb[r] /= s[c]
      }
      if (fold.bias) touched.add(fold.bias)
    }
    // The published RTN of the checkpoint's own weight, for the report.
    // (f32 values of an f16/bf16 tensor are exact, so 'F32' rounds as torch's .half() would.)
    const original = toFp16Weight(await floats(t), 'F32')
    const rtn = quantizeRowsPublished(original, cols, 0, rows, g, opts.bits,
      new Int8Array(opts.bits === 4 ? rows * cols / 2 : rows * cols), new Uint16Array(rows * (cols / g)), st.meanSq, t.name)
    let weightedRef = 0
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) weightedRef += st.meanSq[c] * w[r * cols + c] ** 2
    let alphaSum = 0
    for (const a of res.alpha) alphaSum += a
    reports.push({
      name: lin.weight, rows, cols, method: 'calibrated',
      weightError: {rtn: relative(rtn.errSq, rtn.refSq), chosen: res.weightError.calibrated},
      outputError: {rtn: relative(rtn.weightedErr, rtn.weightedRef), chosen: relative(res.outputError.calibrated, weightedRef)},
      beta: res.beta,
      ...(res.beta !== 0 && fold.kind !== 'none' ? {foldedInto: fold.weight} : {}),
      meanAlpha: alphaSum / res.alpha.length,
    })
    const q = publishedWeight(res.quantized)
    out.set(lin.weight, {dtype: 'I8', shape: [rows, opts.bits === 4 ? cols / 2 : cols], data: Buffer.from(q.buffer, q.byteOffset, q.byteLength)})
    const sc = res.quantized.scales
    out.set(`${lin.weight}_scale`, {dtype: 'F16', shape: opts.groupSize ? [rows, cols / g] : [rows], data: Buffer.from(sc.buffer, sc.byteOffset, sc.byteLength)})
    values.delete(lin.weight)
  }
  // Rescaled float tensors go back in their checkpoint dtype.
  for (const n of touched) {
    const t = entry(n)
    out.set(n, {dtype: t.dtype, shape: [...t.shape], data: encodeFloats(values.get(n)!, t.dtype)})
  }
  return {tensors: out, reports}
}
