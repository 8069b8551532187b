// config.cpp — strict JSON config parsing with Boost.JSON.
#include "core/config.hpp"

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "ledger/ledger.hpp"
#include "ledger/money.hpp"

namespace ledger::admin {
namespace json = boost::json;

namespace {

constexpr size_t kConfigBytesMax = 16 * 1024 * 1024;
constexpr size_t kAccountsMax = 1u << 24;

struct ConfigError {
  std::string message;
};

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw ConfigError{where + ": " + what};
}

std::string kind_name(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "a boolean";
    case json::kind::int64:
    case json::kind::uint64:
    case json::kind::double_: return "a number";
    case json::kind::string: return "a string";
    case json::kind::array: return "an array";
    case json::kind::object: return "an object";
  }
  return "a value";
}

// Checks an object's keys against the allowed list; unknown keys are named.
const json::object& object_with(const json::value& v, const std::string& where, std::initializer_list<const char*> allowed) {
  if (!v.is_object()) fail(where, "expected an object, got " + kind_name(v));
  const json::object& o = v.get_object();
  for (const auto& [key, value] : o) {
    bool known = false;
    for (const char* a : allowed) known = known || key == a;
    if (!known) {
      std::string list;
      for (const char* a : allowed) list += std::string(list.empty() ? "" : ", ") + a;
      fail(where.empty() ? std::string(key) : where + "." + std::string(key), "unknown key (allowed here: " + list + ")");
    }
  }
  return o;
}

std::string join(const std::string& where, const char* key) { return where.empty() ? key : where + "." + key; }

std::string get_string(const json::object& o, const std::string& where, const char* key, const std::string& fallback,
                       bool required = false, size_t max_length = 4096) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) {
    if (required) fail(join(where, key), "required");
    return fallback;
  }
  if (!v->is_string()) fail(join(where, key), "expected a string, got " + kind_name(*v));
  const std::string s(v->get_string());
  if (s.size() > max_length) fail(join(where, key), "longer than " + std::to_string(max_length) + " bytes");
  return s;
}

uint64_t get_uint(const json::object& o, const std::string& where, const char* key, uint64_t fallback, uint64_t min,
                  uint64_t max) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) return fallback;
  int64_t n = 0;
  if (v->is_int64()) n = v->get_int64();
  else if (v->is_uint64() && v->get_uint64() <= static_cast<uint64_t>(INT64_MAX)) n = static_cast<int64_t>(v->get_uint64());
  else fail(join(where, key), "expected a whole number, got " + kind_name(*v));
  if (n < 0 || static_cast<uint64_t>(n) < min || static_cast<uint64_t>(n) > max)
    fail(join(where, key), "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " + std::to_string(n));
  return static_cast<uint64_t>(n);
}

bool get_bool(const json::object& o, const std::string& where, const char* key, bool fallback) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) return fallback;
  if (!v->is_bool()) fail(join(where, key), "expected true or false, got " + kind_name(*v));
  return v->get_bool();
}

// USD as a decimal string ("12.50") or a JSON number; never negative.
int64_t get_usd(const json::value& v, const std::string& where) {
  std::optional<int64_t> nanos;
  if (v.is_string()) {
    nanos = parse_usd(std::string(v.get_string()));
    if (!nanos) fail(where, "not a USD amount: \"" + std::string(v.get_string()) + "\" (write e.g. \"12.50\", at most 9 decimals)");
  } else if (v.is_int64() || v.is_uint64()) {
    const double whole = v.is_int64() ? static_cast<double>(v.get_int64()) : static_cast<double>(v.get_uint64());
    nanos = usd_double_to_nanousd(whole);
  } else if (v.is_double()) {
    nanos = usd_double_to_nanousd(v.get_double());
  } else {
    fail(where, "expected a USD amount (string or number), got " + kind_name(v));
  }
  if (!nanos) fail(where, "amount out of range");
  if (*nanos < 0) fail(where, "must not be negative");
  return *nanos;
}

bool valid_model_id(const std::string& model) {
  if (model.empty() || model.size() > 87) return false;
  for (char c : model)
    if (c <= ' ' || c > '~') return false;
  return true;
}

void parse_ledger(const json::value& v, Config& c) {
  const auto& o = object_with(v, "ledger", {"dir", "max_accounts", "max_reservations", "max_processes",
                                            "flush_interval_ms", "reservation_ttl_s", "store_map_size_mb",
                                            "segment_dir", "tombstone_grace_s", "max_tombstones"});
  c.ledger.dir = get_string(o, "ledger", "dir", "", true);
  if (c.ledger.dir.empty()) fail("ledger.dir", "must not be empty");
  c.ledger.max_accounts = static_cast<uint32_t>(get_uint(o, "ledger", "max_accounts", 65536, 1, 1u << 24));
  c.ledger.max_reservations = static_cast<uint32_t>(get_uint(o, "ledger", "max_reservations", 65536, 1, 1u << 24));
  c.ledger.max_processes = static_cast<uint32_t>(get_uint(o, "ledger", "max_processes", 256, 1, 1023));
  c.ledger.flush_interval_ms = static_cast<uint32_t>(get_uint(o, "ledger", "flush_interval_ms", 1000, 10, 3'600'000));
  c.ledger.reservation_ttl_s = static_cast<uint32_t>(get_uint(o, "ledger", "reservation_ttl_s", 600, 1, kTtlMaxSeconds));
  c.ledger.store_map_size_mb = get_uint(o, "ledger", "store_map_size_mb", 1024, 1, 1u << 20);
  c.ledger.segment_dir = get_string(o, "ledger", "segment_dir", "");
  if (o.contains("segment_dir") && (c.ledger.segment_dir.empty() || c.ledger.segment_dir[0] != '/'))
    fail("ledger.segment_dir", "must be an absolute directory on a tmpfs, such as \"/dev/shm\"");
  c.ledger.tombstone_grace_s =
      static_cast<uint32_t>(get_uint(o, "ledger", "tombstone_grace_s", 86400, 0, kTombstoneGraceMaxSeconds));
  c.ledger.max_tombstones = static_cast<uint32_t>(get_uint(o, "ledger", "max_tombstones", 0, 1, 1u << 24));
}

void parse_openrouter(const json::value& v, Config& c) {
  const auto& o = object_with(v, "openrouter", {"base_url", "management_key_env", "management_key_file",
                                                "reconcile_interval_s", "timeout_ms", "sync_key_limits", "app_url",
                                                "app_title", "revoke", "disable_unowned_keys"});
  auto& r = c.openrouter;
  r.present = true;
  r.base_url = get_string(o, "openrouter", "base_url", r.base_url);
  if (r.base_url.rfind("http://", 0) != 0 && r.base_url.rfind("https://", 0) != 0)
    fail("openrouter.base_url", "must start with http:// or https://");
  r.management_key_env = get_string(o, "openrouter", "management_key_env", r.management_key_env, false, 128);
  for (char ch : r.management_key_env)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_'))
      fail("openrouter.management_key_env", "must be the NAME of an environment variable (letters, digits, _), not a key");
  r.management_key_file = get_string(o, "openrouter", "management_key_file", "");
  r.reconcile_interval_s = static_cast<uint32_t>(get_uint(o, "openrouter", "reconcile_interval_s", 60, 1, 86400));
  r.timeout_ms = static_cast<uint32_t>(get_uint(o, "openrouter", "timeout_ms", 10000, 100, 600000));
  r.sync_key_limits = get_bool(o, "openrouter", "sync_key_limits", false);
  r.app_url = get_string(o, "openrouter", "app_url", "");
  r.app_title = get_string(o, "openrouter", "app_title", "", false, 256);
  r.revoke = get_string(o, "openrouter", "revoke", "disable");
  r.disable_unowned_keys = get_bool(o, "openrouter", "disable_unowned_keys", false);
  if (r.revoke != "disable" && r.revoke != "delete") fail("openrouter.revoke", "expected \"disable\" or \"delete\"");
}

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
    p.prompt_nanousd_per_mtok = get_usd(*prompt, where + ".prompt_usd_per_mtok");
    p.completion_nanousd_per_mtok = get_usd(*completion, where + ".completion_usd_per_mtok");
    if (const json::value* request = o.if_contains("request_usd")) p.request_nanousd = get_usd(*request, where + ".request_usd");
    c.prices.push_back(std::move(p));
  }
}

AccountConfig parse_account(const json::value& v, size_t i, std::map<std::string, size_t>& seen) {
  const std::string where = "accounts[" + std::to_string(i) + "]";
  const auto& o = object_with(v, where, {"id", "parent", "tier", "limit_usd", "period", "key_hash"});
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
  a.limit_nanousd = get_usd(*limit, named + ".limit_usd");
  a.period_given = o.if_contains("period") != nullptr;
  const std::string period = get_string(o, named, "period", "none");
  const auto p = parse_period(period);
  if (!p) fail(named + ".period", "expected none, daily, weekly or monthly, got \"" + period + "\"");
  a.period = *p;
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

void parse_reports(const json::value& v, Config& c) {
  const auto& o = object_with(v, "reports", {"dir", "interval_s", "formats"});
  c.reports.dir = get_string(o, "reports", "dir", "reports");
  c.reports.interval_s = static_cast<uint32_t>(get_uint(o, "reports", "interval_s", 300, 10, 86400 * 7));
  if (const json::value* f = o.if_contains("formats")) {
    if (!f->is_array()) fail("reports.formats", "expected an array such as [\"json\", \"csv\", \"html\"]");
    c.reports.formats.clear();
    for (const auto& item : f->get_array()) {
      const std::string s = item.is_string() ? std::string(item.get_string()) : "";
      if (s != "json" && s != "csv" && s != "html") fail("reports.formats", "each format is \"json\", \"csv\" or \"html\"");
      c.reports.formats.push_back(s);
    }
  }
}

void parse_metrics(const json::value& v, Config& c) {
  const auto& o = object_with(v, "metrics", {"listen"});
  c.metrics.listen = get_string(o, "metrics", "listen", "");
  if (!c.metrics.listen.empty()) {
    const auto colon = c.metrics.listen.rfind(':');
    const std::string host = colon == std::string::npos ? "" : c.metrics.listen.substr(0, colon);
    const std::string port = colon == std::string::npos ? "" : c.metrics.listen.substr(colon + 1);
    int number = 0;
    try {
      number = std::stoi(port);
    } catch (...) {
      number = 0;
    }
    if (host.empty() || number < 1 || number > 65535) fail("metrics.listen", "expected HOST:PORT such as \"127.0.0.1:9464\"");
  }
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
    const auto& o = object_with(root, "", {"ledger", "openrouter", "tiers", "prices", "accounts", "reports", "metrics"});
    const json::value* ledger_section = o.if_contains("ledger");
    if (ledger_section == nullptr) fail("ledger", "required (at least {\"dir\": \"...\"})");
    parse_ledger(*ledger_section, c);
    if (const auto* v = o.if_contains("openrouter")) parse_openrouter(*v, c);
    if (const auto* v = o.if_contains("tiers")) parse_tiers(*v, c);
    if (const auto* v = o.if_contains("prices")) parse_prices(*v, c);
    if (const auto* v = o.if_contains("accounts")) parse_accounts(*v, c);
    if (const auto* v = o.if_contains("reports")) parse_reports(*v, c);
    if (const auto* v = o.if_contains("metrics")) parse_metrics(*v, c);
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
