/**
 * quantize --cpu-compute int8 (issue 13): the ONNX output's MatMulNBits nodes compute with int8
 * activations (accuracy_level 4, MLAS's integer kernels) instead of float32 ones; the manifest
 * says which. The numerics change, so its cost is measured against the exact graph of the same
 * quantized weights on the CPU runtime: mean KL and top-1 agreement of the next-token
 * distributions over a prompt and greedy steps (bench/RESULTS.md records the figures).
 */
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {decodeModel} from '../src/formats/onnx/onnx-builder.js'
import {KlAccumulator} from '../src/pipelines/quantize/evaluate.js'
import {glmtool} from './helpers/cli.js'
import {logitRows, maxLogProbChange} from './helpers/onnx-logits.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-cpu-compute-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

function accuracyLevels(dir: string): number[] {
  const m = decodeModel(readFileSync(join(dir, 'model.onnx')))
  return m.graph!.node!.filter(n => n.opType === 'MatMulNBits').map(n => Number(n.attribute!.find(a => a.name === 'accuracy_level')!.i))
}

describe('quantize --cpu-compute int8 (the default) and exact', () => {
  it.each([['8'], ['4']])('int%s: accuracy_level 4 in the graph and the manifest; KL and top-1 against the exact graph', async bits => {
    const src = join(work, `m${bits}`)
    expect(glmtool(['synth', '--arch', 'chatglm2-6b', '--size', 'small', '--out', src]).code).toBe(0)
    const dirs: Record<string, string> = {}
    // int8 is the default: the flag is given only for exact.
    for (const c of ['exact', 'int8']) {
      dirs[c] = join(work, `q${bits}-${c}`)
      const r = glmtool(['quantize', src, '--bits', bits, '--format', 'onnx', ...(c === 'exact' ? ['--cpu-compute', c] : []), '--evaluate', 'off', '--out', dirs[c]])
      expect(r.code, r.stderr).toBe(0)
      expect(JSON.parse(readFileSync(join(dirs[c], 'glmtool-onnx.json'), 'utf8')).quantization.cpu_compute).toBe(c)
    }
    expect(new Set(accuracyLevels(dirs.exact))).toEqual(new Set([0]))
    expect(new Set(accuracyLevels(dirs.int8))).toEqual(new Set([4]))
    // The same quantized linears; int8 compute also holds the float output layer as two 8-bit
    // terms (test/quant-split-head.test.ts), exact keeps it a float32 Gemm.
    expect(JSON.parse(readFileSync(join(dirs.int8, 'glmtool-onnx.json'), 'utf8')).quantization.lm_head_compute).toEqual({terms: 2, bits: 8, block_size: 32})
    expect(JSON.parse(readFileSync(join(dirs.exact, 'glmtool-onnx.json'), 'utf8')).quantization.lm_head_compute).toBeUndefined()

    const ids = [64790, 64792, ...Array.from({length: 30}, (_, i) => 1000 + ((i * 7919) % 30000))]
    const exact = await logitRows(dirs.exact, ids, undefined, 16)
    const int8 = await logitRows(dirs.int8, ids, exact.tokens, 16)
    // The same KL / top-1 as quantize's end-to-end evaluation (pipelines/quantize/evaluate.ts).
    const acc = new KlAccumulator('int8', exact.vocab)
    acc.add(exact.logits, int8.logits, exact.rows)
    const {meanKl: kl, top1} = acc.result()
    const moved = maxLogProbChange(exact.logits, int8.logits, exact.vocab)
    console.log(`cpu-compute int8 vs exact, INT${bits} small v2: mean KL ${kl.toExponential(3)}, top-1 ${top1.toFixed(3)} over ${exact.rows} rows, max |dlogp| ${moved.toExponential(2)}`)
    // It computes differently (or the flag did nothing), and stays close to the exact graph.
    expect(moved).toBeGreaterThan(1e-4)
    expect(kl).toBeLessThan(2e-2)
    expect(top1).toBeGreaterThan(0.8)
  }, 300_000)

  it('is refused where there is no ONNX output', () => {
    const r = glmtool(['quantize', join(work, 'none'), '--bits', '8', '--cpu-compute', 'int8', '--out', join(work, 'x')])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/--cpu-compute sets how the ONNX output computes; give --format onnx or both/)
  })
})
