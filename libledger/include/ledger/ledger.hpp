// ledger/ledger.hpp — per-account budgets shared by many processes through a shared-memory segment:
// the handle (Ledger) and the worker calls. The other public headers: options.hpp (opening,
// capacities, clock), policy.hpp (tiers and account rules), stats.hpp (what it reports),
// money.hpp, period.hpp, status.hpp (codes), store.hpp (the durable record, read-only), c.h.
//
// Glossary, for readers who know ledgers: a hold (reserve, authorize) is a pending transfer;
// commit posts it (with the actual amount, which may differ); release voids it; expiry is the
// pending transfer's timeout (the hold becomes a tombstone that still takes its late commit);
// debit is a transfer posted at once.
//
// Thread and process safety: a Ledger may be used by any number of threads at once, and any number
// of processes may open the same ledger directory. Every operation is lock-free on the worker path
// (compare-and-swap on the accounts' period words) and crash-safe: a process killed between any two
// instructions leaves nothing half-applied once ledger_reclaim (or the sidecar) has run. Admin calls
// (set_budget, block) serialize through a kernel-released file lock.
//
// Errors are returned as Status (see status.hpp); nothing on the worker path throws or allocates.
// Every call may also return kInvalidArgument (a bad name, amount or pointer) and, for a handle
// carried across fork() that cannot register again, kFull. Money is integer nano-USD. Reservation
// ids are opaque and never 0.
//
// Caveats:
// - fork(): a handle opened before fork() re-registers in the child on its first call (its own
//   process slot); close handles you do not use in the child. Open after fork() where you can.
// - /dev/shm (or Options::segment_dir) holds the segment: a reboot loses it, and the next open
//   rebuilds it from the store, which lacks at most the last flush interval (DESIGN 4, promise 3).
// - One LMDB environment per file per process: flush() and StoreReader of the same directory take
//   turns in a process (store.hpp); the library enforces it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/export.hpp"
#include "ledger/money.hpp"
#include "ledger/options.hpp"
#include "ledger/period.hpp"
#include "ledger/policy.hpp"
#include "ledger/stats.hpp"
#include "ledger/status.hpp"

namespace ledger {

// True for an OpenRouter key hash (64 hex digits) or a prefix of one of at least 12 hex digits.
LEDGER_EXPORT bool valid_key_reference(std::string_view text);

// A resolved account, for callers that want to skip the name lookup on every call.
struct AccountRef {
  uint32_t index = UINT32_MAX;
};

using ReservationId = uint64_t;

// True when `name` is a valid account id: 1-63 bytes of [A-Za-z0-9._:@-].
LEDGER_EXPORT bool valid_account_name(std::string_view name);

class LEDGER_EXPORT Ledger {
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
  // Per key, the live holds (held or being settled) that go through it: one pass over the
  // reservation table. Reconciliation counts them as the ledger's (OpenRouter may have billed a
  // request before its commit landed), so an in-flight request is never charged twice.
  Status key_holds(std::vector<KeyHold>* out) const;
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
