"""The C ABI driven from Python ctypes by several processes at once, and with bad arguments.

Usage: c_abi_test.py /path/to/libledger.so   (ctest passes it). Prints 'N passed, N failed'.
"""
import ctypes
import multiprocessing
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
import ledger_ctypes as L  # noqa: E402

LIB_PATH = sys.argv[1]
failures = []
passes = 0


def check(condition, what):
    global passes
    if condition:
        passes += 1
    else:
        failures.append(what)
        print("FAILED:", what, flush=True)


def worker(directory, seed, operations, inherited, queue):
    """Random debits/reserves/commits; reports what it was granted per account."""
    lib = L.load(LIB_PATH)
    ledger = inherited if inherited is not None else L.Ledger(lib, directory, create=False)
    rng = random.Random(seed)
    granted = {"alice": 0, "bob": 0, "team": 0}
    requests = {"alice": 0, "bob": 0, "team": 0}
    for _ in range(operations):
        account = rng.choice(["alice", "alice", "bob", "team"])
        amount = rng.randint(1, 50_000_000)
        if rng.random() < 0.5:
            code = ledger.debit(account, amount)
            if code == L.OK:
                granted[account] += amount
                requests[account] += 1
            elif code not in (L.DENIED_OVER_BUDGET, L.DENIED_PARENT_OVER_BUDGET):
                queue.put(("error", code))
                return
        else:
            code, rid = ledger.reserve(account, amount, 60)
            if code != L.OK:
                continue
            actual = rng.randint(0, amount)
            if ledger.commit(rid, actual) != L.OK or ledger.commit(rid, actual) != L.ALREADY_SETTLED:
                queue.put(("error", "commit"))
                return
            granted[account] += actual
            requests[account] += 1
    queue.put(("ok", granted, requests))


def main():
    directory = tempfile.mkdtemp(prefix="ledger-py-")
    lib = L.load(LIB_PATH)
    try:
        ledger = L.Ledger(lib, directory, limits=ctypes.pointer(L.Limits(1024, 1024, 64)))
        check(os.path.exists(L.segment_path(directory)), "segment where expected")
        check(ledger.set_budget("team", L.usd("20"), L.DAILY) == L.OK, "team budget")
        check(ledger.set_budget("alice", L.usd("8"), L.DAILY, "team") == L.OK, "alice budget")
        check(ledger.set_budget("bob", L.usd("8"), L.DAILY, "team") == L.OK, "bob budget")

        # Bad arguments through the real ABI: NULLs, long and malformed strings, negative amounts.
        h = ledger.handle
        check(lib.ledger_debit(None, b"alice", 1) == L.INVALID_ARGUMENT, "NULL handle")
        check(lib.ledger_debit(h, None, 1) == L.INVALID_ARGUMENT, "NULL account")
        check(lib.ledger_debit(h, b"", 1) == L.INVALID_ARGUMENT, "empty account")
        check(lib.ledger_debit(h, b"a" * 64, 1) == L.INVALID_ARGUMENT, "64-byte account")
        check(lib.ledger_debit(h, b"a" * 100000, 1) == L.INVALID_ARGUMENT, "huge account")
        check(lib.ledger_debit(h, b"bad name", 1) == L.INVALID_ARGUMENT, "space in name")
        check(lib.ledger_debit(h, b"alice", -1) == L.INVALID_ARGUMENT, "negative amount")
        check(lib.ledger_set_budget(h, b"x", -5, L.DAILY, None) == L.INVALID_ARGUMENT, "negative limit")
        check(lib.ledger_set_budget(h, b"x", 5, 9, None) == L.INVALID_ARGUMENT, "bad period")
        check(lib.ledger_reserve(h, b"alice", 1, 0, None) == L.INVALID_ARGUMENT, "NULL id out")
        check(lib.ledger_balance(h, b"alice", None) == L.INVALID_ARGUMENT, "NULL balance out")
        check(lib.ledger_commit(h, 0, 1) == L.UNKNOWN_RESERVATION, "id 0")
        check(lib.ledger_estimate(h, b"nope/model", 1, 1, None) == L.INVALID_ARGUMENT, "NULL estimate out")
        check(lib.ledger_open(b"/nonexistent/ledger", ctypes.byref(ctypes.c_void_p())) == L.NOT_FOUND,
              "open missing")
        check(lib.ledger_strerror(L.FULL).decode().startswith("ledger full"), "strerror")

        # Several processes at once: two open their own handle, two use one carried across fork.
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        procs = [ctx.Process(target=worker, args=(directory, seed, 3000, ledger if seed % 2 else None, queue))
                 for seed in range(4)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=240) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            check(p.exitcode == 0, f"worker exit {p.exitcode}")
        check(all(r[0] == "ok" for r in results), f"workers reported {[r[:2] for r in results if r[0] != 'ok']}")
        ok = [r for r in results if r[0] == "ok"]
        granted = {a: sum(r[1][a] for r in ok) for a in ("alice", "bob", "team")}
        requests = {a: sum(r[2][a] for r in ok) for a in ("alice", "bob", "team")}
        code, n = ledger.reclaim()
        check(code == L.OK, "reclaim")
        balances = {a: ledger.balance(a)[1] for a in ("alice", "bob", "team")}
        for a in ("alice", "bob"):
            check(balances[a].spent_nanousd == granted[a], f"{a} spent {balances[a].spent_nanousd} == {granted[a]}")
            check(balances[a].requests == requests[a], f"{a} requests")
            check(balances[a].spent_nanousd <= balances[a].limit_nanousd, f"{a} within limit")
            check(balances[a].held_nanousd == 0, f"{a} nothing held")
        team_total = granted["alice"] + granted["bob"] + granted["team"]
        check(balances["team"].spent_nanousd == team_total, f"team spent {balances['team'].spent_nanousd} == {team_total}")
        check(balances["team"].spent_nanousd <= L.usd("20"), "team within limit")
        check(balances["team"].available_nanousd < L.usd("1"), "budget was exhausted (contention at the limit)")

        # Policy through ctypes.
        check(ledger.set_price("openai/gpt-4o-mini", L.usd("0.15"), L.usd("0.60")) == L.OK, "set_price")
        check(ledger.estimate("openai/gpt-4o-mini", 1000, 500) == (L.OK, 450_000), "estimate")
        ledger.close()
    finally:
        segment = L.segment_path(directory)
        if os.path.exists(segment):
            os.unlink(segment)
        shutil.rmtree(directory, ignore_errors=True)
    print(f"{passes} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
