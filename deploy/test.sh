#!/usr/bin/env bash
# The test command: set-up, build, the whole test suite, then 30 s of fuzzing per reader.
# Non-zero exit on any failure; prints the time of each phase.
# Environment: BUILD_DIR (default build), JOBS (default: all cores), FUZZ_SECONDS (default 30,
# 0 skips fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}

phase_start=$(date +%s)
total_start=$phase_start
phase() {
  local now; now=$(date +%s)
  echo "=== [$(date -u +%H:%M:%S)] $1 done in $((now - phase_start)) s"
  phase_start=$now
}

./deploy/setup.sh
phase "setup"

cuda_flag=-DSPECMOE_CUDA=OFF
if [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
if [ -n "${CUDACXX:-}" ] || command -v nvcc >/dev/null 2>&1; then
  export CUDACXX=${CUDACXX:-$(command -v nvcc)}
  cuda_flag="-DSPECMOE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90"
  echo "nvcc found ($CUDACXX): building the CUDA code for sm_90"
fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release $cuda_flag
phase "configure"

cmake --build "$BUILD_DIR" -j "$JOBS"
phase "build"

(cd "$BUILD_DIR" && ctest --output-on-failure -j 1 --timeout 1200)
phase "tests"

# Deployment: static checks of deploy/k8s and deploy/compose.yaml; the CPU image built and run.
BUILD_DIR=$BUILD_DIR ./deploy/test-image.sh
phase "deployment tests"

if [ "$FUZZ_SECONDS" -gt 0 ] && command -v clang++ >/dev/null 2>&1; then
  FUZZ_SECONDS=$FUZZ_SECONDS ./deploy/fuzz.sh
  phase "fuzzing (${FUZZ_SECONDS} s per target)"
fi

echo "=== all passed in $(( $(date +%s) - total_start )) s"
