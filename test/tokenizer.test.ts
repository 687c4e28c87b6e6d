/**
 * The ChatGLM tokenizers (src/runtime/tokenizer*.ts) against the published wrappers: the
 * fixtures hold, for >= 2,000 strings, the ids and decodes of tokenization_chatglm.py's logic
 * (restated over the sentencepiece library in test/crosscheck/chatglm_tokenizers.py) for a
 * ChatGLM-6B-like and a ChatGLM2-6B-like model trained by the library (see
 * test/fixtures/tokenizer/make_tokenizer_fixtures.py). Also the streaming decoder's contract.
 */
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {ModelError} from '../src/errors.js'
import {SentencePieceProcessor} from '../src/runtime/tokenizer/sentencepiece.js'
import {postprocessV1, preprocessV1} from '../src/runtime/tokenizer/chatglm-6b.js'
import {loadTokenizer, loadTokenizerFiles, tokenizerFromBytes, type ChatTokenizer} from '../src/runtime/tokenizer/index.js'
import {fixtureModel, show, strings, wrapperFixture} from './fixtures/tokenizer/load.js'
import {parity} from './helpers/parity.js'

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/


/**
 * Stream `ids` through a fresh decoder and check the contract: pushes + flush == decode(ids),
 * so nothing a push returned is ever taken back (a stand-in such as "<|blank_4|>" is never
 * handed out half-replaced), no push with a lone surrogate, U+FFFD only where decode has one.
 * Returns a failure or null.
 */
function checkStream(tok: ChatTokenizer, ids: readonly number[], expected: string): string | null {
  const d = tok.streamDecoder()
  let text = ''
  for (const id of ids) {
    const part = d.push(id)
    if (LONE_SURROGATE.test(part)) return `push(${id}) gave a lone surrogate`
    if (part.includes('\ufffd') && !expected.includes('\ufffd')) return `push(${id}) gave U+FFFD`
    text += part
    if (!expected.startsWith(text)) return `after push(${id}): ${show(text)} is not a prefix of ${show(expected)}`
  }
  text += d.flush()
  return text === expected ? null : `${show(text)} != ${show(expected)}`
}

describe.each(['v1', 'v2'] as const)('ChatTokenizer vs the published wrapper: %s', (name) => {
  const fx = wrapperFixture(name)
  const texts = strings()
  const tok = tokenizerFromBytes(fixtureModel(fx.model), fx.arch, {source: fx.model})
  const cases = fx.cases.map((c, i) => ({...c, text: texts[i]}))

  it('encodes every string to the wrapper\'s ids', () => {
    expect(cases.length).toBeGreaterThanOrEqual(2000)
    expect(tok.vocabSize).toBe(fx.vocab_size)
    parity(`${fx.arch} (${fx.model}) encode`, cases, (c) => {
      const ids = tok.encode(c.text)
      return JSON.stringify(ids) === JSON.stringify(c.wrapped_ids) ? null : `${show(c.text)}: ${JSON.stringify(ids)} != ${JSON.stringify(c.wrapped_ids)}`
    })
    // The wrapper matters on these strings: v1 rewrites whitespace, v2 maps "sop"/"eop" pieces.
    const rewritten = cases.filter((c) => JSON.stringify(c.ids) !== JSON.stringify(c.wrapped_ids)).length
    console.log(`${fx.arch}: the wrapper changes the ids of ${rewritten} strings`)
    expect(rewritten).toBeGreaterThan(name === 'v1' ? 500 : 3)
  })

  it('decodes those ids to the wrapper\'s text', () => {
    parity(`${fx.arch} (${fx.model}) decode`, cases, (c) => {
      const text = tok.decode(c.wrapped_ids)
      return text === c.wrapped_decoded ? null : `${JSON.stringify(c.wrapped_ids)}: ${show(text)} != ${show(c.wrapped_decoded)}`
    })
  })

  it('decodes random id sequences (specials, pad, byte pieces out of order) as the wrapper does', () => {
    parity(`${fx.arch} (${fx.model}) random decode`, fx.decodes, (c) => {
      const text = tok.decode(c.ids)
      return text === c.wrapped_decoded ? null : `${JSON.stringify(c.ids)}: ${show(text)} != ${show(c.wrapped_decoded)}`
    })
  })

  it('streams every string\'s ids and every random sequence to decode\'s text', () => {
    parity(`${fx.arch} (${fx.model}) stream`, [
      ...cases.map((c) => ({ids: c.wrapped_ids, expected: c.wrapped_decoded})),
      ...fx.decodes.map((c) => ({ids: c.ids, expected: c.wrapped_decoded})),
    ], (c) => {
      const failure = checkStream(tok, c.ids, c.expected)
      return failure && `${JSON.stringify(c.ids).slice(0, 200)}: ${failure}`
    })
  })

  it('builds prompts around the text ids', () => {
    const ids = tok.encode('你好')
    const {gmask, sop} = tok.specials
    expect(tok.encodePrompt('你好')).toEqual(name === 'v1' ? [...ids, gmask, sop] : [gmask, sop, ...ids])
    expect(tok.encodePrompt('')).toEqual([gmask, sop])
    expect(tok.decode(tok.encodePrompt('你好'))).toBe('你好')
  })

  it('refuses ids outside the vocabulary', () => {
    expect(() => tok.decode([tok.vocabSize])).toThrow(RangeError)
    expect(() => tok.streamDecoder().push(tok.vocabSize + 7)).toThrow(RangeError)
  })
})

describe('ChatGLM-6B (v1) wrapper rules', () => {
  const tok = tokenizerFromBytes(fixtureModel('v1-bpe.model'), 'chatglm-6b')
  const sp = SentencePieceProcessor.load(fixtureModel('v1-bpe.model'))
  /** Ids spelling `text` one ASCII character per piece (its byte piece where it has none). */
  const spell = (text: string): number[] => [...text].map((c) => {
    const piece = sp.hasPiece(c) ? c : `<0x${c.charCodeAt(0).toString(16).toUpperCase()}>`
    expect([piece, sp.hasPiece(piece)]).toEqual([piece, true])
    return sp.pieceToId(piece)
  })

  it('takes specials from the model\'s pieces; <eop> ends generation', () => {
    // v1-bpe.model: <unk> <s> </s> <pad> [MASK] [gMASK] [sMASK] <sop> <eop> <n> <|tab|> ...
    expect(tok.specials).toEqual({gmask: 5, mask: 4, sop: 7, eop: 8, eos: 8, pad: 3, stop: [8]})
  })

  it('rewrites newlines, tabs and space runs as the reference does (longest runs first)', () => {
    expect(preprocessV1('a\nb\tc')).toBe('a<n>b<|tab|>c')
    expect(preprocessV1('a b  c')).toBe('a b<|blank_2|>c')
    expect(preprocessV1(' '.repeat(80))).toBe('<|blank_80|>')
    expect(preprocessV1(' '.repeat(81))).toBe('<|blank_80|> ')
    expect(preprocessV1(' '.repeat(82))).toBe('<|blank_80|><|blank_2|>')
    expect(preprocessV1(' '.repeat(165))).toBe('<|blank_80|><|blank_80|><|blank_5|>')
    expect(preprocessV1('\t \t')).toBe('<|tab|> <|tab|>')
  })

  it('turns stand-ins back into whitespace, only for k in 2..80', () => {
    expect(postprocessV1('<n><|tab|><|blank_2|><|blank_80|>')).toBe(`\n\t  ${' '.repeat(80)}`)
    for (const s of ['<|blank_1|>', '<|blank_81|>', '<|blank_02|>', '<|blank_|>', '<N>', '<|TAB|>']) {
      expect(postprocessV1(s)).toBe(s)
    }
    expect(postprocessV1('<<n>>')).toBe('<\n>')
  })

  it('streams a stand-in spelled across pieces only once it is complete', () => {
    // "<|blank_4|>" from single-character pieces (not the user-defined piece).
    const ids = spell('x<|blank_4|>y')
    const d = tok.streamDecoder()
    const parts = ids.map((id) => d.push(id))
    parts.push(d.flush())
    expect(parts.join('')).toBe(tok.decode(ids))
    expect(parts.join('')).toBe('x    y')
    expect(parts).toEqual(['x', '', '', '', '', '', '', '', '', '', '', '    ', 'y', ''])
    // "<|blank_8" may still become "<|blank_80|>": held until "|>" or "0" settles it.
    const d2 = tok.streamDecoder()
    expect(spell('<|blank_8').map((id) => d2.push(id)).join('')).toBe('')
    expect(d2.push(spell('0')[0])).toBe('')
    expect(d2.push(spell('|')[0])).toBe('')
    expect(d2.push(spell('>')[0])).toBe(' '.repeat(80))
    // ... and let go as soon as it cannot.
    const d3 = tok.streamDecoder()
    expect(spell('<|blank_8').map((id) => d3.push(id)).join('')).toBe('')
    expect(d3.push(spell('x')[0])).toBe('<|blank_8x')
    expect(d3.flush()).toBe('')
  })

  it('drops pad ids before decoding, so they do not split a character\'s bytes', () => {
    const ids = tok.encode('𠀀') // ▁ + 4 byte pieces
    expect(ids).toHaveLength(5)
    const withPad = [ids[0], ids[1], tok.specials.pad, ...ids.slice(2)]
    expect(tok.decode(withPad)).toBe('𠀀')
  })

  it('applies num_image_tokens as an id offset; image ids decode as the current release\'s decode gives them', () => {
    const shifted = tokenizerFromBytes(fixtureModel('v1-bpe.model'), 'chatglm-6b', {numImageTokens: 20000})
    const ids = tok.encode('你好 world\n')
    expect(shifted.encode('你好 world\n')).toEqual(ids.map((i) => i + 20000))
    expect(shifted.specials.gmask).toBe(20005)
    expect(shifted.vocabSize).toBe(23000)
    // transformers' decode names an image id "<image_k>" (_convert_id_to_token) and DecodePieces
    // gives a string it does not know back as it is; the "▁" after it is then no longer leading.
    expect(shifted.decode([5, ...ids.map((i) => i + 20000)])).toBe(`<image_5> ${tok.decode(ids)}`)
    expect(shifted.responseStyle.name).toBe('chatglm-6b')
  })
})

describe('ChatGLM2-6B (v2) wrapper rules', () => {
  const tok = tokenizerFromBytes(fixtureModel('v2-bpe.model'), 'chatglm2-6b')

  it('puts its five specials after the SentencePiece vocabulary; </s> ends generation', () => {
    // v2-bpe.model has 2500 pieces: [MASK] 2500, [gMASK] 2501, [sMASK] 2502, sop 2503, eop 2504.
    expect(tok.specials).toEqual({gmask: 2501, mask: 2500, sop: 2503, eop: 2504, eos: 2, pad: 0, stop: [2]})
    expect(tok.vocabSize).toBe(2505)
  })

  it('maps a text piece spelled "sop" or "eop" to the special, as the published code does', () => {
    expect(tok.encode('esop').at(-1)).toBe(2503)
    expect(tok.encode('你eop好')).toContain(2504)
    expect(tok.decode(tok.encode('esop'))).toBe('e')
  })

  it('decodes specials, <s>, </s> and <unk> as nothing, yet they end a byte run', () => {
    const rare = tok.encode('𠀀') // ▁ + 4 byte pieces: Extension B is outside the vocabulary
    expect(rare).toHaveLength(5)
    expect(tok.decode([...rare, 2, 2503])).toBe('𠀀')
    expect(tok.decode([rare[0], rare[1], 2501, ...rare.slice(2)])).toBe('\ufffd\ufffd\ufffd\ufffd')
    expect(tok.decode([0, 1, 2, 2500, 2504, -1])).toBe('')
  })

  it('streams a byte-fallback character only when its last byte arrives', () => {
    const ids = tok.encode('a𠀀b')
    const d = tok.streamDecoder()
    const parts = ids.map((id) => d.push(id))
    parts.push(d.flush())
    expect(parts.join('')).toBe('a𠀀b')
    expect(parts.filter((p) => p.includes('𠀀'))).toEqual(['𠀀'])
    expect(parts.filter((p) => p === '').length).toBeGreaterThanOrEqual(3)
    expect(parts.some((p) => p.includes('\ufffd'))).toBe(false)
  })
})

describe('loadTokenizer', () => {
  const dir = mkdtempSync(join(tmpdir(), 'glmtool-tok-'))
  afterAll(() => rmSync(dir, {recursive: true, force: true}))

  it('reads ice_text.model / tokenizer.model from a model directory', async () => {
    writeFileSync(join(dir, 'ice_text.model'), fixtureModel('v1-bpe.model'))
    writeFileSync(join(dir, 'tokenizer.model'), fixtureModel('v2-bpe.model'))
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({num_image_tokens: 0}))
    const v1 = await loadTokenizer(dir, 'chatglm-6b')
    const v2 = await loadTokenizer(dir, 'chatglm2-6b')
    expect([v1.arch, v1.vocabSize, v2.arch, v2.vocabSize]).toEqual(['chatglm-6b', 3000, 'chatglm2-6b', 2505])
    expect(v1.decode(v1.encode('def f():\n\treturn  1'))).toBe('def f():\n\treturn  1')
    expect(v2.decode(v2.encode('def f():\n\treturn  1'))).toBe('def f():\n\treturn  1')
  })

  it('takes num_image_tokens from tokenizer_config.json (v1)', async () => {
    const d = mkdtempSync(join(dir, 'cfg-'))
    writeFileSync(join(d, 'ice_text.model'), fixtureModel('v1-bpe.model'))
    writeFileSync(join(d, 'tokenizer_config.json'), JSON.stringify({num_image_tokens: 100}))
    expect((await loadTokenizer(d, 'chatglm-6b')).specials.gmask).toBe(105)
    writeFileSync(join(d, 'tokenizer_config.json'), JSON.stringify({num_image_tokens: 0}))
    expect((await loadTokenizer(d, 'chatglm-6b')).specials.gmask).toBe(5)
    writeFileSync(join(d, 'tokenizer_config.json'), '{"num_image_tokens": -1}')
    await expect(loadTokenizer(d, 'chatglm-6b')).rejects.toThrow(/num_image_tokens must be an integer from 0/)
  })

  it('uses the published default num_image_tokens = 20000 when tokenizer_config.json does not say (v1)', async () => {
    const d = mkdtempSync(join(dir, 'default-'))
    writeFileSync(join(d, 'ice_text.model'), fixtureModel('v1-bpe.model'))
    expect((await loadTokenizer(d, 'chatglm-6b')).specials.gmask).toBe(20005)
    writeFileSync(join(d, 'tokenizer_config.json'), JSON.stringify({tokenizer_class: 'ChatGLMTokenizer'}))
    const t = await loadTokenizerFiles(d, 'chatglm-6b')
    expect([t.tokenizer.specials.gmask, t.numImageTokens]).toEqual([20005, {value: 20000}])
  })

  it('names the missing file', async () => {
    const empty = mkdtempSync(join(dir, 'empty-'))
    await expect(loadTokenizer(empty, 'chatglm2-6b')).rejects.toThrow(ModelError)
    await expect(loadTokenizer(empty, 'chatglm2-6b')).rejects.toThrow(`${join(empty, 'tokenizer.model')}: missing`)
  })

  it('refuses a v1 model without the ChatGLM specials', async () => {
    expect(() => tokenizerFromBytes(fixtureModel('v2-bpe.model'), 'chatglm-6b', {source: 'x/ice_text.model'}))
      .toThrow('x/ice_text.model: has no <eop> piece; not a ChatGLM-6B tokenizer')
  })
})
