#!/usr/bin/env node
// Issue 13: CPU decode speed against context length. For each ONNX export, decode tok/s after a
// short context (--short, default 128) and after a long one (--long, default 2,048), paired in
// one process and alternated (short, long, short, long, ...) so that machine noise hits both;
// reports each median and the ratio long/short (the issue asks for >= 0.85). Each line says how
// the runtime keeps that export's cache ("buffer": read in place, new rows appended, the issue-13
// graphs; "feed-back": present = past + new fed back as the next past, exports made before), so
// an old export (e.g. one made by main before issue 13) and a new one compare in one run.
//
//   node bench/cpu-context.mjs [--size small] [--dir /tmp/glmtool-bench-context] [--gen 16]
//                              [--repeat 3] [--threads <cores>] [--short 128] [--long 2048]
//   node bench/cpu-context.mjs --onnx <export dir> [--onnx <another>] ...
//
// Without --onnx: synthesises `--size` (default small) of both generations and converts each to
// ONNX float32 (kept in --dir). "Context C" = a prefill of C - gen tokens, then `gen` decode
// steps (so decode runs at contexts C - gen .. C - 1; ChatGLM-6B's limit is 2,048). Decode steps
// go through OnnxCpuBackend.forward one token at a time, as generate() drives it. The prefill
// is not timed. Besides wall-clock tok/s, each line gives the process's CPU milliseconds per decode
// token (user + system, all threads): less sensitive to other jobs on a shared machine than the
// wall clock. Needs `npm run build`.
import {existsSync} from 'node:fs'
import {cpus} from 'node:os'
import {join} from 'node:path'
import {parseArgs} from 'node:util'
import {cli, median, root} from './lib.mjs'

const {values: opt} = parseArgs({options: {
  dir: {type: 'string', default: '/tmp/glmtool-bench-context'},
  size: {type: 'string', default: 'small'},
  onnx: {type: 'string', multiple: true},
  gen: {type: 'string', default: '16'},
  repeat: {type: 'string', default: '3'},
  threads: {type: 'string'},
  short: {type: 'string', default: '128'},
  long: {type: 'string', default: '2048'},
}})
const {OnnxCpuBackend} = await import(join(root, 'dist/runtime/backends/onnx-cpu.js'))
const {argmax} = await import(join(root, 'dist/runtime/sampling.js'))
const G = Number(opt.gen), R = Number(opt.repeat), SHORT = Number(opt.short), LONG = Number(opt.long)

let dirs = opt.onnx
if (!dirs) {
  dirs = []
  for (const arch of ['chatglm-6b', 'chatglm2-6b']) {
    const model = join(opt.dir, `${arch}-${opt.size}`)
    if (!existsSync(model)) cli(['synth', '--arch', arch, '--size', opt.size, '--out', model])
    const onnx = `${model}-onnx-f32`
    if (!existsSync(onnx)) cli(['convert', model, '--to', 'onnx', '--dtype', 'f32', '--out', onnx])
    dirs.push(onnx)
  }
}

/** Prefill context - G pseudo-random ids, then G greedy steps; returns decode tok/s and CPU ms per token. */
async function decodeAt(b, context) {
  b.reset()
  const v1 = b.manifest.dims.positionRows === 2
  const vocab = b.manifest.dims.vocab
  let seed = 7
  const P = context - G
  const ids = Array.from({length: P}, () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % vocab)
  const step = (tokens, start) => ({
    ids: tokens,
    positions: tokens.map((_, i) => start + i),
    ...(v1 ? {blockPositions: tokens.map(() => 0)} : {}),
    bidirectional: 0,
    logits: 'last',
  })
  let out = await b.forward(step(ids, 0))
  const t0 = performance.now()
  const c0 = process.cpuUsage()
  for (let k = 0; k < G; k++) out = await b.forward(step([argmax(out.logits)], P + k))
  const c = process.cpuUsage(c0)
  return {tps: G / ((performance.now() - t0) / 1000), cpuMs: (c.user + c.system) / 1000 / G}
}

console.log(JSON.stringify({machine: `${cpus().length} x ${cpus()[0].model}`, node: process.version, gen: G, repeat: R, short: SHORT, long: LONG}))
for (const dir of dirs) {
  const b = await OnnxCpuBackend.load(dir, {maxLength: LONG, ...(opt.threads ? {threads: Number(opt.threads)} : {})})
  const short = [], long = []
  for (let r = 0; r < R; r++) {
    short.push(await decodeAt(b, SHORT))
    long.push(await decodeAt(b, LONG))
  }
  const s = median(short.map(x => x.tps)), l = median(long.map(x => x.tps))
  const sc = median(short.map(x => x.cpuMs)), lc = median(long.map(x => x.cpuMs))
  console.log(JSON.stringify({
    onnx: dir, arch: b.arch.id, kv: b.bufferCache ? 'buffer' : 'feed-back',
    [`decode@${SHORT}`]: +s.toFixed(2), [`decode@${LONG}`]: +l.toFixed(2), ratio: +(l / s).toFixed(3),
    [`cpuMsPerToken@${SHORT}`]: +sc.toFixed(1), [`cpuMsPerToken@${LONG}`]: +lc.toFixed(1), cpuRatio: +(sc / lc).toFixed(3),
    short: short.map(x => +x.tps.toFixed(2)), long: long.map(x => +x.tps.toFixed(2)),
  }))
  await b.dispose()
}
