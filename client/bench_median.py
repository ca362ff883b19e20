#!/usr/bin/env python3
"""Medians of several `specmoe-cli bench --ab --sweep-concurrency ... --json` reports.

    python3 client/bench_median.py OUT.json run1.json run2.json run3.json

Writes OUT.json (the same shape as one report, each number the median over the runs, so
client/plot_bench.py draws it) and prints a Markdown table: output tokens/s and p50/p99 ITL
per concurrency, speculation on and off, with the on/off ratio.
"""
import json
import statistics
import sys

KEYS = ("output_throughput", "request_throughput", "median_itl_ms", "p99_itl_ms",
        "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_e2el_ms",
        "mean_tokens_per_step", "completed", "failed")


def main():
    out_path, paths = sys.argv[1], sys.argv[2:]
    runs = [json.load(open(p)) for p in paths]
    median = {k: v for k, v in runs[0].items() if k != "sweep"}
    median["runs"] = len(runs)
    median["sweep"] = []
    for i, entry in enumerate(runs[0]["sweep"]):
        row = {"max_concurrency": entry["max_concurrency"]}
        for arm in ("spec_on", "spec_off"):
            row[arm] = {k: statistics.median(r["sweep"][i][arm][k] for r in runs) for k in KEYS}
        row["ratio"] = {"output_throughput":
                        row["spec_on"]["output_throughput"] / row["spec_off"]["output_throughput"]}
        median["sweep"].append(row)
    with open(out_path, "w") as f:
        json.dump(median, f, indent=2)
    print(f"| concurrency | out tok/s spec on | out tok/s spec off | on/off | p50 ITL ms on / off "
          f"| p99 ITL ms on / off |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in median["sweep"]:
        on, off = row["spec_on"], row["spec_off"]
        print(f"| {row['max_concurrency']} | {on['output_throughput']:.1f} | "
              f"{off['output_throughput']:.1f} | {row['ratio']['output_throughput']:.2f} | "
              f"{on['median_itl_ms']:.1f} / {off['median_itl_ms']:.1f} | "
              f"{on['p99_itl_ms']:.1f} / {off['p99_itl_ms']:.1f} |")


if __name__ == "__main__":
    main()
