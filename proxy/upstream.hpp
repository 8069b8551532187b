// upstream.hpp — the proxy's side towards OpenRouter (libcurl): JSON requests, streams relayed as
// they arrive, and the generation lookup that settles a request whose reply carried no cost.
//
// Why libcurl: it verifies TLS the way the system does (CA store, host name), speaks HTTP/1.1 with
// keep-alive, and all handles share one connection cache here (CURLSH), so a request reuses a warm
// connection to OpenRouter instead of paying a TCP+TLS handshake; the sidecar's client uses it
// already. The upstream key is sent as a header only: it never appears in a URL, a log or an error.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace ledger::proxy {

struct UpstreamOptions {
  std::string base_url;    // openrouter.base_url, e.g. https://openrouter.ai/api/v1
  std::string key;         // the OpenRouter key (never logged)
  std::string app_url, app_title;  // attribution headers
  uint32_t timeout_ms = 600'000;
};

struct UpstreamReply {
  long status = 0;             // HTTP status; 0 when no response came
  std::string body;            // the body (for a relayed stream: only what was not relayed)
  std::string content_type;
  std::string generation_id;   // X-Generation-Id, when sent
  std::string retry_after, should_retry;  // Retry-After, x-should-retry, when sent (passed to the client)
  bool sent = false;           // the request may have reached OpenRouter (so it may be billed)
  std::string error;           // transport failure, for a person ("" = none)
};

// Called with each piece of a 200 stream as it arrives; false stops the transfer (client gone).
using StreamSink = std::function<bool(const char* data, size_t size)>;

class Upstream {
 public:
  explicit Upstream(UpstreamOptions options);
  ~Upstream();
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  // POST path (e.g. "/chat/completions") with a JSON body. With a sink, a 200 answer's body goes to
  // the sink piece by piece (any other status is collected in reply.body). `cancel` stops it.
  UpstreamReply post(const std::string& path, const std::string& body, const StreamSink* sink, const std::atomic<bool>* cancel);
  UpstreamReply get(const std::string& path_and_query, const std::atomic<bool>* cancel);
  // The generation's total cost in nano-USD, asked up to `attempts` times `interval_ms` apart
  // (OpenRouter answers 404 for a moment after a completion); nullopt when never known.
  std::optional<int64_t> generation_cost(const std::string& id, int attempts, uint32_t interval_ms, const std::atomic<bool>* cancel);

 private:
  UpstreamReply perform(const std::string& method, const std::string& path, const std::string& body, const StreamSink* sink,
                        const std::atomic<bool>* cancel);
  UpstreamOptions options_;
  void* share_ = nullptr;  // CURLSH: the connection cache and DNS shared by every request
};

}  // namespace ledger::proxy
