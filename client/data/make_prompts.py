#!/usr/bin/env python3
"""Cuts the bench's prompt file client/data/prompts.jsonl from deploy/demo/corpus.txt.

Deterministic: every 155th verse of the King James Bible (the demo corpus, public domain,
see deploy/demo/SOURCE.md), its first 6 to 12 words (the length cycles) as the prompt.
Each line is {"prompt": ..., "source": "deploy/demo/corpus.txt line N: Book C:V"}.
Usage: python3 client/data/make_prompts.py [--count 200]
"""
import argparse
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADING = re.compile(r"^(.+) (\d+)$")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--stride", type=int, default=155)
    args = parser.parse_args()
    corpus = ROOT / "deploy/demo/corpus.txt"
    verses = []
    book, chapter, verse = None, None, 0
    for number, line in enumerate(corpus.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        heading = HEADING.match(line)
        if heading and "." not in line and len(line.split()) <= 4:
            book, chapter, verse = heading.group(1), heading.group(2), 0
            continue
        verse += 1
        verses.append((number, f"{book} {chapter}:{verse}", line))
    out = ROOT / "client/data/prompts.jsonl"
    with out.open("w") as f:
        for i in range(args.count):
            number, reference, text = verses[(i * args.stride) % len(verses)]
            words = text.split()[: 6 + i % 7]
            prompt = " ".join(words).rstrip(",;:")
            source = f"deploy/demo/corpus.txt line {number}: {reference}"
            f.write(json.dumps({"prompt": prompt, "source": source}) + "\n")
    print(f"wrote {args.count} prompts to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
