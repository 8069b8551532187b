// The durable record: flush contents, idempotence, rebuild after the segment is gone (and its exact
// loss window), a full LMDB map and an unwritable directory.
#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <map>
#include <random>
#include <tuple>
#include <utility>

#include "ledger/store.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::TempDir;
using ledger_test::balance_of;
using ledger_test::utc;

namespace {

std::unique_ptr<Ledger> open_at(const std::string& dir, ManualClock& clock, uint64_t map_size = uint64_t{1} << 30) {
  Options options;
  options.clock = clock.clock();
  options.store_map_size_bytes = map_size;
  options.limits.max_accounts = 4096;
  options.limits.max_reservations = 1024;
  std::unique_ptr<Ledger> ledger;
  REQUIRE(Ledger::open(dir, options, &ledger) == Code::kOk);
  return ledger;
}

}  // namespace

TEST_CASE("a flush writes budgets, period totals, days and a journal, exactly once", "[store]") {
  TempDir dir;
  ManualClock clock;
  clock.now_ms = utc(2026, 11, 26, 10) * 1000;
  auto l = open_at(dir.path(), clock);
  REQUIRE(l->set_budget("eng", 100 * kUsd, Period::kMonthly, "") == Code::kOk);
  REQUIRE(l->set_budget("alice", 10 * kUsd, Period::kDaily, "eng") == Code::kOk);
  REQUIRE(l->block("eng", false) == Code::kOk);
  REQUIRE(l->debit("alice", 2 * kUsd) == Code::kOk);
  ReservationId held = 0, done = 0;
  REQUIRE(l->reserve("alice", 3 * kUsd, 600, &held) == Code::kOk);  // held: not settled, not flushed
  REQUIRE(l->reserve("alice", kUsd, 600, &done) == Code::kOk);
  REQUIRE(l->commit(done, kUsd / 2) == Code::kOk);
  REQUIRE(l->flush() == Code::kOk);

  // Promise 6: the store's files are created 0600, whatever the umask.
  for (const char* file : {"/ledger.mdb", "/ledger.mdb-lock"}) {
    struct stat st {};
    REQUIRE(::stat((dir.path() + file).c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
  }
  std::unique_ptr<StoreReader> store;
  REQUIRE(StoreReader::open(dir.path(), &store) == Code::kOk);
  std::vector<StoredAccount> accounts;
  REQUIRE(store->accounts(&accounts) == Code::kOk);
  REQUIRE(accounts.size() == 2);
  std::map<std::string, StoredAccount> by_name;
  for (auto& a : accounts) by_name[a.account] = a;
  CHECK(by_name["alice"].parent == "eng");
  CHECK(by_name["alice"].limit_nanousd == 10 * kUsd);
  CHECK(by_name["alice"].period == Period::kDaily);
  CHECK(by_name["eng"].period == Period::kMonthly);

  std::vector<StoredPeriod> periods;
  REQUIRE(store->periods(&periods) == Code::kOk);
  REQUIRE(periods.size() == 2);
  for (const auto& p : periods) {
    INFO(p.account);
    CHECK(p.spent_nanousd == 2 * kUsd + kUsd / 2);  // the live hold is not settled spend
    CHECK(p.requests == 2);
    CHECK(p.index == period_index(p.period, clock.now_ms / 1000));
  }
  std::vector<StoredDay> days;
  REQUIRE(store->days(0, 1 << 30, &days) == Code::kOk);
  REQUIRE(days.size() == 2);
  CHECK(days[0].day == utc(2026, 11, 26) / 86400);
  CHECK(days[0].spent_nanousd == 2 * kUsd + kUsd / 2);

  std::vector<JournalEntry> journal;
  REQUIRE(store->journal(0, 100, &journal) == Code::kOk);
  CHECK(journal.size() == 2);
  // One LMDB environment per process: a flush on a thread that has a reader open is refused (it
  // would otherwise open a second environment, whose close drops the first one's locks).
  CHECK(l->flush() == Code::kInvalidArgument);
  store.reset();
  // Nothing new: a second flush records nothing.
  REQUIRE(l->flush() == Code::kOk);
  REQUIRE(StoreReader::open(dir.path(), &store) == Code::kOk);
  REQUIRE(store->journal(0, 100, &journal) == Code::kOk);
  CHECK(journal.size() == 2);

  // Settling the hold tomorrow (still inside its monthly period for eng): today's bucket gets it.
  clock.now_ms = utc(2026, 11, 27, 1) * 1000;
  REQUIRE(l->commit(held, 3 * kUsd) == Code::kOk);
  store.reset();
  REQUIRE(l->flush() == Code::kOk);
  REQUIRE(StoreReader::open(dir.path(), &store) == Code::kOk);
  REQUIRE(store->days(utc(2026, 11, 27) / 86400, utc(2026, 11, 27) / 86400, &days) == Code::kOk);
  REQUIRE(days.size() == 2);
  for (const auto& d : days) CHECK(d.spent_nanousd == 3 * kUsd);
  REQUIRE(store->journal(0, 100, &journal) == Code::kOk);
  CHECK(journal.size() == 4);
  StoreStats stats;
  REQUIRE(store->stats(&stats) == Code::kOk);
  CHECK(stats.last_flush_ms == clock.now_ms);
  CHECK(stats.journal_entries == 4);
}

TEST_CASE("a lost segment is rebuilt from the store, losing only what was not flushed", "[store]") {
  TempDir dir;
  ManualClock clock;
  clock.now_ms = utc(2026, 11, 26, 10) * 1000;
  {
    auto l = open_at(dir.path(), clock);
    REQUIRE(l->set_budget("org", 1000 * kUsd, Period::kMonthly, "") == Code::kOk);
    REQUIRE(l->set_budget("team", 100 * kUsd, Period::kWeekly, "org") == Code::kOk);
    REQUIRE(l->set_budget("alice", 10 * kUsd, Period::kDaily, "team") == Code::kOk);
    REQUIRE(l->set_budget("gone", 10 * kUsd, Period::kNone, "") == Code::kOk);
    REQUIRE(l->block("gone", true) == Code::kOk);
    // Policy survives too: a tier that only allows one model, on the team (alice inherits it).
    std::vector<TierSpec> tiers(1);
    tiers[0].name = "basic";
    tiers[0].models = {"openai/gpt-4o-mini"};
    tiers[0].fallback = "openai/gpt-4o-mini";
    REQUIRE(l->set_tiers(tiers) == Code::kOk);
    REQUIRE(l->set_account_tier("team", "basic") == Code::kOk);
    for (int i = 0; i < 7; ++i) REQUIRE(l->debit("alice", kUsd) == Code::kOk);
    REQUIRE(l->flush() == Code::kOk);
    // An unflushed burst: this is the loss window.
    REQUIRE(l->debit("alice", kUsd) == Code::kOk);
    REQUIRE(l->debit("team", kUsd / 4) == Code::kOk);
  }
  REQUIRE(Ledger::destroy_segment(dir.path()) == Code::kOk);  // a reboot
  auto l = open_at(dir.path(), clock);
  Balance alice = balance_of(*l, "alice");
  CHECK(alice.spent_nanousd == 7 * kUsd);
  CHECK(alice.requests == 7);
  CHECK(alice.limit_nanousd == 10 * kUsd);
  CHECK(alice.period == Period::kDaily);
  CHECK(balance_of(*l, "team").spent_nanousd == 7 * kUsd);
  CHECK(balance_of(*l, "org").spent_nanousd == 7 * kUsd);
  CHECK(balance_of(*l, "gone").blocked);
  // The tier table and the team's tier came back before any worker could attach.
  REQUIRE(l->set_price("openai/gpt-4o-mini", 1, 1, 0) == Code::kOk);
  REQUIRE(l->set_price("anthropic/claude-3.5-sonnet", 1, 1, 0) == Code::kOk);
  std::string_view chosen;
  ReservationId id = 0;
  REQUIRE(l->authorize("alice", "anthropic/claude-3.5-sonnet", 1, 60, &chosen, &id) == Code::kOk);
  CHECK(chosen == "openai/gpt-4o-mini");
  REQUIRE(l->release(id) == Code::kOk);
  std::unique_ptr<StoreReader> reader;
  REQUIRE(StoreReader::open(dir.path(), &reader) == Code::kOk);
  std::vector<StoredAccount> stored;
  REQUIRE(reader->accounts(&stored) == Code::kOk);
  for (const auto& a : stored) CHECK(a.tier == (a.account == "team" ? "basic" : ""));
  // The chain is back: a debit on alice still reaches team and org, and denials still work.
  REQUIRE(l->debit("alice", 3 * kUsd) == Code::kOk);
  CHECK(l->debit("alice", 1) == Code::kDeniedOverBudget);
  CHECK(balance_of(*l, "org").spent_nanousd == 10 * kUsd);
  CHECK(l->debit("gone", 1) == Code::kDeniedBlocked);
  // The next day the daily budget starts afresh; the weekly and monthly keep their spend.
  clock.now_ms = utc(2026, 11, 27, 10) * 1000;
  CHECK(balance_of(*l, "alice").spent_nanousd == 0);
  CHECK(balance_of(*l, "team").spent_nanousd == 10 * kUsd);
}

TEST_CASE("per-model spend reaches the store per day, once, also across a rebuilt segment", "[store]") {
  TempDir dir;
  ManualClock clock;
  clock.now_ms = utc(2026, 11, 26, 10) * 1000;
  const int64_t day1 = utc(2026, 11, 26, 0) / 86400, day2 = day1 + 1;
  const char* kMini = "openai/gpt-4o-mini";
  const char* kSonnet = "anthropic/claude-3.5-sonnet";
  auto authorize_commit = [](Ledger& l, const char* account, const char* model, int64_t actual) {
    std::string_view chosen;
    ReservationId id = 0;
    REQUIRE(l.authorize(account, model, kUsd, 600, &chosen, &id) == Code::kOk);
    REQUIRE(l.commit(id, actual) == Code::kOk);
  };
  auto read_days = [&dir] {
    std::unique_ptr<StoreReader> reader;
    REQUIRE(StoreReader::open(dir.path(), &reader) == Code::kOk);
    std::vector<StoredModelDay> days;
    REQUIRE(reader->model_days(0, INT64_MAX / 2, &days) == Code::kOk);
    std::map<std::tuple<std::string, std::string, int64_t>, std::pair<int64_t, uint64_t>> by;
    for (const auto& d : days) by[{d.account, d.model, d.day}] = {d.spent_nanousd, d.requests};
    return by;
  };
  {
    auto l = open_at(dir.path(), clock);
    REQUIRE(l->set_budget("eng", 100 * kUsd, Period::kMonthly, "") == Code::kOk);
    REQUIRE(l->set_budget("alice", 10 * kUsd, Period::kDaily, "eng") == Code::kOk);
    REQUIRE(l->set_budget("bob", 10 * kUsd, Period::kDaily, "eng") == Code::kOk);
    REQUIRE(l->set_price(kMini, kUsd, kUsd, 0) == Code::kOk);
    REQUIRE(l->set_price(kSonnet, kUsd, kUsd, 0) == Code::kOk);
    authorize_commit(*l, "alice", kMini, 100);
    authorize_commit(*l, "alice", kMini, 20);
    authorize_commit(*l, "alice", kSonnet, 3000);
    authorize_commit(*l, "bob", kSonnet, 7);
    REQUIRE(l->debit("bob", 50) == Code::kOk);  // no model: in the account's total only
    REQUIRE(l->flush() == Code::kOk);
    REQUIRE(l->flush() == Code::kOk);  // nothing new: nothing added
    auto by = read_days();
    REQUIRE(by.size() == 3);
    CHECK(by[{"alice", kMini, day1}] == std::make_pair(int64_t{120}, uint64_t{2}));
    CHECK(by[{"alice", kSonnet, day1}] == std::make_pair(int64_t{3000}, uint64_t{1}));
    CHECK(by[{"bob", kSonnet, day1}] == std::make_pair(int64_t{7}, uint64_t{1}));
    // The next day's commits land in the next day's bucket.
    clock.now_ms = utc(2026, 11, 27, 9) * 1000;
    authorize_commit(*l, "alice", kMini, 5);
    REQUIRE(l->flush() == Code::kOk);
    authorize_commit(*l, "alice", kMini, 1000);  // never flushed: the loss window of a reboot
  }
  REQUIRE(Ledger::destroy_segment(dir.path()) == Code::kOk);  // a reboot: tallies start again at 0
  {
    auto l = open_at(dir.path(), clock);
    REQUIRE(l->set_price(kMini, kUsd, kUsd, 0) == Code::kOk);
    std::vector<ModelSpend> tallies;
    REQUIRE(l->model_spend(&tallies) == Code::kOk);
    CHECK(tallies.empty());
    authorize_commit(*l, "alice", kMini, 1);  // smaller than the stored snapshot of the old segment
    REQUIRE(l->flush() == Code::kOk);
    auto by = read_days();
    REQUIRE(by.size() == 4);
    CHECK(by[{"alice", kMini, day1}] == std::make_pair(int64_t{120}, uint64_t{2}));
    CHECK(by[{"alice", kMini, day2}] == std::make_pair(int64_t{6}, uint64_t{2}));  // 5, then 1 after the rebuild
    CHECK(by[{"alice", kSonnet, day1}] == std::make_pair(int64_t{3000}, uint64_t{1}));
    // The account's own day total agrees with its models (alice has no debits).
    std::unique_ptr<StoreReader> reader;
    REQUIRE(StoreReader::open(dir.path(), &reader) == Code::kOk);
    std::vector<StoredDay> days;
    REQUIRE(reader->days(day2, day2, &days) == Code::kOk);
    for (const auto& d : days)
      if (d.account == "alice") CHECK(d.spent_nanousd == 6);
  }
}

TEST_CASE("day ranges read exactly the days asked for, whatever the history and the names", "[store]") {
  TempDir dir;
  ManualClock clock;
  const int64_t day0 = utc(2026, 11, 1) / 86400;
  auto l = open_at(dir.path(), clock);
  // "al" is a prefix of "alice": the skip scan must not lose either.
  for (const char* a : {"al", "alice", "bob"}) REQUIRE(l->set_budget(a, 1000 * kUsd, Period::kNone, "") == Code::kOk);
  REQUIRE(l->set_budget("daily", 1000 * kUsd, Period::kDaily, "") == Code::kOk);
  REQUIRE(l->set_price("m/x", 1, 1, 0) == Code::kOk);
  REQUIRE(l->set_price("m/x2", 1, 1, 0) == Code::kOk);
  for (int d = 0; d < 20; ++d) {
    clock.now_ms = (day0 + d) * 86'400'000 + 3'600'000;
    REQUIRE(l->debit("daily", 7) == Code::kOk);
    for (const char* a : {"al", "alice", "bob"}) {
      REQUIRE(l->debit(a, 100 + d) == Code::kOk);
      for (const char* m : {"m/x", "m/x2"}) {
        std::string_view chosen;
        ReservationId id = 0;
        REQUIRE(l->authorize(a, m, 10, 60, &chosen, &id) == Code::kOk);
        REQUIRE(l->commit(id, d + 1) == Code::kOk);
      }
    }
    REQUIRE(l->flush() == Code::kOk);
  }
  std::unique_ptr<StoreReader> reader;
  REQUIRE(StoreReader::open(dir.path(), &reader) == Code::kOk);
  for (const auto& [first, last] : std::vector<std::pair<int64_t, int64_t>>{{5, 7}, {0, 0}, {19, 30}, {-5, 2}, {25, 40}, {0, 19}}) {
    INFO("days " << first << ".." << last);
    const int64_t lo = std::max<int64_t>(first, 0), hi = std::min<int64_t>(last, 19), n = hi >= lo ? hi - lo + 1 : 0;
    std::vector<StoredDay> days;
    REQUIRE(reader->days(day0 + first, day0 + last, &days) == Code::kOk);
    REQUIRE(static_cast<int64_t>(days.size()) == 4 * n);
    for (const auto& d : days) {
      CHECK((d.day >= day0 + lo && d.day <= day0 + hi));
      if (d.account == "daily") CHECK(d.spent_nanousd == 7);
      else CHECK(d.spent_nanousd == 100 + (d.day - day0) + 2 * (d.day - day0 + 1));  // the debit and two commits
    }
    std::vector<StoredPeriod> periods;
    REQUIRE(reader->periods_in(day0 + first, day0 + last, &periods) == Code::kOk);
    REQUIRE(static_cast<int64_t>(periods.size()) == n);  // only "daily" has day-numbered periods
    for (const auto& p : periods) CHECK((p.account == "daily" && p.period == Period::kDaily && p.spent_nanousd == 7 &&
                                         p.index >= day0 + lo && p.index <= day0 + hi));
    std::vector<StoredModelDay> models;
    REQUIRE(reader->model_days(day0 + first, day0 + last, &models) == Code::kOk);
    REQUIRE(static_cast<int64_t>(models.size()) == 3 * 2 * n);
    std::map<std::pair<std::string, std::string>, int64_t> per;
    for (const auto& m : models) {
      CHECK((m.day >= day0 + lo && m.day <= day0 + hi));
      CHECK(m.spent_nanousd == m.day - day0 + 1);
      per[{m.account, m.model}] += 1;
    }
    if (n > 0) {
      CHECK(per.size() == 6);
      for (const auto& [key, count] : per) CHECK(count == n);
    }
  }
  std::vector<StoredPeriod> timeless;
  REQUIRE(reader->periods_in(0, 0, &timeless) == Code::kOk);  // the accounts without a period
  REQUIRE(timeless.size() == 3);
  for (const auto& p : timeless) CHECK((p.period == Period::kNone && p.spent_nanousd == 100 * 20 + 190 + 2 * 210));
}

TEST_CASE("flush_pending counts the records the next flush would write", "[store]") {
  TempDir dir;
  ManualClock clock;
  clock.now_ms = utc(2026, 11, 26, 10) * 1000;
  auto l = open_at(dir.path(), clock);
  REQUIRE(l->set_budget("team", 100 * kUsd, Period::kMonthly, "") == Code::kOk);
  REQUIRE(l->set_budget("alice", 10 * kUsd, Period::kDaily, "team") == Code::kOk);
  REQUIRE(l->set_budget("bob", 10 * kUsd, Period::kNone, "team") == Code::kOk);
  uint64_t pending = 99;
  REQUIRE(l->flush_pending(&pending) == Code::kOk);
  CHECK(pending == 0);  // nothing ever used
  REQUIRE(l->debit("alice", kUsd) == Code::kOk);
  REQUIRE(l->flush_pending(&pending) == Code::kOk);
  CHECK(pending == 2);  // alice's day and team's month
  REQUIRE(l->flush() == Code::kOk);
  REQUIRE(l->flush_pending(&pending) == Code::kOk);
  CHECK(pending == 0);
  ReservationId id = 0;
  REQUIRE(l->reserve("bob", kUsd, 60, &id) == Code::kOk);
  REQUIRE(l->flush_pending(&pending) == Code::kOk);
  CHECK(pending == 0);  // a hold settles nothing
  REQUIRE(l->commit(id, kUsd / 2) == Code::kOk);
  REQUIRE(l->flush_pending(&pending) == Code::kOk);
  CHECK(pending == 2);  // bob's (no period) and team's
  REQUIRE(l->flush() == Code::kOk);
  REQUIRE(l->flush_pending(&pending) == Code::kOk);
  CHECK(pending == 0);
  CHECK(l->flush_pending(nullptr) == Code::kInvalidArgument);
}

// Each handle remembers what its last flush wrote (to skip B-tree reads); that memory is only
// trusted while nobody else flushed since. Three handles flush in turn, at random, across a day
// boundary, with holds open: after every flush the store must equal the ledger exactly.
TEST_CASE("flushes from several handles in turn keep the store exact", "[store]") {
  TempDir dir;
  ManualClock clock;
  clock.now_ms = utc(2026, 11, 26, 22) * 1000;
  std::vector<std::unique_ptr<Ledger>> handles;
  for (int h = 0; h < 3; ++h) handles.push_back(open_at(dir.path(), clock));
  Ledger& admin = *handles[0];
  REQUIRE(admin.set_budget("team", 1000 * kUsd, Period::kMonthly, "") == Code::kOk);
  const char* users[] = {"u0", "u1", "u2", "u3"};
  for (const char* u : users) REQUIRE(admin.set_budget(u, 100 * kUsd, Period::kDaily, "team") == Code::kOk);
  std::mt19937_64 rng(7);
  struct OpenHold {
    int user;
    ReservationId id;
    int64_t admitted_unix;  // a hold settles into the period it was admitted in
  };
  std::vector<OpenHold> open_holds;
  // Settled since the last flush, per account; a flush books it on its own UTC day (the store's
  // per-day attribution is at flush granularity).
  std::map<std::string, int64_t> pending;
  std::map<std::pair<std::string, int64_t>, int64_t> expected_days;
  // The model of the period totals: what each account settled into each of its periods, from the
  // operations made here (users are daily, the team monthly).
  std::map<std::pair<std::string, int64_t>, int64_t> settled_in_period;
  const auto period_of = [](const std::string& account) { return account == "team" ? Period::kMonthly : Period::kDaily; };
  const auto settle = [&](const std::string& user, int64_t amount, int64_t admitted_unix) {
    for (const std::string& account : {user, std::string("team")}) {
      pending[account] += amount;
      settled_in_period[{account, period_index(period_of(account), admitted_unix)}] += amount;
    }
  };
  for (int round = 0; round < 300; ++round) {
    if (round == 150) clock.now_ms = utc(2026, 11, 27, 1) * 1000;  // a new day: daily periods restart
    const int64_t day = clock.now_ms / 86'400'000;
    Ledger& l = *handles[rng() % 3];
    const char* user = users[rng() % 4];
    const int64_t amount = 1 + static_cast<int64_t>(rng() % 1000);
    switch (rng() % 4) {
      case 0:
        if (l.debit(user, amount).ok()) settle(user, amount, clock.now_ms / 1000);
        break;
      case 1: {
        ReservationId id = 0;
        if (l.reserve(user, amount, 600, &id).ok())
          open_holds.push_back(OpenHold{static_cast<int>(user[1] - '0'), id, clock.now_ms / 1000});
        break;
      }
      case 2:
        if (!open_holds.empty()) {
          const OpenHold hold = open_holds.back();
          open_holds.pop_back();
          REQUIRE(l.commit(hold.id, amount) == Code::kOk);
          settle(users[hold.user], amount, hold.admitted_unix);
        }
        break;
      default: {
        REQUIRE(l.flush() == Code::kOk);
        for (auto& [account, amount_pending] : pending) expected_days[{account, day}] += std::exchange(amount_pending, 0);
        std::unique_ptr<StoreReader> reader;
        REQUIRE(StoreReader::open(dir.path(), &reader) == Code::kOk);
        std::vector<StoredPeriod> periods;
        REQUIRE(reader->periods(&periods) == Code::kOk);
        std::vector<StoredDay> days;
        REQUIRE(reader->days(0, INT64_MAX / 2, &days) == Code::kOk);
        INFO("round " << round);
        for (const char* a : {"team", "u0", "u1", "u2", "u3"}) {
          const int64_t index = period_index(period_of(a), clock.now_ms / 1000);
          const auto settled = settled_in_period.find({a, index});
          const int64_t expected = settled == settled_in_period.end() ? 0 : settled->second;
          int64_t stored = -1;  // no record
          for (const auto& p : periods)
            if (p.account == a && p.period == period_of(a) && p.index == index) stored = p.spent_nanousd;
          INFO(a << " period " << index);
          CHECK(balance_of(admin, a).spent_nanousd == expected);  // settled, holds excluded
          CHECK(stored == (expected == 0 ? -1 : expected));        // a period with nothing settled has no record
        }
        size_t nonzero = 0;
        for (const auto& [key, amount_expected] : expected_days) nonzero += amount_expected != 0 ? 1 : 0;
        CHECK(days.size() == nonzero);
        for (const auto& d : days) {
          INFO(d.account << " day " << d.day);
          CHECK(d.spent_nanousd == expected_days[{d.account, d.day}]);
        }
      }
    }
  }
}

TEST_CASE("a full LMDB map is a clear error that changes nothing in the segment", "[store]") {
  TempDir dir;
  ManualClock clock;
  clock.now_ms = utc(2026, 11, 26, 10) * 1000;
  auto l = open_at(dir.path(), clock, 64 * 1024);  // 16 pages
  for (int i = 0; i < 2000; ++i) {
    const std::string name = "user-" + std::to_string(i);
    REQUIRE(l->set_budget(name, 10 * kUsd, Period::kDaily, "") == Code::kOk);
    REQUIRE(l->debit(name, kUsd) == Code::kOk);
  }
  CHECK(l->flush() == Code::kFull);
  CHECK(balance_of(*l, "user-1999").spent_nanousd == kUsd);
  CHECK(l->debit("user-7", kUsd) == Code::kOk);  // workers are unaffected
  CHECK(balance_of(*l, "user-7").spent_nanousd == 2 * kUsd);
  // With room again, the same flush goes through and records everything.
  auto bigger = open_at(dir.path(), clock);
  REQUIRE(bigger->flush() == Code::kOk);
  std::unique_ptr<StoreReader> store;
  REQUIRE(StoreReader::open(dir.path(), &store) == Code::kOk);
  std::vector<StoredPeriod> periods;
  REQUIRE(store->periods(&periods) == Code::kOk);
  CHECK(periods.size() == 2000);
}

TEST_CASE("an unwritable directory gives a permission error, never a crash", "[store]") {
  // Root ignores file modes, so the check runs as an unprivileged user in a child process.
  const struct passwd* nobody = ::getpwnam("nobody");
  REQUIRE(nobody != nullptr);
  TempDir parent_dir;
  const std::string dir = parent_dir.path() + "/ro";
  REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
  if (::geteuid() == 0) REQUIRE(::chown(dir.c_str(), nobody->pw_uid, nobody->pw_gid) == 0);
  ::chmod(parent_dir.path().c_str(), 0755);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::geteuid() == 0 && (::setgid(nobody->pw_gid) != 0 || ::setuid(nobody->pw_uid) != 0)) ::_exit(10);
    std::unique_ptr<Ledger> l;
    if (!Ledger::open(dir, Options{}, &l).ok()) ::_exit(11);
    if (!l->set_budget("alice", 10 * kUsd, Period::kDaily, "").ok() || !l->debit("alice", kUsd).ok()) ::_exit(12);
    ::chmod(dir.c_str(), 0500);
    const Status flushed = l->flush();
    Balance b;
    const bool intact = l->balance("alice", &b).ok() && b.spent_nanousd == kUsd && l->debit("alice", kUsd).ok();
    ::chmod(dir.c_str(), 0700);
    (void)Ledger::destroy_segment(dir);
    ::_exit(flushed == Code::kPermission ? (intact ? 0 : 14) : 13);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
