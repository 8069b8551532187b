// Reports from a fixture store built day by day with a manual clock: exact numbers in JSON and
// CSV, anomalies found and not found, a self-contained HTML page, atomic writes, the CLI.
#include <catch2/catch.hpp>
#include <boost/json.hpp>

#include "process.hpp"
#include "reports/reports.hpp"
#include "test_util.hpp"

using namespace ledger;
using namespace ledger::admin;
namespace json = boost::json;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::utc;

namespace {

constexpr const char* kMini = "openai/gpt-4o-mini";
constexpr const char* kSonnet = "anthropic/claude-3.5-sonnet";

struct Fixture {
  ledger_test::TempDir dir;
  ManualClock clock;
  std::string config_path = dir.path() + "/ledger.json";
  Config config;
  Fixture() {
    ledger_test::write_file(config_path, R"({"ledger": {"dir": "ledger"},
      "tiers": {"pro": {"models": null}},
      "accounts": [{"id": "eng", "limit_usd": "500", "period": "monthly"},
                   {"id": "alice", "parent": "eng", "tier": "pro", "limit_usd": "3", "period": "daily"},
                   {"id": "bob", "parent": "eng", "limit_usd": "50", "period": "monthly"}]})");
    std::string error;
    const auto loaded = load_config(config_path, &error);
    INFO(error);
    REQUIRE(loaded.has_value());
    config = *loaded;
    // Seven quiet days, then a spike for alice; alice at her $3 daily limit on three days.
    Options options;
    options.clock = clock.clock();
    std::unique_ptr<Ledger> l;
    REQUIRE(Ledger::open(config.ledger.dir, options, &l) == Code::kOk);
    REQUIRE(l->set_budget("eng", 500 * kUsd, Period::kMonthly, "") == Code::kOk);
    REQUIRE(l->set_budget("alice", 3 * kUsd, Period::kDaily, "eng") == Code::kOk);
    REQUIRE(l->set_budget("bob, jr.", 50 * kUsd, Period::kMonthly, "eng") == Code::kInvalidArgument);  // not an id
    REQUIRE(l->set_budget("bob", 50 * kUsd, Period::kMonthly, "eng") == Code::kOk);
    REQUIRE(l->set_price(kMini, kUsd, kUsd, 0) == Code::kOk);
    REQUIRE(l->set_price(kSonnet, kUsd, kUsd, 0) == Code::kOk);
    auto authorized = [&](const char* model, int64_t actual) {
      std::string_view chosen;
      ReservationId id = 0;
      REQUIRE(l->authorize("bob", model, actual, 60, &chosen, &id) == Code::kOk);
      REQUIRE(l->commit(id, actual) == Code::kOk);
    };
    for (int d = 10; d <= 19; ++d) {
      clock.now_ms = utc(2026, 11, d, 12) * 1000;
      const int64_t alice = d == 17 ? 3 * kUsd : d >= 18 ? 3 * kUsd : kUsd / 4;  // spike on the 17th, then at limit
      REQUIRE(l->debit("alice", alice) == Code::kOk);
      REQUIRE(l->debit("bob", kUsd / 10) == Code::kOk);
      authorized(kMini, kUsd / 20);              // bob's requests through authorize carry a model
      if (d >= 15) authorized(kSonnet, kUsd / 5);
      REQUIRE(l->flush() == Code::kOk);
    }
  }
  ~Fixture() { (void)Ledger::destroy_segment(config.ledger.dir); }
};

}  // namespace

TEST_CASE("the team report has the exact numbers, sorted by cost, with totals over roots", "[reports]") {
  Fixture f;
  Report r;
  const int64_t from = utc(2026, 11, 13) / 86400, to = utc(2026, 11, 19) / 86400;
  REQUIRE(build_report(f.config, from, to, utc(2026, 11, 19, 13), &r) == Code::kOk);
  REQUIRE(r.rows.size() == 3);
  CHECK(r.rows[0].account == "eng");
  CHECK(r.rows[1].account == "alice");
  CHECK(r.rows[2].account == "bob");
  // alice: 13..16 at 0.25, 17..19 at 3.00 = 1.00 + 9.00; bob: 7 x 0.10; eng: both
  CHECK(r.rows[1].cost_nanousd == 10 * kUsd);
  CHECK(r.rows[1].requests == 7);
  CHECK(r.rows[1].tier == "pro");
  CHECK(r.rows[1].percent_used_bp == 10000);  // today at her limit
  // bob: debits 7 x 0.10, gpt-4o-mini 7 x 0.05, claude 5 x 0.20 (15th..19th)
  CHECK(r.rows[2].cost_nanousd == 205 * kUsd / 100);
  CHECK(r.rows[2].requests == 19);
  CHECK(r.rows[0].cost_nanousd == 10 * kUsd + 205 * kUsd / 100);
  CHECK(r.total_cost_nanousd == 10 * kUsd + 205 * kUsd / 100);  // roots only: no double counting
  CHECK(r.total_requests == 26);
  REQUIRE(r.days.size() == 7);
  CHECK(r.days[0].second == kUsd / 4 + kUsd / 10 + kUsd / 20);
  CHECK(r.days[6].second == 3 * kUsd + kUsd / 10 + kUsd / 20 + kUsd / 5);
  // Cost per model: largest first, the unattributed rest last; a team's is its members' sum.
  const auto& bob = r.rows[2].models;
  REQUIRE(bob.size() == 3);
  CHECK((bob[0].model == kSonnet && bob[0].cost_nanousd == kUsd && bob[0].requests == 5));
  CHECK((bob[1].model == kMini && bob[1].cost_nanousd == 35 * kUsd / 100 && bob[1].requests == 7));
  CHECK((bob[2].model.empty() && bob[2].cost_nanousd == 7 * kUsd / 10 && bob[2].requests == 7));
  const auto& eng = r.rows[0].models;
  REQUIRE(eng.size() == 3);
  CHECK((eng[0].model == kSonnet && eng[0].cost_nanousd == kUsd && eng[0].requests == 5));
  CHECK((eng[1].model == kMini && eng[1].cost_nanousd == 35 * kUsd / 100 && eng[1].requests == 7));
  CHECK((eng[2].model.empty() && eng[2].cost_nanousd == 107 * kUsd / 10 && eng[2].requests == 14));
  REQUIRE(r.rows[1].models.size() == 1);  // alice only debits
  CHECK((r.rows[1].models[0].model.empty() && r.rows[1].models[0].cost_nanousd == 10 * kUsd));

  const json::value j = json::parse(render_json(r));
  CHECK(j.at("version").as_int64() == 1);
  CHECK(j.at("from").as_string() == "2026-11-13");
  CHECK(j.at("accounts").as_array()[1].at("cost_usd").as_string() == "10.00");
  CHECK(j.at("accounts").as_array()[1].at("percent_used").as_string() == "100.00");
  CHECK(j.at("totals").at("cost_nanousd").as_int64() == 12'050'000'000);
  const auto& bob_models = j.at("accounts").as_array()[2].at("models").as_array();
  REQUIRE(bob_models.size() == 3);
  CHECK(bob_models[0].at("model").as_string() == kSonnet);
  CHECK(bob_models[0].at("cost_nanousd").as_int64() == 1'000'000'000);
  CHECK(bob_models[1].at("cost_usd").as_string() == "0.35");
  CHECK(bob_models[2].at("model").is_null());  // unattributed
  CHECK(bob_models[2].at("requests").as_int64() == 7);
  const std::string csv = render_csv(r);
  CHECK(csv.rfind("account,team,tier,model,period,limit_usd,cost_usd,requests,percent_used,blocked\r\n", 0) == 0);
  CHECK(csv.find("alice,eng,pro,,daily,3.00,10.00,7,100.00,false\r\nalice,eng,pro,(unattributed),,,10.00,7,,\r\n") != std::string::npos);
  CHECK(csv.find("bob,eng,,,monthly,50.00,2.05,19,") != std::string::npos);
  CHECK(csv.find("bob,eng,,anthropic/claude-3.5-sonnet,,,1.00,5,,\r\nbob,eng,,openai/gpt-4o-mini,,,0.35,7,,\r\n"
                 "bob,eng,,(unattributed),,,0.70,7,,\r\n") != std::string::npos);
  const std::string table = render_table(r);
  CHECK(table.find("cost per model:") != std::string::npos);
  CHECK(table.find("anthropic/claude-3.5-sonnet") != std::string::npos);
}

TEST_CASE("anomalies: a spike above the trailing median, days at the limit; quiet accounts are not flagged", "[reports]") {
  Fixture f;
  Report r;
  REQUIRE(build_report(f.config, utc(2026, 11, 13) / 86400, utc(2026, 11, 19) / 86400, utc(2026, 11, 19, 13), &r) == Code::kOk);
  bool spike = false, at_limit = false;
  for (const auto& a : r.anomalies) {
    CHECK(a.account != "bob");  // steady spend is never an anomaly
    if (a.kind == "spike" && a.account == "alice" && a.day == utc(2026, 11, 17) / 86400) spike = true;
    if (a.kind == "at_limit" && a.account == "alice") at_limit = true;
  }
  CHECK(spike);
  CHECK(at_limit);
  // Before the spike there is nothing to report.
  REQUIRE(build_report(f.config, utc(2026, 11, 13) / 86400, utc(2026, 11, 16) / 86400, utc(2026, 11, 16, 13), &r) == Code::kOk);
  CHECK(r.anomalies.empty());
}

TEST_CASE("the HTML page is self-contained, with three SVG charts and escaped names", "[reports]") {
  Fixture f;
  Report r;
  REQUIRE(build_report(f.config, utc(2026, 11, 13) / 86400, utc(2026, 11, 19) / 86400, utc(2026, 11, 19, 13), &r) == Code::kOk);
  r.rows[2].account = "<script>alert(1)</script>";
  const std::string page = render_html(r);
  CHECK(page.rfind("<!DOCTYPE html>", 0) == 0);
  size_t svgs = 0;
  for (size_t at = page.find("<svg"); at != std::string::npos; at = page.find("<svg", at + 1)) ++svgs;
  CHECK(svgs == 3);
  CHECK(page.find("<script") == std::string::npos);  // escaped, and no scripts of our own
  CHECK(page.find("&lt;script&gt;") != std::string::npos);
  CHECK(page.find("src=") == std::string::npos);     // no external assets
  CHECK(page.find("href=") == std::string::npos);
  CHECK(page.find("10.00") != std::string::npos);
}

TEST_CASE("the HTML report renders in headless Chromium: all three charts in the DOM, a screenshot", "[reports][html]") {
  Fixture f;
  Report r;
  REQUIRE(build_report(f.config, utc(2026, 11, 13) / 86400, utc(2026, 11, 19) / 86400, utc(2026, 11, 19, 13), &r) == Code::kOk);
  const std::string page = f.dir.path() + "/team-report.html", shot = f.dir.path() + "/team-report.png";
  std::string error;
  REQUIRE(write_atomically(page, render_html(r), &error));
  INFO("needs Debian's chromium (scripts/setup.sh installs it)");
  REQUIRE(::access("/usr/bin/chromium", X_OK) == 0);
  const std::vector<std::string> flags = {"/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                          "--disable-sync", "--user-data-dir=" + f.dir.path() + "/chromium"};
  std::vector<std::string> dump = flags;
  dump.push_back("--dump-dom");
  dump.push_back("file://" + page);
  const auto dom = ledger_test::run(dump);
  REQUIRE(dom.exit_code == 0);
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t at = dom.out.find(what); at != std::string::npos; at = dom.out.find(what, at + 1)) ++n;
    return n;
  };
  CHECK(count("<svg") == 3);
  CHECK(count("<rect class=\"bar\"") == r.rows.size());  // one bar per account
  CHECK(count("<rect class=\"day\"") == r.days.size());  // one per day
  // One segment per (account, model) of the accounts that used a model: bob and eng, 3 each.
  CHECK(count("<rect class=\"model\"") == 6);
  CHECK(count("<rect class=\"legend\"") == 3);  // two models and the unattributed rest
  std::vector<std::string> screenshot = flags;
  screenshot.push_back("--window-size=1000,1500");
  screenshot.push_back("--screenshot=" + shot);
  screenshot.push_back("file://" + page);
  REQUIRE(ledger_test::run(screenshot).exit_code == 0);
  const std::string png = ledger_test::read_file(shot);
  REQUIRE(png.size() > 10000);
  CHECK(png.substr(1, 3) == "PNG");
  // Keep a copy for people to look at (the build folder survives the test).
  std::string copy_error;
  (void)write_atomically(std::string(REPORT_SCREENSHOT_DIR) + "/team-report.png", png, &copy_error);
}

TEST_CASE("reports are written atomically, and the CLI checks its arguments", "[reports][cli]") {
  Fixture f;
  std::string error;
  const std::string out = f.dir.path() + "/report.html";
  REQUIRE(write_atomically(out, "first", &error));
  REQUIRE(write_atomically(out, "second", &error));
  CHECK(ledger_test::read_file(out) == "second");
  CHECK_FALSE(write_atomically(f.dir.path() + "/missing/dir/x.json", "x", &error));
  CHECK(error.find("cannot write") != std::string::npos);
  const std::string c = f.config_path;
  auto r = ledger_test::run({LEDGERCTL_PATH, "--config", c, "report", "--from", "2026-11-13", "--to", "2026-11-19", "--format", "csv"});
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("alice,eng,pro,,daily,3.00,10.00,7,") != std::string::npos);
  r = ledger_test::run({LEDGERCTL_PATH, "--config", c, "report", "--from", "2026-11-13", "--to", "2026-11-19", "--format", "html", "--out", out});
  REQUIRE(r.exit_code == 0);
  CHECK(ledger_test::read_file(out).find("<svg") != std::string::npos);
  CHECK(ledger_test::run({LEDGERCTL_PATH, "--config", c, "report", "--format", "pdf"}).exit_code == 1);
  CHECK(ledger_test::run({LEDGERCTL_PATH, "--config", c, "report", "--from", "2026-02-30"}).exit_code == 1);
  CHECK(ledger_test::run({LEDGERCTL_PATH, "--config", c, "report", "--from", "2026-11-20", "--to", "2026-11-19"}).exit_code == 1);
  CHECK(parse_date("2024-02-29") == utc(2024, 2, 29) / 86400);
  CHECK_FALSE(parse_date("2023-02-29").has_value());
  CHECK(format_date(utc(2026, 11, 26) / 86400) == "2026-11-26");
}
