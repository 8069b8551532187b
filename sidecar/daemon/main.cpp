// ledger-sidecar — runs beside a worker pool: flushes the ledger to LMDB, reclaims the holds of
// dead or slow workers and repairs their half-done work, applies config changes on SIGHUP.
//
// Shape (after redis's serverCron): signal handlers only set flags; one tick loop runs each job on
// its own period (run_every). SIGTERM/SIGINT: final flush, clean exit. SIGHUP: reload the config.
// One sidecar per ledger: an OFD lock on byte kSidecarLockByte of <dir>/ledger.lock, released by the
// kernel if the sidecar dies, plus <dir>/ledger-sidecar.pid for humans.
#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "core/admin.hpp"
#include "openrouter/keys.hpp"
#include "reports/metrics.hpp"
#include "openrouter/reconcile.hpp"
#include "reports/reports.hpp"

using namespace ledger;
using namespace ledger::admin;

namespace {

volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_reload = 0;
void on_stop(int) { g_stop = 1; }
void on_reload(int) { g_reload = 1; }

constexpr const char* kUsage = R"(usage: ledger-sidecar --config FILE [--once]

Runs beside a worker pool: every ledger.flush_interval_ms writes what was settled to the store
(<dir>/ledger.mdb); every second reclaims expired holds and the holds and half-done work of dead
workers. SIGTERM/SIGINT flush and exit; SIGHUP reloads the config (budget changes apply, spend is
kept, accounts removed from the config are blocked).

  --once    one full cycle (apply config, reclaim, flush), then exit
  --help    this text
Exit codes: 0 success, 1 usage or config error, 2 runtime error.
)";

int64_t monotonic_ms() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

struct Schedule {
  int64_t period_ms;
  int64_t next_ms = 0;
  bool due(int64_t now) {
    if (now < next_ms) return false;
    next_ms = now + period_ms;
    return true;
  }
};

// Holds the single-sidecar lock for the ledger directory.
class SidecarLock {
 public:
  bool acquire(const std::string& dir, std::string* error) {
    fd_ = ::open((dir + "/ledger.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) {
      *error = "cannot open " + dir + "/ledger.lock: " + std::strerror(errno);
      return false;
    }
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 3;  // kSidecarLockByte
    fl.l_len = 1;
    if (::fcntl(fd_, F_OFD_SETLK, &fl) != 0) {
      std::string pid = "unknown";
      std::ifstream(dir + "/ledger-sidecar.pid") >> pid;
      *error = "another ledger-sidecar (pid " + pid + ") is already running for " + dir + "; stop it first";
      return false;
    }
    pid_path_ = dir + "/ledger-sidecar.pid";
    std::ofstream(pid_path_, std::ios::trunc) << ::getpid() << "\n";
    return true;
  }
  ~SidecarLock() {
    if (!pid_path_.empty()) ::unlink(pid_path_.c_str());
    if (fd_ >= 0) ::close(fd_);
  }

 private:
  int fd_ = -1;
  std::string pid_path_;
};

bool flush_once(Ledger& ledger, int64_t* failures) {
  const int64_t started = monotonic_ms();
  const Status s = ledger.flush();
  if (s.ok()) {
    *failures = 0;
    return true;
  }
  ++*failures;
  std::string hint = "will retry";
  if (s.code() == Code::kFull) hint = "the store's map is full: raise ledger.store_map_size_mb and send SIGHUP";
  if (s.code() == Code::kPermission) hint = "the ledger directory is not writable by this user";
  log_line("error", "flush failed: " + std::string(s.message()) + "; " + hint,
           "code=" + std::to_string(s.value()) + " consecutive_failures=" + std::to_string(*failures) +
               " ms=" + std::to_string(monotonic_ms() - started));
  return false;
}

// A client for the reconcile schedule, or nullptr (logged once) when there is no OpenRouter setup.
std::unique_ptr<openrouter::Client> make_client(const Config& config) {
  if (!config.openrouter.present) return nullptr;
  std::string error;
  auto client = client_for(config, &error);
  if (!client) log_line("warn", "reconcile disabled: " + error);
  return client;
}

void reconcile_once(Ledger& ledger, openrouter::Client& client, const Config& config, SidecarCounters& counters) {
  std::string price_error;
  const size_t prices = refresh_prices(ledger, client, config, &price_error);
  if (!price_error.empty()) log_line("warn", "price refresh: " + price_error + " (keeping the prices we have)");
  else if (prices > 0) log_line("debug", "prices refreshed", "models=" + std::to_string(prices));
  const ReconcileReport r = reconcile(ledger, client, config, false);
  ++counters.reconcile_runs;
  counters.openrouter_responses = client.status_counts();
  if (!r.error.empty()) {
    ++counters.reconcile_errors;
    log_line("error", "reconcile failed: " + r.error + " (the ledger's admission is unaffected; will retry)");
    return;
  }
  counters.last_reconcile_success_unix = ledger.now_ms() / 1000;
  for (const auto& row : r.rows) {
    if (row.openrouter_nanousd) counters.drift_nanousd[row.account] = *row.openrouter_nanousd - row.ledger_nanousd;
    if (row.adjusted_nanousd > 0) ++counters.adjustments;
  }
  for (const auto& row : r.rows) {
    if (row.note == "within tolerance") continue;
    log_line(row.adjusted_nanousd > 0 ? "info" : "warn", "reconcile: " + row.note,
             "account=" + row.account + " ledger_usd=" + format_usd(row.ledger_nanousd) + " openrouter_usd=" +
                 (row.openrouter_nanousd ? format_usd(*row.openrouter_nanousd) : "unknown") +
                 " adjusted_usd=" + format_usd(row.adjusted_nanousd));
  }
  if (!r.unowned_keys.empty()) log_line("warn", "keys no account owns (key sprawl)", "count=" + std::to_string(r.unowned_keys.size()));
  for (const auto& line : r.revoked) log_line("info", line);
  for (const auto& line : r.revoke_errors) log_line("error", line);
  if (r.adjusted_total_nanousd > 0) (void)ledger.flush();
}

void write_reports(Ledger& ledger, const Config& config, openrouter::Client* client) {
  std::error_code ec;
  std::filesystem::create_directories(config.reports.dir, ec);
  const int64_t now = ledger.now_ms() / 1000;
  Report report;
  const Status s = build_report(config, floor_days(now) - 6, floor_days(now), now, &report);
  if (!s.ok()) {
    log_line("warn", "reports: cannot read the store", "code=" + std::to_string(s.value()));
    return;
  }
  if (client != nullptr) {
    std::vector<openrouter::KeyInfo> keys;
    if (!client->list_keys(&keys)) add_key_dashboard(keys, key_bindings(config), &report);
  }
  for (const auto& format : config.reports.formats) {
    const std::string path = config.reports.dir + "/team-report." + format;
    const std::string text = format == "json" ? render_json(report) : format == "csv" ? render_csv(report) : render_html(report);
    std::string error;
    if (!write_atomically(path, text, &error)) log_line("warn", "reports: " + error);
  }
  log_line("info", "reports written", "dir=" + config.reports.dir + " accounts=" + std::to_string(report.rows.size()));
}

void log_apply(const ApplyReport& r, const char* what) {
  log_line(r.errors.empty() ? "info" : "warn", what,
           "created=" + std::to_string(r.created) + " updated=" + std::to_string(r.updated) +
               " unchanged=" + std::to_string(r.unchanged) + " blocked_removed=" + std::to_string(r.blocked_removed) +
               " prices=" + std::to_string(r.prices) + " errors=" + std::to_string(r.errors.size()));
  for (const auto& e : r.errors) log_line("warn", e);
}

// SIGHUP: a config that does not load, moves the ledger or does not fit it is refused, and the
// running one kept. True when the new one was applied.
bool reload_config(const std::string& path, Ledger& ledger, std::optional<Config>* config) {
  std::string error;
  auto fresh = load_config(path, &error);
  if (!fresh) {
    log_line("error", "reload refused, keeping the running config: " + error);
    return false;
  }
  if (fresh->ledger.dir != (*config)->ledger.dir) {
    log_line("error", "reload refused: ledger.dir cannot change while running (restart the sidecar)");
    return false;
  }
  const ApplyReport r = apply_config(ledger, *fresh);
  if (r.refused) {
    log_line("error", "reload refused, keeping the running config: " + r.errors.front());
    return false;
  }
  log_apply(r, "config reloaded");
  *config = std::move(fresh);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  bool once = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) config_path = argv[++i];
    else if (arg.rfind("--config=", 0) == 0) config_path = arg.substr(9);
    else if (arg == "--once") once = true;
    else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return kExitOk;
    } else {
      std::fprintf(stderr, "ledger-sidecar: unknown argument \"%s\"\n%s", arg.c_str(), kUsage);
      return kExitUsage;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "ledger-sidecar: --config FILE is required\n%s", kUsage);
    return kExitUsage;
  }
  std::string error;
  auto config = load_config(config_path, &error);
  if (!config) {
    std::fprintf(stderr, "ledger-sidecar: %s\n", error.c_str());
    return kExitUsage;
  }

  std::unique_ptr<Ledger> ledger;
  if (!open_ledger(*config, &ledger, &error).ok()) {
    log_line("error", error);
    return kExitRuntime;
  }
  SidecarLock lock;
  if (!lock.acquire(config->ledger.dir, &error)) {
    log_line("error", error);
    return kExitRuntime;
  }
  struct sigaction stop {}, reload {}, ignore {};
  stop.sa_handler = on_stop;
  reload.sa_handler = on_reload;
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGTERM, &stop, nullptr);
  ::sigaction(SIGINT, &stop, nullptr);
  ::sigaction(SIGHUP, &reload, nullptr);
  ::sigaction(SIGPIPE, &ignore, nullptr);

  if (const ApplyReport r = apply_config(*ledger, *config); r.refused)
    log_line("error", "config not applied (running on the ledger as it is): " + r.errors.front());
  else
    log_apply(r, "config applied");
  log_line("info", "started", "dir=" + config->ledger.dir + " pid=" + std::to_string(::getpid()) +
                                  " flush_interval_ms=" + std::to_string(config->ledger.flush_interval_ms) +
                                  (once ? " once=true" : ""));
  Schedule flush{config->ledger.flush_interval_ms}, reclaim{1000}, summary{60'000};
  Schedule reconcile_schedule{int64_t{config->openrouter.reconcile_interval_s} * 1000};
  auto client = make_client(*config);
  Schedule reports{int64_t{config->reports.interval_s} * 1000};
  summary.next_ms = monotonic_ms() + summary.period_ms;
  int64_t flush_failures = 0, flushes = 0, reclaimed_total = 0;
  SidecarCounters counters;
  MetricsServer metrics;
  Schedule publish{1000};
  if (!config->metrics.listen.empty()) {
    std::string metrics_error;
    if (metrics.start(config->metrics.listen, &metrics_error)) log_line("info", "serving metrics", "listen=" + config->metrics.listen);
    else log_line("error", metrics_error + " (running without metrics)");
  }
  for (;;) {
    const int64_t now = monotonic_ms();
    // Read the stop flag once: a signal between "flush?" and "exit?" must not skip the final flush.
    const bool stopping = g_stop != 0;
    if (g_reload) {
      g_reload = 0;
      if (reload_config(config_path, *ledger, &config)) {
        flush.period_ms = config->ledger.flush_interval_ms;
        reconcile_schedule.period_ms = int64_t{config->openrouter.reconcile_interval_s} * 1000;
        reports.period_ms = int64_t{config->reports.interval_s} * 1000;
        client = make_client(*config);
        (void)flush_once(*ledger, &flush_failures);
      }
    }
    if (reclaim.due(now) || once) {
      uint32_t reclaimed = 0;
      const Status s = ledger->reclaim(&reclaimed);
      if (!s.ok()) log_line("error", "reclaim failed: " + describe(s));
      if (reclaimed > 0) log_line("info", "reclaimed holds", "count=" + std::to_string(reclaimed));
      reclaimed_total += reclaimed;
    }
    if (client && !stopping && (reconcile_schedule.due(now) || once)) reconcile_once(*ledger, *client, *config, counters);
    if (flush.due(now) || once || stopping) {
      if (flush_once(*ledger, &flush_failures)) {
        ++flushes;
        counters.last_flush_unix = ledger->now_ms() / 1000;
      } else {
        ++counters.flush_failures;
      }
    }
    if (!stopping && (reports.due(now) || once)) write_reports(*ledger, *config, client.get());
    if (once || stopping) break;
    if (publish.due(now)) {
      counters.flushes = static_cast<uint64_t>(flushes);
      counters.reclaimed_holds = static_cast<uint64_t>(reclaimed_total);
      metrics.publish(render_metrics(*ledger, counters, ledger->now_ms() / 1000));
    }
    if (summary.due(now))
      log_line("info", "alive", "flushes=" + std::to_string(flushes) + " reclaimed=" + std::to_string(reclaimed_total));
    const struct timespec tick {0, 20'000'000};
    ::nanosleep(&tick, nullptr);  // a signal cuts it short
  }
  log_line("info", "stopped", "flushes=" + std::to_string(flushes) + " reclaimed=" + std::to_string(reclaimed_total) +
                                  " last_flush_ok=" + (flush_failures == 0 ? "true" : "false"));
  return flush_failures == 0 ? kExitOk : kExitRuntime;
}
