/**
 * Streamed calibration and evaluation (quantize runs the model one layer at a time,
 * src/pipelines/quantize/streamed-forward.ts) against the whole model as one ONNX graph, the way quantize ran
 * before it streamed (test/quantize-helpers.ts wholeGraphStats / wholeGraphEvaluation):
 * - the activation statistics are equal bit for bit, for every linear of both generations;
 * - quantize --method calibrated writes the same bytes, file by file, and reports the same
 *   choices (beta, clipping, errors) with either statistics;
 * - the streamed KL / top-1 equal the whole-graph ones computed from the quantized model's own
 *   ONNX export.
 */
import {mkdtempSync, readdirSync, readFileSync, rmSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {openModel} from '../src/pipelines/model-dir.js'
import {exportOnnx} from '../src/pipelines/export-onnx.js'
import {loadModelTokenizer} from '../src/runtime/tokenizer/model-tokenizer.js'
import {collectActivationStats} from '../src/pipelines/quantize/activation-stats.js'
import {headParts, HEAD_PIECE_BYTES, runStreamed, streamInputs} from '../src/pipelines/quantize/streamed-forward.js'
import {archById} from '../src/models/index.js'
import type {ModelSource} from '../src/pipelines/model-dir.js'
import type {TensorEntry} from '../src/formats/tensor.js'
import {splitParagraphs, tokenSequences} from '../src/pipelines/quantize/calibration-data.js'
import {CALIBRATION_TEXT, HELD_OUT_TEXT} from '../src/quant/calibration-text.js'
import {quantizeModel, type QuantizeOptions} from '../src/pipelines/quantize-model.js'
import {glmtool} from './helpers/cli.js'
import {wholeGraphEvaluation, wholeGraphStats} from './quantize-helpers.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-streamed-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const models = {
  v1: join(work, 'v1-outliers'),
  v2: join(work, 'v2-outliers'),
}

beforeAll(() => {
  for (const [arch, out] of [['chatglm-6b', models.v1], ['chatglm2-6b', models.v2]] as const) {
    const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', out, '--outliers', '--seed', '1'])
    if (r.code !== 0) throw new Error(r.stderr)
  }
})

/** Every file under dir, relative path -> bytes. */
function files(dir: string, prefix = ''): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  for (const e of readdirSync(join(dir, prefix), {withFileTypes: true})) {
    const rel = join(prefix, e.name)
    if (e.isDirectory()) for (const [k, v] of files(dir, rel)) out.set(k, v)
    else out.set(rel, readFileSync(join(dir, rel)))
  }
  return out
}

const base = (input: string, out: string, extra: Partial<QuantizeOptions> = {}): QuantizeOptions => ({
  input, out, bits: 4, groupSize: 0, method: 'calibrated', lmHead: false, embeddings: false, format: 'safetensors',
  force: false, calibSamples: 8, evaluate: 'off', ...extra,
})

describe('streamed activation statistics', () => {
  for (const gen of ['v1', 'v2'] as const) {
    it(`${gen}: equal the whole graph's bit for bit, for every linear and the output layer`, async () => {
      const model = await openModel(models[gen])
      try {
        const {tokenizer} = await loadModelTokenizer(models[gen], {arch: model.arch!, config: model.config!})
        const sequences = tokenSequences(tokenizer, splitParagraphs(CALIBRATION_TEXT.join('\n\n')), 128, 6)
        const scratch = mkdtempSync(join(work, 'stats-'))
        const streamed = await collectActivationStats(model, tokenizer, sequences, {scratch})
        const whole = await wholeGraphStats(model, tokenizer, sequences, {scratch})
        expect(readdirSync(scratch).filter(f => f !== 'whole-float-onnx')).toEqual([]) // slices removed
        expect(streamed.tokens).toBe(whole.tokens)
        expect([...streamed.stats.keys()].sort()).toEqual([...whole.stats.keys()].sort())
        expect(streamed.stats.size).toBe(4 * Number(model.config!.num_layers) + 1)
        for (const [name, s] of whole.stats) {
          const t = streamed.stats.get(name)!
          expect(t.rows, name).toBe(s.rows)
          expect(Buffer.from(t.meanSq.buffer).equals(Buffer.from(s.meanSq.buffer)), `${name} meanSq`).toBe(true)
          expect(Buffer.from(t.meanAbs.buffer).equals(Buffer.from(s.meanAbs.buffer)), `${name} meanAbs`).toBe(true)
        }
      } finally {
        await model.close()
      }
    })
  }
})

describe('the output layer in pieces (bounded memory at 6B)', () => {
  /** A model directory's tensor list only (no bytes), at the published shapes. */
  const shapes = (arch: string, entries: [string, number[]][]) => ({arch: archById(arch), tensors: entries.map(([name, shape]) => ({name, dtype: 'F16', shape}) as unknown as TensorEntry)}) as unknown as ModelSource
  it('full size: ChatGLM-6B in 3 pieces of rows, ChatGLM2-6B in 2, each no larger than a layer as float32; tiny in 1', () => {
    const v1 = shapes('chatglm-6b', [
      ['transformer.word_embeddings.weight', [130528, 4096]], ['lm_head.weight', [130528, 4096]],
      ['transformer.layers.0.attention.query_key_value.weight', [12288, 4096]], ['transformer.layers.0.attention.dense.weight', [4096, 4096]],
      ['transformer.layers.0.mlp.dense_h_to_4h.weight', [16384, 4096]], ['transformer.layers.0.mlp.dense_4h_to_h.weight', [4096, 16384]],
    ])
    expect(headParts(v1, 130528)).toEqual([0, 1, 2].map(i => ({kind: 'head', rows: [43510 * i, Math.min(130528, 43510 * (i + 1))]})))
    const v2 = shapes('chatglm2-6b', [
      ['transformer.embedding.word_embeddings.weight', [65024, 4096]], ['transformer.output_layer.weight', [65024, 4096]],
      ['transformer.encoder.layers.0.self_attention.query_key_value.weight', [4608, 4096]], ['transformer.encoder.layers.0.self_attention.dense.weight', [4096, 4096]],
      ['transformer.encoder.layers.0.mlp.dense_h_to_4h.weight', [27392, 4096]], ['transformer.encoder.layers.0.mlp.dense_4h_to_h.weight', [4096, 13696]],
    ])
    expect(headParts(v2, 65024)).toEqual([{kind: 'head', rows: [0, 32512]}, {kind: 'head', rows: [32512, 65024]}])
    const layerBytes = (4608 + 4096 + 27392 + 13696) * 4096 * 4
    expect(32512 * 4096 * 4).toBeLessThanOrEqual(layerBytes)
    expect(HEAD_PIECE_BYTES).toBeLessThan(layerBytes)
  })

  // The tiny models' output layers (33 / 17 MB as float32) cut into 3 pieces by a small floor:
  // every logit equal to the one-piece run's, bit for bit (which the tests above hold equal to
  // the whole graph's), a float and a quantized output layer.
  const runLogits = async (dir: string, headPieceBytes?: number) => {
    const model = await openModel(dir)
    try {
      const {tokenizer} = await loadModelTokenizer(dir, {arch: model.arch!, config: model.config!})
      const inputs = streamInputs(tokenizer, tokenSequences(tokenizer, HELD_OUT_TEXT, 48, 3))
      const out: Float32Array[] = []
      const parts: number[] = []
      await runStreamed(model, inputs, {
        scratch: mkdtempSync(join(work, 'head-')), headPieceBytes,
        onPart: p => { if (p.kind === 'head') parts.push(1) },
        onLogits: (s, logits, rows, vocab) => { expect(logits.length).toBe(rows * vocab); out[s] = logits.slice() },
      })
      return {out, pieces: parts.length}
    } finally {
      await model.close()
    }
  }
  it.each([['v1', 12e6], ['v2', 6e6], ['v2 int4 with its output layer quantized', 3e6]] as const)('%s: logits from 3 pieces equal one piece\'s', async (gen, floor) => {
    let dir: string = models[gen.startsWith('v1') ? 'v1' : 'v2']
    if (gen.includes('int4')) {
      dir = join(work, 'head-q4')
      await quantizeModel(base(models.v2, dir, {method: 'rtn', lmHead: true}))
    }
    const one = await runLogits(dir)
    const three = await runLogits(dir, floor)
    expect(one.pieces).toBe(1)
    expect(three.pieces).toBe(3)
    expect(three.out.length).toBe(one.out.length)
    for (const [s, a] of one.out.entries()) expect(Buffer.from(three.out[s].buffer).equals(Buffer.from(a.buffer)), `sequence ${s}`).toBe(true)
  }, 300_000)
})

describe('streamed calibration = whole-model calibration', () => {
  const cases = [
    {gen: 'v1', name: 'v1 int4 per channel', extra: {}},
    {gen: 'v2', name: 'v2 int4 per channel, lm_head too', extra: {lmHead: true}},
    {gen: 'v2', name: 'v2 int8 groups of 32, --format both', extra: {bits: 8, groupSize: 32, format: 'both' as const}},
  ] as const
  for (const c of cases) {
    // Two quantizations each, and calibrating the output layer (vocab x hidden) is the slow part on a loaded 2-core machine.
    it(`${c.name}: same files byte for byte, same reported choices`, {timeout: 600_000}, async () => {
      const a = join(work, `${c.name.replace(/\W+/g, '-')}-streamed`)
      const b = join(work, `${c.name.replace(/\W+/g, '-')}-whole`)
      const ra = await quantizeModel(base(models[c.gen], a, c.extra))
      const rb = await quantizeModel(base(models[c.gen], b, {...c.extra, statsCollector: wholeGraphStats}))
      const fa = files(a)
      const fb = files(b)
      expect([...fa.keys()].sort()).toEqual([...fb.keys()].sort())
      for (const [k, v] of fb) expect(fa.get(k)!.equals(v), k).toBe(true)
      expect(ra.layers).toEqual(rb.layers)
      expect(ra.summary).toEqual(rb.summary)
      // Calibration really chose something: input scaling on some layer, and clipping.
      expect(ra.layers.some(l => (l.beta ?? 0) > 0)).toBe(true)
      expect(ra.layers.some(l => (l.meanAlpha ?? 1) < 1)).toBe(true)
      expect(statSync(a).isDirectory()).toBe(true)
    })
  }
})

describe('streamed evaluation', () => {
  it('v2 --outliers: the KL / top-1 of the calibrated model equal the whole-graph evaluation of its ONNX export, and beat RTN', {timeout: 600_000}, async () => {
    const out = join(work, 'eval-v2')
    const r = await quantizeModel(base(models.v2, out, {format: 'both', evaluate: 'on'}))
    const e = r.endToEnd!
    if ('skipped' in e) throw new Error(e.skipped)
    const [rtn, cal] = e.models
    expect(rtn.label).toBe('rtn')
    expect(cal.label).toBe('calibrated')
    const floatOnnx = join(work, 'eval-v2-float-onnx')
    await exportOnnx({input: models.v2, out: floatOnnx, force: false})
    const model = await openModel(models.v2)
    let whole
    try {
      const {tokenizer} = await loadModelTokenizer(models.v2, {arch: model.arch!, config: model.config!})
      whole = await wholeGraphEvaluation(floatOnnx, [{label: 'calibrated', dir: out}], tokenizer, tokenSequences(tokenizer, HELD_OUT_TEXT, 128, 8))
    } finally {
      await model.close()
    }
    expect(cal).toEqual(whole[0])
    expect(cal.meanKl).toBeLessThan(rtn.meanKl)
  })
})
