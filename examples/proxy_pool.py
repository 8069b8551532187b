#!/usr/bin/env python3
"""The demo's proxy pool: workers that know nothing of the ledger, only an OpenAI-compatible URL and
an "lk-..." key, as any SDK's user would. Each thread sends chat completions through ledger-proxy
until its budget says no (HTTP 429, x-should-retry: false), then the pool prints what each user got.

    proxy_pool.py BASE_URL SECONDS USER=KEY_FILE [USER=KEY_FILE ...]

The keys are read from files (never argv). Uses httpx (Debian's python3-httpx).
"""
import sys
import threading
import time

import httpx


def worker(base, key, user, until, tally, lock):
    done = denied = failed = 0
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        while time.time() < until:
            body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "summarise the ledger"}],
                    "max_tokens": 64, "stream": done % 2 == 1}
            r = client.post("/chat/completions", json=body)
            if r.status_code == 200:
                done += 1
            elif r.status_code == 429 and r.headers.get("x-should-retry") == "false":
                denied += 1
                break  # over budget: the SDKs would not retry either
            else:
                failed += 1
                time.sleep(0.05)
    with lock:
        t = tally.setdefault(user, [0, 0, 0])
        t[0] += done
        t[1] += denied
        t[2] += failed


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 1
    base, seconds = sys.argv[1], float(sys.argv[2])
    users = []
    for arg in sys.argv[3:]:
        user, _, path = arg.partition("=")
        with open(path) as f:
            users.append((user, f.read().strip()))
    until, tally, lock = time.time() + seconds, {}, threading.Lock()
    threads = [threading.Thread(target=worker, args=(base, key, user, until, tally, lock)) for user, key in users for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for user, (done, denied, failed) in sorted(tally.items()):
        state = "stopped by its budget (429)" if denied else "within its budget"
        print(f"  proxy pool: {user:<6} {done:4d} requests answered, {state}" + (f", {failed} failed" if failed else ""))
    return 1 if any(t[2] for t in tally.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
