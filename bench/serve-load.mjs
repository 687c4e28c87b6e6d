#!/usr/bin/env node
// Benchmark: what `glmtool serve` costs on top of the runtime (issue 15). One run, one machine,
// compared as ratios:
//   1. in-process: generate() on the same ONNX model, greedy, `gen` tokens: decode ms/token;
//   2. through HTTP: one streaming request at a time (SSE), same prompt: time to first byte,
//      time to first token, ms/token between tokens; the server's cost per token is
//      (HTTP ms/token - in-process ms/token) / in-process ms/token (target < 5%);
//   3. 16 concurrent streaming clients (queued FIFO) and `sequential` short requests: requests/s,
//      server RSS before and after (target growth < 50 MB).
// Loopback only; every loop bounded in count.
//
//   node bench/serve-load.mjs [--dir /tmp/glmtool-bench-serve] [--size small] [--gen 64] [--repeat 5] [--sequential 300]
// Needs `npm run build` first.
import {spawn} from 'node:child_process'
import {existsSync} from 'node:fs'
import {cpus} from 'node:os'
import {join} from 'node:path'
import {parseArgs} from 'node:util'
import {cli, median, root} from './lib.mjs'

const {values: opt} = parseArgs({options: {
  dir: {type: 'string', default: '/tmp/glmtool-bench-serve'},
  size: {type: 'string', default: 'small'},
  gen: {type: 'string', default: '64'},
  repeat: {type: 'string', default: '5'},
  sequential: {type: 'string', default: '300'},
  arch: {type: 'string', default: 'chatglm2-6b'},
}})
const {OnnxCpuBackend} = await import(join(root, 'dist/runtime/backends/onnx-cpu.js'))
const {loadTokenizer} = await import(join(root, 'dist/runtime/tokenizer/index.js'))
const {generate} = await import(join(root, 'dist/runtime/generate.js'))
const G = Number(opt.gen), R = Number(opt.repeat)
const torch = join(opt.dir, `${opt.arch}-${opt.size}`)
const model = `${torch}-onnx`
if (!existsSync(torch)) cli(['synth', '--arch', opt.arch, '--size', opt.size, '--out', torch])
if (!existsSync(model)) cli(['convert', torch, '--to', 'onnx', '--out', model])
const query = '请介绍一下你自己, and say it in English too.'

// 1. In-process.
const backend = await OnnxCpuBackend.load(model, {})
const tokenizer = await loadTokenizer(model, backend.arch.id)
const ids = backend.arch.chat.promptIds(tokenizer, [], query, 'user')
const gopts = {greedy: true, temperature: 0, topP: 1, topK: 0, repetitionPenalty: 1, maxLength: 100000, maxNewTokens: G, seed: 0}
const direct = []
for (let i = 0; i < R + 1; i++) {
  const r = await generate(backend, tokenizer, ids, gopts)
  if (i > 0) direct.push({msPerToken: r.generateSeconds * 1000 / Math.max(1, r.generatedIds.length - 1), firstMs: r.promptSeconds * 1000, tokens: r.generatedIds.length})
}
await backend.dispose()

// 2. Through HTTP.
const proc = spawn(process.execPath, [join(root, 'bin/run.js'), 'serve', model, '--port', '0', '--max-queue', '32'], {stdio: ['ignore', 'ignore', 'pipe']})
let log = ''
const url = await new Promise((resolve, reject) => {
  proc.stderr.on('data', d => {
    log += d
    const m = /at (http:\/\/\S+)\s/.exec(log)
    if (m) resolve(m[1])
  })
  proc.on('exit', c => reject(new Error(`serve exited ${c}: ${log}`)))
})
const body = (extra) => JSON.stringify({messages: [{role: 'user', content: query}], temperature: 0, max_tokens: G, ...extra})
async function streamOnce() {
  const t0 = performance.now()
  const res = await fetch(`${url}/v1/chat/completions`, {method: 'POST', headers: {'content-type': 'application/json'}, body: body({stream: true})})
  const reader = res.body.getReader()
  const dec = new TextDecoder()
  let firstByte, firstToken, last, buf = '', generated = 0
  for (;;) {
    const {value, done} = await reader.read()
    if (done) break
    const now = performance.now()
    firstByte ??= now
    buf += dec.decode(value, {stream: true})
    let i
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(6, i)
      buf = buf.slice(i + 2)
      if (ev === '[DONE]') continue
      const j = JSON.parse(ev)
      if (j.glmtool) generated = j.glmtool.generated_ids.length
      if (j.choices[0]?.delta?.content) {
        firstToken ??= now
        last = now
      }
    }
  }
  const end = performance.now()
  // Tokens after the first arrive over (end - firstToken); the last SSE carries the tail text.
  return {ttfbMs: firstByte - t0, ttftMs: firstToken - t0, msPerToken: (end - firstToken) / Math.max(1, generated - 1), tokens: generated, lastMs: last - t0}
}
const http = []
for (let i = 0; i < R + 1; i++) {
  const r = await streamOnce()
  if (i > 0) http.push(r)
}
const health = async () => (await (await fetch(`${url}/health`)).json()).rssBytes
const rss0 = await health()
const t16 = performance.now()
const conc = await Promise.all(Array.from({length: 16}, () => streamOnce()))
const concSeconds = (performance.now() - t16) / 1000
const n = Number(opt.sequential)
const ts = performance.now()
for (let i = 0; i < n; i++) {
  const r = await fetch(`${url}/v1/chat/completions`, {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({messages: [{role: 'user', content: `q${i % 9}`}], temperature: 0, max_tokens: 2})})
  if (r.status !== 200) throw new Error(`request ${i}: ${r.status}`)
  await r.arrayBuffer()
}
const seqSeconds = (performance.now() - ts) / 1000
const rss1 = await health()
proc.kill('SIGTERM')
await new Promise(r => proc.on('exit', r))

const d = median(direct.map(x => x.msPerToken)), h = median(http.map(x => x.msPerToken))
console.log(JSON.stringify({
  machine: `${cpus().length} x ${cpus()[0].model}`, node: process.version, model: `${opt.arch} ${opt.size} (ONNX f32)`, gen: G, repeat: R, promptTokens: ids.length,
  inProcess: {decodeMsPerToken: +d.toFixed(3), firstTokenMs: +median(direct.map(x => x.firstMs)).toFixed(1)},
  http: {decodeMsPerToken: +h.toFixed(3), ttfbMs: +median(http.map(x => x.ttfbMs)).toFixed(1), ttftMs: +median(http.map(x => x.ttftMs)).toFixed(1), tokensPerSecond: +(1000 / h).toFixed(1)},
  serverCostPerToken: +((h - d) / d).toFixed(4),
  concurrent16: {seconds: +concSeconds.toFixed(2), tokens: conc.reduce((a, x) => a + x.tokens, 0), tokensPerSecond: +(conc.reduce((a, x) => a + x.tokens, 0) / concSeconds).toFixed(1)},
  sequential: {requests: n, requestsPerSecond: +(n / seqSeconds).toFixed(1)},
  serverRssMB: {before: +(rss0 / 1e6).toFixed(1), after: +(rss1 / 1e6).toFixed(1), growth: +((rss1 - rss0) / 1e6).toFixed(1)},
}, null, 1))
