#!/usr/bin/env python3
"""The published ChatGLM tokenizer wrappers, restated over the `sentencepiece` library.

glmtool's TypeScript tokenizers (src/runtime/tokenizer-v1.ts, tokenizer-v2.ts) are checked
against what these produce. They follow the logic of the published tokenization_chatglm.py
files (THUDM/chatglm-6b, THUDM/chatglm2-6b) without needing transformers:

- V1 (SPTokenizer + ChatGLMTokenizer of chatglm-6b): "\\n" -> "<n>", "\\t" -> "<|tab|>", runs
  of 80..2 spaces -> "<|blank_k|>", then SentencePiece ids + num_image_tokens (0 now). Decode:
  drop the pad id (ChatGLMTokenizer._decode), subtract num_image_tokens and drop negatives,
  SentencePiece DecodeIds, then undo the replacements on the whole string.
- V2 (SPTokenizer + ChatGLMTokenizer of chatglm2-6b): PreTrainedTokenizer.encode goes through
  tokenize() (EncodeAsPieces) and _convert_token_to_id, which maps a piece spelled like one of
  the five wrapper specials to that special's id (64789.. for the real model). Decode goes
  through _convert_id_to_token, which turns the specials, <s>, </s> and <unk> (the pad) into
  "", then DecodePieces.

Used two ways:
    import chatglm_tokenizers                      # by test/fixtures/tokenizer/make_tokenizer_fixtures.py
    chatglm_tokenizers.py < request.json           # by test/tokenizer-synth.test.ts
request: {"model": PATH, "arch": "chatglm-6b" | "chatglm2-6b",
          "texts": [...], "decode": [[id, ...], ...]}
reply:   {"vocab_size", "encode": [{"ids", "text_ids", "text_pieces", "decoded"}], "decode": [text, ...]}
where "ids" is the wrapper's encode, "text_ids" / "text_pieces" plain SentencePiece
EncodeAsIds / EncodeAsPieces of the text and "decoded" the wrapper's decode of "ids".
"""
import json
import sys

import sentencepiece as spm

MAX_BLANK = 80
V2_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]


class V1Tokenizer:
    """chatglm-6b: SPTokenizer(num_image_tokens) as ChatGLMTokenizer drives it."""

    def __init__(self, model_path, num_image_tokens=0):
        self.sp = spm.SentencePieceProcessor(model_file=model_path)
        self.num_image_tokens = num_image_tokens
        # ChatGLMTokenizer.pad_token_id: convert_tokens_to_ids("<pad>"), i.e. PieceToId, which
        # answers the unk id when the model has no "<pad>".
        self.pad_id = self.sp.piece_to_id("<pad>") + num_image_tokens
        self.vocab_size = self.sp.get_piece_size() + num_image_tokens

    @staticmethod
    def preprocess(text):
        text = text.replace("\n", "<n>")
        text = text.replace("\t", "<|tab|>")
        for k in range(MAX_BLANK, 1, -1):
            text = text.replace(" " * k, "<|blank_%d|>" % k)
        return text

    @staticmethod
    def postprocess(text):
        text = text.replace("<n>", "\n")
        text = text.replace("<|tab|>", "\t")
        for k in range(2, MAX_BLANK + 1):
            text = text.replace("<|blank_%d|>" % k, " " * k)
        return text

    def encode(self, text):
        # tokenize() then _convert_token_to_id (PieceToId) gives the same ids as EncodeAsIds.
        return [i + self.num_image_tokens for i in self.sp.encode(self.preprocess(text))]

    def decode(self, ids):
        if len(ids) == 0:
            return ""
        ids = [i for i in ids if i != self.pad_id]
        ids = [i - self.num_image_tokens for i in ids]
        ids = [i for i in ids if i >= 0]
        return self.postprocess(self.sp.decode(ids))


class V2Tokenizer:
    """chatglm2-6b: ChatGLMTokenizer over SPTokenizer."""

    def __init__(self, model_path):
        self.sp = spm.SentencePieceProcessor(model_file=model_path)
        n = self.sp.get_piece_size()
        self.specials = {name: n + k for k, name in enumerate(V2_SPECIALS)}
        self.index_specials = {v: k for k, v in self.specials.items()}
        self.vocab_size = n + len(V2_SPECIALS)
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.unk_id()

    def token_to_id(self, token):
        if token in self.specials:
            return self.specials[token]
        return self.sp.piece_to_id(token)

    def id_to_token(self, index):
        if index in self.index_specials or index in (self.eos_id, self.bos_id, self.pad_id) or index < 0:
            return ""
        if index >= self.sp.get_piece_size():
            raise IndexError("piece id is out of range.")
        return self.sp.id_to_piece(index)

    def encode(self, text):
        return [self.token_to_id(p) for p in self.sp.encode(text, out_type=str)]

    def decode(self, ids):
        return self.sp.decode_pieces([self.id_to_token(i) for i in ids])


def make(arch, model_path):
    if arch == "chatglm-6b":
        return V1Tokenizer(model_path)
    if arch == "chatglm2-6b":
        return V2Tokenizer(model_path)
    raise ValueError("unknown arch %r" % arch)


def main():
    req = json.load(sys.stdin)
    tok = make(req["arch"], req["model"])
    out = {"vocab_size": tok.vocab_size, "encode": [], "decode": []}
    for text in req.get("texts", []):
        ids = tok.encode(text)
        out["encode"].append({"ids": ids, "text_ids": tok.sp.encode(text),
                              "text_pieces": tok.sp.encode(text, out_type=str), "decoded": tok.decode(ids)})
    for ids in req.get("decode", []):
        out["decode"].append(tok.decode(ids))
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
