// proxy.hpp — what ledger-proxy does with one HTTP request (DESIGN 12), apart from the sockets.
//
// Every function that waits (on the client, on OpenRouter, on a retry's pause) is a coroutine run
// on the connection's event loop (loops.hpp): it never blocks the loop.
//
// POST /api/v1/chat/completions, /api/v1/completions and /api/v1/embeddings (also /v1/...): the
// bearer "lk-..." key names the account (a team's key may name one of its descendants in the
// body's `user`); the body is parsed (Boost.JSON, bounded), its cost bounded from above (prompt
// tokens <= the body's bytes; max_tokens, or max_completion_tokens, or proxy.max_tokens_default
// inserted; an embedding produces no completion tokens), then authorize() (blocked, tier,
// fallback, downgrade, the hold on the whole chain) picks the model that is forwarded. The answer's
// usage.cost is committed; without one, the generation's cost is looked up (/generation?id=, with
// retries), and when it never becomes known the hold is committed in full. A request that failed
// before OpenRouter could bill anything is released. Streams are relayed chunk by chunk as they
// arrive; a client that goes away stops the upstream read and the request is settled as above.
// GET /api/v1/models (also /v1/models) is passed through; GET /healthz and GET /metrics answer here.
// Errors have OpenAI's shape {"error": {"message", "type", "code"}} and never echo a key.
#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "ledger/ledger.hpp"
#include "inflight.hpp"
#include "proxy_keys.hpp"
#include "upstream.hpp"

namespace ledger::proxy {

struct Request {
  std::string method, target, authorization, body;
  std::chrono::steady_clock::time_point received;  // when the whole request was read
};

using Headers = std::vector<std::pair<std::string, std::string>>;

// Where a response goes: whole, or as a stream (head, then chunks as they come, then the end).
// Each returns false once the client is gone.
class Client {
 public:
  template <class T>
  using Awaitable = boost::asio::awaitable<T>;
  virtual ~Client() = default;
  virtual Awaitable<bool> send(int status, const Headers& headers, const std::string& body) = 0;
  virtual Awaitable<bool> begin_stream(int status, const Headers& headers) = 0;
  virtual Awaitable<bool> chunk(const char* data, size_t size) = 0;
  virtual Awaitable<bool> end_stream() = 0;
};

// What the request log line and the metrics say about one request (no key, no prompt text).
struct Outcome {
  int status = 0;
  std::string code;                 // our error code, or "" when answered
  std::string account, model, chosen;
  bool stream = false;
  int64_t hold_nanousd = 0, cost_nanousd = -1;  // cost -1: not settled by a commit (released, or no hold)
  std::string settled;              // "usage", "generation", "hold" (in full), "released", ""
  int64_t upstream_us = 0, added_us = 0;
};

struct Metrics;
struct Endpoint;

// A request's hold: what authorize() reserved, for which model.
struct Hold {
  ReservationId id = 0;
  std::string chosen;
  int64_t amount = 0;
  Status status;
  uint32_t retry_after_ms = 0;  // after a rate denial: when the limit may admit again (the ledger's hint)
};

class Proxy {
 public:
  Proxy(std::shared_ptr<const admin::Config> config, Ledger& ledger, std::string upstream_key);
  ~Proxy();
  void update(std::shared_ptr<const admin::Config> config, std::string upstream_key);
  boost::asio::awaitable<Outcome> handle(const Request& request, Client& client);
  std::string metrics_text(size_t in_flight) const;
  void record(const Outcome& outcome);
  // Stops upstream transfers (the drain deadline passed): no new one starts, generation lookups
  // stop asking; the caller cuts those in progress (Upstream::cut_transfers on every loop). Each
  // request is settled as usual.
  void cancel_all() { cancel_.store(true); }
  // Settles what a previous proxy on this ledger left in flight when it died (inflight.hpp).
  boost::asio::awaitable<void> settle_left_over();
  // The config's upstream is usable ("" = yes).
  std::string upstream_error() const { return upstream()->error(); }
  bool open_inflight(std::string* error) { return inflight_.open(error); }
  // The server's count of requests in flight, for /metrics.
  void set_in_flight(const std::atomic<size_t>* n) { in_flight_ = n; }

 private:
  boost::asio::awaitable<Outcome> generate(const Request& request, const Endpoint& endpoint, Client& client, const admin::Config& config,
                                           Upstream& upstream);
  boost::asio::awaitable<Outcome> models(const Request& request, Client& client, Upstream& upstream);
  // The upstream exchange of an admitted request and the settlement of its hold: a whole answer, or a stream.
  boost::asio::awaitable<void> answer(Outcome& o, Client& client, Upstream& upstream, const Endpoint& endpoint, const Hold& h,
                                      const std::string& body, std::chrono::steady_clock::time_point received);
  boost::asio::awaitable<void> stream(Outcome& o, Client& client, Upstream& upstream, const Endpoint& endpoint, const Hold& h, uint32_t slot,
                                      const std::string& body, std::chrono::steady_clock::time_point received);
  std::shared_ptr<const admin::Config> config() const;
  std::shared_ptr<Upstream> upstream() const;

  Ledger& ledger_;
  KeyTable keys_;
  Inflight inflight_;
  std::atomic<bool> cancel_{false};
  const std::atomic<size_t>* in_flight_ = nullptr;
  mutable std::mutex mutex_;
  std::shared_ptr<const admin::Config> config_;  // guarded by mutex_
  std::shared_ptr<Upstream> upstream_;           // guarded by mutex_
  std::unique_ptr<Metrics> metrics_;
};

}  // namespace ledger::proxy
