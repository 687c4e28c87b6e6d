#!/usr/bin/env python3
"""The real ChatGLM tokenizer files through the `sentencepiece` library and the published
wrappers, on a corpus generated from a seed, as JSON for test/tokenizer-real.test.ts.

    spm_real_check.py REAL_DIR SEED COUNT
    spm_real_check.py REAL_DIR SEED --bench REPEAT   # best of REPEAT encodes, one JSON line
    spm_real_check.py REAL_DIR SEED --serve          # bench/tokenizer-speed.mjs: see serve()

The corpus (make_corpus) is COUNT varied strings plus the empty string and one 100 KB text, all
drawn from random.Random(SEED), so it can grow without changing what it holds so far.

The three tokenizers, restated here from the published code (not from glmtool):
- "v1": chatglm-6b's SPTokenizer over the current ice_text.model (130344 pieces):
  "\\n" -> "<n>", "\\t" -> "<|tab|>", space runs of 80..2 -> "<|blank_k|>" (replaced longest
  first), then EncodeAsIds / EncodeAsPieces, + num_image_tokens (0). Decode: drop the pad id
  (ChatGLMTokenizer._decode), subtract num_image_tokens and drop what falls below 0, DecodeIds,
  then the replacements undone in the order the published postprocess does them.
- "v1-old": the first-release SPTokenizer over the 130000-piece ice_text.model: at load it
  appends [MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC> <dBLOCK> (CONTROL), <|tab|> and
  <|blank_2..80|> (USER_DEFINED), <0x00>..<0xFF> (BYTE), all with score 0, sets
  trainer_spec.byte_fallback, and reloads (icetk TextTokenizer.refresh); num_image_tokens 20000.
- "v2": chatglm2-6b's tokenizer.model through the library directly (EncodeAsIds / DecodeIds;
  glmtool's v2 wrapper is checked elsewhere).

Output: {"library", "texts", "models": {name: {"vocab", "offset", "encode": [[ids, pieces]],
"decode": [[ids, text]]}}, "appended_equals_current": bool}. With --bench: {"library", "text"
(the 100 KB text), "bench": {"v1" | "v2": {"tokens", "seconds", "runs"}}}, the best of REPEAT
encodes of that text (v1 with the published preprocessing inside the timing, as glmtool's is).
"""
import json
import random
import sys
import time

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from chatglm_tokenizers import MAX_BLANK, V1Tokenizer

V1_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]


# The published v1 pre- and post-processing, as restated once for every cross-check.
v1_preprocess = V1Tokenizer.preprocess
v1_postprocess = V1Tokenizer.postprocess


def first_release_proto(path):
    """The 130000-piece file as the first-release SPTokenizer configured it."""
    proto = pb.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    for tok in V1_SPECIALS:
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=tok, score=0.0, type=3))
    for tok in ["<|tab|>"] + ["<|blank_%d|>" % k for k in range(2, MAX_BLANK + 1)]:
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=tok, score=0.0, type=4))
    proto.trainer_spec.byte_fallback = True
    for i in range(256):
        proto.pieces.append(pb.ModelProto.SentencePiece(piece="<0x%02X>" % i, score=0.0, type=6))
    return proto


# ---------------------------------------------------------------------------------------------
# The corpus

CJK_COMMON = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"
ENGLISH = ("the of and to in is that for it as was with be by on not he this are or his from at which "
           "but have an they you were her she there been one all we their has would when if so no "
           "model language tokenizer ChatGLM GLM transformer attention quantize convert inference "
           "Hello World OpenAI Tsinghua Beijing Python TypeScript JSON HTTP GPU CUDA").split()
PUNCT_FULL = "，。！？：；、“”‘’（）【】《》〈〉「」『』…—～·￥％＃＠＆＊＋－＝／＼｜＜＞"
PUNCT_ASCII = ",.!?:;'\"()[]{}<>-_=+*/\\|@#$%^&~`"
EMOJI = ["😀", "😂", "🤖", "👋", "👍🏽", "❤️", "🇨🇳", "👨‍👩‍👧‍👦", "🧑‍💻", "✨", "🔥", "☕", "🎉", "1️⃣", "🏳️‍🌈"]
SPECIAL_LIKE = ["[gMASK]", "[MASK]", "[sMASK]", "<sop>", "<eop>", "<n>", "<|tab|>", "<|blank_3|>",
                "<|blank_80|>", "<|blank_81|>", "<|blank_1|>", "<unk>", "<s>", "</s>", "<pad>",
                "<0x41>", "<0xE4>", "<ENC>", "<dBLOCK>", "<unused_0>", "<image_5>", "▁", "▁▁", "[[训练时间]]",
                "sop", "eop", "<|user|>", "<|assistant|>", "<|system|>", "<|observation|>"]
ODD = ["\u3000", "\u00a0", "\u200b", "\u200d", "\ufeff", "\u2028", "\r", "\x0b", "\x0c", "\x00", "\x7f",
       "\u0301", "e\u0301", "ﬁ", "①", "Ⅻ", "㍿", "ｶﾞ", "Å", "Ω", "℃", "½", "²", "ﾟ", "\ufffd", "\U0010ffff",
       "\ud7ff", "\ue000", "ǅ", "ß", "İ"]


def rand_cjk(rng, n):
    return "".join(rng.choice(CJK_COMMON) for _ in range(n))


def rand_english(rng, n):
    words = [rng.choice(ENGLISH) for _ in range(n)]
    if words and rng.random() < 0.5:
        words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(["", ".", "!", "?", ","])


def rand_ext_b(rng, n):
    return "".join(chr(rng.randint(0x20000, 0x2A6DF)) for _ in range(n))


def rand_cjk_any(rng, n):
    return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(n))


def rand_code(rng):
    ind = rng.choice(["\t", "  ", "    ", "\t\t", "        "])
    nl = rng.choice(["\n", "\r\n"])
    name = rng.choice(["foo", "bar_baz", "main", "encode", "x1"])
    lines = [
        "def %s(a, b=%d):" % (name, rng.randint(0, 999)),
        ind + "if a > b:" + rng.choice(["", "  # 注释"]),
        ind * 2 + "return a - b",
        ind + "return {'k': [a, b], \"s\": \"%s\"}" % rand_cjk(rng, 2),
        "",
        "for (let i = 0; i < n; i++) {" + nl + ind + "x[i] += y[i] * 2;" + nl + "}",
    ]
    rng.shuffle(lines)
    return nl.join(lines[: rng.randint(1, len(lines))])


def rand_spaces(rng):
    k = rng.choice([rng.randint(2, 80), rng.randint(81, 300), 1, 2, 79, 80, 81, 160, 161])
    left = rng.choice(["", "a", "你好", "\n", "\t"])
    right = rng.choice(["", "b", "世界", "\n", " x"])
    return left + " " * k + right


def rand_url(rng):
    host = rng.choice(["github.com", "huggingface.co", "例子.测试", "example.org:8080", "127.0.0.1"])
    path = "/".join(rng.choice(["THUDM", "chatglm-6b", "blob", "main", "ice_text.model", "%E4%BD%A0"])
                    for _ in range(rng.randint(0, 4)))
    q = rng.choice(["", "?q=%d&lang=zh-CN" % rng.randint(0, 10 ** 6), "#L%d" % rng.randint(1, 500)])
    return rng.choice(["https://", "http://", "ftp://", "www."]) + host + "/" + path + q


def rand_number(rng):
    return rng.choice([
        str(rng.randint(0, 10 ** rng.randint(1, 18))),
        "%.*f" % (rng.randint(0, 6), rng.uniform(-1e6, 1e6)),
        "%de%d" % (rng.randint(1, 9), rng.randint(-30, 30)),
        "１２３４５６",
        "%d,%03d,%03d" % (rng.randint(1, 999), rng.randint(0, 999), rng.randint(0, 999)),
        "2023年%d月%d日" % (rng.randint(1, 12), rng.randint(1, 31)),
        "0x%X" % rng.getrandbits(32),
    ])


def rand_random_unicode(rng, n):
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            cp = rng.randint(0x20, 0x7E)
        elif r < 0.5:
            cp = rng.randint(0xA0, 0x2FFF)
        elif r < 0.7:
            cp = rng.randint(0x3000, 0xFFFD)
        elif r < 0.85:
            cp = rng.randint(0x10000, 0x10FFFF)
        else:
            cp = rng.randint(0, 0x1F)
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0xFFFD
        out.append(chr(cp))
    return "".join(out)


def rand_mixed(rng):
    parts = []
    for _ in range(rng.randint(2, 8)):
        kind = rng.randrange(12)
        if kind == 0:
            parts.append(rand_cjk(rng, rng.randint(1, 20)))
        elif kind == 1:
            parts.append(rand_english(rng, rng.randint(1, 8)))
        elif kind == 2:
            parts.append(rng.choice(PUNCT_FULL))
        elif kind == 3:
            parts.append(rng.choice(PUNCT_ASCII))
        elif kind == 4:
            parts.append(rng.choice(EMOJI))
        elif kind == 5:
            parts.append(rng.choice(SPECIAL_LIKE))
        elif kind == 6:
            parts.append(rng.choice(["\n", "\r\n", "\t", " ", "  ", "\n\n"]))
        elif kind == 7:
            parts.append(rand_number(rng))
        elif kind == 8:
            parts.append(rand_ext_b(rng, rng.randint(1, 3)))
        elif kind == 9:
            parts.append(rng.choice(ODD))
        elif kind == 10:
            parts.append(rand_url(rng))
        else:
            parts.append(rand_cjk_any(rng, rng.randint(1, 6)))
    sep = rng.choice(["", " ", ""])
    return sep.join(parts)


GENERATORS = [
    lambda rng: rand_cjk(rng, rng.randint(1, 60)),
    lambda rng: rand_cjk_any(rng, rng.randint(1, 30)),
    lambda rng: rand_english(rng, rng.randint(1, 30)),
    rand_mixed,
    rand_mixed,
    rand_mixed,
    rand_code,
    rand_spaces,
    lambda rng: rng.choice(["\n", "\r\n", "\n\n\n", "a\nb", "a\r\nb", "\r\n\r\n", "\n \n", "\t\n"]) * rng.randint(1, 4),
    lambda rng: "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 6))),
    lambda rng: rand_ext_b(rng, rng.randint(1, 10)),
    lambda rng: rand_cjk(rng, rng.randint(1, 10)) + "".join(rng.choice(PUNCT_FULL) for _ in range(rng.randint(1, 6))),
    rand_url,
    rand_number,
    lambda rng: "".join(rng.choice(SPECIAL_LIKE + [" ", "x", "中"]) for _ in range(rng.randint(1, 8))),
    lambda rng: rand_random_unicode(rng, rng.randint(1, 40)),
    lambda rng: "".join(rng.choice(ODD + ["a", " "]) for _ in range(rng.randint(1, 10))),
]


def big_text(rng, nbytes=100 * 1024):
    parts = []
    size = 0
    while size < nbytes:
        p = rand_mixed(rng) + rng.choice(["\n", " ", "。", "\n\n"])
        parts.append(p)
        size += len(p.encode("utf-8"))
    return "".join(parts)


def make_corpus(seed, count):
    rng = random.Random(seed)
    texts = ["", " ", "  ", "\n", "\r\n", "\t"]
    while len(texts) < count:
        texts.append(GENERATORS[len(texts) % len(GENERATORS)](rng))
    texts.append(big_text(random.Random(seed + 1)))
    return texts


# ---------------------------------------------------------------------------------------------


def random_id_seqs(rng, vocab, offset, sp, count):
    """Random id sequences over the whole vocabulary, weighted towards the interesting ids."""
    n = sp.get_piece_size()
    special = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    byte = [i for i in range(n) if sp.is_byte(i)]
    user = [i for i in range(n) if sp.id_to_piece(i).startswith("<") and sp.id_to_piece(i).endswith(">")]
    seqs = []
    for _ in range(count):
        seq = []
        for _ in range(rng.randint(0, 24)):
            r = rng.random()
            if r < 0.15 and special:
                seq.append(rng.choice(special) + offset)
            elif r < 0.45 and byte:
                seq.append(rng.choice(byte) + offset)
            elif r < 0.55 and user:
                seq.append(rng.choice(user) + offset)
            elif r < 0.62 and offset > 0:
                seq.append(rng.randrange(offset))  # image tokens
            else:
                seq.append(rng.randrange(n) + offset)
        seqs.append(seq)
    return seqs


class Wrapper:
    def __init__(self, sp, offset, v1):
        self.sp = sp
        self.offset = offset
        self.v1 = v1
        self.pad = sp.piece_to_id("<pad>") + offset if v1 else None

    def encode(self, text):
        t = v1_preprocess(text) if self.v1 else text
        ids = [i + self.offset for i in self.sp.encode(t, out_type=int)]
        return ids, self.sp.encode(t, out_type=str)

    def decode(self, ids):
        if self.v1:
            ids = [i for i in ids if i != self.pad]
            ids = [i - self.offset for i in ids]
            ids = [i for i in ids if i >= 0]
            return v1_postprocess(self.sp.decode(ids))
        return self.sp.decode(ids)


def bench(real, seed, repeat):
    big = make_corpus(seed, 0)[-1]
    sps = {
        "v1": (spm.SentencePieceProcessor(model_file=real + "/chatglm-6b_ice_text.model"), True),
        "v2": (spm.SentencePieceProcessor(model_file=real + "/chatglm2-6b_tokenizer.model"), False),
    }
    out = {"library": "sentencepiece " + spm.__version__, "text": big, "bench": {}}
    for name, (sp, v1) in sps.items():
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            ids = sp.encode(v1_preprocess(big) if v1 else big, out_type=int)
            best = min(best, time.perf_counter() - t0)
        out["bench"][name] = {"tokens": len(ids), "seconds": best, "runs": repeat}
    return out


def serve(real, seed):
    """Print {"text": the 100 KB text} as one line, then for each line "v1" / "v2" read from
    stdin encode that text once and print {"seconds", "tokens"}: the caller alternates these
    with its own encodes, so that both sides are timed under the same load."""
    big = make_corpus(seed, 0)[-1]
    sps = {
        "v1": (spm.SentencePieceProcessor(model_file=real + "/chatglm-6b_ice_text.model"), True),
        "v2": (spm.SentencePieceProcessor(model_file=real + "/chatglm2-6b_tokenizer.model"), False),
    }
    print(json.dumps({"library": "sentencepiece " + spm.__version__, "text": big}, ensure_ascii=False), flush=True)
    for line in sys.stdin:
        sp, v1 = sps[line.strip()]
        t0 = time.perf_counter()
        ids = sp.encode(v1_preprocess(big) if v1 else big, out_type=int)
        print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": len(ids)}), flush=True)


def main(argv):
    if len(argv) == 4 and argv[3] == "--serve":
        serve(argv[1], int(argv[2]))
        return 0
    if len(argv) == 5 and argv[3] == "--bench":
        json.dump(bench(argv[1], int(argv[2]), int(argv[4])), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    real, seed, count = argv[1], int(argv[2]), int(argv[3])
    texts = make_corpus(seed, count)
    cur_path = real + "/chatglm-6b_ice_text.model"
    old_path = real + "/chatglm-6b_ice_text.model.pre-20230406_130000pieces"
    with open(cur_path, "rb") as f:
        cur_bytes = f.read()
    old = first_release_proto(old_path)
    cur = pb.ModelProto()
    cur.ParseFromString(cur_bytes)
    wrappers = {
        "v1": Wrapper(spm.SentencePieceProcessor(model_proto=cur_bytes), 0, True),
        "v1-old": Wrapper(spm.SentencePieceProcessor(model_proto=old.SerializeToString()), 20000, True),
        "v2": Wrapper(spm.SentencePieceProcessor(model_file=real + "/chatglm2-6b_tokenizer.model"), 0, False),
    }
    out = {"library": "sentencepiece " + spm.__version__, "texts": texts, "models": {},
           "appended_equals_current": old == cur}
    rng = random.Random(seed + 2)
    for name, w in wrappers.items():
        enc = [w.encode(t) for t in texts]
        seqs = [ids for ids, _ in enc] + random_id_seqs(rng, w.sp.get_piece_size(), w.offset, w.sp, 1000)
        out["models"][name] = {
            "vocab": w.sp.get_piece_size() + w.offset,
            "offset": w.offset,
            "encode": enc,
            "decode": [[ids, w.decode(ids)] for ids in seqs],
        }
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
