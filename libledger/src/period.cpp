// period.cpp — UTC calendar arithmetic for budget periods.
#include "ledger/period.hpp"

#include <cstdint>
#include <limits>

namespace ledger {

// Howard Hinnant, "chrono-Compatible Low-Level Date Algorithms".
CivilDate civil_from_days(int64_t days) {
  days += 719468;
  const int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const int64_t doe = days - era * 146097;                                  // [0, 146096]
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; // [0, 399]
  const int64_t y = yoe + era * 400;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               // [0, 365]
  const int64_t mp = (5 * doy + 2) / 153;                                    // [0, 11]
  const int64_t d = doy - (153 * mp + 2) / 5 + 1;                            // [1, 31]
  const int64_t m = mp < 10 ? mp + 3 : mp - 9;                               // [1, 12]
  return CivilDate{static_cast<int32_t>(m <= 2 ? y + 1 : y), static_cast<uint32_t>(m),
                   static_cast<uint32_t>(d)};
}

int64_t days_from_civil(CivilDate date) {
  const int64_t y = static_cast<int64_t>(date.year) - (date.month <= 2 ? 1 : 0);
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t m = date.month;
  const int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + date.day - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

int64_t floor_days(int64_t unix_seconds) {
  int64_t days = unix_seconds / 86400;
  if (unix_seconds % 86400 < 0) --days;
  return days;
}

namespace {
// 1970-01-01 was a Thursday; the Monday of its week is day -3.
constexpr int64_t kWeekOriginDays = -3;
int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
}  // namespace

int64_t period_index(Period kind, int64_t unix_seconds) {
  const int64_t days = floor_days(unix_seconds);
  switch (kind) {
    case Period::kDaily:
      return days;
    case Period::kWeekly:
      return floor_div(days - kWeekOriginDays, 7);
    case Period::kMonthly: {
      const CivilDate date = civil_from_days(days);
      return (static_cast<int64_t>(date.year) - 1970) * 12 + (date.month - 1);
    }
    case Period::kNone:
      break;
  }
  return 0;
}

int64_t period_start_unix(Period kind, int64_t index) {
  switch (kind) {
    case Period::kDaily:
      return index * 86400;
    case Period::kWeekly:
      return (index * 7 + kWeekOriginDays) * 86400;
    case Period::kMonthly: {
      const int64_t year = 1970 + floor_div(index, 12);
      const int64_t month = index - floor_div(index, 12) * 12 + 1;
      return days_from_civil(CivilDate{static_cast<int32_t>(year), static_cast<uint32_t>(month), 1}) *
             86400;
    }
    case Period::kNone:
      break;
  }
  return 0;
}

int64_t period_end_unix(Period kind, int64_t index) {
  if (kind == Period::kNone) return std::numeric_limits<int64_t>::max();
  return period_start_unix(kind, index + 1);
}

std::optional<Period> parse_period(std::string_view text) {
  if (text == "none") return Period::kNone;
  if (text == "daily") return Period::kDaily;
  if (text == "weekly") return Period::kWeekly;
  if (text == "monthly") return Period::kMonthly;
  return std::nullopt;
}

std::string_view period_name(Period kind) {
  switch (kind) {
    case Period::kNone: return "none";
    case Period::kDaily: return "daily";
    case Period::kWeekly: return "weekly";
    case Period::kMonthly: return "monthly";
  }
  return "invalid";
}

}  // namespace ledger
