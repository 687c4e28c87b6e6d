#!/usr/bin/env node
// Draws `glmtool bench` results against prompt / context length as an SVG: time to first token
// (left) and decode tok/s after the prompt (right), log-scaled lengths, one line per model
// precision. Input: JSON lines, each one `glmtool bench --out` file (bench/cuda-quant-device.sh
// SWEEP writes them as sweep.jsonl). Hand-written SVG: the figure is two panels of polylines,
// and a plotting library would be the project's only use of one.
//   node bench/plot-context.mjs sweep.jsonl --title "..." --out bench/context-h200.svg
import {readFileSync, writeFileSync} from 'node:fs'
import {parseArgs} from 'node:util'

const {values, positionals} = parseArgs({allowPositionals: true, options: {out: {type: 'string'}, title: {type: 'string', default: ''}}})
if (positionals.length !== 1 || !values.out) {
  console.error('usage: node bench/plot-context.mjs SWEEP.jsonl --out FILE.svg [--title TEXT]')
  process.exit(2)
}
const series = new Map()  // label -> [{n, ttft, decode}]
for (const line of readFileSync(positionals[0], 'utf8').split('\n')) {
  if (!line.trim()) continue
  for (const r of JSON.parse(line).results) {
    const label = r.weights === 'f16' ? 'FP16' : String(r.weights).toUpperCase()
    if (!series.has(label)) series.set(label, [])
    series.get(label).push({n: r.promptTokens, ttft: r.ttftMs.median, decode: r.decodeTokensPerSecond.median})
  }
}
for (const pts of series.values()) pts.sort((a, b) => a.n - b.n)
const all = [...series.values()].flat()
if (all.length === 0) throw new Error(`${positionals[0]}: no results`)

const W = 920, H = 420, M = {l: 70, r: 20, t: 56, b: 72}, GAP = 80
const pw = (W - M.l - M.r - GAP) / 2, ph = H - M.t - M.b
const colors = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e']
const nMin = Math.min(...all.map(p => p.n)), nMax = Math.max(...all.map(p => p.n))
const lx = n => Math.log2(n)
const esc = s => String(s).replace(/[&<>]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;'})[c])

function niceMax(v) {
  const e = 10 ** Math.floor(Math.log10(v)), f = v / e
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * e
}
function panel(x0, key, title, unit, logY) {
  const vals = all.map(p => p[key])
  const yMax = logY ? 10 ** Math.ceil(Math.log10(Math.max(...vals))) : niceMax(Math.max(...vals) * 1.05)
  const yMin = logY ? 10 ** Math.floor(Math.log10(Math.min(...vals))) : 0
  const fx = n => x0 + ((lx(n) - lx(nMin)) / Math.max(1e-9, lx(nMax) - lx(nMin))) * pw
  const fy = v => M.t + ph - (logY ? (Math.log10(v) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin)) : (v - yMin) / (yMax - yMin)) * ph
  const out = [`<text x="${x0 + pw / 2}" y="${M.t - 10}" text-anchor="middle" font-weight="bold">${esc(title)}</text>`,
    `<rect x="${x0}" y="${M.t}" width="${pw}" height="${ph}" fill="none" stroke="#444"/>`]
  const ticksY = logY ? Array.from({length: Math.round(Math.log10(yMax / yMin)) + 1}, (_, i) => yMin * 10 ** i) : Array.from({length: 6}, (_, i) => yMin + (i * (yMax - yMin)) / 5)
  for (const t of ticksY) {
    out.push(`<line x1="${x0}" x2="${x0 + pw}" y1="${fy(t)}" y2="${fy(t)}" stroke="#ddd"/>`)
    out.push(`<text x="${x0 - 6}" y="${fy(t) + 4}" text-anchor="end" font-size="11">${+t.toPrecision(3)}</text>`)
  }
  const ns = [...new Set(all.map(p => p.n))].sort((a, b) => a - b)
  for (const n of ns) out.push(`<text x="${fx(n)}" y="${M.t + ph + 16}" text-anchor="middle" font-size="11">${n}</text>`)
  out.push(`<text x="${x0 + pw / 2}" y="${M.t + ph + 36}" text-anchor="middle" font-size="12">prompt / context tokens (log scale)</text>`)
  out.push(`<text transform="translate(${x0 - 50},${M.t + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(unit)}</text>`)
  let i = 0
  for (const [label, pts] of series) {
    const c = colors[i++ % colors.length]
    out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${pts.map(p => `${fx(p.n).toFixed(1)},${fy(p[key]).toFixed(1)}`).join(' ')}"/>`)
    for (const p of pts) out.push(`<circle cx="${fx(p.n).toFixed(1)}" cy="${fy(p[key]).toFixed(1)}" r="3" fill="${c}"><title>${esc(label)} ${p.n}: ${p[key].toFixed(1)}</title></circle>`)
  }
  return out
}
const legend = [...series.keys()].map((label, i) =>
  `<rect x="${M.l + i * 90}" y="${H - 14}" width="12" height="4" fill="${colors[i % colors.length]}"/><text x="${M.l + i * 90 + 16}" y="${H - 9}" font-size="12">${esc(label)}</text>`)
const svg = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="13">`,
  `<rect width="100%" height="100%" fill="white"/>`,
  values.title ? `<text x="${W / 2}" y="18" text-anchor="middle" font-size="14">${esc(values.title)}</text>` : '',
  ...panel(M.l, 'ttft', 'time to first token', 'ms (log scale)', true),
  ...panel(M.l + pw + GAP, 'decode', 'decode after the prompt', 'tokens / s', false),
  ...legend, '</svg>'].join('\n')
writeFileSync(values.out, svg + '\n')
console.log(`wrote ${values.out}: ${series.size} series, ${all.length} points`)
