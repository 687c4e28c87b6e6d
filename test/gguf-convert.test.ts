/**
 * `glmtool convert --to gguf` as a user runs it: the file's metadata and tensor table read back
 * by an independent GGUF parser (node-llama-cpp's readGgufFileInfo, pure JavaScript) and held
 * to config.json and to what llama.cpp's chatglm loader needs (src/models/chatglm.cpp shapes);
 * atomic output, untouched input, one-line refusals (ChatGLM-6B, wrong flags, existing output,
 * no tokenizer); quantization streamed across chunk boundaries gives the bytes of one pass.
 */
import {createHash} from 'node:crypto'
import {cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {convertToGguf} from '../src/pipelines/convert-gguf.js'
import {ggufTensorType} from '../src/formats/gguf/chatglm2.js'
import {quantizeQ4_0, quantizeQ8_0} from '../src/formats/gguf/quant-blocks.js'
import {ggufTensorData} from '../src/formats/gguf/tensor-data.js'
import {encodeFloats} from '../src/formats/dtype-convert.js'
import type {TensorEntry} from '../src/formats/tensor.js'
import {glmtool} from './helpers/cli.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-gguf-convert-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

const digest = (dir: string) => readdirSync(dir).sort().map(f => `${f}:${createHash('sha256').update(readFileSync(join(dir, f))).digest('hex')}`).join('\n')

describe('convert --to gguf (CLI)', () => {
  let v2: string
  let v1: string
  beforeAll(() => {
    v2 = join(work, 'v2')
    v1 = join(work, 'v1')
    for (const [arch, out] of [['chatglm2-6b', v2], ['chatglm-6b', v1]]) {
      const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', out])
      if (r.code !== 0) throw new Error(r.stderr)
    }
  }, 60_000)

  it('writes <model>-gguf/<name>-F16.gguf by default, leaves no temporary files and the input as it was', async () => {
    const before = digest(v2)
    const r = glmtool(['convert', v2, '--to', 'gguf'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/GGUF \(llama\.cpp chatglm\), 17 tensors \(10 F16, 7 F32\)/)
    expect(readdirSync(`${v2}-gguf`)).toEqual(['v2-F16.gguf'])
    expect(readdirSync(work).filter(f => f.includes('glmtool-tmp'))).toEqual([])
    expect(digest(v2)).toBe(before)
  }, 60_000)

  it('metadata and tensors, read back by node-llama-cpp\'s GGUF parser, are what llama.cpp\'s chatglm loader reads', async () => {
    const out = join(work, 'q8.gguf')
    await convertToGguf({input: v2, out, type: 'q8_0', force: false})
    const {readGgufFileInfo} = await import('node-llama-cpp')
    const info = await readGgufFileInfo(out, {readTensorInfo: true})
    const md = info.metadata as unknown as Record<string, Record<string, unknown>>
    const cfg = JSON.parse(readFileSync(join(v2, 'config.json'), 'utf8'))
    expect(info.version).toBe(3)
    expect(md.general.architecture).toBe('chatglm')
    expect(md.general.file_type).toBe(7) // LlamaFileType.MOSTLY_Q8_0
    expect(md.general.quantization_version).toBe(2)
    const g = md.chatglm as Record<string, unknown> & {attention: Record<string, number>, rope: Record<string, number>}
    expect([g.context_length, g.embedding_length, g.feed_forward_length, g.block_count]).toEqual([cfg.seq_length, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_layers])
    expect([g.attention.head_count, g.attention.head_count_kv]).toEqual([cfg.num_attention_heads, cfg.multi_query_group_num])
    expect(g.attention.layer_norm_rms_epsilon).toBeCloseTo(cfg.layernorm_epsilon, 9)
    expect(g.rope.dimension_count).toBe(cfg.kv_channels / 2)
    expect(g.rope.freq_base).toBe(10000)
    const tok = md.tokenizer as {ggml: Record<string, unknown>}
    expect(tok.ggml.model).toBe('llama')
    expect(tok.ggml.add_bos_token).toBe(false)
    expect([tok.ggml.eos_token_id, tok.ggml.padding_token_id]).toEqual([cfg.eos_token_id, cfg.pad_token_id])
    const tokens = tok.ggml.tokens as string[]
    const types = tok.ggml.token_type as number[]
    expect(tokens.length).toBe(cfg.padded_vocab_size)
    expect(tokens.slice(0, 3)).toEqual(['<unk>', '<bos>', '<eos>'])
    expect(tokens.slice(64789, 64795)).toEqual(['[MASK]', '[gMASK]', '[sMASK]', 'sop', 'eop', '[PAD64794]'])
    expect(types.slice(64789, 64795)).toEqual([3, 3, 3, 3, 3, 5])
    expect(tokens[3 + 0x0a]).toBe('<0x0A>') // byte pieces keep their ids (chatglm.cpp: "\n" -> 13)
    expect(types[3 + 0x0a]).toBe(6)

    const H = cfg.hidden_size
    const F = cfg.ffn_hidden_size
    const V = cfg.padded_vocab_size
    const qkv = H + 2 * cfg.multi_query_group_num * cfg.kv_channels
    const expected = new Map<string, [number[], number]>([
      ['token_embd.weight', [[H, V], 8]], ['output_norm.weight', [[H], 0]], ['output.weight', [[H, V], 8]],
    ])
    for (let i = 0; i < cfg.num_layers; i++) {
      expected.set(`blk.${i}.attn_norm.weight`, [[H], 0])
      expected.set(`blk.${i}.attn_qkv.weight`, [[H, qkv], 8])
      expected.set(`blk.${i}.attn_qkv.bias`, [[qkv], 0])
      expected.set(`blk.${i}.attn_output.weight`, [[H, H], 8])
      expected.set(`blk.${i}.ffn_norm.weight`, [[H], 0])
      expected.set(`blk.${i}.ffn_up.weight`, [[H, 2 * F], 8])
      expected.set(`blk.${i}.ffn_down.weight`, [[F, H], 8])
    }
    const got = new Map((info.fullTensorInfo ?? []).map(t => [t.name, [t.dimensions.map(Number), t.ggmlType as number] as [number[], number]]))
    expect(got).toEqual(expected)
  }, 60_000)

  it('a ChatGLM3 config (_name_or_path THUDM/chatglm3-6b) adds its role tokens after the five specials, as the converter does', async () => {
    const v3 = join(work, 'v3')
    cpSync(v2, v3, {recursive: true})
    const cfg = JSON.parse(readFileSync(join(v3, 'config.json'), 'utf8'))
    writeFileSync(join(v3, 'config.json'), JSON.stringify({...cfg, _name_or_path: 'THUDM/chatglm3-6b', rope_ratio: 2}))
    const out = join(work, 'v3.gguf')
    await convertToGguf({input: v3, out, type: 'q4_0', force: false})
    const {readGgufFileInfo} = await import('node-llama-cpp')
    const md = (await readGgufFileInfo(out)).metadata as unknown as {tokenizer: {ggml: {tokens: string[], token_type: number[]}}, chatglm: {rope: {freq_base: number}}}
    expect(md.tokenizer.ggml.tokens.slice(64793, 64799)).toEqual(['eop', '<|system|>', '<|user|>', '<|assistant|>', '<|observation|>', '[PAD64798]'])
    expect(md.tokenizer.ggml.token_type.slice(64793, 64799)).toEqual([3, 3, 3, 3, 3, 5])
    expect(md.chatglm.rope.freq_base).toBe(20000) // 10000 * rope_ratio
  }, 30_000)

  it('refuses ChatGLM-6B in one line, saying llama.cpp has no architecture for it, and writes nothing', () => {
    const out = join(work, 'v1.gguf')
    const r = glmtool(['convert', v1, '--to', 'gguf', '--out', out])
    expect(r.code).not.toBe(0)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toMatch(/ChatGLM-6B \(v1\) cannot be written as GGUF: llama\.cpp has no architecture for it/)
    expect(existsSync(out)).toBe(false)
  })

  it('refuses --type outside --to gguf and --dtype with it', () => {
    const a = glmtool(['convert', v2, '--to', 'onnx', '--type', 'q8_0', '--out', join(work, 'x')])
    expect(a.code).not.toBe(0)
    expect(a.stderr).toMatch(/--type is for --to gguf/)
    const b = glmtool(['convert', v2, '--to', 'gguf', '--dtype', 'f16', '--out', join(work, 'y.gguf')])
    expect(b.code).not.toBe(0)
    expect(b.stderr).toMatch(/--to gguf takes --type/)
    expect(existsSync(join(work, 'x')) || existsSync(join(work, 'y.gguf'))).toBe(false)
  }, 30_000)

  it('replaces an existing output file only with --force', async () => {
    const out = join(work, 'twice.gguf')
    await convertToGguf({input: v2, out, type: 'q4_0', force: false})
    const first = readFileSync(out)
    await expect(convertToGguf({input: v2, out, type: 'f32', force: false})).rejects.toThrow(/already exists; pass --force/)
    expect(readFileSync(out).equals(first)).toBe(true)
    await convertToGguf({input: v2, out, type: 'f32', force: true})
    expect(readFileSync(out).length).toBeGreaterThan(first.length)
  }, 30_000)

  it('refuses an --out that contains or lies inside the input (real paths), and leaves the input as it was', async () => {
    const m = join(work, 'guarded', 'model')
    cpSync(v2, m, {recursive: true})
    const before = readdirSync(m).sort()
    await expect(convertToGguf({input: m, out: join(work, 'guarded'), type: 'f16', force: true})).rejects.toThrow(/contains the input model/)
    await expect(convertToGguf({input: m, out: join(m, 'x.gguf'), type: 'f16', force: true})).rejects.toThrow(/lies inside the input model/)
    expect(readdirSync(m).sort()).toEqual(before)
  }, 30_000)

  it('the CLI refuses, with --force and before any work, an --out that is the input file, a .gguf inside the input (also through a symlink) or the input\'s parent', () => {
    const parent = join(work, 'cli-guarded')
    const m = join(parent, 'model')
    cpSync(v2, m, {recursive: true})
    symlinkSync(m, join(parent, 'link'))
    const shard = join(m, readdirSync(m).find(f => f.endsWith('.bin'))!)
    const before = digest(m)
    for (const [input, out, how] of [
      [shard, shard, / is the input model /],
      [m, join(m, 'x.gguf'), / lies inside the input model /],
      [m, join(parent, 'link', 'x.gguf'), / lies inside the input model /],
      [join(parent, 'link'), join(m, 'sub', 'x.gguf'), / lies inside the input model /],
      [m, parent, / contains the input model /],
    ] as const) {
      const r = glmtool(['convert', input, '--to', 'gguf', '--out', out, '--force'])
      expect(r.code, `${out}: ${r.stdout}`).toBe(1)
      expect(r.stderr).toMatch(/^glmtool: --out \S+ \(\S+\) (is|lies inside|contains) the input model \S+ \(\S+\); choose an output directory apart from the inputs\n$/)
      expect(r.stderr).toMatch(how)
    }
    expect(digest(m)).toBe(before)
    expect(readdirSync(parent).sort()).toEqual(['link', 'model'])
  }, 60_000)

  it('refuses a model without tokenizer.model, naming the file, and leaves no partial output', async () => {
    const bare = join(work, 'bare')
    cpSync(v2, bare, {recursive: true})
    rmSync(join(bare, 'tokenizer.model'))
    const out = join(work, 'bare.gguf')
    await expect(convertToGguf({input: bare, out, type: 'f16', force: false})).rejects.toThrow(/tokenizer\.model: cannot read the tokenizer/)
    expect(existsSync(out)).toBe(false)
    expect(readdirSync(work).filter(f => f.includes('glmtool-tmp'))).toEqual([])
  }, 60_000)
})

describe('GGUF tensor data', () => {
  /** A tensor that hands its bytes out in pieces of awkward sizes (3, 50, 7, ... elements). */
  function ragged(values: Float32Array): TensorEntry {
    const bytes = encodeFloats(values, 'F32')
    return {
      name: 'x', dtype: 'F32', shape: [values.length / 64, 64], file: '<test>',
      async *chunks() {
        const sizes = [3, 50, 7, 61, 1, 128]
        for (let o = 0, k = 0; o < bytes.length; k++) {
          const n = Math.min(bytes.length - o, sizes[k % sizes.length] * 4)
          yield bytes.subarray(o, o + n)
          o += n
        }
      },
    }
  }

  it('quantizes across chunk boundaries to the bytes of one pass', async () => {
    const x = Float32Array.from({length: 64 * 20}, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)))
    for (const [type, fn, bb] of [['Q8_0', quantizeQ8_0, 34], ['Q4_0', quantizeQ4_0, 18]] as const) {
      const whole = Buffer.alloc((x.length / 32) * bb)
      fn(x, whole)
      const parts: Buffer[] = []
      for await (const p of ggufTensorData(ragged(x), type)) parts.push(Buffer.from(p))
      expect(Buffer.concat(parts).equals(whole), type).toBe(true)
    }
  })

  it('keeps norms and biases F32 and falls back to F16 for rows that are not whole 32-value blocks', () => {
    expect(ggufTensorType('blk.0.attn_norm.weight', [64], 'q4_0')).toBe('F32')
    expect(ggufTensorType('blk.0.attn_qkv.bias', [128], 'f16')).toBe('F32')
    expect(ggufTensorType('blk.0.ffn_down.weight', [512, 1712], 'q8_0')).toBe('F16') // small's ffn: 1712 = 53.5 blocks
    expect(ggufTensorType('blk.0.ffn_up.weight', [3424, 512], 'q8_0')).toBe('Q8_0')
    expect(ggufTensorType('output.weight', [65024, 64], 'bf16')).toBe('BF16')
  })
})
