"""A minimal Python binding of libledger's C ABI (ledger/c.h) with ctypes.

Usage:
    lib = load("/usr/local/lib/libledger.so")
    ledger = Ledger(lib, "/var/lib/ledger/acme")
    ledger.set_budget("alice", usd("5"), DAILY, None)
    code, rid = ledger.reserve("alice", usd("0.5"))
    ledger.commit(rid, usd(response["usage"]["cost"]))   # OpenRouter's float cost

Money is integer nano-USD. usd() is exact for decimal text, ints and Decimals; a float (OpenRouter's
costs) becomes the whole nano-USD it is within float noise of, and anything really finer than a
nano-USD rounds up, so spend is never undercounted. Calls return the LEDGER_* code; opening a ledger
that fails raises LedgerError (a subclass per code, e.g. NotFound), and raise_for(lib, code) turns
any other code into that exception.
"""
import ctypes
import math
import os
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext

OK, DENIED_OVER_BUDGET, DENIED_PARENT_OVER_BUDGET, DENIED_MODEL, DENIED_BLOCKED = 0, 1, 2, 3, 4
UNKNOWN_ACCOUNT, UNKNOWN_RESERVATION, ALREADY_SETTLED, INVALID_ARGUMENT, FULL = 5, 6, 7, 8, 9
INCOMPATIBLE, IO_ERROR, PERMISSION, NOT_FOUND, UNKNOWN_MODEL = 10, 11, 12, 13, 14
NONE, DAILY, WEEKLY, MONTHLY = 0, 1, 2, 3

NANOUSD_PER_USD = 1_000_000_000
AMOUNT_NANOUSD_MAX = 1_000_000_000 * NANOUSD_PER_USD  # kAmountNanoUsdMax: one billion USD


class LedgerError(Exception):
    """A libledger code as an exception: .code is the LEDGER_* number, .message ledger_strerror's text.

    Not an OSError: code 13 means "no ledger at that path", not EACCES.
    """

    def __init__(self, code, message=""):
        super().__init__(code, message)
        self.code, self.message = code, message

    def __str__(self):
        return f"ledger error {self.code}: {self.message}" if self.message else f"ledger error {self.code}"


class Denied(LedgerError):
    """A denial (codes 1-4): do not send the request."""


class BudgetExceeded(Denied):
    """1: the account's own budget would be exceeded."""


class ParentBudgetExceeded(Denied):
    """2: an ancestor's budget would be exceeded."""


class ModelNotAllowed(Denied):
    """3: the model is not allowed for the tier, and there is no fallback."""


class AccountBlocked(Denied):
    """4: the account or an ancestor is blocked."""


class UnknownAccount(LedgerError):
    """5: no such account."""


class UnknownReservation(LedgerError):
    """6: the reservation id was never issued, or its slot was reused."""


class AlreadySettled(LedgerError):
    """7: the reservation was committed or released before."""


class InvalidArgument(LedgerError):
    """8: a bad argument."""


class LedgerFull(LedgerError):
    """9: a capacity fixed at creation is used up."""


class Incompatible(LedgerError):
    """10: the segment or store is of another format version."""


class LedgerIOError(LedgerError):
    """11: an I/O error."""


class PermissionDenied(LedgerError):
    """12: permission denied (segment and lock file are 0600)."""


class NotFound(LedgerError):
    """13: no ledger at that path."""


class UnknownModel(LedgerError):
    """14: no price known for the model."""


ERRORS = {DENIED_OVER_BUDGET: BudgetExceeded, DENIED_PARENT_OVER_BUDGET: ParentBudgetExceeded,
          DENIED_MODEL: ModelNotAllowed, DENIED_BLOCKED: AccountBlocked, UNKNOWN_ACCOUNT: UnknownAccount,
          UNKNOWN_RESERVATION: UnknownReservation, ALREADY_SETTLED: AlreadySettled,
          INVALID_ARGUMENT: InvalidArgument, FULL: LedgerFull, INCOMPATIBLE: Incompatible,
          IO_ERROR: LedgerIOError, PERMISSION: PermissionDenied, NOT_FOUND: NotFound,
          UNKNOWN_MODEL: UnknownModel}


def error_for(code, message=""):
    """The LedgerError subclass instance for a code (LedgerError itself for a code it does not know)."""
    return ERRORS.get(code, LedgerError)(code, message)


def raise_for(lib, code):
    """Raises the code's LedgerError unless it is OK."""
    if code != OK:
        raise error_for(code, lib.ledger_strerror(code).decode())


def usd(amount):
    """USD (decimal text, int, Decimal or float) -> nano-USD int; never raises for a legal cost.

    Text, ints and Decimals are exact ("0.1" is 100,000,000); finer than a nano-USD rounds up. A float
    within float noise (2 units in its last place) of a whole nano-USD becomes that number
    (5.75e-05 -> 57,500); one really finer rounds up (2.83125e-05 -> 28,313), as DESIGN.md 3 says.
    ValueError only for what is no amount: bools, NaN, infinities, bad text, above one billion USD.
    """
    if isinstance(amount, bool):
        raise ValueError(f"{amount!r} is not a USD amount")
    with localcontext() as ctx:
        ctx.prec = 200  # exact for any double and any sane text
        if isinstance(amount, float):
            if not math.isfinite(amount):
                raise ValueError(f"{amount!r} is not a USD amount")
            exact = Decimal(amount) * NANOUSD_PER_USD  # the double's exact binary value
            nearest = exact.to_integral_value(ROUND_HALF_EVEN)
            noise = Decimal(math.ulp(amount)) * NANOUSD_PER_USD * 2
            nanos = int(nearest if abs(exact - nearest) <= noise else exact.to_integral_value(ROUND_CEILING))
        else:
            try:
                value = amount if isinstance(amount, Decimal) else Decimal(str(amount).strip())
            except InvalidOperation:
                raise ValueError(f"{amount!r} is not a USD amount") from None
            if not value.is_finite():
                raise ValueError(f"{amount!r} is not a USD amount")
            nanos = int((value * NANOUSD_PER_USD).to_integral_value(ROUND_CEILING))
    if abs(nanos) > AMOUNT_NANOUSD_MAX:
        raise ValueError(f"{amount!r} USD is above the largest amount (one billion USD)")
    return nanos


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
        raise_for(lib, code)

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
