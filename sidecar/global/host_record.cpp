// host_record.cpp — see host_record.hpp.
#include "global/host_record.hpp"

#include <chrono>
#include <set>
#include <thread>

#include "global/lease_worker.hpp"
#include "core/admin.hpp"
#include "global/protocol.hpp"

namespace ledger::global {

namespace {

// A host that captured within this long is live: the reconciler waits for it.
int64_t live_s(const admin::Config& config) { return std::max<int64_t>(60, int64_t{config.global.lease_ttl_s} * 2); }

bool capture(Ledger& ledger, const admin::Config& config, HostRecord* out) {
  *out = HostRecord{};
  if (!ledger.flush().ok()) return false;  // everything settled so far, then read it (and close)
  std::unique_ptr<StoreReader> store;
  const Status opened = StoreReader::open(config.ledger.dir, &store);
  if (opened.code() == Code::kNotFound) return true;  // nothing flushed yet: nothing to publish
  if (!opened.ok()) return false;
  constexpr int64_t kLastDay = INT64_MAX / 86'400'000;
  std::vector<StoredKeyDay> keys;
  std::vector<StoredDay> days;
  std::vector<StoredModelDay> models;
  if (!store->key_days(0, kLastDay, &keys).ok() || !store->days(0, kLastDay, &days).ok() || !store->model_days(0, kLastDay, &models).ok())
    return false;
  for (auto& k : keys) out->keys.push_back(KeyDay{std::move(k.key_hash), std::move(k.account), k.day, k.spent_nanousd});
  for (auto& d : days) out->days.push_back(AccountDay{std::move(d.account), "", d.day, d.spent_nanousd, static_cast<int64_t>(d.requests)});
  for (auto& m : models)
    out->days.push_back(AccountDay{std::move(m.account), std::move(m.model), m.day, m.spent_nanousd, static_cast<int64_t>(m.requests)});
  return true;
}

std::string host_of(const std::string& owner) { return owner.substr(0, owner.find('/')); }

}  // namespace

bool publish_own_record(PgConnection& pg, Ledger& ledger, const admin::Config& config, PublishedRows* cache, PgError* error) {
  return publish_host_record(pg, owner_id(config), [&](HostRecord* r) { return capture(ledger, config, r); }, cache, error);
}

bool pooled_key_days(PgConnection& pg, Ledger& ledger, const admin::Config& config, const std::atomic<bool>* cancel,
                     std::vector<StoredKeyDay>* days, bool* complete, std::string* waiting_for, PgError* error) {
  *complete = false;
  waiting_for->clear();
  int64_t since_ms = 0;  // the caller read OpenRouter before this instant
  if (!store_now_ms(pg, &since_ms, error) || !publish_own_record(pg, ledger, config, nullptr, error)) return false;
  const std::string own = owner_id(config);
  std::vector<std::string> stale;
  for (const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kCaptureWaitMs);;) {
    if (!stale_owners(pg, since_ms, live_s(config), &stale, error)) return false;
    std::erase(stale, own);
    if (stale.empty() || std::chrono::steady_clock::now() >= deadline || (cancel != nullptr && cancel->load())) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (const auto& s : stale) *waiting_for += (waiting_for->empty() ? "" : ", ") + s;
  *complete = stale.empty();
  if (!*complete) *waiting_for = "waiting for " + *waiting_for + " to publish its per-key record (every host does every " +
                                 std::to_string(kPublishIntervalMs / 1000) + " s)";
  std::vector<KeyDay> pooled;
  if (!read_key_days(pg, 0, &pooled, error)) return false;
  days->clear();
  for (auto& d : pooled) days->push_back(StoredKeyDay{std::move(d.key_hash), std::move(d.account), d.day, d.spent_nanousd, 0});
  return true;
}

namespace {

// The global accounts' current periods: their window's spend across hosts (expired leases charged).
bool pooled_periods(PgConnection& pg, const std::set<std::string>& global, const std::vector<AccountDay>& days, int64_t from_day,
                    int64_t now_unix, admin::ReportInputs* in, PgError* error) {
  std::vector<AccountStatus> status;
  if (!read_status(pg, now_unix, &status, error)) return false;
  std::erase_if(in->periods, [&](const StoredPeriod& p) { return global.count(p.account) != 0; });
  for (const auto& a : status)
    if (global.count(a.id) != 0) in->periods.push_back(StoredPeriod{a.id, a.period, a.window, a.spent_nanousd, 0});
  // A daily account's past periods in the range are its days (for the at-limit anomaly).
  const int64_t today = period_index(Period::kDaily, now_unix);
  std::map<std::string, Period> period_of;
  for (const auto& a : in->accounts) period_of[a.account] = a.period;
  for (const auto& d : days)
    if (d.model.empty() && d.day >= from_day && d.day != today && global.count(d.account) != 0 && period_of[d.account] == Period::kDaily)
      in->periods.push_back(StoredPeriod{d.account, Period::kDaily, d.day, d.spent_nanousd, static_cast<uint64_t>(d.requests)});
  return true;
}

}  // namespace

bool pooled_report_inputs(PgConnection& pg, const admin::Config& config, int64_t from_day, int64_t to_day, int64_t now_unix,
                          admin::ReportInputs* in, PgError* error) {
  std::vector<OwnedAccountDay> rows;
  if (!read_account_days(pg, from_day - 7, to_day, &rows, error)) return false;
  std::set<std::string> global;
  for (const auto& a : config.accounts)
    if (a.global) global.insert(a.id);
  std::map<std::pair<std::string, int64_t>, AccountDay> days;                          // (account, day), model ""
  std::map<std::tuple<std::string, std::string, int64_t>, AccountDay> models;         // (account, model, day)
  std::map<std::string, std::map<std::string, admin::HostCost>> hosts;                // account -> host -> cost
  for (const auto& r : rows) {
    const AccountDay& d = r.day;
    AccountDay& sum = d.model.empty() ? days[{d.account, d.day}] : models[{d.account, d.model, d.day}];
    sum = AccountDay{d.account, d.model, d.day, sum.spent_nanousd + d.spent_nanousd, sum.requests + d.requests};
    if (!d.model.empty() || d.day < from_day) continue;
    admin::HostCost& h = hosts[d.account][host_of(r.owner)];
    h.host_id = host_of(r.owner);
    h.cost_nanousd += d.spent_nanousd;
    h.requests += static_cast<uint64_t>(d.requests);
  }
  std::vector<AccountDay> day_rows;
  for (auto& [key, d] : days) day_rows.push_back(d);
  // Global accounts' days and models are every host's; a local account's stay this host's own.
  std::erase_if(in->days, [&](const StoredDay& d) { return global.count(d.account) != 0; });
  std::erase_if(in->model_days, [&](const StoredModelDay& d) { return global.count(d.account) != 0; });
  for (const auto& d : day_rows)
    if (global.count(d.account) != 0) in->days.push_back(StoredDay{d.account, d.day, d.spent_nanousd, static_cast<uint64_t>(d.requests)});
  for (const auto& [key, m] : models)
    if (global.count(m.account) != 0 && m.day >= from_day)
      in->model_days.push_back(StoredModelDay{m.account, m.model, m.day, m.spent_nanousd, static_cast<uint64_t>(m.requests)});
  in->hosts.clear();
  for (auto& [account, by_host] : hosts)
    for (auto& [host, cost] : by_host) in->hosts[account].push_back(cost);
  in->global = true;
  return pooled_periods(pg, global, day_rows, from_day, now_unix, in, error);
}

bool build_global_report(Ledger& ledger, const admin::Config& config, int64_t from_day, int64_t to_day, int64_t now_unix,
                         admin::Report* out, std::string* error) {
  PgOptions options;
  if (!store_options(config, &options, error)) return false;
  PgConnection pg(options);
  PgError e;
  if (!publish_own_record(pg, ledger, config, nullptr, &e)) {  // (it flushes: the local read below is current)
    *error = "the global store: " + e.message;
    return false;
  }
  admin::ReportInputs in;
  Status s = admin::read_report_inputs(config, from_day, to_day, now_unix, &in);
  if (!s.ok()) {
    *error = s.code() == Code::kInvalidArgument ? "the range is longer than five years" : "cannot read the store: " + admin::describe(s);
    return false;
  }
  if (!pooled_report_inputs(pg, config, from_day, to_day, now_unix, &in, &e)) {
    *error = "the global store: " + e.message;
    return false;
  }
  s = admin::build_report(config, in, from_day, to_day, now_unix, out);
  if (!s.ok()) *error = admin::describe(s);
  return s.ok();
}

}  // namespace ledger::global
