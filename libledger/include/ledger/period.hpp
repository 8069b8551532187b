// ledger/period.hpp — calendar-aligned budget periods in UTC (no time zones, no DST).
//
// Days start 00:00 UTC, weeks start Monday 00:00 UTC, months start on the 1st 00:00 UTC. A period is
// identified by (kind, index): the index counts periods since 1970-01-01 (weeks: since Monday
// 1969-12-29). Valid for 1970-01-01 .. 2149 (daily index < 65536).
#pragma once

#include "ledger/export.hpp"

#include <cstdint>
#include <optional>
#include <string_view>

namespace ledger {

// The values are the C ABI's LEDGER_PERIOD_*: never renumber them.
enum class Period : int32_t { kNone = 0, kDaily = 1, kWeekly = 2, kMonthly = 3 };

struct CivilDate {
  int32_t year;
  uint32_t month;  // 1..12
  uint32_t day;    // 1..31
  constexpr bool operator==(const CivilDate&) const = default;
};

// Proleptic Gregorian conversions (Howard Hinnant's algorithms); days are counted from 1970-01-01.
LEDGER_EXPORT CivilDate civil_from_days(int64_t days);
LEDGER_EXPORT int64_t days_from_civil(CivilDate date);
// Seconds since the epoch floored to whole days (correct for negative times too).
LEDGER_EXPORT int64_t floor_days(int64_t unix_seconds);

// Index of the period containing unix_seconds. kNone is always index 0.
LEDGER_EXPORT int64_t period_index(Period kind, int64_t unix_seconds);
// First second of period `index` (kNone: 0).
LEDGER_EXPORT int64_t period_start_unix(Period kind, int64_t index);
// First second after period `index` (kNone: INT64_MAX).
LEDGER_EXPORT int64_t period_end_unix(Period kind, int64_t index);

LEDGER_EXPORT std::optional<Period> parse_period(std::string_view text);  // "none", "daily", "weekly", "monthly"
LEDGER_EXPORT std::string_view period_name(Period kind);

}  // namespace ledger
