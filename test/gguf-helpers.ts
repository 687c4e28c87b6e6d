/**
 * Helpers for the GGUF tests: node-llama-cpp (llama.cpp's prebuilt CPU binary) as the
 * independent implementation, and glmtool's ONNX CPU runtime on the same weights.
 */
import {copyFileSync, existsSync, readdirSync} from 'node:fs'
import {mkdir, open} from 'node:fs/promises'
import {join} from 'node:path'
import {exportOnnx} from '../src/pipelines/export-onnx.js'
import {decodeFloats} from '../src/formats/dtype-convert.js'
import {ggufTensorName} from '../src/formats/gguf/chatglm2.js'
import {dequantizeQ4_0, dequantizeQ8_0} from '../src/formats/gguf/quant-blocks.js'
import {isWeightFile, openModel, TORCH_SINGLE} from '../src/pipelines/model-dir.js'
import {memoryTensor, readTensor, type TensorEntry} from '../src/formats/tensor.js'
import {writeTorchCheckpoint} from '../src/formats/torch-writer.js'
import {OnnxCpuBackend} from '../src/runtime/backends/onnx-cpu.js'

type NodeLlamaCpp = typeof import('node-llama-cpp')
export type Llama = Awaited<ReturnType<NodeLlamaCpp['getLlama']>>
type Token = import('node-llama-cpp').Token
/** node-llama-cpp brands token ids; glmtool's are plain numbers. */
const tok = (id: number) => id as unknown as Token

/** node-llama-cpp's prebuilt CPU build, or why it cannot be had here. */
export async function loadLlamaCpp(): Promise<{llama: Llama, lib: NodeLlamaCpp} | {reason: string}> {
  try {
    const lib = await import('node-llama-cpp')
    const llama = await lib.getLlama({gpu: false, build: 'never', logLevel: lib.LlamaLogLevel.error, progressLogs: false})
    return {llama, lib}
  } catch (error) {
    return {reason: `node-llama-cpp's prebuilt llama.cpp cannot load here (${(error as Error).message.split('\n')[0]})`}
  }
}

const argmax = (x: Float32Array) => x.reduce((best, v, i) => (v > x[best] ? i : best), 0)

export interface Run {
  /** Logits of every prompt position, then of each generated token, row-major [rows, vocab]. */
  rows: Float32Array[]
  /** Greedy tokens: argmax after the prompt, then after each of them. */
  generated: number[]
}

/**
 * llama.cpp: the prompt (logits at every position), then `steps` tokens, one evaluation each:
 * its own greedy choices, or the tokens of `forced` (teacher forcing, to compare logits along
 * another run's sequence); `generated` is always llama.cpp's own argmax.
 */
export async function runLlama(llama: Llama, ggufPath: string, prompt: number[], steps: number, vocab: number, forced?: readonly number[]): Promise<Run> {
  const model = await llama.loadModel({modelPath: ggufPath, gpuLayers: 0})
  try {
    // KV cache in F32 (llama.cpp's default is F16): the comparison is then about the file's
    // weights and llama.cpp's matmuls, not the cache's rounding, which peaked attention magnifies.
    const ctx = await model.createContext({
      contextSize: 256, threads: 1, batchSize: 256, flashAttention: false,
      experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32',
    })
    try {
      const seq = ctx.getSequence()
      const toRow = (m: Map<Token, number> | undefined) => {
        if (!m || m.size !== vocab) throw new Error(`llama.cpp returned ${m?.size} logits, expected ${vocab}`)
        const r = new Float32Array(vocab)
        for (const [id, v] of m) r[id as unknown as number] = v
        return r
      }
      const out = await seq.controlledEvaluate(prompt.map(t => [tok(t), {generateNext: {logits: true}}] as [Token, {generateNext: {logits: true}}]))
      const rows = out.map(o => toRow(o?.next.logits))
      const generated = [argmax(rows[rows.length - 1])]
      for (let k = 0; k < steps; k++) {
        const [o] = await seq.controlledEvaluate([[tok(forced ? forced[k] : generated[k]), {generateNext: {logits: true}}]])
        rows.push(toRow(o?.next.logits))
        generated.push(argmax(rows[rows.length - 1]))
      }
      return {rows, generated}
    } finally {
      await ctx.dispose()
    }
  } finally {
    await model.dispose()
  }
}

/** glmtool's ONNX CPU runtime, the same sequence of calls (ChatGLM2: positions 0, 1, 2, ...). */
export async function runOnnx(onnxDir: string, prompt: number[], steps: number): Promise<Run> {
  const b = await OnnxCpuBackend.load(onnxDir, {threads: 1})
  try {
    const first = await b.forward({ids: prompt, positions: prompt.map((_, i) => i), bidirectional: 0, logits: 'all'})
    const vocab = first.logits.length / prompt.length
    const rows = prompt.map((_, i) => first.logits.slice(i * vocab, (i + 1) * vocab))
    const generated = [argmax(rows[rows.length - 1])]
    for (let k = 0; k < steps; k++) {
      const o = await b.forward({ids: [generated[k]], positions: [prompt.length + k], bidirectional: 0, logits: 'last'})
      rows.push(o.logits.slice())
      generated.push(argmax(o.logits))
    }
    return {rows, generated}
  } finally {
    await b.dispose()
  }
}

/** Worst row of max|a-b| / max|b| over rows 0..n (the project's logits metric). */
export function maxRelative(a: Float32Array[], b: Float32Array[], n = Math.min(a.length, b.length)): {rel: number, row: number} {
  let worst = {rel: 0, row: 0}
  for (let r = 0; r < n; r++) {
    let diff = 0
    let scale = 0
    for (let i = 0; i < b[r].length; i++) {
      diff = Math.max(diff, Math.abs(a[r][i] - b[r][i]))
      scale = Math.max(scale, Math.abs(b[r][i]))
    }
    const rel = Number.isFinite(diff) ? diff / scale : Infinity
    if (!(rel <= worst.rel)) worst = {rel, row: r}
  }
  return worst
}

export async function onnxOf(modelDir: string, out: string, dtype: 'F16' | 'F32' = 'F32'): Promise<string> {
  if (!existsSync(out)) await exportOnnx({input: modelDir, out, dtype, force: false})
  return out
}

/**
 * The float32 model whose weights are what a GGUF file holds, dequantized with ggml's
 * formulas: the "dequantized equivalent" the quantized GGUF is compared against. Tensor
 * offsets and types come from node-llama-cpp's GGUF parser, not from glmtool's writer.
 */
export async function dequantizedModel(lib: NodeLlamaCpp, src: string, ggufPath: string, out: string): Promise<string> {
  if (existsSync(out)) return out
  const info = await lib.readGgufFileInfo(ggufPath)
  const byName = new Map((info.fullTensorInfo ?? info.tensorInfo ?? []).map(t => [t.name, t]))
  await mkdir(out, {recursive: true})
  const model = await openModel(src)
  const fh = await open(ggufPath, 'r')
  try {
    const tensors: TensorEntry[] = []
    for (const t of model.tensors) {
      const g = byName.get(ggufTensorName(t.name) ?? '')
      if (!g) {
        tensors.push(t)
        continue
      }
      const n = t.shape.reduce((a, d) => a * d, 1)
      const bytes = {0: n * 4, 1: n * 2, 8: (n / 32) * 34, 2: (n / 32) * 18}[g.ggmlType as 0 | 1 | 8 | 2]
      if (bytes === undefined) throw new Error(`${g.name}: ggml type ${g.ggmlType} not handled here`)
      const buf = Buffer.alloc(bytes)
      await fh.read(buf, 0, bytes, Number(g.fileOffset))
      const values = g.ggmlType === 0 ? decodeFloats(buf, 'F32') : g.ggmlType === 1 ? decodeFloats(buf, 'F16') : g.ggmlType === 8 ? dequantizeQ8_0(buf, n) : dequantizeQ4_0(buf, n)
      tensors.push(memoryTensor(t.name, 'F32', t.shape, Buffer.from(values.buffer, values.byteOffset, values.byteLength)))
    }
    await writeTorchCheckpoint(join(out, TORCH_SINGLE), tensors)
  } finally {
    await fh.close()
    await model.close()
  }
  for (const f of readdirSync(src)) if (!isWeightFile(f)) copyFileSync(join(src, f), join(out, f))
  return out
}

export {readTensor}
