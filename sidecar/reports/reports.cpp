// reports.cpp — see reports.hpp.
#include "reports/reports.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>

#include "ledger/money.hpp"
#include "ledger/period.hpp"
#include "ledger/store.hpp"

namespace ledger::admin {
namespace json = boost::json;
__extension__ typedef __int128 Wide;  // products of two nano-USD amounts

std::optional<int64_t> parse_date(const std::string& text) {
  int y = 0;
  unsigned m = 0, d = 0;
  char tail = 0;
  if (text.size() != 10 || std::sscanf(text.c_str(), "%4d-%2u-%2u%c", &y, &m, &d, &tail) != 3) return std::nullopt;
  if (y < 1970 || y > 2140 || m < 1 || m > 12 || d < 1 || d > 31) return std::nullopt;
  const int64_t days = days_from_civil(CivilDate{y, m, d});
  if (civil_from_days(days) != CivilDate{y, m, d}) return std::nullopt;  // 2026-02-30
  return days;
}

std::string format_date(int64_t day) {
  const CivilDate c = civil_from_days(day);
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "%04d-%02u-%02u", c.year, c.month, c.day);
  return buffer;
}

namespace {
// Spend OpenRouter billed on a key beyond what the ledger recorded through it: charged by
// reconciliation, and named, since somebody spent outside the ledger.
void add_bypass_anomalies(const std::vector<StoredAdjustmentDay>& adjustments, Report* r) {
  for (const auto& a : adjustments) {
    if (a.amount_nanousd <= 0) continue;
    const std::string key = a.key_hash.empty() ? std::string("its key") : "key " + a.key_hash.substr(0, 12) + "...";
    r->anomalies.push_back({"bypass", a.account, a.day,
                            format_usd(a.amount_nanousd) + " USD that OpenRouter billed on " + key +
                                " beyond what the ledger recorded through it (spent outside the ledger; charged by " +
                                std::to_string(a.count) + " reconciliation adjustment" + (a.count == 1 ? "" : "s") + ")"});
  }
}
}  // namespace

Status read_report_inputs(const Config& config, int64_t from_day, int64_t to_day, int64_t now_unix, ReportInputs* in) {
  if (from_day > to_day || to_day - from_day > 366 * 5) return Code::kInvalidArgument;
  *in = ReportInputs{};
  std::unique_ptr<StoreReader> store;
  Status s = StoreReader::open(config.ledger.dir, &store);
  if (!s.ok()) return s;
  if (!(s = store->accounts(&in->accounts)).ok() || !(s = store->model_days(from_day, to_day, &in->model_days)).ok() ||
      !(s = store->adjustment_days(from_day, to_day, &in->adjustments)).ok())
    return s;
  for (const Period kind : {Period::kNone, Period::kDaily, Period::kWeekly, Period::kMonthly}) {
    const int64_t current = period_index(kind, now_unix);
    std::vector<StoredPeriod> found;
    if (!(s = store->periods_in(current, current, &found)).ok()) return s;
    for (auto& p : found)
      if (p.period == kind) in->periods.push_back(std::move(p));
  }
  std::vector<StoredPeriod> found;
  if (!(s = store->periods_in(from_day, to_day, &found)).ok()) return s;
  const int64_t today = period_index(Period::kDaily, now_unix);
  for (auto& p : found)
    if (p.period == Period::kDaily && p.index != today) in->periods.push_back(std::move(p));  // today's is in already
  // Seven days before the range feed the trailing median of the first days.
  return store->days(from_day - 7, to_day, &in->days);
}

Status build_report(const Config& config, int64_t from_day, int64_t to_day, int64_t now_unix, Report* out) {
  ReportInputs in;
  const Status s = read_report_inputs(config, from_day, to_day, now_unix, &in);
  return s.ok() ? build_report(config, in, from_day, to_day, now_unix, out) : s;
}

Status build_report(const Config& config, const ReportInputs& in, int64_t from_day, int64_t to_day, int64_t now_unix, Report* out) {
  if (from_day > to_day || to_day - from_day > 366 * 5) return Code::kInvalidArgument;
  const auto& accounts = in.accounts;
  const auto& days = in.days;
  const auto& model_days = in.model_days;
  // Each account's period records, found by name (one pass; no accounts x periods search).
  std::map<std::string, std::vector<const StoredPeriod*>> periods_of;
  for (const auto& p : in.periods) periods_of[p.account].push_back(&p);
  Report r;
  r.from_day = from_day;
  r.to_day = to_day;
  r.generated_unix = now_unix;
  r.global = in.global;
  std::map<std::string, size_t> index;
  std::map<std::string, std::string> tiers;
  for (const auto& a : config.accounts) tiers[a.id] = a.tier;
  for (const auto& a : accounts) {
    ReportRow row;
    row.account = a.account;
    row.parent = a.parent;
    row.tier = !a.tier.empty() ? a.tier : tiers[a.account];
    row.period = std::string(period_name(a.period));
    row.limit_nanousd = a.limit_nanousd;
    row.blocked = a.blocked;
    row.soft = a.soft;
    if (a.topup_nanousd != 0 && now_unix * 1000 < a.topup_until_unix_ms && !a.global) {  // a global top-up is the store's
      row.topup_nanousd = a.topup_nanousd;
      row.topup_until_unix = a.topup_until_unix_ms / 1000;
      row.limit_nanousd += a.topup_nanousd;
    }
    if (const auto hosts = in.hosts.find(a.account); hosts != in.hosts.end()) row.hosts = hosts->second;
    const int64_t current = period_index(a.period, now_unix);
    for (const StoredPeriod* p : periods_of[a.account])
      if (p->period == a.period && p->index == current) row.period_spent_nanousd = p->spent_nanousd;
    row.percent_used_bp =
        row.limit_nanousd > 0 ? static_cast<int64_t>(static_cast<Wide>(row.period_spent_nanousd) * 10000 / row.limit_nanousd) : -1;
    index[a.account] = r.rows.size();
    r.rows.push_back(std::move(row));
  }
  std::map<std::string, std::map<int64_t, int64_t>> per_day;  // account -> day -> cost (incl. history)
  std::map<int64_t, int64_t> root_days;
  for (const auto& d : days) {
    per_day[d.account][d.day] += d.spent_nanousd;
    if (d.day < from_day) continue;
    const auto it = index.find(d.account);
    if (it == index.end()) continue;
    ReportRow& row = r.rows[it->second];
    row.cost_nanousd += d.spent_nanousd;
    row.requests += d.requests;
    if (row.parent.empty()) {
      root_days[d.day] += d.spent_nanousd;
      r.total_cost_nanousd += d.spent_nanousd;
      r.total_requests += d.requests;
    }
  }
  for (int64_t day = from_day; day <= to_day; ++day) r.days.emplace_back(day, root_days[day]);
  // Cost per model: each account's own tallies, added to every ancestor too (as its cost is).
  std::map<std::string, std::map<std::string, std::pair<int64_t, int64_t>>> per_model;
  for (const auto& d : model_days) {
    std::string account = d.account;
    for (int depth = 0; depth < 8 && !account.empty(); ++depth) {  // bounded: a damaged store may loop
      auto& cell = per_model[account][d.model];
      cell.first += d.spent_nanousd;
      cell.second += static_cast<int64_t>(d.requests);
      const auto it = index.find(account);
      account = it == index.end() ? "" : r.rows[it->second].parent;
    }
  }
  for (auto& row : r.rows) {
    int64_t attributed = 0, attributed_requests = 0;
    for (const auto& [model, cell] : per_model[row.account]) {
      if (cell.first == 0 && cell.second == 0) continue;
      row.models.push_back(ModelCost{model, cell.first, cell.second});
      attributed += cell.first;
      attributed_requests += cell.second;
    }
    std::stable_sort(row.models.begin(), row.models.end(), [](const ModelCost& a, const ModelCost& b) { return a.cost_nanousd > b.cost_nanousd; });
    const ModelCost rest{"", row.cost_nanousd - attributed, static_cast<int64_t>(row.requests) - attributed_requests};
    if (rest.cost_nanousd != 0 || rest.requests != 0) row.models.push_back(rest);
  }
  std::stable_sort(r.rows.begin(), r.rows.end(), [](const ReportRow& a, const ReportRow& b) { return a.cost_nanousd > b.cost_nanousd; });
  // Anomalies: a day above 3x the (non-zero) median of the 7 days before it, and at least $0.01; a daily
  // account that reached its limit on 3 or more days of the range.
  for (const auto& [account, series] : per_day) {
    for (int64_t day = from_day; day <= to_day; ++day) {
      const auto today = series.find(day);
      if (today == series.end() || today->second < 10'000'000) continue;
      std::vector<int64_t> trailing;
      for (int64_t back = day - 7; back < day; ++back) {
        const auto it = series.find(back);
        trailing.push_back(it == series.end() ? 0 : it->second);
      }
      std::sort(trailing.begin(), trailing.end());
      const int64_t median = trailing[trailing.size() / 2];
      // Without a history (a median of zero) there is nothing to be far above.
      if (median > 0 && today->second > 3 * median)
        r.anomalies.push_back({"spike", account, day, format_usd(today->second) + " USD against a trailing median of " + format_usd(median)});
    }
  }
  add_bypass_anomalies(in.adjustments, &r);
  for (const auto& a : accounts) {
    if (a.period != Period::kDaily || a.limit_nanousd <= 0) continue;
    int at_limit = 0;
    for (const StoredPeriod* p : periods_of[a.account])
      if (p->period == Period::kDaily && p->index >= from_day && p->index <= to_day && p->spent_nanousd >= a.limit_nanousd) ++at_limit;
    if (at_limit >= 3)
      r.anomalies.push_back({"at_limit", a.account, to_day, "at its daily limit on " + std::to_string(at_limit) + " days"});
  }
  *out = std::move(r);
  return Code::kOk;
}

void add_key_dashboard(const std::vector<openrouter::KeyInfo>& keys, const std::map<std::string, std::string>& bindings,
                       Report* r) {
  std::map<std::string, std::string> owner;
  for (const auto& [account, hash] : bindings) owner[hash] = account;
  r->keys.clear();
  r->keys_usage_nanousd = 0;
  for (const auto& k : keys) {
    KeyRow row;
    row.name = k.name;
    row.hash_prefix = k.hash.substr(0, 12);
    row.owner = owner.count(k.hash) ? owner[k.hash] : "";
    row.reset = k.limit_reset;
    row.usage_nanousd = k.usage_nanousd;
    row.limit_nanousd = k.limit_nanousd;
    row.disabled = k.disabled;
    if (k.usage_nanousd) r->keys_usage_nanousd += *k.usage_nanousd;
    if (row.owner.empty() && k.usage_nanousd && *k.usage_nanousd > 0)
      r->anomalies.push_back({"unowned_key_spend", k.name, r->to_day, "key " + row.hash_prefix + "... has spend (" +
                                                                         format_usd(*k.usage_nanousd) + " USD) but no owner account"});
    r->keys.push_back(std::move(row));
  }
  std::stable_sort(r->keys.begin(), r->keys.end(), [](const KeyRow& a, const KeyRow& b) {
    return a.usage_nanousd.value_or(0) > b.usage_nanousd.value_or(0);
  });
}

namespace {
std::string percent(int64_t bp) {
  if (bp < 0) return "-";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%lld.%02lld", static_cast<long long>(bp / 100), static_cast<long long>(bp % 100));
  return buffer;
}
// part of whole in basis points (0 when whole is 0).
int64_t share_bp(int64_t part, int64_t whole) {
  return whole == 0 ? 0 : static_cast<int64_t>(static_cast<Wide>(part) * 10000 / whole);
}
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}
std::string html(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}
}  // namespace

// BLOCKED, SOFT, a top-up in force: after the row (the limit includes the top-up).
std::string row_flags(const ReportRow& row) {
  std::string out;
  if (row.blocked) out += "  BLOCKED";
  if (row.soft) out += "  SOFT";
  if (row.topup_nanousd != 0) out += "  +" + format_usd(row.topup_nanousd) + " top-up";
  return out;
}

std::string render_table(const Report& r) {
  std::string out = "team report " + format_date(r.from_day) + " .. " + format_date(r.to_day) + " (UTC)\n\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-24s %-16s %-10s %14s %9s %14s %-8s %9s\n", "ACCOUNT", "TEAM", "TIER", "COST USD", "REQUESTS",
                "LIMIT USD", "PERIOD", "% USED");
  out += line;
  for (const auto& row : r.rows) {
    std::snprintf(line, sizeof line, "%-24s %-16s %-10s %14s %9llu %14s %-8s %9s%s\n", row.account.c_str(),
                  row.parent.empty() ? "-" : row.parent.c_str(), row.tier.empty() ? "-" : row.tier.c_str(),
                  format_usd(row.cost_nanousd).c_str(), static_cast<unsigned long long>(row.requests),
                  format_usd(row.limit_nanousd).c_str(), row.period.c_str(), percent(row.percent_used_bp).c_str(),
                  row_flags(row).c_str());
    out += line;
  }
  out += "\ntotal (root accounts): " + format_usd(r.total_cost_nanousd) + " USD, " + std::to_string(r.total_requests) + " requests\n";
  if (r.global) {
    out += "\nglobal mode: costs and periods are every host's; by host:\n";
    for (const auto& row : r.rows)
      for (const auto& h : row.hosts) {
        std::snprintf(line, sizeof line, "  %-24s %-24s %14s %9llu %7s%%\n", row.account.c_str(), h.host_id.c_str(),
                      format_usd(h.cost_nanousd).c_str(), static_cast<unsigned long long>(h.requests),
                      percent(share_bp(h.cost_nanousd, row.cost_nanousd)).c_str());
        out += line;
      }
  }
  bool any_model = false;
  for (const auto& row : r.rows)
    for (const auto& m : row.models) any_model = any_model || !m.model.empty();
  if (any_model) {
    out += "\ncost per model:\n";
    for (const auto& row : r.rows) {
      if (row.models.empty() || (row.models.size() == 1 && row.models[0].model.empty())) continue;
      for (const auto& m : row.models) {
        std::snprintf(line, sizeof line, "  %-24s %-40s %14s %9lld %7s%%\n", row.account.c_str(),
                      m.model.empty() ? kUnattributed : m.model.c_str(), format_usd(m.cost_nanousd).c_str(),
                      static_cast<long long>(m.requests), percent(share_bp(m.cost_nanousd, row.cost_nanousd)).c_str());
        out += line;
      }
    }
  }
  if (!r.keys.empty()) {
    out += "\nkeys (total usage " + format_usd(r.keys_usage_nanousd) + " USD):\n";
    for (const auto& k : r.keys) {
      std::snprintf(line, sizeof line, "  %-28s %-15s %14s / %-12s %-8s %-9s %s\n", k.name.c_str(), (k.hash_prefix + "...").c_str(),
                    k.usage_nanousd ? format_usd(*k.usage_nanousd).c_str() : "?", k.limit_nanousd ? format_usd(*k.limit_nanousd).c_str() : "none",
                    k.reset.empty() ? "-" : k.reset.c_str(), k.disabled ? "disabled" : "", k.owner.empty() ? "(no owner)" : k.owner.c_str());
      out += line;
    }
  }
  if (!r.anomalies.empty()) out += "\nanomalies:\n";
  for (const auto& a : r.anomalies) out += "  " + a.kind + " " + a.account + " " + format_date(a.day) + ": " + a.detail + "\n";
  return out;
}

namespace {
json::array hosts_json(const std::vector<HostCost>& hosts) {
  json::array out;
  for (const auto& h : hosts)
    out.push_back(json::object{{"host_id", h.host_id}, {"cost_nanousd", h.cost_nanousd}, {"cost_usd", format_usd(h.cost_nanousd)},
                               {"requests", h.requests}});
  return out;
}
json::array models_json(const std::vector<ModelCost>& models) {
  json::array out;
  for (const auto& m : models)
    out.push_back(json::object{{"model", m.model.empty() ? json::value(nullptr) : json::value(m.model)},
                               {"cost_nanousd", m.cost_nanousd}, {"cost_usd", format_usd(m.cost_nanousd)},
                               {"requests", m.requests}});
  return out;
}
}  // namespace

std::string render_json(const Report& r) {
  json::array rows;
  for (const auto& row : r.rows)
    rows.push_back(json::object{{"account", row.account}, {"team", row.parent}, {"tier", row.tier}, {"period", row.period},
                                {"limit_nanousd", row.limit_nanousd}, {"limit_usd", format_usd(row.limit_nanousd)},
                                {"cost_nanousd", row.cost_nanousd}, {"cost_usd", format_usd(row.cost_nanousd)},
                                {"requests", row.requests}, {"period_spent_nanousd", row.period_spent_nanousd},
                                {"percent_used", row.percent_used_bp < 0 ? json::value(nullptr) : json::value(percent(row.percent_used_bp))},
                                {"blocked", row.blocked}, {"soft", row.soft}, {"topup_nanousd", row.topup_nanousd},
                                {"topup_until_unix", row.topup_until_unix}, {"models", models_json(row.models)},
                                {"hosts", hosts_json(row.hosts)}});
  json::array days;
  for (const auto& [day, cost] : r.days) days.push_back(json::object{{"date", format_date(day)}, {"cost_nanousd", cost}, {"cost_usd", format_usd(cost)}});
  json::array anomalies;
  for (const auto& a : r.anomalies)
    anomalies.push_back(json::object{{"kind", a.kind}, {"account", a.account}, {"date", format_date(a.day)}, {"detail", a.detail}});
  json::array keys;
  for (const auto& k : r.keys)
    keys.push_back(json::object{{"name", k.name}, {"hash_prefix", k.hash_prefix}, {"owner", k.owner}, {"reset", k.reset},
                                {"usage_nanousd", k.usage_nanousd ? json::value(*k.usage_nanousd) : json::value(nullptr)},
                                {"limit_nanousd", k.limit_nanousd ? json::value(*k.limit_nanousd) : json::value(nullptr)},
                                {"disabled", k.disabled}});
  json::object root{{"version", kReportSchemaVersion}, {"keys", std::move(keys)}, {"keys_usage_nanousd", r.keys_usage_nanousd}, {"from", format_date(r.from_day)}, {"to", format_date(r.to_day)},
                    {"generated_unix", r.generated_unix}, {"global", r.global}, {"accounts", std::move(rows)},
                    {"totals", json::object{{"cost_nanousd", r.total_cost_nanousd}, {"cost_usd", format_usd(r.total_cost_nanousd)},
                                            {"requests", r.total_requests}}},
                    {"days", std::move(days)}, {"anomalies", std::move(anomalies)}};
  return json::serialize(root) + "\n";
}

std::string render_csv(const Report& r) {
  // One row per account (model empty), each followed by its cost per model (period, limit, percent
  // and blocked empty there).
  std::string out = "account,team,tier,model,period,limit_usd,cost_usd,requests,percent_used,blocked\r\n";
  for (const auto& row : r.rows) {
    const std::string who = csv_field(row.account) + "," + csv_field(row.parent) + "," + csv_field(row.tier) + ",";
    out += who + "," + row.period + "," + format_usd(row.limit_nanousd) + "," + format_usd(row.cost_nanousd) + "," +
           std::to_string(row.requests) + "," + (row.percent_used_bp < 0 ? "" : percent(row.percent_used_bp)) + "," +
           (row.blocked ? "true" : "false") + "\r\n";
    for (const auto& m : row.models)
      out += who + csv_field(m.model.empty() ? kUnattributed : m.model) + ",,," + format_usd(m.cost_nanousd) + "," +
             std::to_string(m.requests) + ",,\r\n";
  }
  return out;
}

namespace {
// Spend per model: one stacked bar per account that used a named model (same scale as the account
// chart), a colour per model with a legend, then the numbers as a table.
std::string render_model_chart(const Report& r, int64_t account_max) {
  static const char* const kPalette[] = {"#3b7dd8", "#e76f51", "#2a9d8f", "#e9c46a", "#8e6cc7", "#f4a261",
                                         "#264653", "#d62828", "#6a994e", "#bc4749"};
  std::map<std::string, int64_t> totals;
  std::vector<const ReportRow*> rows;
  for (const auto& row : r.rows) {
    bool named = false;
    for (const auto& m : row.models) {
      if (m.model.empty()) continue;
      named = true;
      if (row.parent.empty()) totals[m.model] += m.cost_nanousd;  // roots: no double counting
      else totals.emplace(m.model, 0);
    }
    if (named) rows.push_back(&row);
  }
  if (rows.empty()) return "<h2>Spend per model</h2><p>No spend with a model in this range (only authorized requests carry one).</p>\n";
  bool unattributed = false;
  for (const ReportRow* row : rows)
    for (const auto& m : row->models) unattributed = unattributed || m.model.empty();
  std::vector<std::pair<std::string, int64_t>> order(totals.begin(), totals.end());
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::map<std::string, std::string> colour;
  for (size_t i = 0; i < order.size(); ++i) colour[order[i].first] = kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
  const int bar_height = 22, label = 180, width = 520, legend_row = 18;
  const int chart_h = bar_height * static_cast<int>(rows.size()) + 10;
  std::string out = "<h2>Spend per model</h2><svg role=\"img\" aria-label=\"spend per model\" width=\"" +
                    std::to_string(label + width + 120) + "\" height=\"" +
                    std::to_string(chart_h + legend_row * static_cast<int>(order.size() + (unattributed ? 1 : 0)) + 10) + "\">";
  for (size_t i = 0; i < rows.size(); ++i) {
    const ReportRow& row = *rows[i];
    const int y = static_cast<int>(i) * bar_height;
    out += "<text x=\"0\" y=\"" + std::to_string(y + 15) + "\">" + html(row.account) + "</text>";
    int64_t before = 0;
    for (const auto& m : row.models) {
      const int x0 = static_cast<int>(static_cast<Wide>(std::max<int64_t>(before, 0)) * width / account_max);
      before += m.cost_nanousd;
      const int x1 = static_cast<int>(static_cast<Wide>(std::max<int64_t>(before, 0)) * width / account_max);
      const std::string name = m.model.empty() ? kUnattributed : m.model;
      out += "<rect class=\"model\" x=\"" + std::to_string(label + x0) + "\" y=\"" + std::to_string(y + 3) + "\" width=\"" +
             std::to_string(std::max(x1 - x0, 1)) + "\" height=\"16\" fill=\"" + (m.model.empty() ? "#bbbbbb" : colour[m.model]) +
             "\"><title>" + html(row.account) + ", " + html(name) + ": " + format_usd(m.cost_nanousd) + " USD, " +
             std::to_string(m.requests) + " requests</title></rect>";
    }
    out += "<text x=\"" + std::to_string(label + static_cast<int>(static_cast<Wide>(std::max<int64_t>(row.cost_nanousd, 0)) * width / account_max) + 6) +
           "\" y=\"" + std::to_string(y + 15) + "\">" + format_usd(row.cost_nanousd) + "</text>";
  }
  for (size_t i = 0; i < order.size() + (unattributed ? 1 : 0); ++i) {
    const bool rest = i == order.size();
    const int y = chart_h + static_cast<int>(i) * legend_row;
    out += "<rect class=\"legend\" x=\"" + std::to_string(label) + "\" y=\"" + std::to_string(y) + "\" width=\"12\" height=\"12\" fill=\"" +
           (rest ? std::string("#bbbbbb") : colour[order[i].first]) + "\"></rect><text x=\"" + std::to_string(label + 18) + "\" y=\"" +
           std::to_string(y + 11) + "\">" + (rest ? std::string(kUnattributed) + ": debits, plain reserves, adjustments" : html(order[i].first)) +
           "</text>";
  }
  out += "</svg>\n<table class=\"models\"><tr><th>Account</th><th>Model</th><th>Cost USD</th><th>Requests</th><th>% of account</th></tr>\n";
  for (const ReportRow* row : rows)
    for (const auto& m : row->models)
      out += "<tr><td>" + html(row->account) + "</td><td>" + (m.model.empty() ? std::string("<em>") + kUnattributed + "</em>" : html(m.model)) +
             "</td><td>" + format_usd(m.cost_nanousd) + "</td><td>" + std::to_string(m.requests) + "</td><td>" +
             percent(share_bp(m.cost_nanousd, row->cost_nanousd)) + "</td></tr>\n";
  out += "</table>\n";
  return out;
}
}  // namespace

std::string render_html(const Report& r) {
  int64_t account_max = 1, day_max = 1;
  for (const auto& row : r.rows) account_max = std::max(account_max, row.cost_nanousd);
  for (const auto& [day, cost] : r.days) day_max = std::max(day_max, cost);
  std::string out;
  out += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Team report " + format_date(r.from_day) + " to " +
         format_date(r.to_day) + "</title>\n<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}"
         "td:first-child,th:first-child{text-align:left}.blocked{color:#b00}.bar{fill:#3b7dd8}.day{fill:#2a9d8f}"
         ".models td:nth-child(2),.models th:nth-child(2){text-align:left}text{font-size:12px;fill:#333}.anomaly{color:#b35c00}</style></head><body>\n";
  out += "<h1>Team report</h1><p>" + format_date(r.from_day) + " to " + format_date(r.to_day) + " (UTC). Total spend " +
         format_usd(r.total_cost_nanousd) + " USD over " + std::to_string(r.total_requests) + " requests.</p>\n";
  // Spend per account: horizontal bars.
  const int bar_height = 22, label = 180, width = 520;
  out += "<h2>Spend per account</h2><svg role=\"img\" aria-label=\"spend per account\" width=\"" + std::to_string(label + width + 120) +
         "\" height=\"" + std::to_string(bar_height * static_cast<int>(r.rows.size()) + 10) + "\">";
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const auto& row = r.rows[i];
    const int w = static_cast<int>(static_cast<Wide>(row.cost_nanousd) * width / account_max);
    const int y = static_cast<int>(i) * bar_height;
    out += "<text x=\"0\" y=\"" + std::to_string(y + 15) + "\">" + html(row.account) + "</text><rect class=\"bar\" x=\"" +
           std::to_string(label) + "\" y=\"" + std::to_string(y + 3) + "\" width=\"" + std::to_string(std::max(w, 1)) +
           "\" height=\"16\"><title>" + html(row.account) + ": " + format_usd(row.cost_nanousd) + " USD</title></rect><text x=\"" +
           std::to_string(label + w + 6) + "\" y=\"" + std::to_string(y + 15) + "\">" + format_usd(row.cost_nanousd) + "</text>";
  }
  out += "</svg>\n";
  // Spend per day: vertical bars.
  const int chart_h = 160, col = std::max(8, 560 / std::max<int>(1, static_cast<int>(r.days.size())));
  out += "<h2>Spend per day</h2><svg role=\"img\" aria-label=\"spend per day\" width=\"" + std::to_string(col * static_cast<int>(r.days.size()) + 20) +
         "\" height=\"" + std::to_string(chart_h + 40) + "\">";
  for (size_t i = 0; i < r.days.size(); ++i) {
    const auto& [day, cost] = r.days[i];
    const int h = static_cast<int>(static_cast<Wide>(cost) * chart_h / day_max);
    const int x = static_cast<int>(i) * col + 10;
    out += "<rect class=\"day\" x=\"" + std::to_string(x) + "\" y=\"" + std::to_string(chart_h - h + 5) + "\" width=\"" +
           std::to_string(col - 4) + "\" height=\"" + std::to_string(std::max(h, 1)) + "\"><title>" + format_date(day) + ": " +
           format_usd(cost) + " USD</title></rect>";
    if (r.days.size() <= 31) out += "<text x=\"" + std::to_string(x) + "\" y=\"" + std::to_string(chart_h + 20) + "\">" + format_date(day).substr(8) + "</text>";
  }
  out += "</svg>\n";
  out += render_model_chart(r, account_max);
  out += "<h2>Accounts</h2><table><tr><th>Account</th><th>Team</th><th>Tier</th><th>Cost USD</th><th>Requests</th>"
         "<th>Limit USD</th><th>Period</th><th>% used</th></tr>\n";
  for (const auto& row : r.rows)
    out += std::string("<tr") + (row.blocked ? " class=\"blocked\"" : "") + "><td>" + html(row.account) + (row.blocked ? " (blocked)" : "") +
           "</td><td>" + html(row.parent) + "</td><td>" + html(row.tier) + "</td><td>" + format_usd(row.cost_nanousd) + "</td><td>" +
           std::to_string(row.requests) + "</td><td>" + format_usd(row.limit_nanousd) + "</td><td>" + html(row.period) + "</td><td>" +
           percent(row.percent_used_bp) + "</td></tr>\n";
  out += "</table>\n";
  if (!r.keys.empty()) {
    out += "<h2>Keys</h2><p>Total usage " + format_usd(r.keys_usage_nanousd) + " USD.</p><table><tr><th>Key</th><th>Hash</th>"
           "<th>Usage USD</th><th>Limit USD</th><th>Reset</th><th>Disabled</th><th>Owner</th></tr>\n";
    for (const auto& k : r.keys)
      out += "<tr><td>" + html(k.name) + "</td><td>" + html(k.hash_prefix) + "...</td><td>" +
             (k.usage_nanousd ? format_usd(*k.usage_nanousd) : "?") + "</td><td>" + (k.limit_nanousd ? format_usd(*k.limit_nanousd) : "none") +
             "</td><td>" + html(k.reset) + "</td><td>" + (k.disabled ? "yes" : "") + "</td><td>" +
             (k.owner.empty() ? "<em>no owner</em>" : html(k.owner)) + "</td></tr>\n";
    out += "</table>\n";
  }
  out += "<h2>Anomalies</h2>";
  if (r.anomalies.empty()) out += "<p>None.</p>";
  else {
    out += "<ul>";
    for (const auto& a : r.anomalies)
      out += "<li class=\"anomaly\">" + html(a.kind) + ": " + html(a.account) + " on " + format_date(a.day) + ": " + html(a.detail) + "</li>";
    out += "</ul>";
  }
  out += "\n</body></html>\n";
  return out;
}

bool write_atomically(const std::string& path, const std::string& content, std::string* error) {
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    *error = "cannot write " + temp + ": " + std::strerror(errno);
    return false;
  }
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  const bool ok = written == content.size() && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(temp.c_str(), path.c_str()) != 0) {
    *error = "cannot write " + path + ": " + std::strerror(errno);
    ::unlink(temp.c_str());
    return false;
  }
  return true;
}

}  // namespace ledger::admin
