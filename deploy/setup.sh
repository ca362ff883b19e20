#!/usr/bin/env bash
# Installs every build and test dependency from the distribution's packages, idempotently.
# Packages already present are skipped without touching the network.
# Debian 12 (the development and CI machine) and Ubuntu 24.04 (the CUDA images' base).
# Usage: deploy/setup.sh [--build-only]
#   --build-only: only what building specmoe-server and specmoe-cli needs (the container
#                 images' build stage); no fuzzing, fixture or image-test tools.
set -euo pipefail

mode=all
case "${1:-}" in
  "") ;;
  --build-only) mode=build ;;
  *) echo "setup: unknown argument '$1' (usage: deploy/setup.sh [--build-only])" >&2; exit 2 ;;
esac

. /etc/os-release
case "${ID}-${VERSION_ID}" in
  debian-12) clang_version=14 ;;
  ubuntu-24.04) clang_version=18 ;;
  *) echo "setup: ${PRETTY_NAME:-this system} is not supported (Debian 12 or Ubuntu 24.04)" >&2
     exit 1 ;;
esac

# Configuring the project needs GTest and Google Benchmark even when only the server and
# the client are built (tests/CMakeLists.txt), so they are build packages.
BUILD_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libsentencepiece-dev
  libspdlog-dev libfmt-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev
)
TEST_PACKAGES=(
  sentencepiece
  clang "libclang-rt-${clang_version}-dev"
  python3 python3-numpy python3-sentencepiece python3-yaml python3-jsonschema
  # deploy/test-image.sh: builds and runs the CPU image (rootless tools from the archive)
  buildah podman runc debootstrap podman-compose
)

PACKAGES=("${BUILD_PACKAGES[@]}")
if [ "$mode" = all ]; then PACKAGES+=("${TEST_PACKAGES[@]}"); fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
