#!/usr/bin/env python3
"""Describe a SentencePiece model file's settings and layout, as the library's own protobuf
module (sentencepiece_model_pb2) reads it, so that glmtool's synthetic tokenizers can be
compared with the real ChatGLM files in ../shared/real without glmtool's codec in between.

    spm_layout.py MODEL_FILE [MODEL_FILE ...]   # one JSON object per file, in a JSON list

Per file:
    top_fields: the ModelProto fields the file sets
    trainer / normalizer: {field: value} for the fields the spec sets (bytes as their length)
    types: run-length piece types [[type, count], ...] in id order
    specials: [[id, piece, score, type]] for every piece that is not NORMAL
    normal: count, exp_sum (sum of exp(score)), runs of non-increasing scores
            [[first_id, last_id, first_score, last_score]], first single-character piece id and
            piece, max_len, and counts of pieces with two digits in a row, with U+2581 after
            the first character, and made of U+2581 only
    encode (with --encode TEXT...): [[text, pieces, ids]] as SentencePieceProcessor encodes them
"""
import json
import math
import re
import sys

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

META = "\u2581"
NORMAL = 1


def spec_fields(spec):
    return {d.name: (len(v) if isinstance(v, bytes) else list(v) if d.label == d.LABEL_REPEATED else v)
            for d, v in spec.ListFields()}


def describe(path):
    m = pb.ModelProto()
    with open(path, "rb") as f:
        m.ParseFromString(f.read())
    types = []
    for p in m.pieces:
        if types and types[-1][0] == p.type:
            types[-1][1] += 1
        else:
            types.append([p.type, 1])
    normal = [(i, p) for i, p in enumerate(m.pieces) if p.type == NORMAL]
    runs = []
    for i, p in normal:
        if runs and p.score <= runs[-1][3] and runs[-1][1] == i - 1:
            runs[-1][1] = i
            runs[-1][3] = p.score
        else:
            runs.append([i, i, p.score, p.score])
    first_single = next(([i, p.piece] for i, p in normal if len(p.piece) == 1), None)
    return {
        "top_fields": [d.name for d, _ in m.ListFields()],
        "trainer": spec_fields(m.trainer_spec),
        "normalizer": spec_fields(m.normalizer_spec),
        "types": types,
        "specials": [[i, p.piece, p.score, p.type] for i, p in enumerate(m.pieces) if p.type != NORMAL],
        "normal": {
            "count": len(normal),
            "exp_sum": sum(math.exp(p.score) for _, p in normal),
            "runs": runs,
            "first_single": first_single,
            "max_len": max(len(p.piece) for _, p in normal),
            "multi_digit": sum(1 for _, p in normal if re.search(r"\d\d", p.piece)),
            "inner_meta": sum(1 for _, p in normal if META in p.piece[1:]),
            "meta_only": sum(1 for _, p in normal if set(p.piece) == {META}),
        },
    }


def main():
    args = sys.argv[1:]
    texts = []
    if "--encode" in args:
        k = args.index("--encode")
        args, texts = args[:k], json.loads(sys.stdin.read())
    out = []
    for path in args:
        d = describe(path)
        if texts:
            sp = spm.SentencePieceProcessor(model_file=path)
            d["encode"] = [[t, sp.encode(t, out_type=str), sp.encode(t)] for t in texts]
        out.append(d)
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
