// config.cpp — strict JSON config parsing with Boost.JSON.
#include "core/config.hpp"

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <unistd.h>

#include "core/config_json.hpp"
#include "core/config_table.hpp"
#include "ledger/ledger.hpp"
#include "ledger/money.hpp"

namespace ledger::admin {

using namespace config_json;

namespace {

constexpr size_t kConfigBytesMax = 16 * 1024 * 1024;
constexpr size_t kAccountsMax = 1u << 24;

void parse_tiers(const json::value& v, Config& c) {
  if (!v.is_object()) fail("tiers", "expected an object of tier name -> tier, got " + kind_name(v));
  for (const auto& [name, tier_value] : v.get_object()) {
    const std::string where = "tiers." + std::string(name);
    if (!valid_account_name(name)) fail(where, "a tier name is 1-63 characters of [A-Za-z0-9._:@-]");
    const auto& o = object_with(tier_value, where, {"models", "fallback", "downgrade_at_percent", "downgrade_to"});
    TierConfig t;
    t.name = std::string(name);
    const json::value* models = o.if_contains("models");
    if (models == nullptr) fail(where + ".models", "required (a list of model ids, or null for every model)");
    if (!models->is_null()) {
      if (!models->is_array()) fail(where + ".models", "expected an array of model ids or null, got " + kind_name(*models));
      std::vector<std::string> list;
      for (size_t i = 0; i < models->get_array().size(); ++i) {
        const auto& m = models->get_array()[i];
        const std::string mw = where + ".models[" + std::to_string(i) + "]";
        if (!m.is_string() || !valid_model_id(std::string(m.get_string()))) fail(mw, "expected a model id such as \"openai/gpt-4o-mini\"");
        list.emplace_back(m.get_string());
      }
      t.models = std::move(list);
    }
    t.fallback = get_string(o, where, "fallback", "");
    if (!t.fallback.empty() && !valid_model_id(t.fallback)) fail(where + ".fallback", "not a model id");
    t.downgrade_at_percent = static_cast<uint32_t>(get_uint(o, where, "downgrade_at_percent", 0, 1, 100));
    t.downgrade_to = get_string(o, where, "downgrade_to", "");
    if ((t.downgrade_at_percent != 0) != !t.downgrade_to.empty())
      fail(where, "downgrade_at_percent and downgrade_to go together");
    c.tiers.push_back(std::move(t));
  }
}

void parse_prices(const json::value& v, Config& c) {
  if (!v.is_object()) fail("prices", "expected an object of model id -> price, got " + kind_name(v));
  for (const auto& [model, price_value] : v.get_object()) {
    const std::string where = "prices." + std::string(model);
    if (!valid_model_id(std::string(model))) fail(where, "not a model id");
    const auto& o = object_with(price_value, where, {"prompt_usd_per_mtok", "completion_usd_per_mtok", "request_usd"});
    PriceConfig p;
    p.model = std::string(model);
    const json::value* prompt = o.if_contains("prompt_usd_per_mtok");
    const json::value* completion = o.if_contains("completion_usd_per_mtok");
    if (prompt == nullptr) fail(where + ".prompt_usd_per_mtok", "required");
    if (completion == nullptr) fail(where + ".completion_usd_per_mtok", "required");
    p.prompt_nanousd_per_mtok = read_usd(*prompt, where + ".prompt_usd_per_mtok");
    p.completion_nanousd_per_mtok = read_usd(*completion, where + ".completion_usd_per_mtok");
    if (const json::value* request = o.if_contains("request_usd")) p.request_nanousd = read_usd(*request, where + ".request_usd");
    c.prices.push_back(std::move(p));
  }
}

// A list of model ids, or null (every model).
std::optional<std::vector<std::string>> parse_model_list(const json::value& v, const std::string& where) {
  if (v.is_null()) return std::nullopt;
  if (!v.is_array()) fail(where, "expected an array of model ids or null, got " + kind_name(v));
  std::vector<std::string> list;
  for (size_t i = 0; i < v.get_array().size(); ++i) {
    const auto& m = v.get_array()[i];
    const std::string mw = where + "[" + std::to_string(i) + "]";
    if (!m.is_string() || !valid_model_id(std::string(m.get_string()))) fail(mw, "expected a model id such as \"openai/gpt-4o-mini\"");
    list.emplace_back(m.get_string());
  }
  return list;
}

// DESIGN 13: models, fallback, enforce, rpm, tpm, max_concurrent.
void parse_account_rules(const json::object& o, const std::string& named, AccountConfig* a) {
  if (const json::value* models = o.if_contains("models")) a->models = parse_model_list(*models, named + ".models");
  a->fallback = get_string(o, named, "fallback", "");
  if (!a->fallback.empty() && !valid_model_id(a->fallback)) fail(named + ".fallback", "not a model id");
  if (!a->fallback.empty() && !a->models && a->tier.empty())
    fail(named + ".fallback", "a fallback replaces the account's own list's or its tier's: give the account \"models\" or a \"tier\"");
  const std::string enforce = get_string(o, named, "enforce", "hard");
  if (enforce != "hard" && enforce != "soft") fail(named + ".enforce", "expected \"hard\" or \"soft\", got \"" + enforce + "\"");
  a->soft = enforce == "soft";
  a->rpm = static_cast<uint32_t>(get_uint(o, named, "rpm", 0, 1, kRpmMax));
  a->tpm = static_cast<uint32_t>(get_uint(o, named, "tpm", 0, 1, kTpmMax));
  a->max_concurrent = static_cast<uint32_t>(get_uint(o, named, "max_concurrent", 0, 1, kMaxConcurrentMax));
}

AccountConfig parse_account(const json::value& v, size_t i, std::map<std::string, size_t>& seen) {
  const std::string where = "accounts[" + std::to_string(i) + "]";
  const auto& o = object_with(v, where, {"id", "parent", "tier", "limit_usd", "period", "key_hash", "scope", "models", "fallback",
                                         "enforce", "rpm", "tpm", "max_concurrent"});
  AccountConfig a;
  a.id = get_string(o, where, "id", "", true, 256);
  if (!valid_account_name(a.id)) fail(where + ".id", "\"" + a.id + "\" is not an account id (1-63 characters of [A-Za-z0-9._:@-])");
  const std::string named = where + " (\"" + a.id + "\")";
  if (seen.count(a.id) != 0) fail(named + ".id", "duplicate account (first at accounts[" + std::to_string(seen[a.id]) + "])");
  seen[a.id] = i;
  a.parent = get_string(o, named, "parent", "", false, 256);
  if (!a.parent.empty() && !valid_account_name(a.parent)) fail(named + ".parent", "not an account id");
  a.tier = get_string(o, named, "tier", "", false, 256);
  a.key_hash = get_string(o, named, "key_hash", "", false, 256);
  if (!a.key_hash.empty()) {
    bool hex = a.key_hash.size() == 64;
    for (char ch : a.key_hash) hex = hex && std::isxdigit(static_cast<unsigned char>(ch));
    if (!hex) fail(named + ".key_hash", "expected the key's 64-hex-digit hash (OpenRouter's \"hash\"), not the key itself");
  }
  const json::value* limit = o.if_contains("limit_usd");
  if (limit == nullptr) fail(named + ".limit_usd", "required");
  a.limit_nanousd = read_usd(*limit, named + ".limit_usd");
  a.period_given = o.if_contains("period") != nullptr;
  const std::string period = get_string(o, named, "period", "none");
  const auto p = parse_period(period);
  if (!p) fail(named + ".period", "expected none, daily, weekly or monthly, got \"" + period + "\"");
  a.period = *p;
  const std::string scope = get_string(o, named, "scope", "global");
  if (scope != "global" && scope != "local") fail(named + ".scope", "expected \"global\" or \"local\", got \"" + scope + "\"");
  a.global = scope == "global";  // meaningful only with a "global" section (see parse_config)
  parse_account_rules(o, named, &a);
  return a;
}

// Every parent exists (all checked before any chain is walked, so a walk never meets an unknown id),
// no account is its own ancestor, no chain is deeper than 4. Returns each account's depth (1 = root).
std::map<std::string, int> check_chains(const std::vector<AccountConfig>& accounts) {
  auto named = [&](size_t i) { return "accounts[" + std::to_string(i) + "] (\"" + accounts[i].id + "\")"; };
  std::map<std::string, const AccountConfig*> by_id;
  for (const auto& a : accounts) by_id[a.id] = &a;
  for (size_t i = 0; i < accounts.size(); ++i)
    if (!accounts[i].parent.empty() && by_id.count(accounts[i].parent) == 0)
      fail(named(i) + ".parent", "unknown account \"" + accounts[i].parent + "\"");
  // Cycles: walk up from each account until a root or an account seen on this walk. Only an account
  // that comes back to itself is on the cycle; the first of those (in file order) reports it.
  for (size_t i = 0; i < accounts.size(); ++i) {
    std::set<std::string> walked{accounts[i].id};
    std::string path = accounts[i].id;
    for (std::string p = accounts[i].parent; !p.empty(); p = by_id.at(p)->parent) {
      path += " -> " + p;
      if (p == accounts[i].id) fail(named(i) + ".parent", "cycle: " + path + " (an account cannot be its own ancestor: change one of these parents)");
      if (!walked.insert(p).second) break;  // a cycle further up: its own members report it
    }
  }
  std::map<std::string, int> depth;
  for (size_t i = 0; i < accounts.size(); ++i) {
    int d = 1;
    for (std::string p = accounts[i].parent; !p.empty(); p = by_id.at(p)->parent)
      if (++d > 4) fail(named(i) + ".parent", "chain deeper than 4 levels (account, parent, grandparent, root)");
    depth[accounts[i].id] = d;
  }
  return depth;
}

void parse_accounts(const json::value& v, Config& c) {
  if (!v.is_array()) fail("accounts", "expected an array of accounts, got " + kind_name(v));
  const auto& list = v.get_array();
  if (list.size() > kAccountsMax) fail("accounts", "too many accounts");
  std::map<std::string, size_t> seen;
  std::vector<AccountConfig> accounts;
  for (size_t i = 0; i < list.size(); ++i) accounts.push_back(parse_account(list[i], i, seen));
  std::map<std::string, int> depth = check_chains(accounts);
  // Parents before children.
  std::stable_sort(accounts.begin(), accounts.end(), [&](const AccountConfig& x, const AccountConfig& y) { return depth[x.id] < depth[y.id]; });
  c.accounts = std::move(accounts);
}

std::string absolute(const std::string& path, const std::string& config_path);

// Global mode: the host id defaults to the hostname; without a "global" section no account is global.
void finish_global(Config& c, const std::string& path) {
  for (auto& a : c.accounts) a.global = a.global && c.global.present;
  if (!c.global.present) return;
  if (c.global.host_id.empty()) {
    char name[256] = {};
    if (::gethostname(name, sizeof name - 1) != 0 || !valid_account_name(name))
      fail("global.host_id", "required here: the hostname is not a valid host id (1-63 characters of [A-Za-z0-9._:@-])");
    c.global.host_id = name;
  }
  if (!c.global.store_password_file.empty()) c.global.store_password_file = absolute(c.global.store_password_file, path);
}

std::string absolute(const std::string& path, const std::string& config_path) {
  std::filesystem::path p(path);
  if (p.is_absolute()) return p.lexically_normal().string();
  return (std::filesystem::absolute(config_path).parent_path() / p).lexically_normal().string();
}

}  // namespace

std::optional<Config> parse_config(const std::string& text, const std::string& path, std::string* error) {
  json::parse_options options;
  options.max_depth = 16;
  std::error_code ec;
  json::value root = json::parse(text, ec, {}, options);
  if (ec) {
    *error = path + ": not valid JSON: " + ec.message();
    return std::nullopt;
  }
  try {
    Config c;
    c.path = path;
    const auto& o = object_with(root, "", {"ledger", "openrouter", "tiers", "prices", "accounts", "reports", "metrics", "global", "proxy"});
    if (o.if_contains("ledger") == nullptr) fail("ledger", "required (at least {\"dir\": \"...\"})");
    c.openrouter.present = o.if_contains("openrouter") != nullptr;
    c.global.present = o.if_contains("global") != nullptr;
    for (const char* section : {"ledger", "openrouter", "reports", "metrics"}) read_section(section, o.if_contains(section), c);
    if (c.global.present) read_section("global", o.if_contains("global"), c);
    c.proxy.present = o.if_contains("proxy") != nullptr;
    read_section("proxy", o.if_contains("proxy"), c);
    if (const auto* v = o.if_contains("tiers")) parse_tiers(*v, c);
    if (const auto* v = o.if_contains("prices")) parse_prices(*v, c);
    if (const auto* v = o.if_contains("accounts")) parse_accounts(*v, c);
    if (c.accounts.size() > c.ledger.max_accounts)
      fail("ledger.max_accounts", std::to_string(c.ledger.max_accounts) + " is fewer than the " + std::to_string(c.accounts.size()) +
                                      " accounts listed: raise it (a ledger made smaller needs ledgerctl destroy-segment, then init)");
    std::set<std::string> tier_names;
    for (const auto& t : c.tiers) tier_names.insert(t.name);
    for (size_t i = 0; i < c.accounts.size(); ++i)
      if (!c.accounts[i].tier.empty() && tier_names.count(c.accounts[i].tier) == 0)
        fail("accounts (\"" + c.accounts[i].id + "\").tier", "unknown tier \"" + c.accounts[i].tier + "\"");
    c.ledger.dir = absolute(c.ledger.dir, path);
    c.reports.dir = absolute(c.reports.dir, path);
    if (!c.openrouter.management_key_file.empty())
      c.openrouter.management_key_file = absolute(c.openrouter.management_key_file, path);
    finish_global(c, path);
    if (!c.proxy.upstream_key_file.empty()) c.proxy.upstream_key_file = absolute(c.proxy.upstream_key_file, path);
    return c;
  } catch (const ConfigError& e) {
    *error = path + ": " + e.message;
    return std::nullopt;
  }
}

std::optional<Config> load_config(const std::string& path, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = path + ": cannot read the config file (" + std::string(std::strerror(errno)) + ")";
    return std::nullopt;
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().size() > kConfigBytesMax) {
    *error = path + ": larger than 16 MiB";
    return std::nullopt;
  }
  return parse_config(text.str(), path, error);
}

}  // namespace ledger::admin
