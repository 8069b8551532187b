// Rate words under crashes, with a WITNESS hold open the whole time (written by a review of issue 13).
// the whole time. rate_crash_test checks concurrent == 0 after each death; a concurrent slot given
// back twice saturates at 0 there and cannot be seen. Here one hold of the parent stays open, so
// after every death and reclaim each rate-limited level must show exactly 1 concurrent hold.
// Operations: authorize + commit_usage, reserve + release, a reserve denied by a parent's budget
// (after the rate targets landed), the expiry of a hold (reclaimer killed), and the late
// commit_usage of a tombstone, each killed at every crash point in turn.
#include <catch2/catch.hpp>
#include <functional>

#include "crash_points.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger_test::balance_of;
using ledger_test::for_each_crash_point;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::run_crashing_child;
using ledger_test::TempDir;
using ledger_test::utc;

namespace {
constexpr const char* kMini = "openai/gpt-4o-mini";

struct Fixture {
  TempDir dir;
  ManualClock clock;
  std::unique_ptr<Ledger> l;
  ReservationId witness = 0;
  Fixture() {
    clock.now_ms = utc(2026, 12, 6, 12, 0, 10) * 1000;
    REQUIRE(Ledger::open(dir.path(), options(), &l) == Code::kOk);
    REQUIRE(l->set_budget("org", 1000 * kUsd, Period::kMonthly, "") == Code::kOk);
    REQUIRE(l->set_budget("team", 1000 * kUsd, Period::kMonthly, "org") == Code::kOk);
    REQUIRE(l->set_budget("alice", 1000 * kUsd, Period::kDaily, "team") == Code::kOk);
    RulesSpec team, alice;
    team.rpm = 100'000;
    team.tpm = 100'000'000;
    team.max_concurrent = 1000;
    alice.rpm = 100'000;
    alice.tpm = 100'000'000;
    alice.max_concurrent = 1000;
    REQUIRE(l->set_rules("team", team) == Code::kOk);
    REQUIRE(l->set_rules("alice", alice) == Code::kOk);
    REQUIRE(l->set_price(kMini, kUsd, kUsd, 0) == Code::kOk);
    REQUIRE(l->reserve("alice", 1, 3600 * 24, &witness) == Code::kOk);  // open for the whole test
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
  void check(int64_t point) {
    INFO("crash point " << point);
    uint32_t reclaimed = 0;
    REQUIRE(l->reclaim(&reclaimed) == Code::kOk);
    const RateUsage a = usage("alice"), t = usage("team");
    CHECK(a.concurrent == 1);  // the witness, and nothing else
    CHECK(t.concurrent == 1);
    CHECK(a.requests == t.requests);
    CHECK(a.tokens == t.tokens);
    const Balance ba = balance_of(*l, "alice"), bt = balance_of(*l, "team");
    CHECK(ba.spent_nanousd == bt.spent_nanousd);
    CHECK(ba.held_nanousd == 1);
    CHECK(bt.held_nanousd == 1);
  }
  void every_point(const std::function<bool(Ledger&)>& body, const std::function<void()>& before = {}) {
    const int64_t crashes = for_each_crash_point(
        [&](int64_t point) {
          if (before) before();
          return run_crashing_child(dir.path(), options(), point, body);
        },
        [&](int64_t point, bool) { check(point); });
    CHECK(crashes > 3);
  }
};

bool authorize_200(Ledger& l, ReservationId* id) {
  int64_t estimate = 0;
  if (!l.estimate(kMini, 100, 100, &estimate).ok()) return false;
  std::string_view chosen;
  return l.authorize("alice", kMini, estimate, 600, &chosen, id).ok();
}
}  // namespace

TEST_CASE("witness: authorize and commit_usage killed at every point", "[crash][rate][verify]") {
  Fixture f;
  f.every_point([](Ledger& l) {
    ReservationId id = 0;
    return authorize_200(l, &id) && l.commit_usage(id, kUsd / 100, 10, 20).ok();
  });
}

TEST_CASE("witness: reserve and release killed at every point", "[crash][rate][verify]") {
  Fixture f;
  f.every_point([](Ledger& l) {
    ReservationId id = 0;
    return l.reserve("alice", kUsd, 600, &id).ok() && l.release(id).ok();
  });
}

TEST_CASE("witness: a reserve denied by org after its rate targets landed, killed at every point", "[crash][rate][verify]") {
  Fixture f;
  REQUIRE(f.l->set_budget("org", 2 * kUsd, Period::kMonthly, "") == Code::kOk);
  REQUIRE(f.l->debit("alice", 2 * kUsd - 1) == Code::kOk);  // org full but for the witness
  f.every_point([](Ledger& l) {
    ReservationId id = 0;
    return l.reserve("alice", kUsd, 600, &id) == Code::kDeniedParentOverBudget;
  });
}

TEST_CASE("witness: an expiry killed at every point gives one slot back", "[crash][rate][verify]") {
  Fixture f;
  f.every_point(
      [](Ledger& l) {
        uint32_t n = 0;
        return l.reclaim(&n).ok();
      },
      [&] {
        ReservationId id = 0;
        int64_t estimate = 0;
        REQUIRE(f.l->estimate(kMini, 100, 100, &estimate) == Code::kOk);
        std::string_view chosen;
        REQUIRE(f.l->authorize("alice", kMini, estimate, 1, &chosen, &id) == Code::kOk);
        f.clock.now_ms += 2000;  // past its TTL (the witness's TTL is a day)
      });
}

TEST_CASE("witness: the late commit_usage of a tombstone killed at every point", "[crash][rate][verify]") {
  Fixture f;
  ReservationId id = 0;
  f.every_point(
      [&](Ledger& l) { return l.commit_usage(id, kUsd / 100, 10, 20).ok(); },
      [&] {
        int64_t estimate = 0;
        REQUIRE(f.l->estimate(kMini, 100, 100, &estimate) == Code::kOk);
        std::string_view chosen;
        REQUIRE(f.l->authorize("alice", kMini, estimate, 1, &chosen, &id) == Code::kOk);
        f.clock.now_ms += 2000;
        uint32_t n = 0;
        REQUIRE(f.l->reclaim(&n) == Code::kOk);  // now a tombstone (grace: the default)
        REQUIRE(n == 1);
      });
}
