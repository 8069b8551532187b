// metrics.hpp — Prometheus text exposition of the ledger and the sidecar, on a loopback port.
//
// The sidecar renders the text once per tick-second (render_metrics) and publishes it; a small
// server thread (Boost.Beast) answers GET /metrics with the last published text. Money is exposed
// as integer nano-USD (metric names end in _nanousd), never as a float.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "ledger/ledger.hpp"

namespace ledger::admin {

struct SidecarCounters {
  uint64_t flushes = 0, flush_failures = 0, reclaimed_holds = 0;
  int64_t last_flush_unix = 0;
  uint64_t reconcile_runs = 0, reconcile_errors = 0, adjustments = 0;
  int64_t last_reconcile_success_unix = 0;
  // (owner account, key hash prefix) -> OpenRouter's window spend minus the ledger's through the key (last run)
  std::map<std::pair<std::string, std::string>, int64_t> drift_nanousd;
  std::map<int, uint64_t> openrouter_responses;  // HTTP status -> count
  // Global mode (the lease worker's counters; absent when `global` is false).
  bool global = false;
  uint64_t lease_grants = 0, lease_grant_denials = 0, lease_returns = 0, lease_expiries = 0, lease_recalls = 0;
  uint64_t store_errors = 0;
  int64_t store_round_trip_us = 0;
  std::map<std::string, int64_t> leased_nanousd;  // account -> this host's lease for its current window
};

std::string render_metrics(const Ledger& ledger, const SidecarCounters& counters, int64_t now_unix);

class MetricsServer {
 public:
  MetricsServer();
  ~MetricsServer();
  // listen = "127.0.0.1:9464" (loopback only). False with *error when it cannot listen.
  bool start(const std::string& listen, std::string* error);
  void publish(std::string text);
  bool running() const { return thread_.joinable(); }
  void stop();

 private:
  struct State;
  std::unique_ptr<State> state_;
  std::thread thread_;
};

}  // namespace ledger::admin
