// SIGKILL torture: worker processes (forked with the parent's handle) do random debit, reserve (or
// authorize for a model), commit and release on a 3-level chain, and one in five also reclaims; the parent kills a random
// worker every few hundred microseconds and starts a new one. Workers log each operation before
// (intent) and after (acknowledgement) it, with write(2) to their own log file. At the end the
// parent reclaims and checks, per account:
//   acknowledged <= ledger spent <= acknowledged + in-flight-at-kill  (nothing lost, nothing twice)
//   spent(parent) == sum of children's spent; nothing held; no leaked reservation slot;
//   the same bounds for each (account, model) tally of authorized commits.
// LEDGER_TORTURE_KILLS sets the number of kills (default 1000; use 10000+ for a long local run).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <vector>

#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::TempDir;

namespace {

constexpr const char* kAccounts[] = {"org", "team", "u0", "u1", "u2"};
constexpr int kParent[] = {-1, 0, 1, 1, 1};
constexpr int kN = 5;
constexpr int kWorkers = 4;
constexpr uint32_t kMaxReservations = 4096;
constexpr const char* kModels[] = {"vendor/model-a", "vendor/model-b"};

struct Record {
  uint32_t kind;     // 1 debit, 2 commit
  uint32_t phase;    // 0 intent, 1 acknowledged
  uint32_t account;
  uint32_t model;    // commit of an authorize()d hold: model index + 1; else 0
  int64_t amount;    // debit amount or commit actual
  int64_t hold;      // commit: the hold it settles
};
static_assert(sizeof(Record) == 32);

[[noreturn]] void worker_main(Ledger& ledger, const std::string& log_path, uint64_t seed) {
  const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) ::_exit(2);
  std::mt19937_64 rng(seed);
  auto log = [fd](const Record& r) {
    if (::write(fd, &r, sizeof r) != static_cast<ssize_t>(sizeof r)) ::_exit(3);
  };
  for (uint64_t n = 0;; ++n) {
    // Mostly users on the 3-level chain; sometimes the root itself (a single-CAS debit, no intent).
    const uint32_t account = rng() % 8 == 0 ? 0 : 2 + static_cast<uint32_t>(rng() % 3);
    const int64_t amount = 1 + static_cast<int64_t>(rng() % 1000);
    const int choice = static_cast<int>(rng() % 10);
    if (choice < 4) {
      log(Record{1, 0, account, 0, amount, 0});
      if (ledger.debit(kAccounts[account], amount).ok()) log(Record{1, 1, account, 0, amount, 0});
    } else if (choice < 9) {
      ReservationId id = 0;
      if (account == 0) continue;
      // Half the holds are authorized for a model (the worker's usual call): their commits are
      // also tallied per (account, model).
      const uint32_t model = rng() % 2 == 0 ? 0 : 1 + static_cast<uint32_t>(rng() % 2);
      std::string_view chosen;
      const Status held = model == 0 ? ledger.reserve(kAccounts[account], amount, 30, &id)
                                     : ledger.authorize(kAccounts[account], kModels[model - 1], amount, 30, &chosen, &id);
      if (!held.ok()) continue;
      if (choice < 8) {
        const int64_t actual = static_cast<int64_t>(rng() % static_cast<uint64_t>(amount + 200));
        log(Record{2, 0, account, model, actual, amount});
        if (ledger.commit(id, actual).ok()) log(Record{2, 1, account, model, actual, amount});
      } else {
        (void)ledger.release(id);
      }
    } else if (seed % 5 == 0) {
      uint32_t reclaimed = 0;
      (void)ledger.reclaim(&reclaimed);
    }
  }
}

// Rate limits (DESIGN 13) on the team and every user: the rate words are lane targets like the
// budgets, so after the torture every level counted the same admissions (the team's requests are
// its users' sum, all in one minute: the clock is fixed) and no concurrent slot is left: the
// team's cap of 6 open holds would deny every worker for good if dead processes' slots leaked.
void set_rate_limits(Ledger& ledger) {
  RulesSpec team, user;
  team.max_concurrent = 6;
  team.tpm = kTpmMax;
  user.max_concurrent = 100;
  user.rpm = kRpmMax;
  REQUIRE(ledger.set_rules("team", team) == Code::kOk);
  for (int i = 2; i < kN; ++i) REQUIRE(ledger.set_rules(kAccounts[i], user) == Code::kOk);
}

void check_rate_words(Ledger& ledger) {
  RateUsage team, user;
  REQUIRE(ledger.rate_usage("team", &team) == Code::kOk);
  uint64_t users = 0;
  for (int i = 2; i < kN; ++i) {
    REQUIRE(ledger.rate_usage(kAccounts[i], &user) == Code::kOk);
    CHECK(user.concurrent == 0);
    users += user.requests;
  }
  std::printf("  rate words: team requests %llu (users %llu), concurrent %llu\n", static_cast<unsigned long long>(team.requests),
              static_cast<unsigned long long>(users), static_cast<unsigned long long>(team.concurrent));
  CHECK(team.concurrent == 0);
  CHECK(team.requests == users);
  CHECK(users > 0);
  CHECK(users < (uint64_t{1} << 20));  // below the field's ceiling: the equality above is exact
}

void torture(bool rated, int kills_target) {
  TempDir dir;
  std::unique_ptr<Ledger> ledger;
  ledger_test::ManualClock clock;  // rated: one minute for the whole run
  clock.now_ms = ledger_test::utc(2026, 12, 6, 12, 0, 0) * 1000;
  Options options;
  options.limits.max_reservations = kMaxReservations;
  options.tombstone_grace_s = 1;
  if (rated) options.clock = clock.clock();
  REQUIRE(Ledger::open(dir.path(), options, &ledger) == Code::kOk);
  // Budgets large enough that most operations are granted, small enough that some are denied.
  const int64_t limits[] = {int64_t{1} << 40, int64_t{1} << 39, int64_t{1} << 37, int64_t{1} << 37, 2'000'000};
  for (int i = 0; i < kN; ++i)
    REQUIRE(ledger->set_budget(kAccounts[i], limits[i], Period::kNone, kParent[i] < 0 ? "" : kAccounts[kParent[i]]) == Code::kOk);
  for (const char* m : kModels) REQUIRE(ledger->set_price(m, 1, 1, 0) == Code::kOk);
  if (rated) set_rate_limits(*ledger);

  std::vector<std::string> logs;
  std::vector<pid_t> workers(kWorkers, -1);
  uint64_t spawned = 0;
  auto spawn = [&](int slot) {
    const std::string path = dir.path() + "/worker-" + std::to_string(spawned) + ".log";
    logs.push_back(path);
    const uint64_t seed = spawned++;
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) worker_main(*ledger, path, seed);
    workers[slot] = pid;
  };
  for (int w = 0; w < kWorkers; ++w) spawn(w);

  std::mt19937_64 rng(42);
  const auto started = std::chrono::steady_clock::now();
  for (int kill = 0; kill < kills_target; ++kill) {
    const struct timespec pause {0, static_cast<long>(100'000 + rng() % 600'000)};
    ::nanosleep(&pause, nullptr);
    const int slot = static_cast<int>(rng() % kWorkers);
    ::kill(workers[slot], SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(workers[slot], &status, 0) == workers[slot]);
    REQUIRE(WIFSIGNALED(status));  // it was killed, not crashed by itself
    if (kill % 50 == 49) {
      uint32_t n = 0;
      REQUIRE(ledger->reclaim(&n) == Code::kOk);
    }
    spawn(slot);
  }
  for (pid_t pid : workers) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  uint32_t reclaimed = 0;
  REQUIRE(ledger->reclaim(&reclaimed) == Code::kOk);

  // Read the logs: acknowledged spend, and spend in flight when the worker died.
  int64_t acked[kN] = {}, in_flight[kN] = {};
  std::map<std::pair<uint32_t, uint32_t>, std::pair<int64_t, int64_t>> per_model;  // (account, model) -> (acked, in flight)
  uint64_t operations = 0, acknowledged = 0;
  for (const std::string& path : logs) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) continue;  // killed before it opened its log
    Record r{}, pending{};
    bool has_pending = false;
    while (std::fread(&r, sizeof r, 1, f) == 1) {
      REQUIRE(r.account < kN);
      if (r.phase == 0) {
        if (has_pending) ++operations;  // the previous intent was denied (no acknowledgement)
        pending = r;
        has_pending = true;
      } else {
        REQUIRE(has_pending);
        REQUIRE(r.amount == pending.amount);
        acked[r.account] += r.amount;
        if (r.model != 0) per_model[{r.account, r.model}].first += r.amount;
        ++operations;
        ++acknowledged;
        has_pending = false;
      }
    }
    std::fclose(f);
    if (has_pending) in_flight[pending.account] += pending.amount;  // at most one per worker life
    if (has_pending && pending.model != 0) per_model[{pending.account, pending.model}].second += pending.amount;
  }

  Balance b[kN];
  for (int i = 0; i < kN; ++i) REQUIRE(ledger->balance(kAccounts[i], &b[i]) == Code::kOk);
  int64_t acked_subtree[kN] = {}, flight_subtree[kN] = {};
  for (int i = 0; i < kN; ++i)
    for (int a = i; a >= 0; a = kParent[a]) {
      acked_subtree[a] += acked[i];
      flight_subtree[a] += in_flight[i];
    }
  std::printf("torture: %d kills in %.1f s, %llu worker lives, %llu operations logged, %llu acknowledged\n",
              kills_target, seconds, static_cast<unsigned long long>(spawned),
              static_cast<unsigned long long>(operations), static_cast<unsigned long long>(acknowledged));
  int mismatches = 0;
  for (int i = 0; i < kN; ++i) {
    INFO(kAccounts[i] << ": spent " << b[i].spent_nanousd << " acked " << acked_subtree[i] << " in flight "
                      << flight_subtree[i]);
    std::printf("  %-5s spent %14lld acknowledged %14lld in flight %8lld held %lld\n", kAccounts[i],
                static_cast<long long>(b[i].spent_nanousd), static_cast<long long>(acked_subtree[i]),
                static_cast<long long>(flight_subtree[i]), static_cast<long long>(b[i].held_nanousd));
    CHECK(b[i].held_nanousd == 0);
    CHECK(b[i].spent_nanousd >= acked_subtree[i]);
    CHECK(b[i].spent_nanousd <= acked_subtree[i] + flight_subtree[i]);
    if (b[i].held_nanousd != 0 || b[i].spent_nanousd < acked_subtree[i] ||
        b[i].spent_nanousd > acked_subtree[i] + flight_subtree[i])
      ++mismatches;
  }
  CHECK(b[1].spent_nanousd == b[2].spent_nanousd + b[3].spent_nanousd + b[4].spent_nanousd);
  // org = team + its own direct debits (acknowledged, plus at most the ones in flight at a kill).
  CHECK(b[0].spent_nanousd - b[1].spent_nanousd >= acked[0]);
  CHECK(b[0].spent_nanousd - b[1].spent_nanousd <= acked[0] + in_flight[0]);
  // Per-model tallies: every acknowledged authorized commit exactly once, in-flight ones at most once.
  std::vector<ModelSpend> tallies;
  REQUIRE(ledger->model_spend(&tallies) == Code::kOk);
  std::map<std::pair<uint32_t, uint32_t>, int64_t> tallied;
  for (const auto& t : tallies) {
    uint32_t a = 0, m = 0;
    while (a < kN && t.account != kAccounts[a]) ++a;
    while (m < 2 && t.model != kModels[m]) ++m;
    REQUIRE(a >= 2);  // only the account a hold was authorized for: users, never team or org
    REQUIRE(m < 2);
    tallied[{a, m + 1}] = t.spent_nanousd;
  }
  for (const auto& [key, logged] : per_model) {
    const int64_t got = tallied[key];
    std::printf("  %-5s %-15s tallied %12lld acknowledged %12lld in flight %8lld\n", kAccounts[key.first], kModels[key.second - 1],
                static_cast<long long>(got), static_cast<long long>(logged.first), static_cast<long long>(logged.second));
    CHECK(got >= logged.first);
    CHECK(got <= logged.first + logged.second);
    if (got < logged.first || got > logged.first + logged.second) ++mismatches;
  }
  CHECK(tallied.size() <= per_model.size());
  std::printf("torture: invariant mismatches: %d\n", mismatches);
  CHECK(acknowledged > static_cast<uint64_t>(kills_target));
  if (rated) check_rate_words(*ledger);

  // No reservation slot leaked: once tombstones age out, every slot can be reserved again.
  if (rated) {
    for (int i = 1; i < kN; ++i) REQUIRE(ledger->set_rules(kAccounts[i], RulesSpec{}) == Code::kOk);  // no caps for this check
    clock.now_ms += 3000;  // the tombstones' grace is over on this clock too
  }
  ::sleep(2);
  REQUIRE(ledger->reclaim(&reclaimed) == Code::kOk);
  std::vector<ReservationId> ids(kMaxReservations);
  for (auto& id : ids) REQUIRE(ledger->reserve("u0", 0, 60, &id) == Code::kOk);
  for (auto id : ids) REQUIRE(ledger->release(id) == Code::kOk);
}

int kills_wanted() {
  const char* env = std::getenv("LEDGER_TORTURE_KILLS");
  return env != nullptr ? std::max(1, std::atoi(env)) : 1000;
}

}  // namespace

TEST_CASE("SIGKILL torture keeps every acknowledged operation and every invariant", "[torture]") { torture(false, kills_wanted()); }

// Fewer kills: every admission counts a request in the one minute, and the count must stay below
// the field's ceiling (2^20) for the chain's equality to be exact.
TEST_CASE("SIGKILL torture with rate limits: every level counts the same, no slot is left behind", "[torture][rate]") {
  torture(true, std::min(kills_wanted(), 300));
}
