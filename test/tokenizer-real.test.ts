/**
 * glmtool's tokenizers on the real ChatGLM tokenizer files (../shared/real, see SOURCES.txt there)
 * against the `sentencepiece` library and the published wrappers restated in Python
 * (test/crosscheck/spm_real_check.py), id for id and piece for piece:
 * - v1: the current ChatGLM-6B ice_text.model (UNIGRAM, 130344 pieces) with the published
 *   preprocessing (<n>, <|tab|>, <|blank_k|>);
 * - v1-old: the first-release 130000-piece ice_text.model, as its own code used it (344 pieces
 *   appended, byte_fallback on, num_image_tokens 20000);
 * - v2: ChatGLM2-6B's tokenizer.model (BPE; ChatGLM3-6B ships the same bytes).
 * The corpus is generated from a seed by the script (2,000+ strings and one 100 KB text); decoding
 * is checked on the corpus's ids and on random id sequences over the whole vocabulary.
 */
import {spawnSync} from 'node:child_process'
import {existsSync, readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import {beforeAll, describe, expect, it} from 'vitest'
import {decodeModelProto} from '../src/runtime/tokenizer/sentencepiece-model.js'
import {SentencePieceProcessor} from '../src/runtime/tokenizer/sentencepiece.js'
import {chatglm6bModel, ChatGLM6BTokenizer, loadChatGLM6BSentencePiece, preprocessV1} from '../src/runtime/tokenizer/chatglm-6b.js'
import {tokenizerFromBytes} from '../src/runtime/tokenizer/index.js'
import {show} from './fixtures/tokenizer/load.js'
import {parity} from './helpers/parity.js'

const PYTHON = '/usr/bin/python3'
const SCRIPT = fileURLToPath(new URL('crosscheck/spm_real_check.py', import.meta.url))
const REAL = fileURLToPath(new URL('../../shared/real', import.meta.url))
// The corpus grows or changes with TOKENIZER_REAL_COUNT / TOKENIZER_REAL_SEED (CI: the defaults).
const SEED = Number(process.env.TOKENIZER_REAL_SEED ?? 20260412)
const COUNT = Number(process.env.TOKENIZER_REAL_COUNT ?? 2400)

const CURRENT = `${REAL}/chatglm-6b_ice_text.model`
const OLD = `${REAL}/chatglm-6b_ice_text.model.pre-20230406_130000pieces`
const V2 = `${REAL}/chatglm2-6b_tokenizer.model`

function skipReason(): string | undefined {
  if (![CURRENT, OLD, V2].every((f) => existsSync(f))) return `real tokenizer files absent from ${REAL} (CI has them)`
  if (spawnSync(PYTHON, ['-c', 'import sentencepiece'], {stdio: 'ignore'}).status !== 0) return 'python3-sentencepiece not installed; .ci/run installs it'
  return undefined
}
const reason = skipReason()
if (reason) console.log(`real-file tokenizer cross-check skipped: ${reason}`)

type Name = 'v1' | 'v1-old' | 'v2'
interface Reply {
  library: string
  texts: string[]
  appended_equals_current: boolean
  models: Record<Name, {vocab: number, offset: number, encode: Array<[number[], string[]]>, decode: Array<[number[], string]>}>
}

/** What glmtool gives for one of the three: ids + pieces of a text, text of ids. */
interface Under {
  encode(text: string): {ids: number[], pieces: string[]}
  decode(ids: number[]): string
  stream(ids: number[]): string
}

function v1(sp: SentencePieceProcessor, numImageTokens: number, firstRelease = false): Under {
  const tok = new ChatGLM6BTokenizer(sp, 'ice_text.model', numImageTokens, firstRelease)
  return {
    encode: (text) => ({ids: tok.encode(text), pieces: sp.encodePieces(preprocessV1(text))}),
    decode: (ids) => tok.decode(ids),
    stream: (ids) => {
      const d = tok.streamDecoder()
      return ids.map((id) => d.push(id)).join('') + d.flush()
    },
  }
}

describe.skipIf(reason !== undefined)('tokenizers on the real files vs the sentencepiece library', () => {
  let reply: Reply
  const unders = {} as Record<Name, Under>

  beforeAll(() => {
    const run = spawnSync(PYTHON, [SCRIPT, REAL, String(SEED), String(COUNT)], {maxBuffer: 1 << 30, encoding: 'utf8'})
    if (run.status !== 0) throw new Error(`spm_real_check.py failed: ${run.stderr}`)
    reply = JSON.parse(run.stdout) as Reply
    unders.v1 = v1(loadChatGLM6BSentencePiece(readFileSync(CURRENT), CURRENT), 0)
    // The first release's own decode (SPTokenizer.decode) drops image ids.
    unders['v1-old'] = v1(loadChatGLM6BSentencePiece(readFileSync(OLD), OLD), 20000, true)
    const sp2 = SentencePieceProcessor.load(readFileSync(V2), V2)
    unders.v2 = {
      encode: (text) => sp2.encodeBoth(text),
      decode: (ids) => sp2.decode(ids),
      stream: (ids) => {
        const d = sp2.decoder()
        return ids.map((id) => d.push(id)).join('') + d.flush()
      },
    }
  })

  it('has a corpus of at least 2,000 strings with the empty string and a 100 KB text, from sentencepiece 0.1.97', () => {
    expect(reply.library).toBe('sentencepiece 0.1.97')
    expect(reply.texts.length).toBeGreaterThanOrEqual(2000)
    expect(reply.texts).toContain('')
    expect(Buffer.byteLength(reply.texts.at(-1)!, 'utf8')).toBeGreaterThanOrEqual(100 * 1024)
  })

  it.each(['v1', 'v1-old', 'v2'] as const)('%s: every string gives the library\'s ids and pieces', (name) => {
    const m = reply.models[name]
    const u = unders[name]
    parity(`real ${name} encode`, reply.texts.map((t, i) => [t, m.encode[i]] as const), ([text, [ids, pieces]]) => {
      const got = u.encode(text)
      if (JSON.stringify(got.ids) !== JSON.stringify(ids)) return `${show(text.slice(0, 200))}: ids ${JSON.stringify(got.ids.slice(0, 40))} != ${JSON.stringify(ids.slice(0, 40))}`
      if (JSON.stringify(got.pieces) !== JSON.stringify(pieces)) return `${show(text.slice(0, 200))}: pieces ${JSON.stringify(got.pieces.slice(0, 40))} != ${JSON.stringify(pieces.slice(0, 40))}`
      return null
    })
  })

  it.each(['v1', 'v1-old', 'v2'] as const)('%s: the corpus\'s ids and random id sequences decode to the published text, streamed too', (name) => {
    const m = reply.models[name]
    const u = unders[name]
    expect(m.decode.length).toBeGreaterThanOrEqual(reply.texts.length + 1000)
    parity(`real ${name} decode`, m.decode, ([ids, text]) => {
      const got = u.decode(ids)
      if (got !== text) return `${JSON.stringify(ids.slice(0, 40))}: ${show(got.slice(0, 200))} != ${show(text.slice(0, 200))}`
      const streamed = u.stream(ids)
      return streamed === text ? null : `${JSON.stringify(ids.slice(0, 40))}: streamed ${show(streamed.slice(0, 200))} != ${show(text.slice(0, 200))}`
    })
  })

  it('the first-release file is told apart at load: its decode has no transformers clean-up', () => {
    expect(tokenizerFromBytes(readFileSync(OLD), 'chatglm-6b', {numImageTokens: 20000}).responseStyle.name).toBe('chatglm-6b-first-release')
    expect(tokenizerFromBytes(readFileSync(CURRENT), 'chatglm-6b').responseStyle.name).toBe('chatglm-6b')
  })

  it('the random id sequences reach specials, byte pieces and (v1-old) image tokens', () => {
    const seqs = reply.models['v1-old'].decode.slice(reply.texts.length).flatMap(([ids]) => ids)
    expect(seqs.some((id) => id < 20000)).toBe(true)
    expect(seqs).toContain(130001 + 20000)
    expect(seqs.some((id) => id >= 130088 + 20000)).toBe(true)
  })

  it('the first-release file with the appended pieces equals the current file piece for piece', () => {
    const current = decodeModelProto(readFileSync(CURRENT), CURRENT)
    const old = decodeModelProto(readFileSync(OLD), OLD)
    expect(old.pieces.length).toBe(130000)
    expect(old.trainerSpec?.byteFallback ?? false).toBe(false)
    const upgraded = chatglm6bModel(old, OLD)
    expect(upgraded.pieces.length).toBe(130344)
    expect(upgraded.pieces).toEqual(current.pieces)
    expect(upgraded.trainerSpec).toEqual(current.trainerSpec)
    expect(upgraded.normalizerSpec).toEqual(current.normalizerSpec)
    // The library agrees: the Python restatement of the first-release code gives the current proto.
    expect(reply.appended_equals_current).toBe(true)
    // And the current file is taken as it is.
    expect(chatglm6bModel(current, CURRENT)).toBe(current)
  })

  it('through tokenizerFromBytes, the first-release file with num_image_tokens 20000 has the first release\'s specials', () => {
    // The first-release modeling code hard-codes MASK, gMASK = 150000, 150001.
    const tok = tokenizerFromBytes(readFileSync(OLD), 'chatglm-6b', {source: OLD, numImageTokens: 20000})
    expect(tok.vocabSize).toBe(150344)
    expect(tok.specials).toMatchObject({mask: 150000, gmask: 150001, sop: 150004, eop: 150005, pad: 20003})
    const cur = tokenizerFromBytes(readFileSync(CURRENT), 'chatglm-6b', {source: CURRENT})
    const text = reply.texts[20]
    expect(tok.encode(text)).toEqual(cur.encode(text).map((id) => id + 20000))
  })
})
