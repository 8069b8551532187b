// Many processes x threads hammer shared parents and one hot user with random debit, reserve,
// commit (less or more than the hold) and release. Afterwards, exactly:
//   ledger spent(user) = what the workers were granted on it; spent(parent) = sum of its children's
//   + its own direct debits; requests match; nothing is held; and no account's spent exceeds its
//   limit except by the recorded commit overruns (promise 1).
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <random>
#include <thread>
#include <vector>

#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::TempDir;

namespace {

// org -> {team1 -> {hot, u1, u2}, team2 -> {u3, u4}}; index = position in kAccounts.
constexpr const char* kAccounts[] = {"org", "team1", "team2", "hot", "u1", "u2", "u3", "u4"};
constexpr int kParent[] = {-1, 0, 0, 1, 1, 1, 2, 2};
constexpr int64_t kLimit[] = {40 * kUsd, 25 * kUsd, 25 * kUsd, 8 * kUsd, 6 * kUsd, 6 * kUsd, 9 * kUsd, 9 * kUsd};
constexpr int kN = 8;

struct Totals {  // per account, summed by all workers (shared anonymous mapping)
  std::atomic<int64_t> spent[kN];      // granted debits + committed actuals, on the account itself
  std::atomic<int64_t> requests[kN];
  std::atomic<int64_t> overrun[kN];    // sum of (actual - hold) > 0 of commits made on the account
  std::atomic<int64_t> denied;
  std::atomic<int64_t> operations;
  std::atomic<int64_t> errors;         // Catch2 assertions are not thread-safe: workers count here
  std::atomic<int64_t> error_line;
};

#define WORKER_CHECK(condition) \
  do {                          \
    if (!(condition)) {         \
      totals.errors += 1;       \
      totals.error_line = __LINE__; \
      return;                   \
    }                           \
  } while (0)

void worker(Ledger& ledger, Totals& totals, uint64_t seed, int operations) {
  std::mt19937_64 rng(seed);
  AccountRef refs[kN];
  for (int i = 0; i < kN; ++i) WORKER_CHECK(ledger.find(kAccounts[i], &refs[i]) == Code::kOk);
  for (int op = 0; op < operations; ++op) {
    // Mostly the hot user; team1 and org also take direct debits.
    const int r = static_cast<int>(rng() % 100);
    const int account = r < 40 ? 3 : r < 45 ? 1 : r < 48 ? 0 : 4 + static_cast<int>(rng() % 4);
    const int64_t amount = 1 + static_cast<int64_t>(rng() % (kUsd / 20));
    const int kind = static_cast<int>(rng() % 3);
    totals.operations.fetch_add(1);
    if (kind == 0) {
      const Status s = ledger.debit(refs[account], amount);
      if (s.ok()) {
        totals.spent[account] += amount;
        totals.requests[account] += 1;
      } else {
        WORKER_CHECK(s.denied());
        totals.denied += 1;
      }
      continue;
    }
    ReservationId id = 0;
    const Status s = ledger.reserve(refs[account], amount, 60, &id);
    if (!s.ok()) {
      WORKER_CHECK(s.denied());
      totals.denied += 1;
      continue;
    }
    if (kind == 1) {
      // Actual cost between half and 1.25x the hold: some commits overrun.
      const int64_t actual = amount / 2 + static_cast<int64_t>(rng() % static_cast<uint64_t>(amount * 3 / 4 + 1));
      WORKER_CHECK(ledger.commit(id, actual) == Code::kOk);
      // Settled at most once: the slot may already be recycled by another thread, and then the
      // generation in the id tells the stale id apart.
      const Status again = ledger.commit(id, actual);
      WORKER_CHECK(again == Code::kAlreadySettled || again == Code::kUnknownReservation);
      totals.spent[account] += actual;
      totals.requests[account] += 1;
      if (actual > amount) totals.overrun[account] += actual - amount;
    } else {
      WORKER_CHECK(ledger.release(id) == Code::kOk);
    }
  }
}

}  // namespace

TEST_CASE("processes x threads keep every budget invariant exactly", "[concurrency]") {
  TempDir dir;
  std::unique_ptr<Ledger> ledger;
  REQUIRE(Ledger::open(dir.path(), Options{}, &ledger) == Code::kOk);
  for (int i = 0; i < kN; ++i)
    REQUIRE(ledger->set_budget(kAccounts[i], kLimit[i], Period::kNone, kParent[i] < 0 ? "" : kAccounts[kParent[i]]) == Code::kOk);

  auto* totals = static_cast<Totals*>(::mmap(nullptr, sizeof(Totals), PROT_READ | PROT_WRITE,
                                             MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(totals != MAP_FAILED);
  new (totals) Totals{};
  constexpr int kProcesses = 4, kThreads = 3, kOperations = 6000;
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // Half the children open their own handle, half use the one inherited across fork.
      std::unique_ptr<Ledger> own;
      if (p % 2 == 0 && !Ledger::open(dir.path(), Options{}, &own).ok()) ::_exit(3);
      Ledger& l = p % 2 == 0 ? *own : *ledger;
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&, t] { worker(l, *totals, 1000u * static_cast<uint64_t>(p) + static_cast<uint64_t>(t), kOperations); });
      for (auto& th : threads) th.join();
      ::_exit(0);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
  }

  INFO("first failing worker check at line " << totals->error_line.load());
  REQUIRE(totals->errors == 0);
  Balance b[kN];
  for (int i = 0; i < kN; ++i) REQUIRE(ledger->balance(kAccounts[i], &b[i]) == Code::kOk);
  int64_t subtree_spent[kN] = {}, subtree_requests[kN] = {}, subtree_overrun[kN] = {};
  for (int i = 0; i < kN; ++i)
    for (int a = i; a >= 0; a = kParent[a]) {
      subtree_spent[a] += totals->spent[i];
      subtree_requests[a] += totals->requests[i];
      subtree_overrun[a] += totals->overrun[i];
    }
  for (int i = 0; i < kN; ++i) {
    INFO(kAccounts[i]);
    CHECK(b[i].held_nanousd == 0);
    CHECK(b[i].spent_nanousd == subtree_spent[i]);
    CHECK(static_cast<int64_t>(b[i].requests) == subtree_requests[i]);
    CHECK(b[i].spent_nanousd <= kLimit[i] + subtree_overrun[i]);
  }
  // A parent's spent is exactly its children's plus its own direct debits.
  CHECK(b[1].spent_nanousd == b[3].spent_nanousd + b[4].spent_nanousd + b[5].spent_nanousd + totals->spent[1]);
  CHECK(b[2].spent_nanousd == b[6].spent_nanousd + b[7].spent_nanousd + totals->spent[2]);
  CHECK(b[0].spent_nanousd == b[1].spent_nanousd + b[2].spent_nanousd + totals->spent[0]);
  // The budgets did bite (the test is about contention at the limit, not below it).
  CHECK(totals->denied > kProcesses * kThreads * kOperations / 10);
  CHECK(b[3].spent_nanousd > kLimit[3] - kUsd / 10);
  ::munmap(totals, sizeof(Totals));
}
