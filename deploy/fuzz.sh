#!/usr/bin/env bash
# deploy/fuzz.sh — builds the libFuzzer targets (the three readers tests/fuzz_config.cc,
# fuzz_safetensors.cc, fuzz_pickle.cc, and the gRPC surface tests/fuzz_request.cc: bytes as a
# serialized CompleteRequest through the service's conversion and the engine's validator)
# with clang + ASan/UBSan in their own build folder and runs each for
# $FUZZ_SECONDS seconds (default 30) from its seed corpus tests/fuzz_corpus/<target>/
# (committed crash inputs in crashes/ are replayed first, as part of that corpus).
# Exits non-zero on any crash, leak, timeout or OOM and copies the reproducer to
# tests/fuzz_corpus/<target>/crashes/ so it can be committed; tests/fuzz_regression_test.cc
# then replays it in every ordinary test run.
#
# Environment: FUZZ_SECONDS (30), FUZZ_BUILD_DIR (build-fuzz), FUZZ_JOBS (2),
# FUZZ_TARGETS (all four), CC / CXX (clang / clang++).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
SECONDS_EACH="${FUZZ_SECONDS:-30}"
TARGETS="${FUZZ_TARGETS:-fuzz_config fuzz_safetensors fuzz_pickle fuzz_request}"
CC_BIN="${CC:-clang}"
CXX_BIN="${CXX:-clang++}"
if ! command -v "$CXX_BIN" >/dev/null; then
  for candidate in clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    if command -v "$candidate" >/dev/null; then
      CXX_BIN="$candidate"
      CC_BIN="${candidate/clang++/clang}"
      break
    fi
  done
fi
command -v "$CXX_BIN" >/dev/null || { echo "fuzz.sh: clang++ not found" >&2; exit 2; }

echo "== fuzz: configure $BUILD ($CXX_BIN)"
mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_C_COMPILER="$CC_BIN" \
  -DCMAKE_CXX_COMPILER="$CXX_BIN" -DSPECMOE_FUZZ=ON -DSPECMOE_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$BUILD/configure.log" 2>&1 ||
  { cat "$BUILD/configure.log" >&2; exit 2; }
echo "== fuzz: build $TARGETS"
# shellcheck disable=SC2086
ninja -C "$BUILD" -j"${FUZZ_JOBS:-2}" $TARGETS

status=0
for target in $TARGETS; do
  corpus="$ROOT/tests/fuzz_corpus/$target"
  work="$BUILD/fuzz_work/$target"        # new inputs libFuzzer finds (not committed)
  artifacts="$BUILD/fuzz_artifacts/$target"
  mkdir -p "$corpus" "$work" "$artifacts"
  rm -f "$artifacts"/*
  echo "== fuzz: $target for ${SECONDS_EACH}s"
  if ! "$BUILD/tests/$target" -max_total_time="$SECONDS_EACH" -max_len=16384 -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" \
      "$work" "$corpus" >"$BUILD/$target.log" 2>&1; then
    status=1
    tail -n 60 "$BUILD/$target.log" >&2
    mkdir -p "$corpus/crashes"
    for found in "$artifacts"/*; do
      [ -f "$found" ] || continue
      cp "$found" "$corpus/crashes/"
      echo "fuzz.sh: $target failed; reproducer saved as tests/fuzz_corpus/$target/crashes/$(basename "$found")" >&2
    done
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$BUILD/$target.log" || true
    echo "== fuzz: $target OK"
  fi
done
exit $status
