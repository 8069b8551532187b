// Config validation: every kind of mistake gives one clear line that names the key, and a bad
// config touches nothing (ledgerctl exits 1 before opening the ledger).
#include <catch2/catch.hpp>
#include <filesystem>

#include "core/config.hpp"
#include "process.hpp"
#include "test_util.hpp"

using ledger::admin::parse_config;
using ledger_test::TempDir;

namespace {

std::string with_accounts(const std::string& accounts) {
  return R"({"ledger": {"dir": "ledger"}, "accounts": )" + accounts + "}";
}

}  // namespace

TEST_CASE("the documented example config parses", "[config]") {
  std::string error;
  const auto config = ledger::admin::load_config(std::string(LEDGER_SOURCE_DIR) + "/examples/config/team.json", &error);
  INFO(error);
  REQUIRE(config.has_value());
  CHECK(config->accounts.size() == 5);
  CHECK(config->accounts[0].id == "eng");  // parents first
  CHECK(config->accounts[1].limit_nanousd == 50'000'000'000);
  CHECK(config->tiers.size() == 4);
  CHECK(config->prices.size() == 5);
  CHECK(config->prices[0].model == "openai/gpt-4o-mini");  // file order
  CHECK(config->prices[0].completion_nanousd_per_mtok == 600'000'000);
  CHECK(config->openrouter.sync_key_limits);
  CHECK(std::filesystem::path(config->ledger.dir).is_absolute());
}

TEST_CASE("amounts are exact whether strings or numbers", "[config]") {
  std::string error;
  const auto c = parse_config(with_accounts(R"([{"id": "a", "limit_usd": "0.1"}, {"id": "b", "limit_usd": 0.1},
                                               {"id": "c", "limit_usd": 7}, {"id": "d", "limit_usd": "12.000000001"}])"),
                              "/tmp/x.json", &error);
  INFO(error);
  REQUIRE(c.has_value());
  CHECK(c->accounts[0].limit_nanousd == 100'000'000);
  CHECK(c->accounts[1].limit_nanousd == 100'000'000);
  CHECK(c->accounts[2].limit_nanousd == 7'000'000'000);
  CHECK(c->accounts[3].limit_nanousd == 12'000'000'001);
  CHECK(c->ledger.dir == "/tmp/ledger");  // relative to the config file
}

// The systemd unit runs in /: a relative path must not depend on the current directory.
TEST_CASE("relative paths are relative to the config file, the management key file too", "[config]") {
  std::string error;
  const auto c = parse_config(R"({"ledger": {"dir": "data/acme"}, "reports": {"dir": "../reports"},
                                  "openrouter": {"management_key_file": "secrets/mgmt.key"}})",
                              "/etc/ledger/acme.json", &error);
  INFO(error);
  REQUIRE(c.has_value());
  CHECK(c->ledger.dir == "/etc/ledger/data/acme");
  CHECK(c->reports.dir == "/etc/reports");
  CHECK(c->openrouter.management_key_file == "/etc/ledger/secrets/mgmt.key");
  const auto absolute = parse_config(R"({"ledger": {"dir": "x"}, "openrouter": {"management_key_file": "/run/keys/k"}})",
                                     "/etc/ledger/acme.json", &error);
  REQUIRE(absolute.has_value());
  CHECK(absolute->openrouter.management_key_file == "/run/keys/k");
  const auto none = parse_config(R"({"ledger": {"dir": "x"}, "openrouter": {}})", "/etc/ledger/acme.json", &error);
  REQUIRE(none.has_value());
  CHECK(none->openrouter.management_key_file.empty());  // the env variable is used
}

TEST_CASE("every bad config names what is wrong", "[config]") {
  struct Case {
    const char* name;
    std::string text;
    const char* expected;  // must appear in the error
  };
  const std::vector<Case> cases = {
      {"not JSON", "{ledger", "not valid JSON"},
      {"no ledger", R"({"accounts": []})", "ledger: required"},
      {"unknown top-level key", R"({"ledger": {"dir": "x"}, "acounts": []})", "acounts: unknown key"},
      {"unknown nested key", R"({"ledger": {"dir": "x", "flush_ms": 5}})", "ledger.flush_ms: unknown key"},
      {"wrong type", R"({"ledger": {"dir": 5}})", "ledger.dir: expected a string"},
      {"out of range", R"({"ledger": {"dir": "x", "flush_interval_ms": 0}})", "ledger.flush_interval_ms: must be between"},
      {"negative limit", with_accounts(R"([{"id": "a", "limit_usd": "-5"}])"), "accounts[0] (\"a\").limit_usd: must not be negative"},
      {"bad amount text", with_accounts(R"([{"id": "a", "limit_usd": "12,50"}])"), "limit_usd: not a USD amount"},
      {"too many decimals", with_accounts(R"([{"id": "a", "limit_usd": "0.0000000001"}])"), "not a USD amount"},
      {"bad period", with_accounts(R"([{"id": "a", "limit_usd": 1, "period": "yearly"}])"), "period: expected none, daily, weekly or monthly"},
      {"missing limit", with_accounts(R"([{"id": "a"}])"), "limit_usd: required"},
      {"bad account id", with_accounts(R"([{"id": "a b", "limit_usd": 1}])"), "accounts[0].id"},
      {"unknown parent", with_accounts(R"([{"id": "a", "parent": "z", "limit_usd": 1}])"), "parent: unknown account \"z\""},
      {"duplicate", with_accounts(R"([{"id": "a", "limit_usd": 1}, {"id": "a", "limit_usd": 2}])"), "duplicate account"},
      {"unknown grandparent, child first", with_accounts(R"([{"id": "a", "parent": "b", "limit_usd": 1},
                                                           {"id": "b", "parent": "ghost", "limit_usd": 1}])"),
       "accounts[1] (\"b\").parent: unknown account \"ghost\""},
      {"cycle", with_accounts(R"([{"id": "a", "parent": "b", "limit_usd": 1}, {"id": "b", "parent": "a", "limit_usd": 1}])"),
       "accounts[0] (\"a\").parent: cycle: a -> b -> a"},
      {"cycle above an account", with_accounts(R"([{"id": "x", "parent": "b", "limit_usd": 1}, {"id": "b", "parent": "c", "limit_usd": 1},
                                                  {"id": "c", "parent": "b", "limit_usd": 1}])"),
       "accounts[1] (\"b\").parent: cycle: b -> c -> b"},
      {"self parent", with_accounts(R"([{"id": "a", "parent": "a", "limit_usd": 1}])"), "cycle: a -> a"},
      {"depth > 4", with_accounts(R"([{"id": "a", "limit_usd": 1}, {"id": "b", "parent": "a", "limit_usd": 1},
                                      {"id": "c", "parent": "b", "limit_usd": 1}, {"id": "d", "parent": "c", "limit_usd": 1},
                                      {"id": "e", "parent": "d", "limit_usd": 1}])"), "deeper than 4"},
      {"unknown tier", with_accounts(R"([{"id": "a", "tier": "gold", "limit_usd": 1}])"), "unknown tier \"gold\""},
      {"key instead of hash", with_accounts(R"([{"id": "a", "limit_usd": 1, "key_hash": "sk-or-v1-abc"}])"), "key_hash: expected the key's 64-hex-digit hash"},
      {"key in env name", R"({"ledger": {"dir": "x"}, "openrouter": {"management_key_env": "sk-or-v1-123"}})", "must be the NAME of an environment variable"},
      {"bad price", R"({"ledger": {"dir": "x"}, "prices": {"m/x": {"prompt_usd_per_mtok": "a", "completion_usd_per_mtok": 1}}})", "prices.m/x.prompt_usd_per_mtok"},
      {"bad metrics", R"({"ledger": {"dir": "x"}, "metrics": {"listen": "nowhere"}})", "metrics.listen"},
      {"more accounts than max_accounts", R"({"ledger": {"dir": "x", "max_accounts": 1}, "accounts": [{"id": "a", "limit_usd": 1},
                                                                                                  {"id": "b", "limit_usd": 1}]})",
       "ledger.max_accounts: 1 is fewer than the 2 accounts listed"},
      {"tier without models", R"({"ledger": {"dir": "x"}, "tiers": {"free": {}}})", "tiers.free.models: required"},
      // DESIGN 13
      {"models not a list", with_accounts(R"([{"id": "a", "limit_usd": 1, "models": "openai/gpt-4o"}])"),
       "accounts[0] (\"a\").models: expected an array of model ids or null"},
      {"a model with a space", with_accounts(R"([{"id": "a", "limit_usd": 1, "models": ["gpt 4"]}])"), "accounts[0] (\"a\").models[0]"},
      {"fallback with nothing to fall back from", with_accounts(R"([{"id": "a", "limit_usd": 1, "fallback": "openai/gpt-4o"}])"),
       "accounts[0] (\"a\").fallback: a fallback replaces"},
      {"enforce neither", with_accounts(R"([{"id": "a", "limit_usd": 1, "enforce": "strict"}])"),
       "accounts[0] (\"a\").enforce: expected \"hard\" or \"soft\""},
      {"rpm zero", with_accounts(R"([{"id": "a", "limit_usd": 1, "rpm": 0}])"), "accounts[0] (\"a\").rpm: must be between 1 and 1000000"},
      {"tpm too large", with_accounts(R"([{"id": "a", "limit_usd": 1, "tpm": 2000000000}])"), "accounts[0] (\"a\").tpm: must be between"},
      {"max_concurrent negative", with_accounts(R"([{"id": "a", "limit_usd": 1, "max_concurrent": -1}])"), "accounts[0] (\"a\").max_concurrent"},
      {"rules table too large", R"({"ledger": {"dir": "x", "max_account_rules": 70000}})", "ledger.max_account_rules: must be between"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    std::string error;
    const auto config = parse_config(c.text, "/etc/ledger/acme.json", &error);
    CHECK_FALSE(config.has_value());
    CHECK(error.find(c.expected) != std::string::npos);
    CHECK(error.rfind("/etc/ledger/acme.json: ", 0) == 0);  // starts with the file
    CHECK(error.find('\n') == std::string::npos);            // one line
  }
}

// Found by fuzz/fuzz_config: JSON escapes put any character into a key or a value, and the error
// quoted it raw, so "ope\nrouter" made the one-line error two lines (and \r or an escape sequence
// could rewrite the terminal line or the sidecar's log line).
TEST_CASE("an error that quotes the file's text is still one printable line", "[config]") {
  struct Case {
    std::string text;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {R"({"ledger": {"dir": "x"}, "ope\nrouter": {}})", "ope\\nrouter: unknown key"},
      {R"({"ledger": {"dir": "x", "flush\r_ms": 5}})", "ledger.flush\\r_ms: unknown key"},
      {with_accounts(R"([{"id": "a\tb", "limit_usd": 1}])"), "\"a\\tb\" is not an account id"},
      {with_accounts(R"([{"id": "a", "limit_usd": 1, "period": "dai\u001b[2Kly"}])"), "got \"dai\\x1b[2Kly\""},
      {with_accounts(R"([{"id": "a", "tier": "g\u0085", "limit_usd": 1}])"), "unknown tier \"g\\u0085\""},
      {R"({"ledger": {"dir": "x"}, "tiers": {"x\u007fy": {"models": null}}})", "tiers.x\\x7fy"},
  };
  for (const Case& c : cases) {
    INFO(c.text);
    std::string error;
    CHECK_FALSE(parse_config(c.text, "/etc/ledger/acme.json", &error).has_value());
    INFO(error);
    CHECK(error.find(c.expected) != std::string::npos);
    for (const char ch : error) CHECK((static_cast<unsigned char>(ch) >= 0x20 && ch != 0x7f));
  }
}

TEST_CASE("ledgerctl refuses a bad config with exit 1 and touches nothing", "[config][cli]") {
  TempDir dir;
  const std::string config = dir.path() + "/bad.json";
  ledger_test::write_file(config, R"({"ledger": {"dir": "ledger"}, "accounts": [{"id": "a", "limit_usd": "-1"}]})");
  const auto r = ledger_test::run({LEDGERCTL_PATH, "--config", config, "init"});
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("limit_usd: must not be negative") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.path() + "/ledger"));
}

// A child listed before its parent whose own parent is unknown once crashed the chain walk.
TEST_CASE("an unknown grandparent is exit 1 naming the key, not a crash", "[config][cli]") {
  TempDir dir;
  const std::string config = dir.path() + "/bad.json";
  ledger_test::write_file(config, R"({"ledger": {"dir": "ledger"}, "accounts": [{"id": "a", "parent": "b", "limit_usd": 1},
                                     {"id": "b", "parent": "ghost", "limit_usd": 1}]})");
  for (const char* command : {"init", "status", "doctor"}) {
    INFO(command);
    const auto r = ledger_test::run({LEDGERCTL_PATH, "--config", config, command});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("accounts[1] (\"b\").parent: unknown account \"ghost\"") != std::string::npos);
  }
  const auto sidecar = ledger_test::run({SIDECAR_PATH, "--config", config, "--once"});
  CHECK(sidecar.exit_code == 1);
  CHECK(sidecar.err.find("unknown account \"ghost\"") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.path() + "/ledger"));
}

TEST_CASE("the README's configuration reference is the config table's", "[config]") {
  const std::string readme = ledger_test::read_file(std::string(LEDGER_SOURCE_DIR) + "/README.md");
  const size_t begin_marker = readme.find("<!-- config-reference begin");
  const size_t end = readme.find("<!-- config-reference end -->");
  REQUIRE(begin_marker != std::string::npos);
  REQUIRE(end != std::string::npos);
  const size_t begin = readme.find('\n', begin_marker) + 1;
  INFO("refresh it with scripts/config-reference.sh");
  CHECK(readme.substr(begin, end - begin) == ledger::admin::config_reference());
}

TEST_CASE("every key of the table is read, with its default when absent", "[config]") {
  std::string error;
  const auto c = ledger::admin::parse_config(R"({"ledger": {"dir": "x"}})", "/tmp/c.json", &error);
  INFO(error);
  REQUIRE(c.has_value());
  CHECK(c->ledger.max_accounts == 65536);
  CHECK(c->ledger.flush_interval_ms == 1000);
  CHECK(c->ledger.tombstone_grace_s == 86400);
  CHECK(c->openrouter.base_url == "https://openrouter.ai/api/v1");
  CHECK(c->openrouter.management_key_env == "OPENROUTER_MGMT_KEY");
  CHECK(c->openrouter.revoke == "disable");
  CHECK(c->openrouter.timeout_ms == 10000);
  CHECK(c->reports.formats == std::vector<std::string>{"json", "csv", "html"});
  CHECK(c->reports.interval_s == 300);
  CHECK_FALSE(c->openrouter.present);
}
