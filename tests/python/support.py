"""What the Python tests share: the paths ctest passes, temporary ledgers, and the real emulator.

ctest passes (environment): LEDGER_LIBRARY (libledger.so), LEDGER_EMULATOR (openrouter-emulator),
LEDGERCTL (ledgerctl), and PYTHONPATH with the repository's python/ so that `import ledger` is the
package under test. Run by hand the same way, e.g.
    LEDGER_LIBRARY=build/debug/libledger/libledger.so PYTHONPATH=python python3 tests/python/test_binding.py
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if os.path.join(REPO, "python") not in sys.path:
    sys.path.insert(0, os.path.join(REPO, "python"))

import ledger  # noqa: E402




LIBRARY = os.environ.get("LEDGER_LIBRARY", "")
if not LIBRARY or not os.path.exists(LIBRARY):
    raise SystemExit(f"set $LEDGER_LIBRARY to the libledger.so under test (got {LIBRARY!r})")


class TempLedger:
    """A fresh ledger directory; its segment and directory are removed at the end."""

    def __init__(self, max_accounts: int = 256, max_reservations: int = 1024, max_processes: int = 32) -> None:
        self.directory = tempfile.mkdtemp(prefix="ledger-py-")
        self.ledger = ledger.Ledger.create(self.directory, max_accounts=max_accounts,
                                           max_reservations=max_reservations, max_processes=max_processes)

    def close(self) -> None:
        self.ledger.close()
        ledger.destroy_segment(self.directory)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "TempLedger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Emulator:
    """The openrouter-emulator binary on loopback, started as tests/sidecar/emulator_process.hpp does:
    --management-key-file F --port-file P, in a temporary directory."""

    def __init__(self) -> None:
        binary = os.environ.get("LEDGER_EMULATOR", "")
        if not binary or not os.path.exists(binary):
            raise RuntimeError(f"set $LEDGER_EMULATOR to the openrouter-emulator binary (got {binary!r})")
        self.dir = tempfile.mkdtemp(prefix="ledger-py-emu-")
        key_file, port_file = os.path.join(self.dir, "mgmt.key"), os.path.join(self.dir, "port")
        self.process = subprocess.Popen([binary, "--management-key-file", key_file, "--port-file", port_file],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.port = 0
        for _ in range(500):
            try:
                with open(port_file, encoding="utf-8") as f:
                    text = f.read()
                if text.endswith("\n"):
                    self.port = int(text)
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        if not self.port:
            self.stop()
            raise RuntimeError("the emulator did not start")
        with open(key_file, encoding="utf-8") as f:
            self.management_key = f.read().strip()
        self.base = f"http://127.0.0.1:{self.port}/api/v1"

    def call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
             key: Optional[str] = None) -> Tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        connection.close()
        return response.status, json.loads(raw) if raw else None

    def create_key(self, name: str, **fields: Any) -> Tuple[str, str]:
        """A normal API key made with the management key: (plaintext, hash)."""
        status, body = self.call("POST", "/api/v1/keys", dict(name=name, **fields), key=self.management_key)
        assert status == 201, (status, body)
        return body["key"], body["data"]["hash"]

    def key_usage_nanousd(self, key_hash: str) -> int:
        status, body = self.call("GET", f"/api/v1/keys/{key_hash}", key=self.management_key)
        assert status == 200, status
        return ledger.cost_nanousd(body["data"]["usage"])

    def fault(self, **fault: Any) -> None:
        status, _ = self.call("POST", "/__emulator/faults", fault)
        assert status == 200, status

    def settings(self, **settings: Any) -> None:
        status, _ = self.call("POST", "/__emulator/settings", settings)
        assert status == 200, status

    def state(self) -> Dict[str, Any]:
        return self.call("GET", "/__emulator/state")[1]

    def generation(self, generation_id: str, key: str) -> Tuple[int, Any]:
        return self.call("GET", f"/api/v1/generation?id={generation_id}", key=key)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def ledgerctl_init(config: Dict[str, Any], directory: str) -> None:
    """`ledgerctl --config F init` of a config (tiers can only be set from one)."""
    binary = os.environ.get("LEDGERCTL", "")
    if not binary or not os.path.exists(binary):
        raise RuntimeError(f"set $LEDGERCTL to the ledgerctl binary (got {binary!r})")
    path = os.path.join(directory, "ledger.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    result = subprocess.run([binary, "--config", path, "init"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"ledgerctl init failed ({result.returncode}): {result.stderr}")
