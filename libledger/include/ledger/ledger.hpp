// ledger/ledger.hpp — per-account budgets shared by many processes through a shared-memory segment.
//
// Thread and process safety: a Ledger may be used by any number of threads at once, and any number
// of processes may open the same ledger directory. Every operation is lock-free on the worker path
// (compare-and-swap on the accounts' period words) and crash-safe: a process killed between any two
// instructions leaves nothing half-applied once ledger_reclaim (or the sidecar) has run. Admin calls
// (set_budget, block) serialize through a kernel-released file lock.
//
// Errors are returned as Status (see status.hpp); nothing on the worker path throws or allocates.
// Money is integer nano-USD. Reservation ids are opaque and never 0.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/money.hpp"
#include "ledger/period.hpp"
#include "ledger/status.hpp"

namespace ledger {

// Capacities fixed when the segment is created; reaching one gives Code::kFull.
struct Limits {
  uint32_t max_accounts = 65536;       // 1 .. 16,777,216
  uint32_t max_reservations = 65536;   // 1 .. 16,777,216 (tombstones count until their grace ends)
  uint32_t max_processes = 256;        // 1 .. 1023 handles attached at once
};

// A source of wall-clock time in milliseconds since the Unix epoch (UTC). Tests inject one to cross
// day, week and month boundaries. now_ms == nullptr uses CLOCK_REALTIME_COARSE.
struct Clock {
  int64_t (*now_ms)(void* context) = nullptr;
  void* context = nullptr;
};

struct Options {
  // Behaviour.
  bool create_if_missing = true;   // false: Code::kNotFound when no ledger exists at dir
  Limits limits;                   // used only when the segment is created
  uint32_t default_ttl_s = 600;    // hold TTL when reserve() is given 0
  uint32_t tombstone_grace_s = 86400;  // how long an expired hold still accepts its late commit
  uint32_t file_mode = 0600;       // segment, lock file and store (0660 for a group-shared ledger)
  uint64_t store_map_size_bytes = uint64_t{1} << 30;  // LMDB map (sparse); full -> Code::kFull
  Clock clock;
};

inline constexpr uint32_t kTtlMaxSeconds = 7 * 86400;

// A tier: which models its accounts may use (DESIGN.md 6).
struct TierSpec {
  std::string name;                  // 1-63 bytes of [A-Za-z0-9._:@-]
  bool all_models = false;           // "models": null
  std::vector<std::string> models;   // the allowlist when !all_models
  std::string fallback;              // "" = deny a model outside the list
  uint32_t downgrade_at_percent = 0; // 1..100; 0 = no pressure rule
  std::string downgrade_to;          // the model used at or above downgrade_at_percent
};

// What a request on a shared OpenRouter key must carry to name its user (DESIGN.md 6).
struct Attribution {
  std::string http_referer;  // HTTP-Referer header: the app's URL
  std::string title;         // X-OpenRouter-Title and X-Title headers: "<app_title>:<user>"
  std::string user;          // the body field "user"
  // The headers as "Name: value" lines, in a fixed order (empty values are left out).
  std::vector<std::string> headers() const;
};
// REQUIRES: user is an account id (valid_account_name); app_url and app_title are printable.
Attribution attribution_for(std::string_view app_url, std::string_view app_title, std::string_view user);

struct Balance {
  int64_t limit_nanousd = 0;
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
  uint32_t processes_attached = 0;    // process slots in use (dead ones until reclaimed)
  uint32_t reservations_held = 0;
  uint32_t reservations_expired = 0;  // tombstones waiting for a late commit
  uint32_t max_accounts = 0, max_reservations = 0, max_processes = 0;
  uint64_t denied_over_budget = 0, denied_parent_over_budget = 0, denied_model = 0, denied_blocked = 0;
  uint32_t model_stats = 0, max_model_stats = 0;  // (account, model) tallies in use, and the table size
  uint64_t model_stats_dropped = 0;  // commits not tallied per model (table crowded); still charged
};

// What commits of authorize()d holds settled for one (account, model) since the segment was created
// (the store keeps the durable per-day record; see store.hpp).
struct ModelSpend {
  std::string account;
  std::string model;
  int64_t spent_nanousd = 0;
  uint64_t requests = 0;  // wraps at 2^33 like every request counter of the segment
};

// A resolved account, for callers that want to skip the name lookup on every call.
struct AccountRef {
  uint32_t index = UINT32_MAX;
};

using ReservationId = uint64_t;

// True when `name` is a valid account id: 1-63 bytes of [A-Za-z0-9._:@-].
bool valid_account_name(std::string_view name);

class Ledger {
 public:
  // Creates (when allowed) or attaches to the ledger in `dir`.
  // Errors: kInvalidArgument (bad dir or limits), kNotFound (no ledger and !create_if_missing),
  // kIncompatible (segment of another format, foreign or damaged), kPermission, kIoError,
  // kFull (every process slot is taken).
  static Status open(std::string_view dir, const Options& options, std::unique_ptr<Ledger>* out);
  // Removes the shared segment of `dir` (not the directory). Safe only when nobody is attached.
  static Status destroy_segment(std::string_view dir);
  // Where the segment of `dir` lives (/dev/shm/...); empty when dir cannot be resolved.
  static std::string segment_path(std::string_view dir);

  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // Admin. Creates the account, or changes its limit, period and parent (spend is kept; a new period
  // kind starts a new period). REQUIRES: the parent exists, no cycle, chain depth <= 4 everywhere.
  Status set_budget(std::string_view account, int64_t limit_nanousd, Period period,
                    std::string_view parent);
  // A blocked account, or one with a blocked ancestor, is denied with kDeniedBlocked.
  Status block(std::string_view account, bool blocked);

  Status find(std::string_view account, AccountRef* out) const;

  // Check-and-debit on the account and all its ancestors, all or nothing. amount >= 0.
  // Denials: kDeniedBlocked, kDeniedOverBudget (own budget), kDeniedParentOverBudget (an ancestor).
  Status debit(std::string_view account, int64_t amount_nanousd);
  Status debit(AccountRef account, int64_t amount_nanousd);

  // Holds amount on the chain until commit/release or ttl (0 = default) passes.
  Status reserve(std::string_view account, int64_t amount_nanousd, uint32_t ttl_s,
                 ReservationId* id);
  Status reserve(AccountRef account, int64_t amount_nanousd, uint32_t ttl_s, ReservationId* id);
  // Settles a hold with the actual cost (may exceed the hold: the excess is charged, never denied).
  // A hold that expired is still charged in full (late commit); a commit that arrives while its hold
  // is being expired waits for that expiry (microseconds; if the expiring process died, this call
  // repairs it). Second settle: kAlreadySettled, or kUnknownReservation once the slot was reused.
  Status commit(ReservationId id, int64_t actual_nanousd);
  Status release(ReservationId id);
  // Charges the account and its ancestors without an admission check: spend that happened outside
  // the ledger (a reconciliation adjustment). All levels or none, also across a crash.
  Status adjust(std::string_view account, int64_t amount_nanousd);

  Status balance(std::string_view account, Balance* out) const;
  // Every account, in creation order (one pass over the reservation table).
  Status balances(std::vector<AccountBalance>* out) const;

  Status stats(LedgerStats* out) const;
  // Per-model tallies (one pass over the tally table), in table order. Only the account a hold was
  // authorized for is tallied (not its ancestors); debits and plain reserve()s carry no model.
  Status model_spend(std::vector<ModelSpend>* out) const;

  // Expires holds past their TTL or whose process died, finishes or undoes the half-applied work of
  // dead processes, and drops tombstones past their grace. Safe from any process, concurrently.
  Status reclaim(uint32_t* reclaimed_holds);

  // ---- policy -------------------------------------------------------------------------------
  // Sets (or replaces, atomically for readers) a model's price. Up to 512 models; ids 1-87 bytes.
  Status set_price(std::string_view model, int64_t prompt_nanousd_per_mtok,
                   int64_t completion_nanousd_per_mtok, int64_t request_nanousd);
  // Worst-case cost of a request, rounded up to the nano-USD. kUnknownModel without a price;
  // kInvalidArgument when the result would exceed kAmountNanoUsdMax (never a wrapped number).
  Status estimate(std::string_view model, uint32_t prompt_tokens, uint32_t max_completion_tokens,
                  int64_t* estimate_nanousd) const;
  // Replaces the whole tier table, atomically for concurrent authorize() calls. Tiers not in
  // `tiers` stop existing (accounts still naming them are then denied every model). Up to 64 tier
  // names over the ledger's life; kInvalidArgument names nothing, check the spec.
  Status set_tiers(const std::vector<TierSpec>& tiers);
  // Sets the account's tier; "" = inherit from the parent (no tier on the whole chain = any model).
  Status set_account_tier(std::string_view account, std::string_view tier);

  // Policy and reserve in one call: the one call a worker makes before each request. Decision
  // order: (1) blocked account or ancestor -> kDeniedBlocked; (2) the tier (the account's, else the
  // nearest ancestor's) must allow the model, else its fallback is used, else kDeniedModel;
  // (3) at or above downgrade_at_percent of the account's own budget the model becomes downgrade_to;
  // (4) the chosen model must have a price, else kUnknownModel; (5) the estimate is reserved on the
  // whole chain (kDeniedOverBudget / kDeniedParentOverBudget). *model_out views segment memory valid
  // until the next set_price/set_tiers; copy it. model_out_max (C ABI buffer size - 1): a chosen
  // model longer than that gives kInvalidArgument and reserves nothing.
  Status authorize(std::string_view account, std::string_view model, int64_t estimate_nanousd,
                   uint32_t ttl_s, std::string_view* model_out, ReservationId* id,
                   size_t model_out_max = SIZE_MAX);

  // Writes everything settled so far into the store (<dir>/ledger.mdb, see store.hpp) in one synced
  // transaction: durable on return. kFull when the LMDB map is full, kPermission or kIoError when
  // the directory cannot be written; the segment is never changed by a flush.
  Status flush();
  // How many account period records the next flush would write: those whose settled totals differ
  // from what this handle's last flush wrote (all changed ones before its first flush). For the
  // process that flushes (the sidecar); one pass over the accounts and the reservation table. A
  // flush remembers what it wrote for ledgers of up to 1,048,576 accounts (about 90 bytes each);
  // above that the count is an upper bound (every record with anything settled).
  Status flush_pending(uint64_t* records) const;

  const std::string& dir() const;
  Limits limits() const;
  int64_t now_ms() const;

  struct Impl;

 private:
  explicit Ledger(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ledger
