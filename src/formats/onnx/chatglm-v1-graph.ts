import {GlmtoolError} from '../../errors.js'
import type {ModelConfig, ModelDims} from '../../models/arch.js'
import {
  cacheAttention, type ChatglmOnnxGraph, declareInputs, declareOutputs, declarePartInputs, declarePartOutputs, type DecoderDims, embedTokens,
  eps, type GraphContext, type GraphPart, logitsHead, partIO, presentNames, rotaryTables,
} from './chatglm-graph.js'
import {type GraphBuilder, MS_DOMAIN} from './onnx-builder.js'

/** What the ChatGLM-6B graph takes from its generation module (src/models/chatglm-v1.ts wires it). */
export interface V1GraphModule {
  /** The generation's config parser (Arch.dims). */
  dims(config: ModelConfig): ModelDims
  /** GLMBlock's DeepNorm alpha. */
  readonly deepnormAlpha: number
}

/**
 * ChatGLM-6B (GLM: 2D rotary, post-DeepNorm) as one ONNX decoder graph (docs/chatglm.md section 3).
 *
 * Per layer, alpha = sqrt(2 * 28) whatever the depth (the module's V1_DEEPNORM_ALPHA: the published get_layer()
 * never passes num_layers to GLMBlock, whose default is 28):
 *   x_ln = LN(x); h = x_ln * alpha + Attn(x_ln); h_ln = LN(h); x' = h_ln * alpha + MLP(h_ln)
 * The residual is the *normed* input, so each LN takes (branch output, alpha * previous LN
 * output) and SkipLayerNormalization computes LN(input + skip + bias) in one kernel; the dense
 * biases ride in its `bias` input. The first LN has no skip: standard LayerNormalization (17).
 *
 * Attention: QKV rows are grouped per head ([heads, 3*D] -> q, k, v). 2D rotary: the first D/2
 * dims of each q/k head are rotated by position_id, the second D/2 by block_position_id, each a
 * non-interleaved (rotate_half) rotary of dimension D/2. com.microsoft.RotaryEmbedding takes one
 * position row per token for all heads, so each head is viewed as two half-heads of size D/2:
 * the first halves of q and k (2*heads half-heads) go through one RotaryEmbedding with
 * position_id, the second halves through another with block_position_id; this is exactly the
 * reference's split/cat. Attention is chatglm-graph.ts's cacheAttention (G = heads): softmax(q.k /
 * sqrt(D) + bias) in float32 over the KV-cache buffer, read in place, and this run's K/V rows,
 * with the whole mask in attention_bias [1, 1, S, C + S] (v1's prefill context is bidirectional);
 * the present outputs are this run's rows only (issue 13: no per-step copy of the cache). The
 * reference's q/(sqrt(D)*(layer+1)) then *(layer+1) is the same scale. The reference fills
 * masked scores with -10000 where this graph adds -10000: after softmax both are exactly 0
 * (exp(-10000) underflows) unless a row is fully masked, which the mask never makes.
 * Rotary frequencies are 1/10000^(2j/(D/2)) rounded to float16, as the published code uses them
 * in every dtype (RotaryEmbedding.__init__ calls inv_freq.half(); the checkpoint's inv_freq
 * buffers hold the same float16 values).
 * GeLU is the tanh form: FastGelu (0.5x(1+tanh(0.7978845608(x+0.044715x^3)))) with the
 * dense_h_to_4h bias as its bias input.
 */
export function chatglmV1Graph(m: V1GraphModule): ChatglmOnnxGraph {
  const alpha = m.deepnormAlpha
  return {
    arch: 'chatglm-6b',
    description: 'ChatGLM-6B decoder: LayerNorm/SkipLayerNormalization (DeepNorm alpha on the normed residual), per-head QKV, 2D rotary via two half-head RotaryEmbedding, attention over an in-place KV-cache buffer (FusedMatMul, Softmax, MatMul) with additive bias, FastGelu MLP',
    ops: {
      'first LayerNorm': 'LayerNormalization (opset 17): no residual yet',
      'later LayerNorms': 'com.microsoft.SkipLayerNormalization: LN(branch + alpha*x_ln + dense bias) in one kernel',
      rotary: 'com.microsoft.RotaryEmbedding (interleaved=0) on half-heads of D/2: first halves by position_id, second by block_position_id',
      attention: 'com.microsoft.FusedMatMul (transB, alpha=1/sqrt(D)) of q against the cache buffer past_key [1,heads,C,D] read in place and this run\'s keys, + attention_bias [1,1,S,C+S], Softmax, MatMul with past_value and this run\'s values; present key/value = this run\'s rows [1,heads,S,D]',
      gelu: 'com.microsoft.FastGelu (tanh form) with the dense_h_to_4h bias',
      linear: 'Gemm transB=1 on the [out, in] weights (no transposed copy); com.microsoft.MatMulNBits on weight-quantized ones',
    },

    dims(config) {
      if (config.position_encoding_2d === false) {
        throw new GlmtoolError('onnx-unsupported', 'config.json: position_encoding_2d false is not a ChatGLM-6B layout glmtool exports')
      }
      const {layers, hidden, heads, kvHeads, headDim, vocab, maxPositions} = m.dims(config)
      if (headDim % 4 !== 0) {
        throw new GlmtoolError('bad-config', `config.json: hidden_size ${hidden} / num_attention_heads ${heads} must be a multiple of 4 for 2D rotary`)
      }
      return {arch: 'chatglm-6b', layers, hidden, heads, kvHeads, headDim, vocab, maxPositions, positionRows: 2}
    },

    boundary: ['hidden'],

    build(b: GraphBuilder, ctx, d: DecoderDims) {
      const io = declareInputs(b, d)
      let xln = b.scope('embedding', () => embedding(b, ctx, io.inputIds))
      const shared = sharedInputs(b, ctx, d, io.positionIds, io.attentionBias)
      const presentKey: string[] = []
      const presentValue: string[] = []
      for (let i = 0; i < d.layers; i++) {
        const r = b.scope(`layers.${i}`, () => layer(b, ctx, d, alpha, i, xln, shared, io.pastKey[i], io.pastValue[i]))
        xln = r.xln
        presentKey.push(r.presentKey)
        presentValue.push(r.presentValue)
      }
      const logits = b.scope('lm_head', () => logitsHead(b, ctx, xln, io.logitsIndex, 'lm_head.weight'))
      declareOutputs(b, d, logits, presentKey, presentValue)
    },

    buildPart(b: GraphBuilder, ctx, d: DecoderDims, part: GraphPart) {
      const io = partIO(d, part, this.boundary)
      const inputs = declarePartInputs(b, io)
      if (part.kind === 'embedding') {
        declarePartOutputs(b, io, [b.scope('embedding', () => embedding(b, ctx, inputs[0]))])
      } else if (part.kind === 'head') {
        declarePartOutputs(b, io, [b.scope('lm_head', () => logitsHead(b, ctx, inputs[0], inputs[1], 'lm_head.weight'))])
      } else {
        const [xln, positionIds, attentionBias, pastKey, pastValue] = inputs
        const shared = sharedInputs(b, ctx, d, positionIds, attentionBias)
        const r = b.scope(`layers.${part.index}`, () => layer(b, ctx, d, alpha, part.index, xln, shared, pastKey, pastValue))
        declarePartOutputs(b, io, [r.xln, r.presentKey, r.presentValue])
      }
    },
  }
}

interface Shared {
  readonly pos: string
  readonly block: string
  readonly positionIds: string
  readonly attentionBias: string
  readonly cos: string
  readonly sin: string
}

/** Embedding rows and the first LayerNorm (no residual yet). */
function embedding(b: GraphBuilder, ctx: GraphContext, inputIds: string): string {
  const x = embedTokens(b, ctx, 'transformer.word_embeddings.weight', inputIds)
  return b.scope('layers.0.input_layernorm', () => b.op('LayerNormalization', [
    x, ctx.weight('transformer.layers.0.input_layernorm.weight'), ctx.weight('transformer.layers.0.input_layernorm.bias'),
  ], {axis: -1, epsilon: eps(ctx.config)}))
}

/** The two position rows and the rotary tables, shared by every layer. */
function sharedInputs(b: GraphBuilder, ctx: GraphContext, d: DecoderDims, positionIds: string, attentionBias: string): Shared {
  const D = d.headDim
  // position_ids [1, 2, S] -> position_id [1, S], block_position_id [1, S]
  const [pos, block] = b.scope('positions', () => [0, 1].map(r => b.op('Gather', [positionIds, b.int64([r], [])], {axis: 1})))
  const tables = rotaryTables(d.maxPositions, D / 2, {thetaAsFloat16: true})
  const cos = ctx.computed('rotary.cos_cache', [d.maxPositions, D / 4], tables.cos)
  const sin = ctx.computed('rotary.sin_cache', [d.maxPositions, D / 4], tables.sin)
  return {pos, block, positionIds, attentionBias, cos, sin}
}

/** Layer i from its input LayerNorm's output to the next layer's (or the final LayerNorm's). */
function layer(b: GraphBuilder, ctx: GraphContext, d: DecoderDims, deepnormAlpha: number, i: number, xln: string, sh: Shared, pastKey: string, pastValue: string): {xln: string, presentKey: string, presentValue: string} {
  const {layers, hidden: H, heads: N, headDim: D} = d
  const epsilon = eps(ctx.config)
  const alpha = b.float32([deepnormAlpha], [])
  const p = `transformer.layers.${i}.`
  const qkv = ctx.linear(xln, `${p}attention.query_key_value.weight`, `${p}attention.query_key_value.bias`)
  // [S, 3H] -> [S, N, 3, D]: per-head (q | k | v) groups
  const grouped = b.op('Reshape', [qkv, b.int64([-1, N, 3, D])])
  const [qk, v] = b.node('Split', [grouped, b.int64([2, 1])], 2, {axis: 2})
  // q and k of every head as half-heads: [S, N, 2, D] -> [S, 2N, 2, D/2]; index 0 of axis 2 is
  // the first D/2 dims of a head (rotated by position_id), index 1 the second (block_position_id).
  const halves = b.op('Reshape', [qk, b.int64([-1, 2 * N, 2, D / 2])])
  const [first, second] = b.node('Split', [halves, b.int64([1, 1])], 2, {axis: 2})
  const rotate = (t: string, positions: string) => {
    const flat = b.op('Reshape', [t, b.int64([1, -1, H])])
    const r = b.ms('RotaryEmbedding', [flat, positions, sh.cos, sh.sin], {interleaved: 0})
    return b.op('Reshape', [r, b.int64([-1, 2 * N, 1, D / 2])])
  }
  const rotated = b.op('Concat', [rotate(first, sh.pos), rotate(second, sh.block)], {axis: 2})
  const qkHeads = b.op('Reshape', [rotated, b.int64([-1, N, 2, D])])
  const [q, k] = b.node('Split', [qkHeads, b.int64([1, 1])], 2, {axis: 2})
  const toBSH = (t: string) => b.op('Reshape', [t, b.int64([1, -1, H])])
  const {attn, presentKey, presentValue} = cacheAttention(b, d, toBSH(q), toBSH(k), toBSH(v), pastKey, pastValue, sh.attentionBias, presentNames(pastKey, pastValue))
  const dense = ctx.linear(attn, `${p}attention.dense.weight`)
  // h_ln = LN(dense + dense.bias + alpha * x_ln)
  const hln = b.node('SkipLayerNormalization', [
    dense, b.op('Mul', [xln, alpha]), ctx.weight(`${p}post_attention_layernorm.weight`),
    ctx.weight(`${p}post_attention_layernorm.bias`), ctx.weight(`${p}attention.dense.bias`),
  ], 1, {epsilon}, MS_DOMAIN)[0]
  const up = ctx.linear(hln, `${p}mlp.dense_h_to_4h.weight`)
  const act = b.ms('FastGelu', [up, ctx.weight(`${p}mlp.dense_h_to_4h.bias`)])
  const down = ctx.linear(act, `${p}mlp.dense_4h_to_h.weight`)
  // next x_ln = LN_next(down + dense_4h_to_h.bias + alpha * h_ln); after the last layer
  // LN_next is final_layernorm.
  const next = i + 1 < layers ? `transformer.layers.${i + 1}.input_layernorm.` : 'transformer.final_layernorm.'
  const out = b.node('SkipLayerNormalization', [
    down, b.op('Mul', [hln, alpha]), ctx.weight(`${next}weight`), ctx.weight(`${next}bias`),
    ctx.weight(`${p}mlp.dense_4h_to_h.bias`),
  ], 1, {epsilon}, MS_DOMAIN)[0]
  return {xln: out, presentKey, presentValue}
}
