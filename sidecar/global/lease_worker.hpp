// lease_worker.hpp — the sidecar's global-mode thread: leases from the shared store into the segment.
//
// Every global.refresh_interval_ms, on its own thread (never the tick that flushes and reclaims):
//   1. report this host's cumulative use of each lease and renew them, and read back its leases and
//      the accounts' limits and blocks (one transaction; only every 4th interval while busy, and
//      every ttl/4 while idle, unless a request was denied for want of a lease);
//   2. size each account's headroom from its spend rate (at least a thousandth of its limit; none
//      for a blocked account or one whose limit fell below what is leased: that recalls slices);
//   3. grant what is missing, a whole chain (account and ancestors) per transaction, all levels or
//      none; when the full amount is refused, once more at the minimum slice (near exhaustion the
//      slices shrink, so no budget is stranded on an idle host while a busy one is denied);
//   4. give back what is held beyond twice the headroom (the local lease is lowered first);
//   5. publish every lease into the segment with its local deadline: the start of the last
//      successful report + ttl - a skew margin, on the monotonic clock. Without the store no lease
//      is renewed, so the host admits until its deadlines pass, then denies (fail closed, G4);
//   6. before a window ends, take the next window's slices, so midnight brings no wave of denials.
// stop() makes a last report and gives every unused grant back.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "core/config.hpp"
#include "global/pg.hpp"
#include "global/protocol.hpp"
#include "ledger/ledger.hpp"

namespace ledger::global {

// Counters for metrics and tests (cumulative).
struct LeaseCounters {
  uint64_t grants = 0, grant_denials = 0, returns = 0, expiries = 0, recalls = 0, store_errors = 0, cycles = 0;
  int64_t last_round_trip_us = 0;
  std::map<std::string, int64_t> leased_nanousd;  // account -> this host's lease for its current window
};

// The store's options from the config: the password from store_password_env or store_password_file.
bool store_options(const admin::Config& config, PgOptions* out, std::string* error);
// Who this host is to the store: the machine's id and the ledger directory (a restarted sidecar is
// the same instance; another machine with the same host_id is not).
std::string instance_id(const admin::Config& config);
// This ledger directory's incarnation: random, kept in <dir>/ledger.incarnation (made when missing).
std::string incarnation_id(const admin::Config& config);
// Whose leases and per-key record these are in the store: "host_id/incarnation".
std::string owner_id(const admin::Config& config);

class LeaseWorker {
 public:
  explicit LeaseWorker(Ledger& ledger) : ledger_(ledger) {}
  ~LeaseWorker() { stop(); }
  LeaseWorker(const LeaseWorker&) = delete;
  LeaseWorker& operator=(const LeaseWorker&) = delete;

  void start(std::shared_ptr<const admin::Config> config);
  void update(std::shared_ptr<const admin::Config> config);
  void stop();  // a last report, every unused grant given back; bounded by the store's timeouts
  LeaseCounters counters() const;

 private:
  struct Lease {  // one (account, window) of this host, as the store last said
    int64_t granted = 0, window_granted = 0, limit = 0;
    bool blocked = false;
  };
  struct Demand {  // what this host used of one account's current window, and how fast
    int64_t used = 0, spent = 0, last_used = -1, last_ms = 0;
    int64_t wanted = 0;  // the largest request denied for want of this host's lease, last cycle
    int64_t boost = 0;   // headroom that doubles while such denials go on, and halves when they stop
    double rate_per_s = 0;
  };
  using Key = std::pair<std::string, int64_t>;  // (account, window)

  void loop();
  bool cycle(const admin::Config& config, bool final);
  bool report_and_read(const admin::Config& config, int64_t now_s, bool final);
  std::vector<Usage> current_usage(const admin::Config& config) const;
  bool nothing_to_refresh(const admin::Config& config, const std::vector<Usage>& usage) const;
  void apply_store_view(const admin::Config& config, const RefreshResult& got, int64_t now_s);
  bool restore_reported_spend(const admin::Config& config, const std::vector<LeaseView>& views, int64_t now_s);
  void measure_demand(const admin::Config& config, int64_t now_s);
  void grow(const admin::Config& config, int64_t now_s);
  void give_back_surplus(const admin::Config& config, int64_t now_s, bool everything);
  void take_next_windows(const admin::Config& config, int64_t now_s);
  void publish(const admin::Config& config, int64_t now_s);
  void publish_record(const admin::Config& config, bool final);
  int64_t headroom(const admin::AccountConfig& a, const Lease& lease, const Demand& d, const admin::Config& config) const;
  static int64_t single_slice(const Lease& lease, const Demand& d);
  std::string next_request_id();

  Ledger& ledger_;
  std::unique_ptr<PgConnection> pg_;
  std::string instance_;
  std::string owner_;  // "host_id/incarnation": whose leases these are
  bool host_claimed_ = false;
  std::map<Key, Lease> leases_;
  std::map<std::string, Demand> demand_;
  int64_t record_ms_ = 0;        // when this host last published its record (monotonic)
  PublishedRows published_;      // what it published then (only changes are sent)
  std::map<Key, std::pair<int64_t, int64_t>> reported_;  // (used, spent) per lease in the last refresh
  uint64_t refreshes_ = 0;
  bool restored_ = false;  // the first refresh compared the store's record with the segment
  int64_t renewed_mono_ms_ = 0;  // start of the last successful report: the leases' local clock
  uint64_t request_counter_ = 0;
  std::string last_error_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::shared_ptr<const admin::Config> config_;  // guarded by mutex_
  bool stopping_ = false;                       // guarded by mutex_
  LeaseCounters counters_;                      // guarded by mutex_
  std::thread thread_;
};

}  // namespace ledger::global
