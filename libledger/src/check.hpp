// check.hpp — assertions that stay on (TigerBeetle's habit): a violated invariant of this process's
// own state stops the process at once (its holds and half-done operations are then repaired like
// those of any process that died), rather than let it write a wrong value into shared memory or the
// store. On in every build: each costs a compare and a predicted branch, and the hot path's
// benchmarks (bench/results/) were measured with them.
//
// Not for what is read from the segment or the store: another process, a damaged file or an older
// format can put anything there, and that is an error to return (kIncompatible, kInvalidArgument),
// never an abort. LEDGER_CHECK is for what this process computed itself: arguments between its own
// functions, the order of an operation's steps, the values it is about to write.
#pragma once

namespace ledger::detail {
[[noreturn]] void check_failed(const char* condition, const char* file, int line);
}  // namespace ledger::detail

#define LEDGER_CHECK(condition) \
  ((condition) ? static_cast<void>(0) : ::ledger::detail::check_failed(#condition, __FILE__, __LINE__))
