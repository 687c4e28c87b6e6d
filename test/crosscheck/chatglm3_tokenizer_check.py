#!/usr/bin/env python3
"""glmtool's ChatGLM3-6B tokenizer and chat format against the PUBLISHED tokenization_chatglm.py
(and process_response of modeling_chatglm.py) of THUDM/chatglm3-6b, imported from --pub DIR
(copies, never committed: e.g. the HF mirror czk1997/chatglm3-copy @456aa87).

    chatglm3_tokenizer_check.py --pub DIR [--model tokenizer.model] [--real-transformers]
                                [--count N] [--seed N] [--json REPORT]
                                [--save-answers FILE | --answers FILE]

Compared, case for case, with glmtool's built code (dist/, `npm run build`) through
chatglm3_glmtool.mjs:
- encode(text, add_special_tokens=False) and encode(text) (build_inputs_with_special_tokens);
- build_chat_input(query, history, role)['input_ids']: single and multi-turn, system prompts,
  tools (json.dumps), tool-call and observation turns, over varied text;
- decode(ids) of random id sequences (specials, </s> <s> <unk>, byte pieces, rows past the
  vocabulary);
- process_response(output, history), the published method itself (its source taken out of
  modeling_chatglm.py and run alone, so that torch is not needed) on outputs whose tool calls are
  literals this script writes (it runs the published eval on them).

Where node is absent (the GPU machine), --answers FILE reads the cases and glmtool's answers
that --save-answers FILE wrote on a machine with node (README.md says how).

transformers: by default the stand-in test/crosscheck/hf_standin (tokenization_utils.py there says
which behaviour is the stand-in's: the PreTrainedTokenizer paths of transformers 4.30); with
--real-transformers the installed transformers. Exit status 0 when everything agrees, 1 on any
mismatch, 3 when no case mismatched but the published code raised under this transformers
(e.g. a newer PreTrainedTokenizer calling _pad with arguments the published _pad lacks), 2 when
something needed is missing.
"""
import argparse
import ast
import copy
import json
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def corpus(rng, count):
    base = [
        "", "你好", "你好，请介绍一下你自己。", "Hello, world!", "What's the weather in Beijing today?",
        "👋😀 emoji 🇨🇳 and 𠀀", "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "a" + " " * 40 + "b",
        "sop", "esop eop [gMASK] [MASK] [sMASK]", "<|user|>", "x<|assistant|>y <|system|>\n<|observation|>",
        "<s></s><unk>", "[[训练时间]]", "```python\ntool_call(location=\"北京\")\n```", "\n", "\n\n\n", " ",
        "\u3000全角空格\u3000", "ｆｕｌｌ　ｗｉｄｔｈ １２３", "Ünïcödé ñ ß ø", "\u200b\u200d zero width", "\x00\x1f",
    ]
    parts = base + ["中文", "English", " ", "  ", "\n", "\t", "<|", "|>", "🙂", "\U0010ffff", "\u0301", '"', "\\"]
    out = list(base)
    for _ in range(count):
        out.append("".join(rng.choice(parts) for _ in range(rng.randint(1, 8))))
    return out


TOOL_PROMPT = "Answer the following questions as best as you can. You have access to the following tools:"
WEATHER = [{"name": "get_current_weather", "description": "Get the current weather in a given location",
            "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                           "required": ["location"]}}]
ODD = [{"name": "/text-to-speech", "description": "将文本转换为语音", "parameters": {"type": "object", "properties": {}, "required": []}},
       {"name": "quotes \"and\" \\ back", "d": "ctrl \x01\x1f\b\f\n\r\t \x7f \u2028 🙂", "e": {}, "l": [], "n": [[], [{}], [1, [2.5, None, True, False]]]}]


def chats(rng, texts, count):
    roles = ["system", "user", "assistant", "observation"]
    out = [
        {"history": [], "query": "你好", "role": "user"},
        {"history": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好👋！我是人工智能助手 ChatGLM3-6B。"}], "query": "晚上睡不着应该怎么办", "role": "user"},
        {"history": [{"role": "system", "content": "You are ChatGLM3, a large language model trained by Zhipu.AI."}], "query": "Hello", "role": "user"},
        {"history": [{"role": "system", "content": TOOL_PROMPT, "tools": WEATHER}], "query": "What's the weather in Beijing today?", "role": "user"},
        {"history": [{"role": "system", "content": TOOL_PROMPT, "tools": WEATHER}, {"role": "user", "content": "What's the weather in Beijing today?"},
                     {"role": "assistant", "metadata": "get_current_weather", "content": "```python\ntool_call(location=\"beijing\", unit=\"celsius\")\n```"}],
         "query": "{\"temperature\": 22}", "role": "observation"},
        {"history": [{"role": "system", "content": TOOL_PROMPT, "tools": ODD}], "query": "sop <|user|>", "role": "user"},
    ]
    for _ in range(count):
        history = []
        for _ in range(rng.randint(0, 5)):
            m = {"role": rng.choice(roles), "content": rng.choice(texts)}
            if rng.random() < 0.25:
                m["metadata"] = rng.choice(texts)
            if m["role"] == "system" and rng.random() < 0.5:
                m["tools"] = rng.choice([WEATHER, ODD])
            history.append(m)
        out.append({"history": history, "query": rng.choice(texts), "role": rng.choice(roles)})
    return out


def id_sequences(rng, count, n):
    special = [0, 1, 2] + list(range(n, n + 9))
    out = []
    for _ in range(count):
        seq = []
        for _ in range(rng.randint(1, 20)):
            r = rng.random()
            seq.append(rng.randint(3, 258) if r < 0.3 else rng.choice(special) if r < 0.5 else rng.randint(n + 9, 65023) if r < 0.6 else rng.randint(0, n - 1))
        out.append(seq)
    return out


def responses(rng, texts):
    """Outputs and histories for process_response; every tool call is a literal written here."""
    tools = [{"role": "system", "content": TOOL_PROMPT, "tools": WEATHER}, {"role": "user", "content": "q"}]
    plain = [{"role": "user", "content": "q"}]
    calls = ['tool_call(location="beijing", unit="celsius")', "tool_call(symbol='10111')", "tool_call()",
             "tool_call(a=[1, (2, 3), {'k': None}], b=-1.5e-3, c=True, d=0x1F, e='\\u4f60\\n')", "tool_call(\n    x=1,\n)"]
    out = []
    for c in calls:
        out.append({"output": "get_current_weather\n```python\n%s\n```" % c, "history": tools})
        out.append({"output": "\nLet me look it up.<|assistant|>get_current_weather\n```python\n%s\n```" % c, "history": tools})
    out.append({"output": "interpreter\n```python\nprint(1)\n```", "history": plain})
    parts = ["\n", " ", "\t", "\u3000", "<|assistant|>", "[[训练时间]]", "abc", "你好", "🙂", "x\ny"]
    for _ in range(300):
        t = "".join(rng.choice(parts + texts[:20]) for _ in range(rng.randint(0, 8)))
        # Only outputs whose parts with metadata are not read as tool calls (no tools in the history).
        out.append({"output": t, "history": plain})
    return out


def published_process_response(pub):
    """modeling_chatglm.py's ChatGLMForConditionalGeneration.process_response, run alone."""
    path = os.path.join(pub, "modeling_chatglm.py")
    if not os.path.isfile(path):
        return None
    src = open(path, encoding="utf-8").read()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ClassDef) and node.name == "ChatGLMForConditionalGeneration":
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == "process_response":
                    code = "\n".join(line[4:] for line in ast.get_source_segment(src, f, padded=True).split("\n"))
                    ns = {"deepcopy": copy.deepcopy}
                    exec(compile(code, path, "exec"), ns)  # the published method's own text
                    return lambda output, history: ns["process_response"](None, output, history)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pub", required=True, help="directory with the published tokenization_chatglm.py (and modeling_chatglm.py)")
    ap.add_argument("--model", default=os.path.join(ROOT, "..", "shared", "real", "chatglm2-6b_tokenizer.model"))
    ap.add_argument("--real-transformers", action="store_true")
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--node", default="node")
    ap.add_argument("--glmtool", default=os.path.join(HERE, "chatglm3_glmtool.mjs"), help="glmtool's side (default: chatglm3_glmtool.mjs over dist/; or its esbuild bundle)")
    ap.add_argument("--json")
    ap.add_argument("--save-answers", help="also write the cases and glmtool's answers to this file")
    ap.add_argument("--answers", help="read the cases and glmtool's answers from this file instead of running node")
    args = ap.parse_args()

    for need in (os.path.join(args.pub, "tokenization_chatglm.py"), args.model):
        if not os.path.isfile(need):
            print("missing: %s" % need, file=sys.stderr)
            return 2
    if not args.real_transformers:
        sys.path.insert(0, os.path.join(HERE, "hf_standin"))
    sys.path.insert(0, os.path.abspath(args.pub))
    import transformers
    import tokenization_chatglm
    tok = tokenization_chatglm.ChatGLMTokenizer(vocab_file=args.model)
    process_response = published_process_response(args.pub)

    if args.answers:
        with open(args.answers, encoding="utf-8") as f:
            saved = json.load(f)
        req, got = saved["request"], saved["glmtool"]
        texts = req["texts"]
        if not process_response:
            req["responses"] = []
    else:
        rng = random.Random(args.seed)
        texts = corpus(rng, args.count)
        req = {"model": args.model, "texts": texts, "chats": chats(rng, texts, args.count // 2),
               "decode": id_sequences(rng, args.count, tok.tokenizer.sp_model.vocab_size()),
               "responses": responses(rng, texts) if process_response else []}
        node = subprocess.run([args.node, args.glmtool], input=json.dumps(req, ensure_ascii=False),
                              capture_output=True, text=True, encoding="utf-8")
        if node.returncode != 0:
            print(node.stderr, file=sys.stderr)
            return 2
        got = json.loads(node.stdout)
        if args.save_answers:
            with open(args.save_answers, "w", encoding="utf-8") as f:
                json.dump({"request": req, "glmtool": got}, f, ensure_ascii=False)

    def as_list(x):
        return x.tolist() if hasattr(x, "tolist") else x

    report = {"transformers": getattr(transformers, "__version__", "?"), "pub": os.path.abspath(args.pub), "model": args.model, "checks": {}}
    failures = 0
    raised = 0

    def check(name, cases, want, have, show):
        nonlocal failures, raised
        try:
            want = want()
        except Exception as e:  # the published code under this transformers, not glmtool
            raised += 1
            report["checks"][name] = {"cases": len(cases), "published_raised": "%s: %s" % (type(e).__name__, e)}
            print("%-28s the published code raised %s: %s" % (name, type(e).__name__, str(e)[:300]))
            return
        bad = [show(c, w, h) for c, w, h in zip(cases, want, have) if w != h]
        report["checks"][name] = {"cases": len(cases), "mismatches": len(bad), "first": bad[:3]}
        failures += len(bad)
        print("%-28s %5d cases, %d mismatches" % (name, len(cases), len(bad)))
        for b in bad[:3]:
            print("    " + b[:400])

    brief = lambda c, w, h: "%r: published %r, glmtool %r" % (c, w, h)  # noqa: E731
    check("vocab_size", [0], lambda: [tok.vocab_size], [got["vocab_size"]], brief)
    check("encode", texts, lambda: [tok.encode(t, add_special_tokens=False) for t in texts], got["encode"], brief)
    check("encode+specials", texts, lambda: [tok.encode(t) for t in texts], got["prompt"], brief)
    check("build_chat_input", req["chats"], lambda: [as_list(tok.build_chat_input(c["query"], history=copy.deepcopy(c["history"]), role=c["role"])["input_ids"])[0] for c in req["chats"]],
          got["chats"], brief)
    check("decode", req["decode"], lambda: [tok.decode(ids) for ids in req["decode"]], got["decode"], brief)

    def published_responses():
        want = []
        for r in req["responses"]:
            response, history = process_response(r["output"], copy.deepcopy(r["history"]))
            want.append(json.loads(json.dumps({"response": response, "history": history}, ensure_ascii=False)))
        return want
    if process_response:
        check("process_response", req["responses"], published_responses, got["responses"], brief)
    else:
        print("process_response: skipped (no modeling_chatglm.py in %s)" % args.pub)
    report["ok"] = failures == 0 and raised == 0
    verdict = "all agree" if report["ok"] else "%d mismatches, %d checks where the published code raised" % (failures, raised)
    print("transformers %s; %s" % (report["transformers"], verdict))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, ensure_ascii=False, indent=1)
    return 1 if failures else 3 if raised else 0


if __name__ == "__main__":
    sys.exit(main())
