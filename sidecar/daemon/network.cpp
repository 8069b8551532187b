// network.cpp — see network.hpp.
#include "daemon/network.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "core/admin.hpp"
#include "global/host_record.hpp"
#include "global/lease_worker.hpp"
#include "global/protocol.hpp"
#include "openrouter/reconcile.hpp"
#include "reports/reports.hpp"

namespace ledger::admin {

namespace {

using Clock = std::chrono::steady_clock;

std::chrono::milliseconds ms(int64_t n) { return std::chrono::milliseconds(n); }

void log_reconcile(const ReconcileReport& r) {
  for (const auto& row : r.rows) {
    if (row.drift == Drift::kWithinTolerance) continue;
    log_line(row.drift == Drift::kAdjusted ? "info" : "warn", "reconcile: " + drift_text(row),
             "key=" + row.key_hash.substr(0, 12) + " account=" + (row.account.empty() ? "-" : row.account) +
                 " window=" + (row.period.empty() ? "lifetime" : row.period) + " ledger_usd=" + format_usd(row.ledger_nanousd) +
                 " openrouter_usd=" + (row.openrouter_nanousd ? format_usd(*row.openrouter_nanousd) : "unknown") +
                 " adjusted_usd=" + format_usd(row.adjusted_nanousd) + (row.detail.empty() ? "" : " detail=\"" + row.detail + "\""));
  }
  for (const auto& line : unsaid_key_use(r)) log_line("warn", "reconcile: " + line);
  if (!r.deferred.empty()) log_line("info", "reconcile: no adjustment on this run: " + r.deferred);
  if (!r.unowned_keys.empty()) log_line("warn", "keys no account owns (key sprawl)", "count=" + std::to_string(r.unowned_keys.size()));
  for (const auto& line : r.revoked) log_line("info", line);
  for (const auto& line : r.revoke_errors) log_line("error", line);
}

}  // namespace

int64_t NetworkWorker::reconcile_deadline_ms(const Config& config) {
  return std::clamp<int64_t>(int64_t{config.openrouter.reconcile_interval_s} * 1000, 5'000, 300'000);
}

// Global mode: one reconciler per team at a time (G5), so a drift is adjusted once, not once per
// host. The leader lease lasts three reconcile intervals and is renewed by each of its cycles.
bool NetworkWorker::leads_reconcile(const Config& config) {
  if (!config.global.present) return true;
  global::PgOptions options;
  std::string error;
  if (!global::store_options(config, &options, &error)) {
    log_line("warn", "reconcile skipped: " + error);
    return false;
  }
  global::PgConnection pg(options);
  global::PgError e;
  bool leader = false;
  const int64_t ttl_s = std::max<int64_t>(10, int64_t{config.openrouter.reconcile_interval_s} * 3);
  if (!global::lead(pg, "reconcile", config.global.host_id, global::instance_id(config), ttl_s, &leader, &e)) {
    log_line("warn", "reconcile skipped: cannot reach the global store to take the reconciler's lease: " + e.message);
    return false;
  }
  if (leader != was_leader_)
    log_line("info", leader ? "global: this host is the team's reconciler" : "global: another host reconciles the team");
  was_leader_ = leader;
  return leader;
}

KeyRecordSource NetworkWorker::global_key_record(const Config& config) {
  return [this, &config](KeyRecord* out, std::string* error) {
    global::PgOptions options;
    if (!global::store_options(config, &options, error)) return false;
    global::PgConnection pg(options);
    global::PgError e;
    if (global::pooled_key_days(pg, ledger_, config, &cancel_, &out->days, &out->complete, &out->incomplete_because, &e)) return true;
    *error = "the global store: " + e.message;
    return false;
  };
}

void NetworkWorker::reconcile_cycle(const Config& config) {
  if (!leads_reconcile(config)) return;
  std::string error;
  auto client = client_for(config, &error, &cancel_);
  if (!client) {
    log_line("warn", "reconcile skipped: " + error);
    counters_.update([](SidecarCounters& c) { ++c.reconcile_errors; });
    return;
  }
  client->set_deadline(Clock::now() + ms(reconcile_deadline_ms(config)));
  std::string price_error;
  const size_t prices = refresh_prices(ledger_, *client, config, &price_error);
  if (!price_error.empty()) log_line("warn", "price refresh: " + price_error + " (keeping the prices we have)");
  else if (prices > 0) log_line("debug", "prices refreshed", "models=" + std::to_string(prices));
  // Global mode: a key's usage at OpenRouter is every host's, so it is compared with what every
  // host recorded through the key (global/host_record.hpp), read after OpenRouter.
  const ReconcileReport r = config.global.present ? reconcile(ledger_, *client, config, false, kReconcileToleranceNanousd,
                                                              global_key_record(config))
                                                  : reconcile(ledger_, *client, config, false);
  const int64_t now_unix = ledger_.now_ms() / 1000;
  counters_.update([&](SidecarCounters& c) {
    ++c.reconcile_runs;
    for (const auto& [status, count] : client->status_counts()) c.openrouter_responses[status] += count;
    if (!r.error.empty()) {
      ++c.reconcile_errors;
      return;
    }
    c.last_reconcile_success_unix = now_unix;
    c.drift_nanousd.clear();
    for (const auto& row : r.rows) {
      if (row.openrouter_nanousd) c.drift_nanousd[{row.account, row.key_hash.substr(0, 12)}] = *row.openrouter_nanousd - row.ledger_nanousd;
      if (row.adjusted_nanousd > 0) ++c.adjustments;
    }
  });
  if (!r.error.empty()) {
    log_line("error", "reconcile failed: " + r.error + " (the ledger's admission and flushes are unaffected; will retry)");
    return;
  }
  log_reconcile(r);
}

void NetworkWorker::reports_cycle(const Config& config) {
  std::error_code ec;
  std::filesystem::create_directories(config.reports.dir, ec);
  const int64_t now = ledger_.now_ms() / 1000;
  Report report;
  std::string error;
  if (config.global.present) {  // the global accounts' figures are every host's
    if (!global::build_global_report(ledger_, config, floor_days(now) - 6, floor_days(now), now, &report, &error)) {
      log_line("warn", "reports: not written this time (the previous ones stay): " + error);
      return;
    }
  } else if (const Status s = build_report(config, floor_days(now) - 6, floor_days(now), now, &report); !s.ok()) {
    log_line("warn", "reports: cannot read the store", "code=" + std::to_string(s.value()));
    return;
  }
  if (config.openrouter.present) {
    if (auto client = client_for(config, &error, &cancel_)) {
      client->set_deadline(Clock::now() + ms(kReportDeadlineMs));
      std::vector<openrouter::KeyInfo> keys;
      if (const openrouter::Error e = client->list_keys(&keys)) log_line("warn", "reports: no key dashboard this time: " + e.message);
      else add_key_dashboard(keys, key_bindings(config), &report);
    }
  }
  for (const auto& format : config.reports.formats) {
    const std::string path = config.reports.dir + "/team-report." + format;
    const std::string text = format == "json" ? render_json(report) : format == "csv" ? render_csv(report) : render_html(report);
    if (!write_atomically(path, text, &error)) log_line("warn", "reports: " + error);
  }
  log_line("info", "reports written", "dir=" + config.reports.dir + " accounts=" + std::to_string(report.rows.size()));
}

void NetworkWorker::run_once(const Config& config) {
  if (config.openrouter.present) reconcile_cycle(config);
  reports_cycle(config);
}

void NetworkWorker::start(std::shared_ptr<const Config> config) {
  config_ = std::move(config);
  thread_ = std::thread([this] { loop(); });
}

void NetworkWorker::update(std::shared_ptr<const Config> config) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    config_ = std::move(config);
    config_changed_ = true;
  }
  wake_.notify_all();
}

void NetworkWorker::stop() {
  cancel_.store(true);
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void NetworkWorker::loop() {
  // The first reconcile starts right away (it no longer delays the first flush: that is the tick's).
  Clock::time_point next_reconcile = Clock::now(), next_reports = Clock::now();
  for (;;) {
    std::shared_ptr<const Config> config;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait_until(lock, std::min(next_reconcile, next_reports), [this] { return cancel_.load() || config_changed_; });
      if (cancel_.load()) return;
      if (config_changed_) next_reconcile = std::min(next_reconcile, Clock::now());  // a new config: reconcile with it
      config_changed_ = false;
      config = config_;
    }
    const Clock::time_point now = Clock::now();
    if (now >= next_reconcile) {
      next_reconcile = now + ms(int64_t{config->openrouter.reconcile_interval_s} * 1000);
      if (config->openrouter.present) reconcile_cycle(*config);
    }
    if (cancel_.load()) return;
    if (Clock::now() >= next_reports) {
      next_reports = Clock::now() + ms(int64_t{config->reports.interval_s} * 1000);
      reports_cycle(*config);
    }
  }
}

}  // namespace ledger::admin
