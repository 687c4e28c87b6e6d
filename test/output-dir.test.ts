import {spawn} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {writeOutputDir} from '../src/formats/output-dir.js'
import {ROOT} from './helpers/cli.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-od-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const leftovers = () => readdirSync(work).filter(f => f.includes('glmtool-tmp'))

describe('outputs appear whole or not at all', () => {
  it('renames the finished directory into place', async () => {
    const out = join(work, 'ok')
    await writeOutputDir(out, false, async d => writeFileSync(join(d, 'f'), 'x'))
    expect(readFileSync(join(out, 'f'), 'utf8')).toBe('x')
    expect(leftovers()).toEqual([])
  })

  it('a failing build leaves nothing, and an existing output is kept until the new one is whole', async () => {
    const out = join(work, 'keep')
    mkdirSync(out)
    writeFileSync(join(out, 'old'), 'old')
    await expect(writeOutputDir(out, true, async d => {
      writeFileSync(join(d, 'half'), 'x')
      throw new Error('disk full')
    })).rejects.toThrow('disk full')
    expect(readdirSync(out)).toEqual(['old'])
    expect(leftovers()).toEqual([])
    await expect(writeOutputDir(out, false, async () => {})).rejects.toThrow(/already exists; pass --force/)
  })

  it('Ctrl-C (SIGINT) mid-write removes the partial output and exits 130', async () => {
    const out = join(work, 'interrupted')
    const script = `
      import {writeFileSync} from 'node:fs'
      const {writeOutputDir} = await import(${JSON.stringify(join(ROOT, 'dist/formats/output-dir.js'))})
      await writeOutputDir(${JSON.stringify(out)}, false, async d => {
        writeFileSync(d + '/shard', 'partial')
        console.log('writing')
        // a long write in progress (the interval keeps the event loop busy, as real I/O does)
        await new Promise(() => setInterval(() => {}, 1000))
      })`
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {stdio: ['ignore', 'pipe', 'pipe']})
    let stderr = ''
    child.stderr.on('data', d => (stderr += d))
    await new Promise<void>(res => child.stdout.on('data', d => String(d).includes('writing') && res()))
    expect(leftovers().length).toBe(1)
    child.kill('SIGINT')
    const code = await new Promise(res => child.on('exit', res))
    expect(code).toBe(130)
    expect(stderr).toMatch(/interrupted \(SIGINT\); removed the partial output/)
    expect(existsSync(out)).toBe(false)
    expect(leftovers()).toEqual([])
  })
})
