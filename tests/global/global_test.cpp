// Global mode against a real PostgreSQL (started by the test, as an unprivileged user, on a Unix
// socket in a temp dir): bad stores are one clear error and change no budget; hosts that each admit
// locally against leases never pass the shared limit together, and after the drain the store's
// spend is exactly what every worker acknowledged.
#include <sys/mman.h>

#include <atomic>
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <ctime>
#include <map>
#include <set>
#include <random>
#include <thread>

#include "global/pg.hpp"
#include "ledger/store.hpp"
#include "global/protocol.hpp"
#include "global/lease_worker.hpp"
#include "core/config.hpp"
#include "emulator_process.hpp"
#include "pg_server.hpp"
#include "process.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::PgServer;
using ledger_test::run;
using ledger_test::TempDir;

namespace {

// One simulated host: its own ledger directory (so its own segment), config and sidecar.
struct Host {
  std::string name, dir, config, log;
  pid_t sidecar = -1;
  Host(const TempDir& root, const std::string& host_id, const std::string& store, const std::string& accounts, int refresh_ms = 100,
       const std::string& openrouter = "")
      : name(host_id), dir(root.path() + "/" + host_id), config(root.path() + "/" + host_id + ".json"),
        log(root.path() + "/" + host_id + ".log") {
    ledger_test::write_file(config, R"({"ledger": {"dir": ")" + dir + R"(", "max_accounts": 64, "flush_interval_ms": 100},
      "global": {"store": ")" + store + R"(", "store_password_env": "LEDGER_TEST_PG_PASSWORD", "host_id": ")" + host_id +
                                        R"(", "lease_ttl_s": 5, "refresh_interval_ms": )" + std::to_string(refresh_ms) + R"(},
      )" + (openrouter.empty() ? "" : R"("openrouter": )" + openrouter + ",") + R"("accounts": )" + accounts + "}");
  }
  ~Host() {
    stop_sidecar();
    (void)Ledger::destroy_segment(dir);
  }
  ledger_test::Result init() const { return run({LEDGERCTL_PATH, "--config", config, "init"}); }
  void start_sidecar() {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    sidecar = ledger_test::spawn({SIDECAR_PATH, "--config", config}, fd, fd);
    ::close(fd);
    REQUIRE(sidecar > 0);
  }
  int stop_sidecar() {
    if (sidecar <= 0) return 0;
    ::kill(sidecar, SIGTERM);
    int status = 0;
    ::waitpid(sidecar, &status, 0);
    sidecar = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

constexpr const char* kChain = R"([{"id": "org", "limit_usd": "2", "period": "monthly"},
  {"id": "team", "parent": "org", "limit_usd": "1.5", "period": "monthly"},
  {"id": "alice", "parent": "team", "limit_usd": "1", "period": "daily"}])";

struct Setup {
  PgServer pg;
  TempDir root;
  Setup() { ::setenv("LEDGER_TEST_PG_PASSWORD", PgServer::password().c_str(), 1); }
  boost::json::object status(const Host& h) {
    const auto r = run({LEDGERCTL_PATH, "--config", h.config, "global", "status", "--json"});
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    return boost::json::parse(r.out).as_object();
  }
  static boost::json::object account(const boost::json::object& status, const std::string& id) {
    for (const auto& a : status.at("accounts").as_array())
      if (a.as_object().at("id").as_string() == id) return a.as_object();
    FAIL("no account " << id << " in global status");
    return {};
  }
};

int64_t num(const boost::json::object& o, const char* key) { return o.at(key).to_number<int64_t>(); }

}  // namespace

// The incarnation names this ledger directory's leases: every thread and process that asks for it
// on a fresh directory must get the same one (two threads of one sidecar once made two, and the
// leases of the first were then charged in full as a dead host's).
TEST_CASE("a ledger directory has one incarnation, however many ask for it at once", "[global]") {
  for (int round = 0; round < 20; ++round) {
    TempDir root;
    admin::Config config;
    config.ledger.dir = root.path();
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {  // another process, racing this one
      const std::string id = global::incarnation_id(config);
      (void)!::write(pipe_fds[1], id.data(), id.size());
      ::_exit(0);
    }
    ::close(pipe_fds[1]);  // the child's end: a child that writes nothing gives an empty read, not a hang
    std::string a, b;
    std::thread t([&] { a = global::incarnation_id(config); });
    b = global::incarnation_id(config);
    t.join();
    char buffer[64] = {};
    REQUIRE(::waitpid(child, nullptr, 0) == child);
    const ssize_t n = ::read(pipe_fds[0], buffer, sizeof buffer);
    ::close(pipe_fds[0]);
    const std::string from_child(buffer, n > 0 ? static_cast<size_t>(n) : 0);
    CHECK(a.size() == 32);
    CHECK(a == b);
    CHECK(from_child == a);
    CHECK(ledger_test::read_file(root.path() + "/ledger.incarnation") == a + "\n");
  }
}

TEST_CASE("a bad store is one clear error and changes no budget", "[global]") {
  Setup s;
  SECTION("unreachable") {
    Host h(s.root, "h1", "postgresql:///ledger?host=" + s.root.path() + "/nowhere&user=ledger", kChain);
    const auto r = h.init();
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("cannot connect to the store postgresql:///ledger?host=") != std::string::npos);
    CHECK(r.err.find("nothing was changed") != std::string::npos);
    CHECK(run({LEDGERCTL_PATH, "--config", h.config, "status"}).exit_code == 2);  // no ledger was made
  }
  SECTION("wrong credentials") {
    Host h(s.root, "h1", s.pg.uri(), kChain);
    ::setenv("LEDGER_TEST_PG_PASSWORD", "not-the-password", 1);
    const auto r = h.init();
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("password") != std::string::npos);
    CHECK(r.err.find("not-the-password") == std::string::npos);  // never echoed
    CHECK(r.out.find("not-the-password") == std::string::npos);
  }
  SECTION("a newer schema") {
    Host h(s.root, "h1", s.pg.uri(), kChain);
    REQUIRE(h.init().exit_code == 0);
    global::PgConnection pg(global::PgOptions{s.pg.uri(), PgServer::password()});
    global::PgResult ignored;
    global::PgError e;
    REQUIRE(pg.exec("UPDATE ledger_schema SET version = 99", {}, &ignored, &e));
    const auto r = h.init();
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("schema is version 99, newer than this ledger's (3)") != std::string::npos);
  }
  SECTION("an older schema is migrated") {
    Host h(s.root, "h1", s.pg.uri(), kChain);
    REQUIRE(h.init().exit_code == 0);
    global::PgConnection pg(global::PgOptions{s.pg.uri(), PgServer::password()});
    global::PgResult r;
    global::PgError e;
    REQUIRE(pg.exec("UPDATE ledger_schema SET version = 1", {}, &r, &e));
    REQUIRE(pg.exec("DROP TABLE ledger_key_days", {}, &r, &e));  // version 2 added it
    REQUIRE(pg.exec("DROP TABLE ledger_topups", {}, &r, &e));    // version 3 added it
    REQUIRE(h.init().exit_code == 0);
    REQUIRE(pg.exec("SELECT version FROM ledger_schema", {}, &r, &e));
    CHECK(r.rows.at(0).at(0) == std::optional<std::string>("3"));
    REQUIRE(pg.exec("SELECT count(*) FROM ledger_key_days", {}, &r, &e));
    REQUIRE(pg.exec("SELECT count(*) FROM ledger_topups", {}, &r, &e));
    REQUIRE(pg.exec("SELECT detail FROM ledger_journal WHERE kind = 'schema'", {}, &r, &e));
    REQUIRE(r.rows.size() == 1);
    CHECK(r.rows[0][0] == std::optional<std::string>("migrated from version 1 to 3"));
  }
  SECTION("a foreign table of the same name") {
    global::PgConnection pg(global::PgOptions{s.pg.uri(), PgServer::password()});
    global::PgResult ignored;
    global::PgError e;
    REQUIRE(pg.exec("CREATE TABLE ledger_accounts (name TEXT, balance INT)", {}, &ignored, &e));
    Host h(s.root, "h1", s.pg.uri(), kChain);
    const auto r = h.init();
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("table ledger_accounts that is not this ledger's") != std::string::npos);
  }
  SECTION("a host_id used by two live hosts at once") {
    Host a(s.root, "same", s.pg.uri(), kChain);
    REQUIRE(a.init().exit_code == 0);
    a.start_sidecar();
    TempDir other;  // another "machine": another ledger directory with the same host_id
    Host b(other, "same", s.pg.uri(), kChain);
    REQUIRE(b.init().exit_code == 0);
    b.start_sidecar();
    bool refused = false;
    for (int i = 0; i < 1000 && !refused; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      refused = ledger_test::read_file(b.log).find("another live host uses it") != std::string::npos;
    }
    CHECK(refused);
    std::unique_ptr<Ledger> l;
    REQUIRE(Ledger::open(b.dir, Options{}, &l) == Code::kOk);
    CHECK(l->debit("alice", 1) == Code::kDeniedOverBudget);  // no leases for the impostor: it denies
  }
}

// A block is global: ledgerctl block on one host writes the store, every host applies it at its
// next refresh (and would undo a block made only locally), and a later init keeps it.
TEST_CASE("block and unblock of a global account hold on every host, and init keeps the block", "[global]") {
  Setup s;
  Host a(s.root, "host-a", s.pg.uri(), kChain), b(s.root, "host-b", s.pg.uri(), kChain);
  for (Host* h : {&a, &b}) {
    REQUIRE(h->init().exit_code == 0);
    h->start_sidecar();
  }
  std::unique_ptr<Ledger> on_b;
  REQUIRE(Ledger::open(b.dir, Options{}, &on_b) == Code::kOk);
  const auto debit_settles = [&](Code want) {  // within 10 s: each host applies the store at its next refresh
    Code got = Code::kOk;
    for (int i = 0; i < 500; ++i, std::this_thread::sleep_for(std::chrono::milliseconds(20)))
      if ((got = on_b->debit("alice", 1000).code()) == want) return true;
    INFO("last debit: " << static_cast<int>(got));
    return false;
  };
  REQUIRE(debit_settles(Code::kOk));
  const auto blocked = run({LEDGERCTL_PATH, "--config", a.config, "block", "team"});
  INFO(blocked.err);
  REQUIRE(blocked.exit_code == 0);
  CHECK(blocked.out.find("team blocked on every host") != std::string::npos);
  CHECK(debit_settles(Code::kDeniedBlocked));  // on the other host: alice's chain holds team
  CHECK(Setup::account(s.status(b), "team").at("blocked").as_bool());
  REQUIRE(b.init().exit_code == 0);  // publishing the config again does not lift the store's block
  CHECK(Setup::account(s.status(b), "team").at("blocked").as_bool());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // several refreshes: still blocked
  CHECK(on_b->debit("alice", 1000) == Code::kDeniedBlocked);
  REQUIRE(run({LEDGERCTL_PATH, "--config", b.config, "unblock", "team"}).exit_code == 0);
  CHECK(debit_settles(Code::kOk));
  CHECK_FALSE(Setup::account(s.status(a), "team").at("blocked").as_bool());
  const auto unknown = run({LEDGERCTL_PATH, "--config", a.config, "block", "nobody"});
  CHECK(unknown.exit_code != 0);
}

// DESIGN 13 in global mode: a top-up of a global account is the store's (every host's grants see
// it; the store's limit for the window is raised, and nothing more), and a soft global account
// admits past its own limit without a lease while its team's lease still binds.
TEST_CASE("a global top-up raises the limit for every host, and a soft global account passes its own", "[global][rules]") {
  Setup s;
  const std::string accounts = R"([{"id": "team", "limit_usd": "3", "period": "monthly"},
    {"id": "alice", "parent": "team", "limit_usd": "1", "period": "daily"},
    {"id": "sam", "parent": "team", "limit_usd": "0.05", "period": "daily", "enforce": "soft"}])";
  Host a(s.root, "host-a", s.pg.uri(), accounts), b(s.root, "host-b", s.pg.uri(), accounts);
  for (Host* h : {&a, &b}) {
    REQUIRE(h->init().exit_code == 0);
    h->start_sidecar();
  }
  std::unique_ptr<Ledger> on_a, on_b;
  REQUIRE(Ledger::open(a.dir, Options{}, &on_a) == Code::kOk);
  REQUIRE(Ledger::open(b.dir, Options{}, &on_b) == Code::kOk);
  // Spend alice's $1 from both hosts (each denial makes its host ask for more at once).
  const auto drain = [&](int64_t until) {
    int64_t total = 0;
    for (int i = 0; i < 3000 && total < until; ++i) {
      Ledger& l = i % 2 == 0 ? *on_a : *on_b;
      if (l.debit("alice", kUsd / 100).ok()) total += kUsd / 100;
      else std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return total;
  };
  const int64_t first = drain(2 * kUsd);
  CHECK(first == kUsd);  // never past the limit, and all of it (single-request slices near the end)
  const auto topup = run({LEDGERCTL_PATH, "--config", a.config, "topup", "alice", "0.5"});
  INFO(topup.out << topup.err);
  REQUIRE(topup.exit_code == 0);
  CHECK(topup.out.find("in the global store") != std::string::npos);
  const int64_t second = drain(kUsd);
  CHECK(second == kUsd / 2);  // exactly the top-up, across both hosts
  const auto alice = Setup::account(s.status(a), "alice");
  CHECK(num(alice, "limit_nanousd") == 3 * kUsd / 2);
  // sam is soft: past his own $0.05 without any lease of his own; the team's lease binds him.
  int64_t sam = 0;
  for (int i = 0; i < 2000 && sam < kUsd / 5; ++i)
    if (on_b->debit("sam", kUsd / 100).ok()) sam += kUsd / 100;
    else std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(sam == kUsd / 5);
  for (Host* h : {&a, &b}) CHECK(h->stop_sidecar() == 0);
  const auto team = Setup::account(s.status(a), "team");
  CHECK(num(team, "spent_nanousd") == 3 * kUsd / 2 + kUsd / 5);  // alice's 1.5 and sam's 0.2, both hosts, exact
}

// One reconciler for the team (G5), comparing each key with what every host recorded through it:
// two hosts spend through alice's key, OpenRouter shows that plus a bypass, and the drift charged
// is exactly the bypass, once (a reconciler comparing with its own host's record alone would charge
// the other host's spend again).
TEST_CASE("per-key reconcile across hosts: the drift is charged once, and only the drift", "[global][reconcile]") {
  Setup s;
  ledger_test::EmulatorProcess emu;
  ledger::openrouter::Client client{emu.options()};
  ledger::openrouter::KeyInfo key;
  std::string secret;
  REQUIRE_FALSE(client.create_key("alice", std::nullopt, "", &key, &secret));
  const std::string chain = R"([{"id": "org", "limit_usd": "2", "period": "monthly"},
    {"id": "team", "parent": "org", "limit_usd": "1.5", "period": "monthly"},
    {"id": "alice", "parent": "team", "limit_usd": "1", "period": "daily", "key_hash": ")" + key.hash + R"("}])";
  const std::string openrouter = R"({"base_url": ")" + emu.base() + R"(", "management_key_file": ")" + emu.key_file() +
                                 R"(", "reconcile_interval_s": 1, "timeout_ms": 2000})";
  Host a(s.root, "host-a", s.pg.uri(), chain, 100, openrouter), b(s.root, "host-b", s.pg.uri(), chain, 100, openrouter);
  for (Host* h : {&a, &b}) {
    REQUIRE(h->init().exit_code == 0);
    h->start_sidecar();
  }
  const auto spend = [&](const Host& h, int64_t amount) {  // through alice's key (the default rule: her own bound key)
    std::unique_ptr<Ledger> l;
    REQUIRE(Ledger::open(h.dir, Options{}, &l) == Code::kOk);
    bool granted = false;  // larger than the usual slice: the denial itself makes the next grant fit it
    for (int i = 0; i < 500 && !(granted = l->debit("alice", amount).ok()); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    REQUIRE(granted);
  };
  spend(a, kUsd / 10);
  spend(b, kUsd / 5);
  emu.admin("/__emulator/usage", R"({"hash": ")" + key.hash + R"(", "cost_usd": "0.35"})");  // $0.30 through the ledger + $0.05 bypass
  const auto alice_spent = [&] { return num(Setup::account(s.status(a), "alice"), "spent_nanousd"); };
  int64_t spent = 0;
  for (int i = 0; i < 150 && (spent = alice_spent()) < kUsd * 35 / 100; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(spent == kUsd * 35 / 100);
  std::this_thread::sleep_for(std::chrono::seconds(4));  // several more reconcile runs on both hosts: nothing more
  CHECK(alice_spent() == kUsd * 35 / 100);
  CHECK(num(Setup::account(s.status(a), "org"), "spent_nanousd") == kUsd * 35 / 100);
  const auto adjusted = [](const Host& h) {
    const std::string log = ledger_test::read_file(h.log);
    size_t count = 0;
    for (size_t at = log.find("reconcile: adjusted"); at != std::string::npos; at = log.find("reconcile: adjusted", at + 1)) ++count;
    return count;
  };
  CHECK(adjusted(a) + adjusted(b) == 1);  // one reconciler, one adjustment
  // Either host's dry run now compares the whole team's record with the key: within tolerance.
  const auto dry = run({LEDGERCTL_PATH, "--config", b.config, "reconcile", "--dry-run"});
  INFO(dry.out << dry.err);
  CHECK(dry.exit_code == 0);
  CHECK(dry.out.find("within tolerance") != std::string::npos);
  // The report on either host: every host's cost, and the breakdown by host sums to it.
  const auto report = run({LEDGERCTL_PATH, "--config", b.config, "report", "--format", "json"});
  INFO(report.err);
  REQUIRE(report.exit_code == 0);
  const auto root = boost::json::parse(report.out).as_object();
  CHECK(root.at("global").as_bool());
  std::map<std::string, int64_t> by_host;
  for (const auto& row : root.at("accounts").as_array()) {
    const auto& o = row.as_object();
    if (o.at("account").as_string() != "alice") continue;
    CHECK(num(o, "cost_nanousd") == kUsd * 35 / 100);
    CHECK(num(o, "period_spent_nanousd") == kUsd * 35 / 100);
    for (const auto& h : o.at("hosts").as_array()) by_host[std::string(h.as_object().at("host_id").as_string())] = num(h.as_object(), "cost_nanousd");
  }
  REQUIRE(by_host.size() == 2);
  CHECK(by_host["host-a"] + by_host["host-b"] == kUsd * 35 / 100);
  CHECK(by_host["host-a"] >= kUsd / 10);  // its own spend (and the adjustment, if it is the reconciler)
  CHECK(by_host["host-b"] >= kUsd / 5);
  const auto table = run({LEDGERCTL_PATH, "--config", a.config, "report"});
  CHECK(table.out.find("global mode: costs and periods are every host's; by host:") != std::string::npos);
}

// Beside the chain, a root account: its debits take the one-CAS fast path against the lease (the
// lease epoch stamped on its word), which the sidecars rewrite as they grant, give back and recall.
constexpr const char* kChainAndRoot = R"([{"id": "org", "limit_usd": "2", "period": "monthly"},
  {"id": "team", "parent": "org", "limit_usd": "1.5", "period": "monthly"},
  {"id": "alice", "parent": "team", "limit_usd": "1", "period": "daily"},
  {"id": "solo", "limit_usd": "0.5", "period": "daily"}])";

TEST_CASE("4 hosts x 2 workers drain one global chain: never over, and the store's spend is exact", "[global]") {
  Setup s;
  std::vector<std::unique_ptr<Host>> hosts;
  for (int h = 0; h < 4; ++h) hosts.push_back(std::make_unique<Host>(s.root, "host-" + std::to_string(h), s.pg.uri(), kChainAndRoot));
  for (auto& h : hosts) {
    const auto r = h->init();
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    h->start_sidecar();
  }
  // Each worker process debits alice (chain alice -> team -> org) and solo until both budgets are
  // gone, and writes what it was granted to shared memory (alice's in [0, 8), solo's in [8, 16)).
  auto* acknowledged = static_cast<std::atomic<int64_t>*>(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  for (int i = 0; i < 16; ++i) new (&acknowledged[i]) std::atomic<int64_t>(0);
  std::vector<pid_t> workers;
  for (int w = 0; w < 8; ++w) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      std::unique_ptr<Ledger> l;
      if (!Ledger::open(hosts[w / 2]->dir, Options{}, &l).ok()) ::_exit(2);
      std::mt19937_64 rng(static_cast<uint64_t>(w) * 7919);
      // Until the hosts together have 99% of each limit (what draining means), at most 60 s.
      const auto sum = [&](int first) {
        int64_t total = 0;
        for (int i = first; i < first + 8; ++i) total += acknowledged[i].load();
        return total;
      };
      for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
           std::chrono::steady_clock::now() < until && (sum(0) < kUsd * 99 / 100 || sum(8) < kUsd / 2 * 99 / 100);) {
        const int64_t amount = 100'000 + static_cast<int64_t>(rng() % 4'900'000);  // $0.0001 - $0.005
        const bool to_alice = sum(0) < kUsd * 99 / 100 && (sum(8) >= kUsd / 2 * 99 / 100 || rng() % 2 == 0);
        if (l->debit(to_alice ? "alice" : "solo", amount).ok()) acknowledged[to_alice ? w : 8 + w] += amount;
        else std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      ::_exit(0);
    }
    workers.push_back(pid);
  }
  for (pid_t pid : workers) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  int64_t total = 0, total_solo = 0;
  for (int i = 0; i < 8; ++i) total += acknowledged[i].load();
  for (int i = 8; i < 16; ++i) total_solo += acknowledged[i].load();
  for (auto& h : hosts) CHECK(h->stop_sidecar() == 0);  // each reports a last time and gives back what is unused
  const auto status = s.status(*hosts[0]);
  const auto alice = Setup::account(status, "alice"), team = Setup::account(status, "team"), org = Setup::account(status, "org");
  INFO("acknowledged " << total << " alice spent " << num(alice, "spent_nanousd") << " leased " << num(alice, "leased_nanousd"));
  std::printf("4 hosts x 2 workers: acknowledged %lld of a %lld limit; the store says spent %lld, leased %lld\n",
              static_cast<long long>(total), static_cast<long long>(kUsd), static_cast<long long>(num(alice, "spent_nanousd")),
              static_cast<long long>(num(alice, "leased_nanousd")));
  CHECK(total <= kUsd);            // alice's limit binds: the hosts together never passed it
  CHECK(total >= kUsd * 95 / 100);  // and it was drained (nothing much stranded)
  CHECK(num(alice, "spent_nanousd") == total);  // the store's spend: exactly what the workers acknowledged
  CHECK(num(team, "spent_nanousd") == total);
  CHECK(num(org, "spent_nanousd") == total);
  CHECK(num(alice, "leased_nanousd") == total);  // every unused grant came back
  CHECK(alice.at("hosts").as_array().size() == 4);
  const auto solo = Setup::account(status, "solo");
  INFO("solo: acknowledged " << total_solo << " spent " << num(solo, "spent_nanousd") << " leased " << num(solo, "leased_nanousd"));
  CHECK(total_solo <= kUsd / 2);
  CHECK(total_solo >= kUsd / 2 * 95 / 100);
  CHECK(num(solo, "spent_nanousd") == total_solo);
  CHECK(num(solo, "leased_nanousd") == total_solo);
}

namespace {

// What alice spent today in the host's segment beyond what survives it: its LMDB record, or what
// it reported to the store, whichever is more (its workers and sidecar already dead).
int64_t unrecorded_spend(const Host& h, const std::string& store_uri, const std::string& account) {
  int64_t in_segment = 0, in_store = 0;
  {
    std::unique_ptr<Ledger> l;
    REQUIRE(Ledger::open(h.dir, Options{}, &l) == Code::kOk);
    Balance b;
    REQUIRE(l->balance(account, &b) == Code::kOk);
    in_segment = b.spent_nanousd + b.held_nanousd;
  }
  std::unique_ptr<StoreReader> store;
  if (StoreReader::open(h.dir, &store) != Code::kOk) return in_segment;
  std::vector<StoredPeriod> periods;
  const int64_t today = period_index(Period::kDaily, std::time(nullptr));
  REQUIRE(store->periods_in(today, today, &periods) == Code::kOk);
  for (const auto& p : periods)
    if (p.account == account && p.period == Period::kDaily) in_store = p.spent_nanousd;
  global::PgConnection pg(global::PgOptions{store_uri, PgServer::password()});
  global::PgResult r;
  global::PgError e;
  const std::string owner = h.name + "/" + ledger_test::read_file(h.dir + "/ledger.incarnation").substr(0, 32);
  REQUIRE(pg.exec("SELECT spent_nanousd FROM ledger_leases WHERE host_id = $1 AND account = $2 AND window_index = $3",
                  {owner, account, std::to_string(today)}, &r, &e));
  const int64_t reported = r.rows.empty() ? 0 : std::stoll(r.rows[0][0].value_or("0"));
  return in_segment - std::max(in_store, reported);
}

// The torture's accounts: alice at the end of a chain (the lane path), with a budget the run never
// exhausts (so every live host's spend is checked to the nano-USD under faults), and solo, a root
// account (the one-CAS path) whose $2 is gone within seconds (so the overspend bound is checked
// under faults). A worker's acknowledgements for solo are kept kSoloOffset counters further on.
std::string torture_accounts(int64_t alice_usd) {
  return R"([{"id": "org", "limit_usd": "100000", "period": "monthly"},
    {"id": "team", "parent": "org", "limit_usd": "100000", "period": "monthly"},
    {"id": "alice", "parent": "team", "limit_usd": ")" +
         std::to_string(alice_usd) + R"(", "period": "daily"},
    {"id": "solo", "limit_usd": "2", "period": "daily"}])";
}
constexpr int kSoloOffset = 200;

// A worker process on one host: debits alice and solo until told to stop, counting what was
// acknowledged (alice's at acknowledged[0], solo's at acknowledged[kSoloOffset]).
pid_t start_worker(const std::string& dir, std::atomic<int64_t>* acknowledged, std::atomic<int>* stop, uint64_t seed) {
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  std::unique_ptr<Ledger> l;
  if (!Ledger::open(dir, Options{}, &l).ok()) ::_exit(2);
  std::mt19937_64 rng(seed);
  while (stop->load() == 0) {
    const int64_t amount = 100'000 + static_cast<int64_t>(rng() % 900'000);  // $0.0001 - $0.001
    const bool solo = rng() % 2 == 0;
    if (l->debit(solo ? "solo" : "alice", amount).ok()) acknowledged[solo ? kSoloOffset : 0] += amount;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // about $0.13/s each for alice and solo
  }
  ::_exit(0);
}

// What the torture knows of one account after its run, to check against the store.
struct TortureTally {
  std::string account;
  int64_t limit = 0;
  int offset = 0;                 // where its acknowledged counters start in the shared page
  std::map<int, int64_t> lost;    // per slot: spend acknowledged but neither flushed nor reported when its host died
};

// The invariants of the fault torture for one account (G1-G3), from the store's global status.
void check_torture_account(const TortureTally& t, const boost::json::object& status, const std::atomic<int64_t>* shared,
                           int slots, const std::vector<int>& dead_slots, const std::set<std::string>& live, int disk_kept_deaths) {
  int64_t acknowledged = 0, acknowledged_dead = 0;
  for (int i = 0; i < slots; ++i) acknowledged += shared[t.offset + i].load();
  for (int i : dead_slots) acknowledged_dead += shared[t.offset + i].load();
  const auto a = Setup::account(status, t.account);
  int64_t live_spent = 0, dead_charged = 0;
  for (const auto& host : a.at("hosts").as_array()) {
    const auto& o = host.as_object();
    const bool mine = live.count(std::string(o.at("incarnation").as_string())) != 0;
    if (mine) live_spent += num(o, "reported_nanousd");  // given back to its use at SIGTERM: leased == reported
    else dead_charged += num(o, "leased_nanousd");
    if (!mine) CHECK(o.at("expired").as_bool());
  }
  // What a death erased belongs to the slot's incarnation: a live one, or one that died for good
  // later (a host that came back with its disk and then died with it).
  int64_t lost_total = 0, lost_dead = 0;
  const std::set<int> dead(dead_slots.begin(), dead_slots.end());
  for (const auto& [at, n] : t.lost) {
    lost_total += n;
    if (dead.count(at) != 0) lost_dead += n;
  }
  std::printf("  %s: %lld nano-USD acknowledged (%lld by dead incarnations), store spent %lld; hosts that came back with "
              "their disk: %lld acknowledged but neither flushed nor reported\n",
              t.account.c_str(), static_cast<long long>(acknowledged), static_cast<long long>(acknowledged_dead),
              static_cast<long long>(num(a, "spent_nanousd")), static_cast<long long>(lost_total));
  INFO(t.account);
  CHECK(lost_total <= disk_kept_deaths * kUsd / 20);  // at most about a refresh interval's spend each
  // No overspend across hosts (G1), but for what a host's death erased from every record (promise 3).
  CHECK(acknowledged <= t.limit + lost_total);
  CHECK(num(a, "spent_nanousd") <= t.limit);
  // Live hosts: exact (nothing doubled, G2); one that came back reports its LMDB record (G3).
  CHECK(live_spent == acknowledged - acknowledged_dead - (lost_total - lost_dead));
  CHECK(dead_charged >= acknowledged_dead - lost_dead);  // dead incarnations: charged in full (G3)
  CHECK(num(a, "spent_nanousd") == live_spent + dead_charged);
}

}  // namespace

// Faults while workers run: a sidecar SIGKILLed and restarted, a whole host dying with its ledger
// directory (segment, store and incarnation gone; it comes back as a new incarnation), the store
// restarted with -m immediate, and the store paused (SIGSTOP/SIGCONT: a partition). Afterwards no
// limit was passed, every dead incarnation's leases expired and stay charged in full, and every live
// host's store spend is exactly what its workers acknowledged. LEDGER_GLOBAL_FAULTS sets the count.
TEST_CASE("faults of hosts and of the store: no overspend, nothing lost, nothing counted twice", "[global][torture]") {
  const char* env = std::getenv("LEDGER_GLOBAL_FAULTS");
  const int faults = env != nullptr ? std::max(1, std::atoi(env)) : 20;
  Setup s;
  constexpr int kHosts = 3;
  const int64_t alice_usd = std::max<int64_t>(30, faults * 3 / 2);  // about 4x what a run spends
  const std::string accounts = torture_accounts(alice_usd);
  std::vector<std::unique_ptr<Host>> hosts;
  std::vector<std::unique_ptr<TempDir>> roots;  // one per incarnation of a host
  auto* shared = static_cast<std::atomic<int64_t>*>(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  auto* stop = reinterpret_cast<std::atomic<int>*>(shared + 500);
  new (stop) std::atomic<int>(0);
  for (int i = 0; i < 2 * kSoloOffset; ++i) new (&shared[i]) std::atomic<int64_t>(0);
  std::vector<pid_t> workers(kHosts, -1);
  std::vector<int> slot(kHosts);  // which acknowledged counter the host's current incarnation writes
  int next_slot = 0;
  std::vector<int> dead_slots;
  TortureTally tallies[2] = {{"alice", alice_usd * kUsd, 0, {}}, {"solo", 2 * kUsd, kSoloOffset, {}}};
  const auto boot = [&](int h) {
    roots.push_back(std::make_unique<TempDir>());
    hosts[h] = std::make_unique<Host>(*roots.back(), "host-" + std::to_string(h), s.pg.uri(), accounts);
    const auto r = hosts[h]->init();
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    hosts[h]->start_sidecar();
    slot[h] = next_slot++;
    REQUIRE(next_slot < kSoloOffset);  // one counter per incarnation and account in the shared page
    workers[h] = start_worker(hosts[h]->dir, &shared[slot[h]], stop, static_cast<uint64_t>(slot[h]) + 1);
  };
  hosts.resize(kHosts);
  for (int h = 0; h < kHosts; ++h) boot(h);
  std::mt19937 rng(20261201);
  std::map<std::string, int> done;
  for (int f = 0; f < faults; ++f) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 400));
    const int h = static_cast<int>(rng() % kHosts);
    switch (rng() % 5) {
      case 0:  // the sidecar dies and comes back; the workers go on
        ::kill(hosts[h]->sidecar, SIGKILL);
        ::waitpid(hosts[h]->sidecar, nullptr, 0);
        hosts[h]->start_sidecar();
        ++done["sidecar SIGKILL"];
        break;
      case 1: {  // the whole host dies with its disk: it comes back as a new incarnation
        ::kill(workers[h], SIGKILL);
        ::waitpid(workers[h], nullptr, 0);
        ::kill(hosts[h]->sidecar, SIGKILL);
        ::waitpid(hosts[h]->sidecar, nullptr, 0);
        hosts[h]->sidecar = -1;
        dead_slots.push_back(slot[h]);
        boot(h);
        ++done["host death"];
        break;
      }
      case 4: {  // the whole host dies (its segment gone, as after a reboot) but its disk survives: it
                 // comes back as the same incarnation and reports what its LMDB record holds
        ::kill(workers[h], SIGKILL);
        ::waitpid(workers[h], nullptr, 0);
        ::kill(hosts[h]->sidecar, SIGKILL);
        ::waitpid(hosts[h]->sidecar, nullptr, 0);
        hosts[h]->sidecar = -1;
        for (auto& t : tallies) t.lost[slot[h]] += unrecorded_spend(*hosts[h], s.pg.uri(), t.account);  // gone with the segment
        REQUIRE(Ledger::destroy_segment(hosts[h]->dir) == Code::kOk);
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 7000));  // sometimes past the lease ttl (5 s)
        const auto r = hosts[h]->init();
        INFO(r.err);
        REQUIRE(r.exit_code == 0);
        hosts[h]->start_sidecar();
        workers[h] = start_worker(hosts[h]->dir, &shared[slot[h]], stop, static_cast<uint64_t>(f) * 31 + 7);
        ++done["host death, disk kept"];
        break;
      }
      case 2:
        s.pg.restart_immediate();
        ++done["store restart -m immediate"];
        break;
      default:
        s.pg.pause();
        std::this_thread::sleep_for(std::chrono::milliseconds(500 + rng() % 1500));
        s.pg.resume();
        ++done["store partition"];
    }
  }
  stop->store(1);
  for (pid_t w : workers) ::waitpid(w, nullptr, 0);
  for (auto& h : hosts) CHECK(h->stop_sidecar() == 0);  // final reports of the live incarnations
  // Long enough for every lease of a dead incarnation to lapse, then expire them.
  std::this_thread::sleep_for(std::chrono::seconds(6));
  global::PgConnection pg(global::PgOptions{s.pg.uri(), PgServer::password()});
  global::PgError e;
  uint64_t expired = 0;
  REQUIRE(global::expire_leases(pg, &expired, &e));
  global::PgResult r;
  REQUIRE(pg.exec("SELECT count(*) FROM ledger_leases WHERE NOT expired AND expires_at < now()", {}, &r, &e));
  CHECK(r.rows[0][0].value_or("?") == "0");  // no lease left active without an owner once the ttl passed
  std::set<std::string> live;  // the incarnations still running at the end
  for (const auto& h : hosts) live.insert(ledger_test::read_file(h->dir + "/ledger.incarnation").substr(0, 32));
  std::string summary;
  for (const auto& [kind, n] : done) summary += kind + " x" + std::to_string(n) + ", ";
  std::printf("global fault torture: %s\n", summary.c_str());
  INFO(summary);
  const auto status = s.status(*hosts[0]);
  for (const auto& t : tallies) check_torture_account(t, status, shared, next_slot, dead_slots, live, done["host death, disk kept"]);
}

namespace {
// A clock the test moves (read by the lease worker's thread too, hence atomic).
struct AtomicClock {
  std::atomic<int64_t> now_ms{0};
  static int64_t read(void* self) { return static_cast<AtomicClock*>(self)->now_ms.load(); }
};
}  // namespace

// The lease worker in this process, on a ledger whose clock the test drives across midnight UTC:
// the next day's lease is taken before the boundary, so debits right after midnight are admitted
// (no wave of denials), and each day's spend is reported into its own window.
TEST_CASE("a day boundary under load: no denial burst, and each day's spend lands in its own window", "[global]") {
  Setup s;
  TempDir root;
  Host h(root, "clock-host", s.pg.uri(), R"([{"id": "org", "limit_usd": "100", "period": "monthly"},
    {"id": "alice", "parent": "org", "limit_usd": "10", "period": "daily"}])", 50);
  REQUIRE(h.init().exit_code == 0);
  std::string error;
  const auto config = admin::load_config(h.config, &error);
  REQUIRE(config.has_value());
  AtomicClock clock;
  const int64_t midnight_ms = ledger_test::utc(2026, 12, 2) * 1000;
  clock.now_ms = midnight_ms - 3000;
  Options options;
  options.admin = true;
  options.clock = Clock{&AtomicClock::read, &clock};
  std::unique_ptr<Ledger> l;
  REQUIRE(Ledger::open(h.dir, options, &l) == Code::kOk);
  global::LeaseWorker worker(*l);
  worker.start(std::make_shared<const admin::Config>(*config));
  int64_t before = 0, after = 0, denied_no_lease = 0, denied_exhausted = 0;
  const int64_t tomorrow = period_index(Period::kDaily, midnight_ms / 1000);
  // A denial after midnight is either the boundary's fault (no live lease for the new day: the
  // burst this test rules out) or a slice spent before the worker's next cycle topped it up (a
  // machine slower than the spend rate, e.g. under TSan): told apart by the lease words.
  const int64_t month = period_index(Period::kMonthly, midnight_ms / 1000);
  const auto count_denial = [&](Code code) {  // by the level that denied: alice (daily) or org (monthly)
    WindowUsage u;
    const bool parent = code == Code::kDeniedParentOverBudget;
    const bool live = l->window_usage(parent ? "org" : "alice", parent ? month : tomorrow, &u).ok() && u.lease_limit_nanousd > 0 &&
                      u.lease_deadline_ms > Ledger::monotonic_ms();
    ++(live && u.used_nanousd + 100'000 > u.lease_limit_nanousd ? denied_exhausted : denied_no_lease);
  };
  // Until the first lease is there (the worker's first cycles), then across midnight at 50 fake ms
  // per real ms: each real millisecond, the clock moves on and alice spends 0.0001 USD.
  for (int i = 0; i < 2000 && !l->debit("alice", 0).ok(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const auto spend_until = [&](int64_t until_ms) {
    while (clock.now_ms.load() < until_ms) {
      const bool past = clock.now_ms.load() >= midnight_ms;
      const Status status = l->debit("alice", 100'000);
      if (status.ok()) (past ? after : before) += 100'000;
      else if (past) count_denial(status.code());
      std::this_thread::sleep_for(std::chrono::microseconds(1000));
      clock.now_ms += 10;
    }
  };
  spend_until(midnight_ms - 1500);
  // Within the lead time before the boundary the worker takes tomorrow's slices: wait for them (a
  // slow machine may need several of its cycles), then cross midnight.
  WindowUsage next;
  for (int i = 0; i < 2000 && (!l->window_usage("alice", tomorrow, &next).ok() || next.lease_limit_nanousd == 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(next.lease_limit_nanousd > 0);  // in place before the boundary
  spend_until(midnight_ms + 3000);
  worker.stop();  // a last report
  INFO("before " << before << " after " << after << " denied after midnight: no lease " << denied_no_lease
                  << ", slice spent " << denied_exhausted);
  CHECK(before > 0);
  CHECK(after > 0);
  CHECK(denied_no_lease == 0);  // the next day's lease was in place before midnight
  global::PgConnection pg(global::PgOptions{s.pg.uri(), PgServer::password()});
  global::PgResult r;
  global::PgError e;
  const int64_t day = period_index(Period::kDaily, midnight_ms / 1000 - 1);
  REQUIRE(pg.exec("SELECT window_index, spent_nanousd FROM ledger_leases WHERE account = 'alice' ORDER BY window_index", {}, &r, &e));
  std::map<int64_t, int64_t> spent;
  for (const auto& row : r.rows) spent[std::stoll(*row[0])] += std::stoll(*row[1]);
  CHECK(spent[day] == before);     // each window's spend in its own window
  CHECK(spent[day + 1] == after);
}
