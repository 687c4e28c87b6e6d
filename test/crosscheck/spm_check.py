#!/usr/bin/env python3
"""Report what the reference `sentencepiece` library makes of a model file, as JSON.

Used by test/sentencepiece-model.test.ts to cross-check glmtool's synthetic tokenizer models
(and its ModelProto schema) against the real library.

    spm_check.py MODEL_FILE < request.json   # request: {"pieces": [...], "ids": [...], "texts": [...]}
    spm_check.py --descriptor                # the ModelProto schema the library ships

Every request key is optional; see DEFAULT_* below. Output for a model:
    {"vocab_size", "unk_id", "bos_id", "eos_id", "pad_id",
     "piece_to_id": {piece: id}, "id_to_piece": {id: piece},
     "encode": [{"text", "ids", "pieces"}]}
"""
import json
import sys

import sentencepiece as spm

DEFAULT_PIECES = ["<unk>", "<s>", "</s>", "<pad>", "\u2581"]
DEFAULT_IDS = [0, 1, 2, 3]
DEFAULT_TEXTS = [
    "你好",
    "hello world",
    "ChatGLM-6B 是一个开源的对话语言模型",
    "emoji 👋🤖 and 中文",
]


def describe_schema():
    """Field numbers, labels and types of the library's own sentencepiece_model.proto."""
    from google.protobuf import descriptor_pb2
    from sentencepiece import sentencepiece_model_pb2

    fd = descriptor_pb2.FileDescriptorProto()
    sentencepiece_model_pb2.DESCRIPTOR.CopyToProto(fd)
    label = descriptor_pb2.FieldDescriptorProto.Label.Name
    ftype = descriptor_pb2.FieldDescriptorProto.Type.Name
    messages = {}
    enums = {}

    def walk(msg, prefix):
        name = prefix + msg.name
        messages[name] = {
            f.name: {
                "number": f.number,
                "label": label(f.label).replace("LABEL_", "").lower(),
                "type": ftype(f.type).replace("TYPE_", "").lower(),
                "type_name": f.type_name.lstrip("."),
                "default": f.default_value if f.HasField("default_value") else None,
            }
            for f in msg.field
        }
        for e in msg.enum_type:
            enums[name + "." + e.name] = {v.name: v.number for v in e.value}
        for nested in msg.nested_type:
            walk(nested, name + ".")

    for msg in fd.message_type:
        walk(msg, fd.package + ".")
    return {"package": fd.package, "messages": messages, "enums": enums}


def check_model(path, request):
    sp = spm.SentencePieceProcessor(model_file=path)
    n = sp.get_piece_size()
    out = {
        "vocab_size": n,
        "unk_id": sp.unk_id(),
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "pad_id": sp.pad_id(),
        # piece_to_id answers unk_id for pieces it does not know; report -1 instead.
        "piece_to_id": {
            p: (sp.piece_to_id(p) if sp.id_to_piece(sp.piece_to_id(p)) == p else -1)
            for p in request.get("pieces", DEFAULT_PIECES)
        },
        "id_to_piece": {
            str(i): sp.id_to_piece(i) for i in request.get("ids", DEFAULT_IDS) if 0 <= i < n
        },
        "encode": [
            {
                "text": t,
                "ids": sp.encode(t, out_type=int),
                "pieces": sp.encode(t, out_type=str),
            }
            for t in request.get("texts", DEFAULT_TEXTS)
        ],
    }
    return out


def main(argv):
    if len(argv) == 2 and argv[1] == "--descriptor":
        result = describe_schema()
    elif len(argv) == 2:
        raw = sys.stdin.read() if not sys.stdin.isatty() else ""
        result = check_model(argv[1], json.loads(raw) if raw.strip() else {})
    else:
        sys.stderr.write(__doc__)
        return 2
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
