// ledger-sidecar as a real process: killed with SIGKILL at random moments during heavy settling
// and restarted, the store still ends up equal to the ledger, exactly; one sidecar per ledger;
// SIGHUP applies budget changes and keeps spend; SIGTERM flushes before exiting.
// LEDGER_SIDECAR_KILLS sets the number of kills (default 100).
#include <sys/mman.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <random>
#include <thread>

#include "ledger/store.hpp"
#include "process.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::TempDir;

namespace {

std::string config_text(int flush_interval_ms, const std::string& extra_accounts = "", const std::string& alice_limit = "2.50") {
  return R"({"ledger": {"dir": "ledger", "max_accounts": 64, "max_reservations": 4096, "max_processes": 64,
                        "flush_interval_ms": )" + std::to_string(flush_interval_ms) + R"(},
             "accounts": [{"id": "team", "limit_usd": "100000", "period": "monthly"},
                          {"id": "alice", "parent": "team", "limit_usd": ")" + alice_limit + R"(", "period": "daily"},
                          {"id": "u0", "parent": "team", "limit_usd": "10000", "period": "daily"},
                          {"id": "u1", "parent": "team", "limit_usd": "10000", "period": "weekly"})" +
         extra_accounts + "]}";
}

struct Setup {
  TempDir dir;
  std::string config = dir.path() + "/ledger.json";
  std::string ledger_dir = dir.path() + "/ledger";
  explicit Setup(int flush_interval_ms, const std::string& extra = "") {
    ledger_test::write_file(config, config_text(flush_interval_ms, extra));
    const auto r = ledger_test::run({LEDGERCTL_PATH, "--config", config, "init"});
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
  }
  ~Setup() { (void)Ledger::destroy_segment(ledger_dir); }
  std::unique_ptr<Ledger> open() const {
    std::unique_ptr<Ledger> l;
    REQUIRE(Ledger::open(ledger_dir, Options{}, &l) == Code::kOk);
    return l;
  }
  pid_t start_sidecar(const std::string& log) const {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    const pid_t pid = ledger_test::spawn({SIDECAR_PATH, "--config", config}, fd, fd);
    ::close(fd);
    return pid;
  }
};

bool wait_for(const std::function<bool()>& condition, int timeout_ms = 5000) {
  for (int waited = 0; waited < timeout_ms; waited += 10) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

}  // namespace

TEST_CASE("a sidecar killed again and again during heavy settling loses and doubles nothing", "[sidecar][torture]") {
  const char* env = std::getenv("LEDGER_SIDECAR_KILLS");
  const int kills = env != nullptr ? std::max(1, std::atoi(env)) : 100;
  Setup s(10);  // flush every 10 ms, so kills land during flushes
  auto* stop = static_cast<std::atomic<int>*>(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (stop) std::atomic<int>(0);
  std::vector<pid_t> workers;
  for (int w = 0; w < 2; ++w) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      std::unique_ptr<Ledger> l;
      if (!Ledger::open(s.ledger_dir, Options{}, &l).ok()) ::_exit(2);
      std::mt19937_64 rng(static_cast<uint64_t>(w));
      const char* accounts[] = {"alice", "u0", "u1", "team"};
      while (stop->load() == 0) {
        const char* a = accounts[rng() % 4];
        const int64_t amount = 1 + static_cast<int64_t>(rng() % 100000);
        if (rng() % 2 == 0) {
          (void)l->debit(a, amount);
        } else {
          ReservationId id = 0;
          if (l->reserve(a, amount, 60, &id).ok()) (void)l->commit(id, static_cast<int64_t>(rng() % static_cast<uint64_t>(amount + 1)));
        }
      }
      ::_exit(0);
    }
    workers.push_back(pid);
  }
  std::mt19937_64 rng(7);
  const std::string log = s.dir.path() + "/sidecar.log";
  for (int k = 0; k < kills; ++k) {
    const pid_t sidecar = s.start_sidecar(log);
    REQUIRE(sidecar > 0);
    std::this_thread::sleep_for(std::chrono::microseconds(2000 + rng() % 40000));
    ::kill(sidecar, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(sidecar, &status, 0) == sidecar);
  }
  stop->store(1);
  for (pid_t pid : workers) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
  }
  const auto final_run = ledger_test::run({SIDECAR_PATH, "--config", s.config, "--once"});
  INFO(final_run.err);
  REQUIRE(final_run.exit_code == 0);

  auto l = s.open();
  std::unique_ptr<StoreReader> store;
  REQUIRE(StoreReader::open(s.ledger_dir, &store) == Code::kOk);
  std::vector<StoredPeriod> periods;
  std::vector<StoredDay> days;
  std::vector<JournalEntry> journal;
  REQUIRE(store->periods(&periods) == Code::kOk);
  REQUIRE(store->days(0, INT64_MAX, &days) == Code::kOk);
  REQUIRE(store->journal(0, SIZE_MAX, &journal) == Code::kOk);
  std::map<std::string, int64_t> period_sum, day_sum, journal_sum;
  std::map<std::string, uint64_t> period_requests, day_requests;
  for (const auto& p : periods) {
    period_sum[p.account] += p.spent_nanousd;
    period_requests[p.account] += p.requests;
  }
  for (const auto& d : days) {
    day_sum[d.account] += d.spent_nanousd;
    day_requests[d.account] += d.requests;
  }
  for (const auto& j : journal) journal_sum[j.account] += j.delta_nanousd;
  int mismatches = 0;
  for (const char* a : {"team", "alice", "u0", "u1"}) {
    Balance b;
    REQUIRE(l->balance(a, &b) == Code::kOk);
    const int64_t now_index = period_index(b.period, b.period_start_unix);
    int64_t stored_current = -1;
    for (const auto& p : periods)
      if (p.account == a && p.index == now_index) stored_current = p.spent_nanousd;
    INFO(a << ": ledger " << b.spent_nanousd << " store " << stored_current << " days " << day_sum[a] << " journal " << journal_sum[a]);
    CHECK(b.held_nanousd == 0);
    CHECK(stored_current == b.spent_nanousd);  // the current period, exactly
    CHECK(day_sum[a] == period_sum[a]);        // every change went to exactly one day...
    CHECK(journal_sum[a] == period_sum[a]);    // ...and one journal entry
    CHECK(day_requests[a] == period_requests[a]);
    mismatches += (stored_current != b.spent_nanousd) + (day_sum[a] != period_sum[a]) + (journal_sum[a] != period_sum[a]);
  }
  std::printf("sidecar torture: %d kills, %zu journal entries, mismatches %d\n", kills, journal.size(), mismatches);
  CHECK(period_sum["team"] > 0);
  ::munmap(stop, 4096);
}

TEST_CASE("one sidecar per ledger; SIGTERM flushes and exits cleanly", "[sidecar]") {
  Setup s(60'000);  // only the final flush can write what we debit below
  const std::string log = s.dir.path() + "/a.log";
  const pid_t first = s.start_sidecar(log);
  REQUIRE(wait_for([&] { return ledger_test::read_file(log).find("msg=\"started\"") != std::string::npos; }));
  const auto second = ledger_test::run({SIDECAR_PATH, "--config", s.config});
  CHECK(second.exit_code == 2);
  CHECK(second.err.find("another ledger-sidecar (pid " + std::to_string(first) + ") is already running") != std::string::npos);

  auto l = s.open();
  REQUIRE(l->debit("alice", kUsd) == Code::kOk);
  ::kill(first, SIGTERM);
  int status = 0;
  REQUIRE(::waitpid(first, &status, 0) == first);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_FALSE(std::filesystem::exists(s.ledger_dir + "/ledger-sidecar.pid"));
  std::unique_ptr<StoreReader> store;
  REQUIRE(StoreReader::open(s.ledger_dir, &store) == Code::kOk);
  std::vector<StoredPeriod> periods;
  REQUIRE(store->periods(&periods) == Code::kOk);
  int64_t alice = 0;
  for (const auto& p : periods)
    if (p.account == "alice") alice += p.spent_nanousd;
  CHECK(alice == kUsd);
}

TEST_CASE("SIGHUP applies budget changes, keeps spend, and blocks removed accounts", "[sidecar]") {
  Setup s(50, R"(, {"id": "bob", "parent": "team", "limit_usd": "3", "period": "daily"})");
  auto l = s.open();
  REQUIRE(l->debit("alice", 2 * kUsd) == Code::kOk);
  REQUIRE(l->debit("bob", kUsd) == Code::kOk);
  const std::string log = s.dir.path() + "/hup.log";
  const pid_t sidecar = s.start_sidecar(log);
  REQUIRE(wait_for([&] { return ledger_test::read_file(log).find("msg=\"started\"") != std::string::npos; }));

  // A broken config is refused and the running one kept.
  ledger_test::write_file(s.config, "{ broken");
  ::kill(sidecar, SIGHUP);
  REQUIRE(wait_for([&] { return ledger_test::read_file(log).find("reload refused") != std::string::npos; }));
  // Raise alice's limit, drop bob.
  ledger_test::write_file(s.config, config_text(50, "", "5"));
  ::kill(sidecar, SIGHUP);
  REQUIRE(wait_for([&] { return ledger_test::read_file(log).find("msg=\"config reloaded\"") != std::string::npos; }));
  Balance alice, bob;
  REQUIRE(l->balance("alice", &alice) == Code::kOk);
  REQUIRE(l->balance("bob", &bob) == Code::kOk);
  CHECK(alice.limit_nanousd == 5 * kUsd);
  CHECK(alice.spent_nanousd == 2 * kUsd);  // spend kept
  CHECK(bob.blocked);                        // removed: blocked, not forgotten
  CHECK(bob.spent_nanousd == kUsd);
  CHECK(l->debit("bob", 1) == Code::kDeniedBlocked);
  CHECK(l->debit("alice", 3 * kUsd) == Code::kOk);
  ::kill(sidecar, SIGTERM);
  int status = 0;
  REQUIRE(::waitpid(sidecar, &status, 0) == sidecar);
  CHECK(WEXITSTATUS(status) == 0);
}

// A config with a child listed before its parent whose own parent is unknown once crashed the chain
// walk: a running sidecar must refuse it on SIGHUP, keep its config, and keep working.
TEST_CASE("SIGHUP with an unknown grandparent is refused; the sidecar keeps running and its config", "[sidecar]") {
  Setup s(60'000);  // only the final flush writes what we debit below
  const std::string log = s.dir.path() + "/bad-hup.log";
  const pid_t sidecar = s.start_sidecar(log);
  REQUIRE(wait_for([&] { return ledger_test::read_file(log).find("msg=\"started\"") != std::string::npos; }));
  ledger_test::write_file(s.config, R"({"ledger": {"dir": "ledger", "max_accounts": 64},
    "accounts": [{"id": "a", "parent": "b", "limit_usd": 1}, {"id": "b", "parent": "ghost", "limit_usd": 1}]})");
  ::kill(sidecar, SIGHUP);
  REQUIRE(wait_for([&] { return ledger_test::read_file(log).find("reload refused") != std::string::npos; }));
  const std::string text = ledger_test::read_file(log);
  CHECK(text.find("accounts[1] (\\\"b\\\").parent: unknown account \\\"ghost\\\"") != std::string::npos);
  CHECK(text.find("msg=\"config reloaded\"") == std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  int status = 0;
  REQUIRE(::waitpid(sidecar, &status, WNOHANG) == 0);  // still running
  auto l = s.open();
  Balance alice;
  REQUIRE(l->balance("alice", &alice) == Code::kOk);
  CHECK(alice.limit_nanousd == 2'500'000'000);  // the running config's
  Balance a;
  CHECK(l->balance("a", &a) == Code::kUnknownAccount);
  REQUIRE(l->debit("alice", kUsd) == Code::kOk);
  ::kill(sidecar, SIGTERM);
  REQUIRE(::waitpid(sidecar, &status, 0) == sidecar);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  std::unique_ptr<StoreReader> store;
  REQUIRE(StoreReader::open(s.ledger_dir, &store) == Code::kOk);
  std::vector<StoredPeriod> periods;
  REQUIRE(store->periods(&periods) == Code::kOk);
  int64_t stored = 0;
  for (const auto& p : periods)
    if (p.account == "alice") stored += p.spent_nanousd;
  CHECK(stored == kUsd);  // the final flush of the still-working sidecar
}

namespace {
size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}
}  // namespace

TEST_CASE("a full LMDB map is logged once, and raising store_map_size_mb with SIGHUP fixes it at once", "[sidecar]") {
  TempDir dir;
  const std::string config = dir.path() + "/ledger.json", ledger_dir = dir.path() + "/ledger", log = dir.path() + "/sidecar.log";
  std::string accounts = R"([{"id": "team", "limit_usd": "1000000", "period": "monthly"})";
  for (int i = 0; i < 300; ++i)
    accounts += R"(, {"id": "u)" + std::to_string(i) + R"(", "parent": "team", "limit_usd": "1000", "period": "daily"})";
  const auto write_config = [&](int map_mb) {
    ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "max_accounts": 512, "flush_interval_ms": 50, "store_map_size_mb": )" +
                                        std::to_string(map_mb) + R"(}, "accounts": )" + accounts + "]}");
  };
  write_config(1);
  const auto init = ledger_test::run({LEDGERCTL_PATH, "--config", config, "init"});
  INFO(init.err);
  REQUIRE(init.exit_code == 0);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  const pid_t sidecar = ledger_test::spawn({SIDECAR_PATH, "--config", config}, fd, fd);
  ::close(fd);
  std::unique_ptr<Ledger> l;
  REQUIRE(Ledger::open(ledger_dir, Options{}, &l) == Code::kOk);
  std::atomic<bool> stop{false};
  std::thread worker([&] {  // every account changes between flushes: the journal grows until the map is full
    for (int round = 0; !stop.load(); ++round)
      for (int i = 0; i < 300 && !stop.load(); ++i) (void)l->debit("u" + std::to_string(i), 1);
  });
  const bool full = wait_for([&] { return ledger_test::read_file(log).find("map is full") != std::string::npos; }, 20000);
  CHECK(full);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // ten more failing flushes
  CHECK(count_of(ledger_test::read_file(log), "flush failed") == 1);  // once per state change
  write_config(64);
  ::kill(sidecar, SIGHUP);
  CHECK(wait_for([&] { return ledger_test::read_file(log).find("flush recovered") != std::string::npos; }, 10000));
  stop = true;
  worker.join();
  ::kill(sidecar, SIGTERM);
  int status = 0;
  REQUIRE(::waitpid(sidecar, &status, 0) == sidecar);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));  // the final flush worked
  std::unique_ptr<StoreReader> store;
  REQUIRE(StoreReader::open(ledger_dir, &store) == Code::kOk);
  std::vector<StoredPeriod> periods;
  REQUIRE(store->periods(&periods) == Code::kOk);
  for (const auto& p : periods)
    if (p.account == "team") {
      Balance team;
      REQUIRE(l->balance("team", &team) == Code::kOk);
      CHECK(p.spent_nanousd == team.spent_nanousd);  // nothing lost while the map was full
    }
  store.reset();
  l.reset();
  (void)Ledger::destroy_segment(ledger_dir);
}
