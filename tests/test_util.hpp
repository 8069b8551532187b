// test_util.hpp — a throwaway ledger directory per test, removed with its segment afterwards.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "ledger/ledger.hpp"

namespace ledger_test {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "ledger-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    path_ = pattern;
  }
  ~TempDir() {
    (void)ledger::Ledger::destroy_segment(path_);
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A clock the test moves by hand.
struct ManualClock {
  int64_t now_ms = 0;
  static int64_t read(void* self) { return static_cast<ManualClock*>(self)->now_ms; }
  ledger::Clock clock() { return ledger::Clock{&ManualClock::read, this}; }
};

inline constexpr int64_t kUsd = 1'000'000'000;

// The balance of an account, which must exist.
inline ledger::Balance balance_of(ledger::Ledger& l, std::string_view account) {
  ledger::Balance b;
  REQUIRE(l.balance(account, &b) == ledger::Code::kOk);
  return b;
}

// Unix seconds of a UTC civil date and time.
inline int64_t utc(int32_t year, uint32_t month, uint32_t day, int64_t hour = 0, int64_t minute = 0,
                   int64_t second = 0) {
  return ledger::days_from_civil({year, month, day}) * 86400 + hour * 3600 + minute * 60 + second;
}

}  // namespace ledger_test
