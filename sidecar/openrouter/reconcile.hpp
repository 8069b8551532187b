// reconcile.hpp — the ledger against OpenRouter's per-key spend (DESIGN.md 7, "reconcile").
//
// For every configured account bound to a key (key_hash), the key's spend in the account's current
// window (usage_daily/weekly/monthly, or limit - limit_remaining; lifetime usage for accounts
// without a period) is compared with the ledger's settled spend for that period. When OpenRouter's
// figure is higher by more than the tolerance, the difference is charged to the account and its
// ancestors as an adjustment (Ledger::adjust): never a silent overwrite. A repeated or restarted
// reconcile compares live values again, so an adjustment is never applied twice. Drift the other
// way is reported, not "fixed". A missing window field is unknown, never zero.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "ledger/ledger.hpp"
#include "openrouter/client.hpp"

namespace ledger::admin {

struct DriftRow {
  std::string account, key_hash;
  int64_t ledger_nanousd = 0;
  std::optional<int64_t> openrouter_nanousd;  // nullopt: OpenRouter did not say
  int64_t adjusted_nanousd = 0;
  bool limit_synced = false;
  std::string note;  // "adjusted", "within tolerance", "ledger higher", "unknown window", an error
};

struct ReconcileReport {
  std::vector<DriftRow> rows;
  std::vector<std::string> unowned_keys;  // key sprawl: keys no account owns ("name (hash prefix)")
  std::vector<std::string> revoked, revoke_errors;  // keys of blocked or removed accounts
  std::string error;                      // whole-run failure (e.g. cannot list keys)
  int64_t adjusted_total_nanousd = 0;
};

inline constexpr int64_t kReconcileToleranceNanousd = 1'000'000;  // $0.001

// The management key from the config's env variable or file; "" and *error when there is none.
std::string management_key(const Config& config, std::string* error);

// Loads model prices from OpenRouter's model list into the ledger; prices in the config win.
// Returns how many models were set; models without a complete price are skipped (never free).
size_t refresh_prices(Ledger& ledger, openrouter::Client& client, const Config& config, std::string* error);

// A client for the configured OpenRouter with its management key; nullptr and *error without one.
std::unique_ptr<openrouter::Client> client_for(const Config& config, std::string* error);

ReconcileReport reconcile(Ledger& ledger, openrouter::Client& client, const Config& config, bool dry_run,
                          int64_t tolerance_nanousd = kReconcileToleranceNanousd);

}  // namespace ledger::admin
