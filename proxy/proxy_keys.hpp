// proxy_keys.hpp — the proxy's keys (DESIGN 12): "lk-..." bearer keys that name an account.
//
// `ledgerctl proxy-key create ACCOUNT` makes a key, prints it once, and keeps only its SHA-256 in
// <ledger.dir>/proxy-keys.json (0600, rewritten atomically under a file lock); `list` shows ids
// (the first 12 hex digits of the hash), accounts and states; `revoke ID` (an id or a unique
// prefix) marks it revoked. The proxy reads the file at start and again whenever it changed, so a
// revocation applies to the next request without a reload.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ledger::proxy {

struct ProxyKey {
  std::string id;       // the first 12 hex digits of sha256
  std::string account;
  std::string sha256;   // of the whole key text, 64 lowercase hex
  int64_t created_unix = 0;
  int64_t revoked_unix = 0;  // 0 = valid
};

std::string keys_path(const std::string& ledger_dir);
// SHA-256 of text, lowercase hex.
std::string sha256_hex(const std::string& text);
// True for "lk-" followed by 48 lowercase hex digits (what create makes).
bool looks_like_proxy_key(const std::string& text);

// Reads the file; a missing file is an empty list. False and *error naming the file on a bad one.
bool read_keys(const std::string& path, std::vector<ProxyKey>* out, std::string* error);
// Makes a key for `account`: *secret is the key (shown once), *made its record.
bool create_key(const std::string& path, const std::string& account, std::string* secret, ProxyKey* made, std::string* error);
// Revokes the key whose id starts with `id_prefix` (unique); *revoked is its record.
bool revoke_key(const std::string& path, const std::string& id_prefix, ProxyKey* revoked, std::string* error);

// The proxy's view: reloads the file when its modification time or size changed (checked at most
// every 200 ms), and finds the account of a bearer key. Thread-safe.
class KeyTable {
 public:
  explicit KeyTable(std::string path) : path_(std::move(path)) {}
  // The account of a valid key, nullopt for an unknown or revoked one.
  std::optional<std::string> account_of(const std::string& bearer);
  size_t size();

 private:
  void refresh_locked();
  std::string path_;
  std::mutex mutex_;
  std::vector<ProxyKey> keys_;
  int64_t checked_ms_ = -1, mtime_ns_ = -1, size_ = -1;
};

}  // namespace ledger::proxy
