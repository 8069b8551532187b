// Which OpenRouter key a settlement went through: the worker says it (authorize_via, a full hash or
// a unique prefix), or the default rule decides (the account's own bound key, else its nearest
// ancestor's). Per (account, key) tallies in the segment, per-day buckets in the store, and the
// adjustment's journal entry written by the same flush as the totals it changed.
#include <catch2/catch.hpp>
#include <map>

#include "ledger/store.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::TempDir;
using ledger_test::utc;

namespace {

constexpr const char* kTeamKey = "1111111111111111aaaaaaaaaaaaaaaa1111111111111111aaaaaaaaaaaaaaaa";
constexpr const char* kBobKey = "2222222222222222bbbbbbbbbbbbbbbb2222222222222222bbbbbbbbbbbbbbbb";
// Shares its first 12 hex digits with kBobKey: a 12-digit prefix names neither.
constexpr const char* kTwinKey = "222222222222ffffbbbbbbbbbbbbbbbb2222222222222222bbbbbbbbbbbbbbbb";
constexpr const char* kModel = "vendor/model";

struct Fixture {
  TempDir dir;
  ManualClock clock;
  std::unique_ptr<Ledger> l;
  Fixture() {
    clock.now_ms = utc(2026, 11, 26, 10) * 1000;
    Options options;
    options.clock = clock.clock();
    REQUIRE(Ledger::open(dir.path(), options, &l) == Code::kOk);
    REQUIRE(l->set_budget("eng", 100 * kUsd, Period::kMonthly, "") == Code::kOk);
    REQUIRE(l->set_budget("alice", 10 * kUsd, Period::kDaily, "eng") == Code::kOk);
    REQUIRE(l->set_budget("bob", 10 * kUsd, Period::kDaily, "eng") == Code::kOk);
    REQUIRE(l->set_budget("solo", 10 * kUsd, Period::kNone, "") == Code::kOk);
    REQUIRE(l->set_price(kModel, kUsd, kUsd, 0) == Code::kOk);
    REQUIRE(l->bind_key("eng", kTeamKey) == Code::kOk);
    REQUIRE(l->bind_key("bob", kBobKey) == Code::kOk);
  }
  // (account, key) -> (spent, requests, adjusted)
  std::map<std::pair<std::string, std::string>, std::tuple<int64_t, uint64_t, int64_t>> tallies() {
    std::vector<KeySpend> rows;
    REQUIRE(l->key_spend(&rows) == Code::kOk);
    std::map<std::pair<std::string, std::string>, std::tuple<int64_t, uint64_t, int64_t>> out;
    for (const auto& r : rows) out[{r.account, r.key_hash}] = {r.spent_nanousd, r.requests, r.adjusted_nanousd};
    return out;
  }
  ReservationId authorize(const char* account, std::string_view key, Code expected = Code::kOk) {
    std::string_view chosen;
    ReservationId id = 0;
    REQUIRE(l->authorize_via(account, kModel, kUsd, 60, key, &chosen, &id) == expected);
    return id;
  }
};

}  // namespace

TEST_CASE("bind_key validates, and the default rule is the nearest bound key", "[keys]") {
  Fixture f;
  std::string key;
  REQUIRE(f.l->bound_key("bob", &key) == Code::kOk);
  CHECK(key == kBobKey);
  REQUIRE(f.l->bound_key("alice", &key) == Code::kOk);
  CHECK(key.empty());  // alice has no key of her own
  CHECK(f.l->bind_key("alice", "sk-or-v1-not-a-hash") == Code::kInvalidArgument);
  CHECK(f.l->bind_key("alice", std::string(kTeamKey).substr(0, 20)) == Code::kInvalidArgument);  // a full hash only
  CHECK(f.l->bind_key("nobody", kTeamKey) == Code::kUnknownAccount);
  // alice -> eng's key; bob -> his own; solo -> none; a plain reserve and a debit follow the rule too.
  REQUIRE(f.l->commit(f.authorize("alice", ""), 3) == Code::kOk);
  REQUIRE(f.l->commit(f.authorize("bob", ""), 5) == Code::kOk);
  REQUIRE(f.l->commit(f.authorize("solo", ""), 7) == Code::kOk);
  ReservationId plain = 0;
  REQUIRE(f.l->reserve("alice", 100, 60, &plain) == Code::kOk);
  REQUIRE(f.l->commit(plain, 11) == Code::kOk);
  REQUIRE(f.l->debit("bob", 13) == Code::kOk);
  REQUIRE(f.l->release(f.authorize("alice", "")) == Code::kOk);  // released: not spent through anything
  auto t = f.tallies();
  REQUIRE(t.size() == 2);
  CHECK(t[{"alice", kTeamKey}] == std::make_tuple(int64_t{14}, uint64_t{2}, int64_t{0}));
  CHECK(t[{"bob", kBobKey}] == std::make_tuple(int64_t{18}, uint64_t{2}, int64_t{0}));
  // Unbinding bob: the rule falls back to eng's key from then on.
  REQUIRE(f.l->bind_key("bob", "") == Code::kOk);
  REQUIRE(f.l->debit("bob", 1) == Code::kOk);
  t = f.tallies();
  CHECK(std::get<0>(t[{"bob", kTeamKey}]) == 1);
}

TEST_CASE("the worker names the key: a full hash, or a unique prefix of at least 12 hex", "[keys]") {
  Fixture f;
  // bob's workers use the team's shared key: said explicitly, it wins over bob's own key.
  REQUIRE(f.l->commit(f.authorize("bob", kTeamKey), 5) == Code::kOk);
  REQUIRE(f.l->commit(f.authorize("bob", std::string(kTeamKey).substr(0, 12)), 6) == Code::kOk);
  // A full hash the ledger does not know is registered.
  REQUIRE(f.l->commit(f.authorize("alice", kTwinKey), 7) == Code::kOk);
  auto t = f.tallies();
  CHECK(std::get<0>(t[{"bob", kTeamKey}]) == 11);
  CHECK(std::get<0>(t[{"alice", kTwinKey}]) == 7);
  CHECK(t.count({"bob", kBobKey}) == 0);
  // Refused, and nothing reserved: ambiguous, unknown, too short, not hex.
  Balance before;
  REQUIRE(f.l->balance("eng", &before) == Code::kOk);
  f.authorize("bob", std::string(kBobKey).substr(0, 12), Code::kInvalidArgument);  // bob's and the twin
  CHECK(f.l->commit(f.authorize("bob", std::string(kBobKey).substr(0, 13)), 1) == Code::kOk);  // one more digit: unique
  f.authorize("bob", "333333333333", Code::kInvalidArgument);
  f.authorize("bob", "22222222222", Code::kInvalidArgument);
  f.authorize("bob", "22222222222g", Code::kInvalidArgument);
  f.authorize("bob", std::string(kBobKey) + "0", Code::kInvalidArgument);
  Balance after;
  REQUIRE(f.l->balance("eng", &after) == Code::kOk);
  CHECK(after.held_nanousd == before.held_nanousd);
  CHECK(after.spent_nanousd == before.spent_nanousd + 1);
  CHECK(valid_key_reference(kBobKey));
  CHECK(!valid_key_reference("22222222222"));
}

TEST_CASE("an adjustment through a key counts there, and the flush journals it in the same transaction", "[keys]") {
  Fixture f;
  REQUIRE(f.l->commit(f.authorize("alice", ""), 2 * kUsd) == Code::kOk);
  REQUIRE(f.l->adjust("bob", kUsd / 10, kBobKey) == Code::kOk);  // bob spent on his key past the ledger
  REQUIRE(f.l->adjust("alice", 5, "") == Code::kOk);              // an adjustment without a key
  auto t = f.tallies();
  CHECK(t[{"bob", kBobKey}] == std::make_tuple(kUsd / 10, uint64_t{0}, kUsd / 10));
  REQUIRE(f.l->flush() == Code::kOk);
  {
    std::unique_ptr<StoreReader> store;
    REQUIRE(StoreReader::open(f.dir.path(), &store) == Code::kOk);
    std::vector<StoredKeyDay> days;
    const int64_t today = utc(2026, 11, 26) / 86400;
    REQUIRE(store->key_days(today, today, &days) == Code::kOk);
    std::map<std::pair<std::string, std::string>, int64_t> by;
    for (const auto& d : days) by[{d.key_hash, d.account}] = d.spent_nanousd;
    REQUIRE(by.size() == 2);
    CHECK(by[{kTeamKey, "alice"}] == 2 * kUsd);
    CHECK(by[{kBobKey, "bob"}] == kUsd / 10);
    std::vector<JournalEntry> journal;
    REQUIRE(store->journal(0, 100, &journal) == Code::kOk);
    std::vector<JournalEntry> adjustments;
    for (const auto& e : journal)
      if (e.kind == JournalKind::kAdjustment) adjustments.push_back(e);
    REQUIRE(adjustments.size() == 2);
    for (const auto& e : adjustments) {
      if (e.account == "bob") {
        CHECK(e.key_hash == kBobKey);
        CHECK(e.delta_nanousd == kUsd / 10);
        CHECK(e.period == Period::kDaily);
      } else {
        CHECK(e.account == "alice");
        CHECK(e.key_hash.empty());
        CHECK(e.delta_nanousd == 5);
      }
    }
  }
  // Flushing again records nothing new; a rebuilt segment starts its tallies again at zero without
  // taking anything off the store's days.
  REQUIRE(f.l->flush() == Code::kOk);
  f.l.reset();
  REQUIRE(Ledger::destroy_segment(f.dir.path()) == Code::kOk);
  Options options;
  options.clock = f.clock.clock();
  REQUIRE(Ledger::open(f.dir.path(), options, &f.l) == Code::kOk);
  CHECK(f.tallies().empty());
  REQUIRE(f.l->debit("bob", 9) == Code::kOk);  // bob's binding came back with the rebuild
  REQUIRE(f.l->flush() == Code::kOk);
  std::unique_ptr<StoreReader> store;
  REQUIRE(StoreReader::open(f.dir.path(), &store) == Code::kOk);
  std::vector<StoredKeyDay> days;
  REQUIRE(store->key_days(0, 1 << 30, &days) == Code::kOk);
  std::map<std::pair<std::string, std::string>, int64_t> by;
  for (const auto& d : days) by[{d.key_hash, d.account}] = d.spent_nanousd;
  CHECK(by[{kTeamKey, "alice"}] == 2 * kUsd);
  CHECK(by[{kBobKey, "bob"}] == kUsd / 10 + 9);
  std::vector<JournalEntry> journal;
  REQUIRE(store->journal(0, 100, &journal) == Code::kOk);
  size_t adjustments = 0;
  for (const auto& e : journal) adjustments += e.kind == JournalKind::kAdjustment ? 1 : 0;
  CHECK(adjustments == 2);  // once each, not again after the rebuild
}
