// The OpenRouter client against the emulator over loopback: every endpoint, every status code in
// openrouter-api.md, 429 with Retry-After, timeouts, truncated and malformed bodies, 5,000 keys
// over many pages, and no key ever in an error message.
#include <catch2/catch.hpp>
#include <chrono>
#include <set>
#include <thread>

#include "emulator_process.hpp"
#include "openrouter/attribution.hpp"
#include "openrouter/client.hpp"
#include "process.hpp"
#include "test_util.hpp"

using namespace ledger::openrouter;
using ledger_test::EmulatorProcess;

namespace {

void no_key_in(const Error& e, const std::string& key) {
  CHECK(e.message.find(key) == std::string::npos);
  CHECK(e.message.find("sk-or-v1-") == std::string::npos);
}

}  // namespace

TEST_CASE("every endpoint, against the emulator", "[openrouter]") {
  EmulatorProcess emu;
  Client c(emu.options());
  KeyInfo me;
  bool management = false;
  REQUIRE_FALSE(c.current_key(&me, &management));
  CHECK(management);
  KeyInfo k;
  std::string secret;
  REQUIRE_FALSE(c.create_key("alice", 5'000'000'000, "daily", &k, &secret));
  CHECK(secret.rfind("sk-or-v1-", 0) == 0);
  CHECK(k.hash.size() == 64);
  CHECK(k.limit_nanousd == 5'000'000'000);
  CHECK(k.limit_reset == "daily");
  CHECK(k.usage_daily_nanousd == 0);
  KeyInfo got;
  REQUIRE_FALSE(c.get_key(k.hash, &got));
  CHECK(got.name == "alice");
  REQUIRE_FALSE(c.set_limit(k.hash, 7'250'000'000, "weekly", &got));
  CHECK(got.limit_nanousd == 7'250'000'000);
  CHECK(got.limit_reset == "weekly");
  REQUIRE_FALSE(c.set_limit(k.hash, std::nullopt, "", &got));
  CHECK_FALSE(got.limit_nanousd.has_value());
  REQUIRE_FALSE(c.rename(k.hash, "alice-renamed", &got));
  CHECK(got.name == "alice-renamed");
  REQUIRE_FALSE(c.set_disabled(k.hash, true, &got));
  CHECK(got.disabled);
  std::vector<KeyInfo> all;
  REQUIRE_FALSE(c.list_keys(&all));  // disabled ones included
  REQUIRE(all.size() == 1);
  int64_t total = 0, usage = -1;
  REQUIRE_FALSE(c.credits(&total, &usage));
  CHECK(total == 100'000'000'000);
  CHECK(usage == 0);
  std::vector<ModelInfo> models;
  REQUIRE_FALSE(c.models(&models));
  REQUIRE_FALSE(models.empty());
  CHECK(models[0].id == "openai/gpt-4o-mini");
  CHECK(models[0].prompt_nanousd_per_mtok == 150'000'000);
  CHECK(models[0].completion_nanousd_per_mtok == 600'000'000);
  REQUIRE_FALSE(c.delete_key(k.hash));
  const Error gone = c.get_key(k.hash, &got);
  CHECK(gone.kind == ErrorKind::kNotFound);
  CHECK(c.status_counts().at(200) >= 8);
}

TEST_CASE("5,000 keys over 50 pages", "[openrouter]") {
  EmulatorProcess emu;
  Client c(emu.options());
  for (int i = 0; i < 5000; ++i) {
    KeyInfo k;
    std::string secret;
    REQUIRE_FALSE(c.create_key("k" + std::to_string(i), std::nullopt, "", &k, &secret));
  }
  std::vector<KeyInfo> all;
  REQUIRE_FALSE(c.list_keys(&all));
  CHECK(all.size() == 5000);
  std::set<std::string> unique;
  for (const auto& k : all) unique.insert(k.hash);
  CHECK(unique.size() == 5000);
}

TEST_CASE("errors people hit are named, with what to do, and never show a key", "[openrouter]") {
  EmulatorProcess emu;
  Client management(emu.options());
  KeyInfo k;
  std::string normal;
  REQUIRE_FALSE(management.create_key("worker", std::nullopt, "", &k, &normal));

  Client wrong_type(emu.options(normal));
  std::vector<KeyInfo> all;
  Error e = wrong_type.list_keys(&all);
  CHECK(e.kind == ErrorKind::kWrongKeyType);
  CHECK(e.message.find("$OPENROUTER_MGMT_KEY is a normal API key") != std::string::npos);
  no_key_in(e, normal);
  bool is_management = true;
  REQUIRE_FALSE(wrong_type.current_key(&k, &is_management));
  CHECK_FALSE(is_management);

  const std::string bogus = "sk-or-v1-" + std::string(64, 'f');
  Client unknown(emu.options(bogus));
  e = unknown.list_keys(&all);
  CHECK(e.kind == ErrorKind::kAuth);
  CHECK(e.http_status == 401);
  CHECK(e.message.find("$OPENROUTER_MGMT_KEY") != std::string::npos);
  no_key_in(e, bogus);
  CHECK(unknown.retries() == 0);  // a 401 is not retried

  ClientOptions nowhere = emu.options();
  nowhere.base_url = "http://127.0.0.1:1/api/v1";
  nowhere.attempts_max = 2;
  Client unreachable(nowhere);
  e = unreachable.list_keys(&all);
  CHECK(e.kind == ErrorKind::kNetwork);
  no_key_in(e, emu.key());
}

TEST_CASE("every status code is classified, and only transient ones are retried", "[openrouter]") {
  EmulatorProcess emu;
  struct Case {
    int status;
    ErrorKind kind;
    bool retried;
  };
  const Case cases[] = {{400, ErrorKind::kBadRequest, false}, {401, ErrorKind::kAuth, false},
                        {402, ErrorKind::kCredits, false},    {403, ErrorKind::kForbidden, false},
                        {404, ErrorKind::kNotFound, false},   {408, ErrorKind::kTimeout, true},
                        {413, ErrorKind::kBadRequest, false}, {422, ErrorKind::kBadRequest, false},
                        {429, ErrorKind::kRateLimited, true}, {500, ErrorKind::kServer, true},
                        {502, ErrorKind::kServer, true},      {503, ErrorKind::kServer, true},
                        {524, ErrorKind::kServer, true},      {529, ErrorKind::kServer, true}};
  for (const Case& c : cases) {
    INFO("status " << c.status);
    Client client(emu.options());
    // Inject more failures than attempts, so the final error is the injected one.
    emu.admin("/__emulator/faults", R"({"path": "/api/v1/credits", "status": )" + std::to_string(c.status) + R"(, "count": 4})");
    int64_t total = 0, usage = 0;
    const Error e = client.credits(&total, &usage);
    CHECK(e.kind == c.kind);
    CHECK(e.http_status == c.status);
    CHECK(client.retries() == (c.retried ? 3u : 0u));
    no_key_in(e, emu.key());
    // Drain what the client did not use up.
    for (int i = 0; i < 4; ++i) (void)Client(emu.options()).credits(&total, &usage);
  }
}

TEST_CASE("transient faults are retried through: 429 with Retry-After, truncated, malformed, slow", "[openrouter]") {
  EmulatorProcess emu;
  Client c(emu.options());
  int64_t total = 0, usage = 0;
  emu.admin("/__emulator/faults", R"({"path": "/api/v1/credits", "status": 429, "retry_after_s": 1, "count": 1})");
  const auto started = std::chrono::steady_clock::now();
  REQUIRE_FALSE(c.credits(&total, &usage));
  CHECK(std::chrono::steady_clock::now() - started >= std::chrono::milliseconds(900));  // Retry-After honoured
  CHECK(c.retries() == 1);
  emu.admin("/__emulator/faults", R"({"path": "/api/v1/credits", "body": "truncated", "count": 1})");
  REQUIRE_FALSE(c.credits(&total, &usage));
  emu.admin("/__emulator/faults", R"({"path": "/api/v1/credits", "body": "malformed", "count": 2})");
  REQUIRE_FALSE(c.credits(&total, &usage));
  CHECK(c.retries() == 4);
  emu.admin("/__emulator/faults", R"({"path": "/api/v1/credits", "body": "malformed", "count": 9})");
  Error e = c.credits(&total, &usage);
  CHECK(e.kind == ErrorKind::kMalformed);
  CHECK(e.message.find("gave up after 4 attempts") != std::string::npos);
  emu.admin("/__emulator/faults", R"({"path": "/api/v1/models", "delay_ms": 3000, "count": 2})");
  ClientOptions quick = emu.options();
  quick.timeout_ms = 300;
  quick.attempts_max = 2;
  Client slow(quick);
  std::vector<ModelInfo> models;
  e = slow.models(&models);
  CHECK(e.kind == ErrorKind::kTimeout);
  CHECK(slow.retries() == 1);
}

TEST_CASE("a missing window field is unknown, never zero", "[openrouter]") {
  KeyInfo k;
  CHECK_FALSE(window_spend(k, "daily").has_value());
  k.usage_nanousd = 5;
  CHECK_FALSE(window_spend(k, "daily").has_value());  // lifetime usage is not window spend
  CHECK(window_spend(k, "") == 5);
  k.limit_nanousd = 75'000'000'000;
  k.limit_remaining_nanousd = 49'500'000'000;
  k.limit_reset = "daily";
  CHECK(window_spend(k, "daily") == 25'500'000'000);  // limit - remaining, the spec's example
  CHECK_FALSE(window_spend(k, "weekly").has_value());
  k.usage_weekly_nanousd = 7;
  CHECK(window_spend(k, "weekly") == 7);

  EmulatorProcess emu;
  Client c(emu.options());
  KeyInfo created;
  std::string secret;
  REQUIRE_FALSE(c.create_key("old-api", std::nullopt, "", &created, &secret));
  emu.admin("/__emulator/settings", R"({"omit_newer_fields": true, "extra_fields": true})");
  KeyInfo got;
  REQUIRE_FALSE(c.get_key(created.hash, &got));  // unknown fields are ignored
  CHECK_FALSE(got.usage_daily_nanousd.has_value());
  CHECK_FALSE(window_spend(got, "daily").has_value());
  CHECK(got.usage_nanousd == 0);
}

// A lying or broken OpenRouter cannot put control characters into an error (and so into the log),
// nor half a UTF-8 character when its long message is cut.
TEST_CASE("OpenRouter's words in an error are one printable line, cut at a character", "[openrouter]") {
  std::string e_acute;
  for (int i = 0; i < 200; ++i) e_acute += "\xC3\xA9";  // é, two bytes each
  // 23 bytes once decoded, so the 300-byte cut falls inside an é.
  const std::string body = R"({"error": {"code": 500, "message": "line one\nline two\r\u001b[2K!)" + e_acute + R"("}})";
  const Error e = classify_response(500, body, "the management key");
  INFO(e.message);
  CHECK(e.message.find('\n') == std::string::npos);
  CHECK(e.message.find('\r') == std::string::npos);
  CHECK(e.message.find('\x1b') == std::string::npos);
  CHECK(e.message.find("line one\\nline two\\r\\x1b[2K!") != std::string::npos);
  const size_t open = e.message.find("[2K!") + 4, close = e.message.find("\")", open);
  REQUIRE(close != std::string::npos);
  CHECK(close - open == 276);  // 138 whole é's: the one cut in half is left out
  CHECK(static_cast<unsigned char>(e.message[close - 1]) == 0xA9);
}

TEST_CASE("attribution names the user on a shared key", "[openrouter]") {
  const Attribution a = attribution_for("https://my-app.example", "my-app", "alice");
  CHECK(a.http_referer == "https://my-app.example");
  CHECK(a.title == "my-app:alice");
  CHECK(a.user == "alice");
  const std::vector<std::string> expected = {"HTTP-Referer: https://my-app.example", "X-OpenRouter-Title: my-app:alice",
                                             "X-Title: my-app:alice"};
  CHECK(a.headers() == expected);
  CHECK(attribution_for("", "", "bob").title == "bob");  // no app title: the user alone
}
