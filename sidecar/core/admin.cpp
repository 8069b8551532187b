// admin.cpp — shared by ledgerctl and ledger-sidecar.
#include "core/admin.hpp"

#include <sys/stat.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>

#include "ledger/store.hpp"

namespace ledger::admin {

Options options_for(const Config& config) {
  Options options;
  options.limits.max_accounts = config.ledger.max_accounts;
  options.limits.max_reservations = config.ledger.max_reservations;
  options.limits.max_processes = config.ledger.max_processes;
  options.limits.max_account_rules = config.ledger.max_account_rules;
  options.default_ttl_s = config.ledger.reservation_ttl_s;
  options.tombstone_grace_s = config.ledger.tombstone_grace_s;
  options.tombstones_max = config.ledger.max_tombstones;
  options.store_map_size_bytes = config.ledger.store_map_size_mb * 1024 * 1024;
  options.segment_dir = config.ledger.segment_dir;
  options.admin = true;  // ledgerctl and the sidecar use the process slots kept for admin tools
  return options;
}

std::string describe(Status status) {
  return "code " + std::to_string(status.value()) + " (" + std::string(status.message()) + ")";
}

namespace {

std::string open_error(const Config& config, Status status) {
  std::string hint;
  switch (status.code()) {
    case Code::kPermission: hint = "check the owner and mode of the directory (files are created 0600)"; break;
    case Code::kNotFound: hint = "does the parent directory exist?"; break;
    case Code::kIncompatible:
      hint = "the segment or store was written by another format version; stop every process using it, "
             "flush with the old version (ledgerctl flush), then remove the segment " +
             Ledger::segment_path(config.ledger.dir) + " (ledgerctl destroy-segment): the next open rebuilds it from the store";
      break;
    case Code::kFull: {
      Limits limits{config.ledger.max_accounts, config.ledger.max_reservations, config.ledger.max_processes,
                    config.ledger.max_account_rules};
      const uint64_t mib = (Ledger::segment_bytes(limits) + (1u << 20) - 1) >> 20;
      hint = "no room for the segment (it needs " + std::to_string(mib) + " MiB in " +
             (config.ledger.segment_dir.empty() ? std::string("/dev/shm") : config.ledger.segment_dir) +
             ": free space there, or set ledger.segment_dir to a larger tmpfs), or every admin process slot is taken";
      break;
    }
    case Code::kInvalidArgument:
      hint = "the ledger's segment is " + Ledger::segment_path(config.ledger.dir) + ", not in ledger.segment_dir (" +
             config.ledger.segment_dir + "); to move it: stop every process using the ledger, ledgerctl destroy-segment "
             "with the old setting, then ledgerctl init with the new one";
      break;
    default: hint = "see the code above"; break;
  }
  return "cannot open the ledger in " + config.ledger.dir + ": " + describe(status) + "; " + hint;
}

bool store_exists(const Config& config) {
  struct stat st {};
  return ::stat((config.ledger.dir + "/ledger.mdb").c_str(), &st) == 0;
}

}  // namespace

Status open_ledger(const Config& config, std::unique_ptr<Ledger>* out, std::string* error) {
  const Status status = Ledger::open(config.ledger.dir, options_for(config), out);
  if (!status.ok()) *error = open_error(config, status);
  return status;
}

bool ledger_exists(const Config& config) {
  if (store_exists(config)) return true;
  const std::string segment = Ledger::segment_path(config.ledger.dir);  // "" when the directory is missing
  struct stat st {};
  return !segment.empty() && ::stat(segment.c_str(), &st) == 0;
}

std::string no_ledger_message(const Config& config) { return "no ledger at " + config.ledger.dir + ": run ledgerctl init"; }

Status open_existing_ledger(const Config& config, std::unique_ptr<Ledger>* out, std::string* error) {
  if (!ledger_exists(config)) {
    *error = no_ledger_message(config);
    return Code::kNotFound;
  }
  Options options = options_for(config);
  options.create_if_missing = false;  // a store without a segment (a reboot) is rebuilt by the open
  const Status status = Ledger::open(config.ledger.dir, options, out);
  if (status.code() == Code::kNotFound) *error = no_ledger_message(config);
  else if (!status.ok()) *error = open_error(config, status);
  return status;
}

namespace {

// "" when the accounts already in the ledger (removed ones stay, blocked) and the config's new ones
// fit the segment; else what is wrong and what to do.
std::string capacity_problem(const Ledger& ledger, const Config& config, const std::map<std::string, AccountBalance>& existing) {
  size_t fresh = 0;
  for (const AccountConfig& a : config.accounts) fresh += existing.count(a.id) == 0 ? 1 : 0;
  const size_t needed = existing.size() + fresh;
  const uint32_t capacity = ledger.limits().max_accounts;
  if (needed <= capacity) return "";
  const std::string n = std::to_string(needed);
  std::string fix = config.ledger.max_accounts >= needed
                        ? "ledger.max_accounts (" + std::to_string(config.ledger.max_accounts) + ") is enough, but the segment was made before it: "
                        : "set ledger.max_accounts to at least " + n + ", then ";
  fix += "stop the sidecar and the workers, run ledgerctl destroy-segment and ledgerctl init (the store keeps spend)";
  return "the ledger holds at most " + std::to_string(capacity) + " accounts (ledger.max_accounts when its segment was created) and " + n +
         " are needed (" + std::to_string(existing.size()) + " in it, " + std::to_string(fresh) +
         " new from the config): nothing was changed; " + fix;
}

}  // namespace

ApplyReport apply_config(Ledger& ledger, const Config& config) {
  ApplyReport report;
  std::vector<AccountBalance> before;
  (void)ledger.balances(&before);
  std::map<std::string, AccountBalance> existing;
  for (auto& b : before) existing[b.account] = b;
  if (std::string problem = capacity_problem(ledger, config, existing); !problem.empty()) {
    report.errors.push_back(std::move(problem));
    report.refused = true;
    return report;
  }
  report.warnings = unpriced_models(ledger, config);
  if (config.ledger.strict_models && !report.warnings.empty()) {  // named without a price: refused, as ledger.strict_models asks
    report.errors = std::move(report.warnings);
    report.errors.front() += " (ledger.strict_models: nothing was changed)";
    report.warnings.clear();
    report.refused = true;
    return report;
  }
  std::set<std::string> wanted;
  for (const AccountConfig& a : config.accounts) {  // parents come first
    wanted.insert(a.id);
    const auto it = existing.find(a.id);
    const bool same = it != existing.end() && it->second.balance.limit_nanousd == a.limit_nanousd &&
                      it->second.balance.period == a.period && it->second.parent == a.parent;
    if (same) {
      ++report.unchanged;
    } else {
      const Status s = ledger.set_budget(a.id, a.limit_nanousd, a.period, a.parent);
      if (!s.ok()) {
        report.errors.push_back("account \"" + a.id + "\": " + describe(s));
        continue;
      }
      ++(it == existing.end() ? report.created : report.updated);
    }
    if (it != existing.end() && it->second.balance.blocked) report.still_blocked.push_back(a.id);
  }
  for (const auto& [name, b] : existing) {
    if (wanted.count(name) != 0 || b.balance.blocked) continue;
    const Status s = ledger.block(name, true);
    if (s.ok()) ++report.blocked_removed;
    else report.errors.push_back("blocking removed account \"" + name + "\": " + describe(s));
  }
  // Tiers before prices and account tiers: set_tiers registers the models the tiers name.
  std::vector<TierSpec> tiers;
  for (const TierConfig& t : config.tiers) {
    TierSpec spec;
    spec.name = t.name;
    spec.all_models = !t.models.has_value();
    if (t.models) spec.models = *t.models;
    spec.fallback = t.fallback;
    spec.downgrade_at_percent = t.downgrade_at_percent;
    spec.downgrade_to = t.downgrade_to;
    tiers.push_back(std::move(spec));
  }
  if (const Status s = ledger.set_tiers(tiers); !s.ok()) report.errors.push_back("tiers: " + describe(s));
  for (const AccountConfig& a : config.accounts)
    if (const Status s = ledger.set_account_tier(a.id, a.tier); !s.ok())
      report.errors.push_back("tier of \"" + a.id + "\": " + describe(s));
  for (const PriceConfig& p : config.prices) {
    const Status s = ledger.set_price(p.model, p.prompt_nanousd_per_mtok, p.completion_nanousd_per_mtok, p.request_nanousd);
    if (s.ok()) ++report.prices;
    else report.errors.push_back("price of \"" + p.model + "\": " + describe(s));
  }
  apply_account_rules(ledger, config, &report);
  apply_ledger_settings(ledger, config, &report);
  return report;
}

RulesSpec rules_of(const AccountConfig& a) {
  RulesSpec r;
  r.soft = a.soft;
  r.has_models = a.models.has_value();
  r.all_models = r.has_models && !a.models->has_value();
  if (r.has_models && a.models->has_value()) r.models = **a.models;
  r.fallback = a.fallback;
  r.rpm = a.rpm;
  r.tpm = a.tpm;
  r.max_concurrent = a.max_concurrent;
  return r;
}

// Each account's own model list, soft limit and rate limits (DESIGN 13); a top-up is kept.
void apply_account_rules(Ledger& ledger, const Config& config, ApplyReport* report) {
  for (size_t i = 0; i < config.accounts.size(); ++i) {
    const AccountConfig& a = config.accounts[i];
    const Status s = ledger.set_rules(a.id, rules_of(a));
    if (s.ok()) continue;
    report->errors.push_back(
        "rules of \"" + a.id + "\": " + describe(s) +
        (s.code() == Code::kFull ? "; the segment holds rules for at most " + std::to_string(ledger.limits().max_account_rules) +
                                       " accounts (ledger.max_account_rules when it was created, or the model table is full): "
                                       "raise it, then ledgerctl destroy-segment and ledgerctl init (the store keeps spend)"
                                 : ""));
  }
}

void apply_ledger_settings(Ledger& ledger, const Config& config, ApplyReport* report) {
  const HoldPolicy holds{config.ledger.reservation_ttl_s, config.ledger.tombstone_grace_s, config.ledger.max_tombstones};
  if (const Status s = ledger.set_hold_policy(holds); !s.ok()) report->errors.push_back("hold policy: " + describe(s));
  if (const Status s = ledger.set_store_map_size(config.ledger.store_map_size_mb * 1024 * 1024); !s.ok())
    report->errors.push_back("ledger.store_map_size_mb: " + describe(s));
  apply_key_bindings(ledger, config, report);
  // Global mode: a global account admits only against this host's leases (see global/lease_worker.hpp).
  for (const AccountConfig& a : config.accounts)
    if (const Status s = ledger.set_scope(a.id, a.global); !s.ok() && s.code() != Code::kUnknownAccount)
      report->errors.push_back("scope of \"" + a.id + "\": " + describe(s));
}

std::map<std::string, std::string> key_bindings(const Config& config) {
  std::map<std::string, std::string> out;
  for (const auto& a : config.accounts)
    if (!a.key_hash.empty()) out[a.id] = a.key_hash;
  std::vector<std::pair<std::string, std::string>> stored;
  if (store_key_bindings(config.ledger.dir, &stored).ok())
    for (const auto& [account, hash] : stored) out[account] = hash;
  return out;
}

void apply_key_bindings(Ledger& ledger, const Config& config, ApplyReport* report) {
  // Which key each configured account's settlements go through when a worker does not say: the
  // binding (provisioned or rotated, in the store) else the config's key_hash.
  const auto bindings = key_bindings(config);
  for (const AccountConfig& a : config.accounts) {
    const auto it = bindings.find(a.id);
    const std::string wanted = it == bindings.end() ? std::string() : it->second;
    std::string bound;
    if (!ledger.bound_key(a.id, &bound).ok() || bound == wanted) continue;
    if (const Status s = ledger.bind_key(a.id, wanted); !s.ok())
      report->errors.push_back("key of \"" + a.id + "\": " + describe(s));
  }
}

std::vector<std::string> unpriced_models(const Ledger& ledger, const Config& config) {
  std::vector<std::string> out;
  const std::string where_else = config.openrouter.present
                                     ? "; with the \"openrouter\" section the sidecar also loads prices from OpenRouter's /models, "
                                       "so it may be missing there too, or not loaded yet"
                                     : "";
  std::set<std::string> configured;  // priced by the config, whether or not it was applied yet
  for (const PriceConfig& p : config.prices) configured.insert(p.model);
  auto check = [&](const std::string& key, const std::string& model) {
    int64_t estimate = 0;
    if (model.empty() || configured.count(model) != 0 || ledger.estimate(model, 1, 1, &estimate).code() != Code::kUnknownModel)
      return;
    out.push_back(key + ": \"" + model + "\" has no price (check the spelling, or add it under \"prices\"" + where_else + ")");
  };
  for (const TierConfig& t : config.tiers) {
    const std::string where = "tiers." + t.name;
    if (t.models)
      for (size_t i = 0; i < t.models->size(); ++i) check(where + ".models[" + std::to_string(i) + "]", (*t.models)[i]);
    check(where + ".fallback", t.fallback);
    check(where + ".downgrade_to", t.downgrade_to);
  }
  for (size_t a = 0; a < config.accounts.size(); ++a) {
    const AccountConfig& account = config.accounts[a];
    const std::string where = "accounts[" + std::to_string(a) + "] (\"" + account.id + "\")";
    if (account.models && account.models->has_value())
      for (size_t i = 0; i < (*account.models)->size(); ++i) check(where + ".models[" + std::to_string(i) + "]", (**account.models)[i]);
    check(where + ".fallback", account.fallback);
  }
  return out;
}

std::string read_secret(const std::string& file, const std::string& env, const std::string& what, std::string* error) {
  std::string secret;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!(in >> secret)) *error = "cannot read the " + what + " file " + file;
    return secret;
  }
  const char* value = std::getenv(env.c_str());
  if (value == nullptr || *value == '\0') *error = "$" + env + " is not set: export the " + what + " there";
  return value != nullptr ? value : "";
}

void log_line(const char* level, const std::string& message, const std::string& fields) {
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm {};
  ::gmtime_r(&ts.tv_sec, &tm);
  char when[64];
  std::snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1'000'000);
  std::string escaped;
  for (char c : message) {
    if (c == '"' || c == '\\') escaped.push_back('\\');
    escaped.push_back(c == '\n' ? ' ' : c);
  }
  std::fprintf(stderr, "ts=%s level=%s msg=\"%s\"%s%s\n", when, level, escaped.c_str(), fields.empty() ? "" : " ",
               fields.c_str());
  std::fflush(stderr);
}

}  // namespace ledger::admin
