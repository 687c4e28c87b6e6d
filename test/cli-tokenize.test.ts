/**
 * `glmtool tokenize`, and the tokenizer checks every command makes before heavy work: ids equal
 * the published wrappers restated over the `sentencepiece` library
 * (test/crosscheck/chatglm_tokenizers.py); a tokenizer that does not fit the model's embedding,
 * or whose special ids are not config.json's, is refused naming both files; `chat` and
 * `quantize` fail on a bad tokenizer before converting anything; `inspect` reports it.
 */
import {spawnSync} from 'node:child_process'
import {cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {glmtool} from './helpers/cli.js'

const PYTHON = '/usr/bin/python3'
const CHECK = join(import.meta.dirname, 'crosscheck/chatglm_tokenizers.py')
const haveSpm = spawnSync(PYTHON, ['-c', 'import sentencepiece'], {stdio: 'ignore'}).status === 0
if (!haveSpm) console.warn('cli-tokenize: python3-sentencepiece not installed, library cross-check skipped (.ci/run installs it)')
const REAL = join(import.meta.dirname, '../../shared/real')
const haveReal = existsSync(join(REAL, 'chatglm2-6b_tokenizer.model'))
if (!haveReal) console.warn(`cli-tokenize: ${REAL} is absent, real-tokenizer cases skipped`)

const work = mkdtempSync(join(tmpdir(), 'glmtool-tokenize-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

const TEXTS = ['你好', 'Hello, world!', 'def f():\n\treturn    1\r\n', '  两个空格  and 80+ spaces' + ' '.repeat(85) + 'end', '[gMASK]<sop> <n> esop', '👋 𠀀 ，！']

function json(r: {code: number | null, stdout: string, stderr: string}): unknown {
  expect(r.code, r.stderr).toBe(0)
  return JSON.parse(r.stdout)
}

describe.each(['chatglm-6b', 'chatglm2-6b'] as const)('glmtool tokenize on a synth %s', (arch) => {
  const model = join(work, arch)
  const file = arch === 'chatglm-6b' ? 'ice_text.model' : 'tokenizer.model'
  beforeAll(() => {
    const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', model, '--seed', '3'])
    if (r.code !== 0) throw new Error(r.stderr)
  })

  it.skipIf(!haveSpm)('gives the published tokenizer\'s ids, pieces that name them, and its decode', () => {
    const out = json(glmtool(['tokenize', model, ...TEXTS.flatMap(t => ['--text', t]), '--json'])) as {text: string, ids: number[], pieces: string[]}[]
    expect(out.map(o => o.text)).toEqual(TEXTS)
    const py = spawnSync(PYTHON, [CHECK], {input: JSON.stringify({model: join(model, file), arch, texts: TEXTS, decode: out.map(o => o.ids)}), encoding: 'utf8'})
    expect(py.status, py.stderr).toBe(0)
    const ref = JSON.parse(py.stdout) as {encode: {ids: number[]}[], decode: string[]}
    expect(out.map(o => o.ids)).toEqual(ref.encode.map(e => e.ids))
    for (const o of out) expect(o.pieces).toHaveLength(o.ids.length)
    // --decode prints the published decode of the same ids (v1: with transformers' clean-up).
    const dec = json(glmtool(['tokenize', model, ...out.flatMap(o => ['--decode', o.ids.join(',')]), '--json'])) as {ids: number[], text: string}[]
    const cleanUp = (s: string) => arch === 'chatglm-6b' ? s.replaceAll(' ,', ',').replaceAll(' !', '!') : s
    expect(dec.map(d => d.text)).toEqual(ref.decode.map(cleanUp))
  })

  it('reads the tokenizer file itself, and prints a table without --json', () => {
    const r = glmtool(['tokenize', join(model, file), '--text', '你好'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain(`${arch}, `)
    expect(r.stdout).toMatch(/"你好": \d+ tokens/)
  })

  it('refuses bad requests in one line', () => {
    const none = glmtool(['tokenize', model])
    expect([none.code, none.stderr.trim()]).toEqual([1, 'glmtool: nothing to do: give --text, --file or --decode'])
    const bad = glmtool(['tokenize', model, '--decode', '1,x'])
    expect(bad.stderr).toContain('--decode: "x" is not a token id')
    const big = glmtool(['tokenize', model, '--decode', '99999999'])
    expect(big.code).toBe(1)
    expect(big.stderr).toMatch(/id 99999999 is outside .*vocabulary/)
  })
})

describe('the tokenizer is checked against the model before heavy work', () => {
  const v1 = join(work, 'v1-checks')
  beforeAll(() => {
    const r = glmtool(['synth', '--arch', 'chatglm-6b', '--size', 'tiny', '--out', v1, '--seed', '4'])
    if (r.code !== 0) throw new Error(r.stderr)
  })

  it('without num_image_tokens in tokenizer_config.json the published default 20000 applies, and it does not fit: both files named', () => {
    const d = join(work, 'no-image-key')
    cpSync(v1, d, {recursive: true})
    unlinkSync(join(d, 'tokenizer_config.json'))
    const r = glmtool(['chat', d, '--prompt', 'hi', '--max-new-tokens', '2'], {env: {GLMTOOL_CACHE: join(work, 'cache-a')}})
    expect(r.code).toBe(1)
    expect(r.stderr.trim()).toBe(`glmtool: ${join(d, 'ice_text.model')} with num_image_tokens 20000 (the published default: no tokenizer_config.json sets it) has ids up to 150343, but ${join(d, 'config.json')} gives the word embedding 130528 rows; the tokenizer does not belong to this model; if the model has no image tokens, set "num_image_tokens": 0 in ${join(d, 'tokenizer_config.json')}`)
    // Failed before converting: nothing was written to the cache.
    expect(existsSync(join(work, 'cache-a'))).toBe(false)
  })

  it('special ids of config.json must be the tokenizer\'s (a 150528-row first-release config with a current tokenizer)', () => {
    const d = join(work, 'old-config')
    cpSync(v1, d, {recursive: true})
    const config = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'))
    writeFileSync(join(d, 'config.json'), JSON.stringify({...config, vocab_size: 150528, bos_token_id: 150004, eos_token_id: 150005, mask_token_id: 150000, gmask_token_id: 150001}))
    const r = glmtool(['tokenize', d, '--text', 'x'])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(`${join(d, 'config.json')} has bos_token_id 150004, but ${join(d, 'ice_text.model')} with num_image_tokens 0 (${join(d, 'tokenizer_config.json')}) has sop at 130004`)
  })

  it('chat fails on a corrupt tokenizer at once, naming the user\'s file, before any conversion', () => {
    const d = join(work, 'corrupt')
    cpSync(v1, d, {recursive: true})
    writeFileSync(join(d, 'ice_text.model'), Buffer.from('not a sentencepiece model'))
    const cache = join(work, 'cache-b')
    const r = glmtool(['chat', d, '--prompt', 'hi'], {env: {GLMTOOL_CACHE: cache}})
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(join(d, 'ice_text.model'))
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(existsSync(cache)).toBe(false)
  })

  it('quantize --method calibrated fails on a corrupt tokenizer before exporting anything', () => {
    const d = join(work, 'corrupt')
    const r = glmtool(['quantize', d, '--bits', '4', '--method', 'calibrated', '--out', join(work, 'q-out')])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(join(d, 'ice_text.model'))
    expect(existsSync(join(work, 'q-out'))).toBe(false)
  })

  it('quantize --evaluate auto without a tokenizer quantizes and says why it skipped the evaluation', () => {
    const d = join(work, 'no-tokenizer')
    cpSync(v1, d, {recursive: true})
    unlinkSync(join(d, 'ice_text.model'))
    const out = json(glmtool(['quantize', d, '--bits', '4', '--out', join(work, 'q-rtn'), '--json'])) as {endToEnd: {skipped: string}}
    expect(out.endToEnd.skipped).toBe(`no tokenizer to make evaluation text with (${join(d, 'ice_text.model')} is missing)`)
    expect(readdirSync(join(work, 'q-rtn'))).toContain('config.json')
  })

  it('inspect reports the tokenizer: type, pieces, specials, num_image_tokens, whether it fits', () => {
    const out = json(glmtool(['inspect', v1, '--json', '--no-tensors'])) as {tokenizer: Record<string, unknown>}
    expect(out.tokenizer).toMatchObject({file: join(v1, 'ice_text.model'), pieces: 130344, vocabSize: 130344, numImageTokens: 0, embeddingRows: 130528, fitsEmbedding: true})
    expect(out.tokenizer.specials).toMatchObject({gmask: 130001, mask: 130000, sop: 130004, eop: 130005})
    const d = join(work, 'no-image-key')
    const bad = json(glmtool(['inspect', d, '--json', '--no-tensors'])) as {tokenizer: Record<string, unknown>}
    expect(bad.tokenizer).toMatchObject({numImageTokens: 20000, numImageTokensFrom: 'published default', fitsEmbedding: false})
    expect(String(bad.tokenizer.problem)).toContain('has ids up to 150343')
  })
})

describe.skipIf(!haveReal || !haveSpm)('glmtool tokenize on the real ChatGLM2-6B tokenizer.model', () => {
  it('gives the library\'s ids through the published v2 wrapper', () => {
    const path = join(REAL, 'chatglm2-6b_tokenizer.model')
    const out = json(glmtool(['tokenize', path, ...TEXTS.flatMap(t => ['--text', t]), '--json'])) as {ids: number[]}[]
    const py = spawnSync(PYTHON, [CHECK], {input: JSON.stringify({model: path, arch: 'chatglm2-6b', texts: TEXTS}), encoding: 'utf8'})
    expect(py.status, py.stderr).toBe(0)
    expect(out.map(o => o.ids)).toEqual((JSON.parse(py.stdout) as {encode: {ids: number[]}[]}).encode.map(e => e.ids))
  })
})

describe.skipIf(!haveReal || !haveSpm)('glmtool tokenize --arch chatglm3-6b on the real tokenizer.model (ChatGLM3-6B ships ChatGLM2-6B\'s bytes)', () => {
  const path = join(REAL, 'chatglm2-6b_tokenizer.model')
  // Role specials, the five, </s>, text ids, a padded embedding row (65000) and a byte run.
  const IDS = [64790, 64792, 64794, 30910, 13, 36474, 54591, 64795, 64796, 2, 65000, 64797, 243, 162, 148, 142]

  it('encodes as the published ChatGLM3-6B tokenizer and decodes roles by name, rows past the vocabulary as ""', () => {
    const texts = [...TEXTS, '<|user|> sop <|assistant|>']
    const out = json(glmtool(['tokenize', path, '--arch', 'chatglm3-6b', ...texts.flatMap(t => ['--text', t]), '--decode', IDS.join(','), '--json'])) as Array<{ids: number[], text: string}>
    const py = spawnSync(PYTHON, [CHECK], {input: JSON.stringify({model: path, arch: 'chatglm3-6b', texts, decode: [IDS]}), encoding: 'utf8'})
    expect(py.status, py.stderr).toBe(0)
    const ref = JSON.parse(py.stdout) as {encode: {ids: number[]}[], decode: string[]}
    expect(out.slice(0, texts.length).map(o => o.ids)).toEqual(ref.encode.map(e => e.ids))
    expect(out.at(-1)!.text).toBe(ref.decode[0])
    expect(ref.decode[0]).toContain('<|system|>')
  })

  it('says the file is read as ChatGLM2-6B\'s without --arch, and how to read it as ChatGLM3-6B\'s', () => {
    const r = glmtool(['tokenize', path, '--decode', '64789'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain('chatglm2-6b, ')
    expect(r.stderr).toContain('give --arch chatglm3-6b')
    const v3 = glmtool(['tokenize', path, '--arch', 'chatglm3-6b', '--decode', '64789'])
    expect(v3.code, v3.stderr).toBe(0)
    expect([v3.stdout, v3.stderr]).toEqual([expect.stringContaining('chatglm3-6b, BPE, 64789 pieces, vocabulary 64798'), ''])
    expect(v3.stdout).toContain('[64789] -> "[MASK]"')
  })

  it('refuses --arch chatglm-6b for it (and chatglm3-6b for ice_text.model) in one line', () => {
    const r = glmtool(['tokenize', path, '--arch', 'chatglm-6b', '--text', 'x'])
    expect([r.code, r.stderr.trim()]).toEqual([1, `glmtool: --arch chatglm-6b: ${path} is ChatGLM2-6B's or ChatGLM3-6B's, not chatglm-6b's`])
    const v1 = join(REAL, 'chatglm-6b_ice_text.model')
    const w = glmtool(['tokenize', v1, '--arch', 'chatglm3-6b', '--text', 'x'])
    expect([w.code, w.stderr.trim()]).toEqual([1, `glmtool: --arch chatglm3-6b: ${v1} is ChatGLM-6B's, not chatglm3-6b's`])
    const bad = glmtool(['tokenize', path, '--arch', 'chatglm4-9b', '--text', 'x'])
    expect(bad.code).not.toBe(0)
    expect(bad.stderr).toContain('chatglm3-6b')
  })
})

describe.skipIf(!haveReal || !haveSpm)('the real ChatGLM-6B tokenizers in model directories', () => {
  const current = join(work, 'real-v1')
  const first = join(work, 'real-v1-first-release')
  beforeAll(() => {
    for (const d of [current, first]) rmSync(d, {recursive: true, force: true})
    cpSync(join(REAL, 'chatglm-6b_ice_text.model'), join(current, 'ice_text.model'))
    cpSync(join(REAL, 'chatglm-6b_tokenizer_config.json'), join(current, 'tokenizer_config.json'))
    cpSync(join(REAL, 'chatglm-6b_config.json'), join(current, 'config.json'))
    // A first-release checkpoint: the 130000-piece file, no num_image_tokens (so 20000), 150528 rows.
    cpSync(join(REAL, 'chatglm-6b_ice_text.model.pre-20230406_130000pieces'), join(first, 'ice_text.model'))
    const config = JSON.parse(readFileSync(join(REAL, 'chatglm-6b_config.json'), 'utf8'))
    writeFileSync(join(first, 'config.json'), JSON.stringify({...config, vocab_size: 150528, bos_token_id: 150004, eos_token_id: 150005, mask_token_id: 150000, gmask_token_id: 150001}))
  })

  it('the current file: the library\'s ids through the published v1 wrapper, checked against the real config', () => {
    const out = json(glmtool(['tokenize', current, ...TEXTS.flatMap(t => ['--text', t]), '--json'])) as {ids: number[]}[]
    const py = spawnSync(PYTHON, [CHECK], {input: JSON.stringify({model: join(current, 'ice_text.model'), arch: 'chatglm-6b', texts: TEXTS}), encoding: 'utf8'})
    expect(py.status, py.stderr).toBe(0)
    expect(out.map(o => o.ids)).toEqual((JSON.parse(py.stdout) as {encode: {ids: number[]}[]}).encode.map(e => e.ids))
  })

  it('the first-release file: the same ids 20000 higher, its specials at 150000.., and inspect says it fits', () => {
    const now = json(glmtool(['tokenize', current, ...TEXTS.flatMap(t => ['--text', t]), '--json'])) as {ids: number[]}[]
    const old = json(glmtool(['tokenize', first, ...TEXTS.flatMap(t => ['--text', t]), '--json'])) as {ids: number[]}[]
    expect(old.map(o => o.ids)).toEqual(now.map(o => o.ids.map(i => i + 20000)))
    const dec = json(glmtool(['tokenize', first, '--decode', '150001,150004,20005,5', '--json'])) as {text: string}[]
    expect(dec[0].text).toBe('')
  })
})
