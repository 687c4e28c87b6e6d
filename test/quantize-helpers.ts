/**
 * Helpers for the quantize tests: the dequantized float twin of a quantized model directory
 * (each quantized weight replaced by q * scale in float32, config without quantization_bit), and
 * a published-layout copy of one (torch.save shards, config.json with only quantization_bit, as
 * THUDM's chatglm-6b-int4 / chatglm2-6b-int4 are distributed).
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
import {dequantToF32} from '../src/quant/dequant.js'

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
