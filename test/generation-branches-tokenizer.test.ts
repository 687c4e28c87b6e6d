/**
 * Issue 14: no generation branches outside the generation modules (src/models/). The tokenizer
 * loader, `glmtool tokenize`, the response styles and the synthetic tokenizers go through the
 * Arch (its tokenizerFile, tokenizer kind and synthTokenizer) and each tokenizer's responseStyle;
 * this fails when a comparison against a generation id or a response style comes back in them.
 *
 * It scans only the files of the tokenizer / response-style work (branch modtok); the lead widens
 * FILES (and, if need be, BRANCH) to the rest of src/ as the other parts lose their branches.
 */
import {readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import {describe, expect, it} from 'vitest'

const FILES = [
  'src/runtime/tokenizer/index.ts',
  'src/runtime/tokenizer/tokenize.ts',
  'src/runtime/tokenizer/chatglm-6b.ts',
  'src/runtime/tokenizer/chatglm2-6b.ts',
  'src/runtime/tokenizer/chatglm3-6b.ts',
  'src/runtime/chat-response.ts',
  'src/synth/synth-tokenizer.ts',
]

/** `x === 'chatglm…'`, `'chatglm…' !== x`, and any comparison of a response style. */
const BRANCH = /[!=]==\s*['"`]chatglm|['"`]chatglm[^'"`]*['"`]\s*[!=]==|\bstyle\s*[!=]==|[!=]==\s*style\b/

/** The offending lines of a source text, as "line: text". */
function branches(source: string): string[] {
  return source.split('\n').flatMap((line, i) => (BRANCH.test(line) ? [`${i + 1}: ${line.trim()}`] : []))
}

describe('no generation branches in the tokenizer and response-style code (issue 14)', () => {
  it('the scan finds each kind of branch it looks for', () => {
    expect(branches([
      "if (arch === 'chatglm-6b') return v1",
      "return arch !== 'chatglm2-6b' ? a : b",
      "if ('chatglm3-6b' === tok.arch) x()",
      "const f = style === CHATGLM2 ? V2_UNSAFE : V1_UNSAFE",
      'const ok = arch === other',
    ].join('\n'))).toEqual([
      "1: if (arch === 'chatglm-6b') return v1",
      "2: return arch !== 'chatglm2-6b' ? a : b",
      "3: if ('chatglm3-6b' === tok.arch) x()",
      '4: const f = style === CHATGLM2 ? V2_UNSAFE : V1_UNSAFE',
    ])
  })

  it.each(FILES)('%s compares no generation id or response style', (file) => {
    const source = readFileSync(fileURLToPath(new URL(`../${file}`, import.meta.url)), 'utf8')
    expect(source.length).toBeGreaterThan(0)
    expect(branches(source)).toEqual([])
  })
})
