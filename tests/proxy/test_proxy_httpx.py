"""ledger-proxy with Python's httpx and with curl, against the real emulator over loopback and a
real ledger: plain and streamed chat; a budget denial as 429 with `x-should-retry: false` in
OpenAI's error shape; a model outside the tier as 403 model_not_allowed; end-user attribution
through `user` (a team's key naming a member charges the member, not the team itself); a revoked
proxy key refused within a second; no key in the proxy's log; and at the end the ledger's spend
equal to what the emulator billed the proxy's upstream key, to the nano-USD.

ctest passes the binaries in the environment (tests/CMakeLists.txt): PROXY (ledger-proxy),
LEDGERCTL, LEDGER_EMULATOR. By hand:
    PROXY=build/debug/proxy/ledger-proxy LEDGERCTL=build/debug/sidecar/ledgerctl \\
    LEDGER_EMULATOR=build/debug/emulator/openrouter-emulator python3 tests/proxy/test_proxy_httpx.py
This file does not load libledger (it is a client only): no sanitizer runtime is needed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
from decimal import Decimal
from typing import Any, Dict, List, Optional

import httpx


def binary(name: str) -> str:
    path = os.environ.get(name, "")
    if not path or not os.path.exists(path):
        raise SystemExit(f"set ${name} to the binary under test (got {path!r})")
    return path


PROXY, LEDGERCTL, EMULATOR = binary("PROXY"), binary("LEDGERCTL"), binary("LEDGER_EMULATOR")
CURL = shutil.which("curl")
MESSAGES = [{"role": "user", "content": "hello there"}]


def read_line(path: str, what: str) -> str:
    """A file's text once it ends with a newline (what the binaries write to --port-file)."""
    for _ in range(1000):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if text.endswith("\n"):
                return text.strip()
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{what} did not start (no {path})")


def stop(process: Optional[subprocess.Popen]) -> Optional[int]:
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def nano_of_usd(cost: Any) -> int:
    """usage.cost (USD, read as a Decimal: exact) in nano-USD."""
    n = Decimal(cost) * 1_000_000_000
    assert n == n.to_integral_value(), cost
    return int(n)


class ProxyWithHttpx(unittest.TestCase):
    """One emulator, ledger and proxy for the whole class; the tests run in name order and the last
    one (test_9) compares the ledger with what was billed, then stops the proxy."""

    dir: str
    config: str
    log: str
    base: str
    emulator: Optional[subprocess.Popen] = None
    proxy: Optional[subprocess.Popen] = None
    http: httpx.Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.dir = tempfile.mkdtemp(prefix="ledger-proxy-httpx-")
        cls.config = os.path.join(cls.dir, "ledger.json")
        cls.log = os.path.join(cls.dir, "proxy.log")
        try:
            cls._start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _start(cls) -> None:
        mgmt_file, emu_port = os.path.join(cls.dir, "mgmt.key"), os.path.join(cls.dir, "emulator.port")
        with open(os.path.join(cls.dir, "emulator.log"), "ab") as out:
            cls.emulator = subprocess.Popen([EMULATOR, "--management-key-file", mgmt_file, "--port-file", emu_port],
                                            stdout=out, stderr=out)
        cls.emulator_base = f"http://127.0.0.1:{read_line(emu_port, 'the emulator')}"
        with open(mgmt_file, encoding="utf-8") as f:
            mgmt = f.read().strip()
        made = httpx.post(f"{cls.emulator_base}/api/v1/keys", json={"name": "proxy-upstream"},
                          headers={"Authorization": f"Bearer {mgmt}"}, timeout=10)
        assert made.status_code == 201, made.text
        cls.upstream_hash = made.json()["data"]["hash"]
        key_file = os.path.join(cls.dir, "upstream.key")
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as f:
            f.write(made.json()["key"] + "\n")
        config = {
            "ledger": {"dir": "ledger", "max_accounts": 64, "max_reservations": 4096, "max_processes": 32},
            "openrouter": {"base_url": cls.emulator_base + "/api/v1", "management_key_file": mgmt_file,
                           "app_url": "https://proxy-httpx-test.example", "app_title": "proxy-httpx-test"},
            "tiers": {"pro": {"models": ["openai/gpt-4o-mini", "openai/gpt-4o"]},
                      "basic": {"models": ["openai/gpt-4o-mini"], "fallback": "openai/gpt-4o-mini"}},
            "prices": {"openai/gpt-4o-mini": {"prompt_usd_per_mtok": "0.15", "completion_usd_per_mtok": "0.60"},
                       "openai/gpt-4o": {"prompt_usd_per_mtok": "2.50", "completion_usd_per_mtok": "10"}},
            "accounts": [{"id": "eng", "limit_usd": "10", "period": "daily"},
                         {"id": "alice", "parent": "eng", "tier": "pro", "limit_usd": "5", "period": "daily"},
                         {"id": "bob", "parent": "eng", "tier": "pro", "limit_usd": "5", "period": "daily"},
                         {"id": "carol", "parent": "eng", "tier": "basic", "limit_usd": "0.001", "period": "daily"},
                         {"id": "other", "limit_usd": "1", "period": "daily"}],
            "proxy": {"listen": "127.0.0.1:0", "upstream_key_file": "upstream.key", "max_tokens_default": 512,
                      "max_body_bytes": 65536},
        }
        with open(cls.config, "w", encoding="utf-8") as f:
            json.dump(config, f)
        cls.ctl("init")
        cls.keys = {a: cls.make_key(a) for a in ("alice", "eng", "carol", "other")}
        port_file = os.path.join(cls.dir, "proxy.port")
        with open(cls.log, "ab") as out:
            cls.proxy = subprocess.Popen([PROXY, "--config", cls.config, "--port-file", port_file], stdout=out, stderr=out)
        cls.base = f"http://127.0.0.1:{read_line(port_file, 'ledger-proxy')}"
        cls.http = httpx.Client(base_url=cls.base, timeout=60)

    @classmethod
    def tearDownClass(cls) -> None:
        if getattr(cls, "http", None) is not None:
            cls.http.close()
        stop(cls.proxy)
        stop(cls.emulator)
        if os.environ.get("LEDGER_KEEP_TMP"):
            print(f"kept {cls.dir}")
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)

    # --- helpers ---

    @classmethod
    def ctl(cls, *args: str) -> str:
        r = subprocess.run([LEDGERCTL, "--config", cls.config, *args], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"ledgerctl {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r.stdout

    @classmethod
    def make_key(cls, account: str) -> str:
        out = cls.ctl("proxy-key", "create", account)
        assert out.startswith(f"{account}: lk-"), out
        return out[len(account) + 2:].strip()

    def status(self) -> Dict[str, Dict[str, Any]]:
        accounts = json.loads(self.ctl("status", "--json"))["accounts"]
        for a in accounts:
            for field in ("spent_nanousd", "held_nanousd", "limit_nanousd"):
                self.assertIsInstance(a[field], int, f"{a['account']}.{field}")
        return {a["account"]: a for a in accounts}

    def settled(self) -> Dict[str, Dict[str, Any]]:
        """The ledger once no hold is open (a settlement may follow the answer by a moment)."""
        for _ in range(500):
            s = self.status()
            if all(a["held_nanousd"] == 0 for a in s.values()):
                return s
            time.sleep(0.02)
        self.fail(f"holds still open 10 s after the last answer: {s}")

    def billed(self) -> int:
        """What the emulator (OpenRouter) billed the proxy's upstream key, nano-USD."""
        keys = [k for k in json.loads(self.ctl("keys", "list", "--json"))["keys"] if k["hash"] == self.upstream_hash]
        self.assertEqual(len(keys), 1)
        self.assertIsInstance(keys[0]["usage_nanousd"], int)
        return keys[0]["usage_nanousd"]

    def chat(self, key: Optional[str], model: str = "openai/gpt-4o-mini", path: str = "/api/v1/chat/completions",
             **fields: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.http.post(path, json={"model": model, "messages": MESSAGES, **fields}, headers=headers)

    def proxy_log(self) -> str:
        with open(self.log, encoding="utf-8") as f:
            return f.read()

    def request_lines(self) -> List[str]:
        return [l for l in self.proxy_log().splitlines() if 'msg="request"' in l]

    def assert_error(self, r: httpx.Response, status: int, type_: str, code: str) -> Dict[str, Any]:
        """An error in OpenAI's shape: {"error": {"message", "type", "code"}}, as JSON."""
        self.assertEqual(r.status_code, status, r.text)
        self.assertTrue(r.headers["content-type"].startswith("application/json"), r.headers)
        body = r.json()
        self.assertEqual(set(body), {"error"}, body)
        error = body["error"]
        self.assertEqual(set(error), {"message", "type", "code"}, error)
        self.assertIsInstance(error["message"], str)
        self.assertTrue(error["message"])
        self.assertEqual(error["type"], type_)
        self.assertEqual(error["code"], code)
        self.assertNotIn("lk-", r.text)  # no key echoed
        return error

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([CURL, "-sS", "--max-time", "60", *args], capture_output=True, text=True, timeout=90)

    # --- the cases ---

    def test_1_plain_chat(self) -> None:
        for path in ("/api/v1/chat/completions", "/v1/chat/completions"):
            r = self.chat(self.keys["alice"], path=path, max_tokens=40)
            self.assertEqual(r.status_code, 200, r.text)
            self.assertTrue(r.headers["content-type"].startswith("application/json"))
            body = r.json()
            self.assertEqual(body["object"], "chat.completion")
            self.assertEqual(body["model"], "openai/gpt-4o-mini")
            self.assertEqual(body["choices"][0]["message"]["role"], "assistant")
            self.assertTrue(body["choices"][0]["message"]["content"])
            self.assertEqual(body["choices"][0]["finish_reason"], "stop")
            self.assertLessEqual(body["usage"]["completion_tokens"], 40)
            self.assertGreater(nano_of_usd(json.loads(r.text, parse_float=Decimal)["usage"]["cost"]), 0)
            self.assertEqual(r.headers["x-generation-id"], body["id"])

    def test_2_streamed_chat(self) -> None:
        body = {"model": "openai/gpt-4o", "messages": MESSAGES, "stream": True}
        with self.http.stream("POST", "/api/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {self.keys['alice']}"}) as r:
            self.assertEqual(r.status_code, 200)
            self.assertTrue(r.headers["content-type"].startswith("text/event-stream"), r.headers)
            lines = [line.rstrip("\r\n") for line in r.iter_lines()]  # httpx < 0.24 keeps the line ends
            events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
        self.assertEqual(events[-1], "[DONE]", "the stream ends with [DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        content = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
        self.assertGreater(len(content), 1, "content came in chunks")
        self.assertIn("openai/gpt-4o", "".join(content))
        self.assertEqual([c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")],
                         ["stop"])
        self.assertTrue(chunks[-1].get("usage"), "the last chunk carries usage (the proxy asks for it)")
        self.assertEqual({c["id"] for c in chunks}, {chunks[0]["id"]})

    def test_3_budget_denial_is_429_not_to_retry(self) -> None:
        before = len([l for l in self.request_lines() if " status=429 " in l])
        r = self.chat(self.keys["carol"], max_tokens=100000)  # more than carol's $0.001 can hold
        error = self.assert_error(r, 429, "insufficient_quota", "budget_exceeded")
        self.assertIn("carol", error["message"])
        self.assertEqual(r.headers.get("x-should-retry"), "false")
        # Streamed or not, the same denial (nothing was started).
        r = self.chat(self.keys["carol"], max_tokens=100000, stream=True)
        self.assert_error(r, 429, "insufficient_quota", "budget_exceeded")
        self.assertEqual(r.headers.get("x-should-retry"), "false")
        time.sleep(0.2)
        self.assertEqual(len([l for l in self.request_lines() if " status=429 code=budget_exceeded account=carol " in l]) - before, 2)

    def test_4_model_not_allowed_is_403(self) -> None:
        r = self.chat(self.keys["alice"], model="anthropic/claude-3.5-sonnet")
        error = self.assert_error(r, 403, "permission_error", "model_not_allowed")
        self.assertIn("anthropic/claude-3.5-sonnet", error["message"])
        # carol's tier has a fallback: the same kind of ask is answered by it.
        r = self.chat(self.keys["carol"], model="openai/gpt-4o", max_tokens=5)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["model"], "openai/gpt-4o-mini")

    def test_5_end_user_attribution(self) -> None:
        before = self.settled()
        own = lambda s: s["eng"]["spent_nanousd"] - sum(s[a]["spent_nanousd"] for a in ("alice", "bob", "carol"))  # noqa: E731
        r = self.chat(self.keys["eng"], user="bob", max_tokens=10)
        self.assertEqual(r.status_code, 200, r.text)
        cost = nano_of_usd(json.loads(r.text, parse_float=Decimal)["usage"]["cost"])
        after = self.settled()
        self.assertEqual(after["bob"]["spent_nanousd"] - before["bob"]["spent_nanousd"], cost, "bob was charged what it cost")
        self.assertEqual(after["bob"]["requests"] - before["bob"]["requests"], 1)
        self.assertEqual(own(after), own(before), "not the team key owner's own spend")
        self.assertEqual(after["eng"]["spent_nanousd"] - before["eng"]["spent_nanousd"], cost, "the team's total includes it")
        for a in ("alice", "carol", "other"):
            self.assertEqual(after[a]["spent_nanousd"], before[a]["spent_nanousd"], a)
        self.assertIn(" status=200 account=bob model=openai/gpt-4o-mini ", self.request_lines()[-1])
        # Without `user`, the team's key charges the team itself.
        r = self.chat(self.keys["eng"], max_tokens=10)
        self.assertEqual(r.status_code, 200, r.text)
        cost = nano_of_usd(json.loads(r.text, parse_float=Decimal)["usage"]["cost"])
        last = self.settled()
        self.assertEqual(own(last) - own(after), cost)
        self.assertEqual(last["bob"]["spent_nanousd"], after["bob"]["spent_nanousd"])
        # A key may not name an account outside its subtree (a sibling, another root).
        self.assert_error(self.chat(self.keys["alice"], user="bob"), 403, "permission_error", "user_not_allowed")
        self.assert_error(self.chat(self.keys["eng"], user="other"), 403, "permission_error", "user_not_allowed")

    def test_6_revoked_key_is_refused_within_a_second(self) -> None:
        key = self.keys["other"]
        self.assertEqual(self.chat(key, max_tokens=5).status_code, 200)
        listed = [k for k in json.loads(self.ctl("proxy-key", "list", "--json"))["keys"] if k["account"] == "other"]
        self.assertEqual(len(listed), 1)
        self.assertEqual(listed[0]["revoked_unix"], 0)
        self.ctl("proxy-key", "revoke", listed[0]["id"])
        revoked = time.monotonic()
        while True:
            r = self.chat(key, max_tokens=5)
            if r.status_code != 200 or time.monotonic() - revoked > 1.0:
                break
            time.sleep(0.02)
        self.assertLess(time.monotonic() - revoked, 1.0, "refused within a second of the revoke")
        self.assert_error(r, 401, "invalid_request_error", "invalid_api_key")
        self.assert_error(self.chat(key, max_tokens=5), 401, "invalid_request_error", "invalid_api_key")  # and after
        listed = [k for k in json.loads(self.ctl("proxy-key", "list", "--json"))["keys"] if k["account"] == "other"]
        self.assertGreater(listed[0]["revoked_unix"], 0)
        # The other keys still work.
        self.assertEqual(self.chat(self.keys["alice"], max_tokens=5).status_code, 200)

    @unittest.skipUnless(CURL, "curl is not installed (scripts/setup.sh installs it)")
    def test_7_curl(self) -> None:
        url = self.base + "/api/v1/chat/completions"
        auth = f"Authorization: Bearer {self.keys['alice']}"
        body = json.dumps({"model": "openai/gpt-4o-mini", "messages": MESSAGES, "max_tokens": 8})
        r = self.curl("-H", auth, "-H", "Content-Type: application/json", "--data", body, "-w", "\n%{http_code}", url)
        self.assertEqual(r.returncode, 0, r.stderr)
        text, status = r.stdout.rsplit("\n", 1)
        self.assertEqual(status, "200")
        self.assertEqual(json.loads(text)["choices"][0]["finish_reason"], "stop")
        # Streamed, unbuffered (-N): server-sent events to the end.
        streamed = json.dumps({"model": "openai/gpt-4o-mini", "messages": MESSAGES, "stream": True})
        r = self.curl("-N", "-H", auth, "-H", "Content-Type: application/json", "--data", streamed, url)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [l for l in r.stdout.splitlines() if l.startswith("data: ")]
        self.assertGreater(len(lines), 2)
        self.assertEqual(lines[-1], "data: [DONE]")
        # A denial, its headers included (-D -).
        denied = json.dumps({"model": "openai/gpt-4o-mini", "messages": MESSAGES, "max_tokens": 100000})
        r = self.curl("-D", "-", "-H", f"Authorization: Bearer {self.keys['carol']}", "-H", "Content-Type: application/json",
                      "--data", denied, url)
        self.assertEqual(r.returncode, 0, r.stderr)
        head, _, text = r.stdout.replace("\r\n", "\n").partition("\n\n")
        self.assertTrue(head.startswith("HTTP/1.1 429 "), head)
        self.assertIn("x-should-retry: false", head.lower())
        self.assertEqual(json.loads(text)["error"]["code"], "budget_exceeded")
        # No key: 401.
        r = self.curl("-H", "Content-Type: application/json", "--data", body, "-w", "\n%{http_code}", url)
        text, status = r.stdout.rsplit("\n", 1)
        self.assertEqual(status, "401")
        self.assertEqual(json.loads(text)["error"]["code"], "invalid_api_key")

    def test_9_ledger_equals_billed_and_no_key_in_the_log(self) -> None:
        s = self.settled()
        spent = sum(a["spent_nanousd"] for a in s.values() if a["parent"] == "")
        billed = self.billed()
        self.assertGreater(billed, 0)
        self.assertEqual(spent, billed, "the ledger's spend is what the upstream key was billed, to the nano-USD")
        self.assertGreater(s["other"]["spent_nanousd"], 0)  # the revoked key's request before the revoke
        self.assertEqual(stop(type(self).proxy), 0, "SIGTERM: the proxy exits 0")
        log = self.proxy_log()
        self.assertIn('msg="stopped"', log)
        self.assertNotIn("lk-", log)
        self.assertNotIn("sk-or-", log)
        self.assertNotIn("hello there", log)  # nor prompt text
        for key in self.keys.values():
            self.assertNotIn(key[3:], log)


if __name__ == "__main__":
    unittest.main(verbosity=2)
