/**
 * `glmtool bench` on the CPU backend (tiny synth models, a short run), its JSON file, two models
 * side by side, FP16 / INT8 / INT4 copies of one model side by side, and the CUDA backend's
 * refusal where no CUDA engine is available.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {benchPrompt, spread} from '../src/pipelines/bench.js'
import {loadTokenizer} from '../src/runtime/tokenizer/index.js'
import {glmtool} from './helpers/cli.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-bench-'))
const env = {GLMTOOL_CACHE: join(work, 'cache')}
afterAll(() => rmSync(work, {recursive: true, force: true}))
/** python3 -c "s=12345\nfor _ in range(3): s=(s*1103515245+12345)%2**31; print(1000+s%59000)" */
const LCG_FIRST_THREE = [19606, 38775, 14924]
const hasOnnx = spawnSync('/usr/bin/python3', ['-c', 'import onnx']).status === 0
const WEIGHT_BYTES_PY = `
import onnx, sys
m = onnx.load(sys.argv[1], load_external_data=False)
read = set()
for n in m.graph.node:
    for k, name in enumerate(n.input):
        if not (n.op_type == 'Gather' and k == 0):
            read.add(name)
size = lambda t: int(dict((e.key, e.value) for e in t.external_data).get('length', 0)) if t.external_data else len(t.raw_data)
print(sum(size(t) for t in m.graph.initializer if t.name in read))
`
const v1 = join(work, 'v1')
const v2 = join(work, 'v2')

beforeAll(() => {
  for (const [arch, out] of [['chatglm-6b', v1], ['chatglm2-6b', v2]]) {
    const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', out])
    if (r.code !== 0) throw new Error(r.stderr)
  }
})

describe('glmtool bench --backend cpu', () => {
  it('measures two models side by side: table on stdout, JSON in --out FILE', () => {
    const json = join(work, 'bench.json')
    const r = glmtool(['bench', v1, v2, '--backend', 'cpu', '--prompt-tokens', '12', '--gen-tokens', '4', '--repeat', '2', '--max-length', '32', '--out', json], {env})
    expect(r.code, r.stderr).toBe(0)
    for (const label of ['time to first token (ms)', 'prefill tok/s', 'decode tok/s', 'peak host RSS', v1, v2]) expect(r.stdout).toContain(label)
    const out = JSON.parse(readFileSync(json, 'utf8'))
    expect(out.results.map((x: {architecture: string}) => x.architecture)).toEqual(['chatglm-6b', 'chatglm2-6b'])
    for (const x of out.results) {
      expect(x.backend).toBe('onnx-cpu')
      expect(x.runs).toHaveLength(2)
      expect(x.generatedIds).toHaveLength(4)
      expect(x.loadSeconds).toBeGreaterThan(0)
      expect(x.ttftMs.median).toBeGreaterThan(0)
      expect(x.prefillTokensPerSecond.median).toBeGreaterThan(0)
      expect(x.decodeTokensPerSecond.median).toBeGreaterThan(0)
      expect(x.peakHostRssBytes).toBeGreaterThan(0)
    }
  })

  it('reports the CPU roofline: the bytes a decoded token reads over the read rate measured in the same run', () => {
    const json = join(work, 'bench-roof.json')
    const r = glmtool(['bench', v1, v2, '--backend', 'cpu', '--prompt-tokens', '12', '--gen-tokens', '4', '--repeat', '1', '--max-length', '32', '--out', json], {env})
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/roofline .*GB\/s read rate measured in this run/)
    const out = JSON.parse(readFileSync(json, 'utf8'))
    for (const x of out.results) {
      const t = x.roofline
      // The rate of a machine, not of a cache: between 100 MB/s and 10 TB/s.
      expect(t.measuredReadBandwidth).toBeGreaterThan(1e8)
      expect(t.measuredReadBandwidth).toBeLessThan(1e13)
      // float32 K and V of every layer, for the mean context of the decode steps (12 + 4/2).
      const c = JSON.parse(readFileSync(join(x.architecture === 'chatglm-6b' ? v1 : v2, 'config.json'), 'utf8'))
      const kvHeads = x.architecture === 'chatglm-6b' ? c.num_attention_heads : c.multi_query_group_num
      const headDim = c.hidden_size / c.num_attention_heads
      expect(t.kvBytesPerToken).toBe(c.num_layers * 2 * kvHeads * headDim * 4 * 14)
      expect(t.rooflineTokensPerSecond).toBeCloseTo(t.measuredReadBandwidth / (t.weightBytesPerToken + t.kvBytesPerToken), 6)
      expect(t.achievedFraction).toBeCloseTo(x.decodeTokensPerSecond.median / t.rooflineTokensPerSecond, 9)
      if (!hasOnnx) continue
      // The weight bytes counted independently by python3-onnx from the cached export: every
      // initializer some node reads other than as a Gather's table (the embedding).
      const entries = readdirSync(join(env.GLMTOOL_CACHE, 'onnx')).map(k => join(env.GLMTOOL_CACHE, 'onnx', k))
      const onnxDir = entries.find(d => JSON.parse(readFileSync(join(d, 'glmtool-onnx.json'), 'utf8')).architecture === x.architecture)!
      const py = spawnSync('/usr/bin/python3', ['-c', WEIGHT_BYTES_PY, join(onnxDir, 'model.onnx')], {encoding: 'utf8'})
      expect(py.status, py.stderr).toBe(0)
      expect(t.weightBytesPerToken).toBe(Number(py.stdout.trim()))
    }
  })

  it('compares FP16 / INT8 / INT4 copies of one model, each labelled with its stored weights', () => {
    const quantized = ([8, 4] as const).map(bits => {
      const out = join(work, `v2-int${bits}`)
      const q = glmtool(['quantize', v2, '--bits', String(bits), '--group-size', bits === 4 ? '32' : '0', '--evaluate', 'off', '--out', out])
      expect(q.code, q.stderr).toBe(0)
      return out
    })
    const json = join(work, 'bench-quant.json')
    const r = glmtool(['bench', v2, ...quantized, '--backend', 'cpu', '--prompt-tokens', '12', '--gen-tokens', '3', '--repeat', '1', '--max-length', '32', '--out', json], {env})
    expect(r.code, r.stderr).toBe(0)
    for (const label of ['chatglm2-6b f16', 'chatglm2-6b int8', 'chatglm2-6b int4 g32']) expect(r.stdout).toContain(label)
    const out = JSON.parse(readFileSync(json, 'utf8'))
    expect(out.results.map((x: {weights: string}) => x.weights)).toEqual(['f16', 'int8', 'int4 g32'])
    for (const x of out.results) expect(x.decodeTokensPerSecond.median).toBeGreaterThan(0)
  })

  it('refuses lengths that do not fit --max-length', () => {
    const r = glmtool(['bench', v2, '--backend', 'cpu', '--prompt-tokens', '30', '--gen-tokens', '8', '--max-length', '32'], {env})
    expect(r.code).toBe(1)
    expect(r.stderr).toContain('exceed --max-length 32')
  })

  it('--kv-dtype int8 on the CPU backend is refused before the model loads, naming the flag and the backend to use', () => {
    for (const cmd of [['bench', v2, '--backend', 'cpu'], ['chat', v2, '--prompt', 'hi', '--greedy']]) {
      const r = glmtool([...cmd, '--kv-dtype', 'int8'], {env})
      expect(r.code, r.stderr).toBe(1)
      const errors = r.stderr.trim().split('\n').filter(l => l.startsWith('glmtool:'))
      expect(errors).toEqual([expect.stringContaining('--kv-dtype int8 is implemented by the CUDA engine only: add --backend cuda')])
    }
    const bad = glmtool(['bench', v2, '--backend', 'cpu', '--kv-dtype', 'int4'], {env})
    expect(bad.code).not.toBe(0)
    expect(bad.stderr).toMatch(/--kv-dtype.*int4|int4.*--kv-dtype/s)
  })

  it('--backend cuda without a CUDA engine says why', () => {
    const r = glmtool(['bench', v2, '--backend', 'cuda'], {env: {...env, GLMTOOL_CUDA_ADDON: join(work, 'none.node')}})
    expect(r.code).toBe(1)
    expect(r.stderr).toContain('CUDA backend unavailable because glmtool\'s CUDA engine is not built')
  })
})

describe('bench helpers', () => {
  it('spread: median and the slower-tail p90', () => {
    expect(spread([10, 20, 30, 40, 50], false)).toEqual({median: 30, p90: 46})
    expect(spread([10, 20, 30, 40, 50], true)).toEqual({median: 30, p90: 14})
  })

  it('benchPrompt: exactly n ids, the generation\'s specials, known ids only', async () => {
    for (const [arch, dir] of [['chatglm-6b', v1], ['chatglm2-6b', v2]] as const) {
      const tok = await loadTokenizer(dir, arch)
      const ids = benchPrompt(tok, 40)
      expect(ids).toHaveLength(40)
      const s = tok.specials
      if (arch === 'chatglm-6b') expect(ids.slice(-2)).toEqual([s.gmask, s.sop])
      else expect(ids.slice(0, 2)).toEqual([s.gmask, s.sop])
      expect(ids.every(id => id >= 0 && id < tok.vocabSize)).toBe(true)
    }
    // the same LCG as bench/peers/torch_baseline.py (Python's exact integers), so both run one prompt
    const tok = await loadTokenizer(v2, 'chatglm2-6b')
    expect(benchPrompt(tok, 5).slice(2)).toEqual(LCG_FIRST_THREE)
  })
})
