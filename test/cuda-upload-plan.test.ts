/**
 * Host side of the CUDA engine's quantized loading (issue 12), without a GPU: which slot every
 * tensor of a `glmtool quantize` output goes to and how many bytes it carries. Quantized linears
 * must travel as int8 bytes (one per stored element: never widened to fp16), scales as fp16, the
 * rest as the model's float type; the expected sizes come from the float model's own [out, in]
 * shapes and the published layout (int8 [out, in], int4 [out, in/2], scales [out] or
 * [out, in/g]), not from the planner. A quantized output layer is refused with the tensor and the
 * file named; a quantized embedding table (`--skip lm_head`) travels dequantized, as the model's
 * float type, checked here value by value against fp16(q * scale) computed with
 * @petamoriken/float16 from the stored integers.
 */
import {readFileSync, writeFileSync, mkdtempSync, rmSync} from 'node:fs'
import {getFloat16, setFloat16} from '@petamoriken/float16'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {readTensor} from '../src/formats/tensor.js'
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

  it.each([['chatglm2-6b', 8, 0], ['chatglm-6b', 4, 32]])('%s int%i group %i with quantized embeddings: the table travels as fp16(q * scale), its scale consumed', async (arch, bits, group) => {
    const {float, quant} = make(arch, bits, group, ['--skip', 'lm_head'])
    const fm = await openModel(float)
    const m = await openModel(quant)
    try {
      const plan = planCudaUpload(quant, m.arch!, m.config!, m.tensors, Number(m.config!.num_layers))
      expect(plan.quant).toMatchObject({bits, groupSize: group, embeddings: true, lmHead: false})
      const name = m.arch!.quantizable.embeddings
      const [V, H] = fm.tensors.find(t => t.name === name)!.shape
      const p = plan.placements.find(x => x.tensor.name === name)!
      expect(p.kind).toBe(K.W_EMBED)
      expect([p.to, p.tensor.dtype, p.bytes]).toEqual(['F16', 'F16', V * H * 2])
      expect(plan.placements.some(x => x.tensor.name === `${name}_scale`)).toBe(false)
      // every tensor but the consumed scale is placed
      expect(plan.placements.length).toBe(m.tensors.filter(t => !t.name.endsWith('inv_freq')).length - 1)
      // the values: q from the stored bytes (int4: column 2j in the high nibble), scale per row / group
      const stored = await readTensor(m.tensors.find(t => t.name === name)!)
      const scaleT = m.tensors.find(t => t.name === `${name}_scale`)!
      expect(scaleT.dtype).toBe('F16')
      const sb = await readTensor(scaleT)
      const groups = group ? H / group : 1
      const q = (r: number, c: number): number => {
        if (bits === 8) return (stored[r * H + c] << 24) >> 24
        const byte = stored[r * (H / 2) + (c >> 1)]
        return ((c & 1 ? byte << 4 : byte) << 24) >> 28
      }
      const got: Buffer[] = []
      for await (const c of p.tensor.chunks(4096)) got.push(Buffer.from(c))  // small pieces: many piece edges
      const all = Buffer.concat(got)
      expect(all.length).toBe(V * H * 2)
      // rows sampled (the library's fp16 rounding is slow per element): the first and last pieces'
      // rows and every 37th
      const sv = new DataView(sb.buffer, sb.byteOffset, sb.length)
      const want = new DataView(new ArrayBuffer(2 * H))
      let rowsChecked = 0
      for (let r = 0; r < V; r++) {
        if (!(r < 70 || r >= V - 70 || r % 37 === 0)) continue
        for (let c = 0; c < H; c++) setFloat16(want, 2 * c, q(r, c) * getFloat16(sv, 2 * (r * groups + Math.floor(c / (group || H))), true), true)
        expect(all.subarray(2 * r * H, 2 * (r + 1) * H).equals(Buffer.from(want.buffer)), `row ${r}`).toBe(true)
        rowsChecked++
      }
      expect(rowsChecked).toBeGreaterThan(V / 40)
      // and near the float table it came from (a wrong scale or nibble order would not be)
      const f = await readTensor(fm.tensors.find(t => t.name === name)!)
      expect(fm.tensors.find(t => t.name === name)!.dtype).toBe('F16')  // synth writes fp16
      let err = 0, mag = 0
      const fv = new DataView(f.buffer, f.byteOffset, f.length), gv = new DataView(all.buffer, all.byteOffset, all.length)
      for (let i = 0; i < V * H; i += 7) {
        const a = getFloat16(fv, 2 * i, true), b = getFloat16(gv, 2 * i, true)
        err = Math.max(err, Math.abs(a - b))
        mag = Math.max(mag, Math.abs(a))
      }
      expect(err / mag).toBeLessThan(bits === 8 ? 0.01 : 0.15)
    } finally {
      await m.close()
      await fm.close()
    }
  }, 60_000)

  it('merged P-Tuning prefixes on a quantized model, merged before or after quantize: the prefix cache as fp16', async () => {
    const adapter = join(import.meta.dirname, 'fixtures/adapters/ptuning/v2-projection')
    const {float, quant} = make('chatglm2-6b', 4, 0)
    const merged = join(work, 'v2-merged'), mergedQ = join(work, 'v2-merged-q4'), qMerged = join(work, 'v2-q4-merged')
    for (const args of [['merge-adapter', float, '--adapter', adapter, '--out', merged], ['quantize', merged, '--bits', '4', '--out', mergedQ, '--evaluate', 'off'],
      ['merge-adapter', quant, '--adapter', adapter, '--out', qMerged]]) {
      const r = glmtool([...args, '--force'])
      expect(r.code, r.stderr).toBe(0)
    }
    for (const dir of [mergedQ, qMerged]) {
      const m = await openModel(dir)
      try {
        const plan = planCudaUpload(dir, m.arch!, m.config!, m.tensors, Number(m.config!.num_layers))
        expect(plan.quant, dir).toMatchObject({bits: 4})
        expect(plan.prefixLength, dir).toBe(3)  // the fixture's pre_seq_len
        const prefix = plan.placements.filter(p => p.kind === K.PREFIX_K || p.kind === K.PREFIX_V)
        expect(prefix.length, dir).toBe(2 * Number(m.config!.num_layers))
        for (const p of prefix) expect([p.to, p.bytes], p.tensor.name).toEqual(['F16', 2 * p.tensor.shape.reduce((a, b) => a * b, 1)])
      } finally {
        await m.close()
      }
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
