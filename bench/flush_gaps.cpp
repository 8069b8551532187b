// flush_gaps — how long the sidecar goes without flushing while OpenRouter misbehaves, and how long
// SIGTERM then takes to exit. Not a Google Benchmark: it runs the real binaries.
//
//   flush_gaps --sidecar PATH --ledgerctl PATH --emulator PATH --fault JSON [--seconds N]
//
// In a temp dir: starts the emulator, writes a config (flush_interval_ms 100, reconcile every 5 s),
// runs `ledgerctl init`, POSTs --fault to the emulator's /__emulator/faults, starts the sidecar, and
// debits alice 1 nano-USD every millisecond from a thread (so every flush has something to write).
// For --seconds it polls the store's last_flush_ms every 5 ms and records each change; the gaps
// are measured between the sidecar's start, each flush seen and the end of the window (so a
// sidecar that stops flushing shows the whole stall, even one still open when the window ends).
// Then SIGTERM, and the time to exit (SIGKILL after 300 s). --fault '' injects nothing (baseline).
#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ledger/ledger.hpp"
#include "ledger/store.hpp"
#include "bench_util.hpp"

extern char** environ;

namespace {

using Steady = std::chrono::steady_clock;
constexpr int kSigtermLimitS = 300;

struct Args {
  std::string sidecar, ledgerctl, emulator, fault;
  int seconds = 20;
};

struct Run {
  std::string dir, ledger_dir, config;
  pid_t emulator = -1, sidecar = -1;
};
Run* g_run = nullptr;  // what fail() cleans up

// Kills what is still running and removes the segment; removes the temp dir unless keep_dir.
void cleanup(Run* r, bool keep_dir) {
  if (r->sidecar > 0 && ::kill(r->sidecar, SIGKILL) == 0) ::waitpid(r->sidecar, nullptr, 0);
  if (r->emulator > 0 && ::kill(r->emulator, SIGKILL) == 0) ::waitpid(r->emulator, nullptr, 0);
  r->sidecar = r->emulator = -1;
  if (const ledger::Status s = ledger::Ledger::destroy_segment(r->ledger_dir); !s.ok() && s.code() != ledger::Code::kNotFound)
    std::fprintf(stderr, "flush_gaps: destroy_segment(%s): %s\n", r->ledger_dir.c_str(), std::string(s.message()).c_str());
  std::error_code ec;
  if (!keep_dir) std::filesystem::remove_all(r->dir, ec);
}

// Reports the error, stops what was started and keeps the temp dir (its logs) for a look.
[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "flush_gaps: %s\n", message.c_str());
  if (g_run != nullptr) {
    cleanup(g_run, true);
    std::fprintf(stderr, "flush_gaps: logs kept in %s\n", g_run->dir.c_str());
  }
  std::exit(1);
}

std::optional<Args> parse_args(int argc, char** argv) {
  Args a;
  bool fault_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return std::nullopt;
    const std::string value = argv[++i];
    if (arg == "--sidecar") a.sidecar = value;
    else if (arg == "--ledgerctl") a.ledgerctl = value;
    else if (arg == "--emulator") a.emulator = value;
    else if (arg == "--fault") a.fault = value, fault_given = true;
    else if (arg == "--seconds") a.seconds = std::atoi(value.c_str());
    else return std::nullopt;
  }
  if (a.sidecar.empty() || a.ledgerctl.empty() || a.emulator.empty() || !fault_given || a.seconds < 1)
    return std::nullopt;
  return a;
}

int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

using bench::spawn;

// Waits for pid to exit, up to limit; the exit code, or -1 (killed by a signal, or still running at
// the limit: then it is SIGKILLed and *timed_out set).
int wait_exit(pid_t pid, std::chrono::seconds limit, double* seconds, bool* timed_out) {
  const auto started = Steady::now();
  int status = 0;
  *timed_out = false;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (Steady::now() - started > limit) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      *timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  *seconds = std::chrono::duration<double>(Steady::now() - started).count();
  return !*timed_out && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The emulator writes its port file once it listens (and the key file before that).
int wait_for_port(const std::string& dir, pid_t emulator) {
  for (int i = 0; i < 1000; ++i) {
    const std::string port = read_file(dir + "/port");
    if (!port.empty() && port.back() == '\n' && std::filesystem::exists(dir + "/mgmt.key")) return std::atoi(port.c_str());
    if (::waitpid(emulator, nullptr, WNOHANG) == emulator) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

std::string config_json(const std::string& dir, int port) {
  std::ostringstream c;
  c << R"({"ledger": {"dir": "ledger", "flush_interval_ms": 100},)"
    << R"( "openrouter": {"base_url": "http://127.0.0.1:)" << port << R"(/api/v1", "management_key_file": ")"
    << dir << R"(/mgmt.key", "reconcile_interval_s": 5, "timeout_ms": 10000},)"
    << R"( "reports": {"interval_s": 10},)"
    << R"( "accounts": [{"id": "team", "limit_usd": "1000000", "period": "monthly"},)"
    << R"( {"id": "alice", "parent": "team", "limit_usd": "1000000", "period": "monthly"}]})" << "\n";
  return c.str();
}

size_t discard(char*, size_t size, size_t n, void*) { return size * n; }

// POSTs the fault; "" when the emulator took it, else what went wrong.
std::string inject_fault(int port, const std::string& fault) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return "curl_easy_init failed";
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/__emulator/faults";
  struct curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, fault.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
  const CURLcode rc = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK) return std::string("POST ") + url + ": " + curl_easy_strerror(rc);
  if (status != 200) return "POST " + url + ": HTTP " + std::to_string(status) + " (fault refused)";
  return "";
}

// The store's record of the last flush; 0 when there is none (or it cannot be read right now).
int64_t last_flush_ms(const std::string& ledger_dir) {
  std::unique_ptr<ledger::StoreReader> reader;
  if (!ledger::StoreReader::open(ledger_dir, &reader).ok()) return 0;
  ledger::StoreStats stats;
  return reader->stats(&stats).ok() ? stats.last_flush_ms : 0;
}

// Debits alice 1 nano-USD about every millisecond until stop; the number of debits that went through.
void debit_loop(const std::string& ledger_dir, const std::atomic<bool>* stop, uint64_t* debits, std::string* error) {
  std::unique_ptr<ledger::Ledger> l;
  ledger::Options options;
  options.create_if_missing = false;
  if (const ledger::Status s = ledger::Ledger::open(ledger_dir, options, &l); !s.ok()) {
    *error = "Ledger::open(" + ledger_dir + "): " + std::string(s.message());
    return;
  }
  while (!stop->load()) {
    if (const ledger::Status s = l->debit("alice", 1); s.ok()) ++*debits;
    else if (error->empty()) *error = "debit(alice, 1): " + std::string(s.message());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

struct Gaps {
  size_t flushes = 0;
  int64_t max_ms = 0, p99_ms = 0, open_at_end_ms = 0;
};

// Polls the store every 5 ms for `seconds`; gaps run from `start_ms` through each new flush to the end.
Gaps watch_flushes(const std::string& ledger_dir, int64_t start_ms, int seconds) {
  std::vector<int64_t> flushes;
  int64_t last = last_flush_ms(ledger_dir);  // init's flush, if any, is not the sidecar's
  for (const auto until = Steady::now() + std::chrono::seconds(seconds); Steady::now() < until;) {
    const int64_t now = last_flush_ms(ledger_dir);
    if (now != 0 && now != last) flushes.push_back(now);
    if (now != 0) last = now;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const int64_t end_ms = wall_ms();
  std::vector<int64_t> gaps;
  int64_t previous = start_ms;
  for (const int64_t f : flushes) gaps.push_back(std::max<int64_t>(0, f - previous)), previous = f;
  Gaps g;
  g.flushes = flushes.size();
  g.open_at_end_ms = end_ms - previous;
  gaps.push_back(g.open_at_end_ms);
  std::sort(gaps.begin(), gaps.end());
  g.max_ms = gaps.back();
  const size_t rank = (gaps.size() * 99 + 99) / 100;  // nearest rank, 1-based
  g.p99_ms = gaps[std::min(gaps.size(), std::max<size_t>(rank, 1)) - 1];
  return g;
}

// Emulator up, config written, ledger initialised, fault injected.
void prepare(const Args& a, Run* r) {
  r->emulator = spawn({a.emulator, "--management-key-file", r->dir + "/mgmt.key", "--port-file", r->dir + "/port"},
                      r->dir + "/emulator.log");
  if (r->emulator < 0) fail("cannot start " + a.emulator);
  const int port = wait_for_port(r->dir, r->emulator);
  if (port <= 0) fail("the emulator wrote no port file (see " + r->dir + "/emulator.log)");
  std::ofstream(r->config) << config_json(r->dir, port);
  const pid_t init = spawn({a.ledgerctl, "--config", r->config, "init"}, r->dir + "/init.log");
  int status = 0;
  if (init < 0 || ::waitpid(init, &status, 0) != init || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail("ledgerctl init failed:\n" + read_file(r->dir + "/init.log"));
  if (!a.fault.empty())
    if (const std::string e = inject_fault(port, a.fault); !e.empty()) fail(e);
}

// The last "stopped" line of the sidecar's log, "" when there is none.
std::string stopped_line(const std::string& log) {
  const size_t at = log.rfind("stopped");
  if (at == std::string::npos) return "";
  const size_t begin = log.rfind('\n', at), end = log.find('\n', at);
  return log.substr(begin == std::string::npos ? 0 : begin + 1, end == std::string::npos ? std::string::npos : end - begin - 1);
}

int measure(const Args& a, Run* r) {
  const int64_t start_ms = wall_ms();
  r->sidecar = spawn({a.sidecar, "--config", r->config}, r->dir + "/sidecar.log");
  if (r->sidecar < 0) fail("cannot start " + a.sidecar);
  std::atomic<bool> stop{false};
  uint64_t debits = 0;
  std::string debit_error;
  std::thread worker(debit_loop, r->ledger_dir, &stop, &debits, &debit_error);
  const Gaps g = watch_flushes(r->ledger_dir, start_ms, a.seconds);
  stop = true;
  worker.join();
  std::printf("fault: %s\nwindow_s: %d\ndebits: %llu%s\n", a.fault.empty() ? "(none)" : a.fault.c_str(), a.seconds,
              static_cast<unsigned long long>(debits), debit_error.empty() ? "" : (" (" + debit_error + ")").c_str());
  std::printf("flushes_seen: %zu\nmax_gap_ms: %lld\np99_gap_ms: %lld\nopen_gap_at_end_ms: %lld\n", g.flushes,
              static_cast<long long>(g.max_ms), static_cast<long long>(g.p99_ms), static_cast<long long>(g.open_at_end_ms));
  ::kill(r->sidecar, SIGTERM);
  double seconds = 0;
  bool timed_out = false;
  const int code = wait_exit(r->sidecar, std::chrono::seconds(kSigtermLimitS), &seconds, &timed_out);
  r->sidecar = -1;
  if (timed_out) std::printf("sigterm_exit_s: >%d (SIGKILLed)\n", kSigtermLimitS);
  else std::printf("sigterm_exit_s: %.3f\nexit_code: %d\n", seconds, code);
  const std::string log = read_file(r->dir + "/sidecar.log");
  std::printf("last_flush_ok_true: %s\nstopped_line: %s\n", log.find("last_flush_ok=true") != std::string::npos ? "yes" : "no",
              stopped_line(log).c_str());
  std::fflush(stdout);
  return debit_error.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = parse_args(argc, argv);
  if (!args) {
    std::fprintf(stderr, "usage: flush_gaps --sidecar PATH --ledgerctl PATH --emulator PATH --fault JSON [--seconds N]\n"
                         "  --fault '' runs without a fault (baseline)\n");
    return 2;
  }
  char tmpl[] = "/tmp/flush_gaps.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) fail("mkdtemp failed");
  Run r;
  r.dir = tmpl;
  r.ledger_dir = r.dir + "/ledger";
  r.config = r.dir + "/ledger.json";
  g_run = &r;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  prepare(*args, &r);
  const int rc = measure(*args, &r);
  cleanup(&r, false);
  curl_global_cleanup();
  return rc;
}
