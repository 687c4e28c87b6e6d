/**
 * The published chat() text (src/runtime/chat-response.ts) against a Python transcription of the
 * published code (test/crosscheck/chat_response.py: transformers' clean_up_tokenization and each
 * generation's process_response), on random strings built to hit every rule; and the streaming
 * form: chunks cut at random points concatenate to the same text.
 */
import {spawnSync} from 'node:child_process'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {chatResponse, cleanUpTokenization, ResponseStream} from '../src/runtime/chat-response.js'
import {seededRandom} from '../src/runtime/sampling.js'
import {CHATGLM_6B_FIRST_RELEASE_RESPONSE, CHATGLM_6B_RESPONSE} from '../src/runtime/tokenizer/chatglm-6b.js'
import {CHATGLM2_6B_RESPONSE} from '../src/runtime/tokenizer/chatglm2-6b.js'
import {REFERENCE_PYTHON} from './helpers/reference.js'

const SCRIPT = join(import.meta.dirname, 'crosscheck/chat_response.py')
const hasPython = spawnSync(REFERENCE_PYTHON, ['-c', 'import json, re'], {stdio: 'ignore'}).status === 0

const rng = seededRandom

const ATOMS = [
  ' ', ' ', '  ', '\n', '\n\n', '\t', '\u3000', '\u00a0', '\u0085', '\u001c', '\ufeff', '\r\n',
  '.', ',', '!', '?', ':', ';', ' .', ' ,', ' ?', ' !', ' \' ', ' n\'t', ' \'m', ' \'s', ' \'ve', ' \'re',
  '中', '文', '你好', '我', '们', '、', '。', '，', '？', 'a', 'b', 'don', 'I', 'it', 'hello', 'world',
  '[[训练时间]]', '[[训练', '时间]]', '[[', ']]', '训练', '😀', '𠀀', '1', '2023', 'x:y', '中:', ':中', '中?中', '中,', ',中',
]

function randomText(r: () => number): string {
  const n = Math.floor(r() * 24)
  let s = ''
  for (let i = 0; i < n; i++) s += ATOMS[Math.floor(r() * ATOMS.length)]
  return s
}

/** The styles the Python transcription knows, by its names (the tokenizers carry them). */
const STYLES = [CHATGLM_6B_RESPONSE, CHATGLM_6B_FIRST_RELEASE_RESPONSE, CHATGLM2_6B_RESPONSE]

function reference(reqs: {arch: string, text: string}[]): string[] {
  const res = spawnSync(REFERENCE_PYTHON, [SCRIPT], {input: JSON.stringify(reqs), encoding: 'utf8', maxBuffer: 1 << 28})
  if (res.status !== 0) throw new Error(`chat_response.py failed: ${res.stderr}`)
  return JSON.parse(res.stdout) as string[]
}

describe('the published chat() text', () => {
  const r = rng(20261203)
  const texts = Array.from({length: 3000}, () => randomText(r))
  texts.push('', '   ', '\n\n', ' Hello , world . I \' m fine ; don \'t worry !', '  中,文!好:吗;是?  ', '今年是[[训练时间]]。 ')

  it('cleanUpTokenization is transformers\' chain of replaces', () => {
    expect(cleanUpTokenization('a , b . c ? d ! I \' m it \'s we \'re you \'ve do n\'t')).toBe('a, b. c? d! I\'m it\'s we\'re you\'ve don\'t')
  })

  it.skipIf(!hasPython)('equals the published code on 3,000+ random strings, both generations and ChatGLM-6B\'s first release', () => {
    for (const style of STYLES) {
      const expected = reference(texts.map(text => ({arch: style.name, text})))
      const bad: string[] = []
      texts.forEach((t, i) => {
        const got = chatResponse(style, t)
        if (got !== expected[i]) bad.push(`${JSON.stringify(t)}: ${JSON.stringify(got)} != ${JSON.stringify(expected[i])}`)
      })
      expect(bad.slice(0, 5), `${bad.length} mismatches for ${style.name}`).toEqual([])
    }
  })

  it('streams chunks that concatenate to the whole response, never taking text back', () => {
    const rc = rng(7)
    for (const style of STYLES) {
      for (const t of texts) {
        const stream = new ResponseStream(style)
        let out = ''
        const cps = [...t]
        let i = 0
        while (i < cps.length) {
          const n = 1 + Math.floor(rc() * 4)
          out += stream.push(cps.slice(i, i + n).join(''))
          expect(chatResponse(style, t).startsWith(out), JSON.stringify(t)).toBe(true)
          i += n
        }
        out += stream.flush()
        expect(out, JSON.stringify(t)).toBe(chatResponse(style, t))
      }
    }
  })

  it.skipIf(!hasPython)('streams a long multi-line answer in bounded work per chunk, to the same text', () => {
    const line = '这是一个测试, 包含标点! 以及 [[训练时间]] 和 don \'t .\n'
    const long = '  ' + line.repeat(400)
    const stream = new ResponseStream(CHATGLM_6B_RESPONSE)
    let out = ''
    for (const ch of long) out += stream.push(ch)
    out += stream.flush()
    expect(out).toBe(reference([{arch: 'chatglm-6b', text: long}])[0])
  })
})
