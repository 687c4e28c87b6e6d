/**
 * What llama.cpp's converter (convert_hf_to_gguf.py, conversion/chatglm.py: ChatGLMModel) writes
 * for ChatGLM2-6B / ChatGLM3-6B, and what llama.cpp's `chatglm` architecture (src/models/
 * chatglm.cpp, llama-arch.cpp, llama-vocab.cpp) reads: metadata keys, tensor names and types,
 * and the SentencePiece vocabulary in llama.cpp's "llama" (SPM) tokenizer form.
 */
import {ModelError} from '../../errors.js'
import {configInt, type ModelConfig, type ModelDims} from '../../models/arch.js'
import {PieceType, type SentencePieceModel} from '../../runtime/tokenizer/sentencepiece-model.js'
import {V2_SPECIAL_NAMES} from '../../runtime/tokenizer/chatglm2-6b.js'
import type {GgmlType, GgufValue} from './gguf-writer.js'

export const GGUF_ARCH = 'chatglm'

/** --type: the file type, and what llama.cpp calls it (LlamaFileType, general.file_type). */
export const GGUF_FILE_TYPES = {
  f32: {fileType: 0, weight: 'F32', label: 'F32'},
  f16: {fileType: 1, weight: 'F16', label: 'F16'},
  q4_0: {fileType: 2, weight: 'Q4_0', label: 'Q4_0'},
  q8_0: {fileType: 7, weight: 'Q8_0', label: 'Q8_0'},
  bf16: {fileType: 32, weight: 'BF16', label: 'BF16'},
} as const satisfies Record<string, {fileType: number, weight: GgmlType, label: string}>
export type GgufFileType = keyof typeof GGUF_FILE_TYPES

/** ChatGLM3's role tokens, which its tokenizer appends after the five wrapper specials. */
const CHATGLM3_ROLE_TOKENS = ['<|system|>', '<|user|>', '<|assistant|>', '<|observation|>']

/** The checkpoint name (transformer. prefix) of each GGUF tensor (gguf-py tensor_mapping.py, "chatglm" rows). */
export function ggufTensorName(name: string): string | undefined {
  const n = name.replace(/^transformer\./, '')
  if (n === 'embedding.word_embeddings.weight') return 'token_embd.weight'
  if (n === 'encoder.final_layernorm.weight') return 'output_norm.weight'
  if (n === 'output_layer.weight') return 'output.weight'
  const m = /^encoder\.layers\.(\d+)\.(.+)$/.exec(n)
  if (!m) return undefined
  const part: Record<string, string> = {
    'input_layernorm.weight': 'attn_norm.weight',
    'self_attention.query_key_value.weight': 'attn_qkv.weight',
    'self_attention.query_key_value.bias': 'attn_qkv.bias',
    'self_attention.dense.weight': 'attn_output.weight',
    'post_attention_layernorm.weight': 'ffn_norm.weight',
    'mlp.dense_h_to_4h.weight': 'ffn_up.weight',
    'mlp.dense_4h_to_h.weight': 'ffn_down.weight',
  }
  const p = part[m[2]]
  return p === undefined ? undefined : `blk.${m[1]}.${p}`
}

/**
 * The GGUF type of one tensor, as the converter decides it (conversion/base.py): 1-D tensors and
 * norms stay F32; other weights take the file type; a weight whose rows are not a whole number
 * of 32-value blocks cannot be Q8_0/Q4_0 and falls back to F16 (the converter's QuantError
 * fallback; llama-quantize does the same for rows it cannot quantize).
 */
export function ggufTensorType(ggufName: string, torchShape: readonly number[], fileType: GgufFileType): GgmlType {
  if (torchShape.length <= 1 || ggufName.endsWith('_norm.weight') || !ggufName.endsWith('.weight')) return 'F32'
  const t = GGUF_FILE_TYPES[fileType].weight
  if ((t === 'Q8_0' || t === 'Q4_0') && torchShape[torchShape.length - 1] % 32 !== 0) return 'F16'
  return t
}

/** Refuse configs that llama.cpp's chatglm graph cannot express, naming the key (`dims`: the generation module's Arch.dims of `config`). */
export function checkGgufConfig(config: ModelConfig, dims: ModelDims, source: string): void {
  const {hidden: H, heads, headDim: D} = dims
  const refuse = (why: string) => {
    throw new ModelError(`${source}: cannot write GGUF: ${why}`, 'gguf-unsupported')
  }
  if (config.rmsnorm === false) refuse('rmsnorm is false; llama.cpp\'s chatglm architecture always uses RMSNorm')
  if (config.post_layer_norm === false) refuse('post_layer_norm is false; llama.cpp\'s chatglm architecture needs the final norm')
  if (config.apply_residual_connection_post_layernorm === true) refuse('apply_residual_connection_post_layernorm is true; llama.cpp\'s chatglm graph adds the residual before the norm')
  if (config.add_bias_linear === true) refuse('add_bias_linear is true; llama.cpp\'s chatglm architecture has no bias on dense/MLP layers')
  if (heads * D !== H) refuse(`num_attention_heads x kv_channels (${heads} x ${D}) is not hidden_size ${H}; llama.cpp's chatglm architecture needs them equal`)
  if (config.quantization_bit !== undefined && config.quantization_bit !== null) refuse(`the checkpoint is quantized (quantization_bit ${String(config.quantization_bit)}); convert the float checkpoint`)
  if (config.pre_seq_len !== undefined && config.pre_seq_len !== null) refuse('the model carries a P-Tuning v2 prefix (pre_seq_len); llama.cpp has no prefix cache')
}

/** Python's `f"{x:.{fix}f}"` size label of gguf-py's model_weight_count_rounded_notation. */
export function sizeLabel(params: number): string {
  const [scale, suffix] = params > 1e12 ? [1e-12, 'T'] : params > 1e9 ? [1e-9, 'B'] : params > 1e6 ? [1e-6, 'M'] : [1e-3, 'K']
  const x = params * scale
  const fix = Math.max(2 - String(Math.round(x)).replace(/^0+/, '').length, 0)
  return `${x.toFixed(fix)}${suffix}`
}

export interface GgufVocab {
  tokens: string[]
  scores: Float32Array
  types: Int32Array
}

/**
 * The vocabulary as the converter's set_vocab_chatglm3 writes it, padded to padded_vocab_size:
 * SentencePiece pieces with their scores and types (ids 0, 1, 2 spelled <unk>, <bos>, <eos>),
 * then [MASK] [gMASK] [sMASK] sop eop as CONTROL (and, with `roleTokens`, ChatGLM3's role tokens: the module's gguf.roleTokens), then
 * [PAD<id>] UNUSED up to the embedding's rows. Token types are SentencePiece's (1 normal,
 * 2 unknown, 3 control, 5 unused, 6 byte; user-defined pieces inside the SentencePiece model
 * count as normal, as the converter tests only the other four).
 */
export function ggufVocab(sp: SentencePieceModel, vocabSize: number, roleTokens: boolean, source: string): GgufVocab {
  const n = sp.pieces.length
  const specials = [...V2_SPECIAL_NAMES, ...(roleTokens ? CHATGLM3_ROLE_TOKENS : [])]
  if (n + specials.length > vocabSize) {
    throw new ModelError(`${source}: ${n} pieces and ${specials.length} specials do not fit padded_vocab_size ${vocabSize}`, 'gguf-vocab')
  }
  const tokens = new Array<string>(vocabSize)
  const scores = new Float32Array(vocabSize)
  const types = new Int32Array(vocabSize)
  const renamed: Record<number, string> = {0: '<unk>', 1: '<bos>', 2: '<eos>'}
  for (let i = 0; i < n; i++) {
    const p = sp.pieces[i]
    tokens[i] = renamed[i] ?? p.piece
    scores[i] = p.score
    const t = p.type
    types[i] = t === PieceType.UNKNOWN || t === PieceType.CONTROL || t === PieceType.UNUSED || t === PieceType.BYTE ? t : PieceType.NORMAL
  }
  for (let i = n; i < vocabSize; i++) {
    const s = specials[i - n]
    tokens[i] = s ?? `[PAD${i}]`
    types[i] = s !== undefined ? PieceType.CONTROL : PieceType.UNUSED
  }
  return {tokens, scores, types}
}

export interface GgufMetadataInput {
  config: ModelConfig
  /** The generation module's Arch.dims of `config`. */
  dims: ModelDims
  name: string
  fileType: GgufFileType
  parameters: number
  vocab: GgufVocab
  chatTemplate?: string
}

/** The metadata, in the order the converter writes it. */
export function ggufMetadata(m: GgufMetadataInput): Map<string, GgufValue> {
  const c = m.config
  const {hidden: H, heads, kvHeads: kv, ffn, layers} = m.dims
  const a = GGUF_ARCH
  const u32 = (value: number): GgufValue => ({type: 'u32', value})
  const f32 = (value: number): GgufValue => ({type: 'f32', value})
  const str = (value: string): GgufValue => ({type: 'string', value})
  const md = new Map<string, GgufValue>()
  md.set('general.architecture', str(a))
  md.set('general.type', str('model'))
  md.set('general.name', str(m.name))
  md.set('general.size_label', str(sizeLabel(m.parameters)))
  // The converter's hparams.get("seq_length", n_embed): hidden_size when absent, not the model's default.
  md.set(`${a}.context_length`, u32(configInt(c, 'seq_length', H)))
  md.set(`${a}.embedding_length`, u32(H))
  md.set(`${a}.feed_forward_length`, u32(ffn))
  md.set(`${a}.block_count`, u32(layers))
  md.set(`${a}.attention.head_count`, u32(heads))
  md.set(`${a}.attention.head_count_kv`, u32(kv))
  md.set(`${a}.attention.layer_norm_rms_epsilon`, f32(typeof c.layernorm_epsilon === 'number' ? c.layernorm_epsilon : 1e-5))
  md.set('general.file_type', u32(GGUF_FILE_TYPES[m.fileType].fileType))
  // partial_rotary_factor 0.5: ChatGLM rotates half of each head (hidden_size / heads, as the converter computes it).
  md.set(`${a}.rope.dimension_count`, u32(Math.floor(Math.floor(H / heads) * 0.5)))
  md.set('tokenizer.ggml.add_bos_token', {type: 'bool', value: false})
  md.set(`${a}.rope.freq_base`, f32(10000 * (typeof c.rope_ratio === 'number' ? c.rope_ratio : 1)))
  md.set('general.quantization_version', u32(2))
  md.set('tokenizer.ggml.model', str('llama'))
  md.set('tokenizer.ggml.pre', str('chatglm-spm'))
  md.set('tokenizer.ggml.tokens', {type: 'array', elem: 'string', values: m.vocab.tokens})
  md.set('tokenizer.ggml.scores', {type: 'array', elem: 'f32', values: m.vocab.scores})
  md.set('tokenizer.ggml.token_type', {type: 'array', elem: 'i32', values: m.vocab.types})
  // gguf-py SpecialVocab: the <typ>_token_id keys of config.json that fall inside the vocabulary.
  const specialKeys: [string, string][] = [['bos', 'bos'], ['eos', 'eos'], ['unk', 'unknown'], ['sep', 'seperator'], ['pad', 'padding'], ['mask', 'mask']]
  for (const [typ, key] of specialKeys) {
    const id = c[`${typ}_token_id`]
    if (typeof id === 'number' && Number.isSafeInteger(id) && id >= 0 && id < m.vocab.tokens.length) md.set(`tokenizer.ggml.${key}_token_id`, u32(id))
  }
  if (m.chatTemplate !== undefined) md.set('tokenizer.chat_template', str(m.chatTemplate))
  return md
}
