/** Logits of an ONNX export on the CPU runtime, and how far two sets of them are apart (quantization tests). */
import {OnnxCpuBackend} from '../../src/runtime/backends/onnx-cpu.js'

/** Next-token logits at every prompt row and `steps` greedy steps (teacher-forced on `forced` when given), [rows, vocab]. */
export async function logitRows(dir: string, ids: number[], forced: number[] | undefined, steps: number): Promise<{logits: Float32Array, rows: number, vocab: number, tokens: number[]}> {
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
export function maxLogProbChange(a: Float32Array, b: Float32Array, vocab: number): number {
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
