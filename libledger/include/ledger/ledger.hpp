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
  // 0 .. 65,535 accounts with rules of their own (a model list, soft, a top-up, rate limits);
  // 192 bytes each. Not in the C ABI's ledger_limits_t: a ledger created there gets the default.
  uint32_t max_account_rules = 4096;
};

// A source of wall-clock time in milliseconds since the Unix epoch (UTC). Tests inject one to cross
// day, week and month boundaries. now_ms == nullptr uses CLOCK_REALTIME_COARSE.
struct Clock {
  int64_t (*now_ms)(void* context) = nullptr;
  void* context = nullptr;
};

inline constexpr uint32_t kTtlMaxSeconds = 7 * 86400;
inline constexpr uint32_t kTombstoneGraceMaxSeconds = 30 * 86400;
inline constexpr uint32_t kModelIdMax = 87;  // bytes of a model id (set_price, authorize)

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

// A tier: which models its accounts may use (DESIGN.md 6).
struct TierSpec {
  std::string name;                  // 1-63 bytes of [A-Za-z0-9._:@-]
  bool all_models = false;           // "models": null
  std::vector<std::string> models;   // the allowlist when !all_models
  std::string fallback;              // "" = deny a model outside the list
  uint32_t downgrade_at_percent = 0; // 1..100; 0 = no pressure rule
  std::string downgrade_to;          // the model used at or above downgrade_at_percent
};

// What an account sets beyond its budget and tier (DESIGN 13; Ledger::set_rules).
struct RulesSpec {
  bool soft = false;                 // its own limit never denies (its ancestors' still do)
  // Its own model list, for it and its descendants that set no tier or list of their own: it
  // replaces its tier's list and fallback. all_models = "models": null.
  bool has_models = false;
  bool all_models = false;
  std::vector<std::string> models;
  std::string fallback;              // "" = none of its own (without has_models: the tier's is replaced)
  uint32_t rpm = 0;                  // requests per minute (admissions), 0 = no limit, <= kRpmMax
  uint32_t tpm = 0;                  // tokens per minute, 0 = no limit, <= kTpmMax
  uint32_t max_concurrent = 0;       // open holds at once, 0 = no limit, <= kMaxConcurrentMax
};
inline constexpr uint32_t kRpmMax = 1'000'000;
inline constexpr uint32_t kTpmMax = 1'000'000'000;
inline constexpr uint32_t kMaxConcurrentMax = 16'383;

// What an account's rate limits have counted (Ledger::rate_usage): requests and tokens in the
// current minute, holds open now.
struct RateUsage {
  int64_t minute_start_unix = 0;
  uint64_t requests = 0;
  uint64_t tokens = 0;
  uint64_t concurrent = 0;
};

// A temporary raise of an account's limit (Ledger::set_topup); amount 0 = none.
struct Topup {
  int64_t amount_nanousd = 0;
  int64_t until_unix_ms = 0;  // it counts while the wall clock is before this
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

// True for an OpenRouter key hash (64 hex digits) or a prefix of one of at least 12 hex digits.
bool valid_key_reference(std::string_view text);

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
  // Where the segment of `dir` lives (/dev/shm/... or its recorded segment dir); empty when dir
  // cannot be resolved.
  static std::string segment_path(std::string_view dir);
  // How many bytes a segment with these limits takes (all reserved at creation); 0 if invalid.
  static uint64_t segment_bytes(const Limits& limits);

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
  // commit(), with the request's real token counts: tokens-per-minute limits count them instead of
  // the tokens counted at admission (in the minute the hold was admitted in).
  Status commit_usage(ReservationId id, int64_t actual_nanousd, uint32_t prompt_tokens, uint32_t completion_tokens);
  // Settles a hold without a cost (the request never reached the provider); its tokens and its
  // concurrent slot are given back.
  Status release(ReservationId id);
  // Charges the account and its ancestors without an admission check: spend that happened outside
  // the ledger (a reconciliation adjustment). All levels or none, also across a crash. With a key,
  // the amount also counts as spent through that key (so reconciling it again changes nothing).
  // The next flush writes the adjustment's journal entry in the same transaction as the totals it
  // changed: an adjustment is never on record without its audit entry, or the other way round.
  Status adjust(std::string_view account, int64_t amount_nanousd, std::string_view key_hash = {});

  Status balance(std::string_view account, Balance* out) const;
  // Every account, in creation order (one pass over the reservation table).
  Status balances(std::vector<AccountBalance>* out) const;

  Status stats(LedgerStats* out) const;

  // ---- keys: which OpenRouter key a settlement went through ----------------------------------
  // Binds the account to its own OpenRouter key (64 hex, the key's "hash"); "" unbinds. A
  // settlement whose worker does not say which key it used (debit, reserve, authorize) is
  // attributed by one rule: the account's own bound key, else its nearest ancestor's, else none.
  // kFull when the key table is full.
  Status bind_key(std::string_view account, std::string_view key_hash);
  // The key bound to the account itself ("" = none).
  Status bound_key(std::string_view account, std::string* key_hash) const;
  // Per (account, key) tallies (one pass over the tally table), in table order.
  Status key_spend(std::vector<KeySpend>* out) const;
  // ---- global mode (DESIGN 11): budgets shared by hosts through leases ------------------------
  // A global account admits only against this host's lease for the window being charged: no
  // lease, or one whose deadline passed, denies (kDeniedOverBudget / kDeniedParentOverBudget): the
  // host fails closed when it cannot reach the shared store. Its configured limit stays the global
  // one (balance() shows it); commits and adjustments are never denied, as everywhere.
  Status set_scope(std::string_view account, bool global);
  // The sidecar's lease worker: this host may admit up to limit_nanousd in total (its spend in the
  // window counts against it) into the account's window period_index (0 for a lifetime budget)
  // until deadline_monotonic_ms (Ledger::monotonic_ms). Readers see the old lease or the new one,
  // never a mix. REQUIRES: one writer per ledger (the sidecar holds the one-sidecar lock).
  Status set_lease(std::string_view account, int64_t period_index, int64_t limit_nanousd, int64_t deadline_monotonic_ms);
  Status window_usage(std::string_view account, int64_t period_index, WindowUsage* out) const;
  // The largest single amount (a debit, a hold) denied on this account's window period_index for
  // want of this host's lease since the last call, and zeroes it: the sidecar grants at least that
  // much more, so a request larger than the usual slice is not denied for ever. 0 = none.
  Status take_lease_wanted(std::string_view account, int64_t period_index, int64_t* wanted_nanousd);
  // CLOCK_MONOTONIC_COARSE in ms: the same clock in every process of the machine.
  static int64_t monotonic_ms();

  // Changes how holds expire, for every process of the segment, at once.
  Status set_hold_policy(const HoldPolicy& policy);
  HoldPolicy hold_policy() const;
  // The LMDB map size the next flush opens the store with (LMDB grows the map between
  // transactions), e.g. after ledger.store_map_size_mb was raised because the map was full.
  Status set_store_map_size(uint64_t bytes);
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

  // ---- account rules (DESIGN 13) ---------------------------------------------------------------
  // Replaces what the account sets beyond its budget and tier (a top-up is kept). An account that
  // sets anything but `soft` takes one of Limits::max_account_rules entries for good (kFull when
  // none is left). Rate limits count on the whole chain, in shared memory, like money: an admission
  // over any level's rpm, tpm or max_concurrent is kDeniedRate (see rate_retry_after_ms); a dead
  // process's concurrent slots come back when its holds are reclaimed.
  Status set_rules(std::string_view account, const RulesSpec& rules);
  // Raises the account's limit by amount_nanousd until until_unix_ms (wall clock); 0 removes it.
  // Local accounts only: a global account's top-up is the store's (global mode).
  Status set_topup(std::string_view account, int64_t amount_nanousd, int64_t until_unix_ms);
  Status rules(std::string_view account, RulesSpec* out, Topup* topup = nullptr) const;
  // After kDeniedRate on this thread: milliseconds until the limit that denied may admit again (the
  // end of its minute for rpm and tpm; a short poll interval for max_concurrent). A request whose
  // tokens alone exceed tpm is never admitted. 0 before any rate denial on the thread.
  static uint32_t rate_retry_after_ms();
  // The account's rate counts now (zero when it never had rate limits).
  Status rate_usage(std::string_view account, RateUsage* out) const;

  // Policy and reserve in one call: the one call a worker makes before each request. Decision
  // order: (1) blocked account or ancestor -> kDeniedBlocked; (2) the governing level is the account,
  // else its nearest ancestor, that sets a model list, a fallback or a tier; its own list (else its
  // tier's) must allow the model, else its own fallback (else its tier's, when the list is the
  // tier's) is used, else kDeniedModel; no governing level = any model; (3) at or above
  // downgrade_at_percent of the account's own budget the model becomes the governing tier's
  // downgrade_to; (4) the chosen model must have a price, else kUnknownModel; (5) rate limits on the
  // whole chain (kDeniedRate), then the estimate is reserved on the whole chain
  // (kDeniedOverBudget / kDeniedParentOverBudget). Tokens per minute count, at admission, the
  // tokens of the estimate() this thread made last when estimate_nanousd is its result (else none,
  // until commit_usage). *model_out views segment memory valid
  // until the next set_price/set_tiers; copy it. model_out_max (C ABI buffer size - 1): a chosen
  // model longer than that gives kInvalidArgument and reserves nothing.
  // On kUnknownModel, *model_out names the model that has no price (the requested one, or the
  // tier's fallback or downgrade_to it was replaced by), so the caller can say which.
  Status authorize(std::string_view account, std::string_view model, int64_t estimate_nanousd,
                   uint32_t ttl_s, std::string_view* model_out, ReservationId* id,
                   size_t model_out_max = SIZE_MAX);
  // authorize(), plus which OpenRouter key the request goes through: its hash (64 hex) or a unique
  // prefix of at least 12 hex digits; "" = the default rule (see bind_key). A full hash the ledger
  // does not know yet is registered (once, under the admin lock); an unknown or ambiguous prefix,
  // or a full key table, is kInvalidArgument / kFull and reserves nothing.
  Status authorize_via(std::string_view account, std::string_view model, int64_t estimate_nanousd,
                       uint32_t ttl_s, std::string_view key_hash, std::string_view* model_out,
                       ReservationId* id, size_t model_out_max = SIZE_MAX);

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
  const std::string& segment_file() const;  // this handle's segment
  Limits limits() const;
  int64_t now_ms() const;

  struct Impl;

 private:
  explicit Ledger(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ledger
