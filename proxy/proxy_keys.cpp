// proxy_keys.cpp — see proxy_keys.hpp.
#include "proxy_keys.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>

namespace ledger::proxy {

namespace json = boost::json;

namespace {

constexpr size_t kKeysMax = 100'000;
constexpr size_t kFileBytesMax = 64u << 20;

std::string hex(const unsigned char* bytes, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) out += std::string{kDigits[bytes[i] >> 4], kDigits[bytes[i] & 15]};
  return out;
}

bool is_hex(const std::string& s) { return s.find_first_not_of("0123456789abcdef") == std::string::npos; }

// An exclusive lock on <path>.lock for a read-modify-write (released when the fd closes).
struct FileLock {
  int fd = -1;
  explicit FileLock(const std::string& path) {
    fd = ::open((path + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && ::flock(fd, LOCK_EX) != 0) {
      ::close(fd);
      fd = -1;
    }
  }
  ~FileLock() {
    if (fd >= 0) ::close(fd);
  }
};

bool write_keys(const std::string& path, const std::vector<ProxyKey>& keys, std::string* error) {
  json::array list;
  for (const auto& k : keys)
    list.push_back(json::object{{"id", k.id}, {"account", k.account}, {"sha256", k.sha256}, {"created_unix", k.created_unix},
                                {"revoked_unix", k.revoked_unix}});
  const std::string text = json::serialize(json::object{{"version", 1}, {"keys", std::move(list)}}) + "\n";
  const std::string temp = path + ".tmp";
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  if (fd >= 0) ::close(fd);
  ok = ok && ::rename(temp.c_str(), path.c_str()) == 0;
  if (!ok) *error = "cannot write " + path;
  return ok;
}

bool parse_key(const json::value& v, ProxyKey* k) {
  const json::object* o = v.if_object();
  if (o == nullptr) return false;
  const auto str = [&](const char* name, std::string* out) {
    const json::value* f = o->if_contains(name);
    if (f == nullptr || !f->is_string()) return false;
    *out = std::string(f->get_string());
    return true;
  };
  const auto num = [&](const char* name, int64_t* out) {
    const json::value* f = o->if_contains(name);
    if (f == nullptr || !f->is_int64()) return false;
    *out = f->get_int64();
    return true;
  };
  return str("id", &k->id) && str("account", &k->account) && str("sha256", &k->sha256) && num("created_unix", &k->created_unix) &&
         num("revoked_unix", &k->revoked_unix) && k->sha256.size() == 64 && is_hex(k->sha256) && k->id == k->sha256.substr(0, 12);
}

}  // namespace

std::string keys_path(const std::string& ledger_dir) { return ledger_dir + "/proxy-keys.json"; }

std::string sha256_hex(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(text.data(), text.size(), digest, &n, EVP_sha256(), nullptr) != 1) return {};
  return hex(digest, n);
}

bool looks_like_proxy_key(const std::string& text) { return text.size() == 51 && text.rfind("lk-", 0) == 0 && is_hex(text.substr(3)); }

bool read_keys(const std::string& path, std::vector<ProxyKey>* out, std::string* error) {
  out->clear();
  std::ifstream in(path);
  if (!in) return true;  // none made yet
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().size() > kFileBytesMax) {
    *error = path + ": larger than " + std::to_string(kFileBytesMax >> 20) + " MiB";
    return false;
  }
  std::error_code ec;
  const json::value root = json::parse(text.str(), ec);
  const json::object* o = ec ? nullptr : root.if_object();
  const json::value* keys = o != nullptr ? o->if_contains("keys") : nullptr;
  if (keys == nullptr || !keys->is_array() || keys->get_array().size() > kKeysMax) {
    *error = path + ": not a proxy key file (expected {\"version\": 1, \"keys\": [...]})";
    return false;
  }
  for (const auto& v : keys->get_array()) {
    ProxyKey k;
    if (!parse_key(v, &k)) {
      *error = path + ": entry " + std::to_string(out->size()) + " is damaged (id, account, sha256, created_unix, revoked_unix)";
      return false;
    }
    out->push_back(std::move(k));
  }
  return true;
}

bool create_key(const std::string& path, const std::string& account, std::string* secret, ProxyKey* made, std::string* error) {
  FileLock lock(path);
  std::vector<ProxyKey> keys;
  if (lock.fd < 0) *error = "cannot lock " + path + ".lock";
  if (lock.fd < 0 || !read_keys(path, &keys, error)) return false;
  if (keys.size() >= kKeysMax) {
    *error = path + " holds " + std::to_string(kKeysMax) + " keys already: revoke some";
    return false;
  }
  unsigned char bytes[24];
  if (::getrandom(bytes, sizeof bytes, 0) != static_cast<ssize_t>(sizeof bytes)) {
    *error = "no randomness for a new key";
    return false;
  }
  *secret = "lk-" + hex(bytes, sizeof bytes);
  ProxyKey k;
  k.sha256 = sha256_hex(*secret);
  k.id = k.sha256.substr(0, 12);
  k.account = account;
  k.created_unix = std::time(nullptr);
  keys.push_back(k);
  if (!write_keys(path, keys, error)) return false;
  *made = k;
  return true;
}

bool revoke_key(const std::string& path, const std::string& id_prefix, ProxyKey* revoked, std::string* error) {
  if (id_prefix.empty() || id_prefix.size() > 64 || !is_hex(id_prefix)) {
    *error = "\"" + id_prefix + "\" is not a key id (hex digits, as `ledgerctl proxy-key list` shows them)";
    return false;
  }
  FileLock lock(path);
  std::vector<ProxyKey> keys;
  if (lock.fd < 0) *error = "cannot lock " + path + ".lock";
  if (lock.fd < 0 || !read_keys(path, &keys, error)) return false;
  ProxyKey* found = nullptr;
  for (auto& k : keys) {
    if (k.sha256.rfind(id_prefix, 0) != 0) continue;
    if (found != nullptr) {
      *error = "\"" + id_prefix + "\" matches more than one key: give more digits";
      return false;
    }
    found = &k;
  }
  if (found == nullptr) {
    *error = "no proxy key with id " + id_prefix + " (ledgerctl proxy-key list shows them)";
    return false;
  }
  if (found->revoked_unix == 0) found->revoked_unix = std::time(nullptr);
  *revoked = *found;
  return write_keys(path, keys, error);
}

std::optional<std::string> KeyTable::account_of(const std::string& bearer) {
  if (!looks_like_proxy_key(bearer)) return std::nullopt;
  const std::string hash = sha256_hex(bearer);
  std::lock_guard<std::mutex> lock(mutex_);
  refresh_locked();
  for (const auto& k : keys_)
    if (k.sha256 == hash) return k.revoked_unix == 0 ? std::optional<std::string>(k.account) : std::nullopt;
  return std::nullopt;
}

size_t KeyTable::size() {
  std::lock_guard<std::mutex> lock(mutex_);
  refresh_locked();
  return keys_.size();
}

void KeyTable::refresh_locked() {
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  if (checked_ms_ >= 0 && now - checked_ms_ < 200) return;
  checked_ms_ = now;
  struct stat st {};
  const bool exists = ::stat(path_.c_str(), &st) == 0;
  const int64_t mtime = exists ? int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec : 0;
  const int64_t size = exists ? static_cast<int64_t>(st.st_size) : 0;
  if (mtime == mtime_ns_ && size == size_) return;
  std::vector<ProxyKey> keys;
  std::string error;
  if (!read_keys(path_, &keys, &error)) return;  // keep the last good table (the proxy logs bad files at start)
  keys_ = std::move(keys);
  mtime_ns_ = mtime;
  size_ = size;
}

}  // namespace ledger::proxy
