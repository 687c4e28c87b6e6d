#!/usr/bin/env node
// Bit-identity of two builds of the CUDA engine (issue 14: the engine took feature flags instead of a
// generation number, and must compute exactly what it computed before). Each build dumps, for the
// same synth models and inputs, every float32 logit and chosen token of: a prompt (all rows), 32
// greedy decode steps through the CUDA graph, the same launch by launch, and 32 decodeMany steps;
// with the decode norms as the engine picks them and the other way round (GLMTOOL_CUDA_NORM).
// The dumps are then compared byte for byte. Positions follow each generation's layout; the inputs
// need only be the same for both builds.
//
//   node test/cuda/engine-identity.mjs make --work DIR                      (models, with this checkout's CLI)
//   GLMTOOL_CUDA_ADDON=A.node node test/cuda/engine-identity.mjs dump --root TREE --work DIR --out FILE
//
// TREE is a checkout with dist/ built (its CudaBackend runs the addon A.node).
import {spawnSync} from 'node:child_process'
import {existsSync, readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {parseArgs} from 'node:util'

const ROOT = join(import.meta.dirname, '..', '..')
const STEPS = 32
const MODELS = [
  ['chatglm-6b-tiny', ['synth', '--arch', 'chatglm-6b', '--size', 'tiny']],
  ['chatglm2-6b-tiny', ['synth', '--arch', 'chatglm2-6b', '--size', 'tiny']],
  ['chatglm-6b-small', ['synth', '--arch', 'chatglm-6b', '--size', 'small']],
  ['chatglm2-6b-small', ['synth', '--arch', 'chatglm2-6b', '--size', 'small']],
  ['chatglm2-6b-tiny-bf16', ['synth', '--arch', 'chatglm2-6b', '--size', 'tiny', '--dtype', 'bf16']],
]
const QUANT = [['chatglm-6b-tiny-q4g32', 'chatglm-6b-tiny', '4', '32'], ['chatglm2-6b-small-q8', 'chatglm2-6b-small', '8', '0']]

function glmtool(args) {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin/run.js'), ...args], {cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20})
  if (r.status !== 0) throw new Error(`glmtool ${args.join(' ')}: ${r.stderr || r.stdout}`)
}

function make(work) {
  for (const [name, args] of MODELS) {
    const torch = join(work, `${name}-torch`)
    if (!existsSync(torch)) glmtool([...args, '--out', torch])
    if (!existsSync(join(work, name))) glmtool(['convert', torch, '--to', 'safetensors', '--out', join(work, name)])
  }
  for (const [name, base, bits, group] of QUANT) {
    if (!existsSync(join(work, name))) glmtool(['quantize', join(work, `${base}-torch`), '--bits', bits, '--group-size', group, '--out', join(work, name), '--evaluate', 'off'])
  }
}

const argmax = x => x.reduce((b, v, i) => (v > x[b] ? i : b), 0)

/** One model's inputs: a 20-token prompt in its generation's layout, and each decode step's positions. */
function layout(config) {
  const text = Array.from({length: 20}, (_, i) => 100 + 37 * i)
  if (config.position_encoding_2d !== undefined) {
    const n = text.length
    const ids = [...text, config.gmask_token_id ?? 130001, config.bos_token_id ?? 130004]
    return {ids, pos: [...text.map((_, i) => i), n, n], block: [...text.map(() => 0), 0, 1], bidirectional: n + 1,
      step: k => ({pos: n, block: 2 + k})}
  }
  const ids = [64790, 64792, ...text]
  return {ids, pos: ids.map((_, i) => i), block: undefined, bidirectional: 0, step: k => ({pos: ids.length + k, block: undefined})}
}

async function run(CudaBackend, dir, chunks) {
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
  const L = layout(config)
  const backend = await CudaBackend.load(dir, {maxLength: 128})
  try {
    const greedy = async () => {
      backend.reset()
      const first = await backend.forward({ids: L.ids, positions: L.pos, blockPositions: L.block, bidirectional: L.bidirectional, logits: 'all'})
      chunks.push(first.logits)
      let token = argmax(first.logits.subarray(first.logits.length - first.vocab))
      const tokens = [token]
      for (let k = 0; k < STEPS; k++) {
        const s = L.step(k)
        const o = await backend.forward({ids: [token], positions: [s.pos], blockPositions: s.block === undefined ? undefined : [s.block], bidirectional: L.bidirectional, logits: 'last'})
        chunks.push(o.logits)
        token = argmax(o.logits)
        tokens.push(token)
      }
      chunks.push(Float32Array.from(tokens))
      return tokens
    }
    const graph = await greedy()
    backend.setUseGraph(false)
    await greedy()
    backend.setUseGraph(true)
    // decodeMany from the first chosen token
    backend.reset()
    await backend.forward({ids: L.ids, positions: L.pos, blockPositions: L.block, bidirectional: L.bidirectional, logits: 'last'})
    const steps = Array.from({length: STEPS}, (_, k) => L.step(k))
    const many = await backend.decodeMany({id: graph[0], positions: steps.map(s => s.pos), blockPositions: L.block ? steps.map(s => s.block) : undefined, bidirectional: L.bidirectional},
      {greedy: true, temperature: 1, topK: 0, topP: 1, vocabLimit: 0}, [])
    chunks.push(Float32Array.from(many))
  } finally {
    await backend.dispose()
  }
}

async function dump(tree, work, out) {
  const {CudaBackend} = await import(join(tree, 'dist/runtime/backends/cuda.js'))
  const chunks = []
  const names = [...MODELS.map(m => m[0]), ...QUANT.map(q => q[0])]
  for (const norm of ['', 'flip']) {
    for (const name of names) {
      const v1 = name.startsWith('chatglm-6b')
      if (norm) process.env.GLMTOOL_CUDA_NORM = v1 ? 'fused' : 'kernel'
      else delete process.env.GLMTOOL_CUDA_NORM
      await run(CudaBackend, join(work, name), chunks)
      console.log(`${name}${norm ? ` (GLMTOOL_CUDA_NORM=${process.env.GLMTOOL_CUDA_NORM})` : ''}: dumped`)
    }
  }
  const bytes = Buffer.concat(chunks.map(c => Buffer.from(c.buffer, c.byteOffset, c.byteLength)))
  writeFileSync(out, bytes)
  console.log(`${out}: ${bytes.length} bytes`)
}

const {positionals, values} = parseArgs({allowPositionals: true, options: {work: {type: 'string'}, root: {type: 'string'}, out: {type: 'string'}}})
if (positionals[0] === 'make') make(values.work)
else if (positionals[0] === 'dump') await dump(values.root, values.work, values.out)
else throw new Error('usage: engine-identity.mjs make --work DIR | dump --root TREE --work DIR --out FILE')
