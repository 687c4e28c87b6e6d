import {GlmtoolError} from '../../errors.js'
import type {ModelConfig, ModelDims} from '../../models/arch.js'
import {
  cacheAttention, type ChatglmOnnxGraph, declareInputs, declareOutputs, declarePartInputs, declarePartOutputs, type DecoderDims, embedTokens, eps,
  type GraphContext, type GraphPart, logitsHead, partIO, presentNames, rotaryTables, zerosLike,
} from './chatglm-graph.js'
import {float, type GraphBuilder, MS_DOMAIN} from './onnx-builder.js'

/** What the ChatGLM2-6B graph takes from its generation module (src/models/chatglm-v2.ts wires it). */
export interface V2GraphModule {
  /** The generation's config parser (Arch.dims). */
  dims(config: ModelConfig): ModelDims
}

/**
 * ChatGLM2-6B (pre-norm RMSNorm, multi-query attention, SwiGLU) as one ONNX decoder graph
 * (docs/chatglm.md section 4). Also ChatGLM3-6B and CodeGeeX2-6B, which share the architecture.
 *
 *   x_ln = RMSNorm(x); h = x + Attn(x_ln); x' = h + MLP(RMSNorm(h))
 * com.microsoft.SkipSimplifiedLayerNormalization computes RMSNorm(input + skip) and also returns
 * input + skip (its 4th output), which is exactly the residual stream: each block output is the
 * `input`, the running residual the `skip`. The very first RMSNorm has no residual yet; it gets
 * a zero skip (ConstantOfShape), so every RMSNorm in the graph runs the same kernel. (The plain
 * SimplifiedLayerNormalization is registered by ORT in the default ONNX domain, which onnx's
 * checker rejects as an unknown standard op.)
 *
 * Attention: q = heads x D, k and v = G groups x D (multi_query_group_num); query head h reads
 * group h / (heads / G): chatglm-graph.ts's cacheAttention, softmax(q.k / sqrt(D) + bias) over
 * the KV-cache buffer past_key/past_value [1, G, C, D] (read in place) and this run's rows, the
 * causal mask in attention_bias [1, 1, S, C + S]; the present outputs are this run's rows only
 * (issue 13: no per-step copy of the cache).
 * Rotary: the first D/2 dims of each q/k head, interleaved pairs (x[2j], x[2j+1]),
 * theta_j = 1/base^(2j/(D/2)), base 10000 (ChatGLM3-6B-32k: 10000 * rope_ratio; the generation module's ropeBase, GraphContext.rotaryBase);
 * the other D/2 dims pass through. That is
 * com.microsoft.RotaryEmbedding with interleaved=1, rotary_embedding_dim = D/2 and num_heads
 * given (partial rotary copies the dims past rotary_embedding_dim unchanged).
 * SwiGLU: silu(y[:F]) * y[F:], silu(a) = a * sigmoid(a) = com.microsoft.QuickGelu with alpha 1.
 */
export function chatglmV2Graph(m: V2GraphModule): ChatglmOnnxGraph {
  return {
    arch: 'chatglm2-6b',
    description: 'ChatGLM2-6B decoder: SkipSimplifiedLayerNormalization (RMSNorm + residual), partial interleaved RotaryEmbedding, attention over an in-place KV-cache buffer (FusedMatMul, Softmax, MatMul) with additive bias, SwiGLU via QuickGelu(alpha=1)',
    ops: {
      rmsnorm: 'com.microsoft.SkipSimplifiedLayerNormalization: RMSNorm(block output + residual), 4th output = new residual; zero skip for the first',
      rotary: 'com.microsoft.RotaryEmbedding interleaved=1, rotary_embedding_dim=D/2 (other half passes through)',
      attention: 'com.microsoft.FusedMatMul (transB, alpha=1/sqrt(D)) of each group\'s query heads against the cache buffer past_key [1,G,C,D] read in place and this run\'s keys, + attention_bias [1,1,S,C+S], Softmax, MatMul with past_value and this run\'s values; present key/value = this run\'s rows [1,G,S,D]',
      swiglu: 'Split + com.microsoft.QuickGelu(alpha=1) (= SiLU) + Mul',
      linear: 'Gemm transB=1 on the [out, in] weights (no transposed copy); com.microsoft.MatMulNBits on weight-quantized ones',
    },

    dims(config) {
      if (config.rmsnorm === false) throw new GlmtoolError('onnx-unsupported', 'config.json: rmsnorm false (LayerNorm) is not implemented by the ChatGLM2 ONNX export')
      if (config.apply_residual_connection_post_layernorm === true) {
        throw new GlmtoolError('onnx-unsupported', 'config.json: apply_residual_connection_post_layernorm true is not implemented by the ChatGLM2 ONNX export')
      }
      if (config.add_bias_linear === true) throw new GlmtoolError('onnx-unsupported', 'config.json: add_bias_linear true is not implemented by the ChatGLM2 ONNX export')
      if (config.original_rope === false) throw new GlmtoolError('onnx-unsupported', 'config.json: original_rope false is not implemented by the ChatGLM2 ONNX export')
      const {layers, hidden, heads, kvHeads, headDim, vocab, maxPositions} = m.dims(config)
      if (heads % kvHeads !== 0) throw new GlmtoolError('bad-config', `config.json: num_attention_heads ${heads} is not a multiple of multi_query_group_num ${kvHeads}`)
      if (headDim % 4 !== 0) throw new GlmtoolError('bad-config', `config.json: kv_channels ${headDim} must be a multiple of 4 for rotary`)
      return {arch: 'chatglm2-6b', layers, hidden, heads, kvHeads, headDim, vocab, maxPositions, positionRows: 1}
    },

    boundary: ['hidden', 'residual'],

    build(b: GraphBuilder, ctx, d: DecoderDims) {
      const io = declareInputs(b, d)
      let state = b.scope('embedding', () => embedding(b, ctx, io.inputIds))
      const shared = sharedInputs(b, ctx, d, io.positionIds, io.attentionBias)
      const presentKey: string[] = []
      const presentValue: string[] = []
      const ffn = m.dims(ctx.config).ffn
      for (let i = 0; i < d.layers; i++) {
        const r = b.scope(`layers.${i}`, () => layer(b, ctx, d, ffn, i, state, shared, io.pastKey[i], io.pastValue[i]))
        state = r.state
        presentKey.push(r.presentKey)
        presentValue.push(r.presentValue)
      }
      const logits = b.scope('output_layer', () => logitsHead(b, ctx, state.xn, io.logitsIndex, 'transformer.output_layer.weight'))
      declareOutputs(b, d, logits, presentKey, presentValue)
    },

    buildPart(b: GraphBuilder, ctx, d: DecoderDims, part: GraphPart) {
      const io = partIO(d, part, this.boundary)
      const inputs = declarePartInputs(b, io)
      if (part.kind === 'embedding') {
        const s = b.scope('embedding', () => embedding(b, ctx, inputs[0]))
        declarePartOutputs(b, io, [s.xn, s.residual])
      } else if (part.kind === 'head') {
        declarePartOutputs(b, io, [b.scope('output_layer', () => logitsHead(b, ctx, inputs[0], inputs[1], 'transformer.output_layer.weight'))])
      } else {
        const [xn, residual, positionIds, attentionBias, pastKey, pastValue] = inputs
        const shared = sharedInputs(b, ctx, d, positionIds, attentionBias)
        const r = b.scope(`layers.${part.index}`, () => layer(b, ctx, d, m.dims(ctx.config).ffn, part.index, {xn, residual}, shared, pastKey, pastValue))
        // After the last layer there is no residual: the final norm's output stands in for it.
        declarePartOutputs(b, io, [r.state.xn, r.state.residual, r.presentKey, r.presentValue])
      }
    },
  }
}

/** The residual stream between layers: the next RMSNorm's output and the running residual. */
interface State {
  readonly xn: string
  readonly residual: string
}

interface Shared {
  readonly positionIds: string
  readonly attentionBias: string
  readonly cos: string
  readonly sin: string
}

/** Embedding rows and the first RMSNorm (zero skip). */
function embedding(b: GraphBuilder, ctx: GraphContext, inputIds: string): State {
  const x = embedTokens(b, ctx, 'transformer.embedding.word_embeddings.weight', inputIds)
  const [xn] = b.scope('layers.0.input_layernorm', () => b.node('SkipSimplifiedLayerNormalization', [
    x, zerosLike(b, x), ctx.weight('transformer.encoder.layers.0.input_layernorm.weight'),
  ], 1, {epsilon: eps(ctx.config)}, MS_DOMAIN))
  return {xn, residual: x}
}

/** Rotary tables, shared by every layer. */
function sharedInputs(b: GraphBuilder, ctx: GraphContext, d: DecoderDims, positionIds: string, attentionBias: string): Shared {
  const D = d.headDim
  const tables = rotaryTables(d.maxPositions, D / 2, {base: ctx.rotaryBase})
  const cos = ctx.computed('rotary.cos_cache', [d.maxPositions, D / 4], tables.cos)
  const sin = ctx.computed('rotary.sin_cache', [d.maxPositions, D / 4], tables.sin)
  return {positionIds, attentionBias, cos, sin}
}

/** Layer i, from its first linear to the next layer's RMSNorm (or the final norm after the last). */
function layer(b: GraphBuilder, ctx: GraphContext, d: DecoderDims, F: number, i: number, state: State, sh: Shared, pastKey: string, pastValue: string): {state: State, presentKey: string, presentValue: string} {
  const {heads: N, kvHeads: G, headDim: D} = d
  const epsilon = eps(ctx.config)
  const qkvBias = ctx.config.add_qkv_bias !== false
  const finalNorm = ctx.config.post_layer_norm !== false
  const p = `transformer.encoder.layers.${i}.`
  const qkv = ctx.linear(state.xn, `${p}self_attention.query_key_value.weight`, qkvBias ? `${p}self_attention.query_key_value.bias` : undefined)
  const [q, k, v] = b.node('Split', [qkv, b.int64([N * D, G * D, G * D])], 3, {axis: 1})
  const toBSH = (t: string, width: number) => b.op('Reshape', [t, b.int64([1, -1, width])])
  const rope = (t: string, numHeads: number) => b.ms('RotaryEmbedding', [toBSH(t, numHeads * D), sh.positionIds, sh.cos, sh.sin], {
    interleaved: 1, num_heads: numHeads, rotary_embedding_dim: D / 2,
  })
  const {attn, presentKey, presentValue} = cacheAttention(b, d, rope(q, N), rope(k, G), toBSH(v, G * D), pastKey, pastValue, sh.attentionBias,
    presentNames(pastKey, pastValue))
  const dense = ctx.linear(attn, `${p}self_attention.dense.weight`)
  // h = residual + dense; hn = RMSNorm(h)
  const [hn, , , h] = b.node('SkipSimplifiedLayerNormalization', [dense, state.residual, ctx.weight(`${p}post_attention_layernorm.weight`)],
    [b.fresh('post_attention_layernorm'), '', '', b.fresh('residual')], {epsilon}, MS_DOMAIN)
  const up = ctx.linear(hn, `${p}mlp.dense_h_to_4h.weight`)
  const [gate, value] = b.node('Split', [up, b.int64([F, F])], 2, {axis: 1})
  const act = b.op('Mul', [b.ms('QuickGelu', [gate], {alpha: float(1)}), value])
  const down = ctx.linear(act, `${p}mlp.dense_4h_to_h.weight`)
  let next: State
  if (i + 1 < d.layers) {
    const [xn, , , residual] = b.node('SkipSimplifiedLayerNormalization', [down, h, ctx.weight(`transformer.encoder.layers.${i + 1}.input_layernorm.weight`)],
      [b.fresh('next_input_layernorm'), '', '', b.fresh('residual')], {epsilon}, MS_DOMAIN)
    next = {xn, residual}
  } else if (finalNorm) {
    const [xn] = b.node('SkipSimplifiedLayerNormalization', [down, h, ctx.weight('transformer.encoder.final_layernorm.weight')], 1, {epsilon}, MS_DOMAIN)
    next = {xn, residual: xn}
  } else {
    const xn = b.op('Add', [down, h])
    next = {xn, residual: xn}
  }
  return {state: next, presentKey, presentValue}
}
