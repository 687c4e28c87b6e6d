#!/usr/bin/env python3
"""The published ChatGLM tokenizer wrappers, restated over the `sentencepiece` library.

glmtool's TypeScript tokenizers (src/runtime/tokenizer/chatglm-6b.ts, chatglm2-6b.ts, chatglm3-6b.ts) are checked
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
- V3 (SPTokenizer + ChatGLMTokenizer of chatglm3-6b): V2 with four role specials after the five
  (<|system|>, <|user|>, <|assistant|>, <|observation|>). _convert_id_to_token gives a special's
  NAME, "" for <s>, </s>, <unk>, negative ids and ids past the SentencePiece vocabulary, and
  DecodePieces gives a string that is no piece back as itself. Also the chat format
  (build_chat_input, whose build_single_message uses the plain SentencePiece ids) and
  process_response, whose tool call is evaluated here by walking the ast of a `tool_call(...)`
  expression (literal_tool_call: the values eval gives for literals) instead of eval.

Used two ways:
    import chatglm_tokenizers                      # by test/fixtures/tokenizer/make_tokenizer_fixtures.py
    chatglm_tokenizers.py < request.json           # by test/tokenizer-synth.test.ts
request: {"model": PATH, "arch": "chatglm-6b" | "chatglm2-6b" | "chatglm3-6b",
          "texts": [...], "decode": [[id, ...], ...],
          chatglm3-6b only: "chats": [{"history": [...], "query": str, "role": str}, ...],
                            "responses": [{"output": str, "history": [...]}, ...]}
reply:   {"vocab_size", "encode": [{"ids", "text_ids", "text_pieces", "decoded"}], "decode": [text, ...],
          "chats": [input_ids, ...], "responses": [{"response", "history"} | {"error"}, ...]}
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


V3_ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]


class V3Tokenizer(V2Tokenizer):
    """chatglm3-6b: ChatGLMTokenizer over SPTokenizer, and the chat format of the same files."""

    def __init__(self, model_path):
        super().__init__(model_path)
        n = self.sp.get_piece_size()
        self.specials = {name: n + k for k, name in enumerate(V2_SPECIALS + V3_ROLES)}
        self.index_specials = {v: k for k, v in self.specials.items()}
        self.vocab_size = n + len(self.specials)

    def id_to_token(self, index):
        # SPTokenizer.convert_id_to_token of chatglm3-6b
        if index in self.index_specials:
            return self.index_specials[index]
        if index in (self.eos_id, self.bos_id, self.pad_id) or index < 0 or index > self.sp.vocab_size():
            return ""
        return self.sp.id_to_piece(index)

    def single_message(self, role, metadata, message):
        # ChatGLMTokenizer.build_single_message: SPTokenizer.encode is the plain sp_model.encode
        assert role in ("system", "user", "assistant", "observation"), role
        return [self.specials["<|%s|>" % role]] + self.sp.encode(metadata + "\n") + self.sp.encode(message)

    def chat_input(self, query, history, role):
        # ChatGLMTokenizer.build_chat_input, then batch_encode_plus(is_split_into_words=True),
        # whose build_inputs_with_special_tokens puts [gMASK] sop in front
        ids = []
        for item in history:
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            ids.extend(self.single_message(item["role"], item.get("metadata", ""), content))
        ids.extend(self.single_message(role, "", query))
        ids.append(self.specials["<|assistant|>"])
        return [self.specials["[gMASK]"], self.specials["sop"]] + ids


def literal_value(node):
    """The value eval gives a literal expression: constants (a str's adjacent parts are one
    Constant already), +/- on numbers (nested too, as eval allows), list, tuple, dict; anything
    else is ValueError (eval would run it)."""
    import ast
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = literal_value(node.operand)
        if isinstance(v, bool) or not isinstance(v, (int, float, complex)):
            raise ValueError("unary sign on a non-number")
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.List):
        return [literal_value(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(literal_value(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("** in a dict")
        return {literal_value(k): literal_value(v) for k, v in zip(node.keys, node.values)}
    raise ValueError("not a literal: %s" % type(node).__name__)


def literal_tool_call(code):
    """What eval(code) gives with `def tool_call(**kwargs): return kwargs` in scope, for a
    `tool_call(k=literal, ...)` expression; ValueError for anything else (where eval would run
    code), SyntaxError where eval would raise it."""
    import ast
    tree = ast.parse(code.strip(" \t"), mode="eval")
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "tool_call"):
        raise ValueError("not a tool_call(...) expression")
    if call.args or any(k.arg is None for k in call.keywords):
        raise ValueError("tool_call takes keyword arguments only")
    names = [k.arg for k in call.keywords]
    if len(set(names)) != len(names):
        raise SyntaxError("keyword argument repeated")  # the compiler's error, after ast.parse
    return {k.arg: literal_value(k.value) for k in call.keywords}


def process_response(output, history):
    """modeling_chatglm.py (chatglm3-6b) ChatGLMForConditionalGeneration.process_response."""
    import copy
    content = ""
    history = copy.deepcopy(history)
    for response in output.split("<|assistant|>"):
        if "\n" in response:
            metadata, content = response.split("\n", maxsplit=1)
        else:
            metadata, content = "", response
        if not metadata.strip():
            content = content.strip()
            history.append({"role": "assistant", "metadata": metadata, "content": content})
            content = content.replace("[[训练时间]]", "2023年")
        else:
            history.append({"role": "assistant", "metadata": metadata, "content": content})
            if history[0]["role"] == "system" and "tools" in history[0]:
                content = "\n".join(content.split("\n")[1:-1])
                parameters = literal_tool_call(content)
                content = {"name": metadata.strip(), "parameters": parameters}
            else:
                content = {"name": metadata.strip(), "content": content}
    return content, history


def respond(r):
    try:
        response, history = process_response(r["output"], r["history"])
        # the text of the plain parts, in order (what glmtool's ResponseStream shows)
        new = history[len(r["history"]):]
        shown = "".join(m["content"].replace("[[训练时间]]", "2023年") for m in new if not m["metadata"].strip())
        out = {"response": response, "history": history, "shown": shown}
        json.dumps(out)  # a value JSON cannot hold (bytes, set, complex) is no answer for glmtool
        return out
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        return {"error": "%s: %s" % (type(e).__name__, e)}


def make(arch, model_path):
    if arch == "chatglm-6b":
        return V1Tokenizer(model_path)
    if arch == "chatglm2-6b":
        return V2Tokenizer(model_path)
    if arch == "chatglm3-6b":
        return V3Tokenizer(model_path)
    raise ValueError("unknown arch %r" % arch)


def main():
    req = json.load(sys.stdin)
    if "model" not in req:
        # process_response alone needs no tokenizer
        out = {"responses": [respond(r) for r in req.get("responses", [])]}
        json.dump(out, sys.stdout, ensure_ascii=False)
        return
    tok = make(req["arch"], req["model"])
    out = {"vocab_size": tok.vocab_size, "encode": [], "decode": []}
    for text in req.get("texts", []):
        ids = tok.encode(text)
        out["encode"].append({"ids": ids, "text_ids": tok.sp.encode(text),
                              "text_pieces": tok.sp.encode(text, out_type=str), "decoded": tok.decode(ids)})
    for ids in req.get("decode", []):
        out["decode"].append(tok.decode(ids))
    if req.get("chats"):
        out["chats"] = [tok.chat_input(c["query"], c["history"], c.get("role", "user")) for c in req["chats"]]
    if req.get("responses"):
        out["responses"] = [respond(r) for r in req["responses"]]
    if req.get("decode_pieces"):
        # the library's DecodePieces on token strings, pieces or not
        out["decode_pieces"] = [tok.sp.decode_pieces(p) for p in req["decode_pieces"]]
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
