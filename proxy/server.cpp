// server.cpp — see server.hpp.
#include "server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>

#include "core/admin.hpp"
#include "ledger/money.hpp"

namespace ledger::proxy {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint32_t kHeaderBytesMax = 64 * 1024;

// A connection as Beast's sync stream, with deadlines: each read waits at most until the read
// deadline, each write at most write_timeout (poll, then recv/send; asio's own blocking reads
// would wait for ever).
class FdStream {
 public:
  FdStream(int fd, uint32_t write_timeout_ms) : fd_(fd), write_timeout_ms_(write_timeout_ms) {}
  void set_read_deadline(Clock::time_point deadline) { read_deadline_ = deadline; }
  int fd() const { return fd_; }

  template <class Buffers>
  size_t read_some(const Buffers& buffers, beast::error_code& ec) {
    const net::mutable_buffer b = *net::buffer_sequence_begin(buffers);
    if (!wait(POLLIN, read_deadline_, ec)) return 0;
    const ssize_t n = ::recv(fd_, b.data(), b.size(), 0);
    if (n == 0) ec = net::error::eof;
    else if (n < 0) ec = beast::error_code(errno, boost::system::system_category());
    return n > 0 ? static_cast<size_t>(n) : 0;
  }
  // The whole buffer sequence in one sendmsg() (a response head is a dozen small buffers: one
  // send each would be one TCP segment each); poll only when the socket buffer is full.
  template <class Buffers>
  size_t write_some(const Buffers& buffers, beast::error_code& ec) {
    iovec iov[64];
    size_t count = 0;
    for (auto it = net::buffer_sequence_begin(buffers); it != net::buffer_sequence_end(buffers) && count < 64; ++it) {
      const net::const_buffer b = *it;
      if (b.size() > 0) iov[count++] = iovec{const_cast<void*>(b.data()), b.size()};
    }
    if (count == 0) return 0;
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = count;
    for (;;) {
      const ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        ec = beast::error_code(errno, boost::system::system_category());
        return 0;
      }
      if (!wait(POLLOUT, Clock::now() + std::chrono::milliseconds(write_timeout_ms_), ec)) return 0;
    }
  }
  template <class Buffers>
  size_t read_some(const Buffers& buffers) {
    beast::error_code ec;
    const size_t n = read_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }
  template <class Buffers>
  size_t write_some(const Buffers& buffers) {
    beast::error_code ec;
    const size_t n = write_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

 private:
  bool wait(short events, Clock::time_point deadline, beast::error_code& ec) const {
    for (;;) {
      const int64_t left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) {
        ec = net::error::timed_out;
        return false;
      }
      pollfd p{fd_, events, 0};
      const int rc = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (rc > 0) return true;
      if (rc < 0 && errno != EINTR) {
        ec = beast::error_code(errno, boost::system::system_category());
        return false;
      }
    }
  }
  int fd_;
  uint32_t write_timeout_ms_;
  Clock::time_point read_deadline_ = Clock::time_point::max();
};

// Writes responses to one connection: whole, or as a chunked stream.
class SocketClient : public Client {
 public:
  SocketClient(FdStream& socket, unsigned version, bool keep_alive) : socket_(socket), version_(version), keep_alive_(keep_alive) {}
  bool send(int status, const Headers& headers, const std::string& body) override {
    http::response<http::string_body> res{static_cast<http::status>(status), version_};
    for (const auto& [name, value] : headers) res.set(name, value);
    res.keep_alive(keep_alive_);
    res.body() = body;
    res.prepare_payload();
    beast::error_code ec;
    http::write(socket_, res, ec);
    return ok_ = !ec;
  }
  bool begin_stream(int status, const Headers& headers) override {
    http::response<http::empty_body> res{static_cast<http::status>(status), version_};
    for (const auto& [name, value] : headers) res.set(name, value);
    res.keep_alive(keep_alive_);
    res.chunked(true);
    http::response_serializer<http::empty_body> serializer{res};
    beast::error_code ec;
    http::write_header(socket_, serializer, ec);
    return ok_ = !ec;
  }
  bool chunk(const char* data, size_t size) override {
    beast::error_code ec;
    net::write(socket_, http::make_chunk(net::buffer(data, size)), ec);
    return ok_ = !ec;
  }
  bool end_stream() override {
    beast::error_code ec;
    net::write(socket_, http::make_chunk_last(), ec);
    return ok_ = !ec;
  }
  bool ok() const { return ok_; }

 private:
  FdStream& socket_;
  unsigned version_;
  bool keep_alive_;
  bool ok_ = true;
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

}  // namespace

Server::~Server() {
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

bool Server::open(const std::string& listen, std::string* error) {
  const size_t colon = listen.rfind(':');
  const std::string host = listen.substr(0, colon);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(listen.substr(colon + 1))));
  if (::inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &addr.sin_addr) != 1) {
    *error = "proxy.listen: \"" + host + "\" is not an IPv4 address (e.g. 127.0.0.1)";
    return false;
  }
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  (void)::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 1024) != 0) {
    *error = "cannot listen on " + listen + ": " + std::strerror(errno) + " (another proxy there? change proxy.listen)";
    return false;
  }
  socklen_t len = sizeof addr;
  (void)::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  return true;
}

void Server::run(const std::atomic<bool>& stop) {
  while (!stop.load()) {
    pollfd listening{listen_fd_, POLLIN, 0};
    if (::poll(&listening, 1, 200) <= 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // Connections beyond the requests allowed in flight (and room for idle keep-alive ones) are
      // refused at once, without a thread.
      if (sessions_.size() >= size_t{limits_.max_concurrent} + 256) {
        const std::string body = error_json("too many connections to the proxy; retry", "server_error", "overloaded");
        const std::string res = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
                                "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
        (void)!::write(fd, res.data(), res.size());
        ::close(fd);
        continue;
      }
      sessions_.insert(fd);
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1u << 20);  // a session's stack: Beast, libcurl, Boost.JSON (bounded depth)
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    auto* args = new std::pair<Server*, int>(this, fd);
    pthread_t thread;
    if (pthread_create(&thread, &attr, [](void* a) -> void* {
          std::unique_ptr<std::pair<Server*, int>> p(static_cast<std::pair<Server*, int>*>(a));
          p->first->session(p->second);
          return nullptr;
        }, args) != 0) {
      delete args;
      std::lock_guard<std::mutex> lock(mutex_);
      sessions_.erase(fd);
      ::close(fd);
    }
    pthread_attr_destroy(&attr);
  }
}

bool Server::admit_request() {
  if (in_flight_.fetch_add(1) < limits_.max_concurrent) return true;
  finish_request();
  return false;
}

void Server::finish_request() {
  in_flight_.fetch_sub(1);
  std::lock_guard<std::mutex> lock(mutex_);
  idle_.notify_all();
}

namespace {

enum class ReadResult { kRequest, kClosed, kTimeout, kTooLarge, kHeadersTooLarge, kBad };

// Reads one request: at most idle_ms for its first byte, then header_ms for all of it.
ReadResult read_request(FdStream& socket, beast::flat_buffer& buffer, http::request_parser<http::string_body>& parser,
                        uint32_t idle_ms, uint32_t header_ms, const std::function<void()>& on_first_byte) {
  bool started = buffer.size() > 0;
  socket.set_read_deadline(Clock::now() + std::chrono::milliseconds(started ? header_ms : idle_ms));
  if (started) on_first_byte();
  while (!parser.is_done()) {
    beast::error_code ec;
    http::read_some(socket, buffer, parser, ec);
    if (!started && (parser.got_some() || buffer.size() > 0)) {
      started = true;
      on_first_byte();
      socket.set_read_deadline(Clock::now() + std::chrono::milliseconds(header_ms));
    }
    if (!ec) continue;
    if (ec == http::error::body_limit) return ReadResult::kTooLarge;
    if (ec == http::error::header_limit) return ReadResult::kHeadersTooLarge;
    if (ec == net::error::timed_out) return started ? ReadResult::kTimeout : ReadResult::kClosed;
    if (!started || ec == http::error::end_of_stream || ec == net::error::eof || ec == net::error::connection_reset) return ReadResult::kClosed;
    return ReadResult::kBad;
  }
  return ReadResult::kRequest;
}

void send_error(FdStream& socket, int status, const char* message, const char* code) {
  SocketClient client(socket, 11, false);
  (void)client.send(status, {{"Content-Type", "application/json"}}, error_json(message, "invalid_request_error", code));
}

}  // namespace

void Server::session(int fd) {
  const int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  FdStream socket(fd, limits_.idle_timeout_ms);  // a client that stops reading for this long is gone
  beast::flat_buffer buffer;
  while (!draining_.load()) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(limits_.max_body_bytes);
    parser.header_limit(kHeaderBytesMax);
    { std::lock_guard<std::mutex> lock(mutex_); idle_fds_.insert(fd); }
    const auto busy = [&] { std::lock_guard<std::mutex> lock(mutex_); idle_fds_.erase(fd); };
    const ReadResult got = read_request(socket, buffer, parser, limits_.idle_timeout_ms, limits_.header_timeout_ms, busy);
    busy();
    if (got == ReadResult::kTooLarge) send_error(socket, 413, "the request body is larger than proxy.max_body_bytes", "request_too_large");
    if (got == ReadResult::kHeadersTooLarge) send_error(socket, 431, "the request headers are too large", "headers_too_large");
    if (got == ReadResult::kTimeout) send_error(socket, 408, "the request did not arrive within proxy.header_timeout_ms", "request_timeout");
    if (got == ReadResult::kBad) send_error(socket, 400, "not a valid HTTP/1.1 request", "bad_request");
    if (got != ReadResult::kRequest) break;
    http::request<http::string_body> req = parser.release();
    Request r{std::string(req.method_string()), std::string(req.target()), std::string(req[http::field::authorization]),
              std::move(req.body()), Clock::now()};
    const bool keep_alive = req.keep_alive() && !draining_.load();
    SocketClient client(socket, req.version(), keep_alive);
    Outcome o;
    if (admit_request()) {
      o = proxy_.handle(r, client);
      finish_request();
    } else {
      o.status = 503;
      o.code = "overloaded";
      (void)client.send(503, {{"Content-Type", "application/json"}, {"Retry-After", "1"}},
                        error_json("the proxy has proxy.max_concurrent requests in flight; retry", "server_error", "overloaded"));
    }
    proxy_.record(o);
    log_request(r, o);
    if (!client.ok() || !keep_alive) break;
  }
  {  // out of the sets before the fd is closed: drain() never shuts down a number reused by now
    std::lock_guard<std::mutex> lock(mutex_);
    sessions_.erase(fd);
    idle_fds_.erase(fd);
    idle_.notify_all();
  }
  ::shutdown(fd, SHUT_RDWR);
  ::close(fd);
}

void Server::drain(uint32_t timeout_ms) {
  draining_.store(true);
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  std::unique_lock<std::mutex> lock(mutex_);
  for (int fd : idle_fds_) ::shutdown(fd, SHUT_RDWR);  // idle keep-alive connections: closed now
  const auto until = Clock::now() + std::chrono::milliseconds(timeout_ms);
  idle_.wait_until(lock, until, [&] { return in_flight_.load() == 0; });
  if (in_flight_.load() != 0) {
    admin::log_line("warn", "drain: the deadline passed; cutting the requests still in flight (each is settled)",
                    "in_flight=" + std::to_string(in_flight_.load()));
    proxy_.cancel_all();
  }
  idle_.wait_for(lock, std::chrono::seconds(10), [&] { return in_flight_.load() == 0; });
  for (int fd : sessions_) ::shutdown(fd, SHUT_RDWR);
  idle_.wait_for(lock, std::chrono::seconds(5), [&] { return sessions_.empty(); });
}

}  // namespace ledger::proxy
