#!/usr/bin/env bash
# The one command that sets up and runs the test suite:
#   scripts/test.sh              debug build, all tests
#   scripts/test.sh asan|tsan    the same under AddressSanitizer+UBSan or ThreadSanitizer
#   scripts/test.sh release
# Knobs: LEDGER_TORTURE_KILLS (default 1000) for a longer SIGKILL torture run; LEDGER_WERROR=ON makes
# compiler warnings errors (CI); LEDGER_BUILD_LOCK (default /tmp/ledger-build.lock, empty = none)
# is a file lock the build step takes, so that builds on a shared machine take turns.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-debug}"
case "$preset" in debug|release|asan|tsan) ;; *) echo "usage: $0 [debug|release|asan|tsan]" >&2; exit 1 ;; esac

scripts/setup.sh
jobs="$(nproc)"
lock="${LEDGER_BUILD_LOCK-/tmp/ledger-build.lock}"
locked() { if [ -n "$lock" ]; then flock "$lock" "$@"; else "$@"; fi; }
echo "== configure ($preset)"
cmake --preset "$preset" -DLEDGER_WERROR="${LEDGER_WERROR:-OFF}" >/dev/null
echo "== build ($preset, $jobs jobs)"
locked cmake --build --preset "$preset" -j "$jobs"
echo "== test ($preset)"
ctest --preset "$preset" -j 2
