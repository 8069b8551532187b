// fuzz_openrouter — any bytes as an OpenRouter response body, through every parser the Client uses
// (a keys page, a key object, a created key, the calling key, credits, models, and the
// classification of an error response), then window_spend on every key parsed.
//
// Never a crash, an exception or undefined behaviour. A parser's failure is kMalformed with a
// message; a success gives only what the promises allow: keys with a hash, money within
// [-kAmountNanoUsdMax, kAmountNanoUsdMax] (a converted float is never out of range), models with an
// id. An error response always has a kind and a message, and the message never carries the body's
// text beyond the 300 bytes of OpenRouter's own message.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/money.hpp"
#include "openrouter/client.hpp"

namespace {

using namespace ledger::openrouter;

[[noreturn]] void broken(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_openrouter: %s: %s\n", what, detail.c_str());
  std::abort();
}

void check_money(const std::optional<int64_t>& v, const char* field) {
  if (v && (*v < -ledger::kAmountNanoUsdMax || *v > ledger::kAmountNanoUsdMax)) broken("money out of range", field);
}

void check_failed(const Error& e, const char* parser) {
  if (!e) return;
  if (e.kind != ErrorKind::kMalformed) broken("a parser failed with another kind than kMalformed", parser);
  if (e.message.empty()) broken("a parser failed without a message", parser);
}

void check_key(const KeyInfo& k, bool hash_required) {
  if (hash_required && k.hash.empty()) broken("a key without a hash", k.name);
  check_money(k.limit_nanousd, "limit");
  check_money(k.limit_remaining_nanousd, "limit_remaining");
  check_money(k.usage_nanousd, "usage");
  check_money(k.usage_daily_nanousd, "usage_daily");
  check_money(k.usage_weekly_nanousd, "usage_weekly");
  check_money(k.usage_monthly_nanousd, "usage_monthly");
  for (const char* period : {"", "daily", "weekly", "monthly", "none"}) {
    // limit - remaining of two in-range amounts: at most twice the range, never wrapped.
    const auto spend = window_spend(k, period);
    if (spend && (*spend < -2 * ledger::kAmountNanoUsdMax || *spend > 2 * ledger::kAmountNanoUsdMax))
      broken("window spend out of range", period);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);

  std::vector<KeyInfo> keys;
  size_t entries = 0;
  Error e = parse_keys_page(body, &keys, &entries);
  check_failed(e, "parse_keys_page");
  if (keys.size() > entries) broken("more keys than page entries", std::to_string(keys.size()));
  for (const auto& k : keys) check_key(k, true);

  KeyInfo key;
  e = parse_key_response(body, "GET /keys/{hash}", &key);
  check_failed(e, "parse_key_response");
  if (!e) check_key(key, true);

  KeyInfo created;
  std::string secret;
  e = parse_created_key(body, &created, &secret);
  check_failed(e, "parse_created_key");
  if (!e && secret.empty()) broken("a created key without its secret", created.hash);
  if (!e) check_key(created, true);

  KeyInfo me;
  bool management = false;
  e = parse_current_key(body, &me, &management);
  check_failed(e, "parse_current_key");
  if (!e) check_key(me, false);

  int64_t total = 0, usage = 0;
  e = parse_credits(body, &total, &usage);
  check_failed(e, "parse_credits");
  if (!e) {
    check_money(total, "total_credits");
    check_money(usage, "total_usage");
  }

  std::vector<ModelInfo> models;
  e = parse_models(body, &models);
  check_failed(e, "parse_models");
  for (const auto& m : models) {
    if (m.id.empty()) broken("a model without an id", "");
    check_money(m.prompt_nanousd_per_mtok, "prompt");
    check_money(m.completion_nanousd_per_mtok, "completion");
    check_money(m.request_nanousd, "request");
  }

  // One status per input (from its length, so every body meets every status over a run).
  static constexpr int kStatuses[] = {200, 400, 401, 402, 403, 404, 408, 413, 422, 429, 500, 502, 503, 524, 529, 0, 302, 999};
  const int status = kStatuses[size % (sizeof kStatuses / sizeof kStatuses[0])];
  e = classify_response(status, body, "$OPENROUTER_MGMT_KEY");
  if (e.http_status != status) broken("classify_response lost the status", std::to_string(status));
  if ((status >= 200 && status < 300) != !e) broken("a 2xx is an error, or an error is not", std::to_string(status));
  if (e && e.message.empty()) broken("an error without a message", std::to_string(status));
  // The fixed text plus at most 300 bytes of OpenRouter's message (and the key source).
  if (e.message.size() > 600) broken("error message longer than the quoted 300 bytes allow", std::to_string(e.message.size()));
  return 0;
}
