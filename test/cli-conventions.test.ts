/**
 * One convention across commands (issue 11 item 11), run as a user would (`node bin/run.js`):
 * -h and `help CMD`, the short flags, `--prompt` before the model, sampling flags refused before
 * any model loads, piped `chat --json` printing only JSON, `stoppedBy: max-new-tokens`, `inspect`
 * of glmtool's ONNX directories (initializers compared with python3-onnx's reading of the same
 * file), Hugging Face ids through a local cache laid out as huggingface_hub lays it out (blobs +
 * symlinked snapshots + refs), `bench --json` / `--out` / `--backend auto`, and the interactive
 * prompt redrawn by readline on history recall (under a real pseudo-terminal, python3's pty).
 */
import {spawnSync} from 'node:child_process'
import {cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {resolveModelArg} from '../src/cli/model-arg.js'
import {glmtool, ROOT} from './helpers/cli.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-conventions-'))
const env = {GLMTOOL_CACHE: join(work, 'cache'), HF_HOME: join(work, 'hf'), GLMTOOL_CUDA_ADDON: join(work, 'no-addon.node')}
afterAll(() => rmSync(work, {recursive: true, force: true}))
const v2 = join(work, 'tiny-v2')
const python = '/usr/bin/python3'
const hasPy = (mod: string) => spawnSync(python, ['-c', `import ${mod}`]).status === 0
const hasOnnx = hasPy('onnx')
const hasPty = process.platform === 'linux' && hasPy('pty')

beforeAll(() => {
  // Short flags: -o, -d.
  const r = glmtool(['synth', '--arch', 'chatglm2-6b', '-o', v2, '-d', 'f32', '--seed', '3'])
  if (r.code !== 0) throw new Error(r.stderr)
})

describe('help and short flags', () => {
  it('-h and `glmtool help CMD` print the command\'s help, with the short flags', () => {
    const long = glmtool(['synth', '--help'])
    expect(long.code).toBe(0)
    expect(glmtool(['synth', '-h']).stdout).toBe(long.stdout)
    const help = glmtool(['help', 'synth'])
    expect(help.code).toBe(0)
    expect(help.stdout).toBe(long.stdout)
    for (const f of ['-o, --out=<value>', '-f, --force', '-d, --dtype=<option>']) expect(long.stdout).toContain(f)
  })

  it('every model-taking command\'s help says a Hugging Face id from the local cache works', async () => {
    const chat = glmtool(['chat', '--help'])
    expect(chat.stdout.replace(/\s+/g, ' ')).toContain('Hugging Face model id (THUDM/chatglm2-6b[@revision]) already in the local Hugging Face cache ($HF_HOME/hub; never downloaded)')
    // The others in-process (a spawn each costs seconds): the argument oclif prints under ARGUMENTS.
    for (const cmd of ['inspect', 'convert', 'quantize', 'merge-adapter', 'bench']) {
      const {default: C} = await import(`../src/commands/${cmd}.ts`)
      const arg = Object.values(C.args as Record<string, {description?: string}>)[0]
      expect(arg.description, cmd).toContain('Hugging Face model id (THUDM/chatglm2-6b[@revision]) already in the local Hugging Face cache')
    }
  })

  it('-o / -d / -f: synth wrote f32 where -d said so, refuses the existing -o, and -f replaces it', () => {
    const report = JSON.parse(glmtool(['inspect', v2, '--json']).stdout)
    expect(Object.keys(report.totals.byDtype)).toContain('F32')
    expect(report.tensors.filter((t: {dtype: string}) => t.dtype === 'F16')).toEqual([])
    const again = glmtool(['synth', '--arch', 'chatglm2-6b', '-o', v2, '-d', 'f32', '--seed', '3'])
    expect(again.code).not.toBe(0)
    expect(glmtool(['synth', '--arch', 'chatglm2-6b', '-o', v2, '-d', 'f32', '--seed', '3', '-f']).code).toBe(0)
  })
})

describe('chat conventions', () => {
  it('--prompt (-p) before the model: the model stays the positional; stoppedBy says max-new-tokens', () => {
    const r = glmtool(['chat', '--prompt', 'hi', '-p', 'again', v2, '--greedy', '--max-new-tokens', '1', '--json'], {env})
    expect(r.code, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.turns.map((t: {prompt: string}) => t.prompt)).toEqual(['hi', 'again'])
    for (const t of out.turns) {
      expect(t.generatedIds).toHaveLength(1)
      expect(t.stoppedBy).toBe('max-new-tokens')
    }
    // A tighter --max-length is what stops it then.
    const promptLength = out.turns[0].promptIds.length
    const tight = JSON.parse(glmtool(['chat', v2, '-p', 'hi', '--greedy', '--max-new-tokens', '5', '--max-length', String(promptLength + 2), '--json'], {env}).stdout)
    expect(tight.turns[0].generatedIds).toHaveLength(2)
    expect(tight.turns[0].stoppedBy).toBe('max-length')
  })

  it.each([
    [['--top-p', '2'], /--top-p must be a number from 0 to 1, got 2/],
    [['--top-k', '-3'], /--top-k.*greater than or equal to 0/],
    [['--temperature', 'hot'], /--temperature must be a number >= 0, got hot/],
    [['--repetition-penalty', '0'], /--repetition-penalty must be a number > 0/],
  ])('refuses %j before any model loads', (flags, message) => {
    // The model does not exist: an error about the flag proves nothing was loaded first.
    const r = glmtool(['chat', join(work, 'no-such-model'), '-p', 'x', ...flags], {env})
    expect(r.code).not.toBe(0)
    expect(r.stderr).toMatch(message)
    expect(r.stderr).not.toContain('no-such-model')
    // One line (oclif adds an UnparsedCommand warning under NODE_ENV=test only, which vitest sets).
    expect(r.stderr.trim().split('\n').filter(l => !/^\(node:\d+\)|^\(Use `node/.test(l))).toHaveLength(1)
  })

  it('piped chat --json prints only the JSON: one turn per line, clear and exit honoured, no prompt or text', () => {
    const r = glmtool(['chat', v2, '--json', '--greedy', '--max-new-tokens', '3'], {env, input: 'hello\nclear\nhello\nexit\nnever\n'})
    expect(r.code, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.turns.map((t: {prompt: string}) => t.prompt)).toEqual(['hello', 'hello'])
    // After clear the history is empty: the same prompt ids and the same greedy answer.
    expect(out.turns[1].promptIds).toEqual(out.turns[0].promptIds)
    expect(out.turns[1].generatedIds).toEqual(out.turns[0].generatedIds)
    expect(r.stdout).not.toMatch(/you> |glm> /)
  })

  it.skipIf(!hasPty)('the interactive prompt is readline\'s: history recall (up arrow) redraws `you> ` with the line', () => {
    if (!hasPty) console.warn('chat prompt redraw: python3 pty is not available; skipped')
    const script = `
import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
buf = b''
def until(cond, timeout=60):
    global buf
    end = time.time() + timeout
    while not cond():
        r, _, _ = select.select([fd], [], [], max(0, end - time.time()))
        if not r: sys.exit('timeout: %r' % buf[-300:])
        buf += os.read(fd, 4096)
until(lambda: b'you> ' in buf)
os.write(fd, b'hi\\r')
until(lambda: buf.count(b'you> ') >= 2)
mark = len(buf)
os.write(fd, b'\\x1b[A')
until(lambda: b'hi' in buf[mark:], 10)
time.sleep(0.2)
sys.stdout.write(repr(buf[mark:]))
os.write(fd, b'\\x15exit\\r')
os.waitpid(pid, 0)
`
    const r = spawnSync(python, ['-c', script, process.execPath, join(ROOT, 'bin/run.js'), 'chat', v2, '--greedy', '--max-new-tokens', '2'], {
      encoding: 'utf8', env: {...process.env, ...env}, timeout: 90_000,
    })
    expect(r.status, r.stderr).toBe(0)
    // readline clears the line and writes its own prompt before the recalled text.
    expect(r.stdout).toMatch(/\\x1b\[0Jyou> hi/)
  }, 100_000)
})

describe('inspect reads glmtool ONNX directories', () => {
  const onnxDir = join(work, 'tiny-v2-onnx')
  beforeAll(() => {
    const r = glmtool(['convert', v2, '--to', 'onnx', '-o', onnxDir], {env})
    if (r.code !== 0) throw new Error(r.stderr)
  })

  it('lists the initializers and the architecture', () => {
    const r = glmtool(['inspect', onnxDir, '--json'])
    expect(r.code, r.stderr).toBe(0)
    const report = JSON.parse(r.stdout)
    expect(report.format).toBe('onnx')
    expect(report.architecture).toBe('chatglm2-6b')
    expect(report.totals.bytes).toBe(report.tensors.reduce((a: number, t: {bytes: number}) => a + t.bytes, 0))
    expect(glmtool(['inspect', join(onnxDir, 'model.onnx')]).stdout).toContain('architecture: chatglm2-6b')
  })

  it.skipIf(!hasOnnx)('its initializers are the ones python3-onnx reads from model.onnx (names, shapes, external lengths)', () => {
    if (!hasOnnx) console.warn('inspect ONNX: python3-onnx is not installed; skipped')
    const py = `
import json, sys, onnx
m = onnx.load(sys.argv[1], load_external_data=False)
out = []
for t in m.graph.initializer:
    ext = {e.key: e.value for e in t.external_data}
    out.append([t.name, list(t.dims), int(ext['length']) if 'length' in ext else len(t.raw_data)])
print(json.dumps(out))`
    const ref = JSON.parse(spawnSync(python, ['-c', py, join(onnxDir, 'model.onnx')], {encoding: 'utf8'}).stdout)
    const report = JSON.parse(glmtool(['inspect', onnxDir, '--json']).stdout)
    expect(report.tensors.map((t: {name: string, shape: number[], bytes: number}) => [t.name, t.shape, t.bytes])).toEqual(ref)
    expect(ref.length).toBeGreaterThan(10)
  })
})

describe('Hugging Face model ids resolve through the local cache', () => {
  const hub = join(work, 'hf', 'hub')
  const repo = join(hub, 'models--THUDM--chatglm2-6b')
  const commit = '0123456789abcdef0123456789abcdef01234567'
  beforeAll(() => {
    // huggingface_hub's layout: files are blobs, snapshots hold symlinks to them, refs/main the commit.
    mkdirSync(join(repo, 'blobs'), {recursive: true})
    mkdirSync(join(repo, 'snapshots', commit), {recursive: true})
    mkdirSync(join(repo, 'refs'), {recursive: true})
    for (const [i, f] of readdirSync(v2).entries()) {
      cpSync(join(v2, f), join(repo, 'blobs', `blob${i}`))
      symlinkSync(join('..', '..', 'blobs', `blob${i}`), join(repo, 'snapshots', commit, f))
    }
    writeFileSync(join(repo, 'refs', 'main'), commit)
  })

  it('resolves an id, an id@branch and an id@commit; names the cache when it is missing; outputs default to the current directory', () => {
    const e = {HF_HOME: join(work, 'hf')}
    expect(resolveModelArg('THUDM/chatglm2-6b', e)).toMatchObject({path: join(repo, 'snapshots', commit), outBase: 'chatglm2-6b', hub: {revision: 'main', commit}})
    expect(resolveModelArg(`THUDM/chatglm2-6b@${commit}`, e).path).toBe(join(repo, 'snapshots', commit))
    expect(resolveModelArg('THUDM/chatglm2-6b', {HF_HUB_CACHE: hub}).path).toBe(join(repo, 'snapshots', commit))
    expect(() => resolveModelArg('THUDM/chatglm2-6b@v9', e)).toThrow(/revision v9 is not in the Hugging Face cache .*huggingface-cli download THUDM\/chatglm2-6b --revision v9/)
    expect(() => resolveModelArg('THUDM/chatglm3-6b', e)).toThrow(`THUDM/chatglm3-6b: no such file or directory, and not in the Hugging Face cache (no ${join(hub, 'models--THUDM--chatglm3-6b')}); glmtool never downloads`)
    // A path that exists is a path, even when it looks like an id.
    expect(resolveModelArg(v2, e)).toEqual({path: v2, given: v2, outBase: v2})
  })

  it('inspect, chat and convert take the id', () => {
    const inspect = glmtool(['inspect', 'THUDM/chatglm2-6b', '--json'], {env})
    expect(inspect.code, inspect.stderr).toBe(0)
    expect(JSON.parse(inspect.stdout).totals).toEqual(JSON.parse(glmtool(['inspect', v2, '--json']).stdout).totals)
    const chat = glmtool(['chat', 'THUDM/chatglm2-6b', '-p', 'hi', '--greedy', '--max-new-tokens', '2', '--json'], {env})
    expect(chat.code, chat.stderr).toBe(0)
    const direct = glmtool(['chat', v2, '-p', 'hi', '--greedy', '--max-new-tokens', '2', '--json'], {env})
    expect(JSON.parse(chat.stdout).turns[0].generatedIds).toEqual(JSON.parse(direct.stdout).turns[0].generatedIds)
    const out = join(work, 'from-hub-st')
    const convert = glmtool(['convert', 'THUDM/chatglm2-6b', '--to', 'safetensors', '-o', out], {env})
    expect(convert.code, convert.stderr).toBe(0)
    expect(JSON.parse(glmtool(['inspect', out, '--json']).stdout).totals.tensors).toBe(JSON.parse(inspect.stdout).totals.tensors)
    const missing = glmtool(['inspect', 'THUDM/chatglm3-6b'], {env})
    expect(missing.code).not.toBe(0)
    expect(missing.stderr).toMatch(/^glmtool: THUDM\/chatglm3-6b: no such file or directory, and not in the Hugging Face cache .*never downloads/)
  })
})

describe('bench conventions', () => {
  it('--json prints the results as JSON on stdout (no table); --out FILE writes them; --backend auto picks cpu without a CUDA engine', () => {
    const file = join(work, 'bench.json')
    const r = glmtool(['bench', v2, '--prompt-tokens', '8', '--gen-tokens', '2', '--repeat', '1', '--max-length', '16', '--json', '-o', file], {env})
    expect(r.code, r.stderr).toBe(0)
    const results = JSON.parse(r.stdout)
    expect(results[0].backend).toBe('onnx-cpu')
    expect(r.stdout).not.toContain('decode tok/s')
    expect(JSON.parse(readFileSync(file, 'utf8')).results[0].generatedIds).toEqual(results[0].generatedIds)
  })
})
