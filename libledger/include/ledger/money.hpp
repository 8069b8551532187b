// ledger/money.hpp — money is a signed 64-bit count of nano-USD (1 USD = 1,000,000,000), never a float.
#pragma once

#include "ledger/export.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ledger {

inline constexpr int64_t kNanoUsdPerUsd = 1'000'000'000;
// The largest amount a single operation or limit may carry: one billion USD. Keeping amounts far
// below INT64_MAX lets every sum in the ledger be checked without a 128-bit intermediate.
inline constexpr int64_t kAmountNanoUsdMax = 1'000'000'000 * kNanoUsdPerUsd;

// Parses decimal USD text exactly: "12", "0.1", "-3.000000001", "+5.5". At most 9 fractional
// digits (anything finer is not a whole nano-USD and is refused), no exponent, no spaces, and the
// magnitude at most kAmountNanoUsdMax. Returns nullopt on any deviation.
LEDGER_EXPORT std::optional<int64_t> parse_usd(std::string_view text);

// Formats nano-USD as decimal USD with at least two and at most nine fractional digits, trailing
// zeros trimmed: 1500000000 -> "1.50", 1 -> "0.000000001", -250000000 -> "-0.25".
LEDGER_EXPORT std::string format_usd(int64_t nanousd);

// Converts a USD double from an external API (OpenRouter) to nano-USD, once, at the edge (DESIGN 3):
// a value within float noise of a whole nano-USD becomes that number (5.75e-05 -> 57,500); a value
// really finer than a nano-USD rounds away from zero (2.83125e-05 -> 28,313), so spend is never
// undercounted. nullopt only for NaN, infinities and magnitudes above kAmountNanoUsdMax.
LEDGER_EXPORT std::optional<int64_t> usd_double_to_nanousd(double usd);

}  // namespace ledger
