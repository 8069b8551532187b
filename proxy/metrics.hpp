// metrics.hpp — the proxy's Prometheus metrics: requests by status and code, in flight, holds
// open, how requests were settled, added latency and upstream latency histograms.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace ledger::proxy {

struct Outcome;

class Histogram {
 public:
  explicit Histogram(std::vector<int64_t> bounds_us) : bounds_(std::move(bounds_us)), counts_(bounds_.size() + 1, 0) {}
  void observe(int64_t us);
  std::string text(const std::string& name, const std::string& help) const;  // in seconds, as Prometheus wants

 private:
  std::vector<int64_t> bounds_;
  std::vector<uint64_t> counts_;
  int64_t sum_us_ = 0;
  uint64_t count_ = 0;
};

struct Metrics {
  Metrics();
  void record(const Outcome& o);
  std::string text(size_t in_flight) const;
  std::atomic<int64_t> holds_open{0};

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<int, std::string>, uint64_t> requests_;  // (status, code)
  std::map<std::string, uint64_t> settled_;
  Histogram added_, upstream_;
};

}  // namespace ledger::proxy
