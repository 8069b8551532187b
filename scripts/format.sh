#!/usr/bin/env bash
# Formats C and C++ sources with clang-format 14 (Debian 12's) and the repository's .clang-format:
#   scripts/format.sh [FILE...]            formats in place (default: every tracked C/C++ file)
#   scripts/format.sh --check [FILE...]    changes nothing; lists the files that differ, exit 1 if any
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
formatter="$(command -v clang-format-14 || command -v clang-format || true)"
if [ -z "$formatter" ]; then
  echo "format: no clang-format (Debian: apt-get install clang-format)" >&2
  exit 2
fi
case "$("$formatter" --version)" in
  *"version 14."*) ;;
  *) echo "format: warning: $("$formatter" --version) is not clang-format 14; its output may differ" >&2 ;;
esac

if [ $# -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files '*.c' '*.cc' '*.cpp' '*.h' '*.hpp')
fi

if [ "$check" -eq 0 ]; then
  "$formatter" -i --style=file "${files[@]}"
  exit 0
fi
differ=0
for f in "${files[@]}"; do
  if ! "$formatter" --style=file "$f" | cmp -s - "$f"; then
    echo "$f"
    differ=$((differ + 1))
  fi
done
if [ "$differ" -gt 0 ]; then
  echo "format: $differ of ${#files[@]} files differ from .clang-format (scripts/format.sh FILE... formats them)" >&2
  exit 1
fi
