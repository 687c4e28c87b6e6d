#!/usr/bin/env node
// Benchmark: encoding speed of glmtool's tokenizers against the Python `sentencepiece` library
// (Debian's 0.1.97) on the real files of ../shared/real, in one run (issue 10). Target:
// glmtool >= 1.0x the library's tokens/s for both generations.
//
//   npm run build && node bench/tokenizer-speed.mjs [--rounds 3] [--repeat 20] [--real ../shared/real]
//
// The text is the 100 KB text of the cross-check corpus (test/crosscheck/spm_real_check.py,
// seed 20260412). v1: ChatGLM-6B's ice_text.model (UNIGRAM) with the published preprocessing
// (<n>, <|tab|>, <|blank_k|>) inside the timing on both sides; v2: ChatGLM2-6B's tokenizer.model
// (BPE), glmtool's ChatGLM2 tokenizer against the library's EncodeAsIds. Each round times the
// library (best of --repeat encodes, in its own process) and then glmtool (best of --repeat,
// after a warm-up), so that both see the same machine; the summary takes the best of the rounds
// and prints tokens/s and the ratio glmtool / library.
import {spawnSync} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {join} from 'node:path'
import {parseArgs} from 'node:util'

const {values: opt} = parseArgs({options: {
  rounds: {type: 'string', default: '3'},
  repeat: {type: 'string', default: '20'},
  real: {type: 'string', default: new URL('../../shared/real', import.meta.url).pathname},
}})
const root = new URL('..', import.meta.url).pathname
const {tokenizerFromBytes} = await import(join(root, 'dist/runtime/tokenizer.js'))
const SEED = 20260412
const repeat = Number(opt.repeat)

const files = {v1: ['chatglm-6b', 'chatglm-6b_ice_text.model'], v2: ['chatglm2-6b', 'chatglm2-6b_tokenizer.model']}
const loadStart = process.hrtime.bigint()
const tok = {}
for (const [name, [arch, file]] of Object.entries(files)) tok[name] = tokenizerFromBytes(readFileSync(join(opt.real, file)), arch, {source: file})
console.log(JSON.stringify({step: 'load both tokenizers', seconds: Number(process.hrtime.bigint() - loadStart) / 1e9}))

function library() {
  const r = spawnSync('/usr/bin/python3', [join(root, 'test/crosscheck/spm_real_check.py'), opt.real, String(SEED), '--bench', String(repeat)], {encoding: 'utf8', maxBuffer: 1 << 26})
  if (r.status !== 0) throw new Error(`spm_real_check.py --bench failed: ${r.stderr}`)
  return JSON.parse(r.stdout)
}

function glmtool(text, t) {
  let ids = t.encode(text)
  for (let i = 0; i < 3; i++) ids = t.encode(text) // warm-up
  let best = Infinity
  for (let i = 0; i < repeat; i++) {
    const t0 = process.hrtime.bigint()
    ids = t.encode(text)
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9)
  }
  return {tokens: ids.length, seconds: best}
}

const best = {v1: {lib: Infinity, glm: Infinity}, v2: {lib: Infinity, glm: Infinity}}
let text = ''
let libName = ''
const tokens = {}
for (let round = 0; round < Number(opt.rounds); round++) {
  const lib = library()
  text = lib.text
  libName = lib.library
  for (const name of ['v1', 'v2']) {
    const g = glmtool(text, tok[name])
    const l = lib.bench[name]
    if (g.tokens !== l.tokens) throw new Error(`${name}: glmtool gives ${g.tokens} tokens, the library ${l.tokens}`)
    tokens[name] = g.tokens
    console.log(JSON.stringify({round, model: name, tokens: g.tokens, librarySeconds: l.seconds, glmtoolSeconds: g.seconds}))
    best[name].lib = Math.min(best[name].lib, l.seconds)
    best[name].glm = Math.min(best[name].glm, g.seconds)
  }
}
const summary = {library: libName, textBytes: Buffer.byteLength(text), node: process.version}
for (const name of ['v1', 'v2']) {
  const b = best[name]
  summary[name] = {
    tokens: tokens[name],
    libraryTokensPerS: Math.round(tokens[name] / b.lib),
    glmtoolTokensPerS: Math.round(tokens[name] / b.glm),
    ratio: Number((b.lib / b.glm).toFixed(2)),
  }
}
console.log(JSON.stringify({summary}))
