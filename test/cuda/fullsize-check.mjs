#!/usr/bin/env node
// Full-size check on the GPU machine: the CUDA engine's logits for `glmtool bench`'s prompt (the
// last prompt row, then `steps` decode rows fed the reference's greedy tokens) against the
// float32 PyTorch reference (test/reference/chatglm_ref.py --device cuda) on the same full-size
// synth model, plus the greedy tokens of glmtool bench and of the eager fp16 baseline if given.
//
//   node test/cuda/fullsize-check.mjs --torch DIR --st DIR [--prompt-tokens 512] [--steps 8]
//        [--bench bench.json] [--baseline torch.json]
import {spawnSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {parseArgs} from 'node:util'

const ROOT = join(import.meta.dirname, '..', '..')
const dist = p => import(join(ROOT, 'dist', p))
const {values: o} = parseArgs({options: {
  torch: {type: 'string'}, st: {type: 'string'}, 'prompt-tokens': {type: 'string', default: '512'}, steps: {type: 'string', default: '8'},
  bench: {type: 'string'}, baseline: {type: 'string'},
}})
const steps = Number(o.steps)
const {CudaBackend} = await dist('runtime/backends/cuda.js')
const {benchPrompt} = await dist('pipelines/bench.js')
const {promptLayout} = await dist('runtime/generate.js')
const {loadTokenizer} = await dist('runtime/tokenizer.js')

const cuda = await CudaBackend.load(o.st, {maxLength: 2048})
const tok = await loadTokenizer(o.st, cuda.arch.id)
const prompt = benchPrompt(tok, Number(o['prompt-tokens']))
const v1 = cuda.arch.id === 'chatglm-6b'
const text = v1 ? prompt.slice(0, -2) : prompt.slice(2)
await cuda.dispose()

const out = mkdtempSync(join(tmpdir(), 'glmtool-fullsize-'))
const t0 = performance.now()
const python = process.env.GLMTOOL_REFERENCE_PYTHON || 'python3'
const r = spawnSync(python, [join(ROOT, 'test/reference/chatglm_ref.py'), '--model', o.torch, '--ids', text.join(','), '--steps', String(steps), '--out', out, '--device', process.env.GLMTOOL_REFERENCE_DEVICE || 'cuda'], {encoding: 'utf8', maxBuffer: 64 << 20})
if (r.status !== 0) throw new Error(`reference: ${r.stderr.slice(-2000)}`)
const meta = JSON.parse(readFileSync(join(out, 'meta.json'), 'utf8'))
const bytes = readFileSync(join(out, 'logits.f32'))
const ref = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4).slice()
rmSync(out, {recursive: true, force: true})
const refSeconds = (performance.now() - t0) / 1000
if (JSON.stringify(meta.input_ids) !== JSON.stringify(prompt)) throw new Error('the reference built another prompt')

const engine = await CudaBackend.load(o.st, {maxLength: 2048})
const layout = promptLayout(tok, prompt)
const V = meta.vocab
const got = new Float32Array((1 + steps) * V)
got.set((await engine.forward({ids: prompt, positions: layout.positions, blockPositions: layout.blockPositions, bidirectional: layout.bidirectional, logits: 'last'})).logits, 0)
for (let k = 0; k < steps; k++) {
  const n = layout.next(k + 1)
  const row = await engine.forward({ids: [meta.generated[k]], positions: [n.position], blockPositions: n.blockPosition === undefined ? undefined : [n.blockPosition], bidirectional: layout.bidirectional, logits: 'last'})
  got.set(row.logits, (k + 1) * V)
}
await engine.dispose()

const argmax = x => x.reduce((b, v, i) => (v > x[b] ? i : b), 0)
const rows = []
for (let k = 0; k <= steps; k++) {
  const a = got.subarray(k * V, (k + 1) * V)
  const b = ref.subarray(k * V, (k + 1) * V)
  let diff = 0
  let scale = 0
  for (let i = 0; i < V; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]))
    scale = Math.max(scale, Math.abs(b[i]))
  }
  const sorted = [...b].sort((x, y) => y - x)
  rows.push({rel: diff / scale, cuda: argmax(a), ref: meta.generated[k], refTop2Margin: (sorted[0] - sorted[1]) / scale})
}
const read = f => (f ? JSON.parse(readFileSync(f, 'utf8')) : undefined)
const bench = read(o.bench)?.results?.find(x => x.architecture === cuda.arch.id)
const baseline = read(o.baseline)
const summary = {
  arch: cuda.arch.id, promptTokens: prompt.length, steps, referenceSeconds: +refSeconds.toFixed(1),
  maxRel: Math.max(...rows.map(x => x.rel)), greedySame: rows.filter(x => x.cuda === x.ref).length, of: rows.length,
  referenceTokens: meta.generated, benchTokens: bench?.generatedIds?.slice(0, steps + 1), baselineTokens: baseline?.generatedIds?.slice(0, steps + 1),
  rows,
}
console.log(JSON.stringify(summary))
