// protocol.hpp — global budgets in the shared store (DESIGN 11): the SQL of the lease protocol.
//
// Tables (schema version kSchemaVersion, created or migrated by ensure_schema):
//   ledger_accounts  the global accounts: limit, period, parent, blocked (published by ledgerctl init)
//   ledger_windows   per (account, period, window): granted = what all hosts' leases hold, in total
//   ledger_leases    per (host, account, period, window): granted (grants less returns), used and
//                    spent as last reported (cumulative, with a sequence), expires_at, expired
//   ledger_requests  request ids of grants and returns already applied (a retry or replay is a no-op)
//   ledger_hosts     which instance holds each host_id (two live hosts cannot share one)
//   ledger_leaders   the leader lease per role (one reconciler at a time)
//   ledger_journal   what changed budgets, and why
//   ledger_key_days  (v2) per host incarnation, OpenRouter key, account and UTC day: what the host
//                    recorded through the key (cumulative)
//   ledger_account_days (v2) per host incarnation, account, model ("" = total) and day: its spend
//   ledger_records   (v2) when each host incarnation last captured those (see host_record.hpp)
//   ledger_topups    (v3) per account: a top-up of its limit, in every window that starts before its end
// A lease belongs to a host's incarnation ("host_id/incarnation", the incarnation kept in the ledger
// directory): a host that loses its directory comes back as a new incarnation, so its old leases are
// never renewed, expire, and stay charged in full (G3); one that keeps it reports its true use.
// Invariants, per (account, window): windows.granted == sum of leases.granted, and it only grows by
// a grant that keeps it <= the account's limit (a conditional UPDATE: a single statement decides),
// or by a report of a commit overrun (used above granted), which is recorded, never denied. A host
// admits locally against its own leases only, so the hosts together never pass the limit (G1).
// An expired lease keeps its whole grant (the unreported remainder is charged as spent, G3); its
// host's later report of the true use gives the difference back. All statements are plain SQL that
// CockroachDB and YugabyteDB run too; no advisory locks, no LISTEN/NOTIFY.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "global/pg.hpp"
#include "ledger/period.hpp"

namespace ledger::global {

inline constexpr int kSchemaVersion = 3;  // 2: per-key days for the one reconciler; 3: top-ups

// Creates the tables (first use) or checks them: a newer schema, or a table of the same name that
// is not ours, is an error naming it; nothing is changed then.
bool ensure_schema(PgConnection& pg, PgError* error);

struct GlobalAccount {
  std::string id, parent;
  int64_t limit_nanousd = 0;
  Period period = Period::kNone;
  bool blocked = false;
  int64_t topup_nanousd = 0, topup_until_unix = 0;  // read_accounts: its top-up (ledger_topups), if any
  // The limit of `window`: raised by a top-up that lasts into it.
  int64_t limit_in(int64_t window) const {
    return limit_nanousd + (topup_until_unix > period_start_unix(period, window) ? topup_nanousd : 0);
  }
};
// Publishes the config's global accounts (one transaction, journaled per change): limits, periods
// and parents. A new account starts unblocked; an existing one keeps the store's block, which only
// set_blocked changes (ledgerctl block/unblock), as init keeps a local block.
bool publish_accounts(PgConnection& pg, const std::vector<GlobalAccount>& accounts, int* changed, PgError* error);
// Raises a global account's limit by amount_nanousd (0 removes it) in every window that starts
// before until_unix (ledgerctl topup), journaled; *found is false when the store has no such account.
bool set_topup(PgConnection& pg, const std::string& account, int64_t amount_nanousd, int64_t until_unix, bool* found, PgError* error);
// Blocks or unblocks a global account for every host (each applies it at its next refresh);
// *found is false when the store has no such account (nothing changed then).
bool set_blocked(PgConnection& pg, const std::string& account, bool blocked, bool* found, PgError* error);

// One level of a chain request: account, its window, and an amount (> 0).
struct LevelAmount {
  std::string account;
  Period period = Period::kNone;
  int64_t window = 0;
  int64_t amount_nanousd = 0;
};

enum class GrantOutcome { kGranted, kAlreadyApplied, kDenied };
// Grants every level of a chain, all or none, each only while its window stays within its limit.
// *denied_at names the first level that could not be granted.
bool grant(PgConnection& pg, const std::string& host, const std::string& request_id, const std::vector<LevelAmount>& levels,
           int64_t ttl_s, GrantOutcome* outcome, std::string* denied_at, PgError* error);
// Gives unused grants back (each at most what the lease holds above its reported use).
bool give_back(PgConnection& pg, const std::string& host, const std::string& request_id, const std::vector<LevelAmount>& levels,
               PgError* error);

struct Usage {
  std::string account;
  Period period = Period::kNone;
  int64_t window = 0;
  int64_t used_nanousd = 0, spent_nanousd = 0;
};
// Reports this host's cumulative use of its leases and renews them; a report older than the last
// one (by `seq`) changes nothing. An expired lease is cut back to what it used.
bool report(PgConnection& pg, const std::string& host, int64_t seq, const std::vector<Usage>& usage, int64_t ttl_s, PgError* error);
// Marks leases whose expiry passed as expired (any host may do it; it is idempotent).
bool expire_leases(PgConnection& pg, uint64_t* expired, PgError* error);

// This host's leases with their accounts' limits and windows' totals.
struct LeaseView {
  std::string account;
  Period period = Period::kNone;
  int64_t window = 0;
  int64_t granted_nanousd = 0, used_nanousd = 0, spent_nanousd = 0;  // used, spent: as last reported
  int64_t limit_nanousd = 0, window_granted_nanousd = 0;
  bool blocked = false, expired = false;
};
bool read_leases(PgConnection& pg, const std::string& host, std::vector<LeaseView>* out, PgError* error);
// Every global account (for the limits and blocks of accounts without a lease yet).
bool read_accounts(PgConnection& pg, std::vector<GlobalAccount>* out, PgError* error);

// Claims host_id for this process's instance id; false with *holder when another live instance
// (seen within stale_s) has it.
bool claim_host(PgConnection& pg, const std::string& host, const std::string& instance, int64_t stale_s, bool* claimed,
                std::string* holder, PgError* error);

// One refresh of a host, in one transaction (one round of statements, one commit, so the store's
// load is one transaction per host per cycle): claim host_id, report the usage of its leases and
// renew them (as report()), read its leases and every account (as read_leases, read_accounts).
struct RefreshRequest {
  std::string host_id, instance, owner;  // owner: "host_id/incarnation"
  int64_t stale_s = 0, seq = 0, ttl_s = 0;
  std::vector<Usage> usage;
};
struct RefreshResult {
  bool claimed = false;
  std::string holder;  // when not claimed: who has host_id
  std::vector<LeaseView> leases;
  std::vector<GlobalAccount> accounts;
};
bool refresh(PgConnection& pg, const RefreshRequest& request, RefreshResult* out, PgError* error);

// The leader lease of `role` (one reconciler per team, G5): taken when free or lapsed, renewed while
// held; *leader says whether this host holds it now.
bool lead(PgConnection& pg, const std::string& role, const std::string& host, const std::string& instance, int64_t ttl_s,
          bool* leader, PgError* error);
// For doctor: the store's clock (Unix ms) and the hosts whose leases lapsed without a renewal.
bool store_now_ms(PgConnection& pg, int64_t* now_ms, PgError* error);
bool lapsed_hosts(PgConnection& pg, std::vector<std::string>* hosts, PgError* error);

// ledgerctl global status: per account, its current window across hosts.
struct HostShare {
  std::string host_id;
  std::string incarnation;  // a host that lost its ledger directory comes back as a new incarnation
  int64_t leased_nanousd = 0, reported_nanousd = 0, expires_unix = 0;
  bool expired = false;
};
struct AccountStatus {
  std::string id;
  Period period = Period::kNone;
  int64_t window = 0;
  int64_t limit_nanousd = 0, spent_nanousd = 0, leased_nanousd = 0;  // limit: of this window, a top-up included
  bool blocked = false;
  std::vector<HostShare> hosts;
  int64_t topup_nanousd = 0, topup_until_unix = 0;  // a top-up in force in this window
};
bool read_status(PgConnection& pg, int64_t now_unix, std::vector<AccountStatus>* out, PgError* error);

// What each host recorded, pooled for the one reconciler (G5) and for reports (host_record.hpp).
struct KeyDay {  // through one OpenRouter key
  std::string key_hash, account;
  int64_t day = 0;  // days since the Unix epoch (UTC)
  int64_t spent_nanousd = 0;
};
struct AccountDay {
  std::string account, model;  // model "" = the account's total that day
  int64_t day = 0;
  int64_t spent_nanousd = 0, requests = 0;
};
struct HostRecord {
  std::vector<KeyDay> keys;
  std::vector<AccountDay> days;
};
using PublishedRows = std::map<std::string, std::pair<int64_t, int64_t>>;  // row -> (spent, requests) last sent
// In one transaction: marks `owner` ("host_id/incarnation") as captured at the store's now(), then
// calls capture (which flushes and reads this host's record, so everything settled before that
// instant is in it) and stores each row that differs from *cache (all when cache is null) as the
// larger of what the store has and the new value; on success *cache holds what was captured.
bool publish_host_record(PgConnection& pg, const std::string& owner, const std::function<bool(HostRecord*)>& capture,
                         PublishedRows* cache, PgError* error);
// The sum over every host incarnation, per (key, account, day), for days >= first_day.
bool read_key_days(PgConnection& pg, int64_t first_day, std::vector<KeyDay>* out, PgError* error);
struct OwnedAccountDay {
  std::string owner;
  AccountDay day;
};
// Every host incarnation's rows for days in [first_day, last_day].
bool read_account_days(PgConnection& pg, int64_t first_day, int64_t last_day, std::vector<OwnedAccountDay>* out, PgError* error);
// Owners seen within live_s whose last capture is not later than since_ms (the store's clock, Unix
// ms): their record may lack spend that OpenRouter already shows, so the reconciler waits for them.
bool stale_owners(PgConnection& pg, int64_t since_ms, int64_t live_s, std::vector<std::string>* owners, PgError* error);

}  // namespace ledger::global
