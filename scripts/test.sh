#!/usr/bin/env bash
# The one command that sets up and runs the test suite:
#   scripts/test.sh              debug build, all tests
#   scripts/test.sh asan|tsan    the same under AddressSanitizer+UBSan or ThreadSanitizer
#   scripts/test.sh release
# Knobs: LEDGER_TORTURE_KILLS (default 1000) for a longer SIGKILL torture run.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-debug}"
case "$preset" in debug|release|asan|tsan) ;; *) echo "usage: $0 [debug|release|asan|tsan]" >&2; exit 1 ;; esac

scripts/setup.sh
jobs="$(nproc)"
echo "== configure ($preset)"
cmake --preset "$preset" >/dev/null
echo "== build ($preset, $jobs jobs)"
cmake --build --preset "$preset" -j "$jobs" 2>&1 | grep -E "error|warning|Linking" || true
# A build error must fail the script even though grep filtered its output.
cmake --build --preset "$preset" -j "$jobs" >/dev/null
echo "== test ($preset)"
ctest --preset "$preset" -j 2
