#!/usr/bin/env python3
"""tests/peer_serving_bench.py — specmoe's server beside llama.cpp's llama-server.

Not a test: a benchmark program run by hand (tests/README.md, Benchmarks). Both servers run
on 127.0.0.1 with the same target weights (specmoe from the HF folder, with its draft and
default policy; llama-server from the GGUF that llama.cpp's own converter made of the same
folder), and `specmoe-cli bench --backend openai` drives each through its OpenAI HTTP API with
the same workload: random 64-token prompts, 128 greedy tokens (ignore_eos), at each
concurrency, in interleaved rounds (A B, then B A). Prints output tokens/s, median TTFT and
median TPOT (medians of the rounds) and the ratios. Only one server is loaded with requests
at a time; both stay resident (same page-cache state).

  tests/peer_serving_bench.py --build build --target DEMO/target --draft DEMO/draft \
      --gguf demo-f32.gguf --llama-server /path/llama-server --concurrency 1,4,16 --rounds 2
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from peer_kernels_bench import cpu_name


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, what, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"{what} was not ready at {url} within {timeout} s")


def bench(cli, base_url, concurrency, prompt_len, output_len, out_json):
    n = max(8, 2 * concurrency)
    cmd = [cli, "--temperature", "0", "--ignore-eos", "bench", "--backend", "openai",
           "--base-url", base_url, "--dataset-name", "random", "--input-len", str(prompt_len),
           "--output-len", str(output_len), "--num-requests", str(n), "--concurrency",
           str(concurrency), "--warmup", str(min(concurrency, 4)), "--json", out_json]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(out_json) as f:
        report = json.load(f)
    if report["completed"] != n or report["total_output_tokens"] != n * output_len:
        sys.exit(f"{base_url}: {report['completed']} of {n} requests completed, "
                 f"{report['total_output_tokens']} tokens (expected {n * output_len})")
    return report["output_throughput"], report["median_ttft_ms"], report["median_tpot_ms"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    slots = max(levels)
    context = slots * (args.prompt_len + args.output_len + 64)

    s_port, l_port, grpc_port = free_port(), free_port(), free_port()
    logs = tempfile.mkdtemp(prefix="peer_serving_")
    specmoe = subprocess.Popen(
        [os.path.join(args.build, "server/specmoe-server"), "--target", args.target, "--draft",
         args.draft, "--listen", f"127.0.0.1:{grpc_port}", "--http-listen",
         f"127.0.0.1:{s_port}", "--max-batch", str(slots)],
        stdout=open(os.path.join(logs, "specmoe.log"), "w"), stderr=subprocess.STDOUT)
    llama = subprocess.Popen(
        [args.llama_server, "-m", args.gguf, "--host", "127.0.0.1", "--port", str(l_port),
         "-t", str(args.threads), "-np", str(slots), "-c", str(context), "--no-webui"],
        stdout=open(os.path.join(logs, "llama.log"), "w"), stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{s_port}/health", specmoe, "specmoe-server")
        wait_ready(f"http://127.0.0.1:{l_port}/health", llama, "llama-server")
        servers = {"specmoe": f"http://127.0.0.1:{s_port}/v1",
                   "llama.cpp": f"http://127.0.0.1:{l_port}/v1"}
        cli = os.path.join(args.build, "client/specmoe-cli")
        results = {(who, c): [] for who in servers for c in levels}
        for rnd in range(args.rounds):
            for c in levels:
                order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
                for who in order:
                    out = os.path.join(logs, f"{who}-{c}-{rnd}.json")
                    results[(who, c)].append(bench(cli, servers[who], c, args.prompt_len,
                                                   args.output_len, out))
                print(f"round {rnd + 1} concurrency {c} done", file=sys.stderr, flush=True)
    finally:
        for proc in (specmoe, llama):
            proc.terminate()
            proc.wait(timeout=60)

    med = statistics.median
    print(f"\n{cpu_name()}, {args.threads} threads; {args.prompt_len}-token prompts, "
          f"{args.output_len} greedy tokens; {args.rounds} interleaved rounds, medians; "
          f"logs in {logs}\n")
    print("| concurrency | specmoe tok/s | llama-server tok/s | ratio | specmoe TTFT ms | "
          "llama-server TTFT ms | specmoe TPOT ms | llama-server TPOT ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        s = [med(x) for x in zip(*results[("specmoe", c)])]
        l = [med(x) for x in zip(*results[("llama.cpp", c)])]
        print(f"| {c} | {s[0]:.1f} | {l[0]:.1f} | {s[0] / l[0]:.2f}x | {s[1]:.0f} | {l[1]:.0f} "
              f"| {s[2]:.1f} | {l[2]:.1f} |")


if __name__ == "__main__":
    main()
