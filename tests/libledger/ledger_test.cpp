// Single-process semantics of the C++ API: budgets, chains, holds, settlement, periods, limits.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstring>
#include <fstream>

#include "layout.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger::detail::Header;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::TempDir;
using ledger_test::balance_of;
using ledger_test::utc;

namespace {

std::unique_ptr<Ledger> open_ledger(const TempDir& dir, ManualClock* clock = nullptr, Limits limits = {}) {
  Options options;
  options.limits = limits;
  if (clock != nullptr) options.clock = clock->clock();
  std::unique_ptr<Ledger> ledger;
  REQUIRE(Ledger::open(dir.path(), options, &ledger) == Code::kOk);
  return ledger;
}

}  // namespace

TEST_CASE("open creates, attaches, and refuses what is not there", "[ledger]") {
  TempDir dir;
  Options attach_only;
  attach_only.create_if_missing = false;
  std::unique_ptr<Ledger> ledger;
  CHECK(Ledger::open(dir.path(), attach_only, &ledger) == Code::kNotFound);
  CHECK(Ledger::open(dir.path() + "/missing/deeper", Options{}, &ledger) == Code::kNotFound);
  CHECK(Ledger::open("", Options{}, &ledger) == Code::kInvalidArgument);
  Options bad;
  bad.limits.max_processes = 5000;
  CHECK(Ledger::open(dir.path(), bad, &ledger) == Code::kInvalidArgument);

  auto first = open_ledger(dir);
  REQUIRE(first->set_budget("alice", 5 * kUsd, Period::kNone, "") == Code::kOk);
  REQUIRE(Ledger::open(dir.path(), attach_only, &ledger) == Code::kOk);  // attach sees the same state
  CHECK(balance_of(*ledger, "alice").limit_nanousd == 5 * kUsd);

  struct stat st {};
  REQUIRE(::stat(Ledger::segment_path(dir.path()).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(::stat((dir.path() + "/ledger.lock").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("account names and budgets are validated", "[ledger]") {
  TempDir dir;
  auto ledger = open_ledger(dir);
  CHECK(ledger->set_budget("", kUsd, Period::kDaily, "") == Code::kInvalidArgument);
  CHECK(ledger->set_budget(std::string(64, 'a'), kUsd, Period::kDaily, "") == Code::kInvalidArgument);
  CHECK(ledger->set_budget(std::string(63, 'a'), kUsd, Period::kDaily, "") == Code::kOk);
  CHECK(ledger->set_budget("bad name", kUsd, Period::kDaily, "") == Code::kInvalidArgument);
  CHECK(ledger->set_budget("bad/name", kUsd, Period::kDaily, "") == Code::kInvalidArgument);
  CHECK(ledger->set_budget("ok.A-z_0:9@x", kUsd, Period::kDaily, "") == Code::kOk);
  CHECK(ledger->set_budget("neg", -1, Period::kDaily, "") == Code::kInvalidArgument);
  CHECK(ledger->set_budget("huge", kAmountNanoUsdMax + 1, Period::kDaily, "") == Code::kInvalidArgument);
  CHECK(ledger->set_budget("p", kUsd, static_cast<Period>(4), "") == Code::kInvalidArgument);
  CHECK(ledger->set_budget("orphan", kUsd, Period::kDaily, "nobody") == Code::kUnknownAccount);
  CHECK(ledger->set_budget("self", kUsd, Period::kDaily, "self") == Code::kInvalidArgument);
  Balance b;
  CHECK(ledger->balance("nobody", &b) == Code::kUnknownAccount);
  CHECK(ledger->debit("nobody", 1) == Code::kUnknownAccount);
}

TEST_CASE("chains are at most four deep and never cyclic", "[ledger]") {
  TempDir dir;
  auto ledger = open_ledger(dir);
  REQUIRE(ledger->set_budget("org", 100 * kUsd, Period::kMonthly, "") == Code::kOk);
  REQUIRE(ledger->set_budget("dept", 100 * kUsd, Period::kMonthly, "org") == Code::kOk);
  REQUIRE(ledger->set_budget("team", 100 * kUsd, Period::kMonthly, "dept") == Code::kOk);
  REQUIRE(ledger->set_budget("user", 100 * kUsd, Period::kDaily, "team") == Code::kOk);
  CHECK(ledger->set_budget("fifth", kUsd, Period::kDaily, "user") == Code::kInvalidArgument);
  CHECK(ledger->set_budget("org", kUsd, Period::kDaily, "user") == Code::kInvalidArgument);  // cycle
  REQUIRE(ledger->set_budget("other", kUsd, Period::kDaily, "") == Code::kOk);
  // Moving "dept" (with two levels below it) under a 2-deep chain would make a 5-deep chain.
  REQUIRE(ledger->set_budget("top", kUsd, Period::kDaily, "") == Code::kOk);
  REQUIRE(ledger->set_budget("mid", kUsd, Period::kDaily, "top") == Code::kOk);
  CHECK(ledger->set_budget("dept", 100 * kUsd, Period::kMonthly, "mid") == Code::kInvalidArgument);
  CHECK(ledger->set_budget("dept", 100 * kUsd, Period::kMonthly, "top") == Code::kOk);
}

TEST_CASE("debit admits exactly up to the limit, all or nothing on the chain", "[ledger]") {
  TempDir dir;
  auto ledger = open_ledger(dir);
  REQUIRE(ledger->set_budget("team", 10 * kUsd, Period::kNone, "") == Code::kOk);
  REQUIRE(ledger->set_budget("alice", 6 * kUsd, Period::kNone, "team") == Code::kOk);
  REQUIRE(ledger->set_budget("bob", 6 * kUsd, Period::kNone, "team") == Code::kOk);

  CHECK(ledger->debit("alice", 6 * kUsd) == Code::kOk);
  CHECK(ledger->debit("alice", 1) == Code::kDeniedOverBudget);
  CHECK(ledger->debit("bob", 4 * kUsd + 1) == Code::kDeniedParentOverBudget);
  // The denied request left no trace on bob, whose own level was applied and then undone.
  Balance bob = balance_of(*ledger, "bob");
  CHECK(bob.spent_nanousd == 0);
  CHECK(bob.requests == 0);
  CHECK(ledger->debit("bob", 4 * kUsd) == Code::kOk);
  const Balance team = balance_of(*ledger, "team");
  CHECK(team.spent_nanousd == 10 * kUsd);
  CHECK(team.available_nanousd == 0);
  CHECK(team.requests == 2);
  CHECK(ledger->debit("alice", -1) == Code::kInvalidArgument);
  CHECK(ledger->debit("alice", kAmountNanoUsdMax + 1) == Code::kInvalidArgument);
  CHECK(ledger->debit("alice", 0) == Code::kOk);  // a free request still counts as a request
  CHECK(balance_of(*ledger, "alice").requests == 2);
}

TEST_CASE("reserve holds, commit settles the actual cost once, release frees", "[ledger]") {
  TempDir dir;
  auto ledger = open_ledger(dir);
  REQUIRE(ledger->set_budget("team", 10 * kUsd, Period::kNone, "") == Code::kOk);
  REQUIRE(ledger->set_budget("alice", 5 * kUsd, Period::kNone, "team") == Code::kOk);

  ReservationId a = 0, b = 0, c = 0;
  REQUIRE(ledger->reserve("alice", 2 * kUsd, 60, &a) == Code::kOk);
  REQUIRE(a != 0);
  REQUIRE(ledger->reserve("alice", 2 * kUsd, 60, &b) == Code::kOk);
  CHECK(ledger->reserve("alice", 2 * kUsd, 60, &c) == Code::kDeniedOverBudget);
  Balance alice = balance_of(*ledger, "alice");
  CHECK(alice.held_nanousd == 4 * kUsd);
  CHECK(alice.spent_nanousd == 0);
  CHECK(alice.available_nanousd == 1 * kUsd);
  CHECK(balance_of(*ledger, "team").held_nanousd == 4 * kUsd);

  // Commit less than the hold: the difference is released.
  CHECK(ledger->commit(a, kUsd / 2) == Code::kOk);
  CHECK(ledger->commit(a, kUsd / 2) == Code::kAlreadySettled);
  CHECK(ledger->release(a) == Code::kAlreadySettled);
  // Commit more than the hold: the excess is charged, never denied (the provider billed it).
  CHECK(ledger->commit(b, 4 * kUsd) == Code::kOk);
  alice = balance_of(*ledger, "alice");
  CHECK(alice.spent_nanousd == kUsd / 2 + 4 * kUsd);
  CHECK(alice.held_nanousd == 0);
  CHECK(alice.requests == 2);
  CHECK(alice.available_nanousd == kUsd / 2);
  CHECK(balance_of(*ledger, "team").spent_nanousd == kUsd / 2 + 4 * kUsd);

  REQUIRE(ledger->reserve("alice", kUsd / 4, 60, &c) == Code::kOk);
  CHECK(ledger->release(c) == Code::kOk);
  CHECK(ledger->commit(c, 1) == Code::kAlreadySettled);
  CHECK(balance_of(*ledger, "alice").held_nanousd == 0);
  CHECK(balance_of(*ledger, "alice").requests == 2);

  CHECK(ledger->commit(0, 1) == Code::kUnknownReservation);
  CHECK(ledger->commit(~uint64_t{0}, 1) == Code::kUnknownReservation);
  CHECK(ledger->commit(c, -1) == Code::kInvalidArgument);
  ReservationId id = 0;
  CHECK(ledger->reserve("alice", 1, kTtlMaxSeconds + 1, &id) == Code::kInvalidArgument);
  CHECK(ledger->reserve("alice", -1, 60, &id) == Code::kInvalidArgument);
}

TEST_CASE("a reused slot never accepts a stale id", "[ledger]") {
  TempDir dir;
  Limits limits;
  limits.max_reservations = 1;
  auto ledger = open_ledger(dir, nullptr, limits);
  REQUIRE(ledger->set_budget("alice", 5 * kUsd, Period::kNone, "") == Code::kOk);
  ReservationId first = 0, second = 0, third = 0;
  REQUIRE(ledger->reserve("alice", kUsd, 60, &first) == Code::kOk);
  CHECK(ledger->reserve("alice", kUsd, 60, &third) == Code::kFull);
  REQUIRE(ledger->commit(first, kUsd) == Code::kOk);
  REQUIRE(ledger->reserve("alice", kUsd, 60, &second) == Code::kOk);
  CHECK(second != first);
  CHECK(ledger->commit(first, kUsd) == Code::kUnknownReservation);
  CHECK(ledger->release(first) == Code::kUnknownReservation);
  CHECK(balance_of(*ledger, "alice").held_nanousd == kUsd);
  CHECK(ledger->release(second) == Code::kOk);
  CHECK(balance_of(*ledger, "alice").spent_nanousd == kUsd);
}

TEST_CASE("expired holds become tombstones whose late commit still charges", "[ledger]") {
  TempDir dir;
  ManualClock clock;
  clock.now_ms = utc(2026, 11, 26, 12) * 1000;
  auto ledger = open_ledger(dir, &clock);
  REQUIRE(ledger->set_budget("team", 10 * kUsd, Period::kDaily, "") == Code::kOk);
  REQUIRE(ledger->set_budget("alice", 3 * kUsd, Period::kDaily, "team") == Code::kOk);
  ReservationId late = 0, released = 0;
  REQUIRE(ledger->reserve("alice", 2 * kUsd, 10, &late) == Code::kOk);
  REQUIRE(ledger->reserve("alice", kUsd, 10, &released) == Code::kOk);
  uint32_t reclaimed = 99;
  REQUIRE(ledger->reclaim(&reclaimed) == Code::kOk);
  CHECK(reclaimed == 0);  // not expired yet

  clock.now_ms += 11'000;
  REQUIRE(ledger->reclaim(&reclaimed) == Code::kOk);
  CHECK(reclaimed == 2);
  Balance alice = balance_of(*ledger, "alice");
  CHECK(alice.held_nanousd == 0);
  CHECK(alice.available_nanousd == 3 * kUsd);  // the budget is free again...
  // ...and the late commit charges what the provider billed, even beyond the limit now.
  REQUIRE(ledger->debit("alice", 2 * kUsd) == Code::kOk);
  CHECK(ledger->commit(late, 2 * kUsd) == Code::kOk);
  CHECK(ledger->commit(late, 2 * kUsd) == Code::kAlreadySettled);
  CHECK(ledger->release(released) == Code::kOk);  // releasing a tombstone retires it
  CHECK(ledger->release(released) == Code::kAlreadySettled);
  alice = balance_of(*ledger, "alice");
  CHECK(alice.spent_nanousd == 4 * kUsd);
  CHECK(alice.available_nanousd == -kUsd);
  CHECK(alice.requests == 2);
  CHECK(balance_of(*ledger, "team").spent_nanousd == 4 * kUsd);
  CHECK(ledger->debit("alice", 1) == Code::kDeniedOverBudget);

  // A tombstone lives for the grace period (24 h by default), then it is dropped: its late commit
  // is told the reservation is unknown (it was given up, not settled) and charges nothing.
  ReservationId forgotten = 0;
  REQUIRE(ledger->reserve("team", kUsd, 1, &forgotten) == Code::kOk);
  clock.now_ms += 2'000;
  REQUIRE(ledger->reclaim(&reclaimed) == Code::kOk);
  CHECK(reclaimed == 1);
  clock.now_ms += 86'400'000 + 1'000;
  REQUIRE(ledger->reclaim(&reclaimed) == Code::kOk);
  const int64_t team_before = balance_of(*ledger, "team").spent_nanousd;
  CHECK(ledger->commit(forgotten, kUsd) == Code::kUnknownReservation);
  CHECK(balance_of(*ledger, "team").spent_nanousd == team_before);
}

TEST_CASE("daily, weekly and monthly budgets roll over lazily at UTC boundaries", "[ledger]") {
  TempDir dir;
  ManualClock clock;
  clock.now_ms = utc(2026, 11, 29, 23, 59, 59) * 1000;  // Sunday, last second of the week
  auto ledger = open_ledger(dir, &clock);
  REQUIRE(ledger->set_budget("month", 100 * kUsd, Period::kMonthly, "") == Code::kOk);
  REQUIRE(ledger->set_budget("week", 50 * kUsd, Period::kWeekly, "month") == Code::kOk);
  REQUIRE(ledger->set_budget("day", 3 * kUsd, Period::kDaily, "week") == Code::kOk);

  REQUIRE(ledger->debit("day", 3 * kUsd) == Code::kOk);
  ReservationId straddling = 0;
  CHECK(ledger->reserve("day", 1, 60, &straddling) == Code::kDeniedOverBudget);
  REQUIRE(ledger->set_budget("day", 4 * kUsd, Period::kDaily, "week") == Code::kOk);
  REQUIRE(ledger->reserve("day", kUsd, 600, &straddling) == Code::kOk);
  Balance day = balance_of(*ledger, "day");
  CHECK(day.period_start_unix == utc(2026, 11, 29));

  clock.now_ms += 1000;  // Monday 2026-11-30 00:00:00: new day and new week, same month
  day = balance_of(*ledger, "day");
  CHECK(day.spent_nanousd == 0);
  CHECK(day.held_nanousd == 0);  // the straddling hold belongs to the previous day
  CHECK(day.requests == 0);
  CHECK(day.period_start_unix == utc(2026, 11, 30));
  CHECK(balance_of(*ledger, "week").spent_nanousd == 0);
  CHECK(balance_of(*ledger, "week").period_start_unix == utc(2026, 11, 30));
  CHECK(balance_of(*ledger, "month").spent_nanousd == 3 * kUsd);
  CHECK(balance_of(*ledger, "month").held_nanousd == kUsd);

  REQUIRE(ledger->debit("day", 4 * kUsd) == Code::kOk);  // the whole new day's budget
  // The hold from yesterday settles into yesterday's period, not today's.
  REQUIRE(ledger->commit(straddling, kUsd / 2) == Code::kOk);
  CHECK(balance_of(*ledger, "day").spent_nanousd == 4 * kUsd);
  CHECK(balance_of(*ledger, "month").spent_nanousd == 7 * kUsd + kUsd / 2);

  clock.now_ms = utc(2026, 12, 1) * 1000;  // new month
  CHECK(balance_of(*ledger, "month").spent_nanousd == 0);
  CHECK(balance_of(*ledger, "month").period_start_unix == utc(2026, 12, 1));
  CHECK(balance_of(*ledger, "week").spent_nanousd == 4 * kUsd);  // same week (Mon 11-30)
  REQUIRE(ledger->debit("day", kUsd) == Code::kOk);
  CHECK(balance_of(*ledger, "month").spent_nanousd == kUsd);
  CHECK(balance_of(*ledger, "week").spent_nanousd == 5 * kUsd);

  // A commit of a hold two periods old has no period left to go to: it charges the current one.
  ReservationId old = 0;
  REQUIRE(ledger->reserve("day", kUsd, kTtlMaxSeconds, &old) == Code::kOk);
  clock.now_ms += 2 * 86'400'000;
  REQUIRE(ledger->debit("day", kUsd) == Code::kOk);
  REQUIRE(ledger->commit(old, kUsd / 4) == Code::kOk);
  CHECK(balance_of(*ledger, "day").spent_nanousd == kUsd + kUsd / 4);
  CHECK(balance_of(*ledger, "day").requests == 2);
}

TEST_CASE("blocking an account or an ancestor denies at once", "[ledger]") {
  TempDir dir;
  auto ledger = open_ledger(dir);
  REQUIRE(ledger->set_budget("team", 10 * kUsd, Period::kNone, "") == Code::kOk);
  REQUIRE(ledger->set_budget("alice", 5 * kUsd, Period::kNone, "team") == Code::kOk);
  REQUIRE(ledger->block("alice", true) == Code::kOk);
  CHECK(ledger->debit("alice", 1) == Code::kDeniedBlocked);
  CHECK(balance_of(*ledger, "alice").blocked);
  REQUIRE(ledger->block("alice", false) == Code::kOk);
  REQUIRE(ledger->block("team", true) == Code::kOk);
  ReservationId id = 0;
  CHECK(ledger->reserve("alice", 1, 60, &id) == Code::kDeniedBlocked);
  CHECK(ledger->block("nobody", true) == Code::kUnknownAccount);
  REQUIRE(ledger->block("team", false) == Code::kOk);
  CHECK(ledger->debit("alice", 1) == Code::kOk);
}

TEST_CASE("capacities fixed at creation give kFull when used up", "[ledger]") {
  TempDir dir;
  Limits limits;
  limits.max_accounts = 3;
  limits.max_processes = 2;
  auto ledger = open_ledger(dir, nullptr, limits);
  REQUIRE(ledger->set_budget("a", kUsd, Period::kNone, "") == Code::kOk);
  REQUIRE(ledger->set_budget("b", kUsd, Period::kNone, "") == Code::kOk);
  REQUIRE(ledger->set_budget("c", kUsd, Period::kNone, "") == Code::kOk);
  CHECK(ledger->set_budget("d", kUsd, Period::kNone, "") == Code::kFull);
  CHECK(ledger->set_budget("c", 2 * kUsd, Period::kNone, "") == Code::kOk);  // updates still work
  auto second = open_ledger(dir);
  std::unique_ptr<Ledger> third;
  CHECK(Ledger::open(dir.path(), Options{}, &third) == Code::kFull);
  second.reset();
  CHECK(Ledger::open(dir.path(), Options{}, &third) == Code::kOk);
  CHECK(third->limits().max_accounts == 3);  // the creator's limits, not the defaults
}

TEST_CASE("a foreign, damaged or other-version segment is refused, untouched", "[ledger]") {
  TempDir dir;
  { auto ledger = open_ledger(dir); }
  const std::string segment = Ledger::segment_path(dir.path());
  std::unique_ptr<Ledger> ledger;

  constexpr off_t kVersionAt = offsetof(Header, format_version);
  SECTION("another format version, newer or older") {
    int fd = ::open(segment.c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    const uint32_t version = GENERATE(999u, 1u);  // 1: before per-model tallies (promise 5: older segments)
    REQUIRE(::pwrite(fd, &version, sizeof version, kVersionAt) == sizeof version);
    ::close(fd);
    CHECK(Ledger::open(dir.path(), Options{}, &ledger) == Code::kIncompatible);
    fd = ::open(segment.c_str(), O_RDONLY);
    uint32_t still = 0;
    REQUIRE(::pread(fd, &still, sizeof still, kVersionAt) == sizeof still);
    ::close(fd);
    CHECK(still == version);  // nothing was "repaired" over it
  }
  SECTION("garbage") {
    std::ofstream(segment, std::ios::trunc) << std::string(8192, 'x');
    CHECK(Ledger::open(dir.path(), Options{}, &ledger) == Code::kIncompatible);
  }
  SECTION("too short to be a segment") {
    std::ofstream(segment, std::ios::trunc) << "LEDGER";
    CHECK(Ledger::open(dir.path(), Options{}, &ledger) == Code::kIncompatible);
  }
  SECTION("a header whose geometry lies") {
    int fd = ::open(segment.c_str(), O_RDWR);
    const uint32_t accounts = 7;  // max_accounts no longer matches the offsets
    REQUIRE(::pwrite(fd, &accounts, sizeof accounts, offsetof(Header, max_accounts)) == sizeof accounts);
    ::close(fd);
    CHECK(Ledger::open(dir.path(), Options{}, &ledger) == Code::kIncompatible);
  }
  SECTION("a creator that died before finishing is started over") {
    int fd = ::open(segment.c_str(), O_RDWR);
    const uint64_t zero = 0;
    REQUIRE(::pwrite(fd, &zero, sizeof zero, offsetof(Header, magic)) == sizeof zero);
    ::close(fd);
    CHECK(Ledger::open(dir.path(), Options{}, &ledger) == Code::kOk);
  }
}

TEST_CASE("a handle carried across fork gets its own process slot", "[ledger][fork]") {
  TempDir dir;
  Limits limits;
  limits.max_processes = 2;
  auto ledger = open_ledger(dir, nullptr, limits);
  REQUIRE(ledger->set_budget("alice", 10 * kUsd, Period::kNone, "") == Code::kOk);
  ReservationId parent_hold = 0;
  REQUIRE(ledger->reserve("alice", kUsd, 600, &parent_hold) == Code::kOk);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // Uses the inherited handle: it must register a slot of its own (the second and last one).
    int code = 0;
    if (!ledger->debit("alice", 2 * kUsd).ok()) code = 1;
    ReservationId id = 0;
    if (!ledger->reserve("alice", kUsd, 600, &id).ok()) code = 2;
    if (!ledger->commit(parent_hold, kUsd).ok()) code = 3;  // ids work across processes
    std::unique_ptr<Ledger> another;
    if (Ledger::open(dir.path(), Options{}, &another) != Code::kFull) code = 4;  // both slots taken
    ::_exit(code);  // dies holding `id`
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  Balance alice = balance_of(*ledger, "alice");
  CHECK(alice.spent_nanousd == 3 * kUsd);
  CHECK(alice.held_nanousd == kUsd);  // the dead child's hold
  uint32_t reclaimed = 0;
  REQUIRE(ledger->reclaim(&reclaimed) == Code::kOk);
  CHECK(reclaimed == 1);  // the holder is dead: no need to wait for the TTL
  alice = balance_of(*ledger, "alice");
  CHECK(alice.held_nanousd == 0);
  CHECK(alice.spent_nanousd == 3 * kUsd);
  // The parent still works under its own slot.
  CHECK(ledger->debit("alice", kUsd) == Code::kOk);
}

TEST_CASE("balances lists every account with its parent", "[ledger]") {
  TempDir dir;
  auto ledger = open_ledger(dir);
  REQUIRE(ledger->set_budget("team", 10 * kUsd, Period::kNone, "") == Code::kOk);
  REQUIRE(ledger->set_budget("alice", 5 * kUsd, Period::kNone, "team") == Code::kOk);
  ReservationId id = 0;
  REQUIRE(ledger->reserve("alice", kUsd, 60, &id) == Code::kOk);
  REQUIRE(ledger->debit("alice", 2 * kUsd) == Code::kOk);
  std::vector<AccountBalance> all;
  REQUIRE(ledger->balances(&all) == Code::kOk);
  REQUIRE(all.size() == 2);
  CHECK(all[0].account == "team");
  CHECK(all[0].parent.empty());
  CHECK(all[0].balance.held_nanousd == kUsd);
  CHECK(all[0].balance.spent_nanousd == 2 * kUsd);
  CHECK(all[1].account == "alice");
  CHECK(all[1].parent == "team");
  CHECK(all[1].balance.available_nanousd == 2 * kUsd);
}
