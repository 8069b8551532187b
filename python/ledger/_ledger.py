"""The Ledger handle: every call of libledger's C ABI, typed, raising LedgerError subclasses.

Thread safety: one Ledger may be used by many threads at once (libledger's handles are; ctypes
releases the GIL during each call). ``close()`` waits for nothing: the handle is freed when the
last call in flight returns, and later calls raise InvalidArgument ("the ledger is closed").

Fork safety: a Ledger carried into a child by ``fork()`` (multiprocessing's "fork" start method, a
pre-forking server) keeps working there: libledger re-registers the handle under the child's own
process slot on its first use, and this object resets its own lock in the child. A Ledger sent to
another process by pickling (the "spawn" and "forkserver" start methods, a Pool's arguments) is
reopened there by directory, once per process.
"""
from __future__ import annotations

import ctypes
import enum
import os
import threading
import weakref
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

from ._library import MODEL_NAME_BYTES_MAX, BalanceStruct, Library, Limits, load_library
from .errors import Code, InvalidArgument, LedgerError, RateLimited, error_for
from .money import cost_nanousd, to_usd, usd

__all__ = ["Period", "Balance", "Authorization", "Ledger", "Hold", "Money", "Cost", "segment_path",
           "destroy_segment"]

Money = Union[int, Decimal]          # int: nano-USD; Decimal: USD, exact
Cost = Union[int, Decimal, float]    # a spend: also a float USD cost as OpenRouter reports it

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT32_MAX, _UINT64_MAX = 2**32 - 1, 2**64 - 1


class Period(enum.IntEnum):
    """A budget's period: calendar-aligned in UTC (days, Monday weeks, months)."""

    NONE = 0
    DAILY = 1
    WEEKLY = 2
    MONTHLY = 3


@dataclass(frozen=True)
class Balance:
    """An account in its current period (ledger_balance_t); money in nano-USD, ``*_usd`` as Decimal."""

    limit_nanousd: int
    spent_nanousd: int       # settled in the current period
    held_nanousd: int        # reserved, not yet settled
    available_nanousd: int   # limit - spent - held; negative after an overrun
    requests: int            # settled debits and commits in the current period
    period: Period
    blocked: bool
    period_start_unix: int   # start of the current period, UTC seconds

    @property
    def limit_usd(self) -> Decimal:
        return to_usd(self.limit_nanousd)

    @property
    def spent_usd(self) -> Decimal:
        return to_usd(self.spent_nanousd)

    @property
    def held_usd(self) -> Decimal:
        return to_usd(self.held_nanousd)

    @property
    def available_usd(self) -> Decimal:
        return to_usd(self.available_nanousd)


class Authorization(NamedTuple):
    """What authorize() granted: the model to send (maybe a fallback or downgrade) and the hold."""

    model: str
    reservation_id: int
    estimate_nanousd: int


def _text(value: Optional[str], what: str) -> Optional[bytes]:
    """UTF-8 for the C ABI; None stays NULL (the library answers LEDGER_INVALID_ARGUMENT)."""
    if value is None:
        return None
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes):
        raw = value
    else:
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if b"\0" in raw:  # C would see only what comes before it: another account
        raise InvalidArgument(detail=f"{what} contains a NUL character")
    return raw


def _amount(value: Cost, what: str, cost: bool = False) -> int:
    """int nano-USD, Decimal USD (exact), and where a spend is settled a float USD cost."""
    if isinstance(value, bool):
        raise TypeError(f"{what}: a bool is not an amount")
    if isinstance(value, int):
        nanos = value
    elif isinstance(value, Decimal) or (cost and isinstance(value, float)):
        try:
            nanos = cost_nanousd(value) if isinstance(value, float) else usd(value)
        except ValueError as e:
            raise InvalidArgument(detail=f"{what}: {e}") from None
    else:
        kinds = "int nano-USD or decimal.Decimal USD" + (" or a float USD cost" if cost else "")
        raise TypeError(f"{what} must be {kinds}, got {type(value).__name__} (ledger.usd() converts)")
    if not _INT64_MIN <= nanos <= _INT64_MAX:
        raise InvalidArgument(detail=f"{what} {nanos} does not fit 64 bits")
    return nanos


def _unsigned(value: int, what: str, maximum: int = _UINT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise InvalidArgument(detail=f"{what} {value} is outside 0..{maximum}")
    return value


class Ledger:
    """A ledger, identified by its directory: ``Ledger.open(dir)`` attaches, ``Ledger.create`` also creates.

    Every method raises the LedgerError subclass of the code it got (BudgetExceeded, UnknownAccount,
    ...) and returns what the call produces. Amounts are ``int`` nano-USD or ``Decimal`` USD.
    """

    def __init__(self, directory: Union[str, "os.PathLike[str]"], *, create: bool = False,
                 max_accounts: int = 0, max_reservations: int = 0, max_processes: int = 0,
                 library: Optional[str] = None) -> None:
        self._lib: Library = load_library(library)
        self._directory = os.fspath(directory)
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False
        handle = ctypes.c_void_p()
        raw_dir = _text(self._directory, "directory")
        if create:
            limits = Limits(_unsigned(max_accounts, "max_accounts"), _unsigned(max_reservations, "max_reservations"),
                            _unsigned(max_processes, "max_processes"))
            code = self._lib.ledger_create(raw_dir, ctypes.byref(limits), ctypes.byref(handle))
        else:
            code = self._lib.ledger_open(raw_dir, ctypes.byref(handle))
        if code != Code.OK:
            raise error_for(code, self._lib.strerror(code), self._directory)
        self._handle: Optional[int] = handle.value
        _live.add(self)

    @classmethod
    def open(cls, directory: Union[str, "os.PathLike[str]"], *, library: Optional[str] = None) -> "Ledger":
        """Attaches to an existing ledger (ledger_open; rebuilds a lost segment from the store)."""
        return cls(directory, library=library)

    @classmethod
    def create(cls, directory: Union[str, "os.PathLike[str]"], *, max_accounts: int = 0, max_reservations: int = 0,
               max_processes: int = 0, library: Optional[str] = None) -> "Ledger":
        """Creates the ledger (directory and segment) or attaches (ledger_create); 0 = default capacity."""
        return cls(directory, create=True, max_accounts=max_accounts, max_reservations=max_reservations,
                   max_processes=max_processes, library=library)

    # -- lifetime -------------------------------------------------------------------------------
    @property
    def directory(self) -> str:
        return self._directory

    @property
    def library(self) -> Library:
        return self._lib

    @property
    def closed(self) -> bool:
        return self._handle is None or self._closing

    def close(self) -> None:
        """Detaches (ledger_close) once no call is in flight; idempotent."""
        with self._lock:
            if self._handle is None or self._closing:
                return
            self._closing = True
            if self._users == 0:
                self._free_locked()

    def _free_locked(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._lib.ledger_close(handle)

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_handle", None) is not None and not self._closing:
                self._lib.ledger_close(self._handle)
                self._handle = None
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __reduce__(self) -> Tuple[Callable[[str, str], "Ledger"], Tuple[str, str]]:
        # Another process (spawn, a Pool's arguments): the same ledger, reopened there by directory.
        return (_reopen, (self._directory, self._lib.path))

    def __repr__(self) -> str:
        return f"<ledger.Ledger {self._directory!r}{' closed' if self.closed else ''}>"

    def _enter(self) -> int:
        with self._lock:
            if self._handle is None or self._closing:
                raise InvalidArgument(detail="the ledger is closed")
            self._users += 1
            return self._handle

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._closing:
                self._free_locked()

    def _check(self, code: int, detail: str = "") -> None:
        if code == Code.DENIED_RATE:
            raise RateLimited(code, self._lib.strerror(code), detail, self._retry_after_ms())
        if code != Code.OK:
            raise error_for(code, self._lib.strerror(code), detail)

    def _retry_after_ms(self) -> Optional[int]:
        """This thread's hint after a rate denial (ledger_retry_after_ms), when the library has it."""
        fn = self._lib.ledger_retry_after_ms
        if fn is None or self._handle is None:
            return None
        hint = ctypes.c_uint32(0)
        return int(hint.value) if fn(self._handle, ctypes.byref(hint)) == Code.OK else None

    # -- budgets --------------------------------------------------------------------------------
    def set_budget(self, account: str, limit: Money, period: Union[Period, int] = Period.NONE,
                   parent: Optional[str] = None) -> None:
        """Creates the account or updates its budget; a parent must exist (chains are at most 4 deep)."""
        raw, raw_parent = _text(account, "account"), _text(parent, "parent")
        limit_nanousd = _amount(limit, "limit")
        if isinstance(period, bool) or not isinstance(period, int) or not -(2**31) <= period < 2**31:
            raise InvalidArgument(detail=f"period {period!r}")
        h = self._enter()
        try:
            code = self._lib.ledger_set_budget(h, raw, limit_nanousd, int(period), raw_parent)
        finally:
            self._leave()
        self._check(code, f"account {account}")

    def block(self, account: str, blocked: bool = True) -> None:
        """Blocks (or unblocks) the account: every request of it and its descendants is denied."""
        raw = _text(account, "account")
        h = self._enter()
        try:
            code = self._lib.ledger_block(h, raw, 1 if blocked else 0)
        finally:
            self._leave()
        self._check(code, f"account {account}")

    def unblock(self, account: str) -> None:
        self.block(account, False)

    def balance(self, account: str) -> Balance:
        raw, out = _text(account, "account"), BalanceStruct()
        h = self._enter()
        try:
            code = self._lib.ledger_balance(h, raw, ctypes.byref(out))
        finally:
            self._leave()
        self._check(code, f"account {account}")
        return Balance(out.limit_nanousd, out.spent_nanousd, out.held_nanousd, out.available_nanousd, out.requests,
                       Period(out.period) if 0 <= out.period <= 3 else out.period, bool(out.blocked),
                       out.period_start_unix)

    # -- spending -------------------------------------------------------------------------------
    def debit(self, account: str, amount: Cost) -> None:
        """Check-and-debit on the account and every ancestor, all or nothing (BudgetExceeded, ...)."""
        raw, nanos = _text(account, "account"), _amount(amount, "amount", cost=True)
        h = self._enter()
        try:
            code = self._lib.ledger_debit(h, raw, nanos)
        finally:
            self._leave()
        self._check(code, f"account {account}")

    def reserve(self, account: str, amount: Money, ttl_seconds: int = 0) -> int:
        """Holds `amount` on the chain; returns the reservation id (never 0). ttl 0 = the ledger's default."""
        raw, nanos, ttl = _text(account, "account"), _amount(amount, "amount"), _unsigned(ttl_seconds, "ttl_seconds")
        rid = ctypes.c_uint64()
        h = self._enter()
        try:
            code = self._lib.ledger_reserve(h, raw, nanos, ttl, ctypes.byref(rid))
        finally:
            self._leave()
        self._check(code, f"account {account}")
        return rid.value

    def commit(self, reservation_id: int, actual: Cost) -> None:
        """Settles a hold with what the call really cost (int nano-USD, Decimal USD, or OpenRouter's float)."""
        rid, nanos = _unsigned(reservation_id, "reservation_id", _UINT64_MAX), _amount(actual, "actual", cost=True)
        h = self._enter()
        try:
            code = self._lib.ledger_commit(h, rid, nanos)
        finally:
            self._leave()
        self._check(code, f"reservation {rid}")

    def commit_usage(self, reservation_id: int, actual: Cost, prompt_tokens: int, completion_tokens: int) -> None:
        """commit() with the request's real token counts (ledger_commit_usage, DESIGN.md 8.4).

        A library without ledger_commit_usage has no token limits to correct: this is commit() there.
        """
        rid, nanos = _unsigned(reservation_id, "reservation_id", _UINT64_MAX), _amount(actual, "actual", cost=True)
        prompt, completion = _unsigned(prompt_tokens, "prompt_tokens"), _unsigned(completion_tokens, "completion_tokens")
        h = self._enter()
        try:
            fn = self._lib.ledger_commit_usage
            code = fn(h, rid, nanos, prompt, completion) if fn is not None else self._lib.ledger_commit(h, rid, nanos)
        finally:
            self._leave()
        self._check(code, f"reservation {rid}")

    def release(self, reservation_id: int) -> None:
        """Gives a hold back unspent (nothing was sent, or nothing was billed)."""
        rid = _unsigned(reservation_id, "reservation_id", _UINT64_MAX)
        h = self._enter()
        try:
            code = self._lib.ledger_release(h, rid)
        finally:
            self._leave()
        self._check(code, f"reservation {rid}")

    def reclaim(self) -> int:
        """Expires holds past their TTL or of dead processes; returns how many."""
        n = ctypes.c_uint32()
        h = self._enter()
        try:
            code = self._lib.ledger_reclaim(h, ctypes.byref(n))
        finally:
            self._leave()
        self._check(code)
        return n.value

    def flush(self) -> None:
        """Writes what was settled to the store; durable on return."""
        h = self._enter()
        try:
            code = self._lib.ledger_flush(h)
        finally:
            self._leave()
        self._check(code, self._directory)

    # -- policy ---------------------------------------------------------------------------------
    def set_price(self, model: str, prompt_per_mtok: Money, completion_per_mtok: Money, request: Money = 0) -> None:
        """A model's price: per million prompt and completion tokens, and per request."""
        raw = _text(model, "model")
        prompt, completion = _amount(prompt_per_mtok, "prompt_per_mtok"), _amount(completion_per_mtok, "completion_per_mtok")
        per_request = _amount(request, "request")
        h = self._enter()
        try:
            code = self._lib.ledger_set_price(h, raw, prompt, completion, per_request)
        finally:
            self._leave()
        self._check(code, f"model {model}")

    def estimate(self, model: str, prompt_tokens: int, max_completion_tokens: int) -> int:
        """The worst-case cost of a call in nano-USD (exact, rounded up); UnknownModel without a price."""
        raw = _text(model, "model")
        prompt, completion = _unsigned(prompt_tokens, "prompt_tokens"), _unsigned(max_completion_tokens, "max_completion_tokens")
        out = ctypes.c_int64()
        h = self._enter()
        try:
            code = self._lib.ledger_estimate(h, raw, prompt, completion, ctypes.byref(out))
        finally:
            self._leave()
        self._check(code, f"model {model}")
        return out.value

    def authorize(self, account: str, model: str, estimate: Money, *, ttl_seconds: int = 0,
                  key_hash: Optional[str] = None) -> Authorization:
        """Policy and reserve in one call: the model to send and the hold (README "Policy").

        key_hash names the OpenRouter key the request goes through (ledger_authorize_via: its hash or
        a unique prefix of 12+ hex digits); None = the account's own bound key, else its ancestor's.
        On UnknownModel the exception's detail names the model without a price.
        """
        raw_account, raw_model = _text(account, "account"), _text(model, "model")
        raw_key = _text(key_hash, "key_hash")
        nanos, ttl = _amount(estimate, "estimate"), _unsigned(ttl_seconds, "ttl_seconds")
        buffer = ctypes.create_string_buffer(MODEL_NAME_BYTES_MAX + 1)
        rid = ctypes.c_uint64()
        h = self._enter()
        try:
            if raw_key is None:
                code = self._lib.ledger_authorize(h, raw_account, raw_model, nanos, ttl, buffer, len(buffer),
                                                  ctypes.byref(rid))
            else:
                code = self._lib.ledger_authorize_via(h, raw_account, raw_model, nanos, ttl, raw_key, buffer,
                                                      len(buffer), ctypes.byref(rid))
        finally:
            self._leave()
        chosen = buffer.value.decode("utf-8", "replace")
        if code == Code.UNKNOWN_MODEL:
            self._check(code, f"model {chosen or model} has no price")
        self._check(code, f"account {account}, model {model}")
        return Authorization(chosen, rid.value, nanos)

    def hold(self, account: str, model: str, estimate: Money, *, ttl_seconds: int = 0,
             key_hash: Optional[str] = None) -> "Hold":
        """A context manager: authorizes on entry; commit() inside, else released on exit."""
        return Hold(self, account, model, estimate, ttl_seconds=ttl_seconds, key_hash=key_hash)

    def strerror(self, code: int) -> str:
        """ledger_strerror: the library's name for a code."""
        return self._lib.strerror(code)


class Hold:
    """One authorized request. ``with ledger.hold(account, model, estimate) as h:`` authorizes
    (raising BudgetExceeded, ... before the body runs), ``h.model`` is the model to send, and
    ``h.commit(cost)`` settles with what it cost. Leaving the block without a commit or release
    (an exception, or neither was called) releases the hold. Settles at most once.
    """

    def __init__(self, ledger: Ledger, account: str, model: str, estimate: Money, *, ttl_seconds: int = 0,
                 key_hash: Optional[str] = None) -> None:
        self.ledger, self.account, self.requested_model = ledger, account, model
        self._estimate, self._ttl, self._key_hash = estimate, ttl_seconds, key_hash
        self._authorization: Optional[Authorization] = None
        self._settled: Optional[str] = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Hold":
        if self._authorization is not None:
            raise RuntimeError("a Hold is entered once")
        self._authorization = self.ledger.authorize(self.account, self.requested_model, self._estimate,
                                                    ttl_seconds=self._ttl, key_hash=self._key_hash)
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._authorization is None or self.settled is not None:
            return
        try:
            self.release()
        except LedgerError:
            if exc_type is None:
                raise  # nothing else is going wrong: say so
            # an exception is already on its way: do not mask it

    @property
    def model(self) -> str:
        """The model to send (the requested one, or the tier's fallback or downgrade)."""
        return self._require().model

    @property
    def reservation_id(self) -> int:
        return self._require().reservation_id

    @property
    def estimate_nanousd(self) -> int:
        return self._require().estimate_nanousd

    @property
    def settled(self) -> Optional[str]:
        """None while held, then "committed" or "released"."""
        return self._settled

    def _require(self) -> Authorization:
        if self._authorization is None:
            raise RuntimeError("use the Hold in a with statement first")
        return self._authorization

    def _settle(self, how: str) -> bool:
        with self._lock:
            if self._settled is not None:
                return False
            self._settled = how
            return True

    def commit(self, cost: Cost) -> None:
        """Settles with the real cost: int nano-USD, Decimal USD, or OpenRouter's float usage.cost."""
        nanos = _amount(cost, "cost", cost=True)  # a bad cost raises before the hold is marked settled
        rid = self._require().reservation_id
        if not self._settle("committed"):
            raise error_for(Code.ALREADY_SETTLED, self.ledger.strerror(Code.ALREADY_SETTLED), f"reservation {rid}")
        try:
            self.ledger.commit(rid, nanos)
        except InvalidArgument:
            self._settled = None  # refused before anything happened (a negative cost): still held
            raise

    def commit_usage(self, cost: Cost, prompt_tokens: int, completion_tokens: int) -> None:
        nanos = _amount(cost, "cost", cost=True)
        rid = self._require().reservation_id
        if not self._settle("committed"):
            raise error_for(Code.ALREADY_SETTLED, self.ledger.strerror(Code.ALREADY_SETTLED), f"reservation {rid}")
        try:
            self.ledger.commit_usage(rid, nanos, prompt_tokens, completion_tokens)
        except (InvalidArgument, TypeError):
            self._settled = None
            raise

    def release(self) -> None:
        rid = self._require().reservation_id
        if not self._settle("released"):
            raise error_for(Code.ALREADY_SETTLED, self.ledger.strerror(Code.ALREADY_SETTLED), f"reservation {rid}")
        self.ledger.release(rid)

    def __repr__(self) -> str:
        state = "not entered" if self._authorization is None else (self._settled or "held")
        return f"<ledger.Hold {self.account} {self.requested_model} {state}>"


# -- across processes -------------------------------------------------------------------------
_live: "weakref.WeakSet[Ledger]" = weakref.WeakSet()
_reopen_lock = threading.Lock()
_reopened: Dict[Tuple[int, str, str], Ledger] = {}


def _reopen(directory: str, library_path: str) -> Ledger:
    """The unpickling side: one Ledger per process and directory, opened on first use."""
    key = (os.getpid(), directory, library_path)
    with _reopen_lock:
        ledger = _reopened.get(key)
        if ledger is None or ledger.closed:
            ledger = Ledger(directory, library=library_path)
            _reopened[key] = ledger
        return ledger


def _after_fork_in_child() -> None:
    # A lock some parent thread held at fork() would stay held here forever; calls in flight in
    # the parent's other threads do not exist in the child.
    global _reopen_lock
    _reopen_lock = threading.Lock()
    for ledger in list(_live):
        ledger._lock = threading.Lock()
        ledger._users = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the segment's file -----------------------------------------------------------------------
def _fnv1a64(data: bytes) -> int:
    h = 1469598103934665603
    for byte in data:
        h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def segment_path(directory: Union[str, "os.PathLike[str]"]) -> str:
    """Where libledger keeps the shared segment of `directory` (as segment.cpp's resolve_dir names it,
    in the segment directory its creator recorded in DIR/ledger.segment-dir, else /dev/shm)."""
    real = os.path.realpath(os.fspath(directory))
    st = os.stat(real)
    name = _fnv1a64(real.encode()) ^ ((st.st_ino * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) ^ st.st_dev
    segment_dir = "/dev/shm"
    try:
        with open(os.path.join(real, "ledger.segment-dir"), encoding="utf-8") as f:
            line = f.readline().rstrip("\n")
        if line.startswith("/"):
            segment_dir = line
    except OSError:
        pass
    return f"{segment_dir}/ledger-{name & 0xFFFFFFFFFFFFFFFF:016x}"


def destroy_segment(directory: Union[str, "os.PathLike[str]"]) -> bool:
    """Removes the ledger's shared segment (only when no process is attached: the store keeps what
    was flushed, and the next open rebuilds from it). Returns whether there was one."""
    try:
        os.unlink(segment_path(directory))
        return True
    except FileNotFoundError:
        return False
