// Rate limits under SIGKILL (the crash-point build: a child dies at its Nth crash point, at every
// point in turn): a rate word is a lane target like a budget, so after the reclaimer has run, every
// level of the chain counted the same requests and tokens (all or nothing), no concurrent slot is
// left behind by a dead process, and nothing is negative.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <functional>

#include "test_util.hpp"

extern "C" void ledger_test_crash_after(int64_t points);

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::TempDir;
using ledger_test::balance_of;
using ledger_test::utc;

namespace {

constexpr int kCrashed = 77;
constexpr int kPointsMax = 400;

struct Fixture {
  TempDir dir;
  ManualClock clock;  // one minute for the whole test (children inherit it at fork)
  std::unique_ptr<Ledger> l;
  Fixture() {
    clock.now_ms = utc(2026, 12, 6, 12, 0, 10) * 1000;
    REQUIRE(Ledger::open(dir.path(), options(), &l) == Code::kOk);
    REQUIRE(l->set_budget("org", 1000 * kUsd, Period::kMonthly, "") == Code::kOk);
    REQUIRE(l->set_budget("team", 1000 * kUsd, Period::kMonthly, "org") == Code::kOk);
    REQUIRE(l->set_budget("alice", 1000 * kUsd, Period::kDaily, "team") == Code::kOk);
    RulesSpec team, alice;
    team.rpm = 100'000;
    team.max_concurrent = 1000;
    alice.rpm = 100'000;
    alice.tpm = 100'000'000;
    alice.max_concurrent = 1000;
    REQUIRE(l->set_rules("team", team) == Code::kOk);
    REQUIRE(l->set_rules("alice", alice) == Code::kOk);
    REQUIRE(l->set_price("openai/gpt-4o-mini", kUsd, kUsd, 0) == Code::kOk);
  }
  Options options() {
    Options o;
    o.clock = clock.clock();
    return o;
  }
  RateUsage usage(const char* account) {
    RateUsage u;
    REQUIRE(l->rate_usage(account, &u) == Code::kOk);
    return u;
  }
};

// Runs `body` in a child with its own handle that dies at crash point `point`; its exit code.
int run_child(Fixture& f, int64_t point, const std::function<bool(Ledger&)>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::unique_ptr<Ledger> l;
    if (!Ledger::open(f.dir.path(), f.options(), &l).ok()) ::_exit(2);
    ledger_test_crash_after(point);
    ::_exit(body(*l) ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

// The invariants once the reclaimer has run: both rate-limited levels counted the same, no slot
// left open, no hold left, the money chain consistent.
void check_invariants(Fixture& f) {
  uint32_t reclaimed = 0;
  REQUIRE(f.l->reclaim(&reclaimed) == Code::kOk);
  const RateUsage alice = f.usage("alice"), team = f.usage("team");
  CHECK(alice.requests == team.requests);
  CHECK(alice.concurrent == 0);
  CHECK(team.concurrent == 0);
  const Balance a = balance_of(*f.l, "alice"), t = balance_of(*f.l, "team"), o = balance_of(*f.l, "org");
  CHECK(a.held_nanousd + t.held_nanousd + o.held_nanousd == 0);
  CHECK(a.spent_nanousd == t.spent_nanousd);
  CHECK(t.spent_nanousd == o.spent_nanousd);
}

// Kills `body` at every crash point until it completes; checks the invariants after each death.
void for_each_point(Fixture& f, const std::function<bool(Ledger&)>& body) {
  bool completed = false;
  for (int64_t point = 1; point <= kPointsMax && !completed; ++point) {
    const int code = run_child(f, point, body);
    INFO("crash point " << point);
    REQUIRE((code == kCrashed || code == 0));
    completed = code == 0;
    check_invariants(f);
  }
  CHECK(completed);  // the operation ran to its end within kPointsMax points
}

}  // namespace

TEST_CASE("a rate-limited authorize and commit_usage killed at every point", "[crash][rate]") {
  Fixture f;
  for_each_point(f, [](Ledger& l) {
    int64_t estimate = 0;
    if (!l.estimate("openai/gpt-4o-mini", 100, 100, &estimate).ok()) return false;
    std::string_view chosen;
    ReservationId id = 0;
    return l.authorize("alice", "openai/gpt-4o-mini", estimate, 600, &chosen, &id).ok() && l.commit_usage(id, kUsd, 10, 20).ok();
  });
  // Tokens: every completed request counted 30 (its real tokens); a hold reclaimed after its owner
  // died keeps the 200 it was admitted with (conservative); nothing else.
  const RateUsage alice = f.usage("alice");
  CHECK(alice.tokens % 10 == 0);
}

TEST_CASE("a rate-limited debit denied by a parent's budget, killed at every point: the rate counts roll back too", "[crash][rate]") {
  Fixture f;
  REQUIRE(f.l->set_budget("org", kUsd, Period::kMonthly, "") == Code::kOk);
  REQUIRE(f.l->debit("alice", kUsd) == Code::kOk);  // org is full: the next debit is denied at org, after alice and team
  const RateUsage before = f.usage("alice");
  for_each_point(f, [](Ledger& l) { return l.debit("alice", 1) == Code::kDeniedParentOverBudget; });
  CHECK(f.usage("alice").requests == before.requests);  // a denied admission leaves no count behind
  CHECK(f.usage("team").requests == before.requests);
}

TEST_CASE("a rate-limited release and an expiry killed at every point give the slot back once", "[crash][rate]") {
  Fixture f;
  for_each_point(f, [](Ledger& l) {
    ReservationId id = 0;
    return l.reserve("alice", kUsd, 600, &id).ok() && l.release(id).ok();
  });
  // An expiry (the reclaimer) killed at every point: the hold is expired once, its slot back once.
  bool completed = false;
  for (int64_t point = 1; point <= kPointsMax && !completed; ++point) {
    ReservationId id = 0;
    REQUIRE(f.l->reserve("alice", kUsd, 1, &id) == Code::kOk);
    f.clock.now_ms += 2000;  // past its TTL
    const int code = run_child(f, point, [](Ledger& l) {
      uint32_t n = 0;
      return l.reclaim(&n).ok();
    });
    INFO("crash point " << point);
    REQUIRE((code == kCrashed || code == 0));
    completed = code == 0;
    check_invariants(f);
  }
  CHECK(completed);
}
