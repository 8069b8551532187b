// A settlement's tokens correction lands in the minute each level counted the hold's tokens in.
// plan_rate_admission counts each level in the minute its own word carries when that word is ahead
// of the caller's clock (another process's clock may be in the next minute already), so at a
// minute's boundary the levels of one admission can be counted in different minutes; the hold
// records each level's minute (Reservation::rate_minutes). Found by a review: with one minute per
// hold (the first level's), the team's tokens were corrected in a minute that never counted them,
// taking other requests' tokens off it, and the team's tpm admitted more than its limit.
//
// Two handles with two clocks stand for two processes that read the (same) clock a few ms apart
// around the boundary: A just before it, B just after. The first request of B is denied at the team's
// concurrency cap after its alice rate CAS landed, which leaves alice's word in the new minute and the
// team's in the old one: exactly what B's ordinary in-flight admission (alice CAS done, team CAS not
// yet) looks like to A in a natural race.
#include <catch2/catch.hpp>

#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::TempDir;
using ledger_test::utc;

namespace {
constexpr const char* kMini = "openai/gpt-4o-mini";

Options with_clock(ManualClock& clock) {
  Options o;
  o.clock = clock.clock();
  return o;
}

// estimate() (200 tokens) then authorize on this thread: the hold counts the estimate's tokens.
Code authorize_200(Ledger& l, const char* account, ReservationId* id) {
  int64_t estimate = 0;
  REQUIRE(l.estimate(kMini, 100, 100, &estimate) == Code::kOk);
  std::string_view chosen;
  return l.authorize(account, kMini, estimate, 600, &chosen, id).code();
}

RateUsage usage(Ledger& l, const char* account) {
  RateUsage u;
  REQUIRE(l.rate_usage(account, &u) == Code::kOk);
  return u;
}
}  // namespace

TEST_CASE("a commit corrects each level's tokens in the minute that level counted them", "[rules][rate][verify]") {
  TempDir dir;
  ManualClock early, late;  // process A just before 12:01:00, process B just after
  early.now_ms = utc(2026, 12, 6, 12, 0, 59) * 1000 + 900;
  late.now_ms = utc(2026, 12, 6, 12, 1, 0) * 1000 + 100;
  std::unique_ptr<Ledger> a, b;
  REQUIRE(Ledger::open(dir.path(), with_clock(early), &a) == Code::kOk);
  REQUIRE(Ledger::open(dir.path(), with_clock(late), &b) == Code::kOk);
  REQUIRE(a->set_price(kMini, kUsd, kUsd, 0) == Code::kOk);
  REQUIRE(a->set_budget("team", 1000 * kUsd, Period::kDaily, "") == Code::kOk);
  REQUIRE(a->set_budget("alice", 1000 * kUsd, Period::kDaily, "team") == Code::kOk);
  REQUIRE(a->set_budget("bob", 1000 * kUsd, Period::kDaily, "team") == Code::kOk);
  RulesSpec team, alice;
  team.tpm = 450;
  team.max_concurrent = 2;
  alice.tpm = 1'000'000;
  REQUIRE(a->set_rules("team", team) == Code::kOk);
  REQUIRE(a->set_rules("alice", alice) == Code::kOk);

  // A (12:00:59.9) holds two slots of the team in minute 12:00.
  ReservationId h1 = 0, h2 = 0;
  REQUIRE(a->reserve("bob", kUsd, 600, &h1) == Code::kOk);
  REQUIRE(a->reserve("bob", kUsd, 600, &h2) == Code::kOk);
  // B (12:01:00.1): alice's rate word moves to 12:01, the team's stays in 12:00 (B is denied there).
  ReservationId denied = 0;
  REQUIRE(authorize_200(*b, "alice", &denied) == Code::kDeniedRate);
  REQUIRE(a->release(h1) == Code::kOk);
  REQUIRE(a->release(h2) == Code::kOk);

  // A's request for alice: alice counts its 200 tokens in 12:01 (her word is ahead), the team in 12:00.
  ReservationId ida = 0;
  REQUIRE(authorize_200(*a, "alice", &ida) == Code::kOk);
  // B's request for bob: the team's word starts 12:01 with bob's 200 tokens.
  ReservationId idb = 0;
  REQUIRE(authorize_200(*b, "bob", &idb) == Code::kOk);
  REQUIRE(usage(*b, "team").tokens == 200);

  // A's request really used 30 tokens: 170 come off... but only where they were counted.
  REQUIRE(a->commit_usage(ida, kUsd / 1000, 10, 20) == Code::kOk);
  CHECK(usage(*b, "alice").tokens == 30);  // alice counted 200 in 12:01: corrected to 30 there
  // The team never counted A's request in 12:01: its 12:01 tokens are still bob's 200.
  CHECK(usage(*b, "team").tokens == 200);

  // What that costs: the team's tpm (450) in 12:01 admits a third 200-token request (600 > 450).
  REQUIRE(b->commit_usage(idb, kUsd / 1000, 100, 100) == Code::kOk);  // as estimated: 200 in 12:01
  ReservationId id2 = 0, id3 = 0;
  REQUIRE(authorize_200(*b, "bob", &id2) == Code::kOk);  // 400 <= 450
  REQUIRE(b->commit_usage(id2, kUsd / 1000, 100, 100) == Code::kOk);
  CHECK(authorize_200(*b, "bob", &id3) == Code::kDeniedRate);  // 600 > 450
}

// The other direction: the first rate-limited level is behind a higher one. The hold records the
// first level's minute; the team counted the estimate in the next minute and is never corrected
// there (rate_settlement's target names a minute the team's word has left), so the team keeps the
// whole estimate (200) of a request that used 30, and the next minute denies early.
TEST_CASE("a commit corrects the team's tokens when the team counted them in a later minute than the member", "[rules][rate][verify]") {
  TempDir dir;
  ManualClock early, late;
  early.now_ms = utc(2026, 12, 6, 12, 0, 59) * 1000 + 900;
  late.now_ms = utc(2026, 12, 6, 12, 1, 0) * 1000 + 100;
  std::unique_ptr<Ledger> a, b;
  REQUIRE(Ledger::open(dir.path(), with_clock(early), &a) == Code::kOk);
  REQUIRE(Ledger::open(dir.path(), with_clock(late), &b) == Code::kOk);
  REQUIRE(a->set_price(kMini, kUsd, kUsd, 0) == Code::kOk);
  REQUIRE(a->set_budget("team", 1000 * kUsd, Period::kDaily, "") == Code::kOk);
  REQUIRE(a->set_budget("alice", 1000 * kUsd, Period::kDaily, "team") == Code::kOk);
  REQUIRE(a->set_budget("bob", 1000 * kUsd, Period::kDaily, "team") == Code::kOk);
  RulesSpec team, alice;
  team.tpm = 1'000'000;
  alice.tpm = 1'000'000;
  REQUIRE(a->set_rules("team", team) == Code::kOk);
  REQUIRE(a->set_rules("alice", alice) == Code::kOk);
  ReservationId idb = 0, ida = 0;
  REQUIRE(authorize_200(*b, "bob", &idb) == Code::kOk);    // the team's word: 12:01, 200 tokens
  REQUIRE(authorize_200(*a, "alice", &ida) == Code::kOk);  // alice: 12:00; the team: 12:01, 400
  REQUIRE(usage(*b, "team").tokens == 400);
  REQUIRE(a->commit_usage(ida, kUsd / 1000, 10, 20) == Code::kOk);  // A's request really used 30
  CHECK(usage(*b, "team").tokens == 230);                            // bob's 200 and A's 30
}
