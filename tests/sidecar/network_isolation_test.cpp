// The flush never waits on OpenRouter: while OpenRouter rate-limits (429 + Retry-After: 30) or
// answers after 5 s, the running sidecar keeps flushing every flush_interval_ms (observed in the
// store's own flush record), a kill of everything followed by a rebuild loses only the last
// moments, and SIGTERM exits promptly with a final flush. Before the network moved off the tick,
// a 429 period stopped flushes for 68 s and SIGTERM took 259 s.
#include <catch2/catch.hpp>
#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <set>
#include <thread>

#include "emulator_process.hpp"
#include "ledger/store.hpp"
#include "process.hpp"

using namespace ledger;
using ledger_test::run;
using Steady = std::chrono::steady_clock;

namespace {

struct Setup : ledger_test::EmulatorLedger {
  explicit Setup(const std::string& fault) {
    ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "flush_interval_ms": 100, "max_accounts": 64},
      "openrouter": {"base_url": ")" + emu.base() + R"(", "management_key_file": ")" + emu.key_file() +
                                        R"(", "reconcile_interval_s": 60, "timeout_ms": 10000},
      "reports": {"interval_s": 10},
      "accounts": [{"id": "team", "limit_usd": "1000", "period": "monthly"},
                   {"id": "alice", "parent": "team", "limit_usd": "1000", "period": "monthly"}]})");
    REQUIRE(run({LEDGERCTL_PATH, "--config", config, "init"}).exit_code == 0);
    emu.admin("/__emulator/faults", fault);
  }
  pid_t start_sidecar() {
    const int fd = ::open((dir.path() + "/sidecar.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    const pid_t pid = ledger_test::spawn({SIDECAR_PATH, "--config", config}, fd, fd);
    ::close(fd);
    REQUIRE(pid > 0);
    return pid;
  }
  // Waits until the sidecar has sent its first OpenRouter request (and got the fault back).
  void wait_for_first_request() {
    for (int i = 0; i < 500; ++i) {
      const auto state = boost::json::parse(emu.admin_get("/__emulator/state")).as_object();
      if (state.at("requests_served").as_int64() > 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL("the sidecar never called OpenRouter");
  }
  // The store's record of the last flush (a value per flush, in the ledger's clock).
  int64_t last_flush_ms() {
    std::unique_ptr<StoreReader> store;
    if (!StoreReader::open(ledger_dir, &store).ok()) return 0;
    StoreStats stats;
    return store->stats(&stats).ok() ? stats.last_flush_ms : 0;
  }
  // How many distinct flushes the store shows during `window`.
  size_t flushes_during(std::chrono::milliseconds window) {
    std::set<int64_t> seen;
    for (const auto until = Steady::now() + window; Steady::now() < until;) {
      seen.insert(last_flush_ms());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return seen.size();
  }
};

int wait_exit(pid_t pid, std::chrono::seconds limit, double* seconds) {
  const auto started = Steady::now();
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (Steady::now() - started > limit) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  *seconds = std::chrono::duration<double>(Steady::now() - started).count();
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("flushes keep their period and SIGTERM is prompt while OpenRouter is rate limiting or slow", "[network][sidecar]") {
  const char* fault = GENERATE(R"({"path": "/api/v1/", "status": 429, "retry_after_s": 30, "count": 1000})",
                               R"({"path": "/api/v1/", "delay_ms": 5000, "count": 1000})");
  INFO(fault);
  Setup s(fault);
  const pid_t sidecar = s.start_sidecar();
  s.wait_for_first_request();  // the network worker is now waiting on OpenRouter (Retry-After, or the slow answer)
  // 2 s at a 100 ms period is 20 flushes; a tick that waited on OpenRouter would show at most one.
  CHECK(s.flushes_during(std::chrono::milliseconds(2000)) >= 8);
  ::kill(sidecar, SIGTERM);
  double seconds = 0;
  CHECK(wait_exit(sidecar, std::chrono::seconds(15), &seconds) == 0);  // the unit's TimeoutStopSec is 30
  const std::string log = ledger_test::read_file(s.dir.path() + "/sidecar.log");
  CHECK(log.find("last_flush_ok=true") != std::string::npos);
  CHECK(log.find("sk-or-v1-") == std::string::npos);
}

TEST_CASE("killing everything during an OpenRouter outage loses only the last flush interval", "[network][sidecar]") {
  Setup s(R"({"path": "/api/v1/", "status": 429, "retry_after_s": 30, "count": 1000})");
  const pid_t sidecar = s.start_sidecar();
  s.wait_for_first_request();
  // A worker acknowledging 1 nano-USD debits as fast as it can; it records when each one was
  // acknowledged, so the loss can be compared with what the last interval acknowledged.
  std::vector<Steady::time_point> acks;
  acks.reserve(4'000'000);
  {
    std::unique_ptr<Ledger> worker;
    REQUIRE(Ledger::open(s.ledger_dir, Options{}, &worker) == Code::kOk);
    AccountRef alice;
    REQUIRE(worker->find("alice", &alice) == Code::kOk);
    for (const auto until = Steady::now() + std::chrono::milliseconds(1500); Steady::now() < until;)
      for (int i = 0; i < 64; ++i)
        if (worker->debit(alice, 1).ok()) acks.push_back(Steady::now());
    ::kill(sidecar, SIGKILL);  // the worker stops with it: it is "killed" with the rest
    ::waitpid(sidecar, nullptr, 0);
  }
  const Steady::time_point killed = Steady::now();
  REQUIRE(Ledger::destroy_segment(s.ledger_dir) == Code::kOk);  // and the segment goes (a reboot)
  std::unique_ptr<Ledger> rebuilt;
  REQUIRE(Ledger::open(s.ledger_dir, Options{}, &rebuilt) == Code::kOk);
  Balance alice;
  REQUIRE(rebuilt->balance("alice", &alice) == Code::kOk);
  const int64_t acknowledged = static_cast<int64_t>(acks.size());
  const int64_t lost = acknowledged - alice.spent_nanousd;
  int64_t last_second = 0;  // acknowledged in the last second before the kill: ten flush intervals
  for (const auto& t : acks) last_second += killed - t <= std::chrono::seconds(1) ? 1 : 0;
  INFO("acknowledged " << acknowledged << ", rebuilt " << alice.spent_nanousd << ", lost " << lost
                       << ", acknowledged in the last second " << last_second);
  CHECK(acknowledged > 1000);
  CHECK(lost >= 0);  // never more than was acknowledged
  CHECK(lost <= last_second);  // before the fix: everything since the outage began
}

TEST_CASE("doctor has an overall deadline while OpenRouter rate limits", "[network]") {
  Setup s(R"({"path": "/api/v1/", "status": 429, "retry_after_s": 30, "count": 1000})");
  const auto started = Steady::now();
  const auto doctor = run({LEDGERCTL_PATH, "--config", s.config, "doctor"});
  const double seconds = std::chrono::duration<double>(Steady::now() - started).count();
  INFO(doctor.out << doctor.err << "took " << seconds << " s");
  CHECK(doctor.exit_code == 2);
  CHECK(doctor.out.find("FAIL   openrouter reach") != std::string::npos);
  CHECK(seconds < 60);  // 20 s of OpenRouter checks at most (it took ~90 s before the deadline)
}
