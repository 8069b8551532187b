// Key lifecycle end to end against the emulator: provision, rotate (also failing half-way),
// revoke blocked and removed accounts, list with owners; a new key is printed once, to stdout only.
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <cctype>
#include <map>

#include "emulator_process.hpp"
#include "openrouter/keys.hpp"
#include "ledger/store.hpp"
#include "process.hpp"

using namespace ledger;
using ledger_test::run;

namespace {

struct Setup : ledger_test::EmulatorLedger {
  explicit Setup(const std::string& revoke = "disable") { write(true, revoke); }
  void write(bool with_bob, const std::string& revoke = "disable") {
    ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "max_accounts": 64, "max_reservations": 64, "max_processes": 32},
      "openrouter": {"base_url": ")" + emu.base() + R"(", "management_key_file": ")" + emu.key_file() +
                                        R"(", "timeout_ms": 2000, "app_title": "acme", "revoke": ")" + revoke + R"("},
      "accounts": [{"id": "team", "limit_usd": "100", "period": "monthly"},
                   {"id": "alice", "parent": "team", "limit_usd": "10", "period": "daily"})" +
                                        (with_bob ? R"(, {"id": "bob", "parent": "team", "limit_usd": "20", "period": "weekly"})" : "") + "]}");
    REQUIRE(run({LEDGERCTL_PATH, "--config", config, "init"}).exit_code == 0);
  }
  std::map<std::string, std::string> bindings() {
    std::vector<std::pair<std::string, std::string>> b;
    REQUIRE(store_key_bindings(ledger_dir, &b) == Code::kOk);
    return {b.begin(), b.end()};
  }
  ledger_test::Result keys(std::vector<std::string> args) {
    std::vector<std::string> argv{LEDGERCTL_PATH, "--config", config, "keys"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run(argv);
    CHECK(r.err.find("sk-or-v1-") == std::string::npos);  // keys go to stdout only
    return r;
  }
  int completion_status(const std::string& secret) {
    openrouter::ClientOptions o = emu.options(secret);
    openrouter::Client c(o);
    openrouter::KeyInfo k;
    bool management = false;
    const auto e = c.current_key(&k, &management);
    return e ? e.http_status : 200;
  }
};

std::map<std::string, std::string> printed_keys(const std::string& out) {
  std::map<std::string, std::string> keys;
  size_t at = 0;
  while (at < out.size()) {
    const size_t end = out.find('\n', at);
    const std::string line = out.substr(at, end - at);
    const size_t colon = line.find(": sk-or-v1-");
    if (colon != std::string::npos) keys[line.substr(0, colon)] = line.substr(colon + 2);
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return keys;
}

}  // namespace

TEST_CASE("provision makes one key per account, shown once, bound in the store", "[keys]") {
  Setup s;
  auto r = s.keys({"provision"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto keys = printed_keys(r.out);
  REQUIRE(keys.size() == 3);
  const auto bound = s.bindings();
  REQUIRE(bound.size() == 3);
  openrouter::KeyInfo alice;
  REQUIRE_FALSE(s.client.get_key(bound.at("alice"), &alice));
  CHECK(alice.name == "acme:alice");
  CHECK(alice.limit_nanousd == 10'000'000'000);
  CHECK(alice.limit_reset == "daily");
  CHECK(s.completion_status(keys.at("alice")) == 200);
  r = s.keys({"provision"});
  CHECK(r.exit_code == 0);
  CHECK(printed_keys(r.out).empty());
  CHECK(r.err.find("every account already has a key") != std::string::npos);
  r = s.keys({"list"});
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("acme:alice") != std::string::npos);
  CHECK(r.out.find(" alice\n") != std::string::npos);  // the owner column
  CHECK(r.out.find("sk-or-v1-") == std::string::npos);
}

TEST_CASE("rotate: new key, rebind, old key gone; a failure says what state things are in", "[keys]") {
  Setup s;
  REQUIRE(s.keys({"provision"}).exit_code == 0);
  const std::string old_hash = s.bindings().at("alice");
  auto r = s.keys({"rotate", "alice"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto fresh = printed_keys(r.out);
  REQUIRE(fresh.count("alice") == 1);
  const std::string new_hash = s.bindings().at("alice");
  CHECK(new_hash != old_hash);
  openrouter::KeyInfo k;
  CHECK(s.client.get_key(old_hash, &k).kind == openrouter::ErrorKind::kNotFound);
  CHECK(s.completion_status(fresh.at("alice")) == 200);

  // Creating fails: nothing changed.
  s.emu.admin("/__emulator/faults", R"({"path": "/api/v1/keys", "method": "POST", "status": 500, "count": 4})");  // = attempts
  r = s.keys({"rotate", "alice"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("failed before anything changed") != std::string::npos);
  CHECK(s.bindings().at("alice") == new_hash);
  // Deleting the old key fails: the account already uses the new one, and we are told to retry.
  s.emu.admin("/__emulator/faults", R"({"path": "/api/v1/keys/)" + new_hash + R"(", "method": "DELETE", "status": 500, "count": 8})");
  r = s.keys({"rotate", "alice"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("now uses the new key") != std::string::npos);
  CHECK(r.err.find("ledgerctl keys delete " + new_hash) != std::string::npos);
  CHECK(printed_keys(r.out).size() == 1);  // the new key is still shown, once
  CHECK(s.bindings().at("alice") != new_hash);
  REQUIRE_FALSE(s.client.get_key(new_hash, &k));  // the old one still exists
  CHECK(s.keys({"rotate", "nobody"}).exit_code == 2);
}

TEST_CASE("blocked and removed accounts lose their keys at OpenRouter", "[keys]") {
  Setup s;
  const auto keys = printed_keys(s.keys({"provision"}).out);
  REQUIRE(keys.size() == 3);
  // Blocked while OpenRouter was failing: the reconcile disables the key later.
  s.emu.admin("/__emulator/faults", R"({"path": "/api/v1/keys/", "method": "GET", "status": 500, "count": 4})");  // = attempts
  REQUIRE(run({LEDGERCTL_PATH, "--config", s.config, "block", "alice"}).exit_code == 0);
  CHECK(s.completion_status(keys.at("alice")) == 200);
  auto r = run({LEDGERCTL_PATH, "--config", s.config, "reconcile"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("disabled the key") != std::string::npos);
  CHECK(s.completion_status(keys.at("alice")) == 401);
  CHECK(s.completion_status(keys.at("bob")) == 200);
  // Removed from the config: blocked locally (init) and its key disabled (reconcile).
  s.write(false);
  r = run({LEDGERCTL_PATH, "--config", s.config, "reconcile"});
  REQUIRE(r.exit_code == 0);
  CHECK(s.completion_status(keys.at("bob")) == 401);
  // Again: nothing more to do.
  r = run({LEDGERCTL_PATH, "--config", s.config, "reconcile"});
  CHECK(r.out.find("disabled the key") == std::string::npos);
}

TEST_CASE("block and unblock take the account's key along at once", "[keys]") {
  Setup s;
  const auto keys = printed_keys(s.keys({"provision"}).out);
  REQUIRE(keys.size() == 3);
  auto r = run({LEDGERCTL_PATH, "--config", s.config, "block", "alice"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("disabled the key") != std::string::npos);
  CHECK(s.completion_status(keys.at("alice")) == 401);  // no reconcile needed
  CHECK(s.completion_status(keys.at("bob")) == 200);
  r = run({LEDGERCTL_PATH, "--config", s.config, "unblock", "alice"});
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("enabled again the key") != std::string::npos);
  CHECK(s.completion_status(keys.at("alice")) == 200);
  // A reconcile leaves an unblocked account's key alone.
  REQUIRE(run({LEDGERCTL_PATH, "--config", s.config, "reconcile"}).exit_code == 0);
  CHECK(s.completion_status(keys.at("alice")) == 200);
  // OpenRouter down: block still blocks (and says the reconcile will finish); unblock says what to do.
  s.emu.admin("/__emulator/faults", R"({"path": "/api/v1/keys", "status": 500, "count": 1000})");
  r = run({LEDGERCTL_PATH, "--config", s.config, "block", "alice"});
  CHECK(r.exit_code == 0);
  CHECK(r.err.find("warning") != std::string::npos);
  CHECK(r.err.find("next reconcile") != std::string::npos);
  r = run({LEDGERCTL_PATH, "--config", s.config, "unblock", "alice"});
  CHECK(r.exit_code == 2);  // a runtime error: the key is still disabled
  CHECK(r.err.find("unblocked locally") != std::string::npos);
  CHECK(r.err.find("ledgerctl unblock alice") != std::string::npos);
  CHECK(r.err.find("sk-or-v1-") == std::string::npos);
}

TEST_CASE("with revoke \"delete\" the key is deleted and unbound", "[keys]") {
  Setup s("delete");
  const auto keys = printed_keys(s.keys({"provision"}).out);
  const std::string hash = s.bindings().at("bob");
  s.write(false, "delete");
  const auto r = run({LEDGERCTL_PATH, "--config", s.config, "reconcile"});
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("deleted the key") != std::string::npos);
  openrouter::KeyInfo k;
  CHECK(s.client.get_key(hash, &k).kind == openrouter::ErrorKind::kNotFound);
  CHECK(s.bindings().count("bob") == 0);
}

TEST_CASE("keys create prints the key once, on stdout", "[keys]") {
  Setup s;
  auto r = s.keys({"create", "ci-bot", "--limit", "5", "--reset", "weekly"});
  REQUIRE(r.exit_code == 0);
  CHECK(printed_keys(r.out).count("ci-bot") == 1);
  CHECK(r.err.find("shown once") != std::string::npos);
  CHECK(s.keys({"create", "x"}).exit_code == 1);                         // --limit required
  CHECK(s.keys({"create", "x", "--limit", "-1"}).exit_code == 1);
  CHECK(s.keys({"create", "x", "--limit", "1", "--reset", "yearly"}).exit_code == 1);
  r = s.keys({"list"});
  CHECK(r.out.find("(none: key sprawl)") != std::string::npos);
}

TEST_CASE("the report's key dashboard shows owners, usage and unowned spend", "[keys][reports]") {
  Setup s;
  REQUIRE(s.keys({"provision"}).exit_code == 0);
  openrouter::KeyInfo stray;
  std::string secret;
  REQUIRE_FALSE(s.client.create_key("stray-script", std::nullopt, "", &stray, &secret));
  s.emu.admin("/__emulator/usage", R"({"hash": ")" + stray.hash + R"(", "cost_usd": "1.25"})");
  s.emu.admin("/__emulator/usage", R"({"hash": ")" + s.bindings().at("alice") + R"(", "cost_usd": "0.5"})");
  const auto r = run({LEDGERCTL_PATH, "--config", s.config, "report", "--format", "json"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const boost::json::value j = boost::json::parse(r.out);
  const auto& keys = j.at("keys").as_array();
  REQUIRE(keys.size() == 4);
  CHECK(keys[0].at("name").as_string() == "stray-script");  // sorted by usage
  CHECK(keys[0].at("owner").as_string() == "");
  CHECK(keys[0].at("usage_nanousd").as_int64() == 1'250'000'000);
  CHECK(keys[1].at("owner").as_string() == "alice");
  CHECK(j.at("keys_usage_nanousd").as_int64() == 1'750'000'000);
  bool unowned = false;
  for (const auto& a : j.at("anomalies").as_array())
    unowned = unowned || (a.at("kind").as_string() == "unowned_key_spend" && a.at("account").as_string() == "stray-script");
  CHECK(unowned);
  CHECK(r.out.find("sk-or-v1-") == std::string::npos);
}

// The systemd unit runs in /: a relative management_key_file is found next to the config, whatever
// the current directory is (the test runs ledgerctl from the build directory).
TEST_CASE("a relative management_key_file is read from the config file's directory", "[keys]") {
  ledger_test::EmulatorLedger s;
  ledger_test::write_file(s.dir.path() + "/mgmt.key", ledger_test::read_file(s.emu.key_file()));
  ledger_test::write_file(s.config, R"({"ledger": {"dir": "ledger", "max_accounts": 64, "max_reservations": 64, "max_processes": 32},
    "openrouter": {"base_url": ")" + s.emu.base() + R"(", "management_key_file": "mgmt.key", "timeout_ms": 2000},
    "accounts": [{"id": "team", "limit_usd": "100", "period": "monthly"}]})");
  REQUIRE(run({LEDGERCTL_PATH, "--config", s.config, "init"}).exit_code == 0);
  REQUIRE(std::filesystem::current_path() != std::filesystem::path(s.dir.path()));
  const auto r = run({LEDGERCTL_PATH, "--config", s.config, "keys", "list"});
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("NAME") != std::string::npos);
  CHECK(r.err.find("sk-or-v1-") == std::string::npos);
}

TEST_CASE("keys list --json has full hashes, amounts in nano-USD and USD, and owners", "[keys]") {
  Setup s;
  REQUIRE(s.keys({"provision"}).exit_code == 0);
  openrouter::KeyInfo stray;
  std::string secret;
  REQUIRE_FALSE(s.client.create_key("stray-script", std::nullopt, "", &stray, &secret));
  s.emu.admin("/__emulator/usage", R"({"hash": ")" + s.bindings().at("alice") + R"(", "cost_usd": "0.5"})");
  const auto r = s.keys({"list", "--json"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("sk-or-v1-") == std::string::npos);
  const boost::json::value j = boost::json::parse(r.out);
  CHECK(j.at("version").as_int64() == 1);
  std::map<std::string, boost::json::object> by_name;
  for (const auto& k : j.at("keys").as_array()) by_name[std::string(k.at("name").as_string())] = k.as_object();
  REQUIRE(by_name.size() == 4);
  const auto& alice = by_name.at("acme:alice");
  CHECK(alice.at("hash").as_string() == s.bindings().at("alice"));  // all 64 hex digits
  CHECK(alice.at("owner").as_string() == "alice");
  CHECK(alice.at("usage_nanousd").as_int64() == 500'000'000);
  CHECK(alice.at("usage_usd").as_string() == "0.50");
  CHECK(alice.at("limit_nanousd").as_int64() == 10'000'000'000);
  CHECK(alice.at("limit_usd").as_string() == "10.00");
  CHECK(alice.at("limit_reset").as_string() == "daily");
  CHECK_FALSE(alice.at("disabled").as_bool());
  const auto& unowned = by_name.at("stray-script");
  CHECK(unowned.at("hash").as_string() == stray.hash);
  CHECK(unowned.at("owner").is_null());
  CHECK(unowned.at("limit_nanousd").is_null());
  CHECK(unowned.at("limit_reset").is_null());
  CHECK(s.keys({"list", "--csv"}).exit_code == 1);
}

TEST_CASE("keys delete takes the hash prefix keys list shows", "[keys]") {
  Setup s;
  REQUIRE(s.keys({"provision"}).exit_code == 0);
  const std::string bob = s.bindings().at("bob");
  const std::string shown = bob.substr(0, 12);
  REQUIRE(s.keys({"list"}).out.find(shown + "...") != std::string::npos);
  auto r = s.keys({"delete", shown});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("deleted key acme:bob (" + bob + ")") != std::string::npos);
  openrouter::KeyInfo k;
  CHECK(s.client.get_key(bob, &k).kind == openrouter::ErrorKind::kNotFound);
  CHECK(s.bindings().count("bob") == 0);  // unbound
  CHECK(s.bindings().count("alice") == 1);
  // Too short, not hex: a usage error that does not echo the argument (it may be a key).
  r = s.keys({"delete", s.bindings().at("alice").substr(0, 5)});
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("at least 6 hex digits") != std::string::npos);
  r = s.keys({"delete", "sk-or-v1-example-not-a-key"});
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("sk-or") == std::string::npos);
  // A prefix no key has: said so, nothing deleted.
  std::vector<openrouter::KeyInfo> keys;
  REQUIRE_FALSE(s.client.list_keys(&keys));
  std::string none = "000000";
  for (bool taken = true; taken;) {
    taken = false;
    for (const auto& key : keys) taken = taken || key.hash.rfind(none, 0) == 0;
    if (taken) none[5] = static_cast<char>(none[5] + 1);
  }
  r = s.keys({"delete", none});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("no key's hash starts with " + none) != std::string::npos);
  std::vector<openrouter::KeyInfo> after;
  REQUIRE_FALSE(s.client.list_keys(&after));
  CHECK(after.size() == keys.size());
  // The full hash still works, in capitals too.
  std::string alice = s.bindings().at("alice");
  for (char& c : alice) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  CHECK(s.keys({"delete", alice}).exit_code == 0);
  CHECK(s.bindings().count("alice") == 0);
}

TEST_CASE("a hash prefix several keys share is refused, naming each of them", "[keys]") {
  std::vector<openrouter::KeyInfo> keys(3);
  keys[0].name = "acme:alice";
  keys[0].hash = "abcdef0123" + std::string(54, '1');
  keys[1].name = "acme:bob";
  keys[1].hash = "abcdef4567" + std::string(54, '2');
  keys[2].name = "ci-bot";
  keys[2].hash = "ffffff0000" + std::string(54, '3');
  std::string error;
  CHECK(admin::resolve_key_prefix(keys, "abcdef", &error) == nullptr);
  CHECK(error.find("ambiguous") != std::string::npos);
  CHECK(error.find("acme:alice (abcdef012311...)") != std::string::npos);
  CHECK(error.find("acme:bob (abcdef456722...)") != std::string::npos);
  CHECK(error.find("ci-bot") == std::string::npos);
  CHECK(admin::resolve_key_prefix(keys, "abcdef4", &error) == &keys[1]);
  CHECK(admin::resolve_key_prefix(keys, "ffffff", &error) == &keys[2]);
  CHECK(admin::resolve_key_prefix(keys, "123456", &error) == nullptr);
  CHECK(error.find("no key's hash starts with 123456") != std::string::npos);
}
