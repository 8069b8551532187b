// inflight.hpp — what the proxy has in flight, on disk, so that a proxy that was SIGKILLed settles
// what it left behind (DESIGN 12: nothing double-charged, the generation lookup settles what was
// billed).
//
// One file per proxy process, <ledger.dir>/proxy-inflight/<pid>.<start time>.slots: kSlots fixed
// slots of the file mapped shared, one per open hold (the reservation id, the hold, and the
// generation id once OpenRouter named it, a stream's first event). A record is a few stores into
// the mapping, no system call: the kernel keeps the pages when the process dies, so a SIGKILL at
// any instruction leaves either the whole record or none (a slot is written, then published by
// its reservation word last; a generation id by its length word last). Not synced: the records
// must survive the process, not the machine (after a reboot the segment is rebuilt and open holds
// are gone anyway; reconciliation per key restores the truth). On start, a proxy settles the
// records of every previous proxy on this ledger that is no longer running: at the generation's
// real cost when it can be looked up, else the hold in full. A commit is idempotent (a second one
// is "already settled"), and a hold the sidecar reclaimed meanwhile is a tombstone that still
// takes its late commit, so nothing is charged twice or lost. Records of the earlier format (a
// directory <pid>.<start time>/ with a small file per hold) are still read and settled.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace ledger::proxy {

class Inflight {
 public:
  static constexpr uint32_t kSlots = 16384;  // proxy.max_concurrent's upper bound: one slot per request in flight
  static constexpr size_t kGenerationMax = 128;
  struct Record {
    uint64_t reservation = 0;
    int64_t hold_nanousd = 0;
    std::string generation;  // "" = not known
    std::string file;        // where it is kept
    uint32_t slot = UINT32_MAX;  // in a slots file; UINT32_MAX: a file of the earlier format
  };

  explicit Inflight(const std::string& ledger_dir);
  ~Inflight();
  Inflight(const Inflight&) = delete;
  Inflight& operator=(const Inflight&) = delete;
  bool open(std::string* error);  // makes this process's slots file
  // A slot for an open hold (UINT32_MAX when all are taken: the request goes on unrecorded, and a
  // warning says so once).
  uint32_t begin(uint64_t reservation, int64_t hold_nanousd);
  void named(uint32_t slot, const std::string& generation);
  void end(uint32_t slot);
  // Records of proxies on this ledger that are no longer running (not this one's).
  std::vector<Record> left_over() const;
  // Clears a left-over record (once settled), and its file when it holds no other.
  static void forget(const Record& record);

 private:
  std::string root_, mine_;
  void* map_ = nullptr;
  std::mutex mutex_;
  std::vector<uint32_t> free_;  // guarded by mutex_
  bool warned_ = false;         // guarded by mutex_
};

}  // namespace ledger::proxy
