// One long prompt on the CPU runtime (issue 16 / 13): load an ONNX export, run one forward of N
// tokens (logits of the last row), print the time and the answer; run under /usr/bin/time -v for
// the peak RSS. `rows` sets OnnxCpuBackend's prefillRows (e.g. 100000: the whole prompt in one
// graph run, as before the pieces); default: the backend's own choice.
//   node bench/cpu-long-prompt.mjs <onnx dir> <tokens> [rows]
import {OnnxCpuBackend} from '../dist/runtime/backends/onnx-cpu.js'

const [dir, n, rows] = process.argv.slice(2)
if (!dir || !n) {
  console.error('usage: node bench/cpu-long-prompt.mjs <onnx dir> <tokens> [prefill rows]')
  process.exit(2)
}
const N = Number(n)
const b = await OnnxCpuBackend.load(dir, {maxLength: N + 8, ...(rows ? {prefillRows: Number(rows)} : {})})
// ChatGLM2-6B's prompt layout: [gMASK] sop, then ordinary ids
const ids = [64790, 64792, ...Array.from({length: N - 2}, (_, i) => 5 + ((300 + 37 * i) % 30000))]
const t = performance.now()
const out = await b.forward({ids, positions: ids.map((_, i) => i), bidirectional: 0, logits: 'last'})
const seconds = (performance.now() - t) / 1000
let best = 0
for (let i = 1; i < out.vocab; i++) if (out.logits[i] > out.logits[best]) best = i
console.log(JSON.stringify({tokens: N, prefillRows: rows ?? 'default', seconds, tokPerS: N / seconds, argmax: best, logit0: out.logits[0]}))
await b.dispose()
