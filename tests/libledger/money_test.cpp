#include <catch2/catch.hpp>
#include <cstdlib>
#include <random>

#include "ledger/money.hpp"

using ledger::format_usd;
using ledger::parse_usd;

TEST_CASE("parse_usd is exact decimal", "[money]") {
  CHECK(parse_usd("0") == 0);
  CHECK(parse_usd("0.1") == 100'000'000);
  CHECK(parse_usd("1") == 1'000'000'000);
  CHECK(parse_usd("12.5") == 12'500'000'000);
  CHECK(parse_usd("0.000000001") == 1);
  CHECK(parse_usd("-3.000000001") == -3'000'000'001);
  CHECK(parse_usd("+5.5") == 5'500'000'000);
  CHECK(parse_usd("1000000000") == ledger::kAmountNanoUsdMax);
  // Ten times 0.1 is exactly one dollar (the float recipe's classic failure).
  int64_t sum = 0;
  for (int i = 0; i < 10; ++i) sum += *parse_usd("0.1");
  CHECK(sum == *parse_usd("1.0"));
}

TEST_CASE("parse_usd refuses anything inexact or malformed", "[money]") {
  for (const char* bad : {"", "-", "+", ".", "1.", ".5", "1.0000000001", "1e3", " 1", "1 ", "1,5",
                          "abc", "0x10", "--1", "1.2.3", "1000000000.000000001", "99999999999999999999",
                          "NaN", "inf"}) {
    INFO(bad);
    CHECK_FALSE(parse_usd(bad).has_value());
  }
}

TEST_CASE("format_usd trims to at least two decimals", "[money]") {
  CHECK(format_usd(0) == "0.00");
  CHECK(format_usd(1'500'000'000) == "1.50");
  CHECK(format_usd(1) == "0.000000001");
  CHECK(format_usd(-250'000'000) == "-0.25");
  CHECK(format_usd(123'456'789'012) == "123.456789012");
  CHECK(format_usd(INT64_MIN) == "-9223372036.854775808");
}

TEST_CASE("format and parse round-trip for random amounts", "[money][property]") {
  std::mt19937_64 rng(20261126);
  std::uniform_int_distribution<int64_t> amount(-ledger::kAmountNanoUsdMax, ledger::kAmountNanoUsdMax);
  for (int i = 0; i < 100000; ++i) {
    const int64_t value = i < 1000 ? i - 500 : amount(rng);
    const auto parsed = parse_usd(format_usd(value));
    REQUIRE(parsed.has_value());
    REQUIRE(*parsed == value);
  }
}

TEST_CASE("every whole nano-USD amount printed as a decimal and read as a double comes back exactly", "[money][property]") {
  // What OpenRouter sends: decimal text with up to 9 decimals, parsed as a double by any JSON parser.
  std::mt19937_64 rng(20261201);
  std::uniform_int_distribution<int64_t> amount(0, 10'000 * ledger::kNanoUsdPerUsd);
  for (int i = 0; i < 200000; ++i) {
    const int64_t value = i < 2000 ? i : amount(rng);
    const double parsed = std::strtod(format_usd(value).c_str(), nullptr);
    REQUIRE(ledger::usd_double_to_nanousd(parsed) == value);
  }
}

TEST_CASE("USD doubles from OpenRouter: whole nano-USD kept, anything finer rounded up", "[money]") {
  CHECK(ledger::usd_double_to_nanousd(137.141032391) == 137'141'032'391);
  CHECK(ledger::usd_double_to_nanousd(0.000001536) == 1'536);
  CHECK(ledger::usd_double_to_nanousd(0.1) == 100'000'000);
  CHECK(ledger::usd_double_to_nanousd(5.75e-05) == 57'500);    // float noise of a whole nano-USD
  CHECK(ledger::usd_double_to_nanousd(2.83125e-05) == 28'313);  // finer than a nano-USD: rounded up
  CHECK(ledger::usd_double_to_nanousd(0.00014) == 140'000);
  CHECK(ledger::usd_double_to_nanousd(1e-10) == 1);
  CHECK(ledger::usd_double_to_nanousd(-2.5e-9) == -3);  // away from zero: a negative remainder is never understated
  CHECK(ledger::usd_double_to_nanousd(0.0) == 0);
  CHECK_FALSE(ledger::usd_double_to_nanousd(std::numeric_limits<double>::quiet_NaN()).has_value());
  CHECK_FALSE(ledger::usd_double_to_nanousd(std::numeric_limits<double>::infinity()).has_value());
  CHECK_FALSE(ledger::usd_double_to_nanousd(1e10).has_value());
}
