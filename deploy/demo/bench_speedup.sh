#!/usr/bin/env bash
# Speculation's speedup on SmolLM2-135M-Instruct + its distilled LLaMA-MoE draft through the
# server: specmoe-cli bench --ab (the same held-out ChatML questions with speculation on, under
# the server's default dynamic tree policy, and off, interleaved) at concurrency 1, 4 and 16,
# ROUNDS times; prints each run's output tokens/s and the medians (tests/README.md, "A
# distilled draft for SmolLM2"). Needs build/server/specmoe-server, build/client/specmoe-cli and
# the imported target (./deploy/quickstart.sh makes all three).
# Usage: deploy/demo/bench_speedup.sh [out_dir]
#   ROUNDS=2  CONCURRENCY="1 4 16"  REQUESTS="6 8 32" (one per concurrency)  TREE=  THREADS=0
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-build/distill/bench}
TARGET=${TARGET:-build/models/smollm2-135m-instruct}
DRAFT=${DRAFT:-deploy/demo/smollm2-moe-draft}
ROUNDS=${ROUNDS:-2}
read -r -a CONCURRENCY <<<"${CONCURRENCY:-1 4 16}"
read -r -a REQUESTS <<<"${REQUESTS:-6 8 32}"
PORT=${PORT:-50571}
mkdir -p "$OUT"
/usr/bin/python3 deploy/demo/prompts.py --split heldout --n 64 --seed 1 --max-tokens 64 \
    --bench-jsonl "$OUT/prompts.jsonl"

build/server/specmoe-server --target "$TARGET" --draft "$DRAFT" --listen "127.0.0.1:$PORT" \
    --threads "${THREADS:-0}" ${TREE:+--tree "$TREE"} >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  if build/client/specmoe-cli health --server "127.0.0.1:$PORT" >/dev/null 2>&1; then break; fi
  kill -0 $SERVER_PID
  sleep 0.5
done

for round in $(seq 1 "$ROUNDS"); do
  for i in "${!CONCURRENCY[@]}"; do
    c=${CONCURRENCY[$i]}
    build/client/specmoe-cli bench --server "127.0.0.1:$PORT" --dataset-path "$OUT/prompts.jsonl" \
        --num-requests "${REQUESTS[$i]}" --concurrency "$c" --ab --warmup 1 \
        --json "$OUT/c$c-r$round.json" >"$OUT/c$c-r$round.txt" 2>&1
    echo "round $round concurrency $c done"
  done
done

/usr/bin/python3 - "$OUT" "$ROUNDS" "${CONCURRENCY[@]}" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
concurrency = [int(c) for c in sys.argv[3:]]
print("| concurrency | off tok/s | on tok/s | speedup (median) | per round | tokens/step | acceptance |")
print("|---|---|---|---|---|---|---|")
for c in concurrency:
    rs = [json.load(open(f"{out}/c{c}-r{r}.json")) for r in range(1, rounds + 1)]
    on = [r["spec_on"]["output_throughput"] for r in rs]
    off = [r["spec_off"]["output_throughput"] for r in rs]
    ratio = [a / b for a, b in zip(on, off)]
    tps = statistics.median(r["spec_on"].get("mean_tokens_per_step", 0) for r in rs)
    acc = statistics.median(r["spec_on"].get("acceptance_rate", 0) for r in rs)
    print(f"| {c} | {statistics.median(off):.1f} | {statistics.median(on):.1f} | "
          f"{statistics.median(ratio):.2f}x | {', '.join(f'{x:.2f}' for x in ratio)} | "
          f"{tps:.2f} | {acc:.3f} |")
EOF
