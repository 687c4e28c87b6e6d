/**
 * glmtool's cache of converted models (issue 13): `chat` on a torch directory records its ONNX
 * conversion as an entry; `cache ls` lists it with its source and state, `cache clear` removes
 * only what it is asked to (never files that are not entries), and a conversion the disk cannot
 * hold is refused before it starts, naming the directory and the sizes.
 */
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {assertCacheRoom, estimateOnnxBytes, freeBytes} from '../src/pipelines/model-cache.js'
import {glmtool} from './helpers/cli.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-cache-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const env = {GLMTOOL_CACHE: join(work, 'cache')}
const ok = (args: string[]) => {
  const r = glmtool(args, {env})
  expect(r.code, r.stderr).toBe(0)
  return r
}

interface Listed {root: string, bytes: number, entries: {key: string, dir: string, bytes: number, source?: string, arch?: string, state: string}[]}

describe('glmtool cache', () => {
  it("chat on a quantized checkpoint caches a graph whose linears compute with int8 activations (quantize --format onnx's default)", () => {
    const src = join(work, 'qsrc')
    const q = join(work, 'qsrc-int8')
    ok(['synth', '--arch', 'chatglm2-6b', '--size', 'tiny', '--out', src])
    ok(['quantize', src, '--bits', '8', '--evaluate', 'off', '--out', q])
    const qenv = {GLMTOOL_CACHE: join(work, 'qcache')}
    const r = glmtool(['chat', q, '--backend', 'cpu', '--prompt', 'hi', '--max-new-tokens', '1', '--json'], {env: qenv})
    expect(r.code, r.stderr).toBe(0)
    const entries = readdirSync(join(work, 'qcache', 'onnx')).filter(k => /^[0-9a-f]{16}$/.test(k))
    expect(entries).toHaveLength(1)
    const manifest = JSON.parse(readFileSync(join(work, 'qcache', 'onnx', entries[0], 'glmtool-onnx.json'), 'utf8'))
    expect(manifest.quantization).toMatchObject({bits: 8, cpu_compute: 'int8'})
  })

  it('chat records its conversion; ls shows it current, then stale once the model changes; clear --stale removes only that', () => {
    const a = join(work, 'a')
    const b = join(work, 'b')
    ok(['synth', '--arch', 'chatglm2-6b', '--size', 'tiny', '--out', a])
    ok(['synth', '--arch', 'chatglm-6b', '--size', 'tiny', '--out', b])
    for (const m of [a, b]) ok(['chat', m, '--backend', 'cpu', '--prompt', 'hi', '--max-new-tokens', '1', '--json'])
    // A stranger's file in the cache directory is not an entry and is never touched.
    writeFileSync(join(work, 'cache', 'onnx', 'notes.txt'), 'mine')
    let ls = JSON.parse(ok(['cache', 'ls', '--json']).stdout) as Listed
    expect(ls.root).toBe(join(work, 'cache'))
    expect(ls.entries.map(e => [e.source, e.arch, e.state]).sort()).toEqual([[a, 'chatglm2-6b', 'current'], [b, 'chatglm-6b', 'current']])
    for (const e of ls.entries) expect(e.bytes).toBeGreaterThan(1000)
    expect(ls.bytes).toBe(ls.entries[0].bytes + ls.entries[1].bytes)
    expect(ok(['cache', 'ls']).stdout).toMatch(/2 entries/)

    // The model changes: its entry is stale (a new chat would convert again).
    const cfg = join(a, 'config.json')
    writeFileSync(cfg, readFileSync(cfg, 'utf8') + '\n')
    ls = JSON.parse(ok(['cache', 'ls', '--json']).stdout) as Listed
    const stale = ls.entries.find(e => e.source === a)!
    expect(stale.state).toBe('stale')
    const cleared = JSON.parse(ok(['cache', 'clear', '--stale', '--json']).stdout) as {removed: {key: string}[], bytes: number}
    expect(cleared.removed.map(e => e.key)).toEqual([stale.key])
    expect(cleared.bytes).toBe(stale.bytes)
    expect(existsSync(stale.dir)).toBe(false)
    ls = JSON.parse(ok(['cache', 'ls', '--json']).stdout) as Listed
    expect(ls.entries.map(e => e.source)).toEqual([b])

    // An entry whose output lock a live glmtool holds (this test process, as output-dir.ts writes
    // the journal) is left, and said so.
    const lock = join(work, 'cache', 'onnx', `.${ls.entries[0].key}.glmtool-lock`)
    writeFileSync(lock, JSON.stringify({glmtool: 'output-lock', pid: process.pid, host: hostname(), target: ls.entries[0].dir, since: new Date().toISOString(), state: 'building'}))
    const held = JSON.parse(ok(['cache', 'clear', '--all', '--json']).stdout) as {removed: unknown[], busy: {key: string}[]}
    expect(held.removed).toEqual([])
    expect(held.busy.map(e => e.key)).toEqual([ls.entries[0].key])
    expect(existsSync(ls.entries[0].dir)).toBe(true)
    rmSync(lock)

    // By key prefix; then nothing left, and the stranger's file still there.
    ok(['cache', 'clear', ls.entries[0].key.slice(0, 6)])
    expect((JSON.parse(ok(['cache', 'ls', '--json']).stdout) as Listed).entries).toEqual([])
    expect(readFileSync(join(work, 'cache', 'onnx', 'notes.txt'), 'utf8')).toBe('mine')
  }, 240_000)

  it('clear says what is wrong with its arguments', () => {
    let r = glmtool(['cache', 'clear'], {env})
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/say what to remove: entry keys, --stale or --all/)
    mkdirSync(join(work, 'cache', 'onnx'), {recursive: true})
    r = glmtool(['cache', 'clear', 'ffff0000'], {env})
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/no cache entry ffff0000 \(see `glmtool cache ls`\)/)
  })

  it('a conversion larger than the free space is refused before it starts, with the sizes and the way out', () => {
    const m = join(work, 'c')
    ok(['synth', '--arch', 'chatglm2-6b', '--size', 'tiny', '--out', m])
    const need = estimateOnnxBytes(m, JSON.parse(readFileSync(join(m, 'config.json'), 'utf8')))
    // torch_dtype float16: the conversion stays float16, about the weights' size; bfloat16
    // becomes float32, twice that.
    const config = JSON.parse(readFileSync(join(m, 'config.json'), 'utf8'))
    expect(config.torch_dtype).toBe('float16')
    expect(need).toBeGreaterThan(weightBytes(m))
    expect(need).toBeLessThan(1.1 * weightBytes(m))
    expect(estimateOnnxBytes(m, {...config, torch_dtype: 'bfloat16'})).toBeGreaterThan(1.9 * weightBytes(m))
    expect(() => assertCacheRoom(m, work, need)).not.toThrow()
    expect(() => assertCacheRoom(m, work, freeBytes(work) + 1)).toThrow(/^not enough free disk space for the ONNX conversion of .* it needs about .* GB, .* GB are free; remove old conversions with `glmtool cache clear`, or set GLMTOOL_CACHE/)
  })
})

/** Bytes of the synth model's shards, from the directory itself. */
function weightBytes(dir: string): number {
  return readdirSync(dir).filter(n => n.endsWith('.bin')).reduce((a, n) => a + statSync(join(dir, n)).size, 0)
}
