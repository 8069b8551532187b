// The pinned C ABI: every function, with every kind of bad argument, returns its code and never
// crashes (run under ASan/UBSan too).
#include "ledger/c.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <thread>
#include <cstring>
#include <string>

#include "test_util.hpp"

using ledger_test::kUsd;
using ledger_test::TempDir;
using ledger::Code;
using ledger::HoldPolicy;
using ledger::Ledger;
using ledger::Options;

namespace {
struct Handle {
  ledger_t* ledger = nullptr;
  ~Handle() { ledger_close(ledger); }
};
}  // namespace

TEST_CASE("codes and strerror are pinned", "[c]") {
  CHECK(LEDGER_OK == 0);
  CHECK(LEDGER_DENIED_OVER_BUDGET == 1);
  CHECK(LEDGER_UNKNOWN_MODEL == 14);
  CHECK(LEDGER_PERIOD_MONTHLY == 3);
  CHECK(std::string(ledger_strerror(LEDGER_DENIED_PARENT_OVER_BUDGET)).find("parent") != std::string::npos);
  for (int code = -5; code < 40; ++code) REQUIRE(ledger_strerror(code) != nullptr);
  CHECK(sizeof(ledger_balance_t) == 56);
  CHECK(sizeof(ledger_limits_t) == 12);
}

TEST_CASE("create, open and close validate their arguments", "[c]") {
  TempDir dir;
  ledger_t* out = reinterpret_cast<ledger_t*>(0x1);
  CHECK(ledger_create(nullptr, nullptr, &out) == LEDGER_INVALID_ARGUMENT);
  CHECK(out == nullptr);  // reset on every failure
  CHECK(ledger_create(dir.path().c_str(), nullptr, nullptr) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_create("", nullptr, &out) == LEDGER_INVALID_ARGUMENT);
  CHECK(out == nullptr);
  CHECK(ledger_open(dir.path().c_str(), &out) == LEDGER_NOT_FOUND);
  CHECK(ledger_open(nullptr, &out) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_open(dir.path().c_str(), nullptr) == LEDGER_INVALID_ARGUMENT);
  const std::string too_long(5000, 'x');
  CHECK(ledger_create(too_long.c_str(), nullptr, &out) == LEDGER_INVALID_ARGUMENT);
  ledger_limits_t bad{0, 0, 4096};
  CHECK(ledger_create(dir.path().c_str(), &bad, &out) == LEDGER_INVALID_ARGUMENT);
  ledger_limits_t limits{16, 16, 4};
  Handle h;
  REQUIRE(ledger_create(dir.path().c_str(), &limits, &h.ledger) == LEDGER_OK);
  Handle again;
  REQUIRE(ledger_open(dir.path().c_str(), &again.ledger) == LEDGER_OK);
  ledger_close(nullptr);  // harmless
}

TEST_CASE("every call refuses NULL, empty, long, malformed and negative arguments", "[c]") {
  TempDir dir;
  Handle h;
  REQUIRE(ledger_create(dir.path().c_str(), nullptr, &h.ledger) == LEDGER_OK);
  ledger_t* l = h.ledger;
  const std::string name63(63, 'a'), name64(64, 'a'), name_huge(100000, 'b');
  uint64_t id = 0;
  ledger_balance_t b{};
  uint32_t n = 0;
  int64_t est = 0;
  char model_out[64];

  // NULL handle everywhere.
  CHECK(ledger_set_budget(nullptr, "a", 1, 0, nullptr) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_block(nullptr, "a", 1) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_debit(nullptr, "a", 1) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_reserve(nullptr, "a", 1, 0, &id) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_commit(nullptr, 1, 1) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_release(nullptr, 1) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_balance(nullptr, "a", &b) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_reclaim(nullptr, &n) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_flush(nullptr) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_set_price(nullptr, "m", 1, 1, 1) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_estimate(nullptr, "m", 1, 1, &est) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_authorize(nullptr, "a", "m", 1, 0, model_out, sizeof model_out, &id) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_authorize_via(nullptr, "a", "m", 1, 0, nullptr, model_out, sizeof model_out, &id) == LEDGER_INVALID_ARGUMENT);

  // Names: NULL, empty, 64+ bytes (read with a bound, even 100 kB), bad characters.
  for (const char* bad : {static_cast<const char*>(nullptr), "", name64.c_str(), name_huge.c_str(),
                          "has space", "slash/no", "tab\t", "caf\xc3\xa9"}) {
    INFO((bad ? std::string(bad).substr(0, 20) : std::string("NULL")));
    CHECK(ledger_set_budget(l, bad, kUsd, LEDGER_PERIOD_DAILY, nullptr) == LEDGER_INVALID_ARGUMENT);
    CHECK(ledger_block(l, bad, 1) == LEDGER_INVALID_ARGUMENT);
    CHECK(ledger_debit(l, bad, 1) == LEDGER_INVALID_ARGUMENT);
    CHECK(ledger_reserve(l, bad, 1, 0, &id) == LEDGER_INVALID_ARGUMENT);
    CHECK(ledger_balance(l, bad, &b) == LEDGER_INVALID_ARGUMENT);
    CHECK(ledger_authorize(l, bad, "m", 1, 0, model_out, sizeof model_out, &id) == LEDGER_INVALID_ARGUMENT);
    if (bad != nullptr && bad[0] != '\0')
      CHECK(ledger_set_budget(l, "child", kUsd, LEDGER_PERIOD_DAILY, bad) == LEDGER_INVALID_ARGUMENT);
  }
  REQUIRE(ledger_set_budget(l, name63.c_str(), kUsd, LEDGER_PERIOD_DAILY, "") == LEDGER_OK);
  REQUIRE(ledger_set_budget(l, "team", 10 * kUsd, LEDGER_PERIOD_MONTHLY, nullptr) == LEDGER_OK);
  REQUIRE(ledger_set_budget(l, "alice", 2 * kUsd, LEDGER_PERIOD_DAILY, "team") == LEDGER_OK);

  // Periods, limits, flags and amounts.
  CHECK(ledger_set_budget(l, "x", kUsd, -1, nullptr) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_set_budget(l, "x", kUsd, 4, nullptr) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_set_budget(l, "x", -1, 0, nullptr) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_set_budget(l, "x", INT64_MAX, 0, nullptr) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_set_budget(l, "x", kUsd, 0, "missing") == LEDGER_UNKNOWN_ACCOUNT);
  CHECK(ledger_block(l, "alice", 2) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_block(l, "alice", -1) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_block(l, "nobody", 1) == LEDGER_UNKNOWN_ACCOUNT);
  CHECK(ledger_debit(l, "alice", -1) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_debit(l, "alice", INT64_MIN) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_debit(l, "alice", INT64_MAX) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_debit(l, "nobody", 1) == LEDGER_UNKNOWN_ACCOUNT);
  CHECK(ledger_reserve(l, "alice", -5, 0, &id) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_reserve(l, "alice", 1, 0, nullptr) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_reserve(l, "alice", 1, 8 * 86400, &id) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_balance(l, "alice", nullptr) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_balance(l, "nobody", &b) == LEDGER_UNKNOWN_ACCOUNT);
  CHECK(ledger_commit(l, 0, 1) == LEDGER_UNKNOWN_RESERVATION);
  CHECK(ledger_commit(l, 0xFFFFFFFFFFFFFFFFull, 1) == LEDGER_UNKNOWN_RESERVATION);
  CHECK(ledger_release(l, 12345) == LEDGER_UNKNOWN_RESERVATION);

  // The happy path through the C types.
  REQUIRE(ledger_reserve(l, "alice", kUsd, 0, &id) == LEDGER_OK);
  CHECK(ledger_commit(l, id, -1) == LEDGER_INVALID_ARGUMENT);
  REQUIRE(ledger_commit(l, id, kUsd / 2) == LEDGER_OK);
  CHECK(ledger_commit(l, id, kUsd / 2) == LEDGER_ALREADY_SETTLED);
  CHECK(ledger_release(l, id) == LEDGER_ALREADY_SETTLED);
  REQUIRE(ledger_debit(l, "alice", kUsd) == LEDGER_OK);
  CHECK(ledger_debit(l, "alice", kUsd) == LEDGER_DENIED_OVER_BUDGET);
  REQUIRE(ledger_balance(l, "alice", &b) == LEDGER_OK);
  CHECK(b.limit_nanousd == 2 * kUsd);
  CHECK(b.spent_nanousd == kUsd + kUsd / 2);
  CHECK(b.held_nanousd == 0);
  CHECK(b.available_nanousd == kUsd / 2);
  CHECK(b.requests == 2);
  CHECK(b.period == LEDGER_PERIOD_DAILY);
  CHECK(b.blocked == 0);
  CHECK(b.period_start_unix % 86400 == 0);
  REQUIRE(ledger_block(l, "alice", 1) == LEDGER_OK);
  CHECK(ledger_debit(l, "alice", 1) == LEDGER_DENIED_BLOCKED);
  REQUIRE(ledger_block(l, "alice", 0) == LEDGER_OK);
  CHECK(ledger_reclaim(l, nullptr) == LEDGER_OK);  // the count is optional
  CHECK(ledger_reclaim(l, &n) == LEDGER_OK);
  CHECK(ledger_flush(l) == LEDGER_OK);
}

TEST_CASE("prices, estimates and authorize through the C ABI", "[c][policy]") {
  TempDir dir;
  Handle h;
  REQUIRE(ledger_create(dir.path().c_str(), nullptr, &h.ledger) == LEDGER_OK);
  ledger_t* l = h.ledger;
  REQUIRE(ledger_set_budget(l, "alice", kUsd, LEDGER_PERIOD_DAILY, nullptr) == LEDGER_OK);
  int64_t est = -1;
  uint64_t id = 0;
  char out[32];

  CHECK(ledger_estimate(l, "openai/gpt-4o-mini", 1000, 1000, &est) == LEDGER_UNKNOWN_MODEL);
  // $0.15 and $0.60 per million tokens, no request fee.
  REQUIRE(ledger_set_price(l, "openai/gpt-4o-mini", 150'000'000, 600'000'000, 0) == LEDGER_OK);
  REQUIRE(ledger_estimate(l, "openai/gpt-4o-mini", 1000, 500, &est) == LEDGER_OK);
  CHECK(est == 450'000);  // 1000*0.15e-6 + 500*0.60e-6 USD = 0.00045 USD
  REQUIRE(ledger_estimate(l, "openai/gpt-4o-mini", 1, 0, &est) == LEDGER_OK);
  CHECK(est == 150);
  REQUIRE(ledger_set_price(l, "odd/model", 1, 0, 7) == LEDGER_OK);
  REQUIRE(ledger_estimate(l, "odd/model", 1, 0, &est) == LEDGER_OK);
  CHECK(est == 8);  // 1e-6 nano-USD rounds up to 1, never down to free
  REQUIRE(ledger_set_price(l, "pricey/model", 1'000'000'000'000'000'000, 1'000'000'000'000'000'000, 0) == LEDGER_OK);
  CHECK(ledger_estimate(l, "pricey/model", UINT32_MAX, UINT32_MAX, &est) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_set_price(l, "m", -1, 0, 0) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_set_price(l, "with space", 1, 1, 1) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_set_price(l, nullptr, 1, 1, 1) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_set_price(l, std::string(88, 'm').c_str(), 1, 1, 1) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_estimate(l, "openai/gpt-4o-mini", 1, 1, nullptr) == LEDGER_INVALID_ARGUMENT);

  CHECK(ledger_authorize(l, "alice", "unknown/model", 100, 0, out, sizeof out, &id) == LEDGER_UNKNOWN_MODEL);
  CHECK(std::string(out) == "unknown/model");  // the model that has no price is named
  // The key a request goes through: a full hash (registered when new), a unique prefix, or the
  // default rule (NULL or ""); bad keys refuse before anything is reserved.
  const std::string key(64, 'c');
  REQUIRE(ledger_authorize_via(l, "alice", "openai/gpt-4o-mini", 100, 0, key.c_str(), out, sizeof out, &id) == LEDGER_OK);
  REQUIRE(ledger_commit(l, id, 100) == LEDGER_OK);
  REQUIRE(ledger_authorize_via(l, "alice", "openai/gpt-4o-mini", 100, 0, key.substr(0, 12).c_str(), out, sizeof out, &id) == LEDGER_OK);
  REQUIRE(ledger_release(l, id) == LEDGER_OK);
  REQUIRE(ledger_authorize_via(l, "alice", "openai/gpt-4o-mini", 100, 0, "", out, sizeof out, &id) == LEDGER_OK);
  REQUIRE(ledger_release(l, id) == LEDGER_OK);
  for (const std::string& bad : {std::string("dddddddddddd"), std::string("ccccccccccc"), key + "c", std::string(100000, 'c'),
                                 std::string("sk-or-v1-") + key}) {
    INFO(bad.substr(0, 20));
    CHECK(ledger_authorize_via(l, "alice", "openai/gpt-4o-mini", 100, 0, bad.c_str(), out, sizeof out, &id) ==
          LEDGER_INVALID_ARGUMENT);
  }
  // Too small a buffer: refused before anything is reserved.
  CHECK(ledger_authorize(l, "alice", "openai/gpt-4o-mini", 100, 0, out, 18, &id) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_authorize(l, "alice", "openai/gpt-4o-mini", 100, 0, nullptr, 64, &id) == LEDGER_INVALID_ARGUMENT);
  CHECK(ledger_authorize(l, "alice", "openai/gpt-4o-mini", 100, 0, out, sizeof out, nullptr) == LEDGER_INVALID_ARGUMENT);
  ledger_balance_t b{};
  REQUIRE(ledger_balance(l, "alice", &b) == LEDGER_OK);
  CHECK(b.held_nanousd == 0);
  REQUIRE(ledger_authorize(l, "alice", "openai/gpt-4o-mini", 450'000, 0, out, 19, &id) == LEDGER_OK);
  CHECK(std::string(out) == "openai/gpt-4o-mini");
  REQUIRE(ledger_balance(l, "alice", &b) == LEDGER_OK);
  CHECK(b.held_nanousd == 450'000);
  CHECK(ledger_authorize(l, "alice", "openai/gpt-4o-mini", 2 * kUsd, 0, out, sizeof out, &id) == LEDGER_DENIED_OVER_BUDGET);
}

TEST_CASE("the configured default TTL reaches a worker's ledger_reserve(ttl 0)", "[c]") {
  ledger_test::TempDir dir;
  ledger_t* l = nullptr;
  REQUIRE(ledger_create(dir.path().c_str(), nullptr, &l) == LEDGER_OK);
  REQUIRE(ledger_set_budget(l, "alice", kUsd, LEDGER_PERIOD_NONE, nullptr) == LEDGER_OK);
  {
    // What ledgerctl init and the sidecar do with ledger.reservation_ttl_s: set it in the segment.
    Options admin;
    admin.admin = true;
    std::unique_ptr<Ledger> sidecar;
    REQUIRE(Ledger::open(dir.path(), admin, &sidecar) == Code::kOk);
    HoldPolicy policy = sidecar->hold_policy();
    policy.default_ttl_s = 1;
    REQUIRE(sidecar->set_hold_policy(policy) == Code::kOk);
  }
  uint64_t id = 0;
  REQUIRE(ledger_reserve(l, "alice", 100, 0, &id) == LEDGER_OK);  // 0: the ledger's default, not 600 s
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  uint32_t reclaimed = 0;
  REQUIRE(ledger_reclaim(l, &reclaimed) == LEDGER_OK);
  CHECK(reclaimed == 1);
  ledger_close(l);
}
