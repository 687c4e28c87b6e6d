/**
 * SentencePiece's text normalizer, byte for byte as the library (0.1.97) applies it before
 * segmentation: the model's precompiled charsmap (nmt_nfkc in ChatGLM-6B's ice_text.model;
 * none, i.e. identity, in ChatGLM2-6B's tokenizer.model), then whitespace handling from the
 * NormalizerSpec. Everything works on UTF-8 bytes, as the library does, because the charsmap is
 * a trie over bytes and its matches need not end on a character boundary.
 *
 * Rules (sentencepiece normalizer.cc, Normalizer::Normalize / NormalizePrefix):
 * - At each position take, in order: the longest user-defined symbol (copied as is, never
 *   normalized), else the longest charsmap key (replaced by its string), else one UTF-8
 *   character (copied; a malformed byte becomes U+FFFD, consuming that byte only).
 * - remove_extra_whitespaces: drop leading spaces, collapse a space run to one space, drop
 *   trailing ones (the last step works on the output, so a literal U+2581 at the end goes too).
 * - add_dummy_prefix: one space in front (behind with TrainerSpec.treat_whitespace_as_suffix),
 *   unless the text is empty after the leading spaces are dropped.
 * - escape_whitespaces: every space of the output becomes U+2581 "▁".
 */
import {ModelError} from '../../errors.js'
import type {EffectiveNormalizerSpec} from './sentencepiece-model.js'

// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible space, is E2 96 81 in UTF-8 (written
// byte by byte below).
const SPACE = 0x20
/** U+FFFD as UTF-8. */
export const REPLACEMENT_UTF8 = [0xef, 0xbf, 0xbd]
const REPLACEMENT = Uint8Array.from(REPLACEMENT_UTF8)

/**
 * One character from `bytes[pos..end)`, by sentencepiece's DecodeUTF8 (util.cc): the code point
 * and its byte length, or -1 and length 1 when the bytes there are not a valid, shortest-form
 * encoding of a scalar value (surrogates and values past U+10FFFF are invalid too).
 */
export function decodeUtf8Char(bytes: Uint8Array, pos: number, end: number): [codePoint: number, length: number] {
  const b0 = bytes[pos]
  const len = end - pos
  if (b0 < 0x80) return [b0, 1]
  const trail = (k: number): boolean => (bytes[pos + k] & 0xc0) === 0x80
  if (len >= 2 && (b0 & 0xe0) === 0xc0) {
    const cp = ((b0 & 0x1f) << 6) | (bytes[pos + 1] & 0x3f)
    if (trail(1) && cp >= 0x80) return [cp, 2]
  } else if (len >= 3 && (b0 & 0xf0) === 0xe0) {
    const cp = ((b0 & 0x0f) << 12) | ((bytes[pos + 1] & 0x3f) << 6) | (bytes[pos + 2] & 0x3f)
    if (trail(1) && trail(2) && cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff)) return [cp, 3]
  } else if (len >= 4 && (b0 & 0xf8) === 0xf0) {
    const cp = ((b0 & 0x07) << 18) | ((bytes[pos + 1] & 0x3f) << 12) | ((bytes[pos + 2] & 0x3f) << 6) | (bytes[pos + 3] & 0x3f)
    if (trail(1) && trail(2) && trail(3) && cp >= 0x10000 && cp <= 0x10ffff) return [cp, 4]
  }
  return [-1, 1]
}

/** decodeUtf8Char's length for a valid character at bytes[pos], 0 for a malformed one. */
export function validCharLen(bytes: Uint8Array, pos: number, end: number): number {
  const b0 = bytes[pos]
  if (b0 < 0x80) return 1
  const len = end - pos
  if (len >= 2 && (b0 & 0xe0) === 0xc0) {
    const b1 = bytes[pos + 1]
    return (b1 & 0xc0) === 0x80 && (((b0 & 0x1f) << 6) | (b1 & 0x3f)) >= 0x80 ? 2 : 0
  }
  if (len >= 3 && (b0 & 0xf0) === 0xe0) {
    const b1 = bytes[pos + 1]
    const b2 = bytes[pos + 2]
    if ((b1 & 0xc0) !== 0x80 || (b2 & 0xc0) !== 0x80) return 0
    const cp = ((b0 & 0x0f) << 12) | ((b1 & 0x3f) << 6) | (b2 & 0x3f)
    return cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff) ? 3 : 0
  }
  if (len >= 4 && (b0 & 0xf8) === 0xf0) {
    const b1 = bytes[pos + 1]
    const b2 = bytes[pos + 2]
    const b3 = bytes[pos + 3]
    if ((b1 & 0xc0) !== 0x80 || (b2 & 0xc0) !== 0x80 || (b3 & 0xc0) !== 0x80) return 0
    const cp = ((b0 & 0x07) << 18) | ((b1 & 0x3f) << 12) | ((b2 & 0x3f) << 6) | (b3 & 0x3f)
    return cp >= 0x10000 && cp <= 0x10ffff ? 4 : 0
  }
  return 0
}

/**
 * How many bytes the character starting with `lead` takes, judged from the lead byte alone
 * (sentencepiece's OneCharLen); the segmenter splits normalized text with it.
 */
export function oneCharLen(lead: number): number {
  return lead < 0xc0 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4
}

/**
 * A longest-prefix matcher over byte strings: SentencePiece's PrefixMatcher, which finds the
 * user-defined symbols both in the normalizer and in the segmenter. A small trie of maps: the
 * symbol lists are short (ChatGLM-6B has 81).
 */
export class PrefixMatcher {
  private readonly root: TrieNode = {next: new Map(), terminal: false}
  readonly size: number

  constructor(symbols: Iterable<Uint8Array>) {
    let n = 0
    for (const sym of symbols) {
      if (sym.length === 0) continue
      let node = this.root
      for (const b of sym) {
        let child = node.next.get(b)
        if (!child) {
          child = {next: new Map(), terminal: false}
          node.next.set(b, child)
        }
        node = child
      }
      if (!node.terminal) n++
      node.terminal = true
    }
    this.size = n
  }

  /** Whether some symbol starts with byte `b`. */
  startsWith(b: number): boolean {
    return this.root.next.has(b)
  }

  /** Length of the longest symbol that `bytes[pos..end)` starts with, or 0. */
  match(bytes: Uint8Array, pos: number, end: number): number {
    let node: TrieNode | undefined = this.root
    let best = 0
    for (let i = pos; i < end; i++) {
      node = node.next.get(bytes[i])
      if (!node) break
      if (node.terminal) best = i + 1 - pos
    }
    return best
  }
}

interface TrieNode {
  next: Map<number, TrieNode>
  terminal: boolean
}

/**
 * A precompiled charsmap: [uint32 LE trie size][Darts-clone double array][NUL-terminated
 * replacement strings]. The trie maps a byte-string key to the offset of its replacement.
 */
export class CharsMap {
  private readonly units: Uint32Array
  private readonly replacements: Uint8Array

  constructor(blob: Uint8Array, source: string) {
    const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength)
    // normalizer.cc DecodePrecompiledCharsMap: the same two checks, the same failure.
    if (blob.length <= 4) throw new ModelError(`${source}: blob for normalization rule is broken`, 'tokenizer-model')
    const trieSize = view.getUint32(0, true)
    if (trieSize >= blob.length) throw new ModelError(`${source}: normalization trie size exceeds the blob size`, 'tokenizer-model')
    const count = Math.floor(trieSize / 4)
    this.units = new Uint32Array(count)
    for (let i = 0; i < count; i++) this.units[i] = view.getUint32(4 + 4 * i, true)
    this.replacements = blob.subarray(4 + trieSize)
  }

  /**
   * The longest key that `bytes[pos..end)` starts with: [key length, replacement start,
   * replacement end] in this.replacements' coordinates, or null. Darts-clone's
   * commonPrefixSearch: a unit holds label (bits 0-7, plus bit 31 for leaves, so a leaf never
   * matches a label), has-leaf (bit 8) and the offset to its children (bits 10-30, scaled by
   * 2^8 when bit 9 is set); a leaf's value is its low 31 bits.
   */
  longestMatch(bytes: Uint8Array, pos: number, end: number): [number, number, number] | null {
    const n = this.matchLength(bytes, pos, end)
    return n === 0 ? null : [n, this.matchStart, this.matchStop]
  }

  /** Whether some key starts with byte `b` (the first step of the trie walk succeeds). */
  startsWith(b: number): boolean {
    const units = this.units
    if (units.length === 0) return false
    const nodePos = offsetOf(units[0]) ^ b
    return nodePos < units.length && (units[nodePos] & 0x800000ff) >>> 0 === b
  }

  /** Start and end (in replacementBytes) of the last matchLength's replacement. */
  matchStart = 0
  matchStop = 0

  /** longestMatch without the allocation: the key length (0: none), replacement in matchStart/matchStop. */
  matchLength(bytes: Uint8Array, pos: number, end: number): number {
    const units = this.units
    if (units.length === 0) return 0
    let nodePos = offsetOf(units[0])
    let bestLen = 0
    let bestValue = 0
    for (let i = pos; i < end; i++) {
      const c = bytes[i]
      nodePos ^= c
      if (nodePos >= units.length) break
      const unit = units[nodePos]
      if ((unit & 0x800000ff) >>> 0 !== c) break
      nodePos ^= offsetOf(unit)
      if (unit & 0x100) {
        if (nodePos >= units.length) break
        bestLen = i + 1 - pos
        bestValue = units[nodePos] & 0x7fffffff
      }
    }
    if (bestLen === 0) return 0
    let stop = bestValue
    const r = this.replacements
    while (stop < r.length && r[stop] !== 0) stop++
    this.matchStart = bestValue
    this.matchStop = stop
    return bestLen
  }

  get replacementBytes(): Uint8Array {
    return this.replacements
  }

  replacement(start: number, stop: number): Uint8Array {
    return this.replacements.subarray(start, stop)
  }
}

function offsetOf(unit: number): number {
  return (unit >>> 10) << ((unit & 0x200) >>> 6)
}

/** A growable byte buffer. */
export class ByteSink {
  bytes = new Uint8Array(64)
  length = 0

  push(b: number): void {
    if (this.length === this.bytes.length) this.grow(1)
    this.bytes[this.length++] = b
  }

  pushAll(src: ArrayLike<number>): void {
    if (this.length + src.length > this.bytes.length) this.grow(src.length)
    for (let i = 0; i < src.length; i++) this.bytes[this.length++] = src[i]
  }

  endsWith(tail: readonly number[]): boolean {
    if (this.length < tail.length) return false
    for (let i = 0; i < tail.length; i++) if (this.bytes[this.length - tail.length + i] !== tail[i]) return false
    return true
  }

  view(): Uint8Array {
    return this.bytes.subarray(0, this.length)
  }

  private grow(extra: number): void {
    let cap = this.bytes.length * 2
    while (cap < this.length + extra) cap *= 2
    const next = new Uint8Array(cap)
    next.set(this.bytes.subarray(0, this.length))
    this.bytes = next
  }
}

export class Normalizer {
  private readonly charsMap: CharsMap | null
  /** ASCII bytes that a user-defined symbol or a charsmap key starts with (1) or not (0). */
  private readonly specialStart = new Uint8Array(128)

  /**
   * `matcher` holds the user-defined symbols, which pass through unnormalized;
   * `whitespaceAsSuffix` is TrainerSpec.treat_whitespace_as_suffix (the dummy space goes last).
   */
  constructor(
    private readonly spec: EffectiveNormalizerSpec,
    private readonly whitespaceAsSuffix: boolean,
    private readonly matcher: PrefixMatcher | null,
    source: string,
  ) {
    this.charsMap = spec.precompiledCharsmap.length > 0 ? new CharsMap(spec.precompiledCharsmap, source) : null
    for (let b = 0; b < 128; b++) {
      if (matcher?.startsWith(b) || this.charsMap?.startsWith(b)) this.specialStart[b] = 1
    }
  }

  /** The normalized UTF-8 bytes of `input` (UTF-8). */
  normalize(input: Uint8Array): Uint8Array {
    const end = input.length
    let pos = 0
    const removeExtra = this.spec.removeExtraWhitespaces
    const escape = this.spec.escapeWhitespaces
    const matcher = this.matcher && this.matcher.size > 0 ? this.matcher : null
    const charsMap = this.charsMap
    const replacements = charsMap ? charsMap.replacementBytes : REPLACEMENT
    // One step of NormalizePrefix: emit src[from..to), consume the returned byte count. No
    // per-character allocation: this runs once per input character.
    let src: Uint8Array = input
    let from = 0
    let to = 0
    const step = (): number => {
      if (matcher) {
        const n = matcher.match(input, pos, end)
        if (n > 0) {
          src = input
          from = pos
          to = pos + n
          return n
        }
      }
      if (charsMap) {
        const n = charsMap.matchLength(input, pos, end)
        if (n > 0) {
          src = replacements
          from = charsMap.matchStart
          to = charsMap.matchStop
          return n
        }
      }
      const n = validCharLen(input, pos, end)
      // Malformed (IsValidDecodeUTF8 false): U+FFFD for this one byte. A U+FFFD spelled
      // EF BF BD in the input is a valid character and is copied like any other.
      if (n === 0) {
        src = REPLACEMENT
        from = 0
        to = 3
        return 1
      }
      src = input
      from = pos
      to = pos + n
      return n
    }

    if (removeExtra) {
      while (pos < end) {
        const n = step()
        if (!(to - from === 1 && src[from] === SPACE)) break
        pos += n
      }
    }
    if (pos >= end) return new Uint8Array(0)

    // Each input byte gives at most 3 output bytes unless the charsmap expands it further; the
    // buffer grows when it must.
    let out = new Uint8Array(end * 3 + 8)
    let length = 0
    const reserve = (extra: number): void => {
      if (length + extra <= out.length) return
      let cap = out.length * 2
      while (cap < length + extra) cap *= 2
      const next = new Uint8Array(cap)
      next.set(out.subarray(0, length))
      out = next
    }
    const addSpace = (): void => {
      reserve(3)
      if (escape) {
        out[length++] = 0xe2
        out[length++] = 0x96
        out[length++] = 0x81
      } else {
        out[length++] = SPACE
      }
    }
    if (!this.whitespaceAsSuffix && this.spec.addDummyPrefix) addSpace()

    let prevSpace = removeExtra
    while (pos < end) {
      const b = input[pos]
      // Fast path: a plain ASCII byte other than a space that no user-defined symbol or charsmap
      // key starts with is copied as it is.
      if (b < 0x80 && b !== SPACE && !this.specialStart[b]) {
        reserve(1)
        out[length++] = b
        prevSpace = false
        pos++
        continue
      }
      const n = step()
      let k = from
      if (prevSpace) while (k < to && src[k] === SPACE) k++
      if (k < to) {
        reserve(3 * (to - k))
        for (; k < to; k++) {
          const c = src[k]
          if (escape && c === SPACE) {
            out[length++] = 0xe2
            out[length++] = 0x96
            out[length++] = 0x81
          } else {
            out[length++] = c
          }
        }
        prevSpace = src[to - 1] === SPACE
      }
      pos += n
      if (!removeExtra) prevSpace = false
    }

    if (removeExtra) {
      if (escape) {
        while (length >= 3 && out[length - 3] === 0xe2 && out[length - 2] === 0x96 && out[length - 1] === 0x81) length -= 3
      } else {
        while (length >= 1 && out[length - 1] === SPACE) length--
      }
    }
    if (this.whitespaceAsSuffix && this.spec.addDummyPrefix) addSpace()
    return out.subarray(0, length)
  }
}
