// Global mode on one host: a global account admits only against this host's lease for the window
// being charged. No lease, a lapsed one, another window's, or a write in progress all deny (fail
// closed); settlements are never denied; the next window's lease can be in place before midnight.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::TempDir;
using ledger_test::balance_of;
using ledger_test::utc;

namespace {

struct Fixture {
  TempDir dir;
  ManualClock clock;
  std::unique_ptr<Ledger> l;
  int64_t today = 0;
  Fixture() {
    clock.now_ms = utc(2026, 12, 1, 23, 59, 0) * 1000;
    today = period_index(Period::kDaily, clock.now_ms / 1000);
    Options options;
    options.clock = clock.clock();
    REQUIRE(Ledger::open(dir.path(), options, &l) == Code::kOk);
    REQUIRE(l->set_budget("org", 1000 * kUsd, Period::kMonthly, "") == Code::kOk);
    REQUIRE(l->set_budget("alice", 100 * kUsd, Period::kDaily, "org") == Code::kOk);
    REQUIRE(l->set_budget("local", 100 * kUsd, Period::kNone, "") == Code::kOk);
    REQUIRE(l->set_scope("org", true) == Code::kOk);
    REQUIRE(l->set_scope("alice", true) == Code::kOk);
  }
  int64_t month() const { return period_index(Period::kMonthly, clock.now_ms / 1000); }
  int64_t far() const { return Ledger::monotonic_ms() + 600'000; }
};

}  // namespace

TEST_CASE("a global account admits only against its lease, and a lapsed lease denies", "[lease]") {
  Fixture f;
  CHECK(f.l->debit("alice", 1) == Code::kDeniedOverBudget);  // no lease yet: fail closed
  CHECK(f.l->debit("local", kUsd) == Code::kOk);             // local accounts are as before
  REQUIRE(f.l->set_lease("alice", f.today, 3 * kUsd, f.far()) == Code::kOk);
  CHECK(f.l->debit("alice", 1) == Code::kDeniedParentOverBudget);  // org has no lease
  REQUIRE(f.l->set_lease("org", f.month(), 10 * kUsd, f.far()) == Code::kOk);
  CHECK(f.l->debit("alice", 2 * kUsd) == Code::kOk);
  ReservationId id = 0;
  CHECK(f.l->reserve("alice", 2 * kUsd, 60, &id) == Code::kDeniedOverBudget);  // 2 + 2 > 3: the lease, not the 100 limit
  REQUIRE(f.l->reserve("alice", kUsd, 60, &id) == Code::kOk);
  // The lease lapses (the store is out of reach past its deadline): admission stops at once...
  REQUIRE(f.l->set_lease("alice", f.today, 3 * kUsd, Ledger::monotonic_ms() - 1) == Code::kOk);
  CHECK(f.l->debit("alice", 1) == Code::kDeniedOverBudget);
  // ...settlements do not: a commit above its hold is still charged in full.
  REQUIRE(f.l->commit(id, 2 * kUsd) == Code::kOk);
  CHECK(balance_of(*f.l, "alice").spent_nanousd == 4 * kUsd);
  CHECK(balance_of(*f.l, "alice").limit_nanousd == 100 * kUsd);  // the configured (global) limit is shown
  WindowUsage usage;
  REQUIRE(f.l->window_usage("alice", f.today, &usage) == Code::kOk);
  CHECK(usage.global);
  CHECK(usage.used_nanousd == 4 * kUsd);
  CHECK(usage.lease_limit_nanousd == 3 * kUsd);
  CHECK(f.l->set_lease("alice", -1, kUsd, f.far()) == Code::kInvalidArgument);
  CHECK(f.l->set_lease("alice", f.today, -1, f.far()) == Code::kInvalidArgument);
  CHECK(f.l->set_lease("nobody", f.today, kUsd, f.far()) == Code::kUnknownAccount);
}

// The sidecar sizes its next grant by the largest request denied for want of the lease, so a
// request larger than the usual slice is not denied for ever; taking it zeroes it.
TEST_CASE("a denial for want of the lease says how much was wanted, once", "[lease]") {
  Fixture f;
  int64_t wanted = -1;
  REQUIRE(f.l->take_lease_wanted("alice", f.today, &wanted) == Code::kOk);
  CHECK(wanted == 0);
  REQUIRE(f.l->set_lease("org", f.month(), 10 * kUsd, f.far()) == Code::kOk);
  REQUIRE(f.l->set_lease("alice", f.today, kUsd, f.far()) == Code::kOk);
  CHECK(f.l->debit("alice", 3 * kUsd) == Code::kDeniedOverBudget);
  CHECK(f.l->debit("alice", 2 * kUsd) == Code::kDeniedOverBudget);  // smaller: the largest stays
  ReservationId id = 0;
  CHECK(f.l->reserve("alice", 4 * kUsd, 60, &id) == Code::kDeniedOverBudget);
  REQUIRE(f.l->take_lease_wanted("alice", f.today, &wanted) == Code::kOk);
  CHECK(wanted == 4 * kUsd);
  REQUIRE(f.l->take_lease_wanted("alice", f.today, &wanted) == Code::kOk);
  CHECK(wanted == 0);  // taken
  CHECK(f.l->take_lease_wanted("org", f.month(), &wanted) == Code::kOk);
  CHECK(wanted == 0);  // alice's level denied first: org was never asked
  CHECK(f.l->debit("local", 200 * kUsd) == Code::kDeniedOverBudget);  // a local limit asks nobody
  CHECK(f.l->take_lease_wanted("local", 0, &wanted) == Code::kOk);
  CHECK(wanted == 0);
  CHECK(f.l->take_lease_wanted("nobody", 0, &wanted) == Code::kUnknownAccount);
  CHECK(f.l->take_lease_wanted("alice", f.today, nullptr) == Code::kInvalidArgument);
}

TEST_CASE("the next window's lease is in place before midnight; the old one does not carry over", "[lease]") {
  Fixture f;
  REQUIRE(f.l->set_lease("org", f.month(), 50 * kUsd, f.far()) == Code::kOk);
  REQUIRE(f.l->set_lease("alice", f.today, 2 * kUsd, f.far()) == Code::kOk);
  REQUIRE(f.l->set_lease("alice", f.today + 1, 5 * kUsd, f.far()) == Code::kOk);  // tomorrow's, the other word
  REQUIRE(f.l->debit("alice", 2 * kUsd) == Code::kOk);
  CHECK(f.l->debit("alice", 1) == Code::kDeniedOverBudget);  // today's lease is used up
  f.clock.now_ms += 120'000;  // past midnight UTC (December 2nd; the month is the same)
  REQUIRE(f.l->debit("alice", 5 * kUsd) == Code::kOk);  // tomorrow's lease, no wave of denials
  CHECK(f.l->debit("alice", 1) == Code::kDeniedOverBudget);
  // A lease left over from two days ago never admits (its tag is not the window's).
  REQUIRE(f.l->set_lease("alice", f.today - 1, 100 * kUsd, f.far()) == Code::kOk);  // same parity as tomorrow
  CHECK(f.l->debit("alice", 1) == Code::kDeniedOverBudget);
}

TEST_CASE("processes together never pass the lease", "[lease][concurrency]") {
  Fixture f;
  // The children run on the real clock: their windows are today's and this month's. Together they
  // try 80 M nano-USD against a lease of 50 M.
  constexpr int64_t kLease = 50'000'000;
  const int64_t now_s = ::time(nullptr);
  for (int64_t back = 0; back < 2; ++back) {  // and the next ones, in case the real clock crosses midnight
    REQUIRE(f.l->set_lease("org", period_index(Period::kMonthly, now_s) + back, 50 * kUsd, f.far()) == Code::kOk);
    REQUIRE(f.l->set_lease("alice", period_index(Period::kDaily, now_s) + back, kLease, f.far()) == Code::kOk);
  }
  constexpr int kChildren = 4;
  int pipes[kChildren][2];
  std::vector<pid_t> children;
  for (int c = 0; c < kChildren; ++c) {
    REQUIRE(::pipe(pipes[c]) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      std::unique_ptr<Ledger> l;
      if (!Ledger::open(f.dir.path(), Options{}, &l).ok()) ::_exit(2);
      int64_t granted = 0;
      for (int i = 0; i < 20000; ++i)
        if (l->debit("alice", 1000 + c).ok()) granted += 1000 + c;
      if (::write(pipes[c][1], &granted, sizeof granted) != sizeof granted) ::_exit(3);
      ::_exit(0);
    }
    children.push_back(pid);
  }
  int64_t granted = 0;
  for (int c = 0; c < kChildren; ++c) {
    int status = 0;
    REQUIRE(::waitpid(children[c], &status, 0) == children[c]);
    REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    int64_t part = 0;
    REQUIRE(::read(pipes[c][0], &part, sizeof part) == sizeof part);
    granted += part;
  }
  CHECK(granted <= kLease);  // all of them together within the one lease (a midnight between would allow 2)
  CHECK(granted >= kLease - 4 * 1003);  // and the lease was used up (nothing stranded but a last unit)
}

TEST_CASE("a rebuilt segment keeps the accounts global, and denies until new leases arrive", "[lease]") {
  Fixture f;
  REQUIRE(f.l->set_lease("org", f.month(), 50 * kUsd, f.far()) == Code::kOk);
  REQUIRE(f.l->set_lease("alice", f.today, 5 * kUsd, f.far()) == Code::kOk);
  REQUIRE(f.l->debit("alice", kUsd) == Code::kOk);
  REQUIRE(f.l->flush() == Code::kOk);
  f.l.reset();
  REQUIRE(Ledger::destroy_segment(f.dir.path()) == Code::kOk);
  Options options;
  options.clock = f.clock.clock();
  REQUIRE(Ledger::open(f.dir.path(), options, &f.l) == Code::kOk);
  CHECK(balance_of(*f.l, "alice").spent_nanousd == kUsd);
  CHECK(f.l->debit("alice", 1) == Code::kDeniedOverBudget);  // global, and no lease: not 100 USD of "local" budget
  REQUIRE(f.l->set_lease("org", f.month(), 50 * kUsd, f.far()) == Code::kOk);
  REQUIRE(f.l->set_lease("alice", f.today, 5 * kUsd, f.far()) == Code::kOk);
  CHECK(f.l->debit("alice", 4 * kUsd) == Code::kOk);  // the spend already there counts against the lease
  CHECK(f.l->debit("alice", 1) == Code::kDeniedOverBudget);
}
