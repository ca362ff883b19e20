#!/usr/bin/env bash
# Copies binaries and the shared libraries they load (their ldd closure) into OUT/bin and
# OUT/lib, for a runtime image without compilers or -dev packages (deploy/docker/*).
# Left out: the C library, libstdc++ and libgcc_s (every base image has them, from the same
# release as the build stage), and the CUDA toolkit's libraries (the CUDA runtime image has
# them; the driver's libcuda.so.1 comes from the host's container toolkit).
# Usage: bundle.sh OUT BINARY...
set -euo pipefail
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
        librt.so.* | libresolv.so.* | libutil.so.* | libgcc_s.so.* | libstdc++.so.*) continue ;;
      esac
      case "$(readlink -f "$path")" in
        /usr/local/cuda* | */cuda/*) continue ;;
      esac
      cp -L "$path" "$out/lib/$soname"
    done
done
echo "bundle: $(ls "$out/bin" | wc -l) binaries, $(ls "$out/lib" | wc -l) libraries," \
     "$(du -sh "$out" | cut -f1)"
