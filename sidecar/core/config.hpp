// config.hpp — the ledger's JSON configuration (DESIGN.md 8.3), parsed strictly.
//
// Unknown keys, wrong types and out-of-range values are errors that name the key's path
// ("accounts[2].period: ..."). Amounts are USD as decimal strings ("12.50") or JSON numbers, kept as
// integer nano-USD. Relative paths are relative to the config file's directory. The management key
// is never in the config: only the name of the environment variable (or file) that holds it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ledger/period.hpp"

namespace ledger::admin {

struct TierConfig {
  std::string name;
  std::optional<std::vector<std::string>> models;  // nullopt = every model
  std::string fallback;
  uint32_t downgrade_at_percent = 0;               // 0 = no pressure rule
  std::string downgrade_to;
};

struct PriceConfig {
  std::string model;
  int64_t prompt_nanousd_per_mtok = 0;
  int64_t completion_nanousd_per_mtok = 0;
  int64_t request_nanousd = 0;
};

struct AccountConfig {
  std::string id;
  std::string parent;
  std::string tier;
  std::string key_hash;
  int64_t limit_nanousd = 0;
  Period period = Period::kNone;
  bool period_given = false;  // false: "period" was left out, so the budget is a lifetime one (none)
  bool global = false;        // with a "global" section: every account unless it says "scope": "local"
  // DESIGN 13: its own model list (nullopt inside = "models": null, every model), fallback, soft
  // limit and rate limits (0 = none).
  std::optional<std::optional<std::vector<std::string>>> models;  // outer nullopt: "models" left out
  std::string fallback;
  bool soft = false;          // "enforce": "soft"
  uint32_t rpm = 0, tpm = 0, max_concurrent = 0;
};

// The sections, one struct each. Their defaults are not here: every scalar field has one row in the
// config table (core/config_table.cpp) with its default, range and meaning, and parsing fills each
// field from it, present or not.
struct LedgerSection {
  std::string dir;
  uint32_t max_accounts{}, max_reservations{}, max_processes{};
  uint32_t flush_interval_ms{};
  uint32_t reservation_ttl_s{};
  uint64_t store_map_size_mb{};
  std::string segment_dir;            // "" = as recorded for the ledger, else /dev/shm
  uint32_t tombstone_grace_s{};
  uint32_t max_tombstones{};          // 0 = half of max_reservations
  uint32_t max_account_rules{};       // accounts with rules of their own (models, soft, top-up, rates)
  bool strict_models{};               // a model named in tiers or accounts with no price is an error, not a warning
};

struct OpenRouterSection {
  bool present = false;               // the config has an "openrouter" section
  std::string base_url;
  std::string management_key_env;
  std::string management_key_file;    // relative to the config file; absolute after loading
  uint32_t reconcile_interval_s{};
  uint32_t timeout_ms{};
  bool sync_key_limits{};
  std::string revoke;                 // what happens to the key of a blocked or removed account: disable | delete
  bool disable_unowned_keys{};        // key sprawl: disable keys no account owns
  std::string app_url;
  std::string app_title;
};

struct ReportsSection {
  std::string dir;                    // relative to the config file; absolute after loading
  uint32_t interval_s{};
  std::vector<std::string> formats;
};

struct MetricsSection {
  std::string listen;                 // "" = no metrics endpoint
};

// Global mode (DESIGN 11): budgets shared by the hosts through leases from PostgreSQL.
struct GlobalSection {
  bool present = false;               // the config has a "global" section
  std::string store;                  // a libpq URI without a password
  std::string store_password_env;
  std::string store_password_file;    // relative to the config file; absolute after loading
  std::string host_id;                // default: the hostname
  uint32_t lease_ttl_s{};
  uint32_t refresh_interval_ms{};
};

// ledger-proxy (DESIGN 12): an OpenAI-compatible local endpoint that budgets every request.
struct ProxySection {
  bool present = false;               // the config has a "proxy" section
  std::string listen;                 // HOST:PORT; loopback unless the config names another interface
  std::string upstream_key_env;       // the variable that holds the OpenRouter key the proxy sends
  std::string upstream_key_file;      // or a file that holds it; relative to the config file
  uint32_t max_tokens_default{};      // inserted when a request sets no max_tokens, so the hold is an upper bound
  uint32_t max_body_bytes{};
  uint32_t max_concurrent{};          // requests (and streams) in flight; more get 503
  uint32_t header_timeout_ms{};       // a client must send its request head (and body) within this
  uint32_t idle_timeout_ms{};         // a keep-alive connection with no request is closed after this
  uint32_t upstream_timeout_ms{};     // a whole upstream exchange (a stream included)
  uint32_t drain_timeout_ms{};        // SIGTERM: in-flight requests get this long to finish
};

struct Config {
  std::string path;  // the file it was read from
  LedgerSection ledger;
  OpenRouterSection openrouter;
  std::vector<TierConfig> tiers;
  std::vector<PriceConfig> prices;
  std::vector<AccountConfig> accounts;  // parents before children
  ReportsSection reports;
  MetricsSection metrics;
  GlobalSection global;
  ProxySection proxy;
};

// Reads and validates a config file. On failure returns nullopt and a one-line error that starts
// with the file name and names the offending key.
std::optional<Config> load_config(const std::string& path, std::string* error);
// The same from text (path is used for messages and relative paths).
std::optional<Config> parse_config(const std::string& text, const std::string& path, std::string* error);
// The configuration reference (a Markdown table, every key with its default, range and meaning),
// made from the config table: the README's section between its config-reference markers is this.
std::string config_reference();

}  // namespace ledger::admin
