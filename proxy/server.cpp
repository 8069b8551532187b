// server.cpp — see server.hpp.
#include "server.hpp"

#include <arpa/inet.h>
#include <malloc.h>
#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <chrono>
#include <cstring>
#include <unordered_set>

#include "core/admin.hpp"
#include "ledger/money.hpp"

namespace ledger::proxy {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

struct Server::Session {
  tcp::socket socket;
  Clock::time_point deadline = Clock::time_point::max();  // the read or write in progress ends by then
  bool idle = false;        // waiting for the first byte of a request (drain closes it)
  bool timed_out = false;   // the sweep cut it at its deadline
  explicit Session(tcp::socket s) : socket(std::move(s)) {}
  void cut() {
    beast::error_code ec;
    socket.cancel(ec);
  }
};

namespace {

constexpr uint32_t kHeaderBytesMax = 64 * 1024;
constexpr auto kSweepInterval = std::chrono::milliseconds(50);
constexpr size_t kConnectionsOverRequests = 256;  // idle keep-alive connections allowed beyond max_concurrent
constexpr size_t kTrimAfterConnections = 64;     // a crowd worth giving memory back after

// This loop's connections (a loop is one thread; a connection never leaves its loop).
thread_local std::unordered_set<Server::Session*> t_sessions;

auto redirect(beast::error_code& ec) { return net::redirect_error(net::use_awaitable, ec); }

// Writes responses to one connection: whole, or as a chunked stream. A stream's head leaves with
// its first chunk (one send: the first byte reaches the client one system call sooner).
class SocketClient : public Client {
 public:
  SocketClient(Server::Session& s, unsigned version, bool keep_alive, uint32_t write_timeout_ms)
      : s_(s), version_(version), keep_alive_(keep_alive), write_timeout_(write_timeout_ms) {}
  Awaitable<bool> send(int status, const Headers& headers, const std::string& body) override {
    http::response<http::string_body> res{static_cast<http::status>(status), version_};
    for (const auto& [name, value] : headers) res.set(name, value);
    res.keep_alive(keep_alive_);
    res.body() = body;
    res.prepare_payload();
    beast::error_code ec;
    arm();
    co_await http::async_write(s_.socket, res, redirect(ec));
    co_return done(ec);
  }
  Awaitable<bool> begin_stream(int status, const Headers& headers) override {
    http::response<http::empty_body> res{static_cast<http::status>(status), version_};
    for (const auto& [name, value] : headers) res.set(name, value);
    res.keep_alive(keep_alive_);
    res.chunked(true);
    std::ostringstream head;
    head << res.base();
    head_ = head.str();
    co_return ok_;
  }
  Awaitable<bool> chunk(const char* data, size_t size) override {
    beast::error_code ec;
    arm();
    co_await net::async_write(s_.socket, beast::buffers_cat(net::buffer(head_), http::make_chunk(net::buffer(data, size))), redirect(ec));
    head_.clear();
    co_return done(ec);
  }
  Awaitable<bool> end_stream() override {
    beast::error_code ec;
    arm();
    co_await net::async_write(s_.socket, beast::buffers_cat(net::buffer(head_), http::make_chunk_last()), redirect(ec));
    head_.clear();
    co_return done(ec);
  }
  bool ok() const { return ok_; }

 private:
  void arm() { s_.deadline = Clock::now() + std::chrono::milliseconds(write_timeout_); }  // a client that stops reading is gone
  bool done(const beast::error_code& ec) {
    s_.deadline = Clock::time_point::max();
    return ok_ = ok_ && !ec;
  }
  Server::Session& s_;
  unsigned version_;
  bool keep_alive_;
  uint32_t write_timeout_;
  bool ok_ = true;
  std::string head_;  // a stream's head, until its first chunk goes
};

std::string error_json(const char* message, const char* type, const char* code) {
  return std::string("{\"error\":{\"message\":\"") + message + "\",\"type\":\"" + type + "\",\"code\":\"" + code + "\"}}";
}

// A value for a key=value field: visible ASCII only (anything else becomes '?'), so a request can
// neither split a log line nor pass for another field.
std::string field(std::string_view text, size_t max_bytes = 96) {
  if (text.find("lk-") != std::string_view::npos || text.find("sk-or-") != std::string_view::npos) return "(redacted:key-like)";
  std::string out(text.substr(0, max_bytes));
  for (char& ch : out)
    if (ch <= ' ' || ch > '~' || ch == '"') ch = '?';
  return out;
}

// One key=value line per request: no key, no prompt text.
void log_request(const Request& r, const Outcome& o) {
  std::string fields = "method=" + field(r.method, 16) + " path=" + field(r.target.substr(0, r.target.find('?')), 64) + " status=" +
                       std::to_string(o.status);
  if (!o.code.empty()) fields += " code=" + o.code;
  if (!o.account.empty()) fields += " account=" + field(o.account);
  if (!o.model.empty()) fields += " model=" + field(o.model);
  if (!o.chosen.empty() && o.chosen != o.model) fields += " chosen=" + field(o.chosen);
  if (o.stream) fields += " stream=1";
  if (o.hold_nanousd > 0) fields += " hold_usd=" + format_usd(o.hold_nanousd);
  if (o.cost_nanousd >= 0) fields += " cost_usd=" + format_usd(o.cost_nanousd);
  if (!o.settled.empty()) fields += " settled=" + o.settled;
  fields += " upstream_ms=" + std::to_string(o.upstream_us / 1000) + " added_us=" + std::to_string(o.added_us);
  admin::log_line(o.status >= 500 ? "warn" : "info", "request", fields);
}


enum class ReadResult { kRequest, kClosed, kTimeout, kTooLarge, kHeadersTooLarge, kBad };

// Reads one request: at most idle_ms for its first byte, then header_ms for all of it.
net::awaitable<ReadResult> read_request(Server::Session& s, beast::flat_buffer& buffer, http::request_parser<http::string_body>& parser,
                                        uint32_t idle_ms, uint32_t header_ms) {
  bool started = buffer.size() > 0;
  s.deadline = Clock::now() + std::chrono::milliseconds(started ? header_ms : idle_ms);
  s.idle = !started;
  while (!parser.is_done()) {
    beast::error_code ec;
    co_await http::async_read_some(s.socket, buffer, parser, redirect(ec));
    if (!started && (parser.got_some() || buffer.size() > 0)) {
      started = true;
      s.idle = false;
      s.deadline = Clock::now() + std::chrono::milliseconds(header_ms);
    }
    if (!ec) continue;
    s.idle = false;
    s.deadline = Clock::time_point::max();
    if (ec == http::error::body_limit) co_return ReadResult::kTooLarge;
    if (ec == http::error::header_limit) co_return ReadResult::kHeadersTooLarge;
    if (s.timed_out) co_return started ? ReadResult::kTimeout : ReadResult::kClosed;
    if (!started || ec == http::error::end_of_stream || ec == net::error::eof || ec == net::error::connection_reset ||
        ec == net::error::operation_aborted)
      co_return ReadResult::kClosed;
    co_return ReadResult::kBad;
  }
  s.idle = false;
  s.deadline = Clock::time_point::max();
  co_return ReadResult::kRequest;
}

net::awaitable<void> send_error(Server::Session& s, int status, const char* message, const char* code, uint32_t write_timeout_ms) {
  s.timed_out = false;  // a 408 still goes out, under its own deadline
  SocketClient client(s, 11, false, write_timeout_ms);
  const Headers headers{{"Content-Type", "application/json"}};  // (named: GCC 12 cannot take this list inside co_await)
  const std::string body = error_json(message, "invalid_request_error", code);
  (void)co_await client.send(status, headers, body);
}

// Logs what ended a coroutine by an exception (a bug: the connection closes, the loop goes on).
void log_exception(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    admin::log_line("error", "a connection ended by an exception", std::string("what=\"") + field(x.what()) + "\"");
  }
}

}  // namespace

Server::Server(Proxy& proxy, const admin::ProxySection& limits, Loops& loops) : proxy_(proxy), limits_(limits), loops_(loops) {
  proxy_.set_in_flight(&in_flight_);
}

Server::~Server() = default;

bool Server::open(const std::string& listen, std::string* error) {
  const size_t colon = listen.rfind(':');
  const std::string host = listen.substr(0, colon);
  beast::error_code ec;
  const auto address = net::ip::make_address_v4(host == "localhost" ? "127.0.0.1" : host, ec);
  if (ec) {
    *error = "proxy.listen: \"" + host + "\" is not an IPv4 address (e.g. 127.0.0.1)";
    return false;
  }
  const tcp::endpoint at(address, static_cast<uint16_t>(std::stoi(listen.substr(colon + 1))));
  acceptor_ = std::make_unique<tcp::acceptor>(loops_.at(0));
  acceptor_->open(at.protocol(), ec);
  if (!ec) acceptor_->set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_->bind(at, ec);
  if (!ec) acceptor_->listen(1024, ec);
  if (ec) {
    *error = "cannot listen on " + listen + ": " + ec.message() + " (another proxy there? change proxy.listen)";
    return false;
  }
  port_ = acceptor_->local_endpoint(ec).port();
  return true;
}

void Server::start() {
  net::co_spawn(loops_.at(0), accept_loop(), log_exception);
  for (unsigned i = 0; i < loops_.size(); ++i) net::co_spawn(loops_.at(i), sweep(i == 0), log_exception);
}

net::awaitable<void> Server::sweep(bool trims) {
  net::steady_timer timer(co_await net::this_coro::executor);
  size_t peak = 0;  // connections at most since the last trim
  while (!stopped_.load()) {
    timer.expires_after(kSweepInterval);
    beast::error_code ec;
    co_await timer.async_wait(redirect(ec));
    const Clock::time_point now = Clock::now();
    for (Session* s : t_sessions)
      if (s->deadline <= now && !s->timed_out) s->timed_out = true, s->cut();
    if (!trims) continue;
    // Once most of a crowd of connections (open streams, say) has gone, the memory their frames
    // and buffers took goes back to the system: glibc would keep it.
    const size_t open = sessions_.load();
    peak = std::max(peak, open);
    if (peak >= kTrimAfterConnections && open <= peak / 4) {
      (void)::malloc_trim(0);
      peak = open;
    }
  }
}

net::awaitable<void> Server::accept_loop() {
  while (acceptor_ != nullptr && acceptor_->is_open()) {
    beast::error_code ec;
    tcp::socket socket = co_await acceptor_->async_accept(loops_.next(), redirect(ec));
    if (ec == net::error::operation_aborted || acceptor_ == nullptr || !acceptor_->is_open()) break;
    if (ec) {  // out of descriptors, say: try again in a moment rather than spin
      net::steady_timer pause(co_await net::this_coro::executor, std::chrono::milliseconds(10));
      co_await pause.async_wait(redirect(ec));
      continue;
    }
    // Connections beyond the requests allowed in flight (and room for idle keep-alive ones) are refused at once.
    if (sessions_.load() >= size_t{limits_.max_concurrent} + kConnectionsOverRequests) {
      const std::string body = error_json("too many connections to the proxy; retry", "server_error", "overloaded");
      const std::string res = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
                              "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
      (void)!::send(socket.native_handle(), res.data(), res.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      socket.close(ec);
      continue;
    }
    sessions_.fetch_add(1);
    const auto executor = socket.get_executor();
    net::co_spawn(executor, session(std::move(socket)), log_exception);
  }
}

bool Server::admit_request() {
  if (in_flight_.fetch_add(1) < limits_.max_concurrent) return true;
  in_flight_.fetch_sub(1);
  return false;
}

net::awaitable<void> Server::session(tcp::socket socket) {
  (void)socket.set_option(tcp::no_delay(true));
  Session s(std::move(socket));
  t_sessions.insert(&s);
  struct Leave {  // out of the loop's set, closed, counted, whatever ends the session
    Server& server;
    Session& s;
    ~Leave() {
      t_sessions.erase(&s);
      beast::error_code ec;
      s.socket.shutdown(tcp::socket::shutdown_both, ec);
      s.socket.close(ec);
      server.sessions_.fetch_sub(1);
    }
  } leave{*this, s};
  beast::flat_buffer buffer;
  const uint32_t write_timeout = limits_.idle_timeout_ms;  // a client that stops reading for this long is gone
  while (!draining_.load()) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(limits_.max_body_bytes);
    parser.header_limit(kHeaderBytesMax);
    const ReadResult got = co_await read_request(s, buffer, parser, limits_.idle_timeout_ms, limits_.header_timeout_ms);
    if (got == ReadResult::kTooLarge) co_await send_error(s, 413, "the request body is larger than proxy.max_body_bytes", "request_too_large", write_timeout);
    if (got == ReadResult::kHeadersTooLarge) co_await send_error(s, 431, "the request headers are too large", "headers_too_large", write_timeout);
    if (got == ReadResult::kTimeout) co_await send_error(s, 408, "the request did not arrive within proxy.header_timeout_ms", "request_timeout", write_timeout);
    if (got == ReadResult::kBad) co_await send_error(s, 400, "not a valid HTTP/1.1 request", "bad_request", write_timeout);
    if (got != ReadResult::kRequest) break;
    http::request<http::string_body> req = parser.release();
    Request r{std::string(req.method_string()), std::string(req.target()), std::string(req[http::field::authorization]),
              std::move(req.body()), Clock::now()};
    const bool keep_alive = req.keep_alive() && !draining_.load();
    SocketClient client(s, req.version(), keep_alive, write_timeout);
    Outcome o;
    if (admit_request()) {
      struct Admitted {  // counted in flight until handled, however handle() ends
        std::atomic<size_t>& n;
        ~Admitted() { n.fetch_sub(1); }
      } admitted{in_flight_};
      o = co_await proxy_.handle(r, client);
    } else {
      o.status = 503;
      o.code = "overloaded";
      const Headers headers{{"Content-Type", "application/json"}, {"Retry-After", "1"}};
      const std::string body = error_json("the proxy has proxy.max_concurrent requests in flight; retry", "server_error", "overloaded");
      (void)co_await client.send(503, headers, body);
    }
    proxy_.record(o);
    log_request(r, o);
    if (!client.ok() || !keep_alive) break;
  }
}

void Server::wait_until(const std::atomic<size_t>& count, uint32_t timeout_ms) const {
  const auto until = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (count.load() != 0 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

void Server::drain(uint32_t timeout_ms) {
  draining_.store(true);
  net::post(loops_.at(0), [this] {  // on its loop: the acceptor goes with no accept pending elsewhere
    beast::error_code ec;
    if (acceptor_ != nullptr) acceptor_->close(ec);
    acceptor_.reset();
  });
  loops_.post_all([] {  // idle keep-alive connections: closed now
    for (Session* s : t_sessions)
      if (s->idle) s->cut();
  });
  wait_until(in_flight_, timeout_ms);
  if (in_flight_.load() != 0) {
    admin::log_line("warn", "drain: the deadline passed; cutting the requests still in flight (each is settled)",
                    "in_flight=" + std::to_string(in_flight_.load()));
    proxy_.cancel_all();
    loops_.post_all(Upstream::cut_transfers);
  }
  wait_until(in_flight_, 10'000);
  loops_.post_all([] {
    for (Session* s : t_sessions) s->cut();
  });
  wait_until(sessions_, 5'000);
  stopped_.store(true);
}

}  // namespace ledger::proxy
