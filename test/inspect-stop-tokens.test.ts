/**
 * `glmtool inspect` names the tokens that end generation: eos for every generation (ChatGLM-6B's
 * is <eop>), and for ChatGLM3-6B also <|user|> and <|observation|> (modeling_chatglm.py chat()'s
 * eos_token_id list), each with its id and spelling, in the text and in --json; on the published
 * tokenizer files of ../shared/real (skipped when absent) and on synth models through the CLI.
 */
import {existsSync, mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {stopTokens} from '../src/pipelines/inspect-model.js'
import {loadTokenizer, loadTokenizerFiles} from '../src/runtime/tokenizer/index.js'
import {describeTokenizer} from '../src/runtime/tokenizer/model-tokenizer.js'
import {decodeModelProto} from '../src/runtime/tokenizer/sentencepiece-model.js'
import {glmtool} from './helpers/cli.js'

const REAL = fileURLToPath(new URL('../../shared/real', import.meta.url))
const hasReal = existsSync(join(REAL, 'chatglm2-6b_tokenizer.model')) && existsSync(join(REAL, 'chatglm-6b_ice_text.model'))

describe.skipIf(!hasReal)('stop tokens of the published tokenizers (../shared/real)', () => {
  it.each([
    // No tokenizer_config.json beside it: the published class default num_image_tokens 20000 shifts every id.
    ['chatglm-6b', 'chatglm-6b_ice_text.model', [{id: 150005, token: '<eop>', names: ['eop', 'eos']}]],
    ['chatglm2-6b', 'chatglm2-6b_tokenizer.model', [{id: 2, token: '</s>', names: ['eos']}]],
    // ChatGLM3-6B's tokenizer.model is ChatGLM2-6B's bytes; the roles are appended after its pieces.
    ['chatglm3-6b', 'chatglm2-6b_tokenizer.model', [
      {id: 2, token: '</s>', names: ['eos']}, {id: 64795, token: '<|user|>', names: ['user']}, {id: 64797, token: '<|observation|>', names: ['observation']},
    ]],
  ] as const)('%s', async (arch, file, want) => {
    const loaded = await loadTokenizerFiles(REAL, arch, file)
    const pieces = decodeModelProto(loaded.bytes).pieces.map(p => p.piece)
    expect(stopTokens(describeTokenizer(loaded), pieces, arch)).toEqual(want)
  })
})

describe('glmtool inspect prints the stop tokens', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'glmtool-inspect-stop-'))
  afterAll(() => rmSync(tmp, {recursive: true, force: true}))
  const archs = ['chatglm-6b', 'chatglm2-6b', 'chatglm3-6b'] as const
  beforeAll(() => {
    for (const arch of archs) {
      const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', join(tmp, arch)])
      if (r.code !== 0) throw new Error(r.stderr)
    }
  }, 120_000)

  it.each(archs)('%s: the ids the generation loop stops at, spelled, in the text and --json', async (arch) => {
    const dir = join(tmp, arch)
    const tok = await loadTokenizer(dir, arch)
    const j = glmtool(['inspect', dir, '--json', '--no-tensors'])
    expect(j.code, j.stderr).toBe(0)
    const got = JSON.parse(j.stdout).tokenizer.stopTokens as {id: number, token: string, names: string[]}[]
    expect(got.map(s => s.id)).toEqual([...tok.specials.stop])
    const spelled = arch === 'chatglm-6b' ? ['<eop>'] : arch === 'chatglm2-6b' ? ['</s>'] : ['</s>', '<|user|>', '<|observation|>']
    expect(got.map(s => s.token)).toEqual(spelled)
    const t = glmtool(['inspect', dir, '--no-tensors'])
    expect(t.code, t.stderr).toBe(0)
    const line = `  generation stops at: ${got.map(s => `${s.token} ${s.id} (${s.names.join(', ')})`).join(', ')}`
    expect(t.stdout.split('\n')).toContain(line)
    if (arch === 'chatglm3-6b') expect(line).toMatch(/<\|user\|> \d+ \(user\), <\|observation\|> \d+ \(observation\)$/)
  })
})
