// lease_worker.cpp — see lease_worker.hpp.
#include "global/lease_worker.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>

#include "core/admin.hpp"
#include "global/host_record.hpp"

namespace ledger::global {

using admin::AccountConfig;
using admin::Config;

namespace {

constexpr int64_t kReportsPerExpiry = 10;   // expire dead hosts' leases every tenth refresh
constexpr int64_t kReportEveryCycles = 4;   // a busy host reports its use every 4th refresh interval

std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// The global accounts of the chain of `a` (itself first), by the config.
std::vector<const AccountConfig*> global_chain(const Config& config, const AccountConfig& a) {
  std::vector<const AccountConfig*> chain;
  for (const AccountConfig* at = &a; at != nullptr && chain.size() < 4;) {
    // A soft account's own limit never denies (DESIGN 13): it admits without a lease, and a grant
    // of its ancestors must not be refused because it is over its own limit.
    if (at->global && !at->soft) chain.push_back(at);
    const AccountConfig* parent = nullptr;
    for (const auto& c : config.accounts)
      if (c.id == at->parent) parent = &c;
    at = parent;
  }
  return chain;
}

int64_t window_of(const AccountConfig& a, int64_t now_s) { return period_index(a.period, now_s); }

int64_t skew_margin_ms(const Config& config) {
  return std::max<int64_t>(1000, int64_t{config.global.lease_ttl_s} * 100);  // a tenth of the ttl, at least 1 s
}

}  // namespace

bool store_options(const Config& config, PgOptions* out, std::string* error) {
  *out = PgOptions{};
  out->uri = config.global.store;
  if (!config.global.store_password_file.empty()) {
    std::ifstream in(config.global.store_password_file);
    if (!std::getline(in, out->password)) {
      *error = "cannot read the store's password file " + config.global.store_password_file;
      return false;
    }
  } else if (const char* env = std::getenv(config.global.store_password_env.c_str()); env != nullptr) {
    out->password = env;
  }
  out->statement_timeout_ms = std::clamp<uint32_t>(config.global.refresh_interval_ms * 4, 1000, 10000);
  out->connect_timeout_ms = out->statement_timeout_ms;
  return true;
}

std::string instance_id(const Config& config) {
  std::string machine = read_first_line("/etc/machine-id");
  if (machine.empty()) machine = read_first_line("/proc/sys/kernel/random/boot_id");
  return machine + ":" + config.ledger.dir;
}

std::string incarnation_id(const Config& config) {
  // Once per directory and process (the network worker and the lease worker both ask, on their own
  // threads), and once per directory across processes: the id is written to a file of its own and
  // linked into place, so of two that race only one wins and the other reads the winner's.
  static std::mutex mutex;
  static std::map<std::string, std::string> known;
  std::lock_guard<std::mutex> lock(mutex);
  const std::string path = config.ledger.dir + "/ledger.incarnation";
  if (const auto it = known.find(path); it != known.end()) return it->second;
  std::string id = read_first_line(path);
  if (id.size() != 32) {
    unsigned char bytes[16] = {};
    if (::getentropy(bytes, sizeof bytes) != 0) return "unknown";
    static constexpr char kDigits[] = "0123456789abcdef";
    id.clear();
    for (unsigned char b : bytes) id += std::string{kDigits[b >> 4], kDigits[b & 15]};
    const std::string temp = path + "." + id + ".tmp";
    { std::ofstream(temp, std::ios::trunc) << id << "\n"; }
    ::chmod(temp.c_str(), 0600);
    if (::link(temp.c_str(), path.c_str()) != 0) {
      const std::string winner = read_first_line(path);
      if (winner.size() == 32) id = winner;                       // another process made it first
      else if (::rename(temp.c_str(), path.c_str()) != 0) id = winner;  // a damaged file: replaced by ours
    }
    ::unlink(temp.c_str());
  }
  known[path] = id;
  return id;
}

std::string owner_id(const Config& config) { return config.global.host_id + "/" + incarnation_id(config); }

std::string LeaseWorker::next_request_id() {
  return instance_ + ":" + std::to_string(::getpid()) + ":" + std::to_string(Ledger::monotonic_ms()) + ":" +
         std::to_string(++request_counter_);
}

void LeaseWorker::start(std::shared_ptr<const Config> config) {
  config_ = std::move(config);
  instance_ = instance_id(*config_);
  owner_ = owner_id(*config_);
  thread_ = std::thread([this] { loop(); });
}

void LeaseWorker::update(std::shared_ptr<const Config> config) {
  std::lock_guard<std::mutex> lock(mutex_);
  config_ = std::move(config);
}

void LeaseWorker::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

LeaseCounters LeaseWorker::counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return counters_;
}

void LeaseWorker::loop() {
  for (;;) {
    std::shared_ptr<const Config> config;
    bool final = false;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      config = config_;
      final = stopping_;
    }
    const bool ok = cycle(*config, final);
    if (final) return;
    std::unique_lock<std::mutex> lock(mutex_);
    ++counters_.cycles;
    if (!ok) ++counters_.store_errors;
    wake_.wait_for(lock, std::chrono::milliseconds(config->global.refresh_interval_ms), [this] { return stopping_; });
  }
}

bool LeaseWorker::cycle(const Config& config, bool final) {
  if (!pg_) {
    PgOptions options;
    std::string error;
    if (!store_options(config, &options, &error)) {
      if (error != last_error_) admin::log_line("error", "global: " + error);
      last_error_ = error;
      return false;
    }
    pg_ = std::make_unique<PgConnection>(options);
  }
  const int64_t now_s = ledger_.now_ms() / 1000;
  if (!report_and_read(config, now_s, final)) return false;
  if (final) {
    give_back_surplus(config, now_s, /*everything=*/true);
    publish_record(config, true);
    return true;
  }
  grow(config, now_s);
  give_back_surplus(config, now_s, false);
  take_next_windows(config, now_s);
  publish(config, now_s);
  publish_record(config, false);
  return true;
}

// What this host recorded, for the one reconciler and global reports (host_record.hpp): every
// kPublishIntervalMs, and once more on stop.
void LeaseWorker::publish_record(const Config& config, bool final) {
  const int64_t now = Ledger::monotonic_ms();
  if (!final && record_ms_ != 0 && now - record_ms_ < kPublishIntervalMs) return;
  PgError error;
  if (publish_own_record(*pg_, ledger_, config, &published_, &error)) {
    record_ms_ = now;
    return;
  }
  const std::string message = "global: cannot publish this host's record: " + error.message;
  if (message != last_error_) admin::log_line("warn", message + " (the reconciler waits for it, reports lag; admission is unaffected)");
  last_error_ = message;
}

namespace {
const AccountConfig* find_account(const Config& config, const std::string& id) {
  for (const auto& a : config.accounts)
    if (a.id == id) return &a;
  return nullptr;
}
}  // namespace

std::vector<Usage> LeaseWorker::current_usage(const Config& config) const {
  std::vector<Usage> usage;
  for (const auto& [key, lease] : leases_) {
    const AccountConfig* a = find_account(config, key.first);
    WindowUsage u;
    if (a == nullptr || !ledger_.window_usage(key.first, key.second, &u).ok()) continue;
    usage.push_back(Usage{key.first, a->period, key.second, u.used_nanousd, u.spent_nanousd});
  }
  return usage;
}

// Nothing the store must hear now: no request denied for want of a lease, the leases renewed less
// than a quarter of their ttl ago, and either the same use as last reported or a report younger
// than kReportEveryCycles refresh intervals. An idle host then costs the store one transaction per
// ttl/4, a busy one one per kReportEveryCycles intervals (grants and give-backs apart); a changed
// limit or block reaches a host at its next refresh, at the latest at its next renewal.
bool LeaseWorker::nothing_to_refresh(const Config& config, const std::vector<Usage>& usage) const {
  if (!host_claimed_ || renewed_mono_ms_ == 0) return false;
  const int64_t age_ms = Ledger::monotonic_ms() - renewed_mono_ms_;
  if (age_ms >= int64_t{config.global.lease_ttl_s} * 1000 / 4) return false;
  for (const auto& [id, d] : demand_)
    if (d.wanted > 0) return false;
  bool unchanged = usage.size() == reported_.size();
  for (const Usage& u : usage) {
    const auto it = reported_.find({u.account, u.window});
    unchanged = unchanged && it != reported_.end() && it->second == std::make_pair(u.used_nanousd, u.spent_nanousd);
  }
  return unchanged || age_ms < kReportEveryCycles * int64_t{config.global.refresh_interval_ms};
}

bool LeaseWorker::report_and_read(const Config& config, int64_t now_s, bool final) {
  PgError error;
  const auto fail = [&](const std::string& what) {
    const std::string message = what + ": " + error.message;
    if (message != last_error_) admin::log_line("error", "global: " + message + " (leases are not renewed: this host denies once they lapse)");
    last_error_ = message;
    return false;
  };
  if (!host_claimed_ && !ensure_schema(*pg_, &error)) return fail("the store's schema");
  const std::vector<Usage> usage = current_usage(config);
  measure_demand(config, now_s);  // (takes the amounts denied for want of a lease since the last cycle)
  if (!final && nothing_to_refresh(config, usage)) return true;
  const RefreshRequest request{config.global.host_id, instance_, owner_, int64_t{config.global.lease_ttl_s} * 2,
                               ledger_.now_ms() * 1000 + static_cast<int64_t>(++request_counter_ % 1000), config.global.lease_ttl_s,
                               usage};
  const int64_t started = Ledger::monotonic_ms();
  RefreshResult got;
  if (!refresh(*pg_, request, &got, &error)) return fail("refresh (report, renew, read)");
  if (!got.claimed) {
    error.message = "another live host uses it (" + got.holder + "): give each host its own global.host_id";
    return fail("host_id \"" + config.global.host_id + "\"");
  }
  host_claimed_ = true;
  renewed_mono_ms_ = started;  // the store renewed the leases no earlier than this
  reported_.clear();
  for (const Usage& u : usage) reported_[{u.account, u.window}] = {u.used_nanousd, u.spent_nanousd};
  uint64_t expired = 0;
  if (++refreshes_ % kReportsPerExpiry == 0 && expire_leases(*pg_, &expired, &error) && expired > 0) {
    admin::log_line("warn", "global: leases of hosts that stopped reporting expired (their remainder is charged as spent)",
                    "count=" + std::to_string(expired));
    std::lock_guard<std::mutex> lock(mutex_);
    counters_.expiries += expired;
  }
  if (!last_error_.empty()) admin::log_line("info", "global: the store answers again");
  last_error_.clear();
  apply_store_view(config, got, now_s);
  std::lock_guard<std::mutex> lock(mutex_);
  counters_.last_round_trip_us = pg_->last_round_trip_us();
  return true;
}

// The store's view of this host's leases, the accounts' limits and blocks (blocks are global).
void LeaseWorker::apply_store_view(const Config& config, const RefreshResult& got, int64_t now_s) {
  for (const auto& v : got.leases)
    leases_[{v.account, v.window}] = Lease{v.granted_nanousd, v.window_granted_nanousd, v.limit_nanousd, v.blocked};
  for (const auto& g : got.accounts) {
    const AccountConfig* a = find_account(config, g.id);
    if (a == nullptr || !a->global) continue;
    Lease& lease = leases_[{g.id, window_of(*a, now_s)}];
    lease.limit = g.limit_in(window_of(*a, now_s));
    lease.blocked = g.blocked;
    Balance b;
    if (ledger_.balance(g.id, &b).ok() && b.blocked != g.blocked) (void)ledger_.block(g.id, g.blocked);
  }
  // Only at the first refresh of this process: that is when the segment may have been rebuilt. Later
  // the store's record is this process's own reports, and a report read while a hold was being
  // taken can be above the settled spend for an instant (see window_usage): not spend to charge.
  if (!restored_) restored_ = restore_reported_spend(config, got.leases, now_s);
}

// A segment rebuilt from LMDB (its host lost /dev/shm, as in a reboot) may know less than this host
// already reported: the store's record of this host's spend in a current window is the floor. The
// difference is charged here, so that spend is not admitted a second time (G1); only what was
// neither flushed nor reported before the failure stays unknown (DESIGN 4, promise 3). False when
// a difference could not be charged: the next refresh tries again (and the leases stay as they were:
// publish() never grants what the segment does not know it spent).
bool LeaseWorker::restore_reported_spend(const Config& config, const std::vector<LeaseView>& views, int64_t now_s) {
  bool done = true;
  std::vector<std::pair<size_t, const AccountConfig*>> deepest_first;
  for (const auto& a : config.accounts)
    if (a.global) deepest_first.emplace_back(global_chain(config, a).size(), &a);
  std::stable_sort(deepest_first.begin(), deepest_first.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
  for (const auto& [depth, a] : deepest_first) {  // a charge to an account charges its ancestors too
    for (const auto& v : views) {
      WindowUsage u;
      if (v.account != a->id || v.window != window_of(*a, now_s) || !ledger_.window_usage(a->id, v.window, &u).ok()) continue;
      const int64_t missing = v.spent_nanousd - u.spent_nanousd;
      if (missing <= 0) continue;
      if (!ledger_.adjust(a->id, missing).ok()) {
        done = false;
        continue;
      }
      admin::log_line("warn", "global: this host's ledger knew less than it had reported (rebuilt after losing its segment?); "
                              "the difference is charged again",
                      "account=" + a->id + " usd=" + format_usd(missing));
    }
  }
  return done;
}

void LeaseWorker::measure_demand(const Config& config, int64_t now_s) {
  const int64_t now_ms = Ledger::monotonic_ms();
  for (const auto& a : config.accounts) {
    if (!a.global) continue;
    WindowUsage u;
    if (!ledger_.window_usage(a.id, window_of(a, now_s), &u).ok()) continue;
    Demand& d = demand_[a.id];
    if (d.last_used >= 0 && now_ms > d.last_ms && u.used_nanousd >= d.last_used) {
      const double rate = static_cast<double>(u.used_nanousd - d.last_used) * 1000.0 / static_cast<double>(now_ms - d.last_ms);
      d.rate_per_s = 0.5 * d.rate_per_s + 0.5 * rate;  // a short memory: idle hosts shrink quickly
    }
    // The largest request denied for want of this lease since the last cycle: the next slice fits it,
    // and while denials go on, the headroom doubles each cycle (a host that starts spending fast
    // reaches its rate's slice in a few cycles, not only after its spend was measured).
    if (!ledger_.take_lease_wanted(a.id, window_of(a, now_s), &d.wanted).ok()) d.wanted = 0;
    // Capped at the largest amount there is: it doubles for as long as an exhausted account is
    // denied (it overflowed after about 60 cycles before, a finding of the ASan run).
    d.boost = d.wanted > 0 ? std::min(kAmountNanoUsdMax, std::max(d.boost * 2, d.wanted * 4)) : d.boost / 2;
    d.used = u.used_nanousd;
    d.spent = u.spent_nanousd;
    d.last_used = u.used_nanousd;
    d.last_ms = now_ms;
  }
}

int64_t LeaseWorker::headroom(const AccountConfig& a, const Lease& lease, const Demand& d, const Config& config) const {
  (void)a;
  if (lease.blocked || lease.window_granted > lease.limit) return 0;  // blocked, or the limit was lowered: recall
  const int64_t min_slice = std::max<int64_t>(1, lease.limit / 1000);
  // Four refresh intervals of spend, and at least 0.8 s of it: at short intervals a cycle delayed by
  // a busy machine does not run the slice dry (and grants stay few); at long ones the slices of idle
  // hosts stay small (less budget stranded on them).
  const double seconds = std::max(4.0 * static_cast<double>(config.global.refresh_interval_ms) / 1000.0, 0.8);
  const double sized = d.rate_per_s * seconds;
  const int64_t by_rate =
      std::clamp<int64_t>(std::max(static_cast<int64_t>(sized), d.boost), min_slice, std::max(min_slice, lease.limit / 10));
  return std::max(by_rate, std::min(d.wanted, lease.limit));  // a denied request larger than that: room for it
}

// Near exhaustion: one request's worth (the minimum slice, or the request that was denied).
int64_t LeaseWorker::single_slice(const Lease& lease, const Demand& d) {
  return std::max(std::max<int64_t>(1, lease.limit / 1000), std::min(d.wanted, lease.limit));
}

void LeaseWorker::grow(const Config& config, int64_t now_s) {
  std::map<std::string, bool> granted_now;
  for (auto it = config.accounts.rbegin(); it != config.accounts.rend(); ++it) {  // the deepest first
    if (!it->global) continue;
    std::vector<LevelAmount> levels, single;
    const std::vector<const AccountConfig*> chain = global_chain(config, *it);
    // A request denied at one level must pass every level: each gets room for it (and keeps it
    // through this cycle's give-back).
    int64_t chain_wanted = 0;
    for (const AccountConfig* level : chain) chain_wanted = std::max(chain_wanted, demand_[level->id].wanted);
    int64_t chain_boost = 0;
    for (const AccountConfig* level : chain) chain_boost = std::max(chain_boost, demand_[level->id].boost);
    for (const AccountConfig* level : chain) {
      demand_[level->id].wanted = std::max(demand_[level->id].wanted, chain_wanted);
      demand_[level->id].boost = std::max(demand_[level->id].boost, chain_boost);
    }
    for (const AccountConfig* level : chain) {
      if (granted_now[level->id]) continue;
      const int64_t window = window_of(*level, now_s);
      const Lease& lease = leases_[{level->id, window}];
      const Demand& d = demand_[level->id];
      const int64_t room = headroom(*level, lease, d, config);
      const int64_t missing = d.used + room - lease.granted;
      // Enough left (or nothing to be had); a denial for want of this lease always asks again.
      if (room == 0 || missing <= 0 || (missing <= room / 2 && d.wanted == 0)) continue;
      levels.push_back(LevelAmount{level->id, level->period, window, missing});
      single.push_back(LevelAmount{level->id, level->period, window, std::min(missing, single_slice(lease, d))});
    }
    if (levels.empty()) continue;
    GrantOutcome outcome = GrantOutcome::kDenied;
    std::string denied_at;
    PgError error;
    bool ok = grant(*pg_, owner_, next_request_id(), levels, config.global.lease_ttl_s, &outcome, &denied_at, &error);
    if (ok && outcome == GrantOutcome::kDenied) {  // near exhaustion: single-request slices
      levels = single;
      ok = grant(*pg_, owner_, next_request_id(), levels, config.global.lease_ttl_s, &outcome, &denied_at, &error);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ok) ++counters_.store_errors;
    if (outcome != GrantOutcome::kGranted) {
      counters_.grant_denials += ok ? 1 : 0;
      continue;
    }
    ++counters_.grants;
    for (const auto& l : levels) {
      leases_[{l.account, l.window}].granted += l.amount_nanousd;
      granted_now[l.account] = true;
    }
  }
}

void LeaseWorker::give_back_surplus(const Config& config, int64_t now_s, bool everything) {
  for (auto& [key, lease] : leases_) {
    const AccountConfig* a = find_account(config, key.first);
    if (a == nullptr || !a->global) continue;
    const int64_t current = window_of(*a, now_s);
    if (key.second > current) continue;  // the next window's: kept for the boundary
    const bool old = key.second < current;
    const int64_t room = old || everything ? 0 : headroom(*a, lease, demand_[a->id], config);
    WindowUsage u;
    if (!ledger_.window_usage(key.first, key.second, &u).ok()) continue;
    const int64_t surplus = lease.granted - u.used_nanousd - 2 * room;  // beyond twice the headroom
    if (surplus <= 0 || (!old && !everything && room > 0 && surplus < room)) continue;
    // Lower the local lease first, then see what is used under it: an admission that raced the
    // lowering either shows in that second look or is undone by its own re-check.
    const int64_t lowered = lease.granted - surplus;
    if (!ledger_.set_lease(key.first, key.second, lowered, u.lease_deadline_ms).ok()) continue;
    WindowUsage after;
    if (!ledger_.window_usage(key.first, key.second, &after).ok()) continue;
    const int64_t amount = lease.granted - std::max(lowered, after.used_nanousd);
    if (amount <= 0) continue;
    PgError error;
    const bool ok = give_back(*pg_, owner_, next_request_id(),
                              {LevelAmount{key.first, a->period, key.second, amount}}, &error);
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ok) {
      ++counters_.store_errors;  // the local lease stays lowered until the next publish: safe
      continue;
    }
    lease.granted -= amount;
    ++counters_.returns;
    if (room == 0 && !old && !everything) ++counters_.recalls;
  }
}

void LeaseWorker::take_next_windows(const Config& config, int64_t now_s) {
  const int64_t lead_s = std::max<int64_t>(2, 4 * int64_t{config.global.refresh_interval_ms} / 1000);
  for (const auto& a : config.accounts) {
    if (!a.global || a.period == Period::kNone) continue;
    const int64_t current = window_of(a, now_s), end_s = period_end_unix(a.period, current);
    if (end_s - now_s > lead_s || leases_[{a.id, current + 1}].granted > 0) continue;
    std::vector<LevelAmount> levels;
    for (const AccountConfig* level : global_chain(config, a)) {
      const int64_t next = window_of(*level, end_s);
      if (next == window_of(*level, now_s) || leases_[{level->id, next}].granted > 0) continue;  // its window goes on
      const Lease& lease = leases_[{level->id, window_of(*level, now_s)}];
      levels.push_back(LevelAmount{level->id, level->period, next, headroom(*level, lease, demand_[level->id], config)});
    }
    if (levels.empty()) continue;
    GrantOutcome outcome = GrantOutcome::kDenied;
    std::string denied_at;
    PgError error;
    if (grant(*pg_, owner_, next_request_id(), levels, config.global.lease_ttl_s, &outcome, &denied_at, &error) &&
        outcome == GrantOutcome::kGranted)
      for (const auto& l : levels) leases_[{l.account, l.window}].granted += l.amount_nanousd;
  }
}

void LeaseWorker::publish(const Config& config, int64_t now_s) {
  const int64_t deadline = renewed_mono_ms_ + int64_t{config.global.lease_ttl_s} * 1000 - skew_margin_ms(config);
  std::map<std::string, int64_t> leased;
  for (auto it = leases_.begin(); it != leases_.end();) {
    const AccountConfig* a = find_account(config, it->first.first);
    const int64_t current = a != nullptr ? window_of(*a, now_s) : 0;
    if (a == nullptr || !a->global || it->first.second < current - 1) {  // gone, or long over
      it = leases_.erase(it);
      continue;
    }
    // Only the current and the next window: an old one's word is the next one's (same parity).
    // Nothing before the first refresh has compared the store's record with the segment: spend the
    // segment does not know (restore_reported_spend) must not be admitted again.
    if (it->first.second >= current && restored_) (void)ledger_.set_lease(a->id, it->first.second, it->second.granted, deadline);
    if (it->first.second == current) leased[a->id] = it->second.granted;
    ++it;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  counters_.leased_nanousd = std::move(leased);
}

}  // namespace ledger::global
