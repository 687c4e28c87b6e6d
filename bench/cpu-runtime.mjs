#!/usr/bin/env node
// Benchmark: CPU prefill and decode tokens/s of the ONNX runtime (issue 3), for `synth --size
// small` of both generations, fp32 and fp16 ONNX exports.
//
//   node bench/cpu-runtime.mjs [--dir /tmp/glmtool-bench-cpu] [--prompt 128] [--gen 64] [--repeat 3]
//
// For each model: synth (kept), convert --to onnx at each dtype, then glmtool bench's runs
// (src/pipelines/bench.ts benchModel): prefill `prompt` tokens (bench's prompt, framed as the
// generation frames it), then `gen` greedy decode steps. Reports the median prefill and decode tok/s.
// Needs `npm run build` first.
import {existsSync} from 'node:fs'
import {cpus} from 'node:os'
import {join} from 'node:path'
import {parseArgs} from 'node:util'
import {cli, root} from './lib.mjs'

const {values: opt} = parseArgs({options: {
  dir: {type: 'string', default: '/tmp/glmtool-bench-cpu'},
  prompt: {type: 'string', default: '128'},
  gen: {type: 'string', default: '64'},
  repeat: {type: 'string', default: '3'},
  size: {type: 'string', default: 'small'},
}})
const {benchModel} = await import(join(root, 'dist/pipelines/bench.js'))

const P = Number(opt.prompt), G = Number(opt.gen)
console.log(JSON.stringify({machine: `${cpus().length} x ${cpus()[0].model}`, node: process.version, prompt: P, gen: G, repeat: Number(opt.repeat)}))
for (const arch of ['chatglm-6b', 'chatglm2-6b']) {
  const model = join(opt.dir, `${arch}-${opt.size}`)
  if (!existsSync(model)) cli(['synth', '--arch', arch, '--size', opt.size, '--out', model])
  for (const dtype of ['f32', 'f16']) {
    const onnx = `${model}-onnx-${dtype}`
    if (!existsSync(onnx)) cli(['convert', model, '--to', 'onnx', '--dtype', dtype, '--out', onnx])
    // glmtool bench's own loop (src/pipelines/bench.ts: the prompt, its framing, generate()).
    const r = await benchModel(onnx, {backend: 'cpu', promptTokens: P, genTokens: G + 1, repeat: Number(opt.repeat), maxLength: P + G + 8})
    console.log(JSON.stringify({arch, size: opt.size, dtype, prefillTokPerSec: +r.prefillTokensPerSecond.median.toFixed(1), decodeTokPerSec: +r.decodeTokensPerSecond.median.toFixed(2)}))
  }
}
