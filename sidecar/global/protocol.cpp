// protocol.cpp — see protocol.hpp.
#include "global/protocol.hpp"

#include <algorithm>
#include <map>

namespace ledger::global {

namespace {

const char* const kTables[] = {
    "CREATE TABLE IF NOT EXISTS ledger_schema (id INT PRIMARY KEY CHECK (id = 1), version INT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_accounts (id TEXT PRIMARY KEY, parent TEXT NOT NULL, limit_nanousd BIGINT NOT NULL, "
    "period SMALLINT NOT NULL, blocked BOOLEAN NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS ledger_windows (account TEXT NOT NULL, period SMALLINT NOT NULL, window_index BIGINT NOT NULL, "
    "granted_nanousd BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (account, period, window_index))",
    "CREATE TABLE IF NOT EXISTS ledger_leases (host_id TEXT NOT NULL, account TEXT NOT NULL, period SMALLINT NOT NULL, "
    "window_index BIGINT NOT NULL, granted_nanousd BIGINT NOT NULL DEFAULT 0, used_nanousd BIGINT NOT NULL DEFAULT 0, "
    "spent_nanousd BIGINT NOT NULL DEFAULT 0, report_seq BIGINT NOT NULL DEFAULT 0, expires_at TIMESTAMPTZ NOT NULL, "
    "expired BOOLEAN NOT NULL DEFAULT false, PRIMARY KEY (host_id, account, period, window_index))",
    "CREATE TABLE IF NOT EXISTS ledger_requests (request_id TEXT PRIMARY KEY, host_id TEXT NOT NULL, "
    "at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS ledger_hosts (host_id TEXT PRIMARY KEY, instance TEXT NOT NULL, seen_at TIMESTAMPTZ NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_leaders (role TEXT PRIMARY KEY, host_id TEXT NOT NULL, instance TEXT NOT NULL, "
    "expires_at TIMESTAMPTZ NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_journal (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), at TIMESTAMPTZ NOT NULL DEFAULT now(), "
    "kind TEXT NOT NULL, account TEXT NOT NULL, detail TEXT NOT NULL)",
    // Version 2: what each host incarnation recorded (cumulative), and when each last captured it:
    // through each OpenRouter key per account and UTC day (the one reconciler, G5), and per account,
    // model ("" = the account's total) and day (reports with global totals).
    "CREATE TABLE IF NOT EXISTS ledger_key_days (owner TEXT NOT NULL, key_hash TEXT NOT NULL, account TEXT NOT NULL, "
    "day BIGINT NOT NULL, spent_nanousd BIGINT NOT NULL, PRIMARY KEY (owner, key_hash, account, day))",
    "CREATE TABLE IF NOT EXISTS ledger_account_days (owner TEXT NOT NULL, account TEXT NOT NULL, model TEXT NOT NULL, "
    "day BIGINT NOT NULL, spent_nanousd BIGINT NOT NULL, requests BIGINT NOT NULL, PRIMARY KEY (owner, account, model, day))",
    "CREATE TABLE IF NOT EXISTS ledger_records (owner TEXT PRIMARY KEY, captured_at TIMESTAMPTZ NOT NULL)",
    // Version 3: top-ups (DESIGN 13): an account's limit is raised by amount_nanousd in every window
    // that starts before until_unix (ledgerctl topup; one per account, the last one wins).
    "CREATE TABLE IF NOT EXISTS ledger_topups (account TEXT PRIMARY KEY, amount_nanousd BIGINT NOT NULL, "
    "until_unix BIGINT NOT NULL, set_at TIMESTAMPTZ NOT NULL DEFAULT now())",
};

// Columns each table must have: a table of the same name without them is not ours.
const std::map<std::string, std::vector<std::string>>& expected_columns() {
  static const std::map<std::string, std::vector<std::string>> columns = {
      {"ledger_schema", {"id", "version"}},
      {"ledger_accounts", {"id", "parent", "limit_nanousd", "period", "blocked"}},
      {"ledger_windows", {"account", "period", "window_index", "granted_nanousd"}},
      {"ledger_leases", {"host_id", "account", "period", "window_index", "granted_nanousd", "used_nanousd", "spent_nanousd",
                         "report_seq", "expires_at", "expired"}},
      {"ledger_requests", {"request_id", "host_id"}},
      {"ledger_hosts", {"host_id", "instance", "seen_at"}},
      {"ledger_leaders", {"role", "host_id", "instance", "expires_at"}},
      {"ledger_journal", {"id", "at", "kind", "account", "detail"}},
      {"ledger_key_days", {"owner", "key_hash", "account", "day", "spent_nanousd"}},
      {"ledger_account_days", {"owner", "account", "model", "day", "spent_nanousd", "requests"}},
      {"ledger_records", {"owner", "captured_at"}},
      {"ledger_topups", {"account", "amount_nanousd", "until_unix"}},
  };
  return columns;
}

std::string i64(int64_t v) { return std::to_string(v); }
std::string period_text(Period p) { return std::to_string(static_cast<int>(p)); }
std::string seconds(int64_t s) { return std::to_string(s) + " seconds"; }
int64_t as_i64(const std::optional<std::string>& v) { return v ? std::stoll(*v) : 0; }
bool as_bool(const std::optional<std::string>& v) { return v && (*v == "t" || *v == "true"); }

bool check_foreign_tables(PgConnection& pg, PgError* error) {
  PgResult r;
  if (!pg.exec("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
               "AND table_name LIKE 'ledger\\_%'",
               {}, &r, error))
    return false;
  std::map<std::string, std::vector<std::string>> found;
  for (const auto& row : r.rows) found[row[0].value_or("")].push_back(row[1].value_or(""));
  for (const auto& [table, needed] : expected_columns()) {
    const auto it = found.find(table);
    if (it == found.end()) continue;
    for (const auto& column : needed) {
      bool has = false;
      for (const auto& c : it->second) has = has || c == column;
      if (has) continue;
      *error = PgError{"", "the store already has a table " + table + " that is not this ledger's (no column " + column +
                               "): point global.store at a database (or schema) of its own", false};
      return false;
    }
  }
  return true;
}

bool journal(PgConnection& pg, const std::string& kind, const std::string& account, const std::string& detail, PgError* error) {
  PgResult r;
  return pg.exec("INSERT INTO ledger_journal (kind, account, detail) VALUES ($1, $2, $3)", {kind, account, detail}, &r, error);
}

}  // namespace

bool ensure_schema(PgConnection& pg, PgError* error) {
  return pg.transaction(
      [](PgConnection& c, PgError* e) {
        if (!check_foreign_tables(c, e)) return false;
        PgResult r;
        for (const char* sql : kTables)
          if (!c.exec(sql, {}, &r, e)) return false;
        if (!c.exec("INSERT INTO ledger_schema (id, version) VALUES (1, $1) ON CONFLICT (id) DO NOTHING", {i64(kSchemaVersion)}, &r, e) ||
            !c.exec("SELECT version FROM ledger_schema WHERE id = 1", {}, &r, e))
          return false;
        const int64_t version = r.rows.empty() ? 0 : as_i64(r.rows[0][0]);
        if (version > kSchemaVersion) {
          *e = PgError{"", "the store's schema is version " + i64(version) + ", newer than this ledger's (" + i64(kSchemaVersion) +
                               "): upgrade ledgerctl and ledger-sidecar on this host first; nothing was changed", false};
          return false;
        }
        if (version == kSchemaVersion) return true;
        // An older schema: every migration so far only adds tables, which the CREATEs above made.
        return c.exec("UPDATE ledger_schema SET version = $1 WHERE id = 1", {i64(kSchemaVersion)}, &r, e) &&
               journal(c, "schema", "", "migrated from version " + i64(version) + " to " + i64(kSchemaVersion), e);
      },
      error);
}

bool set_topup(PgConnection& pg, const std::string& account, int64_t amount_nanousd, int64_t until_unix, bool* found, PgError* error) {
  return pg.transaction(
      [&](PgConnection& c, PgError* e) {
        PgResult r;
        if (!c.exec("SELECT 1 FROM ledger_accounts WHERE id = $1", {account}, &r, e)) return false;
        *found = !r.rows.empty();
        if (!*found) return true;
        if (!c.exec("INSERT INTO ledger_topups (account, amount_nanousd, until_unix) VALUES ($1, $2, $3) ON CONFLICT (account) "
                    "DO UPDATE SET amount_nanousd = EXCLUDED.amount_nanousd, until_unix = EXCLUDED.until_unix, set_at = now()",
                    {account, i64(amount_nanousd), i64(until_unix)}, &r, e))
          return false;
        return journal(c, "topup", account, "amount_nanousd=" + i64(amount_nanousd) + " until_unix=" + i64(until_unix), e);
      },
      error);
}

bool publish_accounts(PgConnection& pg, const std::vector<GlobalAccount>& accounts, int* changed, PgError* error) {
  *changed = 0;
  return pg.transaction(
      [&](PgConnection& c, PgError* e) {
        *changed = 0;
        for (const auto& a : accounts) {
          PgResult r;
          const std::vector<std::string> p{a.id, a.parent, i64(a.limit_nanousd), period_text(a.period), a.blocked ? "true" : "false"};
          if (!c.exec("INSERT INTO ledger_accounts (id, parent, limit_nanousd, period, blocked) VALUES ($1, $2, $3, $4, $5) "
                      "ON CONFLICT (id) DO UPDATE SET parent = EXCLUDED.parent, limit_nanousd = EXCLUDED.limit_nanousd, "
                      "period = EXCLUDED.period, updated_at = now() "
                      "WHERE ledger_accounts.parent <> EXCLUDED.parent OR ledger_accounts.limit_nanousd <> EXCLUDED.limit_nanousd "
                      "OR ledger_accounts.period <> EXCLUDED.period",
                      p, &r, e))
            return false;
          if (r.affected == 0) continue;
          ++*changed;
          if (!journal(c, "account", a.id, "limit_nanousd=" + i64(a.limit_nanousd) + " period=" + period_text(a.period) +
                                               " parent=" + a.parent, e))
            return false;
        }
        return true;
      },
      error);
}

bool set_blocked(PgConnection& pg, const std::string& account, bool blocked, bool* found, PgError* error) {
  *found = false;
  return pg.transaction(
      [&](PgConnection& c, PgError* e) {
        PgResult r;
        if (!c.exec("UPDATE ledger_accounts SET blocked = $2, updated_at = now() WHERE id = $1", {account, blocked ? "true" : "false"}, &r, e))
          return false;
        *found = r.affected == 1;
        return !*found || journal(c, blocked ? "block" : "unblock", account, "", e);
      },
      error);
}

namespace {

// One level of a grant inside its transaction: the window grows only while it stays within the
// account's limit (one conditional UPDATE decides), then the host's lease grows by the same.
bool grant_level(PgConnection& c, const std::string& host, const LevelAmount& l, int64_t ttl_s, bool* granted, PgError* e) {
  PgResult r;
  const std::vector<std::string> key{l.account, period_text(l.period), i64(l.window)};
  if (!c.exec("INSERT INTO ledger_windows (account, period, window_index) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", key, &r, e))
    return false;
  // The limit, raised by a top-up that lasts into this window (its start is before the top-up's end).
  if (!c.exec("UPDATE ledger_windows SET granted_nanousd = ledger_windows.granted_nanousd + $4 FROM ledger_accounts a "
              "WHERE ledger_windows.account = $1 AND ledger_windows.period = $2 AND ledger_windows.window_index = $3 "
              "AND a.id = $1 AND a.period = $2 AND NOT a.blocked AND ledger_windows.granted_nanousd + $4 <= a.limit_nanousd + "
              "COALESCE((SELECT t.amount_nanousd FROM ledger_topups t WHERE t.account = $1 AND t.until_unix > $5), 0)",
              {l.account, period_text(l.period), i64(l.window), i64(l.amount_nanousd), i64(period_start_unix(l.period, l.window))},
              &r, e))
    return false;
  *granted = r.affected == 1;
  if (!*granted) return true;
  return c.exec("INSERT INTO ledger_leases (host_id, account, period, window_index, granted_nanousd, expires_at) "
                "VALUES ($1, $2, $3, $4, $5, now() + $6::interval) ON CONFLICT (host_id, account, period, window_index) DO UPDATE "
                "SET granted_nanousd = ledger_leases.granted_nanousd + EXCLUDED.granted_nanousd, expires_at = EXCLUDED.expires_at",
                {host, l.account, period_text(l.period), i64(l.window), i64(l.amount_nanousd), seconds(ttl_s)}, &r, e);
}

// True when request_id is new (and now recorded); false when it was applied before.
bool first_time(PgConnection& c, const std::string& host, const std::string& request_id, bool* fresh, PgError* e) {
  PgResult r;
  if (!c.exec("INSERT INTO ledger_requests (request_id, host_id) VALUES ($1, $2) ON CONFLICT DO NOTHING", {request_id, host}, &r, e))
    return false;
  *fresh = r.affected == 1;
  return true;
}

}  // namespace

bool grant(PgConnection& pg, const std::string& host, const std::string& request_id, const std::vector<LevelAmount>& levels,
           int64_t ttl_s, GrantOutcome* outcome, std::string* denied_at, PgError* error) {
  *outcome = GrantOutcome::kDenied;
  return pg.transaction(
      [&](PgConnection& c, PgError* e) {
        bool fresh = false;
        if (!first_time(c, host, request_id, &fresh, e)) return false;
        if (!fresh) {
          *outcome = GrantOutcome::kAlreadyApplied;
          return true;
        }
        for (const LevelAmount& l : levels) {
          bool granted = false;
          if (!grant_level(c, host, l, ttl_s, &granted, e)) return false;
          if (!granted) {
            *outcome = GrantOutcome::kDenied;
            *denied_at = l.account;
            return false;  // all levels or none: roll back
          }
        }
        *outcome = GrantOutcome::kGranted;
        return true;
      },
      error) ||
         (*outcome == GrantOutcome::kDenied && error->message.empty());
}

bool give_back(PgConnection& pg, const std::string& host, const std::string& request_id, const std::vector<LevelAmount>& levels,
               PgError* error) {
  return pg.transaction(
      [&](PgConnection& c, PgError* e) {
        bool fresh = false;
        if (!first_time(c, host, request_id, &fresh, e)) return false;
        if (!fresh) return true;
        for (const LevelAmount& l : levels) {
          PgResult r;
          const std::vector<std::string> key{host, l.account, period_text(l.period), i64(l.window)};
          // Never below what it used or is on record as spent (spend in the store never goes down).
          if (!c.exec("SELECT granted_nanousd, GREATEST(used_nanousd, spent_nanousd) FROM ledger_leases WHERE host_id = $1 AND account = $2 AND period = $3 "
                      "AND window_index = $4 FOR UPDATE",
                      key, &r, e))
            return false;
          if (r.rows.empty()) continue;
          const int64_t amount = std::min(l.amount_nanousd, as_i64(r.rows[0][0]) - as_i64(r.rows[0][1]));
          if (amount <= 0) continue;
          if (!c.exec("UPDATE ledger_leases SET granted_nanousd = granted_nanousd - $5 WHERE host_id = $1 AND account = $2 "
                      "AND period = $3 AND window_index = $4",
                      {host, l.account, period_text(l.period), i64(l.window), i64(amount)}, &r, e) ||
              !c.exec("UPDATE ledger_windows SET granted_nanousd = granted_nanousd - $4 WHERE account = $1 AND period = $2 "
                      "AND window_index = $3",
                      {l.account, period_text(l.period), i64(l.window), i64(amount)}, &r, e))
            return false;
        }
        return true;
      },
      error);
}

namespace {

// One lease's report: used and spent replace the last ones (only a newer report does); the lease is
// renewed; its grant never stays below what it used (a commit overrun is recorded, not denied), and
// an expired one is cut back to it (the rest returns to the budget).
bool report_one(PgConnection& c, const std::string& host, int64_t seq, const Usage& u, int64_t ttl_s, PgError* e) {
  PgResult r;
  const std::vector<std::string> key{host, u.account, period_text(u.period), i64(u.window)};
  if (!c.exec("SELECT granted_nanousd, expired, report_seq, spent_nanousd FROM ledger_leases WHERE host_id = $1 AND account = $2 "
              "AND period = $3 AND window_index = $4 FOR UPDATE",
              key, &r, e))
    return false;
  if (r.rows.empty() || as_i64(r.rows[0][2]) >= seq) return true;  // no lease here, or an old report: nothing
  const int64_t granted = as_i64(r.rows[0][0]);
  const bool expired = as_bool(r.rows[0][1]);
  const int64_t used = std::max({u.used_nanousd, u.spent_nanousd, as_i64(r.rows[0][3])});  // spend on record stays
  const int64_t now_granted = expired ? used : std::max(granted, used);
  // Spend never goes down in the store: a host whose segment was rebuilt from a store that lost the
  // last flush interval must not give back spend it already reported.
  if (!c.exec("UPDATE ledger_leases SET used_nanousd = $5, spent_nanousd = GREATEST(spent_nanousd, $6), report_seq = $7, granted_nanousd = $8, "
              "expired = false, expires_at = now() + $9::interval WHERE host_id = $1 AND account = $2 AND period = $3 AND window_index = $4",
              {host, u.account, period_text(u.period), i64(u.window), i64(u.used_nanousd), i64(u.spent_nanousd), i64(seq),
               i64(now_granted), seconds(ttl_s)},
              &r, e))
    return false;
  if (now_granted == granted) return true;
  return c.exec("UPDATE ledger_windows SET granted_nanousd = granted_nanousd + $4 WHERE account = $1 AND period = $2 AND window_index = $3",
                {u.account, period_text(u.period), i64(u.window), i64(now_granted - granted)}, &r, e);
}

}  // namespace

bool report(PgConnection& pg, const std::string& host, int64_t seq, const std::vector<Usage>& usage, int64_t ttl_s, PgError* error) {
  return pg.transaction(
      [&](PgConnection& c, PgError* e) {
        for (const Usage& u : usage)
          if (!report_one(c, host, seq, u, ttl_s, e)) return false;
        return true;
      },
      error);
}

bool expire_leases(PgConnection& pg, uint64_t* expired, PgError* error) {
  PgResult r;
  if (!pg.exec("UPDATE ledger_leases SET expired = true WHERE NOT expired AND expires_at < now()", {}, &r, error)) return false;
  *expired = r.affected;
  return true;
}

bool read_leases(PgConnection& pg, const std::string& host, std::vector<LeaseView>* out, PgError* error) {
  PgResult r;
  if (!pg.exec("SELECT l.account, l.period, l.window_index, l.granted_nanousd, l.used_nanousd, a.limit_nanousd, a.blocked, "
               "w.granted_nanousd, l.expired, l.spent_nanousd, COALESCE(t.amount_nanousd, 0), COALESCE(t.until_unix, 0) "
               "FROM ledger_leases l JOIN ledger_accounts a ON a.id = l.account "
               "JOIN ledger_windows w ON w.account = l.account AND w.period = l.period AND w.window_index = l.window_index "
               "LEFT JOIN ledger_topups t ON t.account = l.account WHERE l.host_id = $1",
               {host}, &r, error))
    return false;
  out->clear();
  for (const auto& row : r.rows) {
    const auto period = static_cast<Period>(as_i64(row[1]) & 3);
    // The limit of that window: raised by a top-up that lasts into it (as grant_level decides).
    const int64_t topup = as_i64(row[11]) > period_start_unix(period, as_i64(row[2])) ? as_i64(row[10]) : 0;
    out->push_back(LeaseView{row[0].value_or(""), period, as_i64(row[2]), as_i64(row[3]), as_i64(row[4]), as_i64(row[9]),
                             as_i64(row[5]) + topup, as_i64(row[7]), as_bool(row[6]), as_bool(row[8])});
  }
  return true;
}

bool read_accounts(PgConnection& pg, std::vector<GlobalAccount>* out, PgError* error) {
  PgResult r;
  if (!pg.exec("SELECT a.id, a.parent, a.limit_nanousd, a.period, a.blocked, COALESCE(t.amount_nanousd, 0), COALESCE(t.until_unix, 0) "
               "FROM ledger_accounts a LEFT JOIN ledger_topups t ON t.account = a.id ORDER BY a.id",
               {}, &r, error))
    return false;
  out->clear();
  for (const auto& row : r.rows)
    out->push_back(GlobalAccount{row[0].value_or(""), row[1].value_or(""), as_i64(row[2]), static_cast<Period>(as_i64(row[3]) & 3),
                                 as_bool(row[4]), as_i64(row[5]), as_i64(row[6])});
  return true;
}

namespace {
// The statements of claim_host, for use inside a transaction.
bool claim_in(PgConnection& c, const std::string& host, const std::string& instance, int64_t stale_s, bool* claimed,
              std::string* holder, PgError* e) {
  *claimed = false;
  PgResult r;
  if (!c.exec("INSERT INTO ledger_hosts (host_id, instance, seen_at) VALUES ($1, $2, now()) ON CONFLICT (host_id) DO UPDATE "
              "SET instance = EXCLUDED.instance, seen_at = now() WHERE ledger_hosts.instance = EXCLUDED.instance "
              "OR ledger_hosts.seen_at < now() - $3::interval",
              {host, instance, seconds(stale_s)}, &r, e))
    return false;
  *claimed = r.affected == 1;
  if (*claimed) return true;
  if (!c.exec("SELECT instance, EXTRACT(EPOCH FROM now() - seen_at)::BIGINT FROM ledger_hosts WHERE host_id = $1", {host}, &r, e))
    return false;
  if (!r.rows.empty()) *holder = "instance " + r.rows[0][0].value_or("?") + ", seen " + r.rows[0][1].value_or("?") + " s ago";
  return true;
}
}  // namespace

bool claim_host(PgConnection& pg, const std::string& host, const std::string& instance, int64_t stale_s, bool* claimed,
                std::string* holder, PgError* error) {
  return pg.transaction([&](PgConnection& c, PgError* e) { return claim_in(c, host, instance, stale_s, claimed, holder, e); }, error);
}

bool refresh(PgConnection& pg, const RefreshRequest& q, RefreshResult* out, PgError* error) {
  return pg.transaction(
      [&](PgConnection& c, PgError* e) {
        *out = RefreshResult{};
        if (!claim_in(c, q.host_id, q.instance, q.stale_s, &out->claimed, &out->holder, e)) return false;
        if (!out->claimed) return true;  // another live host has the host_id: report nothing for it
        for (const Usage& u : q.usage)
          if (!report_one(c, q.owner, q.seq, u, q.ttl_s, e)) return false;
        return read_leases(c, q.owner, &out->leases, e) && read_accounts(c, &out->accounts, e);
      },
      error);
}

bool lead(PgConnection& pg, const std::string& role, const std::string& host, const std::string& instance, int64_t ttl_s,
          bool* leader, PgError* error) {
  PgResult r;
  if (!pg.exec("INSERT INTO ledger_leaders (role, host_id, instance, expires_at) VALUES ($1, $2, $3, now() + $4::interval) "
               "ON CONFLICT (role) DO UPDATE SET host_id = EXCLUDED.host_id, instance = EXCLUDED.instance, expires_at = EXCLUDED.expires_at "
               "WHERE ledger_leaders.expires_at < now() OR (ledger_leaders.host_id = EXCLUDED.host_id AND ledger_leaders.instance = EXCLUDED.instance)",
               {role, host, instance, seconds(ttl_s)}, &r, error))
    return false;
  *leader = r.affected == 1;
  return true;
}

bool store_now_ms(PgConnection& pg, int64_t* now_ms, PgError* error) {
  PgResult r;
  if (!pg.exec("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT", {}, &r, error) || r.rows.empty()) return false;
  *now_ms = as_i64(r.rows[0][0]);
  return true;
}

bool lapsed_hosts(PgConnection& pg, std::vector<std::string>* hosts, PgError* error) {
  PgResult r;
  if (!pg.exec("SELECT DISTINCT host_id FROM ledger_leases WHERE expires_at < now() ORDER BY host_id", {}, &r, error)) return false;
  hosts->clear();
  for (const auto& row : r.rows) hosts->push_back(row[0].value_or(""));
  return true;
}

bool read_status(PgConnection& pg, int64_t now_unix, std::vector<AccountStatus>* out, PgError* error) {
  std::vector<GlobalAccount> accounts;
  if (!read_accounts(pg, &accounts, error)) return false;
  out->clear();
  for (const auto& a : accounts) {
    AccountStatus s{a.id, a.period, period_index(a.period, now_unix), a.limit_nanousd, 0, 0, a.blocked, {}};
    s.limit_nanousd = a.limit_in(s.window);  // a top-up that lasts into this window raises it
    if (s.limit_nanousd != a.limit_nanousd) {
      s.topup_nanousd = a.topup_nanousd;
      s.topup_until_unix = a.topup_until_unix;
    }
    PgResult r;
    if (!pg.exec("SELECT host_id, granted_nanousd, used_nanousd, spent_nanousd, EXTRACT(EPOCH FROM expires_at)::BIGINT, expired "
                 "FROM ledger_leases WHERE account = $1 AND period = $2 AND window_index = $3 ORDER BY host_id",
                 {a.id, period_text(a.period), i64(s.window)}, &r, error))
      return false;
    for (const auto& row : r.rows) {
      // Lease rows belong to "host_id/incarnation" (a host that lost its ledger directory is a new one).
      const std::string owner = row[0].value_or("");
      const size_t slash = owner.find('/');
      HostShare h{owner.substr(0, slash), slash == std::string::npos ? "" : owner.substr(slash + 1), as_i64(row[1]), as_i64(row[2]),
                  as_i64(row[4]), as_bool(row[5])};
      s.leased_nanousd += h.leased_nanousd;
      // An expired lease counts whole: its unreported remainder is charged as spent.
      s.spent_nanousd += h.expired ? h.leased_nanousd : as_i64(row[3]);
      s.hosts.push_back(std::move(h));
    }
    out->push_back(std::move(s));
  }
  return true;
}

namespace {

// Upserts the rows of `record` that differ from `cache` (all when cache is null); *sent gets them.
bool upsert_record(PgConnection& c, const std::string& owner, const HostRecord& record, const PublishedRows* cache,
                   PublishedRows* sent, PgError* e) {
  const auto changed = [&](const std::string& key, int64_t spent, int64_t requests) {
    (*sent)[key] = {spent, requests};
    if (cache == nullptr) return true;
    const auto it = cache->find(key);
    return it == cache->end() || it->second != std::make_pair(spent, requests);
  };
  PgResult r;
  // Cumulative: a replay or an older capture never lowers a row.
  for (const KeyDay& d : record.keys)
    if (changed("k|" + d.key_hash + "|" + d.account + "|" + i64(d.day), d.spent_nanousd, 0) &&
        !c.exec("INSERT INTO ledger_key_days (owner, key_hash, account, day, spent_nanousd) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (owner, key_hash, account, day) DO UPDATE SET spent_nanousd = EXCLUDED.spent_nanousd "
                "WHERE ledger_key_days.spent_nanousd < EXCLUDED.spent_nanousd",
                {owner, d.key_hash, d.account, i64(d.day), i64(d.spent_nanousd)}, &r, e))
      return false;
  for (const AccountDay& d : record.days)
    if (changed("a|" + d.account + "|" + d.model + "|" + i64(d.day), d.spent_nanousd, d.requests) &&
        !c.exec("INSERT INTO ledger_account_days (owner, account, model, day, spent_nanousd, requests) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (owner, account, model, day) DO UPDATE SET spent_nanousd = EXCLUDED.spent_nanousd, requests = EXCLUDED.requests "
                "WHERE ledger_account_days.spent_nanousd < EXCLUDED.spent_nanousd OR ledger_account_days.requests < EXCLUDED.requests",
                {owner, d.account, d.model, i64(d.day), i64(d.spent_nanousd), i64(d.requests)}, &r, e))
      return false;
  return true;
}

}  // namespace

bool publish_host_record(PgConnection& pg, const std::string& owner, const std::function<bool(HostRecord*)>& capture,
                         PublishedRows* cache, PgError* error) {
  PublishedRows sent;
  const bool ok = pg.transaction(
      [&](PgConnection& c, PgError* e) {
        // now() is this transaction's start: the capture below comes after it, so it holds everything
        // this host settled before captured_at (the reconciler relies on that).
        PgResult r;
        if (!c.exec("INSERT INTO ledger_records (owner, captured_at) VALUES ($1, now()) "
                    "ON CONFLICT (owner) DO UPDATE SET captured_at = GREATEST(ledger_records.captured_at, EXCLUDED.captured_at)",
                    {owner}, &r, e))
          return false;
        HostRecord record;
        if (!capture(&record)) {
          *e = PgError{"", "cannot read this host's record (its LMDB store)", false};
          return false;
        }
        sent.clear();
        return upsert_record(c, owner, record, cache, &sent, e);
      },
      error);
  if (ok && cache != nullptr) *cache = std::move(sent);
  return ok;
}

bool read_key_days(PgConnection& pg, int64_t first_day, std::vector<KeyDay>* out, PgError* error) {
  PgResult r;
  if (!pg.exec("SELECT key_hash, account, day, SUM(spent_nanousd)::BIGINT FROM ledger_key_days WHERE day >= $1 "
               "GROUP BY key_hash, account, day ORDER BY key_hash, account, day",
               {i64(first_day)}, &r, error))
    return false;
  out->clear();
  for (const auto& row : r.rows) out->push_back(KeyDay{row[0].value_or(""), row[1].value_or(""), as_i64(row[2]), as_i64(row[3])});
  return true;
}

bool read_account_days(PgConnection& pg, int64_t first_day, int64_t last_day, std::vector<OwnedAccountDay>* out, PgError* error) {
  PgResult r;
  if (!pg.exec("SELECT owner, account, model, day, spent_nanousd, requests FROM ledger_account_days WHERE day >= $1 AND day <= $2 "
               "ORDER BY owner, account, model, day",
               {i64(first_day), i64(last_day)}, &r, error))
    return false;
  out->clear();
  for (const auto& row : r.rows)
    out->push_back(OwnedAccountDay{row[0].value_or(""), AccountDay{row[1].value_or(""), row[2].value_or(""), as_i64(row[3]),
                                                                    as_i64(row[4]), as_i64(row[5])}});
  return true;
}

bool stale_owners(PgConnection& pg, int64_t since_ms, int64_t live_s, std::vector<std::string>* owners, PgError* error) {
  PgResult r;
  if (!pg.exec("SELECT owner FROM ledger_records WHERE captured_at <= to_timestamp($1::BIGINT / 1000.0) "
               "AND captured_at > now() - $2::interval ORDER BY owner",
               {i64(since_ms), seconds(live_s)}, &r, error))
    return false;
  owners->clear();
  for (const auto& row : r.rows) owners->push_back(row[0].value_or(""));
  return true;
}

}  // namespace ledger::global
