// emulator_process.hpp — the openrouter-emulator binary, started for one test and stopped after.
#pragma once

#include <curl/curl.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "../support/emulator_binary.hpp"
#include "ledger/ledger.hpp"
#include "openrouter/client.hpp"
#include "process.hpp"
#include "test_util.hpp"

namespace ledger_test {

using ledger::openrouter::ClientOptions;

// The binary (tests/support/emulator_binary.hpp), started or the test case fails.
class EmulatorProcess {
 public:
  EmulatorProcess() {
    std::string error;
    const bool started = binary_.start(EMULATOR_PATH, &error);
    INFO(error);
    REQUIRE(started);
  }
  const std::string& key_file() const { return binary_.key_file(); }
  std::string base() const { return binary_.base(); }
  const std::string& key() const { return binary_.key(); }
  ClientOptions options(const std::string& key = "") const {
    ClientOptions o;
    o.base_url = base();
    o.api_key = key.empty() ? binary_.key() : key;
    o.key_source = "$OPENROUTER_MGMT_KEY";
    o.timeout_ms = 2000;
    o.backoff_initial_ms = 5;
    o.backoff_max_ms = 20;
    return o;
  }
  // GET of an emulator admin path (e.g. /__emulator/state), the body.
  std::string admin_get(const std::string& path) {
    CURL* curl = curl_easy_init();
    const std::string url = "http://127.0.0.1:" + binary_.port() + path;
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
    const std::string url = "http://127.0.0.1:" + binary_.port() + path;
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
  ledger_support::EmulatorBinary binary_;
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
