// reports.hpp — what the team sees (DESIGN.md 7, "reports"), built from the durable record.
//
// The team report for a UTC date range [from_day, to_day]: per account its team (parent), tier,
// cost and requests settled in the range, limit and period and the % of the limit used in the
// current period, sorted by cost; the cost per model of each account; totals over root accounts (a
// parent's spend includes its children's); cost per day; anomalies. Rendered as a terminal table, JSON (schema version 1),
// CSV (RFC 4180, one header row) or one self-contained HTML page with SVG bar charts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <map>

#include "core/config.hpp"
#include "openrouter/client.hpp"
#include "ledger/status.hpp"
#include "ledger/store.hpp"

namespace ledger::admin {

inline constexpr int kReportSchemaVersion = 1;

// Per-model cost of one account in the range: what commits of authorized holds settled on that
// model (for a team, its members' sum). The remainder of the account's cost, spend that carried no
// model (debits, plain reserves, reconciliation adjustments), is the entry with an empty model.
struct ModelCost {
  std::string model;  // "" = unattributed
  int64_t cost_nanousd = 0;
  int64_t requests = 0;
};
inline constexpr const char* kUnattributed = "(unattributed)";

struct HostCost {  // global mode: one host's part of an account's cost in the range
  std::string host_id;
  int64_t cost_nanousd = 0;
  uint64_t requests = 0;
};
struct ReportRow {
  std::vector<ModelCost> models;    // by cost, largest first; the unattributed remainder last
  std::string account, parent, tier, period;
  int64_t limit_nanousd = 0;
  int64_t cost_nanousd = 0;         // settled in the range
  uint64_t requests = 0;
  int64_t period_spent_nanousd = 0; // settled in the current period
  int64_t percent_used_bp = 0;      // of the limit, in basis points (10000 = 100 %); -1 = no limit
  bool blocked = false;
  bool soft = false;                // its own limit never denies: how far over shows in percent_used_bp
  int64_t topup_nanousd = 0;        // a top-up in force now (part of limit_nanousd), and its end
  int64_t topup_until_unix = 0;
  std::vector<HostCost> hosts;      // global mode: the range's cost by host (they sum to cost_nanousd)
};

struct Anomaly {
  // "spike" (a day far above the trailing median), "at_limit" (several days), "bypass" (OpenRouter
  // billed a key beyond what the ledger recorded through it), "unowned_key_spend"
  std::string kind;
  std::string account;
  int64_t day = 0;      // days since 1970-01-01
  std::string detail;
};

struct KeyRow {  // the key dashboard: one OpenRouter key
  std::string name, hash_prefix, owner, reset;  // owner "" = no account owns it
  std::optional<int64_t> usage_nanousd, limit_nanousd;
  bool disabled = false;
};

struct Report {
  int64_t from_day = 0, to_day = 0, generated_unix = 0;
  bool global = false;       // global mode: costs and periods are every host's (with a per-host breakdown)
  std::vector<KeyRow> keys;  // empty without an OpenRouter setup
  int64_t keys_usage_nanousd = 0;
  std::vector<ReportRow> rows;
  std::vector<std::pair<int64_t, int64_t>> days;  // (day, cost over root accounts)
  int64_t total_cost_nanousd = 0;
  uint64_t total_requests = 0;
  std::vector<Anomaly> anomalies;
};

// What a report is built from: the durable record of config.ledger.dir, or in global mode the
// sum over every host (global/host_record.hpp fills it from the global store).
struct ReportInputs {
  std::vector<StoredAccount> accounts;
  std::vector<StoredPeriod> periods;      // the current period of each kind, and the range's daily ones
  std::vector<StoredDay> days;            // from_day - 7 .. to_day (the trailing median needs the week before)
  std::vector<StoredModelDay> model_days; // the range
  std::vector<StoredAdjustmentDay> adjustments;  // the range (bypass anomalies)
  bool global = false;
  std::map<std::string, std::vector<HostCost>> hosts;  // global mode: account -> its cost by host in the range
};
Status read_report_inputs(const Config& config, int64_t from_day, int64_t to_day, int64_t now_unix, ReportInputs* out);
// now_unix decides the "current period".
Status build_report(const Config& config, const ReportInputs& in, int64_t from_day, int64_t to_day, int64_t now_unix, Report* out);
// read_report_inputs, then build_report.
Status build_report(const Config& config, int64_t from_day, int64_t to_day, int64_t now_unix, Report* out);

// Adds the key dashboard (and "a key with spend but no owner" anomalies) from OpenRouter's list.
void add_key_dashboard(const std::vector<openrouter::KeyInfo>& keys, const std::map<std::string, std::string>& bindings,
                       Report* report);

std::string render_table(const Report& r);
std::string render_json(const Report& r);
std::string render_csv(const Report& r);
std::string render_html(const Report& r);

// "2026-11-26" <-> days since 1970-01-01 (UTC); nullopt when malformed.
std::optional<int64_t> parse_date(const std::string& text);
std::string format_date(int64_t day);

// Writes via a temporary file in the same directory and rename(2): readers see old or new, whole.
bool write_atomically(const std::string& path, const std::string& content, std::string* error);

}  // namespace ledger::admin
