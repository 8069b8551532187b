// config_table.cpp — the table (see config_table.hpp).
#include "core/config_table.hpp"

#include <cctype>

#include "ledger/ledger.hpp"

namespace ledger::admin {

using namespace config_json;

namespace {

using Check = std::function<void(const std::string& value, const std::string& where)>;

std::string range_text(uint64_t min, uint64_t max, const std::string& unit) {
  return std::to_string(min) + " - " + std::to_string(max) + (unit.empty() ? "" : " " + unit);
}

template <class S, class T>
ConfigKey uint_key(const char* section, const char* name, S Config::*sec, T S::*field, uint64_t def, uint64_t min,
                   uint64_t max, const std::string& unit, std::string help, std::string default_text = "") {
  ConfigKey k{section, name, default_text.empty() ? std::to_string(def) : default_text, range_text(min, max, unit), std::move(help), {}};
  k.read = [=](Config& c, const json::value* v, const std::string& where) {
    (c.*sec).*field = static_cast<T>(v == nullptr ? def : read_uint(*v, where, min, max));
  };
  return k;
}

template <class S>
ConfigKey bool_key(const char* section, const char* name, S Config::*sec, bool S::*field, bool def, std::string help) {
  ConfigKey k{section, name, def ? "true" : "false", "", std::move(help), {}};
  k.read = [=](Config& c, const json::value* v, const std::string& where) { (c.*sec).*field = v == nullptr ? def : read_bool(*v, where); };
  return k;
}

template <class S>
ConfigKey string_key(const char* section, const char* name, S Config::*sec, std::string S::*field, std::string def,
                     std::string default_text, std::string help, Check check = {}, size_t max_length = 4096) {
  ConfigKey k{section, name, std::move(default_text), "", std::move(help), {}};
  k.read = [=](Config& c, const json::value* v, const std::string& where) {
    if (v == nullptr) {
      (c.*sec).*field = def;
      return;
    }
    std::string value = read_string(*v, where, max_length);
    if (check) check(value, where);
    (c.*sec).*field = std::move(value);
  };
  return k;
}

ConfigKey doc_key(const char* section, const char* name, std::string default_text, std::string help) {
  return ConfigKey{section, name, std::move(default_text), "", std::move(help), {}};
}

Check one_of(std::vector<std::string> choices) {
  return [choices](const std::string& value, const std::string& where) {
    std::string list;
    for (const auto& c : choices) {
      if (c == value) return;
      list += (list.empty() ? "\"" : ", \"") + c + "\"";
    }
    fail(where, "expected " + list + ", got \"" + value + "\"");
  };
}

void check_url(const std::string& value, const std::string& where) {
  if (value.rfind("http://", 0) != 0 && value.rfind("https://", 0) != 0) fail(where, "must start with http:// or https://");
}

void check_env_name(const std::string& value, const std::string& where) {
  for (char ch : value)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_'))
      fail(where, "must be the NAME of an environment variable (letters, digits, _), not a key");
}

void check_absolute_dir(const std::string& value, const std::string& where) {
  if (value.empty() || value[0] != '/') fail(where, "must be an absolute directory on a tmpfs, such as \"/dev/shm\"");
}

void check_not_empty(const std::string& value, const std::string& where) {
  if (value.empty()) fail(where, "must not be empty");
}

void check_listen(const std::string& value, const std::string& where) {
  if (value.empty()) return;
  const auto colon = value.rfind(':');
  const std::string host = colon == std::string::npos ? "" : value.substr(0, colon);
  const std::string port = colon == std::string::npos ? "" : value.substr(colon + 1);
  int number = 0;
  for (char ch : port) number = std::isdigit(static_cast<unsigned char>(ch)) && number < 100000 ? number * 10 + (ch - '0') : 100000;
  if (host.empty() || port.empty() || number < 1 || number > 65535) fail(where, "expected HOST:PORT such as \"127.0.0.1:9464\"");
}

ConfigKey formats_key() {
  ConfigKey k{"reports", "formats", "all three", "", "which files the sidecar writes: any of `\"json\"`, `\"csv\"`, `\"html\"`", {}};
  k.read = [](Config& c, const json::value* v, const std::string& where) {
    if (v == nullptr) {
      c.reports.formats = {"json", "csv", "html"};
      return;
    }
    if (!v->is_array()) fail(where, "expected an array such as [\"json\", \"csv\", \"html\"]");
    c.reports.formats.clear();
    for (const auto& item : v->get_array()) {
      const std::string s = item.is_string() ? std::string(item.get_string()) : "";
      if (s != "json" && s != "csv" && s != "html") fail(where, "each format is \"json\", \"csv\" or \"html\"");
      c.reports.formats.push_back(s);
    }
  };
  return k;
}

std::vector<ConfigKey> ledger_keys() {
  using L = LedgerSection;
  const auto L_ = &Config::ledger;
  return {
      string_key("ledger", "dir", L_, &L::dir, "", "required",
                 "the ledger directory (store, lock file, `ledger.segment-dir` record); relative to the config file", check_not_empty),
      string_key("ledger", "segment_dir", L_, &L::segment_dir, "", "`/dev/shm`",
                 "where the shared segment lives (an absolute directory on a tmpfs). Its pages are reserved when it is created, so a "
                 "full filesystem is error 9 then (`ledgerctl` says how many MiB it needs), never a SIGBUS later; the choice is "
                 "recorded in `DIR/ledger.segment-dir`, so workers that open `DIR` without a config find it. It cannot change while a "
                 "segment exists (stop everything, `destroy-segment`, `init`)",
                 check_absolute_dir),
      uint_key("ledger", "max_accounts", L_, &L::max_accounts, 65536, 1, 1u << 24, "",
               "accounts the segment holds, fixed when it is created; `init` (and a SIGHUP) refuses, changing nothing, a config "
               "whose new accounts plus those already in the ledger (removed ones stay, blocked) exceed it: raise it, then "
               "`ledgerctl destroy-segment` and `ledgerctl init` (the store keeps spend)"),
      uint_key("ledger", "max_reservations", L_, &L::max_reservations, 65536, 1, 1u << 24, "",
               "reservation slots (live holds and tombstones), fixed when the segment is created"),
      uint_key("ledger", "max_processes", L_, &L::max_processes, 256, 1, 1023, "",
               "worker handles attached at once, fixed when the segment is created (4 more are kept for `ledgerctl` and the sidecar)"),
      uint_key("ledger", "flush_interval_ms", L_, &L::flush_interval_ms, 1000, 10, 3'600'000, "ms",
               "how often the sidecar flushes: the loss window on a crash of the machine; OpenRouter never delays it"),
      uint_key("ledger", "reservation_ttl_s", L_, &L::reservation_ttl_s, 600, 1, kTtlMaxSeconds, "s",
               "hold TTL when a worker passes 0; kept in the segment by `init` and every reload, so it applies to every process, C "
               "ABI workers included"),
      uint_key("ledger", "tombstone_grace_s", L_, &L::tombstone_grace_s, 86400, 0, kTombstoneGraceMaxSeconds, "s",
               "how long an expired or reclaimed hold still accepts its late commit; kept in the segment"),
      uint_key("ledger", "max_tombstones", L_, &L::max_tombstones, 0, 1, 1u << 24, "",
               "at most this many such tombstones; the oldest beyond it are dropped (metric `ledger_tombstones_dropped_total`), "
               "and a reserve that finds no free slot drops the oldest itself, so tombstones never starve live holds. A late commit "
               "whose tombstone was dropped gets code 6 and charges nothing; for accounts whose key is reconciled, the next "
               "reconcile charges what OpenRouter billed",
               "half of `max_reservations`"),
      uint_key("ledger", "max_account_rules", L_, &L::max_account_rules, 4096, 0, 65535, "",
               "accounts that set rules of their own (`models`, `fallback`, a top-up or rate limits; 192 bytes each), fixed when "
               "the segment is created; `init` names the account that does not fit"),
      bool_key("ledger", "strict_models", L_, &L::strict_models, false,
               "a model named in `tiers` or `accounts` (`models`, `fallback`, `downgrade_to`) that has no price is an error for "
               "`init` and a reload (the running config stays), not a warning"),
      uint_key("ledger", "store_map_size_mb", L_, &L::store_map_size_mb, 1024, 1, 1u << 20, "MiB",
               "LMDB map size (sparse); a full map fails the flush with code 9, logged once; raise it and send SIGHUP: the next "
               "flush uses it"),
  };
}

std::vector<ConfigKey> openrouter_keys() {
  using O = OpenRouterSection;
  const auto O_ = &Config::openrouter;
  return {
      string_key("openrouter", "base_url", O_, &O::base_url, "https://openrouter.ai/api/v1", "`https://openrouter.ai/api/v1`",
                 "or the emulator's URL", check_url),
      string_key("openrouter", "management_key_env", O_, &O::management_key_env, "OPENROUTER_MGMT_KEY", "`OPENROUTER_MGMT_KEY`",
                 "the environment variable that holds the management key (never the key itself)", check_env_name, 128),
      string_key("openrouter", "management_key_file", O_, &O::management_key_file, "", "none",
                 "a file that holds the management key instead; relative to the config file"),
      uint_key("openrouter", "reconcile_interval_s", O_, &O::reconcile_interval_s, 60, 1, 86400, "s",
               "how often the sidecar refreshes prices and reconciles each key (each cycle has this long at most)"),
      uint_key("openrouter", "timeout_ms", O_, &O::timeout_ms, 10000, 100, 600000, "ms", "per-request timeout"),
      bool_key("openrouter", "sync_key_limits", O_, &O::sync_key_limits, false,
               "push each account's limit and period onto its key, so OpenRouter stops a worker that bypasses the ledger"),
      string_key("openrouter", "revoke", O_, &O::revoke, "disable", "`\"disable\"`",
                 "what happens to the keys of blocked or removed accounts: `\"disable\"` or `\"delete\"`", one_of({"disable", "delete"})),
      bool_key("openrouter", "disable_unowned_keys", O_, &O::disable_unowned_keys, false, "disable keys no account owns (key sprawl)"),
      string_key("openrouter", "app_url", O_, &O::app_url, "", "none", "the `HTTP-Referer` attribution header"),
      string_key("openrouter", "app_title", O_, &O::app_title, "", "none",
                 "the `X-OpenRouter-Title` attribution header; provisioned keys are named `<app_title>:<account>`", {}, 256),
  };
}

std::vector<ConfigKey> other_keys() {
  using R = ReportsSection;
  return {
      doc_key("tiers", "NAME", "none",
              "`models` (a list, or null = all), `fallback`, `downgrade_at_percent` with `downgrade_to`; every model named must have "
              "a price (`init` warns, `doctor` fails)"),
      doc_key("prices", "MODEL", "none",
              "`prompt_usd_per_mtok`, `completion_usd_per_mtok`, `request_usd` (they win over OpenRouter's model list)"),
      doc_key("accounts[]", "", "none",
              "`id`, `limit_usd`, `period` (none/daily/weekly/monthly; left out = none, a lifetime budget, which `init` points out "
              "per account and `status` shows as `none (lifetime)`), `parent`, `tier`, `key_hash` (the account's own OpenRouter "
              "key: see \"Reconciliation per key\"), `scope` (`\"global\"`, the default with a `global` section, or `\"local\"`), "
              "`models` (its own list, or null = all, for it and its descendants that set no tier or list; replaces its tier's) and "
              "`fallback` (with `models` or a `tier`: replaces the tier's), `enforce` (`\"hard\"`, or `\"soft\"`: its own limit "
              "never denies, its ancestors' still do), `rpm`, `tpm`, `max_concurrent` (requests and tokens per minute, open holds: "
              "positive integers up to 1,000,000, 1,000,000,000 and 16,383; absent = no limit); see \"Governance\""),
      string_key("reports", "dir", &Config::reports, &R::dir, "reports", "`reports`", "where the sidecar writes the team report; relative to the config file"),
      uint_key("reports", "interval_s", &Config::reports, &R::interval_s, 300, 10, 86400 * 7, "s", "how often the sidecar writes it"),
      formats_key(),
      string_key("metrics", "listen", &Config::metrics, &MetricsSection::listen, "", "none",
                 "`127.0.0.1:PORT` for Prometheus (loopback only)", check_listen),
  };
}

void check_store_uri(const std::string& value, const std::string& where) {
  if (value.rfind("postgresql://", 0) != 0 && value.rfind("postgres://", 0) != 0)
    fail(where, "expected a libpq URI such as \"postgresql:///ledger?host=/run/postgresql\"");
  const size_t at = value.find('@'), scheme_end = value.find("://") + 3;
  const size_t colon = value.find(':', scheme_end);
  if (at != std::string::npos && colon != std::string::npos && colon < at)
    fail(where, "holds a password: put it in the variable named by store_password_env (or store_password_file), never in the config");
  if (value.find("password=") != std::string::npos)
    fail(where, "holds a password: put it in the variable named by store_password_env (or store_password_file), never in the config");
}

void check_host_id(const std::string& value, const std::string& where) {
  if (!valid_account_name(value)) fail(where, "a host id is 1-63 characters of [A-Za-z0-9._:@-]");
}

std::vector<ConfigKey> global_keys() {
  using G = GlobalSection;
  const auto G_ = &Config::global;
  return {
      string_key("global", "store", G_, &G::store, "", "required",
                 "global mode: the PostgreSQL (15+) that holds the global budgets, as a libpq URI without a password; with this "
                 "section every account is global unless it says `\"scope\": \"local\"`",
                 check_store_uri),
      string_key("global", "store_password_env", G_, &G::store_password_env, "LEDGER_STORE_PASSWORD", "`LEDGER_STORE_PASSWORD`",
                 "the environment variable that holds the store's password (unset = no password)", check_env_name, 128),
      string_key("global", "store_password_file", G_, &G::store_password_file, "", "none",
                 "a file that holds the store's password instead; relative to the config file"),
      string_key("global", "host_id", G_, &G::host_id, "", "the hostname",
                 "this host's name in the store; two live hosts cannot share one", check_host_id, 63),
      uint_key("global", "lease_ttl_s", G_, &G::lease_ttl_s, 30, 5, 3600, "s",
               "how long a lease lasts without a renewal: a host that cannot reach the store admits against its leases until "
               "then (less a skew margin), then denies; a dead host's leases are charged in full after it"),
      uint_key("global", "refresh_interval_ms", G_, &G::refresh_interval_ms, 500, 50, 60000, "ms",
               "how often the sidecar reports, renews, grows and gives back its leases"),
  };
}

// HOST:PORT where port 0 asks for any free port (the proxy logs the one it got).
void check_listen_any_port(const std::string& value, const std::string& where) {
  const auto colon = value.rfind(':');
  if (colon != std::string::npos && value.substr(colon + 1) == "0") return check_listen(value.substr(0, colon) + ":1", where);
  check_listen(value, where);
}

std::vector<ConfigKey> proxy_keys() {
  using P = ProxySection;
  const auto P_ = &Config::proxy;
  return {
      string_key("proxy", "listen", P_, &P::listen, "127.0.0.1:8788", "`127.0.0.1:8788`",
                 "ledger-proxy: where it listens (HOST:PORT; port 0: any free one, logged); another interface than loopback only "
                 "when named here", check_listen_any_port),
      string_key("proxy", "upstream_key_env", P_, &P::upstream_key_env, "OPENROUTER_API_KEY", "`OPENROUTER_API_KEY`",
                 "the environment variable that holds the OpenRouter key the proxy sends upstream (workers never see it)",
                 check_env_name, 128),
      string_key("proxy", "upstream_key_file", P_, &P::upstream_key_file, "", "none",
                 "a file that holds that key instead; relative to the config file"),
      uint_key("proxy", "max_tokens_default", P_, &P::max_tokens_default, 4096, 1, 1'000'000, "tokens",
               "put into a request that sets no `max_tokens`, so that its hold is an upper bound of its cost"),
      uint_key("proxy", "max_body_bytes", P_, &P::max_body_bytes, 4'194'304, 1024, 64u << 20, "bytes",
               "a larger request body is refused with 413"),
      uint_key("proxy", "max_concurrent", P_, &P::max_concurrent, 1024, 1, 16384, "",
               "requests and streams in flight at once; more are refused with 503 (retryable)"),
      uint_key("proxy", "header_timeout_ms", P_, &P::header_timeout_ms, 10'000, 100, 600'000, "ms",
               "a client must send its whole request within this"),
      uint_key("proxy", "idle_timeout_ms", P_, &P::idle_timeout_ms, 60'000, 100, 3'600'000, "ms",
               "a keep-alive connection without a request is closed after this"),
      uint_key("proxy", "upstream_timeout_ms", P_, &P::upstream_timeout_ms, 600'000, 1000, 3'600'000, "ms",
               "the longest upstream exchange, a stream included"),
      uint_key("proxy", "drain_timeout_ms", P_, &P::drain_timeout_ms, 30'000, 0, 600'000, "ms",
               "on SIGTERM, in-flight requests get this long to finish (then they are cut and settled)"),
  };
}

}  // namespace

const std::vector<ConfigKey>& config_keys() {
  static const std::vector<ConfigKey> keys = [] {
    std::vector<ConfigKey> all = ledger_keys();
    for (auto&& part : {openrouter_keys(), other_keys(), global_keys(), proxy_keys()}) all.insert(all.end(), part.begin(), part.end());
    return all;
  }();
  return keys;
}

void read_section(const std::string& section, const json::value* value, Config& config) {
  std::vector<std::string> allowed;
  for (const ConfigKey& k : config_keys())
    if (k.section == section && k.read) allowed.push_back(k.name);
  const json::object* o = value != nullptr ? &object_with(*value, section, allowed) : nullptr;
  for (const ConfigKey& k : config_keys())
    if (k.section == section && k.read) k.read(config, o != nullptr ? o->if_contains(k.name) : nullptr, section + "." + k.name);
}

std::string config_reference() {
  std::string out = "| key | default | meaning |\n|---|---|---|\n";
  for (const ConfigKey& k : config_keys()) {
    const std::string key = k.name.empty() ? k.section : k.section + "." + k.name;
    out += "| `" + key + "` | " + k.default_text + " | " + k.help + (k.range.empty() ? "" : " (" + k.range + ")") + " |\n";
  }
  return out;
}

}  // namespace ledger::admin
