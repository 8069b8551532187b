"""libledger's result codes (ledger/c.h) and one exception class per code, all under LedgerError.

The numbers reach disk and other languages: they are never renumbered. Denials (1-4, and 15 where
the library has rate limits) are ``Denied``: do not send the request.
"""
from __future__ import annotations

import enum
from typing import Dict, Optional, Tuple, Type

__all__ = [
    "Code", "LedgerError", "Denied", "BudgetExceeded", "ParentBudgetExceeded", "ModelNotAllowed",
    "AccountBlocked", "RateLimited", "UnknownAccount", "UnknownReservation", "AlreadySettled",
    "InvalidArgument", "LedgerFull", "Incompatible", "LedgerIOError", "PermissionDenied",
    "LedgerNotFound", "UnknownModel", "LibraryNotFoundError", "error_for",
]


class Code(enum.IntEnum):
    """The LEDGER_* codes of c.h."""

    OK = 0
    DENIED_OVER_BUDGET = 1          # the account's own budget would be exceeded
    DENIED_PARENT_OVER_BUDGET = 2   # an ancestor's budget would be exceeded
    DENIED_MODEL = 3                # model not allowed for the tier, no fallback
    DENIED_BLOCKED = 4              # the account or an ancestor is blocked
    UNKNOWN_ACCOUNT = 5
    UNKNOWN_RESERVATION = 6
    ALREADY_SETTLED = 7
    INVALID_ARGUMENT = 8
    FULL = 9                        # a capacity fixed at creation is used up
    INCOMPATIBLE = 10               # segment or store of another format version
    IO_ERROR = 11
    PERMISSION = 12
    NOT_FOUND = 13                  # no ledger at that path
    UNKNOWN_MODEL = 14              # no price known for the model
    DENIED_RATE = 15                # DESIGN.md 8.4, reserved: a rate or concurrency limit


# ledger_strerror's texts, for codes raised before the library is loaded (or by a library that
# does not know the code yet).
_NAMES = {
    0: "ok", 1: "over budget", 2: "parent over budget", 3: "model not allowed", 4: "account blocked",
    5: "unknown account", 6: "unknown reservation", 7: "already settled", 8: "invalid argument",
    9: "ledger full", 10: "incompatible segment or store", 11: "I/O error", 12: "permission denied",
    13: "no ledger at that path", 14: "unknown model (no price)", 15: "rate limited",
}


class LedgerError(Exception):
    """A libledger result code as an exception.

    ``.code`` is the LEDGER_* number, ``.message`` what ledger_strerror says, ``.detail`` what the
    call was about (an account, a model), if anything. Not an OSError: code 13 means "no ledger at
    that path", not EACCES.
    """

    code: int = -1

    def __init__(self, code: Optional[int] = None, message: str = "", detail: str = "") -> None:
        code = type(self).code if code is None else int(code)
        message = message or _NAMES.get(code, f"code {code}")
        super().__init__(code, message, detail)
        self.code, self.message, self.detail = code, message, detail

    def __str__(self) -> str:
        text = f"ledger error {self.code}: {self.message}"
        return f"{text} ({self.detail})" if self.detail else text

    def __reduce__(self) -> Tuple[Type["LedgerError"], Tuple[object, ...]]:  # picklable, subclass kept
        return (type(self), (self.code, self.message, self.detail))


class Denied(LedgerError):
    """A denial: do not send the request."""


class BudgetExceeded(Denied):
    """1: the account's own budget would be exceeded."""
    code = 1


class ParentBudgetExceeded(Denied):
    """2: an ancestor's budget would be exceeded."""
    code = 2


class ModelNotAllowed(Denied):
    """3: the model is not allowed for the account's tier, and the tier has no fallback."""
    code = 3


class AccountBlocked(Denied):
    """4: the account or an ancestor is blocked."""
    code = 4


class RateLimited(Denied):
    """15 (reserved, DESIGN.md 8.4): a requests/tokens per minute or concurrency limit.

    ``retry_after_ms`` is the library's hint when it gives one, else None.
    """
    code = 15

    def __init__(self, code: Optional[int] = None, message: str = "", detail: str = "",
                 retry_after_ms: Optional[int] = None) -> None:
        super().__init__(code, message, detail)
        self.retry_after_ms = retry_after_ms

    def __reduce__(self) -> Tuple[Type["LedgerError"], Tuple[object, ...]]:
        return (type(self), (self.code, self.message, self.detail, self.retry_after_ms))


class UnknownAccount(LedgerError):
    """5: no such account."""
    code = 5


class UnknownReservation(LedgerError):
    """6: the reservation id was never issued, or its slot was reused (or its tombstone dropped)."""
    code = 6


class AlreadySettled(LedgerError):
    """7: the reservation was committed or released before."""
    code = 7


class InvalidArgument(LedgerError, ValueError):
    """8: a bad argument (an account id is 1-63 bytes of [A-Za-z0-9._:@-]; amounts are >= 0)."""
    code = 8


class LedgerFull(LedgerError):
    """9: a capacity fixed at creation is used up (accounts, live holds, processes), or no room."""
    code = 9


class Incompatible(LedgerError):
    """10: the segment or store is of another format version, or not a ledger."""
    code = 10


class LedgerIOError(LedgerError):
    """11: an I/O error."""
    code = 11


class PermissionDenied(LedgerError):
    """12: permission denied (segment and lock file are 0600)."""
    code = 12


class LedgerNotFound(LedgerError):
    """13: no ledger at that path (neither a store nor a segment)."""
    code = 13


class UnknownModel(LedgerError):
    """14: no price known for the model (an unknown price is never free)."""
    code = 14


_CLASSES: Tuple[Type[LedgerError], ...] = (
    BudgetExceeded, ParentBudgetExceeded, ModelNotAllowed, AccountBlocked, UnknownAccount,
    UnknownReservation, AlreadySettled, InvalidArgument, LedgerFull, Incompatible, LedgerIOError,
    PermissionDenied, LedgerNotFound, UnknownModel, RateLimited)
ERRORS: Dict[int, Type[LedgerError]] = {cls.code: cls for cls in _CLASSES}


def error_for(code: int, message: str = "", detail: str = "") -> LedgerError:
    """The exception for a code: its class (LedgerError itself for a code this package does not know)."""
    return ERRORS.get(int(code), LedgerError)(int(code), message, detail)


class LibraryNotFoundError(ImportError):
    """libledger.so could not be loaded; the message names every place that was tried."""
