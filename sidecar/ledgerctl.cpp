// ledgerctl — the admin CLI (DESIGN.md 8.2). Exit codes: 0 ok, 1 usage or config error,
// 2 runtime error, 3 denied.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <time.h>

#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/admin.hpp"
#include "core/sidecar_lock.hpp"
#include "global/host_record.hpp"
#include "global/lease_worker.hpp"
#include "global/protocol.hpp"
#include "ledger/store.hpp"
#include "openrouter/keys.hpp"
#include "proxy_keys.hpp"
#include "openrouter/reconcile.hpp"
#include "reports/reports.hpp"

using namespace ledger;
using namespace ledger::admin;
namespace json = boost::json;

namespace {

constexpr const char* kUsage = R"(usage: ledgerctl --config FILE COMMAND [ARGS]

Commands:
  init                        create or update the ledger from the config (accounts, budgets,
                              prices); accounts no longer in the config are blocked, never forgotten
  status [--json]             one row per account: limit, spent, held, available, requests, period
  balance ACCOUNT [--json]    one account
  debit ACCOUNT USD           check-and-debit; exit 0 granted, 3 denied (reason on stderr)
  block ACCOUNT               deny the account (and its descendants) from now on; with an
                              "openrouter" section its key is disabled at once too; a global
                              account is blocked in the store, for every host
  unblock ACCOUNT             allow it again (and enable its key again)
  flush                       write everything settled to the store now (durable on return)
  doctor                      check config, ledger, store and sidecar; say what to fix
  destroy-segment             remove the shared segment (the store keeps everything flushed;
                              refused while other live processes are attached;
                              dead ones are reclaimed first)
  reconcile [--dry-run]       compare each key's window spend at OpenRouter with the ledger; adjust
                              the ledger up when OpenRouter saw more (never twice); report the rest;
                              disable (or delete) the keys of blocked and removed accounts
  keys list [--json]          every key: name, hash (12 hex digits; --json: all 64), usage, limit,
                              reset, disabled, owner account (--json: nano-USD and USD)
  keys create NAME --limit USD [--reset daily|weekly|monthly]   prints the new key once
  keys delete HASH            HASH: the full hash or a unique prefix of at least 6 hex digits
  keys provision              a key for each configured account without one (printed once)
  keys rotate ACCOUNT         new key, rebind, delete the old one
  proxy-key create ACCOUNT    a key for ledger-proxy (lk-...), printed once; the ledger dir keeps
                              only its hash (proxy-keys.json)
  proxy-key list [--json]     id (12 hex digits of the hash), account, created, revoked
  proxy-key revoke ID         ID: the id or a unique prefix; the proxy refuses it at once
  global status [--json]      global mode: per global account its limit, spend across hosts, what is
                              leased, and each host's lease and last report
  topup ACCOUNT USD [--until YYYY-MM-DD]
                              raise the account's limit by USD for its current window (or through
                              that UTC day); 0 removes it; journaled (a global account: in the store)
  config-reference            every config key with its default, range and meaning (Markdown; no --config)
  report [--from DATE] [--to DATE] [--format table|json|csv|html] [--out FILE]
                              the team report (default: the last 7 days, a table on stdout)

Options:
  --config FILE               the JSON config (or the LEDGER_CONFIG environment variable)
  --help                      this text; COMMAND --help for one command

Read-only commands (status, balance, report, doctor, reconcile --dry-run, keys list,
destroy-segment) never create a ledger: without one they exit 2 ("run ledgerctl init").

Exit codes: 0 success, 1 usage or config error, 2 runtime error, 3 denied.
)";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "ledgerctl: %s\n(ledgerctl --help for usage)\n", message.c_str());
  return kExitUsage;
}

int runtime_error(const std::string& message) {
  std::fprintf(stderr, "ledgerctl: %s\n", message.c_str());
  return kExitRuntime;
}

json::object balance_json(const std::string& account, const std::string& parent, const Balance& b) {
  json::object o;
  o["account"] = account;
  o["parent"] = parent;
  o["period"] = std::string(period_name(b.period));
  o["period_start_unix"] = b.period_start_unix;
  o["limit_nanousd"] = b.limit_nanousd;
  o["spent_nanousd"] = b.spent_nanousd;
  o["held_nanousd"] = b.held_nanousd;
  o["available_nanousd"] = b.available_nanousd;
  o["limit_usd"] = format_usd(b.limit_nanousd);
  o["spent_usd"] = format_usd(b.spent_nanousd);
  o["held_usd"] = format_usd(b.held_nanousd);
  o["available_usd"] = format_usd(b.available_nanousd);
  o["requests"] = b.requests;
  o["blocked"] = b.blocked;
  o["soft"] = b.soft;  // its own limit never denies (DESIGN 13)
  o["topup_nanousd"] = b.topup_nanousd;  // part of limit_nanousd, until topup_until_unix
  o["topup_until_unix"] = b.topup_until_unix;
  return o;
}

// The table's period column: a budget without a period is a lifetime one, and says so.
std::string period_column(Period p) { return p == Period::kNone ? "none (lifetime)" : std::string(period_name(p)); }

// BLOCKED, SOFT (and how far over), +TOPUP until when.
std::string flags_column(const Balance& b) {
  std::string out = b.blocked ? "BLOCKED" : "";
  const auto add = [&](const std::string& flag) { out += (out.empty() ? "" : " ") + flag; };
  if (b.soft) add(b.available_nanousd < 0 ? "SOFT, over by " + format_usd(-b.available_nanousd) : "SOFT");
  if (b.topup_nanousd != 0) add("+" + format_usd(b.topup_nanousd) + " top-up through " + format_date((b.topup_until_unix - 1) / 86400));
  return out;
}

void print_table(const std::vector<AccountBalance>& rows) {
  std::printf("%-24s %-16s %-15s %14s %14s %12s %14s %9s %s\n", "ACCOUNT", "PARENT", "PERIOD", "LIMIT", "SPENT", "HELD",
              "AVAILABLE", "REQUESTS", "");
  for (const auto& r : rows) {
    const Balance& b = r.balance;
    std::printf("%-24s %-16s %-15s %14s %14s %12s %14s %9llu %s\n", r.account.c_str(), r.parent.empty() ? "-" : r.parent.c_str(),
                period_column(b.period).c_str(), format_usd(b.limit_nanousd).c_str(),
                format_usd(b.spent_nanousd).c_str(), format_usd(b.held_nanousd).c_str(),
                format_usd(b.available_nanousd).c_str(), static_cast<unsigned long long>(b.requests), flags_column(b).c_str());
  }
}

// Global mode: the schema, then the config's global accounts, in the shared store, before anything
// changes locally (a store that cannot be written changes no budget anywhere).
int cmd_global(const Config& config, const std::vector<std::string>& args) {
  const bool as_json = args.size() == 3 && args[2] == "--json";
  if (args.size() < 2 || args[1] != "status" || (args.size() == 3 && !as_json) || args.size() > 3)
    return usage_error("global: expected `global status [--json]`");
  if (!config.global.present) return usage_error("global: the config has no \"global\" section");
  global::PgOptions options;
  std::string error;
  if (!global::store_options(config, &options, &error)) return runtime_error("global status: " + error);
  global::PgConnection pg(options);
  global::PgError e;
  std::vector<global::AccountStatus> rows;
  const int64_t now = ::time(nullptr);
  if (!global::read_status(pg, now, &rows, &e)) return runtime_error("global status: " + e.message);
  json::array accounts;
  for (const auto& a : rows) {
    json::array hosts;
    for (const auto& h : a.hosts)
      hosts.push_back(json::object{{"host_id", h.host_id}, {"incarnation", h.incarnation}, {"leased_nanousd", h.leased_nanousd},
                                   {"reported_nanousd", h.reported_nanousd}, {"expires_unix", h.expires_unix}, {"expired", h.expired}});
    accounts.push_back(json::object{{"id", a.id}, {"period", std::string(period_name(a.period))}, {"limit_nanousd", a.limit_nanousd},
                                    {"spent_nanousd", a.spent_nanousd}, {"leased_nanousd", a.leased_nanousd}, {"blocked", a.blocked},
                                    {"hosts", std::move(hosts)}});
    if (as_json) continue;
    std::printf("%-20s %-8s limit %14s spent %14s leased %14s%s\n", a.id.c_str(), std::string(period_name(a.period)).c_str(),
                format_usd(a.limit_nanousd).c_str(), format_usd(a.spent_nanousd).c_str(), format_usd(a.leased_nanousd).c_str(),
                a.blocked ? " BLOCKED" : "");
    for (const auto& h : a.hosts)
      std::printf("    %-24s leased %14s reported %14s %s\n", h.host_id.c_str(), format_usd(h.leased_nanousd).c_str(),
                  format_usd(h.reported_nanousd).c_str(), h.expired ? "EXPIRED (charged in full)" : "");
  }
  if (as_json) std::printf("%s\n", json::serialize(json::object{{"version", 1}, {"accounts", std::move(accounts)}}).c_str());
  return kExitOk;
}

bool publish_global(const Config& config, std::string* error) {
  global::PgOptions options;
  if (!global::store_options(config, &options, error)) return false;
  global::PgConnection pg(options);
  global::PgError e;
  if (!global::ensure_schema(pg, &e)) {
    *error = "the global store: " + e.message;
    return false;
  }
  std::vector<global::GlobalAccount> accounts;
  for (const auto& a : config.accounts)
    if (a.global) accounts.push_back(global::GlobalAccount{a.id, a.parent, a.limit_nanousd, a.period, false});
  int changed = 0;
  if (!global::publish_accounts(pg, accounts, &changed, &e)) {
    *error = "publishing the global accounts: " + e.message;
    return false;
  }
  std::printf("global: %zu accounts in the store (%d changed), host %s\n", accounts.size(), changed, config.global.host_id.c_str());
  return true;
}

int cmd_init(const Config& config) {
  std::unique_ptr<Ledger> ledger;
  std::string error;
  if (config.global.present && !publish_global(config, &error)) return runtime_error("init: " + error + "; nothing was changed");
  if (!open_ledger(config, &ledger, &error).ok()) return runtime_error(error);
  const ApplyReport r = apply_config(*ledger, config);
  for (const auto& e : r.errors) std::fprintf(stderr, "ledgerctl: init: %s\n", e.c_str());
  if (r.refused) return kExitRuntime;
  for (const auto& w : r.warnings) std::fprintf(stderr, "ledgerctl: warning: %s\n", w.c_str());
  const Status flushed = ledger->flush();
  std::printf("init: %s: %d accounts created, %d updated, %d unchanged, %d blocked (no longer in the config), %d prices\n",
              config.ledger.dir.c_str(), r.created, r.updated, r.unchanged, r.blocked_removed, r.prices);
  for (const auto& a : config.accounts)
    if (!a.period_given)
      std::printf("%s: no period, lifetime budget (\"period\" is left out: write \"none\" to keep it so, or daily, weekly, monthly)\n",
                  a.id.c_str());
  for (const auto& name : r.still_blocked)
    std::printf("note: \"%s\" is in the config but blocked; ledgerctl --config %s unblock %s\n", name.c_str(),
                config.path.c_str(), name.c_str());
  if (!flushed.ok()) return runtime_error("init: the store could not be written: " + describe(flushed));
  return r.errors.empty() ? kExitOk : kExitRuntime;
}

int cmd_status(const Config& config, bool as_json) {
  std::unique_ptr<Ledger> ledger;
  std::string error;
  if (!open_existing_ledger(config, &ledger, &error).ok()) return runtime_error(error);
  std::vector<AccountBalance> rows;
  const Status s = ledger->balances(&rows);
  if (!s.ok()) return runtime_error("status: " + describe(s));
  if (as_json) {
    json::array accounts;
    for (const auto& r : rows) accounts.push_back(balance_json(r.account, r.parent, r.balance));
    json::object root;
    root["version"] = 1;
    root["ledger"] = config.ledger.dir;
    root["accounts"] = std::move(accounts);
    std::printf("%s\n", json::serialize(root).c_str());
  } else {
    print_table(rows);
  }
  return kExitOk;
}

int cmd_balance(const Config& config, const std::string& account, bool as_json) {
  if (!valid_account_name(account)) return usage_error("\"" + account + "\" is not an account id (1-63 characters of [A-Za-z0-9._:@-])");
  std::unique_ptr<Ledger> ledger;
  std::string error;
  if (!open_existing_ledger(config, &ledger, &error).ok()) return runtime_error(error);
  std::vector<AccountBalance> rows;
  (void)ledger->balances(&rows);
  for (const auto& r : rows) {
    if (r.account != account) continue;
    if (as_json) std::printf("%s\n", json::serialize(balance_json(r.account, r.parent, r.balance)).c_str());
    else print_table({r});
    return kExitOk;
  }
  return runtime_error("no account \"" + account + "\" in " + config.ledger.dir + " (ledgerctl status lists them)");
}

int cmd_debit(const Config& config, const std::string& account, const std::string& usd) {
  if (!valid_account_name(account)) return usage_error("\"" + account + "\" is not an account id");
  const auto amount = parse_usd(usd);
  if (!amount || *amount < 0) return usage_error("\"" + usd + "\" is not a USD amount (e.g. 0.25, at most 9 decimals, not negative)");
  std::unique_ptr<Ledger> ledger;
  std::string error;
  if (!open_ledger(config, &ledger, &error).ok()) return runtime_error(error);
  const Status s = ledger->debit(account, *amount);
  if (s.ok()) {
    std::printf("granted: %s debited %s USD\n", account.c_str(), format_usd(*amount).c_str());
    return kExitOk;
  }
  std::fprintf(stderr, "ledgerctl: debit %s %s: %s\n", account.c_str(), usd.c_str(), std::string(s.message()).c_str());
  return s.denied() ? kExitDenied : kExitRuntime;
}

// A global account's block lives in the store (every host's lease worker applies it, and would undo
// a block made only here): it is written there first, and nothing changes when that fails.
bool block_in_store(const Config& config, const std::string& account, bool blocked, std::string* error) {
  global::PgOptions options;
  if (!global::store_options(config, &options, error)) return false;
  global::PgConnection pg(options);
  global::PgError e;
  bool found = false;
  if (!global::set_blocked(pg, account, blocked, &found, &e)) {
    *error = "the global store: " + e.message;
    return false;
  }
  if (!found) *error = "\"" + account + "\" is not in the global store; run `ledgerctl --config " + config.path + " init` first";
  return found;
}

bool is_global_account(const Config& config, const std::string& account) {
  if (!config.global.present) return false;
  for (const auto& a : config.accounts)
    if (a.id == account) return a.global;
  return false;
}

int cmd_block(const Config& config, const std::string& account, bool blocked) {
  if (!valid_account_name(account)) return usage_error("\"" + account + "\" is not an account id");
  std::unique_ptr<Ledger> ledger;
  std::string error;
  const char* verb = blocked ? "block " : "unblock ";
  if (is_global_account(config, account) && !block_in_store(config, account, blocked, &error))
    return runtime_error(verb + account + ": " + error + "; nothing was changed");
  if (!open_ledger(config, &ledger, &error).ok()) return runtime_error(error);
  const Status s = ledger->block(account, blocked);
  if (!s.ok()) return runtime_error(verb + account + ": " + describe(s));
  const Status flushed = ledger->flush();
  std::printf("%s %s%s\n", account.c_str(), blocked ? "blocked" : "unblocked",
              is_global_account(config, account) ? " on every host (the global store; hosts apply it at their next refresh)" : "");
  if (!flushed.ok()) return runtime_error("the store could not be written: " + describe(flushed));
  if (!config.openrouter.present) return kExitOk;
  // OpenRouter follows at once: the account's own key is disabled (or enabled again).
  auto client = client_for(config, &error);
  std::string done;
  if (client && follow_block(config, *client, account, blocked, &done, &error)) {
    if (!done.empty()) std::printf("%s\n", done.c_str());
    return kExitOk;
  }
  if (blocked) {  // the sidecar's next reconcile disables it; admission is already refused locally
    std::fprintf(stderr, "ledgerctl: warning: %s; the next reconcile (ledger-sidecar, or ledgerctl reconcile) retries\n",
                 error.c_str());
    return kExitOk;
  }
  return runtime_error("unblocked locally, but " + error + "; run `ledgerctl unblock " + account + "` again once OpenRouter answers");
}

// ledgerctl topup ACCOUNT USD [--until YYYY-MM-DD]: the account's limit raised by USD for its current
// window (or through the end of that UTC day); 0 removes it. A global account's top-up is the
// store's (every host's grants see it); a local one is the segment's, journaled by the flush.
int topup_global(const Config& config, const std::string& account, int64_t amount, int64_t until_unix);

int cmd_topup(const Config& config, std::vector<std::string> args) {
  std::string until_text;
  for (size_t i = 1; i + 1 < args.size(); ++i)
    if (args[i] == "--until") {
      until_text = args[i + 1];
      args.erase(args.begin() + static_cast<std::ptrdiff_t>(i), args.begin() + static_cast<std::ptrdiff_t>(i) + 2);
      break;
    }
  if (args.size() != 3) return usage_error("topup: expected `topup ACCOUNT USD [--until YYYY-MM-DD]`");
  const std::string& account = args[1];
  const AccountConfig* a = nullptr;
  for (const auto& c : config.accounts)
    if (c.id == account) a = &c;
  if (a == nullptr) return usage_error("topup: \"" + account + "\" is not an account of " + config.path);
  const auto amount = parse_usd(args[2]);
  if (!amount || *amount < 0) return usage_error("topup: \"" + args[2] + "\" is not a USD amount (e.g. 25.00; 0 removes the top-up)");
  const int64_t now_s = ::time(nullptr);
  int64_t until_s = 0;
  if (!until_text.empty()) {
    const auto day = parse_date(until_text);
    if (!day) return usage_error("topup: --until must be a date such as 2026-12-31");
    until_s = (*day + 1) * 86400;  // through the end of that UTC day
    if (until_s <= now_s) return usage_error("topup: --until " + until_text + " is in the past");
  } else if (a->period == Period::kNone) {
    return usage_error("topup: \"" + account + "\" has a lifetime budget (no window): give --until YYYY-MM-DD");
  } else {
    until_s = period_end_unix(a->period, period_index(a->period, now_s));  // the end of the current window
  }
  const int64_t until = *amount == 0 ? 0 : until_s;
  if (a->global) return topup_global(config, account, *amount, until);
  std::unique_ptr<Ledger> ledger;
  std::string error;
  if (!open_existing_ledger(config, &ledger, &error).ok()) return runtime_error(error);
  if (const Status s = ledger->set_topup(account, *amount, until * 1000); !s.ok()) return runtime_error("topup " + account + ": " + describe(s));
  if (const Status s = ledger->flush(); !s.ok()) return runtime_error("topup: the store could not be written (journal): " + describe(s));
  if (*amount == 0) std::printf("%s: top-up removed\n", account.c_str());
  else std::printf("%s: limit raised by %s USD until %s UTC (journaled)\n", account.c_str(), format_usd(*amount).c_str(),
                   format_date(until / 86400 - (until % 86400 == 0 ? 1 : 0)).c_str());
  return kExitOk;
}

int topup_global(const Config& config, const std::string& account, int64_t amount, int64_t until_unix) {
  global::PgOptions options;
  std::string error;
  if (!global::store_options(config, &options, &error)) return runtime_error("topup: " + error);
  global::PgConnection pg(options);
  global::PgError e;
  bool found = false;
  if (!global::set_topup(pg, account, amount, until_unix, &found, &e))
    return runtime_error("topup " + account + ": the global store: " + e.message + "; nothing was changed");
  if (!found) return runtime_error("topup: \"" + account + "\" is not in the global store; run `ledgerctl --config " + config.path + " init` first");
  std::printf("%s: %s in the global store (every host's grants see it at their next refresh; journaled)\n", account.c_str(),
              amount == 0 ? "top-up removed" : ("limit raised by " + format_usd(amount) + " USD").c_str());
  return kExitOk;
}

int cmd_flush(const Config& config) {
  std::unique_ptr<Ledger> ledger;
  std::string error;
  if (!open_ledger(config, &ledger, &error).ok()) return runtime_error(error);
  const Status s = ledger->flush();
  if (!s.ok()) return runtime_error("flush: " + describe(s) + (s.code() == Code::kFull ? "; raise ledger.store_map_size_mb" : ""));
  std::printf("flushed to %s/ledger.mdb\n", config.ledger.dir.c_str());
  return kExitOk;
}

// Global mode: a key's usage is every host's, so reconcile compares it with what every host recorded
// (the global store), and only the team's reconciler (the leader lease, G5) adjusts.
bool global_reconcile_store(const Config& config, bool dry_run, std::unique_ptr<global::PgConnection>* out, std::string* error) {
  global::PgOptions options;
  if (!global::store_options(config, &options, error)) return false;
  *out = std::make_unique<global::PgConnection>(options);
  if (dry_run) return true;
  bool leader = false;
  global::PgError e;
  const int64_t ttl_s = std::max<int64_t>(10, int64_t{config.openrouter.reconcile_interval_s} * 3);
  if (!global::lead(**out, "reconcile", config.global.host_id, global::instance_id(config), ttl_s, &leader, &e)) {
    *error = "the global store: " + e.message;
    return false;
  }
  if (!leader) *error = "another host is the team's reconciler (it adjusts drift once for all hosts); compare with --dry-run";
  return leader;
}

int cmd_reconcile(const Config& config, bool dry_run) {
  std::string error;
  std::unique_ptr<Ledger> ledger;  // a dry run creates nothing: no ledger, nothing to compare
  if (dry_run && !open_existing_ledger(config, &ledger, &error).ok()) return runtime_error("reconcile: " + error);
  auto client = client_for(config, &error);
  if (!client) return runtime_error("reconcile: " + error);
  if (!ledger && !open_ledger(config, &ledger, &error).ok()) return runtime_error(error);
  std::unique_ptr<global::PgConnection> pg;
  if (config.global.present && !global_reconcile_store(config, dry_run, &pg, &error)) return runtime_error("reconcile: " + error);
  const ReconcileReport r = !pg ? reconcile(*ledger, *client, config, dry_run)
                                : reconcile(*ledger, *client, config, dry_run, kReconcileToleranceNanousd, [&](KeyRecord* out, std::string* e) {
                                    global::PgError pe;
                                    if (global::pooled_key_days(*pg, *ledger, config, nullptr, &out->days, &out->complete,
                                                                &out->incomplete_because, &pe))
                                      return true;
                                    *e = "the global store: " + pe.message;
                                    return false;
                                  });
  if (!r.error.empty()) return runtime_error("reconcile: " + r.error);
  if (!r.deferred.empty()) std::printf("note: nothing adjusted on this run: %s\n", r.deferred.c_str());
  // One row per key: what the ledger recorded through it in its owner's window, against OpenRouter.
  std::printf("%-16s %-20s %-8s %14s %14s %12s  %s\n", "KEY", "OWNER", "WINDOW", "LEDGER", "OPENROUTER", "ADJUSTED", "NOTE");
  for (const auto& row : r.rows)
    std::printf("%-16s %-20s %-8s %14s %14s %12s  %s%s%s\n", (row.key_hash.substr(0, 12) + "...").c_str(),
                row.account.empty() ? "(none)" : row.account.c_str(), row.period.empty() ? "lifetime" : row.period.c_str(),
                format_usd(row.ledger_nanousd).c_str(),
                row.openrouter_nanousd ? format_usd(*row.openrouter_nanousd).c_str() : "unknown",
                format_usd(row.adjusted_nanousd).c_str(), drift_text(row).c_str(), row.limit_synced ? "; key limit synced" : "",
                row.detail.empty() || row.drift == Drift::kAdjustFailed ? "" : ("; " + row.detail).c_str());
  for (const auto& line : unsaid_key_use(r)) std::printf("warning: %s\n", line.c_str());
  for (const auto& k : r.unowned_keys) std::printf("unowned key (no account in the config): %s\n", k.c_str());
  for (const auto& line : r.revoked) std::printf("%s\n", line.c_str());
  for (const auto& line : r.revoke_errors) std::fprintf(stderr, "ledgerctl: %s\n", line.c_str());
  if (!dry_run && r.adjusted_total_nanousd > 0) {
    const Status flushed = ledger->flush();
    if (!flushed.ok()) return runtime_error("reconcile: adjustments made, but the store could not be written: " + describe(flushed));
  }
  return kExitOk;
}

int cmd_proxy_key(const Config& config, const std::vector<std::string>& args) {
  const std::string path = proxy::keys_path(config.ledger.dir);
  const std::string sub = args.size() > 1 ? args[1] : "";
  std::string error;
  if (sub == "create" && args.size() == 3) {
    bool known = false;
    for (const auto& a : config.accounts) known = known || a.id == args[2];
    if (!known) return usage_error("proxy-key create: \"" + args[2] + "\" is not an account of " + config.path);
    std::string secret;
    proxy::ProxyKey k;
    if (!proxy::create_key(path, args[2], &secret, &k, &error)) return runtime_error("proxy-key create: " + error);
    std::printf("%s: %s\n", k.account.c_str(), secret.c_str());
    std::fprintf(stderr, "proxy key %s for %s: shown once, only its hash is kept (%s)\n", k.id.c_str(), k.account.c_str(), path.c_str());
    return kExitOk;
  }
  if (sub == "list" && (args.size() == 2 || (args.size() == 3 && args[2] == "--json"))) {
    std::vector<proxy::ProxyKey> keys;
    if (!proxy::read_keys(path, &keys, &error)) return runtime_error("proxy-key list: " + error);
    json::array list;
    if (args.size() == 2) std::printf("%-14s %-24s %-12s %s\n", "ID", "ACCOUNT", "CREATED", "STATE");
    for (const auto& k : keys) {
      if (args.size() == 3) {
        list.push_back(json::object{{"id", k.id}, {"account", k.account}, {"created_unix", k.created_unix}, {"revoked_unix", k.revoked_unix}});
        continue;
      }
      std::printf("%-14s %-24s %-12s %s\n", k.id.c_str(), k.account.c_str(), format_date(k.created_unix / 86400).c_str(),
                  k.revoked_unix != 0 ? ("revoked " + format_date(k.revoked_unix / 86400)).c_str() : "valid");
    }
    if (args.size() == 3) std::printf("%s\n", json::serialize(json::object{{"version", 1}, {"keys", std::move(list)}}).c_str());
    return kExitOk;
  }
  if (sub == "revoke" && args.size() == 3) {
    proxy::ProxyKey k;
    if (!proxy::revoke_key(path, args[2], &k, &error)) return runtime_error("proxy-key revoke: " + error);
    std::printf("proxy key %s of %s revoked\n", k.id.c_str(), k.account.c_str());
    return kExitOk;
  }
  return usage_error("proxy-key: expected `proxy-key create ACCOUNT`, `proxy-key list [--json]` or `proxy-key revoke ID`");
}

void show_once(const NewKey& k) { std::printf("%s: %s\n", k.account.c_str(), k.secret.c_str()); }

json::value nanousd_or_null(const std::optional<int64_t>& n) { return n ? json::value(*n) : json::value(nullptr); }
json::value usd_or_null(const std::optional<int64_t>& n) { return n ? json::value(format_usd(*n)) : json::value(nullptr); }

int keys_list(const Config& config, openrouter::Client& client, bool as_json) {
  std::vector<openrouter::KeyInfo> keys;
  if (const auto e = client.list_keys(&keys)) return runtime_error("keys list: " + e.message);
  std::map<std::string, std::string> owner;
  for (const auto& [account, hash] : key_bindings(config)) owner[hash] = account;
  if (as_json) {
    json::array list;
    for (const auto& k : keys) {
      const auto o = owner.find(k.hash);
      list.push_back(json::object{{"name", k.name}, {"hash", k.hash},
                                  {"usage_nanousd", nanousd_or_null(k.usage_nanousd)}, {"usage_usd", usd_or_null(k.usage_nanousd)},
                                  {"limit_nanousd", nanousd_or_null(k.limit_nanousd)}, {"limit_usd", usd_or_null(k.limit_nanousd)},
                                  {"limit_reset", k.limit_reset.empty() ? json::value(nullptr) : json::value(k.limit_reset)},
                                  {"disabled", k.disabled},
                                  {"owner", o == owner.end() ? json::value(nullptr) : json::value(o->second)}});
    }
    std::printf("%s\n", json::serialize(json::object{{"version", 1}, {"keys", std::move(list)}}).c_str());
    return kExitOk;
  }
  std::printf("%-28s %-16s %12s %12s %-8s %-9s %s\n", "NAME", "HASH", "USAGE", "LIMIT", "RESET", "DISABLED", "OWNER");
  for (const auto& k : keys)
    std::printf("%-28s %-16s %12s %12s %-8s %-9s %s\n", k.name.c_str(), (k.hash.substr(0, 12) + "...").c_str(),
                k.usage_nanousd ? format_usd(*k.usage_nanousd).c_str() : "?",
                k.limit_nanousd ? format_usd(*k.limit_nanousd).c_str() : "none", k.limit_reset.empty() ? "-" : k.limit_reset.c_str(),
                k.disabled ? "yes" : "no", owner.count(k.hash) ? owner[k.hash].c_str() : "(none: key sprawl)");
  return kExitOk;
}

int keys_create(openrouter::Client& client, const std::vector<std::string>& args) {
  std::optional<int64_t> limit;
  std::string reset;
  for (size_t i = 3; i < args.size(); ++i) {
    if (args[i] == "--limit" && i + 1 < args.size()) {
      limit = parse_usd(args[++i]);
      if (!limit || *limit < 0) return usage_error("keys create: --limit wants a USD amount such as 25.00");
    } else if (args[i] == "--reset" && i + 1 < args.size()) {
      reset = args[++i];
      if (reset != "daily" && reset != "weekly" && reset != "monthly") return usage_error("keys create: --reset daily|weekly|monthly");
    } else {
      return usage_error("keys create: expected `keys create NAME --limit USD [--reset daily|weekly|monthly]`");
    }
  }
  if (!limit) return usage_error("keys create: --limit USD is required");
  openrouter::KeyInfo info;
  NewKey k;
  k.account = args[2];
  if (const auto e = client.create_key(args[2], limit, reset, &info, &k.secret)) return runtime_error("keys create: " + e.message);
  std::fprintf(stderr, "created key %s (hash %s); the key is shown once, below:\n", args[2].c_str(), info.hash.c_str());
  show_once(k);
  return kExitOk;
}

// HASH is the key's full 64-hex hash, or a unique prefix of it (at least 6 hex digits, e.g. the 12
// that `keys list` shows), resolved against OpenRouter's key list.
int keys_delete(const Config& config, openrouter::Client& client, std::string hash) {
  for (char& ch : hash) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  bool hex = hash.size() >= kKeyPrefixMin && hash.size() <= 64;
  for (char ch : hash) hex = hex && std::isxdigit(static_cast<unsigned char>(ch));
  if (!hex)
    return usage_error("keys delete: HASH is the key's hash or a prefix of at least " + std::to_string(kKeyPrefixMin) +
                       " hex digits of it (ledgerctl keys list shows 12)");  // the argument is not echoed: it may be a key
  std::string name;
  if (hash.size() < 64) {
    std::vector<openrouter::KeyInfo> keys;
    if (const auto e = client.list_keys(&keys)) return runtime_error("keys delete: cannot resolve the prefix " + hash + ": " + e.message);
    std::string error;
    const openrouter::KeyInfo* key = resolve_key_prefix(keys, hash, &error);
    if (key == nullptr) return runtime_error("keys delete: " + error);
    hash = key->hash;
    name = key->name + " ";
  }
  if (const auto e = client.delete_key(hash)) return runtime_error("keys delete: " + e.message);
  for (const auto& [account, bound] : key_bindings(config))
    if (bound == hash) (void)store_bind_key(config.ledger.dir, account, "");
  std::printf("deleted key %s%s\n", name.c_str(), name.empty() ? hash.c_str() : ("(" + hash + ")").c_str());
  return kExitOk;
}

int cmd_keys(const Config& config, std::vector<std::string> args) {
  const std::string sub = args.size() > 1 ? args[1] : "";
  bool as_json = false;
  if (sub == "list" && args.size() == 3 && args[2] == "--json") {
    as_json = true;
    args.pop_back();
  }
  if (sub == "list" && !ledger_exists(config)) return runtime_error("keys list: " + no_ledger_message(config));
  std::string error;
  auto client = client_for(config, &error);
  if (!client) return runtime_error("keys: " + error);
  if (sub == "list" && args.size() == 2) return keys_list(config, *client, as_json);
  if (sub == "create" && args.size() >= 3) return keys_create(*client, args);
  if (sub == "delete" && args.size() == 3) return keys_delete(config, *client, args[2]);
  if (sub == "provision" && args.size() == 2) {
    const auto made = provision(config, *client, &error);
    if (!made.empty()) std::fprintf(stderr, "%zu new key(s); each is shown once, below:\n", made.size());
    for (const auto& k : made) show_once(k);
    if (made.empty() && error.empty()) std::fprintf(stderr, "every account already has a key\n");
    return error.empty() ? kExitOk : runtime_error("keys provision: " + error);
  }
  if (sub == "rotate" && args.size() == 3) {
    NewKey k;
    const bool rotated = rotate(config, *client, args[2], &k, &error);
    if (rotated) {
      std::fprintf(stderr, "rotated the key of %s (new hash %s); the new key is shown once, below:\n", args[2].c_str(), k.hash.c_str());
      show_once(k);
    }
    if (!error.empty()) return runtime_error("keys rotate: " + error);
    return kExitOk;
  }
  return usage_error("keys: expected `keys list [--json]`, `keys create NAME --limit USD [--reset P]`, `keys delete HASH`, "
                     "`keys provision` or `keys rotate ACCOUNT`");
}

int cmd_report(const Config& config, const std::vector<std::string>& args) {
  std::string from, to, format = "table", out;
  for (size_t i = 1; i < args.size(); ++i) {
    const bool has_value = i + 1 < args.size();
    if (args[i] == "--from" && has_value) from = args[++i];
    else if (args[i] == "--to" && has_value) to = args[++i];
    else if (args[i] == "--format" && has_value) format = args[++i];
    else if (args[i] == "--out" && has_value) out = args[++i];
    else return usage_error("report: expected `report [--from DATE] [--to DATE] [--format table|json|csv|html] [--out FILE]`");
  }
  if (format != "table" && format != "json" && format != "csv" && format != "html")
    return usage_error("report: --format is table, json, csv or html, not \"" + format + "\"");
  std::unique_ptr<Ledger> ledger;
  std::string error;
  if (!open_existing_ledger(config, &ledger, &error).ok()) return runtime_error(error);
  (void)ledger->flush();  // what was settled until now
  const int64_t now = ledger->now_ms() / 1000;
  const auto to_day = to.empty() ? std::optional<int64_t>(floor_days(now)) : parse_date(to);
  if (!to_day) return usage_error("report: --to must be a date such as 2026-11-26");
  const auto from_day = from.empty() ? std::optional<int64_t>(*to_day - 6) : parse_date(from);
  if (!from_day) return usage_error("report: --from must be a date such as 2026-11-20");
  if (*from_day > *to_day) return usage_error("report: --from is after --to");
  Report report;
  if (config.global.present) {  // the global accounts' figures are every host's
    if (*to_day - *from_day > 366 * 5) return usage_error("report: the range is longer than five years");
    if (!global::build_global_report(*ledger, config, *from_day, *to_day, now, &report, &error)) return runtime_error("report: " + error);
  } else {
    const Status s = build_report(config, *from_day, *to_day, now, &report);
    if (s.code() == Code::kInvalidArgument) return usage_error("report: the range is longer than five years");
    if (!s.ok()) return runtime_error("report: cannot read the store: " + describe(s));
  }
  if (config.openrouter.present) {
    std::string key_error;
    if (auto client = client_for(config, &key_error)) {
      std::vector<openrouter::KeyInfo> keys;
      if (const auto e = client->list_keys(&keys)) std::fprintf(stderr, "ledgerctl: report: no key dashboard: %s\n", e.message.c_str());
      else add_key_dashboard(keys, key_bindings(config), &report);
    }
  }
  const std::string text = format == "json" ? render_json(report) : format == "csv" ? render_csv(report)
                           : format == "html" ? render_html(report) : render_table(report);
  if (out.empty()) {
    std::fputs(text.c_str(), stdout);
    return kExitOk;
  }
  if (!write_atomically(out, text, &error)) return runtime_error("report: " + error);
  std::fprintf(stderr, "wrote %s\n", out.c_str());
  return kExitOk;
}

using DoctorLine = std::function<void(bool ok, const std::string& what, const std::string& detail)>;
constexpr int64_t kDoctorOpenRouterDeadlineMs = 20'000;

// doctor's checks of an open ledger: the config's accounts are in it, the tiers' models have prices,
// the per-model tally table has room.
void doctor_ledger(const Config& config, const Ledger& ledger, const DoctorLine& line) {
  std::vector<AccountBalance> rows;
  (void)ledger.balances(&rows);
  size_t missing = 0;
  for (const auto& a : config.accounts) {
    bool found = false;
    for (const auto& r : rows) found = found || r.account == a.id;
    if (!found) ++missing;
  }
  line(missing == 0, "accounts", missing == 0 ? std::to_string(rows.size()) + " in the ledger"
                                              : std::to_string(missing) + " config accounts missing: run ledgerctl init");
  const auto unpriced = unpriced_models(ledger, config);
  for (const auto& u : unpriced) line(false, "prices", u);
  if (unpriced.empty()) line(true, "prices", "every model the tiers and accounts name has a price");
  LedgerStats stats;
  (void)ledger.stats(&stats);
  line(stats.tallies_dropped == 0, "tallies",
       std::to_string(stats.tallies) + " of " + std::to_string(stats.max_tallies) + " (account, model or key) tallies in use" +
           (stats.tallies_dropped == 0
                ? std::string()
                : "; " + std::to_string(stats.tallies_dropped) +
                      " commits not tallied per model (still charged): the table is crowded; a ledger created with a larger "
                      "ledger.max_accounts has a larger one"));
}

// The store's own health; the reader is closed on return (one LMDB environment per process).
void doctor_store(const Config& config, const Ledger* ledger, const DoctorLine& line) {
  std::unique_ptr<StoreReader> store;
  const Status read = StoreReader::open(config.ledger.dir, &store);
  if (!read.ok()) {
    line(false, "store", "cannot read " + config.ledger.dir + "/ledger.mdb: " + describe(read) + " (ledgerctl init creates it)");
    return;
  }
  StoreStats stats;
  (void)store->stats(&stats);
  const double used = stats.map_size_bytes ? 100.0 * static_cast<double>(stats.used_bytes) / static_cast<double>(stats.map_size_bytes) : 0;
  const int64_t age_s = stats.last_flush_ms ? (ledger ? ledger->now_ms() : 0) / 1000 - stats.last_flush_ms / 1000 : -1;
  line(used < 90, "store", config.ledger.dir + "/ledger.mdb: " + std::to_string(static_cast<int>(used)) + "% of the map used, last flush " +
                               (age_s >= 0 ? std::to_string(age_s) + " s ago" : "never"));
}

// OpenRouter: reachable, the right kind of key, credits, and keys used without saying so. All of it
// under one overall deadline, so a rate-limiting or silent OpenRouter cannot hang doctor.
void doctor_openrouter(const Config& config, Ledger* ledger, const DoctorLine& line) {
  std::string key_error;
  auto client = client_for(config, &key_error);
  line(client != nullptr, "openrouter key", client ? "found (not shown)" : key_error);
  if (!client) return;
  client->set_deadline(std::chrono::steady_clock::now() + std::chrono::milliseconds(kDoctorOpenRouterDeadlineMs));
  openrouter::KeyInfo me;
  bool management = false;
  const openrouter::Error e = client->current_key(&me, &management);
  line(!e, "openrouter reach", e ? e.message : config.openrouter.base_url + " answers");
  if (e) return;
  line(management, "openrouter key type",
       management ? "a management key" : "a normal API key: the sidecar needs a management key (Settings > Management keys)");
  if (!management) return;
  int64_t total = 0, used = 0;
  if (!client->credits(&total, &used)) line(total - used > 0, "openrouter credits", format_usd(total - used) + " USD left of " + format_usd(total));
  if (ledger == nullptr) return;
  const ReconcileReport r = reconcile(*ledger, *client, config, /*dry_run=*/true);
  if (!r.error.empty()) {
    line(false, "key use", "cannot compare keys: " + r.error);
    return;
  }
  const auto unsaid = unsaid_key_use(r);
  for (const auto& u : unsaid) line(false, "key use", u);
  if (unsaid.empty()) line(true, "key use", std::to_string(r.rows.size()) + " keys compared with what the ledger recorded through them");
}

// Global mode: the store reachable, its schema, its clock against ours, hosts that stopped renewing.
void doctor_global(const Config& config, const DoctorLine& line) {
  global::PgOptions options;
  std::string error;
  if (!global::store_options(config, &options, &error)) {
    line(false, "global store", error);
    return;
  }
  global::PgConnection pg(options);
  global::PgError e;
  int64_t store_ms = 0;
  if (!global::store_now_ms(pg, &store_ms, &e)) {
    line(false, "global store", e.message);
    return;
  }
  line(true, "global store", options.uri + " answers (host " + config.global.host_id + ")");
  line(global::ensure_schema(pg, &e), "global schema", e.message.empty() ? "version " + std::to_string(global::kSchemaVersion) : e.message);
  const int64_t skew_ms = store_ms - ::time(nullptr) * 1000;
  const int64_t margin_ms = std::max<int64_t>(1000, int64_t{config.global.lease_ttl_s} * 100);
  line(std::llabs(skew_ms) < margin_ms, "global clock skew",
       std::to_string(skew_ms) + " ms against the store (leases keep a margin of " + std::to_string(margin_ms) +
           " ms; beyond it, fix NTP on this host or the store's)");
  std::vector<std::string> lapsed;
  if (global::lapsed_hosts(pg, &lapsed, &e)) {
    std::string names;
    for (const auto& h : lapsed) names += (names.empty() ? "" : ", ") + h;
    line(lapsed.empty(), "global hosts",
         lapsed.empty() ? "every host's leases are being renewed"
                        : "leases not renewed (charged in full until their host reports again): " + names);
  }
}

int cmd_doctor(const Config& config) {
  int problems = 0;
  const DoctorLine line = [&](bool ok, const std::string& what, const std::string& detail) {
    std::printf("%-6s %-22s %s\n", ok ? "ok" : "FAIL", what.c_str(), detail.c_str());
    if (!ok) ++problems;
  };
  line(true, "config", config.path + " (" + std::to_string(config.accounts.size()) + " accounts)");
  std::unique_ptr<Ledger> ledger;
  std::string error;
  const Status opened = open_existing_ledger(config, &ledger, &error);
  line(opened.ok(), "ledger", opened.ok() ? Ledger::segment_path(config.ledger.dir) : error);
  if (opened.ok()) doctor_ledger(config, *ledger, line);
  doctor_store(config, ledger.get(), line);
  const bool sidecar = sidecar_running(config.ledger.dir);
  line(sidecar, "sidecar", sidecar ? "running" : "not running: start ledger-sidecar --config " + config.path +
                                                     " (nothing is flushed or reclaimed without it)");
  if (config.global.present) doctor_global(config, line);
  if (config.openrouter.present) doctor_openrouter(config, ledger.get(), line);
  return problems == 0 ? kExitOk : kExitRuntime;
}

int cmd_destroy_segment(const Config& config) {
  if (!ledger_exists(config)) return runtime_error("destroy-segment: " + no_ledger_message(config));
  const std::string segment = Ledger::segment_path(config.ledger.dir);
  struct stat st {};
  if (segment.empty() || ::stat(segment.c_str(), &st) != 0) {
    std::printf("no segment to remove; the next open rebuilds it from %s/ledger.mdb\n", config.ledger.dir.c_str());
    return kExitOk;
  }
  {
    std::unique_ptr<Ledger> ledger;
    Options options = options_for(config);
    options.create_if_missing = false;
    if (Ledger::open(config.ledger.dir, options, &ledger).ok()) {  // else (another format): nothing to count
      // A process that died (SIGKILL, exit without closing) keeps its slot until a reclaim frees it
      // (liveness is a kernel-released lock): reclaim first, so that only live processes count.
      uint32_t reclaimed = 0;
      if (const Status s = ledger->reclaim(&reclaimed); !s.ok()) return runtime_error("destroy-segment: reclaim failed: " + describe(s));
      LedgerStats stats;
      (void)ledger->stats(&stats);
      if (stats.processes_attached > 1)
        return runtime_error("destroy-segment: " + std::to_string(stats.processes_attached - 1) +
                             " other process(es) are attached; stop them (and the sidecar) first");
      if (const Status s = ledger->flush(); !s.ok()) return runtime_error("destroy-segment: flush failed first: " + describe(s));
    }
  }
  const Status s = Ledger::destroy_segment(config.ledger.dir);
  if (!s.ok() && s.code() != Code::kNotFound) return runtime_error("destroy-segment: " + describe(s));
  std::printf("segment removed; the next open rebuilds it from %s/ledger.mdb\n", config.ledger.dir.c_str());
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  std::vector<std::string> args;
  bool help = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config") {
      if (i + 1 >= argc) return usage_error("--config needs a FILE");
      config_path = argv[++i];
    } else if (arg.rfind("--config=", 0) == 0) {
      config_path = arg.substr(9);
    } else if (arg == "--help" || arg == "-h") {
      help = true;
    } else {
      args.push_back(arg);
    }
  }
  if (!args.empty() && args[0] == "config-reference") {  // needs no config: the table's Markdown (README)
    std::fputs(config_reference().c_str(), stdout);
    return kExitOk;
  }
  if (help || args.empty()) {
    std::fputs(kUsage, help ? stdout : stderr);
    return help ? kExitOk : kExitUsage;
  }
  if (config_path.empty()) {
    const char* env = std::getenv("LEDGER_CONFIG");
    if (env == nullptr) return usage_error("no config: pass --config FILE (or set LEDGER_CONFIG)");
    config_path = env;
  }
  std::string error;
  const auto config = load_config(config_path, &error);
  if (!config) {
    std::fprintf(stderr, "ledgerctl: %s\n", error.c_str());
    return kExitUsage;
  }
  const std::string& command = args[0];
  auto want = [&](size_t n, const char* shape) -> bool {
    if (args.size() != n) {
      usage_error(command + ": expected `" + shape + "`");
      return false;
    }
    return true;
  };
  auto flag = [&](const char* name) {
    for (size_t i = 1; i < args.size(); ++i)
      if (args[i] == name) {
        args.erase(args.begin() + static_cast<std::ptrdiff_t>(i));
        return true;
      }
    return false;
  };
  if (command == "init") return want(1, "init") ? cmd_init(*config) : kExitUsage;
  if (command == "status") {
    const bool as_json = flag("--json");
    return want(1, "status [--json]") ? cmd_status(*config, as_json) : kExitUsage;
  }
  if (command == "balance") {
    const bool as_json = flag("--json");
    return want(2, "balance ACCOUNT [--json]") ? cmd_balance(*config, args[1], as_json) : kExitUsage;
  }
  if (command == "debit") return want(3, "debit ACCOUNT USD") ? cmd_debit(*config, args[1], args[2]) : kExitUsage;
  if (command == "block") return want(2, "block ACCOUNT") ? cmd_block(*config, args[1], true) : kExitUsage;
  if (command == "unblock") return want(2, "unblock ACCOUNT") ? cmd_block(*config, args[1], false) : kExitUsage;
  if (command == "flush") return want(1, "flush") ? cmd_flush(*config) : kExitUsage;
  if (command == "doctor") return want(1, "doctor") ? cmd_doctor(*config) : kExitUsage;
  if (command == "reconcile") {
    const bool dry_run = flag("--dry-run");
    return want(1, "reconcile [--dry-run]") ? cmd_reconcile(*config, dry_run) : kExitUsage;
  }
  if (command == "keys") return cmd_keys(*config, args);
  if (command == "proxy-key") return cmd_proxy_key(*config, args);
  if (command == "destroy-segment") return want(1, "destroy-segment") ? cmd_destroy_segment(*config) : kExitUsage;
  if (command == "report") return cmd_report(*config, args);
  if (command == "global") return cmd_global(*config, args);
  if (command == "topup") return cmd_topup(*config, args);
  return usage_error("unknown command \"" + command + "\"");
}
