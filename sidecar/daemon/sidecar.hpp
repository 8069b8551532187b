// sidecar.hpp — ledger-sidecar as one type: init -> run -> shutdown (after redis's serverCron).
//
// Two threads. The tick (run) does only local work, each job on its own period: reclaim (every
// second), flush (every ledger.flush_interval_ms), metrics (every second), and config reloads on
// SIGHUP. It never waits on the network: OpenRouter work (prices, reconcile, revocation, the
// report's key dashboard) is the NetworkWorker's, under per-cycle deadlines. Signal handlers only
// set flags. In global mode a third thread, the LeaseWorker, keeps this host's leases from the shared
// store (global/lease_worker.hpp). SIGTERM/SIGINT: the network worker is cancelled (bounded), the
// lease worker reports a last time and gives back what is unused, then a final flush, then exit.
#pragma once

#include <memory>
#include <string>

#include "core/admin.hpp"
#include "core/sidecar_lock.hpp"
#include "daemon/network.hpp"
#include "global/lease_worker.hpp"
#include "reports/metrics.hpp"

namespace ledger::admin {

class Sidecar {
 public:
  // Loads the config, opens the ledger, takes the one-sidecar lock, installs the signal handlers,
  // applies the config and starts the metrics server. Returns an exit code when it cannot start
  // (kExitUsage for a bad config, kExitRuntime otherwise), kExitOk when it can.
  int init(const std::string& config_path, bool once);
  // The tick loop, until SIGTERM/SIGINT (or after one full cycle with --once).
  void run();
  // Stops the network worker, flushes a last time; the process's exit code.
  int shutdown();

 private:
  void reload();
  bool flush_now();
  void reclaim_now();
  void publish_metrics();

  std::string config_path_;
  bool once_ = false;
  std::shared_ptr<const Config> config_;
  std::unique_ptr<Ledger> ledger_;
  SidecarLock lock_;
  SharedCounters counters_;
  std::unique_ptr<NetworkWorker> network_;
  std::unique_ptr<global::LeaseWorker> leases_;  // global mode only
  MetricsServer metrics_;
  // The last flush's outcome: a failure is logged when it starts or changes, not once per flush.
  Code last_flush_code_ = Code::kOk;
  uint64_t failures_in_a_row_ = 0;
  uint64_t flushes_ = 0, reclaimed_ = 0;
};

}  // namespace ledger::admin
