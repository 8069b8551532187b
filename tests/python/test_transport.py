"""ledger.httpx against the real openrouter-emulator binary over loopback and a real ledger (made
by the real ledgerctl from a config with tiers): replies and streams settled with their real cost
(ledger == the key's usage at the emulator, to the nano-USD), denials answered locally as 429/403
that an openai-SDK-like client does not retry, fallbacks and downgrades visible as the answered
model, streams closed early or cut off, upstream errors (holds released), the async transport, and
no key in any log line or error.

Needs LEDGER_LIBRARY, LEDGER_EMULATOR, LEDGERCTL (ctest passes them; see support.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import unittest
from typing import Any, Callable, Dict, List, Optional

import httpx

import support
import ledger
from ledger.httpx import AsyncLedgerTransport, LedgerTransport
from openai_like import OpenAILike, PermissionDeniedError, RateLimitError

MINI, GPT4O, CLAUDE = "openai/gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-3.5-sonnet"
LLAMA, GEMMA = "meta-llama/llama-3.1-8b-instruct", "google/gemma-2-9b-it:free"
APP_URL, APP_TITLE = "https://tests.example", "ledger-tests"
CONFIG = {
    "ledger": {"dir": "ledger", "max_accounts": 64},
    "tiers": {
        "free": {"models": [GEMMA]},
        "basic": {"models": [MINI, LLAMA], "fallback": MINI},
        "pro": {"models": [MINI, GPT4O, CLAUDE], "downgrade_at_percent": 50, "downgrade_to": MINI},
        "enterprise": {"models": None},
    },
    # The emulator's prices, so that every hold is an upper bound of what the emulator bills.
    "prices": {MINI: {"prompt_usd_per_mtok": "0.15", "completion_usd_per_mtok": "0.60"},
               GPT4O: {"prompt_usd_per_mtok": "2.50", "completion_usd_per_mtok": "10"},
               CLAUDE: {"prompt_usd_per_mtok": "3", "completion_usd_per_mtok": "15"},
               LLAMA: {"prompt_usd_per_mtok": "0.02", "completion_usd_per_mtok": "0.05"},
               GEMMA: {"prompt_usd_per_mtok": "0", "completion_usd_per_mtok": "0"}},
    "accounts": [
        {"id": "eng", "limit_usd": "5", "period": "daily"},
        {"id": "alice", "parent": "eng", "tier": "pro", "limit_usd": "1", "period": "daily"},
        {"id": "bob", "parent": "eng", "tier": "basic", "limit_usd": "1", "period": "daily"},
        {"id": "fay", "parent": "eng", "tier": "free", "limit_usd": "1", "period": "daily"},
        {"id": "eve", "parent": "eng", "tier": "enterprise", "limit_usd": "0.00001", "period": "daily"},
        {"id": "poor-team", "limit_usd": "0.00001", "period": "daily"},
        {"id": "carl", "parent": "poor-team", "tier": "enterprise", "limit_usd": "1", "period": "daily"},
    ],
}
MEMBERS = ("alice", "bob", "fay", "eve", "carl")
MESSAGES = [{"role": "user", "content": "How many budgets does a team need? Answer in one line."}]


class _Tee(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream) -> None:
        self.inner, self.data = inner, b""

    def __iter__(self):
        for chunk in self.inner:
            self.data += chunk
            yield chunk

    def close(self) -> None:
        self.inner.close()


class Recording(httpx.BaseTransport):
    """A pass-through in front of the real HTTP transport: what went upstream, and the bytes that
    came back, as they were (no mock: every request reaches the emulator)."""

    def __init__(self, on_forward: Optional[Callable[[httpx.Request], None]] = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: List[httpx.Request] = []
        self.replies: List[_Tee] = []
        self.on_forward = on_forward

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.on_forward and request.url.path.endswith("/chat/completions"):
            self.on_forward(request)
        response = self.inner.handle_request(request)
        tee = _Tee(response.stream)  # type: ignore[arg-type]
        self.replies.append(tee)
        return httpx.Response(response.status_code, headers=response.headers, stream=tee,
                              extensions=response.extensions)

    def chats(self) -> List[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith("/chat/completions")]

    def close(self) -> None:
        self.inner.close()


class _Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


EMULATOR: Optional[support.Emulator] = None
LOGS = _Logs()
SECRETS: List[str] = []


def setUpModule() -> None:
    global EMULATOR
    EMULATOR = support.Emulator()
    SECRETS.append(EMULATOR.management_key)
    logger = logging.getLogger("ledger")
    logger.addHandler(LOGS)
    logger.setLevel(logging.DEBUG)


def tearDownModule() -> None:
    logging.getLogger("ledger").removeHandler(LOGS)
    if EMULATOR is not None:
        EMULATOR.stop()
    # Secrets stay secret: no key in any log line of the whole run.
    for line in LOGS.lines:
        assert "sk-or-" not in line, line
        for secret in SECRETS:
            assert secret not in line, "a key in a log line"


class Base(unittest.TestCase):
    def setUp(self) -> None:
        assert EMULATOR is not None
        self.emu = EMULATOR
        self.emu.settings(generation_not_ready_ms=0)
        self.key, self.key_hash = self.emu.create_key(self.id().rsplit(".", 1)[-1])
        SECRETS.append(self.key)
        self.dir = tempfile.mkdtemp(prefix="ledger-py-transport-")
        support.ledgerctl_init(CONFIG, self.dir)
        self.led = ledger.Ledger.open(os.path.join(self.dir, "ledger"))
        self.upstream = Recording()
        self.clients: List[httpx.Client] = []

    def tearDown(self) -> None:
        for c in self.clients:
            c.close()
        self.led.close()
        ledger.destroy_segment(os.path.join(self.dir, "ledger"))
        shutil.rmtree(self.dir, ignore_errors=True)

    def transport(self, **options: Any) -> LedgerTransport:
        options.setdefault("account", "alice")
        options.setdefault("app_url", APP_URL)
        options.setdefault("app_title", APP_TITLE)
        options.setdefault("generation_lookup_interval_s", 0.05)
        return LedgerTransport(self.led, self.upstream, **options)

    def client(self, **options: Any) -> httpx.Client:
        c = httpx.Client(transport=self.transport(**options), base_url=self.emu.base,
                         headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        self.clients.append(c)
        return c

    def openai(self, max_retries: int = 2, **options: Any) -> OpenAILike:
        return OpenAILike(self.key, self.emu.base, self.client(**options), max_retries=max_retries, delay_scale=0.01)

    def spent(self, account: str) -> int:
        return self.led.balance(account).spent_nanousd

    def assert_ledger_is_the_key(self) -> None:
        """Everything that went through the key is in the ledger, to the nano-USD; nothing is held."""
        total = sum(self.spent(a) for a in MEMBERS)
        self.assertEqual(total, self.emu.key_usage_nanousd(self.key_hash))
        for a in MEMBERS + ("eng", "poor-team"):
            self.assertEqual(self.led.balance(a).held_nanousd, 0, a)

    def assert_local_error(self, response: httpx.Response, status: int, code: str, error_type: str) -> Dict[str, Any]:
        self.assertEqual(response.status_code, status, response.text)
        self.assertEqual(response.headers["x-should-retry"], "false")
        body = response.json()
        self.assertEqual((body["error"]["code"], body["error"]["type"]), (code, error_type))
        self.assertTrue(body["error"]["message"])
        self.assertNotIn(self.key, response.text)
        self.assertNotIn("sk-or-", response.text)
        return body


class Replies(Base):
    def test_a_reply_is_committed_with_its_cost_and_attributed(self) -> None:
        held_at_send: List[int] = []
        self.upstream.on_forward = lambda _: held_at_send.append(self.led.balance("alice").held_nanousd)
        c = self.client()
        body = {"model": MINI, "messages": MESSAGES}
        r = c.post("/chat/completions", json=body, headers={"X-Ledger-Account": "alice"})
        self.assertEqual(r.status_code, 200, r.text)
        reply = r.json()
        self.assertEqual(reply["model"], MINI)
        cost = ledger.cost_nanousd(reply["usage"]["cost"])
        self.assertGreater(cost, 0)
        b = self.led.balance("alice")
        self.assertEqual((b.spent_nanousd, b.requests, b.held_nanousd), (cost, 1, 0))
        self.assertEqual(self.spent("eng"), cost)
        self.assert_ledger_is_the_key()
        # What went upstream: the chosen model, max_tokens inserted, usage asked for, the user and
        # the attribution headers; the account header stripped; the key passed as it was.
        (sent,) = self.upstream.chats()
        payload = json.loads(sent.content)
        self.assertEqual(payload["model"], MINI)
        self.assertEqual(payload["max_tokens"], 4096)
        self.assertEqual(payload["usage"], {"include": True})
        self.assertEqual(payload["user"], "alice")
        self.assertEqual(payload["messages"], MESSAGES)
        self.assertEqual(sent.headers["HTTP-Referer"], APP_URL)
        self.assertEqual(sent.headers["X-OpenRouter-Title"], f"{APP_TITLE}:alice")
        self.assertEqual(sent.headers["X-Title"], f"{APP_TITLE}:alice")
        self.assertNotIn("x-ledger-account", sent.headers)
        self.assertEqual(sent.headers["authorization"], f"Bearer {self.key}")
        self.assertEqual(int(sent.headers["content-length"]), len(sent.content))
        # The hold at send time was the estimate: ceil(body bytes / 3) prompt tokens + 4096.
        original = json.dumps(body).encode()
        self.assertEqual(held_at_send, [self.led.estimate(MINI, math.ceil(len(original) / 3), 4096)])
        # OpenRouter's side saw the attribution (the emulator records the referer and the user).
        status, generation = self.emu.generation(reply["id"], self.key)
        self.assertEqual(status, 200)
        self.assertEqual((generation["data"]["external_user"], generation["data"]["http_referer"]), ("alice", APP_URL))
        self.assertEqual(ledger.cost_nanousd(generation["data"]["total_cost"]), cost)

    def test_max_tokens_given_are_kept_and_bound_the_hold(self) -> None:
        held: List[int] = []
        self.upstream.on_forward = lambda _: held.append(self.led.balance("alice").held_nanousd)
        c = self.client(max_tokens_default=100)
        for extra, bound in (({}, 100), ({"max_tokens": 30}, 30), ({"max_completion_tokens": 40}, 40),
                             ({"max_tokens": 30, "max_completion_tokens": 50}, 50), ({"max_tokens": 10, "n": 3}, 30)):
            body = dict({"model": MINI, "messages": MESSAGES}, **extra)
            r = c.post("/chat/completions", json=body)
            self.assertEqual(r.status_code, 200, r.text)
            sent = json.loads(self.upstream.chats()[-1].content)
            self.assertEqual(sent.get("max_tokens"), extra.get("max_tokens", 100 if not extra else None))
            self.assertEqual(held[-1], self.led.estimate(MINI, math.ceil(len(json.dumps(body).encode()) / 3), bound))
        for bad in ({"max_tokens": 0}, {"max_tokens": -5}, {"max_tokens": "10"}, {"max_completion_tokens": 1.5},
                    {"max_tokens": True}, {"n": 0}, {"max_tokens": 2**31, "n": 4}):
            r = c.post("/chat/completions", json=dict({"model": MINI, "messages": MESSAGES}, **bad))
            self.assert_local_error(r, 400, "invalid_request", "invalid_request_error")
        for raw in (b"not json", b"[1, 2]", b'{"messages": []}',
                    json.dumps({"model": MINI, "models": [MINI, GPT4O], "messages": MESSAGES}).encode()):
            r = c.post("/chat/completions", content=raw, headers={"content-type": "application/json"})
            self.assert_local_error(r, 400, "invalid_request", "invalid_request_error")
        self.assertEqual(len(self.upstream.chats()), 5)  # none of the bad ones was sent
        self.assert_ledger_is_the_key()

    def test_the_account_comes_from_the_header_or_the_transport(self) -> None:
        c = self.client()
        r = c.post("/chat/completions", json={"model": MINI, "messages": MESSAGES}, headers={"X-Ledger-Account": "bob"})
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(self.spent("bob"), ledger.cost_nanousd(r.json()["usage"]["cost"]))
        self.assertEqual(self.spent("alice"), 0)
        self.assertEqual(json.loads(self.upstream.chats()[-1].content)["user"], "bob")
        self.assertEqual(self.upstream.chats()[-1].headers["X-Title"], f"{APP_TITLE}:bob")
        anonymous = self.client(account=None, app_title=None, app_url=None)
        r = anonymous.post("/chat/completions", json={"model": MINI, "messages": MESSAGES})
        self.assert_local_error(r, 400, "invalid_request", "invalid_request_error")
        self.assertIn("X-Ledger-Account", r.json()["error"]["message"])
        r = anonymous.post("/chat/completions", json={"model": MINI, "messages": MESSAGES},
                           headers={"X-Ledger-Account": "fay"})
        self.assert_local_error(r, 403, "model_not_allowed", "permission_denied")
        r = anonymous.post("/chat/completions", json={"model": GEMMA, "messages": MESSAGES},
                           headers={"X-Ledger-Account": "fay"})
        self.assertEqual(r.status_code, 200, r.text)
        sent = self.upstream.chats()[-1]
        self.assertEqual(sent.headers["X-Title"], "fay")  # no app title: the account names itself
        self.assertNotIn("HTTP-Referer", sent.headers)
        r = anonymous.post("/chat/completions", json={"model": MINI, "messages": MESSAGES},
                           headers={"X-Ledger-Account": "nobody"})
        self.assert_local_error(r, 400, "unknown_account", "invalid_request_error")
        r = anonymous.post("/chat/completions", json={"model": MINI, "messages": MESSAGES},
                           headers={"X-Ledger-Account": "bad name!"})
        self.assert_local_error(r, 400, "invalid_ledger_argument", "invalid_request_error")
        # Anything but chat completions passes through, the account header stripped.
        r = anonymous.get("/models", headers={"X-Ledger-Account": "fay"})
        self.assertEqual(r.status_code, 200)
        self.assertIn(MINI, r.text)
        self.assertNotIn("x-ledger-account", self.upstream.requests[-1].headers)
        self.assertEqual(len(self.upstream.chats()), 2)
        self.assert_ledger_is_the_key()

    def test_a_key_hash_goes_to_authorize_via(self) -> None:
        r = self.client(key_hash=self.key_hash).post("/chat/completions", json={"model": MINI, "messages": MESSAGES})
        self.assertEqual(r.status_code, 200, r.text)
        r = self.client(key_hash=self.key_hash[:12]).post("/chat/completions", json={"model": MINI, "messages": MESSAGES})
        self.assertEqual(r.status_code, 200, r.text)  # the unique prefix of the key just registered
        r = self.client(key_hash="0123456789ab").post("/chat/completions", json={"model": MINI, "messages": MESSAGES})
        self.assert_local_error(r, 400, "invalid_ledger_argument", "invalid_request_error")
        self.assertEqual(len(self.upstream.chats()), 2)
        self.assert_ledger_is_the_key()

    def test_an_unpriced_model_is_refused_locally(self) -> None:
        r = self.client(account="carl").post("/chat/completions", json={"model": "mistral/unpriced", "messages": MESSAGES})
        body = self.assert_local_error(r, 400, "model_price_unknown", "invalid_request_error")
        self.assertIn("mistral/unpriced", body["error"]["message"])
        self.assertEqual(self.upstream.chats(), [])


class Denials(Base):
    def test_over_budget_is_a_429_the_sdk_does_not_retry(self) -> None:
        generations = self.emu.state()["generations"]
        client = self.openai(account="eve")
        with self.assertRaises(RateLimitError) as e:
            client.chat_completions_create(model=MINI, messages=MESSAGES)
        self.assertEqual((e.exception.status_code, e.exception.code, e.exception.type),
                         (429, "budget_exceeded", "insufficient_quota"))
        self.assertEqual(e.exception.response.headers["x-should-retry"], "false")
        self.assertEqual(len(client.attempts), 1)  # not retried
        self.assertEqual(self.upstream.requests, [])  # never sent
        self.assertEqual(self.emu.state()["generations"], generations)
        client = self.openai(account="carl")
        with self.assertRaises(RateLimitError) as e:
            client.chat_completions_create(model=MINI, messages=MESSAGES, stream=True)
        self.assertEqual(e.exception.code, "parent_budget_exceeded")
        self.assertEqual(len(client.attempts), 1)
        self.assertEqual(self.upstream.requests, [])
        self.assert_ledger_is_the_key()

    def test_an_upstream_429_is_retried_and_its_hold_released(self) -> None:
        # The same client does retry a 429 that does not say x-should-retry: false (OpenRouter's own).
        self.emu.fault(path="/api/v1/chat/completions", status=429, retry_after_s=0, count=1)
        client = self.openai()
        reply = client.chat_completions_create(model=MINI, messages=MESSAGES)
        self.assertEqual(len(client.attempts), 2)
        self.assertEqual(client.attempts[1].headers["X-Stainless-Retry-Count"], "1")
        self.assertEqual(len(self.upstream.chats()), 2)
        b = self.led.balance("alice")
        self.assertEqual((b.spent_nanousd, b.requests, b.held_nanousd), (ledger.cost_nanousd(reply["usage"]["cost"]), 1, 0))
        self.assert_ledger_is_the_key()

    def test_threads_sharing_a_client_until_the_budget_bites(self) -> None:
        self.led.set_budget("bob", ledger.usd("0.0005"), ledger.DAILY, "eng")
        c = self.client(account="bob")
        outcomes: List[int] = []

        def worker() -> None:
            for _ in range(200):
                r = c.post("/chat/completions", json={"model": MINI, "messages": MESSAGES, "max_tokens": 50})
                outcomes.append(r.status_code)
                if r.status_code == 429:
                    return

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(set(outcomes), {200, 429})
        self.assertEqual(outcomes.count(429), 8)
        b = self.led.balance("bob")
        self.assertEqual(b.requests, outcomes.count(200))
        self.assertLessEqual(b.spent_nanousd, b.limit_nanousd)
        self.assertLess(b.available_nanousd, self.led.estimate(MINI, 60, 50))  # spent to the last request
        self.assert_ledger_is_the_key()

    def test_model_not_allowed_and_blocked_are_403s(self) -> None:
        client = self.openai(account="fay")
        with self.assertRaises(PermissionDeniedError) as e:
            client.chat_completions_create(model=GPT4O, messages=MESSAGES)
        self.assertEqual((e.exception.status_code, e.exception.code), (403, "model_not_allowed"))
        self.assertEqual(len(client.attempts), 1)
        self.led.block("bob")
        client = self.openai(account="bob")
        with self.assertRaises(PermissionDeniedError) as e:
            client.chat_completions_create(model=MINI, messages=MESSAGES)
        self.assertEqual((e.exception.code, e.exception.type), ("account_blocked", "permission_denied"))
        self.assertEqual(self.upstream.requests, [])

    def test_fallback_and_downgrade_show_as_the_answered_model(self) -> None:
        bob = self.openai(account="bob")  # basic: claude is not in the tier, its fallback is mini
        reply = bob.chat_completions_create(model=CLAUDE, messages=MESSAGES)
        self.assertEqual(reply["model"], MINI)
        self.assertEqual(json.loads(self.upstream.chats()[-1].content)["model"], MINI)
        alice = self.openai()  # pro: gpt-4o until 50 % of her budget, then mini
        self.assertEqual(alice.chat_completions_create(model=GPT4O, messages=MESSAGES)["model"], GPT4O)
        self.led.debit("alice", ledger.usd("0.5"))
        chunks = list(alice.chat_completions_create(model=GPT4O, messages=MESSAGES, stream=True))
        self.assertEqual({c["model"] for c in chunks}, {MINI})
        self.led.release(self.led.reserve("alice", 1))  # (the debit is not the key's)
        self.assertEqual(sum(self.spent(a) for a in MEMBERS) - ledger.usd("0.5"),
                         self.emu.key_usage_nanousd(self.key_hash))


class Streams(Base):
    def stream_body(self, **extra: Any) -> Dict[str, Any]:
        return dict({"model": MINI, "messages": MESSAGES, "stream": True}, **extra)

    def test_a_stream_passes_untouched_and_is_committed_from_its_last_chunk(self) -> None:
        c = self.client()
        received = b""
        with c.stream("POST", "/chat/completions", json=self.stream_body()) as r:
            self.assertEqual(r.status_code, 200)
            self.assertEqual(r.headers["content-type"], "text/event-stream")
            for part in r.iter_raw():
                received += part
        self.assertEqual(received, self.upstream.replies[-1].data)  # byte for byte what came upstream
        text = received.decode()
        self.assertTrue(text.startswith(": OPENROUTER PROCESSING\n\n"))
        self.assertTrue(text.endswith("data: [DONE]\n\n"))
        usage = json.loads(text.split("data: ")[-2])["usage"]
        b = self.led.balance("alice")
        self.assertEqual((b.spent_nanousd, b.requests), (ledger.cost_nanousd(usage["cost"]), 1))
        self.assert_ledger_is_the_key()
        # Through the SDK-like client: the content, chunk by chunk, then the same settlement.
        chunks = list(self.openai().chat_completions_create(**self.stream_body()))
        content = "".join(ch["choices"][0]["delta"]["content"] for ch in chunks if ch["choices"])
        self.assertTrue(content.startswith("Emulated reply"))
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(self.led.balance("alice").requests, 2)
        self.assert_ledger_is_the_key()

    def test_a_stream_closed_early_is_settled_from_the_generation(self) -> None:
        c = self.client()
        with c.stream("POST", "/chat/completions", json=self.stream_body()) as r:
            first = next(r.iter_bytes())
            self.assertIn(b"OPENROUTER PROCESSING", first)
            self.assertEqual(self.led.balance("alice").requests, 0)  # held, not settled yet
        generation_id = r.headers["x-generation-id"]
        status, generation = self.emu.generation(generation_id, self.key)
        self.assertEqual(status, 200)
        b = self.led.balance("alice")
        self.assertEqual((b.spent_nanousd, b.requests, b.held_nanousd),
                         (ledger.cost_nanousd(generation["data"]["total_cost"]), 1, 0))
        self.assertIn(f"/generation?id={generation_id}", str(self.upstream.requests[-1].url))
        self.assert_ledger_is_the_key()

    def test_a_truncated_stream_is_settled_from_the_generation(self) -> None:
        self.emu.fault(path="/api/v1/chat/completions", body="truncated")
        c = self.client()
        with self.assertRaises(httpx.RemoteProtocolError):
            with c.stream("POST", "/chat/completions", json=self.stream_body()) as r:
                for _ in r.iter_bytes():
                    pass
        self.assertEqual(self.led.balance("alice").requests, 1)
        self.assert_ledger_is_the_key()

    def test_a_stream_whose_cost_never_comes_is_committed_in_full(self) -> None:
        self.emu.settings(generation_not_ready_ms=600_000)  # /generation answers 404 throughout
        self.emu.fault(path="/api/v1/chat/completions", body="truncated")
        held: List[int] = []
        self.upstream.on_forward = lambda _: held.append(self.led.balance("alice").held_nanousd)
        c = self.client(generation_lookups=3)
        with self.assertRaises(httpx.RemoteProtocolError):
            with c.stream("POST", "/chat/completions", json=self.stream_body()) as r:
                for _ in r.iter_bytes():
                    pass
        self.assertEqual(len([u for u in self.upstream.requests if "/generation" in str(u.url)]), 3)
        b = self.led.balance("alice")
        self.assertEqual((b.spent_nanousd, b.requests, b.held_nanousd), (held[0], 1, 0))  # the whole hold
        self.assertGreaterEqual(b.spent_nanousd, self.emu.key_usage_nanousd(self.key_hash))  # never under
        self.assertTrue(any("committing the hold in full" in line for line in LOGS.lines))

    def test_lookups_wait_no_longer_than_the_client_allows(self) -> None:
        self.emu.fault(path="/api/v1/chat/completions", body="truncated")
        self.emu.fault(path="/api/v1/generation", delay_ms=2000, count=3)  # OpenRouter silent on /generation
        transport = self.transport(generation_lookups=3)
        c = httpx.Client(transport=transport, base_url=self.emu.base, timeout=0.3,
                         headers={"Authorization": f"Bearer {self.key}"})
        self.clients.append(c)
        start = time.monotonic()
        with self.assertRaises(httpx.RemoteProtocolError):
            with c.stream("POST", "/chat/completions", json=self.stream_body()) as r:
                for _ in r.iter_bytes():
                    pass
        elapsed = time.monotonic() - start
        self.assertLess(elapsed, 1.9)  # 3 lookups of at most 0.3 s each, 0.05 s apart
        b = self.led.balance("alice")
        self.assertEqual((b.requests, b.held_nanousd), (1, 0))  # committed in full, not left hanging
        self.assertGreaterEqual(b.spent_nanousd, self.emu.key_usage_nanousd(self.key_hash))

    def test_an_upstream_500_releases_the_hold(self) -> None:
        self.emu.fault(path="/api/v1/chat/completions", status=500, count=1)
        r = self.client().post("/chat/completions", json={"model": MINI, "messages": MESSAGES})
        self.assertEqual(r.status_code, 500)  # OpenRouter's error, passed through
        self.assertEqual(r.json()["error"]["code"], 500)
        b = self.led.balance("alice")
        self.assertEqual((b.spent_nanousd, b.requests, b.held_nanousd), (0, 0, 0))
        self.emu.fault(path="/api/v1/chat/completions", status=502, count=1)
        client = self.openai()  # the SDK retries a 5xx: one hold released, one committed
        chunks = list(client.chat_completions_create(**self.stream_body()))
        self.assertEqual(len(client.attempts), 2)
        self.assertTrue(chunks)
        self.assertEqual(self.led.balance("alice").requests, 1)
        self.assert_ledger_is_the_key()

    def test_a_truncated_reply_is_settled_from_the_generation(self) -> None:
        self.emu.fault(path="/api/v1/chat/completions", body="truncated")
        with self.assertRaises(httpx.RemoteProtocolError):
            self.client().post("/chat/completions", json={"model": MINI, "messages": MESSAGES})
        self.assertEqual(self.led.balance("alice").requests, 1)
        self.assert_ledger_is_the_key()


    def test_a_malformed_reply_or_chunk_is_still_settled_to_the_nano_usd(self) -> None:
        self.emu.fault(path="/api/v1/chat/completions", body="malformed")  # a reply that is not JSON
        r = self.client().post("/chat/completions", json={"model": MINI, "messages": MESSAGES})
        self.assertEqual(r.status_code, 200)
        with self.assertRaises(ValueError):
            r.json()
        self.assertEqual(self.led.balance("alice").requests, 1)  # its cost came from /generation
        self.assert_ledger_is_the_key()
        self.emu.fault(path="/api/v1/chat/completions", body="malformed")  # a chunk mid-stream that is not JSON
        with self.client().stream("POST", "/chat/completions", json=self.stream_body()) as s:
            text = b"".join(s.iter_raw()).decode()
        self.assertIn('data: {"id": oops', text)  # passed through as it came
        self.assertEqual(self.led.balance("alice").requests, 2)
        self.assertEqual(len([u for u in self.upstream.requests if "/generation" in str(u.url)]), 1)  # the usage chunk did
        self.assert_ledger_is_the_key()

    def test_settings_are_checked(self) -> None:
        for bad in ({"max_tokens_default": 0}, {"max_tokens_default": 2**32}, {"ttl_seconds": -1},
                    {"generation_lookups": -1}, {"generation_lookup_interval_s": -0.5}):
            with self.assertRaises(ValueError, msg=repr(bad)):
                LedgerTransport(self.led, **bad)
        with self.assertRaises(TypeError):
            LedgerTransport(object())  # type: ignore[arg-type]


class Async(Base):
    def test_the_async_transport(self) -> None:
        async def run() -> None:
            transport = AsyncLedgerTransport(self.led, httpx.AsyncHTTPTransport(), account="alice",
                                             app_title=APP_TITLE, generation_lookup_interval_s=0.05)
            async with httpx.AsyncClient(transport=transport, base_url=self.emu.base, timeout=30,
                                         headers={"Authorization": f"Bearer {self.key}"}) as c:
                r = await c.post("/chat/completions", json={"model": MINI, "messages": MESSAGES})
                self.assertEqual(r.status_code, 200, r.text)
                self.assertEqual(self.spent("alice"), ledger.cost_nanousd(r.json()["usage"]["cost"]))
                async with c.stream("POST", "/chat/completions", json={"model": MINI, "messages": MESSAGES,
                                                                        "stream": True}) as s:
                    text = b"".join([part async for part in s.aiter_raw()]).decode()
                self.assertTrue(text.endswith("data: [DONE]\n\n"))
                async with c.stream("POST", "/chat/completions", json={"model": MINI, "messages": MESSAGES,
                                                                        "stream": True}) as s:
                    async for _ in s.aiter_bytes():
                        break  # closed early: looked up
                r = await c.post("/chat/completions", json={"model": MINI, "messages": MESSAGES},
                                 headers={"X-Ledger-Account": "eve"})
                self.assertEqual((r.status_code, r.json()["error"]["code"]), (429, "budget_exceeded"))
                self.emu.fault(path="/api/v1/chat/completions", status=503, count=1)
                r = await c.post("/chat/completions", json={"model": MINI, "messages": MESSAGES})
                self.assertEqual(r.status_code, 503)
                self.emu.fault(path="/api/v1/chat/completions", body="truncated")
                with self.assertRaises(httpx.RemoteProtocolError):
                    async with c.stream("POST", "/chat/completions", json={"model": MINI, "messages": MESSAGES,
                                                                            "stream": True}) as s:
                        async for _ in s.aiter_bytes():
                            pass

        asyncio.run(run())
        self.assertEqual(self.led.balance("alice").requests, 4)
        self.assert_ledger_is_the_key()


if __name__ == "__main__":
    unittest.main()
