// upstream.hpp — the proxy's side towards OpenRouter (Boost.Beast over HTTP/1.1, OpenSSL for
// https): JSON requests, streams relayed as they arrive, and the generation lookup that settles a
// request whose reply carried no cost.
//
// Why Beast and not libcurl: the proxy's request path runs on event loops (loops.hpp) as
// coroutines, and an exchange here is one write and the reads of one answer on a connection of
// that loop's own keep-alive pool: no handle set up per request (libcurl's easy handle cost a
// socketpair, fcntls and sigactions each time), no lock, no thread hand-off. TLS is verified as the
// system does it: OpenSSL's default CA store (the system's, and SSL_CERT_FILE / SSL_CERT_DIR when
// set), the peer's certificate chain and its host name (RFC 6125), SNI sent. A pooled connection
// is checked before reuse (one that the server closed is dropped), and a request on a reused
// connection that got not one byte of answer before it failed is sent once more on a new one
// (the server closed it as the request went out, the way libcurl retries). The upstream key is
// sent as a header only: it never appears in a URL, a log or an error.
#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace boost::asio::ssl {
class context;
}

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
  bool stopped = false;        // the sink stopped the transfer (the client went away)
  std::string error;           // transport failure, for a person ("" = none)
  // When the request had been handed to the kernel, and when the answer's last byte (a stream:
  // its head) had been read: the proxy's own time is what lies outside these.
  std::chrono::steady_clock::time_point written{}, answered{};
};

// Called with each piece of a 200 stream's body as it arrives; false stops the transfer (the
// client went away).
using StreamSink = std::function<boost::asio::awaitable<bool>(const char* data, size_t size)>;

class Upstream {
 public:
  static constexpr size_t kIdleMax = 512;  // connections kept for reuse per loop and origin
  explicit Upstream(UpstreamOptions options);
  ~Upstream();
  const std::string& error() const { return error_; }  // "" when base_url is usable
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  // POST path (e.g. "/chat/completions") with a JSON body. With a sink, a 200 answer's body goes to
  // the sink piece by piece (any other status is collected in reply.body). Nothing starts once
  // *cancel is set.
  boost::asio::awaitable<UpstreamReply> post(const std::string& path, const std::string& body, const StreamSink* sink,
                                             const std::atomic<bool>* cancel);
  boost::asio::awaitable<UpstreamReply> get(const std::string& path_and_query, const std::atomic<bool>* cancel);
  // The generation's total cost in nano-USD, asked up to `attempts` times `interval_ms` apart
  // (OpenRouter answers 404 for a moment after a completion); nullopt when never known.
  boost::asio::awaitable<std::optional<int64_t>> generation_cost(const std::string& id, int attempts, uint32_t interval_ms,
                                                                 const std::atomic<bool>* cancel);
  // Cuts every upstream transfer of the calling loop (the drain deadline passed): each ends as
  // failed and is settled as usual. To be run on every loop (Loops::post_all).
  static void cut_transfers();
  struct Connection;  // a kept-alive connection (upstream.cpp)

 private:
  boost::asio::awaitable<UpstreamReply> perform(const char* method, const std::string& target, const std::string& body,
                                                const StreamSink* sink, const std::atomic<bool>* cancel);
  boost::asio::awaitable<std::unique_ptr<Connection>> connect(std::chrono::steady_clock::time_point deadline, UpstreamReply& reply);

  UpstreamOptions options_;
  std::string error_;                 // base_url unusable ("" = fine)
  bool tls_ = false;
  std::string host_, port_, prefix_, origin_, host_header_;
  std::shared_ptr<boost::asio::ssl::context> tls_context_;
};

}  // namespace ledger::proxy
