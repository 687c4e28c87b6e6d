#!/usr/bin/env node
// Benchmark: CPU prefill and decode tokens/s of the ONNX runtime (issue 3), for `synth --size
// small` of both generations, fp32 and fp16 ONNX exports.
//
//   node bench/cpu-runtime.mjs [--dir /tmp/glmtool-bench-cpu] [--prompt 128] [--gen 64] [--repeat 3]
//
// For each model: synth (kept), convert --to onnx at each dtype, then `repeat` times: reset,
// prefill `prompt` tokens (random ids from the vocabulary, v1 with its [gMASK] <sop> layout),
// then `gen` greedy decode steps. Reports the median prefill tok/s and decode tok/s.
// Needs `npm run build` first.
import {existsSync} from 'node:fs'
import {cpus} from 'node:os'
import {join} from 'node:path'
import {parseArgs} from 'node:util'
import {cli, median, root} from './lib.mjs'

const {values: opt} = parseArgs({options: {
  dir: {type: 'string', default: '/tmp/glmtool-bench-cpu'},
  prompt: {type: 'string', default: '128'},
  gen: {type: 'string', default: '64'},
  repeat: {type: 'string', default: '3'},
  size: {type: 'string', default: 'small'},
}})
const {OnnxCpuBackend} = await import(join(root, 'dist/runtime/backends/onnx-cpu.js'))
const {layoutV1, layoutV2} = await import(join(root, 'dist/runtime/positions.js'))
const {argmax} = await import(join(root, 'dist/runtime/sampling.js'))

const P = Number(opt.prompt), G = Number(opt.gen)
console.log(JSON.stringify({machine: `${cpus().length} x ${cpus()[0].model}`, node: process.version, prompt: P, gen: G, repeat: Number(opt.repeat)}))
for (const arch of ['chatglm-6b', 'chatglm2-6b']) {
  const model = join(opt.dir, `${arch}-${opt.size}`)
  if (!existsSync(model)) cli(['synth', '--arch', arch, '--size', opt.size, '--out', model])
  for (const dtype of ['f32', 'f16']) {
    const onnx = `${model}-onnx-${dtype}`
    if (!existsSync(onnx)) cli(['convert', model, '--to', 'onnx', '--dtype', dtype, '--out', onnx])
    const backend = await OnnxCpuBackend.load(onnx, {maxLength: P + G + 8})
    let seed = 1
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 20000 + 1000
    const text = Array.from({length: P - 2}, rand)
    const ids = arch === 'chatglm-6b' ? [...text, 130001, 130004] : [64790, 64792, ...text]
    const layout = arch === 'chatglm-6b' ? layoutV1(ids, 130001, 130004) : layoutV2(ids)
    const pre = [], dec = []
    for (let r = 0; r < Number(opt.repeat); r++) {
      backend.reset()
      let t0 = performance.now()
      let out = await backend.forward({ids, positions: layout.positions, blockPositions: layout.blockPositions, bidirectional: layout.bidirectional, logits: 'last'})
      pre.push(P / ((performance.now() - t0) / 1000))
      t0 = performance.now()
      for (let k = 1; k <= G; k++) {
        const tok = argmax(out.logits)
        const n = layout.next(k)
        out = await backend.forward({ids: [tok], positions: [n.position], blockPositions: n.blockPosition === undefined ? undefined : [n.blockPosition], bidirectional: layout.bidirectional, logits: 'last'})
      }
      dec.push(G / ((performance.now() - t0) / 1000))
    }
    await backend.dispose()
    console.log(JSON.stringify({arch, size: opt.size, dtype, prefillTokPerSec: +median(pre).toFixed(1), decodeTokPerSec: +median(dec).toFixed(2)}))
  }
}
