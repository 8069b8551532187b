// money.cpp — exact decimal USD <-> nano-USD.
#include "ledger/money.hpp"

#include <cmath>
#include <limits>

namespace ledger {

std::optional<int64_t> parse_usd(std::string_view text) {
  if (text.empty() || text.size() > 40) return std::nullopt;
  size_t i = 0;
  bool negative = false;
  if (text[0] == '-' || text[0] == '+') {
    negative = text[0] == '-';
    i = 1;
  }
  int64_t whole = 0;
  size_t whole_digits = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, ++whole_digits) {
    if (whole > kAmountNanoUsdMax / kNanoUsdPerUsd) return std::nullopt;
    whole = whole * 10 + (text[i] - '0');
  }
  int64_t fraction = 0;
  size_t fraction_digits = 0;
  if (i < text.size() && text[i] == '.') {
    ++i;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, ++fraction_digits) {
      if (fraction_digits == 9) return std::nullopt;  // finer than a nano-USD
      fraction = fraction * 10 + (text[i] - '0');
    }
    if (fraction_digits == 0) return std::nullopt;  // "1." is not a number we accept
  }
  if (i != text.size() || whole_digits == 0) return std::nullopt;
  for (size_t d = fraction_digits; d < 9; ++d) fraction *= 10;
  if (whole > kAmountNanoUsdMax / kNanoUsdPerUsd) return std::nullopt;
  const int64_t magnitude = whole * kNanoUsdPerUsd + fraction;
  if (magnitude > kAmountNanoUsdMax) return std::nullopt;
  return negative ? -magnitude : magnitude;
}

std::string format_usd(int64_t nanousd) {
  // INT64_MIN has no positive counterpart; work on the unsigned magnitude.
  const bool negative = nanousd < 0;
  const uint64_t magnitude = negative ? uint64_t{0} - static_cast<uint64_t>(nanousd)
                                      : static_cast<uint64_t>(nanousd);
  const uint64_t whole = magnitude / 1'000'000'000u;
  uint64_t fraction = magnitude % 1'000'000'000u;
  std::string digits(9, '0');
  for (int d = 8; d >= 0; --d) {
    digits[static_cast<size_t>(d)] = static_cast<char>('0' + fraction % 10);
    fraction /= 10;
  }
  while (digits.size() > 2 && digits.back() == '0') digits.pop_back();
  std::string out = negative ? "-" : "";
  out += std::to_string(whole);
  out += '.';
  out += digits;
  return out;
}

std::optional<int64_t> usd_double_to_nanousd(double usd) {
  if (!std::isfinite(usd)) return std::nullopt;
  const long double scaled = static_cast<long double>(usd) * 1e9L;
  if (std::fabs(scaled) > static_cast<long double>(kAmountNanoUsdMax)) return std::nullopt;
  // Within float noise of a whole nano-USD (the double nearest to it is within two ulps of the
  // value): that whole number. 5.75e-05 is 57,500.000000000004 nano-USD in binary: 57,500.
  const long double nearest = std::nearbyint(scaled);
  const double back = static_cast<double>(nearest / 1e9L);
  const double inf = std::numeric_limits<double>::infinity();
  const double low = std::nextafter(std::nextafter(usd, -inf), -inf), high = std::nextafter(std::nextafter(usd, inf), inf);
  if (back >= low && back <= high) return static_cast<int64_t>(nearest);
  // Really finer than a nano-USD (2.83125e-05): away from zero, so spend is never undercounted.
  return static_cast<int64_t>(usd > 0 ? std::ceil(scaled) : std::floor(scaled));
}

}  // namespace ledger
