#!/usr/bin/env bash
# The main job in one command: installs what is missing, builds (release), runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== build (release)"
cmake --preset release -DLEDGER_BUILD_TESTS=OFF >/dev/null
cmake --build --preset release -j "$(nproc)" --target ledger-demo >/dev/null
echo "== demo"
exec build/release/examples/ledger-demo "$@"
