/**
 * The SentencePiece ModelProto codec (src/runtime/tokenizer/sentencepiece-model.ts) and the synthetic
 * tokenizer models (src/synth/synth-tokenizer.ts), checked on their own and, where Debian's
 * python3-sentencepiece is installed, against the reference library through
 * test/crosscheck/spm_check.py: the schema's field numbers against the library's own
 * descriptor, and the synthetic models as the library loads and encodes them.
 */
import {spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import protobuf from 'protobufjs'
import {afterAll, describe, expect, it} from 'vitest'
import {ModelError} from '../src/errors.js'
import {archById} from '../src/models/index.js'
import {SYNTH_WORDS, synthChatglm2Model, synthChatglm6bModel, V1_PIECE_COUNT, V2_PIECE_COUNT} from '../src/synth/synth-tokenizer.js'
import {
  decodeModelProto, effectiveNormalizerSpec, effectiveTrainerSpec, encodeModelProto, ModelType, PieceType,
  sentencepieceRoot, type SentencePieceModel,
} from '../src/runtime/tokenizer/sentencepiece-model.js'
import {show, strings} from './fixtures/tokenizer/load.js'

const PYTHON = '/usr/bin/python3'

/** The two synthetic tokenizer models: ChatGLM-6B's and ChatGLM2-6B's (ChatGLM3-6B ships the latter). */
type SynthTokenizerArch = 'chatglm-6b' | 'chatglm2-6b'
/** A generation's synthetic tokenizer files, as its module gives them. */
const synthTokenizer = (arch: SynthTokenizerArch) => archById(arch).synthTokenizer()
const synthTokenizerModel = (arch: SynthTokenizerArch) => (arch === 'chatglm-6b' ? synthChatglm6bModel : synthChatglm2Model)()
const SPM_CHECK = fileURLToPath(new URL('crosscheck/spm_check.py', import.meta.url))
const SPM_LAYOUT = fileURLToPath(new URL('crosscheck/spm_layout.py', import.meta.url))
const REAL = fileURLToPath(new URL('../../shared/real', import.meta.url))
const haveSpm = spawnSync(PYTHON, ['-c', 'import sentencepiece'], {stdio: 'ignore'}).status === 0
if (!haveSpm) {
  console.log('sentencepiece cross-check skipped: python3-sentencepiece not installed; .ci/run installs it')
}

function runSpmCheck<T>(args: string[], request?: object): T {
  const r = spawnSync(PYTHON, [SPM_CHECK, ...args], {
    input: request ? JSON.stringify(request) : '', encoding: 'utf8', maxBuffer: 64 << 20,
  })
  if (r.status !== 0) throw new Error(`spm_check.py ${args.join(' ')} failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as T
}

describe('sentencepiece_model.proto', () => {
  it('puts fields on the wire with sentencepiece\'s numbers', () => {
    // pieces = 1 (LEN) { piece = 1 "a", score = 2 (fixed32) 0.0 }; type NORMAL left implicit.
    expect([...encodeModelProto({pieces: [{piece: 'a', score: 0, type: PieceType.NORMAL}]})])
      .toEqual([0x0a, 0x08, 0x0a, 0x01, 0x61, 0x15, 0, 0, 0, 0])
    // trainer_spec = 2 { byte_fallback = 35 (varint tag 280 = 98 02) true }
    // normalizer_spec = 3 { add_dummy_prefix = 3 false }
    const bytes = encodeModelProto({
      pieces: [{piece: 'b', score: -1, type: PieceType.BYTE}],
      trainerSpec: {byteFallback: true},
      normalizerSpec: {addDummyPrefix: false},
    })
    expect([...bytes]).toEqual([
      0x0a, 0x0a, 0x0a, 0x01, 0x62, 0x15, 0x00, 0x00, 0x80, 0xbf, 0x18, 0x06,
      0x12, 0x03, 0x98, 0x02, 0x01,
      0x1a, 0x02, 0x18, 0x00,
    ])
  })
})

describe('decodeModelProto / encodeModelProto', () => {
  const model: SentencePieceModel = {
    pieces: [
      {piece: '<unk>', score: 0, type: PieceType.UNKNOWN},
      {piece: '<s>', score: 0, type: PieceType.CONTROL},
      {piece: '<sep>', score: 0, type: PieceType.USER_DEFINED},
      {piece: '<0x41>', score: 0, type: PieceType.BYTE},
      {piece: 'old', score: -3, type: PieceType.UNUSED},
      {piece: '\u2581', score: -1.5, type: PieceType.NORMAL},
      {piece: '\u2581你好', score: -2.25, type: PieceType.NORMAL},
    ],
    trainerSpec: {
      input: ['a.txt', 'b.txt'], modelType: ModelType.BPE, vocabSize: 7, inputSentenceSize: 5_000_000,
      characterCoverage: 0.5, controlSymbols: ['<s>'], userDefinedSymbols: ['<sep>'], byteFallback: true,
      splitDigits: true, unkId: 0, bosId: 1, eosId: -1, padId: -1, unkSurface: '?', pretokenizationDelimiter: '|',
    },
    normalizerSpec: {
      name: 'custom', precompiledCharsmap: new Uint8Array([4, 0, 0, 0, 1, 2, 3, 4, 0]),
      addDummyPrefix: false, removeExtraWhitespaces: false, escapeWhitespaces: true,
    },
    selfTestData: {samples: [{input: 'ab', expected: '\u2581a b'}]},
    denormalizerSpec: {name: 'identity'},
  }

  it('round-trips every field', () => {
    expect(decodeModelProto(encodeModelProto(model))).toEqual(model)
  })

  it('fills the proto2 defaults of pieces and specs', () => {
    const bare = decodeModelProto(encodeModelProto({pieces: [{piece: 'x', score: 0, type: PieceType.NORMAL}]}))
    expect(bare).toEqual({pieces: [{piece: 'x', score: 0, type: PieceType.NORMAL}]})
    expect(effectiveNormalizerSpec(bare)).toMatchObject({
      name: '', addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true,
    })
    expect(effectiveTrainerSpec(bare)).toMatchObject({
      modelType: ModelType.UNIGRAM, vocabSize: 8000, byteFallback: false, unkId: 0, bosId: 1, eosId: 2, padId: -1,
      unkPiece: '<unk>', bosPiece: '<s>', eosPiece: '</s>', padPiece: '<pad>', unkSurface: ' \u2047 ',
      treatWhitespaceAsSuffix: false, characterCoverage: expect.closeTo(0.9995, 6),
    })
    expect(effectiveTrainerSpec(model)).toMatchObject({modelType: ModelType.BPE, eosId: -1, numThreads: 16})
  })

  it('rejects bytes that are not a model, naming the file', () => {
    const bad = (buf: Uint8Array) => () => decodeModelProto(buf, 'x/ice_text.model')
    expect(bad(new Uint8Array(0))).toThrow(ModelError)
    expect(bad(new Uint8Array(0))).toThrow(/x\/ice_text\.model: not a SentencePiece model \(no pieces\)/)
    expect(bad(Buffer.from('{"not": "a model"}'))).toThrow(/x\/ice_text\.model: not a SentencePiece model/)
    try {
      bad(new Uint8Array([0x0a, 0x7f, 0x0a]))()
      expect.unreachable()
    } catch (err) {
      expect((err as ModelError).code).toBe('tokenizer-model')
    }
  })
})

/** What each generation's vocabulary must hold (see src/synth/synth-tokenizer.ts). */
const EXPECT: Record<SynthTokenizerArch, {
  file: string, count: number, pieces: Record<string, number>, byteBase: number, absent: string[],
}> = {
  'chatglm-6b': {
    file: 'ice_text.model',
    count: V1_PIECE_COUNT,
    pieces: {
      '<unk>': 0, '<s>': 1, '</s>': 2, '<pad>': 3, '<n>': 4, '\u2581': 5,
      '[MASK]': 130000, '[gMASK]': 130001, '[sMASK]': 130002, '<sop>': 130004, '<eop>': 130005,
      '<dBLOCK>': 130007, '<|tab|>': 130008, '<|blank_2|>': 130009, '<|blank_4|>': 130011,
      '<|blank_80|>': 130087, '<0x00>': 130088, '<0xF0>': 130328, '<0xFF>': 130343,
    },
    byteBase: 130088,
    absent: ['\uff0c', '\uff01'], // full-width "，" "！": NFKC turns them into "," "!"
  },
  'chatglm2-6b': {
    file: 'tokenizer.model',
    count: V2_PIECE_COUNT,
    pieces: {'<unk>': 0, '<s>': 1, '</s>': 2, '<0x00>': 3, '<0x0A>': 13, '<0xF0>': 243, '<0xFF>': 258},
    byteBase: 3,
    // The wrapper's specials live after the model (64789..64793), and there is no <pad>.
    absent: ['[MASK]', '[gMASK]', '[sMASK]', 'sop', 'eop', '<pad>', '\t'],
  },
}

describe.each(['chatglm-6b', 'chatglm2-6b'] as const)('synthTokenizer(%s)', (arch) => {
  const exp = EXPECT[arch]
  const tok = synthTokenizer(arch)
  const model = decodeModelProto(tok.bytes, tok.fileName)
  const ids = new Map(model.pieces.map((p, i) => [p.piece, i]))
  const unigram = arch === 'chatglm-6b'

  it('has the real vocabulary size and special ids', () => {
    expect(tok.fileName).toBe(exp.file)
    expect(model.pieces.length).toBe(exp.count)
    for (const [piece, id] of Object.entries(exp.pieces)) expect([piece, ids.get(piece)]).toEqual([piece, id])
    for (const piece of exp.absent) expect(ids.has(piece)).toBe(false)
    for (let b = 0; b < 256; b++) {
      expect(model.pieces[exp.byteBase + b].type).toBe(PieceType.BYTE)
      expect(model.pieces[exp.byteBase + b].piece).toBe(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)
    }
    expect(model.pieces.filter((p) => p.type === PieceType.UNKNOWN).map((p) => p.piece)).toEqual(['<unk>'])
  })

  it('matches its trainer and normalizer specs to the pieces', () => {
    const t = effectiveTrainerSpec(model)
    expect(t.modelType).toBe(unigram ? ModelType.UNIGRAM : ModelType.BPE)
    expect(t.byteFallback).toBe(true)
    for (const [field, piece] of [['unkId', '<unk>'], ['bosId', '<s>'], ['eosId', '</s>'], ['padId', '<pad>']] as const) {
      expect([field, t[field]]).toEqual([field, ids.get(piece) ?? -1])
    }
    const n = effectiveNormalizerSpec(model)
    expect(n.addDummyPrefix).toBe(true)
    expect(n.escapeWhitespaces).toBe(true)
    if (arch === 'chatglm-6b') {
      expect(t.userDefinedSymbols).toEqual(['<n>'])
      expect(n.name).toBe('nmt_nfkc')
      expect(n.removeExtraWhitespaces).toBe(true)
      expect(n.precompiledCharsmap.length).toBeGreaterThan(4)
    } else {
      expect({name: n.name, remove: n.removeExtraWhitespaces, charsmap: n.precompiledCharsmap.length})
        .toEqual({name: 'identity', remove: false, charsmap: 0})
    }
  })

  it('has unique pieces, at most 16 characters, no two digits in a row, no inner "▁" but runs of it', () => {
    expect(ids.size).toBe(model.pieces.length)
    const normal = model.pieces.filter((p) => p.type === PieceType.NORMAL)
    expect(normal.filter((p) => [...p.piece].length > 16 || /\d\d/.test(p.piece)).map((p) => p.piece)).toEqual([])
    expect(normal.filter((p) => p.piece.slice(1).includes('\u2581') && !/^\u2581+$/.test(p.piece)).map((p) => p.piece)).toEqual([])
    if (arch === 'chatglm-6b') expect(normal.filter((p) => /^\u2581+$/.test(p.piece)).map((p) => p.piece)).toEqual(['\u2581'])
  })

  // UNIGRAM (v1) scores are log-probabilities; BPE (v2) scores are merge priorities.
  if (unigram) it('scores NORMAL pieces as log-probabilities, descending within four runs', () => {
    const normal = model.pieces.filter((p) => p.type === PieceType.NORMAL)
    let runs = 1
    let mass = 0
    for (let i = 0; i < normal.length; i++) {
      mass += Math.exp(normal[i].score)
      if (i > 0 && normal[i].score > normal[i - 1].score) runs++
    }
    expect(mass).toBeCloseTo(1, 4)
    expect(runs).toBe(4)
    expect(model.pieces.filter((p) => p.type !== PieceType.NORMAL && p.score !== 0)).toEqual([])
  })

  else it('has strictly descending BPE scores, each multi-character piece buildable', () => {
    const normal = model.pieces.filter((p) => p.type === PieceType.NORMAL)
    for (let i = 1; i < normal.length; i++) {
      if (!(normal[i].score < normal[i - 1].score)) expect.fail(`score of ${normal[i].piece} does not descend`)
    }
    // BPE only ever joins two adjacent pieces, so a piece nobody can split into two is dead weight.
    const normalSet = new Set(normal.map((p) => p.piece))
    const unbuildable = normal.filter((p) => {
      const chars = [...p.piece]
      if (chars.length === 1) return false
      for (let k = 1; k < chars.length; k++) {
        if (normalSet.has(chars.slice(0, k).join('')) && normalSet.has(chars.slice(k).join(''))) return false
      }
      return true
    })
    expect(unbuildable.map((p) => p.piece)).toEqual([])
  })

  it('is deterministic and serializes what synthTokenizerModel builds', () => {
    expect(model).toEqual(synthTokenizerModel(arch))
    expect(synthTokenizer(arch).bytes.equals(tok.bytes)).toBe(true)
  })

  it('ships the published tokenizer_config.json keys', () => {
    const c = tok.tokenizerConfig
    expect(c).toMatchObject({
      tokenizer_class: 'ChatGLMTokenizer', remove_space: false, do_lower_case: false,
      auto_map: {AutoTokenizer: ['tokenization_chatglm.ChatGLMTokenizer', null]},
    })
    if (arch === 'chatglm-6b') {
      expect(c).toMatchObject({
        bos_token: '<sop>', eos_token: '<eop>', end_token: '</s>', gmask_token: '[gMASK]', mask_token: '[MASK]',
        pad_token: '<pad>', unk_token: '<unk>', num_image_tokens: 0,
      })
    }
    // Key for key the published file where ../shared/real has it (name_or_path aside: that copy
    // was saved from a local directory).
    const real = join(REAL, `${arch}_tokenizer_config.json`)
    if (existsSync(real)) {
      const {name_or_path: _ours, ...mine} = c
      const {name_or_path: _theirs, ...theirs} = JSON.parse(readFileSync(real, 'utf8')) as Record<string, unknown>
      expect(mine).toEqual(theirs)
    }
    // Every token the config names is a piece of the model.
    for (const key of ['bos_token', 'eos_token', 'end_token', 'gmask_token', 'mask_token', 'pad_token', 'unk_token']) {
      if (key in c) expect([key, ids.has(c[key] as string)]).toEqual([key, true])
    }
  })
})

describe('against the sentencepiece library (python3-sentencepiece)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'glmtool-spm-'))
  afterAll(() => rmSync(dir, {recursive: true, force: true}))

  it.skipIf(!haveSpm)('schema: every field of the library\'s ModelProto has our number, label and type', () => {
    const py = runSpmCheck<{
      package: string
      messages: Record<string, Record<string, {number: number, label: string, type: string, type_name: string, default: string | null}>>
      enums: Record<string, Record<string, number>>
    }>(['--descriptor'])
    expect(py.package).toBe('sentencepiece')
    const extras: string[] = []
    for (const [msgName, fields] of Object.entries(py.messages)) {
      const type = sentencepieceRoot.lookupType(msgName)
      for (const [name, f] of Object.entries(fields)) {
        const ours = type.fields[protobuf.util.camelCase(name)]
        expect(ours, `${msgName}.${name}`).toBeDefined()
        const kind = ours.resolvedType instanceof protobuf.Enum ? 'enum'
          : ours.resolvedType instanceof protobuf.Type ? 'message' : ours.type
        expect({
          field: `${msgName}.${name}`, number: ours.id, label: ours.repeated ? 'repeated' : 'optional', type: kind,
          type_name: ours.resolvedType ? ours.resolvedType.fullName.slice(1) : '',
          default: ours.options?.default === undefined ? null : String(ours.options.default),
        }).toEqual({
          field: `${msgName}.${name}`, number: f.number, label: f.label, type: f.type, type_name: f.type_name,
          default: f.default === null ? null : normalizeDefault(f.default),
        })
      }
      for (const f of type.fieldsArray) {
        if (!Object.keys(fields).some((n) => protobuf.util.camelCase(n) === f.name)) extras.push(`${msgName}.${f.name}`)
      }
    }
    for (const [enumName, values] of Object.entries(py.enums)) {
      expect(sentencepieceRoot.lookupEnum(enumName).values).toEqual(values)
    }
    // Fields newer than the installed library (sentencepiece 0.1.99+) are the only extras.
    expect(extras.filter((e) => !NEWER_FIELDS.includes(e))).toEqual([])
  })

  it.skipIf(!haveSpm)('loads synthetic ice_text.model (v1, UNIGRAM) with the real layout and NFKC', () => {
    const tok = synthTokenizer('chatglm-6b')
    const path = join(dir, tok.fileName)
    writeFileSync(path, tok.bytes)
    const specials = Object.keys(EXPECT['chatglm-6b'].pieces)
    const out = runSpmCheck<SpmReport>([path], {
      pieces: [...specials, '你好', ',', '!'],
      ids: [0, 3, 4, 5, 130003, 130006, 130007, 130343],
      texts: ['你好', '👋', '你好，世界！', 'hello world', '<|blank_4|>print("hi")<n>x', 'ＡＢＣ①ﬁ', 'e\u0301'],
    })
    expect(out.vocab_size).toBe(V1_PIECE_COUNT)
    expect([out.unk_id, out.bos_id, out.eos_id, out.pad_id]).toEqual([0, 1, 2, 3])
    for (const piece of specials) expect([piece, out.piece_to_id[piece]]).toEqual([piece, EXPECT['chatglm-6b'].pieces[piece]])
    expect(out.id_to_piece).toMatchObject({130003: '<unused_0>', 130006: '<ENC>', 130007: '<dBLOCK>', 130343: '<0xFF>'})
    const enc = Object.fromEntries(out.encode.map((e) => [e.text, e]))
    // The same ids chatglm.cpp's tests get from the real model: a lone "▁" then one piece.
    expect(enc['你好'].ids).toEqual([5, out.piece_to_id['你好']])
    // ...and the emoji through byte fallback, id for id.
    expect(enc['👋'].ids).toEqual([5, 130328, 130247, 130233, 130227])
    expect(enc['你好，世界！'].pieces).toEqual(['\u2581', '你好', ',', '世界', '!'])
    expect(enc['ＡＢＣ①ﬁ'].pieces.join('')).toBe('\u2581ABC1fi')
    expect(enc['e\u0301'].pieces).toEqual(['\u2581', 'é'])
    expect(enc['<|blank_4|>print("hi")<n>x'].ids).toEqual(expect.arrayContaining([130011, 4]))
    expect(enc['hello world'].pieces).toEqual(['\u2581hello', '\u2581world'])
    for (const e of out.encode) expect([e.text, e.ids.includes(0)]).toEqual([e.text, false])
  })

  it.skipIf(!haveSpm)('segments v1 (UNIGRAM) text by Viterbi: every listed word whole, no <unk> anywhere', () => {
    const tok = synthTokenizer('chatglm-6b')
    const path = join(dir, 'viterbi-' + tok.fileName)
    writeFileSync(path, tok.bytes)
    const cap = (w: string): string => w[0].toUpperCase() + w.slice(1)
    const words = [...new Set([...SYNTH_WORDS.english, ...SYNTH_WORDS.english.map(cap)])]
    const texts = [...words, ...SYNTH_WORDS.chinese, ...strings()]
    const [out] = layouts([path], texts)
    const encoded = out.encode ?? []
    const split = encoded.slice(0, words.length).filter(([w, pieces]) => pieces.join(' ') !== '\u2581' + w)
    expect(split.map(([, pieces]) => pieces.join(' '))).toEqual([])
    const chinese = encoded.slice(words.length, words.length + SYNTH_WORDS.chinese.length)
    expect(chinese.filter(([w, pieces]) => pieces.join(' ') !== `\u2581 ${w}`).map(([, pieces]) => pieces.join(' '))).toEqual([])
    // Byte fallback: a character outside the vocabulary becomes bytes, never <unk> (id 0).
    const unk = encoded.filter(([, , ids]) => ids.includes(0))
    expect(unk.map(([t]) => show(t))).toEqual([])
    console.log(`synthetic v1 UNIGRAM: ${words.length + SYNTH_WORDS.chinese.length} listed words whole, ${strings().length} test strings without <unk>`)
  })

  it.skipIf(!haveSpm)('loads synthetic tokenizer.model (v2): byte fallback, no <unk> for emoji', () => {
    const tok = synthTokenizer('chatglm2-6b')
    const path = join(dir, tok.fileName)
    writeFileSync(path, tok.bytes)
    const specials = Object.keys(EXPECT['chatglm2-6b'].pieces)
    const out = runSpmCheck<SpmReport>([path], {
      pieces: [...specials, '<pad>', '[gMASK]', '\u2581', '\u2581你', '好', '\uff1a'],
      ids: [0, 1, 2, 3, V2_PIECE_COUNT - 1],
      texts: ['你好', '👋🤖', '\n', '\t#', '    print("hi")', '答：你好！', 'ChatGLM2-6B 是一个开源模型'],
    })
    expect(out.vocab_size).toBe(V2_PIECE_COUNT)
    expect([out.unk_id, out.bos_id, out.eos_id, out.pad_id]).toEqual([0, 1, 2, -1])
    for (const piece of specials) expect([piece, out.piece_to_id[piece]]).toEqual([piece, EXPECT['chatglm2-6b'].pieces[piece]])
    expect(out.piece_to_id['<pad>']).toBe(-1)
    expect(out.piece_to_id['[gMASK]']).toBe(-1)
    const enc = Object.fromEntries(out.encode.map((e) => [e.text, e]))
    const meta = out.piece_to_id['\u2581']
    expect(enc['你好'].ids).toEqual([out.piece_to_id['\u2581你'], out.piece_to_id['好']])
    // 👋 = F0 9F 91 8B, 🤖 = F0 9F A4 96: byte pieces at 3 + byte, as in the real model.
    expect(enc['👋🤖'].ids).toEqual([meta, 243, 162, 148, 142, 243, 162, 167, 153])
    expect(enc['\n'].ids).toEqual([meta, 13])
    expect(enc['\t#'].ids.slice(0, 2)).toEqual([meta, 12])
    expect(enc['答：你好！'].pieces).toContain('\uff1a') // identity normalizer: "：" stays
    expect(enc['    print("hi")'].pieces[0]).toBe('\u2581'.repeat(5)) // whitespace kept
    for (const e of out.encode) expect([e.text, e.ids.includes(0)]).toEqual([e.text, false])
  })
})

/** What test/crosscheck/spm_layout.py reports of a model file (the library's own protobuf view). */
interface Layout {
  top_fields: string[]
  trainer: Record<string, unknown>
  normalizer: Record<string, unknown>
  types: Array<[number, number]>
  specials: Array<[number, string, number, number]>
  normal: {
    count: number, exp_sum: number, runs: Array<[number, number, number, number]>, first_single: [number, string],
    max_len: number, multi_digit: number, inner_meta: number, meta_only: number,
  }
  encode?: Array<[string, string[], number[]]>
}

function layouts(paths: string[], texts?: string[]): Layout[] {
  const r = spawnSync(PYTHON, [SPM_LAYOUT, ...paths, ...(texts ? ['--encode'] : [])], {
    input: texts ? JSON.stringify(texts) : '', encoding: 'utf8', maxBuffer: 256 << 20,
  })
  if (r.status !== 0) throw new Error(`spm_layout.py failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as Layout[]
}

const REAL_FILES: Record<SynthTokenizerArch, string> = {
  'chatglm-6b': join(REAL, 'chatglm-6b_ice_text.model'),
  'chatglm2-6b': join(REAL, 'chatglm2-6b_tokenizer.model'),
}
const haveReal = existsSync(REAL_FILES['chatglm-6b']) && existsSync(REAL_FILES['chatglm2-6b'])
if (!haveReal) console.log(`synthetic-vs-real tokenizer layout skipped: ${REAL} has no real tokenizer files`)

describe('synthetic tokenizers against the real files (../shared/real), as the library reads both', () => {
  const dir = mkdtempSync(join(tmpdir(), 'glmtool-spm-real-'))
  afterAll(() => rmSync(dir, {recursive: true, force: true}))

  it.skipIf(!haveSpm || !haveReal).each(['chatglm-6b', 'chatglm2-6b'] as const)(
    '%s: the same settings, piece types id for id, special pieces and piece shapes', (arch) => {
    const tok = synthTokenizer(arch)
    const path = join(dir, tok.fileName)
    writeFileSync(path, tok.bytes)
    const [synth, real] = layouts([path, REAL_FILES[arch]])
    expect(synth.top_fields).toEqual(real.top_fields)
    // Every trainer field the real file sets, with its value, but where the real one was trained.
    const {input: _input, model_prefix: _prefix, ...realTrainer} = real.trainer
    expect(synth.trainer).toEqual(realTrainer)
    // The normalizer too; the charsmap is synth's own NFKC table, so only its presence compares.
    const charsmap = (l: Layout): boolean => (l.normalizer.precompiled_charsmap as number) > 0
    const {precompiled_charsmap: _a, ...synthNorm} = synth.normalizer
    const {precompiled_charsmap: _b, ...realNorm} = real.normalizer
    expect([synthNorm, charsmap(synth)]).toEqual([realNorm, charsmap(real)])
    expect(synth.types).toEqual(real.types)
    expect(synth.specials).toEqual(real.specials)
    const shape = (l: Layout) => ({
      count: l.normal.count, runs: l.normal.runs.length, firstScore: l.normal.runs[0][2] === 0 ? 0 : 'log-probability',
      mass: arch === 'chatglm-6b' ? Math.round(l.normal.exp_sum * 100) / 100 : 'BPE',
      firstSingle: arch === 'chatglm-6b' ? l.normal.first_single : l.normal.first_single[1],
      mergesFirst: l.normal.first_single[0] > 259 + 1000,
      maxLen: l.normal.max_len, multiDigit: l.normal.multi_digit, innerMeta: l.normal.inner_meta, metaOnly: l.normal.meta_only,
    })
    expect(shape(synth)).toEqual(shape(real))
  })
})

interface SpmReport {
  vocab_size: number
  unk_id: number
  bos_id: number
  eos_id: number
  pad_id: number
  piece_to_id: Record<string, number>
  id_to_piece: Record<string, string>
  encode: Array<{text: string, ids: number[], pieces: string[]}>
}

/** TrainerSpec fields added after sentencepiece 0.1.97 (Debian bookworm's version). */
const NEWER_FIELDS = ['sentencepiece.TrainerSpec.pretokenizationDelimiter', 'sentencepiece.TrainerSpec.seedSentencepiecesFile']

/** A descriptor default (always a string there) in the form protobufjs keeps it. */
function normalizeDefault(d: string): string {
  if (/^-?\d+(\.\d+)?$/.test(d)) return String(Number(d))
  return d
}
