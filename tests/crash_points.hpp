// crash_points.hpp — killing a process at each crash point of an operation in turn.
//
// The crash-point build of libledger (the `ledger_crashpoints` target, LEDGER_CRASH_POINTS) counts
// the LEDGER_CRASH_POINT()s a process passes and `_exit(kCrashedExit)`s at the Nth one once armed
// with ledger_test_crash_after(N): "killed between two instructions" at every interesting place,
// deterministically. A test runs the operation in a child armed for point 1, 2, 3, ... and checks
// the repaired outcome after each, until the operation runs to its end.
//
// for_each_crash_point is the one loop that does that. It checks what a hand-written loop can
// forget: every child ended at its crash point or completed (any other exit, or a signal, fails the
// test case naming the point), and the operation did complete within kCrashPointsMax points (a loop
// that only ever crashed, or broke out early, would prove nothing about the operation's end).
//
// Catch2 assertions only in the test's own process: children report through their exit code.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "ledger/ledger.hpp"

// Test-only entry points of the crash-point build: die at the Nth crash point from now (0 = never);
// call hook once at the next pause point.
extern "C" void ledger_test_crash_after(int64_t points);
extern "C" void ledger_test_pause_once(void (*hook)());

namespace ledger_test {

inline constexpr int kCrashedExit = 77;          // the exit code of a process killed at its point
inline constexpr int64_t kCrashPointsMax = 200;  // no operation has more crash points than this

// How a process armed with ledger_test_crash_after ended.
enum class ChildEnd {
  kCompleted,  // exit 0
  kCrashed,    // exit kCrashedExit
};

// A waitpid status in words, for failure messages.
inline std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

// REQUIRES of a child armed at a crash point: it exited 0 (its operation completed and did what its
// body checked) or kCrashedExit (it died at the point). Anything else fails the test case.
inline ChildEnd require_crash_or_completion(int wait_status) {
  INFO("child: " << describe_wait_status(wait_status));
  REQUIRE(WIFEXITED(wait_status));
  const int code = WEXITSTATUS(wait_status);
  REQUIRE((code == 0 || code == kCrashedExit));
  return code == 0 ? ChildEnd::kCompleted : ChildEnd::kCrashed;
}

// Forks a child that opens its own handle on `dir`, arms crash point `point` (0 = never) and runs
// `body`; it exits 0 when body returns true, 1 when it returns false, 2 when the open fails, and
// kCrashedExit at the point. It never closes its handle: its process slot is left to the
// reclaimer, as a crash would leave it. Returns the child's wait status.
inline int run_crashing_child(const std::string& dir, const ledger::Options& options, int64_t point,
                              const std::function<bool(ledger::Ledger&)>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::unique_ptr<ledger::Ledger> ledger;
    if (!ledger::Ledger::open(dir, options, &ledger).ok()) ::_exit(2);
    ledger_test_crash_after(point);
    const bool ok = body(*ledger);
    ::_exit(ok ? 0 : 1);
  }
  REQUIRE(pid > 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return status;
}

inline int run_crashing_child(const std::string& dir, int64_t point, const std::function<bool(ledger::Ledger&)>& body) {
  return run_crashing_child(dir, ledger::Options{}, point, body);
}

// For point = 1, 2, ...: `run(point)` starts the process armed to die at `point`, waits for it and
// returns its wait status; that status must be a completion or a crash at the point
// (require_crash_or_completion); then `check(point, completed)` checks the outcome (after a
// reclaim, typically), with the point named in any failure. The loop ends after the first run
// whose process completed, which must come before kCrashPointsMax. Returns how many runs crashed:
// the number of crash points the operation passed, for the caller to bound from below.
inline int64_t for_each_crash_point(const std::function<int(int64_t point)>& run,
                                    const std::function<void(int64_t point, bool completed)>& check) {
  int64_t crashes = 0;
  for (int64_t point = 1; point <= kCrashPointsMax; ++point) {
    INFO("crash point " << point);
    const bool completed = require_crash_or_completion(run(point)) == ChildEnd::kCompleted;
    check(point, completed);
    if (completed) return crashes;
    ++crashes;
  }
  FAIL("the operation never completed: it was killed at each of " << kCrashPointsMax << " crash points");
  return crashes;
}

}  // namespace ledger_test
