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
};

struct Config {
  std::string path;  // the file it was read from

  struct {
    std::string dir;
    uint32_t max_accounts = 65536;
    uint32_t max_reservations = 65536;
    uint32_t max_processes = 256;
    uint32_t flush_interval_ms = 1000;
    uint32_t reservation_ttl_s = 600;
    uint64_t store_map_size_mb = 1024;
    std::string segment_dir;          // "" = as recorded for the ledger, else /dev/shm
    uint32_t tombstone_grace_s = 86400;
    uint32_t max_tombstones = 0;      // 0 = half of max_reservations
  } ledger;

  struct {
    bool present = false;
    std::string base_url = "https://openrouter.ai/api/v1";
    std::string management_key_env = "OPENROUTER_MGMT_KEY";
    std::string management_key_file;  // relative to the config file; absolute after loading
    uint32_t reconcile_interval_s = 60;
    uint32_t timeout_ms = 10000;
    bool sync_key_limits = false;
    std::string revoke = "disable";
    bool disable_unowned_keys = false;  // key sprawl: disable keys no account owns  // what happens to the key of a blocked or removed account: disable | delete
    std::string app_url;
    std::string app_title;
  } openrouter;

  std::vector<TierConfig> tiers;
  std::vector<PriceConfig> prices;
  std::vector<AccountConfig> accounts;  // parents before children

  struct {
    std::string dir = "reports";  // relative to the config file; absolute after loading
    uint32_t interval_s = 300;
    std::vector<std::string> formats{"json", "csv", "html"};
  } reports;

  struct {
    std::string listen;  // "" = no metrics endpoint
  } metrics;
};

// Reads and validates a config file. On failure returns nullopt and a one-line error that starts
// with the file name and names the offending key.
std::optional<Config> load_config(const std::string& path, std::string* error);
// The same from text (path is used for messages and relative paths).
std::optional<Config> parse_config(const std::string& text, const std::string& path, std::string* error);

}  // namespace ledger::admin
