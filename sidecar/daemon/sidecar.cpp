// sidecar.cpp — see sidecar.hpp.
#include "daemon/sidecar.hpp"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>

namespace ledger::admin {

namespace {

volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_reload = 0;
void on_stop(int) { g_stop = 1; }
void on_reload(int) { g_reload = 1; }

constexpr int64_t kReclaimPeriodMs = 1000, kPublishPeriodMs = 1000, kSummaryPeriodMs = 60'000, kTickMs = 20;

int64_t monotonic_ms() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

// A job's period (redis's run_with_period): due() is true once per period.
struct Schedule {
  int64_t period_ms;
  int64_t next_ms = 0;
  bool due(int64_t now) {
    if (now < next_ms) return false;
    next_ms = now + period_ms;
    return true;
  }
};

void install_signal_handlers() {
  struct sigaction stop {}, reload {}, ignore {};
  stop.sa_handler = on_stop;
  reload.sa_handler = on_reload;
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGTERM, &stop, nullptr);
  ::sigaction(SIGINT, &stop, nullptr);
  ::sigaction(SIGHUP, &reload, nullptr);
  ::sigaction(SIGPIPE, &ignore, nullptr);
}

void log_apply(const ApplyReport& r, const char* what) {
  log_line(r.errors.empty() ? "info" : "warn", what,
           "created=" + std::to_string(r.created) + " updated=" + std::to_string(r.updated) +
               " unchanged=" + std::to_string(r.unchanged) + " blocked_removed=" + std::to_string(r.blocked_removed) +
               " prices=" + std::to_string(r.prices) + " errors=" + std::to_string(r.errors.size()));
  for (const auto& e : r.errors) log_line("warn", e);
  for (const auto& w : r.warnings) log_line("warn", w);
}

std::string flush_hint(Code code) {
  switch (code) {
    case Code::kFull: return "the store's map is full: raise ledger.store_map_size_mb and send SIGHUP (it applies at once)";
    case Code::kPermission: return "the ledger directory is not writable by this user";
    default: return "will retry every flush_interval_ms";
  }
}

}  // namespace

int Sidecar::init(const std::string& config_path, bool once) {
  config_path_ = config_path;
  once_ = once;
  std::string error;
  auto config = load_config(config_path, &error);
  if (!config) {
    std::fprintf(stderr, "ledger-sidecar: %s\n", error.c_str());
    return kExitUsage;
  }
  config_ = std::make_shared<const Config>(std::move(*config));
  if (!open_ledger(*config_, &ledger_, &error).ok() || !lock_.acquire(config_->ledger.dir, &error)) {
    log_line("error", error);
    return kExitRuntime;
  }
  install_signal_handlers();
  if (const ApplyReport r = apply_config(*ledger_, *config_); r.refused)
    log_line("error", "config not applied (running on the ledger as it is): " + r.errors.front());
  else
    log_apply(r, "config applied");
  log_line("info", "started", "dir=" + config_->ledger.dir + " pid=" + std::to_string(::getpid()) +
                                  " flush_interval_ms=" + std::to_string(config_->ledger.flush_interval_ms) +
                                  (once ? " once=true" : ""));
  if (!config_->metrics.listen.empty()) {
    if (metrics_.start(config_->metrics.listen, &error)) log_line("info", "serving metrics", "listen=" + config_->metrics.listen);
    else log_line("error", error + " (running without metrics)");
  }
  network_ = std::make_unique<NetworkWorker>(*ledger_, counters_);
  if (!once) network_->start(config_);
  if (config_->global.present && !once) {
    leases_ = std::make_unique<global::LeaseWorker>(*ledger_);
    leases_->start(config_);
    log_line("info", "global mode", "host_id=" + config_->global.host_id +
                                        " refresh_interval_ms=" + std::to_string(config_->global.refresh_interval_ms));
  }
  return kExitOk;
}

void Sidecar::run() {
  if (once_) {  // one full cycle: reclaim, flush, OpenRouter and reports, flush again (adjustments)
    reclaim_now();
    flush_now();
    network_->run_once(*config_);
    flush_now();
    return;
  }
  Schedule flush{config_->ledger.flush_interval_ms}, reclaim{kReclaimPeriodMs}, publish{kPublishPeriodMs}, summary{kSummaryPeriodMs};
  summary.next_ms = monotonic_ms() + summary.period_ms;
  while (g_stop == 0) {
    const int64_t now = monotonic_ms();
    if (g_reload != 0) {
      g_reload = 0;
      reload();
      flush.period_ms = config_->ledger.flush_interval_ms;
    }
    if (reclaim.due(now)) reclaim_now();
    if (flush.due(now)) flush_now();
    if (publish.due(now)) publish_metrics();
    if (summary.due(now))
      log_line("info", "alive", "flushes=" + std::to_string(flushes_) + " reclaimed=" + std::to_string(reclaimed_));
    const struct timespec tick {0, kTickMs * 1'000'000};
    ::nanosleep(&tick, nullptr);  // a signal cuts it short
  }
}

int Sidecar::shutdown() {
  const int64_t started = monotonic_ms();
  if (network_) network_->stop();  // cancels OpenRouter work in flight: bounded, whatever OpenRouter does
  if (leases_) leases_->stop();    // a last report and every unused grant back: bounded by the store's timeouts
  const bool flushed = flush_now();
  log_line("info", "stopped", "flushes=" + std::to_string(flushes_) + " reclaimed=" + std::to_string(reclaimed_) +
                                  " last_flush_ok=" + (flushed ? "true" : "false") +
                                  " shutdown_ms=" + std::to_string(monotonic_ms() - started));
  return flushed ? kExitOk : kExitRuntime;
}

// SIGHUP: a config that does not load, moves the ledger or does not fit it is refused, and the
// running one kept.
void Sidecar::reload() {
  std::string error;
  auto fresh = load_config(config_path_, &error);
  if (!fresh) {
    log_line("error", "reload refused, keeping the running config: " + error);
    return;
  }
  if (fresh->ledger.dir != config_->ledger.dir || fresh->ledger.segment_dir != config_->ledger.segment_dir ||
      fresh->global.present != config_->global.present || fresh->global.host_id != config_->global.host_id) {
    log_line("error", "reload refused: ledger.dir, ledger.segment_dir, the global section's presence and global.host_id "
                      "cannot change while running (restart the sidecar)");
    return;
  }
  const ApplyReport r = apply_config(*ledger_, *fresh);
  if (r.refused) {
    log_line("error", "reload refused, keeping the running config: " + r.errors.front());
    return;
  }
  log_apply(r, "config reloaded");
  config_ = std::make_shared<const Config>(std::move(*fresh));
  network_->update(config_);
  if (leases_) leases_->update(config_);
  flush_now();
}

bool Sidecar::flush_now() {
  const int64_t started = monotonic_ms();
  const Status s = ledger_->flush();
  const int64_t now_unix = ledger_->now_ms() / 1000;
  if (s.ok()) {
    if (last_flush_code_ != Code::kOk)
      log_line("info", "flush recovered", "failed_in_a_row=" + std::to_string(failures_in_a_row_));
    last_flush_code_ = Code::kOk;
    failures_in_a_row_ = 0;
    ++flushes_;
    counters_.update([&](SidecarCounters& c) {
      ++c.flushes;
      c.last_flush_unix = now_unix;
    });
    return true;
  }
  ++failures_in_a_row_;
  counters_.update([](SidecarCounters& c) { ++c.flush_failures; });
  if (s.code() != last_flush_code_)  // once per state change, not once per flush
    log_line("error", "flush failed: " + std::string(s.message()) + "; " + flush_hint(s.code()),
             "code=" + std::to_string(s.value()) + " ms=" + std::to_string(monotonic_ms() - started));
  last_flush_code_ = s.code();
  return false;
}

void Sidecar::reclaim_now() {
  uint32_t reclaimed = 0;
  const Status s = ledger_->reclaim(&reclaimed);
  if (!s.ok()) log_line("error", "reclaim failed: " + describe(s));
  if (reclaimed > 0) log_line("info", "reclaimed holds", "count=" + std::to_string(reclaimed));
  reclaimed_ += reclaimed;
  counters_.update([&](SidecarCounters& c) { c.reclaimed_holds += reclaimed; });
}

void Sidecar::publish_metrics() {
  if (!metrics_.running()) return;
  SidecarCounters c = counters_.copy();
  if (leases_) {
    const global::LeaseCounters g = leases_->counters();
    c.global = true;
    c.lease_grants = g.grants;
    c.lease_grant_denials = g.grant_denials;
    c.lease_returns = g.returns;
    c.lease_expiries = g.expiries;
    c.lease_recalls = g.recalls;
    c.store_errors = g.store_errors;
    c.store_round_trip_us = g.last_round_trip_us;
    c.leased_nanousd = g.leased_nanousd;
  }
  metrics_.publish(render_metrics(*ledger_, c, ledger_->now_ms() / 1000));
}

}  // namespace ledger::admin
