import {type ChildProcess, spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync} from 'node:fs'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {assertOutputApart, claimOutput, writeOutputDir, writeOutputFile} from '../src/pipelines/output-dir.js'
import {glmtool, ROOT} from './helpers/cli.js'

/**
 * Data safety of every written directory, and of the one written file (`convert --to gguf --out
 * x.gguf`; issue 11, items 1-3): the output never is, contains or lies inside an input; it
 * appears whole or not at all, also under Ctrl-C, SIGKILL, a concurrent run and a directory
 * (or file) appearing at the target; --force never leaves the target missing. Subprocess cases stop the CLI at a named step with the test-only hook
 * GLMTOOL_TEST_HOOK (output-dir.ts) and wait for its marker file, never for a time.
 */

const work = mkdtempSync(join(tmpdir(), 'glmtool-od-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
/** Everything glmtool leaves beside its targets: temp dirs, previous outputs, locks. */
const leftovers = (dir = work) => readdirSync(dir).filter(f => f.includes('.glmtool-'))
const fresh = (name: string) => {
  const d = join(work, name)
  mkdirSync(d)
  return d
}

/** A pid that surely belongs to no running process: a child that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', ''])
  return r.pid!
}

describe('outputs appear whole or not at all', () => {
  it('renames the finished directory into place and leaves nothing beside it', async () => {
    const out = join(work, 'ok')
    await writeOutputDir(out, {force: false}, async d => writeFileSync(join(d, 'f'), 'x'))
    expect(readFileSync(join(out, 'f'), 'utf8')).toBe('x')
    expect(leftovers()).toEqual([])
  })

  it('a failing build leaves nothing, and an existing output is kept until the new one is whole', async () => {
    const out = join(work, 'keep')
    mkdirSync(out)
    writeFileSync(join(out, 'old'), 'old')
    await expect(writeOutputDir(out, {force: true}, async d => {
      writeFileSync(join(d, 'half'), 'x')
      throw new Error('disk full')
    })).rejects.toThrow('disk full')
    expect(readdirSync(out)).toEqual(['old'])
    expect(leftovers()).toEqual([])
    await expect(writeOutputDir(out, {force: false}, async () => {})).rejects.toThrow(/already exists; pass --force/)
    expect(leftovers()).toEqual([])
  })

  it('a directory that appears at the target during the build is not replaced without --force', async () => {
    const out = join(work, 'appears')
    await expect(writeOutputDir(out, {force: false}, async d => {
      writeFileSync(join(d, 'new'), 'new')
      mkdirSync(out) // someone else, meanwhile: even an empty directory is theirs
    })).rejects.toThrow(/appeared while glmtool was writing it/)
    expect(readdirSync(out)).toEqual([])
    expect(leftovers()).toEqual([])
  })
})

describe('--out is compared with the inputs by real path', () => {
  const d = fresh('paths')
  const model = join(d, 'model')
  mkdirSync(model)
  writeFileSync(join(model, 'config.json'), '{}')
  symlinkSync(model, join(d, 'model-link'))
  const adapterDir = join(d, 'lora')
  mkdirSync(adapterDir)
  writeFileSync(join(adapterDir, 'adapter_model.bin'), 'x')
  const calib = join(d, 'calib.txt')
  writeFileSync(calib, 'text')
  const inputs = [{what: 'input model', path: model}]

  it.each([
    ['the input itself', model, / is the input model /],
    ['"model/."', `${model}/.`, / is the input model /],
    ['a trailing slash', `${model}//`, / is the input model /],
    ['a symlink to the input', join(d, 'model-link'), / is the input model /],
    ['a parent of the input', d, / contains the input model /],
    ['a directory inside the input', join(model, 'sub', 'new'), / lies inside the input model /],
    ['a new directory reached through a symlink into the input', join(d, 'model-link', 'new'), / lies inside the input model /],
  ])('refuses %s, naming both paths', (_what, out, how) => {
    expect(() => assertOutputApart(out, inputs)).toThrow(how)
    expect(() => assertOutputApart(out, inputs)).toThrow(new RegExp(`--out ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} .*${model}`))
  })

  it('refuses an input given through a symlink, an adapter file and a calibration file inside --out', () => {
    expect(() => assertOutputApart(model, [{what: 'input model', path: join(d, 'model-link')}])).toThrow(/ is the input model .*model-link/)
    expect(() => assertOutputApart(adapterDir, [{what: 'adapter', path: join(adapterDir, 'adapter_model.bin')}])).toThrow(/ contains the adapter /)
    expect(() => assertOutputApart(d, [{what: 'calibration file', path: calib}])).toThrow(/ contains the calibration file /)
  })

  it('accepts outputs beside the input, also one whose name starts with the input\'s', () => {
    for (const out of [join(d, 'model-st'), join(d, 'model2'), join(d, 'new', 'deeper')]) expect(() => assertOutputApart(out, inputs)).not.toThrow()
  })

  it('the CLI (convert, merge-adapter, quantize) refuses --out $PWD/model for an input given as "model", model/. and a parent, with --force, before touching anything', () => {
    const before = readdirSync(model)
    const rel = spawnSync(process.execPath, [join(ROOT, 'bin/run.js'), 'convert', 'model', '--to', 'safetensors', '--out', model, '--force'], {cwd: d, encoding: 'utf8'})
    expect(rel.status).toBe(1)
    expect(rel.stderr).toMatch(/^glmtool: --out \S+ \(\S+\) is the input model model \(\S+\); choose an output directory apart from the inputs\n$/)
    const parent = glmtool(['convert', model, '--to', 'safetensors', '--out', d, '--force'])
    expect(parent.code).toBe(1)
    expect(parent.stderr).toMatch(/contains the input model/)
    const merge = glmtool(['merge-adapter', model, '--adapter', join(adapterDir, 'adapter_model.bin'), '--out', d, '--force'])
    expect(merge.code).toBe(1)
    expect(merge.stderr).toMatch(/contains the base model/)
    const quant = glmtool(['quantize', model, '--bits', '8', '--calib', calib, '--out', `${model}/.`, '--force'])
    expect(quant.code).toBe(1)
    expect(quant.stderr).toMatch(/ is the input model /)
    expect(readdirSync(model)).toEqual(before)
    expect(existsSync(calib) && existsSync(join(adapterDir, 'adapter_model.bin'))).toBe(true)
    expect(leftovers(d)).toEqual([])
  })
})

describe('what dead runs leave beside a target is cleaned up by the next run, and only that', () => {
  it('removes dead pids\' temp dirs, keeps a live run\'s and anything not glmtool\'s', async () => {
    const d = fresh('sweep')
    const dead = deadPid()
    const live = process.ppid
    const entries = [`.a.glmtool-tmp-${dead}-x1`, `.b.glmtool-tmp-${dead}-x2.old`, `.a.glmtool-tmp-${live}-x3`, '.a.other', `a.glmtool-tmp-${dead}-x4`]
    for (const e of entries) {
      mkdirSync(join(d, e))
      writeFileSync(join(d, e, 'shard'), 'x')
    }
    writeFileSync(join(d, `.c.glmtool-lock-${dead}-x5`), '{}')
    await writeOutputDir(join(d, 'other-target'), {force: false}, async () => {})
    // .b's previous output (an old version's `<tmp>.old`) had no target: it is put back, not removed.
    expect(readdirSync(d).sort()).toEqual(['.a.other', `.a.glmtool-tmp-${live}-x3`, `a.glmtool-tmp-${dead}-x4`, 'b', 'other-target'].sort())
  })

  it('a dead run\'s lock: its --force replace is rolled back (the old output put back), its temp dirs removed', async () => {
    const d = fresh('journal')
    const dead = deadPid()
    const old = `.m.glmtool-old-${dead}-y1`
    mkdirSync(join(d, old))
    writeFileSync(join(d, old, 'weights'), 'previous')
    mkdirSync(join(d, `.m.glmtool-tmp-${dead}-y2`))
    writeFileSync(join(d, '.m.glmtool-lock'), JSON.stringify({glmtool: 'output-lock', pid: dead, host: hostname(), since: 'then', target: 'm', state: 'swapping', old}))
    await expect(claimOutput(join(d, 'm'), {force: false})).rejects.toThrow(/already exists; pass --force/)
    expect(readFileSync(join(d, 'm', 'weights'), 'utf8')).toBe('previous')
    expect(leftovers(d)).toEqual([])
  })

  it('a dead run that had put its output in place: its old output is removed, never put back over a target the user removed since', async () => {
    const d = fresh('journal-swapped')
    const dead = deadPid()
    const old = `.m.glmtool-old-${dead}-w1`
    mkdirSync(join(d, old))
    writeFileSync(join(d, '.m.glmtool-lock'), JSON.stringify({glmtool: 'output-lock', pid: dead, host: hostname(), since: 'then', target: 'm', state: 'swapped', old}))
    await writeOutputDir(join(d, 'sibling'), {force: false}, async () => {})
    expect(readdirSync(d)).toEqual(['sibling'])
  })

  it('a live run\'s lock is respected: the second run fails, naming the owner, and touches nothing', async () => {
    const d = fresh('live-lock')
    const lock = JSON.stringify({glmtool: 'output-lock', pid: process.ppid, host: hostname(), since: 'now', target: 'm', state: 'building'})
    writeFileSync(join(d, '.m.glmtool-lock'), lock)
    mkdirSync(join(d, `.m.glmtool-tmp-${process.ppid}-z1`))
    await expect(claimOutput(join(d, 'm'), {force: true})).rejects.toThrow(new RegExp(`output .*m is being written by another glmtool run \\(pid ${process.ppid}, since now\\)`))
    expect(readFileSync(join(d, '.m.glmtool-lock'), 'utf8')).toBe(lock)
    expect(leftovers(d).sort()).toEqual(['.m.glmtool-lock', `.m.glmtool-tmp-${process.ppid}-z1`])
  })
})

// --- the CLI, stopped at named steps -------------------------------------------------------------

interface Run {
  child: ChildProcess
  done: Promise<{code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string}>
}

function start(args: string[], env: Record<string, string> = {}): Run {
  const child = spawn(process.execPath, [join(ROOT, 'bin/run.js'), ...args], {cwd: ROOT, env: {...process.env, ...env}, stdio: ['ignore', 'pipe', 'pipe']})
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', b => (stdout += b))
  child.stderr!.on('data', b => (stderr += b))
  const done = new Promise<{code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string}>(res => {
    // 'close': the process has exited and its output is read to the end.
    child.on('close', (code, signal) => res({code, signal, stdout, stderr}))
  })
  return {child, done}
}

/** Resolves when the hook's marker appears; fails if the run ends first (no fixed sleeps). */
async function reached(run: Run, marker: string): Promise<void> {
  let ended = false
  void run.done.then(() => (ended = true))
  while (!existsSync(marker)) {
    if (ended) throw new Error(`the run ended before ${marker}: ${(await run.done).stderr}`)
    await new Promise(r => setTimeout(r, 20))
  }
}

const synthArgs = (out: string, ...more: string[]) => ['synth', '--arch', 'chatglm2-6b', '--size', 'tiny', '--out', out, ...more]
const hook = (dir: string, spec: string) => ({GLMTOOL_TEST_HOOK: spec, GLMTOOL_TEST_HOOK_DIR: dir})
/** An existing output with a marker file, to tell the old output from a new one. */
function oldOutput(out: string): void {
  mkdirSync(out)
  writeFileSync(join(out, 'OLD'), 'previous output')
}

describe('Ctrl-C: the build stops at its next checkpoint, the temp dir is removed once, the message is true', () => {
  it('SIGINT mid-build: exit 130, "was not written", nothing left', async () => {
    const d = fresh('sigint')
    const out = join(d, 'm')
    const run = start(synthArgs(out), hook(d, 'checkpoint:pause'))
    await reached(run, join(d, 'checkpoint.reached'))
    expect(leftovers(d).length).toBeGreaterThan(0) // the temp dir and the lock are there mid-build
    run.child.kill('SIGINT')
    const r = await run.done
    expect(r.code).toBe(130)
    expect(r.stderr).toMatch(new RegExp(`glmtool: interrupted \\(SIGINT\\); removed the partial output, ${out} was not written\\n$`))
    expect(existsSync(out)).toBe(false)
    expect(leftovers(d)).toEqual([])
  })

  it('SIGINT when the build is whole but not yet in place (--force over an existing output): not written, the old output unchanged', async () => {
    const d = fresh('sigint-commit')
    const out = join(d, 'm')
    oldOutput(out)
    const run = start(synthArgs(out, '--force'), hook(d, 'commit:pause'))
    await reached(run, join(d, 'commit.reached'))
    run.child.kill('SIGINT')
    const r = await run.done
    expect(r.code).toBe(130)
    expect(r.stderr).toMatch(/was not written \(the existing .* is unchanged\)\n$/)
    expect(readdirSync(out)).toEqual(['OLD'])
    expect(leftovers(d)).toEqual([])
  })

  it('a second Ctrl-C stops a build that does not reach a checkpoint at once, with the same clean-up', async () => {
    const d = fresh('sigint-twice')
    const out = join(d, 'm')
    const script = `
      import {writeFileSync} from 'node:fs'
      const {writeOutputDir} = await import(${JSON.stringify(join(ROOT, 'dist/pipelines/output-dir.js'))})
      await writeOutputDir(${JSON.stringify(out)}, {force: false}, async d => {
        writeFileSync(d + '/shard', 'partial')
        writeFileSync(${JSON.stringify(join(d, 'building'))}, '')
        await new Promise(() => setInterval(() => {}, 1000)) // busy in code with no checkpoint
      })`
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {stdio: ['ignore', 'pipe', 'pipe']})
    let stderr = ''
    child.stderr.on('data', b => (stderr += b))
    const exited = new Promise(res => child.on('close', res))
    const run = {child, done: exited.then(() => ({code: null, signal: null, stdout: '', stderr}))}
    await reached(run, join(d, 'building'))
    child.kill('SIGINT')
    while (!stderr.includes('stopping at the next safe point')) await new Promise(r => setTimeout(r, 20))
    expect(leftovers(d).length).toBe(2) // the first Ctrl-C removes nothing under the running build
    child.kill('SIGINT')
    expect(await exited).toBe(130)
    expect(stderr).toMatch(/glmtool: interrupted \(SIGINT\); removed the partial output, \S+ was not written\n$/)
    expect(readdirSync(d)).toEqual(['building'])
  })

  it('quantize: SIGINT during calibration removes its scratch directory (float ONNX) too', async () => {
    const d = fresh('sigint-quantize')
    const model = join(d, 'tiny')
    expect(glmtool(synthArgs(model)).code).toBe(0)
    const scratchBefore = readdirSync(tmpdir()).filter(f => f.startsWith('glmtool-quantize-')).length
    const run = start(['quantize', model, '--bits', '8', '--method', 'calibrated', '--calib-samples', '2', '--out', join(d, 'q')], hook(d, 'checkpoint:pause'))
    await reached(run, join(d, 'checkpoint.reached'))
    expect(leftovers(d).filter(f => f.startsWith('.q.glmtool-tmp-')).length).toBe(1) // the scratch dir, beside the target
    run.child.kill('SIGINT')
    const r = await run.done
    expect(r.code).toBe(130)
    expect(r.stderr).toMatch(/interrupted \(SIGINT\); removed the partial output, \S+q was not written\n$/)
    expect(readdirSync(d).sort()).toEqual(['checkpoint.reached', 'tiny'])
    expect(readdirSync(tmpdir()).filter(f => f.startsWith('glmtool-quantize-')).length).toBe(scratchBefore)
  })
})

describe('SIGKILL: the next run cleans up, and a --force replace never loses the old output', () => {
  it('killed mid-build: the temp dir and lock stay; the next run (to this target or a sibling) removes them', async () => {
    const d = fresh('sigkill')
    const out = join(d, 'm')
    const r = await start(synthArgs(out), hook(d, 'checkpoint:kill')).done
    expect(r.signal).toBe('SIGKILL')
    expect(leftovers(d).some(f => f.startsWith('.m.glmtool-tmp-'))).toBe(true)
    expect(leftovers(d)).toContain('.m.glmtool-lock')
    const again = glmtool(synthArgs(join(d, 'sibling')))
    expect(again.code).toBe(0)
    expect(leftovers(d)).toEqual([])
    expect(readdirSync(d).sort()).toEqual(['sibling'])
  })

  it('killed between the two renames of --force: the target is missing until the next run puts the old output back', async () => {
    const d = fresh('swap-aside')
    const out = join(d, 'm')
    oldOutput(out)
    const r = await start(synthArgs(out, '--force'), hook(d, 'swap-aside:kill')).done
    expect(r.signal).toBe('SIGKILL')
    expect(existsSync(out)).toBe(false)
    const aside = leftovers(d).filter(f => f.startsWith('.m.glmtool-old-'))
    expect(aside.length).toBe(1)
    expect(readdirSync(join(d, aside[0]))).toEqual(['OLD'])
    // The next run, even without --force, first recovers: the old output is back, so it refuses.
    const again = glmtool(synthArgs(out))
    expect(again.code).toBe(1)
    expect(again.stderr).toMatch(/already exists; pass --force/)
    expect(readdirSync(out)).toEqual(['OLD'])
    expect(leftovers(d)).toEqual([])
  })

  it('killed after the new output is in place: the next run removes the old one and keeps the new', async () => {
    const d = fresh('swapped')
    const out = join(d, 'm')
    oldOutput(out)
    const r = await start(synthArgs(out, '--force'), hook(d, 'swapped:kill')).done
    expect(r.signal).toBe('SIGKILL')
    expect(readdirSync(out)).toContain('config.json')
    expect(leftovers(d).some(f => f.startsWith('.m.glmtool-old-'))).toBe(true)
    expect(glmtool(['inspect', out]).code).toBe(0)
    expect(glmtool(synthArgs(join(d, 'other'))).code).toBe(0)
    expect(readdirSync(out)).not.toContain('OLD')
    expect(readdirSync(out)).toContain('config.json')
    expect(leftovers(d)).toEqual([])
  })

  it('killed after claiming the target name (an empty directory): the next run removes it and writes', async () => {
    const d = fresh('placing')
    const out = join(d, 'm')
    const r = await start(synthArgs(out), hook(d, 'placing:kill')).done
    expect(r.signal).toBe('SIGKILL')
    expect(readdirSync(out)).toEqual([])
    const again = glmtool(synthArgs(out))
    expect(again.code).toBe(0)
    expect(readdirSync(out)).toContain('config.json')
    expect(leftovers(d)).toEqual([])
  })
})

describe('two runs to one --out, and a directory created at the target mid-run', () => {
  it('a second run while the first builds fails at once, naming the first; the first completes', async () => {
    const d = fresh('concurrent')
    const out = join(d, 'm')
    const first = start(synthArgs(out, '--seed', '1'), hook(d, 'commit:pause'))
    await reached(first, join(d, 'commit.reached'))
    const second = glmtool(synthArgs(out, '--seed', '2', '--force'))
    expect(second.code).toBe(1)
    expect(second.stderr).toMatch(new RegExp(`glmtool: output \\S+ is being written by another glmtool run \\(pid ${first.child.pid}, since [^)]+\\); wait for it to finish or stop it`))
    writeFileSync(join(d, 'commit.go'), '')
    const r = await first.done
    expect(r.code).toBe(0)
    expect(readdirSync(out)).toContain('config.json')
    expect(leftovers(d)).toEqual([])
  })

  it('started together: exactly one wins, the other fails clearly', async () => {
    const d = fresh('race')
    const out = join(d, 'm')
    const runs = await Promise.all([start(synthArgs(out, '--seed', '1')).done, start(synthArgs(out, '--seed', '2')).done])
    expect(runs.map(r => r.code).sort()).toEqual([0, 1])
    expect(runs.find(r => r.code === 1)!.stderr).toMatch(/is being written by another glmtool run|already exists; pass --force/)
    expect(leftovers(d)).toEqual([])
  })

  it('a directory created at the target while the run builds is left as it is, without --force', async () => {
    const d = fresh('appeared')
    const out = join(d, 'm')
    const run = start(synthArgs(out), hook(d, 'commit:pause'))
    await reached(run, join(d, 'commit.reached'))
    oldOutput(out)
    writeFileSync(join(d, 'commit.go'), '')
    const r = await run.done
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/output \S+ appeared while glmtool was writing it \(it did not exist when the run started\); left it as it is, pass --force to replace it\n$/)
    expect(readdirSync(out)).toEqual(['OLD'])
    expect(leftovers(d)).toEqual([])
  })
})

const strace = spawnSync('strace', ['-o', '/dev/null', 'true']).status === 0
if (!strace) console.log('skipping the fsync-order check: strace is not installed or cannot trace here')

describe('durability', () => {
  it.skipIf(!strace)('every file and directory is fsynced before the rename into place, and the parent after it (strace)', () => {
    const d = fresh('fsync')
    const out = join(d, 'm')
    const r = spawnSync('strace', ['-f', '-y', '-qq', '-e', 'trace=fsync,fdatasync,rename,renameat,renameat2', '-o', join(d, 'trace'), process.execPath, join(ROOT, 'bin/run.js'), ...synthArgs(out)], {encoding: 'utf8'})
    expect(r.status).toBe(0)
    const lines = readFileSync(join(d, 'trace'), 'utf8').split('\n')
    const commit = lines.findIndex(l => /rename/.test(l) && l.includes('.m.glmtool-tmp-') && l.includes(`"${out}"`) && / = 0$/.test(l))
    expect(commit).toBeGreaterThan(0)
    const synced = new Set(lines.slice(0, commit).flatMap(l => /fsync\(\d+<([^>]+)>\)\s+= 0$/.exec(l)?.[1] ?? []))
    const tmp = /"([^"]*\.m\.glmtool-tmp-[^"]*)"/.exec(lines[commit])![1]
    for (const f of readdirSync(out)) expect(synced.has(join(tmp, f)), `${f} fsynced before the rename`).toBe(true)
    expect(synced.has(tmp)).toBe(true)
    expect(lines.slice(commit + 1).some(l => new RegExp(`fsync\\(\\d+<${d}>\\)\\s+= 0$`).test(l))).toBe(true)
  })
})

// --- a file target: convert --to gguf --out x.gguf -------------------------------------------------

describe('a file target (writeOutputFile): the same claim, lock and clean-up as a directory', () => {
  const put = (text: string) => async (fh: import('node:fs/promises').FileHandle) => {
    await fh.write(text)
    return text.length
  }

  it('writes the file whole through a temporary file beside it and leaves nothing else', async () => {
    const d = fresh('file-ok')
    const out = join(d, 'x.gguf')
    expect(await writeOutputFile(out, {force: false}, put('whole'))).toBe(5)
    expect(readFileSync(out, 'utf8')).toBe('whole')
    expect(readdirSync(d)).toEqual(['x.gguf'])
  })

  it('a failing build leaves nothing; an existing file is kept until the new one is whole, and replaced only with --force', async () => {
    const d = fresh('file-fail')
    const out = join(d, 'x.gguf')
    writeFileSync(out, 'old')
    await expect(writeOutputFile(out, {force: true}, async fh => {
      await fh.write('half')
      throw new Error('disk full')
    })).rejects.toThrow('disk full')
    expect(readFileSync(out, 'utf8')).toBe('old')
    expect(leftovers(d)).toEqual([])
    await expect(writeOutputFile(out, {force: false}, put('new'))).rejects.toThrow(/already exists; pass --force/)
    expect(readFileSync(out, 'utf8')).toBe('old')
    await writeOutputFile(out, {force: true}, put('new'))
    expect(readFileSync(out, 'utf8')).toBe('new')
    expect(readdirSync(d)).toEqual(['x.gguf'])
  })

  it('a file that appears at the target during the build is left as it is without --force', async () => {
    const d = fresh('file-appears')
    const out = join(d, 'x.gguf')
    await expect(writeOutputFile(out, {force: false}, async fh => {
      await fh.write('ours')
      writeFileSync(out, 'theirs') // someone else, meanwhile
    })).rejects.toThrow(/appeared while glmtool was writing it .*pass --force/)
    expect(readFileSync(out, 'utf8')).toBe('theirs')
    expect(leftovers(d)).toEqual([])
  })

  it('never replaces a directory: one there at the start is refused even with --force, one appearing meanwhile is left as it is', async () => {
    const d = fresh('file-dir')
    const out = join(d, 'x.gguf')
    mkdirSync(out)
    writeFileSync(join(out, 'keep'), 'k')
    await expect(writeOutputFile(out, {force: true}, put('x'))).rejects.toThrow(/exists and is not a file/)
    const later = join(d, 'y.gguf')
    await expect(writeOutputFile(later, {force: true}, async fh => {
      await fh.write('x')
      mkdirSync(later)
      writeFileSync(join(later, 'keep'), 'k')
    })).rejects.toThrow(/became a directory while glmtool was writing it/)
    expect(readdirSync(out)).toEqual(['keep'])
    expect(readdirSync(later)).toEqual(['keep'])
    expect(leftovers(d)).toEqual([])
  })

  it('the next run removes a dead run\'s temporary file (also one named as earlier glmtool versions named it) and lock, keeping a live one\'s', async () => {
    const d = fresh('file-sweep')
    const dead = deadPid()
    writeFileSync(join(d, `.x.gguf.glmtool-tmp-${dead}-mfz1`), 'partial')
    writeFileSync(join(d, `.x.gguf.glmtool-tmp-${process.ppid}-mfz2`), 'live')
    writeFileSync(join(d, '.x.gguf.glmtool-lock'), JSON.stringify({glmtool: 'output-lock', pid: dead, host: hostname(), since: 'then', target: 'x.gguf', state: 'building'}))
    await writeOutputFile(join(d, 'x.gguf'), {force: false}, put('new'))
    expect(readdirSync(d).sort()).toEqual([`.x.gguf.glmtool-tmp-${process.ppid}-mfz2`, 'x.gguf'])
  })

  it('a dead run that claimed the name with an empty file (no hard links) has it removed; a whole file there is kept', async () => {
    const d = fresh('file-placing')
    const dead = deadPid()
    const journal = (target: string) => JSON.stringify({glmtool: 'output-lock', pid: dead, host: hostname(), since: 'then', target, state: 'placing'})
    writeFileSync(join(d, 'a.gguf'), '')
    writeFileSync(join(d, '.a.gguf.glmtool-lock'), journal('a.gguf'))
    writeFileSync(join(d, 'b.gguf'), 'whole: the rename was done')
    writeFileSync(join(d, '.b.gguf.glmtool-lock'), journal('b.gguf'))
    await writeOutputFile(join(d, 'a.gguf'), {force: false}, put('new'))
    expect(readFileSync(join(d, 'a.gguf'), 'utf8')).toBe('new')
    expect(readFileSync(join(d, 'b.gguf'), 'utf8')).toBe('whole: the rename was done')
    expect(leftovers(d)).toEqual([])
  })
})

describe('a file target at the CLI (convert --to gguf --out x.gguf), stopped at named steps', () => {
  const d0 = fresh('gguf-cli')
  const model = join(d0, 'v2')
  const reference = join(d0, 'reference.gguf')
  const gguf = (out: string, ...more: string[]) => ['convert', model, '--to', 'gguf', '--type', 'q8_0', '--out', out, ...more]
  /** A previous output, told apart from a new one by its bytes. */
  const OLD = 'previous output, not a GGUF'
  /** What an undisturbed run writes: every file a run puts in place must be these bytes. */
  let expected: Buffer
  beforeAll(() => {
    const s = glmtool(synthArgs(model))
    if (s.code !== 0) throw new Error(s.stderr)
    const r = glmtool(gguf(reference))
    if (r.code !== 0) throw new Error(r.stderr)
    expected = readFileSync(reference)
  }, 60_000)

  it('SIGINT mid-build: exit 130, "was not written", no partial file, nothing beside it', async () => {
    const d = fresh('gguf-sigint')
    const out = join(d, 'x.gguf')
    const run = start(gguf(out), hook(d, 'checkpoint:pause'))
    await reached(run, join(d, 'checkpoint.reached'))
    expect(leftovers(d).sort()).toEqual(expect.arrayContaining(['.x.gguf.glmtool-lock'])) // the lock and the temp file mid-build
    expect(leftovers(d).some(f => f.startsWith('.x.gguf.glmtool-tmp-'))).toBe(true)
    run.child.kill('SIGINT')
    const r = await run.done
    expect(r.code).toBe(130)
    expect(r.stderr).toMatch(new RegExp(`glmtool: interrupted \\(SIGINT\\); removed the partial output, ${out} was not written\\n$`))
    expect(readdirSync(d)).toEqual(['checkpoint.reached'])
  }, 60_000)

  it('SIGKILL mid-build: the temp file and lock stay; the next run to the same file removes them and writes it', async () => {
    const d = fresh('gguf-sigkill')
    const out = join(d, 'x.gguf')
    const r = await start(gguf(out), hook(d, 'checkpoint:kill')).done
    expect(r.signal).toBe('SIGKILL')
    expect(existsSync(out)).toBe(false)
    expect(leftovers(d).some(f => f.startsWith('.x.gguf.glmtool-tmp-'))).toBe(true)
    const again = glmtool(gguf(out))
    expect(again.code, again.stderr).toBe(0)
    expect(readFileSync(out).equals(expected)).toBe(true)
    expect(readdirSync(d)).toEqual(['x.gguf'])
  }, 60_000)

  it('--force replace killed when the new file is whole but not in place: the old file is there, unchanged; the next run cleans up', async () => {
    const d = fresh('gguf-force-commit')
    const out = join(d, 'x.gguf')
    writeFileSync(out, OLD)
    const r = await start(gguf(out, '--force'), hook(d, 'commit:kill')).done
    expect(r.signal).toBe('SIGKILL')
    expect(readFileSync(out, 'utf8')).toBe(OLD)
    expect(glmtool(gguf(join(d, 'sibling.gguf'))).code).toBe(0)
    expect(readFileSync(out, 'utf8')).toBe(OLD)
    expect(readdirSync(d).sort()).toEqual(['sibling.gguf', 'x.gguf'])
  }, 60_000)

  it('killed after the file is in place (its temporary name a second hard link): the file is whole, the next run removes only the extra name', async () => {
    const d = fresh('gguf-placed')
    const out = join(d, 'x.gguf')
    const r = await start(gguf(out), hook(d, 'swapped:kill')).done
    expect(r.signal).toBe('SIGKILL')
    expect(readFileSync(out).equals(expected)).toBe(true)
    expect(statSync(out).nlink).toBe(2)
    expect(glmtool(gguf(join(d, 'sibling.gguf'))).code).toBe(0)
    expect(readdirSync(d).sort()).toEqual(['sibling.gguf', 'x.gguf'])
    expect(readFileSync(out).equals(expected)).toBe(true)
    expect(statSync(out).nlink).toBe(1)
  }, 60_000)

  it('a second run while the first builds fails at once, naming the first, even with --force; the first completes', async () => {
    const d = fresh('gguf-concurrent')
    const out = join(d, 'x.gguf')
    const first = start(gguf(out), hook(d, 'commit:pause'))
    await reached(first, join(d, 'commit.reached'))
    const second = glmtool(gguf(out, '--force'))
    expect(second.code).toBe(1)
    expect(second.stderr).toMatch(new RegExp(`^glmtool: output \\S+ is being written by another glmtool run \\(pid ${first.child.pid}, since [^)]+\\); wait for it to finish or stop it`))
    writeFileSync(join(d, 'commit.go'), '')
    const r = await first.done
    expect(r.code, r.stderr).toBe(0)
    expect(readFileSync(out).equals(expected)).toBe(true)
    expect(leftovers(d)).toEqual([])
  }, 60_000)

  it('two runs started together: exactly one wins, the other fails clearly, the file is whole', async () => {
    const d = fresh('gguf-race')
    const out = join(d, 'x.gguf')
    const runs = await Promise.all([start(gguf(out)).done, start(gguf(out)).done])
    expect(runs.map(r => r.code).sort()).toEqual([0, 1])
    expect(runs.find(r => r.code === 1)!.stderr).toMatch(/^glmtool: output \S+ (is being written by another glmtool run|already exists; pass --force)/)
    expect(readFileSync(out).equals(expected)).toBe(true)
    expect(readdirSync(d)).toEqual(['x.gguf'])
  }, 60_000)

  it('a file created at the target while the run builds is left as it is, without --force', async () => {
    const d = fresh('gguf-appeared')
    const out = join(d, 'x.gguf')
    const run = start(gguf(out), hook(d, 'commit:pause'))
    await reached(run, join(d, 'commit.reached'))
    writeFileSync(out, OLD)
    writeFileSync(join(d, 'commit.go'), '')
    const r = await run.done
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/^glmtool: output \S+ appeared while glmtool was writing it \(it did not exist when the run started\); left it as it is, pass --force to replace it\n$/)
    expect(readFileSync(out, 'utf8')).toBe(OLD)
    expect(leftovers(d)).toEqual([])
  }, 60_000)

  it.skipIf(!strace)('the target name is only ever given by one link (new) or one rename (--force) of the fsynced temporary file, and the parent is fsynced after (strace)', () => {
    const d = fresh('gguf-strace')
    const out = join(d, 'x.gguf')
    const trace = (name: string, args: string[]) => {
      const r = spawnSync('strace', ['-f', '-y', '-qq', '-e', 'trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat,unlink,unlinkat,open,openat,truncate,ftruncate', '-o', join(d, name), process.execPath, join(ROOT, 'bin/run.js'), ...args], {encoding: 'utf8'})
      expect(r.status, r.stderr).toBe(0)
      return readFileSync(join(d, name), 'utf8').split('\n')
    }
    for (const [name, args, call] of [['new', gguf(out), /link/], ['force', gguf(out, '--force'), /rename/]] as const) {
      const lines = trace(name, args)
      // Every successful call that names the target itself (not its hidden neighbours).
      const onTarget = lines.filter(l => l.includes(`"${out}"`) && / = \d+$/.test(l))
      expect(onTarget, `${name}: ${onTarget.join('\n')}`).toHaveLength(1)
      expect(onTarget[0]).toMatch(call)
      expect(onTarget[0]).toMatch(/\.x\.gguf\.glmtool-tmp-/)
      const at = lines.indexOf(onTarget[0])
      const tmp = /"([^"]*\.x\.gguf\.glmtool-tmp-[^"]*)"/.exec(onTarget[0])![1]
      expect(lines.slice(0, at).some(l => new RegExp(`fsync\\(\\d+<${tmp}>\\)\\s+= 0$`).test(l)), `${name}: the file fsynced before it is named`).toBe(true)
      expect(lines.slice(at + 1).some(l => new RegExp(`fsync\\(\\d+<${d}>\\)\\s+= 0$`).test(l)), `${name}: the parent fsynced after`).toBe(true)
      expect(readFileSync(out).equals(expected)).toBe(true)
      rmSync(join(d, name))
    }
    expect(readdirSync(d)).toEqual(['x.gguf'])
  }, 60_000)
})
