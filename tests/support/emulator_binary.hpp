// emulator_binary.hpp — the openrouter-emulator binary, started for one test or benchmark run and
// stopped after (SIGTERM), in a temp dir of its own: the management key it generates
// (DIR/mgmt.key) and the port file it writes once it listens (DIR/port).
//
// No test framework: start() says what went wrong; tests/sidecar/emulator_process.hpp wraps it for
// Catch2, bench/sidecar_bench.cpp uses it as is.
#pragma once

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "../sidecar/process.hpp"

namespace ledger_support {

class EmulatorBinary {
 public:
  EmulatorBinary() = default;
  EmulatorBinary(const EmulatorBinary&) = delete;
  EmulatorBinary& operator=(const EmulatorBinary&) = delete;
  ~EmulatorBinary() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }

  // Starts the binary at `path` and waits (3 s at most) until it listens. False and *error on failure.
  bool start(const std::string& path, std::string* error) {
    std::string pattern = (std::filesystem::temp_directory_path() / "ledger-emulator-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) return fail("mkdtemp failed", error);
    dir_ = pattern;
    key_file_ = dir_ + "/mgmt.key";
    const std::string port_file = dir_ + "/port";
    pid_ = ledger_test::spawn({path, "--management-key-file", key_file_, "--port-file", port_file}, -1, -1);
    if (pid_ <= 0) return fail("cannot start " + path, error);
    for (int i = 0; i < 300 && port_.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      const std::string p = ledger_test::read_file(port_file);
      if (!p.empty() && p.back() == '\n') port_ = p.substr(0, p.size() - 1);
    }
    if (port_.empty()) return fail(path + " wrote no port file within 3 s", error);
    key_ = ledger_test::read_file(key_file_).substr(0, 73);
    return true;
  }

  const std::string& key_file() const { return key_file_; }
  const std::string& port() const { return port_; }
  const std::string& key() const { return key_; }  // the management key
  std::string base() const { return "http://127.0.0.1:" + port_ + "/api/v1"; }

 private:
  static bool fail(const std::string& what, std::string* error) {
    *error = "openrouter-emulator: " + what;
    return false;
  }
  std::string dir_, key_file_, port_, key_;
  pid_t pid_ = -1;
};

}  // namespace ledger_support
