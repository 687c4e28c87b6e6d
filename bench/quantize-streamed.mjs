#!/usr/bin/env node
// Benchmark: streamed calibration at the real 6B size (issue 13). Targets on the 2-core, 24 GB
// machine: `quantize --bits 4 --method calibrated` with the default calibration set (32 x 128
// tokens) in <= 30 minutes at peak RSS <= 6 GB, and with --evaluate on the calibrated INT4 KL at
// least 2x lower than RTN INT4's on a synth --outliers model.
//
//   node bench/quantize-streamed.mjs [--arch chatglm2-6b] [--size full] [--dir /tmp/bench-streamed]
//                                    [--evaluate on|off] [--rtn] [--keep]
//
// Synthesises a `synth --outliers` model into --dir when it is missing, then runs
// `quantize --bits 4 --method calibrated` under /usr/bin/time and prints one JSON line: wall time, max RSS of the process (worker threads share it), CPU time / wall, the
// steps' own times, and with --evaluate on (the default) the KL / top-1 of the RTN baseline and
// the calibrated model against the float model (the calibrated run evaluates both). --rtn also
// times `--method rtn` on its own. Outputs are deleted unless --keep, and so is the synth model
// when this run made it. Needs `npm run build` first.
import {execFileSync, spawnSync} from 'node:child_process'
import {existsSync, readFileSync, rmSync} from 'node:fs'
import {cpus, tmpdir, totalmem} from 'node:os'
import {join} from 'node:path'
import {parseArgs} from 'node:util'
import {root} from './lib.mjs'

const {values: opt} = parseArgs({options: {
  arch: {type: 'string', default: 'chatglm2-6b'},
  size: {type: 'string', default: 'full'},
  dir: {type: 'string', default: '/tmp/bench-streamed'},
  evaluate: {type: 'string', default: 'on'},
  rtn: {type: 'boolean', default: false},
  keep: {type: 'boolean', default: false},
}})

/** The built CLI under /usr/bin/time; its stage notes go to our stderr as they come. */
function timed(args) {
  const timeFile = join(tmpdir(), `glmtool-bench-time-${process.pid}`)
  const r = spawnSync('/usr/bin/time', ['-o', timeFile, '-f', '%e %U %S %M', process.execPath, join(root, 'bin/run.js'), ...args, '--json'],
    {encoding: 'utf8', maxBuffer: 1 << 28, stdio: ['ignore', 'pipe', 'inherit']})
  const [wall, user, sys, maxKb] = readFileSync(timeFile, 'utf8').trim().split('\n').pop().split(' ').map(Number)
  rmSync(timeFile, {force: true})
  if (r.status !== 0) throw new Error(`glmtool ${args.join(' ')} failed (exit ${r.status})`)
  return {json: JSON.parse(r.stdout), wall, cpu: user + sys, maxRssMB: Math.round(maxKb / 1024)}
}

/** The checkout's commit; 'unknown' where the tree is a copy without .git (the GPU machine). */
function gitCommit() {
  try {
    return execFileSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore']}).trim()
  } catch {
    return process.env.GLMTOOL_COMMIT ?? 'unknown'
  }
}

const model = join(opt.dir, `${opt.arch}-${opt.size}-outliers`)
let made = false
if (!existsSync(model)) {
  const s = timed(['synth', '--arch', opt.arch, '--size', opt.size, '--outliers', '--out', model])
  made = true
  console.log(JSON.stringify({step: 'synth', wallSeconds: s.wall, bytes: s.json.bytes}))
}
console.log(JSON.stringify({machine: `${cpus().length} x ${cpus()[0].model}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB`, node: process.version, model,
  commit: gitCommit()}))

const row = (method, r) => {
  const j = r.json
  const e = j.endToEnd ?? {}
  const kl = Object.fromEntries((e.models ?? []).map(m => [m.label, {meanKl: m.meanKl, top1: +m.top1.toFixed(3)}]))
  return {
    arch: opt.arch, size: opt.size, bits: 4, method, wallSeconds: r.wall, cpuSeconds: +r.cpu.toFixed(1), coresBusy: +(r.cpu / r.wall).toFixed(2),
    peakRssMB: r.maxRssMB, threads: j.threads, seconds: j.seconds,
    ...(j.calibration ? {calibrationSequences: j.calibration.sequences, calibrationTokens: j.calibration.tokens} : {}),
    ...(e.skipped ? {evaluation: `skipped: ${e.skipped}`} : {heldOutPositions: e.positions, kl}),
    ...(kl.rtn && kl.calibrated ? {klRatio: +(kl.rtn.meanKl / kl.calibrated.meanKl).toFixed(2)} : {}),
    ...(j.summary.outputError ? {outputErrorRtn: +j.summary.outputError.rtn.toFixed(4), outputErrorChosen: +j.summary.outputError.chosen.toFixed(4)} : {}),
  }
}

for (const method of ['calibrated', ...(opt.rtn ? ['rtn'] : [])]) {
  const out = join(opt.dir, `${opt.arch}-${opt.size}-int4-${method}`)
  rmSync(out, {recursive: true, force: true})
  const r = timed(['quantize', model, '--bits', '4', '--method', method, '--out', out, '--evaluate', opt.evaluate])
  execFileSync('sync')
  console.log(JSON.stringify(row(method, r)))
  if (!opt.keep) rmSync(out, {recursive: true, force: true})
}
if (made && !opt.keep) rmSync(model, {recursive: true, force: true})
