#!/usr/bin/env python3
"""Plots a `specmoe-cli bench --sweep-concurrency ... --json FILE` report.

Left: output tokens/s against concurrency; right: p99 inter-token latency and p99 TTFT (ms).
With --ab both arms (speculation on, off) are drawn. Needs python3-matplotlib (Debian).
`specmoe-cli bench --plot FILE.png` calls this script; it can also be run by hand:
    python3 client/plot_bench.py report.json picture.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator, ScalarFormatter  # noqa: E402


def series(report):
    """Yields (label, rows) per arm; rows are (concurrency, result) pairs."""
    sweep = report.get("sweep")
    if sweep is None:  # a single load: one point
        entry = dict(report)
        entry.setdefault("max_concurrency", report.get("max_concurrency") or 1)
        sweep = [entry]
    if report.get("ab"):
        for arm, label in (("spec_on", "speculation on"), ("spec_off", "speculation off")):
            yield label, [(e["max_concurrency"], e[arm]) for e in sweep]
    else:
        yield "specmoe", [(e["max_concurrency"], e) for e in sweep]


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot_bench.py REPORT.json OUT.png")
    with open(sys.argv[1]) as f:
        report = json.load(f)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    for label, rows in series(report):
        xs = [c for c, _ in rows]
        left.plot(xs, [r["output_throughput"] for _, r in rows], marker="o", label=label)
        right.plot(xs, [r["p99_itl_ms"] for _, r in rows], marker="o", label=f"p99 ITL, {label}")
        right.plot(xs, [r["p99_ttft_ms"] for _, r in rows], marker="x", linestyle="--",
                   label=f"p99 TTFT, {label}")
    concurrencies = sorted({c for _, rows in series(report) for c, _ in rows})
    for axis, title in ((left, "output tokens/s"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(concurrencies)
        axis.set_xticklabels([str(c) for c in concurrencies])
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xlabel("concurrency")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    right.yaxis.set_major_formatter(ScalarFormatter())
    runs = f", median of {report['runs']} runs" if "runs" in report else ""
    fig.suptitle(f"specmoe-cli bench: {report.get('model_id', '')}{runs}", fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2])


if __name__ == "__main__":
    main()
