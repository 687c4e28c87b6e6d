/**
 * The CUDA addon's loader says why the CUDA backend cannot run, whatever the cause: no addon
 * built, a file that is not a loadable addon, an addon from another glmtool, no driver or GPU.
 * Mock addons (plain CommonJS modules) stand in for the native one, so this runs anywhere.
 */
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, afterEach, describe, expect, it, vi} from 'vitest'

const work = mkdtempSync(join(tmpdir(), 'glmtool-cuda-addon-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const saved = process.env.GLMTOOL_CUDA_ADDON
afterEach(() => {
  if (saved === undefined) delete process.env.GLMTOOL_CUDA_ADDON
  else process.env.GLMTOOL_CUDA_ADDON = saved
})

const KINDS = '{W_QKV: 0, B_QKV: 1, W_DENSE: 2, B_DENSE: 3, W_UP: 4, B_UP: 5, W_DOWN: 6, B_DOWN: 7, W_LN1: 8, B_LN1: 9, W_LN2: 10, B_LN2: 11, W_FINAL: 12, B_FINAL: 13, W_LMHEAD: 14, W_EMBED: 15, PREFIX_K: 16, PREFIX_V: 17, S_QKV: 18, S_DENSE: 19, S_UP: 20, S_DOWN: 21}'

/** A fresh copy of the loader (it caches its verdict per process) with the addon at `path`. */
async function loader(path: string) {
  process.env.GLMTOOL_CUDA_ADDON = path
  vi.resetModules()
  return import('../src/runtime/backends/cuda-addon.js')
}

function mock(name: string, body: string): string {
  const path = join(work, name)
  writeFileSync(path, body)
  return path
}

describe('loadCudaAddon', () => {
  it('no addon built: says so and how to build it', async () => {
    const m = await loader(join(work, 'missing.node'))
    expect(() => m.loadCudaAddon()).toThrow(/^CUDA backend unavailable because glmtool's CUDA engine is not built \(no .*missing\.node\); build it with `npm run build:native`/)
    try {
      m.loadCudaAddon()
    } catch (error) {
      expect((error as {code: string}).code).toBe('cuda-unavailable')
    }
  })

  it('a file that is not an addon: cannot be loaded, with the loader\'s reason', async () => {
    const m = await loader(mock('garbage.node', 'not an ELF file'))
    expect(m.cudaUnavailableReason()).toMatch(/garbage\.node cannot be loaded \(/)
  })

  it('an addon of another interface version: rebuild', async () => {
    const m = await loader(mock('old.cjs', `module.exports = {version: '0', kinds: ${KINDS}, probe: () => ({ok: true})}`))
    expect(m.cudaUnavailableReason()).toMatch(/is from another glmtool version \(addon interface 0, this glmtool needs 3\); build it/)
  })

  it('no driver or GPU: the probe\'s reason, verbatim', async () => {
    const m = await loader(mock('nogpu.cjs', `module.exports = {version: '3', kinds: ${KINDS}, probe: () => ({ok: false, reason: 'no NVIDIA driver was found (libcuda.so.1 could not be loaded)'})}`))
    expect(() => m.loadCudaAddon()).toThrow('CUDA backend unavailable because no NVIDIA driver was found (libcuda.so.1 could not be loaded)')
  })

  it('a usable addon loads once and reports the device', async () => {
    const m = await loader(mock('ok.cjs', `module.exports = {version: '3', kinds: ${KINDS}, probe: () => ({ok: true, reason: '', name: 'Mock GPU'})}`))
    expect(m.cudaUnavailableReason()).toBeUndefined()
    expect(m.loadCudaAddon().device.name).toBe('Mock GPU')
  })

  it('tries the prebuilt addon first, then the source build: a stale or unloadable prebuilt falls through', async () => {
    const m = await loader(join(work, 'unused.node'))
    const ok = mock('src-ok.cjs', `module.exports = {version: '3', kinds: ${KINDS}, probe: () => ({ok: true, reason: '', name: 'Source build'})}`)
    const okPrebuilt = mock('pre-ok.cjs', `module.exports = {version: '3', kinds: ${KINDS}, probe: () => ({ok: true, reason: '', name: 'Prebuilt'})}`)
    const stale = mock('pre-stale.cjs', `module.exports = {version: '1', kinds: ${KINDS}, probe: () => ({ok: true})}`)
    const pick = (c: string[]) => {
      const r = m.loadFirst(c, 'HINT')
      return r instanceof m.CudaUnavailableError ? r.message : r.device.name
    }
    expect(pick([okPrebuilt, ok])).toBe('Prebuilt')
    expect(pick([stale, ok])).toBe('Source build')
    expect(pick([join(work, 'absent.node'), ok])).toBe('Source build')
    expect(pick([mock('pre-garbage.node', 'not an ELF file'), ok])).toBe('Source build')
    // Only a stale one: its reason, and how to build.
    expect(pick([stale, join(work, 'absent.node')])).toMatch(/pre-stale\.cjs is from another glmtool version .*; HINT$/)
    // The driver says no: that is the answer, not a reason to try the next file.
    const nogpu = mock('pre-nogpu.cjs', `module.exports = {version: '3', kinds: ${KINDS}, probe: () => ({ok: false, reason: 'no GPU'})}`)
    expect(pick([nogpu, ok])).toBe('CUDA backend unavailable because no GPU')
    expect(pick([join(work, 'a.node'), join(work, 'b.node')])).toMatch(/not built \(no prebuilt addon for \S+ \(.*a\.node\) and none built from source \(.*b\.node\)\); HINT$/)
  })

  it('looks in prebuilds/<platform>-<arch>/ before build/native/, and only at $GLMTOOL_CUDA_ADDON when that is set', async () => {
    const m = await loader(join(work, 'pinned.node'))
    expect(m.cudaAddonCandidates('/pkg')).toEqual([join(work, 'pinned.node')])
    delete process.env.GLMTOOL_CUDA_ADDON
    expect(m.cudaAddonCandidates('/pkg')).toEqual([`/pkg/prebuilds/${process.platform}-${process.arch}/glmtool_cuda.node`, '/pkg/build/native/glmtool_cuda.node'])
  })
})
