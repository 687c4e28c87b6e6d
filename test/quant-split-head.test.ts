/**
 * The float output layer of an int8-compute quantized ONNX graph as two 8-bit terms (issue 13:
 * onnxruntime's CPU kernels read a float16 layer as float32, twice its bytes):
 * - the math (quant/split-int8.ts): codes in range, the error bound it states, exact zeros;
 * - the export: two MatMulNBits on the output layer (no float copy of it), the manifest says so,
 *   and the logits stay within float16-level distance of the same graph with the float layer.
 */
import {mkdtempSync, readFileSync, rmSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {decodeModel} from '../src/formats/onnx/onnx-builder.js'
import {exportOnnx} from '../src/pipelines/export-onnx.js'
import {KlAccumulator} from '../src/pipelines/quantize/evaluate.js'
import {splitInt8} from '../src/quant/split-int8.js'
import {glmtool} from './helpers/cli.js'
import {logitRows, maxLogProbChange} from './helpers/onnx-logits.js'
import {gaussian} from './quant-helpers.js'

describe('splitInt8: a float matrix as two 8-bit terms', () => {
  const rows = 16
  const K = 256
  const block = 32
  const g = gaussian(7)
  // float16-representable values of a trained layer's spread, with an outlier per row
  const w = new Float32Array(rows * K)
  for (let i = 0; i < w.length; i++) w[i] = Math.fround(g() * 0.02 * (i % 97 === 0 ? 20 : 1))
  w.fill(0, 3 * K, 3 * K + block)  // a block of zeros

  it('reconstructs every block within max|w| / 64516, codes in -127..127', () => {
    const s = splitInt8(w, rows, K, block)
    let worst = 0
    let worstAbs = 0
    for (let b = 0; b < rows * K / block; b++) {
      let m = 0
      for (let i = 0; i < block; i++) m = Math.max(m, Math.abs(w[b * block + i]))
      for (let i = 0; i < block; i++) {
        const j = b * block + i
        for (const q of s.q) expect(Math.abs(q[j])).toBeLessThanOrEqual(127)
        const back = s.q[0][j] * s.scales[0][b] + s.q[1][j] * s.scales[1][b]
        const err = Math.abs(back - w[j])
        worstAbs = Math.max(worstAbs, err)
        if (m > 0) worst = Math.max(worst, err / m)
        else expect(err).toBe(0)
      }
    }
    expect(worst).toBeLessThanOrEqual(1 / 64516 * 1.001)
    // the second term is what makes it that close: the first alone is off by up to 1/254
    let firstWorst = 0
    for (let j = 0; j < w.length; j++) firstWorst = Math.max(firstWorst, Math.abs(s.q[0][j] * s.scales[0][Math.floor(j / block)] - w[j]))
    expect(firstWorst).toBeGreaterThan(50 * worstAbs)
  })

  it('zero blocks give zero codes and scales', () => {
    const s = splitInt8(w, rows, K, block)
    expect(s.scales[0][3 * K / block]).toBe(0)
    expect(s.scales[1][3 * K / block]).toBe(0)
    expect(Array.from(s.q[0].subarray(3 * K, 3 * K + block)).every(v => v === 0)).toBe(true)
  })

  it('terms 1 gives the same first term and no second', () => {
    const s = splitInt8(w, rows, K, block)
    const one = splitInt8(w, rows, K, block, 1)
    expect(one.q[0]).toEqual(s.q[0])
    expect(one.scales[0]).toEqual(s.scales[0])
    expect(one.scales[1].every(v => v === 0)).toBe(true)
  })

  it('refuses a block that does not divide the row', () => {
    expect(() => splitInt8(w, rows, K, 48)).toThrow(/block 48 does not divide the row width 256/)
    expect(() => splitInt8(w.subarray(1), rows, K, block)).toThrow(/values for 16 x 256/)
  })
})

const work = mkdtempSync(join(tmpdir(), 'glmtool-split-head-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

function opsOn(dir: string, initializerPart: string): string[] {
  const m = decodeModel(readFileSync(join(dir, 'model.onnx')))
  return m.graph!.node!.filter(n => (n.input ?? []).some(i => i.includes(initializerPart))).map(n => n.opType ?? '')
}

describe('quantize --format both (int8 compute): the output layer as two 8-bit MatMulNBits', () => {
  it('int4 ChatGLM2-6B small: two terms, the manifest says so, logits within float16-level KL of the float layer', async () => {
    const src = join(work, 'src')
    expect(glmtool(['synth', '--arch', 'chatglm2-6b', '--size', 'small', '--out', src]).code).toBe(0)
    const q = join(work, 'q4')
    const r = glmtool(['quantize', src, '--bits', '4', '--format', 'both', '--evaluate', 'off', '--out', q])
    expect(r.code, r.stderr).toBe(0)
    const manifest = JSON.parse(readFileSync(join(q, 'glmtool-onnx.json'), 'utf8'))
    expect(manifest.quantization.cpu_compute).toBe('int8')
    expect(manifest.quantization.lm_head_compute).toEqual({terms: 2, bits: 8, block_size: 32})
    const head = 'transformer.output_layer.weight'
    expect(opsOn(q, `${head}.split0.`)).toEqual(['MatMulNBits'])
    expect(opsOn(q, `${head}.split1.`)).toEqual(['MatMulNBits'])
    // A/B: the same quantized checkpoint exported with the float layer
    const plain = join(work, 'q4-float-head')
    await exportOnnx({input: q, out: plain, force: false, cpuCompute: 'int8', splitHead: false})
    expect(JSON.parse(readFileSync(join(plain, 'glmtool-onnx.json'), 'utf8')).quantization.lm_head_compute).toBeUndefined()
    expect(opsOn(plain, `${head}.split`)).toEqual([])
    // 65,024 x 512: the file holds the float layer as float16 (onnxruntime expands it to float32
    // at load: 133 MB resident), the split as 2 x 1 byte + 2 float32 scales per 32 columns
    const extra = statSync(join(q, 'model.onnx.data')).size - statSync(join(plain, 'model.onnx.data')).size
    // (large initializers start at 64 KiB boundaries: the split has two more of them)
    expect(extra).toBeGreaterThanOrEqual(2 * 65024 * (512 / 32) * 4)
    expect(extra).toBeLessThanOrEqual(2 * 65024 * (512 / 32) * 4 + 2 * 64 * 1024)

    const ids = [64790, 64792, ...Array.from({length: 30}, (_, i) => 1000 + ((i * 7919) % 30000))]
    const float = await logitRows(plain, ids, undefined, 16)
    const split = await logitRows(q, ids, float.tokens, 16)
    const acc = new KlAccumulator('split', float.vocab)
    acc.add(float.logits, split.logits, float.rows)
    const {meanKl: kl, top1} = acc.result()
    const moved = maxLogProbChange(float.logits, split.logits, float.vocab)
    console.log(`split output layer vs float32, INT4 small v2 (int8 compute): mean KL ${kl.toExponential(3)}, top-1 ${top1.toFixed(3)} over ${float.rows} rows, max |dlogp| ${moved.toExponential(2)}`)
    expect(moved).toBeGreaterThan(0)  // it is a different computation (int8 activations on the layer)
    expect(kl).toBeLessThan(1e-4)
    expect(top1).toBeGreaterThan(0.95)
  }, 300_000)
})
