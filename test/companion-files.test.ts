/**
 * The one companion-file rule (src/pipelines/model-output.ts isCompanionFile / writeCompanionFiles)
 * as every pipeline that writes a model directory applies it: a source directory holding each
 * kind of file, and each output holding exactly the companions the rule names, config.json
 * written from the command's config, and nothing else beyond the command's own files.
 */
import {cpSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {convertToSafetensors} from '../src/pipelines/convert-safetensors.js'
import {exportOnnx} from '../src/pipelines/export-onnx.js'
import {mergeAdapter} from '../src/pipelines/merge-adapter.js'
import {quantizeModel, type QuantizeOptions} from '../src/pipelines/quantize-model.js'
import {isCompanionFile} from '../src/pipelines/model-output.js'

const FIX = join(import.meta.dirname, 'fixtures')
const work = mkdtempSync(join(tmpdir(), 'glmtool-companions-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))
const src = join(work, 'src')

/** Files the rule copies, as they are (written into the source below). */
const COMPANIONS: Record<string, string> = {
  'tokenizer.model': 'not a real tokenizer: copied, never read by these commands',
  'tokenizer_config.json': '{"name_or_path": "THUDM/chatglm2-6b"}\n',
  'modeling_chatglm.py': '# remote code\n',
  'configuration_chatglm.py': '# remote code\n',
  'tokenization_chatglm.py': '# remote code\n',
  'quantization.py': '# remote code\n',
  'generation_config.json': '{"max_length": 64}\n',
  'README.md': '# model card\n',
  'MODEL_LICENSE': 'licence text\n',
}
const LINKED_TEXT = 'a blob behind a link\n'
/** Files the rule never copies (beside the real weights, pytorch_model.bin). */
const NEVER: Record<string, string> = {
  'model.onnx': 'a stale graph',
  'model.onnx.data': 'stale data',
  'glmtool-onnx.json': '{}',
  'stale.safetensors': 'stale weights',
  'model.safetensors.index.json': '{"weight_map": {}}',
  'pytorch_model-00009-of-00009.bin': 'a stray shard',
  '.hidden': 'editor state',
  '.glmtool-lock': 'someone else\'s marker',
}

beforeAll(() => {
  cpSync(join(FIX, 'torch/tiny-v2'), src, {recursive: true})
  for (const [name, text] of Object.entries({...COMPANIONS, ...NEVER})) writeFileSync(join(src, name), text)
  mkdirSync(join(src, 'subdir'))
  writeFileSync(join(src, 'subdir', 'inner.py'), '# not copied: only the directory\'s own files travel\n')
  // A link to a file is the file (a Hugging Face snapshot is all links); a dangling one is nothing.
  writeFileSync(join(work, 'blob'), LINKED_TEXT)
  symlinkSync(join('..', 'blob'), join(src, 'linked.md'))
  symlinkSync(join(work, 'no-such-blob'), join(src, 'dangling.md'))
  symlinkSync(join(src, 'subdir'), join(src, 'linked-dir'))
})

describe('the companion-file rule', () => {
  it('names each kind of file as the rule says', () => {
    for (const name of Object.keys(COMPANIONS)) expect(isCompanionFile(name), name).toBe(true)
    for (const name of [...Object.keys(NEVER), 'config.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json', 'model.safetensors', 'prefix_kv.safetensors']) {
      expect(isCompanionFile(name), name).toBe(false)
    }
  })

  /** Each output's files: the command's own, then exactly config.json and the companions. */
  const cases: {name: string, own: string[], config: (c: Record<string, unknown>) => void, run: (out: string) => Promise<unknown>}[] = [
    {
      name: 'convert to safetensors', own: ['model.safetensors'],
      config: c => expect(c.torch_dtype).toBe('float32'),
      run: out => convertToSafetensors({input: src, out, dtype: 'F32', maxShardBytes: Infinity, force: false}),
    },
    {
      name: 'convert to ONNX', own: ['model.onnx', 'model.onnx.data', 'glmtool-onnx.json'],
      config: c => expect(c.quantization_bit).toBeUndefined(),
      run: out => exportOnnx({input: src, out, force: false}),
    },
    {
      name: 'merge-adapter (LoRA)', own: ['model.safetensors'],
      config: c => expect(c.torch_dtype).toBe(JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')).torch_dtype),
      run: out => mergeAdapter({base: src, adapter: join(FIX, 'adapters/lora/v2-all-modules'), out, dtype: 'keep', force: false}),
    },
    ...(['safetensors', 'onnx', 'both'] as const).map(format => ({
      name: `quantize --format ${format}`,
      own: [...(format === 'onnx' ? [] : ['model.safetensors']), ...(format === 'safetensors' ? [] : ['model.onnx', 'model.onnx.data', 'glmtool-onnx.json'])],
      config: (c: Record<string, unknown>) => expect(c.quantization_bit).toBe(4),
      run: (out: string) => quantizeModel(quantizeOptions(out, format)),
    })),
  ]
  for (const c of cases) {
    it(`${c.name}: writes config.json and copies exactly the companions`, async () => {
      const out = join(work, c.name.replaceAll(/\W+/g, '-'))
      await c.run(out)
      expect(readdirSync(out).sort()).toEqual([...c.own, 'config.json', 'linked.md', ...Object.keys(COMPANIONS)].sort())
      for (const [name, text] of Object.entries(COMPANIONS)) expect(readFileSync(join(out, name), 'utf8'), name).toBe(text)
      expect(lstatSync(join(out, 'linked.md')).isFile()).toBe(true)
      expect(readFileSync(join(out, 'linked.md'), 'utf8')).toBe(LINKED_TEXT)
      // Written from the command's config (pretty-printed), not copied from the source.
      const configText = readFileSync(join(out, 'config.json'), 'utf8')
      const config = JSON.parse(configText)
      expect(configText).toBe(JSON.stringify(config, null, 2) + '\n')
      expect(config.num_layers).toBe(JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')).num_layers)
      c.config(config)
    })
  }
})

function quantizeOptions(out: string, format: QuantizeOptions['format']): QuantizeOptions {
  return {input: src, out, bits: 4, groupSize: 0, method: 'rtn', lmHead: false, embeddings: false, format, force: false, calibSamples: 8, evaluate: 'off'}
}
