#!/usr/bin/env python3
"""The demo's checks of its proxy side, from `ledgerctl status --json` and `ledgerctl keys list --json`:
every user of the team within its limit and answered at least once, nothing held, the team within
its limit, and the team's spend == the sum of its users' == what OpenRouter billed the proxy's own
upstream key (the proxy's commits equal the provider's bill, to the nano-USD).

    proxy_checks.py STATUS_JSON KEYS_JSON PROXY_KEY_HASH TEAM USER [USER ...]

Exits 1 when a check fails (each failure on its own line).
"""
import json
import sys


def main():
    if len(sys.argv) < 6:
        print(__doc__, file=sys.stderr)
        return 2
    status, keys, key_hash, team, users = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    with open(status) as f:
        accounts = {a["account"]: a for a in json.load(f)["accounts"]}
    with open(keys) as f:
        billed = [k["usage_nanousd"] for k in json.load(f)["keys"] if k["hash"] == key_hash]
    problems = []
    for name in [team] + users:
        a = accounts[name]
        if a["spent_nanousd"] > a["limit_nanousd"]:
            problems.append(f"{name}: spent {a['spent_usd']} over its limit {a['limit_usd']}")
        if a["held_nanousd"] != 0:
            problems.append(f"{name}: {a['held_usd']} still held")
        if name != team and a["requests"] == 0:
            problems.append(f"{name}: no request was answered")
    spent = accounts[team]["spent_nanousd"]
    users_spent = sum(accounts[u]["spent_nanousd"] for u in users)
    if spent != users_spent:
        problems.append(f"{team}: spent {spent} nano-USD != {users_spent} for its users")
    if len(billed) != 1 or billed[0] != spent:
        problems.append(f"{team}: spent {spent} nano-USD != {billed[0] if billed else 'no key'} billed to the proxy's key")
    print(f"checks (proxy pools): every {team} user within its limit and answered, nothing held, {team} within its limit, "
          f"{team} spent == sum of users == billed to the proxy's key (${accounts[team]['spent_usd']}): {'FAILED' if problems else 'OK'}")
    for p in problems:
        print(f"  check failed: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
