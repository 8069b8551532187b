#!/usr/bin/env bash
# Regenerates the README's configuration reference from the config table (sidecar/core/config_table.cpp).
# Usage: scripts/config-reference.sh [build dir, default build/debug]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/debug}"
ledgerctl="$build/sidecar/ledgerctl"
[ -x "$ledgerctl" ] || { echo "config-reference: no $ledgerctl: build first (scripts/test.sh)" >&2; exit 1; }
python3 - "$ledgerctl" <<'PY'
import subprocess, sys
ref = subprocess.run([sys.argv[1], "config-reference"], capture_output=True, text=True, check=True).stdout
text = open("README.md").read()
begin = text.index("<!-- config-reference begin")
begin = text.index("\n", begin) + 1
end = text.index("<!-- config-reference end -->")
open("README.md", "w").write(text[:begin] + ref + text[end:])
print("README.md: configuration reference updated")
PY
