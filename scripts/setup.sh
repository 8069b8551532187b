#!/usr/bin/env bash
# Installs the Debian 12 packages the build and tests need. Idempotent and non-interactive:
# it runs apt-get only when a package is missing. Needs root (or sudo) for the install itself.
set -euo pipefail

packages=(
  build-essential cmake pkg-config python3
  python3-httpx python3-venv python3-setuptools python3-wheel   # the Python package's transport and install tests
  libboost1.81-dev libboost-json1.81-dev
  liblmdb-dev lmdb-utils
  libcurl4-openssl-dev
  libbenchmark-dev catch2
  chromium fonts-dejavu-core   # the HTML report is rendered in headless Chromium by a test
  postgresql-15 libpq-dev      # global mode: the tests start a private server of their own
  curl                         # ledger-proxy's tests call it as a client
)
# ledger-proxy's SDK test runs the official openai npm package: Node and npm from Debian, only when
# there are none (a Node from elsewhere bundles its own npm, which Debian's npm would conflict with).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

# One dpkg-query for every package (a package dpkg does not know prints nothing here).
installed="$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null | awk '/ install ok installed$/ {print $1}' || true)"
missing=()
for p in "${packages[@]}"; do
  grep -qxF "$p" <<<"$installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
