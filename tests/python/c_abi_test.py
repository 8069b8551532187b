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


def check_errors_and_money(lib):
    """LedgerError per code (never an OSError), and usd() on real OpenRouter costs."""
    try:
        L.Ledger(lib, "/nonexistent/ledger", create=False)
        check(False, "opening a missing ledger raises")
    except L.LedgerError as e:
        check(type(e) is L.NotFound and e.code == L.NOT_FOUND, f"missing ledger: NotFound code 13, got {e!r}")
        check(not isinstance(e, OSError), "a ledger error is not an OSError (13 is not EACCES)")
        check("no ledger" in e.message, f"message from ledger_strerror: {e.message!r}")
    except Exception as e:  # noqa: BLE001
        check(False, f"missing ledger raised {type(e).__name__}: {e}")
    expected = {L.DENIED_OVER_BUDGET: L.BudgetExceeded, L.DENIED_PARENT_OVER_BUDGET: L.ParentBudgetExceeded,
                L.DENIED_MODEL: L.ModelNotAllowed, L.DENIED_BLOCKED: L.AccountBlocked,
                L.UNKNOWN_ACCOUNT: L.UnknownAccount, L.PERMISSION: L.PermissionDenied,
                L.UNKNOWN_MODEL: L.UnknownModel}
    for code, cls in expected.items():
        e = L.error_for(code, "m")
        check(type(e) is cls and e.code == code and isinstance(e, L.LedgerError), f"error_for({code}) is {cls.__name__}")
    check(all(isinstance(L.error_for(c), L.Denied) for c in (1, 2, 3, 4)), "codes 1-4 are denials")
    check(not isinstance(L.error_for(L.UNKNOWN_ACCOUNT), L.Denied), "code 5 is not a denial")
    check(type(L.error_for(99)) is L.LedgerError and L.error_for(99).code == 99, "an unknown code")
    conversions = [("0.1", 100_000_000), ("0.000291", 291_000), (7, 7_000_000_000), ("-3.000000001", -3_000_000_001),
                   (5.75e-05, 57_500), (2.83125e-05, 28_313), (0.1, 100_000_000), (0.1 + 0.2, 300_000_000),
                   (137.141032391, 137_141_032_391), (1.536e-06, 1_536), (1e-09, 1), (1.0000000005, 1_000_000_001),
                   (4.2e-12, 1), (0.0, 0), ("0.0000283125", 28_313), (L.Decimal("2.83125e-05"), 28_313)]
    for value, nanos in conversions:
        try:
            got = L.usd(value)
        except Exception as e:  # noqa: BLE001
            got = f"{type(e).__name__}: {e}"
        check(got == nanos, f"usd({value!r}) == {nanos}, got {got}")
    for bad in (float("nan"), float("inf"), True, "12,50", 1e10):
        try:
            L.usd(bad)
            check(False, f"usd({bad!r}) raises ValueError")
        except ValueError:
            check(True, "")


def main():
    directory = tempfile.mkdtemp(prefix="ledger-py-")
    lib = L.load(LIB_PATH)
    check_errors_and_money(lib)
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

        # A real OpenRouter cost (a float finer than a nano-USD) settles, rounded up.
        check(ledger.set_budget("carol", L.usd("1"), L.DAILY) == L.OK, "carol budget")
        code, rid = ledger.reserve("carol", L.usd("0.001"))
        check(code == L.OK and ledger.commit(rid, L.usd(2.83125e-05)) == L.OK, "commit a float cost")
        check(ledger.balance("carol")[1].spent_nanousd == 28_313, "float cost rounded up to the nano-USD")
        try:
            L.raise_for(lib, ledger.debit("nobody", 1))
            check(False, "raise_for raises")
        except L.UnknownAccount as e:
            check(e.code == L.UNKNOWN_ACCOUNT, "raise_for: UnknownAccount")
        L.raise_for(lib, L.OK)  # nothing to raise
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
