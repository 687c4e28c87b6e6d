#!/usr/bin/env python3
"""The published chat() text for a decoded string, as the published code computes it.

Written from THUDM's code (not from glmtool's): transformers' clean_up_tokenization (4.27, used
by ChatGLM-6B's decode with its default clean_up_tokenization_spaces=True), and each
generation's modeling_chatglm.py process_response. ChatGLM2-6B's tokenizer passes
clean_up_tokenization_spaces=False.

The first release of ChatGLM-6B (before 2023-04-06) called SPTokenizer.decode directly: no
clean-up, then the same process_response.

    chat_response.py < [{"arch": "chatglm-6b" | "chatglm-6b-first-release" | "chatglm2-6b", "text": str}, ...]
    -> [str, ...]
"""
import json
import re
import sys


def clean_up_tokenization(out_string):
    # transformers.PreTrainedTokenizerBase.clean_up_tokenization
    out_string = (
        out_string.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )
    return out_string


def process_response_v1(response):
    response = response.strip()
    response = response.replace("[[训练时间]]", "2023年")
    punkts = [
        [",", "，"],
        ["!", "！"],
        [":", "："],
        [";", "；"],
        [r"\?", "？"],
    ]
    for item in punkts:
        response = re.sub(r"([\u4e00-\u9fff])%s" % item[0], r"\1%s" % item[1], response)
        response = re.sub(r"%s([\u4e00-\u9fff])" % item[0], r"%s\1" % item[1], response)
    return response


def process_response_v2(response):
    response = response.strip()
    response = response.replace("[[训练时间]]", "2023年")
    return response


def main():
    out = []
    for req in json.load(sys.stdin):
        if req["arch"] == "chatglm-6b":
            out.append(process_response_v1(clean_up_tokenization(req["text"])))
        elif req["arch"] == "chatglm-6b-first-release":
            out.append(process_response_v1(req["text"]))
        else:
            out.append(process_response_v2(req["text"]))
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
