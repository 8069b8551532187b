// Reconciliation against the emulator: drift produces exactly one adjustment per key and window,
// also across repeated runs and a restart with a rebuilt segment; missing window fields are
// unknown, not zero; dry runs change nothing; key limits are synced; unowned keys are reported;
// and the sidecar does it on its schedule.
#include <catch2/catch.hpp>
#include <boost/json.hpp>

#include "emulator_process.hpp"
#include "ledger/store.hpp"
#include "process.hpp"

using namespace ledger;
using ledger_test::EmulatorProcess;
using ledger_test::kUsd;
using ledger_test::run;

namespace {

struct Setup {
  EmulatorProcess emu;
  openrouter::Client client{emu.options()};
  ledger_test::TempDir dir;
  std::string config = dir.path() + "/ledger.json";
  std::string ledger_dir = dir.path() + "/ledger";
  std::string alice_key, alice_hash, bob_hash;

  Setup() {
    openrouter::KeyInfo k;
    REQUIRE_FALSE(client.create_key("alice", std::nullopt, "", &k, &alice_key));
    alice_hash = k.hash;
    std::string secret;
    REQUIRE_FALSE(client.create_key("bob", std::nullopt, "", &k, &secret));
    bob_hash = k.hash;
    REQUIRE_FALSE(client.create_key("forgotten", std::nullopt, "", &k, &secret));  // no account owns it
    write_config(60, true);
    const auto init = run({LEDGERCTL_PATH, "--config", config, "init"});
    INFO(init.err);
    REQUIRE(init.exit_code == 0);
  }
  ~Setup() { (void)Ledger::destroy_segment(ledger_dir); }
  void write_config(int interval_s, bool sync) {
    ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "max_accounts": 64, "max_reservations": 256, "max_processes": 32},
      "openrouter": {"base_url": ")" + emu.base() + R"(", "management_key_file": ")" + emu.key_file() +
                                        R"(", "reconcile_interval_s": )" + std::to_string(interval_s) +
                                        R"(, "timeout_ms": 2000, "sync_key_limits": )" + (sync ? "true" : "false") + R"(},
      "accounts": [{"id": "team", "limit_usd": "100", "period": "monthly"},
                   {"id": "alice", "parent": "team", "limit_usd": "10", "period": "daily", "key_hash": ")" + alice_hash + R"("},
                   {"id": "bob", "parent": "team", "limit_usd": "20", "period": "monthly", "key_hash": ")" + bob_hash + R"("}]})");
  }
  void bypass(const std::string& hash, const std::string& usd) {
    emu.admin("/__emulator/usage", R"({"hash": ")" + hash + R"(", "cost_usd": ")" + usd + R"("})");
  }
  int64_t spent(const std::string& account) {
    std::unique_ptr<Ledger> l;
    REQUIRE(Ledger::open(ledger_dir, Options{}, &l) == Code::kOk);
    Balance b;
    REQUIRE(l->balance(account, &b) == Code::kOk);
    return b.spent_nanousd;
  }
  ledger_test::Result reconcile(bool dry_run = false) {
    std::vector<std::string> argv{LEDGERCTL_PATH, "--config", config, "reconcile"};
    if (dry_run) argv.push_back("--dry-run");
    auto r = run(argv);
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(r.out.find("sk-or-v1-") == std::string::npos);  // no key in the output
    CHECK(r.err.find("sk-or-v1-") == std::string::npos);
    return r;
  }
};

}  // namespace

TEST_CASE("drift gives exactly one adjustment per key and window, across reruns and a restart", "[reconcile]") {
  Setup s;
  CHECK(run({LEDGERCTL_PATH, "--config", s.config, "debit", "alice", "1"}).exit_code == 0);
  s.bypass(s.alice_hash, "1.5");  // OpenRouter saw $1.50 today; the ledger only $1.00
  auto r = s.reconcile(true);
  CHECK(r.out.find("would adjust") != std::string::npos);
  CHECK(s.spent("alice") == kUsd);  // a dry run changes nothing
  r = s.reconcile();
  CHECK(r.out.find("adjusted") != std::string::npos);
  CHECK(r.out.find("unowned key (no account in the config): forgotten") != std::string::npos);
  CHECK(s.spent("alice") == kUsd + kUsd / 2);
  CHECK(s.spent("team") == kUsd + kUsd / 2);  // the whole chain
  r = s.reconcile();
  CHECK(r.out.find("adjusted") == std::string::npos);
  CHECK(s.spent("alice") == kUsd + kUsd / 2);
  // A reboot: the segment is rebuilt from the store, and the adjustment is not applied again.
  REQUIRE(Ledger::destroy_segment(s.ledger_dir) == Code::kOk);
  s.reconcile();
  CHECK(s.spent("alice") == kUsd + kUsd / 2);
  // The key now mirrors the account's budget (sync_key_limits).
  openrouter::KeyInfo key;
  REQUIRE_FALSE(s.client.get_key(s.alice_hash, &key));
  CHECK(key.limit_nanousd == 10 * kUsd);
  CHECK(key.limit_reset == "daily");
  // Drift the other way is reported, not "fixed".
  CHECK(run({LEDGERCTL_PATH, "--config", s.config, "debit", "alice", "2"}).exit_code == 0);
  r = s.reconcile();
  CHECK(r.out.find("ledger higher") != std::string::npos);
  CHECK(s.spent("alice") == 3 * kUsd + kUsd / 2);
}

TEST_CASE("a missing window field is unknown: no adjustment", "[reconcile]") {
  Setup s;
  s.bypass(s.bob_hash, "4");
  s.emu.admin("/__emulator/settings", R"({"omit_newer_fields": true})");
  const auto r = s.reconcile();
  CHECK(r.out.find("unknown window") != std::string::npos);
  CHECK(s.spent("bob") == 0);
  s.emu.admin("/__emulator/settings", R"({"omit_newer_fields": false})");
  s.reconcile();
  CHECK(s.spent("bob") == 4 * kUsd);
}

TEST_CASE("reconcile errors are clear and leave the ledger alone", "[reconcile]") {
  Setup s;
  s.emu.admin("/__emulator/faults", R"({"path": "/api/v1/keys", "status": 500, "count": 8})");
  const auto r = run({LEDGERCTL_PATH, "--config", s.config, "reconcile"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("cannot list keys") != std::string::npos);
  CHECK(r.err.find("sk-or-v1-") == std::string::npos);
  CHECK(s.spent("alice") == 0);
}

TEST_CASE("the sidecar reconciles on its schedule", "[reconcile][sidecar]") {
  Setup s;
  s.write_config(1, false);
  s.bypass(s.bob_hash, "2.5");
  const std::string log = s.dir.path() + "/sidecar.log";
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  const pid_t sidecar = ledger_test::spawn({SIDECAR_PATH, "--config", s.config}, fd, fd);
  ::close(fd);
  bool adjusted = false;
  for (int i = 0; i < 500 && !adjusted; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    adjusted = ledger_test::read_file(log).find("msg=\"reconcile: adjusted\" account=bob") != std::string::npos;
  }
  CHECK(adjusted);
  ::kill(sidecar, SIGTERM);
  ::waitpid(sidecar, nullptr, 0);
  CHECK(s.spent("bob") == 2 * kUsd + kUsd / 2);
  CHECK(ledger_test::read_file(log).find("sk-or-v1-") == std::string::npos);  // no key in the logs
}
