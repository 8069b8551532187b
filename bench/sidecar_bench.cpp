// sidecar_bench — the sidecar's heavy jobs, timed (Google Benchmark; DESIGN 9: "reconcile 10,000
// keys (paginated) in <= 2 s against the emulator"):
//
//   BM_Reconcile/10000   ledger::admin::reconcile of 10,000 keys, each bound to its own account,
//                        against openrouter-emulator on loopback (the key list in pages of 100)
//   BM_TeamReport/2000   build_report: the 7-day team report over a 90-day history of 2,000
//                        accounts using two models each, read from the store
//
// Each benchmark builds its world once, outside the timing (creating the keys, writing the
// history), in a temp dir removed afterwards.
//
//   sidecar_bench [--emulator PATH] [Google Benchmark flags]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "core/admin.hpp"
#include "core/config.hpp"
#include "emulator_binary.hpp"
#include "ledger/ledger.hpp"
#include "openrouter/client.hpp"
#include "openrouter/reconcile.hpp"
#include "reports/reports.hpp"

namespace {

using namespace ledger;

constexpr int64_t kUsd = 1'000'000'000;
std::string g_emulator_path = EMULATOR_PATH;

// A directory for one benchmark's config and ledger; the segment and the directory go at the end.
class Workdir {
 public:
  Workdir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "ledger-bench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~Workdir() {
    (void)Ledger::destroy_segment(path_ + "/ledger");
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  std::string config() const { return path_ + "/ledger.json"; }

 private:
  std::string path_;
};

bool write_text(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  return std::fclose(f) == 0 && ok;
}

// Loads the config at `path` and opens (creating) its ledger with the config applied, as
// `ledgerctl init` does. False (with the benchmark skipped) on any failure.
bool open_configured(benchmark::State& state, const std::string& path, admin::Config* config,
                     std::unique_ptr<Ledger>* ledger, const Options* options = nullptr) {
  std::string error;
  const auto loaded = admin::load_config(path, &error);
  if (!loaded) {
    state.SkipWithError(("config: " + error).c_str());
    return false;
  }
  *config = *loaded;
  const Options o = options != nullptr ? *options : admin::options_for(*config);
  if (!Ledger::open(config->ledger.dir, o, ledger).ok() || !admin::apply_config(**ledger, *config).errors.empty()) {
    state.SkipWithError("cannot open the ledger or apply the config");
    return false;
  }
  return true;
}

void BM_Reconcile(benchmark::State& state) {
  const int keys = static_cast<int>(state.range(0));
  ledger_support::EmulatorBinary emulator;
  std::string error;
  if (!emulator.start(g_emulator_path, &error)) return state.SkipWithError(error.c_str());
  openrouter::ClientOptions client_options;
  client_options.base_url = emulator.base();
  client_options.api_key = emulator.key();
  client_options.key_source = "$OPENROUTER_MGMT_KEY";
  openrouter::Client client(client_options);
  std::string accounts = R"([{"id": "org", "limit_usd": "1000000", "period": "monthly"})";
  for (int i = 0; i < keys; ++i) {
    openrouter::KeyInfo k;
    std::string secret;
    if (client.create_key("u" + std::to_string(i), std::nullopt, "", &k, &secret))
      return state.SkipWithError("the emulator refused a key");
    accounts += R"(, {"id": "u)" + std::to_string(i) + R"(", "parent": "org", "limit_usd": "10", "period": "daily", "key_hash": ")" +
                k.hash + R"("})";
  }
  Workdir dir;
  const std::string openrouter = R"({"base_url": ")" + emulator.base() + R"(", "management_key_file": ")" + emulator.key_file() + R"("})";
  write_text(dir.config(), R"({"ledger": {"dir": "ledger", "max_accounts": 16384, "max_reservations": 1024}, "openrouter": )" +
                               openrouter + R"(, "accounts": )" + accounts + "]}");
  admin::Config config;
  std::unique_ptr<Ledger> l;
  if (!open_configured(state, dir.config(), &config, &l)) return;
  size_t rows = 0;
  for (auto _ : state) {
    const auto report = admin::reconcile(*l, client, config, false);
    if (!report.error.empty()) return state.SkipWithError(report.error.c_str());
    rows = report.rows.size();
  }
  state.counters["keys"] = static_cast<double>(rows);
}
BENCHMARK(BM_Reconcile)->Arg(10000)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

// A clock the history is written with.
struct HistoryClock {
  int64_t now_ms = 0;
  static int64_t read(void* self) { return static_cast<HistoryClock*>(self)->now_ms; }
};

void BM_TeamReport(benchmark::State& state) {
  const int account_count = static_cast<int>(state.range(0));
  constexpr int kDays = 90;
  constexpr const char* kModels[] = {"openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet"};
  Workdir dir;
  write_text(dir.config(), R"({"ledger": {"dir": "ledger", "max_accounts": 4096}, "accounts": []})");
  HistoryClock clock;
  Options options;
  options.clock = Clock{&HistoryClock::read, &clock};
  options.limits.max_accounts = 4096;
  admin::Config config;
  std::unique_ptr<Ledger> l;
  if (!open_configured(state, dir.config(), &config, &l, &options)) return;
  bool ok = l->set_budget("team", 1'000'000 * kUsd, Period::kMonthly, "").ok();
  for (int a = 0; a < account_count; ++a)
    ok = ok && l->set_budget("user-" + std::to_string(a), 1000 * kUsd, Period::kDaily, "team").ok();
  for (const char* m : kModels) ok = ok && l->set_price(m, kUsd, kUsd, 0).ok();
  const int64_t day0 = days_from_civil({2026, 8, 1});
  for (int d = 0; ok && d < kDays; ++d) {
    clock.now_ms = (day0 + d) * 86'400'000 + 3'600'000;
    for (int a = 0; a < account_count; ++a)
      for (const char* m : kModels) {
        std::string_view chosen;
        ReservationId id = 0;
        ok = ok && l->authorize("user-" + std::to_string(a), m, 100, 60, &chosen, &id).ok() && l->commit(id, 50).ok();
      }
    ok = ok && l->flush().ok();
  }
  if (!ok) return state.SkipWithError("writing the history failed");
  size_t rows = 0;
  for (auto _ : state) {
    admin::Report r;
    if (!admin::build_report(config, day0 + kDays - 7, day0 + kDays - 1, (day0 + kDays - 1) * 86400 + 7200, &r).ok())
      return state.SkipWithError("build_report failed");
    rows = r.rows.size();
  }
  state.counters["rows"] = static_cast<double>(rows);
}
BENCHMARK(BM_TeamReport)->Arg(2000)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--emulator") g_emulator_path = argv[i + 1];
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
