#!/usr/bin/env python3
"""The per-request overhead of ledger.httpx.LedgerTransport against a bare httpx call, side by side
in one run, on the real openrouter-emulator over loopback.

    python3 python/bench_transport.py build/release/emulator/openrouter-emulator [-n 2000] [--json]
    (libledger.so through $LEDGER_LIBRARY, --library, or the build tree)

Each round sends one request through a bare ``httpx.Client`` (``httpx.HTTPTransport``) and one
through a client whose transport is ``LedgerTransport`` around the same kind of transport,
alternating, so both see the same machine state. Reported, per mode (a plain reply, and a stream
read to its end), as median and p99 in microseconds:
  bare       the whole call without the ledger;
  ledger     the whole call through LedgerTransport;
  overhead   per round, the time outside the HTTP transport (measured around it, the reading of
             the body included) of the ledger call minus that of the bare call: the transport's own
             work, i.e. reading and rewriting the JSON body, estimate + authorize, the response
             handling and the commit; the emulator's service time and the network cancel out;
  ledger-bare  the difference of the two medians (includes noise of two separate calls).
And ``ledger calls``: estimate + authorize + commit alone, through the binding, per request.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpx  # noqa: E402

import ledger  # noqa: E402
from ledger.httpx import LedgerTransport  # noqa: E402

MODEL = "openai/gpt-4o-mini"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello to the ledger in five words."}],
        "max_tokens": 64}


class Timed(httpx.BaseTransport):
    """Measures the time spent in the wrapped transport, the response body's reading included."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.inside_ns = inner, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        start = time.perf_counter_ns()
        response = self.inner.handle_request(request)
        self.inside_ns += time.perf_counter_ns() - start
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_TimedStream(self, response.stream), extensions=response.extensions)

    def close(self) -> None:
        self.inner.close()


class _TimedStream(httpx.SyncByteStream):
    def __init__(self, owner: Timed, inner) -> None:
        self.owner, self.inner = owner, inner

    def __iter__(self):
        iterator = iter(self.inner)
        while True:
            start = time.perf_counter_ns()
            try:
                chunk = next(iterator)
            except StopIteration:
                self.owner.inside_ns += time.perf_counter_ns() - start
                return
            self.owner.inside_ns += time.perf_counter_ns() - start
            yield chunk

    def close(self) -> None:
        start = time.perf_counter_ns()
        self.inner.close()
        self.owner.inside_ns += time.perf_counter_ns() - start


def percentile(values: List[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def start_emulator(binary: str, directory: str):
    key_file, port_file = os.path.join(directory, "mgmt.key"), os.path.join(directory, "port")
    process = subprocess.Popen([binary, "--management-key-file", key_file, "--port-file", port_file],
                               stdout=subprocess.DEVNULL)
    for _ in range(500):
        if os.path.exists(port_file) and open(port_file).read().endswith("\n"):
            break
        time.sleep(0.01)
    port = int(open(port_file).read())
    management = open(key_file).read().strip()
    connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.request("POST", "/api/v1/keys", body=json.dumps({"name": "bench"}),
                       headers={"Authorization": f"Bearer {management}", "Content-Type": "application/json"})
    key = json.loads(connection.getresponse().read())["key"]
    connection.close()
    return process, port, key


def run(binary: str, rounds: int, library: str | None) -> Dict[str, Dict[str, float]]:
    work = tempfile.mkdtemp(prefix="ledger-bench-")
    process, port, key = start_emulator(binary, work)
    directory = os.path.join(work, "ledger")
    led = ledger.Ledger.create(directory, max_accounts=64, max_reservations=4096, library=library)
    try:
        led.set_budget("bench", ledger.usd("1000000"), ledger.MONTHLY)
        led.set_price(MODEL, ledger.usd("0.15"), ledger.usd("0.60"))
        base, headers = f"http://127.0.0.1:{port}/api/v1", {"Authorization": f"Bearer {key}"}
        timed, bare_timed = Timed(httpx.HTTPTransport()), Timed(httpx.HTTPTransport())
        bare = httpx.Client(transport=bare_timed, base_url=base, headers=headers)
        ledgered = httpx.Client(transport=LedgerTransport(led, timed, account="bench", app_title="bench"),
                                base_url=base, headers=headers)
        results: Dict[str, Dict[str, float]] = {}
        for mode in ("reply", "stream"):
            body = dict(BODY, stream=True) if mode == "stream" else BODY

            def call(client: httpx.Client) -> None:
                if mode == "stream":
                    with client.stream("POST", "/chat/completions", json=body) as r:
                        for _ in r.iter_raw():
                            pass
                        assert r.status_code == 200
                else:
                    r = client.post("/chat/completions", json=body)
                    assert r.status_code == 200 and r.json()["usage"]["cost"] > 0

            for _ in range(100):  # warm up both paths and the connection pools
                call(bare)
                call(ledgered)
            spent_before = led.balance("bench").requests
            samples: Dict[str, List[float]] = {"bare": [], "ledger": [], "overhead": []}
            for _ in range(rounds):
                bare_timed.inside_ns = 0
                start = time.perf_counter_ns()
                call(bare)
                bare_total = time.perf_counter_ns() - start
                timed.inside_ns = 0
                start = time.perf_counter_ns()
                call(ledgered)
                total = time.perf_counter_ns() - start
                samples["bare"].append(bare_total / 1000)
                samples["ledger"].append(total / 1000)
                # This round's work outside the HTTP transport, ledger client minus bare client: the
                # emulator's and the network's time (and their noise) cancel out.
                samples["overhead"].append(((total - timed.inside_ns) - (bare_total - bare_timed.inside_ns)) / 1000)
            assert led.balance("bench").requests == spent_before + rounds  # every call was settled
            for name, values in samples.items():
                results[f"{mode} {name}"] = {"median_us": statistics.median(values), "p99_us": percentile(values, 99)}
            results[f"{mode} ledger-bare"] = {"median_us": results[f"{mode} ledger"]["median_us"] -
                                              results[f"{mode} bare"]["median_us"], "p99_us": float("nan")}
        # The binding's own calls, for scale.
        calls: List[float] = []
        for _ in range(rounds):
            start = time.perf_counter_ns()
            estimate = led.estimate(MODEL, 30, 64)
            granted = led.authorize("bench", MODEL, estimate)
            led.commit(granted.reservation_id, 12_345)
            calls.append((time.perf_counter_ns() - start) / 1000)
        results["ledger calls (estimate+authorize+commit)"] = {"median_us": statistics.median(calls),
                                                               "p99_us": percentile(calls, 99)}
        bare.close()
        ledgered.close()
        return results
    finally:
        led.close()
        ledger.destroy_segment(directory)
        process.send_signal(signal.SIGTERM)
        process.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("emulator", help="path of the openrouter-emulator binary")
    parser.add_argument("-n", "--rounds", type=int, default=2000)
    parser.add_argument("--library", help="libledger.so (default: $LEDGER_LIBRARY, install prefix, build tree)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = run(args.emulator, args.rounds, args.library)
    machine = {"python": platform.python_version(), "httpx": httpx.__version__, "cpus": os.cpu_count(),
               "machine": platform.machine(), "library": ledger.load_library(args.library).path,
               "rounds": args.rounds}
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return 0
    print(f"{args.rounds} rounds; python {machine['python']}, httpx {machine['httpx']}, {machine['cpus']} CPUs; "
          f"{machine['library']}")
    print(f"{'':42} {'median us':>10} {'p99 us':>10}")
    for name, r in results.items():
        p99 = "" if r["p99_us"] != r["p99_us"] else f"{r['p99_us']:10.1f}"
        print(f"{name:42} {r['median_us']:10.1f} {p99:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
