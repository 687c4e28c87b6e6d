import {readdir, readFile, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {GlmtoolError, ModelError, withPath} from '../errors.js'
import type {Arch, ArchId, ModelConfig} from '../models/index.js'
import {isQuantizedWeight, type QuantLayout, quantLayoutOf, scaleNameOf} from '../models/quantized-layout.js'
import {VERSION} from '../version.js'
import {byteLength, type DType, isFloat, numel} from '../formats/dtype.js'
import {decodeFloats, encodeFloats} from '../formats/dtype-convert.js'
import {assertComplete, checkTensors, type DetectedModel, type ModelSource, openModel} from './model-dir.js'
import {isCompanionFile, ONNX_DATA_FILE, ONNX_MANIFEST_FILE, ONNX_MODEL_FILE, writeCompanionFiles} from './model-output.js'
import {checkpoint, claimOutput, openClaimed} from './output-dir.js'
import {writeSafetensorsFile} from '../formats/safetensors-writer.js'
import {rowSlice, type TensorEntry} from '../formats/tensor.js'
import {type ChatglmOnnxGraph, decoderIO, type DecoderDims, type DecoderIO, type GraphContext, type GraphPart, linear, MASKED, partIO, type TensorIO} from '../formats/onnx/chatglm-graph.js'
import {ExternalDataWriter, externalRangeOf} from '../formats/onnx/external-data.js'
import {decodeModel, DEFAULT_OPSET, ELEM, type ElemType, elemTypeOf, GraphBuilder, IR_VERSION, MS_DOMAIN, MS_OPSET} from '../formats/onnx/onnx-builder.js'
import {dequantEmbedding, matMulNBitsB, matMulNBitsScales, nbitsDims, splitInt8Term} from '../formats/onnx/quantized-weights.js'

export {ONNX_DATA_FILE, ONNX_MANIFEST_FILE, ONNX_MODEL_FILE} from './model-output.js'

/** The generation's ONNX decoder graph (its module wires it: Arch.onnxGraph). */
export function onnxGraphFor(arch: Arch): ChatglmOnnxGraph {
  return arch.onnxGraph
}

/**
 * Storage dtype of the weights in model.onnx.data.
 *
 * The f16 decision: onnxruntime's CPU provider has no fast float16 GEMM on x86 (MLAS' fp16
 * kernels are ARM64-only; on x86 a float16 MatMul/Gemm either has no kernel or is emulated), so
 * the graph always *computes* in float32. With `F16` the file stores float16 (half the disk
 * size, lossless for the published float16 checkpoints) and every weight is followed by a
 * `Cast` to float32 at its point of use; ORT constant-folds those Casts when the session is
 * created, so a loaded session holds float32 weights and runs float32 kernels: the same speed
 * and the same session memory as an `F32` export of the f16-rounded weights. The embedding
 * table is the exception: it is gathered in its stored dtype and only the S gathered rows are
 * cast, so with `F16` the largest table stays float16 in memory too. A weight onnxruntime would
 * not fold (its float32 copy over 1 GiB) is stored float32 instead (wholeWeightStorage). The chat cache's exports
 * keep every weight float16 in memory instead (OnnxExportOptions.residentF16).
 */
export type OnnxWeightDtype = 'F32' | 'F16'

export interface OnnxExportOptions {
  /** The user's --arch (src/pipelines/model-dir.ts OpenModelOptions). */
  arch?: ArchId
  /** config.json and the generation, already read and detected by the caller (chat-model.ts): not again. */
  detected?: DetectedModel
  input: string
  out: string
  /** Undefined: F16 when every weight of the checkpoint is float16, F32 otherwise (bf16 and f32 sources keep their precision). */
  dtype?: OnnxWeightDtype
  force: boolean
  /**
   * Calibration variant: the graph also outputs the input of every linear layer, named
   * `linear_input.<weight name>` (float32 [rows, in]), after the decoder's own outputs
   * (quantize's activation statistics run it; see pipelines/quantize/activation-stats.ts).
   */
  linearInputs?: boolean
  /**
   * How onnxruntime's CPU kernels compute the MatMulNBits linears: 'exact' (accuracy_level 0:
   * float32 activations against the dequantized weights, the model the quantizer wrote, as the
   * CUDA parity and the evaluation compare against) or 'int8' (accuracy_level 4: activations
   * quantized to int8 per block, as llama.cpp's CPU kernels do; MLAS's integer kernels, many
   * times faster for INT8 and faster for INT4 on the CPU, bench/RESULTS.md). Default 'exact'.
   */
  cpuCompute?: 'exact' | 'int8'
  /**
   * With `F16` storage: a graph whose loaded session keeps the weights float16 (the chat
   * cache's format for float16 checkpoints, half the memory of float32). Each linear weight is
   * cast to float32 at its point of use, behind a zero-copy Reshape that takes its shape from
   * the layer's input, so onnxruntime runs the Cast just before its Gemm (not all Casts first,
   * which would hold every float32 copy at once); the manifest says `runtime_weights: float16`
   * and OnnxCpuBackend turns off the load-time folding of those Casts. The values computed are
   * the same: float16 -> float32 is exact.
   */
  residentF16?: boolean
  /**
   * cpuCompute 'int8' on a quantized checkpoint with a float output layer: that layer as two
   * 8-bit MatMulNBits terms (quant/split-int8.ts; manifest `lm_head_compute`). Default true;
   * false keeps it a float32 Gemm (A/B, tests).
   */
  splitHead?: boolean
  onStart?: (totalBytes: number) => void
  onBytes?: (n: number) => void
  onWarning?: (message: string) => void
}

/** Prefix of the calibration variant's extra outputs. */
export const LINEAR_INPUT_PREFIX = 'linear_input.'

export interface OnnxManifest {
  format: 'glmtool-onnx'
  version: 1
  architecture: ArchId
  model: string
  data: string
  weights_dtype: 'float32' | 'float16'
  compute_dtype: 'float32'
  ir_version: number
  opset: Record<string, number>
  dims: DecoderDims
  mask: {visible: number, masked: number}
  inputs: DecoderIO['inputs']
  outputs: DecoderIO['outputs']
  graph: string
  ops: Record<string, string>
  /** Weight-quantized linears (MatMulNBits), as in the checkpoint's config.json; absent for float models. */
  quantization?: {
    bits: 4 | 8, group_size: number, linears: number, lm_head: boolean, embeddings: boolean, cpu_compute?: 'exact' | 'int8'
    /** cpu_compute int8 with a float output layer: it is two 8-bit MatMulNBits terms (quant/split-int8.ts) */
    lm_head_compute?: {terms: 2, bits: 8, block_size: number}
  }
  /**
   * float16: the graph is built for a session that keeps the float16 weights resident
   * (OnnxExportOptions.residentF16); OnnxCpuBackend then disables the folding of their Casts.
   * Absent: onnxruntime folds them at load and holds float32 weights.
   */
  runtime_weights?: 'float16'
  glmtool_version: string
}

export interface OnnxExportResult {
  input: string
  out: string
  architecture: ArchId
  dtype: 'f32' | 'f16'
  tensors: number
  bytes: number
  files: string[]
  copied: string[]
  io: DecoderIO
  seconds: number
  peakRssBytes: number
}

const CHUNK_BYTES = 16 * 1024 * 1024
const F16_MAX_FINITE = 65504

/** onnxruntime folds a constant Cast only while its output stays within 1 GiB (constant_folding.cc). */
export const ORT_FOLD_LIMIT = 2 ** 30

/** Columns per scale of the split output layer's two 8-bit terms (and of MLAS' activation quantization for it). */
export const HEAD_SPLIT_BLOCK = 32

/**
 * The dtype a weight read whole is stored in: the storage dtype, except a float16 one whose
 * float32 copy onnxruntime would not fold at load (over ORT_FOLD_LIMIT), which is stored float32
 * so that no run casts it again.
 */
export function wholeWeightStorage(shape: readonly number[], storage: DType): DType {
  return storage === 'F16' && numel(shape) * 4 > ORT_FOLD_LIMIT ? 'F32' : storage
}

/** Bytes of `t` in `to`, chunk by chunk; refuses values that would overflow float16. */
async function* storedChunks(t: TensorEntry, to: DType): AsyncIterable<Buffer> {
  if (t.dtype === to) {
    yield* t.chunks(CHUNK_BYTES)
    return
  }
  for await (const c of t.chunks(CHUNK_BYTES)) {
    const values = decodeFloats(c, t.dtype)
    if (to === 'F16') {
      for (let i = 0; i < values.length; i++) {
        // Values in [65504, 65520) round down to 65504; from 65520 on they would become inf.
        if (Math.abs(values[i]) >= F16_MAX_FINITE + 16 && Number.isFinite(values[i])) {
          throw new GlmtoolError('onnx-f16-overflow', `${t.file}: tensor ${t.name} holds ${values[i]}, beyond float16's range; export with --dtype f32`)
        }
      }
    }
    yield encodeFloats(values, to)
  }
}

/** config.json's marker for a P-Tuning prefix stored as transformer.prefix_cache.* (merge-adapter). */
const PREFIX_TENSORS = 'prefix_cache'
/** The merged prefix's keys and values beside the graph; OnnxCpuBackend puts them in front of the KV cache. */
export const ONNX_PREFIX_FILE = 'prefix_kv.safetensors'

/**
 * A merged P-Tuning v2 prefix is not part of the graph: it is past K/V that every query sees.
 * Its tensors (transformer.prefix_cache.<i>.{key,value}, float32 [Hkv, pre_seq_len, D]) are
 * copied as they are into prefix_kv.safetensors. Returns the file name, or undefined.
 */
async function writePrefixFile(model: ModelSource, dir: string): Promise<string | undefined> {
  const tensors = model.tensors.filter(t => t.name.startsWith('transformer.prefix_cache.'))
  if (tensors.length === 0) return undefined
  await writeSafetensorsFile(join(dir, ONNX_PREFIX_FILE), tensors, {format: 'pt', glmtool_prefix: PREFIX_TENSORS})
  return ONNX_PREFIX_FILE
}

/**
 * Export a ChatGLM checkpoint (torch directory or glmtool safetensors directory) as one ONNX
 * decoder graph with a KV cache (chatglm-graph.ts has the I/O contract). Weights stream tensor
 * by tensor from the shards into model.onnx.data; model.onnx holds only the graph and
 * initializer metadata, so the model is never in memory whole. Written into a temporary
 * directory that is verified and renamed into place (output-dir.ts).
 */
export async function exportOnnx(opts: OnnxExportOptions): Promise<OnnxExportResult> {
  const started = Date.now()
  const output = await claimOutput(opts.out, {force: opts.force, inputs: [{what: 'input model', path: opts.input}]})
  const model = await openClaimed(output, () => openModel(opts.input, {arch: opts.arch, detected: opts.detected}))
  try {
    return await output.write(async tmp => {
      return await exportOnnxFrom(model, tmp, opts, {companions: true, started})
    })
  } finally {
    await model.close()
    output.release()
  }
}

/**
 * The export of `model` into an existing directory `dir`, whose atomicity the caller owns.
 * `model` is any ModelSource: an opened directory, or tensors computed as they are read
 * (quantize --format onnx hands over its quantized tensors, so no safetensors copy is written
 * to be re-read; each tensor is read once, in the graph's order). With `companions`,
 * config.json is written from model.config and model.dir's companion files are copied
 * (model-output.ts writeCompanionFiles); without, `dir` already holds them (quantize --format
 * both puts the graph beside the safetensors it was made from).
 */
export async function exportOnnxFrom(
  model: ModelSource, dir: string, opts: Omit<OnnxExportOptions, 'out' | 'force'> & {out?: string},
  how: {companions: boolean, started?: number},
): Promise<OnnxExportResult> {
  const o = {...opts, out: opts.out ?? dir, force: true}
  const result = await writeOnnxFiles(planExport(model, o), dir, o, how.started ?? Date.now(), how.companions)
  // Every export carries a merged prefix (quantize --format onnx|both of a prefixed model too:
  // without the file the graph would run without its prefix, with no error).
  const prefix = await writePrefixFile(model, dir)
  return prefix ? {...result, files: [...result.files, prefix]} : result
}

/**
 * One slice of the decoder (chatglm-graph.ts GraphPart: the embedding, one layer, or the head)
 * as model.onnx + model.onnx.data in `dir`, reading only that slice's tensors from the open
 * model; with `linearInputs`, also the input of each of its linears (named as the whole
 * calibration variant names them). For runs that hold one layer at a time (quantize's streamed
 * calibration and evaluation, src/pipelines/quantize/streamed-forward.ts); no manifest, no companions.
 */
export async function exportOnnxPart(model: ModelSource, part: GraphPart, dir: string, opts: {linearInputs?: boolean} = {}): Promise<{model: string, io: DecoderIO, bytes: number}> {
  if (!model.arch || !model.config) throw new ModelError(`${model.path}: ONNX export needs a model directory with config.json, not a single file`, 'not-a-model-dir')
  const graph = onnxGraphFor(model.arch)
  const dims = graph.dims(model.config)
  const byName = new Map(model.tensors.map(t => [t.name, t]))
  if (part.kind === 'head' && part.rows) {
    // the output layer's rows (and their scales, quantized) a..b-1 only
    const [a, b] = part.rows
    for (const name of [model.arch.quantizable.lmHead, scaleNameOf(model.arch.quantizable.lmHead)]) {
      const t = byName.get(name)
      if (t) byName.set(name, rowSlice(t, a, b))
    }
  }
  const plan = planGraph(graph, dims, model.arch, model.config, byName, undefined, opts.linearInputs ?? false, part)
  const writer = await ExternalDataWriter.create(join(dir, ONNX_DATA_FILE), ONNX_DATA_FILE)
  let bytes = 0
  try {
    for (const e of plan.entries) {
      plan.builder.initializer(await writer.add(e.name, e.elemType, e.dims, e.length, e.chunks()))
      bytes += e.length
    }
    for (const c of plan.computed) {
      const data = Buffer.from(c.data.buffer, c.data.byteOffset, c.data.byteLength)
      plan.builder.initializer(await writer.add(c.name, ELEM.FLOAT, c.dims, data.length, (async function* () {
        yield data
      })()))
      bytes += data.length
    }
  } finally {
    await writer.close()
  }
  const io = partIO(dims, part, graph.boundary)
  const file = join(dir, ONNX_MODEL_FILE)
  await withPath(file, () => writeFile(file, plan.builder.toModel({graphName: `${model.arch!.id} decoder ${part.kind}`, producerVersion: VERSION})))
  return {model: file, io: {inputs: io.inputs, outputs: [...io.outputs, ...plan.extraOutputs]}, bytes}
}

interface ExportPlan {
  arch: Arch
  config: ModelConfig
  dir: string
  dims: DecoderDims
  graph: ChatglmOnnxGraph
  plan: GraphPlan
  total: number
}

function planExport(model: ModelSource, opts: OnnxExportOptions): ExportPlan {
  if (!model.dir || !model.arch || !model.config) {
    throw new ModelError(`${opts.input}: ONNX export needs a model directory with config.json, not a single file`, 'not-a-model-dir')
  }
  const {arch, config, dir} = model
  if (config.pre_seq_len !== undefined && config.pre_seq_len !== null && config.glmtool_prefix !== PREFIX_TENSORS) {
    // Only a prefix merged by `glmtool merge-adapter` (precomputed keys/values) travels; a raw
    // trainer config would otherwise be exported without its prefix, changing every answer.
    throw new GlmtoolError('onnx-unsupported', `${opts.input}: config.json has pre_seq_len ${String(config.pre_seq_len)} but no merged prefix; merge the P-Tuning v2 checkpoint first with \`glmtool merge-adapter <base> --adapter <checkpoint> --type prefix\``)
  }
  const check = checkTensors(arch, config, model.tensors)
  assertComplete(arch, check, opts.input)
  for (const w of model.warnings) opts.onWarning?.(w)
  for (const n of check.extra) opts.onWarning?.(`extra tensor ${n} (not part of ${arch.id}) is not exported`)

  const graph = onnxGraphFor(arch)
  const dims = graph.dims(config)
  const byName = new Map(model.tensors.map(t => [t.name, t]))
  const plan = planGraph(graph, dims, arch, config, byName, opts.dtype, opts.linearInputs ?? false, undefined, opts.cpuCompute === 'int8' ? 4 : 0, opts.residentF16 ?? false, opts.splitHead ?? true)
  const total = plan.entries.reduce((a, e) => a + e.length, 0) + plan.computed.reduce((a, c) => a + c.data.byteLength, 0)
  return {arch, config, dir, dims, graph, plan, total}
}

async function writeOnnxFiles(p: ExportPlan, tmp: string, opts: OnnxExportOptions, started: number, copyCompanions: boolean): Promise<OnnxExportResult> {
  const {arch, dir, dims, graph, plan, total} = p
  opts.onStart?.(total)
  const writer = await ExternalDataWriter.create(join(tmp, ONNX_DATA_FILE), ONNX_DATA_FILE)
  try {
    for (const e of plan.entries) {
      await checkpoint()
      plan.builder.initializer(await writer.add(e.name, e.elemType, e.dims, e.length, e.chunks()))
      opts.onBytes?.(e.length)
    }
    for (const c of plan.computed) {
      const bytes = Buffer.from(c.data.buffer, c.data.byteOffset, c.data.byteLength)
      plan.builder.initializer(await writer.add(c.name, ELEM.FLOAT, c.dims, bytes.length, (async function* () {
        yield bytes
      })()))
      opts.onBytes?.(bytes.length)
    }
  } finally {
    await writer.close()
  }
  const weightsDtype = plan.dtype === 'F16' ? 'float16' : 'float32'
  const io = decoderIO(dims)
  const outputs = [...io.outputs, ...plan.extraOutputs]
  const modelBytes = plan.builder.toModel({
    graphName: `${arch.id} decoder`,
    producerVersion: VERSION,
    docString: graph.description,
    metadata: {glmtool_architecture: arch.id, glmtool_weights_dtype: weightsDtype},
  })
  await withPath(join(tmp, ONNX_MODEL_FILE), () => writeFile(join(tmp, ONNX_MODEL_FILE), modelBytes))

  let copied: string[]
  if (copyCompanions) {
    copied = await writeCompanionFiles(dir, tmp, p.config)
    // The graph runs without them, but chat and the tokenizer need them beside it.
    for (const f of [arch.tokenizerFile, 'tokenizer_config.json']) {
      if (!copied.includes(f)) opts.onWarning?.(`${f} is missing from ${dir}; the ONNX directory has no ${f}`)
    }
  } else {
    copied = (await readdir(tmp, {withFileTypes: true})).filter(e => e.isFile() && (e.name === 'config.json' || isCompanionFile(e.name))).map(e => e.name).sort()
  }
  const manifest: OnnxManifest = {
    format: 'glmtool-onnx',
    version: 1,
    architecture: arch.id,
    model: ONNX_MODEL_FILE,
    data: ONNX_DATA_FILE,
    weights_dtype: weightsDtype,
    compute_dtype: 'float32',
    ir_version: IR_VERSION,
    opset: {'ai.onnx': DEFAULT_OPSET, [MS_DOMAIN]: MS_OPSET},
    dims,
    mask: {visible: 0, masked: MASKED},
    inputs: io.inputs,
    outputs,
    graph: graph.description,
    ops: graph.ops,
    ...(plan.quant ? {quantization: {
      bits: plan.quant.layout.bits, group_size: plan.quant.layout.groupSize, linears: plan.quant.linears,
      lm_head: plan.quant.layout.lmHead, embeddings: plan.quant.layout.embeddings, cpu_compute: opts.cpuCompute ?? 'exact',
      ...(plan.quant.headSplit ? {lm_head_compute: {terms: 2, bits: 8, block_size: plan.quant.headSplit}} : {}),
    }} : {}),
    ...(plan.residentF16 ? {runtime_weights: 'float16' as const} : {}),
    glmtool_version: VERSION,
  }
  await withPath(join(tmp, ONNX_MANIFEST_FILE), () => writeFile(join(tmp, ONNX_MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n'))
  await verifyOnnxDir(tmp, plan.builder.initializers.length)
  return {
    input: opts.input, out: opts.out, architecture: arch.id, dtype: plan.dtype === 'F16' ? 'f16' : 'f32',
    tensors: plan.sourceTensors, bytes: total, files: [ONNX_MODEL_FILE, ONNX_DATA_FILE, ONNX_MANIFEST_FILE, ...copied], copied, io,
    seconds: (Date.now() - started) / 1000, peakRssBytes: process.resourceUsage().maxRSS * 1024,
  }
}

/** One initializer of model.onnx.data, its bytes produced when written. */
interface PlannedTensor {
  name: string
  elemType: ElemType
  dims: readonly number[]
  length: number
  chunks(): AsyncIterable<Buffer>
}

interface GraphPlan {
  builder: GraphBuilder
  dtype: OnnxWeightDtype
  /** Initializers from checkpoint tensors, in the order the graph first uses them. */
  entries: PlannedTensor[]
  /** How many checkpoint tensors the graph uses. */
  sourceTensors: number
  computed: {name: string, dims: readonly number[], data: Float32Array}[]
  /** Graph outputs beyond the decoder contract (the calibration variant's linear inputs). */
  extraOutputs: TensorIO[]
  /** headSplit: the float output layer as two 8-bit terms of this many columns per scale (HEAD_SPLIT_BLOCK). */
  quant?: {layout: QuantLayout, linears: number, headSplit?: number}
  /** The linear weights are cast at their point of use, after their input (OnnxExportOptions.residentF16). */
  residentF16: boolean
}

/** Build the graph (no tensor bytes read), recording which tensors it uses. */
function planGraph(
  graph: ChatglmOnnxGraph, dims: DecoderDims, arch: Arch, config: ModelConfig, byName: Map<string, TensorEntry>, requested: OnnxWeightDtype | undefined,
  linearInputs: boolean, part?: GraphPart, accuracyLevel: 0 | 4 = 0, residentF16 = false, splitHeadWanted = true,
): GraphPlan {
  const b = new GraphBuilder()
  const used = new Set<string>()
  const asFloat = new Map<string, string>()
  const computed: GraphPlan['computed'] = []
  const entries: PlannedTensor[] = []
  const extraOutputs: TensorIO[] = []
  const pendingOutputs: string[] = []
  const layout = quantLayoutOf(config)
  let quantLinears = 0
  let dtype: OnnxWeightDtype | undefined = requested
  const lookup = (name: string): TensorEntry => {
    const t = byName.get(name)
    if (!t) throw new ModelError(`the ${graph.arch} ONNX graph needs tensor ${name}, which the checkpoint lacks`, 'incomplete-model')
    return t
  }
  const isQuantized = (name: string) => layout !== undefined && isQuantizedWeight(arch, layout, name)
  // int8 compute of a quantized graph: its float output layer as two 8-bit terms (not for the
  // calibration variant, whose statistics are of the float model's linears)
  const splitHead = splitHeadWanted && layout !== undefined && accuracyLevel === 4 && !linearInputs && !isQuantized(arch.quantizable.lmHead)
  let headSplitUsed = false
  /** The dtype each float initializer is stored in (the storage dtype, or F32: see `source`). */
  const stored = new Map<string, DType>()
  /**
   * A float checkpoint tensor as an initializer in the storage dtype (once). A weight read whole
   * (`whole`: not only gathered) whose float32 copy would exceed onnxruntime's constant-folding
   * limit (ORT_FOLD_LIMIT) is stored float32 instead: onnxruntime would not fold its Cast, and
   * every run would cast it again (ChatGLM-6B's 130,528-row output layer: 2.1 GB a decode step).
   */
  const source = (name: string, whole = false): TensorEntry => {
    const t = lookup(name)
    if (!isFloat(t.dtype)) throw new GlmtoolError('onnx-unsupported', `${t.file}: tensor ${name} is ${t.dtype}; ONNX export takes float weights (and the int8 weights of a quantized checkpoint)`)
    if (!used.has(name)) {
      used.add(name)
      b.reserve(name)
      const as: DType = whole && !resident ? wholeWeightStorage(t.shape, storage) : storage
      stored.set(name, as)
      entries.push({name, elemType: elemTypeOf(as), dims: t.shape, length: byteLength(as, t.shape), chunks: () => storedChunks(t, as)})
    }
    return t
  }
  const int8 = (name: string): TensorEntry => {
    const t = lookup(name)
    if (t.dtype !== 'I8') throw new GlmtoolError('onnx-unsupported', `${t.file}: quantized weight ${name} is ${t.dtype}, not int8`)
    return t
  }
  // The storage dtype is decided before any node is added: it changes whether Casts exist.
  // (Quantized weights are int8 whatever it is; their scales count as float weights.)
  if (!dtype) {
    const floats = [...byName.values()].filter(t => isFloat(t.dtype))
    dtype = floats.length > 0 && floats.every(t => t.dtype === 'F16') ? 'F16' : 'F32'
  }
  const storage = dtype
  // Quantized graphs keep their few float weights folded: their linears are MatMulNBits.
  const resident = residentF16 && storage === 'F16' && !layout
  const ctx: GraphContext = {
    config,
    rotaryBase: arch.ropeBase(config),
    weight(name) {
      source(name, true)
      if (stored.get(name) === 'F32') return name
      let v = asFloat.get(name)
      if (!v) {
        v = b.op('Cast', [name], {to: ELEM.FLOAT})
        asFloat.set(name, v)
      }
      return v
    },
    embed(name, ids) {
      if (isQuantized(name)) {
        const t = int8(name)
        if (!used.has(name)) {
          used.add(name)
          b.reserve(name)
          entries.push({name, elemType: ELEM.INT8, dims: t.shape, length: byteLength('I8', t.shape), chunks: () => t.chunks(CHUNK_BYTES)})
        }
        const hidden = layout!.bits === 4 ? t.shape[1] * 2 : t.shape[1]
        return dequantEmbedding(b, name, ctx.weight(scaleNameOf(name)), ids, hidden, layout!.bits, layout!.groupSize)
      }
      source(name)
      const rows = b.op('Gather', [name, ids], {axis: 0})
      return stored.get(name) === 'F32' ? rows : b.op('Cast', [rows], {to: ELEM.FLOAT})
    },
    computed(name, shape, data) {
      if (data.length !== numel(shape)) throw new Error(`computed tensor ${name}: ${data.length} values for shape [${shape}]`)
      computed.push({name: b.reserve(name), dims: shape, data})
      return name
    },
    linear(x, weight, bias) {
      let y: string
      if (isQuantized(weight)) {
        const w = int8(weight)
        const scale = lookup(scaleNameOf(weight))
        const d = nbitsDims(layout!, w)
        const B = b.reserve(`${weight}.MatMulNBits.B`)
        const scales = b.reserve(`${weight}.MatMulNBits.scales`)
        used.add(weight)
        used.add(scale.name)
        quantLinears++
        entries.push({name: B, elemType: ELEM.UINT8, dims: [d.N, d.kBlocks, d.blockSize * d.bits / 8], length: d.N * d.kBlocks * d.blockSize * d.bits / 8, chunks: () => matMulNBitsB(w, d)})
        entries.push({name: scales, elemType: ELEM.FLOAT, dims: [d.N, d.kBlocks], length: d.N * d.kBlocks * 4, chunks: async function* () {
          yield await matMulNBitsScales(scale, d)
        }})
        y = b.ms('MatMulNBits', [x, B, scales], {K: d.K, N: d.N, bits: d.bits, block_size: d.blockSize, accuracy_level: accuracyLevel})
        if (bias) y = b.op('Add', [y, ctx.weight(bias)])
        if (linearInputs) extraOutputs.push({name: `${LINEAR_INPUT_PREFIX}${weight}`, dtype: 'float32', shape: ['rows', d.K]})
      } else if (splitHead && weight === arch.quantizable.lmHead) {
        // The float output layer of an int8-compute quantized graph: two 8-bit terms that hold
        // it as closely as float16 does (quant/split-int8.ts), read by MatMulNBits' integer
        // kernels instead of a float32 copy of twice the bytes (issue 13; bench/RESULTS.md).
        const t = lookup(weight)
        if (!isFloat(t.dtype)) throw new GlmtoolError('onnx-unsupported', `${t.file}: tensor ${weight} is ${t.dtype}, not a float weight`)
        const [N, K] = t.shape
        const block = HEAD_SPLIT_BLOCK
        if (K % block !== 0) throw new GlmtoolError('onnx-unsupported', `${t.file}: ${weight} has ${K} columns, not a multiple of ${block}`)
        used.add(weight)
        headSplitUsed = true
        const terms = ([0, 1] as const).map(term => {
          const B = b.reserve(`${weight}.split${term}.MatMulNBits.B`)
          const scales = b.reserve(`${weight}.split${term}.MatMulNBits.scales`)
          entries.push({name: B, elemType: ELEM.UINT8, dims: [N, K / block, block], length: N * K, chunks: () => splitInt8Term(t, block, term, 'B')})
          entries.push({name: scales, elemType: ELEM.FLOAT, dims: [N, K / block], length: N * (K / block) * 4, chunks: () => splitInt8Term(t, block, term, 'scales')})
          return b.ms('MatMulNBits', [x, B, scales], {K, N, bits: 8, block_size: block, accuracy_level: accuracyLevel})
        })
        y = b.op('Add', terms)
        if (bias) y = b.op('Add', [y, ctx.weight(bias)])
      } else {
        const t = source(weight, true)
        let w: string
        if (resident) {
          // [N, K] viewed as [-1, x's K]: a data dependency on x that costs no copy, so the
          // Cast (and its float32 copy) exists only while this Gemm runs.
          const shape = b.op('Concat', [b.int64([-1]), b.op('Shape', [x], {start: -1})], {axis: 0})
          w = b.op('Cast', [b.op('Reshape', [weight, shape])], {to: ELEM.FLOAT})
        } else {
          w = ctx.weight(weight)
        }
        y = linear(b, x, w, bias ? ctx.weight(bias) : undefined)
        if (linearInputs) extraOutputs.push({name: `${LINEAR_INPUT_PREFIX}${weight}`, dtype: 'float32', shape: ['rows', t.shape[1]]})
      }
      if (linearInputs) pendingOutputs.push(x)
      return y
    },
  }
  if (part) graph.buildPart(b, ctx, dims, part)
  else graph.build(b, ctx, dims)
  // After the decoder's outputs, so the contract's outputs keep their positions.
  pendingOutputs.forEach((x, i) => b.output(x, extraOutputs[i].name, ELEM.FLOAT, extraOutputs[i].shape))
  // Graph order (layer by layer), whatever the source format or shard layout: the same model
  // gives the same model.onnx.data from torch shards or from safetensors.
  return {
    builder: b, dtype: storage, entries, sourceTensors: used.size, computed, extraOutputs, residentF16: resident,
    ...(layout ? {quant: {layout, linears: quantLinears, ...(splitHead && headSplitUsed ? {headSplit: HEAD_SPLIT_BLOCK} : {})}} : {}),
  }
}

/**
 * Re-open what was written: the protobuf decodes, every initializer's external range lies
 * inside model.onnx.data with the length its dtype and shape need, the graph's inputs and
 * outputs are exactly the manifest's (the runtime's contract). Structural only: running the
 * graph would load the whole model (the tests run it on tiny models).
 */
export async function verifyOnnxDir(dir: string, expectedInitializers?: number): Promise<OnnxManifest> {
  const manifest = await readOnnxManifest(dir)
  const proto = decodeModel(await readFile(join(dir, manifest.model)))
  const dataSize = (await stat(join(dir, manifest.data))).size
  const fail = (why: string) => {
    throw new GlmtoolError('verify-failed', `${join(dir, manifest.model)}: ${why}`)
  }
  const g = proto.graph
  if (!g) return fail('no graph')
  const initializers = g.initializer ?? []
  if (expectedInitializers !== undefined && initializers.length !== expectedInitializers) fail(`${initializers.length} initializers, planned ${expectedInitializers}`)
  const elemSize: Record<number, number> = {[ELEM.FLOAT]: 4, [ELEM.UINT8]: 1, [ELEM.INT8]: 1, [ELEM.FLOAT16]: 2, [ELEM.BFLOAT16]: 2, [ELEM.INT32]: 4, [ELEM.INT64]: 8}
  for (const t of initializers) {
    const r = externalRangeOf(t)
    if (!r) continue
    const want = numel((t.dims ?? []).map(Number)) * (elemSize[t.dataType ?? 0] ?? NaN)
    if (r.location !== manifest.data) fail(`initializer ${t.name} points to ${r.location}, not ${manifest.data}`)
    if (r.length !== want) fail(`initializer ${t.name} has ${r.length} bytes, its shape needs ${want}`)
    if (r.offset < 0 || r.offset + r.length > dataSize) fail(`initializer ${t.name} [${r.offset}, ${r.offset + r.length}) lies outside ${manifest.data} (${dataSize} bytes)`)
  }
  const names = (xs: readonly {name?: string | null}[] | null | undefined) => (xs ?? []).map(x => x.name ?? '').join(',')
  if (names(g.input) !== names(manifest.inputs)) fail(`graph inputs ${names(g.input)} differ from ${ONNX_MANIFEST_FILE}`)
  if (names(g.output) !== names(manifest.outputs)) fail(`graph outputs ${names(g.output)} differ from ${ONNX_MANIFEST_FILE}`)
  return manifest
}

/**
 * The weight bytes one decode step reads from an export: every initializer, except a table only
 * ever gathered from (the embedding: a step reads its one row). What bench's CPU roofline divides
 * by the measured read rate.
 */
export async function decodeReadBytes(dir: string): Promise<number> {
  const manifest = await readOnnxManifest(dir)
  const g = decodeModel(await readFile(join(dir, manifest.model))).graph
  const gatheredOnly = new Map<string, boolean>()
  for (const n of g?.node ?? []) {
    for (const [k, name] of (n.input ?? []).entries()) {
      const gathered = n.opType === 'Gather' && k === 0
      gatheredOnly.set(name, (gatheredOnly.get(name) ?? true) && gathered)
    }
  }
  let bytes = 0
  for (const t of g?.initializer ?? []) {
    if (gatheredOnly.get(t.name ?? '') ?? true) continue
    bytes += externalRangeOf(t)?.length ?? t.rawData?.length ?? 0
  }
  return bytes
}

export async function readOnnxManifest(dir: string): Promise<OnnxManifest> {
  const path = join(dir, ONNX_MANIFEST_FILE)
  let m: OnnxManifest
  try {
    m = JSON.parse(await readFile(path, 'utf8'))
  } catch (error) {
    const e = error as NodeJS.ErrnoException
    throw new ModelError(`${path}: ${e.code === 'ENOENT' ? 'missing; not a glmtool ONNX export (run glmtool convert --to onnx)' : `unreadable (${e.message})`}`, 'not-an-onnx-export')
  }
  if (m.format !== 'glmtool-onnx' || m.version !== 1) throw new ModelError(`${path}: not a glmtool ONNX manifest of version 1`, 'not-an-onnx-export')
  return m
}
