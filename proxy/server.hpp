// server.hpp — ledger-proxy's HTTP/1.1 side (Boost.Beast) on the event loops (loops.hpp): each
// connection is a coroutine on one loop, so an open stream costs a coroutine frame and its
// buffers, not a thread, and a request's path (client read, upstream write, upstream read, client
// write) has no hand-off between threads. Limits: at most proxy.max_concurrent requests in flight
// (more get 503 and Retry-After), at most max_concurrent + 256 connections (more get 503 at once),
// a body limit (413), a header limit (431), the time to send a whole request (header_timeout_ms,
// then 408) and the time a keep-alive connection may sit idle or a client may stop reading
// (idle_timeout_ms). Deadlines are kept per connection and enforced by a sweep on each loop every
// 50 ms (no timer armed per read or write); the first loop's sweep also gives memory back to the
// system once a crowd of connections has gone (malloc_trim). drain() stops accepting, closes idle connections,
// lets requests in flight finish until the deadline, then cuts their upstream transfers (they are
// settled as usual).
#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <memory>
#include <string>

#include "core/config.hpp"
#include "loops.hpp"
#include "proxy.hpp"

namespace ledger::proxy {

class Server {
 public:
  Server(Proxy& proxy, const admin::ProxySection& limits, Loops& loops);
  ~Server();
  // Binds proxy.listen; false with *error naming the address.
  bool open(const std::string& listen, std::string* error);
  uint16_t port() const { return port_; }
  // Accepts connections on the loops (they must be started).
  void start();
  // Blocking, from a thread that is not a loop's: returns when every connection is closed (or the
  // deadlines passed).
  void drain(uint32_t timeout_ms);

  struct Session;  // a connection's state that a loop's sweep sees (server.cpp)

 private:
  boost::asio::awaitable<void> accept_loop();
  boost::asio::awaitable<void> session(boost::asio::ip::tcp::socket socket);
  boost::asio::awaitable<void> sweep(bool trims);
  bool admit_request();
  void wait_until(const std::atomic<size_t>& count, uint32_t timeout_ms) const;

  Proxy& proxy_;
  const admin::ProxySection limits_;
  Loops& loops_;
  std::unique_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
  uint16_t port_ = 0;
  std::atomic<size_t> in_flight_{0};
  std::atomic<size_t> sessions_{0};
  std::atomic<bool> draining_{false};
  std::atomic<bool> stopped_{false};  // the sweeps end
};

}  // namespace ledger::proxy
