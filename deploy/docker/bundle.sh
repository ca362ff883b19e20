#!/usr/bin/env bash
# Copies binaries and the shared libraries they load (their ldd closure) into OUT/bin and
# OUT/lib, for a runtime image without compilers or -dev packages (deploy/docker/*).
# Left out: the C library, libstdc++ and libgcc_s (every base image has them, from the same
# release as the build stage), the driver's libcuda.so.1 (the host's container toolkit
# mounts it), and the CUDA toolkit's libraries (the CUDA runtime image has them) unless
# --cuda is given: then the toolkit libraries of the closure are copied too, unmodified, and
# only those NVIDIA lists as redistributable (the CUDA EULA's Attachment A: the CUDA runtime,
# cuBLAS, cuBLASLt); any other toolkit library fails the bundle. The EULA's text goes to
# OUT/share/doc/nvidia-cuda/ (from CUDA_HOME, default /usr/local/cuda).
# Usage: bundle.sh [--cuda] OUT BINARY...
set -euo pipefail
cuda=0
if [ "${1:-}" = --cuda ]; then
  cuda=1
  shift
fi
out=$1
shift
mkdir -p "$out/bin" "$out/lib"
for binary in "$@"; do
  install -m 0755 "$binary" "$out/bin/"
  # ldd lines: "libx.so.1 => /path/libx.so.1 (0x...)"; "not found" fails the build.
  if ldd "$binary" | grep -q "not found"; then
    ldd "$binary" >&2
    echo "bundle: $binary has unresolved libraries" >&2
    exit 1
  fi
  ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' |
    while read -r soname path; do
      case "$soname" in
        ld-linux* | libc.so.* | libm.so.* | libmvec.so.* | libpthread.so.* | libdl.so.* | \
        librt.so.* | libresolv.so.* | libutil.so.* | libgcc_s.so.* | libstdc++.so.* | \
        libcuda.so.*) continue ;;
      esac
      case "$(readlink -f "$path")" in
        /usr/local/cuda* | */cuda/*)
          [ "$cuda" = 1 ] || continue
          case "$soname" in
            libcudart.so.* | libcublas.so.* | libcublasLt.so.*) ;;
            *) echo "bundle: $binary needs $soname, which the CUDA EULA does not let us" \
                    "redistribute" >&2
               exit 1 ;;
          esac ;;
      esac
      cp -L "$path" "$out/lib/$soname"
    done
done
if [ "$cuda" = 1 ]; then
  home=${CUDA_HOME:-/usr/local/cuda}
  eula=""
  for candidate in "$home/EULA.txt" "$home"/dist-info/nvidia_cublas-*/licenses/License.txt; do
    if [ -f "$candidate" ]; then eula=$candidate; break; fi
  done
  [ -n "$eula" ] || { echo "bundle: no CUDA EULA under $home (EULA.txt or dist-info)" >&2; exit 1; }
  mkdir -p "$out/share/doc/nvidia-cuda"
  cp "$eula" "$out/share/doc/nvidia-cuda/EULA.txt"
fi
echo "bundle: $(ls "$out/bin" | wc -l) binaries, $(ls "$out/lib" | wc -l) libraries," \
     "$(du -sh "$out" | cut -f1)"
