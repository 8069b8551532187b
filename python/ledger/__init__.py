"""ledger: per-user LLM budgets in a shared-memory ledger, from Python (libledger's C ABI).

    import ledger
    led = ledger.Ledger.open("/var/lib/ledger/acme")
    estimate = led.estimate("openai/gpt-4o-mini", prompt_tokens=1200, max_completion_tokens=400)
    with led.hold("alice", "openai/gpt-4o-mini", estimate) as h:
        reply = call_openrouter(model=h.model, ...)          # the model to send (maybe a fallback)
        h.commit(reply["usage"]["cost"])                       # released instead on an exception

Money is ``int`` nano-USD (1 USD = 1,000,000,000) or ``decimal.Decimal`` USD; ``usd()``,
``cost_nanousd()`` and ``to_usd()`` convert exactly (see ledger.money). Every failing call raises
a ``LedgerError`` subclass carrying ``.code`` (BudgetExceeded is 1, ... UnknownModel is 14).
``ledger.httpx`` has ``LedgerTransport`` and ``AsyncLedgerTransport`` for httpx (and so the openai
SDK). libledger.so is found through $LEDGER_LIBRARY, the install prefix or a checkout's build tree.
"""
from ._library import Library, load_library
from ._ledger import (Authorization, Balance, Cost, Hold, Ledger, Money, Period, destroy_segment,
                      segment_path)
from .errors import (AccountBlocked, AlreadySettled, BudgetExceeded, Code, Denied, Incompatible,
                     InvalidArgument, LedgerError, LedgerFull, LedgerIOError, LedgerNotFound,
                     ModelNotAllowed, ParentBudgetExceeded, PermissionDenied, RateLimited,
                     UnknownAccount, UnknownModel, UnknownReservation, LibraryNotFoundError, error_for)
from .money import AMOUNT_NANOUSD_MAX, NANOUSD_PER_USD, cost_nanousd, to_usd, usd

__version__ = "0.1.0"

NONE, DAILY, WEEKLY, MONTHLY = Period.NONE, Period.DAILY, Period.WEEKLY, Period.MONTHLY

__all__ = [
    "Ledger", "Hold", "Authorization", "Balance", "Period", "Money", "Cost", "NONE", "DAILY", "WEEKLY",
    "MONTHLY", "Code", "LedgerError", "Denied", "BudgetExceeded", "ParentBudgetExceeded",
    "ModelNotAllowed", "AccountBlocked", "RateLimited", "UnknownAccount", "UnknownReservation",
    "AlreadySettled", "InvalidArgument", "LedgerFull", "Incompatible", "LedgerIOError",
    "PermissionDenied", "LedgerNotFound", "UnknownModel", "error_for", "usd", "cost_nanousd", "to_usd",
    "NANOUSD_PER_USD", "AMOUNT_NANOUSD_MAX", "load_library", "Library", "LibraryNotFoundError",
    "segment_path", "destroy_segment", "__version__",
]
