"""Sequence-level distillation data: SmolLM2-135M-Instruct's greedy answers, from specmoe itself.

Sends the questions of prompts.py (ChatML, tokenized with the target's tokenizer.json) to a
running specmoe-server's HTTP front (/v1/completions, prompt as token ids, temperature 0,
return_token_ids) from `--concurrency` threads and writes one JSON line per answer:
{"question", "prompt_ids", "answer_ids"}. The target must be served WITHOUT a draft (greedy
text does not depend on it, but data generation is then plain target decoding).

    specmoe-server --target build/models/smollm2-135m-instruct --http-listen 127.0.0.1:8765 &
    ~/.cache/specmoe/tools-venv/bin/python deploy/demo/gen_data.py \
        --tokenizer build/models/smollm2-135m-instruct/tokenizer.json \
        --url http://127.0.0.1:8765 --split train --n 3000 --out build/distill/train.jsonl

Runs until --n answers or --minutes have passed (answers already in --out are kept and their
questions skipped, so it can be resumed). Needs the `tokenizers` package (the tools venv).
"""
import argparse
import concurrent.futures
import json
import os
import sys
import time
import urllib.request

from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prompts  # noqa: E402


def complete(url, prompt_ids, max_tokens):
    body = json.dumps({"prompt": prompt_ids, "max_tokens": max_tokens,
                       "temperature": 0, "return_token_ids": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        choice = json.load(r)["choices"][0]
    return choice["token_ids"], choice.get("finish_reason")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--url", default="http://127.0.0.1:8765")
    ap.add_argument("--split", choices=["train", "heldout"], default="train")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=1e9)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    tok = Tokenizer.from_file(args.tokenizer)
    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = {json.loads(line)["question"] for line in f}
    todo = [(q, text) for q, text in prompts.prompts(args.split, args.n, args.seed)
            if q not in done]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    deadline = time.time() + args.minutes * 60
    start, tokens, n = time.time(), 0, 0
    with open(args.out, "a") as out, \
            concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        def job(item):
            question, text = item
            if time.time() > deadline:
                return None
            ids = tok.encode(text, add_special_tokens=False).ids
            answer, finish = complete(args.url, ids, args.max_tokens)
            return {"question": question, "prompt_ids": ids, "answer_ids": answer,
                    "finish": finish}
        for rec in pool.map(job, todo):
            if rec is None:
                continue
            out.write(json.dumps(rec) + "\n")
            out.flush()
            n += 1
            tokens += len(rec["answer_ids"])
            if n % 50 == 0:
                dt = time.time() - start
                print(f"{n} answers, {tokens} tokens, {tokens / dt:.1f} tok/s", flush=True)
    print(f"done: {n} answers, {tokens} tokens in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
