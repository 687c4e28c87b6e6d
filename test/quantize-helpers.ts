/**
 * Helpers for the quantize tests: the dequantized float twin of a quantized model directory
 * (each quantized weight replaced by q * scale in float32, config without quantization_bit), and
 * a published-layout copy of one (torch.save shards, config.json with only quantization_bit, as
 * THUDM's chatglm-6b-int4 / chatglm2-6b-int4 are distributed); and the whole-graph references
 * the streamed calibration and evaluation are checked against (the model as one ONNX graph in
 * memory, as quantize ran it before it streamed).
 */
import {copyFileSync, readdirSync, readFileSync, writeFileSync} from 'node:fs'
import {mkdir} from 'node:fs/promises'
import {join} from 'node:path'
import {decodeFloats, encodeFloats} from '../src/formats/dtype-convert.js'
import {isWeightFile, openModel, TORCH_SINGLE} from '../src/pipelines/model-dir.js'
import {writeSafetensorsModel} from '../src/formats/safetensors-writer.js'
import {memoryTensor, readTensor, type TensorEntry} from '../src/formats/tensor.js'
import {writeTorchCheckpoint} from '../src/formats/torch-writer.js'
import {GLMTOOL_QUANT_KEY, quantLayoutOf} from '../src/models/quantized-layout.js'
import {exportOnnx} from '../src/pipelines/export-onnx.js'
import {OnnxCpuBackend} from '../src/runtime/backends/onnx-cpu.js'
import {promptLayout} from '../src/runtime/generate.js'
import type {ChatTokenizer} from '../src/runtime/tokenizer/index.js'
import type {LinearStats, StatsCollector} from '../src/pipelines/quantize/activation-stats.js'
import {dequantToF32} from '../src/quant/dequant.js'
import {type EndToEnd, KlAccumulator} from '../src/pipelines/quantize/evaluate.js'

const u16 = (b: Buffer) => new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length))
const i8 = (b: Buffer) => new Int8Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length))

/** quantized dir -> float32 safetensors dir computing exactly q * scale. */
export async function dequantizedTwin(quantDir: string, out: string): Promise<string> {
  await mkdir(out, {recursive: true})
  const model = await openModel(quantDir)
  try {
    const layout = quantLayoutOf(model.config!)!
    const byName = new Map(model.tensors.map(t => [t.name, t]))
    const tensors: TensorEntry[] = []
    for (const t of model.tensors) {
      if (t.name.endsWith('.weight_scale')) continue
      const scale = byName.get(`${t.name}_scale`)
      if (!scale) {
        tensors.push(memoryTensor(t.name, 'F32', t.shape, encodeFloats(decodeFloats(await readTensor(t), t.dtype), 'F32')))
        continue
      }
      const rows = t.shape[0]
      const cols = layout.bits === 4 ? t.shape[1] * 2 : t.shape[1]
      const w = dequantToF32({bits: layout.bits, rows, cols, groupSize: layout.groupSize || cols, weight: i8(await readTensor(t)), scales: u16(await readTensor(scale))})
      tensors.push(memoryTensor(t.name, 'F32', [rows, cols], Buffer.from(w.buffer)))
    }
    await writeSafetensorsModel(out, tensors)
  } finally {
    await model.close()
  }
  const config = JSON.parse(readFileSync(join(quantDir, 'config.json'), 'utf8'))
  delete config.quantization_bit
  delete config[GLMTOOL_QUANT_KEY]
  writeFileSync(join(out, 'config.json'), JSON.stringify({...config, torch_dtype: 'float32'}))
  for (const f of readdirSync(quantDir)) {
    if (!isWeightFile(f) && f !== 'config.json' && !f.startsWith('model.onnx') && f !== 'glmtool-onnx.json') copyFileSync(join(quantDir, f), join(out, f))
  }
  return out
}

/** quantized safetensors dir -> one pytorch_model.bin + config.json with quantization_bit only. */
export async function publishedLayoutCopy(quantDir: string, out: string): Promise<string> {
  await mkdir(out, {recursive: true})
  const model = await openModel(quantDir)
  try {
    const tensors: TensorEntry[] = []
    for (const t of model.tensors) tensors.push(memoryTensor(t.name, t.dtype, t.shape, await readTensor(t)))
    await writeTorchCheckpoint(join(out, TORCH_SINGLE), tensors)
  } finally {
    await model.close()
  }
  const config = JSON.parse(readFileSync(join(quantDir, 'config.json'), 'utf8'))
  delete config[GLMTOOL_QUANT_KEY]
  writeFileSync(join(out, 'config.json'), JSON.stringify(config))
  for (const f of readdirSync(quantDir)) {
    if (!isWeightFile(f) && f !== 'config.json' && !f.startsWith('model.onnx') && f !== 'glmtool-onnx.json') copyFileSync(join(quantDir, f), join(out, f))
  }
  return out
}

/**
 * Activation statistics from the whole model as one ONNX graph (the calibration variant of the
 * export, every linear's input an extra output), sequence by sequence: quantize's way before it
 * ran layer by layer, kept as the independent reference for the streamed collector.
 */
export const wholeGraphStats: StatsCollector = async (model, tokenizer, sequences, opts) => {
  const started = Date.now()
  const onnxDir = join(opts.scratch, 'whole-float-onnx')
  await exportOnnx({input: model.path, out: onnxDir, force: true, linearInputs: true})
  const sums = new Map<string, {sq: Float64Array, abs: Float64Array, rows: number}>()
  const backend = await OnnxCpuBackend.load(onnxDir, {threads: opts.threads, onOutputs: outputs => {
    for (const [name, t] of Object.entries(outputs)) {
      if (!name.startsWith('linear_input.')) continue
      const cols = Number(t.dims[t.dims.length - 1])
      const x = t.data as Float32Array
      let s = sums.get(name.slice('linear_input.'.length))
      if (!s) {
        s = {sq: new Float64Array(cols), abs: new Float64Array(cols), rows: 0}
        sums.set(name.slice('linear_input.'.length), s)
      }
      for (let i = 0; i < x.length; i++) {
        s.sq[i % cols] += x[i] * x[i]
        s.abs[i % cols] += Math.abs(x[i])
      }
      s.rows += x.length / cols
    }
  }})
  let tokens = 0
  try {
    for (const ids of sequences) {
      backend.reset()
      const layout = promptLayout(tokenizer, ids)
      await backend.forward({ids, positions: layout.positions, blockPositions: layout.blockPositions, bidirectional: layout.bidirectional, logits: 'all'})
      tokens += ids.length
    }
  } finally {
    await backend.dispose()
  }
  const stats = new Map<string, LinearStats>()
  for (const [name, s] of sums) stats.set(name, {meanSq: s.sq.map(v => v / s.rows), meanAbs: s.abs.map(v => v / s.rows), rows: s.rows})
  return {stats, sequences: sequences.length, tokens, seconds: (Date.now() - started) / 1000}
}

/** KL / top-1 of ONNX exports against a float ONNX export, each model whole in onnxruntime. */
export async function wholeGraphEvaluation(referenceOnnx: string, candidates: readonly {label: string, dir: string}[], tokenizer: ChatTokenizer, sequences: readonly number[][]): Promise<EndToEnd[]> {
  const ref = await OnnxCpuBackend.load(referenceOnnx)
  const models = [] as OnnxCpuBackend[]
  try {
    for (const c of candidates) models.push(await OnnxCpuBackend.load(c.dir))
    const acc = candidates.map(c => new KlAccumulator(c.label, ref.manifest.dims.vocab))
    for (const ids of sequences) {
      const layout = promptLayout(tokenizer, ids)
      const input = {ids, positions: layout.positions, blockPositions: layout.blockPositions, bidirectional: layout.bidirectional, logits: 'all' as const}
      ref.reset()
      const r = await ref.forward(input)
      for (const [m, model] of models.entries()) {
        model.reset()
        acc[m].add(r.logits, (await model.forward(input)).logits, r.rows)
      }
    }
    return acc.map(a => a.result())
  } finally {
    await ref.dispose()
    for (const m of models) await m.dispose()
  }
}
