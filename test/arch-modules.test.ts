/**
 * The generation modules (src/models) as the one place generation rules live (issue 14): their
 * config parser (Arch.dims) on the published configs, the rules other code asks them for
 * (prefix, LoRA layer paths, ONNX graph, calibration units, GGUF), ChatGLM3-6B inheriting
 * ChatGLM2-6B's, and a scan that fails if a generation branch reappears in the files that used
 * to hold one.
 */
import {existsSync, readdirSync, readFileSync, statSync} from 'node:fs'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {describe, expect, it} from 'vitest'
import {ARCHS, type Arch, type ModelConfig} from '../src/models/index.js'
import {chatglmV1} from '../src/models/chatglm-v1.js'
import {chatglmV2} from '../src/models/chatglm-v2.js'
import {chatglm3} from '../src/models/chatglm3.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const REAL = join(ROOT, '../shared/real')
const hasReal = existsSync(join(REAL, 'chatglm3-6b_config.json'))
const real = (name: string) => JSON.parse(readFileSync(join(REAL, name), 'utf8')) as ModelConfig

describe.skipIf(!hasReal)('Arch.dims on the published configs (../shared/real absent: skipped)', () => {
  it('reads each generation\'s sizes from its own keys', () => {
    expect(chatglmV1.dims(real('chatglm-6b_config.json'))).toEqual({
      layers: 28, hidden: 4096, heads: 32, kvHeads: 32, headDim: 128, ffn: 16384, vocab: 130528, maxPositions: 2048,
    })
    expect(chatglmV2.dims(real('chatglm2-6b_config.json'))).toEqual({
      layers: 28, hidden: 4096, heads: 32, kvHeads: 2, headDim: 128, ffn: 13696, vocab: 65024, maxPositions: 32768,
    })
    expect(chatglm3.dims(real('chatglm3-6b_config.json'))).toMatchObject({kvHeads: 2, vocab: 65024, maxPositions: 8192})
  })

  it('is what the CUDA engine, the ONNX graph and the calibration plan use', () => {
    for (const [arch, file] of [[chatglmV1, 'chatglm-6b_config.json'], [chatglmV2, 'chatglm2-6b_config.json'], [chatglm3, 'chatglm3-6b_config.json']] as const) {
      const config = real(file)
      const d = arch.dims(config)
      expect(arch.engineDims(config)).toEqual({...d, eps: 1e-5})
      const {layers, hidden, heads, kvHeads, headDim, vocab, maxPositions} = d
      expect(arch.onnxGraph.dims(config)).toMatchObject({layers, hidden, heads, kvHeads, headDim, vocab, maxPositions})
      expect(arch.calibrationUnits(config, false)).toHaveLength(layers)
      expect(arch.calibrationUnits(config, true)).toHaveLength(layers + 1)
    }
  })
})

describe('Arch.dims on bad configs', () => {
  it('names the key and the file', () => {
    const v2 = chatglmV2.synthConfig('tiny')
    expect(() => chatglmV2.dims({...v2, multi_query_group_num: 0}, 'm/config.json'))
      .toThrow(/^m\/config\.json: multi_query_group_num must be a positive integer \(got 0\)$/)
    expect(() => chatglmV2.dims({...v2, num_layers: 5000}))
      .toThrow(/^config\.json: num_layers is 5000, implausibly large \(glmtool accepts at most 1024\)$/)
    const {padded_vocab_size: _, ...noVocab} = v2
    expect(() => chatglm3.dims(noVocab, 'x.json')).toThrow(/^x\.json: padded_vocab_size must be a positive integer \(got undefined\)$/)
    expect(() => chatglmV1.dims({...chatglmV1.synthConfig('tiny'), num_attention_heads: 3}, 'c.json'))
      .toThrow(/^c\.json: hidden_size 64 is not a multiple of num_attention_heads 3$/)
    // multi_query_attention false: one K/V entry per head, multi_query_group_num unread.
    expect(chatglmV2.dims({...v2, multi_query_attention: false, multi_query_group_num: 'x'}).kvHeads).toBe(4)
  })

  it('gives the tensor table its shapes', () => {
    const config = {...chatglmV2.synthConfig('small'), multi_query_group_num: 4}
    const d = chatglmV2.dims(config)
    const qkv = chatglmV2.tensors(config).get('transformer.encoder.layers.3.self_attention.query_key_value.weight')!
    expect(qkv.shape).toEqual([d.heads * d.headDim + 2 * d.kvHeads * d.headDim, d.hidden])
    expect(chatglmV1.tensors(chatglmV1.synthConfig('small')).get('transformer.layers.3.mlp.dense_h_to_4h.weight')!.shape).toEqual([2048, 512])
  })
})

describe('the rules each module gives', () => {
  it('ChatGLM3-6B is ChatGLM2-6B\'s network: it overrides only the prefix projection rule and the GGUF vocabulary', () => {
    expect(chatglm3.dims).toBe(chatglmV2.dims)
    expect(chatglm3.onnxGraph).toBe(chatglmV2.onnxGraph)
    expect(chatglm3.loraLayerPattern).toBe(chatglmV2.loraLayerPattern)
    expect(chatglm3.calibrationUnits).toBe(chatglmV2.calibrationUnits)
    expect(chatglm3.prefix).toEqual({...chatglmV2.prefix, alwaysProjects: false})
    expect(chatglmV2.prefix.alwaysProjects).toBe(true)
    expect(chatglm3.gguf).toEqual({...chatglmV2.gguf, roleTokens: true})
    expect(chatglmV2.gguf.roleTokens).toBe(false)
  })

  it('GGUF: ChatGLM-6B refused with the reason, the ChatGLM2-6B network written', () => {
    expect(chatglmV1.gguf.unsupported).toMatch(/^ChatGLM-6B \(v1\) cannot be written as GGUF: llama\.cpp has no architecture for it/)
    expect(chatglmV2.gguf.unsupported).toBeUndefined()
    expect(chatglm3.gguf.unsupported).toBeUndefined()
  })

  it('LoRA layer paths: each network\'s pattern matches its own linears and not the other network\'s', () => {
    const linears = (a: Arch) => [...a.tensors(a.synthConfig('tiny')).keys()].filter(n => /layers\.\d+\..*(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.weight$/.test(n))
    for (const a of [chatglmV1, chatglmV2]) {
      const own = linears(a)
      expect(own.length).toBe(8)
      expect(own.every(n => a.loraLayerPattern.test(n))).toBe(true)
      const other = a === chatglmV1 ? chatglmV2 : chatglmV1
      expect(own.some(n => other.loraLayerPattern.test(n))).toBe(false)
    }
  })

  it('the ONNX graph and the calibration units are the module\'s own network\'s', () => {
    expect(chatglmV1.onnxGraph.arch).toBe('chatglm-6b')
    expect(chatglmV2.onnxGraph.arch).toBe('chatglm2-6b')
    expect(chatglmV1.calibrationUnits(chatglmV1.synthConfig('tiny'), true).at(-1)!.linears[0].weight).toBe(chatglmV1.quantizable.lmHead)
    expect(chatglm3.calibrationUnits(chatglm3.synthConfig('tiny'), true).at(-1)!.linears[0].weight).toBe(chatglm3.quantizable.lmHead)
    // The v2 units follow config.json's biases and final norm.
    const units = chatglmV2.calibrationUnits({...chatglmV2.synthConfig('tiny'), add_qkv_bias: false, post_layer_norm: false}, true)
    expect(units[0].linears[0].fold).toMatchObject({kind: 'rows', weight: 'transformer.encoder.layers.0.self_attention.query_key_value.weight'})
    expect(units[0].linears[0].fold).not.toHaveProperty('bias')
    expect(units.at(-1)!.linears[0].fold.kind).toBe('none')
  })
})

/**
 * Generation branches and tables keyed by generation, outside src/models (issue 14): every
 * src/**\/*.ts file outside the generation modules asks its Arch (sizes, prefix, LoRA, graph,
 * calibration, GGUF, tokenizer kind, synth tokenizer, chat format) or its tokenizer's response
 * style instead of naming a generation.
 */
function sourceFiles(dir: string): string[] {
  return readdirSync(join(ROOT, dir)).flatMap(n => {
    const rel = `${dir}/${n}`
    return statSync(join(ROOT, rel)).isDirectory() ? sourceFiles(rel) : rel.endsWith('.ts') ? [rel] : []
  })
}
const FILES = sourceFiles('src').filter(f => !f.startsWith('src/models/'))

const BRANCHES: readonly RegExp[] = [
  // (Comparing two modules' networks, a.network !== b.network, is not a branch.)
  /generation\s*[!=]==/,
  /\.generation\b/,
  /[!=]==\s*'chatglm(2|3)?-6b'/,
  /'chatglm(2|3)?-6b'\s*[!=]==/,
  /Record<\s*(NetworkId|ArchId)/,
  // A table keyed by generation: {'chatglm-6b': ..., 'chatglm2-6b': ...}
  /'chatglm(2|3)?-6b'\s*:/,
  // Any comparison against a generation id in any quoting, or of a response style.
  /[!=]==\s*['"`]chatglm|['"`]chatglm[^'"`]*['"`]\s*[!=]==|\bstyle\s*[!=]==|[!=]==\s*style\b/,
]

/** The code of a TypeScript file without its comments (so prose may still name a generation). */
function code(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1')
}

function branches(text: string): string[] {
  return code(text).split('\n').filter(line => BRANCHES.some(re => re.test(line))).map(l => l.trim())
}

describe('no generation branches outside src/models', () => {
  it('the scan finds the forms it looks for', () => {
    expect(branches([
      'if (arch.generation === 1) return x',
      "const T: Record<NetworkId, number> = {}",
      "if (model.arch.network === 'chatglm-6b') {",
      "const v = x.id === 'chatglm3-6b'",
      "const M = {'chatglm-6b': 2048}",
      '// arch.generation === 1 in a comment is prose',
      "return arch !== `chatglm2-6b` ? a : b",
      'const f = style === CHATGLM2 ? V2_UNSAFE : V1_UNSAFE',
      'const ok = arch === other',
      "  arch: 'chatglm-6b',",
    ].join('\n'))).toEqual([
      'if (arch.generation === 1) return x',
      'const T: Record<NetworkId, number> = {}',
      "if (model.arch.network === 'chatglm-6b') {",
      "const v = x.id === 'chatglm3-6b'",
      "const M = {'chatglm-6b': 2048}",
      'return arch !== `chatglm2-6b` ? a : b',
      'const f = style === CHATGLM2 ? V2_UNSAFE : V1_UNSAFE',
    ])
  })

  it('scans the whole source tree outside the modules', () => {
    expect(FILES.length).toBeGreaterThan(100)
    for (const f of ['src/runtime/tokenizer/tokenize.ts', 'src/runtime/chat-response.ts', 'src/pipelines/inspect-model.ts', 'src/formats/adapters/prefix.ts']) expect(FILES).toContain(f)
  })

  it.each(FILES)('%s asks the generation module instead of branching', file => {
    const text = readFileSync(join(ROOT, file), 'utf8')
    expect(text.length).toBeGreaterThan(0)
    expect(branches(text)).toEqual([])
  })

  it('every module provides the rules', () => {
    for (const a of ARCHS) {
      expect(typeof a.dims).toBe('function')
      expect(a.prefix.kvUnit).toMatch(/^(heads|groups)$/)
      expect(a.loraLayerPattern).toBeInstanceOf(RegExp)
      expect(typeof a.onnxGraph.build).toBe('function')
      expect(typeof a.gguf.roleTokens).toBe('boolean')
    }
  })
})
