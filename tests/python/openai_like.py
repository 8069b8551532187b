"""A minimal client that sends chat completions the way the openai Python SDK (v1) does, for the
tests: the real package is not installed here, and this is what LedgerTransport must work under.

Like openai-python's _base_client: the same headers (Authorization: Bearer, Accept and Content-Type
JSON, User-Agent OpenAI/Python, the X-Stainless-* set with X-Stainless-Retry-Count), a JSON body,
``http_client.send(request, stream=...)``, and its retry rule: obey ``x-should-retry`` when the
server sends it, else retry 408, 409, 429 and 5xx and connection errors, up to max_retries (2),
waiting retry-after-ms / retry-after when given (up to 60 s), else 0.5 s * 2^n (at most 8 s) with
jitter; ``delay_scale`` shrinks the waits for tests. Streams are decoded as its SSEDecoder does:
bytes split into lines, events on blank lines, comments skipped, ``data: [DONE]`` ends it, a
chunk with ``error`` raises, and the rest of the response is drained before it is closed.
"""
from __future__ import annotations

import json
import platform
import random
import time
from typing import Any, Dict, Iterator, List, Optional

import httpx

VERSION = "1.51.0"  # the SDK version whose behaviour this follows


class APIError(Exception):
    def __init__(self, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.message, self.body = message, body
        error = body.get("error") if isinstance(body, dict) else None
        self.code = error.get("code") if isinstance(error, dict) else None
        self.type = error.get("type") if isinstance(error, dict) else None


class APIStatusError(APIError):
    def __init__(self, message: str, response: httpx.Response, body: Any) -> None:
        super().__init__(message, body)
        self.response, self.status_code = response, response.status_code


class BadRequestError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


class APIConnectionError(APIError):
    pass


def _status_error(response: httpx.Response) -> APIStatusError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    cls = {400: BadRequestError, 403: PermissionDeniedError, 429: RateLimitError}.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    return cls(f"Error code: {response.status_code} - {body}", response, body)


class Stream:
    """Chunks of a streamed completion, as dicts; a context manager that closes the response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._iterator = self._chunks()

    def _events(self) -> Iterator[str]:
        buffer, data = b"", []
        for part in self.response.iter_bytes():
            buffer += part
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                line = line.rstrip(b"\r")
                if not line:
                    if data:
                        yield "\n".join(data)
                    data = []
                elif line.startswith(b":"):
                    continue  # a comment: ": OPENROUTER PROCESSING"
                elif line.startswith(b"data:"):
                    value = line[5:].decode()
                    data.append(value[1:] if value.startswith(" ") else value)
        if data:
            yield "\n".join(data)

    def _chunks(self) -> Iterator[Dict[str, Any]]:
        events = self._events()
        for data in events:
            if data.startswith("[DONE]"):
                break
            chunk = json.loads(data)
            if isinstance(chunk, dict) and chunk.get("error"):
                raise APIError("An error occurred during streaming", chunk)
            yield chunk
        for _ in events:  # drain the rest, as the SDK does
            pass

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self._iterator

    def __next__(self) -> Dict[str, Any]:
        return next(self._iterator)

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OpenAILike:
    def __init__(self, api_key: str, base_url: str, http_client: httpx.Client, max_retries: int = 2,
                 delay_scale: float = 1.0) -> None:
        self.api_key, self.base_url = api_key, base_url.rstrip("/") + "/"
        self.http_client, self.max_retries, self.delay_scale = http_client, max_retries, delay_scale
        self.attempts: List[httpx.Request] = []  # every request sent, retries included

    def _headers(self, retry_count: int, extra: Optional[Dict[str, str]]) -> Dict[str, str]:
        headers = {
            "Accept": "application/json", "Content-Type": "application/json",
            "User-Agent": f"OpenAI/Python {VERSION}", "X-Stainless-Lang": "python",
            "X-Stainless-Package-Version": VERSION, "X-Stainless-OS": platform.system(),
            "X-Stainless-Arch": platform.machine(), "X-Stainless-Runtime": platform.python_implementation(),
            "X-Stainless-Runtime-Version": platform.python_version(), "X-Stainless-Async": "false",
            "X-Stainless-Retry-Count": str(retry_count), "Authorization": f"Bearer {self.api_key}",
        }
        headers.update(extra or {})
        return headers

    @staticmethod
    def _should_retry(response: httpx.Response) -> bool:
        header = response.headers.get("x-should-retry")
        if header == "true":
            return True
        if header == "false":
            return False
        return response.status_code in (408, 409, 429) or response.status_code >= 500

    def _retry_delay(self, retries_taken: int, response: Optional[httpx.Response]) -> float:
        if response is not None:
            for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
                try:
                    value = float(response.headers.get(name, "")) * scale
                except ValueError:
                    continue
                if 0 < value <= 60:
                    return value * self.delay_scale
        delay = min(0.5 * 2.0 ** retries_taken, 8.0) * (1 - 0.25 * random.random())
        return delay * self.delay_scale

    def chat_completions_create(self, *, extra_headers: Optional[Dict[str, str]] = None, **params: Any) -> Any:
        stream = bool(params.get("stream"))
        url = self.base_url + "chat/completions"
        for retries_taken in range(self.max_retries + 1):
            request = self.http_client.build_request("POST", url, json=params,
                                                     headers=self._headers(retries_taken, extra_headers))
            self.attempts.append(request)
            last = retries_taken == self.max_retries
            try:
                response = self.http_client.send(request, stream=True)
            except httpx.TransportError as e:
                if last:
                    raise APIConnectionError(f"Connection error: {type(e).__name__}") from e
                time.sleep(self._retry_delay(retries_taken, None))
                continue
            if response.status_code >= 400:
                response.read()
                response.close()
                if not last and self._should_retry(response):
                    time.sleep(self._retry_delay(retries_taken, response))
                    continue
                raise _status_error(response)
            if stream:
                return Stream(response)
            try:
                response.read()
            finally:
                response.close()
            return response.json()
        raise AssertionError("unreachable")
