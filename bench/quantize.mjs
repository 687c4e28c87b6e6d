#!/usr/bin/env node
// Benchmark: `glmtool quantize` (issue 4). Targets for RTN of the full 6B model on the 2-core
// machine: streams tensor by tensor, peak RSS < 2 GB, every core busy, under 3 minutes.
//
//   node bench/quantize.mjs [--arch chatglm2-6b] [--size full] [--dir /tmp/bench] [--bits 4,8]
//                           [--calibrated-size small] [--keep]
//
// Synthesises the model once (kept for later runs, as bench/convert.mjs does), then for each
// --bits runs `quantize --method rtn --evaluate off` (each followed by `sync`, so the time
// includes writing), and prints one JSON line per run: wall time, the quantize step's own time,
// peak RSS of the quantizing process (worker threads included: they share it), CPU time / wall
// (cores kept busy) and the FP16 / quantized model sizes. With --calibrated-size it also times
// `--method calibrated` (with the end-to-end report) on a synth --outliers model of that size,
// where calibration runs (the 6B model would need ~25 GB as float32 in onnxruntime).
// Outputs are deleted after each run unless --keep. Needs `npm run build` first.
import {execFileSync, spawnSync} from 'node:child_process'
import {existsSync, readdirSync, rmSync, statSync} from 'node:fs'
import {cpus} from 'node:os'
import {join} from 'node:path'
import {parseArgs} from 'node:util'

const {values: opt} = parseArgs({options: {
  arch: {type: 'string', default: 'chatglm2-6b'},
  size: {type: 'string', default: 'full'},
  dir: {type: 'string', default: '/tmp/bench'},
  bits: {type: 'string', default: '4,8'},
  'calibrated-size': {type: 'string'},
  keep: {type: 'boolean', default: false},
}})
const root = new URL('..', import.meta.url).pathname
const cli = (args) => {
  const t0 = process.hrtime.bigint()
  const r = spawnSync('/usr/bin/time', ['-f', '%e %U %S %M', process.execPath, join(root, 'bin/run.js'), ...args, '--json'], {encoding: 'utf8', maxBuffer: 1 << 28})
  if (r.status !== 0) throw new Error(`glmtool ${args.join(' ')} failed: ${r.stderr}${r.stdout}`)
  const [wall, user, sys, maxKb] = r.stderr.trim().split('\n').pop().split(' ').map(Number)
  return {json: JSON.parse(r.stdout), wall, cpu: user + sys, maxRssMB: Math.round(maxKb / 1024), seconds: Number(process.hrtime.bigint() - t0) / 1e9}
}
const dirBytes = (d) => readdirSync(d).reduce((a, f) => a + statSync(join(d, f)).size, 0)

const model = join(opt.dir, `${opt.arch}-${opt.size}`)
if (!existsSync(model)) {
  const s = cli(['synth', '--arch', opt.arch, '--size', opt.size, '--out', model])
  console.log(JSON.stringify({step: 'synth', seconds: s.json.seconds, bytes: s.json.bytes}))
}
console.log(JSON.stringify({machine: `${cpus().length} x ${cpus()[0].model}`, node: process.version, model, fp16Bytes: dirBytes(model)}))
for (const bits of opt.bits.split(',')) {
  const out = join(opt.dir, `${opt.arch}-${opt.size}-int${bits}`)
  rmSync(out, {recursive: true, force: true})
  const r = cli(['quantize', model, '--bits', bits, '--out', out, '--evaluate', 'off'])
  execFileSync('sync')
  const j = r.json
  console.log(JSON.stringify({
    bits: Number(bits), method: 'rtn', wallSeconds: r.wall, quantizeSeconds: j.seconds.quantize, cpuSeconds: +r.cpu.toFixed(1),
    coresBusy: +(r.cpu / r.wall).toFixed(2), threads: j.threads, peakRssMB: r.maxRssMB, reportedPeakRssMB: Math.round(j.peakRssBytes / 1e6),
    sourceBytes: j.sourceBytes, tensorBytes: j.bytes, dirBytes: dirBytes(out), meanWeightError: +j.summary.weightError.chosen.toFixed(4),
  }))
  if (!opt.keep) rmSync(out, {recursive: true, force: true})
}
if (opt['calibrated-size']) {
  for (const arch of ['chatglm-6b', 'chatglm2-6b']) {
    const src = join(opt.dir, `${arch}-${opt['calibrated-size']}-outliers`)
    if (!existsSync(src)) cli(['synth', '--arch', arch, '--size', opt['calibrated-size'], '--outliers', '--out', src])
    const out = `${src}-int4-cal`
    rmSync(out, {recursive: true, force: true})
    const r = cli(['quantize', src, '--bits', '4', '--method', 'calibrated', '--out', out, '--evaluate', 'on'])
    const j = r.json
    const [rtn, cal] = j.endToEnd.models
    console.log(JSON.stringify({
      arch, size: opt['calibrated-size'], bits: 4, method: 'calibrated', wallSeconds: r.wall, seconds: j.seconds, peakRssMB: r.maxRssMB,
      calibrationTokens: j.calibration.tokens, heldOutPositions: j.endToEnd.positions,
      klRtn: rtn.meanKl, klCalibrated: cal.meanKl, klRatio: +(rtn.meanKl / cal.meanKl).toFixed(2), top1Rtn: +rtn.top1.toFixed(3), top1Calibrated: +cal.top1.toFixed(3),
      outputErrorRtn: +j.summary.outputError.rtn.toFixed(4), outputErrorCalibrated: +j.summary.outputError.chosen.toFixed(4),
    }))
    if (!opt.keep) rmSync(out, {recursive: true, force: true})
  }
}
