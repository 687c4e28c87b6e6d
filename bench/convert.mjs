#!/usr/bin/env node
// Benchmark: `glmtool convert --to safetensors` against `cp` of the same shards, on the same
// disk, in one run (issue 2). Targets: convert <= 1.25x the time of cp, peak RSS < 1 GB.
//
//   node bench/convert.mjs [--arch chatglm-6b] [--size full] [--dir /tmp/glmtool-bench] [--rounds 3]
//
// Synthesises the model once (kept for later runs), then alternates cp and convert `rounds`
// times so page-cache effects hit both alike, and prints one JSON line per measurement plus a
// summary with the ratio. Needs `npm run build` first.
import {execFileSync, spawnSync} from 'node:child_process'
import {existsSync, readdirSync, rmSync, statfsSync} from 'node:fs'
import {join} from 'node:path'
import {parseArgs} from 'node:util'

const {values: opt} = parseArgs({options: {
  arch: {type: 'string', default: 'chatglm-6b'},
  size: {type: 'string', default: 'full'},
  dir: {type: 'string', default: '/tmp/glmtool-bench'},
  rounds: {type: 'string', default: '3'},
}})
const root = new URL('..', import.meta.url).pathname
const cli = (args) => {
  const r = spawnSync(process.execPath, [join(root, 'bin/run.js'), ...args, '--json'], {encoding: 'utf8', maxBuffer: 1 << 26})
  if (r.status !== 0) throw new Error(`glmtool ${args.join(' ')} failed: ${r.stderr}${r.stdout}`)
  return JSON.parse(r.stdout)
}
const model = join(opt.dir, `${opt.arch}-${opt.size}`)
if (!existsSync(model)) {
  const s = cli(['synth', '--arch', opt.arch, '--size', opt.size, '--out', model])
  console.log(JSON.stringify({step: 'synth', seconds: s.seconds, bytes: s.bytes, peakRssMB: Math.round(s.peakRssBytes / 1e6)}))
}
const shards = readdirSync(model).filter(f => f.endsWith('.bin'))
const results = {cp: [], convert: []}
for (let i = 0; i < Number(opt.rounds); i++) {
  const cpOut = join(opt.dir, 'cp-out')
  rmSync(cpOut, {recursive: true, force: true})
  execFileSync('mkdir', ['-p', cpOut])
  let t0 = process.hrtime.bigint()
  execFileSync('cp', [...shards.map(f => join(model, f)), cpOut])
  execFileSync('sync')
  const cpSec = Number(process.hrtime.bigint() - t0) / 1e9
  results.cp.push(cpSec)
  rmSync(cpOut, {recursive: true, force: true})
  const stOut = join(opt.dir, 'st-out')
  t0 = process.hrtime.bigint()
  const c = cli(['convert', model, '--to', 'safetensors', '--out', stOut, '--force'])
  execFileSync('sync')
  const cvSec = Number(process.hrtime.bigint() - t0) / 1e9
  results.convert.push(cvSec)
  console.log(JSON.stringify({round: i + 1, cpSeconds: +cpSec.toFixed(2), convertSeconds: +cvSec.toFixed(2), bytes: c.bytes, convertPeakRssMB: Math.round(c.peakRssBytes / 1e6)}))
  rmSync(stOut, {recursive: true, force: true})
}
const median = xs => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
const fs = statfsSync(opt.dir)
console.log(JSON.stringify({summary: true, arch: opt.arch, size: opt.size, cpMedian: +median(results.cp).toFixed(2), convertMedian: +median(results.convert).toFixed(2), ratio: +(median(results.convert) / median(results.cp)).toFixed(3), freeDiskGB: Math.round(fs.bavail * fs.bsize / 1e9)}))
