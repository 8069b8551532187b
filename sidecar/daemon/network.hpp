// network.hpp — the sidecar's network worker: everything that talks to OpenRouter, on its own
// thread, never on the tick that flushes and reclaims.
//
// Each cycle (price refresh, reconcile, key revocation; the team report with its key dashboard)
// runs under an overall deadline: the OpenRouter client stops every transfer, retry and
// Retry-After sleep at the deadline, so a rate-limiting or slow OpenRouter delays the next cycle of
// this worker and nothing else. stop() cancels what is in flight (a transfer aborts within about a
// second, a backoff sleep within 50 ms) and joins. The worker shares the Ledger handle (thread-safe)
// and the counters (behind their mutex) with the tick; a reload hands it the new config.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "core/config.hpp"
#include "ledger/ledger.hpp"
#include "openrouter/reconcile.hpp"
#include "reports/metrics.hpp"

namespace ledger::admin {

// The counters the tick and the worker both write, and the metrics read.
class SharedCounters {
 public:
  template <class Fn>
  void update(Fn&& fn) {
    std::lock_guard<std::mutex> lock(mutex_);
    fn(counters_);
  }
  SidecarCounters copy() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return counters_;
  }

 private:
  mutable std::mutex mutex_;
  SidecarCounters counters_;
};

class NetworkWorker {
 public:
  NetworkWorker(Ledger& ledger, SharedCounters& counters) : ledger_(ledger), counters_(counters) {}
  ~NetworkWorker() { stop(); }
  NetworkWorker(const NetworkWorker&) = delete;
  NetworkWorker& operator=(const NetworkWorker&) = delete;

  void start(std::shared_ptr<const Config> config);
  // After a reload: the next cycle uses `config` (and a new client, in case the key moved).
  void update(std::shared_ptr<const Config> config);
  // --once: one full cycle on the calling thread (the worker thread is not started).
  void run_once(const Config& config);
  // Cancels what is in flight and joins. Bounded: see the file comment.
  void stop();

  // The overall deadline of a reconcile cycle: its own interval (it cannot overlap the next one),
  // at least 5 s, at most 5 minutes.
  static int64_t reconcile_deadline_ms(const Config& config);
  static constexpr int64_t kReportDeadlineMs = 30'000;

 private:
  void loop();
  void reconcile_cycle(const Config& config);
  bool leads_reconcile(const Config& config);
  KeyRecordSource global_key_record(const Config& config);
  void reports_cycle(const Config& config);

  Ledger& ledger_;
  SharedCounters& counters_;
  std::atomic<bool> cancel_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::shared_ptr<const Config> config_;  // guarded by mutex_
  bool config_changed_ = false;           // guarded by mutex_
  std::thread thread_;
  bool was_leader_ = false;  // for logging a change of reconciler
};

}  // namespace ledger::admin
