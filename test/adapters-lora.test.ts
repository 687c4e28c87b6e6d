import {createHash} from 'node:crypto'
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {AdapterError} from '../src/formats/adapters/adapter-error.js'
import {parseLoraConfig, mergedLoraTensor} from '../src/formats/adapters/lora.js'
import {addLoraRows, loraScale} from '../src/formats/adapters/lora-math.js'
import {mergeAdapter} from '../src/pipelines/merge-adapter.js'
import {decodeFloats, encodeFloats} from '../src/formats/dtype-convert.js'
import type {DType} from '../src/formats/dtype.js'
import {openSafetensorsModel} from '../src/formats/safetensors-reader.js'
import {memoryTensor, readTensor, type TensorEntry} from '../src/formats/tensor.js'

const FIX = join(import.meta.dirname, 'fixtures')
const ADAPTERS = join(FIX, 'adapters')
interface MergedExpectation {
  shape: number[], base_dtype: DType, f32_sha256: string, cast_sha256: string, first_f32: number[], changed: number, f32_offset?: number
  rounded_matmul_f32_sha256: string, rounded_matmul_cast_sha256: string
}
interface LoraExpectation {base: string, adapter: string, scale: number, exact: boolean, merged: Record<string, MergedExpectation>, f32_file?: string}
const expected: {lora: Record<string, LoraExpectation>} = JSON.parse(readFileSync(join(ADAPTERS, 'expected.json'), 'utf8'))
const torchExpected: Record<string, {sha256: string}> = JSON.parse(readFileSync(join(FIX, 'torch/expected.json'), 'utf8'))
const work = mkdtempSync(join(tmpdir(), 'glmtool-lora-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
/** torch fixture digests of one base model, by tensor name. */
function baseDigests(base: string): Map<string, string> {
  return new Map(Object.entries(torchExpected).filter(([k]) => k.startsWith(`${base}/`)).map(([k, v]) => [k.split('::')[1], v.sha256]))
}
async function outputTensors(dir: string): Promise<Map<string, TensorEntry>> {
  return new Map((await openSafetensorsModel(dir)).tensors.map(t => [t.name, t]))
}
describe('LoRA math', () => {
  it('adds scale * B @ A to whole rows, in float32 steps', () => {
    // W [2, 3], A [1, 3], B [2, 1]: delta = B @ A = [[1*1, 1*2, 1*3], [-2*1, -2*2, -2*3]]
    const w = new Float32Array([10, 20, 30, 40, 50, 60])
    addLoraRows(w, 0, {a: new Float32Array([1, 2, 3]), b: new Float32Array([1, -2]), rank: 1, rows: 2, cols: 3, scale: 0.5, fanInFanOut: false})
    expect([...w]).toEqual([10.5, 21, 31.5, 39, 48, 57])
  })

  it('transposes with fan_in_fan_out (A [r, rows], B [cols, r]) and starts at any row', () => {
    // W [2, 3]; (B @ A) is [3, 2] with B [3, 1] = [1, 2, 3], A [1, 2] = [10, 100]; delta = (B @ A)^T
    const a = new Float32Array([10, 100])
    const b = new Float32Array([1, 2, 3])
    const full = new Float32Array(6)
    addLoraRows(full, 0, {a, b, rank: 1, rows: 2, cols: 3, scale: 1, fanInFanOut: true})
    expect([...full]).toEqual([10, 20, 30, 100, 200, 300])
    const second = new Float32Array(3)
    addLoraRows(second, 1, {a, b, rank: 1, rows: 2, cols: 3, scale: 1, fanInFanOut: true})
    expect([...second]).toEqual([100, 200, 300])
  })

  it('rounds the product, then the scaled delta, then the sum to float32, as torch does', () => {
    // 1 + 2^-24 * 3 is not a float32; each step must round like torch's float32 ops.
    const w = new Float32Array([1])
    addLoraRows(w, 0, {a: new Float32Array([2 ** -12]), b: new Float32Array([3 * 2 ** -12]), rank: 1, rows: 1, cols: 1, scale: 1, fanInFanOut: false})
    expect(w[0]).toBe(Math.fround(1 + 3 * 2 ** -24))
    expect(loraScale(16, 8, false)).toBe(2)
    expect(loraScale(16, 8, true)).toBeCloseTo(16 / Math.sqrt(8), 15)
  })

  it('streams a merged weight in pieces that do not line up with rows, to the same bytes', async () => {
    const rows = 7
    const cols = 5
    const w = new Float32Array(rows * cols).map((_, i) => (i % 11) * 0.125 - 0.5)
    const base = memoryTensor('m.weight', 'F16', [rows, cols], encodeFloats(w, 'F16'))
    // A reader that ignores the requested piece size and cuts mid-row (whole elements only).
    const ragged: TensorEntry = {
      ...base,
      async *chunks() {
        const all = await readTensor(base)
        for (let o = 0; o < all.length; o += 6) yield all.subarray(o, Math.min(all.length, o + 6))
      },
    }
    const a = memoryTensor('m.lora_A.weight', 'F32', [2, cols], encodeFloats(new Float32Array(2 * cols).map((_, i) => i * 0.25), 'F32'))
    const b = memoryTensor('m.lora_B.weight', 'F32', [rows, 2], encodeFloats(new Float32Array(rows * 2).map((_, i) => 1 - i * 0.125), 'F32'))
    const cfg = parseLoraConfig({peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['m']}, 'cfg')
    const plan = {module: {module: 'm', weight: 'm.weight', a, b}, rows, cols}
    const whole = await readTensor(mergedLoraTensor(base, plan, cfg, 'F32'))
    const pieces: Buffer[] = []
    for await (const p of mergedLoraTensor(ragged, plan, cfg, 'F32').chunks(12)) {
      expect(p.length).toBeLessThanOrEqual(12)
      pieces.push(Buffer.from(p))
    }
    expect(Buffer.concat(pieces).equals(whole)).toBe(true)
    const got = decodeFloats(whole, 'F32')
    const ref = decodeFloats(encodeFloats(w, 'F16'), 'F16')
    addLoraRows(ref, 0, {a: decodeFloats(await readTensor(a), 'F32'), b: decodeFloats(await readTensor(b), 'F32'), rank: 2, rows, cols, scale: 2, fanInFanOut: false})
    expect([...got]).toEqual([...ref])
  })
})

describe('adapter_config.json', () => {
  const ok = {peft_type: 'LORA', r: 8, lora_alpha: 16, target_modules: ['query_key_value'], bias: 'none'}
  const code = (json: Record<string, unknown>) => {
    try {
      parseLoraConfig(json, 'adapter_config.json')
    } catch (error) {
      expect(error).toBeInstanceOf(AdapterError)
      return `${(error as AdapterError).code}: ${(error as Error).message}`
    }
    return 'ok'
  }

  it('reads current and PEFT 0.2-era configs', () => {
    expect(parseLoraConfig({...ok, use_rslora: true, fan_in_fan_out: null}, 'c')).toMatchObject({rank: 8, alpha: 16, useRslora: true, fanInFanOut: false, scale: 16 / Math.sqrt(8)})
    expect(parseLoraConfig({r: 4, lora_alpha: 32, target_modules: ['query_key_value'], enable_lora: null, merge_weights: false}, 'c')).toMatchObject({scale: 8})
  })

  it('refuses what a plain merge would get wrong, naming the setting', () => {
    expect(code({...ok, bias: 'lora_only'})).toMatch(/^adapter-bias: .*bias is "lora_only"/)
    expect(code({...ok, bias: 'all'})).toMatch(/^adapter-bias: .*bias is "all"/)
    expect(code({...ok, use_dora: true})).toMatch(/^adapter-unsupported: .*DoRA/)
    expect(code({...ok, peft_type: 'PREFIX_TUNING'})).toMatch(/^adapter-unsupported: .*PREFIX_TUNING/)
    expect(code({...ok, enable_lora: [true, false, true]})).toMatch(/MergedLinear/)
    expect(code({...ok, rank_pattern: {dense: 4}})).toMatch(/rank_pattern/)
    expect(code({...ok, modules_to_save: ['lm_head']})).toMatch(/modules_to_save/)
    expect(code({...ok, r: 0})).toMatch(/^adapter-bad-config: .*r must be a positive integer/)
    expect(code({...ok, lora_alpha: 'x'})).toMatch(/lora_alpha must be a number/)
    expect(code({...ok, target_modules: []})).toMatch(/target_modules must be/)
  })
})

describe('merging the torch-made adapters equals torch', () => {
  for (const [variant, e] of Object.entries(expected.lora)) {
    it(`${variant}: float32 merge ${e.exact ? 'bit for bit' : 'within float32 rounding'}, and the cast to the base dtype`, async () => {
      const base = join(FIX, 'torch', e.base)
      const adapter = join(ADAPTERS, e.adapter)
      const f32 = await mergeAdapter({base, adapter, out: join(work, `${variant}-f32`), dtype: 'F32', force: false})
      const keep = await mergeAdapter({base, adapter, out: join(work, `${variant}-keep`), dtype: 'keep', force: false})
      expect(f32.type).toBe('lora')
      expect(keep.lora!.merged).toEqual(f32.lora!.merged)
      expect(f32.lora!.scale).toBe(e.scale)
      expect(new Set(f32.lora!.merged)).toEqual(new Set(Object.keys(e.merged)))
      const outF32 = await outputTensors(join(work, `${variant}-f32`))
      const outKeep = await outputTensors(join(work, `${variant}-keep`))
      const raw = e.f32_file ? readFileSync(join(ADAPTERS, e.f32_file)) : undefined
      for (const [name, m] of Object.entries(e.merged)) {
        const got32 = await readTensor(outF32.get(name)!)
        const gotKeep = await readTensor(outKeep.get(name)!)
        expect(outKeep.get(name)!.dtype).toBe(m.base_dtype)
        // glmtool computes PEFT's float32 merge with a correctly rounded B @ A, so it equals
        // that torch computation bit for bit, before and after the cast ...
        expect(sha(got32), `${name} f32`).toBe(m.rounded_matmul_f32_sha256)
        expect(sha(gotKeep), `${name} cast`).toBe(m.rounded_matmul_cast_sha256)
        if (e.exact) {
          // ... and, where every B @ A sum is exact in float32, torch's own float32 matmul too.
          expect([...decodeFloats(got32.subarray(0, 32), 'F32')], name).toEqual(m.first_f32)
          expect(sha(got32), `${name} f32`).toBe(m.f32_sha256)
          expect(sha(gotKeep), `${name} cast`).toBe(m.cast_sha256)
          continue
        }
        // Unconstrained float32 factors: torch's sgemm sums B @ A in its own order. Each entry
        // may then differ by a rounding or two at the delta's magnitude; where W + delta nearly
        // cancels that is many ulps of the result, so bound it by the tensor's scale: 2^-21 of
        // its largest value (float32 has 24 bits).
        const torch32 = decodeFloats(raw!.subarray(m.f32_offset!, m.f32_offset! + got32.length), 'F32')
        const ours32 = decodeFloats(got32, 'F32')
        let maxAbs = 0
        let worst = 0
        for (let i = 0; i < torch32.length; i++) {
          maxAbs = Math.max(maxAbs, Math.abs(torch32[i]))
          worst = Math.max(worst, Math.abs(ours32[i] - torch32[i]))
        }
        expect(worst, `${name}: max |glmtool - torch|`).toBeLessThanOrEqual(maxAbs * 2 ** -21)
        // glmtool's cast of torch's float32 values is torch's cast ...
        const torchCast = encodeFloats(torch32, m.base_dtype)
        expect(sha(torchCast)).toBe(m.cast_sha256)
        // ... and the merged output differs from it by at most one unit, in rare elements.
        const a = decodeFloats(gotKeep, m.base_dtype)
        const b = decodeFloats(torchCast, m.base_dtype)
        let differ = 0
        for (let i = 0; i < a.length; i++) {
          if (a[i] !== b[i]) {
            differ++
            expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual(Math.abs(b[i]) * 2 ** -7)
          }
        }
        expect(differ / a.length).toBeLessThan(0.01)
      }
      // Every tensor the adapter does not touch is the base's, byte for byte.
      const digests = baseDigests(e.base)
      expect(outKeep.size).toBe(digests.size)
      for (const [name, t] of outKeep) {
        if (name in e.merged) {
          expect(sha(await readTensor(t)), name).not.toBe(digests.get(name))
        } else {
          expect(sha(await readTensor(t)), name).toBe(digests.get(name))
        }
      }
    })
  }
})

describe('regex target_modules are screened for catastrophic backtracking (ReDoS)', async () => {
  const {unsafeRegexReason, MAX_REPEATS} = await import('../src/formats/adapters/safe-regex.js')
  const {chatglmV2} = await import('../src/models/chatglm-v2.js')
  // Every module of the full-size ChatGLM2-6B: what the pattern is matched against.
  const modules = [...chatglmV2.tensors(chatglmV2.synthConfig('full')).keys()].map(n => n.replace(/\.weight$|\.bias$/, ''))

  it('accepts the patterns PEFT users write', () => {
    for (const p of ['.*\\.(query_key_value|dense)', '.*layers\\.\\d+\\.mlp\\..*', 'transformer\\.encoder\\.layers\\.(0|1|2)\\.self_attention\\.query_key_value',
      '.*decoder.*(SelfAttention|EncDecAttention).*(q|o|v)$', '(?:.*\\.)?dense_h_to_4h', '[a-z_.0-9]+query_key_value', 'a{2}(b|c)?']) {
      expect(unsafeRegexReason(p), p).toBeUndefined()
    }
  })

  it('refuses nested quantifiers, repeated alternations, backreferences, lookarounds and long patterns', () => {
    const cases: [string, RegExp][] = [
      ['(a+)+b', /repeated group holds a repetition/],
      ['(\\w+\\.?)*x', /repeated group holds a repetition/],
      ['((a|ab))*c', /repeated group holds an alternation/],
      ['(x|x){2,}y', /alternation/],
      ['(?:a*){1,10}', /repetition/],
      ['(a)\\1', /backreference/],
      ['.*(?=dense)', /lookahead/],
      ['.*(?<!x)dense', /lookahead or lookbehind/],
      ['.*.*.*.*.*x', new RegExp(`more than ${MAX_REPEATS} repetitions`)],
      ['a'.repeat(600), /600 characters long/],
    ]
    for (const [p, why] of cases) expect(unsafeRegexReason(p), p).toMatch(why)
  })

  it('what it accepts matches every module of the full model quickly, even with no match', () => {
    // The worst accepted shape: MAX_REPEATS overlapping wildcards that never match (polynomial).
    const worst = `${'.*'.repeat(MAX_REPEATS)}#`
    expect(unsafeRegexReason(worst)).toBeUndefined()
    const re = new RegExp(`^(?:${worst})$`)
    const t0 = Date.now()
    expect(modules.some(m => re.test(m))).toBe(false)
    expect(Date.now() - t0).toBeLessThan(3000)
  })
})
