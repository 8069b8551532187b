// peers_bench — libledger side by side with what teams use today, in the same run:
//   sqlite_recipe   the common recipe: check_budget() "spent < limit?" SELECT before the call,
//                   record_usage(cost) upsert after it, REAL dollars, WAL, synchronous=NORMAL (two
//                   statements, no transaction; the cost is not known when checking)
//   sqlite_correct  the same done right: BEGIN IMMEDIATE; one conditional UPDATE on integer nanos
//   redis_lua       a Lua check-and-increment script over loopback (EVALSHA, hiredis)
//   lmdb_txn        one LMDB write transaction per debit (MDB_WRITEMAP|MDB_NOSYNC)
//   ledger          libledger debit (root account by handle; 3-level chain)
// Latency: Google Benchmark + per-operation median/p99 (bench_util.hpp). Then, unless
// --benchmark_filter excludes it, two harnesses (--harness=all|none):
//   correctness  8 processes spend $0.10 at a time against one $1.00 budget: how much each peer
//                lets through above the budget (libledger must show exactly 0)
//   contention   1 and 2 processes on one hot account and on separate accounts, admitted debits/s
// Redis: LEDGER_BENCH_REDIS=host:port (scripts/bench.sh starts one); without it redis is skipped.
#include <hiredis/hiredis.h>
#include <lmdb.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "ledger/ledger.hpp"

namespace {

using bench::report;
using bench::sample;
namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("ledger-peers-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// ---- the peers -------------------------------------------------------------------------------
// Each: a fresh store with one user and budget `limit_usd`; debit(cost_usd) -> granted?
class Peer {
 public:
  virtual ~Peer() = default;
  virtual bool debit(double cost_usd) = 0;
  virtual double spent_usd() = 0;  // what the store says was spent
};

class SqliteRecipe : public Peer {
 public:
  SqliteRecipe(const std::string& path, double limit_usd, bool create) : limit_(limit_usd) {
    sqlite3_open(path.c_str(), &db_);
    sqlite3_busy_timeout(db_, 10000);
    exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;");
    if (create) exec("CREATE TABLE IF NOT EXISTS user_usage (user_id TEXT PRIMARY KEY, spent REAL NOT NULL DEFAULT 0)");
    sqlite3_prepare_v2(db_, "SELECT spent FROM user_usage WHERE user_id = 'alice'", -1, &check_, nullptr);
    sqlite3_prepare_v2(db_, "INSERT INTO user_usage (user_id, spent) VALUES ('alice', ?1) "
                            "ON CONFLICT(user_id) DO UPDATE SET spent = spent + excluded.spent", -1, &record_, nullptr);
  }
  ~SqliteRecipe() override {
    sqlite3_finalize(check_);
    sqlite3_finalize(record_);
    sqlite3_close(db_);
  }
  bool debit(double cost) override {
    // check_budget(): is the user still under budget? (The cost is only known after the call.)
    double spent = 0;
    if (sqlite3_step(check_) == SQLITE_ROW) spent = sqlite3_column_double(check_, 0);
    sqlite3_reset(check_);
    if (spent >= limit_) return false;
    // ... the LLM call happens here ... record_usage(actual cost):
    sqlite3_bind_double(record_, 1, cost);
    while (sqlite3_step(record_) == SQLITE_BUSY) {
    }
    sqlite3_reset(record_);
    return true;
  }
  double spent_usd() override {
    double spent = 0;
    if (sqlite3_step(check_) == SQLITE_ROW) spent = sqlite3_column_double(check_, 0);
    sqlite3_reset(check_);
    return spent;
  }

 private:
  void exec(const char* sql) { sqlite3_exec(db_, sql, nullptr, nullptr, nullptr); }
  sqlite3* db_ = nullptr;
  sqlite3_stmt *check_ = nullptr, *record_ = nullptr;
  double limit_;
};

class SqliteCorrect : public Peer {
 public:
  SqliteCorrect(const std::string& path, double limit_usd, bool create) {
    sqlite3_open(path.c_str(), &db_);
    sqlite3_busy_timeout(db_, 10000);
    sqlite3_exec(db_, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", nullptr, nullptr, nullptr);
    if (create) {
      sqlite3_exec(db_, "CREATE TABLE IF NOT EXISTS budget (user_id TEXT PRIMARY KEY, spent INTEGER NOT NULL, lim INTEGER NOT NULL)",
                   nullptr, nullptr, nullptr);
      const std::string insert = "INSERT OR REPLACE INTO budget VALUES ('alice', 0, " +
                                 std::to_string(std::llround(limit_usd * 1e9)) + ")";
      sqlite3_exec(db_, insert.c_str(), nullptr, nullptr, nullptr);
    }
    sqlite3_prepare_v2(db_, "UPDATE budget SET spent = spent + ?1 WHERE user_id = 'alice' AND spent + ?1 <= lim", -1,
                       &update_, nullptr);
    sqlite3_prepare_v2(db_, "SELECT spent FROM budget WHERE user_id = 'alice'", -1, &read_, nullptr);
  }
  ~SqliteCorrect() override {
    sqlite3_finalize(update_);
    sqlite3_finalize(read_);
    sqlite3_close(db_);
  }
  bool debit(double cost) override {
    while (sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_BUSY) {
    }
    sqlite3_bind_int64(update_, 1, std::llround(cost * 1e9));
    sqlite3_step(update_);
    sqlite3_reset(update_);
    const bool granted = sqlite3_changes(db_) == 1;
    while (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_BUSY) {
    }
    return granted;
  }
  double spent_usd() override {
    int64_t spent = 0;
    if (sqlite3_step(read_) == SQLITE_ROW) spent = sqlite3_column_int64(read_, 0);
    sqlite3_reset(read_);
    return static_cast<double>(spent) / 1e9;
  }

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt *update_ = nullptr, *read_ = nullptr;
};

constexpr const char* kLua =
    "local spent = tonumber(redis.call('GET', KEYS[1]) or '0') "
    "if spent + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end "
    "redis.call('INCRBY', KEYS[1], ARGV[1]) return 1";

class RedisLua : public Peer {
 public:
  RedisLua(const std::string& address, const std::string& key, double limit_usd, bool create) : key_(key) {
    const auto colon = address.rfind(':');
    ctx_ = redisConnect(address.substr(0, colon).c_str(), std::stoi(address.substr(colon + 1)));
    ok_ = ctx_ != nullptr && ctx_->err == 0;
    if (!ok_) return;
    limit_ = std::to_string(std::llround(limit_usd * 1e9));
    auto* r = static_cast<redisReply*>(redisCommand(ctx_, "SCRIPT LOAD %s", kLua));
    if (r != nullptr && r->type == REDIS_REPLY_STRING) sha_ = r->str;
    freeReplyObject(r);
    if (create) freeReplyObject(redisCommand(ctx_, "SET %s 0", key_.c_str()));
  }
  ~RedisLua() override {
    if (ctx_ != nullptr) redisFree(ctx_);
  }
  bool ok() const { return ok_ && !sha_.empty(); }
  bool debit(double cost) override {
    const std::string nanos = std::to_string(std::llround(cost * 1e9));
    auto* r = static_cast<redisReply*>(
        redisCommand(ctx_, "EVALSHA %s 1 %s %s %s", sha_.c_str(), key_.c_str(), nanos.c_str(), limit_.c_str()));
    const bool granted = r != nullptr && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return granted;
  }
  double spent_usd() override {
    auto* r = static_cast<redisReply*>(redisCommand(ctx_, "GET %s", key_.c_str()));
    const double spent = r != nullptr && r->type == REDIS_REPLY_STRING ? std::stod(r->str) / 1e9 : 0;
    freeReplyObject(r);
    return spent;
  }

 private:
  redisContext* ctx_ = nullptr;
  std::string key_, sha_, limit_;
  bool ok_ = false;
};

class LmdbTxn : public Peer {
 public:
  LmdbTxn(const std::string& dir, double limit_usd, bool create) : limit_(std::llround(limit_usd * 1e9)) {
    mdb_env_create(&env_);
    mdb_env_set_mapsize(env_, 64u << 20);
    mdb_env_open(env_, dir.c_str(), MDB_WRITEMAP | MDB_NOSYNC, 0600);
    MDB_txn* txn = nullptr;
    mdb_txn_begin(env_, nullptr, 0, &txn);
    mdb_dbi_open(txn, nullptr, 0, &dbi_);
    if (create) {
      int64_t zero = 0;
      MDB_val k{5, const_cast<char*>("alice")}, v{sizeof zero, &zero};
      mdb_put(txn, dbi_, &k, &v, 0);
    }
    mdb_txn_commit(txn);
  }
  ~LmdbTxn() override { mdb_env_close(env_); }
  bool debit(double cost) override {
    const int64_t nanos = std::llround(cost * 1e9);
    MDB_txn* txn = nullptr;
    mdb_txn_begin(env_, nullptr, 0, &txn);
    MDB_val k{5, const_cast<char*>("alice")}, v;
    int64_t spent = 0;
    if (mdb_get(txn, dbi_, &k, &v) == 0) std::memcpy(&spent, v.mv_data, sizeof spent);
    if (spent + nanos > limit_) {
      mdb_txn_abort(txn);
      return false;
    }
    spent += nanos;
    MDB_val nv{sizeof spent, &spent};
    mdb_put(txn, dbi_, &k, &nv, 0);
    return mdb_txn_commit(txn) == 0;
  }
  double spent_usd() override {
    MDB_txn* txn = nullptr;
    mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
    MDB_val k{5, const_cast<char*>("alice")}, v;
    int64_t spent = 0;
    if (mdb_get(txn, dbi_, &k, &v) == 0) std::memcpy(&spent, v.mv_data, sizeof spent);
    mdb_txn_abort(txn);
    return static_cast<double>(spent) / 1e9;
  }

 private:
  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
  int64_t limit_;
};

class Ours : public Peer {
 public:
  Ours(const std::string& dir, double limit_usd, bool create, const char* account = "alice") : account_(account) {
    ledger::Options options;
    options.limits.max_accounts = 64;
    options.limits.max_reservations = 64;
    options.limits.max_processes = 64;
    (void)ledger::Ledger::open(dir, options, &ledger_);
    if (create) {
      (void)ledger_->set_budget("team", ledger::kAmountNanoUsdMax, ledger::Period::kNone, "");
      (void)ledger_->set_budget(account_, std::llround(limit_usd * 1e9), ledger::Period::kNone, "");
      (void)ledger_->set_budget("bob", std::llround(limit_usd * 1e9), ledger::Period::kNone, "team");
    }
    (void)ledger_->find(account_, &ref_);
  }
  bool debit(double cost) override { return ledger_->debit(ref_, std::llround(cost * 1e9)).ok(); }
  double spent_usd() override {
    ledger::Balance b;
    (void)ledger_->balance(account_, &b);
    return static_cast<double>(b.spent_nanousd) / 1e9;
  }
  ledger::Ledger& ledger() { return *ledger_; }

 private:
  std::unique_ptr<ledger::Ledger> ledger_;
  std::string account_;
  ledger::AccountRef ref_;
};

const char* redis_address() { return std::getenv("LEDGER_BENCH_REDIS"); }

// ---- latency ---------------------------------------------------------------------------------
constexpr double kHuge = 1e9;  // a budget no benchmark reaches
constexpr double kCost = 0.000123;

void run_latency(benchmark::State& state, Peer& peer) {
  for (auto _ : state) benchmark::DoNotOptimize(peer.debit(kCost));
  report(state, sample([&] { benchmark::DoNotOptimize(peer.debit(kCost)); }, 2000, 4));
}

void BM_SqliteRecipe(benchmark::State& state) {
  const std::string dir = temp_dir("sqlite-recipe");
  SqliteRecipe peer(dir + "/usage.db", kHuge, true);
  run_latency(state, peer);
  fs::remove_all(dir);
}
void BM_SqliteCorrect(benchmark::State& state) {
  const std::string dir = temp_dir("sqlite-correct");
  SqliteCorrect peer(dir + "/usage.db", kHuge, true);
  run_latency(state, peer);
  fs::remove_all(dir);
}
void BM_RedisLua(benchmark::State& state) {
  if (redis_address() == nullptr) {
    state.SkipWithError("LEDGER_BENCH_REDIS not set (scripts/bench.sh starts a redis-server)");
    return;
  }
  RedisLua peer(redis_address(), "bench:alice", kHuge, true);
  if (!peer.ok()) {
    state.SkipWithError("cannot reach redis at LEDGER_BENCH_REDIS");
    return;
  }
  run_latency(state, peer);
}
void BM_LmdbTxnPerDebit(benchmark::State& state) {
  const std::string dir = temp_dir("lmdb");
  LmdbTxn peer(dir, kHuge, true);
  run_latency(state, peer);
  fs::remove_all(dir);
}
void BM_LedgerDebit(benchmark::State& state) {
  const std::string dir = temp_dir("ledger");
  {
    Ours peer(dir, kHuge, true);
    for (auto _ : state) benchmark::DoNotOptimize(peer.debit(kCost));
    report(state, sample([&] { benchmark::DoNotOptimize(peer.debit(kCost)); }));
  }
  (void)ledger::Ledger::destroy_segment(dir);
  fs::remove_all(dir);
}
void BM_LedgerDebitChain2(benchmark::State& state) {
  const std::string dir = temp_dir("ledger-chain");
  {
    Ours peer(dir, kHuge, true, "alice");
    ledger::AccountRef bob;
    (void)peer.ledger().find("bob", &bob);
    for (auto _ : state) benchmark::DoNotOptimize(peer.ledger().debit(bob, 123));
    report(state, sample([&] { benchmark::DoNotOptimize(peer.ledger().debit(bob, 123)); }));
  }
  (void)ledger::Ledger::destroy_segment(dir);
  fs::remove_all(dir);
}
BENCHMARK(bench::BM_CasFloor);
BENCHMARK(BM_LedgerDebit);
BENCHMARK(BM_LedgerDebitChain2);
BENCHMARK(BM_LmdbTxnPerDebit);
BENCHMARK(BM_RedisLua);
BENCHMARK(BM_SqliteCorrect);
BENCHMARK(BM_SqliteRecipe);

// ---- correctness: overspend under concurrency -------------------------------------------------
struct Shared {
  std::atomic<int64_t> granted_nanos;
  std::atomic<int> go;
};

// 8 processes spend $0.10 at a time (each one waits for the others, then keeps trying until it
// is denied 20 times in a row) against one $1.00 budget. Returns what was granted, in USD.
double overspend_run(const std::function<std::unique_ptr<Peer>(bool create)>& make, int processes) {
  auto* shared = static_cast<Shared*>(::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (shared) Shared{};
  { auto setup = make(true); }
  std::vector<pid_t> pids;
  for (int p = 0; p < processes; ++p) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      auto peer = make(false);
      while (shared->go.load() == 0) {
      }
      for (int denied = 0; denied < 20;) {
        if (peer->debit(0.1)) {
          shared->granted_nanos += 100'000'000;
          denied = 0;
        } else {
          ++denied;
        }
      }
      std::_Exit(0);
    }
    pids.push_back(pid);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  shared->go = 1;
  for (pid_t pid : pids) ::waitpid(pid, nullptr, 0);
  const double granted = static_cast<double>(shared->granted_nanos.load()) / 1e9;
  ::munmap(shared, sizeof(Shared));
  return granted;
}

struct CorrectnessRow {
  std::string peer;
  int processes;
  double granted_usd;
  double overspend_percent;
};

std::vector<CorrectnessRow> correctness() {
  std::vector<CorrectnessRow> rows;
  for (int processes : {1, 8}) {
    auto add = [&](const std::string& name, const std::function<std::unique_ptr<Peer>(bool)>& make) {
      const double granted = overspend_run(make, processes);
      rows.push_back({name, processes, granted, (granted - 1.0) * 100.0});
      std::printf("  %-15s %d process%s: granted $%.2f of a $1.00 budget -> overspend %+.0f %%\n", name.c_str(), processes,
                  processes == 1 ? "  " : "es", granted, (granted - 1.0) * 100.0);
      std::fflush(stdout);
    };
    std::string dir = temp_dir("c-recipe-" + std::to_string(processes));
    add("sqlite_recipe", [&](bool c) { return std::make_unique<SqliteRecipe>(dir + "/usage.db", 1.0, c); });
    dir = temp_dir("c-correct-" + std::to_string(processes));
    add("sqlite_correct", [&](bool c) { return std::make_unique<SqliteCorrect>(dir + "/usage.db", 1.0, c); });
    if (redis_address() != nullptr) {
      const std::string key = "bench:c:" + std::to_string(processes) + ":" + std::to_string(::getpid());
      add("redis_lua", [&](bool c) { return std::make_unique<RedisLua>(redis_address(), key, 1.0, c); });
    }
    dir = temp_dir("c-lmdb-" + std::to_string(processes));
    add("lmdb_txn", [&](bool c) { return std::make_unique<LmdbTxn>(dir, 1.0, c); });
    dir = temp_dir("c-ledger-" + std::to_string(processes));
    add("ledger", [&](bool c) { return std::make_unique<Ours>(dir, 1.0, c); });
    (void)ledger::Ledger::destroy_segment(dir);
  }
  return rows;
}

// ---- contention: admitted debits per second, 1 and 2 processes ---------------------------------
double contention_run(const std::string& dir, int processes, bool same_account) {
  auto* counts = static_cast<std::atomic<int64_t>*>(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  for (int i = 0; i < 4; ++i) new (&counts[i]) std::atomic<int64_t>(0);
  std::vector<pid_t> pids;
  for (int p = 0; p < processes; ++p) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      std::unique_ptr<ledger::Ledger> l;
      if (!ledger::Ledger::open(dir, ledger::Options{}, &l).ok()) std::_Exit(2);
      ledger::AccountRef ref;
      (void)l->find(same_account ? "hot" : (p == 0 ? "a0" : "a1"), &ref);
      while (counts[3].load(std::memory_order_relaxed) == 0) {
      }
      int64_t n = 0;
      while (counts[3].load(std::memory_order_relaxed) == 1) {
        for (int i = 0; i < 256; ++i) n += l->debit(ref, 1).ok() ? 1 : 0;
      }
      counts[p] = n;
      std::_Exit(0);
    }
    pids.push_back(pid);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  counts[3] = 1;
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  counts[3] = 2;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (pid_t pid : pids) ::waitpid(pid, nullptr, 0);
  const double total = static_cast<double>(counts[0] + counts[1]) / seconds;
  ::munmap(counts, 4096);
  return total;
}

struct ContentionRow {
  std::string shape;
  int processes;
  double debits_per_s;
};

std::vector<ContentionRow> contention() {
  const std::string dir = temp_dir("contention");
  {
    std::unique_ptr<ledger::Ledger> l;
    (void)ledger::Ledger::open(dir, ledger::Options{}, &l);
    for (const char* a : {"hot", "a0", "a1"}) (void)l->set_budget(a, ledger::kAmountNanoUsdMax, ledger::Period::kDaily, "");
  }
  std::vector<ContentionRow> rows;
  for (bool same : {true, false})
    for (int processes : {1, 2}) {
      const double rate = contention_run(dir, processes, same);
      rows.push_back({same ? "one hot account" : "separate accounts", processes, rate});
      std::printf("  %-17s %d process%s: %6.2f M admitted debits/s\n", same ? "one hot account" : "separate accounts",
                  processes, processes == 1 ? "  " : "es", rate / 1e6);
      std::fflush(stdout);
    }
  (void)ledger::Ledger::destroy_segment(dir);
  fs::remove_all(dir);
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  std::string harness = "all", harness_out;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--harness=", 0) == 0) harness = a.substr(10);
    else if (a.rfind("--harness_out=", 0) == 0) harness_out = a.substr(14);
    else args.push_back(argv[i]);
  }
  int count = static_cast<int>(args.size());
  bench::calibrate();
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (harness == "none") return 0;
  std::printf("\ncorrectness: concurrent spend against one $1.00 budget, $0.10 per request\n");
  const auto c = correctness();
  std::printf("\ncontention: libledger debits of $0.000000001, 1 s per run\n");
  const auto k = contention();
  if (!harness_out.empty()) {
    std::ofstream out(harness_out);
    out << "{\"correctness\": [";
    for (size_t i = 0; i < c.size(); ++i)
      out << (i ? ", " : "") << "{\"peer\": \"" << c[i].peer << "\", \"processes\": " << c[i].processes
          << ", \"granted_usd\": " << c[i].granted_usd << ", \"overspend_percent\": " << c[i].overspend_percent << "}";
    out << "], \"contention\": [";
    for (size_t i = 0; i < k.size(); ++i)
      out << (i ? ", " : "") << "{\"shape\": \"" << k[i].shape << "\", \"processes\": " << k[i].processes
          << ", \"debits_per_s\": " << k[i].debits_per_s << "}";
    out << "]}\n";
  }
  return 0;
}
