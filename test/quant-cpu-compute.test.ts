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
import {OnnxCpuBackend} from '../src/runtime/backends/onnx-cpu.js'
import {glmtool} from './helpers/cli.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-cpu-compute-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

function accuracyLevels(dir: string): number[] {
  const m = decodeModel(readFileSync(join(dir, 'model.onnx')))
  return m.graph!.node!.filter(n => n.opType === 'MatMulNBits').map(n => Number(n.attribute!.find(a => a.name === 'accuracy_level')!.i))
}

/** Next-token logits at every prompt row and `steps` greedy steps (teacher-forced on `forced` when given), [rows, vocab]. */
async function logitRows(dir: string, ids: number[], forced: number[] | undefined, steps: number): Promise<{logits: Float32Array, rows: number, vocab: number, tokens: number[]}> {
  const b = await OnnxCpuBackend.load(dir, {threads: 1})
  const parts: Float32Array[] = []
  const tokens: number[] = []
  try {
    let o = await b.forward({ids, positions: ids.map((_, i) => i), bidirectional: 0, logits: 'all'})
    parts.push(o.logits.slice())
    for (let k = 0; k < steps; k++) {
      const last = o.logits.subarray(o.logits.length - o.vocab)
      const next = forced ? forced[k] : last.reduce((best, v, i) => (v > last[best] ? i : best), 0)
      tokens.push(next)
      o = await b.forward({ids: [next], positions: [ids.length + k], bidirectional: 0, logits: 'last'})
      parts.push(o.logits.slice())
    }
    const logits = new Float32Array(parts.reduce((a, p) => a + p.length, 0))
    let off = 0
    for (const p of parts) {
      logits.set(p, off)
      off += p.length
    }
    return {logits, rows: logits.length / o.vocab, vocab: o.vocab, tokens}
  } finally {
    await b.dispose()
  }
}

/** The largest change of a log-probability between two [rows, vocab] logit sets. */
function maxLogProbChange(a: Float32Array, b: Float32Array, vocab: number): number {
  const lse = (x: Float32Array) => {
    let m = -Infinity
    for (const v of x) m = Math.max(m, v)
    let z = 0
    for (const v of x) z += Math.exp(v - m)
    return m + Math.log(z)
  }
  let moved = 0
  for (let r = 0; r < a.length / vocab; r++) {
    const x = a.subarray(r * vocab, (r + 1) * vocab)
    const y = b.subarray(r * vocab, (r + 1) * vocab)
    const lx = lse(x)
    const ly = lse(y)
    for (let i = 0; i < vocab; i++) moved = Math.max(moved, Math.abs((x[i] - lx) - (y[i] - ly)))
  }
  return moved
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
    // The weights are the same bytes: only the compute differs.
    expect(readFileSync(join(dirs.int8, 'model.onnx.data')).equals(readFileSync(join(dirs.exact, 'model.onnx.data')))).toBe(true)

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
