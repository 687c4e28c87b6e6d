#!/usr/bin/env node
// Benchmark: encoding speed of glmtool's tokenizers against the Python `sentencepiece` library
// (Debian's 0.1.97) on the real files of ../shared/real, in one run (issue 10). Target:
// glmtool >= 1.0x the library's tokens/s for both generations.
//
//   npm run build && node bench/tokenizer-speed.mjs [--pairs 40] [--real ../shared/real]
//
// The text is the 100 KB text of the cross-check corpus (test/crosscheck/spm_real_check.py,
// seed 20260412). v1: ChatGLM-6B's ice_text.model (UNIGRAM) with the published preprocessing
// (<n>, <|tab|>, <|blank_k|>) inside the timing on both sides; v2: ChatGLM2-6B's tokenizer.model
// (BPE), glmtool's ChatGLM2 tokenizer against the library's EncodeAsIds.
// The library runs in one Python process that stays up (spm_real_check.py --serve) and times
// each encode itself; the benchmark alternates one library encode and one glmtool encode,
// --pairs times per model after a warm-up, so both sides see the same load on a shared machine.
// It prints each side's best and median time, tokens/s from the best, and two ratios
// glmtool / library: of the best times, and the median of the per-pair ratios.
import {spawn} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {join} from 'node:path'
import {createInterface} from 'node:readline'
import {parseArgs} from 'node:util'

const {values: opt} = parseArgs({options: {
  pairs: {type: 'string', default: '40'},
  real: {type: 'string', default: new URL('../../shared/real', import.meta.url).pathname},
}})
const root = new URL('..', import.meta.url).pathname
const {tokenizerFromBytes} = await import(join(root, 'dist/runtime/tokenizer/index.js'))
const SEED = 20260412
const pairs = Number(opt.pairs)

const files = {v1: ['chatglm-6b', 'chatglm-6b_ice_text.model'], v2: ['chatglm2-6b', 'chatglm2-6b_tokenizer.model']}
const tok = {}
for (const [name, [arch, file]] of Object.entries(files)) {
  const t0 = process.hrtime.bigint()
  tok[name] = tokenizerFromBytes(readFileSync(join(opt.real, file)), arch, {source: file})
  console.log(JSON.stringify({step: `load ${file}`, seconds: Number(process.hrtime.bigint() - t0) / 1e9}))
}

const py = spawn('/usr/bin/python3', [join(root, 'test/crosscheck/spm_real_check.py'), opt.real, String(SEED), '--serve'], {stdio: ['pipe', 'pipe', 'inherit']})
const lines = createInterface({input: py.stdout})[Symbol.asyncIterator]()
const next = async () => {
  const {value, done} = await lines.next()
  if (done) throw new Error('spm_real_check.py --serve ended early')
  return JSON.parse(value)
}
const {library, text} = await next()
const lib = async (name) => {
  py.stdin.write(`${name}\n`)
  return next()
}
const mine = (name) => {
  const t0 = process.hrtime.bigint()
  const ids = tok[name].encode(text)
  return {seconds: Number(process.hrtime.bigint() - t0) / 1e9, tokens: ids.length}
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
const summary = {library, textBytes: Buffer.byteLength(text), node: process.version, pairs}
for (const name of ['v1', 'v2']) {
  for (let i = 0; i < 5; i++) {
    await lib(name)
    mine(name)
  }
  const l = []
  const g = []
  for (let i = 0; i < pairs; i++) {
    const a = await lib(name)
    const b = mine(name)
    if (a.tokens !== b.tokens) throw new Error(`${name}: glmtool gives ${b.tokens} tokens, the library ${a.tokens}`)
    l.push(a.seconds)
    g.push(b.seconds)
    summary[name] = {tokens: b.tokens}
  }
  const bestL = Math.min(...l)
  const bestG = Math.min(...g)
  Object.assign(summary[name], {
    libraryMs: {best: +(bestL * 1e3).toFixed(2), median: +(median(l) * 1e3).toFixed(2)},
    glmtoolMs: {best: +(bestG * 1e3).toFixed(2), median: +(median(g) * 1e3).toFixed(2)},
    libraryTokensPerS: Math.round(summary[name].tokens / bestL),
    glmtoolTokensPerS: Math.round(summary[name].tokens / bestG),
    ratioOfBest: +(bestL / bestG).toFixed(2),
    medianPairRatio: +median(l.map((x, i) => x / g[i])).toFixed(2),
  })
}
py.stdin.end()
console.log(JSON.stringify({summary}, null, 1))
