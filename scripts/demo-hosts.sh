#!/usr/bin/env bash
# The multi-host demo, run by `scripts/demo.sh --hosts N` (which parses the options and builds):
#   a private PostgreSQL (initdb in the demo's temp directory as an unprivileged user, a Unix socket
#   there, no TCP) -> openrouter-emulator -> N simulated hosts, each with its own ledger directory
#   and segment, config, `ledgerctl init` and ledger-sidecar leasing slices of one team budget from
#   the store -> a pool of workers on every host until the budget bites, with the per-host and the
#   global spend printed every second -> every sidecar stopped (a last report each) -> the checks:
#   no account over its limit across hosts, and the store's spend == what all workers committed,
#   to the nano-USD, in total and per host.
#   scripts/demo-hosts.sh BUILD_DIR HOSTS WORKERS_PER_HOST SECONDS
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 BUILD_DIR HOSTS WORKERS_PER_HOST SECONDS (run it as scripts/demo.sh --hosts N)" >&2; exit 1; }
cd "$(dirname "$0")/.."
root="$(pwd)"
build="$1"; hosts="$2"; workers="$3"; seconds="$4"
ctl="$build/sidecar/ledgerctl"

pgbin=""
for candidate in /usr/lib/postgresql/15/bin /usr/lib/postgresql/16/bin; do
  [ -x "$candidate/initdb" ] && { pgbin="$candidate"; break; }
done
[ -n "$pgbin" ] || { echo "demo: --hosts needs PostgreSQL 15 (initdb not found; scripts/setup.sh installs postgresql-15)" >&2; exit 2; }
# initdb refuses root: as root the server runs as the unprivileged postgres user (Debian's package makes it).
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "demo: running as root, but there is no postgres user to run the server as" >&2; exit 2; }
  as_pg() { (cd "$pgdir" && setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"); }
else
  as_pg() { (cd "$pgdir" && "$@"); }
fi

# Short enough for the server's socket path (at most 107 bytes): /tmp/ledger-demo.XXXXXX/pg/.s.PGSQL.5432
work="$(mktemp -d /tmp/ledger-demo.XXXXXX)"
pgdir="$work/pg"
started_pg=0
sidecar_pids=(); demo_pids=(); other_pids=()
# shellcheck disable=SC2317  # (run by the EXIT trap)
cleanup() {
  for pid in "${demo_pids[@]}" "${sidecar_pids[@]}" "${other_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${demo_pids[@]}" "${sidecar_pids[@]}" "${other_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$started_pg" -eq 1 ]; then as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$pgdir/data"   # the server's files; its log stays with the others
  for h in $(seq "$hosts"); do
    if [ -f "$work/host-$h/demo.json" ]; then "$ctl" --config "$work/host-$h/demo.json" destroy-segment >/dev/null 2>&1 || true; fi
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== PostgreSQL (private: initdb in $pgdir, a Unix socket there, no TCP)"
mkdir -m 0700 "$pgdir"
chmod 0711 "$work"   # the server's user may pass through to pg/, not list or read the rest
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$pgdir"; fi
# The store's password: random, for this run only; it reaches initdb in a file (removed at once)
# and the sidecars and ledgerctl in the environment variable their configs name, never in argv.
LEDGER_DEMO_STORE_PASSWORD="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
export LEDGER_DEMO_STORE_PASSWORD
(umask 077; printf '%s\n' "$LEDGER_DEMO_STORE_PASSWORD" > "$pgdir/pw")
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$pgdir/pw"; fi
if ! as_pg "$pgbin/initdb" -D "$pgdir/data" -U ledger --pwfile="$pgdir/pw" -A scram-sha-256 --no-sync -E UTF8 --locale=C \
     > "$pgdir/initdb.log" 2>&1; then
  rm -f "$pgdir/pw"; tail -20 "$pgdir/initdb.log" >&2; echo "demo: initdb failed" >&2; exit 2
fi
rm -f "$pgdir/pw"
started_pg=1
if ! as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w \
     -o "-k $pgdir -c listen_addresses='' -c fsync=off -c full_page_writes=off" start > /dev/null; then
  tail -20 "$pgdir/server.log" >&2; echo "demo: the PostgreSQL server did not start" >&2; exit 2
fi
(export PGPASSWORD="$LEDGER_DEMO_STORE_PASSWORD"; as_pg "$pgbin/createdb" -h "$pgdir" -U ledger ledger)
store="postgresql:///ledger?host=$pgdir&user=ledger"
echo "store: $store (password in \$LEDGER_DEMO_STORE_PASSWORD)"

echo "== openrouter-emulator (loopback)"
"$build/emulator/openrouter-emulator" --management-key-file "$work/mgmt.key" --port-file "$work/emulator.port" \
  > "$work/emulator.log" 2>&1 &
other_pids+=($!)
for _ in $(seq 100); do [ -s "$work/emulator.port" ] && break; sleep 0.05; done
port="$(cat "$work/emulator.port")"

# Each host's config: the plain demo's (examples/config/demo.json.in) with its own ledger directory
# and reports, a "global" section naming the shared store and the host, and no metrics listener
# (the hosts share this machine's ports). With a key hash, the team account is bound to it.
write_configs() {
  python3 - "$root/examples/config/demo.json.in" "$work" "$port" "$hosts" "$store" "${1:-}" <<'EOF'
import json, os, sys
template, work, port, hosts, store, key_hash = sys.argv[1:]
text = open(template).read().replace("@DIR@", work).replace("@PORT@", port).replace("@METRICS@", "0")
for h in range(1, int(hosts) + 1):
    c = json.loads(text)
    home = f"{work}/host-{h}"
    os.makedirs(home, exist_ok=True)
    c["ledger"]["dir"] = f"{home}/ledger"
    c["reports"]["dir"] = f"{home}/reports"
    del c["metrics"]
    c["global"] = {"store": store, "store_password_env": "LEDGER_DEMO_STORE_PASSWORD", "host_id": f"host-{h}",
                   "lease_ttl_s": 5, "refresh_interval_ms": 200}
    if key_hash:
        for a in c["accounts"]:
            if a["id"] == "eng":
                a["key_hash"] = key_hash
    with open(f"{home}/demo.json", "w") as f:
        json.dump(c, f, indent=2)
EOF
}
write_configs ""
echo "== ledgerctl init on each of $hosts hosts (the first creates the store's schema; each publishes the budgets)"
for h in $(seq "$hosts"); do
  if ! "$ctl" --config "$work/host-$h/demo.json" init > "$work/host-$h/init.log" 2>&1; then
    cat "$work/host-$h/init.log" >&2; echo "demo: ledgerctl init failed on host-$h" >&2; exit 2
  fi
  echo "host-$h: $(grep -c . "$work/host-$h/init.log") lines of init output in $work/host-$h/init.log"
done
"$ctl" --config "$work/host-1/demo.json" global status

# Every host's workers share one normal key, the team's (in the environment, never on a command
# line); each host binds it to the team account. The sidecar that holds the reconciler's lease in
# the store compares the key's usage at OpenRouter with what all hosts recorded through it; an
# adjustment would be spend no worker committed, and the check below would say so.
LEDGER_DEMO_API_KEY="$("$ctl" --config "$work/host-1/demo.json" keys create demo-workers --limit 50 2>"$work/key.err" | sed -n 's/^demo-workers: //p')"
export LEDGER_DEMO_API_KEY
[ -n "$LEDGER_DEMO_API_KEY" ] || { cat "$work/key.err" >&2; echo "demo: could not create the workers' key" >&2; exit 2; }
write_configs "$(sed -n 's/.*(hash \([0-9a-f]*\)).*/\1/p' "$work/key.err")"

echo "== a ledger-sidecar on each host (leases from the store every 200 ms)"
for h in $(seq "$hosts"); do
  "$build/sidecar/ledger-sidecar" --config "$work/host-$h/demo.json" > "$work/host-$h/sidecar.log" 2>&1 &
  sidecar_pids+=($!)
done
# Until every host holds its first slice of the team's budget.
status_json() { "$ctl" --config "$work/host-1/demo.json" global status --json; }
leasing=0
for _ in $(seq 100); do
  leasing="$(status_json 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for a in json.load(sys.stdin)["accounts"] if a["id"] == "eng" for h in a["hosts"] if h["leased_nanousd"] > 0))' 2>/dev/null)" || leasing=0
  [ "$leasing" -ge "$hosts" ] && break
  sleep 0.1
done
if [ "$leasing" -lt "$hosts" ]; then
  for h in $(seq "$hosts"); do echo "-- host-$h sidecar log:"; tail -5 "$work/host-$h/sidecar.log"; done >&2
  echo "demo: only $leasing of $hosts hosts hold a lease after 10 s" >&2
  exit 2
fi

echo "== $workers batch workers on each host for $seconds s"
echo "   team eng, per host: spent in its own segment (its lease in the store); store: all hosts"
day="$(date -u +%F)"
for h in $(seq "$hosts"); do
  "$build/examples/ledger-demo" --dir "$work/host-$h/ledger" --keep --workers "$workers" --seconds "$seconds" \
    --base-url "http://127.0.0.1:$port/api/v1" > "$work/host-$h/workers.log" 2>&1 &
  demo_pids+=($!)
done
progress() {
  python3 - "$ctl" "$work" "$hosts" "$1" <<'EOF'
import json, subprocess, sys
import time
ctl, work, hosts, start_ns = sys.argv[1:]
def run(h, *args):
    r = subprocess.run([ctl, "--config", f"{work}/host-{h}/demo.json", *args], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None
def usd(n):  # for the eye only (to the micro-USD, rounded down); the checks compare nano-USD
    return f"${n // 10**9}.{n % 10**9 // 1000:06d}"
# The segments first, then the store: a host's lease never drops below what it used, so a lease
# read afterwards is at least the spend read before it (the store's spend lags by a report).
spent = {h: run(h, "balance", "eng", "--json") for h in range(1, int(hosts) + 1)}
team = next(a for a in run(1, "global", "status", "--json")["accounts"] if a["id"] == "eng")
leased = {x["host_id"]: x["leased_nanousd"] for x in team["hosts"]}
cells = []
for h, b in spent.items():
    cells.append(f"host-{h} {usd(b['spent_nanousd']) if b else '?'} ({usd(leased.get(f'host-{h}', 0))})")
print(f"  {(time.time_ns() - int(start_ns)) / 1e9:4.1f}s  " + "  ".join(cells) +
      f"  | store: spent {usd(team['spent_nanousd'])} leased {usd(team['leased_nanousd'])} of {usd(team['limit_nanousd'])}",
      flush=True)
EOF
}
start_ns="$(date +%s%N)"
while :; do
  sleep 0.5   # a line about every second: the look at the store and the segments takes about as long
  progress "$start_ns" || true
  running=0
  for pid in "${demo_pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
  [ "$running" -eq 1 ] || break
done
demo_failed=0
for h in $(seq "$hosts"); do
  if ! wait "${demo_pids[$((h - 1))]}"; then demo_failed=1; echo "host-$h: ledger-demo failed (its output: $work/host-$h/workers.log)"; fi
done
demo_pids=()
for h in $(seq "$hosts"); do
  echo
  echo "== host-$h: its workers and its segment"
  sed -n '/^user /,$p' "$work/host-$h/workers.log"
done

echo
echo "== stopping the sidecars (each reports a last time and gives back what it did not use)"
sidecar_failed=0
for pid in "${sidecar_pids[@]}"; do kill -TERM "$pid"; done
for h in $(seq "$hosts"); do
  wait "${sidecar_pids[$((h - 1))]}" || { sidecar_failed=1; echo "host-$h: ledger-sidecar exited with an error (log: $work/host-$h/sidecar.log)"; }
done
sidecar_pids=()
status_json > "$work/global-status.json"
"$ctl" --config "$work/host-1/demo.json" keys list --json > "$work/keys.json" 2>/dev/null || true

echo
echo "== checks"
# Integer nano-USD throughout (Python ints): no floating point in any comparison.
if python3 - "$work" "$hosts" "$demo_failed" "$sidecar_failed" "$day" "$(date -u +%F)" <<'EOF'
import json, re, sys
work, hosts, demo_failed, sidecar_failed, day_start, day_end = sys.argv[1:]
hosts = int(hosts)
def usd(n):
    return f"${n // 10**9}.{n % 10**9:09d}" if n >= 0 else "-" + usd(-n)
problems = []
committed, users = {}, {}
for h in range(1, hosts + 1):
    log = open(f"{work}/host-{h}/workers.log").read()
    m = re.search(r"^ledger-demo: workers committed (\d+) nano-USD", log, re.M)
    if m is None:
        problems.append(f"host-{h}: its ledger-demo printed no committed total (see host-{h}/workers.log)")
    committed[h] = int(m.group(1)) if m else 0
    for row in re.finditer(r"^(alice|bob|carol|dave) .* (\d+) +(\d+)$", log, re.M):
        u = users.setdefault(row.group(1), [0, 0])
        u[0] += int(row.group(2))
        u[1] += int(row.group(3))
accounts = {a["id"]: a for a in json.load(open(f"{work}/global-status.json"))["accounts"]}
team = accounts["eng"]
rows = {x["host_id"]: x for x in team["hosts"]}
total = sum(committed.values())
print(f"{'host':<8} {'workers committed':>20} {'store: reported':>20} {'store: leased':>20}")
for h in range(1, hosts + 1):
    x = rows.get(f"host-{h}")
    if x is None:
        problems.append(f"host-{h}: the store has no lease of the team for it")
        continue
    print(f"{'host-' + str(h):<8} {usd(committed[h]):>20} {usd(x['reported_nanousd']):>20} {usd(x['leased_nanousd']):>20}")
    if x["expired"]:
        problems.append(f"host-{h}: its lease expired (charged in full)")
    if x["reported_nanousd"] != committed[h]:
        problems.append(f"host-{h}: the store has {x['reported_nanousd']} nano-USD reported, its workers committed {committed[h]}")
    if x["leased_nanousd"] != x["reported_nanousd"]:
        problems.append(f"host-{h}: {x['leased_nanousd'] - x['reported_nanousd']} nano-USD leased but unused was not given back")
print(f"{'all':<8} {usd(total):>20}")
print()
print(f"{'account':<8} {'store: spent':>20} {'limit':>20} {'used':>6} {'granted':>9} {'denied':>9}  (requests, all hosts)")
for a in accounts.values():
    granted, denied = users.get(a["id"], ["", ""])
    if a["id"] == "eng":
        granted, denied = sum(u[0] for u in users.values()), sum(u[1] for u in users.values())
    print(f"{a['id']:<8} {usd(a['spent_nanousd']):>20} {usd(a['limit_nanousd']):>20} "
          f"{a['spent_nanousd'] * 100 // max(1, a['limit_nanousd']):>5}% {granted:>9} {denied:>9}")
    if a["spent_nanousd"] > a["limit_nanousd"]:
        problems.append(f"{a['id']}: the store has spent {usd(a['spent_nanousd'])}, over its limit {usd(a['limit_nanousd'])}")
print()
if team["spent_nanousd"] != total:
    problems.append(f"eng: the store's spend {team['spent_nanousd']} != what the workers committed, {total} nano-USD")
if day_start != day_end:
    problems.append(f"the run crossed midnight UTC ({day_start} -> {day_end}): global status shows the new day's window only")
checks = [
    ("the team stayed within its limit across hosts (store spent <= limit)", team["spent_nanousd"] <= team["limit_nanousd"]),
    ("every account stayed within its limit across hosts", all(a["spent_nanousd"] <= a["limit_nanousd"] for a in accounts.values())),
    (f"the store's team spend == what all workers committed (store {team['spent_nanousd']}, workers {total} nano-USD)",
     team["spent_nanousd"] == total and day_start == day_end),
    ("per host: the store's report == what its workers committed, and nothing is left leased",
     not any(p.startswith("host-") for p in problems)),
    ("every host's workers passed their own checks (segment == committed, per user and per model)", demo_failed == "0"),
    ("every sidecar stopped cleanly", sidecar_failed == "0"),
]
# For comparison (not a check: OpenRouter's usage is a float sum): what the provider billed the key.
try:
    key = next(k for k in json.load(open(f"{work}/keys.json"))["keys"] if k["name"] == "demo-workers")
    same = "the same as" if key["usage_nanousd"] == team["spent_nanousd"] else "not the same as"
    print(f"OpenRouter (the emulator) billed the workers' key {usd(key['usage_nanousd'])}: {same} the store's spend\n")
except (OSError, ValueError, KeyError, StopIteration):
    print("OpenRouter (the emulator): no key usage to compare (keys list failed)\n")
# An account that no host ever admitted a request for, while its budget had room, was starved
# (slices too small for its requests), not limited.
starved = [a for a in accounts.values() if a["id"] in users and users[a["id"]][0] == 0 and users[a["id"]][1] > 0]
checks.append(("every user with requests had some admitted (none starved by slices smaller than its requests)", not starved))
for a in starved:
    problems.append(f"{a['id']}: no host admitted any of its {users[a['id']][1]} requests, "
                    f"with {usd(a['limit_nanousd'] - a['spent_nanousd'])} of its budget left")
for what, ok in checks:
    print(f"{'PASS' if ok else 'FAIL'}  {what}")
for p in problems:
    print(f"  problem: {p}")
ok = all(ok for _, ok in checks)
print(f"\n== global budget demo: {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
EOF
then result=0; else result=1; fi
echo "logs, configs and reports: $work (host-*/, pg/server.log)"
exit "$result"
