/**
 * P-Tuning v2 prefix keys and values, as pure functions (docs/chatglm.md section 7).
 *
 * The published PrefixEncoder maps prefix token p (0..pre_seq_len-1) to one row of width
 * n = num_layers * 2 * kvHeads * headDim: its embedding row, or, with prefix_projection,
 * Linear -> Tanh -> Linear applied to it. get_prompt then views the [batch, P, n] output as
 * [batch, P, num_layers * 2, kvHeads, headDim], permutes it to [num_layers * 2, P, batch,
 * kvHeads, headDim] and splits it in twos: layer i's past is (index 2i = keys, 2i+1 = values).
 */

/** A Linear layer's parameters: weight [out, in] row-major, bias [out]. */
export interface LinearWeights {
  readonly weight: Float32Array
  readonly bias: Float32Array
  readonly inFeatures: number
  readonly outFeatures: number
}

export interface PrefixEncoderWeights {
  readonly preSeqLen: number
  /** embedding.weight, [preSeqLen, embeddingWidth]. */
  readonly embedding: Float32Array
  readonly embeddingWidth: number
  /** trans.0 and trans.2 when prefix_projection is on. */
  readonly projection?: {readonly first: LinearWeights, readonly second: LinearWeights}
}

/** y = x W^T + b for one row, in float32 (each output's sum taken in double, rounded once). */
function linearRow(x: Float32Array, l: LinearWeights, out: Float32Array): void {
  const {weight, bias, inFeatures: n} = l
  for (let j = 0; j < l.outFeatures; j++) {
    let sum = 0
    const off = j * n
    for (let i = 0; i < n; i++) sum += x[i] * weight[off + i]
    out[j] = bias[j] + Math.fround(sum)
  }
}

/** The encoder output for every prefix token: [preSeqLen, width], float32. */
export function runPrefixEncoder(w: PrefixEncoderWeights): {values: Float32Array, width: number} {
  const P = w.preSeqLen
  if (!w.projection) return {values: w.embedding.slice(0, P * w.embeddingWidth), width: w.embeddingWidth}
  const {first, second} = w.projection
  if (first.inFeatures !== w.embeddingWidth || second.inFeatures !== first.outFeatures) {
    throw new RangeError(`prefix encoder: widths do not chain (${w.embeddingWidth} -> ${first.inFeatures}x${first.outFeatures} -> ${second.inFeatures}x${second.outFeatures})`)
  }
  const width = second.outFeatures
  const values = new Float32Array(P * width)
  const hidden = new Float32Array(first.outFeatures)
  for (let p = 0; p < P; p++) {
    const x = w.embedding.subarray(p * w.embeddingWidth, (p + 1) * w.embeddingWidth)
    linearRow(x, first, hidden)
    for (let j = 0; j < hidden.length; j++) hidden[j] = Math.tanh(hidden[j])
    linearRow(hidden, second, values.subarray(p * width, (p + 1) * width))
  }
  return {values, width}
}

/** One layer's prefix: keys and values, each [kvHeads, preSeqLen, headDim] row-major. */
export interface LayerPrefix {
  readonly key: Float32Array
  readonly value: Float32Array
}

/**
 * Cut the encoder output [preSeqLen, layers * 2 * kvHeads * headDim] into per-layer keys and
 * values, as get_prompt's view/permute/split does: element (p, 2i + part, h, d) goes to
 * layer i's `part` (0 keys, 1 values) at [h, p, d].
 */
export function splitPrefixKeyValues(values: Float32Array, preSeqLen: number, layers: number, kvHeads: number, headDim: number): LayerPrefix[] {
  const kv = kvHeads * headDim
  const width = layers * 2 * kv
  if (values.length !== preSeqLen * width) {
    throw new RangeError(`prefix: ${values.length} values, expected ${preSeqLen} x ${layers} x 2 x ${kvHeads} x ${headDim}`)
  }
  const out: LayerPrefix[] = []
  for (let i = 0; i < layers; i++) {
    const parts = [new Float32Array(kvHeads * preSeqLen * headDim), new Float32Array(kvHeads * preSeqLen * headDim)]
    for (let part = 0; part < 2; part++) {
      const dst = parts[part]
      for (let p = 0; p < preSeqLen; p++) {
        const src = p * width + (2 * i + part) * kv
        for (let h = 0; h < kvHeads; h++) {
          dst.set(values.subarray(src + h * headDim, src + (h + 1) * headDim), (h * preSeqLen + p) * headDim)
        }
      }
    }
    out.push({key: parts[0], value: parts[1]})
  }
  return out
}
