/**
 * Positions and the attention pattern of a prompt and of each generated token, per generation
 * (docs/chatglm.md sections 3, 4). The generation loop asks these; backends only apply them.
 */
export interface PromptLayout {
  positions: number[]
  blockPositions?: number[]
  /** Leading tokens that see each other both ways (v1's context); 0 = causal. */
  bidirectional: number
  /** Position (and block position) of the k-th generated token, k = 1, 2, ... */
  next(k: number): {position: number, blockPosition?: number}
}

/** Where [gMASK] and sop go around a prompt's text ids. */
export interface FramingIds {
  readonly gmask: number
  readonly sop: number
}

/** ChatGLM-6B's generate(): the text, then [gMASK, <sop>] (docs/chatglm.md section 3). */
export function framePromptV1(textIds: readonly number[], {gmask, sop}: FramingIds): number[] {
  return [...textIds, gmask, sop]
}

/** ChatGLM2-6B / ChatGLM3-6B: [gMASK, sop], then the text (build_inputs_with_special_tokens; docs/chatglm.md section 4). */
export function framePromptV2(textIds: readonly number[], {gmask, sop}: FramingIds): number[] {
  return [gmask, sop, ...textIds]
}

/**
 * v1 (GLM): ids = text + [gMASK, <sop>]. Tokens up to [gMASK] are at 0..n ([gMASK] at n);
 * <sop> and every generated token stay at n. Block positions: 0 for the context, 1 for <sop>,
 * +1 per generated token. The context (everything before <sop>) is visible to all.
 */
export function layoutV1(ids: readonly number[], gmask: number, sop: number): PromptLayout {
  // The published get_position_ids/get_masks take the FIRST <sop> and [gMASK] (seq.index).
  const sopIndex = ids.indexOf(sop)
  if (sopIndex < 0) throw new Error('a ChatGLM-6B prompt must contain <sop>')
  let maskIndex = ids.indexOf(gmask)
  if (maskIndex < 0 || maskIndex > sopIndex) maskIndex = sopIndex - 1
  const positions = ids.map((_, i) => Math.min(i, maskIndex))
  const blockPositions = ids.map((_, i) => (i < sopIndex ? 0 : i - sopIndex + 1))
  const lastBlock = blockPositions[blockPositions.length - 1]
  return {
    positions, blockPositions, bidirectional: sopIndex,
    next: k => ({position: maskIndex, blockPosition: lastBlock + k}),
  }
}

/** v2: plain positions 0, 1, 2, ... and a causal mask. */
export function layoutV2(ids: readonly number[]): PromptLayout {
  return {positions: ids.map((_, i) => i), bidirectional: 0, next: k => ({position: ids.length - 1 + k})}
}
