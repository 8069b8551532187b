// global_bench — global budgets across hosts (DESIGN 11) measured against a private PostgreSQL 15
// (tests/support/private_pg.hpp: a Unix socket in a temp dir, scram password, fsync off), peers side
// by side in one run:
//
//   1. store load   (table) H = 4 hosts x C = 0..4 busy 3-level chains (user-i -> team-i -> org), at
//                   refresh_interval_ms 100 and 500: transactions per second at the store
//                   (xact_commit + xact_rollback deltas of the hosts' database in pg_stat_database
//                   over a window of steady spending) against the target H x C / refresh interval.
//                   Each busy chain on each host debits 100,000 nano-USD ($0.0001) every ms ($0.1/s);
//                   the limits are sized so that the spend rate, not the minimum slice, sizes the
//                   slices (the case that costs the store most).
//   2. round trips  (Google Benchmark) grant() of protocol.hpp for a 3-level chain, report() of its
//                   3 leases, and a bare SELECT 1 (the transport's floor), p50/p99 per call, on one
//                   connection over the Unix socket.
//   3. drain        (table) 4 hosts share org $2 -> team $1.5 -> alice $1 (daily); host-0 debits alice
//                   $0.0001 every ms, the 3 others every 100 ms, at refresh 100 and 500 ms. At host-0's
//                   denials (a snapshot at most every 50 ms): the budget stranded on the idle hosts
//                   (what the store has leased to them less what their segments used) in nano-USD and
//                   % of alice's limit (target <= 1 %), and what the store had not leased yet; shown
//                   at its first denial (the ramp-up of its slices), at its first denial once less
//                   than 5 % of the limit was unleased (the drain), and at the most stranded. Denials
//                   while the store still had >= 5 % to lease are counted by cause (the host's slice
//                   spent before its next cycle, or no live lease).
//   4. the peer     (Google Benchmark, 1 and 2 threads) what a user would write instead: per request
//                   one transaction BEGIN; UPDATE budgets SET spent = spent + $1 WHERE id = ANY(chain)
//                   AND spent + $1 <= limit; COMMIT if it changed all 3 rows, else ROLLBACK; against
//                   our admission: authorize + commit on the 3-level chain in the host's shared-memory
//                   segment, admitting against the leases its sidecar holds from the same PostgreSQL.
//                   Admitted requests/s and p50 latency. Our side does more per request (a hold and
//                   its settlement, where the peer only debits), and the peer runs on a server with
//                   fsync off: both favour the peer.
//
// Why real ledger-sidecar processes (spawned like flush_gaps does, one ledger directory, segment,
// config and host_id per simulated host, as tests/global/global_test.cpp's Host) rather than
// LeaseWorker in this process: the store load and the drain are properties of what a deployment
// runs, i.e. the sidecar binary with its config parsing, its own process, its own connection, its
// tick (flush, reclaim) competing for the CPU with its lease thread, and SIGTERM's last report. A
// process per host is also what makes each host's store connection, claim of host_id and
// incarnation separate, as on separate machines. The workers are threads of this program, each
// host's threads sharing one worker-role Ledger handle on that host's segment (as worker processes
// would); the bench reads the segments' window_usage and the store directly for the drain's
// snapshots. Only the round trips (2) call protocol.hpp in this process: that is the thing measured.
//
//   global_bench [--sidecar PATH] [--ledgerctl PATH] [--parts load,drain] [--window-s N]
//                [Google Benchmark flags, e.g. --benchmark_filter=Peer]
// --parts chooses the tables (default: load,drain; "none" for the Google Benchmarks only;
// --benchmark_filter='^$' for the tables only). The Google Benchmarks run first, while the peer's
// host has its sidecar leasing at refresh 100 ms (about 40 store transactions/s in the background,
// as a live deployment would have). The store's password is random per run, passed to the sidecars
// in LEDGER_BENCH_PG_PASSWORD, never printed. Money is integer nano-USD everywhere.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "global/pg.hpp"
#include "global/protocol.hpp"
#include "ledger/ledger.hpp"
#include "ledger/period.hpp"
#include "private_pg.hpp"

extern char** environ;

namespace {

using namespace ledger;
using Steady = std::chrono::steady_clock;
using global::PgConnection;
using global::PgError;
using global::PgOptions;
using global::PgResult;

constexpr const char* kPasswordEnv = "LEDGER_BENCH_PG_PASSWORD";
constexpr int kHosts = 4;

struct Args {
  std::string sidecar = SIDECAR_PATH, ledgerctl = LEDGERCTL_PATH;
  bool load = true, drain = true;
  int window_s = 15;
};
Args g_args;
ledger_support::PrivatePg* g_pg = nullptr;
std::string g_tmp;  // this run's temp dir (configs, ledger dirs, logs)

// Unwinds (the sidecars are stopped and the server removed on the way out); main reports it.
[[noreturn]] void fail(const std::string& message) { throw std::runtime_error(message); }

std::string random_hex(size_t bytes) {
  std::vector<unsigned char> b(bytes);
  if (::getentropy(b.data(), b.size()) != 0) fail("getentropy failed");
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) s += std::string{kDigits[c >> 4], kDigits[c & 15]};
  return s;
}

PgOptions store(const std::string& db) { return PgOptions{g_pg->uri(db), g_pg->store_password()}; }

// The bench's own connections, one per database (the `ledger` one is never a hosts' database, so
// what the bench asks there is not counted in the hosts' transactions).
std::mutex g_admin_mutex;
std::map<std::string, std::unique_ptr<PgConnection>> g_admin;

PgResult admin_exec(const std::string& sql, const std::vector<std::string>& params = {}, const std::string& db = "ledger") {
  std::lock_guard<std::mutex> lock(g_admin_mutex);
  auto& c = g_admin[db];
  if (!c) c = std::make_unique<PgConnection>(store(db));
  PgResult r;
  PgError e;
  if (!c->exec(sql, params, &r, &e)) fail("the store: " + e.message);
  return r;
}

void create_database(const std::string& name) { (void)admin_exec("CREATE DATABASE " + name); }
void close_connection(const std::string& db) {
  std::lock_guard<std::mutex> lock(g_admin_mutex);
  g_admin.erase(db);
}

int64_t i64(const std::optional<std::string>& v) { return v ? std::stoll(*v) : 0; }
std::string period_text(Period p) { return std::to_string(static_cast<int>(p)); }
int64_t now_s() { return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count(); }

using bench::spawn;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// ---- a simulated host: its ledger directory, config, sidecar, and the workers' Ledger handle ----
struct SimHost {
  std::string name, dir, config, log;
  pid_t sidecar = -1;
  std::unique_ptr<Ledger> ledger;

  SimHost(const std::string& host_id, const std::string& db, const std::string& accounts, int refresh_ms,
          const std::string& extra = "")
      : name(host_id), dir(g_tmp + "/" + db + "-" + host_id), config(dir + ".json"), log(dir + ".log") {
    std::ofstream(config) << R"({"ledger": {"dir": ")" << dir << R"(", "max_accounts": 64},)"
                          << R"( "global": {"store": ")" << g_pg->uri(db) << R"(", "store_password_env": ")" << kPasswordEnv
                          << R"(", "host_id": ")" << host_id << R"(", "lease_ttl_s": 30, "refresh_interval_ms": )" << refresh_ms
                          << "}," << extra << R"( "accounts": )" << accounts << "}\n";
  }
  ~SimHost() {
    stop();
    ledger.reset();
    (void)Ledger::destroy_segment(dir);
  }
  void init() {
    const pid_t pid = spawn({g_args.ledgerctl, "--config", config, "init"}, log);
    int status = 0;
    if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
      fail("ledgerctl init of " + name + " failed:\n" + read_file(log));
  }
  void start() {
    sidecar = spawn({g_args.sidecar, "--config", config}, log);
    if (sidecar < 0) fail("cannot start " + g_args.sidecar);
    Options options;
    options.create_if_missing = false;
    if (const Status s = Ledger::open(dir, options, &ledger); !s.ok()) fail("Ledger::open(" + dir + "): " + std::string(s.message()));
  }
  // SIGTERM: the sidecar reports a last time and gives back what is unused.
  void stop() {
    if (sidecar <= 0) return;
    ::kill(sidecar, SIGTERM);
    int status = 0;
    ::waitpid(sidecar, &status, 0);
    sidecar = -1;
  }
  WindowUsage usage(const std::string& account, Period period) const {
    WindowUsage u;
    (void)ledger->window_usage(account, period_index(period, now_s()), &u);
    return u;
  }
  // Until the account has a live lease on this host (the sidecar's first cycles).
  void wait_for_lease(const std::string& account, Period period) const {
    for (int i = 0; i < 2000; ++i) {
      const WindowUsage u = usage(account, period);
      if (u.lease_limit_nanousd > 0 && u.lease_deadline_ms > Ledger::monotonic_ms()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    fail("no lease for " + account + " on " + name + " after 10 s:\n" + read_file(log));
  }
};

// Debits `account` `amount` every `every` (paced: a late tick does not bunch up) until stopped.
struct Spender {
  std::atomic<uint64_t> admitted{0}, denied{0};
  std::atomic<int64_t> acknowledged{0};
  std::atomic<bool> stopping{false};
  std::thread thread;
  Spender(Ledger* l, std::string account, int64_t amount, std::chrono::microseconds every) {
    thread = std::thread([=, this] {
      for (auto next = Steady::now(); !stopping.load(); next += every) {
        if (l->debit(account, amount).ok()) {
          ++admitted;
          acknowledged += amount;
        } else {
          ++denied;
        }
        std::this_thread::sleep_until(next + every);
      }
    });
  }
  ~Spender() { stop(); }
  void stop() {
    stopping = true;
    if (thread.joinable()) thread.join();
  }
};

// ---- 1. store load ------------------------------------------------------------------------------
struct XactCount {
  int64_t commits = 0, rollbacks = 0;
};
XactCount xacts(const std::string& db) {
  const PgResult r = admin_exec("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1", {db});
  if (r.rows.empty()) fail("no pg_stat_database row for " + db);
  return XactCount{i64(r.rows[0][0]), i64(r.rows[0][1])};
}
int64_t store_now_ms() { return i64(admin_exec("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT").rows[0][0]); }

void store_load() {
  std::printf("\n== 1. store load at steady state: %d hosts x C busy 3-level chains (user-i -> team-i -> org), each chain\n"
              "   debiting $0.0001 every ms on every host; window %d s after a 4 s warm-up; xacts = xact_commit +\n"
              "   xact_rollback of the hosts' database (pg_stat_database; backends flush it about once a second);\n"
              "   lease changes = grants + give-backs applied (ledger_requests rows in the window); other xacts = the rest\n"
              "   (per host and refresh interval: the cycle's fixed statements); denials = the busy chains' in the window\n",
              kHosts, g_args.window_s);
  std::printf("%-10s %-3s %-11s %-13s %-9s %-16s %-15s %-22s %-11s %s\n", "refresh_ms", "C", "target_tx/s", "measured_tx/s", "x_target",
              "xacts/host/cycle", "lease_changes/s", "other_xacts/host/cycle", "rollbacks/s", "denials");
  std::fflush(stdout);
  for (const int refresh_ms : {100, 500}) {
    for (int chains = 0; chains <= 4; ++chains) {
      const std::string db = "load_r" + std::to_string(refresh_ms) + "_c" + std::to_string(chains);
      create_database(db);
      // org $1000 monthly; per chain team-i $50 monthly, user-i $20 daily: a $0.1/s chain on 4 hosts
      // spends $0.4/s, so the rate (not the minimum slice, a thousandth of the limit) sizes the slices.
      std::string accounts = R"([{"id": "org", "limit_usd": "1000", "period": "monthly"})";
      for (int c = 0; c < std::max(chains, 1); ++c) {
        const std::string i = std::to_string(c);
        accounts += R"(, {"id": "team-)" + i + R"(", "parent": "org", "limit_usd": "50", "period": "monthly"})";
        accounts += R"(, {"id": "user-)" + i + R"(", "parent": "team-)" + i + R"(", "limit_usd": "20", "period": "daily"})";
      }
      accounts += "]";
      std::vector<std::unique_ptr<SimHost>> hosts;
      for (int h = 0; h < kHosts; ++h) {
        hosts.push_back(std::make_unique<SimHost>("host-" + std::to_string(h), db, accounts, refresh_ms));
        hosts.back()->init();
      }
      for (auto& h : hosts) h->start();
      for (auto& h : hosts) h->wait_for_lease("user-0", Period::kDaily);
      std::vector<std::unique_ptr<Spender>> spenders;
      for (auto& h : hosts)
        for (int c = 0; c < chains; ++c)
          spenders.push_back(std::make_unique<Spender>(h->ledger.get(), "user-" + std::to_string(c), 100'000, std::chrono::microseconds(1000)));
      std::this_thread::sleep_for(std::chrono::seconds(4));
      uint64_t denied_before = 0;
      for (auto& s : spenders) denied_before += s->denied.load();
      const XactCount x0 = xacts(db);
      const int64_t s0 = store_now_ms();
      const auto t0 = Steady::now();
      std::this_thread::sleep_for(std::chrono::seconds(g_args.window_s));
      const XactCount x1 = xacts(db);
      const int64_t s1 = store_now_ms();
      const double seconds = std::chrono::duration<double>(Steady::now() - t0).count();
      uint64_t denied = 0;
      for (auto& s : spenders) denied += s->denied.load();
      const int64_t changes =
          i64(admin_exec("SELECT count(*) FROM ledger_requests WHERE at >= to_timestamp($1::double precision / 1000) AND "
                         "at < to_timestamp($2::double precision / 1000)",
                         {std::to_string(s0), std::to_string(s1)}, db)
                  .rows[0][0]);
      for (auto& s : spenders) s->stop();
      for (auto& h : hosts) h->stop();
      close_connection(db);
      const double tx = static_cast<double>((x1.commits - x0.commits) + (x1.rollbacks - x0.rollbacks)) / seconds;
      const double target = kHosts * chains * 1000.0 / refresh_ms;
      const double per_host_cycle = tx / (kHosts * 1000.0 / refresh_ms);
      char ratio[32] = "-";
      if (target > 0) std::snprintf(ratio, sizeof ratio, "%.2f", tx / target);
      const double changes_per_s = static_cast<double>(changes) / seconds;
      std::printf("%-10d %-3d %-11.1f %-13.1f %-9s %-16.2f %-15.1f %-22.2f %-11.1f %llu\n", refresh_ms, chains, target, tx, ratio,
                  per_host_cycle, changes_per_s, (tx - changes_per_s) / (kHosts * 1000.0 / refresh_ms),
                  static_cast<double>(x1.rollbacks - x0.rollbacks) / seconds,
                  static_cast<unsigned long long>(denied - denied_before));
      std::fflush(stdout);
    }
  }
}

// ---- 3. drain fairness --------------------------------------------------------------------------
constexpr const char* kDrainChain = R"([{"id": "org", "limit_usd": "2", "period": "monthly"},
  {"id": "team", "parent": "org", "limit_usd": "1.5", "period": "monthly"},
  {"id": "alice", "parent": "team", "limit_usd": "1", "period": "daily"}])";
constexpr int64_t kAliceLimit = 1'000'000'000;

struct DrainSnapshot {
  bool taken = false;
  double t_s = 0;
  int64_t window_granted = 0, used_all = 0, stranded = 0, idle_local_left = 0, busy_store_left = 0, busy_local_left = 0;
  int64_t unleased() const { return kAliceLimit - window_granted; }
};

DrainSnapshot snapshot(const std::string& db, const std::vector<std::unique_ptr<SimHost>>& hosts, double t_s) {
  DrainSnapshot s;
  s.taken = true;
  s.t_s = t_s;
  const int64_t window = period_index(Period::kDaily, now_s());
  // One statement: one snapshot of the store (each lease row and its window's total).
  const PgResult r = admin_exec(
      "SELECT l.host_id, l.granted_nanousd, w.granted_nanousd FROM ledger_leases l JOIN ledger_windows w "
      "ON w.account = l.account AND w.period = l.period AND w.window_index = l.window_index "
      "WHERE l.account = 'alice' AND l.period = $1 AND l.window_index = $2",
      {period_text(Period::kDaily), std::to_string(window)}, db);
  std::map<std::string, int64_t> granted;  // host_id -> the store's lease
  for (const auto& row : r.rows) {
    const std::string owner = row[0].value_or("");
    granted[owner.substr(0, owner.find('/'))] += i64(row[1]);
    s.window_granted = i64(row[2]);
  }
  for (size_t h = 0; h < hosts.size(); ++h) {
    const WindowUsage u = hosts[h]->usage("alice", Period::kDaily);
    s.used_all += u.used_nanousd;
    const int64_t left = std::max<int64_t>(0, granted[hosts[h]->name] - u.used_nanousd);
    const int64_t local_left = std::max<int64_t>(0, u.lease_limit_nanousd - u.used_nanousd);
    if (h == 0) {
      s.busy_store_left = left;
      s.busy_local_left = local_left;
    } else {
      s.stranded += left;
      s.idle_local_left += local_left;
    }
  }
  return s;
}

double pct(int64_t v) { return 100.0 * static_cast<double>(v) / static_cast<double>(kAliceLimit); }

void print_snapshot(int refresh_ms, const char* what, const DrainSnapshot& s) {
  if (!s.taken) {
    std::printf("%-10d %-24s (none)\n", refresh_ms, what);
    return;
  }
  std::printf("%-10d %-24s %-7.2f %-8.2f %-11lld %-10.3f %-11lld %-10.3f %-15lld %-15lld %lld\n", refresh_ms, what, s.t_s,
              pct(s.used_all), static_cast<long long>(s.stranded), pct(s.stranded), static_cast<long long>(s.unleased()),
              pct(s.unleased()), static_cast<long long>(s.idle_local_left), static_cast<long long>(s.busy_store_left),
              static_cast<long long>(s.busy_local_left));
}

void drain() {
  constexpr int64_t kAmount = 100'000;
  constexpr int64_t kDrainPhase = kAliceLimit / 20;  // "drained": less than 5 % of the limit unleased
  std::printf("\n== 3. drain fairness: 4 hosts share alice $1 (daily; team $1.5, org $2); host-0 debits $0.0001 every ms,\n"
              "   host-1..3 every 100 ms, until host-0 is denied for max(2 s, 6 refresh intervals) in a row. At host-0's\n"
              "   denials (a snapshot at most every 50 ms): stranded = what the store leased to host-1..3 less what their\n"
              "   segments used (target <= 1 %% of the limit); unleased = the limit less the store's window total; busy_*\n"
              "   = host-0's lease left by the store's record and by its segment's. Rows: its first denial; its first\n"
              "   denial with < 5 %% unleased (the drain); the snapshot with the most stranded; after the drain.\n");
  std::printf("%-10s %-24s %-7s %-8s %-11s %-10s %-11s %-10s %-15s %-15s %s\n", "refresh_ms", "host-0 denial", "t_s", "used_%",
              "stranded", "stranded_%", "unleased", "unleased_%", "idle_local_left", "busy_store_left", "busy_local_left");
  std::fflush(stdout);
  struct Summary {
    int refresh_ms;
    double last_admission_s, drain_to_last_admission_s;
    int64_t acknowledged, spent;
    uint64_t denied, early_slice_spent, early_no_live_lease;
  };
  std::vector<Summary> summaries;
  for (const int refresh_ms : {100, 500}) {
    const std::string db = "drain_r" + std::to_string(refresh_ms);
    create_database(db);
    std::vector<std::unique_ptr<SimHost>> hosts;
    for (int h = 0; h < kHosts; ++h) {
      hosts.push_back(std::make_unique<SimHost>("host-" + std::to_string(h), db, kDrainChain, refresh_ms));
      hosts.back()->init();
    }
    for (auto& h : hosts) h->start();
    for (auto& h : hosts) h->wait_for_lease("alice", Period::kDaily);
    std::vector<std::unique_ptr<Spender>> idle;
    for (int h = 1; h < kHosts; ++h)
      idle.push_back(std::make_unique<Spender>(hosts[h]->ledger.get(), "alice", kAmount, std::chrono::microseconds(100'000)));
    // host-0 on this thread: it takes the snapshots at its denials.
    DrainSnapshot first, drained, most, last;
    const auto started = Steady::now();
    const auto given_up_after = std::chrono::milliseconds(std::max(2000, 6 * refresh_ms));
    auto last_admission = started, last_snapshot = started - std::chrono::seconds(1);
    int64_t busy_acknowledged = 0;
    Summary sum{refresh_ms, 0, 0, 0, 0, 0, 0, 0};
    for (auto next = started; Steady::now() - started < std::chrono::seconds(60); next += std::chrono::milliseconds(1)) {
      const auto now = Steady::now();
      if (hosts[0]->ledger->debit("alice", kAmount).ok()) {
        busy_acknowledged += kAmount;
        last_admission = now;
      } else {
        ++sum.denied;
        const WindowUsage u = hosts[0]->usage("alice", Period::kDaily);  // why: its slice spent, or no live lease
        if (now - last_snapshot >= std::chrono::milliseconds(50)) {
          last = snapshot(db, hosts, std::chrono::duration<double>(now - started).count());
          last_snapshot = now;
          if (!first.taken) first = last;
          if (!drained.taken && last.unleased() < kDrainPhase) drained = last;
          if (!most.taken || last.stranded > most.stranded) most = last;
        }
        if (last.unleased() >= kDrainPhase) {  // denied while the store had budget to lease
          const bool live = u.lease_limit_nanousd > 0 && u.lease_deadline_ms > Ledger::monotonic_ms();
          ++(live ? sum.early_slice_spent : sum.early_no_live_lease);
        }
        if (now - last_admission >= given_up_after) break;  // drained: nothing more comes to host-0
      }
      std::this_thread::sleep_until(next + std::chrono::milliseconds(1));
    }
    sum.last_admission_s = std::chrono::duration<double>(last_admission - started).count();
    sum.drain_to_last_admission_s = drained.taken ? std::max(0.0, sum.last_admission_s - drained.t_s) : 0;
    const DrainSnapshot end = snapshot(db, hosts, std::chrono::duration<double>(Steady::now() - started).count());
    sum.acknowledged = busy_acknowledged;
    for (auto& s : idle) {
      s->stop();
      sum.acknowledged += s->acknowledged.load();
    }
    for (auto& h : hosts) h->stop();
    const PgResult r = admin_exec("SELECT coalesce(sum(spent_nanousd), 0) FROM ledger_leases WHERE account = 'alice' AND window_index = $1",
                                  {std::to_string(period_index(Period::kDaily, now_s()))}, db);
    sum.spent = i64(r.rows[0][0]);
    close_connection(db);
    print_snapshot(refresh_ms, "first", first);
    print_snapshot(refresh_ms, "first, <5% unleased", drained);
    print_snapshot(refresh_ms, "most stranded", most);
    print_snapshot(refresh_ms, "end (drained)", end);
    std::fflush(stdout);
    summaries.push_back(sum);
  }
  std::printf("%-10s %-17s %-18s %-23s %-15s %-26s %-27s %s\n", "refresh_ms", "last_admission_s", "acknowledged(all)",
              "store_spent_after_stop", "host-0_denials", ">=5%_unleased:slice_spent", ">=5%_unleased:no_live_lease",
              "drain_to_last_admission_s");
  for (const auto& s : summaries)
    std::printf("%-10d %-17.2f %-18lld %-23lld %-15llu %-26llu %-27llu %.2f\n", s.refresh_ms, s.last_admission_s,
                static_cast<long long>(s.acknowledged), static_cast<long long>(s.spent), static_cast<unsigned long long>(s.denied),
                static_cast<unsigned long long>(s.early_slice_spent), static_cast<unsigned long long>(s.early_no_live_lease),
                s.drain_to_last_admission_s);
  std::fflush(stdout);
}

// ---- 2. round trips of the protocol -------------------------------------------------------------
const std::string kRttDb = "bench_rtt";

std::vector<global::LevelAmount> rtt_levels(int64_t amount) {
  const int64_t now = now_s();
  return {{"user", Period::kDaily, period_index(Period::kDaily, now), amount},
          {"team", Period::kMonthly, period_index(Period::kMonthly, now), amount},
          {"org", Period::kMonthly, period_index(Period::kMonthly, now), amount}};
}

void prepare_rtt_db() {
  create_database(kRttDb);
  PgConnection pg(store(kRttDb));
  PgError e;
  int changed = 0;
  const int64_t huge = kAmountNanoUsdMax / 2;
  std::vector<global::GlobalAccount> accounts(3);
  accounts[0].id = "org", accounts[0].period = Period::kMonthly;
  accounts[1].id = "team", accounts[1].parent = "org", accounts[1].period = Period::kMonthly;
  accounts[2].id = "user", accounts[2].parent = "team", accounts[2].period = Period::kDaily;
  for (auto& a : accounts) a.limit_nanousd = huge;
  if (!global::ensure_schema(pg, &e) || !global::publish_accounts(pg, accounts, &changed, &e))
    fail("the store (round trips): " + e.message);
}

// Per-call wall time in µs: p50 and p99 counters.
void latency_counters(benchmark::State& state, std::vector<double>& us, bool average_over_threads = false) {
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  const auto flags = average_over_threads ? benchmark::Counter::kAvgThreads : benchmark::Counter::kDefaults;
  state.counters["p50_us"] = benchmark::Counter(us[us.size() / 2], flags);
  state.counters["p99_us"] = benchmark::Counter(us[std::min(us.size() - 1, us.size() * 99 / 100)], flags);
}

template <class Fn>
void timed_calls(benchmark::State& state, Fn&& call) {
  std::vector<double> us;
  us.reserve(static_cast<size_t>(state.max_iterations));
  uint64_t failures = 0;
  for (auto _ : state) {
    const auto t0 = Steady::now();
    if (!call()) ++failures;
    us.push_back(std::chrono::duration<double, std::micro>(Steady::now() - t0).count());
  }
  latency_counters(state, us);
  state.counters["failures"] = static_cast<double>(failures);
}

void BM_StoreSelect1(benchmark::State& state) {
  PgConnection pg(store(kRttDb));
  PgResult r;
  PgError e;
  if (!pg.exec("SELECT 1", {}, &r, &e)) state.SkipWithError(e.message.c_str());
  timed_calls(state, [&] { return pg.exec("SELECT 1", {}, &r, &e); });
}
BENCHMARK(BM_StoreSelect1)->Iterations(3000)->Unit(benchmark::kMicrosecond);

void BM_StoreGrant3Levels(benchmark::State& state) {
  PgConnection pg(store(kRttDb));
  const std::string host = "rtt-host/" + random_hex(16);
  const auto levels = rtt_levels(1000);
  uint64_t n = 0;
  timed_calls(state, [&] {
    global::GrantOutcome outcome = global::GrantOutcome::kDenied;
    std::string denied_at;
    PgError e;
    return global::grant(pg, host, host + ":" + std::to_string(++n), levels, 30, &outcome, &denied_at, &e) &&
           outcome == global::GrantOutcome::kGranted;
  });
}
BENCHMARK(BM_StoreGrant3Levels)->Iterations(3000)->Unit(benchmark::kMicrosecond);

void BM_StoreReport3Leases(benchmark::State& state) {
  PgConnection pg(store(kRttDb));
  const std::string host = "rtt-report/" + random_hex(16);
  global::GrantOutcome outcome = global::GrantOutcome::kDenied;
  std::string denied_at;
  PgError e;
  if (!global::grant(pg, host, host + ":setup", rtt_levels(int64_t{1} << 40), 30, &outcome, &denied_at, &e) ||
      outcome != global::GrantOutcome::kGranted)
    state.SkipWithError("the setup grant failed");
  int64_t seq = 0;
  timed_calls(state, [&] {
    ++seq;
    std::vector<global::Usage> usage;
    for (const auto& l : rtt_levels(0)) usage.push_back(global::Usage{l.account, l.period, l.window, seq * 1000, seq * 1000});
    return global::report(pg, host, seq, usage, 30, &e);
  });
}
BENCHMARK(BM_StoreReport3Leases)->Iterations(3000)->Unit(benchmark::kMicrosecond);

// ---- 4. the peer: a conditional UPDATE per request, against our admission ----------------------
const std::string kPeerDb = "bench_peer";
std::unique_ptr<SimHost> g_peer_host;  // our side: a host whose sidecar leases from kPeerDb

void prepare_peer() {
  create_database(kPeerDb);
  const int64_t limit = 1'000'000 * int64_t{1'000'000'000};  // $1,000,000: no denial within the run, either side
  (void)admin_exec("CREATE TABLE budgets (id TEXT PRIMARY KEY, limit_nanousd BIGINT NOT NULL, spent_nanousd BIGINT NOT NULL DEFAULT 0)", {},
                   kPeerDb);
  (void)admin_exec("INSERT INTO budgets (id, limit_nanousd) VALUES ('org', $1), ('team', $1), ('user', $1)", {std::to_string(limit)},
                   kPeerDb);
  g_peer_host = std::make_unique<SimHost>(
      "peer-host", kPeerDb,
      R"([{"id": "org", "limit_usd": "1000000", "period": "monthly"},
          {"id": "team", "parent": "org", "limit_usd": "1000000", "period": "monthly"},
          {"id": "user", "parent": "team", "limit_usd": "1000000", "period": "daily"}])",
      100, R"( "prices": {"openai/gpt-4o-mini": {"prompt_usd_per_mtok": "0.15", "completion_usd_per_mtok": "0.6"}},)");
  g_peer_host->init();
  g_peer_host->start();
  g_peer_host->wait_for_lease("user", Period::kDaily);
}

void BM_PeerPgConditionalUpdate(benchmark::State& state) {
  PgConnection pg(store(kPeerDb));
  PgResult r;
  PgError e;
  if (!pg.exec("SELECT 1", {}, &r, &e)) state.SkipWithError(e.message.c_str());  // connected before the clock starts
  std::vector<double> us;
  uint64_t denied = 0;
  for (auto _ : state) {
    const auto t0 = Steady::now();
    bool admitted = false;
    (void)pg.transaction(
        [&](PgConnection& c, PgError* error) {
          PgResult u;
          if (!c.exec("UPDATE budgets SET spent_nanousd = spent_nanousd + $1 WHERE id = ANY($2::text[]) "
                      "AND spent_nanousd + $1 <= limit_nanousd",
                      {"1000", "{user,team,org}"}, &u, error))
            return false;
          admitted = u.affected == 3;
          return admitted;  // all 3 levels or none: ROLLBACK otherwise
        },
        &e);
    us.push_back(std::chrono::duration<double, std::micro>(Steady::now() - t0).count());
    if (!admitted) ++denied;
  }
  state.SetItemsProcessed(state.iterations());
  latency_counters(state, us, true);
  state.counters["denied"] = static_cast<double>(denied);
}
BENCHMARK(BM_PeerPgConditionalUpdate)->MinTime(2.0)->UseRealTime()->Threads(1)->Threads(2)->Unit(benchmark::kMicrosecond);

// authorize (policy + a hold on the 3-level chain, against this host's leases) + commit, timed in
// batches of bench::kBatch with rdtscp (a single call is too short for the clock).
void BM_LedgerAuthorizeCommit(benchmark::State& state) {
  Ledger& l = *g_peer_host->ledger;
  std::vector<uint64_t> ticks;
  ticks.reserve(1 << 20);
  uint64_t denied = 0;
  unsigned aux = 0;
  for (auto _ : state) {
    const uint64_t a = __rdtscp(&aux);
    for (int i = 0; i < bench::kBatch; ++i) {
      ReservationId id = 0;
      std::string_view chosen;
      if (l.authorize("user", "openai/gpt-4o-mini", 1000, 60, &chosen, &id).ok()) (void)l.commit(id, 900);
      else ++denied;
    }
    const uint64_t b = __rdtscp(&aux);
    ticks.push_back(b - a);
  }
  state.SetItemsProcessed(state.iterations() * bench::kBatch);
  if (!ticks.empty()) {
    std::sort(ticks.begin(), ticks.end());
    const auto ns = [](uint64_t t) {
      return std::max(0.0, (static_cast<double>(t) - bench::g_timer_overhead_ticks) * bench::g_ns_per_tick / bench::kBatch);
    };
    state.counters["p50_us"] = benchmark::Counter(ns(ticks[ticks.size() / 2]) / 1000.0, benchmark::Counter::kAvgThreads);
    state.counters["p99_us"] = benchmark::Counter(ns(ticks[ticks.size() * 99 / 100]) / 1000.0, benchmark::Counter::kAvgThreads);
  }
  state.counters["denied"] = static_cast<double>(denied);
}
BENCHMARK(BM_LedgerAuthorizeCommit)->MinTime(2.0)->UseRealTime()->Threads(1)->Threads(2)->Unit(benchmark::kMicrosecond);

// Our own flags out of argv (Google Benchmark's stay for benchmark::Initialize).
void parse_args(int* argc, char** argv) {
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string arg = argv[i];
    const bool ours = arg == "--sidecar" || arg == "--ledgerctl" || arg == "--parts" || arg == "--window-s";
    if (!ours) {
      argv[out++] = argv[i];
      continue;
    }
    if (i + 1 >= *argc) fail("missing value for " + arg);
    const std::string value = argv[++i];
    if (arg == "--sidecar") g_args.sidecar = value;
    else if (arg == "--ledgerctl") g_args.ledgerctl = value;
    else if (arg == "--window-s") g_args.window_s = std::max(1, std::atoi(value.c_str()));
    else {
      g_args.load = value.find("load") != std::string::npos;
      g_args.drain = value.find("drain") != std::string::npos;
    }
  }
  *argc = out;
  argv[out] = nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  int rc = 0;
  try {
    parse_args(&argc, argv);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
    for (const std::string& path : {g_args.sidecar, g_args.ledgerctl})
      if (::access(path.c_str(), X_OK) != 0) fail(path + " is not an executable (build ledger-sidecar and ledgerctl, or pass --sidecar/--ledgerctl)");
    char tmpl[] = "/tmp/global_bench.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) fail("mkdtemp failed");
    g_tmp = tmpl;
    const std::string password = random_hex(24);
    ::setenv(kPasswordEnv, password.c_str(), 1);  // for the sidecars and ledgerctl: never printed
    ledger_support::PrivatePg pg(password);
    g_pg = &pg;
    struct Cleanup {  // before the server goes: the peer's sidecar, then the bench's connections
      ~Cleanup() {
        g_peer_host.reset();
        std::lock_guard<std::mutex> lock(g_admin_mutex);
        g_admin.clear();
        g_pg = nullptr;
      }
    } cleanup;
    bench::calibrate();
    {
      PgResult v = admin_exec("SHOW server_version");
      std::printf("global_bench: private PostgreSQL %s on a Unix socket (fsync off), %u cores\n", v.rows[0][0].value_or("?").c_str(),
                  std::thread::hardware_concurrency());
      std::fflush(stdout);
    }
    prepare_rtt_db();
    prepare_peer();
    benchmark::RunSpecifiedBenchmarks();
    g_peer_host.reset();
    if (g_args.load) store_load();
    if (g_args.drain) drain();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "global_bench: %s\n", e.what());
    rc = 1;
  }
  benchmark::Shutdown();
  if (!g_tmp.empty()) {
    if (rc == 0) {
      std::error_code ignored;
      std::filesystem::remove_all(g_tmp, ignored);
    } else {
      std::fprintf(stderr, "global_bench: the sidecars' logs are in %s\n", g_tmp.c_str());
    }
  }
  return rc;
}
