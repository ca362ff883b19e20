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
  libsentencepiece-dev libpcre2-dev
  libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev
)
TEST_PACKAGES=(
  sentencepiece
  clang "libclang-rt-${clang_version}-dev" "clang-format-${clang_version}"
  python3 python3-numpy python3-sentencepiece python3-venv
  # deploy/test-image.sh: builds and runs the CPU image, checks compose and Kubernetes files
  buildah podman runc debootstrap podman-compose
  # the bench and metrics e2e tests: promtool and a real Prometheus, the plot, the Python client
  prometheus python3-matplotlib python3-grpcio python3-grpc-tools
  # the HTTP e2e test's raw SSE stream
  curl
)
# kubectl (for kubectl kustomize): Debian 12's kubernetes-client (1.20; deploy/k8s is
# written for its kustomize), unless a kubectl from elsewhere is installed (the two would
# collide on /usr/bin/kubectl). Ubuntu 24.04 has no such package: bring your own kubectl.
if [ "$ID" = debian ] && ! command -v kubectl >/dev/null 2>&1; then
  TEST_PACKAGES+=(kubernetes-client)
fi

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

# Offline validators for deploy/test-image.sh, the Hugging Face tokenizers (the tokenizer.json
# reference), gguf, safetensors and numpy (deploy/gguf_to_hf.py), and the official `openai`
# client (tests/http_e2e_test.py), from PyPI into their own virtual environment.
if [ "$mode" = all ]; then
  venv=${SPECMOE_TOOLS_VENV:-$HOME/.cache/specmoe/tools-venv}
  tools=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 dockerfile-parse==2.0.1 PyYAML
         tokenizers==0.23.3 gguf==0.19.0 safetensors==0.8.0 numpy openai==3.51.0)
  if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/check-jsonschema" ] ||
     ! "$venv/bin/python" -c 'import dockerfile_parse, yaml, tokenizers, gguf, safetensors, numpy, openai' 2>/dev/null ||
     [ "$("$venv/bin/python" -c 'import openai; print(openai.__version__)')" != 3.51.0 ]; then
    echo "setup: installing ${tools[*]} into $venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q "${tools[@]}"
  fi
fi
