// reconcile.cpp — see reconcile.hpp.
#include "openrouter/reconcile.hpp"

#include <fstream>
#include <map>
#include <set>

#include "core/admin.hpp"
#include "openrouter/keys.hpp"
#include "ledger/store.hpp"

namespace ledger::admin {

std::string management_key(const Config& config, std::string* error) {
  std::string key;
  if (!config.openrouter.management_key_file.empty()) {
    std::ifstream in(config.openrouter.management_key_file);
    if (!(in >> key)) *error = "cannot read the management key file " + config.openrouter.management_key_file;
    return key;
  }
  const char* env = std::getenv(config.openrouter.management_key_env.c_str());
  if (env == nullptr || *env == '\0') {
    *error = "$" + config.openrouter.management_key_env + " is not set: export the OpenRouter management key there";
    return {};
  }
  return env;
}

size_t refresh_prices(Ledger& ledger, openrouter::Client& client, const Config& config, std::string* error) {
  std::vector<openrouter::ModelInfo> models;
  if (const openrouter::Error e = client.models(&models)) {
    *error = "cannot read the model list: " + e.message;
    return 0;
  }
  std::set<std::string> configured;
  for (const auto& p : config.prices) configured.insert(p.model);
  size_t set = 0;
  for (const auto& m : models) {
    if (configured.count(m.id) != 0 || !m.prompt_nanousd_per_mtok || !m.completion_nanousd_per_mtok) continue;
    if (ledger.set_price(m.id, *m.prompt_nanousd_per_mtok, *m.completion_nanousd_per_mtok, m.request_nanousd.value_or(0)).ok()) ++set;
  }
  return set;
}

std::unique_ptr<openrouter::Client> client_for(const Config& config, std::string* error) {
  if (!config.openrouter.present) {
    *error = "the config has no \"openrouter\" section";
    return nullptr;
  }
  const std::string key = management_key(config, error);
  if (key.empty()) return nullptr;
  openrouter::ClientOptions options;
  options.base_url = config.openrouter.base_url;
  options.api_key = key;
  options.key_source = config.openrouter.management_key_file.empty() ? "$" + config.openrouter.management_key_env
                                                                      : config.openrouter.management_key_file;
  options.timeout_ms = config.openrouter.timeout_ms;
  return std::make_unique<openrouter::Client>(options);
}

ReconcileReport reconcile(Ledger& ledger, openrouter::Client& client, const Config& config, bool dry_run,
                          int64_t tolerance) {
  ReconcileReport report;
  std::vector<openrouter::KeyInfo> keys;
  if (const openrouter::Error e = client.list_keys(&keys)) {
    report.error = "cannot list keys: " + e.message;
    return report;
  }
  std::map<std::string, const openrouter::KeyInfo*> by_hash;
  for (const auto& k : keys) by_hash[k.hash] = &k;
  std::set<std::string> owned;
  const auto bindings = key_bindings(config);
  for (const auto& [account, hash] : bindings) owned.insert(hash);
  for (const AccountConfig& a : config.accounts) {
    const auto bound = bindings.find(a.id);
    if (bound == bindings.end()) continue;
    DriftRow row;
    row.account = a.id;
    row.key_hash = bound->second;
    Balance b;
    if (const Status s = ledger.balance(a.id, &b); !s.ok()) {
      row.note = "not in the ledger (" + std::string(s.message()) + "): run ledgerctl init";
      report.rows.push_back(std::move(row));
      continue;
    }
    row.ledger_nanousd = b.spent_nanousd;
    const auto it = by_hash.find(row.key_hash);
    if (it == by_hash.end()) {
      row.note = "key not found at OpenRouter (deleted? provision a new one)";
      report.rows.push_back(std::move(row));
      continue;
    }
    const openrouter::KeyInfo& key = *it->second;
    const std::string period = a.period == Period::kNone ? "" : std::string(period_name(a.period));
    row.openrouter_nanousd = openrouter::window_spend(key, period);
    if (!row.openrouter_nanousd) {
      row.note = "unknown window: OpenRouter did not report " + (period.empty() ? std::string("usage") : "usage_" + period);
    } else {
      const int64_t delta = *row.openrouter_nanousd - row.ledger_nanousd;
      if (delta > tolerance) {
        if (dry_run) {
          row.note = "would adjust";
        } else if (const Status s = ledger.adjust(a.id, delta, row.key_hash); s.ok()) {
          row.adjusted_nanousd = delta;
          report.adjusted_total_nanousd += delta;
          row.note = "adjusted";
        } else {
          row.note = "adjustment failed: " + describe(s);
        }
      } else if (delta < -tolerance) {
        row.note = "ledger higher (estimates above what OpenRouter billed, or spend not yet visible there)";
      } else {
        row.note = "within tolerance";
      }
    }
    // The key as backstop: its own limit and reset mirror the account's budget.
    const std::string reset = period;
    if (config.openrouter.sync_key_limits && !dry_run &&
        (key.limit_nanousd != std::optional<int64_t>(a.limit_nanousd) || key.limit_reset != reset)) {
      openrouter::KeyInfo updated;
      if (const openrouter::Error e = client.set_limit(row.key_hash, a.limit_nanousd, reset, &updated)) {
        row.note += "; limit sync failed: " + e.message;
      } else {
        row.limit_synced = true;
      }
    }
    report.rows.push_back(std::move(row));
  }
  for (const auto& k : keys) {
    if (owned.count(k.hash) != 0 || k.disabled) continue;
    report.unowned_keys.push_back(k.name + " (" + k.hash.substr(0, 12) + "...)");
    if (config.openrouter.disable_unowned_keys && !dry_run) {
      openrouter::KeyInfo info;
      if (const openrouter::Error e = client.set_disabled(k.hash, true, &info)) report.revoke_errors.push_back("disabling unowned key: " + e.message);
      else report.revoked.push_back("disabled the unowned key " + k.name + " (" + k.hash.substr(0, 12) + "...)");
    }
  }
  if (!dry_run) report.revoked = revoke(ledger, config, client, &report.revoke_errors);
  return report;
}

}  // namespace ledger::admin
