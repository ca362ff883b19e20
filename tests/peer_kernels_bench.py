#!/usr/bin/env python3
"""tests/peer_kernels_bench.py — specmoe's CPU forward beside llama.cpp's, side by side.

Not a test: a benchmark program run by hand (tests/README.md, Benchmarks). For each weight
type it runs, in interleaved rounds, specmoe's decode_bench (decode of 64 tokens beside the
read-bandwidth floor, and prefill passes of n = 1..512 tokens) and llama.cpp's llama-bench
(tg64 and pp n, same thread count) on the same weights, and prints the medians and the
ratios. llama.cpp is built outside the repository (tests/README.md says how); its GGUF files
come from its own convert_hf_to_gguf.py on the same HF folders.

  tests/peer_kernels_bench.py --decode-bench build/tests/decode_bench \
      --llama-bench /path/llama-bench --rounds 3 \
      --model f32=DEMO/target:demo-f32.gguf --model f16=DEMO16/target:demo-f16.gguf \
      --model bf16=DEMO/target@bf16:demo-bf16.gguf
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys

PASS_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
DECODE_TOKENS = 64


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def run(cmd, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def specmoe_decode(decode_bench, spec):
    """(tok/s, floor tok/s) of decode_bench's table 1 (its own median of 5 rounds)."""
    out = run([decode_bench, spec], {"SPECMOE_BENCH_DECODE_ONLY": "1"})
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] == spec:
            return float(cells[3]), float(cells[4])
    sys.exit(f"decode_bench printed no decode row for {spec}:\n{out}")


def specmoe_prefill(decode_bench, spec):
    """{n: tokens/s} of decode_bench's prefill table."""
    out = run([decode_bench, spec], {"SPECMOE_BENCH_PREFILL_ONLY": "1"})
    rates = {}
    for line in out.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|", line)
        if m:
            rates[int(m.group(1))] = float(m.group(3))
    if sorted(rates) != PASS_SIZES:
        sys.exit(f"decode_bench printed an incomplete prefill table for {spec}:\n{out}")
    return rates


def llama_bench(binary, gguf, threads):
    """({n: pp tokens/s}, tg64 tokens/s) from one llama-bench run (its own average)."""
    out = run([binary, "-m", gguf, "-t", str(threads), "-r", "2", "-o", "json",
               "-p", ",".join(str(n) for n in PASS_SIZES), "-n", str(DECODE_TOKENS)])
    pp, tg = {}, None
    for row in json.loads(out):
        if row["n_gen"] == 0:
            pp[row["n_prompt"]] = row["avg_ts"]
        elif row["n_prompt"] == 0:
            tg = row["avg_ts"]
    return pp, tg


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decode-bench", required=True)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--model", action="append", required=True,
                    help="NAME=SPECMOE_DIR[@dtype]:GGUF (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    models = []
    for spec in args.model:
        name, rest = spec.split("=", 1)
        folder, gguf = rest.rsplit(":", 1)
        models.append((name, folder, gguf))

    # name -> lists of per-round figures
    s_tg, s_floor, l_tg = {}, {}, {}
    s_pp = {m[0]: {n: [] for n in PASS_SIZES} for m in models}
    l_pp = {m[0]: {n: [] for n in PASS_SIZES} for m in models}
    for name, folder, gguf in models:  # warm both page caches before the first round
        with open(gguf, "rb") as f:
            while f.read(1 << 24):
                pass
        specmoe_decode(args.decode_bench, folder)
    for rnd in range(args.rounds):
        for name, folder, gguf in models:
            order = ["specmoe", "llama"] if rnd % 2 == 0 else ["llama", "specmoe"]
            for who in order:
                if who == "specmoe":
                    tps, floor = specmoe_decode(args.decode_bench, folder)
                    s_tg.setdefault(name, []).append(tps)
                    s_floor.setdefault(name, []).append(floor)
                    for n, r in specmoe_prefill(args.decode_bench, folder).items():
                        s_pp[name][n].append(r)
                else:
                    pp, tg = llama_bench(args.llama_bench, gguf, args.threads)
                    l_tg.setdefault(name, []).append(tg)
                    for n in PASS_SIZES:
                        l_pp[name][n].append(pp[n])
            print(f"round {rnd + 1}/{args.rounds} {name} done", file=sys.stderr, flush=True)

    med = statistics.median
    print(f"\n{cpu_name()}, {args.threads} threads, {args.rounds} interleaved rounds, medians\n")
    print("| weights | specmoe decode tok/s | floor tok/s | % of floor | llama.cpp tg64 tok/s "
          "| specmoe / llama.cpp |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, _, _ in models:
        ratio = med(s_tg[name]) / med(l_tg[name])
        print(f"| {name} | {med(s_tg[name]):.1f} | {med(s_floor[name]):.1f} | "
              f"{100 * med(s_tg[name]) / med(s_floor[name]):.0f}% | {med(l_tg[name]):.1f} "
              f"| {ratio:.2f}x |")
    print("\nPasses of n tokens from an empty context (llama-bench pp n), tokens/s: "
          "specmoe / llama.cpp (ratio)\n")
    print("| weights | " + " | ".join(f"n={n}" for n in PASS_SIZES) + " |")
    print("|---|" + "---:|" * len(PASS_SIZES))
    for name, _, _ in models:
        cells = []
        for n in PASS_SIZES:
            a, b = med(s_pp[name][n]), med(l_pp[name][n])
            cells.append(f"{a:.0f} / {b:.0f} ({a / b:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nspecmoe's cost of an n-token pass over a 1-token pass (goal: n=16 <= 1.5x, "
          "n=64 <= 3x)\n")
    print("| weights | " + " | ".join(f"n={n}" for n in PASS_SIZES[1:]) + " |")
    print("|---|" + "---:|" * (len(PASS_SIZES) - 1))
    for name, _, _ in models:
        one = 1 / med(s_pp[name][1])
        print(f"| {name} | " + " | ".join(
            f"{(n / med(s_pp[name][n])) / one:.2f}x" for n in PASS_SIZES[1:]) + " |")


if __name__ == "__main__":
    main()
