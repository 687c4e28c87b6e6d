/**
 * `glmtool convert --to onnx` on tiny synth models of both generations: the files, the exact
 * graph I/O contract, external data layout, python3-onnx's checker, f16 vs f32 storage, and
 * the failure paths (incomplete model, existing output). Numerics: onnx-parity.test.ts.
 */
import {cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {openModel, TORCH_SINGLE} from '../src/pipelines/model-dir.js'
import {externalRangeOf, LARGE_ALIGN, LARGE_TENSOR, SMALL_ALIGN} from '../src/formats/onnx/external-data.js'
import {type OnnxManifest} from '../src/pipelines/export-onnx.js'
import {decodeModel, ELEM, type ValueInfoProto} from '../src/formats/onnx/onnx-builder.js'
import {writeTorchCheckpoint} from '../src/formats/torch-writer.js'
import {OnnxCpuBackend} from '../src/runtime/backends/onnx-cpu.js'
import {glmtool} from './helpers/cli.js'
import {onnxChecker, synthTiny, type TinyArch} from './onnx-fixtures.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-onnx-export-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

const ARCHS: TinyArch[] = ['chatglm-6b', 'chatglm2-6b']
const models: Record<string, string> = {}
beforeAll(() => {
  for (const a of ARCHS) models[a] = synthTiny(work, a)
})

function exportOnnx(model: string, out: string, extra: string[] = []) {
  const r = glmtool(['convert', model, '--to', 'onnx', '--out', out, '--json', ...extra])
  return {...r, json: r.code === 0 ? JSON.parse(r.stdout) : undefined}
}

/** The I/O contract for the tiny configs: 2 layers, head dim 16; v1 4 KV heads, v2 2 groups. */
function expectedIO(arch: TinyArch) {
  const v1 = arch === 'chatglm-6b'
  const kvHeads = v1 ? 4 : 2
  const kv = (p: string, len: string) => [0, 1].flatMap(i => [
    {name: `${p}_key_${i}`, dtype: 'float32', shape: [1, kvHeads, len, 16]},
    {name: `${p}_value_${i}`, dtype: 'float32', shape: [1, kvHeads, len, 16]},
  ])
  return {
    inputs: [
      {name: 'input_ids', dtype: 'int64', shape: [1, 'S']},
      {name: 'position_ids', dtype: 'int64', shape: v1 ? [1, 2, 'S'] : [1, 'S']},
      {name: 'attention_bias', dtype: 'float32', shape: [1, 1, 'S', 'T']},
      {name: 'logits_index', dtype: 'int64', shape: ['K']},
      ...kv('past', 'C'),
    ],
    outputs: [{name: 'logits', dtype: 'float32', shape: [1, 'K', v1 ? 130528 : 65024]}, ...kv('present', 'S')],
  }
}

describe('glmtool convert --to onnx', () => {
  for (const arch of ARCHS) {
    describe(arch, () => {
      const out = () => join(work, `${arch}-onnx`)

      it('exports the decoder with f16 storage (the checkpoint is float16), config and tokenizer alongside', () => {
        const r = exportOnnx(models[arch], out())
        expect(r.code, r.stderr).toBe(0)
        expect(r.json).toMatchObject({architecture: arch, dtype: 'f16'})
        const tok = arch === 'chatglm-6b' ? 'ice_text.model' : 'tokenizer.model'
        expect(readdirSync(out()).sort()).toEqual(['config.json', 'glmtool-onnx.json', 'model.onnx', 'model.onnx.data', tok, 'tokenizer_config.json'].sort())
        expect(readFileSync(join(out(), 'config.json'))).toEqual(readFileSync(join(models[arch], 'config.json')))
        expect(readdirSync(work).filter(f => f.includes('glmtool-tmp'))).toEqual([])
      })

      it('records and builds exactly the I/O contract', () => {
        const m = JSON.parse(readFileSync(join(out(), 'glmtool-onnx.json'), 'utf8')) as OnnxManifest
        const io = expectedIO(arch)
        expect(m).toMatchObject({format: 'glmtool-onnx', version: 1, architecture: arch, weights_dtype: 'float16', compute_dtype: 'float32', ir_version: 8})
        expect(m.opset).toEqual({'ai.onnx': 17, 'com.microsoft': 1})
        expect(m.mask).toEqual({visible: 0, masked: -10000})
        expect(m.inputs).toEqual(io.inputs)
        expect(m.outputs).toEqual(io.outputs)
        const g = decodeModel(readFileSync(join(out(), 'model.onnx'))).graph!
        const shapeOf = (v: ValueInfoProto) => v.type!.tensorType!.shape!.dim!.map(d => d.dimParam || Number(d.dimValue))
        const elem = {int64: ELEM.INT64, float32: ELEM.FLOAT}
        expect(g.input!.map(v => ({name: v.name, dtype: v.type!.tensorType!.elemType, shape: shapeOf(v)})))
          .toEqual(io.inputs.map(t => ({name: t.name, dtype: elem[t.dtype as 'int64' | 'float32'], shape: t.shape})))
        expect(g.output!.map(v => ({name: v.name, dtype: v.type!.tensorType!.elemType, shape: shapeOf(v)})))
          .toEqual(io.outputs.map(t => ({name: t.name, dtype: elem[t.dtype as 'int64' | 'float32'], shape: t.shape})))
      })

      it('keeps weights only in model.onnx.data, aligned, covering every byte the initializers name', () => {
        const modelBytes = readFileSync(join(out(), 'model.onnx'))
        const dataSize = statSync(join(out(), 'model.onnx.data')).size
        expect(modelBytes.length).toBeLessThan(64 * 1024) // metadata only
        const g = decodeModel(modelBytes).graph!
        const ranges = g.initializer!.map(t => ({t, r: externalRangeOf(t)})).filter(x => x.r)
        expect(ranges.length).toBeGreaterThan(10)
        let end = 0
        for (const {t, r} of ranges.sort((a, b) => a.r!.offset - b.r!.offset)) {
          expect(r!.location).toBe('model.onnx.data')
          expect(r!.offset % (r!.length >= LARGE_TENSOR ? LARGE_ALIGN : SMALL_ALIGN), t.name!).toBe(0)
          expect(r!.offset).toBeGreaterThanOrEqual(end)
          end = r!.offset + r!.length
        }
        expect(end).toBe(dataSize)
        // Checkpoint tensors keep their names and are stored as float16; rotary tables are float32.
        const emb = g.initializer!.find(t => t.name === (arch === 'chatglm-6b' ? 'transformer.word_embeddings.weight' : 'transformer.embedding.word_embeddings.weight'))!
        expect(emb.dataType).toBe(ELEM.FLOAT16)
        expect(g.initializer!.find(t => t.name === 'rotary.cos_cache')!.dataType).toBe(ELEM.FLOAT)
        // Contrib ops used, all com.microsoft opset 1.
        const ms = new Set(g.node!.filter(n => n.domain === 'com.microsoft').map(n => n.opType))
        expect([...ms].sort()).toEqual(arch === 'chatglm-6b'
          ? ['FastGelu', 'FusedMatMul', 'RotaryEmbedding', 'SkipLayerNormalization']
          : ['FusedMatMul', 'QuickGelu', 'RotaryEmbedding', 'SkipSimplifiedLayerNormalization'])
      })

      it('passes the onnx checker (python3-onnx)', ctx => {
        const c = onnxChecker(join(out(), 'model.onnx'))
        if (!c) {
          console.warn('onnx checker: python3-onnx is not installed (.ci/run installs it); skipped')
          ctx.skip()
          return
        }
        expect(c.ok, c.message).toBe(true)
      })

      it('--dtype f32 stores float32 and gives the same logits (f16 weights are cast to f32 at load)', async () => {
        const f32 = join(work, `${arch}-onnx-f32`)
        const r = exportOnnx(models[arch], f32, ['--dtype', 'f32'])
        expect(r.code, r.stderr).toBe(0)
        expect(r.json.dtype).toBe('f32')
        expect(statSync(join(f32, 'model.onnx.data')).size).toBeGreaterThan(1.9 * statSync(join(out(), 'model.onnx.data')).size)
        const c = onnxChecker(join(f32, 'model.onnx'))
        if (c) expect(c.ok, c.message).toBe(true)
        const v1 = arch === 'chatglm-6b'
        const input = v1
          ? {ids: [20, 21, 22, 130001, 130004], positions: [0, 1, 2, 3, 3], blockPositions: [0, 0, 0, 0, 1], bidirectional: 4, logits: 'all' as const}
          : {ids: [64790, 64792, 20, 21, 22], positions: [0, 1, 2, 3, 4], bidirectional: 0, logits: 'all' as const}
        const logits: Float32Array[] = []
        for (const dir of [out(), f32]) {
          const b = await OnnxCpuBackend.load(dir, {threads: 1})
          logits.push((await b.forward(input)).logits)
          await b.dispose()
        }
        let maxDiff = 0
        for (let i = 0; i < logits[0].length; i++) maxDiff = Math.max(maxDiff, Math.abs(logits[0][i] - logits[1][i]))
        expect(maxDiff).toBeLessThan(1e-6)
      })
    })
  }

  it('exports from glmtool safetensors output too, to the same graph and bytes', () => {
    const st = join(work, 'v2-st')
    expect(glmtool(['convert', models['chatglm2-6b'], '--to', 'safetensors', '--out', st]).code).toBe(0)
    const r = exportOnnx(st, join(work, 'v2-st-onnx'))
    expect(r.code, r.stderr).toBe(0)
    expect(readFileSync(join(work, 'v2-st-onnx', 'model.onnx'))).toEqual(readFileSync(join(work, 'chatglm2-6b-onnx', 'model.onnx')))
    expect(readFileSync(join(work, 'v2-st-onnx', 'model.onnx.data')).equals(readFileSync(join(work, 'chatglm2-6b-onnx', 'model.onnx.data')))).toBe(true)
  })

  it('defaults --out to <model>-onnx', () => {
    const model = join(work, 'named')
    cpSync(models['chatglm2-6b'], model, {recursive: true})
    const r = glmtool(['convert', model, '--to', 'onnx'])
    expect(r.code, r.stderr).toBe(0)
    expect(existsSync(join(`${model}-onnx`, 'model.onnx'))).toBe(true)
  })

  it('an incomplete model fails with one line naming the missing tensor and leaves no output', async () => {
    const broken = join(work, 'incomplete')
    const src = await openModel(models['chatglm2-6b'])
    try {
      mkdirSync(broken)
      await writeTorchCheckpoint(join(broken, TORCH_SINGLE), src.tensors.filter(t => t.name !== 'transformer.encoder.layers.1.self_attention.dense.weight'))
    } finally {
      await src.close()
    }
    cpSync(join(models['chatglm2-6b'], 'config.json'), join(broken, 'config.json'))
    const out = join(work, 'incomplete-onnx')
    const r = glmtool(['convert', broken, '--to', 'onnx', '--out', out])
    expect(r.code).toBe(1)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toMatch(/not a complete chatglm2-6b checkpoint: missing 1 tensor\(s\): transformer\.encoder\.layers\.1\.self_attention\.dense\.weight/)
    expect(existsSync(out)).toBe(false)
    expect(readdirSync(work).filter(f => f.includes('glmtool-tmp'))).toEqual([])
  })

  it('refuses an existing output without --force and replaces it with --force', () => {
    const out = join(work, 'chatglm-6b-onnx')
    const before = statSync(join(out, 'model.onnx.data')).mtimeMs
    const r = glmtool(['convert', models['chatglm-6b'], '--to', 'onnx', '--out', out])
    expect(r.code).toBe(1)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toMatch(/already exists; pass --force/)
    expect(statSync(join(out, 'model.onnx.data')).mtimeMs).toBe(before)
    const r2 = glmtool(['convert', models['chatglm-6b'], '--to', 'onnx', '--out', out, '--force', '--dtype', 'f16'])
    expect(r2.code, r2.stderr).toBe(0)
    expect(existsSync(join(out, 'model.onnx'))).toBe(true)
  })

  it('refuses a dtype ONNX export does not store', () => {
    const r = glmtool(['convert', models['chatglm-6b'], '--to', 'onnx', '--out', join(work, 'bf16-onnx'), '--dtype', 'bf16'])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/--to onnx stores weights as f16 or f32, not bf16/)
    expect(existsSync(join(work, 'bf16-onnx'))).toBe(false)
  })
})

describe('float16 storage of a weight onnxruntime would not fold', () => {
  it('is float32 past the 1 GiB folding limit (ChatGLM-6B\'s output layer), float16 below it', async () => {
    const {wholeWeightStorage, ORT_FOLD_LIMIT} = await import('../src/pipelines/export-onnx.js')
    expect(ORT_FOLD_LIMIT).toBe(2 ** 30)
    expect(wholeWeightStorage([130528, 4096], 'F16')).toBe('F32')  // ChatGLM-6B lm_head: 2.14 GB as float32
    expect(wholeWeightStorage([65024, 4096], 'F16')).toBe('F16')   // ChatGLM2-6B lm_head: 1.07e9 bytes, just under
    expect(wholeWeightStorage([2 ** 28, 1], 'F16')).toBe('F16')    // exactly the limit folds
    expect(wholeWeightStorage([2 ** 28 + 1, 1], 'F16')).toBe('F32')
    expect(wholeWeightStorage([130528, 4096], 'F32')).toBe('F32')
  })
})
