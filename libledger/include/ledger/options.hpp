// ledger/options.hpp — how a ledger is opened: the capacities fixed when its segment is created
// (Limits, each largest value named once), the clock, the hold policy (Options, HoldPolicy).
//
// Caveats: the segment lives in /dev/shm unless Options::segment_dir says otherwise, and a reboot
// loses it (the next open rebuilds it from the store); its pages are reserved when it is created,
// so a full filesystem is Code::kFull then, never a SIGBUS later.
#pragma once

#include <cstdint>
#include <string>

namespace ledger {

// Capacities fixed when the segment is created; reaching one gives Code::kFull.
// Each field's largest value is named once here (the segment's format checks against these).
inline constexpr uint32_t kMaxAccountsMax = 1u << 24;
inline constexpr uint32_t kMaxReservationsMax = 1u << 24;
inline constexpr uint32_t kMaxProcessesMax = 1023;
inline constexpr uint32_t kMaxAccountRulesMax = 65535;
struct Limits {
  uint32_t max_accounts = 65536;       // 1 .. kMaxAccountsMax
  uint32_t max_reservations = 65536;   // 1 .. kMaxReservationsMax (tombstones count until their grace ends)
  uint32_t max_processes = 256;        // 1 .. kMaxProcessesMax handles attached at once
  // 0 .. kMaxAccountRulesMax accounts with rules of their own (a model list, soft, a top-up, rate
  // limits); 192 bytes each. Not in the C ABI's ledger_limits_t: a ledger created there gets this default.
  uint32_t max_account_rules = 4096;
};

// A source of wall-clock time in milliseconds since the Unix epoch (UTC). Tests inject one to cross
// day, week and month boundaries. now_ms == nullptr uses CLOCK_REALTIME_COARSE.
struct Clock {
  int64_t (*now_ms)(void* context) = nullptr;
  void* context = nullptr;
};

inline constexpr uint32_t kTtlMaxSeconds = 7 * 86400;               // a hold's TTL
inline constexpr uint32_t kTombstoneGraceMaxSeconds = 30 * 86400;   // an expired hold's late-commit grace

struct Options {
  // Behaviour.
  // false: attach only. An open that finds the store (<dir>/ledger.mdb) but no segment (after a
  // reboot) still rebuilds the segment from the store; Code::kNotFound when there is neither.
  bool create_if_missing = true;
  // The sidecar and ledgerctl: such a handle may use process slots kept for admin tools, so that
  // a worker pool that takes every one of max_processes cannot lock the admin side out.
  bool admin = false;
  // Used only when a segment is created. A rebuild from the store uses, per field, the larger of
  // these and the limits the store recorded for the last segment.
  Limits limits;
  // The hold policy a new segment starts with; an existing segment keeps its own, for every
  // process (set_hold_policy changes it; ledgerctl init and the sidecar apply the config's).
  uint32_t default_ttl_s = 600;        // hold TTL when reserve() is given 0 (1 .. kTtlMaxSeconds)
  uint32_t tombstone_grace_s = 86400;  // how long an expired hold accepts its late commit (0 .. 30 days)
  uint32_t tombstones_max = 0;         // 0 = half of max_reservations
  uint32_t file_mode = 0600;       // segment, lock file and store (0660 for a group-shared ledger)
  uint64_t store_map_size_bytes = uint64_t{1} << 30;  // LMDB map (sparse); full -> Code::kFull
  // Where the segment lives: "" = where the ledger's creator put it (recorded in
  // <dir>/ledger.segment-dir), else /dev/shm. An absolute directory on a tmpfs (or any filesystem
  // that can back a shared mapping). Its pages are reserved at creation: no room is Code::kFull.
  std::string segment_dir;
  Clock clock;
};

// How holds expire, for every process of the segment (Ledger::set_hold_policy).
struct HoldPolicy {
  uint32_t default_ttl_s = 600;        // a hold's TTL when the caller passes 0
  uint32_t tombstone_grace_s = 86400;  // an expired hold still accepts its late commit this long
  // At most this many tombstones are kept (the oldest beyond it are dropped by reclaim); a reserve
  // that finds no free slot drops the oldest one itself, so tombstones never starve live holds.
  // A late commit whose tombstone was dropped gets kUnknownReservation and charges nothing (for
  // accounts whose key is reconciled, the next reconcile charges what OpenRouter billed). 0 = half
  // of max_reservations.
  uint32_t tombstones_max = 0;
};

}  // namespace ledger
