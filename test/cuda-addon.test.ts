/**
 * The CUDA addon's loader says why the CUDA backend cannot run, whatever the cause: no addon
 * built, a file that is not a loadable addon, an addon from another glmtool, no driver or GPU.
 * Mock addons (plain CommonJS modules) stand in for the native one, so this runs anywhere.
 */
import {cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, afterEach, describe, expect, it, vi} from 'vitest'
import {glmtool} from './helpers/cli.js'

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
    expect(m.cudaUnavailableReason()).toMatch(/is from another glmtool version \(addon interface 0, this glmtool needs 4\); build it/)
  })

  it('no driver or GPU: the probe\'s reason, verbatim', async () => {
    const m = await loader(mock('nogpu.cjs', `module.exports = {version: '4', kinds: ${KINDS}, probe: () => ({ok: false, reason: 'no NVIDIA driver was found (libcuda.so.1 could not be loaded)'})}`))
    expect(() => m.loadCudaAddon()).toThrow('CUDA backend unavailable because no NVIDIA driver was found (libcuda.so.1 could not be loaded)')
  })

  it('a usable addon loads once and reports the device', async () => {
    const m = await loader(mock('ok.cjs', `module.exports = {version: '4', kinds: ${KINDS}, probe: () => ({ok: true, reason: '', name: 'Mock GPU'})}`))
    expect(m.cudaUnavailableReason()).toBeUndefined()
    expect(m.loadCudaAddon().device.name).toBe('Mock GPU')
  })

  it('tries the prebuilt addon first, then the source build: a stale or unloadable prebuilt falls through', async () => {
    const m = await loader(join(work, 'unused.node'))
    const ok = mock('src-ok.cjs', `module.exports = {version: '4', kinds: ${KINDS}, probe: () => ({ok: true, reason: '', name: 'Source build'})}`)
    const okPrebuilt = mock('pre-ok.cjs', `module.exports = {version: '4', kinds: ${KINDS}, probe: () => ({ok: true, reason: '', name: 'Prebuilt'})}`)
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
    const nogpu = mock('pre-nogpu.cjs', `module.exports = {version: '4', kinds: ${KINDS}, probe: () => ({ok: false, reason: 'no GPU'})}`)
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

/**
 * What CudaBackend.load hands the engine: sizes from config.json and the feature flags of the
 * published modeling code (never a generation number). A mock addon records the config and stops.
 * Expected values come from the synth config.json files and the published code's constants:
 * ChatGLM-6B's GLMBlock alpha (2 * 28) ** 0.5 and RotaryEmbedding's inv_freq.half(), ChatGLM3-6B-32k's
 * `base = base * self.rope_ratio` (10000 * 50).
 */
describe('CudaBackend.load: the engine config', () => {
  const recorder = mock('record.cjs', `module.exports = {version: '4', kinds: ${KINDS}, probe: () => ({ok: true, reason: '', name: 'Mock GPU'}),
    Engine: class { constructor(c) { globalThis.__glmtoolEngineConfig = c; throw new Error('mock engine: config recorded') } }}`)
  const base: Record<string, string> = {}
  /** A tiny synth model (made once per arch), copied when config.json is edited. */
  const synth = (arch: string, edit?: (c: Record<string, unknown>) => void): {dir: string, config: Record<string, unknown>} => {
    if (!base[arch]) {
      base[arch] = join(work, `${arch}-synth`)
      const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', base[arch]])
      if (r.code !== 0) throw new Error(r.stderr)
    }
    let dir = base[arch]
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>
    if (edit) {
      dir = join(work, `${arch}-edited-${Object.keys(base).length}-${Math.random().toString(36).slice(2, 8)}`)
      cpSync(base[arch], dir, {recursive: true})
      edit(config)
      writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2))
    }
    return {dir, config}
  }
  async function engineConfig(dir: string): Promise<Record<string, unknown>> {
    process.env.GLMTOOL_CUDA_ADDON = recorder
    vi.resetModules()
    const {CudaBackend} = await import('../src/runtime/backends/cuda.js')
    delete (globalThis as Record<string, unknown>).__glmtoolEngineConfig
    await expect(CudaBackend.load(dir)).rejects.toThrow(/mock engine: config recorded/)
    return (globalThis as Record<string, unknown>).__glmtoolEngineConfig as Record<string, unknown>
  }

  it('ChatGLM-6B: per-head QKV, 2D rotary with fp16 theta, LayerNorm, DeepNorm alpha sqrt(2 * 28), GELU, every bias', async () => {
    const {dir, config: c} = synth('chatglm-6b')
    const e = await engineConfig(dir)
    expect(e).not.toHaveProperty('generation')
    expect(e).toMatchObject({
      layers: c.num_layers, hidden: c.hidden_size, heads: c.num_attention_heads, kvHeads: c.num_attention_heads,
      headDim: (c.hidden_size as number) / (c.num_attention_heads as number), ffn: c.inner_hidden_size, vocab: c.vocab_size,
      interleavedQkv: true, rotary2d: true, rmsnorm: false, deepnormAlpha: (2 * 28) ** 0.5, swiglu: false, ropeBase: 10000,
      roundInvFreqToHalf: true, qkvBias: true, denseBias: true, mlpBias: true, postLayerNorm: true, maxLength: 2048,
    })
  }, 60_000)

  it('ChatGLM2-6B: grouped QKV rows, half-head rotary with float32 theta, RMSNorm, pre-norm residual, SwiGLU', async () => {
    const {dir, config: c} = synth('chatglm2-6b')
    const e = await engineConfig(dir)
    expect(e).not.toHaveProperty('generation')
    expect(e).toMatchObject({
      layers: c.num_layers, hidden: c.hidden_size, heads: c.num_attention_heads, kvHeads: c.multi_query_group_num,
      headDim: c.kv_channels, ffn: c.ffn_hidden_size, vocab: c.padded_vocab_size,
      interleavedQkv: false, rotary2d: false, rmsnorm: true, deepnormAlpha: 0, swiglu: true, ropeBase: 10000,
      roundInvFreqToHalf: false, qkvBias: c.add_qkv_bias, denseBias: c.add_bias_linear, mlpBias: c.add_bias_linear,
      postLayerNorm: c.post_layer_norm, maxLength: 8192,
    })
  }, 60_000)

  it('ChatGLM3-6B-32k (rope_ratio 50): rotary base 10000 * 50', async () => {
    const {dir} = synth('chatglm2-6b', c => Object.assign(c, {rope_ratio: 50, _name_or_path: 'THUDM/chatglm3-6b-32k'}))
    expect(await engineConfig(dir)).toMatchObject({ropeBase: 500_000, interleavedQkv: false, rotary2d: false})
  }, 60_000)

  it('refuses ChatGLM2-6B-32k\'s rope_ratio (position interpolation) and a rope_ratio that is not a number > 0, naming config.json', async () => {
    process.env.GLMTOOL_CUDA_ADDON = recorder
    vi.resetModules()
    const {CudaBackend} = await import('../src/runtime/backends/cuda.js')
    const interp = synth('chatglm2-6b', c => Object.assign(c, {rope_ratio: 16, _name_or_path: 'THUDM/chatglm2-6b-32k'}))
    await expect(CudaBackend.load(interp.dir)).rejects.toThrow(/^config\.json: rope_ratio 16 on ChatGLM2-6B is ChatGLM2-6B-32k's position interpolation, which glmtool does not implement/)
    for (const bad of [0, -2, '50', true]) {
      const m = synth('chatglm2-6b', c => Object.assign(c, {rope_ratio: bad, _name_or_path: 'THUDM/chatglm3-6b-32k'}))
      await expect(CudaBackend.load(m.dir)).rejects.toThrow(/config\.json: rope_ratio must be a finite number > 0/)
    }
  }, 120_000)
})
