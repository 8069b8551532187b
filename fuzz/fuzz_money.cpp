// fuzz_money — money at the edges (DESIGN.md 3).
//
// 1. The bytes as text through ledger::parse_usd, checked against an independent reference (the
//    documented grammar evaluated in 128-bit arithmetic): the same verdict and the same value; and
//    when it parses, format_usd(v) is canonical text that parses back to exactly v.
// 2. The first 8 bytes (when there are 8) as a double through ledger::usd_double_to_nanousd: a value
//    exactly for finite |x| * 1e9 <= kAmountNanoUsdMax, nullopt otherwise; within 1 nano-USD of
//    x * 1e9 plus float noise (the two ulps within which a value is taken to be a whole nano-USD),
//    and when not snapped to a whole nano-USD, rounded away from zero (never undercounted).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "ledger/money.hpp"

namespace {

using ledger::kAmountNanoUsdMax;

[[noreturn]] void broken(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_money: %s: %s\n", what, detail.c_str());
  std::abort();
}

// money.hpp's grammar: [+-] digits [. 1-9 digits], at most 40 bytes, |value| <= kAmountNanoUsdMax.
std::optional<int64_t> reference_parse_usd(std::string_view text) {
  if (text.empty() || text.size() > 40) return std::nullopt;
  size_t i = 0;
  bool negative = false;
  if (text[0] == '+' || text[0] == '-') {
    negative = text[0] == '-';
    ++i;
  }
  __int128 whole = 0;
  size_t whole_digits = 0;
  // Saturates past 10^20 (over any legal amount) so that 40 digits cannot overflow 128 bits.
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, ++whole_digits)
    whole = whole > static_cast<__int128>(1e20) ? whole : whole * 10 + (text[i] - '0');
  if (whole_digits == 0) return std::nullopt;
  __int128 fraction = 0;
  size_t fraction_digits = 0;
  if (i < text.size() && text[i] == '.') {
    for (++i; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, ++fraction_digits)
      fraction = fraction * 10 + (text[i] - '0');
    if (fraction_digits == 0 || fraction_digits > 9) return std::nullopt;
  }
  if (i != text.size()) return std::nullopt;
  for (size_t d = fraction_digits; d < 9; ++d) fraction *= 10;
  const __int128 magnitude = whole * 1'000'000'000 + fraction;  // whole <= 10^21: fits in 128 bits
  if (magnitude > kAmountNanoUsdMax) return std::nullopt;
  return static_cast<int64_t>(negative ? -magnitude : magnitude);
}

bool canonical(const std::string& s) {
  // -?digits.dd[d...] with 2 to 9 fractional digits, no leading zero unless the whole part is 0.
  size_t i = s.size() > 0 && s[0] == '-' ? 1 : 0;
  const size_t whole_begin = i;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  const size_t whole_digits = i - whole_begin;
  if (whole_digits == 0 || (whole_digits > 1 && s[whole_begin] == '0') || i >= s.size() || s[i] != '.') return false;
  const size_t fraction_digits = s.size() - i - 1;
  for (size_t j = i + 1; j < s.size(); ++j)
    if (s[j] < '0' || s[j] > '9') return false;
  return fraction_digits >= 2 && fraction_digits <= 9;
}

void check_text(std::string_view text) {
  const auto parsed = ledger::parse_usd(text);
  const auto expected = reference_parse_usd(text);
  if (parsed != expected)
    broken("parse_usd disagrees with the grammar", std::string(text) + " -> " + (parsed ? std::to_string(*parsed) : "nullopt") +
                                                       ", expected " + (expected ? std::to_string(*expected) : "nullopt"));
  if (!parsed) return;
  const std::string formatted = ledger::format_usd(*parsed);
  if (!canonical(formatted)) broken("format_usd is not canonical", formatted);
  const auto back = ledger::parse_usd(formatted);
  if (back != parsed) broken("parse_usd(format_usd(v)) != v", formatted);
}

void check_double(double x) {
  const auto got = ledger::usd_double_to_nanousd(x);
  const long double scaled = static_cast<long double>(x) * 1e9L;
  const bool in_range = std::isfinite(x) && std::fabs(scaled) <= static_cast<long double>(kAmountNanoUsdMax);
  char shown[64];
  std::snprintf(shown, sizeof shown, "%.17g", x);
  if (got.has_value() != in_range) broken(in_range ? "no value for a legal amount" : "a value for no amount", shown);
  if (!got) return;
  if (*got < -kAmountNanoUsdMax || *got > kAmountNanoUsdMax) broken("out of range", shown);
  // Float noise: two ulps of x, in nano-USD, plus the rounding of the products themselves.
  const double inf = std::numeric_limits<double>::infinity();
  const long double ulp = std::fabs(static_cast<long double>(std::nextafter(x, inf)) - static_cast<long double>(x));
  const long double noise = 3 * ulp * 1e9L + std::fabs(scaled) * 1e-18L;
  // (Mathematically below 1; in long double a ceiling of a tiny x shows as exactly 1.)
  const long double distance = static_cast<long double>(*got) - scaled;
  if (std::fabs(distance) > 1 + noise) broken("more than a nano-USD (plus float noise) away", shown);
  // Never undercounted beyond float noise: away from zero, or snapped within the noise.
  if ((x > 0 && distance < -noise) || (x < 0 && distance > noise)) broken("rounded towards zero", shown);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check_text(std::string_view(reinterpret_cast<const char*>(data), size));
  if (size >= 8) {
    double x;
    std::memcpy(&x, data, sizeof x);
    check_double(x);
  }
  return 0;
}
