// inflight.hpp — what the proxy has in flight, on disk, so that a proxy that was SIGKILLed settles
// what it left behind (DESIGN 12: nothing double-charged, the generation lookup settles what was
// billed).
//
// One small file per hold in <ledger.dir>/proxy-inflight/<pid>.<start time>/: the reservation id
// and the hold, and the generation id once OpenRouter named it (a stream's first event). Written
// without fsync: they must survive the process, not the machine (after a reboot the segment is
// rebuilt and open holds are gone anyway; reconciliation per key restores the truth). On start, a
// proxy settles the records of every previous proxy on this ledger that is no longer running: at
// the generation's real cost when it can be looked up, else the hold in full. A commit is
// idempotent (a second one is "already settled"), and a hold the sidecar reclaimed meanwhile is a
// tombstone that still takes its late commit, so nothing is charged twice or lost.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace ledger::proxy {

class Inflight {
 public:
  struct Record {
    uint64_t reservation = 0;
    int64_t hold_nanousd = 0;
    std::string generation;  // "" = not known
    std::string file;
  };

  explicit Inflight(const std::string& ledger_dir);
  bool open(std::string* error);  // makes this process's directory
  void begin(uint64_t reservation, int64_t hold_nanousd);
  void named(uint64_t reservation, int64_t hold_nanousd, const std::string& generation);
  void end(uint64_t reservation);
  // Records of proxies on this ledger that are no longer running (not this one's).
  std::vector<Record> left_over() const;
  // Removes a left-over record (once settled), and its directory when it is the last one.
  static void forget(const Record& record);

 private:
  std::string path_of(uint64_t reservation) const;
  std::string root_, mine_;
};

}  // namespace ledger::proxy
