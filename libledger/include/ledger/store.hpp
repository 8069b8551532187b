// ledger/store.hpp — the durable record of a ledger (LMDB, <dir>/ledger.mdb), read side.
//
// The shared segment decides; the store remembers. Ledger::flush() (and the sidecar, every
// flush_interval_ms) writes what was settled into the store in one synced LMDB transaction:
//   accounts   name -> budget, period, parent, blocked, tier
//   meta       format version, last flush time, the tier table
//   periods    (name, period) -> settled spend and requests of that period (the last snapshot)
//   daily      (name, UTC day) -> spend and requests settled that day
//   model_daily (name, model, UTC day) -> what commits of authorize()d holds settled that day
//   models     (name, model) -> the last per-model tally seen, with the id of its segment
//   key_daily  (key hash, name, UTC day) -> what settled through that OpenRouter key that day
//   key_tallies, adjustments -> the last per-key and per-adjustment tallies seen (like models)
//   adjustment_daily (name, key hash, UTC day) -> reconciliation adjustments flushed that day
//   journal    seq -> one entry per account and flush, and one per reconciliation adjustment,
//              written in the same transaction as the totals it changed: the audit trail
// A flush computes, per account and period, settled = used - live holds, and records the change
// since the snapshot already stored; a flusher killed mid-way commits nothing, so the next flush
// records the same change: nothing lost, nothing counted twice. When the segment is gone (reboot),
// the next open rebuilds budgets and the current and previous periods' spend from the store; the
// loss window is what was settled after the last completed flush.
// Thread safety: a StoreReader is for one thread; readers in other processes may read while a flush
// writes. Within one process, do not keep a StoreReader of a directory open across a flush of the
// same directory (or another StoreReader of it): LMDB allows one environment per file per process,
// because closing one drops the process's file locks for all of them. Open, read, close.
// The library enforces that rule: every LMDB environment of a process takes one process-wide lock
// while it is open, so threads take turns; a thread that has a StoreReader open gets
// kInvalidArgument from a second StoreReader::open, Ledger::flush and Ledger::open (any of them could
// otherwise wait for a thread that waits for the store).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/period.hpp"
#include "ledger/status.hpp"

namespace ledger {

inline constexpr uint32_t kStoreFormatVersion = 1;

struct StoredAccount {
  std::string account;
  std::string parent;
  int64_t limit_nanousd = 0;
  Period period = Period::kNone;
  bool blocked = false;
  std::string tier;  // "" = inherits
  std::string key_hash;  // the OpenRouter key bound to the account, "" = none
  bool global = false;   // global mode: admits only against this host's leases
  // Its rules (DESIGN 13) as the last flush recorded them: soft, a top-up (0 = none) and its end.
  bool soft = false;
  int64_t topup_nanousd = 0;
  int64_t topup_until_unix_ms = 0;
};

struct StoredPeriod {
  std::string account;
  Period period = Period::kNone;
  int64_t index = 0;           // period index (see period.hpp)
  int64_t spent_nanousd = 0;   // settled
  uint64_t requests = 0;
};

struct StoredDay {
  std::string account;
  int64_t day = 0;             // days since 1970-01-01 (UTC)
  int64_t spent_nanousd = 0;
  uint64_t requests = 0;
};

// Per-model spend: what commits of authorize()d holds settled for (account, model) that day. The
// account is the one the hold was authorized for (a team's per-model spend is its members' sum).
struct StoredModelDay {
  std::string account;
  std::string model;
  int64_t day = 0;
  int64_t spent_nanousd = 0;
  uint64_t requests = 0;
};

// What settled through one OpenRouter key for one account that day (commits of holds made with the
// key, debits, and adjustments charged to the key).
struct StoredKeyDay {
  std::string key_hash;  // 64 hex
  std::string account;
  int64_t day = 0;
  int64_t spent_nanousd = 0;
  uint64_t requests = 0;
};

// Reconciliation adjustments of one account through one key ("" = none) flushed that day.
struct StoredAdjustmentDay {
  std::string account;
  std::string key_hash;
  int64_t day = 0;
  int64_t amount_nanousd = 0;
  uint64_t count = 0;
};

// kTopup: a top-up set (delta_nanousd, until index = unix ms) or removed (0). Reaches disk: never renumber.
enum class JournalKind : uint32_t { kFlush = 1, kAdjustment = 2, kTopup = 3 };
struct JournalEntry {
  uint64_t seq = 0;
  int64_t unix_ms = 0;
  JournalKind kind = JournalKind::kFlush;
  std::string account;
  Period period = Period::kNone;
  int64_t index = 0;
  int64_t delta_nanousd = 0;
  int64_t delta_requests = 0;
  std::string key_hash;  // kAdjustment: the key whose drift it corrects ("" = none)
};

struct StoreStats {
  int64_t last_flush_ms = 0;
  uint64_t journal_entries = 0;
  uint64_t map_size_bytes = 0;
  uint64_t used_bytes = 0;
};

// Key bindings: which OpenRouter key (its hash) belongs to which account, as provisioned or rotated
// by ledgerctl (a binding in the store wins over the config's key_hash). hash "" removes it.
Status store_bind_key(std::string_view dir, std::string_view account, std::string_view hash, uint32_t file_mode = 0600);
Status store_key_bindings(std::string_view dir, std::vector<std::pair<std::string, std::string>>* out);

// Opens <dir>/ledger.mdb read-only. kNotFound when there is none yet, kIncompatible for another
// store format.
class StoreReader {
 public:
  static Status open(std::string_view dir, std::unique_ptr<StoreReader>* out);
  ~StoreReader();
  Status accounts(std::vector<StoredAccount>* out) const;
  Status periods(std::vector<StoredPeriod>* out) const;
  // Only the records whose period index is in [first_index, last_index] (of every kind: callers
  // filter by kind), read by seeking rather than scanning the whole history.
  Status periods_in(int64_t first_index, int64_t last_index, std::vector<StoredPeriod>* out) const;
  Status days(int64_t first_day, int64_t last_day, std::vector<StoredDay>* out) const;
  Status model_days(int64_t first_day, int64_t last_day, std::vector<StoredModelDay>* out) const;
  Status key_days(int64_t first_day, int64_t last_day, std::vector<StoredKeyDay>* out) const;
  Status adjustment_days(int64_t first_day, int64_t last_day, std::vector<StoredAdjustmentDay>* out) const;
  Status journal(uint64_t from_seq, size_t max_entries, std::vector<JournalEntry>* out) const;
  Status stats(StoreStats* out) const;
  struct Impl;

 private:
  explicit StoreReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ledger
