// emulator.hpp — an OpenRouter API emulator for tests, the demo and offline rehearsal.
//
// Implements what ../shared/openrouter-api.md describes for keys (/keys CRUD, pages of 100 newest
// first, disabled keys hidden unless asked), /key (and /auth/key), /credits, /models, /generation
// /chat/completions, /completions and /embeddings (completions.cpp), with per-key usage in all-time, UTC day, Monday week and calendar month
// buckets and limit enforcement. Money is kept in integer nano-USD and emitted as JSON numbers with
// up to 9 decimals. Faults are injected through /__emulator/* (loopback only, no auth: a test tool).
// A completion with "stream": true is answered as OpenRouter streams: server-sent events, one HTTP
// chunk each (`events`), the usage chunk last before `data: [DONE]`; the transport sends them as
// produced, after each event's delay (time to first token and generation speed, both 0 by default).
// Generations are kept for /generation?id= lookups: the last kGenerationsKept (settable through
// /__emulator/settings "generations_kept"), older ones answer 404, so a long run's memory stays
// bounded (about 150 bytes a generation: 100,000 take some 15 MiB).
// Thread safety: handle() may be called from many connection threads; one mutex guards the state.
#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace emulator {

struct Request {
  std::string method;
  std::string target;         // path and query
  std::string authorization;  // the Authorization header
  std::string body;
  std::string http_referer{}; // the HTTP-Referer header (attribution; shown by /generation)
};

// One server-sent event of a streamed response: its bytes on the wire ("data: {...}\n\n" or the
// comment ": OPENROUTER PROCESSING\n\n"), sent as one HTTP chunk after waiting delay_us.
struct StreamEvent {
  std::string data;
  int64_t delay_us = 0;
};

struct Response {
  int status = 200;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  int delay_ms = 0;
  bool truncate = false;      // send half the body (a stream: half its events, no last chunk), then close
  bool stream = false;        // text/event-stream with chunked transfer: `events`, `body` unused
  std::vector<StreamEvent> events{};
};

struct ModelPrice {
  std::string id;
  int64_t prompt_nanousd_per_mtok;
  int64_t completion_nanousd_per_mtok;
  int64_t request_nanousd;
};

// What a completion request asks for: chat messages, a text prompt, or embeddings of an input.
enum class Kind { kChat, kText, kEmbedding };

class Emulator {
 public:
  static constexpr size_t kGenerationsKept = 100'000;
  // management_key: the plaintext of the one management key (sk-or-v1-...).
  explicit Emulator(std::string management_key, int64_t (*now_ms)() = nullptr);
  Response handle(const Request& request);

 private:
  struct Key {
    std::string hash, name, label, secret, created_at, updated_at;
    bool management = false, disabled = false;
    std::optional<int64_t> limit;   // nano-USD
    std::string limit_reset;        // "", daily, weekly, monthly
    int64_t usage = 0;              // all-time, nano-USD
    int64_t day_index = -1, week_index = -1, month_index = -1;
    int64_t usage_daily = 0, usage_weekly = 0, usage_monthly = 0;
    int64_t created_seq = 0;
  };
  struct Fault {
    std::string path_prefix, method;
    int status = 0;            // 0 = no status change (delay / body faults only)
    int count = 1;
    int retry_after_s = -1;
    int delay_ms = 0;
    std::string body;          // "", "truncated", "malformed"
  };
  struct Generation {
    std::string id, model, key_hash, user, http_referer;
    int64_t cost = 0, prompt_tokens = 0, completion_tokens = 0, created_ms = 0;
    bool streamed = false;
  };

  Response route(const Request& request, const std::string& path, const std::map<std::string, std::string>& query);
  Response admin(const Request& request, const std::string& path);
  Response current_key(Key& caller);
  Response models() const;
  Response generation(const std::string& id) const;
  Response credits() const;
  Response list_keys(const std::map<std::string, std::string>& query);
  Response create_key(const Request& request);
  Response one_key(const Request& request, const std::string& hash);
  Response patch_key(Key& key, const std::string& body);
  Key* authenticate(const Request& request, Response* error);
  void roll_windows(Key& key, int64_t now_ms);
  void charge(Key& key, int64_t nanousd);
  int64_t window_usage(const Key& key) const;
  std::string key_json(const Key& key, bool newer_fields) const;
  Response completion(Key& key, const Request& request, Kind kind);
  Response reply(const Generation& g, const boost::json::object& request, Kind kind, bool stream) const;
  Response completion_stream(const Generation& g, const std::string& content, Kind kind) const;
  void keep(const Generation& g);
  std::string now_iso() const;

  std::mutex mutex_;
  int64_t (*now_ms_)();
  std::vector<Key> keys_;  // creation order
  std::vector<ModelPrice> models_;
  std::vector<Fault> faults_;
  std::map<std::string, Generation> generations_;
  std::deque<std::string> generation_order_;  // oldest first, for dropping beyond generations_kept_
  size_t generations_kept_ = kGenerationsKept;
  int64_t next_seq_ = 1;
  int64_t credits_total_ = 100 * 1'000'000'000LL;
  int page_size_ = 100;
  bool omit_newer_fields_ = false;
  bool extra_fields_ = false;
  int limit_exceeded_status_ = 402;
  int generation_not_ready_ms_ = 0;
  int64_t ttft_ms_ = 0;              // streams: wait before the first content chunk
  double tokens_per_second_ = 0;     // streams: generation speed; 0 = as fast as possible
  uint64_t requests_served_ = 0;
};

// Formats nano-USD as a JSON number in USD with up to 9 decimals ("0.000001536", "10", "-2.5").
std::string usd_number(int64_t nanousd);

}  // namespace emulator
