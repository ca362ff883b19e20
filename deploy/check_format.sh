#!/usr/bin/env bash
# Formatting check (tests/README.md, Contributing): every file listed in
# deploy/format-clean.txt must be exactly as clang-format 14 formats it with the repository's
# .clang-format. The list holds the files that were clean when the check was introduced; a
# file joins it once formatted (`clang-format-14 -i FILE`), so the check is deterministic on a
# clean clone and never asks for a mass reformat. Takes a few seconds; run by deploy/test.sh.
# Usage: deploy/check_format.sh [FILE...]   (default: the files of deploy/format-clean.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
tool=$(command -v clang-format-14 || true)
if [ -z "$tool" ]; then
  if command -v clang-format >/dev/null && clang-format --version | grep -q "version 14\."; then
    tool=$(command -v clang-format)
  else
    echo "check_format: clang-format 14 is not installed (deploy/setup.sh installs it on" \
         "Debian 12); skipped: other versions format differently"
    exit 0
  fi
fi
if [ $# -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(grep -v '^#' deploy/format-clean.txt)
fi
bad=0
for f in "${files[@]}"; do
  if ! "$tool" --dry-run --Werror "$f" >/dev/null 2>&1; then
    echo "check_format: $f is not formatted (see: $tool $f | diff $f -)"
    bad=$((bad + 1))
  fi
done
echo "check_format: ${#files[@]} files checked, $bad not formatted"
[ "$bad" -eq 0 ]
