#!/usr/bin/env python3
"""Run test/reference/chatglm_ref.py's CLI for several cases in one Python process (torch is
imported and CUDA initialised once). Input: a JSON file, a list of argument lists for
chatglm_ref.main (each with its own --out). Prints one JSON line per case: {"case": i, "rc": rc}.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import chatglm_ref  # noqa: E402


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    worst = 0
    for i, args in enumerate(cases):
        try:
            rc = chatglm_ref.main(args)
        except Exception as e:  # noqa: BLE001 -- report and go on with the next case
            print(f"case {i}: {e}", file=sys.stderr)
            rc = 3
        print(json.dumps({"case": i, "rc": rc}), flush=True)
        worst = max(worst, rc)
    return worst


if __name__ == "__main__":
    sys.exit(main())
