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
  std::string key = read_secret(config.openrouter.management_key_file, config.openrouter.management_key_env,
                                config.openrouter.management_key_file.empty() ? "OpenRouter management key" : "management key", error);
  return error->empty() ? key : "";
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

std::unique_ptr<openrouter::Client> client_for(const Config& config, std::string* error, const std::atomic<bool>* cancel) {
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
  options.cancel = cancel;
  return std::make_unique<openrouter::Client>(options);
}

std::string drift_text(const DriftRow& row) {
  const auto usd = [](int64_t n) { return format_usd(n); };
  const int64_t delta = row.openrouter_nanousd ? *row.openrouter_nanousd - row.ledger_nanousd : 0;
  switch (row.drift) {
    case Drift::kWithinTolerance: return "within tolerance";
    case Drift::kAdjusted: return "adjusted: OpenRouter saw " + usd(delta) + " more than the ledger recorded through the key";
    case Drift::kWouldAdjust: return "would adjust by " + usd(delta);
    case Drift::kLedgerHigher:
      return "ledger higher by " + usd(-delta) + " (spend OpenRouter does not show yet, or workers that send through another key "
             "without saying so: see ledgerctl doctor)";
    case Drift::kUnknownWindow:
      return "unknown window: OpenRouter did not report " + (row.period.empty() ? std::string("usage") : "usage_" + row.period);
    case Drift::kKeyNotFound: return "key not found at OpenRouter (deleted? ledgerctl keys rotate " + row.account + ")";
    case Drift::kOwnerNotInLedger: return "its account \"" + row.account + "\" is not in the ledger: run ledgerctl init";
    case Drift::kUnbound:
      return "no account owns this key, so its drift cannot be charged: bind it to its account (key_hash in the config)";
    case Drift::kAdjustFailed: return "adjustment failed: " + row.detail;
  }
  return "";
}

namespace {

// What the ledger recorded through each key, per account and UTC day, from the store.
struct KeyDays {
  std::map<std::string, std::vector<StoredKeyDay>> by_key;
  // Spend through `key` on days [first, last], and the accounts it came from.
  int64_t sum(const std::string& key, int64_t first, int64_t last, std::vector<std::string>* accounts) const {
    int64_t total = 0;
    const auto it = by_key.find(key);
    if (it == by_key.end()) return 0;
    std::set<std::string> from;
    for (const auto& d : it->second)
      if (d.day >= first && d.day <= last) {
        total += d.spent_nanousd;
        if (d.spent_nanousd != 0) from.insert(d.account);
      }
    if (accounts != nullptr) accounts->assign(from.begin(), from.end());
    return total;
  }
};

// This host's own record: the store must hold everything settled so far, so flush, then read (and
// close) before deciding.
bool own_key_record(Ledger& ledger, const Config& config, KeyRecord* out, std::string* error) {
  std::unique_ptr<StoreReader> store;
  Status s = ledger.flush();
  if (s.ok()) s = StoreReader::open(config.ledger.dir, &store);
  if (s.ok()) s = store->key_days(0, floor_days(ledger.now_ms() / 1000), &out->days);
  if (!s.ok()) *error = describe(s);
  return s.ok();
}

int64_t window_first_day(Period period, int64_t now_unix) {
  if (period == Period::kNone) return 0;
  return floor_days(period_start_unix(period, period_index(period, now_unix)));
}

struct Reconciling {
  Ledger& ledger;
  openrouter::Client& client;
  const Config& config;
  bool dry_run;
  int64_t tolerance;
  int64_t now_unix;
  KeyDays days;
  ReconcileReport report;
  std::map<std::string, int64_t> held;  // per key: live holds through it, read before the record
};

void compare(Reconciling& r, DriftRow& row, const openrouter::KeyInfo& key) {
  row.openrouter_nanousd = openrouter::window_spend(key, row.period);
  if (!row.openrouter_nanousd) {
    row.drift = Drift::kUnknownWindow;
    return;
  }
  // A request OpenRouter billed may still be a hold here (its commit not landed yet): the holds
  // through the key count as the ledger's, so only spend beyond them is charged (a hold is an
  // upper bound of what its request costs). Holds are read before the record: a request is then
  // in one of the two (or both, which only makes the ledger look higher), never in neither.
  const auto held = r.held.find(row.key_hash);
  const int64_t in_flight = held != r.held.end() ? held->second : 0;
  const int64_t delta = *row.openrouter_nanousd - row.ledger_nanousd;
  if (delta < -r.tolerance) row.drift = Drift::kLedgerHigher;
  if (delta - in_flight <= r.tolerance) return;
  if (row.account.empty()) {
    row.drift = Drift::kUnbound;
  } else if (r.dry_run) {
    row.drift = Drift::kWouldAdjust;
  } else if (const Status s = r.ledger.adjust(row.account, delta - in_flight, row.key_hash); s.ok()) {
    row.drift = Drift::kAdjusted;
    row.adjusted_nanousd = delta - in_flight;
    r.report.adjusted_total_nanousd += delta - in_flight;
  } else {
    row.drift = Drift::kAdjustFailed;
    row.detail = describe(s);
  }
}

// The key as backstop: its own limit and reset mirror the owner's budget.
void sync_limit(Reconciling& r, DriftRow& row, const openrouter::KeyInfo& key, const AccountConfig& a) {
  if (!r.config.openrouter.sync_key_limits || r.dry_run) return;
  if (key.limit_nanousd == std::optional<int64_t>(a.limit_nanousd) && key.limit_reset == row.period) return;
  openrouter::KeyInfo updated;
  if (const openrouter::Error e = r.client.set_limit(row.key_hash, a.limit_nanousd, row.period, &updated)) row.detail = "limit sync failed: " + e.message;
  else row.limit_synced = true;
}

void reconcile_owned(Reconciling& r, const std::map<std::string, const openrouter::KeyInfo*>& by_hash) {
  const auto bindings = key_bindings(r.config);
  const int64_t today = floor_days(r.now_unix);
  for (const AccountConfig& a : r.config.accounts) {
    const auto bound = bindings.find(a.id);
    if (bound == bindings.end()) continue;
    DriftRow row;
    row.account = a.id;
    row.key_hash = bound->second;
    row.period = a.period == Period::kNone ? "" : std::string(period_name(a.period));
    row.ledger_nanousd = r.days.sum(row.key_hash, window_first_day(a.period, r.now_unix), today, &row.accounts);
    Balance b;
    const auto it = by_hash.find(row.key_hash);
    if (!r.ledger.balance(a.id, &b).ok()) row.drift = Drift::kOwnerNotInLedger;
    else if (it == by_hash.end()) row.drift = Drift::kKeyNotFound;
    if (it != by_hash.end()) row.key_name = it->second->name;
    if (row.drift == Drift::kWithinTolerance && it != by_hash.end()) {
      compare(r, row, *it->second);
      sync_limit(r, row, *it->second, a);
    }
    r.report.rows.push_back(std::move(row));
  }
}

// Keys the ledger recorded spend through that no account owns (a worker named them itself).
void report_unbound(Reconciling& r, const std::map<std::string, const openrouter::KeyInfo*>& by_hash) {
  std::set<std::string> owned;
  for (const auto& row : r.report.rows) owned.insert(row.key_hash);
  const int64_t today = floor_days(r.now_unix);
  for (const auto& [hash, days] : r.days.by_key) {
    if (owned.count(hash) != 0) continue;
    DriftRow row;
    row.key_hash = hash;
    row.period = "daily";
    row.ledger_nanousd = r.days.sum(hash, today, today, &row.accounts);
    const auto it = by_hash.find(hash);
    if (it == by_hash.end() && row.ledger_nanousd == 0) continue;
    if (it != by_hash.end()) {
      row.key_name = it->second->name;
      compare(r, row, *it->second);
    }
    if (row.drift == Drift::kWithinTolerance && row.ledger_nanousd == 0) continue;
    r.report.rows.push_back(std::move(row));
  }
}

void report_sprawl(Reconciling& r, const std::vector<openrouter::KeyInfo>& keys) {
  std::set<std::string> owned;
  for (const auto& [account, hash] : key_bindings(r.config)) owned.insert(hash);
  for (const auto& k : keys) {
    if (owned.count(k.hash) != 0 || k.disabled) continue;
    r.report.unowned_keys.push_back(k.name + " (" + k.hash.substr(0, 12) + "...)");
    if (!r.config.openrouter.disable_unowned_keys || r.dry_run) continue;
    openrouter::KeyInfo info;
    if (const openrouter::Error e = r.client.set_disabled(k.hash, true, &info)) r.report.revoke_errors.push_back("disabling unowned key: " + e.message);
    else r.report.revoked.push_back("disabled the unowned key " + k.name + " (" + k.hash.substr(0, 12) + "...)");
  }
}

}  // namespace

ReconcileReport reconcile(Ledger& ledger, openrouter::Client& client, const Config& config, bool dry_run, int64_t tolerance) {
  return reconcile(ledger, client, config, dry_run, tolerance,
                   [&](KeyRecord* out, std::string* error) { return own_key_record(ledger, config, out, error); });
}

ReconcileReport reconcile(Ledger& ledger, openrouter::Client& client, const Config& config, bool dry_run, int64_t tolerance,
                          const KeyRecordSource& source) {
  Reconciling r{ledger, client, config, dry_run, tolerance, ledger.now_ms() / 1000, {}, {}, {}};
  // OpenRouter first, then the ledger: spend settled in between makes the ledger look higher (only
  // reported), never OpenRouter (which would be charged).
  std::vector<openrouter::KeyInfo> keys;
  if (const openrouter::Error e = client.list_keys(&keys)) {
    r.report.error = "cannot list keys: " + e.message;
    return r.report;
  }
  std::vector<KeyHold> holds;
  if (r.ledger.key_holds(&holds).ok())
    for (const auto& h : holds) r.held[h.key_hash] = h.held_nanousd;
  KeyRecord record;
  std::string error;
  if (!source(&record, &error)) {
    r.report.error = "cannot read what the ledger recorded per key: " + error;
    return r.report;
  }
  for (auto& d : record.days) r.days.by_key[d.key_hash].push_back(std::move(d));
  if (!record.complete && !dry_run) {
    r.dry_run = true;  // compare and report, adjust nothing: the next run has the whole record
    r.report.deferred = record.incomplete_because;
  }
  std::map<std::string, const openrouter::KeyInfo*> by_hash;
  for (const auto& k : keys) by_hash[k.hash] = &k;
  reconcile_owned(r, by_hash);
  report_unbound(r, by_hash);
  report_sprawl(r, keys);
  if (!dry_run) r.report.revoked = revoke(ledger, config, client, &r.report.revoke_errors);  // not deferred: blocks are local
  if (r.report.adjusted_total_nanousd > 0) (void)ledger.flush();  // the adjustments and their journal entries
  return r.report;
}

std::vector<std::string> unsaid_key_use(const ReconcileReport& report, int64_t tolerance) {
  std::vector<std::string> out;
  for (const DriftRow& higher : report.rows) {
    if (!higher.openrouter_nanousd || *higher.openrouter_nanousd - higher.ledger_nanousd <= tolerance) continue;
    std::vector<std::string> others;
    int64_t unseen = 0;
    for (const DriftRow& lower : report.rows) {
      if (lower.account == higher.account || !lower.openrouter_nanousd) continue;
      const int64_t excess = lower.ledger_nanousd - *lower.openrouter_nanousd;
      if (excess <= tolerance) continue;
      unseen += excess;
      others.push_back("\"" + lower.account + "\" (key " + lower.key_hash.substr(0, 12) + "...)");
    }
    if (others.empty()) continue;
    std::string names;
    for (const auto& o : others) names += (names.empty() ? "" : ", ") + o;
    out.push_back("key " + higher.key_hash.substr(0, 12) + "... (bound to \"" + higher.account + "\") shows " +
                  format_usd(*higher.openrouter_nanousd - higher.ledger_nanousd) +
                  " more at OpenRouter than the ledger recorded through it, while the ledger recorded " + format_usd(unseen) +
                  " through " + names + " that OpenRouter does not show: workers of those accounts probably send through \"" +
                  higher.account + "\"'s key without saying so; pass that key to ledger_authorize_via (or give the workers "
                  "their own account's key)");
  }
  return out;
}

}  // namespace ledger::admin
