// bench_util.hpp — timing helpers shared by the benchmark programs.
//
// sample(): kSamples timed batches of kBatch operations (rdtscp, the timer's own cost subtracted,
// divided by kBatch since a VM's TSC may tick in ~10 ns steps) -> median and p99 per operation.
// report() adds them as counters, with x_floor = median / the CAS floor measured in the same run.
// spawn() starts a helper program (the emulator, the sidecar, the proxy) with its output in a log.
#pragma once

#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <new>
#include <string>
#include <vector>

namespace bench {

// Starts argv with stdout and stderr appended to log_path; -1 when it cannot.
inline pid_t spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fd, 1);
  posix_spawn_file_actions_adddup2(&actions, fd, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  ::close(fd);
  return pid;
}

constexpr int kSamples = 100000;
constexpr int kBatch = 8;

inline double g_ns_per_tick = 0;
inline double g_timer_overhead_ticks = 0;
inline double g_floor_median_ns = 0;

inline void calibrate() {
  unsigned aux = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t c0 = __rdtscp(&aux);
  while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(200)) {
  }
  const uint64_t c1 = __rdtscp(&aux);
  const auto t1 = std::chrono::steady_clock::now();
  g_ns_per_tick = std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(c1 - c0);
  std::vector<uint64_t> empty(kSamples);
  for (auto& e : empty) {
    const uint64_t a = __rdtscp(&aux);
    const uint64_t b = __rdtscp(&aux);
    e = b - a;
  }
  std::nth_element(empty.begin(), empty.begin() + kSamples / 2, empty.end());
  g_timer_overhead_ticks = static_cast<double>(empty[kSamples / 2]);
}

struct Percentiles {
  double median_ns, p99_ns;
};

template <class Fn>
Percentiles sample(Fn&& fn, int samples = kSamples, int batch = kBatch) {
  std::vector<uint64_t> ticks(static_cast<size_t>(samples));
  unsigned aux = 0;
  for (int i = 0; i < 100; ++i) fn();  // warm
  for (auto& t : ticks) {
    const uint64_t a = __rdtscp(&aux);
    for (int i = 0; i < batch; ++i) fn();
    const uint64_t b = __rdtscp(&aux);
    t = b - a;
  }
  std::sort(ticks.begin(), ticks.end());
  auto ns = [batch](uint64_t t) {
    return std::max(0.0, (static_cast<double>(t) - g_timer_overhead_ticks) * g_ns_per_tick / batch);
  };
  return Percentiles{ns(ticks[ticks.size() / 2]), ns(ticks[ticks.size() * 99 / 100])};
}

inline void report(benchmark::State& state, const Percentiles& p) {
  state.counters["median_ns"] = p.median_ns;
  state.counters["p99_ns"] = p.p99_ns;
  if (g_floor_median_ns > 0) state.counters["x_floor"] = p.median_ns / g_floor_median_ns;
}

// The floor: check-and-add by CAS on one 64-bit word of a shared mapping.
struct Floor {
  std::atomic<int64_t>* word;
  Floor() {
    void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    word = new (p) std::atomic<int64_t>(0);
  }
  ~Floor() { ::munmap(word, 4096); }
  bool debit(int64_t amount, int64_t limit) {
    int64_t used = word->load(std::memory_order_relaxed);
    do {
      if (used + amount > limit) return false;
    } while (!word->compare_exchange_weak(used, used + amount, std::memory_order_acq_rel));
    return true;
  }
};

inline void BM_CasFloor(benchmark::State& state) {
  Floor f;
  for (auto _ : state) benchmark::DoNotOptimize(f.debit(1, INT64_MAX));
  const Percentiles p = sample([&] { benchmark::DoNotOptimize(f.debit(1, INT64_MAX)); });
  g_floor_median_ns = p.median_ns;
  report(state, p);
}

}  // namespace bench
