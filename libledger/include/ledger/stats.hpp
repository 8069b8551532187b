// ledger/stats.hpp — what a ledger reports: balances, counters, per-model and per-key spend, a
// window's use in global mode, rate counts. Read lock-free; a read never changes anything.
#pragma once

#include <cstdint>
#include <string>

#include "ledger/period.hpp"

namespace ledger {

struct Balance {
  int64_t limit_nanousd = 0;      // the limit admission applies: configured, plus a top-up in force
  int64_t topup_nanousd = 0;      // the part of limit_nanousd that is a top-up (0 = none in force)
  int64_t topup_until_unix = 0;   // when that top-up ends
  bool soft = false;              // the account's own limit never denies
  int64_t spent_nanousd = 0;      // settled in the current period
  int64_t held_nanousd = 0;       // live holds admitted in the current period
  int64_t available_nanousd = 0;  // limit - spent - held (negative after an overrun)
  uint64_t requests = 0;          // settled debits and commits in the current period
  Period period = Period::kNone;
  bool blocked = false;
  int64_t period_start_unix = 0;
};

struct AccountBalance {
  std::string account;
  std::string parent;  // empty = none
  Balance balance;
};

// Counts for monitoring (one pass over the tables; not for the hot path).
struct LedgerStats {
  uint32_t accounts = 0;
  uint32_t processes_attached = 0;    // process slots in use, admin ones included (dead ones until reclaimed)
  uint32_t reservations_held = 0;
  uint32_t reservations_expired = 0;  // tombstones waiting for a late commit
  uint32_t max_accounts = 0, max_reservations = 0, max_processes = 0;
  uint64_t denied_over_budget = 0, denied_parent_over_budget = 0, denied_model = 0, denied_blocked = 0;
  uint64_t denied_rate = 0;
  uint32_t tallies = 0, max_tallies = 0;  // (account, model|key) tallies in use, and the table size
  uint64_t tallies_dropped = 0;  // settlements not tallied per model or key (table crowded); still charged
  uint64_t tombstones_dropped = 0;  // tombstones dropped before their grace ended (count bound, full table)
  uint32_t keys = 0, max_keys = 0;  // OpenRouter keys known to the segment, and how many fit
};

// What commits of authorize()d holds settled for one (account, model) since the segment was created
// (the store keeps the durable per-day record; see store.hpp).
struct ModelSpend {
  std::string account;
  std::string model;
  int64_t spent_nanousd = 0;
  uint64_t requests = 0;  // wraps at 2^32 like every request counter of the segment
};

// What settled through one OpenRouter key for one account since the segment was created: commits
// (of holds made with that key), debits, and reconciliation adjustments charged to the key.
struct KeySpend {
  std::string account;
  std::string key_hash;   // 64 lowercase hex
  int64_t spent_nanousd = 0;
  uint64_t requests = 0;
  int64_t adjusted_nanousd = 0;  // the part that reconciliation adjustments added
};

// One account's use of one window (period index of its period kind) on this host, and the lease
// it admits against there (global mode).
struct WindowUsage {
  int64_t used_nanousd = 0;    // spent + held in the window
  int64_t spent_nanousd = 0;   // settled
  int64_t held_nanousd = 0;    // live holds admitted into it
  uint64_t requests = 0;
  bool global = false;         // the account admits only against its lease
  int64_t lease_limit_nanousd = 0;  // this host's lease for the window (0 = none)
  int64_t lease_deadline_ms = 0;    // CLOCK_MONOTONIC (Ledger::monotonic_ms)
};

// What live holds going through one OpenRouter key hold now (Ledger::key_holds): requests in flight
// that OpenRouter may already have billed.
struct KeyHold {
  std::string key_hash;  // 64 lowercase hex
  int64_t held_nanousd = 0;
  uint32_t holds = 0;
};

// What an account's rate limits have counted (Ledger::rate_usage): requests and tokens in the
// current minute, holds open now.
struct RateUsage {
  int64_t minute_start_unix = 0;
  uint64_t requests = 0;
  uint64_t tokens = 0;
  uint64_t concurrent = 0;
};

}  // namespace ledger
