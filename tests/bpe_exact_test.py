#!/usr/bin/env python3
"""tests/bpe_exact_test.py — engine::Tokenizer on tokenizer.json against Hugging Face `tokenizers`.

Trains a small byte-level BPE with the `tokenizers` package on generated text, writes it in
four shapes (GPT-2's ByteLevel regex; LLaMA-3's Split regex with ignore_merges and a BOS
template; SmolLM's individual Digits then ByteLevel; ByteLevel with add_prefix_space), with
special and plain added tokens, and generates a corpus of 10^4 strings (mixed scripts, emoji,
digits, whitespace runs, special tokens inside text, and invalid UTF-8 that must be refused).
The expected ids and decoded text come from `tokenizers`; tests/bpe_exact_check.cc (argv[1])
compares the engine on every string, and on decodes of random id sequences.

Run by ctest with the tools venv's Python (deploy/setup.sh installs tokenizers there).
"""
import json
import os
import random
import subprocess
import sys
import tempfile

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers import processors

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]
PLAIN_ADDED = ["<sep>", "hello world"]
LSTRIP_ADDED = "<mask>"

WORDS = ["the", "The", "quick", "brown", "fox", "don't", "I'm", "we'll", "THEY'RE", "it's",
         "you've", "I'D", "naïve", "café", "Straße", "über", "hello", "world", "tokenizer",
         "привет", "мир", "Γειά", "σου", "مرحبا", "שלום", "नमस्ते", "你好", "世界", "こんにちは",
         "안녕하세요", "สวัสดี", "e\u0301", "a\u0308\u0304", "ﬁ", "Ⅻ", "½", "x²", "٣٤٥", "१२३",
         "🙂", "🚀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🏳️‍🌈", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𠀋", "$", "€",
         "(", ")", "...", "--", "->", "#", "@user", "http://x.y/z?q=1", "a_b", "camelCase",
         "snake_case", "<", "|", ">", "<|", "|>", "<|im_sta", "im_end|>", "<se", "sep>"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009",
          "\u0085", "\u2028", "\u180e", " \t ", "    \n", "\n   "]


def random_number(rng):
    n = rng.choice([1, 2, 3, 4, 5, 7, 10, 13])
    s = "".join(rng.choice("0123456789") for _ in range(n))
    return rng.choice([s, s + ".5", "-" + s, s[:1] + "," + s, "0x" + s])


def random_string(rng):
    parts = []
    for _ in range(rng.randint(0, 14)):
        r = rng.random()
        if r < 0.45:
            parts.append(rng.choice(WORDS))
        elif r < 0.60:
            parts.append(random_number(rng))
        elif r < 0.80:
            parts.append(rng.choice(SPACES))
        elif r < 0.88:
            parts.append(rng.choice(SPECIALS + PLAIN_ADDED + [LSTRIP_ADDED, " " + LSTRIP_ADDED]))
        elif r < 0.96:
            cp = rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff),
                             rng.randint(0x3000, 0xd7ff), rng.randint(0xe000, 0xfffd),
                             rng.randint(0x10000, 0x10ffff)])
            parts.append(chr(cp))
        else:
            parts.append(rng.choice(WORDS).upper())
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


def invalid_bytes(rng):
    good = random_string(rng).encode()
    bad = rng.choice([b"\xff", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                      b"\x80", b"\xf0\x9f\x98", bytes([rng.randint(0x80, 0xff)])])
    cut = rng.randint(0, len(good))
    return good[:cut] + bad + good[cut:]


def train(rng):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([random_string(rng) for _ in range(4000)], trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=True) for t in PLAIN_ADDED])
    tok.add_tokens([AddedToken(LSTRIP_ADDED, lstrip=True, rstrip=False, normalized=False)])
    return json.loads(tok.to_str())


def variants(base):
    gpt2 = json.loads(json.dumps(base))
    llama3 = json.loads(json.dumps(base))
    llama3["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}
    llama3["model"]["ignore_merges"] = True
    bos = SPECIALS.index("<|begin_of_text|>")
    llama3["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
         "use_regex": True},
        json.loads(processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", bos)]).__getstate__())]}
    smollm = json.loads(json.dumps(base))
    smollm["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": True}]}
    prefix = json.loads(json.dumps(base))
    prefix["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True,
                               "trim_offsets": True, "use_regex": True}
    return {"gpt2": (gpt2, -1), "llama3": (llama3, bos), "smollm": (smollm, -1),
            "prefix_space": (prefix, -1)}


def main():
    checker = sys.argv[1]
    rng = random.Random(20)
    base = train(rng)
    corpus = [random_string(rng) for _ in range(10000 - 300)] + [""]
    corpus += [rng.choice(SPACES) * rng.randint(1, 40) for _ in range(100)]
    corpus += [random_number(rng) * rng.randint(1, 6) for _ in range(99)]
    corpus += [rng.choice(WORDS) * rng.randint(20, 200) for _ in range(100)]
    raw = [s.encode() for s in corpus] + [invalid_bytes(rng) for _ in range(300)]
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, (spec, bos) in variants(base).items():
            folder = os.path.join(tmp, name)
            os.makedirs(folder)
            text = json.dumps(spec, ensure_ascii=False)
            with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
                f.write(text)
            tok = Tokenizer.from_str(text)
            valid = []
            for b in raw:
                try:
                    valid.append(b.decode("utf-8"))
                except UnicodeDecodeError:
                    valid.append(None)
            texts = [t for t in valid if t is not None]
            plain = tok.encode_batch(texts, add_special_tokens=False)
            with_bos = tok.encode_batch(texts[:2000], add_special_tokens=True)
            cases = []
            k = 0
            for b, t in zip(raw, valid):
                case = {"hex": b.hex(), "ids": None}
                if t is not None:
                    ids = plain[k].ids
                    case["ids"] = ids
                    case["decoded"] = tok.decode(ids, skip_special_tokens=True)
                    if k < len(with_bos):
                        case["bos_ids"] = with_bos[k].ids
                    k += 1
                cases.append(case)
            size = tok.get_vocab_size(with_added_tokens=True)
            decode_cases = []
            for _ in range(2000):
                ids = [rng.randrange(size) for _ in range(rng.randint(1, 12))]
                decode_cases.append({"ids": ids,
                                     "decoded": tok.decode(ids, skip_special_tokens=True)})
            cases_path = os.path.join(tmp, name + "_cases.json")
            with open(cases_path, "w", encoding="utf-8") as f:
                json.dump({"dir": folder, "bos": bos, "encode": cases, "decode": decode_cases},
                          f, ensure_ascii=False)
            result = subprocess.run([checker, cases_path], check=False)
            if result.returncode != 0:
                print(f"{name}: the engine disagrees with tokenizers", file=sys.stderr)
                failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
