#!/usr/bin/env node
// CPU race: glmtool's INT8/INT4 ONNX runtime against llama.cpp's Q8_0/Q4_0 (node-llama-cpp's
// prebuilt CPU build, a devDependency) on the same synth ChatGLM2-6B model, same machine, one
// run (issue 17). Reports prefill and decode tokens/s and each engine's peak RSS, and the
// glmtool/llama.cpp ratios (above 1: glmtool ahead; for RSS below 1: glmtool smaller).
//
//   node bench/peers/llama-cpu.mjs [--size small|full] [--dir /tmp/glmtool-bench-peers]
//                                  [--prompt 128] [--gen 64] [--threads <cores>] [--cpu-compute int8|exact]
//                                  [--skip none|lm_head,embeddings]
//
// Needs `npm run build`. Each engine runs in its own child process (so its RSS is its own),
// with the same thread count. glmtool: `quantize --bits 8|4 --format onnx` (published RTN
// scheme, per-channel scales, MatMulNBits), OnnxCpuBackend. llama.cpp: `convert --to gguf
// --type q8_0|q4_0`, a context of prompt+gen tokens (F16 KV cache, its default), greedy.
// Same bits on both sides: the GGUF file types quantize every matrix, the output layer and the
// token embeddings included (as llama.cpp's own converter does), so glmtool quantizes with
// --skip none by default too; --skip lm_head,embeddings gives the published layout (fp16 output
// layer, which onnxruntime's CPU kernels then read as float32: twice the bytes).
// The same pseudo-random prompt ids ([gMASK] sop, then vocabulary ids) for both.
// --size full synthesises the 6B model (12.5 GB, ~1 min) and needs ~30 GB of disk for the
// four quantized copies; meant for a later session on a machine to itself.
import {spawnSync} from 'node:child_process'
import {existsSync} from 'node:fs'
import {cpus} from 'node:os'
import {join} from 'node:path'
import {parseArgs} from 'node:util'

const {values: opt} = parseArgs({options: {
  dir: {type: 'string', default: '/tmp/glmtool-bench-peers'},
  size: {type: 'string', default: 'small'},
  prompt: {type: 'string', default: '128'},
  gen: {type: 'string', default: '64'},
  threads: {type: 'string', default: String(cpus().length)},
  child: {type: 'string'},
  model: {type: 'string'},
  src: {type: 'string'},
  'cpu-compute': {type: 'string', default: 'int8'},
  skip: {type: 'string', default: 'none'},
}})
const root = new URL('../..', import.meta.url).pathname
const P = Number(opt.prompt), G = Number(opt.gen), T = Number(opt.threads)

/**
 * The same pseudo-random prompt for both engines: vocabulary ids framed by the model's own
 * module ([gMASK] sop from its tokenizer, placed as the published code places them).
 */
async function promptIds(modelDir) {
  const {loadModelTokenizer} = await import(join(root, 'dist/runtime/tokenizer/model-tokenizer.js'))
  const {tokenizer, arch} = await loadModelTokenizer(modelDir)
  let seed = 1
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 20000 + 1000
  const framed = arch.framePrompt(Array.from({length: P}, rand), tokenizer.specials)
  return framed.slice(framed.length - P)
}

async function childGlmtool(dir, srcDir) {
  const {OnnxCpuBackend} = await import(join(root, 'dist/runtime/backends/onnx-cpu.js'))
  const {argmax} = await import(join(root, 'dist/runtime/sampling.js'))
  const b = await OnnxCpuBackend.load(dir, {maxLength: P + G + 8, threads: T})
  const ids = await promptIds(srcDir)
  let t0 = performance.now()
  let out = await b.forward({ids, positions: ids.map((_, i) => i), bidirectional: 0, logits: 'last'})
  const prefill = P / ((performance.now() - t0) / 1000)
  t0 = performance.now()
  for (let k = 0; k < G; k++) out = await b.forward({ids: [argmax(out.logits)], positions: [P + k], bidirectional: 0, logits: 'last'})
  const decode = G / ((performance.now() - t0) / 1000)
  await b.dispose()
  return {prefill, decode}
}

async function childLlama(file, srcDir) {
  const {getLlama, LlamaLogLevel} = await import('node-llama-cpp')
  const llama = await getLlama({gpu: false, build: 'never', logLevel: LlamaLogLevel.error, progressLogs: false})
  const model = await llama.loadModel({modelPath: file, gpuLayers: 0})
  const ctx = await model.createContext({contextSize: P + G + 8, batchSize: P, threads: T})
  const seq = ctx.getSequence()
  const it = seq.evaluate(await promptIds(srcDir), {temperature: 0})
  let t0 = performance.now()
  await it.next() // the prompt's batch and the first greedy token
  const prefill = P / ((performance.now() - t0) / 1000)
  t0 = performance.now()
  for (let k = 0; k < G; k++) await it.next()
  const decode = G / ((performance.now() - t0) / 1000)
  await it.return()
  await ctx.dispose()
  await model.dispose()
  return {prefill, decode}
}

if (opt.child) {
  const r = opt.child === 'glmtool' ? await childGlmtool(opt.model, opt.src) : await childLlama(opt.model, opt.src)
  console.log(JSON.stringify({...r, peakRssBytes: process.resourceUsage().maxRSS * 1024}))
  process.exit(0)
}

const cli = (args) => {
  const t0 = Date.now()
  const r = spawnSync(process.execPath, [join(root, 'bin/run.js'), ...args], {encoding: 'utf8', maxBuffer: 1 << 26})
  if (r.status !== 0) throw new Error(`glmtool ${args.join(' ')}: ${r.stderr}`)
  return (Date.now() - t0) / 1000
}
const child = (kind, model) => {
  const r = spawnSync(process.execPath, [new URL(import.meta.url).pathname, '--child', kind, '--model', model, '--src', src, '--prompt', String(P), '--gen', String(G), '--threads', String(T)], {encoding: 'utf8', maxBuffer: 1 << 26})
  if (r.status !== 0) throw new Error(`${kind} ${model}: ${r.stderr}`)
  return JSON.parse(r.stdout.trim().split('\n').pop())
}

const src = join(opt.dir, `chatglm2-6b-${opt.size}`)
if (!existsSync(src)) cli(['synth', '--arch', 'chatglm2-6b', '--size', opt.size, '--out', src])
const head = {machine: `${cpus().length} x ${cpus()[0].model}`, node: process.version, size: opt.size, prompt: P, gen: G, threads: T, cpuCompute: opt['cpu-compute'], skip: opt.skip}
console.log(JSON.stringify(head))
for (const [bits, type] of [[8, 'q8_0'], [4, 'q4_0']]) {
  const cc = opt['cpu-compute']
  const onnx = `${src}-int${bits}${cc === 'exact' ? '' : `-${cc}`}${opt.skip === 'none' ? '-all' : ''}-onnx`
  const gguf = `${src}-${type}.gguf`
  if (!existsSync(onnx)) console.log(JSON.stringify({step: `quantize --bits ${bits} --format onnx`, seconds: cli(['quantize', src, '--bits', String(bits), '--format', 'onnx', '--cpu-compute', cc, '--skip', opt.skip, '--evaluate', 'off', '--out', onnx])}))
  if (!existsSync(gguf)) console.log(JSON.stringify({step: `convert --to gguf --type ${type}`, seconds: cli(['convert', src, '--to', 'gguf', '--type', type, '--out', gguf])}))
  const g = child('glmtool', onnx)
  const l = child('llama', gguf)
  const r = (x) => +x.toFixed(2)
  console.log(JSON.stringify({
    row: `glmtool INT${bits} (--cpu-compute ${cc}, --skip ${opt.skip}) vs llama.cpp ${type.toUpperCase()}`,
    glmtool: {prefillTokPerSec: r(g.prefill), decodeTokPerSec: r(g.decode), peakRssMB: Math.round(g.peakRssBytes / 1e6)},
    llama: {prefillTokPerSec: r(l.prefill), decodeTokPerSec: r(l.decode), peakRssMB: Math.round(l.peakRssBytes / 1e6)},
    ratio: {prefill: r(g.prefill / l.prefill), decode: r(g.decode / l.decode), rss: r(g.peakRssBytes / l.peakRssBytes)},
  }))
}
