#!/usr/bin/env node
// Benchmark: the AWQ + clipping searches (src/quant/calibrate.ts calibrateLinear) on one
// full-size layer's shapes, without a model (issue 13). ChatGLM2-6B: hidden 4096, ffn 13696,
// 2 kv groups x 128, so query_key_value [4608, 4096], dense [4096, 4096], dense_h_to_4h
// [27392, 4096], dense_4h_to_h [4096, 13696]. Weights are random fp16 values (N(0, 0.02)) with a
// few outlier input columns, activation statistics log-normal with 4 channels 20-100x larger,
// as `synth --outliers` plants them. Prints one JSON line per linear and one for the layer:
// seconds (measured on --rows-fraction of each linear's rows; the searches cost the same per
// row, so the full-size figure is seconds / fraction), ns per weight, the chosen beta and the
// mean clipping ratio, and a digest of the codes, scales, ratios and errors (so that two commits'
// results can be compared).
//
//   node bench/calibrate-search.mjs [--rows-fraction 0.125] [--group-size 0] [--seed 1] [--dist dist]
//
// --dist points at another build (e.g. a worktree of an older commit) for a paired A/B run.
// Needs `npm run build` first.
import {createHash} from 'node:crypto'
import {join, resolve} from 'node:path'
import {parseArgs} from 'node:util'
import {root} from './lib.mjs'

const {values: opt} = parseArgs({options: {
  'rows-fraction': {type: 'string', default: '0.125'},
  'group-size': {type: 'string', default: '0'},
  seed: {type: 'string', default: '1'},
  dist: {type: 'string', default: join(root, 'dist')},
}})
const dist = resolve(opt.dist)
const {calibrateLinear} = await import(join(dist, 'quant/calibrate.js'))
const {f16Table, f32ToF16Bits} = await import(join(dist, 'quant/fp16.js'))

const fraction = Number(opt['rows-fraction'])
const groupSize = Number(opt['group-size'])
let state = Number(opt.seed) >>> 0 || 1
/** xorshift32 uniform in (0, 1). */
const uniform = () => {
  state ^= state << 13
  state >>>= 0
  state ^= state >>> 17
  state ^= state << 5
  state >>>= 0
  return (state + 0.5) / 2 ** 32
}
const normal = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform())

const t16 = f16Table()
function weight(rows, cols) {
  const w = new Float32Array(rows * cols)
  const loud = new Set(Array.from({length: 8}, () => Math.floor(uniform() * cols)))
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) w[r * cols + c] = t16[f32ToF16Bits(normal() * 0.02 * (loud.has(c) ? 8 : 1))]
  }
  return w
}
function stats(cols) {
  const meanAbs = new Float64Array(cols)
  const meanSq = new Float64Array(cols)
  for (let c = 0; c < cols; c++) meanAbs[c] = Math.exp(normal() * 0.5) * 0.3
  for (let k = 0; k < 4; k++) meanAbs[Math.floor(uniform() * cols)] *= 20 + 80 * uniform()
  meanAbs[0] = 0 // a dead channel
  for (let c = 0; c < cols; c++) meanSq[c] = meanAbs[c] * meanAbs[c] * 1.6
  return {meanAbs, meanSq}
}

const hidden = 4096
const ffn = 13696
const qkv = hidden + 2 * 2 * 128
const linears = [['query_key_value', qkv, hidden], ['dense', hidden, hidden], ['dense_h_to_4h', 2 * ffn, hidden], ['dense_4h_to_h', hidden, ffn]]
let total = 0
let weights = 0
for (const [name, fullRows, cols] of linears) {
  const rows = Math.max(1, Math.round(fullRows * fraction))
  const w = weight(rows, cols)
  const st = stats(cols)
  const t0 = process.hrtime.bigint()
  const r = calibrateLinear(w, rows, cols, st, {bits: 4, groupSize: groupSize || cols})
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  const full = seconds / (rows / fullRows)
  total += full
  weights += fullRows * cols
  const meanAlpha = r.alpha.reduce((a, b) => a + b, 0) / r.alpha.length
  // Everything the search chose and wrote, hashed: equal digests across builds = same results.
  const digest = createHash('sha256')
  for (const a of [r.quantized.q, r.quantized.scales, r.alpha, r.inputScale, Float64Array.from([r.beta, r.outputError.rtn, r.outputError.scaled, r.outputError.calibrated, r.weightError.rtn, r.weightError.calibrated])]) digest.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength))
  console.log(JSON.stringify({linear: name, rows, cols, seconds: +seconds.toFixed(2), fullSizeSeconds: +full.toFixed(1),
    nsPerWeight: +(seconds * 1e9 / (rows * cols)).toFixed(1), beta: r.beta, meanAlpha: +meanAlpha.toFixed(6),
    outputError: r.outputError.calibrated, digest: digest.digest('hex').slice(0, 16)}))
}
console.log(JSON.stringify({layer: 'chatglm2-6b', dist, rowsFraction: fraction, groupSize, fullSizeSecondsPerLayer: +total.toFixed(1),
  nsPerWeight: +(total * 1e9 / weights).toFixed(1)}))
