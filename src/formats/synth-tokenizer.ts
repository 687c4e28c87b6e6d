/**
 * Synthetic tokenizer files for synthetic model directories: a SentencePiece BPE model with the
 * real vocabulary size, the real special-token ids and the real normalizer settings of each
 * generation, filled with plausible pieces, plus the tokenizer_config.json the published repos
 * ship. Deterministic: the same arch always gives the same bytes (for v1, on the same Node
 * version: its NFKC table comes from the runtime's Unicode data).
 *
 * Facts about the real files, and where they come from:
 * - ChatGLM-6B ice_text.model has 130344 pieces (ChatGLM-6B issue #987: len(get_vocab()) with
 *   num_image_tokens 0). chatglm.cpp's tokenizer test cases (real model, real ids) pin the layout:
 *   "你好" -> [5, 74874, ...] so 5 is a lone "▁"; "\n" -> 4 (<n>); four spaces -> 130011 and a tab
 *   -> 130008, so <|tab|> is 130008 and <|blank_k|> is 130007 + k; the emoji 👋 (F0 9F 91 8B) ->
 *   130328 130247 130233 130227, so <0xXX> is 130088 + XX. [MASK] 130000, [gMASK] 130001,
 *   <sop> 130004, <eop> 130005 are in config.json (spec section 1); the published
 *   tokenization_chatglm.py lists its specials as [MASK] [gMASK] [sMASK] <unused_0> <sop> <eop>
 *   <ENC> <dBLOCK>, then <|tab|>, <|blank_2..80|> and 256 bytes, which fills 130000..130343
 *   exactly; so 130003 is <unused_0>, 130006 <ENC>, 130007 <dBLOCK>.
 * - ice_text.model normalizes with NFKC (maintainers, ChatGLM-6B issue #8: "，" comes out as ",";
 *   chatglm.cpp: "问：" -> 问 + the id of ":"). So v1 here carries an nmt_nfkc-style
 *   precompiled_charsmap built below.
 * - ChatGLM2-6B tokenizer.model: 64789 pieces, the five wrapper specials following at 64789..64793
 *   (spec section 4; ChatGLM2-6B issue #288: vocab 64794). chatglm.cpp's tests: "\n" -> 13 and
 *   👋 -> 243 162 148 142, so <0xXX> is 3 + XX; "\t" -> 12 (byte fallback, no tab piece);
 *   "你好" -> "▁你" + "好"; "：" and "！" keep their own ids (no NFKC: identity normalizer); four
 *   spaces of indentation survive (remove_extra_whitespaces false); "1" is its own piece after
 *   "▁" in both generations (split digits: no multi-digit pieces here).
 * Guessed (no public source found): ice_text.model's remove_extra_whitespaces is taken as
 * sentencepiece's default (true), consistent with the wrapper turning every run of spaces, tabs
 * and newlines into its own tokens before SentencePiece sees the text; the [MASK]-style
 * specials are CONTROL pieces, as the published v1 tokenizer appends them.
 */
import {
  encodeModelProto, ModelType, PieceType,
  type NormalizerSpec, type SentencePiece, type SentencePieceModel, type TrainerSpec,
} from '../runtime/sentencepiece-model.js'

export type SynthTokenizerArch = 'chatglm-6b' | 'chatglm2-6b'

export interface SynthTokenizer {
  fileName: 'ice_text.model' | 'tokenizer.model'
  /** The serialized SentencePiece ModelProto. */
  bytes: Buffer
  /** tokenizer_config.json contents, as the published repository ships them. */
  tokenizerConfig: Record<string, unknown>
}

/** Vocabulary sizes of the real files (see the header). */
export const V1_PIECE_COUNT = 130344
export const V2_PIECE_COUNT = 64789

const META = '\u2581' // ▁, SentencePiece's escaped space

const AUTO_MAP = {AutoTokenizer: ['tokenization_chatglm.ChatGLMTokenizer', null]}

// ---------------------------------------------------------------------------------------------
// Vocabulary material. Plain data: common English and Chinese words and characters, in rough
// frequency order, so that synthetic text segments into believable pieces.

const ENGLISH_WORDS = (
  'the of and to in is that for it as was with be by on not he this are or his from at which but ' +
  'have an had they you were their one all we can her has there been if more when will would who ' +
  'so no what about out up into do its time only other some could them then than these two may ' +
  'first any like now my such make over our even most after also did many before must through ' +
  'back years where much your way well down should because each just those people how too little ' +
  'state good very world still own see men work long get here between both life being under never ' +
  'day same another know while last might us great old year off come since against go came right ' +
  'used take three home small found thought went say part once high upon school every does got ' +
  'left number course war until always away something fact though water less public put think ' +
  'almost hand enough far took head yet government system better set told nothing night end why ' +
  'called find going look asked later knew point next program city business give group young let ' +
  'room side social given present several order national possible rather second face per among ' +
  'form important often things looking early white case become large big need four within felt ' +
  'along children saw best ever least power development light thing family interest want mind ' +
  'country area others although turned done open service certain kind problem began different door ' +
  'help sense means whole matter perhaps itself name example action company hands local show ' +
  'history today across past quite anything seen death week experience really language model ' +
  'token tokenizer chat question answer round hello greeting assistant user system prompt python ' +
  'code data string list value key index input output error file path config print def main ' +
  'return import class self function const var else elif while true false none null async await ' +
  'sentence piece vocabulary training inference weight layer attention embedding'
).split(' ')

/** Frequent Chinese characters, most frequent first (duplicates are dropped when used). */
const COMMON_HANZI =
  '的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所' +
  '去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从知' +
  '头体相长月力理尔点几已正开本手明问两意现平话外实样工很高量全动做文间把等被由老给信次感部结路题身美战' +
  '回重新产最机因民想性使业水问已提应制内关合化期加东西南北通员直接电气电话万样什么政务比任各收果反情报' +
  '清华智能助欢迎何晚睡着该怎办答谢请今天明候朋友喜欢需技术研究统数据网络计算程序码函件户服' +
  '况结果容活孩师校医院健康建议非常些那还或者并且然而虽过只就也都可能够希望觉得认为始束继续语言模型训练' +
  '世界京英翻译帮助名字早午饭菜吃喝茶酒书读写字画歌唱跳舞玩游戏运球跑步车船飞站城市山河海湖花草树木' +
  '鸟鱼狗猫马牛羊春夏秋冬风雨雪云阳光星空色红黄蓝绿白黑大小多少长短高低快慢新旧好坏对错真假冷热'

/** Frequent Chinese words; each also brings its prefixes, so BPE can merge up to it. */
const CHINESE_WORDS = (
  '你好 我是 人工智能 助手 很高兴 见到 欢迎 任何 问题 晚上 睡不着 应该 怎么办 可以 什么 我们 他们 中国 没有 ' +
  '自己 这个 一个 时候 因为 所以 但是 如果 已经 知道 现在 工作 学习 模型 语言 训练 生成 世界 北京 清华大学 ' +
  '中文 英文 翻译 回答 帮助 谢谢 请问 今天 明天 天气 时间 朋友 喜欢 需要 进行 使用 发展 经济 社会 国家 政府 ' +
  '企业 技术 研究 系统 数据 信息 网络 计算机 程序 代码 函数 文件 用户 服务 方法 情况 过程 结果 内容 生活 孩子 ' +
  '老师 学生 学校 医院 健康 身体 睡眠 建议 重要 非常 一些 这些 那些 还是 或者 并且 然后 而且 虽然 不过 只是 ' +
  '就是 也是 都是 不是 可能 能够 希望 觉得 认为 开始 结束 继续 智能 高兴 问我 见到你'
).split(' ')

// ---------------------------------------------------------------------------------------------
// Pieces.

function range(from: number, to: number): string[] {
  const out: string[] = []
  for (let cp = from; cp <= to; cp++) out.push(String.fromCodePoint(cp))
  return out
}

const LOWER = range(0x61, 0x7a)
const UPPER = range(0x41, 0x5a)

/** Single characters every vocabulary starts from. */
function singleChars(): string[] {
  return [
    ...range(0x21, 0x7e), // printable ASCII; the space is "▁" after escaping
    ...range(0xa1, 0xff).filter((c) => c !== '\u00ad'), // Latin-1 (minus the invisible soft hyphen)
    ...range(0x100, 0x17f), // Latin Extended-A
    ...range(0x391, 0x3a9), ...range(0x3b1, 0x3c9), // Greek
    ...range(0x410, 0x44f), // Cyrillic
    ...range(0x2010, 0x2027), ...range(0x2030, 0x203a), '\u20ac', // general punctuation, €
    ...range(0x3001, 0x3011), ...range(0x3014, 0x301f), // CJK punctuation 、。〈〉《》「」『』【】...
    ...range(0x3041, 0x3096), ...range(0x30a1, 0x30fa), // kana
    ...range(0x4e00, 0x9fa5), // CJK Unified Ideographs, the GB-era block both vocabularies cover
    ...range(0xff01, 0xff5e), // full-width forms (v1 drops them: NFKC maps them to ASCII)
  ]
}

/** A word and all its prefixes of two or more characters, shortest first. */
function* prefixChain(word: string): Generator<string> {
  const chars = [...word]
  for (let k = 2; k <= chars.length; k++) yield chars.slice(0, k).join('')
}

/** Chinese characters by rank: COMMON_HANZI first, then the rest of the CJK block in code order. */
function hanziRanking(): string[] {
  const seen = new Set<string>()
  const out: string[] = []
  for (const c of [...COMMON_HANZI, ...range(0x4e00, 0x9fa5)]) {
    if (!seen.has(c)) {
      seen.add(c)
      out.push(c)
    }
  }
  return out
}

/** Bigrams of ranked characters, most frequent pairs first (anti-diagonals of rank i + j). */
function* hanziBigrams(ranking: string[]): Generator<string> {
  for (let s = 0; s < 2 * ranking.length - 1; s++) {
    for (let i = Math.max(0, s - ranking.length + 1); i <= Math.min(s, ranking.length - 1); i++) {
      yield ranking[i] + ranking[s - i]
    }
  }
}

/**
 * NORMAL pieces in merge-priority order (score descending). Every multi-character piece is
 * one character longer than a piece listed before it, so BPE can always build it.
 */
function* normalPieces(v1: boolean): Generator<string> {
  yield META
  yield* singleChars()
  if (!v1) {
    // Indentation pieces; v2 keeps runs of spaces (v1's wrapper turns them into <|blank_k|>).
    for (let k = 2; k <= 16; k++) yield META.repeat(k)
  }
  for (const c of [...LOWER, ...UPPER]) yield META + c
  for (const a of LOWER) for (const b of LOWER) yield a + b
  for (const a of LOWER) for (const b of LOWER) yield META + a + b
  for (const w of ENGLISH_WORDS) {
    const cap = w[0].toUpperCase() + w.slice(1)
    yield* prefixChain(w)
    yield* prefixChain(META + w)
    yield* prefixChain(META + cap)
  }
  const ranking = hanziRanking()
  // v2 merges the dummy-prefix space into a following common character ("▁你"); v1 never does.
  if (!v1) for (const c of ranking.slice(0, 600)) yield META + c
  for (const w of CHINESE_WORDS) yield* prefixChain(w)
  const bigrams = hanziBigrams(ranking)
  for (let i = 0; i < 20000; i++) yield bigrams.next().value as string
  for (const a of LOWER) {
    for (const b of LOWER) {
      for (const c of LOWER) {
        yield a + b + c
        yield META + a + b + c
      }
    }
  }
  yield* bigrams // filler: as many as the vocabulary size needs
}

function bytePieces(): SentencePiece[] {
  return Array.from({length: 256}, (_, b) => ({
    piece: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, score: 0, type: PieceType.BYTE,
  }))
}

/** Append `count` NORMAL pieces not already in `seen`, with strictly decreasing scores. */
function appendNormal(out: SentencePiece[], seen: Set<string>, count: number, v1: boolean): void {
  let k = 0
  for (const piece of normalPieces(v1)) {
    if (k === count) return
    // v1 text is NFKC-normalized before segmentation: a non-NFKC piece could never match.
    if (seen.has(piece) || (v1 && piece.normalize('NFKC') !== piece)) continue
    seen.add(piece)
    // BPE's merge priority; sentencepiece's BPE trainer also scores pieces -0, -1, -2, ...
    out.push({piece, score: k === 0 ? 0 : -k, type: PieceType.NORMAL})
    k++
  }
  if (k < count) throw new Error(`synth tokenizer: only ${k} of ${count} normal pieces could be generated`)
}

function special(piece: string, type: PieceType): SentencePiece {
  return {piece, score: 0, type}
}

function v1Model(): SentencePieceModel {
  const pieces: SentencePiece[] = [
    special('<unk>', PieceType.UNKNOWN),
    special('<s>', PieceType.CONTROL),
    special('</s>', PieceType.CONTROL),
    special('<pad>', PieceType.CONTROL), // config.json pad_token_id 3
    special('<n>', PieceType.USER_DEFINED), // the wrapper's stand-in for "\n"
  ]
  const seen = new Set(pieces.map((p) => p.piece))
  const tail: SentencePiece[] = [
    ...['[MASK]', '[gMASK]', '[sMASK]', '<unused_0>', '<sop>', '<eop>', '<ENC>', '<dBLOCK>']
      .map((p) => special(p, PieceType.CONTROL)),
    special('<|tab|>', PieceType.USER_DEFINED),
    ...Array.from({length: 79}, (_, i) => special(`<|blank_${i + 2}|>`, PieceType.USER_DEFINED)),
    ...bytePieces(),
  ]
  for (const p of tail) seen.add(p.piece)
  appendNormal(pieces, seen, V1_PIECE_COUNT - pieces.length - tail.length, true)
  pieces.push(...tail)
  const trainerSpec: TrainerSpec = {
    modelType: ModelType.BPE,
    vocabSize: V1_PIECE_COUNT,
    splitDigits: true,
    userDefinedSymbols: ['<n>'],
    byteFallback: true, // published SPTokenizer: byte_fallback=True
    unkId: 0, bosId: 1, eosId: 2, padId: 3,
  }
  const normalizerSpec: NormalizerSpec = {
    name: 'nmt_nfkc',
    precompiledCharsmap: buildPrecompiledCharsmap(nmtNfkcRules()),
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
  }
  return {pieces, trainerSpec, normalizerSpec}
}

function v2Model(): SentencePieceModel {
  const pieces: SentencePiece[] = [
    special('<unk>', PieceType.UNKNOWN),
    special('<s>', PieceType.CONTROL),
    special('</s>', PieceType.CONTROL),
    ...bytePieces(),
  ]
  // The wrapper's own specials (ids 64789..64793) are kept out of the model, so that a piece
  // lookup can never confuse "sop" the special with "sop" the letters.
  const seen = new Set([...pieces.map((p) => p.piece), '[MASK]', '[gMASK]', '[sMASK]', 'sop', 'eop'])
  appendNormal(pieces, seen, V2_PIECE_COUNT - pieces.length, false)
  const trainerSpec: TrainerSpec = {
    modelType: ModelType.BPE,
    vocabSize: V2_PIECE_COUNT,
    splitDigits: true,
    allowWhitespaceOnlyPieces: true,
    byteFallback: true,
    unkId: 0, bosId: 1, eosId: 2, padId: -1, // the wrapper pads with <unk> (pad_token_id 0)
  }
  const normalizerSpec: NormalizerSpec = {
    name: 'identity',
    addDummyPrefix: true,
    removeExtraWhitespaces: false,
    escapeWhitespaces: true,
  }
  return {pieces, trainerSpec, normalizerSpec}
}

/**
 * tokenizer_config.json of THUDM/chatglm-6b: the token names and flags the published
 * ChatGLMTokenizer takes (its __init__ defaults); the file itself was not at hand to compare.
 */
function v1TokenizerConfig(): Record<string, unknown> {
  return {
    name_or_path: 'THUDM/chatglm-6b',
    bos_token: '<sop>',
    eos_token: '<eop>',
    end_token: '</s>',
    gmask_token: '[gMASK]',
    mask_token: '[MASK]',
    pad_token: '<pad>',
    unk_token: '<unk>',
    remove_space: false,
    do_lower_case: false,
    num_image_tokens: 0,
    padding_side: 'left',
    tokenizer_class: 'ChatGLMTokenizer',
    auto_map: structuredClone(AUTO_MAP),
  }
}

/** tokenizer_config.json of THUDM/chatglm2-6b, key for key as the repository publishes it. */
function v2TokenizerConfig(): Record<string, unknown> {
  return {
    name_or_path: 'THUDM/chatglm2-6b',
    remove_space: false,
    do_lower_case: false,
    tokenizer_class: 'ChatGLMTokenizer',
    auto_map: structuredClone(AUTO_MAP),
  }
}

/** The structured model, before serialization (for tests and tools that want the pieces). */
export function synthTokenizerModel(arch: SynthTokenizerArch): SentencePieceModel {
  return arch === 'chatglm-6b' ? v1Model() : v2Model()
}

const built = new Map<SynthTokenizerArch, Buffer>()

/** Synthetic tokenizer files for `arch`: the model bytes and tokenizer_config.json contents. */
export function synthTokenizer(arch: SynthTokenizerArch): SynthTokenizer {
  let bytes = built.get(arch)
  if (!bytes) {
    // Building takes a second (130k pieces, an NFKC table); the result never changes.
    bytes = encodeModelProto(synthTokenizerModel(arch))
    built.set(arch, bytes)
  }
  return arch === 'chatglm-6b'
    ? {fileName: 'ice_text.model', bytes: Buffer.from(bytes), tokenizerConfig: v1TokenizerConfig()}
    : {fileName: 'tokenizer.model', bytes: Buffer.from(bytes), tokenizerConfig: v2TokenizerConfig()}
}

// ---------------------------------------------------------------------------------------------
// Normalization table. SentencePiece applies a "precompiled charsmap": at each position it takes
// the longest key (UTF-8 bytes) that matches and emits that key's replacement, else copies one
// character. The blob is [uint32 LE trie size][Darts-clone double array][replacements, each
// NUL-terminated]; the trie maps a key to the byte offset of its replacement.

/**
 * NFKC plus extras in the spirit of sentencepiece's nmt_nfkc ("NFKC with some additional
 * normalization around spaces", its normalization.md): control characters dropped; tab,
 * newlines and invisible separators become a space. Not byte-identical to the library's
 * built-in table, which nothing here needs: a tokenizer reads the table from the file. Built from the
 * runtime's own Unicode tables (String.prototype.normalize), over planes 0-2 where every
 * compatibility mapping lives. Keys are single characters and canonical decompositions (so
 * "e" + U+0301 composes to "é").
 */
export function nmtNfkcRules(): Map<string, string> {
  const rules = new Map<string, string>()
  const add = (from: string, to: string): void => {
    if (from !== to) rules.set(from, to)
  }
  for (let cp = 1; cp < 0x30000; cp++) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue // surrogates are not characters
    const c = String.fromCodePoint(cp)
    add(c, c.normalize('NFKC'))
    const decomposed = c.normalize('NFD')
    if (decomposed !== c) add(decomposed, decomposed.normalize('NFKC'))
  }
  for (const cp of [...rangeCps(0x01, 0x08), 0x0b, ...rangeCps(0x0e, 0x1f), 0x7f]) {
    rules.set(String.fromCodePoint(cp), '')
  }
  for (const cp of [0x09, 0x0a, 0x0c, 0x0d, 0x1680, 0x200b, 0x2028, 0x2029, 0xfeff]) {
    rules.set(String.fromCodePoint(cp), ' ')
  }
  return rules
}

function rangeCps(from: number, to: number): number[] {
  return Array.from({length: to - from + 1}, (_, i) => from + i)
}

/** Serialize `rules` (key -> replacement) as a SentencePiece precompiled_charsmap blob. */
export function buildPrecompiledCharsmap(rules: Map<string, string>): Uint8Array {
  const replacements: Buffer[] = []
  const offsetOf = new Map<string, number>()
  let size = 0
  const keys: Array<[Uint8Array, number]> = []
  for (const [from, to] of rules) {
    if (from.length === 0 || from.includes('\0')) throw new Error(`charsmap key ${JSON.stringify(from)} is not allowed`)
    let offset = offsetOf.get(to)
    if (offset === undefined) {
      offset = size
      offsetOf.set(to, offset)
      const bytes = Buffer.from(to + '\0', 'utf8')
      replacements.push(bytes)
      size += bytes.length
    }
    keys.push([Buffer.from(from, 'utf8'), offset])
  }
  const trie = buildDoubleArray(keys)
  const header = Buffer.alloc(4)
  header.writeUInt32LE(trie.byteLength, 0)
  const trieBytes = Buffer.from(trie.buffer, trie.byteOffset, trie.byteLength)
  return new Uint8Array(Buffer.concat([header, trieBytes, ...replacements]))
}

interface TrieNode {
  children: Map<number, TrieNode>
  value: number // -1: no key ends here
}

/**
 * A Darts-clone double array (the trie format sentencepiece reads) for byte-string keys.
 * Unit layout, as darts.h defines it: bits 0-7 label, bit 8 "has a leaf child", bits 10-30
 * offset to the children's base (offsets here stay below 2^21, so bit 9, the scaled form, is
 * never needed); a leaf unit holds its value with bit 31 set. A node at position p with base b
 * keeps its child labelled c at b ^ c and its value, when a key ends there, at b ^ 0. Each base
 * serves one node only, which is what makes the label check in a lookup sufficient.
 */
function buildDoubleArray(keys: Array<[Uint8Array, number]>): Uint32Array {
  const root: TrieNode = {children: new Map(), value: -1}
  for (const [key, value] of keys) {
    let node = root
    for (const byte of key) {
      let next = node.children.get(byte)
      if (!next) {
        next = {children: new Map(), value: -1}
        node.children.set(byte, next)
      }
      node = next
    }
    node.value = value
  }

  // Free units form a doubly linked list, so finding a base skips the occupied ones quickly.
  let capacity = 0
  let units = new Uint32Array(0)
  let used = new Uint8Array(0)
  let baseUsed = new Uint8Array(0)
  let next = new Int32Array(0)
  let prev = new Int32Array(0)
  let head = -1
  let tail = -1
  const grow = (needed: number): void => {
    if (needed <= capacity) return
    let cap = Math.max(capacity, 1 << 16)
    while (cap < needed) cap *= 2
    if (cap > 1 << 21) throw new Error('charsmap trie too large for direct offsets')
    const widen = <T extends Uint32Array | Uint8Array | Int32Array>(a: T, make: (n: number) => T): T => {
      const b = make(cap)
      b.set(a)
      return b
    }
    units = widen(units, (n) => new Uint32Array(n))
    used = widen(used, (n) => new Uint8Array(n))
    baseUsed = widen(baseUsed, (n) => new Uint8Array(n))
    next = widen(next, (n) => new Int32Array(n))
    prev = widen(prev, (n) => new Int32Array(n))
    for (let p = capacity; p < cap; p++) {
      prev[p] = tail
      next[p] = -1
      if (tail >= 0) next[tail] = p
      else head = p
      tail = p
    }
    capacity = cap
  }
  const take = (p: number): void => {
    used[p] = 1
    if (prev[p] >= 0) next[prev[p]] = next[p]
    else head = next[p]
    if (next[p] >= 0) prev[next[p]] = prev[p]
    else tail = prev[p]
  }

  grow(1)
  take(0) // the root
  let end = 256 // array length: whole 256-unit blocks, since a lookup may probe any b ^ c
  const queue: Array<[TrieNode, number]> = [[root, 0]]
  for (let qi = 0; qi < queue.length; qi++) {
    const [node, pos] = queue[qi]
    const labels = [...node.children.keys()].sort((a, b) => a - b)
    if (node.value >= 0) labels.unshift(0)
    if (labels.length === 0) continue
    let base = -1
    for (let q = head; base < 0; q = next[q]) {
      if (q < 0) {
        // Every free unit was tried: add room and go on from the first new one.
        const from = capacity
        grow(capacity + 1)
        q = from
      }
      const b = q ^ labels[0]
      grow((b | 0xff) + 1)
      if (!baseUsed[b] && labels.every((c) => !used[b ^ c])) base = b
    }
    baseUsed[base] = 1
    end = Math.max(end, (base | 0xff) + 1)
    const offset = pos ^ base
    units[pos] = ((units[pos] & 0xff) | (node.value >= 0 ? 1 << 8 : 0) | (offset << 10)) >>> 0
    for (const c of labels) {
      const p = base ^ c
      take(p)
      if (c === 0) {
        units[p] = (node.value | 0x80000000) >>> 0
      } else {
        units[p] = c
        queue.push([node.children.get(c) as TrieNode, p])
      }
    }
  }
  return units.slice(0, end)
}
