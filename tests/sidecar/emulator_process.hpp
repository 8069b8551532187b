// emulator_process.hpp — the openrouter-emulator binary, started for one test and stopped after.
#pragma once

#include <curl/curl.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "ledger/ledger.hpp"
#include "openrouter/client.hpp"
#include "process.hpp"
#include "test_util.hpp"

namespace ledger_test {

using ledger::openrouter::ClientOptions;

class EmulatorProcess {
 public:
  EmulatorProcess() {
    key_file_ = dir_.path() + "/mgmt.key";
    const std::string port_file = dir_.path() + "/port";
    pid_ = spawn({EMULATOR_PATH, "--management-key-file", key_file_, "--port-file", port_file}, -1, -1);
    REQUIRE(pid_ > 0);
    for (int i = 0; i < 300 && port_.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      const std::string p = read_file(port_file);
      if (!p.empty() && p.back() == '\n') port_ = p.substr(0, p.size() - 1);
    }
    REQUIRE_FALSE(port_.empty());
    key_ = read_file(key_file_).substr(0, 73);
  }
  ~EmulatorProcess() {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  const std::string& key_file() const { return key_file_; }
  std::string base() const { return "http://127.0.0.1:" + port_ + "/api/v1"; }
  const std::string& key() const { return key_; }
  ClientOptions options(const std::string& key = "") const {
    ClientOptions o;
    o.base_url = base();
    o.api_key = key.empty() ? key_ : key;
    o.key_source = "$OPENROUTER_MGMT_KEY";
    o.timeout_ms = 2000;
    o.backoff_initial_ms = 5;
    o.backoff_max_ms = 20;
    return o;
  }
  // GET of an emulator admin path (e.g. /__emulator/state), the body.
  std::string admin_get(const std::string& path) {
    CURL* curl = curl_easy_init();
    const std::string url = "http://127.0.0.1:" + port_ + path;
    std::string body;
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, +[](char* p, size_t s, size_t n, void* out) {
      static_cast<std::string*>(out)->append(p, s * n);
      return s * n;
    });
    REQUIRE(curl_easy_perform(curl) == CURLE_OK);
    curl_easy_cleanup(curl);
    return body;
  }
  // Admin calls to the emulator itself, through a client pointed at its root.
  void admin(const std::string& path, const std::string& body) {
    CURL* curl = curl_easy_init();
    const std::string url = "http://127.0.0.1:" + port_ + path;
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, +[](char*, size_t s, size_t n, void*) { return s * n; });
    REQUIRE(curl_easy_perform(curl) == CURLE_OK);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(curl);
    REQUIRE(status == 200);
  }

 private:
  TempDir dir_;
  std::string key_file_, port_, key_;
  pid_t pid_ = -1;
};

// An emulator, a client holding its management key, and a directory for a config and its ledger
// (whose segment is removed at the end).
struct EmulatorLedger {
  EmulatorProcess emu;
  ledger::openrouter::Client client{emu.options()};
  TempDir dir;
  std::string config = dir.path() + "/ledger.json";
  std::string ledger_dir = dir.path() + "/ledger";
  ~EmulatorLedger() { (void)ledger::Ledger::destroy_segment(ledger_dir); }
};

}  // namespace ledger_test
