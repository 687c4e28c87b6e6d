import {mkdtemp, rm} from 'node:fs/promises'
import {join} from 'node:path'
import {type Ort, ort} from '../../runtime/backends/ort.js'
import {GlmtoolError, ModelError} from '../../errors.js'
import {byteLength, numel} from '../../formats/dtype.js'
import type {ModelSource} from '../model-dir.js'
import type {GraphPart} from '../../formats/onnx/chatglm-graph.js'
import {exportOnnxPart, LINEAR_INPUT_PREFIX, onnxGraphFor} from '../export-onnx.js'
import {checkpoint} from '../output-dir.js'
import {attentionBias} from '../../runtime/backends/onnx-cpu.js'
import {promptLayout} from '../../runtime/generate.js'
import type {ChatTokenizer} from '../../runtime/tokenizer/index.js'

/**
 * The model run over a batch of prompts one slice at a time, as AWQ and GPTQ implementations
 * calibrate: the embedding, then each layer, then the logits head (formats/onnx/chatglm-graph.ts
 * GraphPart). Each slice is exported from the checkpoint on its own (export-onnx.ts
 * exportOnnxPart: only its tensors are read) into a scratch directory, run in onnxruntime over
 * every sequence, and dropped before the next, so memory holds one slice's weights and the
 * sequences' hidden states at the cut (v1: the normed hidden state; v2: also the residual),
 * not the model: at the 6B size ~0.8 GB of float32 weights for a layer (1 GB for the head) and
 * 64 MB per boundary tensor for 32 x 128 tokens, against ~25 GB for the whole float32 graph.
 *
 * The slices have the whole graph's nodes (the generation modules build both from the same
 * code), so every value is the one the whole ONNX export computes: the streamed calibration
 * statistics and evaluation logits equal the whole-model ones bit for bit
 * (test/quant-streamed.test.ts checks it against the whole graph).
 */

export interface StreamInput {
  readonly ids: readonly number[]
  readonly positions: readonly number[]
  readonly blockPositions?: readonly number[]
  readonly bidirectional: number
}

export interface StreamedOptions {
  /** Directory for the slices' files (each removed when its slice is done). */
  readonly scratch: string
  /** onnxruntime intra-op threads (default: onnxruntime's choice, the physical cores). */
  readonly threads?: number
  /**
   * Each linear's input rows, float32 [rows, cols]: for every linear, its sequences in order
   * (the output layer's input is the final hidden state, every row).
   */
  readonly onLinearInput?: (weight: string, x: Float32Array, cols: number) => void
  /** Each sequence's logits, every row ([rows, vocab]), in sequence order; the head runs only when given. */
  readonly onLogits?: (sequence: number, logits: Float32Array, rows: number, vocab: number) => void
  /** The output layer's pieces are no smaller than this, float32 bytes (default HEAD_PIECE_BYTES; headParts). */
  readonly headPieceBytes?: number
  /** Progress: a slice is about to run. */
  readonly onPart?: (part: GraphPart, index: number, total: number) => void
}

/** Prompts as the runtime lays them out (positions and v1's bidirectional prefix), for runStreamed. */
export function streamInputs(tokenizer: ChatTokenizer, sequences: readonly number[][]): StreamInput[] {
  return sequences.map(ids => ({ids, ...promptLayout(tokenizer, ids)}))
}

export async function runStreamed(model: ModelSource, inputs: readonly StreamInput[], opts: StreamedOptions): Promise<void> {
  if (!model.arch || !model.config) throw new ModelError(`${model.path}: a streamed run needs a model directory with config.json`, 'not-a-model-dir')
  const graph = onnxGraphFor(model.arch)
  const d = graph.dims(model.config)
  const boundary = graph.boundary
  const parts: GraphPart[] = [{kind: 'embedding'}, ...Array.from({length: d.layers}, (_, index) => ({kind: 'layer' as const, index}))]
  if (opts.onLogits) parts.push(...headParts(model, d.vocab, opts.headPieceBytes))
  // The head in pieces of rows: each sequence's logits assembled from them, handed on after the last.
  const logits: Float32Array[] = []
  const f32 = (data: Float32Array, rows: number) => new (ort().Tensor)('float32', data, [rows, d.hidden])
  const emptyKv = new (ort().Tensor)('float32', new Float32Array(0), [1, d.kvHeads, 0, d.headDim])
  // Hidden states at the current cut, per sequence, one array per boundary tensor.
  let state: Float32Array[][] = []
  for (const [k, part] of parts.entries()) {
    opts.onPart?.(part, k, parts.length)
    const linearInputs = part.kind === 'layer' && opts.onLinearInput !== undefined
    await withPartSession(model, part, opts, linearInputs, async session => {
      const next: Float32Array[][] = []
      for (const [s, input] of inputs.entries()) {
        await checkpoint()
        const S = input.ids.length
        const feeds: Record<string, Ort.Tensor> = {}
        if (part.kind === 'embedding') {
          feeds.input_ids = new (ort().Tensor)('int64', BigInt64Array.from(input.ids, BigInt), [1, S])
        } else if (part.kind === 'head') {
          feeds[boundary[0]] = f32(state[s][0], S)
          feeds.logits_index = new (ort().Tensor)('int64', BigInt64Array.from({length: S}, (_, i) => BigInt(i)), [S])
        } else {
          boundary.forEach((name, j) => {
            feeds[name] = f32(state[s][j], S)
          })
          feeds.position_ids = d.positionRows === 2
            ? new (ort().Tensor)('int64', BigInt64Array.from([...input.positions, ...input.blockPositions!], BigInt), [1, 2, S])
            : new (ort().Tensor)('int64', BigInt64Array.from(input.positions, BigInt), [1, S])
          feeds.attention_bias = new (ort().Tensor)('float32', attentionBias(0, S, input.bidirectional), [1, 1, S, S])
          feeds.past_key = emptyKv
          feeds.past_value = emptyKv
        }
        const out = await session.run(feeds)
        if (part.kind === 'head') {
          const got = out.logits.data as Float32Array
          const [a, b] = part.rows ?? [0, d.vocab]
          if (a === 0 && b === d.vocab) {
            logits[s] = got
          } else {
            logits[s] ??= new Float32Array(S * d.vocab)
            for (let r = 0; r < S; r++) logits[s].set(got.subarray(r * (b - a), (r + 1) * (b - a)), r * d.vocab + a)
          }
          if (b === d.vocab) {
            opts.onLogits!(s, logits[s], S, d.vocab)
            delete logits[s]
          }
          continue
        }
        next.push(boundary.map(name => out[`${name}_out`].data as Float32Array))
        if (linearInputs) {
          for (const [name, t] of Object.entries(out)) {
            if (name.startsWith(LINEAR_INPUT_PREFIX)) opts.onLinearInput!(name.slice(LINEAR_INPUT_PREFIX.length), t.data as Float32Array, Number(t.dims[t.dims.length - 1]))
          }
        }
      }
      if (part.kind !== 'head') state = next
    })
    if (part.kind === 'layer' && part.index === d.layers - 1 && opts.onLinearInput) {
      // The output layer's input: the final hidden state (the head gathers every row).
      for (const st of state) opts.onLinearInput(model.arch.quantizable.lmHead, st[0], d.hidden)
    }
  }
}

async function withPartSession(model: ModelSource, part: GraphPart, opts: StreamedOptions, linearInputs: boolean, fn: (s: Ort.InferenceSession) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(opts.scratch, `${part.kind}${part.kind === 'layer' ? `-${part.index}` : ''}-`))
  try {
    await checkpoint()
    const r = await exportOnnxPart(model, part, dir, {linearInputs})
    let session: Ort.InferenceSession
    try {
      session = await ort().InferenceSession.create(r.model, {
        executionProviders: ['cpu'],
        graphOptimizationLevel: 'all',
        ...(opts.threads ? {intraOpNumThreads: opts.threads} : {}),
      })
    } catch (error) {
      throw new GlmtoolError('onnx-load', `${r.model}: onnxruntime cannot load the ${part.kind} slice (${(error as Error).message.split('\n')[0]})`)
    }
    try {
      await fn(session)
    } finally {
      await session.release()
    }
  } finally {
    await rm(dir, {recursive: true, force: true})
  }
}

/**
 * The head slices: the output layer in pieces of whole rows no larger, as float32, than the
 * largest layer, nor smaller than `minPiece` (ChatGLM-6B: 3 of 43,510 rows, 0.71 GB each,
 * instead of one 2.1 GB slice that would set the run's peak; ChatGLM2-6B 2; a tiny model 1), in
 * vocabulary order, the last ending at `vocab`.
 */
export function headParts(model: ModelSource, vocab: number, minPiece = HEAD_PIECE_BYTES): GraphPart[] {
  const n = headPieceCount(sliceBytes(model), minPiece)
  if (n === 1) return [{kind: 'head'}]
  const per = Math.ceil(vocab / n)
  return Array.from({length: n}, (_, i) => ({kind: 'head' as const, rows: [i * per, Math.min(vocab, (i + 1) * per)] as const}))
}

/**
 * Memory a streamed run needs, estimated: the largest slice as float32 twice (the stored
 * weights while onnxruntime folds their Casts, and the folded copy), the hidden states at a cut
 * (old and new), and the logits kept for an evaluation (the reference's and one candidate's).
 */
export function streamedPeakBytes(model: ModelSource, tokens: number, logitRows: number): number {
  if (!model.arch || !model.config) return Infinity
  const graph = onnxGraphFor(model.arch)
  const d = graph.dims(model.config)
  return 2 * largestLayerBytes(model) + 2 * graph.boundary.length * tokens * d.hidden * 4 + 2 * logitRows * d.vocab * 4
}

/**
 * Float32 bytes of the largest slice: a layer's tensors together, or one tensor outside the
 * layers (the embedding table counts in its stored dtype, which the graph gathers from without
 * a float32 copy); the output layer, cut into pieces no larger than a layer (headParts), counts
 * as its largest piece.
 */
export function largestLayerBytes(model: ModelSource): number {
  const bytes = sliceBytes(model)
  return Math.max(bytes.layer, bytes.other, Math.ceil(bytes.head / headPieceCount(bytes, HEAD_PIECE_BYTES)))
}

/** The smallest piece the output layer is cut into (headParts): one slice's export and session cost more than it saves below this. */
export const HEAD_PIECE_BYTES = 256 * 2 ** 20
/** Pieces of the output layer: each no larger than the largest layer nor smaller than `minPiece` (float32 bytes). */
function headPieceCount({head, layer}: {head: number, layer: number}, minPiece: number): number {
  const piece = Math.max(layer, minPiece)
  return piece > 0 ? Math.max(1, Math.ceil(head / piece)) : 1
}

/** Float32 bytes of the output layer, of the largest layer, and of the largest other tensor. */
function sliceBytes(model: ModelSource): {head: number, layer: number, other: number} {
  const layers = new Map<string, number>()
  let head = 0
  let other = 0
  const lmHead = model.arch?.quantizable.lmHead
  for (const t of model.tensors) {
    const k = /\.layers\.(\d+)\./.exec(t.name)?.[1]
    const bytes = /word_embeddings/.test(t.name) ? byteLength(t.dtype, t.shape) : 4 * numel(t.shape)
    if (k !== undefined) layers.set(k, (layers.get(k) ?? 0) + bytes)
    else if (t.name === lmHead) head = bytes
    else other = Math.max(other, bytes)
  }
  return {head, layer: Math.max(0, ...layers.values()), other}
}
