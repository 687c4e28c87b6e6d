/**
 * glmtool's tokenizers on the synthetic ChatGLM tokenizer files (src/synth/synth-tokenizer.ts:
 * the real vocabulary sizes, special ids and normalizer settings), which `glmtool synth` puts in
 * synthetic model directories. The special ids are checked always; the ids and decodes of every
 * test string are cross-checked live against the sentencepiece library and the published
 * wrappers (test/crosscheck/chatglm_tokenizers.py) when python3-sentencepiece is installed.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, describe, expect, it} from 'vitest'
import {archById} from '../src/models/index.js'
import {SentencePieceProcessor} from '../src/runtime/tokenizer/sentencepiece.js'
import {decodeModelProto, PieceType} from '../src/runtime/tokenizer/sentencepiece-model.js'
import {tokenizerFromBytes, type TokenizerArch} from '../src/runtime/tokenizer/index.js'
import {show, strings} from './fixtures/tokenizer/load.js'

const PYTHON = '/usr/bin/python3'
const CHECK = fileURLToPath(new URL('crosscheck/chatglm_tokenizers.py', import.meta.url))
const haveSpm = spawnSync(PYTHON, ['-c', 'import sentencepiece'], {stdio: 'ignore'}).status === 0
if (!haveSpm) console.log('synthetic tokenizer cross-check skipped: python3-sentencepiece not installed; .ci/run installs it')

interface PyReply {
  vocab_size: number
  encode: Array<{ids: number[], text_ids: number[], text_pieces: string[], decoded: string}>
  decode: string[]
}

/** A seeded xorshift32: rand(n) in [0, n). */
function generator(seed: number): (n: number) => number {
  let state = seed
  return (n) => {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    return (state >>> 0) % n
  }
}

/** Deterministic id sequences over the whole vocabulary, weighted towards specials and bytes. */
function randomSequences(vocabSize: number, special: number[], bytes: [number, number], count: number): number[][] {
  const rand = generator(0x9e3779b9)
  const out: number[][] = []
  for (let i = 0; i < count; i++) {
    const seq: number[] = []
    const len = 1 + rand(24)
    for (let k = 0; k < len; k++) {
      const r = rand(10)
      seq.push(r < 3 ? bytes[0] + rand(bytes[1] - bytes[0]) : r < 4 ? special[rand(special.length)] : rand(vocabSize))
    }
    out.push(seq)
  }
  return out
}

/**
 * Texts made of the model's own pieces, so that segmentations compete (UNIGRAM: many lattice
 * paths of close scores; BPE: many merge candidates): 1-12 random NORMAL pieces ("▁" as a
 * space), sometimes glued without the space, mixed with characters outside the vocabulary, runs
 * of spaces, newlines, tabs and special-like text. Seeded, so it can grow.
 */
function vocabularyTexts(normal: string[], count: number, seed: number): string[] {
  const rand = generator(seed)
  const extras = ['\u{20000}', '\u{1F600}', '\uFF0C', '\u3000', '\t', '\n', '\r\n', '   ', ' '.repeat(81), '<n>', '[gMASK]', '<sop>', '<|blank_3|>', '\u0301', '\u200b']
  const out: string[] = []
  for (let i = 0; i < count; i++) {
    let text = ''
    const n = 1 + rand(12)
    for (let k = 0; k < n; k++) {
      const r = rand(10)
      let piece = r < 8 ? normal[rand(normal.length)].replaceAll('\u2581', ' ') : extras[rand(extras.length)]
      if (rand(3) === 0) piece = piece.trimStart() // glue onto the previous piece
      text += piece
    }
    out.push(text)
  }
  return out
}

/** Stands for the id of "▁", which the synthetic v2 vocabulary puts where it likes. */
const META_ID = -1

const EXPECT: Record<TokenizerArch, {vocab: number, specials: object, ids: Record<string, number[]>, bytes: [number, number]}> = {
  'chatglm-6b': {
    vocab: 130344,
    specials: {gmask: 130001, mask: 130000, sop: 130004, eop: 130005, eos: 130005, pad: 3, stop: [130005]},
    // The layout chatglm.cpp's tests pin for the real ice_text.model (see synth-tokenizer.ts).
    ids: {'\n': [5, 4], '\t': [5, 130008], '    ': [5, 130011], '👋': [5, 130328, 130247, 130233, 130227]},
    bytes: [130088, 130344],
  },
  'chatglm2-6b': {
    vocab: 64794,
    specials: {gmask: 64790, mask: 64789, sop: 64792, eop: 64793, eos: 2, pad: 0, stop: [2]},
    ids: {'👋': [META_ID, 243, 162, 148, 142], '\n': [META_ID, 13], '\t': [META_ID, 12]},
    bytes: [3, 259],
  },
  // ChatGLM3-6B: the same file, four role specials after the five (its tokenization_chatglm.py).
  'chatglm3-6b': {
    vocab: 64798,
    specials: {gmask: 64790, mask: 64789, sop: 64792, eop: 64793, eos: 2, pad: 0, stop: [2, 64795, 64797], roles: {system: 64794, user: 64795, assistant: 64796, observation: 64797}},
    ids: {'👋': [META_ID, 243, 162, 148, 142], '\n': [META_ID, 13], '\t': [META_ID, 12]},
    bytes: [3, 259],
  },
}

describe.each(['chatglm-6b', 'chatglm2-6b', 'chatglm3-6b'] as const)('synthetic %s tokenizer', (arch) => {
  const file = archById(arch).synthTokenizer()
  const tok = tokenizerFromBytes(file.bytes, arch, {source: file.fileName})
  const exp = EXPECT[arch]
  const dir = mkdtempSync(join(tmpdir(), 'glmtool-synth-tok-'))
  afterAll(() => rmSync(dir, {recursive: true, force: true}))

  it('is the file its generation ships, read as that generation\'s tokenizer', () => {
    expect(file.fileName).toBe(archById(arch).tokenizerFile)
    expect(tok.arch).toBe(arch)
  })

  it('has the real vocabulary size and special ids', () => {
    expect(tok.vocabSize).toBe(exp.vocab)
    expect(tok.specials).toEqual(exp.specials)
    const sp = SentencePieceProcessor.load(file.bytes)
    for (const [text, ids] of Object.entries(exp.ids)) {
      const want = ids.map((id) => (id === META_ID ? sp.pieceToId('\u2581') : id))
      expect([text, tok.encode(text)]).toEqual([text, want])
    }
    expect(tok.encodePrompt('你好')).toEqual(arch === 'chatglm-6b'
      ? [...tok.encode('你好'), 130001, 130004]
      : [64790, 64792, ...tok.encode('你好')])
  })

  it.skipIf(!haveSpm)('gives the library\'s ids and text for every test string and random id sequence', () => {
    const path = join(dir, file.fileName)
    writeFileSync(path, file.bytes)
    const model = decodeModelProto(file.bytes, file.fileName)
    const normal = model.pieces.filter((p) => p.type === PieceType.NORMAL).map((p) => p.piece)
    const texts = [...strings(), ...vocabularyTexts(normal, 1500, 0x2545f491)]
    const sp = SentencePieceProcessor.load(file.bytes)
    const specialIds = [...Object.values(tok.specials).filter((v): v is number => typeof v === 'number'), ...Object.values(tok.specials.roles ?? {})]
    // v3 decodes the padded embedding rows past its vocabulary (65024 in config.json) too.
    const sequences = randomSequences(arch === 'chatglm3-6b' ? 65024 : tok.vocabSize, [...specialIds, 0, 1, 2], exp.bytes, 500)
    const r = spawnSync(PYTHON, [CHECK], {
      input: JSON.stringify({model: path, arch, texts, decode: sequences}), encoding: 'utf8', maxBuffer: 256 << 20,
    })
    if (r.status !== 0) throw new Error(`chatglm_tokenizers.py failed: ${r.stderr}`)
    const py = JSON.parse(r.stdout) as PyReply
    expect(py.vocab_size).toBe(tok.vocabSize)

    const failures: string[] = []
    const counts = {ids: 0, textIds: 0, textPieces: 0, decoded: 0, stream: 0, sequences: 0}
    const fail = (kind: keyof typeof counts, message: string): void => {
      if (counts[kind]++ < 3) failures.push(`${kind}: ${message}`)
    }
    texts.forEach((text, i) => {
      const want = py.encode[i]
      const ids = tok.encode(text)
      if (JSON.stringify(ids) !== JSON.stringify(want.ids)) fail('ids', `${show(text)}: ${JSON.stringify(ids).slice(0, 200)}`)
      const plain = sp.encodeBoth(text)
      if (JSON.stringify(plain.ids) !== JSON.stringify(want.text_ids)) fail('textIds', show(text))
      if (JSON.stringify(plain.pieces) !== JSON.stringify(want.text_pieces)) fail('textPieces', show(text))
      if (tok.decode(want.ids) !== want.decoded) fail('decoded', show(text))
      const d = tok.streamDecoder()
      const streamed = want.ids.map((id) => d.push(id)).join('') + d.flush()
      if (streamed !== want.decoded) fail('stream', show(text))
    })
    sequences.forEach((ids, i) => {
      const text = tok.decode(ids)
      if (text !== py.decode[i]) fail('sequences', `${JSON.stringify(ids)}: ${show(text)} != ${show(py.decode[i])}`)
    })
    console.log(`synthetic ${arch} (${file.fileName}): ${texts.length} strings and ${sequences.length} id sequences vs sentencepiece; mismatches ${JSON.stringify(counts)}`)
    expect(failures).toEqual([])
  })
})
