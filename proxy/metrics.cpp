// metrics.cpp — see metrics.hpp.
#include "metrics.hpp"

#include <cstdio>

#include "proxy.hpp"

namespace ledger::proxy {

void Histogram::observe(int64_t us) {
  size_t i = 0;
  while (i < bounds_.size() && us > bounds_[i]) ++i;
  ++counts_[i];
  sum_us_ += us;
  ++count_;
}

std::string Histogram::text(const std::string& name, const std::string& help) const {
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cumulative = 0;
  char line[160];
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    if (i < bounds_.size()) std::snprintf(line, sizeof line, "%s_bucket{le=\"%.6f\"} %llu\n", name.c_str(), static_cast<double>(bounds_[i]) / 1e6,
                                          static_cast<unsigned long long>(cumulative));
    else std::snprintf(line, sizeof line, "%s_bucket{le=\"+Inf\"} %llu\n", name.c_str(), static_cast<unsigned long long>(cumulative));
    out += line;
  }
  std::snprintf(line, sizeof line, "%s_sum %.6f\n%s_count %llu\n", name.c_str(), static_cast<double>(sum_us_) / 1e6, name.c_str(),
                static_cast<unsigned long long>(count_));
  return out + line;
}

Metrics::Metrics()
    : added_({25, 50, 100, 250, 500, 1000, 2500, 10'000, 100'000}),
      upstream_({1000, 5000, 25'000, 100'000, 250'000, 1'000'000, 5'000'000, 30'000'000, 120'000'000}) {}

void Metrics::record(const Outcome& o) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{o.status, o.code}];
  if (!o.settled.empty()) ++settled_[o.settled];
  if (o.added_us > 0) added_.observe(o.added_us);
  if (o.upstream_us > 0) upstream_.observe(o.upstream_us);
}

std::string Metrics::text(size_t in_flight) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out = "# HELP ledger_proxy_requests_total Requests answered, by HTTP status and error code (\"\" = none).\n"
                    "# TYPE ledger_proxy_requests_total counter\n";
  for (const auto& [key, n] : requests_)
    out += "ledger_proxy_requests_total{status=\"" + std::to_string(key.first) + "\",code=\"" + key.second + "\"} " + std::to_string(n) + "\n";
  out += "# HELP ledger_proxy_settled_total Holds settled: usage (the reply's cost), generation (looked up), hold (in full), released.\n"
         "# TYPE ledger_proxy_settled_total counter\n";
  for (const auto& [how, n] : settled_) out += "ledger_proxy_settled_total{how=\"" + how + "\"} " + std::to_string(n) + "\n";
  out += "# HELP ledger_proxy_in_flight Requests being handled now.\n# TYPE ledger_proxy_in_flight gauge\nledger_proxy_in_flight " +
         std::to_string(in_flight) + "\n";
  out += "# HELP ledger_proxy_holds_open Holds taken and not settled yet.\n# TYPE ledger_proxy_holds_open gauge\nledger_proxy_holds_open " +
         std::to_string(holds_open.load()) + "\n";
  out += added_.text("ledger_proxy_added_latency_seconds", "Time the proxy adds to a request (before the upstream call and after its answer).");
  out += upstream_.text("ledger_proxy_upstream_latency_seconds", "Upstream time: the whole answer, or the first byte of a stream.");
  return out;
}

}  // namespace ledger::proxy
