// The sidecar's Prometheus endpoint, scraped over loopback and parsed: the standard text format,
// and values that match the ledger.
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "process.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;

namespace {

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string scrape(int port, long* status) {
  CURL* curl = curl_easy_init();
  std::string body;
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/metrics";
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 2000L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, +[](char* d, size_t s, size_t n, void* u) {
    static_cast<std::string*>(u)->append(d, s * n);
    return s * n;
  });
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  *status = curl_easy_perform(curl) == CURLE_OK ? 0 : -1;
  if (*status == 0) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
  curl_easy_cleanup(curl);
  return body;
}

}  // namespace

TEST_CASE("metrics are Prometheus text whose values match the ledger", "[metrics][sidecar]") {
  ledger_test::TempDir dir;
  const int port = free_port();
  const std::string config = dir.path() + "/ledger.json";
  ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "max_accounts": 64, "max_reservations": 64, "max_processes": 16, "flush_interval_ms": 100},
    "accounts": [{"id": "team", "limit_usd": "10", "period": "monthly"},
                 {"id": "alice", "parent": "team", "limit_usd": "2", "period": "daily"}],
    "metrics": {"listen": "127.0.0.1:)" + std::to_string(port) + R"("}})");
  REQUIRE(ledger_test::run({LEDGERCTL_PATH, "--config", config, "init"}).exit_code == 0);
  struct Cleanup {
    std::string dir;
    ~Cleanup() { (void)Ledger::destroy_segment(dir); }
  } cleanup{dir.path() + "/ledger"};
  // What the metrics must show is computed here, from the operations this test makes, never read
  // back from the ledger (which would agree with the sidecar on any error they share).
  constexpr int64_t kDebit = kUsd + kUsd / 4, kCommit = kUsd / 20, kHold = kUsd / 2;
  constexpr int64_t kAliceSpent = kDebit + 2 * kCommit, kAliceLimit = 2 * kUsd, kTeamLimit = 10 * kUsd;
  std::unique_ptr<Ledger> l;
  REQUIRE(Ledger::open(dir.path() + "/ledger", Options{}, &l) == Code::kOk);
  REQUIRE(l->debit("alice", kDebit) == Code::kOk);
  ReservationId id = 0;
  REQUIRE(l->set_price("openai/gpt-4o-mini", kUsd, kUsd, 0) == Code::kOk);
  for (int i = 0; i < 2; ++i) {  // two authorized requests: tallied per model
    std::string_view chosen;
    REQUIRE(l->authorize("alice", "openai/gpt-4o-mini", kUsd / 10, 60, &chosen, &id) == Code::kOk);
    REQUIRE(l->commit(id, kCommit) == Code::kOk);
  }
  REQUIRE(l->reserve("alice", kHold, 60, &id) == Code::kOk);
  CHECK(l->debit("alice", kUsd) == Code::kDeniedOverBudget);
  REQUIRE(l->block("team", true) == Code::kOk);
  CHECK(l->debit("alice", 1) == Code::kDeniedBlocked);
  REQUIRE(l->block("team", false) == Code::kOk);

  const pid_t sidecar = ledger_test::spawn({SIDECAR_PATH, "--config", config}, -1, -1);
  std::string text;
  long status = -1;
  for (int i = 0; i < 300; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    text = scrape(port, &status);
    if (status == 200 && text.find("ledger_flushes_total") != std::string::npos && text.find("ledger_flushes_total 0") == std::string::npos) break;
  }
  ::kill(sidecar, SIGTERM);
  ::waitpid(sidecar, nullptr, 0);
  REQUIRE(status == 200);
  // Parse every sample line: name{labels} value, with HELP and TYPE before each family.
  const std::regex line_re(R"(^([a-z_]+)(\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})? (-?[0-9]+)$)");
  std::map<std::string, int64_t> values;
  std::set<std::string> typed;
  size_t at = 0;
  while (at < text.size()) {
    const size_t end = text.find('\n', at);
    const std::string line = text.substr(at, end - at);
    at = end == std::string::npos ? text.size() : end + 1;
    if (line.rfind("# TYPE ", 0) == 0) {
      typed.insert(line.substr(7, line.find(' ', 7) - 7));
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0 || line.empty()) continue;
    std::smatch m;
    INFO(line);
    REQUIRE(std::regex_match(line, m, line_re));
    CHECK(typed.count(m[1]) == 1);  // its TYPE came first
    values[m[1].str() + m[2].str()] = std::stoll(m[3]);
  }
  CHECK(values.at("ledger_account_spent_nanousd{account=\"alice\"}") == kAliceSpent);
  CHECK(values.at("ledger_account_held_nanousd{account=\"alice\"}") == kHold);
  CHECK(values.at("ledger_account_limit_nanousd{account=\"alice\"}") == kAliceLimit);
  CHECK(values.at("ledger_account_available_nanousd{account=\"alice\"}") == kAliceLimit - kAliceSpent - kHold);
  CHECK(values.at("ledger_account_requests{account=\"alice\"}") == 3);  // the debit and two commits
  CHECK(values.at("ledger_account_spent_nanousd{account=\"team\"}") == kAliceSpent);
  CHECK(values.at("ledger_account_held_nanousd{account=\"team\"}") == kHold);
  CHECK(values.at("ledger_account_available_nanousd{account=\"team\"}") == kTeamLimit - kAliceSpent - kHold);
  CHECK(values.at("ledger_model_spent_nanousd_total{account=\"alice\",model=\"openai/gpt-4o-mini\"}") == 2 * kCommit);
  CHECK(values.at("ledger_model_requests_total{account=\"alice\",model=\"openai/gpt-4o-mini\"}") == 2);
  CHECK(values.at("ledger_tallies_dropped_total") == 0);
  CHECK(values.at("ledger_tombstones_dropped_total") == 0);
  CHECK(values.at("ledger_denials_total{reason=\"over_budget\"}") == 1);
  CHECK(values.at("ledger_denials_total{reason=\"blocked\"}") == 1);
  CHECK(values.at("ledger_reservations_open") == 1);
  CHECK(values.at("ledger_flushes_total") >= 1);
  CHECK(values.at("ledger_flush_lag_seconds") >= 0);
  CHECK(values.at("ledger_flush_records_pending") == 0);  // nothing settled since the sidecar's flush
  CHECK(values.at("ledger_flush_lag_seconds") <= 5);
}
