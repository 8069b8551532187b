"""Finding and loading libledger.so, and the ctypes signatures of its C ABI (ledger/c.h).

Where the library is looked for, in order (the first that loads wins):
  1. ``$LEDGER_LIBRARY``: the path of libledger.so. When it is set, nothing else is tried.
  2. The install prefixes: /usr/local/lib, /usr/lib (and their multiarch and lib64 directories).
  3. When this package is imported from a checkout of the repository (python/ledger/ beside
     libledger/): ``build/*/libledger/libledger.so``, the most recently built first, passing over
     sanitizer builds (loading one without its runtime preloaded ends the process).
A library that exists but does not load (another architecture, a sanitizer build without its
runtime preloaded) is passed over, and the error names it with the reason.
"""
from __future__ import annotations

import ctypes
import os
import sysconfig
import threading
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .errors import LibraryNotFoundError

__all__ = ["Limits", "BalanceStruct", "load_library", "library_candidates"]

ENV_VARIABLE = "LEDGER_LIBRARY"
_NAMES = ("libledger.so", "libledger.so.0")
MODEL_NAME_BYTES_MAX = 87  # libledger's kModelNameMax; the buffer for model_out holds it and a NUL


class Limits(ctypes.Structure):
    """ledger_limits_t: 0 = the default (65536 accounts, 65536 reservations, 256 processes)."""

    _fields_ = [("max_accounts", ctypes.c_uint32), ("max_reservations", ctypes.c_uint32),
                ("max_processes", ctypes.c_uint32)]


class BalanceStruct(ctypes.Structure):
    """ledger_balance_t."""

    _fields_ = [("limit_nanousd", ctypes.c_int64), ("spent_nanousd", ctypes.c_int64),
                ("held_nanousd", ctypes.c_int64), ("available_nanousd", ctypes.c_int64),
                ("requests", ctypes.c_uint64), ("period", ctypes.c_int32),
                ("blocked", ctypes.c_int32), ("period_start_unix", ctypes.c_int64)]


_p, _s, _i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
_i32, _u32, _i64, _u64 = ctypes.c_int32, ctypes.c_uint32, ctypes.c_int64, ctypes.c_uint64
_SIGNATURES = {
    "ledger_strerror": (_s, [_i]),
    "ledger_create": (_i, [_s, ctypes.POINTER(Limits), ctypes.POINTER(_p)]),
    "ledger_open": (_i, [_s, ctypes.POINTER(_p)]),
    "ledger_close": (None, [_p]),
    "ledger_set_budget": (_i, [_p, _s, _i64, _i32, _s]),
    "ledger_block": (_i, [_p, _s, _i32]),
    "ledger_debit": (_i, [_p, _s, _i64]),
    "ledger_reserve": (_i, [_p, _s, _i64, _u32, ctypes.POINTER(_u64)]),
    "ledger_commit": (_i, [_p, _u64, _i64]),
    "ledger_release": (_i, [_p, _u64]),
    "ledger_balance": (_i, [_p, _s, ctypes.POINTER(BalanceStruct)]),
    "ledger_reclaim": (_i, [_p, ctypes.POINTER(_u32)]),
    "ledger_flush": (_i, [_p]),
    "ledger_set_price": (_i, [_p, _s, _i64, _i64, _i64]),
    "ledger_estimate": (_i, [_p, _s, _u32, _u32, ctypes.POINTER(_i64)]),
    "ledger_authorize": (_i, [_p, _s, _s, _i64, _u32, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_u64)]),
    "ledger_authorize_via": (_i, [_p, _s, _s, _i64, _u32, _s, ctypes.c_char_p, ctypes.c_size_t,
                                  ctypes.POINTER(_u64)]),
}
# DESIGN.md 8.4 additions a library may not have yet: bound when present, else None.
_OPTIONAL_SIGNATURES = {
    "ledger_commit_usage": (_i, [_p, _u64, _i64, _u32, _u32]),
    "ledger_retry_after_ms": (_i, [_p, ctypes.POINTER(_u32)]),
}


class Library:
    """A loaded libledger: the CDLL with every signature set, and where it came from."""

    # The C functions, bound with their restype and argtypes (c.h); the optional ones are None
    # when the library does not export them.
    ledger_strerror: Callable[..., Optional[bytes]]
    ledger_create: Callable[..., int]
    ledger_open: Callable[..., int]
    ledger_close: Callable[..., None]
    ledger_set_budget: Callable[..., int]
    ledger_block: Callable[..., int]
    ledger_debit: Callable[..., int]
    ledger_reserve: Callable[..., int]
    ledger_commit: Callable[..., int]
    ledger_release: Callable[..., int]
    ledger_balance: Callable[..., int]
    ledger_reclaim: Callable[..., int]
    ledger_flush: Callable[..., int]
    ledger_set_price: Callable[..., int]
    ledger_estimate: Callable[..., int]
    ledger_authorize: Callable[..., int]
    ledger_authorize_via: Callable[..., int]
    ledger_commit_usage: Optional[Callable[..., int]]
    ledger_retry_after_ms: Optional[Callable[..., int]]

    def __init__(self, path: str, cdll: ctypes.CDLL) -> None:
        self.path = path
        self.cdll = cdll
        missing = [name for name in _SIGNATURES if not hasattr(cdll, name)]
        if missing:
            raise LibraryNotFoundError(f"{path} is not a compatible libledger: it lacks {', '.join(missing)}")
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(cdll, name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)
        for name, (restype, argtypes) in _OPTIONAL_SIGNATURES.items():
            fn = getattr(cdll, name, None)
            if fn is not None:
                fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)

    def strerror(self, code: int) -> str:
        text = self.ledger_strerror(int(code))
        return text.decode("utf-8", "replace") if text else f"code {code}"

    def has(self, name: str) -> bool:
        """Whether the library exports an optional function (e.g. "ledger_commit_usage")."""
        return getattr(self, name, None) is not None

    def __repr__(self) -> str:
        return f"<libledger {self.path}>"


def _checkout_root() -> Optional[Path]:
    root = Path(__file__).resolve().parent.parent.parent
    return root if (root / "libledger" / "include" / "ledger" / "c.h").is_file() else None


def _install_dirs() -> List[str]:
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = []
    for prefix in ("/usr/local", "/usr"):
        dirs.append(f"{prefix}/lib")
        if multiarch:
            dirs.append(f"{prefix}/lib/{multiarch}")
        dirs.append(f"{prefix}/lib64")
    return dirs


def _sanitized(path: Path) -> bool:
    """True for a libledger built with ASan or TSan whose runtime this process has not preloaded."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    process = ctypes.CDLL(None)
    return any(name in data and not hasattr(process, name.decode()) for name in (b"__asan_init", b"__tsan_init"))


def library_candidates() -> Tuple[List[str], List[str]]:
    """(paths to try in order, notes on places that had nothing), without loading anything."""
    env = os.environ.get(ENV_VARIABLE, "")
    if env:
        return [env], []
    paths: List[str] = []
    notes: List[str] = [f"${ENV_VARIABLE} is not set"]
    for directory in _install_dirs():
        found = [os.path.join(directory, n) for n in _NAMES if os.path.exists(os.path.join(directory, n))]
        paths.extend(found[:1])
        if not found:
            notes.append(f"{directory}/libledger.so: no such file")
    root = _checkout_root()
    if root is None:
        notes.append("not imported from a checkout of the repository (no build tree to look in)")
    else:
        built = sorted(root.glob("build/*/libledger/libledger.so"), key=lambda p: p.stat().st_mtime, reverse=True)
        for p in built:
            if _sanitized(p):  # loading it would end the process: not an error to catch
                notes.append(f"{p}: a sanitizer build, passed over (set ${ENV_VARIABLE} to it, runtime preloaded)")
            else:
                paths.append(str(p))
        if not built:
            notes.append(f"{root}/build/*/libledger/libledger.so: none (build it: cmake --preset debug && "
                         f"cmake --build --preset debug --target ledger)")
    return paths, notes


_lock = threading.Lock()
_loaded: Dict[str, Library] = {}


def load_library(path: Optional[str] = None) -> Library:
    """The libledger at `path`, else the first one found (see the module); loaded once per path."""
    with _lock:
        if path is not None:
            candidates: List[str] = [str(path)]
            notes: List[str] = []
        else:
            candidates, notes = library_candidates()
        failures: List[str] = []
        from_env = path is None and bool(os.environ.get(ENV_VARIABLE))
        for candidate in candidates:
            if candidate in _loaded:
                return _loaded[candidate]
            label = f"${ENV_VARIABLE}={candidate}" if from_env else candidate
            if not os.path.exists(candidate):
                failures.append(f"{label}: no such file")
                continue
            try:
                library = Library(candidate, ctypes.CDLL(candidate))
            except (OSError, LibraryNotFoundError) as e:
                failures.append(f"{label}: {e}")
                continue
            _loaded[candidate] = library
            return library
        where = "; ".join(failures + notes)
        raise LibraryNotFoundError(f"libledger.so not found or not loadable ({where}). "
                                   f"Set ${ENV_VARIABLE} to the path of libledger.so.")
