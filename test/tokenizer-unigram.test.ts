/**
 * UNIGRAM segmentation (src/runtime/tokenizer/sentencepiece-unigram.ts) on small hand-made models whose
 * scores make each rule decide the outcome, against the `sentencepiece` library
 * (test/crosscheck/spm_check.py): ties between paths of equal score, the unknown penalty,
 * consecutive unknowns, byte fallback, user-defined pieces (with all scores negative, and with a
 * positive one), UNUSED and CONTROL pieces never produced. Each model also gets 600 random strings
 * over the characters its pieces use, so that the rules meet in every combination. The real
 * files are checked by test/tokenizer-real.test.ts.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, describe, expect, it} from 'vitest'
import {encodeModelProto, ModelType, PieceType, type SentencePiece, type SentencePieceModel} from '../src/runtime/tokenizer/sentencepiece-model.js'
import {SentencePieceProcessor} from '../src/runtime/tokenizer/sentencepiece.js'
import {chatglm6bModel, firstReleaseAppendedPieces} from '../src/runtime/tokenizer/chatglm-6b.js'
import {ModelError} from '../src/errors.js'
import {show} from './fixtures/tokenizer/load.js'
import {parity} from './helpers/parity.js'

const PYTHON = '/usr/bin/python3'
const CHECK = fileURLToPath(new URL('crosscheck/spm_check.py', import.meta.url))
const haveSpm = spawnSync(PYTHON, ['-c', 'import sentencepiece'], {stdio: 'ignore'}).status === 0
if (!haveSpm) console.log('UNIGRAM cross-check skipped: python3-sentencepiece not installed; .ci/run installs it')

const N = PieceType.NORMAL
/** [piece, score, type]: chosen so that each rule changes some string's result. */
const BASE: Array<[string, number, PieceType]> = [
  ['<unk>', 0, PieceType.UNKNOWN], ['<s>', 0, PieceType.CONTROL], ['</s>', 0, PieceType.CONTROL],
  // "ab" ties a+b (-2 both): the library keeps the path whose last piece starts first.
  ['a', -1, N], ['b', -1, N], ['ab', -2, N],
  // 0.1 + 0.2 style float sums: "abab" as ab+ab, a+bab, aba+b tie only in exact arithmetic.
  ['aba', -2.1, N], ['bab', -1.9, N], ['abab', -4, N],
  // "kmn" ("k", "m" no pieces): km + n = -101 beats <unk>(k) + mn = (min - 10) - 0.5 = -110.5;
  // without the unknown penalty the second would win (-100.5). "km" is the lowest score (min).
  ['km', -100, N], ['mn', -0.5, N], ['n', -1, N],
  // User-defined "<u>" beats "<u" + ">" although those score higher than 0 - 0.1 would suggest.
  ['<u>', 0, PieceType.USER_DEFINED], ['<', -1, N], ['u', -1, N], ['>', -1, N], ['<u', -0.01, N],
  // UNUSED "cd" has the best score and must never be produced.
  ['c', -1, N], ['d', -1, N], ['cd', -0.001, PieceType.UNUSED],
  ['\u2581', -2, N], ['\u2581a', -1.5, N], ['\u2581\u2581', -3.5, N],
  ['x', -1.25, N], ['y', -1.75, N], ['xy', -3, N], ['yx', -3, N], ['xyx', -4.25, N],
  ['中', -3, N], ['中文', -5, N], ['文', -3, N],
]
const ALPHABET = [...'abkmnuxyzcd<>s é中文\u2581', '<u>', '<s>', 'ab', 'kmn']

function build(name: string, opts: {byteFallback: boolean, positive: boolean, dummyPrefix: boolean}): SentencePieceModel {
  const pieces: SentencePiece[] = BASE.map(([piece, score, type]) => ({piece, score, type}))
  if (opts.positive) pieces.push({piece: 'zz', score: 0.75, type: N})
  if (opts.byteFallback) {
    for (let b = 0; b < 256; b++) pieces.push({piece: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, score: 0, type: PieceType.BYTE})
  }
  return {
    pieces,
    trainerSpec: {modelType: ModelType.UNIGRAM, modelPrefix: name, vocabSize: pieces.length, byteFallback: opts.byteFallback},
    normalizerSpec: {name: 'identity', addDummyPrefix: opts.dummyPrefix, removeExtraWhitespaces: opts.dummyPrefix},
  }
}

const MODELS = {
  'no byte fallback': build('a', {byteFallback: false, positive: false, dummyPrefix: true}),
  'byte fallback': build('b', {byteFallback: true, positive: false, dummyPrefix: false}),
  'a positive score (max_score > 0)': build('c', {byteFallback: false, positive: true, dummyPrefix: false}),
}

function texts(): string[] {
  const fixed = ['', 'ab', 'abab', 'ababab', 'kmn', 'k', 'kk', 'km', 'mn', 'zz', 'zzz', 'kkmn', '<u>', 'a<u>b', '<u', '<u>>',
    'cd', 'ccdd', '<s>', '</s>', 'a b', '  a  b  ', 'xyx', 'xyxy', 'yxy', '中文', '中中文文', 'é', 'ée', '\u2581\u2581a']
  let state = 12345
  const rand = (n: number): number => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0
    return (state >>> 8) % n
  }
  const out = [...fixed]
  for (let i = 0; i < 600; i++) {
    let s = ''
    for (let k = 1 + rand(12); k > 0; k--) s += ALPHABET[rand(ALPHABET.length)]
    out.push(s)
  }
  return out
}

describe.skipIf(!haveSpm)('UNIGRAM rules vs the sentencepiece library', () => {
  const dir = mkdtempSync(join(tmpdir(), 'glmtool-unigram-'))
  afterAll(() => rmSync(dir, {recursive: true, force: true}))
  const all = texts()

  it.each(Object.keys(MODELS) as Array<keyof typeof MODELS>)('%s: ids and pieces equal the library\'s', (name) => {
    const file = join(dir, `${name.replace(/\W+/g, '-')}.model`)
    const bytes = encodeModelProto(MODELS[name])
    writeFileSync(file, bytes)
    const run = spawnSync(PYTHON, [CHECK, file], {input: JSON.stringify({texts: all}), encoding: 'utf8', maxBuffer: 1 << 26})
    expect(run.status, run.stderr).toBe(0)
    const lib = JSON.parse(run.stdout) as {encode: Array<{text: string, ids: number[], pieces: string[]}>}
    const sp = SentencePieceProcessor.load(bytes, file)
    parity(`unigram ${name}`, lib.encode, (c) => {
      const got = sp.encodeBoth(c.text)
      return JSON.stringify(got) === JSON.stringify({ids: c.ids, pieces: c.pieces})
        ? null
        : `${show(c.text)}: ${JSON.stringify(got)} != ${JSON.stringify({ids: c.ids, pieces: c.pieces})}`
    })
    // The rules were exercised: a tie kept "ab", the penalty kept "km", "<u>" and no UNUSED/CONTROL.
    for (const c of lib.encode) for (const i of c.ids) expect([PieceType.UNUSED, PieceType.CONTROL]).not.toContain(MODELS[name].pieces[i].type)
    if (MODELS[name].normalizerSpec?.addDummyPrefix) return
    const ids = (t: string): number[] => lib.encode.find((c) => c.text === t)!.ids
    const id = (p: string): number => MODELS[name].pieces.findIndex((x) => x.piece === p)
    expect(ids('ab')).toContain(id('ab'))
    expect(ids('kmn')).toContain(id('km'))
    expect(ids('a<u>b')).toContain(id('<u>'))
  })
})

describe('UNIGRAM models the library refuses', () => {
  it('one with nothing but <unk> and control pieces: "no pieces are loaded", naming the file', () => {
    const bytes = encodeModelProto({
      pieces: [{piece: '<unk>', score: 0, type: PieceType.UNKNOWN}, {piece: '<s>', score: 0, type: PieceType.CONTROL}],
      trainerSpec: {modelType: ModelType.UNIGRAM},
    })
    expect(() => SentencePieceProcessor.load(bytes, 'd/ice_text.model')).toThrow(ModelError)
    expect(() => SentencePieceProcessor.load(bytes, 'd/ice_text.model')).toThrow(/^d\/ice_text\.model: no pieces are loaded/)
  })
})

describe('the first-release 130000-piece ice_text.model (chatglm6bModel)', () => {
  const base = (extra: SentencePiece[] = []): SentencePieceModel => {
    const pieces: SentencePiece[] = [{piece: '<unk>', score: 0, type: PieceType.UNKNOWN}]
    for (let i = 1; pieces.length < 130000 - extra.length; i++) pieces.push({piece: `p${i}`, score: -i, type: N})
    return {pieces: [...pieces, ...extra], trainerSpec: {modelType: ModelType.UNIGRAM, byteFallback: false}}
  }

  it('gets the 344 pieces appended in the published order and byte_fallback on', () => {
    const m = base()
    const up = chatglm6bModel(m, 'old/ice_text.model')
    expect(up.pieces.length).toBe(130344)
    expect(up.pieces.slice(0, 130000)).toEqual(m.pieces)
    expect(up.pieces.slice(130000).map((p) => p.piece).slice(0, 10)).toEqual(
      ['[MASK]', '[gMASK]', '[sMASK]', '<unused_0>', '<sop>', '<eop>', '<ENC>', '<dBLOCK>', '<|tab|>', '<|blank_2|>'])
    expect(up.pieces[130087]).toEqual({piece: '<|blank_80|>', score: 0, type: PieceType.USER_DEFINED})
    expect(up.pieces[130088]).toEqual({piece: '<0x00>', score: 0, type: PieceType.BYTE})
    expect(up.pieces[130343]).toEqual({piece: '<0xFF>', score: 0, type: PieceType.BYTE})
    expect(up.trainerSpec?.byteFallback).toBe(true)
    expect(m.pieces.length).toBe(130000) // the input is not modified
    expect(firstReleaseAppendedPieces().length).toBe(344)
  })

  it('refuses a 130000-piece file that already holds some of them, naming the file', () => {
    const m = base([{piece: '[gMASK]', score: 0, type: PieceType.CONTROL}])
    expect(() => chatglm6bModel(m, 'x/ice_text.model')).toThrow(ModelError)
    expect(() => chatglm6bModel(m, 'x/ice_text.model')).toThrow(/^x\/ice_text\.model: a 130000-piece ChatGLM-6B tokenizer that already holds 1 of the 344 pieces/)
  })

  it('leaves files of any other size alone', () => {
    const m: SentencePieceModel = {pieces: [{piece: '<unk>', score: 0, type: PieceType.UNKNOWN}]}
    expect(chatglm6bModel(m, 'm')).toBe(m)
  })
})
