// store_codec.hpp — the LMDB store's records and keys (<dir>/ledger.mdb), shared by the flush,
// the rebuild and the reader. Records are fixed-layout little-endian structs; each one's size (and
// version field) tells its version, and readers accept every version they know.
//
// One LMDB environment per file per process (closing one drops the process's locks for all of
// them): every Env in this process takes one process-wide mutex for its lifetime, so threads of one
// process (the sidecar's tick and its network worker) take turns instead of corrupting the lock
// table. A thread that already has an Env open gets Code::kInvalidArgument instead of a deadlock.
#pragma once

#include <lmdb.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/ledger.hpp"
#include "ledger/store.hpp"

namespace ledger::db {

inline constexpr const char* kStoreFile = "/ledger.mdb";
inline constexpr uint32_t kDbCount = 16;

// accounts: name -> budget, period, parent, blocked, tier, bound key. v1 (152 bytes) had no key.
struct AccountValue {
  uint32_t version;  // kAccountValueVersion
  uint32_t blocked;
  int64_t limit_nanousd;
  int32_t period;
  uint32_t flags;     // kAccountGlobal (v2; 0 in v1)
  char parent[64];
  char tier[64];
  char key_hash[64];  // hex, "" = no key bound (v2)
};
inline constexpr uint32_t kAccountGlobal = 1;  // global mode: admits only against leases
inline constexpr uint32_t kAccountValueVersion = 2;
inline constexpr size_t kAccountValueV1Size = 152;
static_assert(sizeof(AccountValue) == 216);

// periods, daily, model_daily, key_daily: spend and requests; adjustment_daily: amount and count.
struct TotalsValue {
  int64_t spent_nanousd;
  uint64_t requests;
};
static_assert(sizeof(TotalsValue) == 16);

// models, key_tallies, adjustments: the last tally a flush saw, and which segment it was from (a
// rebuilt segment's tallies start again at zero, so a snapshot of another segment counts as zero).
struct TallySnapshotValue {
  uint64_t segment_id;
  int64_t spent_nanousd;
  uint64_t requests;
};
static_assert(sizeof(TallySnapshotValue) == 24);

// journal: seq -> one entry. v1 (104 bytes) had no key.
struct JournalValue {
  int64_t unix_ms;
  uint32_t kind;  // JournalKind
  int32_t period;
  int64_t index;
  int64_t delta_nanousd;
  int64_t delta_requests;
  char account[64];
  char key_hash[64];  // hex, "" = none (v2)
};
inline constexpr size_t kJournalValueV1Size = 104;
static_assert(sizeof(JournalValue) == 168);

// meta "limits": the segment's capacities, so that a rebuild makes one at least as large.
struct LimitsValue {
  uint32_t max_accounts, max_reservations, max_processes, max_account_rules;  // rules: 0 in stores before format 4
};
// meta "holds": the hold policy, so that a rebuilt segment keeps every process's default TTL.
struct HoldsValue {
  uint32_t default_ttl_s, tombstone_grace_s, tombstones_max, reserved;
};

Status mdb_status(int rc);

// True when this thread has an Env open already. Callers that take their own locks before opening
// an Env check it first, so that no thread ever waits on one of them while holding the store lock.
bool store_open_on_this_thread();

// An LMDB environment with the ledger's databases, open for one flush, rebuild or read, holding
// the process-wide store lock while it exists.
struct Env {
  MDB_env* env = nullptr;
  MDB_dbi meta = 0, accounts = 0, periods = 0, daily = 0, journal = 0, keys = 0, models = 0, model_daily = 0;
  MDB_dbi key_tallies = 0, key_daily = 0, adjustments = 0, adjustment_daily = 0;
  bool locked = false;
  Env() = default;
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;
  ~Env();
  // write: create what is missing. A store from an older release simply lacks the newer
  // databases (their handles stay 0 for a reader).
  Status open(const std::string& dir, bool write, uint64_t map_size, uint32_t mode);

 private:
  Status open_databases(MDB_txn* txn, bool write);
  Status check_format(MDB_txn* txn, bool write);
};

struct Txn {
  MDB_txn* txn = nullptr;
  ~Txn() {
    if (txn != nullptr) mdb_txn_abort(txn);
  }
  int commit() {
    const int rc = mdb_txn_commit(txn);
    txn = nullptr;
    return rc;
  }
};

inline MDB_val val(const void* data, size_t size) { return MDB_val{size, const_cast<void*>(data)}; }
inline MDB_val val(const std::string& s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
inline MDB_val val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }

template <class T>
bool get_struct(MDB_txn* txn, MDB_dbi dbi, std::string_view key, T* out) {
  MDB_val k = val(key), v;
  if (mdb_get(txn, dbi, &k, &v) != 0 || v.mv_size != sizeof(T)) return false;
  std::memcpy(out, v.mv_data, sizeof(T));
  return true;
}
// A meta value of any size ("" when absent).
bool get_meta(MDB_txn* txn, const Env& env, const char* key, std::string* out);
int put_meta(MDB_txn* txn, const Env& env, const char* key, std::string_view value);
// Reads an AccountValue of any known version (v1 gets an empty key); false for anything else.
bool decode_account(const MDB_val& v, AccountValue* out);

void put_be64(char* out, uint64_t v);
uint64_t get_be64(const char* in);
// Keys: names, NUL, then big-endian numbers (sign bit flipped) so that one prefix's entries sort
// together and in time order. The *_into forms reuse the caller's string (the flush loop).
void period_key_into(std::string* key, std::string_view account, Period kind, int64_t index);
std::string period_key(std::string_view account, Period kind, int64_t index);
void day_key_into(std::string* key, std::string_view prefix, int64_t day);
std::string day_key(std::string_view prefix, int64_t day);
// "a\0b": (account, model), (key, account) and (account, key) pairs.
std::string pair_key(std::string_view first, std::string_view second);

// The tier table and the price table as meta blobs.
std::string encode_tiers(const std::vector<TierSpec>& tiers);
bool decode_tiers(std::string_view in, std::vector<TierSpec>* out);
struct PriceRecord {
  std::string model;
  int64_t prompt = 0, completion = 0, request = 0;
};
std::string encode_prices(const std::vector<PriceRecord>& prices);
bool decode_prices(std::string_view in, std::vector<PriceRecord>* out);

// meta "rules": every account's rules (Ledger::set_rules) and top-up, for a rebuild; a flush that
// finds a top-up changed against this record journals it (JournalKind::kTopup).
struct RulesRecord {
  std::string account;
  RulesSpec rules;
  Topup topup;
};
std::string encode_rules(const std::vector<RulesRecord>& rules);
bool decode_rules(std::string_view in, std::vector<RulesRecord>* out);

uint64_t next_journal_seq(MDB_txn* txn, MDB_dbi journal);

}  // namespace ledger::db
