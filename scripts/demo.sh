#!/usr/bin/env bash
# The main job in one command: installs what is missing, builds, and runs the whole system on a
# local OpenRouter emulator (no network needed):
#   emulator -> ledgerctl init -> a shared worker key -> ledger-sidecar (flush, reclaim, reconcile,
#   reports, metrics) -> ledger-proxy with two pools of clients that know only a URL and an lk- key
#   (Python httpx: erin, frank; Node with the official openai npm package, streaming: grace) beside
#   a pool of worker processes that authorize, call the chat endpoint with the attribution headers and commit
#   usage.cost, until the budgets bite -> the checks of both sides -> the team report.
#   scripts/demo.sh [--short] [--workers N] [--seconds S]
# With --hosts N (N >= 2), N simulated hosts share one team budget through leases on a private
# PostgreSQL (scripts/demo-hosts.sh; --workers is then per host).
# LEDGER_DEMO_BUILD=DIR uses binaries already built there (CI's short run uses the debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
workers=""; seconds=""; short=0; hosts=""
usage() { echo "usage: $0 [--short] [--workers N] [--seconds S] [--hosts N]" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --short) short=1 ;;
    --workers) [ $# -ge 2 ] || usage; workers="$2"; shift ;;
    --seconds) [ $# -ge 2 ] || usage; seconds="$2"; shift ;;
    --hosts) [ $# -ge 2 ] || usage; hosts="$2"; shift ;;
    *) usage ;;
  esac
  shift
done
if [ -n "$hosts" ]; then
  case "$hosts" in ''|*[!0-9]*) usage ;; esac
  if [ "$hosts" -lt 2 ] || [ "$hosts" -gt 16 ]; then echo "demo: --hosts wants 2 to 16 hosts" >&2; exit 1; fi
  # Workers per host: fewer than the plain demo's, since every host runs its own pool.
  if [ "$short" -eq 1 ]; then workers="${workers:-2}"; seconds="${seconds:-3}"; else workers="${workers:-3}"; seconds="${seconds:-8}"; fi
elif [ "$short" -eq 1 ]; then workers="${workers:-4}"; seconds="${seconds:-3}"
else workers="${workers:-6}"; seconds="${seconds:-8}"
fi

build="${LEDGER_DEMO_BUILD:-}"
if [ -z "$build" ]; then
  scripts/setup.sh
  echo "== build (release; the first time takes a few minutes)"
  mkdir -p build
  if ! { cmake --preset release -DLEDGER_BUILD_TESTS=OFF &&
         cmake --build --preset release -j "$(nproc)" --target ledger-demo ledgerctl ledger-sidecar openrouter-emulator ledger-proxy; } \
       > build/demo-build.log 2>&1; then
    tail -30 build/demo-build.log
    echo "demo: the build failed (full log: build/demo-build.log)" >&2
    exit 2
  fi
  build="build/release"
fi
build="$(cd "$build" && pwd)"
ctl="$build/sidecar/ledgerctl"
if [ -n "$hosts" ]; then exec bash "$root/scripts/demo-hosts.sh" "$build" "$hosts" "$workers" "$seconds"; fi

# The Node pool's one dependency, the openai npm package at the version examples/node's lock pins,
# installed beside the build (npm ci; again only when the lock changed).
node_dir="$build/node-demo"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "demo: node and npm are needed for the Node pool (scripts/setup.sh installs them)" >&2
  exit 2
fi
mkdir -p "$node_dir"
if ! cmp -s examples/node/package-lock.json "$node_dir/package-lock.json" || [ ! -f "$node_dir/node_modules/openai/package.json" ]; then
  echo "== npm ci (the openai package for the Node pool, pinned by examples/node/package-lock.json)"
  cp examples/node/package.json examples/node/package-lock.json "$node_dir/"
  if ! (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error) > "$node_dir/npm.log" 2>&1; then
    tail -20 "$node_dir/npm.log"
    rm -f "$node_dir/package-lock.json"  # so that the next run tries again
    echo "demo: npm ci failed (log: $node_dir/npm.log)" >&2
    exit 2
  fi
fi
cp examples/node/proxy_pool.mjs "$node_dir/"

work="$(mktemp -d /tmp/ledger-demo.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$work/demo.json" ] && "$ctl" --config "$work/demo.json" destroy-segment >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== openrouter-emulator (loopback)"
"$build/emulator/openrouter-emulator" --management-key-file "$work/mgmt.key" --port-file "$work/emulator.port" \
  > "$work/emulator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/emulator.port" ] && break; sleep 0.05; done
port="$(cat "$work/emulator.port")"
metrics_port=$((20000 + RANDOM % 20000))

sed -e "s|@DIR@|$work|g" -e "s|@PORT@|$port|g" -e "s|@METRICS@|$metrics_port|g" \
  "$root/examples/config/demo.json.in" > "$work/demo.json"
echo "== ledgerctl init"
"$ctl" --config "$work/demo.json" init
# The workers share one normal key, the team's: it goes to them in the environment, never on a
# command line, and is bound to the team account so reconcile compares the two.
LEDGER_DEMO_API_KEY="$("$ctl" --config "$work/demo.json" keys create demo-workers --limit 50 2>"$work/key.err" | sed -n 's/^demo-workers: //p')"
export LEDGER_DEMO_API_KEY
hash="$(sed -n 's/.*(hash \([0-9a-f]*\)).*/\1/p' "$work/key.err")"
sed -i "s|\"id\": \"eng\", |\"id\": \"eng\", \"key_hash\": \"$hash\", |" "$work/demo.json"
# ledger-proxy beside them: an OpenAI-compatible endpoint for workers that know only a URL and a
# key: the "apps" team (erin, frank). The proxy sends its own OpenRouter key upstream (from a 0600
# file, never argv), bound to "apps" so reconcile compares the two; erin and frank get proxy keys
# (lk-...), shown nowhere.
umask 077
"$ctl" --config "$work/demo.json" keys create demo-proxy --limit 50 2>"$work/proxy-key.err" | sed -n 's/^demo-proxy: //p' \
  > "$work/proxy-upstream.key"
proxy_hash="$(sed -n 's/.*(hash \([0-9a-f]*\)).*/\1/p' "$work/proxy-key.err")"
sed -i "s|\"id\": \"apps\", |\"id\": \"apps\", \"key_hash\": \"$proxy_hash\", |" "$work/demo.json"
echo "== ledger-sidecar"
"$build/sidecar/ledger-sidecar" --config "$work/demo.json" > "$work/sidecar.log" 2>&1 &
pids+=($!)
sleep 0.5

echo "== ledger-proxy, and two proxy pools beside the batch workers: Python httpx (erin, frank), Node openai streaming (grace)"
for user in erin frank grace; do
  "$ctl" --config "$work/demo.json" proxy-key create "$user" 2>/dev/null | sed -n "s/^$user: //p" > "$work/$user.lk"
done
"$build/proxy/ledger-proxy" --config "$work/demo.json" --port-file "$work/proxy.port" > "$work/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/proxy.port" ] && break; sleep 0.05; done
proxy_url="http://127.0.0.1:$(cat "$work/proxy.port")/api/v1"
python="$(command -v /usr/bin/python3 || command -v python3)"  # Debian's, which has python3-httpx
"$python" "$root/examples/proxy_pool.py" "$proxy_url" "$seconds" erin="$work/erin.lk" frank="$work/frank.lk" > "$work/proxy-pool.out" 2>&1 &
pool=$!
node "$node_dir/proxy_pool.mjs" "$proxy_url" "$seconds" grace="$work/grace.lk" > "$work/node-pool.out" 2>&1 &
node_pool=$!

echo "== $workers batch workers for $seconds s"
"$build/examples/ledger-demo" --dir "$work/ledger" --keep --workers "$workers" --seconds "$seconds" \
  --base-url "http://127.0.0.1:$port/api/v1"
if ! wait "$pool"; then cat "$work/proxy-pool.out"; echo "demo: the proxy pool failed (log: $work/proxy.log)" >&2; exit 2; fi
if ! wait "$node_pool"; then cat "$work/node-pool.out"; echo "demo: the Node pool failed (log: $work/proxy.log)" >&2; exit 2; fi
cat "$work/proxy-pool.out" "$work/node-pool.out"
sleep 2.5   # one more flush, reconcile and report round of the sidecar
# The proxy side's checks: every user of apps within its limit and answered, nothing held, and
# apps' spend == the sum of its users' == what OpenRouter (the emulator) billed the proxy's key.
"$ctl" --config "$work/demo.json" status --json > "$work/status.json"
"$ctl" --config "$work/demo.json" keys list --json > "$work/keys.json"
"$python" "$root/examples/proxy_checks.py" "$work/status.json" "$work/keys.json" "$proxy_hash" apps erin frank grace

echo
"$ctl" --config "$work/demo.json" report --to "$(date -u +%F)"
"$ctl" --config "$work/demo.json" report --format html --out "$work/reports/team-report.html" 2>/dev/null
echo
echo "HTML report: $work/reports/team-report.html (also json and csv beside it)"
if command -v chromium >/dev/null 2>&1; then
  # A picture of it, for a terminal-only machine (headless Chromium, no network).
  if chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
       --disable-component-update --disable-sync --user-data-dir="$work/chromium" --window-size=1000,1500 \
       --screenshot="$work/reports/team-report.png" "file://$work/reports/team-report.html" >/dev/null 2>&1; then
    echo "screenshot:  $work/reports/team-report.png"
  fi
fi
echo "metrics were served at http://127.0.0.1:$metrics_port/metrics; logs: $work/sidecar.log"
grep -c 'msg="reports written"' "$work/sidecar.log" >/dev/null && echo "sidecar: flushed, reconciled and wrote reports while the workers ran"
