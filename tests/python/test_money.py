"""Money in the ledger package: exact conversions between nano-USD ints, Decimal USD, decimal
text and OpenRouter's float costs (DESIGN.md 3), round trips, and costs settled through the real
libledger to the nano-USD."""
from __future__ import annotations

import math
import random
import unittest
from decimal import Decimal
from fractions import Fraction

import support
import ledger
from ledger import cost_nanousd, to_usd, usd


class Conversions(unittest.TestCase):
    def test_the_table(self) -> None:
        table = [("0.1", 100_000_000), ("0.000291", 291_000), (7, 7_000_000_000), ("-3.000000001", -3_000_000_001),
                 (5.75e-05, 57_500), (2.83125e-05, 28_313), (0.1, 100_000_000), (0.1 + 0.2, 300_000_000),
                 (137.141032391, 137_141_032_391), (1.536e-06, 1_536), (1e-09, 1), (1.0000000005, 1_000_000_001),
                 (4.2e-12, 1), (0.0, 0), (-0.0, 0), ("0.0000283125", 28_313), (Decimal("2.83125e-05"), 28_313),
                 (" 12.50 ", 12_500_000_000), ("1e-9", 1), (Decimal("0.0000000001"), 1), (0.00014, 140_000),
                 (0.000325, 325_000), (1.425e-05, 14_250), (10, 10_000_000_000), (1e9, 10**18)]
        for value, nanos in table:
            with self.subTest(value=value):
                self.assertEqual(usd(value), nanos)
                if not (isinstance(value, str) and value.startswith("-")):
                    self.assertEqual(cost_nanousd(value), nanos)

    def test_only_what_is_no_amount_raises(self) -> None:
        for bad in (float("nan"), float("inf"), -float("inf"), True, None, "12,50", "", "abc", "NaN", "Infinity",
                    1e10, "1000000000.000000001", Decimal("sNaN"), [1], b"1"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                usd(bad)  # type: ignore[arg-type]
        for negative in (-1e-12, -2.83125e-05, "-0.1", Decimal("-1"), -1):
            with self.subTest(negative=negative), self.assertRaises(ValueError):
                cost_nanousd(negative)
        self.assertEqual(usd(-2.83125e-05), -28_313)  # a negative amount (an adjustment) is fine for usd()
        with self.assertRaises(TypeError):
            to_usd(1.5)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            to_usd(True)

    def test_decimal_usd_is_exact(self) -> None:
        self.assertEqual(to_usd(28_313), Decimal("0.000028313"))
        self.assertEqual(to_usd(5_000_000_000), Decimal("5"))
        self.assertEqual(to_usd(-1), Decimal("-0.000000001"))
        self.assertEqual(str(to_usd(123_456_789_012)), "123.456789012")
        self.assertEqual(f"{to_usd(-5):f}", "-0.000000005")
        self.assertEqual(to_usd(ledger.AMOUNT_NANOUSD_MAX), Decimal(10**9))

    def test_round_trips(self) -> None:
        rng = random.Random(20261201)
        samples = [0, 1, -1, 999_999_999, 10**9, 10**18, -(10**18), 2**52, 28_313, 57_500]
        samples += [rng.randint(-(10**18), 10**18) for _ in range(20_000)]
        samples += [rng.randint(0, 10**6) for _ in range(5_000)]
        for n in samples:
            d = to_usd(n)
            self.assertEqual(usd(d), n)
            self.assertEqual(usd(str(d)), n)
            self.assertEqual(usd(f"{d:f}"), n)
            if abs(n) <= 2**52:  # every amount a double can tell apart from its neighbours
                self.assertEqual(usd(float(d)), n, n)
                self.assertEqual(usd(float(str(d))), n, n)

    def test_costs_finer_than_a_nano_usd_round_up_never_down(self) -> None:
        rng = random.Random(7)
        for _ in range(20_000):
            digits = rng.randint(9, 15)
            cost = rng.randint(0, 10**(digits - 3)) / 10**digits  # like OpenRouter: up to 15 decimals
            nanos = cost_nanousd(cost)
            exact = Fraction(cost) * 10**9  # the float's exact value in nano-USD
            if nanos < exact:
                # only float noise: the double nearest to that whole nano-USD is within two ulps
                back = float(Fraction(nanos, 10**9))
                self.assertLessEqual(abs(back - cost), 2 * math.ulp(cost), (cost, nanos))
            self.assertLess(nanos - exact, 1, (cost, nanos))  # and never more than the next nano-USD
        # Decimal text finer than a nano-USD always rounds up.
        for text, nanos in (("0.0000000000001", 1), ("0.0000000010000001", 2), ("2.0000000001", 2_000_000_001)):
            self.assertEqual(usd(text), nanos)


class ThroughTheLedger(unittest.TestCase):
    def test_costs_settle_to_the_nano_usd(self) -> None:
        costs = [2.83125e-05, 5.75e-05, 1e-12, 0.000325, 0.00014, 1.536e-06, 0.1 + 0.2, Decimal("0.0000283125"),
                 "0.000001", 12_345]
        with support.TempLedger() as t:
            led = t.ledger
            led.set_budget("alice", usd("10"), ledger.DAILY)
            expected = 0
            for cost in costs:
                rid = led.reserve("alice", usd("0.5"))
                nanos = cost if isinstance(cost, int) else cost_nanousd(cost)
                led.commit(rid, usd(cost) if isinstance(cost, str) else cost)
                expected += nanos
                self.assertEqual(led.balance("alice").spent_nanousd, expected)
            b = led.balance("alice")
            self.assertEqual(b.spent_usd, to_usd(expected))
            self.assertEqual(b.available_usd, Decimal("10") - to_usd(expected) - b.held_usd)
            self.assertEqual(b.requests, len(costs))


if __name__ == "__main__":
    unittest.main()
