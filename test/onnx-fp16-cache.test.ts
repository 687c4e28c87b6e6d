/**
 * The CPU chat cache of a float16 checkpoint keeps float16 weights (issue 13): the cached
 * conversion stores them float16 (manifest and initializers), a backend loaded on it gives the
 * greedy tokens and logits of the float32 export of the same checkpoint, and onnxruntime really
 * keeps them float16: with the backend's session options the optimized graph still holds the
 * float16 initializers and each weight's Cast runs next to its Gemm (not all first); without
 * them (the control) onnxruntime folds the Casts into float32 initializers.
 */
import {mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import * as ort from 'onnxruntime-node'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {decodeModel, ELEM, type TensorProto} from '../src/formats/onnx/onnx-builder.js'
import {loadChatModel} from '../src/pipelines/chat-model.js'
import {exportOnnx, readOnnxManifest} from '../src/pipelines/export-onnx.js'
import {KEEP_F16_DISABLED_OPTIMIZERS, OnnxCpuBackend, onnxCpuSessionOptions} from '../src/runtime/backends/onnx-cpu.js'
import {sharpenedModel, synthTiny, type TinyArch} from './onnx-fixtures.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-fp16-cache-'))
const savedCache = process.env.GLMTOOL_CACHE
process.env.GLMTOOL_CACHE = join(work, 'cache')
afterAll(() => {
  if (savedCache === undefined) delete process.env.GLMTOOL_CACHE
  else process.env.GLMTOOL_CACHE = savedCache
  rmSync(work, {recursive: true, force: true})
})

const ARCHS: TinyArch[] = ['chatglm-6b', 'chatglm2-6b']
const dirs: Record<string, {source: string, cached: string, f32: string, plain16: string}> = {}

beforeAll(async () => {
  for (const arch of ARCHS) {
    // Sharpened: peaked attention, so a wrong cache row or mask would move the logits.
    const source = await sharpenedModel(synthTiny(work, arch), join(work, `${arch}-sharp`), 16)
    const chat = await loadChatModel(source, {backend: 'cpu'})
    await chat.backend.dispose()
    const f32 = join(work, `${arch}-f32`)
    await exportOnnx({input: source, out: f32, dtype: 'F32', force: true})
    // `convert --to onnx`'s float16 export: float16 on disk, Casts folded at load.
    const plain16 = join(work, `${arch}-plain16`)
    await exportOnnx({input: source, out: plain16, dtype: 'F16', force: true})
    dirs[arch] = {source, cached: chat.onnxDir!, f32, plain16}
  }
}, 240_000)

/** A checkpoint matrix (a linear weight or a table; not glmtool's computed rotary tables). */
const isMatrix = (t: TensorProto) => t.name!.endsWith('.weight') && t.dims?.length === 2 && t.dims.every(d => Number(d) > 1)

/** The checkpoint matrices among model.onnx's initializers, name -> element type. */
function matrixInitializers(modelPath: string): Map<string, number> {
  const m = decodeModel(readFileSync(modelPath))
  return new Map((m.graph?.initializer ?? []).filter(isMatrix).map(t => [t.name!, t.dataType!]))
}

const greedy = async (b: OnnxCpuBackend, prompt: number[], steps: number, arch: TinyArch) => {
  // v1 takes a second rotary row; a plain causal mask and position = block position = index is
  // a valid input for both graphs, which is all this comparison needs.
  const rows = (ids: number[], at: number) => ({
    ids, positions: ids.map((_, i) => at + i), bidirectional: 0,
    ...(arch === 'chatglm-6b' ? {blockPositions: ids.map(() => 0)} : {}),
  })
  const first = await b.forward({...rows(prompt, 0), logits: 'all'})
  const all = first.logits.slice()
  let last = first.logits.subarray((first.rows - 1) * first.vocab)
  const tokens: number[] = []
  for (let s = 0; s < steps; s++) {
    let best = 0
    for (let i = 1; i < last.length; i++) if (last[i] > last[best]) best = i
    tokens.push(best)
    last = (await b.forward({...rows([best], prompt.length + s), logits: 'last'})).logits
  }
  return {all, tokens, last: last.slice()}
}

const maxAbsDiff = (a: Float32Array, b: Float32Array) => {
  expect(a.length).toBe(b.length)
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]))
  return m
}

describe.each(ARCHS)('the CPU chat cache of a float16 %s', arch => {
  it('stores float16 weights and says the session keeps them float16', async () => {
    const {cached, f32} = dirs[arch]
    const manifest = await readOnnxManifest(cached)
    expect(manifest.weights_dtype).toBe('float16')
    expect(manifest.runtime_weights).toBe('float16')
    const weights = matrixInitializers(join(cached, manifest.model))
    expect(weights.size).toBeGreaterThanOrEqual(6)
    for (const [name, type] of weights) expect([name, type]).toEqual([name, ELEM.FLOAT16])
    // The float32 export of the same checkpoint: the same matrices, float32, no runtime_weights.
    const f32Manifest = await readOnnxManifest(f32)
    expect(f32Manifest.runtime_weights).toBeUndefined()
    expect([...matrixInitializers(join(f32, f32Manifest.model)).entries()].map(([n]) => n).sort()).toEqual([...weights.keys()].sort())
    // About half the bytes on disk: float16, not float32.
    const data = (d: string) => readdirSync(d).filter(f => f.endsWith('.data')).reduce((a, f) => a + readFileSync(join(d, f)).length, 0)
    expect(data(cached) / data(f32)).toBeLessThan(0.55)
  })

  it('gives the greedy tokens and logits of the float32 export (max |diff| <= 1e-4)', async () => {
    const {cached, f32} = dirs[arch]
    const prompt = [5, 17, 301, 44, 1020, 9, 77, 250]
    const a = await OnnxCpuBackend.load(cached)
    const b = await OnnxCpuBackend.load(f32)
    try {
      const x = await greedy(a, prompt, 8, arch)
      const y = await greedy(b, prompt, 8, arch)
      expect(x.tokens).toEqual(y.tokens)
      // float16 -> float32 is exact, so only the kernels' summation order differs (the float32
      // export's Gemm runs on prepacked weights): measured ~2e-6 on logits of magnitude ~1-10.
      expect(maxAbsDiff(x.all, y.all)).toBeLessThanOrEqual(1e-4)
      expect(maxAbsDiff(x.last, y.last)).toBeLessThanOrEqual(1e-4)
      // Not vacuous: the logits are not flat.
      expect(y.all.reduce((m, v) => Math.max(m, v), -Infinity) - y.all.reduce((m, v) => Math.min(m, v), Infinity)).toBeGreaterThan(0.1)
    } finally {
      await a.dispose()
      await b.dispose()
    }
  })
})

describe('onnxruntime keeps a runtime_weights float16 graph float16', () => {
  const arch = 'chatglm2-6b'

  /** `dir`'s graph as onnxruntime optimized it with `opts`, and the order its nodes ran in one decode step. */
  async function optimized(dir: string, opts: ort.InferenceSession.SessionOptions, tag: string) {
    const manifest = await readOnnxManifest(dir)
    const out = join(work, `optimized-${tag}.onnx`)
    const session = await ort.InferenceSession.create(join(dir, manifest.model), {
      ...opts, optimizedModelFilePath: out, enableProfiling: true, profileFilePrefix: join(work, `profile-${tag}`),
    })
    const d = manifest.dims
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.of(5n), [1, 1]),
      position_ids: new ort.Tensor('int64', BigInt64Array.of(0n), [1, 1]),
      attention_bias: new ort.Tensor('float32', new Float32Array(1), [1, 1, 1, 1]),
      logits_index: new ort.Tensor('int64', BigInt64Array.of(0n), [1]),
    }
    for (let i = 0; i < d.layers; i++) {
      for (const kind of ['key', 'value']) feeds[`past_${kind}_${i}`] = new ort.Tensor('float32', new Float32Array(0), [1, d.kvHeads, 0, d.headDim])
    }
    await session.run(feeds)
    await session.release()
    const profile = readdirSync(work).find(f => f.startsWith(`profile-${tag}`))!
    const events = JSON.parse(readFileSync(join(work, profile), 'utf8')) as {cat: string, name: string, ts: number}[]
    const order = events.filter(e => e.cat === 'Node' && e.name.endsWith('_kernel_time')).sort((p, q) => p.ts - q.ts).map(e => e.name.slice(0, -'_kernel_time'.length))
    const model = decodeModel(readFileSync(out))
    // Folded initializers take their Cast's output name: every matrix but glmtool's rotary tables.
    const matrices = (model.graph?.initializer ?? []).filter(t => !t.name!.startsWith('rotary.') && t.dims?.length === 2 && t.dims.every(d => Number(d) > 1))
    const nodes = model.graph?.node ?? []
    const producer = new Map(nodes.flatMap(n => (n.output ?? []).map(o => [o, n])))
    const at = (name?: string) => order.indexOf(name!)
    // Per Gemm in the order run: the op feeding its weight, and whether that ran after the previous Gemm.
    const gemms = nodes.filter(n => n.opType === 'Gemm').sort((p, q) => at(p.name) - at(q.name))
    const weightOps = gemms.map((g, i) => {
      const w = producer.get(g.input![1])
      return {op: w?.opType ?? 'initializer', afterPrevious: w === undefined || i === 0 || at(w.name) > at(gemms[i - 1].name)}
    })
    return {float16: matrices.filter(t => t.dataType === ELEM.FLOAT16).map(t => t.name), float32: matrices.filter(t => t.dataType === ELEM.FLOAT).map(t => t.name), gemms: gemms.length, weightOps}
  }

  it('the backend asks for it only where the manifest says runtime_weights float16', async () => {
    const extra = (o: ort.InferenceSession.SessionOptions) => (o.extra as {optimization?: {disable_specified_optimizers?: string}} | undefined)?.optimization?.disable_specified_optimizers
    expect(extra(onnxCpuSessionOptions(await readOnnxManifest(dirs[arch].cached)))).toBe(KEEP_F16_DISABLED_OPTIMIZERS)
    expect(extra(onnxCpuSessionOptions(await readOnnxManifest(dirs[arch].f32)))).toBeUndefined()
  })

  it('with the backend\'s options the session keeps the float16 weights and casts each just before its Gemm', async () => {
    const {cached} = dirs[arch]
    const manifest = await readOnnxManifest(cached)
    const names = [...matrixInitializers(join(cached, manifest.model)).keys()].sort()
    const kept = await optimized(cached, onnxCpuSessionOptions(manifest), 'kept')
    expect(kept.float16.sort()).toEqual(names)
    expect(kept.float32).toEqual([])
    expect(kept.gemms).toBeGreaterThanOrEqual(4 * manifest.dims.layers)
    // One float32 copy at a time: every Gemm's weight is a Cast that ran after the previous Gemm.
    expect(kept.weightOps).toEqual(kept.weightOps.map(() => ({op: 'Cast', afterPrevious: true})))
  }, 120_000)

  it('the controls: onnxruntime folds a plain float16 export to float32, and without the Reshape runs every Cast first', async () => {
    const {plain16} = dirs[arch]
    const manifest = await readOnnxManifest(plain16)
    expect(manifest.runtime_weights).toBeUndefined()
    // The backend's options for it (onnxruntime's defaults): float32 weights, Gemms on initializers.
    const folded = await optimized(plain16, onnxCpuSessionOptions(manifest), 'folded')
    expect(folded.float16).toEqual(['transformer.embedding.word_embeddings.weight'])
    expect(folded.float32.length).toBeGreaterThanOrEqual(folded.gemms)
    expect(new Set(folded.weightOps.map(w => w.op))).toEqual(new Set(['initializer']))
    // The same graph with the folding off keeps float16 but runs the Casts ahead of the Gemms:
    // every float32 copy would be held at once (why the resident graph adds the Reshape).
    const ahead = await optimized(plain16, {...onnxCpuSessionOptions(manifest), extra: {optimization: {disable_specified_optimizers: KEEP_F16_DISABLED_OPTIMIZERS}}}, 'ahead')
    expect(ahead.float32).toEqual([])
    expect(ahead.weightOps.filter(w => !w.afterPrevious).length).toBeGreaterThan(ahead.gemms / 2)
  }, 120_000)
})
