/**
 * quantize --format onnx hands its quantized tensors straight to the ONNX exporter (a ModelSource
 * whose tensors are computed as they are read; no safetensors copy written and re-read). Its
 * model.onnx and model.onnx.data must be the bytes of the way it worked before: quantize to
 * safetensors, then export that directory (`glmtool convert --to onnx`, exportOnnx), for RTN and
 * calibrated weights of both generations, embeddings and output layer quantized or not. The
 * per-layer report must not change either, and --evaluate (which still needs a safetensors copy
 * in scratch) and --format both must give the same graph.
 */
import {existsSync, mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {exportOnnx} from '../src/pipelines/export-onnx.js'
import {quantizeModel, type QuantizeOptions} from '../src/pipelines/quantize-model.js'
import {glmtool} from './helpers/cli.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-qonnx-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const models = {v1: join(work, 'v1'), v2: join(work, 'v2')}

beforeAll(() => {
  for (const [arch, out] of [['chatglm-6b', models.v1], ['chatglm2-6b', models.v2]] as const) {
    const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', out, '--outliers', '--seed', '3'])
    if (r.code !== 0) throw new Error(r.stderr)
  }
})

const opts = (input: string, out: string, extra: Partial<QuantizeOptions>): QuantizeOptions => ({
  input, out, bits: 4, groupSize: 0, method: 'rtn', lmHead: false, embeddings: false, format: 'onnx',
  force: false, calibSamples: 4, seqLen: 32, evaluate: 'off', ...extra,
})

const bytes = (dir: string, f: string) => readFileSync(join(dir, f))

function expectSameGraph(got: string, want: string): void {
  for (const f of ['model.onnx', 'model.onnx.data', 'glmtool-onnx.json']) {
    const a = bytes(got, f)
    const b = bytes(want, f)
    expect(a.length, `${f} size`).toBe(b.length)
    expect(a.equals(b), `${f} bytes`).toBe(true)
  }
}

describe('quantize --format onnx, streamed into the exporter', () => {
  const cases: {name: string, gen: 'v1' | 'v2', extra: Partial<QuantizeOptions>}[] = [
    {name: 'v2 RTN int4 per channel', gen: 'v2', extra: {}},
    {name: 'v2 RTN int8 groups of 32, embeddings and output layer', gen: 'v2', extra: {bits: 8, groupSize: 32, embeddings: true, lmHead: true}},
    {name: 'v1 RTN int4 groups of 32, embeddings', gen: 'v1', extra: {groupSize: 32, embeddings: true}},
    {name: 'v2 calibrated int4, output layer', gen: 'v2', extra: {method: 'calibrated', lmHead: true}},
    {name: 'v1 calibrated int8 groups of 32', gen: 'v1', extra: {method: 'calibrated', bits: 8, groupSize: 32}},
  ]
  cases.forEach((c, i) => {
    it(`${c.name}: the bytes of quantize to safetensors + convert --to onnx`, async () => {
      const streamed = join(work, `streamed-${i}`)
      const st = join(work, `st-${i}`)
      const old = join(work, `old-${i}`)
      const r = await quantizeModel(opts(models[c.gen], streamed, c.extra))
      const s = await quantizeModel(opts(models[c.gen], st, {...c.extra, format: 'safetensors'}))
      const x = await exportOnnx({input: st, out: old, force: false})
      expectSameGraph(streamed, old)
      // No safetensors were written, not even hidden ones left behind.
      expect(readdirSync(streamed).filter(f => f.endsWith('.safetensors') || f.startsWith('.'))).toEqual([])
      expect(r.files).toEqual(readdirSync(streamed).sort())
      // The same weights, so the same report and sizes.
      expect(r.layers).toEqual(s.layers)
      expect(r.layers.length).toBe(r.quantized)
      expect(r.summary).toEqual(s.summary)
      expect(r.bytes).toBe(s.bytes)
      expect(r.onnxBytes).toBe(x.bytes)
    })
  })

  it('--evaluate on (safetensors candidate in scratch) and --format both give the same graph', async () => {
    const extra = {method: 'calibrated' as const, groupSize: 32}
    const streamed = join(work, 'eval-streamed')
    const evaluated = join(work, 'eval-on')
    const both = join(work, 'eval-both')
    const a = await quantizeModel(opts(models.v2, streamed, extra))
    const b = await quantizeModel(opts(models.v2, evaluated, {...extra, evaluate: 'on'}))
    await quantizeModel(opts(models.v2, both, {...extra, format: 'both'}))
    expectSameGraph(evaluated, streamed)
    expectSameGraph(both, streamed)
    expect(b.endToEnd && 'models' in b.endToEnd ? b.endToEnd.models.map(m => m.label) : b.endToEnd).toEqual(['rtn', 'calibrated'])
    expect(a.endToEnd).toEqual({skipped: '--evaluate off'})
    expect(readdirSync(evaluated).sort()).toEqual(readdirSync(streamed).sort())
    expect(existsSync(join(evaluated, 'model.safetensors'))).toBe(false)
  })
})
