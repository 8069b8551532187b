"""Pools of processes spending on one ledger until the budgets bite: 8 forked workers that use a
Ledger carried across fork(), 4 spawned ones that get it pickled (reopened by directory), and a
forked pool that gets it as a task argument. Afterwards, exactly: no account over its limit, each
account's spend == what the workers committed to it, the team == the sum of its members, to the
nano-USD, nothing held."""
from __future__ import annotations

import multiprocessing
import os
import random
import unittest
from typing import Dict, Optional, Tuple

import support
import ledger

MODEL = "openai/gpt-4o-mini"
MEMBERS = ("alice", "bob", "carol", "dave")
_LEDGER: Optional[ledger.Ledger] = None  # the worker's ledger: inherited (fork) or set by _init (spawn)
_START = None  # a Barrier with one party per task: no pool process takes a second task before all start


def _init(start, led: Optional[ledger.Ledger] = None) -> None:
    global _LEDGER, _START
    _START = start
    if led is not None:
        _LEDGER = led


def spend(seed: int, led: Optional[ledger.Ledger] = None) -> Tuple[int, Dict[str, int], Dict[str, int], int]:
    """Holds and commits until every member is denied 20 times in a row; returns what it committed."""
    led = led or _LEDGER
    assert led is not None
    if _START is not None:
        _START.wait(timeout=120)  # every task on its own process, however slow the pool starts
    rng = random.Random(seed)
    committed = {a: 0 for a in MEMBERS}
    requests = {a: 0 for a in MEMBERS}
    denied_in_a_row = {a: 0 for a in MEMBERS}
    denials = 0
    while min(denied_in_a_row.values()) < 20:
        account = rng.choice(MEMBERS)
        estimate = led.estimate(MODEL, rng.randint(100, 4000), rng.randint(50, 1000))
        try:
            with led.hold(account, MODEL, estimate) as h:
                # OpenRouter's float cost, at most the estimate, often finer than a nano-USD
                cost = rng.uniform(0, estimate) / 1e9
                h.commit(cost)
                committed[account] += ledger.cost_nanousd(cost)
                requests[account] += 1
                denied_in_a_row[account] = 0
        except (ledger.BudgetExceeded, ledger.ParentBudgetExceeded):
            denials += 1
            denied_in_a_row[account] += 1
    return os.getpid(), committed, requests, denials


class Pools(unittest.TestCase):
    def setUp(self) -> None:
        self.t = support.TempLedger(max_accounts=64, max_reservations=4096, max_processes=64)
        led = self.t.ledger
        led.set_price(MODEL, ledger.usd("0.15"), ledger.usd("0.60"))
        led.set_budget("team", ledger.usd("2"), ledger.DAILY)          # less than the members' sum:
        for i, account in enumerate(MEMBERS):                           # the parent bites too
            led.set_budget(account, ledger.usd("0.4") + i * ledger.usd("0.15"), ledger.DAILY, "team")

    def tearDown(self) -> None:
        global _LEDGER, _START
        _LEDGER = None
        _START = None
        self.t.close()

    def check(self, results) -> None:
        led = self.t.ledger
        pids = {r[0] for r in results}
        self.assertEqual(len(pids), len(results), "one worker process per task")
        self.assertNotIn(os.getpid(), pids)
        self.assertGreater(sum(r[3] for r in results), 0, "the budgets bit")
        total = 0
        for account in MEMBERS:
            b = led.balance(account)
            committed = sum(r[1][account] for r in results)
            total += committed
            self.assertEqual(b.spent_nanousd, committed, account)
            self.assertEqual(b.requests, sum(r[2][account] for r in results), account)
            self.assertLessEqual(b.spent_nanousd, b.limit_nanousd, account)
            self.assertEqual(b.held_nanousd, 0, account)
        team = led.balance("team")
        self.assertEqual(team.spent_nanousd, total)
        self.assertLessEqual(team.spent_nanousd, team.limit_nanousd)
        self.assertEqual(team.held_nanousd, 0)
        # Spent down to less than one request's worst case somewhere on every member's chain.
        worst = led.estimate(MODEL, 4000, 1000)
        for account in MEMBERS:
            self.assertTrue(led.balance(account).available_nanousd < worst or team.available_nanousd < worst)

    def test_fork_pool_of_8_with_the_ledger_carried_across_fork(self) -> None:
        global _LEDGER
        _LEDGER = self.t.ledger  # opened in the parent, used as is in each forked child
        _LEDGER.balance("team")  # and used here first, so the child gets an attached handle
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(8, initializer=_init, initargs=(ctx.Barrier(8),)) as pool:
            results = pool.map(spend, range(8), chunksize=1)
        self.check(results)

    def test_spawn_pool_of_4_with_the_ledger_pickled(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(4, initializer=_init, initargs=(ctx.Barrier(4), self.t.ledger)) as pool:
            results = pool.map(spend, range(100, 104), chunksize=1)
        self.check(results)

    def test_fork_pool_with_the_ledger_as_an_argument(self) -> None:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(4, initializer=_init, initargs=(ctx.Barrier(4),)) as pool:
            results = pool.starmap(spend, [(seed, self.t.ledger) for seed in range(200, 204)], chunksize=1)
        self.check(results)


if __name__ == "__main__":
    unittest.main()
