// ledger-demo — a pool of batch-worker processes sharing per-user and team budgets.
//
// The reference for a worker's loop: estimate the worst case, authorize (policy + reserve on the
// whole chain), call the model, commit the actual cost the provider reports (usage.cost).
// With --base-url the call is a real HTTP request to OpenRouter's chat-completions endpoint (or the
// openrouter-emulator), on a shared key named by LEDGER_DEMO_API_KEY (never on the command line),
// with the attribution headers that name the user. Without it the call is simulated.
//
//   ledger-demo [--dir DIR] [--workers N] [--seconds S] [--base-url URL] [--keep]
#include <signal.h>
#include <sys/mman.h>
#include <curl/curl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ledger/ledger.hpp"
#include "openrouter/attribution.hpp"

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
  std::atomic<uint64_t> above_hold;  // commits whose cost exceeded the estimate they held
};

int64_t usd(const char* text) { return *parse_usd(text); }

size_t collect(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

// One chat completion through the API; returns the cost OpenRouter reports (usage.cost), or -1.
int64_t call_model(CURL* curl, const std::string& base_url, const std::string& api_key, const char* user,
                   std::string_view model, uint32_t max_tokens, const std::string& prompt) {
  const openrouter::Attribution who = openrouter::attribution_for("https://ledger-demo.example", "ledger-demo", user);
  const std::string body = boost::json::serialize(boost::json::object{
      {"model", std::string(model)}, {"max_tokens", max_tokens}, {"user", who.user},
      {"messages", boost::json::array{boost::json::object{{"role", "user"}, {"content", prompt}}}}});
  curl_slist* headers = curl_slist_append(nullptr, ("Authorization: Bearer " + api_key).c_str());
  headers = curl_slist_append(headers, "Content-Type: application/json");
  for (const auto& h : who.headers()) headers = curl_slist_append(headers, h.c_str());
  std::string response;
  const std::string url = base_url + "/chat/completions";
  curl_easy_reset(curl);
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response);
  const CURLcode rc = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(headers);
  if (rc != CURLE_OK || status != 200) return -1;
  std::error_code ec;
  const boost::json::value v = boost::json::parse(response, ec);
  if (ec || !v.is_object()) return -1;
  const auto* usage = v.get_object().if_contains("usage");
  const auto* cost = usage != nullptr && usage->is_object() ? usage->get_object().if_contains("cost") : nullptr;
  if (cost == nullptr || !(cost->is_double() || cost->is_int64())) return -1;
  const auto nanos = usd_double_to_nanousd(cost->is_double() ? cost->get_double() : static_cast<double>(cost->get_int64()));
  return nanos ? *nanos : -1;
}

[[noreturn]] void worker(Ledger& ledger, Shared& shared, unsigned seed, int seconds, const std::string& base_url,
                         const std::string& api_key) {
  std::mt19937 rng(seed);
  CURL* curl = base_url.empty() ? nullptr : curl_easy_init();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    const int u = static_cast<int>(rng() % kUserCount);
    std::string prompt;
    for (auto words = static_cast<uint32_t>(200 + rng() % 1800); words > 0; --words) prompt += "word ";
    // Count the prompt's tokens the way the model will (here: about 4 characters per token, rounded
    // up, as the emulator counts; a real worker uses its model's tokenizer). An estimate below the
    // real cost still works, the commit charges the excess, but then the hold no longer stops the
    // request that crosses the limit.
    const auto prompt_tokens = static_cast<uint32_t>(prompt.size() / 4 + 1);
    const auto max_tokens = static_cast<uint32_t>(100 + rng() % 700);
    int64_t estimate = 0;
    if (!ledger.estimate(kUsers[u].model, prompt_tokens, max_tokens, &estimate).ok()) std::_Exit(2);
    std::string_view model;
    ReservationId id = 0;
    const Status s = ledger.authorize(kUsers[u].name, kUsers[u].model, estimate, 120, &model, &id);
    if (s.code() == Code::kUnknownModel) {  // a configuration error, not a denial: say which name has no price
      std::fprintf(stderr, "worker: no price for \"%.*s\" (what %s's request for %s would use): add it under \"prices\"\n",
                   static_cast<int>(model.size()), model.data(), kUsers[u].name, kUsers[u].model);
      std::_Exit(4);
    }
    if (!s.ok()) {
      shared.denied[u] += 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      continue;
    }
    int64_t actual;
    if (curl != nullptr) {
      actual = call_model(curl, base_url, api_key, kUsers[u].name, model, max_tokens, prompt);
      if (actual < 0) {  // the call failed: nothing was billed, give the hold back
        (void)ledger.release(id);
        continue;
      }
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(500 + rng() % 1500));  // "the LLM call"
      actual = estimate * (40 + static_cast<int64_t>(rng() % 61)) / 100;
    }
    if (actual > estimate) shared.above_hold += 1;
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
  std::string base_url;
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--dir" && i + 1 < argc) dir = argv[++i];
    else if (arg == "--base-url" && i + 1 < argc) base_url = argv[++i];
    else if (arg == "--keep") keep = true;
    else if (arg == "--workers" && i + 1 < argc) workers = std::atoi(argv[++i]);
    else if (arg == "--seconds" && i + 1 < argc) seconds = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: ledger-demo [--dir DIR] [--workers 1-64] [--seconds 1-600] [--base-url URL] [--keep]\n"
                           "  --base-url: call this OpenRouter API (or openrouter-emulator) with the key in $LEDGER_DEMO_API_KEY\n"
                           "  --keep: keep the ledger (and its segment) for the sidecar, reports and ledgerctl\n");
      return arg == "--help" ? 0 : 1;
    }
  }
  if (workers < 1 || workers > 64 || seconds < 1 || seconds > 600) {
    std::fprintf(stderr, "ledger-demo: --workers must be 1-64 and --seconds 1-600\n");
    return 1;
  }
  const char* key_env = std::getenv("LEDGER_DEMO_API_KEY");
  const std::string api_key = key_env != nullptr ? key_env : "";
  if (!base_url.empty() && api_key.empty()) {
    std::fprintf(stderr, "ledger-demo: --base-url needs an API key in $LEDGER_DEMO_API_KEY\n");
    return 1;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  std::filesystem::create_directories(dir);
  if (!keep) (void)Ledger::destroy_segment(dir);  // a fresh ledger each run
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
  std::printf("ledger-demo: model calls %s\n", base_url.empty() ? "simulated" : ("to " + base_url).c_str());
  auto* shared = static_cast<Shared*>(::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (shared) Shared{};
  std::vector<pid_t> pids;
  for (int w = 0; w < workers; ++w) {
    const pid_t pid = ::fork();
    if (pid == 0) worker(*ledger, *shared, static_cast<unsigned>(w + 1), seconds, base_url, api_key);
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
  std::vector<std::string> problems;  // what exactly failed, for the "checks" line
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ++failed;
      problems.push_back("worker " + std::to_string(pid) +
                         (WIFEXITED(status) ? " exited with " + std::to_string(WEXITSTATUS(status)) +
                                                  (WEXITSTATUS(status) == 2 ? " (estimate failed)" : WEXITSTATUS(status) == 3 ? " (commit failed)" : "")
                                            : " was killed by signal " + std::to_string(WTERMSIG(status))));
    }
  }
  uint32_t reclaimed = 0;
  (void)ledger->reclaim(&reclaimed);

  std::printf("\n%-6s %-34s %10s %12s %10s %9s %8s\n", "user", "model", "limit", "spent", "available", "granted", "denied");
  int64_t sum = 0;
  bool ok = true;
  // Every request went through authorize, so each user's spend is all on the models it was given.
  std::vector<ModelSpend> tallies;
  (void)ledger->model_spend(&tallies);
  std::map<std::string, int64_t> on_models;
  for (const auto& t : tallies) on_models[t.account] += t.spent_nanousd;
  for (int u = 0; u < kUserCount; ++u) {
    Balance b;
    (void)ledger->balance(kUsers[u].name, &b);
    sum += b.spent_nanousd;
    const std::string who = kUsers[u].name;
    if (b.spent_nanousd != shared->committed_nanousd[u])
      problems.push_back(who + ": ledger " + format_usd(b.spent_nanousd) + " != committed " + format_usd(shared->committed_nanousd[u]));
    if (b.spent_nanousd > b.limit_nanousd) problems.push_back(who + ": over its limit");
    if (on_models[who] != b.spent_nanousd)
      problems.push_back(who + ": per-model " + format_usd(on_models[who]) + " != ledger " + format_usd(b.spent_nanousd));
    std::printf("%-6s %-34s %10s %12s %10s %9llu %8llu\n", kUsers[u].name, kUsers[u].model,
                format_usd(b.limit_nanousd).c_str(), format_usd(b.spent_nanousd).c_str(),
                format_usd(b.available_nanousd).c_str(), static_cast<unsigned long long>(b.requests),
                static_cast<unsigned long long>(shared->denied[u].load()));
  }
  Balance team;
  (void)ledger->balance("eng", &team);
  if (team.spent_nanousd != sum) problems.push_back("eng: team " + format_usd(team.spent_nanousd) + " != sum of users " + format_usd(sum));
  if (team.spent_nanousd > team.limit_nanousd) problems.push_back("eng: over its limit");
  if (team.held_nanousd != 0) problems.push_back("eng: " + format_usd(team.held_nanousd) + " still held");
  ok = problems.empty();
  std::printf("%-6s %-34s %10s %12s %10s\n", "eng", "(team)", format_usd(team.limit_nanousd).c_str(),
              format_usd(team.spent_nanousd).c_str(), format_usd(team.available_nanousd).c_str());
  std::printf("\nchecks: every user within its limit, team within its limit, team spent == sum of users, "
              "ledger == what workers committed == per-model spend: %s\n", ok ? "OK" : "FAILED");
  for (const auto& p : problems) std::printf("  check failed: %s\n", p.c_str());
  std::printf("commits that cost more than their hold: %llu (charged in full; the estimate was low)\n",
              static_cast<unsigned long long>(shared->above_hold.load()));
  // What the workers were told was committed, summed over users, for a script to compare with a
  // store (demo.sh --hosts adds every host's line and checks the global store's spend against it).
  int64_t committed = 0;
  uint64_t granted = 0;
  for (int u = 0; u < kUserCount; ++u) {
    committed += shared->committed_nanousd[u];
    granted += shared->granted[u];
  }
  std::printf("ledger-demo: workers committed %lld nano-USD ($%s) in %llu requests\n", static_cast<long long>(committed),
              format_usd(committed).c_str(), static_cast<unsigned long long>(granted));
  if (!keep) (void)Ledger::destroy_segment(dir);
  return ok ? 0 : 2;
}
