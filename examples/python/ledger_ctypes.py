"""A minimal Python binding of libledger's C ABI (ledger/c.h) with ctypes.

Usage:
    lib = load("/usr/local/lib/libledger.so")
    ledger = Ledger(lib, "/var/lib/ledger/acme")
    ledger.set_budget("alice", usd(5), DAILY, None)
    code, rid = ledger.reserve("alice", usd(0.5))
    ledger.commit(rid, usd(0.42))

Money is integer nano-USD; usd() converts exact decimal text or ints, never floats.
"""
import ctypes
import os
from decimal import Decimal

OK, DENIED_OVER_BUDGET, DENIED_PARENT_OVER_BUDGET, DENIED_MODEL, DENIED_BLOCKED = 0, 1, 2, 3, 4
UNKNOWN_ACCOUNT, UNKNOWN_RESERVATION, ALREADY_SETTLED, INVALID_ARGUMENT, FULL = 5, 6, 7, 8, 9
INCOMPATIBLE, IO_ERROR, PERMISSION, NOT_FOUND, UNKNOWN_MODEL = 10, 11, 12, 13, 14
NONE, DAILY, WEEKLY, MONTHLY = 0, 1, 2, 3


def usd(amount):
    """Exact decimal USD (str or int) -> nano-USD int."""
    value = Decimal(str(amount)) * 1_000_000_000
    if value != value.to_integral_value():
        raise ValueError(f"{amount} is finer than a nano-USD")
    return int(value)


class Limits(ctypes.Structure):
    _fields_ = [("max_accounts", ctypes.c_uint32), ("max_reservations", ctypes.c_uint32),
                ("max_processes", ctypes.c_uint32)]


class Balance(ctypes.Structure):
    _fields_ = [("limit_nanousd", ctypes.c_int64), ("spent_nanousd", ctypes.c_int64),
                ("held_nanousd", ctypes.c_int64), ("available_nanousd", ctypes.c_int64),
                ("requests", ctypes.c_uint64), ("period", ctypes.c_int32),
                ("blocked", ctypes.c_int32), ("period_start_unix", ctypes.c_int64)]


def load(path):
    lib = ctypes.CDLL(path)
    p, s, i32, u32, i64, u64 = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_uint32,
                                ctypes.c_int64, ctypes.c_uint64)
    sigs = {
        "ledger_strerror": (s, [ctypes.c_int]),
        "ledger_create": (ctypes.c_int, [s, ctypes.POINTER(Limits), ctypes.POINTER(p)]),
        "ledger_open": (ctypes.c_int, [s, ctypes.POINTER(p)]),
        "ledger_close": (None, [p]),
        "ledger_set_budget": (ctypes.c_int, [p, s, i64, i32, s]),
        "ledger_block": (ctypes.c_int, [p, s, i32]),
        "ledger_debit": (ctypes.c_int, [p, s, i64]),
        "ledger_reserve": (ctypes.c_int, [p, s, i64, u32, ctypes.POINTER(u64)]),
        "ledger_commit": (ctypes.c_int, [p, u64, i64]),
        "ledger_release": (ctypes.c_int, [p, u64]),
        "ledger_balance": (ctypes.c_int, [p, s, ctypes.POINTER(Balance)]),
        "ledger_reclaim": (ctypes.c_int, [p, ctypes.POINTER(u32)]),
        "ledger_flush": (ctypes.c_int, [p]),
        "ledger_set_price": (ctypes.c_int, [p, s, i64, i64, i64]),
        "ledger_estimate": (ctypes.c_int, [p, s, u32, u32, ctypes.POINTER(i64)]),
        "ledger_authorize": (ctypes.c_int, [p, s, s, i64, u32, ctypes.c_char_p, ctypes.c_size_t,
                                            ctypes.POINTER(u64)]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def segment_path(directory):
    """Where libledger keeps the shared segment of `directory` (mirrors resolve_dir in segment.cpp).

    Remove it only when no process is attached (the store, DIR/ledger.mdb, keeps what was flushed).
    """
    real = os.path.realpath(directory)
    st = os.stat(real)
    h = 1469598103934665603
    for byte in real.encode():
        h = ((h ^ byte) * 1099511628211) % 2**64
    h ^= (st.st_ino * 0x9E3779B97F4A7C15) % 2**64
    h ^= st.st_dev
    return f"/dev/shm/ledger-{h:016x}"


def _b(text):
    return None if text is None else text.encode()


class Ledger:
    def __init__(self, lib, directory, create=True, limits=None):
        self.lib, self.handle = lib, ctypes.c_void_p()
        if create:
            code = lib.ledger_create(_b(directory), limits, ctypes.byref(self.handle))
        else:
            code = lib.ledger_open(_b(directory), ctypes.byref(self.handle))
        if code != OK:
            raise OSError(code, lib.ledger_strerror(code).decode())

    def close(self):
        if self.handle:
            self.lib.ledger_close(self.handle)
            self.handle = ctypes.c_void_p()

    def set_budget(self, account, limit, period, parent=None):
        return self.lib.ledger_set_budget(self.handle, _b(account), limit, period, _b(parent))

    def block(self, account, blocked=True):
        return self.lib.ledger_block(self.handle, _b(account), 1 if blocked else 0)

    def debit(self, account, amount):
        return self.lib.ledger_debit(self.handle, _b(account), amount)

    def reserve(self, account, amount, ttl_seconds=0):
        rid = ctypes.c_uint64()
        code = self.lib.ledger_reserve(self.handle, _b(account), amount, ttl_seconds, ctypes.byref(rid))
        return code, rid.value

    def commit(self, rid, actual):
        return self.lib.ledger_commit(self.handle, rid, actual)

    def release(self, rid):
        return self.lib.ledger_release(self.handle, rid)

    def balance(self, account):
        out = Balance()
        code = self.lib.ledger_balance(self.handle, _b(account), ctypes.byref(out))
        return code, out

    def reclaim(self):
        n = ctypes.c_uint32()
        code = self.lib.ledger_reclaim(self.handle, ctypes.byref(n))
        return code, n.value

    def set_price(self, model, prompt_per_mtok, completion_per_mtok, request=0):
        return self.lib.ledger_set_price(self.handle, _b(model), prompt_per_mtok, completion_per_mtok, request)

    def estimate(self, model, prompt_tokens, max_completion_tokens):
        out = ctypes.c_int64()
        code = self.lib.ledger_estimate(self.handle, _b(model), prompt_tokens, max_completion_tokens,
                                        ctypes.byref(out))
        return code, out.value

    def authorize(self, account, model, estimate, ttl_seconds=0):
        buf = ctypes.create_string_buffer(128)
        rid = ctypes.c_uint64()
        code = self.lib.ledger_authorize(self.handle, _b(account), _b(model), estimate, ttl_seconds,
                                         buf, len(buf), ctypes.byref(rid))
        return code, buf.value.decode(), rid.value
