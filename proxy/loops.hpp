// loops.hpp — the proxy's event loops: a few threads, each running an io_context of its own.
//
// A connection lives on one loop from accept to close: its reads, its request's ledger calls, its
// upstream exchange (over a connection from that loop's own keep-alive pool) and its writes all
// run on that one thread, as a coroutine, so nothing of a request passes between threads and a
// loop's pool needs no lock. An open stream costs a coroutine frame and its buffers, not a thread.
// Work for every loop (closing idle connections on drain, cutting upstream transfers) is posted to
// each of them with post_all().
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

namespace ledger::proxy {

class Loops {
 public:
  explicit Loops(unsigned count);
  ~Loops();
  Loops(const Loops&) = delete;
  Loops& operator=(const Loops&) = delete;

  unsigned size() const { return static_cast<unsigned>(loops_.size()); }
  boost::asio::io_context& at(unsigned i) { return *loops_[i]; }
  // The next loop in turn (for a new connection).
  boost::asio::io_context& next() { return *loops_[next_.fetch_add(1, std::memory_order_relaxed) % loops_.size()]; }
  void start();
  // Runs fn on every loop's thread.
  void post_all(const std::function<void()>& fn);
  // Lets the loops end once their work is done, and waits up to timeout_ms; then stops them and
  // destroys what was still pending. The loops cannot be used after it.
  void finish(uint32_t timeout_ms);
  // The loops this machine gets by default: one per core, at most 4 (a request is short and never
  // blocks a loop, so more would only add hand-offs).
  static unsigned default_count();

 private:
  using Guard = boost::asio::executor_work_guard<boost::asio::io_context::executor_type>;
  std::vector<std::unique_ptr<boost::asio::io_context>> loops_;
  std::vector<std::optional<Guard>> guards_;
  std::vector<std::thread> threads_;
  std::atomic<unsigned> next_{0};
  std::atomic<unsigned> running_{0};
};

}  // namespace ledger::proxy
