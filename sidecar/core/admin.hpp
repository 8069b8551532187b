// admin.hpp — what ledgerctl and ledger-sidecar share: opening the configured ledger, applying a
// config to it, and structured log lines.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "ledger/ledger.hpp"

namespace ledger::admin {

// Exit codes (DESIGN.md 8.2).
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 1;
inline constexpr int kExitRuntime = 2;
inline constexpr int kExitDenied = 3;

Options options_for(const Config& config);
// Opens (creating if missing) the ledger the config names; on failure *error says what to do.
// For the commands that may create: init, debit, block/unblock, flush, reconcile, keys writes.
Status open_ledger(const Config& config, std::unique_ptr<Ledger>* out, std::string* error);

// True when a ledger exists at the config's directory: its store (DIR/ledger.mdb) or its segment.
bool ledger_exists(const Config& config);
// "no ledger at DIR: run ledgerctl init"
std::string no_ledger_message(const Config& config);
// Opens the ledger only if it exists, creating nothing (read-only commands: status, balance,
// report, doctor, reconcile --dry-run). A missing segment is rebuilt from an existing store.
// Without a ledger: Code::kNotFound and *error = no_ledger_message(config).
Status open_existing_ledger(const Config& config, std::unique_ptr<Ledger>* out, std::string* error);

struct ApplyReport {
  int created = 0, updated = 0, unchanged = 0, blocked_removed = 0, prices = 0;
  std::vector<std::string> still_blocked;  // in the config but blocked (ledgerctl unblock NAME)
  std::vector<std::string> errors;
  std::vector<std::string> warnings;  // models named without a price (errors under ledger.strict_models)
  bool refused = false;  // nothing was changed (errors says why and what to do)
};
// Makes the ledger match the config: creates or updates every account (spend is kept), blocks the
// accounts the config no longer has (their spend stays on record), replaces the tier table (one
// atomic swap for the workers), sets every account's tier and the prices. Refuses (and changes
// nothing) when the accounts already in the ledger plus the config's new ones exceed the segment's
// capacity (Ledger::limits().max_accounts).
ApplyReport apply_config(Ledger& ledger, const Config& config);
// What the config says an account sets beyond its budget and tier (DESIGN 13).
RulesSpec rules_of(const AccountConfig& account);
void apply_account_rules(Ledger& ledger, const Config& config, ApplyReport* report);
// The parts of apply_config that are not accounts and policy: the hold policy (every process's
// default TTL and tombstone rules), the LMDB map size, and each account's bound OpenRouter key.
void apply_ledger_settings(Ledger& ledger, const Config& config, ApplyReport* report);
void apply_key_bindings(Ledger& ledger, const Config& config, ApplyReport* report);
// account -> key hash: bindings in the store (provisioned, rotated) win over the config's key_hash.
std::map<std::string, std::string> key_bindings(const Config& config);

// One line for every model a tier names (models, fallback, downgrade_to) that has no price in the
// ledger (every request for it would be refused with "no price known"), naming the key:
// tiers.basic.fallback: "openai/gpt-4o-mnii" has no price (check the spelling, or add it under "prices")
std::vector<std::string> unpriced_models(const Ledger& ledger, const Config& config);

// A secret (an OpenRouter key, a store password) from `file` when one is configured, else from the
// environment variable `env`: its first word (file) or its value; "" and *error saying where it
// looked (never the secret) when there is none. `what` names it in the error.
std::string read_secret(const std::string& file, const std::string& env, const std::string& what, std::string* error);

// A structured log line on stderr: ts=... level=... msg="..." key=value ...
void log_line(const char* level, const std::string& message, const std::string& fields = "");

// "Code 9 (ledger full: ...)" style text for a Status.
std::string describe(Status status);

}  // namespace ledger::admin
