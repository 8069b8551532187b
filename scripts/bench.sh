#!/usr/bin/env bash
# Runs every benchmark in a few minutes and prints one table; writes JSON to bench/results/.
#   scripts/bench.sh            (installs what is missing, builds release, starts and stops redis)
# Needs the machine otherwise idle: the numbers are medians of this run, peers measured side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
missing=()
for p in libsqlite3-dev libhiredis-dev redis-server; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: installing ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "== build (release)"
cmake --preset release -DLEDGER_BUILD_TESTS=OFF >/dev/null
cmake --build --preset release -j "$(nproc)" --target ledger_bench peers_bench sidecar_bench global_bench proxy_bench >/dev/null

port=6391
work="$(mktemp -d)"
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
echo "== redis-server on 127.0.0.1:$port (no persistence)"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --dir "$work" --pidfile "$work/redis.pid" --logfile "$work/redis.log"
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
export LEDGER_BENCH_REDIS="127.0.0.1:$port"

out=bench/results
mkdir -p "$out"
stamp="$(date -u +%Y-%m-%d)"
echo "== ledger_bench (libledger paths, scale, flush)"
build/release/bench/ledger_bench --benchmark_min_time=0.3 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/ledger_bench-$stamp.json" --benchmark_out_format=json | grep -E "_median" || true
echo "== peers_bench (the alternatives, side by side; then correctness and contention)"
build/release/bench/peers_bench --benchmark_min_time=0.5 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/peers_bench-$stamp.json" --benchmark_out_format=json \
  --harness_out="$out/harness-$stamp.json" | grep -E "_median|^  |^[a-z]" || true
echo "== sidecar_bench (reconcile 10,000 keys against the emulator, the team report over a 90-day history)"
build/release/bench/sidecar_bench --benchmark_out="$out/sidecar_bench-$stamp.json" --benchmark_out_format=json \
  | grep -E "^BM_" || true
echo "== global_bench (global budgets: store load, round trips, drain fairness, a conditional UPDATE per request as the peer)"
# Its own private PostgreSQL (postgresql-15, from scripts/setup.sh) and real ledger-sidecar processes.
build/release/bench/global_bench --benchmark_out="$out/global_bench-$stamp.json" --benchmark_out_format=json \
  | tee "$out/global_bench-$stamp.txt" | grep -vE "^(Run on|CPU Caches|  L[123]|Load Average|\*\*\*WARNING)" || true
echo "== proxy_bench (ledger-proxy against the emulator on loopback: added latency, throughput, memory per open stream)"
# Runs openrouter-emulator, ledgerctl and ledger-proxy itself (each measurement twice); about 10 minutes.
build/release/bench/proxy_bench | tee "$out/proxy_bench-$stamp.txt"
{
  echo "{\"date\": \"$stamp\", \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\","
  echo " \"cores\": $(nproc), \"memory_gib\": $(( $(grep MemTotal /proc/meminfo | awk '{print $2}') / 1048576 )),"
  echo " \"kernel\": \"$(uname -r)\", \"os\": \"$(. /etc/os-release; echo "$PRETTY_NAME")\"}"
} > "$out/machine-$stamp.json"
python3 scripts/bench_table.py "$out" "$stamp"
