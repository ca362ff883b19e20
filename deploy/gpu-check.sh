#!/usr/bin/env bash
# The GPU check (kernels/README.md, CUDA backend): the CUDA tests and the GPU benchmark, built
# on the CPU machine and run on a machine with one NVIDIA GPU (an H100 or H200).
#
#   deploy/gpu-check.sh build   on the CPU machine (nvcc 13, sm_90): configures build-gpu/
#                               without gRPC (-DSPECMOE_SERVER=OFF; the GPU machine has none of
#                               the Debian -dev packages), builds the cuda-labelled tests and
#                               tests/gpu_bench, and bundles them in build-gpu/bundle with the
#                               shared libraries they need that such a machine lacks (the ldd
#                               closure less glibc, the driver and cuBLAS, which it has).
#   deploy/gpu-check.sh [run]   on the GPU machine, from the repository root with
#                               build-gpu/bundle carried beside the tree: runs every CUDA test
#                               (each must pass; a skip means no device and fails the check),
#                               then the benchmark, and prints a short table last.
# The run takes under 5 minutes on an H200 from a cold start. Exit status: 0 only when every
# test passed on a device.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUNDLE=$ROOT/build-gpu/bundle
TESTS="cuda_backend_test cuda_attention_test cuda_sampling_test cuda_moe_test cuda_model_test"

build() {
  local nvcc=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
  local launcher=()
  if command -v ccache >/dev/null 2>&1; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  fi
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECMOE_SERVER=OFF \
    -DSPECMOE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90 \
    "${launcher[@]}"
  # shellcheck disable=SC2086
  cmake --build build-gpu -j "${JOBS:-$(nproc)}" --target $TESTS gpu_bench
  rm -rf "$BUNDLE"
  mkdir -p "$BUNDLE/bin" "$BUNDLE/lib"
  for bin in $TESTS gpu_bench; do
    cp "build-gpu/tests/$bin" "$BUNDLE/bin/"
    strip "$BUNDLE/bin/$bin"
    # The closure, less what the GPU machine has: glibc and the loader, the driver, cuBLAS.
    ldd "build-gpu/tests/$bin" | awk '/=> \//{print $3}' |
      grep -Ev '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libcuda|libcublas|libcublasLt)\.so' |
      while read -r lib; do cp -nL "$lib" "$BUNDLE/lib/"; done
  done
  du -sh "$BUNDLE"
  echo "carry build-gpu/bundle to the GPU machine and run: deploy/gpu-check.sh"
}

run() {
  [ -d "$BUNDLE/bin" ] || { echo "no $BUNDLE: run 'deploy/gpu-check.sh build' first" >&2; exit 2; }
  local cuda_libs=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && cuda_libs="$cuda_libs:$d"
  done
  export LD_LIBRARY_PATH="$BUNDLE/lib$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export SPECMOE_FIXTURES="$ROOT/tests/fixtures"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  local summary="" failed=0
  for t in $TESTS; do
    local start=$SECONDS out rc=0
    out=$(timeout 240 "$BUNDLE/bin/$t" --gtest_brief=1 2>&1) || rc=$?
    echo "$out" | tail -40
    local passed skipped
    passed=$(echo "$out" | sed -n 's/.*\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -1)
    skipped=$(echo "$out" | sed -n 's/.*\[  SKIPPED \] \([0-9]*\) test.*/\1/p' | tail -1)
    local verdict=pass
    if [ "$rc" != 0 ]; then verdict="FAIL (exit $rc)"; failed=1;
    elif [ -n "$skipped" ] && [ "$skipped" != 0 ]; then verdict="SKIPPED (no device?)"; failed=1; fi
    summary="$summary| $t | ${passed:-0} | ${skipped:-0} | $verdict | $((SECONDS - start)) |"$'\n'
  done
  local bench_rc=0
  timeout 300 "$BUNDLE/bin/gpu_bench" | tee "$ROOT/build-gpu/gpu_bench.md" || bench_rc=$?
  echo
  echo "## gpu-check $(date -u +%FT%TZ)"
  echo
  echo "| test | passed | skipped | verdict | s |"
  echo "|---|---:|---:|---|---:|"
  printf '%s' "$summary"
  echo "| gpu_bench | | | exit $bench_rc | |"
  return $failed
}

case "${1:-run}" in
  build) build ;;
  run) run ;;
  *) echo "usage: deploy/gpu-check.sh [build|run]" >&2; exit 2 ;;
esac
