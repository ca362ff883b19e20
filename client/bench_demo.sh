#!/usr/bin/env bash
# The load sweep of tests/README.md (Benchmarks): the demo pair served as the quickstart
# serves it (--tree 1,1,1),
# `specmoe-cli bench --ab --sweep-concurrency 1,2,4,8,16` RUNS times, the medians as a
# Markdown table and a picture (client/bench_median.py, client/plot_bench.py).
# Usage: client/bench_demo.sh [OUT_DIR]   (RUNS=3 REQUESTS=16 OUTPUT_LEN=32 SWEEP=1,2,4,8,16)
# Expects a build (build/); creates the synthetic demo pair in build/demo if it is missing
# (deploy/make_demo_models.py, as `SYNTHETIC=1 deploy/quickstart.sh` does).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
OUT=${1:-$BUILD_DIR/bench}
RUNS=${RUNS:-3}
REQUESTS=${REQUESTS:-16}
OUTPUT_LEN=${OUTPUT_LEN:-32}
SWEEP=${SWEEP:-1,2,4,8,16}
DEMO=${DEMO_DIR:-$BUILD_DIR/demo}
mkdir -p "$OUT"
if [ ! -f "$DEMO/target/model.safetensors" ] || [ ! -f "$DEMO/draft/model.safetensors" ]; then
  /usr/bin/python3 deploy/make_demo_models.py --out "$DEMO"
fi

"$BUILD_DIR/server/specmoe-server" --target "$DEMO/target" --draft "$DEMO/draft" \
    --listen 127.0.0.1:0 --port-file "$OUT/port" --tree 1,1,1 --max-batch 16 --max-context 512 \
    --max-queue 64 >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  [ -f "$OUT/port" ] && "$BUILD_DIR/client/specmoe-cli" health --server "127.0.0.1:$(cat "$OUT/port")" \
      >/dev/null 2>&1 && break
  kill -0 $SERVER_PID 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
  sleep 0.5
done
SERVER=127.0.0.1:$(cat "$OUT/port")
reports=()
for run in $(seq 1 "$RUNS"); do
  echo "--- run $run of $RUNS"
  "$BUILD_DIR/client/specmoe-cli" bench --server "$SERVER" --ab --sweep-concurrency "$SWEEP" \
      --num-requests "$REQUESTS" --output-len "$OUTPUT_LEN" --ignore-eos --warmup 2 \
      --json "$OUT/run$run.json"
  reports+=("$OUT/run$run.json")
done
/usr/bin/python3 client/bench_median.py "$OUT/median.json" "${reports[@]}" | tee "$OUT/median.md"
/usr/bin/python3 client/plot_bench.py "$OUT/median.json" "$OUT/median.png"
echo "wrote $OUT/median.md and $OUT/median.png"
