/**
 * Synthetic tokenizer files for synthetic model directories, of the same kind as the real ones:
 * ChatGLM-6B's ice_text.model a SentencePiece UNIGRAM model, ChatGLM2-6B's tokenizer.model a
 * BPE model, each with the real piece count, piece layout and types, special-token ids, and
 * trainer and normalizer settings of its generation, filled with plausible pieces of glmtool's
 * own (no piece, score or charsmap byte of the real files is copied), plus the
 * tokenizer_config.json the published repos ship. Deterministic: the same arch always gives the
 * same bytes (for v1, on the same Node version: its NFKC table comes from the runtime's Unicode
 * data).
 *
 * Facts, read from the real files with the `sentencepiece` library (0.1.97) and its
 * sentencepiece_model_pb2 (../shared/real; provenance in its SOURCES.txt):
 * - ChatGLM-6B ice_text.model (current, 130344 pieces). trainer_spec sets only input,
 *   model_prefix, vocab_size 130000 (the trainer's size; the 344 pieces from 130000 on were
 *   appended later), character_coverage 0.9999, split_digits, user_defined_symbols ["<n>"],
 *   byte_fallback, pad_id 3 and train_extremely_large_corpus; model_type is left unset, i.e.
 *   the proto default UNIGRAM. normalizer_spec sets only name "nmt_nfkc" and a
 *   precompiled_charsmap (237539 bytes): add_dummy_prefix, remove_extra_whitespaces and
 *   escape_whitespaces are the defaults (true). No denormalizer, no self-test data.
 *   Layout: <unk> 0 (UNKNOWN), <s> 1, </s> 2, <pad> 3 (CONTROL), <n> 4 (USER_DEFINED), "▁" 5,
 *   NORMAL pieces 5..129999 (129995), then [MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC>
 *   <dBLOCK> 130000..130007 (CONTROL), <|tab|> 130008 and <|blank_k|> 130007+k for k = 2..80
 *   (USER_DEFINED), <0xXX> 130088+XX (BYTE). Non-NORMAL pieces score 0. NORMAL scores are
 *   log-probabilities (exp sums to 0.997), -2.62 ("▁") to -19.91, descending within four runs
 *   that look like vocabularies merged in order: ids 5..99 "▁", punctuation and digits (-2.6 to
 *   -9.0); 100..63822 English and code, word pieces mostly with a leading "▁" (-3.9 to -14.9);
 *   63823..125652 Chinese (punctuation, characters, words, without "▁" but for 714; -4.8 to
 *   -19.9, the rarest characters last); 125653..129999 everything else: code punctuation runs,
 *   Cyrillic, Latin, Greek, Arabic, Hangul, emoji (-9.0 to -16.8). No multi-digit piece, no
 *   "▁" inside a piece, "▁" the only whitespace-only piece, at most 16 characters a piece.
 * - ChatGLM2-6B tokenizer.model (64789 pieces; ChatGLM3-6B's is the same bytes). trainer_spec
 *   sets every field (a llama-style BPE run: model_type BPE, vocab_size 32000, split_digits,
 *   allow_whitespace_only_pieces, byte_fallback, max_sentencepiece_length 16, pad_id -1, ...);
 *   normalizer_spec sets name "identity", an empty charsmap, add_dummy_prefix true,
 *   remove_extra_whitespaces false and an empty rule tsv. Layout: <unk> 0 (UNKNOWN), <s> 1,
 *   </s> 2 (CONTROL), <0xXX> 3+XX (BYTE), then NORMAL from 259 with BPE scores -0, -1, -2, ...
 *   (merge order; a few gaps): merges first ("▁t", "▁a", "in", ..., runs of "▁" among them),
 *   the single characters from 30910 ("▁" first), then the merges and characters added for
 *   Chinese after id 32000. The wrapper's five specials follow the model at 64789..64793.
 * - chatglm.cpp's tokenizer tests (real models, real ids) agree: "你好" -> [5, 74874, ...] in v1
 *   (a lone "▁", then one piece), "\n" -> 4, four spaces -> 130011, a tab -> 130008, 👋 -> 5
 *   130328 130247 130233 130227 (byte fallback); in v2 "\n" -> 13, "\t" -> 12, 👋 -> 243 162
 *   148 142, "你好" -> "▁你" + "好", "：" keeps its id (identity normalizer), and four spaces of
 *   indentation survive.
 * What synth builds from those facts: the same specs field for field (minus the trainer's input
 * path and model prefix), the same layout and types; v1 NORMAL pieces in the same four runs,
 * scored as a normalized Zipf distribution per run (see v1Normal), so that Viterbi keeps a
 * listed word whole; v2 NORMAL pieces as merges, then characters, then Chinese merges, each
 * multi-character piece buildable from two earlier-listed ones. The charsmap is glmtool's own
 * NFKC table (nmtNfkcRules), not the library's built-in nmt_nfkc bytes.
 */
import {
  encodeModelProto, ModelType, PieceType,
  type NormalizerSpec, type SentencePiece, type SentencePieceModel, type TrainerSpec,
} from '../runtime/tokenizer/sentencepiece-model.js'

export interface SynthTokenizer {
  /** The generation's tokenizer file name (its Arch's tokenizerFile). */
  fileName: string
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

/** The whole words the synthetic vocabularies carry (tests check that they encode whole). */
export const SYNTH_WORDS: {readonly english: readonly string[], readonly chinese: readonly string[]} = {
  english: ENGLISH_WORDS, chinese: CHINESE_WORDS,
}

/** Punctuation and code pieces, "▁"-led ones with them (split_digits: never two digits). */
const SYMBOL_PIECES = (
  '▁( ▁" ▁= ▁- ▁{ ▁+ ▁* ▁[ ▁\' ▁< ▁/ ▁# ▁$ ▁& ▁@ ▁| ▁: ▁} ▁) ▁% ▁! ▁> ' +
  '() ): ), ", =" // /* */ -> => == != <= >= :: .. ... :// (); {} [] (" ") (\' \') ." ,"'
).split(' ')

/** More code and markup pieces, for the last run of v1 and the merges of v2. */
const CODE_PIECES = [
  ...'▁=> ▁== ▁!= ▁<= ▁>= ▁-> ▁// ▁/* ▁*/ ▁:: ▁... ▁() ▁{} ▁[] ▁</ ▁/> ▁** ▁-- ▁++ ▁&& ▁||'.split(' '),
  ...')) ){ )} ]) ]; ], ]. }} }, }; {{ \'] [" "] ") "; "> "/ </ /> <! ** ++ -- && || ## %) %, $( ${'.split(' '),
  ...'{\\ \\\\ \\n `` ``` \'\' \'\'\' "" """'.split(' '),
  // Runs of a repeated character, each twice the one before, so BPE can build them.
  ...[...'-=*_~#'].flatMap((c) => [2, 4, 8, 16].map((k) => c.repeat(k))),
]

// ---------------------------------------------------------------------------------------------
// Pieces.

function range(from: number, to: number): string[] {
  const out: string[] = []
  for (let cp = from; cp <= to; cp++) out.push(String.fromCodePoint(cp))
  return out
}

const ASCII_SYMBOLS = range(0x21, 0x7e).filter((c) => !/[0-9A-Za-z]/.test(c))
const DIGITS = range(0x30, 0x39)
/** Letters by English frequency, so rank-ordered n-grams start with the common ones. */
const LOWER = [...'etaoinshrdlcumwfgypbvkjxqz']
const UPPER = LOWER.map((c) => c.toUpperCase())

/** Non-Chinese single characters beyond ASCII. */
function otherChars(): string[] {
  return [
    '\u2019', '\u201c', '\u201d', '\u2018', '\u2013', '\u2014', '\u00b7', // ’ “ ” ‘ – — ·
    ...range(0xa1, 0xff).filter((c) => c !== '\u00ad'), // Latin-1 (minus the invisible soft hyphen)
    ...range(0x100, 0x17f), // Latin Extended-A
    ...range(0x391, 0x3a9), ...range(0x3b1, 0x3c9), // Greek
    ...range(0x410, 0x44f), // Cyrillic
    ...range(0x2010, 0x2027), ...range(0x2030, 0x203a), '\u20ac', // general punctuation, €
  ]
}

const CJK_PUNCT = [...range(0x3001, 0x3011), ...range(0x3014, 0x301f)] // 、。〈〉《》「」『』【】...
const KANA = [...range(0x3041, 0x3096), ...range(0x30a1, 0x30fa)]
const CJK_BLOCK = range(0x4e00, 0x9fa5) // CJK Unified Ideographs, the GB-era block both vocabularies cover
const FULL_WIDTH = range(0xff01, 0xff5e) // v1 has none: NFKC maps them to ASCII

/** A word's prefixes of two or more characters, shortest first, the word itself excluded. */
function* properPrefixes(word: string): Generator<string> {
  const chars = [...word]
  for (let k = 2; k < chars.length; k++) yield chars.slice(0, k).join('')
}

/** Chinese characters by rank: COMMON_HANZI first, then the rest of the CJK block in code order. */
function hanziRanking(): string[] {
  return [...new Set([...COMMON_HANZI, ...CJK_BLOCK])]
}

/** Bigrams of ranked characters, most frequent pairs first (anti-diagonals of rank i + j). */
function* hanziBigrams(ranking: string[]): Generator<string> {
  for (let s = 0; s < 2 * ranking.length - 1; s++) {
    for (let i = Math.max(0, s - ranking.length + 1); i <= Math.min(s, ranking.length - 1); i++) {
      yield ranking[i] + ranking[s - i]
    }
  }
}

/** Letter n-grams ordered by the sum of their letters' frequency ranks (common ones first). */
function letterGrams(n: 2 | 3): string[] {
  const out: Array<[number, string]> = []
  const L = LOWER.length
  for (let i = 0; i < L; i++) {
    for (let j = 0; j < L; j++) {
      if (n === 2) out.push([i + j, LOWER[i] + LOWER[j]])
      else for (let k = 0; k < L; k++) out.push([i + j + k, LOWER[i] + LOWER[j] + LOWER[k]])
    }
  }
  // Stable: equal sums keep their (i, j, k) order.
  return out.sort((a, b) => a[0] - b[0]).map(([, g]) => g)
}

const capitalized = (w: string): string => w[0].toUpperCase() + w.slice(1)

/** English and code pieces, most probable first: "▁word", "▁Word", bare words, then fragments. */
function englishPieces(): string[] {
  const pairs = letterGrams(2)
  const triples = letterGrams(3)
  return [
    ...ENGLISH_WORDS.map((w) => META + w),
    ...ENGLISH_WORDS.map((w) => META + capitalized(w)),
    ...ENGLISH_WORDS,
    ...ENGLISH_WORDS.map(capitalized),
    ...LOWER, ...UPPER,
    ...LOWER.map((c) => META + c), ...UPPER.map((c) => META + c),
    ...ENGLISH_WORDS.flatMap((w) => [
      ...properPrefixes(META + w), ...properPrefixes(w), ...properPrefixes(META + capitalized(w)),
    ]),
    ...pairs, ...pairs.map((g) => META + g),
    ...triples.flatMap((g) => [g, META + g]),
  ]
}

/**
 * English and code merges for BPE, in priority order: every multi-character piece is one
 * character longer than a piece merged before it, so BPE can always build it.
 */
function englishMerges(trigrams: number): string[] {
  const pairs = letterGrams(2)
  return [
    ...LOWER.map((c) => META + c), ...UPPER.map((c) => META + c),
    ...pairs, ...pairs.map((g) => META + g),
    ...ENGLISH_WORDS.flatMap((w) => [
      ...properPrefixes(w), w, ...properPrefixes(META + w), META + w,
      ...properPrefixes(META + capitalized(w)), META + capitalized(w),
    ]),
    ...letterGrams(3).slice(0, trigrams).flatMap((g) => [g, META + g]),
  ]
}

/**
 * Pieces in runs: the order is the file's, the filler run is sized so that the total is `total`.
 * Duplicates keep their first place in `order` of materialisation (fixed runs before the
 * filler); `accept` drops pieces the normalizer could never produce.
 */
function layoutRuns(
  runs: Array<{pieces: Iterable<string>, filler?: boolean}>, total: number, taken: Set<string>,
  accept: (piece: string) => boolean,
): string[][] {
  const seen = new Set(taken)
  const take = (pieces: Iterable<string>, limit: number): string[] => {
    const out: string[] = []
    for (const p of pieces) {
      if (out.length === limit) break
      if (seen.has(p) || !accept(p)) continue
      seen.add(p)
      out.push(p)
    }
    return out
  }
  const out = runs.map((r) => (r.filler ? [] : take(r.pieces, Infinity)))
  const fixed = out.reduce((n, r) => n + r.length, 0)
  const k = runs.findIndex((r) => r.filler)
  out[k] = take(runs[k].pieces, total - fixed)
  if (fixed + out[k].length !== total) {
    throw new Error(`synth tokenizer: only ${fixed + out[k].length} of ${total} normal pieces could be generated`)
  }
  return out
}

function bytePieces(): SentencePiece[] {
  return Array.from({length: 256}, (_, b) => ({
    piece: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, score: 0, type: PieceType.BYTE,
  }))
}

function special(piece: string, type: PieceType): SentencePiece {
  return {piece, score: 0, type}
}

/**
 * Log-probability scores for v1's runs (UNIGRAM): within a run, piece i has probability
 * mass * (1 + i)^-exponent / H (a Zipf law; H normalizes the run), so scores descend within a
 * run and exp(score) sums to 1 over all NORMAL pieces, as a trained unigram model's do. The
 * masses and exponents put the runs near the real file's ranges ("▁" about -2.6, the rarest
 * Chinese characters about -16). Within a run a listed word always outscores any split of it
 * into later-listed pieces, which is what keeps "▁hello" and "你好" whole under Viterbi.
 */
const V1_RUN_SHAPE = [
  {mass: 0.20, exponent: 1.3}, // "▁", punctuation, digits
  {mass: 0.38, exponent: 1.0}, // English and code
  {mass: 0.38, exponent: 1.1}, // Chinese
  {mass: 0.04, exponent: 1.0}, // everything else
]

function scoreRuns(runs: string[][], shape: typeof V1_RUN_SHAPE): SentencePiece[] {
  const out: SentencePiece[] = []
  runs.forEach((run, r) => {
    const {mass, exponent} = shape[r]
    let h = 0
    for (let i = 0; i < run.length; i++) h += (1 + i) ** -exponent
    const top = Math.log(mass / h)
    // float32, as the file stores them, so that the model equals its own serialization.
    run.forEach((piece, i) => out.push({piece, score: Math.fround(top - exponent * Math.log1p(i)), type: PieceType.NORMAL}))
  })
  return out
}

function v1Model(): SentencePieceModel {
  const head: SentencePiece[] = [
    special('<unk>', PieceType.UNKNOWN),
    special('<s>', PieceType.CONTROL),
    special('</s>', PieceType.CONTROL),
    special('<pad>', PieceType.CONTROL), // config.json pad_token_id 3
    special('<n>', PieceType.USER_DEFINED), // the wrapper's stand-in for "\n"
  ]
  const tail: SentencePiece[] = [
    ...['[MASK]', '[gMASK]', '[sMASK]', '<unused_0>', '<sop>', '<eop>', '<ENC>', '<dBLOCK>']
      .map((p) => special(p, PieceType.CONTROL)),
    special('<|tab|>', PieceType.USER_DEFINED),
    ...Array.from({length: 79}, (_, i) => special(`<|blank_${i + 2}|>`, PieceType.USER_DEFINED)),
    ...bytePieces(),
  ]
  const ranking = hanziRanking()
  const common = [...new Set(COMMON_HANZI)]
  const taken = new Set([...head, ...tail].map((p) => p.piece))
  // v1 text is NFKC-normalized before segmentation: a non-NFKC piece could never match.
  const accept = (p: string): boolean => p.normalize('NFKC') === p
  const [symbols, english, chinese, bigrams, rare, other] = layoutRuns([
    {pieces: [META, ',', '.', ...DIGITS, ...ASCII_SYMBOLS, ...SYMBOL_PIECES]},
    {pieces: englishPieces()},
    {pieces: [
      '\u3002', '\u3001', ...common.slice(0, 10), ...CHINESE_WORDS, ...common, ...CJK_PUNCT, ...KANA,
      ...CHINESE_WORDS.flatMap((w) => [...properPrefixes(w)]),
    ]},
    {pieces: hanziBigrams(ranking), filler: true},
    {pieces: CJK_BLOCK}, // the rarest characters close the Chinese run, as in the real file
    {pieces: [...CODE_PIECES, ...otherChars()]},
  ], V1_PIECE_COUNT - head.length - tail.length, taken, accept)
  const normal = scoreRuns([symbols, english, [...chinese, ...bigrams, ...rare], other], V1_RUN_SHAPE)
  const trainerSpec: TrainerSpec = {
    // model_type unset: the proto default, UNIGRAM, as in the real file.
    vocabSize: 130000, // the trainer's size; the 344 pieces from 130000 on were appended after training
    characterCoverage: Math.fround(0.9999),
    splitDigits: true,
    userDefinedSymbols: ['<n>'],
    byteFallback: true, // published SPTokenizer: byte_fallback=True
    padId: 3,
    trainExtremelyLargeCorpus: true,
  }
  const normalizerSpec: NormalizerSpec = {
    // add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces unset (true), as in the real file.
    name: 'nmt_nfkc',
    precompiledCharsmap: buildPrecompiledCharsmap(nmtNfkcRules()),
  }
  return {pieces: [...head, ...normal, ...tail], trainerSpec, normalizerSpec}
}

function v2Model(): SentencePieceModel {
  const head: SentencePiece[] = [
    special('<unk>', PieceType.UNKNOWN),
    special('<s>', PieceType.CONTROL),
    special('</s>', PieceType.CONTROL),
    ...bytePieces(),
  ]
  // The wrapper's own specials (ids 64789..64793) are kept out of the model, so that a piece
  // lookup can never confuse "sop" the special with "sop" the letters.
  const taken = new Set([...head.map((p) => p.piece), '[MASK]', '[gMASK]', '[sMASK]', 'sop', 'eop'])
  const ranking = hanziRanking()
  const top = ranking.slice(0, 600)
  const [merges, chars, chinese, bigrams, rare] = layoutRuns([
    // Merges in priority order, each one character longer than a piece merged before it (or
    // two characters), so BPE can always build it. Runs of "▁" (indentation) come early, as in
    // the real file; v1's wrapper turns them into <|blank_k|> instead.
    {pieces: [
      ...Array.from({length: 15}, (_, k) => META.repeat(k + 2)),
      ...englishMerges(11000),
      ...SYMBOL_PIECES, ...CODE_PIECES,
    ]},
    // The single characters follow the merges ("▁" first), as in the real file.
    {pieces: [META, ...DIGITS, ...LOWER, ...UPPER, ...ASCII_SYMBOLS, ...otherChars(), ...CJK_PUNCT, ...KANA, ...FULL_WIDTH, ...top]},
    // Then the Chinese merges: the dummy-prefix space into a common character ("▁你") first.
    {pieces: [...top.map((c) => META + c), ...CHINESE_WORDS.flatMap((w) => [...properPrefixes(w), w])]},
    {pieces: hanziBigrams(ranking), filler: true},
    {pieces: ranking.slice(600)},
  ], V2_PIECE_COUNT - head.length, taken, () => true)
  // BPE's merge priority; sentencepiece's BPE trainer scores pieces -0, -1, -2, ... in order.
  const normal = [...merges, ...chars, ...chinese, ...bigrams, ...rare]
    .map((piece, k) => ({piece, score: -k, type: PieceType.NORMAL}))
  // Every field the real file sets, with its values, but for the trainer's input and model prefix.
  const trainerSpec: TrainerSpec = {
    modelType: ModelType.BPE,
    vocabSize: 32000, // the trainer's size; the pieces from 32000 on were added after training
    selfTestSampleSize: 0,
    inputFormat: '',
    characterCoverage: Math.fround(0.9999),
    inputSentenceSize: 0,
    seedSentencepieceSize: 1000000,
    shrinkingFactor: 0.75,
    numThreads: 80,
    numSubIterations: 2,
    maxSentenceLength: 4192,
    shuffleInputSentence: true,
    maxSentencepieceLength: 16,
    splitByUnicodeScript: true,
    splitByWhitespace: true,
    splitByNumber: true,
    treatWhitespaceAsSuffix: false,
    splitDigits: true,
    allowWhitespaceOnlyPieces: true,
    vocabularyOutputPieceScore: true,
    hardVocabLimit: true,
    useAllVocab: false,
    byteFallback: true,
    requiredChars: '',
    unkId: 0, bosId: 1, eosId: 2, padId: -1, // the wrapper pads with <unk> (pad_token_id 0)
    unkSurface: ' \u2047 ',
    unkPiece: '<unk>', bosPiece: '<s>', eosPiece: '</s>', padPiece: '<pad>',
    trainExtremelyLargeCorpus: true,
    enableDifferentialPrivacy: false,
    differentialPrivacyNoiseLevel: 0,
    differentialPrivacyClippingThreshold: 0,
  }
  const normalizerSpec: NormalizerSpec = {
    name: 'identity',
    precompiledCharsmap: new Uint8Array(0),
    addDummyPrefix: true,
    removeExtraWhitespaces: false,
    normalizationRuleTsv: '',
  }
  return {pieces: [...head, ...normal], trainerSpec, normalizerSpec}
}

/** tokenizer_config.json of THUDM/chatglm-6b, key for key as the repository publishes it. */
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
    tokenizer_class: 'ChatGLMTokenizer',
    num_image_tokens: 0,
    auto_map: structuredClone(AUTO_MAP),
  }
}

/** tokenizer_config.json of THUDM/chatglm2-6b, key for key as the repository publishes it. */
/** chatglm2-6b's and chatglm3-6b's tokenizer_config.json differ only in name_or_path (../shared/real). */
function v2TokenizerConfig(name: string): Record<string, unknown> {
  return {
    name_or_path: name,
    remove_space: false,
    do_lower_case: false,
    tokenizer_class: 'ChatGLMTokenizer',
    auto_map: structuredClone(AUTO_MAP),
  }
}

/** ChatGLM-6B's synthetic ice_text.model, before serialization (for tests and tools that want the pieces). */
export function synthChatglm6bModel(): SentencePieceModel {
  return v1Model()
}

/** ChatGLM2-6B's synthetic tokenizer.model, before serialization. */
export function synthChatglm2Model(): SentencePieceModel {
  return v2Model()
}

const built = new Map<() => SentencePieceModel, Buffer>()

/** The serialized model; building takes a second (130k pieces, an NFKC table) and the result never changes. */
function modelBytes(build: () => SentencePieceModel): Buffer {
  let bytes = built.get(build)
  if (!bytes) {
    bytes = encodeModelProto(build())
    built.set(build, bytes)
  }
  return Buffer.from(bytes)
}

/** ChatGLM-6B's synthetic tokenizer files: ice_text.model and THUDM/chatglm-6b's tokenizer_config.json. */
export function synthChatglm6bTokenizer(): SynthTokenizer {
  return {fileName: 'ice_text.model', bytes: modelBytes(synthChatglm6bModel), tokenizerConfig: v1TokenizerConfig()}
}

/**
 * ChatGLM2-6B's synthetic tokenizer files: tokenizer.model and the tokenizer_config.json of
 * `nameOrPath`. ChatGLM3-6B ships the same tokenizer.model bytes (name THUDM/chatglm3-6b).
 */
export function synthChatglm2Tokenizer(nameOrPath: string): SynthTokenizer {
  return {fileName: 'tokenizer.model', bytes: modelBytes(synthChatglm2Model), tokenizerConfig: v2TokenizerConfig(nameOrPath)}
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
