#!/usr/bin/env node
// Benchmark: what verifying the zip CRC-32 while streaming costs `glmtool convert --to
// safetensors` on a full-size model (issue 11 item 8; target <= 5% of convert time).
//
//   node bench/crc-cost.mjs --base /tmp/glmtool-base [--arch chatglm2-6b] [--size full] [--dir /tmp/glmtool-bench] [--rounds 3]
//
// --base is a built checkout of the commit before CRC checking (git archive <commit> | tar -x,
// node_modules linked, `npx tsc -p tsconfig.build.json`). Synthesises the model once, then
// alternates convert with the base build and with this one (each followed by `sync`), and
// compares medians. Also times zlib.crc32 alone over every shard byte (page-cached reads
// excluded) as the cost's lower bound.
import {execFileSync, spawnSync} from 'node:child_process'
import {existsSync, readdirSync, rmSync, openSync, readSync, closeSync, fstatSync} from 'node:fs'
import {join} from 'node:path'
import {parseArgs} from 'node:util'
import zlib from 'node:zlib'

const {values: opt} = parseArgs({options: {
  base: {type: 'string'},
  arch: {type: 'string', default: 'chatglm2-6b'},
  size: {type: 'string', default: 'full'},
  dir: {type: 'string', default: '/tmp/glmtool-bench'},
  rounds: {type: 'string', default: '3'},
}})
if (!opt.base) throw new Error('--base DIR (a built checkout without CRC checking) is required')
const here = new URL('..', import.meta.url).pathname
const cli = (root, args) => {
  const r = spawnSync(process.execPath, [join(root, 'bin/run.js'), ...args, '--json'], {encoding: 'utf8', maxBuffer: 1 << 26})
  if (r.status !== 0) throw new Error(`glmtool ${args.join(' ')} failed: ${r.stderr}${r.stdout}`)
  return JSON.parse(r.stdout)
}
const model = join(opt.dir, `${opt.arch}-${opt.size}`)
if (!existsSync(model)) {
  const s = cli(here, ['synth', '--arch', opt.arch, '--size', opt.size, '--out', model])
  console.log(JSON.stringify({step: 'synth', seconds: s.seconds, bytes: s.bytes}))
}
const results = {base: [], crc: []}
const out = join(opt.dir, 'crc-out')
for (let i = 0; i < Number(opt.rounds); i++) {
  for (const [label, root] of [['base', opt.base], ['crc', here]]) {
    rmSync(out, {recursive: true, force: true})
    const t0 = process.hrtime.bigint()
    const c = cli(root, ['convert', model, '--to', 'safetensors', '--out', out])
    execFileSync('sync')
    const sec = Number(process.hrtime.bigint() - t0) / 1e9
    results[label].push(sec)
    console.log(JSON.stringify({round: i + 1, build: label, seconds: +sec.toFixed(2), bytes: c.bytes, peakRssMB: Math.round(c.peakRssBytes / 1e6)}))
  }
}
rmSync(out, {recursive: true, force: true})
// zlib.crc32 alone, on 64 MB pieces already read (the read time is excluded).
let crcNs = 0n
let total = 0
const buf = Buffer.allocUnsafe(64 << 20)
for (const f of readdirSync(model).filter(n => n.endsWith('.bin'))) {
  const fd = openSync(join(model, f), 'r')
  const size = fstatSync(fd).size
  let crc = 0
  for (let o = 0; o < size;) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, size - o), o)
    const t = process.hrtime.bigint()
    crc = zlib.crc32(buf.subarray(0, n), crc)
    crcNs += process.hrtime.bigint() - t
    o += n
  }
  total += size
  closeSync(fd)
}
const median = xs => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
const mb = median(results.base)
const mc = median(results.crc)
console.log(JSON.stringify({summary: true, arch: opt.arch, size: opt.size, baseMedian: +mb.toFixed(2), crcMedian: +mc.toFixed(2), ratio: +(mc / mb).toFixed(3),
  crc32AloneSeconds: +(Number(crcNs) / 1e9).toFixed(2), crc32GBps: +(total / (Number(crcNs) / 1e9) / 1e9).toFixed(2), crc32AloneShareOfCrcMedian: +((Number(crcNs) / 1e9) / mc).toFixed(3)}))
