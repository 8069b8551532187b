// ledger-demo — a pool of batch-worker processes sharing per-user and team budgets.
//
// The reference for a worker's loop: estimate the worst case, authorize (policy + reserve on the
// whole chain), do the work, commit the actual cost. Here "the work" is simulated (the actual cost
// is 40-100% of the estimate); see README for the real OpenRouter loop.
//
//   ledger-demo [--dir DIR] [--workers N] [--seconds S]
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ledger/ledger.hpp"

using namespace ledger;

namespace {

struct User {
  const char* name;
  const char* model;
  const char* limit_usd;
};
constexpr User kUsers[] = {
    {"alice", "anthropic/claude-3.5-sonnet", "0.40"},
    {"bob", "openai/gpt-4o", "0.25"},
    {"carol", "openai/gpt-4o-mini", "0.05"},
    {"dave", "meta-llama/llama-3.1-8b-instruct", "0.02"},
};
constexpr int kUserCount = 4;
constexpr const char* kTeamLimitUsd = "0.60";

struct Shared {  // counters the workers publish for the progress line (MAP_SHARED)
  std::atomic<uint64_t> granted[kUserCount];
  std::atomic<uint64_t> denied[kUserCount];
  std::atomic<int64_t> committed_nanousd[kUserCount];
};

int64_t usd(const char* text) { return *parse_usd(text); }

[[noreturn]] void worker(Ledger& ledger, Shared& shared, unsigned seed, int seconds) {
  std::mt19937 rng(seed);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    const int u = static_cast<int>(rng() % kUserCount);
    const auto prompt_tokens = static_cast<uint32_t>(200 + rng() % 1800);
    const auto max_tokens = static_cast<uint32_t>(100 + rng() % 700);
    int64_t estimate = 0;
    if (!ledger.estimate(kUsers[u].model, prompt_tokens, max_tokens, &estimate).ok()) std::_Exit(2);
    std::string_view model;
    ReservationId id = 0;
    const Status s = ledger.authorize(kUsers[u].name, kUsers[u].model, estimate, 120, &model, &id);
    if (!s.ok()) {
      shared.denied[u] += 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      continue;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(500 + rng() % 1500));  // "the LLM call"
    const int64_t actual = estimate * (40 + static_cast<int64_t>(rng() % 61)) / 100;
    if (!ledger.commit(id, actual).ok()) std::_Exit(3);
    shared.granted[u] += 1;
    shared.committed_nanousd[u] += actual;
  }
  std::_Exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = (std::filesystem::temp_directory_path() / "ledger-demo").string();
  int workers = 6, seconds = 4;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--dir" && i + 1 < argc) dir = argv[++i];
    else if (arg == "--workers" && i + 1 < argc) workers = std::atoi(argv[++i]);
    else if (arg == "--seconds" && i + 1 < argc) seconds = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: ledger-demo [--dir DIR] [--workers 1-64] [--seconds 1-600]\n");
      return arg == "--help" ? 0 : 1;
    }
  }
  if (workers < 1 || workers > 64 || seconds < 1 || seconds > 600) {
    std::fprintf(stderr, "ledger-demo: --workers must be 1-64 and --seconds 1-600\n");
    return 1;
  }
  std::filesystem::create_directories(dir);
  (void)Ledger::destroy_segment(dir);  // a fresh ledger each run
  std::unique_ptr<Ledger> ledger;
  if (Status s = Ledger::open(dir, Options{}, &ledger); !s.ok()) {
    std::fprintf(stderr, "ledger-demo: cannot open a ledger in %s: %s\n", dir.c_str(), std::string(s.message()).c_str());
    return 2;
  }
  // Prices in nano-USD per million tokens (prompt, completion), as OpenRouter lists them.
  (void)ledger->set_price("anthropic/claude-3.5-sonnet", usd("3"), usd("15"), 0);
  (void)ledger->set_price("openai/gpt-4o", usd("2.5"), usd("10"), 0);
  (void)ledger->set_price("openai/gpt-4o-mini", usd("0.15"), usd("0.60"), 0);
  (void)ledger->set_price("meta-llama/llama-3.1-8b-instruct", usd("0.02"), usd("0.05"), 0);
  if (!ledger->set_budget("eng", usd(kTeamLimitUsd), Period::kDaily, "").ok()) return 2;
  for (const User& u : kUsers)
    if (!ledger->set_budget(u.name, usd(u.limit_usd), Period::kDaily, "eng").ok()) return 2;

  std::printf("ledger-demo: %d worker processes, %d s, team 'eng' $%s/day over 4 users (ledger in %s)\n",
              workers, seconds, kTeamLimitUsd, dir.c_str());
  auto* shared = static_cast<Shared*>(::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (shared) Shared{};
  std::vector<pid_t> pids;
  for (int w = 0; w < workers; ++w) {
    const pid_t pid = ::fork();
    if (pid == 0) worker(*ledger, *shared, static_cast<unsigned>(w + 1), seconds);
    pids.push_back(pid);
  }
  const auto start = std::chrono::steady_clock::now();
  for (int tick = 0;; ++tick) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    Balance team;
    (void)ledger->balance("eng", &team);
    uint64_t granted = 0, denied = 0;
    for (int u = 0; u < kUserCount; ++u) {
      granted += shared->granted[u];
      denied += shared->denied[u];
    }
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("  %4.1fs  requests granted %6llu  denied %7llu  team spent $%s of $%s (held $%s)\n", elapsed,
                static_cast<unsigned long long>(granted), static_cast<unsigned long long>(denied),
                format_usd(team.spent_nanousd).c_str(), kTeamLimitUsd, format_usd(team.held_nanousd).c_str());
    std::fflush(stdout);
    if (elapsed >= seconds) break;
  }
  int failed = 0;
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
  }
  uint32_t reclaimed = 0;
  (void)ledger->reclaim(&reclaimed);

  std::printf("\n%-6s %-34s %10s %12s %10s %9s %8s\n", "user", "model", "limit", "spent", "available", "granted", "denied");
  int64_t sum = 0;
  bool ok = failed == 0;
  for (int u = 0; u < kUserCount; ++u) {
    Balance b;
    (void)ledger->balance(kUsers[u].name, &b);
    sum += b.spent_nanousd;
    ok = ok && b.spent_nanousd == shared->committed_nanousd[u] && b.spent_nanousd <= b.limit_nanousd;
    std::printf("%-6s %-34s %10s %12s %10s %9llu %8llu\n", kUsers[u].name, kUsers[u].model,
                format_usd(b.limit_nanousd).c_str(), format_usd(b.spent_nanousd).c_str(),
                format_usd(b.available_nanousd).c_str(), static_cast<unsigned long long>(b.requests),
                static_cast<unsigned long long>(shared->denied[u].load()));
  }
  Balance team;
  (void)ledger->balance("eng", &team);
  ok = ok && team.spent_nanousd == sum && team.spent_nanousd <= team.limit_nanousd && team.held_nanousd == 0;
  std::printf("%-6s %-34s %10s %12s %10s\n", "eng", "(team)", format_usd(team.limit_nanousd).c_str(),
              format_usd(team.spent_nanousd).c_str(), format_usd(team.available_nanousd).c_str());
  std::printf("\nchecks: every user within its limit, team within its limit, team spent == sum of users, "
              "ledger == what workers committed: %s\n", ok ? "OK" : "FAILED");
  (void)Ledger::destroy_segment(dir);
  return ok ? 0 : 2;
}
