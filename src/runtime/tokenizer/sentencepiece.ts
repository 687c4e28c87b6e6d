/**
 * A SentencePiece processor: the ids, pieces and decoded text of the `sentencepiece` library
 * (0.1.97, Debian bookworm's) for a UNIGRAM or BPE ModelProto, with no native code. ChatGLM-6B's
 * ice_text.model is UNIGRAM, ChatGLM2-6B's (and ChatGLM3-6B's) tokenizer.model is BPE
 * (docs/chatglm.md section 5). Checked id for id on the real files by
 * test/tokenizer-real.test.ts, and on library-trained BPE fixtures by test/tokenizer-spm.test.ts.
 *
 * Encoding, as the library does it (sentencepiece_processor.cc Encode):
 * 1. Normalize (./sentencepiece-normalizer.ts).
 * 2. Segment the normalized bytes:
 *    - UNIGRAM (unigram_model.cc EncodeOptimized): Viterbi over the piece scores, see
 *      ./sentencepiece-unigram.ts (user-defined pieces win, UNUSED/CONTROL/BYTE pieces are never
 *      candidates, a character no piece covers is <unk>).
 *    - BPE (bpe_model.cc Encode): split into symbols (a user-defined symbol where one starts,
 *      longest match, frozen, never merges; else one UTF-8 character), then repeatedly join the
 *      adjacent pair whose concatenation is a piece (NORMAL, USER_DEFINED or UNUSED) with the
 *      highest score, the leftmost on ties; a priority queue over adjacent pairs with lazy
 *      deletion keeps this O(n log n). Pieces of type UNUSED merge like any other and are then
 *      split back into the pair they were made from.
 * 3. Map pieces to ids (CONTROL/UNKNOWN/BYTE names first, then the others, else <unk>). An
 *    unknown piece becomes its UTF-8 bytes as <0xXX> pieces when the trainer spec sets
 *    byte_fallback; otherwise consecutive unknown pieces collapse into one <unk>.
 * Control pieces (<s>, [gMASK], ...) are never produced from text.
 *
 * Decoding (sentencepiece_processor.cc Decode): control pieces vanish, <unk> becomes
 * trainer_spec.unk_surface (" ⁇ "), "▁" becomes a space, runs of byte pieces are reassembled as
 * UTF-8 with each malformed byte giving U+FFFD, and the leading "▁" of the first piece is
 * dropped (add_dummy_prefix): with remove_extra_whitespaces every piece's leading "▁" is dropped
 * while nothing has been output yet; without it, only the first such "▁" is.
 *
 * Word and char models are refused (ModelError 'tokenizer-unsupported').
 */
import {ModelError} from '../../errors.js'
import {
  decodeModelProto, effectiveNormalizerSpec, effectiveTrainerSpec, ModelType, PieceType,
  type EffectiveNormalizerSpec, type SentencePieceModel,
} from './sentencepiece-model.js'
import {decodeUtf8Char, Normalizer, oneCharLen, PrefixMatcher} from './sentencepiece-normalizer.js'
import {UnigramModel} from './sentencepiece-unigram.js'

const META = '\u2581'
const REPLACEMENT = '\ufffd'
const utf8 = new TextEncoder()

const PRINTABLE_ASCII = /^[ -~]*$/

/** A piece's UTF-8 bytes as a "binary" string (one char per byte): the key of the piece maps. */
function byteKey(s: string): string {
  // Printable ASCII is its own byte key; most English pieces skip the Buffer round trip.
  return PRINTABLE_ASCII.test(s) ? s : Buffer.from(s, 'utf8').toString('latin1')
}

/** The UTF-8 text of bytes[from..to). */
function utf8Slice(bytes: Uint8Array, from: number, to: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + from, to - from).toString('utf8')
}

/** "<0x00>".."<0xFF>". */
const BYTE_PIECES: readonly string[] = Array.from({length: 256}, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)

/** One character's bytes (1-4) packed into an int32; charIds keys it with its length. */
function charCode(bytes: Uint8Array, pos: number, n: number): number {
  let c = 0
  for (let i = 0; i < n; i++) c = (c << 8) | bytes[pos + i]
  return c
}

function charCodeOfKey(key: string): number {
  let c = 0
  for (let i = 0; i < key.length; i++) c = (c << 8) | key.charCodeAt(i)
  return c
}

/**
 * A hash map from a pair of int32 to a non-negative int32, open addressing with linear probing
 * over typed arrays: the BPE hot loop looks up a pair of piece ids per candidate merge, and a
 * Map keyed by a combined number is several times slower there (the keys exceed small-integer
 * range). Hand-written: no maintained npm package offers an int-pair hash map.
 */
export class IntPairMap {
  private readonly mask: number
  private readonly keyA: Int32Array
  private readonly keyB: Int32Array
  /** value + 1; 0 = empty slot. */
  private readonly vals: Int32Array
  size = 0

  constructor(capacity: number) {
    let n = 16
    while (n < capacity * 2) n *= 2
    this.mask = n - 1
    this.keyA = new Int32Array(n)
    this.keyB = new Int32Array(n)
    this.vals = new Int32Array(n)
  }

  private slot(a: number, b: number): number {
    return (Math.imul(a, 0x9e3779b1) ^ Math.imul(b ^ (b >>> 15), 0x85ebca6b)) >>> 0 & this.mask
  }

  set(a: number, b: number, value: number): void {
    if (2 * (this.size + 1) > this.vals.length) throw new RangeError('IntPairMap is full')
    for (let i = this.slot(a, b); ; i = (i + 1) & this.mask) {
      if (this.vals[i] === 0) {
        this.keyA[i] = a
        this.keyB[i] = b
        this.vals[i] = value + 1
        this.size++
        return
      }
      if (this.keyA[i] === a && this.keyB[i] === b) {
        this.vals[i] = value + 1
        return
      }
    }
  }

  /** The value, or -1. */
  get(a: number, b: number): number {
    for (let i = this.slot(a, b); ; i = (i + 1) & this.mask) {
      const v = this.vals[i]
      if (v === 0) return -1
      if (this.keyA[i] === a && this.keyB[i] === b) return v - 1
    }
  }
}

/** "<0x0A>" -> 10; -1 for anything else. */
function pieceToByte(piece: string): number {
  const m = /^<0x([0-9A-F]{2})>$/.exec(piece)
  return m ? parseInt(m[1], 16) : -1
}

export class SentencePieceProcessor {
  readonly model: SentencePieceModel
  readonly vocabSize: number
  readonly unkId: number
  /** Ids of <s>, </s>, <pad> by the trainer's names, or -1 (the library's bos_id() etc.). */
  readonly bosId: number
  readonly eosId: number
  readonly padId: number

  private readonly types: Uint8Array
  private readonly scores: Float32Array
  /** CONTROL, UNKNOWN and BYTE pieces (the library's reserved_id_map_), by byte key. */
  private readonly reserved = new Map<string, number>()
  /** NORMAL, USER_DEFINED and UNUSED pieces (the library's pieces_), by byte key. */
  private readonly mergeable = new Map<string, number>()
  /** Id of <0xXX> for each byte, -1 where missing. */
  private readonly byteIds = new Int32Array(256).fill(-1)
  /** Byte value of each BYTE piece id, -1 for other ids. */
  private readonly byteOfId: Int16Array
  private readonly matcher: PrefixMatcher
  private readonly normalizer: Normalizer
  private readonly denormalizer: Normalizer | null
  private readonly normalizerSpec: EffectiveNormalizerSpec
  private readonly byteFallback: boolean
  private readonly unkSurface: string
  /** The UNIGRAM segmenter; null for BPE. */
  private readonly unigram: UnigramModel | null
  /** BPE: (left id, right id) -> id of the mergeable piece they concatenate to. */
  private readonly merges: IntPairMap | null = null
  /** BPE: a one-character mergeable piece's id by (byte length, charCode() of its bytes). */
  private readonly charIds: IntPairMap | null = null
  /**
   * BPE: every pair of adjacent characters (charCode() of each) inside some mergeable piece. No
   * merge can cross between two symbols whose touching characters are not such a pair, so the
   * text splits there into parts that merge independently (the same result as one queue over
   * the whole text: a merge only ever involves adjacent symbols of one part, and the order of
   * merges inside a part, by score then position, does not depend on the other parts).
   */
  private readonly bigrams: IntPairMap | null = null
  private readonly hasUnused: boolean
  /** Mergeable ids whose string is also a reserved piece, which PieceToId answers first. */
  private readonly reservedOfMergeable: Map<number, number> | null = null

  private constructor(model: SentencePieceModel, source: string) {
    this.model = model
    const trainer = effectiveTrainerSpec(model)
    if (trainer.modelType !== ModelType.BPE && trainer.modelType !== ModelType.UNIGRAM) {
      const name = Object.entries(ModelType).find(([, v]) => v === trainer.modelType)?.[0] ?? String(trainer.modelType)
      throw new ModelError(`${source}: SentencePiece model type ${name} is not supported; glmtool reads UNIGRAM and BPE models only`, 'tokenizer-unsupported')
    }
    const n = model.pieces.length
    this.vocabSize = n
    this.types = new Uint8Array(n)
    this.scores = new Float32Array(n)
    this.byteOfId = new Int16Array(n).fill(-1)
    let unk = -1
    const userDefined: Uint8Array[] = []
    for (let i = 0; i < n; i++) {
      const p = model.pieces[i]
      this.types[i] = p.type
      this.scores[i] = p.score
      const key = byteKey(p.piece)
      const isMergeable = p.type === PieceType.NORMAL || p.type === PieceType.USER_DEFINED || p.type === PieceType.UNUSED
      const map = isMergeable ? this.mergeable : this.reserved
      // model_interface.cc InitializePieces: the same refusals.
      if (map.has(key)) throw new ModelError(`${source}: piece ${JSON.stringify(p.piece)} is defined twice`, 'tokenizer-model')
      map.set(key, i)
      if (p.type === PieceType.USER_DEFINED) userDefined.push(utf8.encode(p.piece))
      if (p.type === PieceType.UNKNOWN) {
        if (unk >= 0) throw new ModelError(`${source}: more than one <unk> piece`, 'tokenizer-model')
        unk = i
      }
      if (p.type === PieceType.BYTE) {
        if (!trainer.byteFallback) throw new ModelError(`${source}: byte piece ${p.piece} found although byte_fallback is false`, 'tokenizer-model')
        const b = pieceToByte(p.piece)
        if (b < 0) throw new ModelError(`${source}: byte piece ${p.piece} is invalid`, 'tokenizer-model')
        this.byteIds[b] = i
        this.byteOfId[i] = b
      }
    }
    if (unk < 0) throw new ModelError(`${source}: no <unk> piece`, 'tokenizer-model')
    this.unkId = unk
    this.hasUnused = this.types.includes(PieceType.UNUSED)
    // unigram_model.cc BuildTrie: the same refusal, the same words.
    if (trainer.modelType === ModelType.UNIGRAM && this.mergeable.size === 0) throw new ModelError(`${source}: no pieces are loaded (a UNIGRAM model needs normal or user-defined pieces)`, 'tokenizer-model')
    this.unigram = trainer.modelType === ModelType.UNIGRAM ? new UnigramModel(model.pieces, this.mergeable, unk) : null
    if (!this.unigram) {
      const pairs: number[] = []
      const chars: number[] = []
      const bigrams: number[] = []
      for (const [key, id] of this.mergeable) {
        const first = oneCharLen(key.charCodeAt(0))
        if (first >= key.length && key.length <= 4) chars.push(key.length, charCodeOfKey(key), id)
        // Every split at a character boundary into two mergeable pieces.
        let before = 0
        for (let at = first; at < key.length; at += oneCharLen(key.charCodeAt(at))) {
          bigrams.push(charCodeOfKey(key.slice(before, at)), charCodeOfKey(key.slice(at, Math.min(key.length, at + oneCharLen(key.charCodeAt(at))))))
          before = at
          const l = this.mergeable.get(key.slice(0, at))
          const r = l === undefined ? undefined : this.mergeable.get(key.slice(at))
          if (l !== undefined && r !== undefined) pairs.push(l, r, id)
        }
      }
      const bigramSet = new IntPairMap(bigrams.length / 2)
      for (let i = 0; i < bigrams.length; i += 2) bigramSet.set(bigrams[i], bigrams[i + 1], 0)
      this.bigrams = bigramSet
      const merges = new IntPairMap(pairs.length / 3)
      for (let i = 0; i < pairs.length; i += 3) merges.set(pairs[i], pairs[i + 1], pairs[i + 2])
      const charIds = new IntPairMap(chars.length / 3)
      for (let i = 0; i < chars.length; i += 3) charIds.set(chars[i], chars[i + 1], chars[i + 2])
      this.merges = merges
      this.charIds = charIds
    }
    let overlap: Map<number, number> | null = null
    for (const [key, id] of this.reserved) {
      const m = this.mergeable.get(key)
      if (m !== undefined) (overlap ??= new Map()).set(m, id)
    }
    this.reservedOfMergeable = overlap
    this.byteFallback = trainer.byteFallback
    this.unkSurface = trainer.unkSurface
    const controlId = (piece: string): number => {
      const id = this.pieceToId(piece)
      return this.types[id] === PieceType.CONTROL ? id : -1
    }
    this.bosId = controlId(trainer.bosPiece)
    this.eosId = controlId(trainer.eosPiece)
    this.padId = controlId(trainer.padPiece)
    this.matcher = new PrefixMatcher(userDefined)
    this.normalizerSpec = effectiveNormalizerSpec(model)
    this.normalizer = new Normalizer(this.normalizerSpec, trainer.treatWhitespaceAsSuffix, this.matcher, source)
    const denorm = model.denormalizerSpec
    this.denormalizer = denorm?.precompiledCharsmap && denorm.precompiledCharsmap.length > 0
      ? new Normalizer(effectiveNormalizerSpec({pieces: [], normalizerSpec: denorm}), false, null, `${source} (denormalizer)`)
      : null
  }

  /** Parse a ModelProto file's bytes; `source` names it in errors. */
  static load(bytes: Uint8Array, source = 'tokenizer model'): SentencePieceProcessor {
    return new SentencePieceProcessor(decodeModelProto(bytes, source), source)
  }

  static fromModel(model: SentencePieceModel, source = 'tokenizer model'): SentencePieceProcessor {
    return new SentencePieceProcessor(model, source)
  }

  /** The piece's id; <unk>'s id for a string that is no piece (as the library answers). */
  pieceToId(piece: string): number {
    const key = byteKey(piece)
    return this.reserved.get(key) ?? this.mergeable.get(key) ?? this.unkId
  }

  /** Whether `piece` is in the vocabulary (pieceToId alone cannot tell <unk> from unknown). */
  hasPiece(piece: string): boolean {
    const key = byteKey(piece)
    return this.reserved.has(key) || this.mergeable.has(key)
  }

  idToPiece(id: number): string {
    this.checkId(id)
    return this.model.pieces[id].piece
  }

  isControl(id: number): boolean {
    return this.types[id] === PieceType.CONTROL
  }

  isUnknown(id: number): boolean {
    return this.types[id] === PieceType.UNKNOWN
  }

  isByte(id: number): boolean {
    return this.types[id] === PieceType.BYTE
  }

  /** Text -> ids, as the library's encode(text) (no bos/eos). */
  encode(text: string): number[] {
    return this.encodeInto(text, null)
  }

  /** Text -> pieces, as the library's encode(text, out_type=str). */
  encodePieces(text: string): string[] {
    return this.encodeBoth(text).pieces
  }

  /** Ids and pieces of `text` together. */
  encodeBoth(text: string): {ids: number[], pieces: string[]} {
    const pieces: string[] = []
    const ids = this.encodeInto(text, pieces)
    return {ids, pieces}
  }

  /**
   * Normalize, segment and map to ids; with `pieces`, also the piece strings (a known piece's
   * own string, so no text is decoded except for <unk> runs).
   */
  private encodeInto(text: string, pieces: string[] | null): number[] {
    const normalized = this.normalizer.normalize(utf8.encode(text))
    const {starts, ids: seg} = this.segment(normalized)
    const ids: number[] = []
    const types = this.types
    const names = this.model.pieces
    let prevUnk = false
    for (let k = 0; k < seg.length; k++) {
      const id = seg[k]
      const isUnk = types[id] === PieceType.UNKNOWN
      if (!isUnk) {
        ids.push(id)
        pieces?.push(names[id].piece)
      } else {
        const from = starts[k]
        const to = k + 1 < seg.length ? starts[k + 1] : normalized.length
        if (this.byteFallback) {
          for (let i = from; i < to; i++) {
            const byteId = this.byteIds[normalized[i]]
            ids.push(byteId >= 0 ? byteId : this.unkId)
            pieces?.push(BYTE_PIECES[normalized[i]])
          }
        } else if (prevUnk) {
          // Consecutive unknown pieces become one <unk> (PopulateSentencePieceText).
          if (pieces) pieces[pieces.length - 1] += utf8Slice(normalized, from, to)
        } else {
          ids.push(id)
          pieces?.push(utf8Slice(normalized, from, to))
        }
      }
      prevUnk = isUnk
    }
    return ids
  }

  /** Ids -> text, as the library's decode(ids). Throws RangeError for an id out of range. */
  decode(ids: readonly number[]): string {
    const d = this.decoder()
    let out = ''
    for (const id of ids) out += d.push(id)
    return out + d.flush()
  }

  /**
   * An incremental decoder: push ids one at a time; each push returns the text that is now
   * final, and pushes + flush concatenate to decode(ids).
   */
  decoder(): SentencePieceDecoder {
    return new SentencePieceDecoder(this, this.normalizerSpec, this.unkSurface, this.byteOfId, this.denormalizer)
  }

  /** @internal Range check shared with the decoder. */
  checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(`token id ${id} is not a piece of this SentencePiece model (ids 0..${this.vocabSize - 1})`)
    }
  }

  /**
   * Segment the normalized bytes: the start (byte offset) and id of each output piece, the last
   * one ending at normalized.length. UNIGRAM: ./sentencepiece-unigram.ts; BPE: bpeSegment.
   */
  private segment(normalized: Uint8Array): {starts: Int32Array, ids: Int32Array} {
    if (normalized.length === 0) return {starts: new Int32Array(0), ids: new Int32Array(0)}
    return this.unigram ? this.unigram.encode(normalized) : this.bpeSegment(normalized)
  }

  /** The id of the pair's concatenation as a mergeable piece, or -1. */
  private mergedId(normalized: Uint8Array, leftId: number, rightId: number, from: number, to: number): number {
    if (leftId >= 0 && rightId >= 0) return this.merges!.get(leftId, rightId)
    // A side that is no piece (a character outside the vocabulary): look the bytes up.
    return this.mergeable.get(Buffer.from(normalized.buffer, normalized.byteOffset + from, to - from).toString('latin1')) ?? -1
  }

  /** The id the library gives a final symbol: PieceToId of its string (reserved pieces first). */
  private finalId(normalized: Uint8Array, sid: number, from: number, to: number): number {
    if (sid >= 0) return this.reservedOfMergeable?.get(sid) ?? sid
    const key = Buffer.from(normalized.buffer, normalized.byteOffset + from, to - from).toString('latin1')
    return this.reserved.get(key) ?? this.unkId
  }

  /**
   * BPE (bpe_model.cc Model::Encode). Symbols carry their mergeable piece id (-1 for a
   * character outside the vocabulary); a pair merges into the piece of its concatenation, found
   * by the pair of ids in `merges` (every split of every piece into two pieces, built once), so
   * the hot loop makes no strings.
   */
  private bpeSegment(normalized: Uint8Array): {starts: Int32Array, ids: Int32Array} {
    const end = normalized.length
    // Symbols: byte offset and length, piece id, links, frozen flag (user-defined symbols never merge).
    let count = 0
    const start = new Int32Array(end)
    const len = new Int32Array(end)
    const sid = new Int32Array(end)
    const frozen = new Uint8Array(end)
    const code = new Int32Array(end)
    const charIds = this.charIds!
    for (let pos = 0; pos < end;) {
      let n = this.matcher.size > 0 ? this.matcher.match(normalized, pos, end) : 0
      if (n > 0) {
        frozen[count] = 1
        sid[count] = this.mergeable.get(Buffer.from(normalized.buffer, normalized.byteOffset + pos, n).toString('latin1')) ?? -1
      } else {
        n = Math.min(end - pos, oneCharLen(normalized[pos]))
        code[count] = charCode(normalized, pos, n)
        sid[count] = charIds.get(n, code[count])
      }
      start[count] = pos
      len[count] = n
      count++
      pos += n
    }
    const prev = new Int32Array(count)
    const next = new Int32Array(count)
    for (let i = 0; i < count; i++) {
      prev[i] = i - 1
      next[i] = i + 1 < count ? i + 1 : -1
    }

    const agenda = new PairQueue()
    const scores = this.scores
    const types = this.types
    // Merged UNUSED piece id -> [left length, left id, right id] of the pair that made it.
    const revMerge = new Map<number, [number, number, number]>()
    const maybeAdd = (left: number, right: number): void => {
      if (left < 0 || right < 0 || frozen[left] || frozen[right]) return
      const size = len[left] + len[right]
      const id = this.mergedId(normalized, sid[left], sid[right], start[left], start[left] + size)
      if (id < 0) return
      agenda.push(left, right, scores[id], size, id)
      if (types[id] === PieceType.UNUSED) revMerge.set(id, [len[left], sid[left], sid[right]])
    }
    // Parts that merge independently (see `bigrams`), one queue after the other. With UNUSED
    // pieces the whole text is one part: which pair made an UNUSED piece is the last one queued,
    // and that order must stay the library's.
    const bigrams = this.hasUnused ? null : this.bigrams!
    for (let from = 0; from < count;) {
      let to = from + 1
      if (bigrams) while (to < count && !frozen[to - 1] && !frozen[to] && bigrams.get(code[to - 1], code[to]) >= 0) to++
      else to = count
      for (let i = from + 1; i < to; i++) maybeAdd(i - 1, i)
      from = to
      while (agenda.length > 0) {
        const left = agenda.topLeft()
        const right = agenda.topRight()
        const size = agenda.topSize()
        const id = agenda.topId()
        agenda.pop()
        // Stale entries: a side merged away (empty) or grew since the pair was queued.
        if (len[left] === 0 || len[right] === 0 || len[left] + len[right] !== size) continue
        len[left] = size
        sid[left] = id
        next[left] = next[right]
        if (next[right] >= 0) prev[next[right]] = left
        len[right] = 0
        maybeAdd(prev[left], left)
        maybeAdd(left, next[left])
      }
    }

    const outStart: number[] = []
    const outId: number[] = []
    const resegment = (from: number, n: number, id: number): void => {
      const fid = this.finalId(normalized, id, from, from + n)
      const pair = types[fid] === PieceType.UNUSED ? revMerge.get(fid) : undefined
      if (!pair) {
        outStart.push(from)
        outId.push(fid)
        return
      }
      resegment(from, pair[0], pair[1])
      resegment(from + pair[0], n - pair[0], pair[2])
    }
    for (let i = 0; i >= 0; i = next[i]) resegment(start[i], len[i], sid[i])
    return {starts: Int32Array.from(outStart), ids: Int32Array.from(outId)}
  }
}

/**
 * Binary max-heap of candidate merges: highest score first, then the leftmost (the order of
 * bpe_model.cc's SymbolPairComparator). Parallel typed arrays that grow by doubling, no
 * per-entry objects.
 */
class PairQueue {
  private lefts = new Int32Array(64)
  private rights = new Int32Array(64)
  private scores = new Float64Array(64)
  private sizes = new Int32Array(64)
  private ids = new Int32Array(64)
  length = 0

  topLeft(): number {
    return this.lefts[0]
  }

  topRight(): number {
    return this.rights[0]
  }

  topSize(): number {
    return this.sizes[0]
  }

  topId(): number {
    return this.ids[0]
  }

  push(left: number, right: number, score: number, size: number, id: number): void {
    if (this.length === this.lefts.length) this.grow()
    let i = this.length++
    const lefts = this.lefts
    const scores = this.scores
    // Sift up.
    while (i > 0) {
      const parent = (i - 1) >> 1
      const ps = scores[parent]
      if (!(score > ps || (score === ps && left < lefts[parent]))) break
      this.set(i, parent)
      i = parent
    }
    lefts[i] = left
    this.rights[i] = right
    scores[i] = score
    this.sizes[i] = size
    this.ids[i] = id
  }

  /** Drop the top entry. */
  pop(): void {
    const last = --this.length
    if (last <= 0) return
    const lefts = this.lefts
    const scores = this.scores
    const left = lefts[last]
    const right = this.rights[last]
    const score = scores[last]
    const size = this.sizes[last]
    const id = this.ids[last]
    let i = 0
    // Sift down.
    for (;;) {
      const a = 2 * i + 1
      if (a >= last) break
      const b = a + 1
      const child = b < last && (scores[b] > scores[a] || (scores[b] === scores[a] && lefts[b] < lefts[a])) ? b : a
      const cs = scores[child]
      if (!(cs > score || (cs === score && lefts[child] < left))) break
      this.set(i, child)
      i = child
    }
    lefts[i] = left
    this.rights[i] = right
    scores[i] = score
    this.sizes[i] = size
    this.ids[i] = id
  }

  private set(to: number, from: number): void {
    this.lefts[to] = this.lefts[from]
    this.rights[to] = this.rights[from]
    this.scores[to] = this.scores[from]
    this.sizes[to] = this.sizes[from]
    this.ids[to] = this.ids[from]
  }

  private grow(): void {
    const n = this.lefts.length * 2
    const widen = <T extends Int32Array | Float64Array>(a: T, b: T): T => {
      b.set(a)
      return b
    }
    this.lefts = widen(this.lefts, new Int32Array(n))
    this.rights = widen(this.rights, new Int32Array(n))
    this.scores = widen(this.scores, new Float64Array(n))
    this.sizes = widen(this.sizes, new Int32Array(n))
    this.ids = widen(this.ids, new Int32Array(n))
  }
}

/**
 * SentencePiece decoding as a left-to-right state machine (the library's Decode loop), so that
 * text can be handed out as soon as it is final: everything but an unfinished UTF-8 character
 * at the end of a run of byte pieces. With a denormalizer (no ChatGLM model has one) the whole
 * text is held until flush, since its rules may span pieces.
 */
export class SentencePieceDecoder {
  /** Byte values of a run of byte pieces not yet turned into text. */
  private pending: number[] = []
  /** Whether a piece's leading "▁" is still to be dropped (is_bos_ws). */
  private atStart = true
  /** Whether the previous piece had its leading "▁" dropped (bos_ws_seen). */
  private droppedSpace = false
  private emittedAny = false
  private held = ''

  constructor(
    private readonly sp: SentencePieceProcessor,
    private readonly spec: EffectiveNormalizerSpec,
    private readonly unkSurface: string,
    private readonly byteOfId: Int16Array,
    private readonly denormalizer: Normalizer | null,
  ) {}

  /** Add one id; returns the text that became final. Throws RangeError for an id out of range. */
  push(id: number): string {
    this.sp.checkId(id)
    const b = this.byteOfId[id]
    if (b >= 0) {
      this.pending.push(b)
      return this.out(this.takeBytes(false))
    }
    return this.out(this.takeBytes(true) + this.piece(id))
  }

  /**
   * A piece that decodes to nothing yet ends a byte run: what DecodePieces makes of "" (the
   * published ChatGLM2 tokenizer turns its special ids into "").
   */
  pushEmpty(): string {
    return this.pushLiteral('')
  }

  /**
   * Text that is no piece of the model, as DecodePieces decodes a piece string it does not know:
   * the string itself (after the byte run it ends). ChatGLM-6B's decode turns image ids into
   * "<image_k>" strings and decodes them so.
   */
  pushLiteral(literal: string): string {
    const text = this.takeBytes(true)
    if (this.droppedSpace || this.emittedAny) this.atStart = false
    this.droppedSpace = false
    this.emittedAny ||= literal.length > 0 || text.length > 0
    return this.out(text + literal)
  }

  /** The rest: an unfinished byte run decodes to U+FFFD per byte. */
  flush(): string {
    const text = this.out(this.takeBytes(true))
    if (!this.denormalizer) return text
    const all = this.held
    this.held = ''
    return Buffer.from(this.denormalizer.normalize(utf8.encode(all))).toString('utf8')
  }

  private out(text: string): string {
    if (!this.denormalizer) return text
    this.held += text
    return ''
  }

  /** Decode one non-byte piece (DecodeSentencePiece), after its preceding byte run. */
  private piece(id: number): string {
    if (this.droppedSpace || this.emittedAny) this.atStart = false
    let text: string
    let dropped = false
    if (this.sp.isControl(id)) {
      text = ''
    } else if (this.sp.isUnknown(id)) {
      text = this.unkSurface
    } else {
      let piece = this.sp.model.pieces[id].piece
      if (this.atStart && (this.spec.addDummyPrefix || this.spec.removeExtraWhitespaces) && piece.startsWith(META)) {
        piece = piece.slice(META.length)
        // With remove_extra_whitespaces, every leading "▁" goes until some text is out.
        dropped = !this.spec.removeExtraWhitespaces
      }
      text = piece.replaceAll(META, ' ')
    }
    this.droppedSpace = dropped
    this.emittedAny ||= text.length > 0
    return text
  }

  /**
   * Turn pending bytes into text: whole valid characters, U+FFFD for each malformed byte. An
   * incomplete character at the end waits for more bytes unless the run has ended.
   */
  private takeBytes(runEnded: boolean): string {
    const bytes = this.pending
    if (bytes.length === 0) return ''
    const buf = Uint8Array.from(bytes)
    let text = ''
    let pos = 0
    while (pos < buf.length) {
      const lead = buf[pos]
      const need = lead < 0x80 ? 1 : (lead & 0xe0) === 0xc0 ? 2 : (lead & 0xf0) === 0xe0 ? 3 : (lead & 0xf8) === 0xf0 ? 4 : 1
      if (!runEnded && buf.length - pos < need) break
      const [cp, n] = decodeUtf8Char(buf, pos, buf.length)
      text += cp < 0 ? REPLACEMENT : String.fromCodePoint(cp)
      pos += n
    }
    this.pending = bytes.slice(pos)
    if (text.length > 0) this.emittedAny = true
    return text
  }
}
