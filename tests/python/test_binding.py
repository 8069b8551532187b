"""The ledger package's binding of the C ABI (ledger/c.h): every call, every bad argument, the
exception class of every code, holds, threads, pickling and how libledger.so is found.

Run by ctest (label python) with LEDGER_LIBRARY, LEDGERCTL and PYTHONPATH set (see support.py).
"""
from __future__ import annotations

import ctypes
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from decimal import Decimal

import support
import ledger
from ledger import Code, Period

MODEL = "openai/gpt-4o-mini"


class Binding(unittest.TestCase):
    def setUp(self) -> None:
        self.t = support.TempLedger(max_accounts=64, max_reservations=64, max_processes=16)
        self.led = self.t.ledger
        self.led.set_budget("team", ledger.usd("10"), Period.MONTHLY)
        self.led.set_budget("alice", ledger.usd("5"), ledger.DAILY, "team")
        self.led.set_price(MODEL, ledger.usd("0.15"), ledger.usd("0.60"))

    def tearDown(self) -> None:
        self.t.close()

    def test_every_call(self) -> None:
        led = self.led
        self.assertTrue(os.path.samefile(led.library.path, support.LIBRARY))
        self.assertEqual(led.directory, self.t.directory)
        # set_budget with a Decimal (USD) and an int (nano-USD) is the same budget.
        led.set_budget("bob", Decimal("2.5"), Period.WEEKLY, "team")
        b = led.balance("bob")
        self.assertEqual((b.limit_nanousd, b.period, b.blocked, b.spent_nanousd, b.requests), (2_500_000_000, Period.WEEKLY, False, 0, 0))
        self.assertEqual(b.limit_usd, Decimal("2.5"))
        led.set_budget("bob", 2_500_000_001, Period.WEEKLY, "team")
        self.assertEqual(led.balance("bob").limit_usd, Decimal("2.500000001"))
        # debit: int, Decimal and a float cost
        led.debit("alice", 1_000)
        led.debit("alice", Decimal("0.000001"))
        led.debit("alice", 2.83125e-05)
        self.assertEqual(led.balance("alice").spent_nanousd, 1_000 + 1_000 + 28_313)
        self.assertEqual(led.balance("alice").requests, 3)
        self.assertEqual(led.balance("team").spent_nanousd, 30_313)
        # reserve, commit, release
        rid = led.reserve("alice", ledger.usd("0.01"), ttl_seconds=60)
        self.assertGreater(rid, 0)
        self.assertEqual(led.balance("alice").held_nanousd, 10_000_000)
        led.commit(rid, 5.75e-05)
        self.assertEqual(led.balance("alice").held_nanousd, 0)
        self.assertEqual(led.balance("alice").spent_nanousd, 30_313 + 57_500)
        with self.assertRaises(ledger.AlreadySettled) as e:
            led.commit(rid, 1)
        self.assertEqual(e.exception.code, 7)
        rid = led.reserve("alice", 100)
        led.release(rid)
        with self.assertRaises(ledger.AlreadySettled):
            led.release(rid)
        # commit_usage: the 8.4 call when the library has it, else commit (same money)
        rid = led.reserve("alice", 1_000)
        led.commit_usage(rid, 700, prompt_tokens=10, completion_tokens=20)
        self.assertEqual(led.balance("alice").spent_nanousd, 30_313 + 57_500 + 700)
        self.assertIsInstance(led.library.has("ledger_commit_usage"), bool)
        # block, unblock
        led.block("alice")
        self.assertTrue(led.balance("alice").blocked)
        with self.assertRaises(ledger.AccountBlocked) as e:
            led.debit("alice", 1)
        self.assertEqual(e.exception.code, 4)
        led.unblock("alice")
        led.debit("alice", 1)
        # estimate, authorize, authorize via a key
        self.assertEqual(led.estimate(MODEL, 1000, 500), 450_000)
        self.assertEqual(led.estimate(MODEL, 1200, 400), 420_000)
        granted = led.authorize("alice", MODEL, 420_000)
        self.assertEqual((granted.model, granted.estimate_nanousd), (MODEL, 420_000))
        led.commit(granted.reservation_id, 300_000)
        via = led.authorize("alice", MODEL, 420_000, key_hash="ab" * 32, ttl_seconds=30)
        self.assertEqual(via.model, MODEL)
        led.release(via.reservation_id)
        prefix = led.authorize("alice", MODEL, 1, key_hash="ab" * 6)  # a unique prefix of the key above
        led.release(prefix.reservation_id)
        # reclaim and flush
        self.assertEqual(led.reclaim(), 0)
        led.flush()
        self.assertTrue(os.path.exists(os.path.join(self.t.directory, "ledger.mdb")))
        self.assertEqual(led.strerror(1), ledger.error_for(1, led.strerror(1)).message)
        self.assertIn("budget", led.strerror(1))
        # open attaches to the same ledger
        with ledger.Ledger.open(self.t.directory) as other:
            self.assertEqual(other.balance("alice"), led.balance("alice"))
        self.assertTrue(other.closed)

    def test_reclaim_a_dead_process_hold(self) -> None:
        pid = os.fork()
        if pid == 0:  # a child that holds, then dies without settling
            try:
                self.led.reserve("alice", 12_345, ttl_seconds=600)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        self.assertEqual(self.led.balance("alice").held_nanousd, 12_345)
        self.assertEqual(self.led.reclaim(), 1)
        self.assertEqual(self.led.balance("alice").held_nanousd, 0)

    def test_bad_arguments(self) -> None:
        led = self.led
        for account in (None, "", "a" * 64, "a" * 100_000, "bad name", "al/ice", "alïce"):
            with self.assertRaises(ledger.InvalidArgument, msg=repr(account)) as e:
                led.debit(account, 1)  # type: ignore[arg-type]
            self.assertEqual(e.exception.code, 8)
            self.assertIsInstance(e.exception, ValueError)
        with self.assertRaises(ledger.InvalidArgument):
            led.debit("alice\0x", 1)  # C would see "alice": refused before the call
        self.assertEqual(led.balance("alice").spent_nanousd, 0)
        with self.assertRaises(ledger.InvalidArgument):
            led.debit("alice", -1)
        with self.assertRaises(ledger.InvalidArgument):
            led.debit("alice", 2**63)  # does not fit int64
        with self.assertRaises(ledger.InvalidArgument):
            led.debit("alice", -2.5e-05)  # a negative float cost
        with self.assertRaises(ledger.InvalidArgument):
            led.commit(1, float("nan"))
        for bad in ("1", 1.5, None, True):
            with self.assertRaises(TypeError, msg=repr(bad)):
                led.reserve("alice", bad)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            led.set_budget("x", 0.5, Period.DAILY)  # type: ignore[arg-type] - floats only settle costs
        with self.assertRaises(ledger.InvalidArgument):
            led.set_budget("x", -5, Period.DAILY)
        with self.assertRaises(ledger.InvalidArgument):
            led.set_budget("x", 5, 9)
        with self.assertRaises(ledger.InvalidArgument):
            led.set_budget("x", 5, 2**40)
        with self.assertRaises(ledger.InvalidArgument):
            led.set_budget("x", 5, Period.DAILY, "x")  # its own parent
        with self.assertRaises(ledger.UnknownAccount):
            led.set_budget("x", 5, Period.DAILY, "nobody")
        for ttl in (-1, 2**32):
            with self.assertRaises(ledger.InvalidArgument):
                led.reserve("alice", 1, ttl_seconds=ttl)
        with self.assertRaises(ledger.UnknownReservation) as e:
            led.commit(0, 1)
        self.assertEqual(e.exception.code, 6)
        with self.assertRaises(ledger.UnknownReservation):
            led.release(12345678901)
        for rid in (-1, 2**64):
            with self.assertRaises(ledger.InvalidArgument):
                led.commit(rid, 1)
        with self.assertRaises(ledger.UnknownAccount) as e:
            led.balance("nobody")
        self.assertEqual((e.exception.code, e.exception.detail), (5, "account nobody"))
        with self.assertRaises(ledger.UnknownAccount):
            led.block("nobody")
        with self.assertRaises(ledger.UnknownModel) as e:
            led.estimate("no/such-model", 1, 1)
        self.assertEqual(e.exception.code, 14)
        with self.assertRaises(ledger.UnknownModel) as e:
            led.authorize("alice", "no/such-model", 1)
        self.assertIn("no/such-model", str(e.exception))
        for model in (None, "", "m" * 88):
            with self.assertRaises(ledger.InvalidArgument, msg=repr(model)):
                led.set_price(model, 1, 1)  # type: ignore[arg-type]
        with self.assertRaises(ledger.InvalidArgument):
            led.set_price(MODEL, -1, 1)
        for tokens in (-1, 2**32):
            with self.assertRaises(ledger.InvalidArgument):
                led.estimate(MODEL, tokens, 1)
        with self.assertRaises(TypeError):
            led.estimate(MODEL, 1.0, 1)  # type: ignore[arg-type]
        with self.assertRaises(ledger.InvalidArgument):
            led.authorize("alice", MODEL, -1)
        with self.assertRaises(ledger.InvalidArgument):
            led.authorize("alice", MODEL, 1, key_hash="0123456789ab")  # a prefix no key has
        with self.assertRaises(ledger.InvalidArgument):
            led.authorize("alice", MODEL, 1, key_hash="not-hex")
        self.assertEqual(led.balance("alice").held_nanousd, 0)  # nothing reserved by any of these
        with self.assertRaises(TypeError):
            led.debit(42, 1)  # type: ignore[arg-type]
        # Opening what is not a ledger, and a closed handle.
        with self.assertRaises(ledger.LedgerNotFound) as e:
            ledger.Ledger.open(os.path.join(self.t.directory, "missing"))
        self.assertEqual(e.exception.code, 13)
        self.assertNotIsInstance(e.exception, OSError)
        self.assertIn("no ledger", e.exception.message)
        with self.assertRaises(ledger.InvalidArgument):
            ledger.Ledger.create("")
        with self.assertRaises(ledger.InvalidArgument):
            ledger.Ledger.create(self.t.directory, max_accounts=-1)
        closed = ledger.Ledger.open(self.t.directory)
        closed.close()
        closed.close()  # idempotent
        with self.assertRaises(ledger.InvalidArgument) as e:
            closed.balance("alice")
        self.assertIn("closed", str(e.exception))

    def test_the_raw_abi_refuses_nulls(self) -> None:
        # The same library through ctypes directly, the way other bindings see it.
        lib = self.led.library
        self.assertEqual(lib.ledger_debit(None, b"alice", 1), Code.INVALID_ARGUMENT)
        self.assertEqual(lib.ledger_reserve(self.led._handle, b"alice", 1, 0, None), Code.INVALID_ARGUMENT)
        self.assertEqual(lib.ledger_balance(self.led._handle, b"alice", None), Code.INVALID_ARGUMENT)
        self.assertEqual(lib.ledger_estimate(self.led._handle, MODEL.encode(), 1, 1, None), Code.INVALID_ARGUMENT)
        buffer, rid = ctypes.create_string_buffer(4), ctypes.c_uint64()
        self.assertEqual(lib.ledger_authorize(self.led._handle, b"alice", MODEL.encode(), 1, 0, buffer, len(buffer),
                                              ctypes.byref(rid)), Code.INVALID_ARGUMENT)  # model_out too small
        self.assertEqual(self.led.balance("alice").held_nanousd, 0)
        self.assertEqual(lib.ledger_open(b"/nonexistent/ledger", ctypes.byref(ctypes.c_void_p())), Code.NOT_FOUND)
        lib.ledger_close(None)  # a no-op

    def test_capacity_and_incompatible(self) -> None:
        with support.TempLedger(max_accounts=4, max_reservations=2, max_processes=4) as small:
            for i in range(4):
                small.ledger.set_budget(f"a{i}", 10**9, Period.DAILY)
            with self.assertRaises(ledger.LedgerFull) as e:
                small.ledger.set_budget("a4", 10**9, Period.DAILY)
            self.assertEqual(e.exception.code, 9)
            ids = [small.ledger.reserve("a0", 1) for _ in range(2)]
            with self.assertRaises(ledger.LedgerFull):
                small.ledger.reserve("a0", 1)
            for rid in ids:
                small.ledger.release(rid)
        # A segment that is not a ledger's (another magic) is refused with code 10, left untouched.
        d = tempfile.mkdtemp(prefix="ledger-py-foreign-")
        try:
            ledger.Ledger.create(d, max_accounts=4, max_reservations=4, max_processes=4).close()
            path = ledger.segment_path(d)
            with open(path, "r+b") as f:
                f.write(b"NOTALEDG")
            with self.assertRaises(ledger.Incompatible) as e:
                ledger.Ledger.open(d)
            self.assertEqual(e.exception.code, 10)
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"NOTALEDG")
        finally:
            ledger.destroy_segment(d)
            shutil.rmtree(d, ignore_errors=True)

    def test_holds(self) -> None:
        led = self.led
        estimate = led.estimate(MODEL, 1200, 400)
        with led.hold("alice", MODEL, estimate) as h:
            self.assertEqual((h.model, h.estimate_nanousd, h.settled), (MODEL, estimate, None))
            self.assertEqual(led.balance("alice").held_nanousd, estimate)
            h.commit(2.83125e-05)
            self.assertEqual(h.settled, "committed")
            with self.assertRaises(ledger.AlreadySettled):
                h.commit(1)
        b = led.balance("alice")
        self.assertEqual((b.spent_nanousd, b.held_nanousd, b.requests), (28_313, 0, 1))
        # An exception in the block releases the hold, and the exception goes on.
        with self.assertRaises(ZeroDivisionError):
            with led.hold("alice", MODEL, estimate) as h:
                1 / 0
        self.assertEqual(h.settled, "released")
        # Neither commit nor release: released on exit.
        with led.hold("alice", MODEL, estimate) as h:
            pass
        self.assertEqual(h.settled, "released")
        # Released by hand, then nothing more on exit.
        with led.hold("alice", MODEL, estimate) as h:
            h.release()
        b = led.balance("alice")
        self.assertEqual((b.spent_nanousd, b.held_nanousd, b.requests), (28_313, 0, 1))
        # A bad cost keeps the hold (it is released on exit), a denial raises before the body runs.
        with led.hold("alice", MODEL, estimate) as h:
            with self.assertRaises(ledger.InvalidArgument):
                h.commit(-1)
            with self.assertRaises(ledger.InvalidArgument):
                h.commit(float("inf"))
            self.assertIsNone(h.settled)
            h.commit_usage(Decimal("0.0001"), 100, 50)
        self.assertEqual(led.balance("alice").spent_nanousd, 28_313 + 100_000)
        ran = False
        with self.assertRaises(ledger.BudgetExceeded) as e:
            with led.hold("alice", MODEL, ledger.usd("6")):
                ran = True
        self.assertFalse(ran)
        self.assertIsInstance(e.exception, ledger.Denied)
        led.set_budget("team", ledger.usd("0.0002"), Period.MONTHLY)
        with self.assertRaises(ledger.ParentBudgetExceeded):
            with led.hold("alice", MODEL, ledger.usd("0.0001")):
                pass
        h = led.hold("alice", MODEL, 1)
        with self.assertRaises(RuntimeError):
            h.model  # not entered
        self.assertEqual(led.balance("alice").held_nanousd, 0)

    def test_threads_share_one_ledger(self) -> None:
        led = self.led
        led.set_budget("hot", ledger.usd("0.5"), Period.DAILY, "team")
        spent = [0] * 8
        errors = []

        def spend(i: int) -> None:
            try:
                for n in range(3000):
                    amount = 1_000 + (n * 7919 + i) % 500_000
                    try:
                        with led.hold("hot", MODEL, amount) as h:
                            actual = amount - (n % 3) * 100
                            h.commit(actual)
                            spent[i] += actual
                    except ledger.BudgetExceeded:
                        pass
                    if n % 97 == 0:
                        led.balance("hot")
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=spend, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        b = led.balance("hot")
        self.assertEqual(b.spent_nanousd, sum(spent))
        self.assertEqual(b.held_nanousd, 0)
        self.assertLessEqual(b.spent_nanousd, b.limit_nanousd)
        self.assertLess(b.available_nanousd, 500_000)  # the budget bit

    def test_close_waits_for_calls_in_flight(self) -> None:
        other = ledger.Ledger.open(self.t.directory)
        stop = threading.Event()
        seen = []

        def hammer() -> None:
            while not stop.is_set():
                try:
                    other.balance("alice")
                except ledger.InvalidArgument as e:  # closed: every later call says so
                    seen.append(str(e))
                    return

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        other.close()
        stop.set()
        for t in threads:
            t.join()
        self.assertTrue(all("closed" in s for s in seen))

    def test_pickling_reopens_by_directory(self) -> None:
        copy = pickle.loads(pickle.dumps(self.led))
        self.assertIsNot(copy, self.led)
        self.assertEqual(copy.directory, self.led.directory)
        self.assertIs(pickle.loads(pickle.dumps(self.led)), copy)  # one per process
        copy.debit("alice", 5)
        self.assertEqual(self.led.balance("alice").spent_nanousd, 5)
        for code in range(1, 16):
            e = pickle.loads(pickle.dumps(ledger.error_for(code, "m", "d")))
            self.assertEqual((type(e), e.code, e.message, e.detail), (type(ledger.error_for(code)), code, "m", "d"))

    @unittest.skipUnless(os.environ.get("LEDGERCTL"), "needs $LEDGERCTL for tiers")
    def test_tiers_from_a_config(self) -> None:
        d = tempfile.mkdtemp(prefix="ledger-py-tiers-")
        try:
            support.ledgerctl_init({
                "ledger": {"dir": "ledger", "max_accounts": 64},
                "tiers": {"free": {"models": ["google/gemma-2-9b-it:free"]},
                          "basic": {"models": [MODEL], "fallback": MODEL},
                          "pro": {"models": [MODEL, "openai/gpt-4o"], "downgrade_at_percent": 50,
                                  "downgrade_to": MODEL}},
                "prices": {MODEL: {"prompt_usd_per_mtok": "0.15", "completion_usd_per_mtok": "0.60"},
                           "openai/gpt-4o": {"prompt_usd_per_mtok": "2.50", "completion_usd_per_mtok": "10"},
                           "google/gemma-2-9b-it:free": {"prompt_usd_per_mtok": "0", "completion_usd_per_mtok": "0"}},
                "accounts": [{"id": "f", "tier": "free", "limit_usd": "1", "period": "daily"},
                             {"id": "b", "tier": "basic", "limit_usd": "1", "period": "daily"},
                             {"id": "p", "tier": "pro", "limit_usd": "1", "period": "daily"}],
            }, d)
            with ledger.Ledger.open(os.path.join(d, "ledger")) as led:
                with self.assertRaises(ledger.ModelNotAllowed) as e:
                    led.authorize("f", "openai/gpt-4o", 1)
                self.assertEqual(e.exception.code, 3)
                self.assertEqual(led.authorize("f", "google/gemma-2-9b-it:free", 0).model, "google/gemma-2-9b-it:free")
                granted = led.authorize("b", "openai/gpt-4o", 1)  # outside the tier: its fallback
                self.assertEqual(granted.model, MODEL)
                led.release(granted.reservation_id)
                with led.hold("p", "openai/gpt-4o", 1) as h:
                    self.assertEqual(h.model, "openai/gpt-4o")
                led.debit("p", ledger.usd("0.5"))  # 50 % used: the pressure rule downgrades
                with led.hold("p", "openai/gpt-4o", 1) as h:
                    self.assertEqual(h.model, MODEL)
        finally:
            ledger.destroy_segment(os.path.join(d, "ledger"))
            shutil.rmtree(d, ignore_errors=True)


    @unittest.skipUnless(os.environ.get("LEDGERCTL"), "needs $LEDGERCTL for rate limits")
    def test_rate_limits_from_a_config(self) -> None:
        d = tempfile.mkdtemp(prefix="ledger-py-rates-")
        try:
            support.ledgerctl_init({
                "ledger": {"dir": "ledger", "max_accounts": 64},
                "prices": {MODEL: {"prompt_usd_per_mtok": "0.15", "completion_usd_per_mtok": "0.60"}},
                "accounts": [{"id": "t", "limit_usd": "10", "period": "daily", "rpm": 2, "tpm": 300},
                             {"id": "u", "parent": "t", "limit_usd": "10", "period": "daily"}],
            }, d)
            with ledger.Ledger.open(os.path.join(d, "ledger")) as led:
                estimate = led.estimate(MODEL, 100, 100)  # 200 tokens, counted at admission
                granted = led.authorize("u", MODEL, estimate)
                led.commit_usage(granted.reservation_id, estimate, 20, 30)  # really 50: 250 left this minute
                led.debit("u", 1)
                with self.assertRaises(ledger.RateLimited) as e:  # the team's 2 requests per minute
                    led.debit("u", 1)
                self.assertEqual(e.exception.code, 15)
                self.assertIsInstance(e.exception, ledger.Denied)
                self.assertIsNotNone(e.exception.retry_after_ms)
                self.assertTrue(1 <= e.exception.retry_after_ms <= 60_000)
                self.assertEqual(led.balance("u").spent_nanousd, estimate + 1)  # the denial charged nothing
        finally:
            ledger.destroy_segment(os.path.join(d, "ledger"))
            shutil.rmtree(d, ignore_errors=True)


class Errors(unittest.TestCase):
    def test_a_class_per_code_under_one_base(self) -> None:
        expected = {1: ledger.BudgetExceeded, 2: ledger.ParentBudgetExceeded, 3: ledger.ModelNotAllowed,
                    4: ledger.AccountBlocked, 5: ledger.UnknownAccount, 6: ledger.UnknownReservation,
                    7: ledger.AlreadySettled, 8: ledger.InvalidArgument, 9: ledger.LedgerFull,
                    10: ledger.Incompatible, 11: ledger.LedgerIOError, 12: ledger.PermissionDenied,
                    13: ledger.LedgerNotFound, 14: ledger.UnknownModel, 15: ledger.RateLimited}
        lib = ledger.load_library(support.LIBRARY)
        for code, cls in expected.items():
            e = ledger.error_for(code, lib.strerror(code))
            self.assertIs(type(e), cls)
            self.assertEqual((e.code, cls.code, int(Code(code))), (code, code, code))
            self.assertIsInstance(e, ledger.LedgerError)
            self.assertNotIsInstance(e, OSError)
            self.assertEqual(isinstance(e, ledger.Denied), code in (1, 2, 3, 4, 15))
            self.assertIn(str(code), str(e))
            self.assertEqual(cls().code, code)  # the class alone knows its code
        self.assertEqual([c.name for c in Code][:3], ["OK", "DENIED_OVER_BUDGET", "DENIED_PARENT_OVER_BUDGET"])
        self.assertEqual(int(Code.UNKNOWN_MODEL), 14)
        unknown = ledger.error_for(99, "m")
        self.assertIs(type(unknown), ledger.LedgerError)
        self.assertEqual(unknown.code, 99)
        self.assertIsNone(ledger.RateLimited().retry_after_ms)
        for code in range(0, 15):
            self.assertTrue(lib.strerror(code))


class Discovery(unittest.TestCase):
    """How the package finds libledger.so, in a fresh interpreter each time."""

    def run_python(self, code: str, env_library: str | None, package_dir: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("LEDGER_LIBRARY", "PYTHONPATH")}
        if env_library is not None:
            env["LEDGER_LIBRARY"] = env_library
        env["PYTHONPATH"] = package_dir
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/",
                              timeout=60)

    def test_env_then_install_prefix_then_build_tree(self) -> None:
        code = "import ledger; print(ledger.load_library().path)"
        r = self.run_python(code, support.LIBRARY, os.path.join(support.REPO, "python"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), support.LIBRARY)
        missing = "/nonexistent/libledger.so"
        r = self.run_python(code, missing, os.path.join(support.REPO, "python"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"$LEDGER_LIBRARY={missing}: no such file", r.stderr)  # an explicit choice is not replaced
        self.assertIn("LibraryNotFoundError", r.stderr)
        installed = [p for p in ("/usr/local/lib/libledger.so", "/usr/lib/libledger.so") if os.path.exists(p)]
        # From the checkout without $LEDGER_LIBRARY: an installed one, else the build tree's.
        r = self.run_python(code, None, os.path.join(support.REPO, "python"))
        self.assertEqual(r.returncode, 0, r.stderr)
        if not installed:
            self.assertTrue(r.stdout.strip().startswith(os.path.join(support.REPO, "build")), r.stdout)
            self.assertTrue(r.stdout.strip().endswith("/libledger/libledger.so"))
        # A copy of the package outside any checkout, with nothing installed: the error names every place.
        d = tempfile.mkdtemp(prefix="ledger-py-pkg-")
        try:
            shutil.copytree(os.path.join(support.REPO, "python", "ledger"), os.path.join(d, "ledger"))
            r = self.run_python("import ledger; ledger.Ledger.open('/tmp')", None, d)
            if installed:
                self.skipTest(f"{installed[0]} is installed")
            self.assertNotEqual(r.returncode, 0)
            for place in ("$LEDGER_LIBRARY is not set", "/usr/local/lib/libledger.so: no such file",
                          "/usr/lib/libledger.so: no such file", "not imported from a checkout"):
                self.assertIn(place, r.stderr)
            r = self.run_python("import ledger; print(ledger.usd('0.1'))", None, d)  # money needs no library
            self.assertEqual(r.stdout.strip(), "100000000", r.stderr)
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
