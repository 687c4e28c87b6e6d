/**
 * SentencePiece UNIGRAM segmentation, as the library (0.1.97) does it by default
 * (unigram_model.cc Model::EncodeOptimized): a Viterbi pass over the normalized UTF-8 bytes that
 * keeps, for every byte position, the best path ending there.
 *
 * - Candidates at a character boundary are the pieces of the trie (NORMAL, USER_DEFINED and
 *   UNUSED: the library's pieces_) that the bytes from there start with. UNUSED pieces are
 *   skipped; a USER_DEFINED piece scores length_in_bytes * max_score - 0.1 (max_score: the
 *   highest NORMAL score, at least FLT_MIN), so it wins over the pieces inside it; NORMAL pieces
 *   score their log probability. CONTROL, UNKNOWN and BYTE pieces are not in the trie, so text
 *   never produces them.
 * - Where no piece covers exactly the next character, that character is an <unk> candidate with
 *   score min_score - 10 (min_score: the lowest NORMAL score).
 * - A candidate replaces the best path ending at its end only when its total is strictly
 *   greater; candidates are visited by start position, left to right, so ties keep the path
 *   whose last piece starts earliest (the longer piece). The library sums in float and double
 *   exactly as reproduced here (a user-defined score is a double, the path totals are floats),
 *   which matters for ties.
 * - The path is read back from the end.
 *
 * The trie is a plain byte trie with each node's children contiguous and sorted, looked up by a
 * 256-entry table at the root and a linear or binary search below; hand-written because no
 * maintained npm package offers a byte-keyed common-prefix search over typed arrays, and this
 * is the encoder's hot loop.
 */
import {PieceType, type SentencePiece} from './sentencepiece-model.js'
import {oneCharLen} from './sentencepiece-normalizer.js'

const FLT_MAX = 3.4028234663852886e38
const FLT_MIN = 1.1754943508222875e-38
const UNK_PENALTY = 10
const fround = Math.fround

/** Children counts above which a node's children are binary-searched. */
const LINEAR_MAX = 8

export class UnigramModel {
  /** Per trie node: the id of the piece ending there (-1: none or UNUSED). */
  private readonly value: Int32Array
  /** Per trie node: the first child's node index, and the number of children. */
  private readonly first: Int32Array
  private readonly count: Int32Array
  /** Per trie node: the byte of the edge into it. */
  private readonly label: Uint8Array
  /** The root's child for each byte, or 0 (the root itself, never a child). */
  private readonly rootNext = new Int32Array(256)
  /** Per trie node with a value: the score Viterbi adds (double, as the library computes it). */
  private readonly score: Float64Array
  private readonly unkScore: number

  /**
   * `pieces` is the vocabulary; `trieKeys` maps the UTF-8 bytes (as a latin1 string, one char
   * per byte) of each NORMAL, USER_DEFINED and UNUSED piece to its id (the library's pieces_).
   */
  constructor(pieces: readonly SentencePiece[], trieKeys: ReadonlyMap<string, number>, private readonly unkId: number) {
    let minScore = FLT_MAX
    let maxScore = FLT_MIN
    for (const p of pieces) {
      if (p.type !== PieceType.NORMAL) continue
      const s = fround(p.score)
      if (s < minScore) minScore = s
      if (s > maxScore) maxScore = s
    }
    // float arithmetic: min_score() - kUnkPenalty.
    this.unkScore = fround(minScore - UNK_PENALTY)

    // Sorted byte strings (the default sort compares UTF-16 units, here bytes).
    const keys = [...trieKeys.keys()].sort()
    let bound = 1
    for (const k of keys) bound += k.length
    const value = new Int32Array(bound).fill(-1)
    const first = new Int32Array(bound)
    const count = new Int32Array(bound)
    const label = new Uint8Array(bound)
    const score = new Float64Array(bound)
    // Breadth-first: a node is its range of sorted keys sharing its prefix, and its depth; its
    // children are allocated together when it is expanded. The queue is the node order itself.
    const qLo = new Int32Array(bound)
    const qHi = new Int32Array(bound)
    const qDepth = new Int32Array(bound)
    qHi[0] = keys.length
    let nodes = 1
    for (let node = 0; node < nodes; node++) {
      let lo = qLo[node]
      const hi = qHi[node]
      const depth = qDepth[node]
      if (lo < hi && keys[lo].length === depth) {
        const id = trieKeys.get(keys[lo])!
        const p = pieces[id]
        if (p.type !== PieceType.UNUSED) {
          value[node] = id
          // length * max_score_ - 0.1: size_t * float in float, minus a double.
          score[node] = p.type === PieceType.USER_DEFINED ? fround(fround(depth) * maxScore) - 0.1 : fround(p.score)
        }
        lo++
      }
      first[node] = nodes
      while (lo < hi) {
        const b = keys[lo].charCodeAt(depth)
        let end = lo + 1
        while (end < hi && keys[end].charCodeAt(depth) === b) end++
        const child = nodes++
        label[child] = b
        count[node]++
        if (node === 0) this.rootNext[b] = child
        qLo[child] = lo
        qHi[child] = end
        qDepth[child] = depth + 1
        lo = end
      }
    }
    this.value = value.slice(0, nodes)
    this.first = first.slice(0, nodes)
    this.count = count.slice(0, nodes)
    this.label = label.slice(0, nodes)
    this.score = score.slice(0, nodes)
  }

  private child(node: number, b: number): number {
    if (node === 0) return this.rootNext[b]
    const n = this.count[node]
    if (n === 0) return 0
    const label = this.label
    let lo = this.first[node]
    let hi = lo + n
    if (n <= LINEAR_MAX) {
      for (; lo < hi; lo++) {
        const l = label[lo]
        if (l === b) return lo
        if (l > b) return 0
      }
      return 0
    }
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      const l = label[mid]
      if (l === b) return mid
      if (l < b) lo = mid + 1
      else hi = mid
    }
    return 0
  }

  /**
   * The best segmentation of `normalized`: parallel arrays of piece starts (byte offsets) and
   * ids, the last piece ending at normalized.length. Empty input gives no pieces.
   */
  encode(normalized: Uint8Array): {starts: Int32Array, ids: Int32Array} {
    const size = normalized.length
    if (size === 0) return {starts: new Int32Array(0), ids: new Int32Array(0)}
    const bestScore = new Float32Array(size + 1)
    const bestStart = new Int32Array(size + 1).fill(-1)
    const bestId = new Int32Array(size + 1).fill(-1)
    const value = this.value
    const score = this.score
    const unkScore = this.unkScore
    for (let start = 0; start < size;) {
      const till = bestScore[start]
      const mblen = Math.min(oneCharLen(normalized[start]), size - start)
      let single = false
      let node = 0
      for (let pos = start; pos < size;) {
        node = this.child(node, normalized[pos])
        if (node === 0) break
        pos++
        const id = value[node]
        if (id < 0) continue
        // double + float, compared with the stored float, stored as float.
        const cand = score[node] + till
        if (bestStart[pos] === -1 || cand > bestScore[pos]) {
          bestScore[pos] = cand
          bestStart[pos] = start
          bestId[pos] = id
        }
        if (pos - start === mblen) single = true
      }
      if (!single) {
        const end = start + mblen
        const cand = fround(unkScore + till)
        if (bestStart[end] === -1 || cand > bestScore[end]) {
          bestScore[end] = cand
          bestStart[end] = start
          bestId[end] = this.unkId
        }
      }
      start += mblen
    }
    let n = 0
    for (let end = size; end > 0; end = bestStart[end]) n++
    const starts = new Int32Array(n)
    const ids = new Int32Array(n)
    for (let end = size, k = n - 1; end > 0; end = bestStart[end], k--) {
      starts[k] = bestStart[end]
      ids[k] = bestId[end]
    }
    return {starts, ids}
  }
}
