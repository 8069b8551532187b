// server.hpp — ledger-proxy's HTTP/1.1 side (Boost.Beast): one thread per connection, because a
// stream holds its request for as long as the model writes, and a blocking relay keeps each
// stream's path short (upstream chunk -> client chunk, no queue in between). Limits: at most
// proxy.max_concurrent requests in flight (more get 503 and Retry-After), a body limit (413),
// a header limit (431), the time to send a whole request (header_timeout_ms) and the time a
// keep-alive connection may sit idle (idle_timeout_ms). drain() stops accepting, lets requests in
// flight finish until the deadline, then cuts their upstream transfers (they are settled as usual).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>

#include "core/config.hpp"
#include "proxy.hpp"

namespace ledger::proxy {

class Server {
 public:
  Server(Proxy& proxy, const admin::ProxySection& limits) : proxy_(proxy), limits_(limits) { proxy_.set_in_flight(&in_flight_); }
  ~Server();
  // Binds proxy.listen; false with *error naming the address.
  bool open(const std::string& listen, std::string* error);
  uint16_t port() const { return port_; }
  // Accepts connections until *stop.
  void run(const std::atomic<bool>& stop);
  void drain(uint32_t timeout_ms);

 private:
  void session(int fd);
  bool admit_request();
  void finish_request();

  Proxy& proxy_;
  const admin::ProxySection limits_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<size_t> in_flight_{0};
  std::atomic<bool> draining_{false};
  std::mutex mutex_;
  std::condition_variable idle_;
  std::set<int> sessions_;      // open connections (guarded by mutex_)
  std::set<int> idle_fds_;      // those waiting for their next request (guarded by mutex_)
};

}  // namespace ledger::proxy
