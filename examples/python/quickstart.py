"""libledger from Python through its C ABI (ctypes): the README's quick start, run by CI.

Usage: python3 quickstart.py /path/to/libledger.so
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import ledger_ctypes as L  # noqa: E402

lib = L.load(sys.argv[1] if len(sys.argv) > 1 else "libledger.so")
directory = tempfile.mkdtemp(prefix="ledger-quickstart-")
ledger = L.Ledger(lib, directory, limits=L.ctypes.pointer(L.Limits(64, 64, 8)))

ledger.set_budget("team", L.usd("10"), L.MONTHLY)
ledger.set_budget("alice", L.usd("5"), L.DAILY, "team")
ledger.set_price("openai/gpt-4o-mini", L.usd("0.15"), L.usd("0.60"))

code, estimate = ledger.estimate("openai/gpt-4o-mini", 1200, 400)   # worst case of the call
code, model, rid = ledger.authorize("alice", "openai/gpt-4o-mini", estimate)
if code == L.OK:
    # ... call `model` on OpenRouter here, then settle with what it really cost: the response's
    # usage.cost, a float (usd() rounds one finer than a nano-USD up: 2.83125e-05 -> 28,313):
    response = {"usage": {"cost": 2.83125e-05}}
    ledger.commit(rid, L.usd(response["usage"]["cost"]))
else:
    print("denied:", L.error_for(code, lib.ledger_strerror(code).decode()))

code, b = ledger.balance("alice")
print(f"alice spent {b.spent_nanousd / 1e9:.9f} USD of {b.limit_nanousd / 1e9:.2f}, {b.requests} request(s)")
assert (code, b.spent_nanousd, b.requests) == (L.OK, 28_313, 1)

try:  # opening fails with a LedgerError, a subclass per code
    L.Ledger(lib, os.path.join(directory, "missing"), create=False)
except L.NotFound as e:
    print("as expected:", e)

ledger.close()
os.unlink(L.segment_path(directory))  # nobody is attached any more
shutil.rmtree(directory)
