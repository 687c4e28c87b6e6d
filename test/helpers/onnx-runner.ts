import {expect} from 'vitest'
import {OnnxCpuBackend} from '../../src/runtime/backends/onnx-cpu.js'
import type {ReferenceResult} from './reference.js'

/** Run the reference's exact sequence (prompt, then its greedy tokens) through the backend. */
export async function runOnnxLikeReference(onnxDir: string, ref: ReferenceResult): Promise<{logits: Float32Array, generated: number[]}> {
  const b = await OnnxCpuBackend.load(onnxDir, {threads: 1})
  try {
    const m = ref.meta
    const v1 = m.arch === 'chatglm-6b'
    const [pos, block] = v1 ? (m.positions as [number[], number[]]) : [m.positions as number[], undefined]
    // v1: the context before <sop> (bos 130004) is bidirectional; v2: causal.
    const bidirectional = v1 ? m.input_ids.indexOf(130004) : 0
    const n = m.prompt_len
    const rows: Float32Array[] = []
    const first = await b.forward({ids: m.input_ids, positions: pos.slice(0, n), blockPositions: block?.slice(0, n), bidirectional, logits: 'all'})
    expect(first.rows).toBe(n)
    rows.push(first.logits)
    const argmax = (x: Float32Array) => x.reduce((best, v, i) => (v > x[best] ? i : best), 0)
    const generated = [argmax(first.logits.subarray((n - 1) * m.vocab))]
    for (let k = 0; k < m.steps; k++) {
      const o = await b.forward({ids: [generated[k]], positions: [pos[n + k]], blockPositions: block ? [block[n + k]] : undefined, bidirectional, logits: 'last'})
      expect(o.rows).toBe(1)
      rows.push(o.logits)
      generated.push(argmax(o.logits))
    }
    expect(b.length).toBe(n + m.steps)
    const logits = new Float32Array(rows.reduce((a, r) => a + r.length, 0))
    let off = 0
    for (const r of rows) {
      logits.set(r, off)
      off += r.length
    }
    return {logits, generated}
  } finally {
    await b.dispose()
  }
}

