// reconcile.hpp — the ledger against OpenRouter's per-key spend (DESIGN.md 7, "reconcile").
//
// Per key, not per account: for every OpenRouter key bound to an account (its owner; bindings in
// the store win over the config's key_hash), the key's spend in the owner's current window
// (usage_daily/weekly/monthly, or limit - limit_remaining; lifetime usage for owners without a
// period) is compared with the spend the ledger recorded *through that key* in the same window:
// commits of holds made with the key (ledger_authorize_via names it, or the default rule picks the
// account's own bound key, else its nearest ancestor's), debits, and earlier adjustments, from the
// store's per-key day buckets (reconcile flushes first). When OpenRouter saw more by more than the
// tolerance, the difference is charged to the key's owner and its ancestors as an adjustment
// through that key (Ledger::adjust), journaled by the flush that records it; so a rerun or a
// restart compares live values again and never charges twice. Drift the other way is reported,
// not "fixed". A missing window field is unknown, never zero.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "ledger/ledger.hpp"
#include "ledger/store.hpp"
#include "openrouter/client.hpp"

namespace ledger::admin {

enum class Drift {
  kWithinTolerance,
  kAdjusted,         // OpenRouter saw more: the difference was charged to the owner through the key
  kWouldAdjust,      // the same, in a dry run
  kLedgerHigher,     // the ledger recorded more through the key than OpenRouter shows (yet)
  kUnknownWindow,    // OpenRouter did not report the window's usage
  kKeyNotFound,      // bound, but not at OpenRouter (deleted?)
  kOwnerNotInLedger, // bound to an account the ledger does not have (run ledgerctl init)
  kUnbound,          // the ledger recorded spend through a key no account owns: nobody to charge
  kAdjustFailed,
};

struct DriftRow {
  std::string key_hash, key_name;  // key_name "" when OpenRouter did not list it
  std::string account;             // the key's owner, "" = unbound
  std::string period;              // the window compared: "daily", "weekly", "monthly", "" = lifetime
  int64_t ledger_nanousd = 0;      // recorded through the key in the window
  std::optional<int64_t> openrouter_nanousd;  // nullopt: OpenRouter did not say
  int64_t adjusted_nanousd = 0;
  bool limit_synced = false;
  Drift drift = Drift::kWithinTolerance;
  std::string detail;              // what failed, when something did
  std::vector<std::string> accounts;  // whose spend the ledger recorded through the key in the window
};
// One line a person can act on, e.g. "adjusted: OpenRouter saw 0.0934 more than the ledger".
std::string drift_text(const DriftRow& row);

struct ReconcileReport {
  std::vector<DriftRow> rows;
  std::vector<std::string> unowned_keys;  // key sprawl: keys no account owns ("name (hash prefix)")
  std::vector<std::string> revoked, revoke_errors;  // keys of blocked or removed accounts
  std::string error;                      // whole-run failure (e.g. cannot list keys)
  std::string deferred;                   // why drift was not adjusted on this run ("" = it was, where due)
  int64_t adjusted_total_nanousd = 0;
};

inline constexpr int64_t kReconcileToleranceNanousd = 1'000'000;  // $0.001

// The management key from the config's env variable or file; "" and *error when there is none.
std::string management_key(const Config& config, std::string* error);

// Loads model prices from OpenRouter's model list into the ledger; prices in the config win.
// Returns how many models were set; models without a complete price are skipped (never free).
size_t refresh_prices(Ledger& ledger, openrouter::Client& client, const Config& config, std::string* error);

// A client for the configured OpenRouter with its management key; nullptr and *error without one.
std::unique_ptr<openrouter::Client> client_for(const Config& config, std::string* error,
                                               const std::atomic<bool>* cancel = nullptr);

ReconcileReport reconcile(Ledger& ledger, openrouter::Client& client, const Config& config, bool dry_run,
                          int64_t tolerance_nanousd = kReconcileToleranceNanousd);

// What the ledger recorded per key, as a reconcile compares it: by default this host's own store;
// in global mode the sum over every host (global/host_record.hpp), read after OpenRouter. When the
// record is not complete (a host has not captured its part since), the run compares and reports but
// adjusts nothing, and says why in ReconcileReport::deferred.
struct KeyRecord {
  std::vector<StoredKeyDay> days;
  bool complete = true;
  std::string incomplete_because;
};
using KeyRecordSource = std::function<bool(KeyRecord* out, std::string* error)>;
ReconcileReport reconcile(Ledger& ledger, openrouter::Client& client, const Config& config, bool dry_run, int64_t tolerance_nanousd,
                          const KeyRecordSource& source);

// Keys a worker pool probably uses without saying so: a key OpenRouter shows above the ledger while
// keys of other accounts show the ledger above OpenRouter (workers of those accounts send through
// the first key, but the default rule attributes their spend to their own keys). One line each,
// naming the keys, the accounts and what to do; empty when the pattern is absent.
std::vector<std::string> unsaid_key_use(const ReconcileReport& report,
                                        int64_t tolerance_nanousd = kReconcileToleranceNanousd);

}  // namespace ledger::admin
