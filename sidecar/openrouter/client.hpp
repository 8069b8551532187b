// openrouter.hpp — a client for OpenRouter's Management API (keys, key info, credits, models).
//
// One libcurl easy handle, reused; TLS verification on; a total timeout per request; responses
// larger than response_bytes_max are refused. Transient failures (network, timeout, 408, 429, 5xx,
// malformed or truncated bodies) are retried with capped exponential backoff and full jitter,
// honouring Retry-After (capped too). Other 4xx are not retried and become errors that say what to
// do. The key is never logged, printed or put in an error. Parsing tolerates missing and unknown
// fields; a missing number is unknown (nullopt), never zero. Money is converted to nano-USD once.
// Bounded in time: a Client may be given a cancel flag and a deadline (set_deadline, per cycle of
// work); every transfer, retry and backoff sleep stops at whichever comes first (a transfer in
// progress is aborted within ~50 ms of a cancel), so a caller can promise an overall deadline.
// Thread safety: a Client is for one thread (the cancel flag may be set from any thread).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ledger::openrouter {

struct ClientOptions {
  std::string base_url = "https://openrouter.ai/api/v1";
  std::string api_key;                 // management key for the admin endpoints
  std::string key_source = "the key";  // how errors name where the key came from ("$OPENROUTER_MGMT_KEY")
  uint32_t timeout_ms = 10000;
  uint32_t attempts_max = 4;           // first try included
  uint32_t backoff_initial_ms = 200;
  uint32_t backoff_max_ms = 5000;
  uint32_t retry_after_max_ms = 30000;
  size_t response_bytes_max = 16 * 1024 * 1024;
  uint32_t key_pages_max = 1000;       // 100,000 keys
  const std::atomic<bool>* cancel = nullptr;  // when set to true: stop at once (kCancelled)
};

struct KeyInfo {
  std::string hash, name, label, limit_reset, created_at;
  bool disabled = false;
  std::optional<int64_t> limit_nanousd, limit_remaining_nanousd;
  std::optional<int64_t> usage_nanousd, usage_daily_nanousd, usage_weekly_nanousd, usage_monthly_nanousd;
};

struct ModelInfo {
  std::string id;
  // nano-USD per million tokens (OpenRouter lists USD per token) and per request; nullopt = unknown
  std::optional<int64_t> prompt_nanousd_per_mtok, completion_nanousd_per_mtok, request_nanousd;
};

enum class ErrorKind {
  kNone,
  kNetwork,        // could not connect, reset, TLS
  kTimeout,
  kAuth,           // 401
  kWrongKeyType,   // 403 "Only management keys ..."
  kKeyLimit,       // the key's own limit: 403 "Key limit exceeded", or a 402 naming the key limit
  kCredits,        // the account's credits: 402 "Insufficient credits" / "requires more credits"
  kForbidden,      // other 403
  kNotFound,       // 404
  kRateLimited,    // 429 (after retries)
  kServer,         // 5xx (after retries)
  kBadRequest,     // other 4xx
  kMalformed,      // not the JSON we expect, or truncated
  kTooLarge,       // response over response_bytes_max
  kCancelled,      // the cancel flag was set, or the deadline passed, before an answer
};

struct Error {
  ErrorKind kind = ErrorKind::kNone;
  int http_status = 0;
  std::string message;  // what happened and what to do; never contains a key
  explicit operator bool() const { return kind != ErrorKind::kNone; }
};

class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  Error list_keys(std::vector<KeyInfo>* out);  // every page, disabled keys included
  Error get_key(const std::string& hash, KeyInfo* out);
  // limit_nanousd nullopt = unlimited; reset "" = none. *secret receives the new key (shown once).
  Error create_key(const std::string& name, std::optional<int64_t> limit_nanousd, const std::string& reset,
                   KeyInfo* out, std::string* secret);
  // Sets limit (nullopt = remove) and limit_reset ("" = none).
  Error set_limit(const std::string& hash, std::optional<int64_t> limit_nanousd, const std::string& reset, KeyInfo* out);
  Error set_disabled(const std::string& hash, bool disabled, KeyInfo* out);
  Error rename(const std::string& hash, const std::string& name, KeyInfo* out);
  Error delete_key(const std::string& hash);
  // /key: the calling key itself; is_management tells a management key from a normal one.
  Error current_key(KeyInfo* out, bool* is_management);
  Error credits(int64_t* total_nanousd, int64_t* usage_nanousd);
  Error models(std::vector<ModelInfo>* out);

  // Every request from now on stops at `deadline` (steady clock); max() = no deadline.
  void set_deadline(std::chrono::steady_clock::time_point deadline) { deadline_ = deadline; }
  void clear_deadline() { deadline_ = std::chrono::steady_clock::time_point::max(); }
  // Milliseconds left before the deadline (or the cancel), 0 when it has passed.
  int64_t remaining_ms() const;

  // Responses seen, by HTTP status (0 = no response), for metrics.
  const std::map<int, uint64_t>& status_counts() const { return status_counts_; }
  uint64_t retries() const { return retries_; }

 private:
  struct Raw {
    int status = 0;
    std::string body;
    std::optional<uint32_t> retry_after_s;
  };
  Error request(const std::string& method, const std::string& path, const std::string& body, Raw* out);
  Error perform_once(const std::string& method, const std::string& path, const std::string& body, Raw* out);
  // Sleeps ms, or less when the deadline or a cancel comes first; false when it did.
  bool pause(uint64_t ms) const;

  ClientOptions options_;
  std::chrono::steady_clock::time_point deadline_ = std::chrono::steady_clock::time_point::max();
  void* curl_ = nullptr;
  std::map<int, uint64_t> status_counts_;
  uint64_t retries_ = 0;
  uint64_t jitter_state_;
};

// The response parsers the Client uses, public so that they can be tested and fuzzed on their own
// (fuzz/fuzz_openrouter.cpp). Each takes a body as OpenRouter sent it (any bytes), never throws, and
// on failure returns kMalformed with a message naming the request (http_status 0: the Client fills
// it in). Unknown fields are ignored; a missing money field is nullopt, never zero.
// A page of GET /keys: appends each key that has a hash to *out; *entries = the page's length.
Error parse_keys_page(std::string_view body, std::vector<KeyInfo>* out, size_t* entries);
// {"data": {key}} (GET and PATCH /keys/{hash}); `what` names the request in the error.
Error parse_key_response(std::string_view body, const char* what, KeyInfo* out);
// POST /keys: the key object and the new key's secret (top-level "key").
Error parse_created_key(std::string_view body, KeyInfo* out, std::string* secret);
// GET /key: the calling key, and whether it is a management (older name: provisioning) key.
Error parse_current_key(std::string_view body, KeyInfo* out, bool* is_management);
Error parse_credits(std::string_view body, int64_t* total_nanousd, int64_t* usage_nanousd);
Error parse_models(std::string_view body, std::vector<ModelInfo>* out);
// A response's status and body as an Error: kNone for a 2xx, else the kind and a message that
// says what to do (key_source names where the key came from; the key itself is never in it).
Error classify_response(int status, std::string_view body, const std::string& key_source);

// Window spend of a key for a ledger period ("daily", "weekly", "monthly", "" = all-time): the
// matching usage_* field, else limit - limit_remaining when the key's own reset matches; nullopt
// when OpenRouter did not say (never zero by default).
std::optional<int64_t> window_spend(const KeyInfo& key, const std::string& period);

}  // namespace ledger::openrouter
