"""The README's Python quick start, run by CI: budgets, an estimate, a hold settled with
OpenRouter's float cost, the balance, and an error by code. Uses the `ledger` package (python/).

Usage: python3 examples/python/quickstart.py [/path/to/libledger.so]
(from a checkout the package is imported from python/ when it is not installed; without the
argument libledger.so is found through $LEDGER_LIBRARY, /usr/local/lib, /usr/lib or the build tree).
"""
import os
import shutil
import sys
import tempfile

try:
    import ledger
except ImportError:  # a checkout without `pip install ./python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
    import ledger

library = sys.argv[1] if len(sys.argv) > 1 else None
directory = tempfile.mkdtemp(prefix="ledger-quickstart-")
led = ledger.Ledger.create(directory, max_accounts=64, max_reservations=64, max_processes=8, library=library)

led.set_budget("team", ledger.usd("10"), ledger.MONTHLY)
led.set_budget("alice", ledger.usd("5"), ledger.DAILY, "team")
led.set_price("openai/gpt-4o-mini", ledger.usd("0.15"), ledger.usd("0.60"))

estimate = led.estimate("openai/gpt-4o-mini", 1200, 400)    # worst case of the call: 420,000 nano-USD
with led.hold("alice", "openai/gpt-4o-mini", estimate) as h:
    # ... call h.model on OpenRouter here, then settle with what it really cost: the response's
    # usage.cost, a float (one finer than a nano-USD rounds up: 2.83125e-05 -> 28,313):
    response = {"usage": {"cost": 2.83125e-05}}
    h.commit(response["usage"]["cost"])

b = led.balance("alice")
print(f"alice spent {b.spent_usd} USD of {b.limit_usd}, {b.requests} request(s)")
assert (b.spent_nanousd, b.requests, b.held_nanousd) == (28_313, 1, 0)

try:  # a denial is an exception with its code
    led.debit("alice", ledger.usd("6"))
except ledger.BudgetExceeded as e:
    print("as expected:", e, "- code", e.code)
try:
    ledger.Ledger.open(os.path.join(directory, "missing"), library=library)
except ledger.LedgerNotFound as e:
    print("as expected:", e)

led.close()
ledger.destroy_segment(directory)  # nobody is attached any more
shutil.rmtree(directory)
