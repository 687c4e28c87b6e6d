/**
 * Host side of the CUDA engine's quantized loading (issue 12), without a GPU: which slot every
 * tensor of a `glmtool quantize` output goes to and how many bytes it carries. Quantized linears
 * must travel as int8 bytes (one per stored element: never widened to fp16), scales as fp16, the
 * rest as the model's float type; the expected sizes come from the float model's own [out, in]
 * shapes and the published layout (int8 [out, in], int4 [out, in/2], scales [out] or
 * [out, in/g]), not from the planner. Quantized output layers and embeddings are refused with the
 * tensor and the file named.
 */
import {readFileSync, writeFileSync, mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {openModel} from '../src/pipelines/model-dir.js'
import {planCudaUpload} from '../src/runtime/backends/cuda.js'
import {WEIGHT_KINDS as K} from '../src/runtime/backends/cuda-addon.js'
import {glmtool} from './helpers/cli.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-cuda-plan-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

const LINEAR = /\.(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.weight$/

function make(arch: string, bits: number, group: number, extra: string[] = []): {float: string, quant: string} {
  const float = join(work, `${arch}-float`)
  const quant = join(work, `${arch}-q${bits}g${group}${extra.length ? '-x' : ''}`)
  if (glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', float, '--force']).code !== 0) throw new Error('synth failed')
  const r = glmtool(['quantize', float, '--bits', String(bits), '--group-size', String(group), '--out', quant, '--force', '--evaluate', 'off', ...extra])
  if (r.code !== 0) throw new Error(r.stderr)
  return {float, quant}
}

describe('CUDA upload plan of quantized checkpoints', () => {
  it.each([
    ['chatglm-6b', 4, 0], ['chatglm-6b', 8, 32], ['chatglm2-6b', 4, 32], ['chatglm2-6b', 8, 0],
  ])('%s int%i group %i: int8 bytes as stored, fp16 scales, every tensor placed', async (arch, bits, group) => {
    const {float, quant} = make(arch, bits, group)
    const fm = await openModel(float)
    const shapes = new Map(fm.tensors.map(t => [t.name, t.shape]))
    await fm.close()
    const m = await openModel(quant)
    try {
      const layers = Number(m.config!.num_layers)
      const plan = planCudaUpload(quant, m.arch!, m.config!, m.tensors, layers)
      expect(plan.quant).toMatchObject({bits, groupSize: group})
      expect(plan.dtype).toBe('F16')
      const byName = new Map(plan.placements.map(p => [p.tensor.name, p]))
      let linears = 0
      for (const [name, shape] of shapes) {
        if (name.endsWith('inv_freq')) continue
        if (LINEAR.test(name)) {
          const [out, inp] = shape
          const w = byName.get(name)!
          expect(w.to, name).toBe('I8')
          expect(w.bytes, name).toBe(out * (bits === 8 ? inp : inp / 2))
          const s = byName.get(`${name}_scale`)!
          expect(s.to, name).toBe('F16')
          expect(s.bytes, name).toBe(2 * out * (group ? inp / group : 1))
          expect(s.kind - K.S_QKV, name).toBe(([K.W_QKV, K.W_DENSE, K.W_UP, K.W_DOWN] as number[]).indexOf(w.kind))
          linears++
        } else {
          const p = byName.get(name)!
          expect(p, name).toBeDefined()
          expect(p.to, name).toBe('F16')
          expect(p.bytes, name).toBe(2 * shape.reduce((a, b) => a * b, 1))
        }
      }
      expect(linears).toBe(4 * layers)
      expect(plan.placements.length).toBe(m.tensors.filter(t => !t.name.endsWith('inv_freq')).length)
    } finally {
      await m.close()
    }
  }, 60_000)

  it('refuses a quantized output layer, naming the tensor and the file', async () => {
    const {quant} = make('chatglm2-6b', 8, 0, ['--skip', 'embeddings'])
    const m = await openModel(quant)
    try {
      expect(() => planCudaUpload(quant, m.arch!, m.config!, m.tensors, Number(m.config!.num_layers)))
        .toThrow(/model.*\.safetensors: tensor transformer\.output_layer\.weight \(the output layer\) is quantized/)
    } finally {
      await m.close()
    }
  }, 60_000)

  it('reads the published layout (no glmtool_quantization key) and refuses quantization_embeddings', async () => {
    const {quant} = make('chatglm-6b', 4, 0)
    const cfgPath = join(quant, 'config.json')
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>
    delete cfg.glmtool_quantization
    writeFileSync(cfgPath, JSON.stringify(cfg))
    let m = await openModel(quant)
    try {
      const plan = planCudaUpload(quant, m.arch!, m.config!, m.tensors, Number(m.config!.num_layers))
      expect(plan.quant).toMatchObject({bits: 4, groupSize: 0, lmHead: false, embeddings: false})
    } finally {
      await m.close()
    }
    writeFileSync(cfgPath, JSON.stringify({...cfg, quantization_embeddings: true}))
    m = await openModel(quant)
    try {
      expect(() => planCudaUpload(quant, m.arch!, m.config!, m.tensors, Number(m.config!.num_layers))).toThrow(/config\.json: quantization_embeddings true/)
    } finally {
      await m.close()
    }
  }, 60_000)
})
