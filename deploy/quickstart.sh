#!/usr/bin/env bash
# Quickstart: set-up, build, create the demo models if missing, start the server on
# 127.0.0.1, send one streamed completion with the client, print the text and the timing.
# Usage: ./deploy/quickstart.sh ["prompt"]   (TARGET=dir DRAFT=dir to use other models;
# TREE=1,1,3,1,1,1,1,1 for another expansion: on a CPU small deep trees are fastest, see the
# README's benchmarks)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
PROMPT=${1:-"And God said"}
PORT=${PORT:-50051}
TREE=${TREE:-1,1,1}

./deploy/setup.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECMOE_CUDA=OFF >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target specmoe-server specmoe-cli

if [ -z "${TARGET:-}" ]; then
  DEMO=${DEMO_DIR:-$BUILD_DIR/demo}
  if [ ! -f "$DEMO/target/model.safetensors" ] || [ ! -f "$DEMO/draft/model.safetensors" ]; then
    echo "creating the demo models in $DEMO (deterministic, about a minute)"
    /usr/bin/python3 deploy/make_demo_models.py --out "$DEMO"
  fi
  TARGET=$DEMO/target
  DRAFT=${DRAFT:-$DEMO/draft}
  echo "NOTE: the demo models are synthetic (built from corpus statistics, not trained);"
  echo "      their text is corpus-flavoured, not meaningful."
fi

LOG=$BUILD_DIR/quickstart-server.log
"$BUILD_DIR/server/specmoe-server" --target "$TARGET" ${DRAFT:+--draft "$DRAFT"} \
    --listen "127.0.0.1:$PORT" --tree "$TREE" >"$LOG" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT

for _ in $(seq 1 600); do
  if "$BUILD_DIR/client/specmoe-cli" health --server "127.0.0.1:$PORT" >/dev/null 2>&1; then break; fi
  if ! kill -0 $SERVER_PID 2>/dev/null; then cat "$LOG"; exit 1; fi
  sleep 0.5
done

echo "--- prompt: $PROMPT"
"$BUILD_DIR/client/specmoe-cli" stream --server "127.0.0.1:$PORT" --max-tokens 64 "$PROMPT"
echo
echo "--- server log: $LOG"
