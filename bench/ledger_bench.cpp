// ledger_bench — libledger's hot path against the physical floor, measured in the same run.
//
// Each benchmark reports Google Benchmark's mean time per operation plus, from a separate pass of
// timed batches of kBatch operations (rdtscp, timer overhead subtracted, divided by kBatch: the TSC
// of a VM may tick in ~10 ns steps), the median and p99 per operation in ns and the median's ratio
// to the floor: a bare 64-bit compare-and-swap check-and-add on a word in a
// MAP_SHARED mapping (what "a CAS on one word per account" costs without any bookkeeping).
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "ledger/ledger.hpp"

using namespace ledger;

namespace {

using bench::report;
using bench::sample;

struct Fixture {
  std::string dir;
  std::unique_ptr<Ledger> ledger;
  explicit Fixture(uint32_t accounts = 1024) {
    dir = (std::filesystem::temp_directory_path() / ("ledger-bench-" + std::to_string(::getpid()) + "-" + std::to_string(accounts))).string();
    std::filesystem::create_directories(dir);
    Options options;
    options.limits.max_accounts = std::max<uint32_t>(accounts, 16);
    if (!Ledger::open(dir, options, &ledger).ok()) std::abort();
    (void)ledger->set_budget("org", kAmountNanoUsdMax, Period::kMonthly, "");
    (void)ledger->set_budget("team", kAmountNanoUsdMax, Period::kMonthly, "org");
    (void)ledger->set_budget("user", kAmountNanoUsdMax, Period::kDaily, "team");
    (void)ledger->set_budget("flat", kAmountNanoUsdMax, Period::kDaily, "");
    // Global mode: the same account shape, admitting against this host's lease (today and tomorrow,
    // so that a run across midnight still measures admission, not denials).
    (void)ledger->set_budget("global-flat", kAmountNanoUsdMax, Period::kDaily, "");
    (void)ledger->set_scope("global-flat", true);
    const int64_t today = period_index(Period::kDaily, ledger->now_ms() / 1000);
    for (int64_t day = today; day <= today + 1; ++day)
      (void)ledger->set_lease("global-flat", day, kAmountNanoUsdMax, Ledger::monotonic_ms() + 86'400'000);
    (void)ledger->set_price("openai/gpt-4o-mini", 150'000'000, 600'000'000, 0);
    (void)ledger->set_price("openai/gpt-4o", 2'500'000'000, 10'000'000'000, 0);
    std::vector<TierSpec> tiers(1);
    tiers[0].name = "pro";
    tiers[0].models = {"openai/gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-3.5-sonnet"};
    tiers[0].downgrade_at_percent = 90;
    tiers[0].downgrade_to = "openai/gpt-4o-mini";
    (void)ledger->set_tiers(tiers);
    (void)ledger->set_budget("tiered", kAmountNanoUsdMax, Period::kDaily, "");
    (void)ledger->set_account_tier("tiered", "pro");
    for (uint32_t i = 4; i < accounts; ++i)
      (void)ledger->set_budget("acct-" + std::to_string(i), kAmountNanoUsdMax, Period::kDaily, "");
  }
  ~Fixture() {
    ledger.reset();
    (void)Ledger::destroy_segment(dir);
    std::filesystem::remove_all(dir);
  }
};

BENCHMARK(bench::BM_CasFloor);

void BM_DebitFlatByHandle(benchmark::State& state) {
  Fixture f;
  AccountRef ref;
  (void)f.ledger->find("flat", &ref);
  for (auto _ : state) benchmark::DoNotOptimize(f.ledger->debit(ref, 1));
  report(state, sample([&] { benchmark::DoNotOptimize(f.ledger->debit(ref, 1)); }));
}
BENCHMARK(BM_DebitFlatByHandle);

// The same debit on a global account (DESIGN 11): the hot path must not notice the store.
void BM_DebitFlatGlobalByHandle(benchmark::State& state) {
  Fixture f;
  AccountRef ref;
  (void)f.ledger->find("global-flat", &ref);
  if (!f.ledger->debit(ref, 1).ok()) std::abort();  // admitted against the lease, not denied
  for (auto _ : state) benchmark::DoNotOptimize(f.ledger->debit(ref, 1));
  report(state, sample([&] { benchmark::DoNotOptimize(f.ledger->debit(ref, 1)); }));
}
BENCHMARK(BM_DebitFlatGlobalByHandle);

void BM_DebitFlatByName(benchmark::State& state) {
  Fixture f;
  for (auto _ : state) benchmark::DoNotOptimize(f.ledger->debit("flat", 1));
  report(state, sample([&] { benchmark::DoNotOptimize(f.ledger->debit("flat", 1)); }));
}
BENCHMARK(BM_DebitFlatByName);

void BM_DebitChain3ByHandle(benchmark::State& state) {
  Fixture f;
  AccountRef ref;
  (void)f.ledger->find("user", &ref);
  for (auto _ : state) benchmark::DoNotOptimize(f.ledger->debit(ref, 1));
  report(state, sample([&] { benchmark::DoNotOptimize(f.ledger->debit(ref, 1)); }));
}
BENCHMARK(BM_DebitChain3ByHandle);

// A hold and its settlement: reserve (or authorize, when a model is given) then commit.
void BM_HoldAndCommit(benchmark::State& state, const char* account, const char* model, bool by_handle) {
  Fixture f;
  AccountRef ref;
  (void)f.ledger->find(account, &ref);
  auto pair = [&] {
    ReservationId id = 0;
    std::string_view chosen;
    if (model != nullptr) (void)f.ledger->authorize(account, model, 450'000, 60, &chosen, &id);
    else if (by_handle) (void)f.ledger->reserve(ref, 450'000, 60, &id);
    else (void)f.ledger->reserve(account, 450'000, 60, &id);
    benchmark::DoNotOptimize(f.ledger->commit(id, 400'000));
  };
  for (auto _ : state) pair();
  report(state, sample(pair));
}
BENCHMARK_CAPTURE(BM_HoldAndCommit, ReserveCommitFlat, "flat", nullptr, true);
BENCHMARK_CAPTURE(BM_HoldAndCommit, ReserveCommitChain3, "user", nullptr, true);
BENCHMARK_CAPTURE(BM_HoldAndCommit, AuthorizeCommitChain3, "user", "openai/gpt-4o-mini", false);
// authorize = policy (tier allowlist, pressure rule, price) + reserve, against reserve alone.
BENCHMARK_CAPTURE(BM_HoldAndCommit, AuthorizeCommitFlatTiered, "tiered", "openai/gpt-4o", false);
BENCHMARK_CAPTURE(BM_HoldAndCommit, ReserveCommitFlatByName, "tiered", nullptr, false);

// Rate limits (DESIGN 13): authorize + commit on a 3-level chain whose every level has an rpm, tpm
// and max_concurrent limit, against the same chain without them, in one ledger. Its clock advances
// 1 ms every 10 reads (a minute is 600,000 reads, fewer admissions than the largest rpm), so the
// limits count on every admission without ever denying; both variants read that same clock.
struct RatedFixture {
  std::string dir;
  std::unique_ptr<Ledger> ledger;
  static int64_t counting_clock(void*) {
    thread_local int64_t reads = 0;
    return 1'796'000'000'000 + ++reads / 10;
  }
  RatedFixture() {
    dir = (std::filesystem::temp_directory_path() / ("ledger-bench-rated-" + std::to_string(::getpid()))).string();
    std::filesystem::create_directories(dir);
    Options options;
    options.limits.max_accounts = 64;
    options.clock = Clock{&RatedFixture::counting_clock, nullptr};
    if (!Ledger::open(dir, options, &ledger).ok()) std::abort();
    (void)ledger->set_price("openai/gpt-4o-mini", 150'000'000, 600'000'000, 0);
    RulesSpec rated;
    rated.rpm = kRpmMax;
    rated.tpm = kTpmMax;
    rated.max_concurrent = kMaxConcurrentMax;
    for (const char* prefix : {"plain", "rated", "user-rated"}) {
      const std::string p(prefix);
      (void)ledger->set_budget(p + "-org", kAmountNanoUsdMax, Period::kMonthly, "");
      (void)ledger->set_budget(p + "-team", kAmountNanoUsdMax, Period::kMonthly, p + "-org");
      (void)ledger->set_budget(p + "-user", kAmountNanoUsdMax, Period::kDaily, p + "-team");
      for (const char* level : {"-org", "-team", "-user"})  // every level, or the user only
        if ((p == "rated" || (p == "user-rated" && std::string(level) == "-user")) && !ledger->set_rules(p + level, rated).ok())
          std::abort();
    }
  }
  ~RatedFixture() {
    ledger.reset();
    (void)Ledger::destroy_segment(dir);
    std::filesystem::remove_all(dir);
  }
};

void BM_AuthorizeCommitRates(benchmark::State& state, const char* account) {
  RatedFixture f;
  auto pair = [&] {
    ReservationId id = 0;
    std::string_view chosen;
    if (!f.ledger->authorize(account, "openai/gpt-4o-mini", 450'000, 60, &chosen, &id).ok()) std::abort();  // never denied
    benchmark::DoNotOptimize(f.ledger->commit(id, 400'000));
  };
  for (auto _ : state) pair();
  report(state, sample(pair));
}
BENCHMARK_CAPTURE(BM_AuthorizeCommitRates, Chain3NoRateLimits, "plain-user");
BENCHMARK_CAPTURE(BM_AuthorizeCommitRates, Chain3RpmTpmConcurrency, "rated-user");
BENCHMARK_CAPTURE(BM_AuthorizeCommitRates, Chain3RatesOnUserOnly, "user-rated-user");

// Flat cost: debit by name of one hot account in a ledger of N accounts (the lookup and the segment
// size must not matter), N = 1k .. 1M.
void BM_DebitHotAmong(benchmark::State& state) {
  const auto accounts = static_cast<uint32_t>(state.range(0));
  Fixture f(accounts);
  const std::string name = "acct-" + std::to_string(accounts / 2);
  for (auto _ : state) benchmark::DoNotOptimize(f.ledger->debit(name, 1));
  report(state, sample([&] { benchmark::DoNotOptimize(f.ledger->debit(name, 1)); }));
  state.counters["segment_bytes_per_account"] = static_cast<double>(sizeof(uint32_t) * 2 + 128);
}
BENCHMARK(BM_DebitHotAmong)->Arg(1000)->Arg(100000)->Arg(1000000);

// Memory-bound view: each debit on a uniformly random one of N accounts (by handle), so at 1M
// accounts (128 MB of records) nearly every operation misses the caches and the TLB.
void BM_DebitRandomAmong(benchmark::State& state) {
  const auto accounts = static_cast<uint32_t>(state.range(0));
  Fixture f(accounts);
  std::vector<AccountRef> refs(accounts - 4);
  for (uint32_t i = 4; i < accounts; ++i) (void)f.ledger->find("acct-" + std::to_string(i), &refs[i - 4]);
  uint64_t x = 88172645463325252ULL;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return refs[x % refs.size()];
  };
  for (auto _ : state) benchmark::DoNotOptimize(f.ledger->debit(next(), 1));
  report(state, sample([&] { benchmark::DoNotOptimize(f.ledger->debit(next(), 1)); }));
}
BENCHMARK(BM_DebitRandomAmong)->Arg(1000)->Arg(100000)->Arg(1000000);

// Flush throughput: every account changed since the last flush, then one flush (a synced LMDB
// transaction: one period snapshot, one day bucket and one journal entry per account).
void BM_FlushChangedAccounts(benchmark::State& state) {
  const auto accounts = static_cast<uint32_t>(state.range(0));
  Fixture f(accounts + 8);
  std::vector<AccountRef> refs(accounts);
  for (uint32_t i = 0; i < accounts; ++i) (void)f.ledger->find("acct-" + std::to_string(i + 4), &refs[i]);
  (void)f.ledger->flush();
  for (auto _ : state) {
    state.PauseTiming();
    for (const auto& r : refs) (void)f.ledger->debit(r, 1);
    state.ResumeTiming();
    if (!f.ledger->flush().ok()) state.SkipWithError("flush failed");
  }
  state.counters["records_per_s"] =
      benchmark::Counter(static_cast<double>(accounts) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_FlushChangedAccounts)->Arg(1000)->Arg(100000)->Unit(benchmark::kMillisecond)->UseRealTime();  // fsync is real time

}  // namespace

int main(int argc, char** argv) {
  bench::calibrate();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
