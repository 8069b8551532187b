// ledgerctl end to end: exit codes, JSON output, usage errors, and that denials exit 3.
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <boost/json.hpp>
#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <map>

#include "layout.hpp"
#include "process.hpp"
#include "test_util.hpp"

using ledger_test::run;
using ledger_test::TempDir;

namespace {
std::string write_config(const TempDir& dir) {
  const std::string path = dir.path() + "/ledger.json";
  ledger_test::write_file(path, R"({
    "ledger": {"dir": "ledger", "max_accounts": 64, "max_reservations": 64, "max_processes": 16},
    "accounts": [{"id": "team", "limit_usd": "10", "period": "monthly"},
                 {"id": "alice", "parent": "team", "limit_usd": "2.50", "period": "daily"}]})");
  return path;
}

// Removes the segment of a ledger directory at the end of a test.
struct SegmentCleanup {
  std::string dir;
  ~SegmentCleanup() { (void)ledger::Ledger::destroy_segment(dir); }
};
}  // namespace

TEST_CASE("ledgerctl init, debit, status, block and their exit codes", "[cli]") {
  TempDir dir;
  const std::string config = write_config(dir);
  struct Cleanup {
    std::string dir;
    ~Cleanup() { (void)ledger::Ledger::destroy_segment(dir); }
  } cleanup{dir.path() + "/ledger"};
  CHECK(run({LEDGERCTL_PATH, "--help"}).exit_code == 0);
  CHECK(run({LEDGERCTL_PATH}).exit_code == 1);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "frobnicate"}).exit_code == 1);
  CHECK(run({LEDGERCTL_PATH, "--config", dir.path() + "/missing.json", "status"}).exit_code == 1);

  auto init = run({LEDGERCTL_PATH, "--config", config, "init"});
  INFO(init.err);
  REQUIRE(init.exit_code == 0);
  CHECK(init.out.find("2 accounts created") != std::string::npos);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "init"}).out.find("2 unchanged") != std::string::npos);

  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "2"}).exit_code == 0);
  const auto denied = run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "0.51"});
  CHECK(denied.exit_code == 3);
  CHECK(denied.err.find("over budget") != std::string::npos);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "1e3"}).exit_code == 1);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "-1"}).exit_code == 1);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "bad name!", "1"}).exit_code == 1);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "nobody", "1"}).exit_code == 2);

  const auto status = run({LEDGERCTL_PATH, "--config", config, "status", "--json"});
  REQUIRE(status.exit_code == 0);
  const auto root = boost::json::parse(status.out).as_object();
  CHECK(root.at("version").as_int64() == 1);
  const auto& accounts = root.at("accounts").as_array();
  REQUIRE(accounts.size() == 2);
  CHECK(accounts[1].at("account").as_string() == "alice");
  CHECK(accounts[1].at("spent_nanousd").as_int64() == 2'000'000'000);
  CHECK(accounts[1].at("spent_usd").as_string() == "2.00");
  CHECK(accounts[0].at("requests").as_int64() == 1);

  CHECK(run({LEDGERCTL_PATH, "--config", config, "block", "alice"}).exit_code == 0);
  const auto blocked = run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "0.01"});
  CHECK(blocked.exit_code == 3);
  CHECK(blocked.err.find("blocked") != std::string::npos);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "unblock", "alice"}).exit_code == 0);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "0.01"}).exit_code == 0);
  const auto one = run({LEDGERCTL_PATH, "--config", config, "balance", "alice", "--json"});
  REQUIRE(one.exit_code == 0);
  CHECK(boost::json::parse(one.out).at("spent_nanousd").as_int64() == 2'010'000'000);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "flush"}).exit_code == 0);
  const auto report = run({LEDGERCTL_PATH, "--config", config, "report"});
  CHECK(report.exit_code == 0);
  CHECK(report.out.find("team report") != std::string::npos);
  CHECK(report.out.find("alice") != std::string::npos);
}

// Upgrading across a segment format change (promise 5): the old segment is refused with what to do,
// destroy-segment removes it, and the next open rebuilds the ledger from the store.
TEST_CASE("an older segment is refused with the way out, and destroy-segment rebuilds from the store", "[cli]") {
  TempDir dir;
  const std::string config = write_config(dir);
  const std::string ledger_dir = dir.path() + "/ledger";
  struct Cleanup {
    std::string dir;
    ~Cleanup() { (void)ledger::Ledger::destroy_segment(dir); }
  } cleanup{ledger_dir};
  REQUIRE(run({LEDGERCTL_PATH, "--config", config, "init"}).exit_code == 0);
  REQUIRE(run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "1.25"}).exit_code == 0);
  REQUIRE(run({LEDGERCTL_PATH, "--config", config, "flush"}).exit_code == 0);
  const std::string segment = ledger::Ledger::segment_path(ledger_dir);
  const int fd = ::open(segment.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  const uint32_t old_version = 1;
  REQUIRE(::pwrite(fd, &old_version, sizeof old_version, offsetof(ledger::detail::Header, format_version)) ==
          sizeof old_version);
  ::close(fd);
  auto r = run({LEDGERCTL_PATH, "--config", config, "balance", "alice"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("another format version") != std::string::npos);
  CHECK(r.err.find("ledgerctl destroy-segment") != std::string::npos);
  r = run({LEDGERCTL_PATH, "--config", config, "destroy-segment"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  r = run({LEDGERCTL_PATH, "--config", config, "balance", "alice", "--json"});
  REQUIRE(r.exit_code == 0);
  CHECK(boost::json::parse(r.out).at("spent_nanousd").as_int64() == 1'250'000'000);  // from the store
}

// A left-out "period" is a lifetime budget (the documented default): init and status say so.
TEST_CASE("a budget without a period is shown as a lifetime one", "[cli]") {
  TempDir dir;
  const std::string config = dir.path() + "/ledger.json";
  ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "max_accounts": 16, "max_reservations": 16, "max_processes": 8},
    "accounts": [{"id": "team", "limit_usd": "10", "period": "none"}, {"id": "alice", "parent": "team", "limit_usd": "2"},
                 {"id": "bob", "parent": "team", "limit_usd": "2", "period": "daily"}]})");
  SegmentCleanup cleanup{dir.path() + "/ledger"};
  const auto init = run({LEDGERCTL_PATH, "--config", config, "init"});
  INFO(init.out << init.err);
  REQUIRE(init.exit_code == 0);
  CHECK(init.out.find("alice: no period, lifetime budget") != std::string::npos);
  CHECK(init.out.find("team: no period") == std::string::npos);  // "none" written out: meant so
  CHECK(init.out.find("bob: no period") == std::string::npos);
  const auto table = run({LEDGERCTL_PATH, "--config", config, "status"});
  REQUIRE(table.exit_code == 0);
  const auto line_of = [&](const std::string& account) {
    const size_t at = table.out.find("\n" + account + " ");
    return at == std::string::npos ? std::string() : table.out.substr(at + 1, table.out.find('\n', at + 1) - at - 1);
  };
  CHECK(line_of("alice").find("none (lifetime)") != std::string::npos);
  CHECK(line_of("team").find("none (lifetime)") != std::string::npos);
  CHECK(line_of("bob").find("daily") != std::string::npos);
  const auto json = run({LEDGERCTL_PATH, "--config", config, "status", "--json"});
  REQUIRE(json.exit_code == 0);
  const auto accounts = boost::json::parse(json.out).at("accounts").as_array();
  REQUIRE(accounts.size() == 3);
  CHECK(accounts[1].at("account").as_string() == "alice");
  CHECK(accounts[1].at("period").as_string() == "none");  // JSON keeps the plain name
}

// Read-only commands on a ledger that was never initialized create nothing: no directory, no
// store, no lock file, no segment; they exit 2 and say to run init. Also when the directory exists.
TEST_CASE("read-only commands on a ledger that does not exist create nothing", "[cli]") {
  TempDir dir;
  const std::string config = dir.path() + "/ledger.json";
  for (const bool dir_exists : {false, true}) {
    INFO("ledger directory exists: " << dir_exists);
    const std::string ledger_dir = dir.path() + (dir_exists ? "/empty" : "/ledger");
    if (dir_exists) std::filesystem::create_directory(ledger_dir);
    ledger_test::write_file(config, R"({"ledger": {"dir": ")" + ledger_dir + R"(", "max_accounts": 16},
      "openrouter": {"base_url": "http://127.0.0.1:9/api/v1", "management_key_env": "LEDGER_TEST_UNSET_KEY"},
      "accounts": [{"id": "alice", "limit_usd": "2", "period": "daily"}]})");
    const std::vector<std::vector<std::string>> commands = {
        {"status"}, {"status", "--json"}, {"balance", "alice"}, {"report"}, {"doctor"},
        {"reconcile", "--dry-run"}, {"keys", "list"}, {"destroy-segment"}};
    for (const auto& command : commands) {
      std::vector<std::string> argv{LEDGERCTL_PATH, "--config", config};
      argv.insert(argv.end(), command.begin(), command.end());
      const auto r = run(argv);
      INFO(command[0] << (command.size() > 1 ? " " + command[1] : "") << ": " << r.out << r.err);
      CHECK(r.exit_code == 2);
      CHECK((r.err + r.out).find("no ledger at " + ledger_dir + ": run ledgerctl init") != std::string::npos);
    }
    if (dir_exists) {
      CHECK(std::filesystem::is_empty(ledger_dir));
      const std::string segment = ledger::Ledger::segment_path(ledger_dir);
      REQUIRE_FALSE(segment.empty());
      CHECK_FALSE(std::filesystem::exists(segment));
    } else {
      CHECK_FALSE(std::filesystem::exists(ledger_dir));
    }
  }
}

TEST_CASE("doctor without a ledger says so on its ledger line and still checks the rest", "[cli]") {
  TempDir dir;
  const std::string config = write_config(dir);
  const auto r = run({LEDGERCTL_PATH, "--config", config, "doctor"});
  CHECK(r.exit_code == 2);
  CHECK(r.out.find("FAIL   ledger                 no ledger at " + dir.path() + "/ledger: run ledgerctl init") != std::string::npos);
  CHECK(r.out.find("store") != std::string::npos);
  CHECK(r.out.find("sidecar") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.path() + "/ledger"));
}

// A worker that was SIGKILLed, or exited without closing its handle, is not attached any more:
// destroy-segment reclaims dead processes' slots before it counts. A live one still stops it.
TEST_CASE("destroy-segment does not count dead processes as attached", "[cli]") {
  TempDir dir;
  const std::string config = write_config(dir);
  const std::string ledger_dir = dir.path() + "/ledger";
  SegmentCleanup cleanup{ledger_dir};
  REQUIRE(run({LEDGERCTL_PATH, "--config", config, "init"}).exit_code == 0);
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  auto attach = [&](bool stay) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      std::unique_ptr<ledger::Ledger> l;
      if (!ledger::Ledger::open(ledger_dir, ledger::Options{}, &l).ok()) ::_exit(2);
      (void)l->debit("alice", 1);
      (void)!::write(ready[1], "x", 1);
      while (stay) ::pause();
      ::_exit(0);  // without closing the handle
    }
    char c = 0;
    REQUIRE(::read(ready[0], &c, 1) == 1);
    return pid;
  };
  const pid_t exited = attach(false);
  int status = 0;
  REQUIRE(::waitpid(exited, &status, 0) == exited);
  const pid_t killed = attach(true);
  auto r = run({LEDGERCTL_PATH, "--config", config, "destroy-segment"});
  CHECK(r.exit_code == 2);  // the live one counts
  CHECK(r.err.find("1 other process(es) are attached") != std::string::npos);
  ::kill(killed, SIGKILL);
  REQUIRE(::waitpid(killed, &status, 0) == killed);
  r = run({LEDGERCTL_PATH, "--config", config, "destroy-segment"});
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("segment removed") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(ledger::Ledger::segment_path(ledger_dir)));
  ::close(ready[0]);
  ::close(ready[1]);
  const auto b = run({LEDGERCTL_PATH, "--config", config, "balance", "alice", "--json"});
  REQUIRE(b.exit_code == 0);
  CHECK(boost::json::parse(b.out).at("spent_nanousd").as_int64() == 2);  // rebuilt from the store
}

// More accounts than the segment holds: init refuses before changing anything (no half-applied
// config, no spurious tier errors) and says how to get a bigger ledger; that advice works.
TEST_CASE("init refuses a config that does not fit the segment and changes nothing", "[cli]") {
  TempDir dir;
  const std::string config = dir.path() + "/ledger.json";
  SegmentCleanup cleanup{dir.path() + "/ledger"};
  auto write = [&](int max_accounts, const std::string& accounts) {
    ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "max_accounts": )" + std::to_string(max_accounts) +
                                        R"(, "max_reservations": 16, "max_processes": 8},
      "tiers": {"basic": {"models": null}},
      "accounts": [{"id": "team", "limit_usd": "10", "period": "monthly"},
                   {"id": "alice", "parent": "team", "tier": "basic", "limit_usd": "2", "period": "daily"})" + accounts + "]}");
  };
  write(4, R"(, {"id": "bob", "parent": "team", "limit_usd": "2", "period": "daily"})");
  REQUIRE(run({LEDGERCTL_PATH, "--config", config, "init"}).exit_code == 0);
  REQUIRE(run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "1"}).exit_code == 0);
  const std::string before = run({LEDGERCTL_PATH, "--config", config, "status", "--json"}).out;
  const std::string more = R"(, {"id": "carol", "parent": "team", "tier": "basic", "limit_usd": "1", "period": "daily"},
                               {"id": "dave", "parent": "team", "tier": "basic", "limit_usd": "1", "period": "daily"})";
  for (const int max_accounts : {4, 8}) {  // the config's own limit too small, or only the segment's
    INFO("ledger.max_accounts " << max_accounts);
    write(max_accounts, more);  // bob removed (stays, blocked) + carol + dave: 5 accounts
    const auto r = run({LEDGERCTL_PATH, "--config", config, "init"});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("holds at most 4 accounts") != std::string::npos);
    CHECK(r.err.find("5 are needed") != std::string::npos);
    CHECK(r.err.find(max_accounts == 4 ? "set ledger.max_accounts to at least 5" : "ledger.max_accounts (8) is enough") != std::string::npos);
    CHECK(r.err.find("ledgerctl destroy-segment and ledgerctl init") != std::string::npos);
    CHECK(r.err.find("unknown account") == std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);  // one line
    CHECK(run({LEDGERCTL_PATH, "--config", config, "status", "--json"}).out == before);
  }
  // The advice: a larger max_accounts (written above), destroy-segment, init; spend is kept.
  REQUIRE(run({LEDGERCTL_PATH, "--config", config, "destroy-segment"}).exit_code == 0);
  const auto init = run({LEDGERCTL_PATH, "--config", config, "init"});
  INFO(init.err);
  REQUIRE(init.exit_code == 0);
  const auto status = boost::json::parse(run({LEDGERCTL_PATH, "--config", config, "status", "--json"}).out);
  std::map<std::string, boost::json::object> by_name;
  for (const auto& a : status.at("accounts").as_array()) by_name[std::string(a.at("account").as_string())] = a.as_object();
  CHECK(by_name.size() == 5);
  CHECK(by_name["alice"].at("spent_nanousd").as_int64() == 1'000'000'000);
  CHECK(by_name["bob"].at("blocked").as_bool());
}

// A model name a tier names without a price (a typo) would make every request fail with "no price
// known": init warns, doctor flags it, each naming the key.
TEST_CASE("init warns and doctor flags tier models that have no price", "[cli]") {
  TempDir dir;
  const std::string config = dir.path() + "/ledger.json";
  SegmentCleanup cleanup{dir.path() + "/ledger"};
  auto write = [&](const std::string& openrouter) {
    ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "max_accounts": 16, "max_reservations": 16, "max_processes": 8},)" +
                                        openrouter + R"(
      "tiers": {"basic": {"models": ["openai/gpt-4o-mini", "openai/gpt-4o-mnii"], "fallback": "openai/gpt-4o-mnii"},
                "pro": {"models": ["openai/gpt-4o"], "downgrade_at_percent": 90, "downgrade_to": "openai/gpt-4o-mini"},
                "all": {"models": null}},
      "prices": {"openai/gpt-4o-mini": {"prompt_usd_per_mtok": "0.15", "completion_usd_per_mtok": "0.60"}},
      "accounts": [{"id": "alice", "tier": "basic", "limit_usd": "2", "period": "daily"}]})");
  };
  write("");
  const auto init = run({LEDGERCTL_PATH, "--config", config, "init"});
  INFO(init.out << init.err);
  CHECK(init.exit_code == 0);  // a warning, not an error
  const std::string hint = " has no price (check the spelling, or add it under \"prices\")";
  for (const std::string key : {"tiers.basic.models[1]", "tiers.basic.fallback"})
    CHECK(init.err.find("warning: " + key + ": \"openai/gpt-4o-mnii\"" + hint) != std::string::npos);
  CHECK(init.err.find("warning: tiers.pro.models[0]: \"openai/gpt-4o\"" + hint) != std::string::npos);
  CHECK(init.err.find("gpt-4o-mini\" has no price") == std::string::npos);
  CHECK(std::count(init.err.begin(), init.err.end(), '\n') == 3);
  auto doctor = run({LEDGERCTL_PATH, "--config", config, "doctor"});
  CHECK(doctor.exit_code == 2);
  CHECK(doctor.out.find("FAIL   prices                 tiers.basic.fallback: \"openai/gpt-4o-mnii\"" + hint) != std::string::npos);
  CHECK(doctor.out.find("tiers.basic.models[1]") != std::string::npos);
  CHECK(doctor.out.find("tiers.pro.models[0]") != std::string::npos);
  // With an OpenRouter setup, the message says where else prices come from.
  write(R"( "openrouter": {"base_url": "http://127.0.0.1:9/api/v1", "management_key_env": "LEDGER_TEST_UNSET_KEY"},)");
  doctor = run({LEDGERCTL_PATH, "--config", config, "doctor"});
  CHECK(doctor.out.find("tiers.basic.fallback: \"openai/gpt-4o-mnii\" has no price (check the spelling, or add it under \"prices\"; "
                        "with the \"openrouter\" section the sidecar also loads prices from OpenRouter's /models") != std::string::npos);
  // Every model priced: nothing to say.
  write("");
  std::string text = ledger_test::read_file(config);
  text.replace(text.find("\"prices\": {"), 11, R"("prices": {"openai/gpt-4o-mnii": {"prompt_usd_per_mtok": 1, "completion_usd_per_mtok": 1},
    "openai/gpt-4o": {"prompt_usd_per_mtok": "2.50", "completion_usd_per_mtok": "10"},)");
  ledger_test::write_file(config, text);
  const auto clean = run({LEDGERCTL_PATH, "--config", config, "init"});
  CHECK(clean.exit_code == 0);
  CHECK(clean.err.find("has no price") == std::string::npos);
  doctor = run({LEDGERCTL_PATH, "--config", config, "doctor"});
  CHECK(doctor.out.find("ok     prices                 every model the tiers and accounts name has a price") != std::string::npos);
}

TEST_CASE("governance from the config: account model lists, strict_models, soft limits and top-ups", "[cli][rules]") {
  TempDir dir;
  const std::string config = dir.path() + "/ledger.json";
  SegmentCleanup cleanup{dir.path() + "/ledger"};
  auto write = [&](const std::string& strict) {
    ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "max_accounts": 16, "max_reservations": 16, "max_processes": 8)" +
                                        strict + R"(},
      "prices": {"openai/gpt-4o-mini": {"prompt_usd_per_mtok": "0.15", "completion_usd_per_mtok": "0.60"}},
      "accounts": [{"id": "team", "limit_usd": "10", "period": "monthly", "rpm": 100},
                   {"id": "alice", "parent": "team", "limit_usd": "1", "period": "daily", "enforce": "soft",
                    "models": ["openai/gpt-4o-mini", "openai/gpt-4o-mnii"]},
                   {"id": "bob", "parent": "team", "limit_usd": "2", "period": "daily", "max_concurrent": 3}]})");
  };
  write(R"(, "strict_models": true)");
  auto r = run({LEDGERCTL_PATH, "--config", config, "init"});
  CHECK(r.exit_code == 2);  // refused: a model named with no price
  CHECK(r.err.find("accounts[1] (\"alice\").models[1]: \"openai/gpt-4o-mnii\" has no price") != std::string::npos);
  CHECK(r.err.find("ledger.strict_models: nothing was changed") != std::string::npos);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "status"}).out.find("alice") == std::string::npos);  // no account was made
  write("");
  r = run({LEDGERCTL_PATH, "--config", config, "init"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);  // a warning without strict_models
  CHECK(r.err.find("warning: accounts[1] (\"alice\").models[1]") != std::string::npos);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "3"}).exit_code == 0);  // soft: over her own $1
  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "bob", "2.5"}).exit_code == 3);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "topup", "bob", "1"}).exit_code == 0);  // for the rest of today
  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "bob", "2.5"}).exit_code == 0);
  const auto status = run({LEDGERCTL_PATH, "--config", config, "status"});
  CHECK(status.out.find("SOFT, over by 2.00") != std::string::npos);
  CHECK(status.out.find("+1.00 top-up through") != std::string::npos);
  const auto json = boost::json::parse(run({LEDGERCTL_PATH, "--config", config, "balance", "bob", "--json"}).out).as_object();
  CHECK(json.at("limit_nanousd").as_int64() == 3'000'000'000);
  CHECK(json.at("topup_nanousd").as_int64() == 1'000'000'000);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "topup", "bob", "1", "--until", "2020-01-01"}).exit_code == 1);  // past
  CHECK(run({LEDGERCTL_PATH, "--config", config, "topup", "bob", "x"}).exit_code == 1);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "topup", "nobody", "1"}).exit_code == 1);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "topup", "bob", "0"}).exit_code == 0);  // removed
  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "bob", "0.01"}).exit_code == 3);
  const auto report = run({LEDGERCTL_PATH, "--config", config, "report", "--format", "json"});
  CHECK(report.out.find("\"soft\":true") != std::string::npos);
}

namespace {
// A small tmpfs of its own (root only; elsewhere the test says so and checks nothing).
struct SmallTmpfs {
  std::string path;
  bool mounted = false;
  explicit SmallTmpfs(const std::string& at) : path(at) {
    std::filesystem::create_directories(path);
    mounted = run({"/bin/mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", path}).exit_code == 0;
  }
  ~SmallTmpfs() {
    if (mounted) (void)run({"/bin/umount", "-l", path});
  }
};
}  // namespace

TEST_CASE("a segment that does not fit its filesystem is a clear error at init; one that fits never SIGBUSes later", "[cli]") {
  TempDir dir;
  SmallTmpfs shm(dir.path() + "/shm");
  if (!shm.mounted) {
    WARN("cannot mount a tmpfs here (not root?): the RLIMIT_FSIZE case of segment_test stands in");
    return;
  }
  const std::string config = dir.path() + "/ledger.json";
  const auto write = [&](const std::string& limits) {
    ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "segment_dir": ")" + shm.path + R"(")" + limits + R"(},
      "accounts": [{"id": "team", "limit_usd": "10", "period": "monthly"},
                   {"id": "alice", "parent": "team", "limit_usd": "5", "period": "daily"}]})");
  };
  write("");  // the default capacities need ~34 MiB
  const auto big = run({LEDGERCTL_PATH, "--config", config, "init"});
  INFO(big.out << big.err);
  CHECK(big.exit_code == 2);
  CHECK(big.err.find("no room for the segment (it needs ") != std::string::npos);
  CHECK(big.err.find(shm.path) != std::string::npos);
  CHECK(std::filesystem::is_empty(shm.path));  // nothing half-built left behind
  write(R"(, "max_accounts": 64, "max_reservations": 256, "max_processes": 8)");
  const auto small = run({LEDGERCTL_PATH, "--config", config, "init"});
  INFO(small.err);
  REQUIRE(small.exit_code == 0);
  // Another tenant fills the filesystem: the segment's pages were reserved, so its users go on.
  (void)run({"/bin/dd", "if=/dev/zero", "of=" + shm.path + "/filler", "bs=64k", "count=1000"});
  for (int i = 0; i < 20; ++i) REQUIRE(run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "0.01"}).exit_code == 0);
  const auto status = run({LEDGERCTL_PATH, "--config", config, "status", "--json"});
  REQUIRE(status.exit_code == 0);
  CHECK(status.out.find("\"spent_nanousd\":200000000") != std::string::npos);
  (void)ledger::Ledger::destroy_segment(dir.path() + "/ledger");
}

TEST_CASE("with every worker process slot taken, ledgerctl still attaches", "[cli]") {
  TempDir dir;
  const std::string config = write_config(dir);  // max_processes 16
  SegmentCleanup cleanup{dir.path() + "/ledger"};
  REQUIRE(run({LEDGERCTL_PATH, "--config", config, "init"}).exit_code == 0);
  std::vector<std::unique_ptr<ledger::Ledger>> workers;
  for (int i = 0; i < 16; ++i) {
    workers.emplace_back();
    REQUIRE(ledger::Ledger::open(dir.path() + "/ledger", ledger::Options{}, &workers.back()) == ledger::Code::kOk);
  }
  std::unique_ptr<ledger::Ledger> one_more;
  CHECK(ledger::Ledger::open(dir.path() + "/ledger", ledger::Options{}, &one_more) == ledger::Code::kFull);
  const auto status = run({LEDGERCTL_PATH, "--config", config, "status"});
  INFO(status.err);
  CHECK(status.exit_code == 0);
  CHECK(run({LEDGERCTL_PATH, "--config", config, "debit", "alice", "0.01"}).exit_code == 0);
}
