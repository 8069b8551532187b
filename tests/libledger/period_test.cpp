#include <catch2/catch.hpp>
#include <random>

#include "ledger/period.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger_test::utc;

TEST_CASE("civil dates round-trip and know leap years", "[period]") {
  CHECK(days_from_civil({1970, 1, 1}) == 0);
  CHECK(civil_from_days(0) == CivilDate{1970, 1, 1});
  CHECK(civil_from_days(days_from_civil({2024, 2, 29})) == CivilDate{2024, 2, 29});
  CHECK(days_from_civil({2024, 3, 1}) - days_from_civil({2024, 2, 28}) == 2);  // leap year
  CHECK(days_from_civil({2023, 3, 1}) - days_from_civil({2023, 2, 28}) == 1);
  CHECK(days_from_civil({2100, 3, 1}) - days_from_civil({2100, 2, 28}) == 1);  // not leap
  CHECK(days_from_civil({2000, 3, 1}) - days_from_civil({2000, 2, 28}) == 2);  // leap (400)
  for (int64_t d = -800000; d < 800000; d += 7) REQUIRE(days_from_civil(civil_from_days(d)) == d);
}

TEST_CASE("daily periods start at 00:00 UTC", "[period]") {
  const int64_t t = utc(2026, 11, 26, 23, 59, 59);
  const int64_t i = period_index(Period::kDaily, t);
  CHECK(period_start_unix(Period::kDaily, i) == utc(2026, 11, 26));
  CHECK(period_end_unix(Period::kDaily, i) == utc(2026, 11, 27));
  CHECK(period_index(Period::kDaily, t + 1) == i + 1);
  CHECK(floor_days(-1) == -1);
}

TEST_CASE("weekly periods start on Monday 00:00 UTC", "[period]") {
  // 2026-11-23 is a Monday; 2026-11-29 a Sunday.
  const int64_t i = period_index(Period::kWeekly, utc(2026, 11, 26, 12));
  CHECK(period_start_unix(Period::kWeekly, i) == utc(2026, 11, 23));
  CHECK(period_index(Period::kWeekly, utc(2026, 11, 29, 23, 59, 59)) == i);
  CHECK(period_index(Period::kWeekly, utc(2026, 11, 30)) == i + 1);
  CHECK(period_index(Period::kWeekly, utc(2026, 11, 23)) == i);
  CHECK(period_index(Period::kWeekly, utc(2026, 11, 22, 23, 59, 59)) == i - 1);
  // The epoch itself (a Thursday) belongs to the week of Monday 1969-12-29.
  CHECK(period_start_unix(Period::kWeekly, period_index(Period::kWeekly, 0)) == -3 * 86400);
}

TEST_CASE("monthly periods start on the 1st, through month ends and leap years", "[period]") {
  struct Case { int32_t y; uint32_t m; uint32_t last_day; };
  for (const Case c : {Case{2024, 2, 29}, Case{2023, 2, 28}, Case{2100, 2, 28}, Case{2000, 2, 29},
                       Case{2026, 1, 31}, Case{2026, 4, 30}, Case{2026, 12, 31}}) {
    INFO(c.y << "-" << c.m);
    const int64_t last = utc(c.y, c.m, c.last_day, 23, 59, 59);
    const int64_t i = period_index(Period::kMonthly, last);
    CHECK(period_start_unix(Period::kMonthly, i) == utc(c.y, c.m, 1));
    CHECK(period_index(Period::kMonthly, last + 1) == i + 1);
    CHECK(period_end_unix(Period::kMonthly, i) == last + 1);
  }
}

TEST_CASE("every instant lies in its period, for every kind", "[period][property]") {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> when(0, utc(2140, 1, 1));
  for (int n = 0; n < 200000; ++n) {
    const int64_t t = when(rng);
    for (Period kind : {Period::kDaily, Period::kWeekly, Period::kMonthly}) {
      const int64_t i = period_index(kind, t);
      const int64_t start = period_start_unix(kind, i);
      const int64_t end = period_end_unix(kind, i);
      REQUIRE(start <= t);
      REQUIRE(t < end);
      REQUIRE(period_index(kind, start) == i);
      REQUIRE(period_index(kind, end) == i + 1);
      REQUIRE(start % 86400 == 0);
      if (kind == Period::kWeekly) REQUIRE((start / 86400 + 3) % 7 == 0);  // a Monday
      if (kind == Period::kMonthly) REQUIRE(civil_from_days(start / 86400).day == 1);
    }
  }
  CHECK(period_index(Period::kNone, 12345) == 0);
  CHECK(parse_period("weekly") == Period::kWeekly);
  CHECK_FALSE(parse_period("Weekly").has_value());
}
