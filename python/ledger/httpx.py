"""httpx transports that put every chat completion through the ledger: ``LedgerTransport`` (sync)
and ``AsyncLedgerTransport`` (asyncio). They wrap any httpx transport, so they work under the
openai SDK (``openai.OpenAI(base_url=..., http_client=httpx.Client(transport=LedgerTransport(...)))``)
and under anything else that speaks httpx.

For each ``POST .../chat/completions`` the transport
  1. finds the account: the request's ``X-Ledger-Account`` header (stripped before forwarding),
     else the transport's ``account``;
  2. bounds the cost from the JSON body: prompt tokens at most ceil(body bytes / 3) (a token is
     at least 3 bytes of UTF-8 JSON in ordinary text: the JSON's quotes and keys only add bytes),
     completion tokens at most ``max_completion_tokens`` or ``max_tokens`` (times ``n``); when
     neither is set it inserts ``max_tokens`` = ``max_tokens_default`` (4096) so the bound holds;
     then ``ledger_estimate`` for the model;
  3. authorizes (``ledger_authorize``, or ``ledger_authorize_via`` with ``key_hash``): a denial is
     answered locally, never sent: over budget 429 ``{"error": {"message", "type":
     "insufficient_quota", "code": "budget_exceeded" | "parent_budget_exceeded"}}``, model not
     allowed or account blocked 403 (``model_not_allowed``, ``account_blocked``), all with
     ``x-should-retry: false`` so the openai SDK does not retry them;
  4. forwards the body with the chosen ``model`` (a tier's fallback or downgrade shows as the
     answered model), ``user`` = the account, ``"usage": {"include": true}``, and the attribution
     headers ``X-OpenRouter-Title`` and ``X-Title`` (``app_title:account``, or the account) and
     ``HTTP-Referer`` (``app_url``), as libledger's ``attribution_for`` builds them;
  5. settles the hold exactly once: with ``usage.cost`` of the reply; for a stream (passed through
     untouched, chunk by chunk) with the usage of its last chunk, committed as soon as it goes
     by. A stream that ends early or without usage, or a reply without a cost, is looked up at
     ``GET {base}/generation?id=...`` (``generation_lookups`` tries, ``generation_lookup_interval_s``
     apart, 1 s by default); when no cost comes, the hold is committed in full (never undercount).
     An upstream error status before any output releases the hold, as do an error in connecting
     or sending and a server that closes without answering; any other failure after the request
     was sent (a read timeout, a read error, a cancellation) commits in full: OpenRouter may bill
     it, and there is no id to ask about.

Costs are converted by ``ledger.cost_nanousd`` (2.83125e-05 -> 28,313 nano-USD). Requests other
than chat completions pass through (only ``X-Ledger-Account`` is removed). Keys (the
``Authorization`` header) are forwarded as they are and never logged or put into an error.
A stream must be closed (``with``, or reading it to the end) for a stream that ends early to be
settled; an unclosed one is left to its hold's TTL.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import zlib
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple, Union, cast

import httpx

from ._ledger import Ledger
from .errors import (AccountBlocked, BudgetExceeded, Denied, InvalidArgument, LedgerError,
                     ModelNotAllowed, ParentBudgetExceeded, RateLimited, UnknownAccount, UnknownModel)
from .money import cost_nanousd

__all__ = ["LedgerTransport", "AsyncLedgerTransport", "ACCOUNT_HEADER"]

log = logging.getLogger("ledger.httpx")

ACCOUNT_HEADER = "X-Ledger-Account"
PROMPT_BYTES_PER_TOKEN = 3
_UINT32_MAX = 2**32 - 1
# A /generation lookup waits at most this long per phase, unless the request had its own limits.
_LOOKUP_TIMEOUT: Dict[str, Optional[float]] = {"connect": 10.0, "read": 10.0, "write": 10.0, "pool": 10.0}
# Errors that happen before the request can have reached the server: nothing can be billed.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol,
             httpx.LocalProtocolError, httpx.WriteError, httpx.WriteTimeout, httpx.ProxyError)


def _is_chat(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.rstrip("/").endswith("/chat/completions")


def _error(status: int, code: str, message: str, error_type: str, retry: bool = False,
           headers: Optional[Dict[str, str]] = None) -> httpx.Response:
    """A local answer in OpenAI's error shape (what the SDKs parse into their exceptions)."""
    body = json.dumps({"error": {"message": message, "type": error_type, "code": code}}).encode()
    h = {"content-type": "application/json"}
    if not retry:
        h["x-should-retry"] = "false"
    h.update(headers or {})
    return httpx.Response(status, headers=h, content=body)


def _denial(e: LedgerError, account: str, model: str) -> httpx.Response:
    if isinstance(e, BudgetExceeded):
        return _error(429, "budget_exceeded", f"budget exceeded: account {account} has no room for this "
                      f"request ({model})", "insufficient_quota")
    if isinstance(e, ParentBudgetExceeded):
        return _error(429, "parent_budget_exceeded", f"budget exceeded: a parent of account {account} has "
                      f"no room for this request ({model})", "insufficient_quota")
    if isinstance(e, ModelNotAllowed):
        return _error(403, "model_not_allowed", f"model {model} is not allowed for account {account}",
                      "permission_denied")
    if isinstance(e, AccountBlocked):
        return _error(403, "account_blocked", f"account {account} is blocked", "permission_denied")
    if isinstance(e, RateLimited):
        after = getattr(e, "retry_after_ms", None)
        extra = {} if after is None else {"retry-after-ms": str(after), "retry-after": str(math.ceil(after / 1000))}
        return _error(429, "rate_limited", f"rate limited: account {account}", "rate_limit_exceeded", True, extra)
    if isinstance(e, UnknownModel):
        return _error(400, "model_price_unknown", f"the ledger knows no price for {e.detail or model}; add "
                      f"one (config \"prices\") before using it", "invalid_request_error")
    if isinstance(e, UnknownAccount):
        return _error(400, "unknown_account", f"the ledger has no account {account}", "invalid_request_error")
    if isinstance(e, InvalidArgument):
        return _error(400, "invalid_ledger_argument", f"the ledger refused the request: {e}", "invalid_request_error")
    return _error(503, "ledger_unavailable", f"the ledger cannot admit requests: {e}", "server_error")


def _bad_request(message: str) -> httpx.Response:
    return _error(400, "invalid_request", message, "invalid_request_error")


class _Settlement:
    """The hold of one forwarded request. Settles once: commit, release or commit in full."""

    def __init__(self, ledger: Ledger, account: str, model: str, reservation_id: int, estimate_nanousd: int,
                 generation_url: str, authorization: Optional[str]) -> None:
        self.ledger, self.account, self.model = ledger, account, model
        self.reservation_id, self.estimate_nanousd = reservation_id, estimate_nanousd
        self.generation_url, self.authorization = generation_url, authorization
        self.generation_id: Optional[str] = None
        self.timeout: Dict[str, Optional[float]] = dict(_LOOKUP_TIMEOUT)  # the request's, for its lookups
        self.outcome: Optional[str] = None     # "committed", "released", "committed in full"
        self.committed_nanousd: Optional[int] = None
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def _claim(self, outcome: str) -> bool:
        with self._lock:
            if self.outcome is not None:
                return False
            self.outcome = outcome
            return True

    def commit(self, nanos: int) -> None:
        if self._claim("committed"):
            self.committed_nanousd = nanos
            self._settle(lambda: self.ledger.commit(self.reservation_id, nanos))

    def commit_in_full(self, why: str) -> None:
        if self._claim("committed in full"):
            self.committed_nanousd = self.estimate_nanousd
            log.warning("ledger: %s for account %s (%s, generation %s): committing the hold in full, %d nano-USD",
                        why, self.account, self.model, self.generation_id or "unknown", self.estimate_nanousd)
            self._settle(lambda: self.ledger.commit(self.reservation_id, self.estimate_nanousd))

    def release(self) -> None:
        if self._claim("released"):
            self._settle(lambda: self.ledger.release(self.reservation_id))

    def _settle(self, call: Callable[[], None]) -> None:
        try:
            call()
        except LedgerError as e:  # e.g. the hold expired and its tombstone was dropped
            log.warning("ledger: settling the hold of account %s (%s) failed: %s", self.account, self.model, e)


class _Reply:
    """What the transport learns from a reply's body or a stream's chunks."""

    @staticmethod
    def cost_of(usage: Any) -> Optional[int]:
        if isinstance(usage, dict) and usage.get("cost") is not None:
            try:
                return cost_nanousd(usage["cost"])
            except ValueError:
                return None
        return None

    @staticmethod
    def decode(raw: bytes, encoding: str) -> Optional[bytes]:
        """The body without its content encoding (identity is asked for; gzip and deflate are read)."""
        encoding = encoding.strip().lower()
        try:
            if encoding in ("", "identity"):
                return raw
            if encoding == "gzip":
                return zlib.decompress(raw, 16 + zlib.MAX_WBITS)
            if encoding == "deflate":
                try:
                    return zlib.decompress(raw)
                except zlib.error:
                    return zlib.decompress(raw, -zlib.MAX_WBITS)
        except zlib.error:
            return None
        return None


class _StreamWatch:
    """Reads a copy of a server-sent event stream as it passes: the generation id, and the cost
    of its usage chunk, committed at once. Never raises into the stream it watches."""

    def __init__(self, settlement: _Settlement, encoding: str) -> None:
        self.settlement = settlement
        self.buffer = b""
        self.data: List[bytes] = []
        self.done = False           # data: [DONE] seen
        self.opaque = False         # an encoding it cannot read: the lookup decides
        self.decoder: Any = None
        encoding = encoding.strip().lower()
        if encoding == "gzip":
            self.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self.decoder = zlib.decompressobj()
        elif encoding not in ("", "identity"):
            self.opaque = True

    def feed(self, chunk: bytes) -> None:
        if self.opaque or self.settlement.done:
            return
        try:
            if self.decoder is not None:
                chunk = self.decoder.decompress(chunk)
            self.buffer += chunk
            while True:
                end = self.buffer.find(b"\n")
                if end < 0:
                    break
                line, self.buffer = self.buffer[:end].rstrip(b"\r"), self.buffer[end + 1:]
                self._line(line)
        except Exception:  # noqa: BLE001 - a watcher must never break the stream it watches
            self.opaque = True

    def _line(self, line: bytes) -> None:
        if not line:  # the end of an event
            if self.data:
                self._event(b"\n".join(self.data))
            self.data = []
        elif line.startswith(b":"):
            pass  # a comment (": OPENROUTER PROCESSING")
        elif line.startswith(b"data:"):
            value = line[5:]
            self.data.append(value[1:] if value.startswith(b" ") else value)

    def _event(self, data: bytes) -> None:
        if data.strip() == b"[DONE]":
            self.done = True
            return
        if self.settlement.generation_id is not None and b'"usage"' not in data:
            return  # a content chunk: nothing to learn from it (and JSON parsing is the cost here)
        try:
            chunk = json.loads(data)
        except ValueError:
            return
        if not isinstance(chunk, dict):
            return
        if self.settlement.generation_id is None and isinstance(chunk.get("id"), str):
            self.settlement.generation_id = chunk["id"]
        cost = _Reply.cost_of(chunk.get("usage"))
        if cost is not None:
            self.settlement.commit(cost)


class _Core:
    """What the sync and async transports share: admission, the forwarded request, the replies."""

    def __init__(self, ledger: Ledger, account: Optional[str], key_hash: Optional[str], app_url: Optional[str],
                 app_title: Optional[str], max_tokens_default: int, ttl_seconds: int, generation_lookups: int,
                 generation_lookup_interval_s: float) -> None:
        if not isinstance(ledger, Ledger):
            raise TypeError("ledger must be a ledger.Ledger")
        if isinstance(max_tokens_default, bool) or not isinstance(max_tokens_default, int) or \
                not 0 < max_tokens_default <= _UINT32_MAX:
            raise ValueError("max_tokens_default must be a positive int")
        if generation_lookups < 0 or generation_lookup_interval_s < 0:
            raise ValueError("generation_lookups and generation_lookup_interval_s must be >= 0")
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or not 0 <= ttl_seconds <= _UINT32_MAX:
            raise ValueError("ttl_seconds must be an int in 0..2**32-1 (0: the ledger's default)")
        self.ledger, self.account, self.key_hash = ledger, account, key_hash
        self.app_url, self.app_title = app_url, app_title
        self.max_tokens_default, self.ttl_seconds = max_tokens_default, ttl_seconds
        self.generation_lookups, self.generation_lookup_interval_s = generation_lookups, generation_lookup_interval_s

    def strip_account(self, request: httpx.Request) -> Tuple[Optional[str], httpx.Request]:
        """The per-request account header, and the request without it."""
        if ACCOUNT_HEADER not in request.headers:
            return None, request
        account = request.headers[ACCOUNT_HEADER]
        headers = httpx.Headers(request.headers)
        del headers[ACCOUNT_HEADER]
        request.headers = headers
        return account, request

    def completion_bound(self, payload: Dict[str, Any]) -> Union[int, httpx.Response]:
        bound = 0
        for name in ("max_tokens", "max_completion_tokens"):
            value = payload.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                return _bad_request(f"{name} must be a positive integer")
            bound = max(bound, value)
        if bound == 0:
            payload["max_tokens"] = bound = self.max_tokens_default  # so the hold is an upper bound
        n = payload.get("n")
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                return _bad_request("n must be a positive integer")
            bound *= n
        if bound > _UINT32_MAX:
            return _bad_request("max_tokens is too large for the ledger's estimate")
        return bound

    def admit(self, request: httpx.Request, account: Optional[str],
              body: bytes) -> Union[httpx.Response, Tuple[httpx.Request, _Settlement]]:
        """A local answer (a denial, a bad request), or the request to forward and its hold."""
        account = account or self.account
        if not account:
            return _bad_request(f"no ledger account: pass account= to the transport or send {ACCOUNT_HEADER}")
        try:
            payload = json.loads(body)
        except ValueError:
            return _bad_request("the body is not JSON")
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), str) or not payload["model"]:
            return _bad_request("the body must be a JSON object with a \"model\"")
        if payload.get("models"):
            return _bad_request("OpenRouter's \"models\" fallback list is not supported: the ledger authorizes one "
                                "model per request (a tier's fallback does that)")
        completion = self.completion_bound(payload)
        if isinstance(completion, httpx.Response):
            return completion
        requested = payload["model"]
        prompt = min(math.ceil(len(body) / PROMPT_BYTES_PER_TOKEN), _UINT32_MAX)
        try:
            estimate = self.ledger.estimate(requested, prompt, completion)
            granted = self.ledger.authorize(account, requested, estimate, ttl_seconds=self.ttl_seconds,
                                            key_hash=self.key_hash)
        except LedgerError as e:
            if not isinstance(e, Denied):
                log.warning("ledger: request of account %s (%s) refused: %s", account, requested, e)
            return _denial(e, account, requested)
        payload["model"] = granted.model
        payload["user"] = account
        usage = payload.get("usage")
        payload["usage"] = dict(usage, include=True) if isinstance(usage, dict) else {"include": True}
        title = f"{self.app_title}:{account}" if self.app_title else account
        headers = httpx.Headers(request.headers)
        for name in ("content-length", "transfer-encoding"):
            if name in headers:
                del headers[name]
        headers["accept-encoding"] = "identity"  # read the usage from the bytes as they pass
        if self.app_url:
            headers["HTTP-Referer"] = self.app_url
        headers["X-OpenRouter-Title"] = title
        headers["X-Title"] = title
        content = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        forwarded = httpx.Request(request.method, request.url, headers=headers, content=content,
                                  extensions=request.extensions)
        base = str(request.url).split("?", 1)[0].rstrip("/")
        base = base[: -len("/chat/completions")]
        settlement = _Settlement(self.ledger, account, granted.model, granted.reservation_id, estimate,
                                 base + "/generation", request.headers.get("authorization"))
        timeout = request.extensions.get("timeout")
        if isinstance(timeout, dict) and all(timeout.get(k) is not None for k in _LOOKUP_TIMEOUT):
            settlement.timeout = dict(timeout)  # the client's own limits (never "wait forever")
        return forwarded, settlement

    def settle_failed_send(self, settlement: _Settlement, error: BaseException) -> None:
        if isinstance(error, _NOT_SENT) or (isinstance(error, httpx.RemoteProtocolError)):
            settlement.release()  # it never reached the server, or the server closed without answering
        else:
            settlement.commit_in_full(f"{type(error).__name__} after the request was sent")

    def generation_request(self, settlement: _Settlement) -> httpx.Request:
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        if settlement.authorization:
            headers["authorization"] = settlement.authorization
        return httpx.Request("GET", httpx.URL(settlement.generation_url, params={"id": settlement.generation_id}),
                             headers=headers, extensions={"timeout": settlement.timeout})

    @staticmethod
    def generation_cost(status: int, raw: bytes) -> Optional[int]:
        if status != 200:
            return None
        try:
            data = json.loads(raw).get("data", {})
            return cost_nanousd(data["total_cost"]) if data.get("total_cost") is not None else None
        except (ValueError, AttributeError, KeyError, TypeError):
            return None

    def settled_by_reply(self, settlement: _Settlement, response: httpx.Response, raw: Optional[bytes]) -> bool:
        """Commits the cost of a whole reply when its body has one (else the caller looks it up)."""
        settlement.generation_id = response.headers.get("x-generation-id")
        body = _Reply.decode(raw, response.headers.get("content-encoding", "")) if raw is not None else None
        reply: Any = None
        if body is not None:
            try:
                reply = json.loads(body)
            except ValueError:
                reply = None
        if isinstance(reply, dict):
            if settlement.generation_id is None and isinstance(reply.get("id"), str):
                settlement.generation_id = reply["id"]
            cost = _Reply.cost_of(reply.get("usage"))
            if cost is not None:
                settlement.commit(cost)
                return True
        return False

    @staticmethod
    def after_lookup(settlement: _Settlement, cost: Optional[int], why: str) -> None:
        if cost is not None:
            settlement.commit(cost)
        else:
            settlement.commit_in_full(why)


def _sync_stream(response: httpx.Response) -> httpx.SyncByteStream:
    """The raw bytes of a transport's response (still in their content encoding)."""
    return cast(httpx.SyncByteStream, response.stream)


def _async_stream(response: httpx.Response) -> httpx.AsyncByteStream:
    return cast(httpx.AsyncByteStream, response.stream)


def _stream_encoding(response: httpx.Response) -> str:
    return str(response.headers.get("content-encoding", ""))


def _is_event_stream(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).split(";")[0].strip().lower() == "text/event-stream"


class LedgerTransport(httpx.BaseTransport):
    """An httpx transport that authorizes, forwards and settles every chat completion (see the module).

    ledger: an open ``ledger.Ledger``. transport: the transport to forward through (default
    ``httpx.HTTPTransport()``). account: the account when a request names none in ``X-Ledger-Account``.
    key_hash: the OpenRouter key the requests go through (``ledger_authorize_via``), None = the
    account's bound key. app_url, app_title: attribution. max_tokens_default: inserted when a
    request sets no limit. ttl_seconds: the holds' TTL (0 = the ledger's default).
    generation_lookups, generation_lookup_interval_s: how often and how far apart to ask
    /generation for a cost the reply did not carry.
    """

    def __init__(self, ledger: Ledger, transport: Optional[httpx.BaseTransport] = None, *,
                 account: Optional[str] = None, key_hash: Optional[str] = None, app_url: Optional[str] = None,
                 app_title: Optional[str] = None, max_tokens_default: int = 4096, ttl_seconds: int = 0,
                 generation_lookups: int = 4, generation_lookup_interval_s: float = 1.0) -> None:
        self._core = _Core(ledger, account, key_hash, app_url, app_title, max_tokens_default, ttl_seconds,
                           generation_lookups, generation_lookup_interval_s)
        self._transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        account, request = self._core.strip_account(request)
        if not _is_chat(request):
            return self._transport.handle_request(request)
        outcome = self._core.admit(request, account, request.read())
        if isinstance(outcome, httpx.Response):
            return outcome
        forwarded, settlement = outcome
        try:
            response = self._transport.handle_request(forwarded)
        except BaseException as e:
            self._core.settle_failed_send(settlement, e)
            raise
        if not 200 <= response.status_code < 300:
            settlement.release()  # an error before any output: nothing was billed
            return response
        if _is_event_stream(response):
            settlement.generation_id = response.headers.get("x-generation-id")
            stream = _SyncTap(self, response, _StreamWatch(settlement, _stream_encoding(response)))
            return httpx.Response(response.status_code, headers=response.headers, stream=stream,
                                  extensions=response.extensions)
        raw: Optional[bytes] = None
        failure: Optional[BaseException] = None
        try:
            raw = b"".join(_sync_stream(response))
        except Exception as e:  # noqa: BLE001 - a truncated reply: settle, then let the caller see it
            failure = e
        finally:
            response.close()
        if not self._core.settled_by_reply(settlement, response, raw):
            self._core.after_lookup(settlement, self._lookup(settlement), "no cost in the reply")
        if failure is not None:
            raise failure
        return httpx.Response(response.status_code, headers=response.headers, stream=httpx.ByteStream(raw or b""),
                              extensions=response.extensions)

    def _lookup(self, settlement: _Settlement) -> Optional[int]:
        if not settlement.generation_id:
            return None
        for attempt in range(self._core.generation_lookups):
            if attempt:
                time.sleep(self._core.generation_lookup_interval_s)
            try:
                response = self._transport.handle_request(self._core.generation_request(settlement))
                try:
                    raw = b"".join(_sync_stream(response))
                finally:
                    response.close()
            except httpx.HTTPError:
                continue
            cost = self._core.generation_cost(response.status_code, raw)
            if cost is not None:
                return cost
        return None

    def _finish_stream(self, watch: _StreamWatch) -> None:
        settlement = watch.settlement
        if settlement.done:
            return
        why = "a stream that ended without usage" if watch.done else "a stream closed early"
        self._core.after_lookup(settlement, self._lookup(settlement), why)

    def close(self) -> None:
        self._transport.close()


class _SyncTap(httpx.SyncByteStream):
    """The upstream stream, passed through untouched, with a watcher reading a copy."""

    def __init__(self, owner: LedgerTransport, upstream: httpx.Response, watch: _StreamWatch) -> None:
        self._owner, self._upstream, self._watch = owner, upstream, watch
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in _sync_stream(self._upstream):
            self._watch.feed(chunk)
            yield chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._upstream.close()
        finally:
            self._owner._finish_stream(self._watch)


class AsyncLedgerTransport(httpx.AsyncBaseTransport):
    """LedgerTransport for ``httpx.AsyncClient`` (and ``openai.AsyncOpenAI``); the same arguments,
    with an ``httpx.AsyncBaseTransport`` to forward through (default ``httpx.AsyncHTTPTransport()``).
    Ledger calls take microseconds and run inline; /generation lookups wait with asyncio.sleep."""

    def __init__(self, ledger: Ledger, transport: Optional[httpx.AsyncBaseTransport] = None, *,
                 account: Optional[str] = None, key_hash: Optional[str] = None, app_url: Optional[str] = None,
                 app_title: Optional[str] = None, max_tokens_default: int = 4096, ttl_seconds: int = 0,
                 generation_lookups: int = 4, generation_lookup_interval_s: float = 1.0) -> None:
        self._core = _Core(ledger, account, key_hash, app_url, app_title, max_tokens_default, ttl_seconds,
                           generation_lookups, generation_lookup_interval_s)
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        account, request = self._core.strip_account(request)
        if not _is_chat(request):
            return await self._transport.handle_async_request(request)
        outcome = self._core.admit(request, account, await request.aread())
        if isinstance(outcome, httpx.Response):
            return outcome
        forwarded, settlement = outcome
        try:
            response = await self._transport.handle_async_request(forwarded)
        except BaseException as e:
            self._core.settle_failed_send(settlement, e)
            raise
        if not 200 <= response.status_code < 300:
            settlement.release()
            return response
        if _is_event_stream(response):
            settlement.generation_id = response.headers.get("x-generation-id")
            stream = _AsyncTap(self, response, _StreamWatch(settlement, _stream_encoding(response)))
            return httpx.Response(response.status_code, headers=response.headers, stream=stream,
                                  extensions=response.extensions)
        parts: List[bytes] = []
        failure: Optional[BaseException] = None
        try:
            async for part in _async_stream(response):
                parts.append(part)
        except Exception as e:  # noqa: BLE001
            failure = e
        finally:
            await response.aclose()
        raw = b"".join(parts) if failure is None else None
        if not self._core.settled_by_reply(settlement, response, raw):
            self._core.after_lookup(settlement, await self._lookup(settlement), "no cost in the reply")
        if failure is not None:
            raise failure
        return httpx.Response(response.status_code, headers=response.headers, stream=httpx.ByteStream(raw or b""),
                              extensions=response.extensions)

    async def _lookup(self, settlement: _Settlement) -> Optional[int]:
        if not settlement.generation_id:
            return None
        for attempt in range(self._core.generation_lookups):
            if attempt:
                await asyncio.sleep(self._core.generation_lookup_interval_s)
            try:
                response = await self._transport.handle_async_request(self._core.generation_request(settlement))
                parts: List[bytes] = []
                try:
                    async for part in _async_stream(response):
                        parts.append(part)
                finally:
                    await response.aclose()
            except httpx.HTTPError:
                continue
            cost = self._core.generation_cost(response.status_code, b"".join(parts))
            if cost is not None:
                return cost
        return None

    async def _finish_stream(self, watch: _StreamWatch) -> None:
        settlement = watch.settlement
        if settlement.done:
            return
        why = "a stream that ended without usage" if watch.done else "a stream closed early"
        self._core.after_lookup(settlement, await self._lookup(settlement), why)

    async def aclose(self) -> None:
        await self._transport.aclose()


class _AsyncTap(httpx.AsyncByteStream):
    def __init__(self, owner: AsyncLedgerTransport, upstream: httpx.Response, watch: _StreamWatch) -> None:
        self._owner, self._upstream, self._watch = owner, upstream, watch
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in _async_stream(self._upstream):
            self._watch.feed(chunk)
            yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._upstream.aclose()
        finally:
            await self._owner._finish_stream(self._watch)
