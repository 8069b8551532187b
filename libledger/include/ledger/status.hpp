// ledger/status.hpp — the result of every fallible call.
//
// A Status is a code (the same numbers as the C ABI's LEDGER_* codes) and nothing else, so returning
// one never allocates and the hot path stays exception-free. ok() is LEDGER_OK.
#pragma once

#include <cstdint>
#include <string_view>

namespace ledger {

// The values are the C ABI's codes: never renumber them.
enum class Code : int32_t {
  kOk = 0,
  kDeniedOverBudget = 1,
  kDeniedParentOverBudget = 2,
  kDeniedModel = 3,
  kDeniedBlocked = 4,
  kUnknownAccount = 5,
  kUnknownReservation = 6,
  kAlreadySettled = 7,
  kInvalidArgument = 8,
  kFull = 9,
  kIncompatible = 10,
  kIoError = 11,
  kPermission = 12,
  kNotFound = 13,
  kUnknownModel = 14,
  kDeniedRate = 15,  // a requests/tokens per minute or concurrency limit (Ledger::rate_retry_after_ms)
};

class [[nodiscard]] Status {
 public:
  constexpr Status() = default;
  constexpr Status(Code code) : code_(code) {}  // NOLINT: implicit on purpose, `return Code::kFull;`

  constexpr bool ok() const { return code_ == Code::kOk; }
  constexpr Code code() const { return code_; }
  constexpr int32_t value() const { return static_cast<int32_t>(code_); }
  // True for the denials a worker must respect (codes 1-4 and 15).
  constexpr bool denied() const { return (value() >= 1 && value() <= 4) || code_ == Code::kDeniedRate; }
  std::string_view message() const;
  constexpr bool operator==(const Status&) const = default;

 private:
  Code code_ = Code::kOk;
};

// A static name for a code; "unknown code" for numbers outside the list.
std::string_view code_message(int32_t code);

inline std::string_view Status::message() const { return code_message(value()); }

}  // namespace ledger
