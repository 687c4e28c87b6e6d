/**
 * glmtool's GGUF checked by llama.cpp itself: node-llama-cpp (llama.cpp's prebuilt CPU build)
 * loads the GGUF that `convert --to gguf` writes for tiny and small synth ChatGLM2-6B models,
 * tokenizes texts to the ids glmtool's tokenizer gives, and its logits are held to glmtool's
 * ONNX CPU runtime (onnxruntime, float32) on the same weights:
 * - f16 against the ONNX export of the checkpoint (whose weights are float16 already), within
 *   1e-2 relative (max|a-b| / max|b| per row; about 1e-6 is seen);
 * - q8_0 and q4_0 against the ONNX export of the *dequantized* GGUF weights (ggml's formulas,
 *   tensor offsets from node-llama-cpp's own GGUF parser), within 3e-2: llama.cpp's CPU
 *   matmuls quantize the activations to Q8_0 blocks for these weight types (ggml-cpu type
 *   traits: vec_dot_type Q8_0), which glmtool's float32 runtime does not; 1.0-1.6e-2 is seen.
 *   A wrong block layout (nibble order, scale sign, row order) gives errors of order 1.
 * Every prompt position, then 32 decode steps along the ONNX greedy sequence: llama.cpp's own
 * argmax must equal that sequence at every step (so its greedy run is the same), except, for
 * the quantized files, where the reference's top two logits are closer than the tolerance
 * allows (a near-tie the allowed error can flip; tiny random models have them).
 * The tiny f16 model is "sharpened" (onnx-fixtures.ts: peaked attention), so a wrong rotary
 * layout, frequency or dimension count shows. llama.cpp runs with an F32 KV cache (its
 * default is F16) so that the cache's rounding, which peaked attention magnifies, stays out.
 * Skips, saying why, where node-llama-cpp's prebuilt binary cannot load.
 */
import {copyFileSync, cpSync, existsSync, mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {convertToGguf} from '../src/pipelines/convert-gguf.js'
import type {GgufFileType} from '../src/formats/gguf/chatglm2.js'
import {loadTokenizer} from '../src/runtime/tokenizer/index.js'
import {dequantizedModel, loadLlamaCpp, onnxOf, runLlama, runOnnx, type Run} from './gguf-helpers.js'
import {glmtool} from './helpers/cli.js'
import {sharpenedModel} from './onnx-fixtures.js'

const STEPS = 32
const VOCAB = 65024
const TOL: Record<GgufFileType, number> = {f16: 1e-2, bf16: 1e-2, f32: 1e-2, q8_0: 3e-2, q4_0: 3e-2}
const TEXTS = [
  'Hello world, 你好！ The quick brown fox jumps over the lazy dog.',
  '  indented  twice\n\tthen a tab, 1234 digits',
  '👋 emoji and 中文标点：「引号」',
]

/** Short, so the per-position logits rows stay few (each costs node-llama-cpp a 65k-entry Map). */
const PROMPT = 'The quick brown fox, 你好'

const ll = await loadLlamaCpp()
const skip = 'reason' in ll ? ll.reason : undefined
if (skip) console.warn(`gguf-llama: ${skip}; the llama.cpp checks are skipped`)

/** max|a-b| / max|b| of one row. */
function rowRel(a: Float32Array, b: Float32Array): number {
  let diff = 0
  let scale = 0
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]))
    scale = Math.max(scale, Math.abs(b[i]))
  }
  return Number.isFinite(diff) ? diff / scale : Infinity
}

/** Top-two gap of a row relative to its largest magnitude. */
function topGap(r: Float32Array): number {
  let a = -Infinity
  let b = -Infinity
  let scale = 0
  for (const v of r) {
    if (v > a) [a, b] = [v, a]
    else if (v > b) b = v
    scale = Math.max(scale, Math.abs(v))
  }
  return (a - b) / scale
}

describe.skipIf(skip !== undefined)('llama.cpp (node-llama-cpp) runs glmtool\'s GGUF of synth ChatGLM2-6B', () => {
  const work = mkdtempSync(join(tmpdir(), 'glmtool-gguf-llama-'))
  const dirs: Record<string, string> = {}
  afterAll(() => rmSync(work, {recursive: true, force: true}))

  beforeAll(async () => {
    for (const size of ['tiny', 'small'] as const) {
      const out = join(work, size)
      const r = glmtool(['synth', '--arch', 'chatglm2-6b', '--size', size, '--out', out])
      if (r.code !== 0) throw new Error(`synth ${size}: ${r.stderr}`)
      dirs[size] = out
    }
    dirs['tiny-sharp'] = await sharpenedModel(dirs.tiny, join(work, 'tiny-sharp'), 16)
  }, 120_000)

  it('tokenizes text to the ids glmtool\'s tokenizer gives', async () => {
    if ('reason' in ll) return
    const f = join(work, 'tiny-q4_0.gguf')
    await convertToGguf({input: dirs.tiny, out: f, type: 'q4_0', force: false})
    const tk = await loadTokenizer(dirs.tiny, 'chatglm2-6b')
    const model = await ll.llama.loadModel({modelPath: f, gpuLayers: 0})
    try {
      for (const text of TEXTS) expect([...model.tokenize(text)].map(Number), JSON.stringify(text)).toEqual(tk.encode(text))
      // The prompt's specials, spelled out, parse to glmtool's ids when specials are allowed.
      expect([...model.tokenize('[gMASK]sop', true)].map(Number)).toEqual([tk.specials.gmask, tk.specials.sop])
      expect(model.tokens.eos).toBe(tk.specials.eos)
    } finally {
      await model.dispose()
    }
  }, 60_000)

  const real = join(import.meta.dirname, '../../shared/real/chatglm2-6b_tokenizer.model')
  it.skipIf(!existsSync(real))('with the real ChatGLM2-6B tokenizer.model (../shared/real), tokenizes to glmtool\'s ids', async () => {
    if ('reason' in ll) return
    const dir = join(work, 'real-tok')
    cpSync(dirs.tiny, dir, {recursive: true})
    copyFileSync(real, join(dir, 'tokenizer.model'))
    const f = join(work, 'real-tok.gguf')
    await convertToGguf({input: dir, out: f, type: 'q4_0', force: false})
    const tk = await loadTokenizer(dir, 'chatglm2-6b')
    const model = await ll.llama.loadModel({modelPath: f, vocabOnly: true})
    try {
      // Not "<sop>": llama.cpp's SPM merger turns the text "sop" there into the control token
      // 64792 (its bigram lookup sees control tokens too); sentencepiece gives "s" + "op".
      const texts = [...TEXTS, '你好', 'def f():\n\treturn    1\r\n', '  两个空格  and 80+ spaces' + ' '.repeat(85) + 'end', '晚上睡不着应该怎么办', 'eop sop soprano', '👋 𠀀 ，！']
      for (const text of texts) expect([...model.tokenize(text)].map(Number), JSON.stringify(text)).toEqual(tk.encode(text))
    } finally {
      await model.dispose()
    }
  }, 60_000)
  if (!existsSync(real)) console.warn(`gguf-llama: ${real} is absent; the real-tokenizer case is skipped`)

  const cases: {model: string, type: GgufFileType}[] = [
    // One quantized type per size keeps the suite inside its budget (small q8_0 alone takes
    // ~30 s: its float32 dequantized copy and ONNX export); GLMTOOL_GGUF_ALL=1 runs the others.
    {model: 'tiny-sharp', type: 'f16'}, {model: 'tiny', type: 'q8_0'},
    {model: 'small', type: 'f16'}, {model: 'small', type: 'q4_0'},
    ...(process.env.GLMTOOL_GGUF_ALL === '1' ? [{model: 'tiny', type: 'q4_0' as const}, {model: 'small', type: 'q8_0' as const}] : []),
  ]
  it.each(cases)('$model $type: logits within tolerance of glmtool\'s ONNX runtime, greedy tokens the same for 32 steps (quantized: but for near-ties)', async ({model, type}) => {
    if ('reason' in ll) return
    const src = dirs[model]
    const gguf = join(work, `${model}-${type}.gguf`)
    if (!existsSync(gguf)) await convertToGguf({input: src, out: gguf, type, force: false})
    const tk = await loadTokenizer(src, 'chatglm2-6b')
    const prompt = tk.encodePrompt(PROMPT)
    let ref: Run
    if (type === 'f16') {
      // The synth checkpoint is float16: an f16 ONNX export holds the very weights (computed in float32).
      ref = await runOnnx(await onnxOf(src, join(work, `${model}-onnx`), 'F16'), prompt, STEPS)
    } else {
      const deq = await dequantizedModel(ll.lib, src, gguf, join(work, `${model}-${type}-dequant`))
      ref = await runOnnx(await onnxOf(deq, join(work, `${model}-${type}-dequant-onnx`)), prompt, STEPS)
    }
    // Teacher-forced along the reference's greedy tokens: where llama.cpp's argmax agrees at
    // every step, this is its own greedy run.
    const got = await runLlama(ll.llama, gguf, prompt, STEPS, VOCAB, ref.generated)
    expect(got.rows.length).toBe(prompt.length + STEPS)
    const rel = got.rows.map((r, i) => rowRel(r, ref.rows[i]))
    const worst = Math.max(...rel)
    const disagree = got.generated.map((g, k) => (g === ref.generated[k] ? -1 : k)).filter(k => k >= 0)
    console.log(`gguf-llama ${model} ${type}: max relative logits error ${worst.toExponential(2)} over ${rel.length} rows (tolerance ${TOL[type]}); greedy differs at ${disagree.length} of ${STEPS + 1} steps`)
    expect(worst).toBeLessThanOrEqual(TOL[type])
    if (type === 'f16') expect(disagree, 'greedy steps where llama.cpp chose another token').toEqual([])
    for (const k of disagree) {
      const gap = topGap(ref.rows[prompt.length - 1 + k])
      expect(gap, `step ${k}: llama.cpp chose ${got.generated[k]}, glmtool ${ref.generated[k]}, not a near-tie`).toBeLessThan(2 * TOL[type])
    }
  }, 120_000)
})
