"""Prints the benchmark summary table from bench/results/*-DATE.json (median, p99, ratios)."""
import json
import sys

out, stamp = sys.argv[1], sys.argv[2]


def medians(path):
    rows = {}
    for b in json.load(open(path))["benchmarks"]:
        if b.get("aggregate_name") == "median" and "median_ns" in b:
            rows[b["run_name"]] = b
    return rows


ours = medians(f"{out}/ledger_bench-{stamp}.json")
peers = medians(f"{out}/peers_bench-{stamp}.json")
harness = json.load(open(f"{out}/harness-{stamp}.json"))
machine = json.load(open(f"{out}/machine-{stamp}.json"))
floor = peers.get("bench::BM_CasFloor", ours.get("bench::BM_CasFloor"))["median_ns"]
ledger = peers["BM_LedgerDebit"]["median_ns"]

print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}")
print(f"\n{'path':34} {'median ns':>10} {'p99 ns':>10} {'x CAS floor':>12} {'slower than ledger':>19}")
for name, row in list(peers.items()) + [(k, v) for k, v in ours.items() if k not in peers]:
    label = name.replace("BM_HoldAndCommit/", "").replace("BM_", "").replace("bench::", "")
    print(f"{label:34} {row['median_ns']:10.1f} {row['p99_ns']:10.1f} {row['median_ns'] / floor:12.1f} "
          f"{row['median_ns'] / ledger:18.0f}x")
print(f"\n{'correctness ($1.00 budget, $0.10 requests)':44} {'procs':>5} {'granted':>9} {'overspend':>10}")
for r in harness["correctness"]:
    print(f"{r['peer']:44} {r['processes']:5} {r['granted_usd']:9.2f} {r['overspend_percent']:+9.0f}%")
print(f"\n{'contention (libledger)':34} {'procs':>5} {'M debits/s':>11}")
for r in harness["contention"]:
    print(f"{r['shape']:34} {r['processes']:5} {r['debits_per_s'] / 1e6:11.2f}")
