// Account rules (DESIGN 13) in the library: an account's own model list and fallback (and how they
// inherit and override tiers), soft limits, top-ups (expiry, journal, rebuild), and rate limits
// (requests and tokens per minute, concurrent holds) on a chain, through the C++ API and the C ABI.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <atomic>
#include <map>
#include <vector>

#include "ledger/c.h"
#include "ledger/store.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::TempDir;
using ledger_test::balance_of;
using ledger_test::utc;

namespace {

constexpr const char* kMini = "openai/gpt-4o-mini";
constexpr const char* kLlama = "meta-llama/llama-3.1-8b-instruct";
constexpr const char* kGpt4o = "openai/gpt-4o";
constexpr const char* kSonnet = "anthropic/claude-3.5-sonnet";

struct Fixture {
  TempDir dir;
  ManualClock clock;
  std::unique_ptr<Ledger> l;
  explicit Fixture(bool manual_clock = true) {
    clock.now_ms = utc(2026, 12, 6, 12, 0, 30) * 1000;  // 30 s into a minute
    Options options;
    if (manual_clock) options.clock = clock.clock();
    REQUIRE(Ledger::open(dir.path(), options, &l) == Code::kOk);
    for (const char* m : {kMini, kLlama, kGpt4o, kSonnet}) REQUIRE(l->set_price(m, kUsd, kUsd, 0) == Code::kOk);
  }
  void account(const char* name, int64_t usd, const char* parent = "", Period period = Period::kDaily) {
    REQUIRE(l->set_budget(name, usd * kUsd, period, parent) == Code::kOk);
  }
  RulesSpec models(std::vector<std::string> list, std::string fallback = "") {
    RulesSpec r;
    r.has_models = true;
    r.models = std::move(list);
    r.fallback = std::move(fallback);
    return r;
  }
  // The code, and the model chosen when granted (the hold is released again).
  std::pair<Code, std::string> decide(std::string_view account, std::string_view model) {
    std::string_view chosen;
    ReservationId id = 0;
    const Code code = l->authorize(account, model, 1000, 60, &chosen, &id).code();
    if (code != Code::kOk) return {code, ""};
    REQUIRE(l->release(id) == Code::kOk);
    return {code, std::string(chosen)};
  }
};

}  // namespace

TEST_CASE("own model lists override the tier for the account and the descendants that set nothing", "[rules]") {
  Fixture f;
  std::vector<TierSpec> tiers(2);
  tiers[0].name = "basic";
  tiers[0].models = {kMini, kLlama};
  tiers[0].fallback = kMini;
  tiers[1].name = "pro";
  tiers[1].models = {kMini, kGpt4o, kSonnet};
  REQUIRE(f.l->set_tiers(tiers) == Code::kOk);
  f.account("org", 100);
  f.account("team", 100, "org");
  REQUIRE(f.l->set_account_tier("team", "basic") == Code::kOk);
  f.account("alice", 10, "team");                                    // sets nothing: the team's tier
  f.account("bob", 10, "team");
  REQUIRE(f.l->set_rules("bob", f.models({kGpt4o})) == Code::kOk);   // own list, no fallback of its own
  f.account("frank", 10, "bob");                                     // sets nothing: bob's list
  f.account("carol", 10, "team");
  REQUIRE(f.l->set_rules("carol", f.models({kGpt4o}, kGpt4o)) == Code::kOk);
  f.account("dave", 10, "team");
  RulesSpec all;
  all.has_models = true;
  all.all_models = true;
  REQUIRE(f.l->set_rules("dave", all) == Code::kOk);                 // "models": null
  f.account("erin", 10, "team");
  REQUIRE(f.l->set_account_tier("erin", "basic") == Code::kOk);
  RulesSpec fallback_only;
  fallback_only.fallback = kLlama;
  REQUIRE(f.l->set_rules("erin", fallback_only) == Code::kOk);       // the tier's list, its own fallback
  f.account("gina", 10, "bob");
  REQUIRE(f.l->set_account_tier("gina", "pro") == Code::kOk);        // her own tier governs, not bob's list
  f.account("hank", 10, "org");
  REQUIRE(f.l->set_rules("hank", fallback_only) == Code::kOk);  // accepted by the library (the config refuses it)...
  // ...but with neither a list nor a tier of its own, hank's fallback governs nothing: org has no rules.

  const struct {
    const char* account;
    const char* model;
    Code code;
    const char* chosen;
  } table[] = {
      {"alice", kLlama, Code::kOk, kLlama},          {"alice", kSonnet, Code::kOk, kMini},  // tier fallback
      {"bob", kGpt4o, Code::kOk, kGpt4o},            {"bob", kMini, Code::kDeniedModel, ""},  // tier's list and fallback replaced
      {"frank", kGpt4o, Code::kOk, kGpt4o},          {"frank", kLlama, Code::kDeniedModel, ""},
      {"carol", kMini, Code::kOk, kGpt4o},           {"carol", kGpt4o, Code::kOk, kGpt4o},
      {"dave", kSonnet, Code::kOk, kSonnet},         {"dave", kLlama, Code::kOk, kLlama},
      {"erin", kSonnet, Code::kOk, kLlama},          {"erin", kMini, Code::kOk, kMini},
      {"gina", kSonnet, Code::kOk, kSonnet},         {"gina", kLlama, Code::kDeniedModel, ""},
      {"hank", kSonnet, Code::kOk, kSonnet},
  };
  for (const auto& row : table) {
    INFO(row.account << " asks for " << row.model);
    const auto [code, chosen] = f.decide(row.account, row.model);
    CHECK(code == row.code);
    CHECK(chosen == row.chosen);
  }
  // Read back as set; replacing the rules replaces the list (atomically for readers).
  RulesSpec read;
  REQUIRE(f.l->rules("carol", &read) == Code::kOk);
  CHECK(read.has_models);
  CHECK(read.models == std::vector<std::string>{kGpt4o});
  CHECK(read.fallback == kGpt4o);
  REQUIRE(f.l->set_rules("bob", f.models({kMini})) == Code::kOk);
  CHECK(f.decide("frank", kMini) == std::pair<Code, std::string>{Code::kOk, kMini});
  CHECK(f.decide("frank", kGpt4o).first == Code::kDeniedModel);
  REQUIRE(f.l->set_rules("bob", RulesSpec{}) == Code::kOk);  // nothing of its own: the team's tier again
  CHECK(f.decide("frank", kSonnet) == std::pair<Code, std::string>{Code::kOk, kMini});
}

TEST_CASE("bad rules are refused and change nothing", "[rules]") {
  Fixture f;
  f.account("alice", 10);
  RulesSpec bad;
  bad.rpm = kRpmMax + 1;
  CHECK(f.l->set_rules("alice", bad) == Code::kInvalidArgument);
  bad = RulesSpec{};
  bad.has_models = true;
  bad.models = {"has space"};
  CHECK(f.l->set_rules("alice", bad) == Code::kInvalidArgument);
  bad = RulesSpec{};
  bad.models = {kMini};  // a list without has_models
  CHECK(f.l->set_rules("alice", bad) == Code::kInvalidArgument);
  CHECK(f.l->set_rules("nobody", RulesSpec{}) == Code::kUnknownAccount);
  CHECK(f.l->set_topup("alice", -1, 1) == Code::kInvalidArgument);
  CHECK(f.l->set_topup("alice", kUsd, 0) == Code::kInvalidArgument);
  RulesSpec read;
  REQUIRE(f.l->rules("alice", &read) == Code::kOk);
  CHECK((!read.has_models && read.rpm == 0 && !read.soft));
  CHECK(f.decide("alice", kSonnet).first == Code::kOk);
}

TEST_CASE("a soft account passes its own limit while its team still stops it", "[rules]") {
  Fixture f;
  f.account("team", 3);
  f.account("alice", 1, "team");
  RulesSpec soft;
  soft.soft = true;
  REQUIRE(f.l->set_rules("alice", soft) == Code::kOk);
  CHECK(f.l->debit("alice", 2 * kUsd) == Code::kOk);  // over her own $1
  ReservationId id = 0;
  CHECK(f.l->reserve("alice", kUsd / 2, 60, &id) == Code::kOk);
  CHECK(f.l->debit("alice", kUsd) == Code::kDeniedParentOverBudget);  // 2.5 + 1 > the team's 3
  REQUIRE(f.l->commit(id, kUsd / 2) == Code::kOk);
  const Balance b = balance_of(*f.l, "alice");
  CHECK(b.soft);
  CHECK(b.spent_nanousd == 5 * kUsd / 2);
  CHECK(b.available_nanousd == -3 * kUsd / 2);  // shown as over, by how much
  CHECK(balance_of(*f.l, "team").spent_nanousd == 5 * kUsd / 2);
  // A hard account under the same team is stopped by its own limit as before.
  REQUIRE(f.l->set_budget("bob", kUsd / 4, Period::kDaily, "team") == Code::kOk);
  CHECK(f.l->debit("bob", kUsd / 5) == Code::kOk);
  CHECK(f.l->debit("bob", kUsd / 10) == Code::kDeniedOverBudget);  // his own 0.25, with 0.3 left in the team
}

TEST_CASE("a top-up raises the limit until it ends, is journaled and survives a rebuild", "[rules]") {
  Fixture f;
  f.account("alice", 1);
  const int64_t until = f.clock.now_ms + 3'600'000;
  REQUIRE(f.l->set_topup("alice", 2 * kUsd, until) == Code::kOk);
  Balance b = balance_of(*f.l, "alice");
  CHECK(b.limit_nanousd == 3 * kUsd);
  CHECK(b.topup_nanousd == 2 * kUsd);
  CHECK(b.topup_until_unix == until / 1000);
  CHECK(f.l->debit("alice", 5 * kUsd / 2) == Code::kOk);
  CHECK(f.l->debit("alice", kUsd) == Code::kDeniedOverBudget);
  REQUIRE(f.l->flush() == Code::kOk);
  {
    std::unique_ptr<StoreReader> store;
    REQUIRE(StoreReader::open(f.dir.path(), &store) == Code::kOk);
    std::vector<JournalEntry> journal;
    REQUIRE(store->journal(0, 100000, &journal) == Code::kOk);
    int topups = 0;
    for (const auto& e : journal)
      if (e.kind == JournalKind::kTopup && e.account == "alice" && e.delta_nanousd == 2 * kUsd && e.index == until) ++topups;
    CHECK(topups == 1);
  }
  REQUIRE(f.l->flush() == Code::kOk);  // nothing changed: no second entry (checked below after the rebuild)
  // The segment is lost (a reboot): the top-up comes back from the store.
  f.l.reset();
  REQUIRE(Ledger::destroy_segment(f.dir.path()) == Code::kOk);
  Options options;
  options.clock = f.clock.clock();
  REQUIRE(Ledger::open(f.dir.path(), options, &f.l) == Code::kOk);
  Topup topup;
  RulesSpec rules;
  REQUIRE(f.l->rules("alice", &rules, &topup) == Code::kOk);
  CHECK(topup.amount_nanousd == 2 * kUsd);
  CHECK(topup.until_unix_ms == until);
  CHECK(balance_of(*f.l, "alice").limit_nanousd == 3 * kUsd);
  // It ends by itself.
  f.clock.now_ms = until;
  b = balance_of(*f.l, "alice");
  CHECK(b.limit_nanousd == kUsd);
  CHECK(b.topup_nanousd == 0);
  CHECK(f.l->debit("alice", 1) == Code::kDeniedOverBudget);
  // Removed: journaled as 0.
  REQUIRE(f.l->set_topup("alice", 0, 0) == Code::kOk);
  REQUIRE(f.l->flush() == Code::kOk);
  std::unique_ptr<StoreReader> store;
  REQUIRE(StoreReader::open(f.dir.path(), &store) == Code::kOk);
  std::vector<JournalEntry> journal;
  REQUIRE(store->journal(0, 100000, &journal) == Code::kOk);
  std::vector<int64_t> amounts;
  for (const auto& e : journal)
    if (e.kind == JournalKind::kTopup) amounts.push_back(e.delta_nanousd);
  CHECK(amounts == std::vector<int64_t>{2 * kUsd, 0});
}

TEST_CASE("requests per minute count on every level of the chain, exactly, and reset with the minute", "[rules][rate]") {
  Fixture f;
  f.account("team", 100);
  f.account("alice", 100, "team");
  f.account("bob", 100, "team");
  RulesSpec team;
  team.rpm = 5;
  REQUIRE(f.l->set_rules("team", team) == Code::kOk);
  RulesSpec alice;
  alice.rpm = 3;
  REQUIRE(f.l->set_rules("alice", alice) == Code::kOk);
  for (int i = 0; i < 3; ++i) CHECK(f.l->debit("alice", 1) == Code::kOk);
  CHECK(f.l->debit("alice", 1) == Code::kDeniedRate);  // her own 3
  CHECK(Ledger::rate_retry_after_ms() == 30'000);      // the rest of the minute
  CHECK(f.l->debit("bob", 1) == Code::kOk);
  ReservationId id = 0;
  CHECK(f.l->reserve("bob", 1, 60, &id) == Code::kOk);
  CHECK(f.l->debit("bob", 1) == Code::kDeniedRate);  // the team's 5
  CHECK(balance_of(*f.l, "team").spent_nanousd == 4);  // a rate denial charged nothing
  RateUsage u;
  REQUIRE(f.l->rate_usage("team", &u) == Code::kOk);
  CHECK(u.requests == 5);
  CHECK(u.concurrent == 1);
  REQUIRE(f.l->rate_usage("alice", &u) == Code::kOk);
  CHECK(u.requests == 3);
  LedgerStats s;
  REQUIRE(f.l->stats(&s) == Code::kOk);
  CHECK(s.denied_rate == 2);
  f.clock.now_ms += 30'000;  // the next minute
  CHECK(f.l->debit("alice", 1) == Code::kOk);
  REQUIRE(f.l->rate_usage("team", &u) == Code::kOk);
  CHECK(u.requests == 1);
  CHECK(u.concurrent == 1);  // bob's hold is still open: carried over
  REQUIRE(f.l->commit(id, 1) == Code::kOk);
  REQUIRE(f.l->rate_usage("team", &u) == Code::kOk);
  CHECK(u.concurrent == 0);
}

TEST_CASE("tokens per minute count the estimate at admission and the real tokens at commit", "[rules][rate]") {
  Fixture f;
  f.account("alice", 100);
  RulesSpec r;
  r.tpm = 500;
  REQUIRE(f.l->set_rules("alice", r) == Code::kOk);
  std::vector<ReservationId> ids;
  for (int i = 0; i < 3; ++i) {
    int64_t estimate = 0;
    REQUIRE(f.l->estimate(kMini, 100, 100, &estimate) == Code::kOk);  // 200 tokens
    std::string_view chosen;
    ReservationId id = 0;
    const Code code = f.l->authorize("alice", kMini, estimate, 60, &chosen, &id).code();
    if (i < 2) {
      REQUIRE(code == Code::kOk);
      ids.push_back(id);
    } else {
      CHECK(code == Code::kDeniedRate);  // 400 + 200 > 500
    }
  }
  RateUsage u;
  REQUIRE(f.l->rate_usage("alice", &u) == Code::kOk);
  CHECK(u.tokens == 400);
  REQUIRE(f.l->commit_usage(ids[0], 1000, 30, 20) == Code::kOk);  // really 50
  REQUIRE(f.l->release(ids[1]) == Code::kOk);                   // never ran: its 200 come back
  REQUIRE(f.l->rate_usage("alice", &u) == Code::kOk);
  CHECK(u.tokens == 50);
  CHECK(u.concurrent == 0);
  int64_t estimate = 0;
  REQUIRE(f.l->estimate(kMini, 200, 200, &estimate) == Code::kOk);  // 400 more: 450 <= 500
  std::string_view chosen;
  ReservationId id = 0;
  CHECK(f.l->authorize("alice", kMini, estimate, 60, &chosen, &id) == Code::kOk);
  REQUIRE(f.l->rate_usage("alice", &u) == Code::kOk);
  CHECK(u.tokens == 450);
  // An authorize whose estimate was not this thread's last estimate counts no tokens at admission.
  CHECK(f.l->authorize("alice", kMini, 7, 60, &chosen, &id) == Code::kOk);
  REQUIRE(f.l->rate_usage("alice", &u) == Code::kOk);
  CHECK(u.tokens == 450);
}

TEST_CASE("concurrent holds are capped, and a dead process's slots come back with its holds", "[rules][rate]") {
  Fixture f(false);  // real clock: the child's holds expire by their owner's death, not by time
  f.account("team", 100);
  f.account("alice", 100, "team");
  RulesSpec r;
  r.max_concurrent = 2;
  REQUIRE(f.l->set_rules("team", r) == Code::kOk);
  const pid_t child = ::fork();
  if (child == 0) {
    std::unique_ptr<Ledger> l;
    if (!Ledger::open(f.dir.path(), Options{}, &l).ok()) ::_exit(2);
    ReservationId a = 0, b = 0;
    if (!l->reserve("alice", kUsd, 600, &a).ok() || !l->reserve("alice", kUsd, 600, &b).ok()) ::_exit(3);
    ::_exit(l->reserve("alice", kUsd, 600, &a) == Code::kDeniedRate ? 0 : 4);  // dies holding both
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  ReservationId id = 0;
  CHECK(f.l->reserve("alice", kUsd, 60, &id) == Code::kDeniedRate);
  uint32_t retry = 0;
  CHECK(Ledger::rate_retry_after_ms() == 50);
  uint32_t reclaimed = 0;
  REQUIRE(f.l->reclaim(&reclaimed) == Code::kOk);
  CHECK(reclaimed == 2);
  RateUsage u;
  REQUIRE(f.l->rate_usage("team", &u) == Code::kOk);
  CHECK(u.concurrent == 0);
  ReservationId a = 0, b = 0;
  CHECK(f.l->reserve("alice", kUsd, 60, &a) == Code::kOk);
  CHECK(f.l->reserve("alice", kUsd, 60, &b) == Code::kOk);
  CHECK(f.l->reserve("alice", kUsd, 60, &id) == Code::kDeniedRate);
  (void)retry;
  REQUIRE(f.l->release(a) == Code::kOk);
  CHECK(f.l->reserve("alice", kUsd, 60, &id) == Code::kOk);
  CHECK(balance_of(*f.l, "team").held_nanousd == 2 * kUsd);
}

TEST_CASE("rate denials through the C ABI: code 15 and the retry hint", "[rules][rate]") {
  Fixture f;
  f.account("alice", 100);
  RulesSpec r;
  r.rpm = 1;
  REQUIRE(f.l->set_rules("alice", r) == Code::kOk);
  ledger_t* c = nullptr;
  REQUIRE(ledger_open(f.dir.path().c_str(), &c) == LEDGER_OK);
  uint32_t retry = 7;
  REQUIRE(ledger_retry_after_ms(c, &retry) == LEDGER_OK);
  REQUIRE(ledger_debit(c, "alice", 1) == LEDGER_OK);
  CHECK(ledger_debit(c, "alice", 1) == LEDGER_DENIED_RATE);
  REQUIRE(ledger_retry_after_ms(c, &retry) == LEDGER_OK);
  CHECK(retry >= 1);
  CHECK(retry <= 60'000);
  CHECK(std::string(ledger_strerror(LEDGER_DENIED_RATE)).find("per minute") != std::string::npos);
  CHECK(ledger_retry_after_ms(c, nullptr) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_retry_after_ms(nullptr, &retry) == LEDGER_INVALID_ARGUMENT);
  uint64_t id = 0;
  CHECK(ledger_commit_usage(c, id, 1, 1, 1) == LEDGER_UNKNOWN_RESERVATION);
  ledger_close(c);
}

// Several processes at once against one chain: exactly the team's rpm admitted in a minute, and
// exactly its cap of holds open at a time, whatever the interleaving. The clock is in shared memory,
// so that the parent moves every process to the next minute at once.
TEST_CASE("across processes, exactly the rpm and the concurrency cap are admitted per minute", "[rules][rate]") {
  auto* clock = static_cast<ManualClock*>(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(clock != MAP_FAILED);
  clock->now_ms = utc(2026, 12, 6, 12, 0, 0) * 1000;
  TempDir dir;
  Options options;
  options.clock = clock->clock();
  std::unique_ptr<Ledger> l;
  REQUIRE(Ledger::open(dir.path(), options, &l) == Code::kOk);
  REQUIRE(l->set_budget("team", 1000 * kUsd, Period::kDaily, "") == Code::kOk);
  for (const char* u : {"u0", "u1", "u2", "u3"}) REQUIRE(l->set_budget(u, 1000 * kUsd, Period::kDaily, "team") == Code::kOk);
  RulesSpec team;
  team.rpm = 150;
  team.max_concurrent = 7;
  REQUIRE(l->set_rules("team", team) == Code::kOk);
  auto* counts = static_cast<std::atomic<int>*>(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  for (int i = 0; i < 8; ++i) new (&counts[i]) std::atomic<int>(0);
  const auto round = [&](bool holds) {  // 4 processes, 100 attempts each; the admitted ones counted
    std::vector<pid_t> children;
    for (int c = 0; c < 4; ++c) {
      const pid_t pid = ::fork();
      if (pid == 0) {
        std::unique_ptr<Ledger> mine;
        if (!Ledger::open(dir.path(), options, &mine).ok()) ::_exit(2);
        const std::string user = "u" + std::to_string(c);
        ReservationId id = 0;
        for (int i = 0; i < 100; ++i)
          if ((holds ? mine->reserve(user, 1, 600, &id) : mine->debit(user, 1)).ok()) counts[holds ? 1 : 0]++;
        ::_exit(0);  // the holds stay open (this process exits, its slots are reclaimed below)
      }
      children.push_back(pid);
    }
    for (pid_t pid : children) {
      int status = 0;
      REQUIRE(::waitpid(pid, &status, 0) == pid);
      REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    }
  };
  round(false);
  CHECK(counts[0].load() == 150);  // 400 attempts, exactly the rpm admitted
  clock->now_ms += 60'000;          // the next minute, for every process
  round(true);
  CHECK(counts[1].load() == 7);  // the cap of open holds (rpm 150 allows more)
  RateUsage u;
  REQUIRE(l->rate_usage("team", &u) == Code::kOk);
  CHECK(u.requests == 7);
  CHECK(u.concurrent == 7);
  uint32_t reclaimed = 0;
  REQUIRE(l->reclaim(&reclaimed) == Code::kOk);  // the children died holding them: their slots come back
  CHECK(reclaimed == 7);
  REQUIRE(l->rate_usage("team", &u) == Code::kOk);
  CHECK(u.concurrent == 0);
  CHECK(balance_of(*l, "team").spent_nanousd == 150);
  ::munmap(counts, 4096);
  ::munmap(clock, 4096);
}
