#!/usr/bin/env python3
"""Demo corpus extraction and SentencePiece tokenizer training (deploy/demo).

What: produces deploy/demo/corpus.txt (the King James Bible, public domain, from
the Debian package bible-kjv-text, see SOURCE.md) and trains
deploy/demo/tokenizer.model on it with LLaMA's SentencePiece conventions
(engine/README.md, Tokenizer): BPE, <unk>=0, <s>=1, </s>=2, no pad, byte fallback,
split digits, identity normalisation, dummy prefix, no whitespace folding.

Both outputs are committed, so the demo is the same on every machine; this
script documents and reproduces them:

  # corpus (needs `apt-get install bible-kjv bible-kjv-text`):
  python3 deploy/demo/train_tokenizer.py --extract-corpus
  # tokenizer (needs the sentencepiece Python module):
  python3 deploy/demo/train_tokenizer.py

Training is single-threaded with every input sentence used (no sampling), so
the same corpus and SentencePiece version give the same tokenizer.model.
Tested by: engine tokenizer tests and the golden fixtures that load it.
"""

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus.txt")
MODEL_PREFIX = os.path.join(HERE, "tokenizer")

VERSE_RE = re.compile(r"^ +(\d+) (.*)$")


def extract_corpus(path):
    """Dumps Genesis 1:1 - Revelation 22:21 with the `bible` program and
    rewrites it as: a "Book chapter" heading line, then one verse per line
    (verse numbers dropped, wrapped lines joined), a blank line between
    chapters."""
    raw = subprocess.run(["bible", "-l", "100000", "gen1:1-rev22:21"],
                         check=True, capture_output=True, text=True).stdout
    out = []
    verse = None
    prev_blank = True
    for line in raw.splitlines():
        if not line.strip():
            if verse is not None:
                out.append(verse)
                verse = None
            prev_blank = True
            continue
        m = VERSE_RE.match(line)
        if m:
            if verse is not None:
                out.append(verse)
            verse = m.group(2).strip()
        elif prev_blank and verse is None:
            if out:
                out.append("")
            out.append(line.strip())  # chapter heading, e.g. "Genesis 1"
        else:
            verse = (verse + " " + line.strip()) if verse else line.strip()
        prev_blank = False
    if verse is not None:
        out.append(verse)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def train(corpus, prefix):
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=4096,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        max_sentence_length=16384,
        minloglevel=2,
    )
    os.remove(prefix + ".vocab")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extract-corpus", action="store_true",
                    help="rewrite corpus.txt from the installed bible-kjv-text")
    args = ap.parse_args()
    if args.extract_corpus:
        extract_corpus(CORPUS)
        print(f"wrote {CORPUS} ({os.path.getsize(CORPUS)} bytes)")
        return 0
    # The trainer records its input and prefix in the model: paths relative to the repository
    # root, so the model does not depend on where the repository was checked out.
    os.chdir(os.path.dirname(os.path.dirname(HERE)))
    train(os.path.relpath(CORPUS), os.path.relpath(MODEL_PREFIX))
    print(f"wrote {MODEL_PREFIX}.model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
