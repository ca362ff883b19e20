#!/usr/bin/env bash
# Deployment tests (deploy/README.md), run by deploy/test.sh after the build:
#  1. static: renders deploy/k8s and its overlays with kubectl kustomize, validates every
#     object against the Kubernetes schemas offline (kubernetes-validate), validates the
#     compose file against the compose-spec schema and through podman-compose, checks that
#     the flags, ports, probes and drain in all of them are the server's own
#     (deploy/check_deploy.py reading specmoe-server --help), and has buildah parse
#     Dockerfile.cuda (its base cannot be pulled here);
#  2. image: makes debian:bookworm-slim with debootstrap (cached by digest), builds
#     Dockerfile.cpu with buildah, runs it with podman on the e2e fixture pair mounted
#     read-only, waits for its HEALTHCHECK to report SERVING, checks the token ids of a
#     completion sent from the host's specmoe-cli against the host's own server on the same
#     models, that the server runs as non-root, and that SIGTERM drains with exit 0;
#  3. CUDA image (when the host server was built with CUDA): Dockerfile.cuda-bundle on the same
#     base with the host binaries and their libraries, the redistributable CUDA ones included
#     (bundle.sh --cuda); started with --device auto and no driver, its log must say it fell
#     back to the CPU and its tokens must equal the CPU image's.
# Usage: deploy/test-image.sh [--static-only]
# Environment: BUILD_DIR (default build: the host binaries), SPECMOE_TOOLS_VENV (default
# ~/.cache/specmoe/tools-venv, made by setup.sh), SPECMOE_IMAGE_CACHE (default
# ~/.cache/specmoe/images), KUBERNETES_VERSION (schemas, default 1.30.0).
set -euo pipefail
static_only=0
case "${1:-}" in
  "") ;;
  --static-only) static_only=1 ;;
  *) echo "usage: deploy/test-image.sh [--static-only]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build}
VENV=${SPECMOE_TOOLS_VENV:-$HOME/.cache/specmoe/tools-venv}
CACHE=${SPECMOE_IMAGE_CACHE:-$HOME/.cache/specmoe/images}
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.30.0}
SERVER=$ROOT/$BUILD_DIR/server/specmoe-server
CLI=$ROOT/$BUILD_DIR/client/specmoe-cli
IMAGE=localhost/specmoe:cpu-test
WORK=$(mktemp -d)
CONTAINER=""
HOST_PID=""

phase_start=$(date +%s)
phase() {
  local now; now=$(date +%s)
  echo "=== [$(date -u +%H:%M:%S)] test-image: $1 done in $((now - phase_start)) s"
  phase_start=$now
}
cleanup() {
  if [ -n "$CONTAINER" ]; then podman_run rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
  if [ -n "$HOST_PID" ]; then kill "$HOST_PID" 2>/dev/null || true; wait "$HOST_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
die() { echo "test-image: FAIL: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# This sandbox refuses setrlimit in a container's init unless podman sets no default
# ulimits; runc and cgroupfs because there is no systemd.
cat >"$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = []
CONF
export CONTAINERS_CONF=$WORK/containers.conf
podman_run() { podman --runtime runc --cgroup-manager cgroupfs "$@"; }

[ -x "$SERVER" ] && [ -x "$CLI" ] || die "build $SERVER and $CLI first"

# --- 1. static checks ---------------------------------------------------------------
for tool in kubectl podman-compose; do
  command -v "$tool" >/dev/null || die "$tool is missing (deploy/setup.sh installs it)"
done
[ -x "$VENV/bin/kubernetes-validate" ] || die "$VENV lacks kubernetes-validate (deploy/setup.sh)"
"$SERVER" --help >"$WORK/server-help.txt"
"$CLI" --help >"$WORK/cli-help.txt"
bench_help=()
if "$CLI" bench --help >"$WORK/bench-help.txt" 2>/dev/null; then
  bench_help=(--bench-help "$WORK/bench-help.txt")
fi
k8s_args=()
for overlay in gpu:deploy/k8s cpu:deploy/k8s/overlays/cpu tls:deploy/k8s/overlays/tls; do
  name=${overlay%%:*}
  kubectl kustomize "${overlay#*:}" >"$WORK/k8s-$name.yaml" 2>"$WORK/kustomize.err" ||
    { cat "$WORK/kustomize.err"; die "kubectl kustomize ${overlay#*:} failed"; }
  "$VENV/bin/kubernetes-validate" --strict -k "$KUBERNETES_VERSION" "$WORK/k8s-$name.yaml" \
      >"$WORK/validate.out" 2>&1 || { cat "$WORK/validate.out"; die "k8s $name does not validate"; }
  echo "test-image: ${overlay#*:} renders $(grep -c '^kind:' "$WORK/k8s-$name.yaml") objects," \
       "all valid against the Kubernetes $KUBERNETES_VERSION schemas (strict)"
  k8s_args+=(--k8s "$name=$WORK/k8s-$name.yaml")
done
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
podman-compose -f deploy/compose.yaml --dry-run up -d server >"$WORK/compose.out" 2>&1 ||
  { cat "$WORK/compose.out"; die "podman-compose cannot read deploy/compose.yaml"; }
grep "podman run --name=[a-z]*_server_1 " "$WORK/compose.out" | grep -q -- "-v [a-z]*_models:/models:ro" ||
  { cat "$WORK/compose.out"; die "podman-compose did not plan the server container"; }
echo "test-image: podman-compose $(podman-compose version 2>/dev/null | sed -n 's/^podman-composer version *//p') plans the server from deploy/compose.yaml"
"$VENV/bin/python" deploy/check_deploy.py --server-help "$WORK/server-help.txt" \
    --cli-help "$WORK/cli-help.txt" "${bench_help[@]}" "${k8s_args[@]}" \
    --compose deploy/compose.yaml --dockerfile deploy/docker/Dockerfile.cpu \
    --dockerfile deploy/docker/Dockerfile.cuda --adapter-rules deploy/k8s/prometheus-adapter-rules.yaml \
    --guide deploy/README.md --readme README.md
if command -v buildah >/dev/null; then
  # buildah parses the whole file before pulling the base; no registry is reachable here,
  # so the CUDA build must stop exactly at pulling nvidia/cuda.
  if buildah bud --isolation chroot --pull=never -f deploy/docker/Dockerfile.cuda . \
      >"$WORK/cuda.out" 2>&1; then
    echo "test-image: note: Dockerfile.cuda built (its base image is present)"
  elif grep -q "nvidia/cuda" "$WORK/cuda.out" && ! grep -qi "parse\|syntax\|unknown instruction" "$WORK/cuda.out"; then
    echo "test-image: Dockerfile.cuda parses; buildah cannot pull its base here (no registry):" \
         "$(grep -m1 -o 'nvidia/cuda[^ "]*' "$WORK/cuda.out")"
  else
    cat "$WORK/cuda.out"; die "buildah rejects Dockerfile.cuda"
  fi
fi
phase "static checks"
[ "$static_only" = 0 ] || exit 0

# --- 2. the CPU image, built and run -------------------------------------------------
if ! command -v buildah >/dev/null || ! command -v podman >/dev/null ||
   ! command -v debootstrap >/dev/null; then
  echo "test-image: image test skipped: buildah, podman or debootstrap is not installed"
  exit 0
fi

# The base image under the name Dockerfile.cpu's FROM uses, made once and kept while the
# image in storage still has the digest recorded at import.
mkdir -p "$CACHE"
base_id=$(podman image inspect --format '{{.Id}}' debian:bookworm-slim 2>/dev/null || true)
if [ -n "$base_id" ] && [ "$base_id" = "$(cat "$CACHE/base.id" 2>/dev/null)" ]; then
  echo "test-image: base debian:bookworm-slim cached (${base_id:0:12})"
else
  if [ ! -s "$CACHE/rootfs.tar" ]; then
    rm -rf "$CACHE/rootfs"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs" http://deb.debian.org/debian \
        >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$CACHE"/rootfs/var/cache/apt/archives/*.deb "$CACHE"/rootfs/var/lib/apt/lists/*
    tar -C "$CACHE/rootfs" -cf "$CACHE/rootfs.tar.part" . && mv "$CACHE/rootfs.tar.part" "$CACHE/rootfs.tar"
    rm -rf "$CACHE/rootfs"
  fi
  podman import - debian:bookworm-slim <"$CACHE/rootfs.tar" >/dev/null
  podman image inspect --format '{{.Id}}' debian:bookworm-slim >"$CACHE/base.id"
  echo "test-image: base debian:bookworm-slim imported ($(head -c 12 "$CACHE/base.id"))"
fi
phase "base image"

# --layers keeps the set-up layer (deploy/setup.sh --build-only) between runs; docker
# format keeps the HEALTHCHECK.
buildah bud --isolation chroot --pull=never --layers --format docker \
    -f deploy/docker/Dockerfile.cpu -t "$IMAGE" . >"$WORK/build.log" 2>&1 ||
  { tail -40 "$WORK/build.log"; die "buildah bud deploy/docker/Dockerfile.cpu failed"; }
grep "^bundle:" "$WORK/build.log" || true
echo "test-image: built $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
phase "image build"

# No compiler, no headers, no -dev package in the runtime image.
inventory=$(podman_run run --rm --health-interval=disable --entrypoint sh "$IMAGE" -c \
    'for t in cc gcc g++ c++ cmake clang ld; do command -v $t; done
     echo "headers $(find /usr/include -name "*.h" 2>/dev/null | wc -l)"
     echo "dev $(dpkg-query -W -f "\${Package}\n" | grep -c -- "-dev$")"
     echo "bundled system libraries $(ls /opt/specmoe/lib | grep -c -E "^(libc|libm|libgcc_s|libstdc\+\+)\.so")"' \
    2>"$WORK/podman.err") ||
  die "cannot run a shell in $IMAGE"
[ "$inventory" = "$(printf 'headers 0\ndev 0\nbundled system libraries 0')" ] ||
  die "the runtime image holds build tools: $inventory"
echo "test-image: the runtime image has no compiler, no header, no -dev package, and the" \
     "base system's own C/C++ runtime (no bundled copy)"

MODELS=$ROOT/tests/fixtures/models
PORT=$(free_port)
METRICS_PORT=$(free_port)
# start_serving IMAGE ENV...: runs IMAGE on the e2e fixture pair with the given -e settings
# and waits until the image's HEALTHCHECK command, run as an engine runs it, says SERVING.
# Sets CONTAINER and health_cmd. podman would time the HEALTHCHECK with systemd (absent
# here: it logs an error and goes on); --health-interval=disable asks it not to, and the
# test runs the check itself.
start_serving() {
  local image=$1; shift
  local env=() setting
  for setting in "$@"; do env+=(-e "$setting"); done
  CONTAINER=$(podman_run run -d --network=host --health-interval=disable \
      -v "$MODELS/e2e_target:/models/target:ro" -v "$MODELS/e2e_draft:/models/draft:ro" \
      "${env[@]}" "$image" 2>"$WORK/podman.err") ||
    { cat "$WORK/podman.err"; die "podman run $image failed"; }
  mapfile -t health_cmd < <(podman image inspect --format '{{json .HealthCheck.Test}}' "$image" |
      python3 -c 'import json,sys; t=json.load(sys.stdin); assert t[0]=="CMD", t; print("\n".join(t[1:]))')
  local health="" _
  for _ in $(seq 1 240); do
    health=$(podman_run exec "$CONTAINER" "${health_cmd[@]}" 2>/dev/null || true)
    [ "$health" = SERVING ] && break
    [ "$(podman_run inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] ||
      { podman_run logs "$CONTAINER"; die "the $image container stopped while starting"; }
    sleep 0.5
  done
  [ "$health" = SERVING ] ||
    { podman_run logs "$CONTAINER"; die "HEALTHCHECK ${health_cmd[*]} of $image never reported SERVING"; }
}
start_serving "$IMAGE" SPECMOE_LISTEN="0.0.0.0:$PORT" SPECMOE_METRICS_LISTEN="0.0.0.0:$METRICS_PORT" \
  SPECMOE_THREADS=2
podman_run healthcheck run "$CONTAINER" >/dev/null 2>&1 || die "podman healthcheck run: unhealthy"
echo "test-image: HEALTHCHECK ${health_cmd[*]} reports SERVING; podman healthcheck run: healthy"
phase "container start"

server_pid=$(podman_run inspect --format '{{.State.Pid}}' "$CONTAINER")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$server_pid/status")
comm=$(cat "/proc/$server_pid/comm")
[ "$comm" = specmoe-server ] || die "the container's first process is $comm, not specmoe-server"
[ "$uid" != 0 ] || die "specmoe-server runs as root in the container"
echo "test-image: the container's process 1 is specmoe-server, uid $uid"

# The same request against the host binary's server on the same models.
"$SERVER" --target "$MODELS/e2e_target" --draft "$MODELS/e2e_draft" --listen 127.0.0.1:0 \
    --port-file "$WORK/host.port" --threads 2 >"$WORK/host.log" 2>&1 &
HOST_PID=$!
for _ in $(seq 1 240); do
  [ -s "$WORK/host.port" ] && "$CLI" health --server "127.0.0.1:$(cat "$WORK/host.port")" >/dev/null 2>&1 && break
  kill -0 $HOST_PID 2>/dev/null || { cat "$WORK/host.log"; die "the host server stopped"; }
  sleep 0.5
done
request=(complete --json --max-tokens 48 --ignore-eos "And God said")
"$CLI" "${request[@]}" --server "127.0.0.1:$PORT" >"$WORK/container.json" ||
  die "the completion against the container failed"
"$CLI" "${request[@]}" --server "127.0.0.1:$(cat "$WORK/host.port")" >"$WORK/host.json" ||
  die "the completion against the host server failed"
ids() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(",".join(map(str, r["token_ids"])))' "$1"; }
container_ids=$(ids "$WORK/container.json")
host_ids=$(ids "$WORK/host.json")
[ "$(echo "$container_ids" | tr ',' '\n' | wc -l)" -eq 48 ] || die "expected 48 tokens, got $container_ids"
[ "$container_ids" = "$host_ids" ] ||
  die "token ids differ: container $container_ids, host $host_ids"
echo "test-image: 48 token ids from the container equal the host server's: ${container_ids:0:60}..."
kill -TERM "$HOST_PID"; wait "$HOST_PID" || true; HOST_PID=""

# SIGTERM (sent straight to the container's process 1, so it lands at once) while a
# streamed completion is in flight: the request must still finish whole, then exit 0.
# Deterministic on any host speed: once the stream has started, the server is stopped
# (SIGSTOP); the SIGTERM is sent only if the container's log (drained while it is stopped)
# does not show the request finished, i.e. it is provably in flight when the signal is
# sent, and the server is continued. A stream that won the race to its end is retried.
in_flight=""
for attempt in 1 2 3 4 5; do
  "$CLI" stream --json --no-speculation --max-tokens 252 --ignore-eos --server "127.0.0.1:$PORT" \
      "And God said" >"$WORK/inflight.jsonl" 2>"$WORK/inflight.err" &
  client_pid=$!
  for _ in $(seq 1 2000); do [ -s "$WORK/inflight.jsonl" ] && break; sleep 0.005; done
  kill -STOP "$server_pid"
  sleep 0.5  # conmon drains what the stopped server wrote before the stop
  finished_before=$(podman_run logs "$CONTAINER" 2>&1 | grep -c "completion_tokens=252 finish=length" || true)
  if [ "$finished_before" -lt "$attempt" ]; then
    in_flight=$attempt
    kill -TERM "$server_pid"
    kill -CONT "$server_pid"
    break
  fi
  kill -CONT "$server_pid"
  wait "$client_pid" || die "the completion failed: $(cat "$WORK/inflight.err")"
done
[ -n "$in_flight" ] || die "no stream was still in flight after 5 tries (the server stopped 5 ms after its first chunk)"
wait "$client_pid" || die "the in-flight completion failed during the drain: $(cat "$WORK/inflight.err")"
streamed=$(python3 -c 'import json,sys; print(sum(len(json.loads(l).get("token_ids", [])) for l in open(sys.argv[1]) if l.strip()))' "$WORK/inflight.jsonl")
[ "$streamed" = 252 ] || die "the in-flight completion streamed $streamed tokens, not 252"
code=$(timeout 60 podman --runtime runc --cgroup-manager cgroupfs wait "$CONTAINER") || die "the container did not stop within 60 s of SIGTERM"
podman_run logs "$CONTAINER" >"$WORK/container.log" 2>&1
[ "$code" = 0 ] || { cat "$WORK/container.log"; die "the container exited $code after SIGTERM"; }
grep -q "received signal 15" "$WORK/container.log" &&
  [ "$(grep -c "completion_tokens=252 finish=length" "$WORK/container.log")" = "$in_flight" ] ||
  { cat "$WORK/container.log"; die "the log does not show the signal and the in-flight request finishing"; }
echo "test-image: SIGTERM during a streamed completion: all 252 tokens delivered, then exit 0"
podman_run rm -f "$CONTAINER" >/dev/null 2>&1 || true
CONTAINER=""
phase "container run"

# --- 3. the CUDA image from the host's CUDA build, run without a GPU -----------------
# Dockerfile.cuda's NVIDIA base cannot be pulled here: Dockerfile.cuda-bundle puts the host
# binaries (built with -DSPECMOE_CUDA=ON by deploy/test.sh when nvcc is there) and their
# libraries, the redistributable CUDA ones included (bundle.sh --cuda), on the same debootstrap
# base. No driver here: started with --device auto it must fall back to the CPU, say so in
# its log, and serve the same tokens as the CPU image.
# grep reads all of ldd's output (grep -q would close the pipe early, and pipefail would
# turn the SIGPIPE into "no CUDA").
if ! ldd "$SERVER" | grep "libcublas" >/dev/null; then
  echo "test-image: CUDA image skipped: $SERVER was built without CUDA (no nvcc)"
  echo "test-image: passed"
  exit 0
fi
CUDA_IMAGE=localhost/specmoe:cuda-test
mkdir -p "$WORK/cuda-context"
deploy/docker/bundle.sh --cuda "$WORK/cuda-context/bundle" "$SERVER" "$CLI" >"$WORK/cuda-bundle.log" ||
  { cat "$WORK/cuda-bundle.log"; die "bundle.sh --cuda failed"; }
cp deploy/docker/entrypoint.sh deploy/docker/healthcheck.sh "$WORK/cuda-context/"
cuda_libs=$(ls "$WORK/cuda-context/bundle/lib" | grep -E '^lib(cudart|cublas|cublasLt)\.so' | tr '\n' ' ')
[ -n "$cuda_libs" ] || die "the CUDA bundle holds no CUDA library"
[ ! -e "$WORK/cuda-context/bundle/lib/libcuda.so.1" ] || die "the CUDA bundle holds the driver"
[ -s "$WORK/cuda-context/bundle/share/doc/nvidia-cuda/EULA.txt" ] ||
  die "the CUDA bundle lacks NVIDIA's license terms"
buildah bud --isolation chroot --pull=never --format docker \
    -f deploy/docker/Dockerfile.cuda-bundle -t "$CUDA_IMAGE" "$WORK/cuda-context" \
    >"$WORK/cuda-build.log" 2>&1 ||
  { tail -40 "$WORK/cuda-build.log"; die "buildah bud deploy/docker/Dockerfile.cuda-bundle failed"; }
echo "test-image: built $CUDA_IMAGE ($(podman image inspect --format '{{.Size}}' "$CUDA_IMAGE" |
    awk '{printf "%.0f MB", $1/1e6}'); CUDA libraries: $cuda_libs; $(cat "$WORK/cuda-bundle.log"))"
phase "CUDA image build"
PORT=$(free_port)
start_serving "$CUDA_IMAGE" SPECMOE_LISTEN="0.0.0.0:$PORT" SPECMOE_METRICS_LISTEN= \
  SPECMOE_DEVICE=auto SPECMOE_THREADS=2
"$CLI" "${request[@]}" --server "127.0.0.1:$PORT" >"$WORK/cuda.json" ||
  die "the completion against the CUDA container failed"
podman_run logs "$CONTAINER" >"$WORK/cuda-container.log" 2>&1
grep -q -- "--device auto: no CUDA device is visible (.*); falling back to the CPU" "$WORK/cuda-container.log" ||
  { cat "$WORK/cuda-container.log"; die "the CUDA container's log does not say it fell back to the CPU"; }
grep -q "serving: .* on cpu," "$WORK/cuda-container.log" ||
  { cat "$WORK/cuda-container.log"; die "the CUDA container does not serve on the CPU"; }
cuda_ids=$(ids "$WORK/cuda.json")
[ "$cuda_ids" = "$container_ids" ] ||
  die "token ids differ: CUDA image on the CPU $cuda_ids, CPU image $container_ids"
echo "test-image: the CUDA image with --device auto and no driver logs:" \
     "$(grep -o -- "--device auto: .*CPU" "$WORK/cuda-container.log" | head -1)"
echo "test-image: and its 48 token ids equal the CPU image's"
podman_run rm -f "$CONTAINER" >/dev/null 2>&1 || true
CONTAINER=""
podman rmi "$CUDA_IMAGE" >/dev/null 2>&1 || true  # ~0.6 GB, rebuilt from the bundle each run
phase "CUDA container run"
echo "test-image: passed"
