// upstream.cpp — see upstream.hpp.
#include "upstream.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ledger/money.hpp"

namespace ledger::proxy {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using Clock = std::chrono::steady_clock;
using tcp = net::ip::tcp;

namespace {

constexpr size_t kReplyBytesMax = 64u << 20;     // a non-streamed answer larger than this is cut (and fails to parse)
constexpr size_t kRelayBufferBytes = 8192;       // a stream's body is relayed in pieces of at most this
constexpr auto kConnectTimeout = std::chrono::seconds(10);

}  // namespace

struct Upstream::Connection {
  std::string origin;
  std::optional<beast::tcp_stream> tcp;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;
  bool reused = false;
  beast::tcp_stream& lowest() { return tls ? beast::get_lowest_layer(*tls) : *tcp; }
};

namespace {

// This loop's connections: idle ones by origin, and those in use (so that a drain can cut them).
// Thread-local: a loop is one thread, and a connection never leaves its loop.
struct Pool {
  std::unordered_map<std::string, std::vector<std::unique_ptr<Upstream::Connection>>> idle;
  std::unordered_set<Upstream::Connection*> busy;
};
thread_local Pool t_pool;

struct Busy {  // a connection in use, for as long as this lives
  Upstream::Connection* c;
  explicit Busy(Upstream::Connection* conn) : c(conn) { t_pool.busy.insert(c); }
  ~Busy() { t_pool.busy.erase(c); }
};

// A pooled connection the server has not closed meanwhile: nothing to read yet, no end of stream.
bool still_open(Upstream::Connection& c) {
  if (c.buffer.size() != 0) return false;
  char byte;
  const ssize_t n = ::recv(c.lowest().socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

std::string trimmed(beast::string_view v, size_t max) {
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\r' || v.back() == '\n')) v.remove_suffix(1);
  return std::string(v.substr(0, max));
}

template <class Fields>
void read_head(const Fields& h, UpstreamReply& reply) {
  reply.generation_id = trimmed(h["X-Generation-Id"], 128);
  reply.content_type = trimmed(h[http::field::content_type], 128);
  reply.retry_after = trimmed(h[http::field::retry_after], 32);
  reply.should_retry = trimmed(h["x-should-retry"], 8);
}

bool stale(const beast::error_code& ec) {  // how a request on a connection the server had closed fails
  return ec == http::error::end_of_stream || ec == net::error::eof || ec == net::error::connection_reset ||
         ec == net::error::broken_pipe;
}

// One request and its answer on an open connection. *answered: some of the answer came.
template <class Stream>
net::awaitable<beast::error_code> exchange(Stream& s, Upstream::Connection& c, const http::request<http::string_body>& req,
                                           const StreamSink* sink, const std::atomic<bool>* cancel, UpstreamReply& reply,
                                           bool* answered, bool* keep_alive) {
  beast::error_code ec;
  reply.sent = true;  // from here on OpenRouter may have it
  co_await http::async_write(s, req, net::redirect_error(net::use_awaitable, ec));
  reply.written = Clock::now();
  if (ec) co_return ec;
  http::response_parser<http::buffer_body> head;
  head.body_limit(boost::none);  // a stream may be long; it is bounded in time (upstream_timeout_ms)
  co_await http::async_read_header(s, c.buffer, head, net::redirect_error(net::use_awaitable, ec));
  *answered = head.got_some();
  if (ec) co_return ec;
  reply.status = head.get().result_int();
  read_head(head.get(), reply);
  reply.answered = Clock::now();
  if (sink == nullptr || reply.status != 200) {
    http::response_parser<http::string_body> whole{std::move(head)};
    whole.body_limit(kReplyBytesMax);
    co_await http::async_read(s, c.buffer, whole, net::redirect_error(net::use_awaitable, ec));
    reply.answered = Clock::now();
    reply.body = std::move(whole.get().body());  // on a failure, what came before it
    *keep_alive = !ec && whole.keep_alive();
    co_return ec;
  }
  char piece[kRelayBufferBytes];
  while (!head.is_done()) {
    head.get().body().data = piece;
    head.get().body().size = sizeof piece;
    co_await http::async_read_some(s, c.buffer, head, net::redirect_error(net::use_awaitable, ec));
    if (ec == http::error::need_buffer) ec = {};
    if (ec) co_return ec;
    const size_t n = sizeof piece - head.get().body().size;
    if (n > 0 && !co_await (*sink)(piece, n)) {
      reply.stopped = true;  // the client went away: stop reading upstream
      co_return beast::error_code(net::error::operation_aborted);
    }
    if (cancel != nullptr && cancel->load()) co_return beast::error_code(net::error::operation_aborted);
  }
  *keep_alive = head.keep_alive();
  co_return ec;
}

}  // namespace

Upstream::Upstream(UpstreamOptions options) : options_(std::move(options)) {
  std::string url = options_.base_url;
  while (!url.empty() && url.back() == '/') url.pop_back();
  const size_t scheme_end = url.find("://");
  const std::string scheme = scheme_end == std::string::npos ? "" : url.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https") {
    error_ = "openrouter.base_url must start with https:// or http://";
    return;
  }
  tls_ = scheme == "https";
  const std::string rest = url.substr(scheme_end + 3);
  const size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  prefix_ = slash == std::string::npos ? "" : rest.substr(slash);
  const size_t colon = authority.rfind(':');
  host_ = colon == std::string::npos ? authority : authority.substr(0, colon);
  port_ = colon == std::string::npos ? (tls_ ? "443" : "80") : authority.substr(colon + 1);
  if (host_.empty() || port_.empty() || port_.find_first_not_of("0123456789") != std::string::npos) {
    error_ = "openrouter.base_url has no usable host and port";
    return;
  }
  host_header_ = colon == std::string::npos ? host_ : authority;
  origin_ = scheme + "://" + host_ + ":" + port_;
  if (tls_) {
    tls_context_ = std::make_shared<net::ssl::context>(net::ssl::context::tls_client);
    tls_context_->set_default_verify_paths();  // the system's CA store (and SSL_CERT_FILE / SSL_CERT_DIR)
    tls_context_->set_verify_mode(net::ssl::verify_peer);
  }
}

Upstream::~Upstream() = default;

void Upstream::cut_transfers() {
  for (Connection* c : t_pool.busy) {
    beast::error_code ec;
    c->lowest().socket().shutdown(tcp::socket::shutdown_both, ec);  // a read in progress, or the next one, ends
    c->lowest().socket().cancel(ec);
  }
}

net::awaitable<std::unique_ptr<Upstream::Connection>> Upstream::connect(Clock::time_point deadline, UpstreamReply& reply) {
  const auto executor = co_await net::this_coro::executor;
  beast::error_code ec;
  tcp::resolver resolver(executor);
  const auto endpoints = co_await resolver.async_resolve(host_, port_, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    reply.error = "upstream: cannot resolve " + host_ + ": " + ec.message();
    co_return nullptr;
  }
  auto c = std::make_unique<Connection>();
  c->origin = origin_;
  if (tls_) c->tls.emplace(executor, *tls_context_);
  else c->tcp.emplace(executor);
  c->lowest().expires_at(std::min(deadline, Clock::now() + kConnectTimeout));
  co_await c->lowest().async_connect(endpoints, net::redirect_error(net::use_awaitable, ec));
  if (!ec) c->lowest().socket().set_option(tcp::no_delay(true), ec);
  if (!ec && tls_) {
    if (SSL_set_tlsext_host_name(c->tls->native_handle(), host_.c_str()) != 1) ec = net::error::invalid_argument;
    c->tls->set_verify_callback(net::ssl::host_name_verification(host_));
    if (!ec) co_await c->tls->async_handshake(net::ssl::stream_base::client, net::redirect_error(net::use_awaitable, ec));
  }
  if (ec) {
    reply.error = "upstream: cannot connect to " + host_ + ":" + port_ + ": " + ec.message();
    co_return nullptr;
  }
  co_return c;
}

net::awaitable<UpstreamReply> Upstream::perform(const char* method, const std::string& target, const std::string& body,
                                                const StreamSink* sink, const std::atomic<bool>* cancel) {
  UpstreamReply reply;
  if (!error_.empty() || (cancel != nullptr && cancel->load())) {
    reply.error = !error_.empty() ? error_ : "upstream: cut (the proxy is stopping)";
    co_return reply;
  }
  http::request<http::string_body> req{std::string_view(method) == "POST" ? http::verb::post : http::verb::get, prefix_ + target, 11};
  req.set(http::field::host, host_header_);
  req.set(http::field::authorization, "Bearer " + options_.key);
  req.set(http::field::user_agent, "ledger-proxy");
  if (!options_.app_url.empty()) req.set("HTTP-Referer", options_.app_url);
  if (!options_.app_title.empty()) req.set("X-OpenRouter-Title", options_.app_title), req.set("X-Title", options_.app_title);
  if (req.method() == http::verb::post) req.set(http::field::content_type, "application/json"), req.body() = body;
  req.prepare_payload();
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(options_.timeout_ms);
  auto& idle = t_pool.idle[origin_];
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::unique_ptr<Connection> c;
    while (!idle.empty() && c == nullptr) {
      c = std::move(idle.back());
      idle.pop_back();
      if (!still_open(*c)) c.reset();
    }
    const bool reused = c != nullptr;
    if (!reused && (c = co_await connect(deadline, reply)) == nullptr) co_return reply;
    if (cancel != nullptr && cancel->load()) {  // cut while it connected
      reply.error = "upstream: cut (the proxy is stopping)";
      co_return reply;
    }
    const Busy busy(c.get());
    c->lowest().expires_at(deadline);
    bool answered = false, keep_alive = false;
    beast::error_code ec;
    if (c->tls) ec = co_await exchange(*c->tls, *c, req, sink, cancel, reply, &answered, &keep_alive);
    else ec = co_await exchange(*c->tcp, *c, req, sink, cancel, reply, &answered, &keep_alive);
    if (ec && reused && !answered && attempt == 0 && stale(ec)) {
      // The server had closed it as the request went out: once more on a new connection. `sent`
      // stays true: should the retry not even connect, the hold is settled as possibly billed.
      reply = UpstreamReply{};
      reply.sent = true;
      continue;
    }
    if (ec && !reply.stopped) reply.error = "upstream: " + (ec == beast::error::timeout ? std::string("timed out") : ec.message());
    if (!ec && keep_alive && idle.size() < kIdleMax) {
      c->lowest().expires_never();
      c->buffer.shrink_to_fit();  // an idle connection keeps no buffer
      c->reused = true;
      idle.push_back(std::move(c));
    }
    co_return reply;
  }
  co_return reply;
}

net::awaitable<UpstreamReply> Upstream::post(const std::string& path, const std::string& body, const StreamSink* sink,
                                             const std::atomic<bool>* cancel) {
  co_return co_await perform("POST", path, body, sink, cancel);
}

net::awaitable<UpstreamReply> Upstream::get(const std::string& path_and_query, const std::atomic<bool>* cancel) {
  co_return co_await perform("GET", path_and_query, "", nullptr, cancel);
}

net::awaitable<std::optional<int64_t>> Upstream::generation_cost(const std::string& id, int attempts, uint32_t interval_ms,
                                                                 const std::atomic<bool>* cancel) {
  if (id.empty() || id.size() > 128 || id.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != std::string::npos)
    co_return std::nullopt;
  net::steady_timer pause(co_await net::this_coro::executor);
  for (int attempt = 0; attempt < attempts && !(cancel != nullptr && cancel->load()); ++attempt) {
    if (attempt > 0) {
      pause.expires_after(std::chrono::milliseconds(interval_ms));
      beast::error_code ec;
      co_await pause.async_wait(net::redirect_error(net::use_awaitable, ec));
    }
    const std::string target = "/generation?id=" + id;
    const UpstreamReply r = co_await get(target, cancel);
    if (r.status != 200) continue;  // 404 for a moment after a completion; 5xx: try again
    std::error_code ec;
    const boost::json::value v = boost::json::parse(r.body, ec);
    const auto* data = !ec && v.is_object() ? v.get_object().if_contains("data") : nullptr;
    const auto* cost = data != nullptr && data->is_object() ? data->get_object().if_contains("total_cost") : nullptr;
    if (cost == nullptr || !cost->is_number()) continue;
    if (auto n = usd_double_to_nanousd(cost->to_number<double>()); n && *n >= 0) co_return n;
  }
  co_return std::nullopt;
}

}  // namespace ledger::proxy
