// loops.cpp — see loops.hpp.
#include "loops.hpp"

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <chrono>

#include "core/admin.hpp"

namespace ledger::proxy {

Loops::Loops(unsigned count) {
  for (unsigned i = 0; i < std::max(1u, count); ++i) {
    loops_.push_back(std::make_unique<boost::asio::io_context>(1));  // one thread each: no locking inside
    guards_.emplace_back(boost::asio::make_work_guard(*loops_.back()));
  }
}

Loops::~Loops() {
  for (auto& loop : loops_) loop->stop();  // (finish() has usually run: then there are none)
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

unsigned Loops::default_count() { return std::clamp(std::thread::hardware_concurrency(), 1u, 4u); }

void Loops::start() {
  for (auto& loop : loops_) {
    running_.fetch_add(1);
    threads_.emplace_back([this, ctx = loop.get()] {
      for (;;) {
        try {
          ctx->run();
          break;
        } catch (const std::exception& e) {  // a handler's bug must not end the loop's other connections
          admin::log_line("error", "event loop: an exception escaped a handler", std::string("what=\"") + e.what() + "\"");
        }
      }
      running_.fetch_sub(1);
    });
  }
}

void Loops::post_all(const std::function<void()>& fn) {
  for (auto& loop : loops_) boost::asio::post(*loop, fn);
}

void Loops::finish(uint32_t timeout_ms) {
  for (auto& g : guards_) g.reset();
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (running_.load() > 0 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  for (auto& loop : loops_) loop->stop();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  // What was still pending (a coroutine cut at the deadline) goes now, while the objects it refers
  // to (the server, the proxy) still exist.
  loops_.clear();
}

}  // namespace ledger::proxy
