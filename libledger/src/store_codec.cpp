// store_codec.cpp — see store_codec.hpp.
#include "store_codec.hpp"

#include "impl.hpp"

#include <pthread.h>
#include <sys/stat.h>

#include <cassert>
#include <mutex>

namespace ledger::db {

namespace {

// The process-wide store lock (see store_codec.hpp). A child of fork() gets a fresh one: a parent
// thread may have held it at the fork, and that thread does not exist in the child.
std::mutex* g_store_mutex = new std::mutex;  // NOLINT: never destroyed (a copy may be held at fork)
thread_local bool tl_store_held = false;
std::once_flag g_store_atfork;
void store_mutex_after_fork() { g_store_mutex = new std::mutex; }  // NOLINT: the old one is abandoned

constexpr const char* kFormatKey = "format";

}  // namespace

Status mdb_status(int rc) {
  switch (rc) {
    case MDB_SUCCESS: return Code::kOk;
    case MDB_MAP_FULL: return Code::kFull;
    case MDB_NOTFOUND: return Code::kNotFound;
    case MDB_VERSION_MISMATCH:
    case MDB_INVALID:
    case MDB_INCOMPATIBLE: return Code::kIncompatible;
    case EACCES:
    case EROFS:
    case EPERM: return Code::kPermission;
    case ENOENT: return Code::kNotFound;
    default: return Code::kIoError;
  }
}

bool store_open_on_this_thread() { return tl_store_held; }

Env::~Env() {
  if (env != nullptr) mdb_env_close(env);
  if (locked) {
    tl_store_held = false;
    g_store_mutex->unlock();
  }
}

Status Env::open(const std::string& dir, bool write, uint64_t map_size, uint32_t mode) {
  std::call_once(g_store_atfork, [] { ::pthread_atfork(nullptr, nullptr, store_mutex_after_fork); });
  if (tl_store_held) return Code::kInvalidArgument;  // this thread has the store open already
  const std::string path = dir + kStoreFile;
  if (!write) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return Code::kNotFound;
  }
  g_store_mutex->lock();
  locked = tl_store_held = true;
  int rc = mdb_env_create(&env);
  if (rc == 0) rc = mdb_env_set_maxdbs(env, kDbCount);
  if (rc == 0 && write) rc = mdb_env_set_mapsize(env, map_size);
  if (rc == 0) rc = mdb_env_open(env, path.c_str(), MDB_NOSUBDIR | (write ? 0 : MDB_RDONLY), mode);
  if (rc != 0) return mdb_status(rc);
  int dead = 0;
  mdb_reader_check(env, &dead);  // slots of readers that died
  Txn txn;
  rc = mdb_txn_begin(env, nullptr, write ? 0 : MDB_RDONLY, &txn.txn);
  if (rc != 0) return mdb_status(rc);
  Status status = open_databases(txn.txn, write);
  if (status.ok()) status = check_format(txn.txn, write);
  if (!status.ok()) return status;
  return mdb_status(txn.commit());  // keeps the dbi handles
}

Status Env::open_databases(MDB_txn* txn, bool write) {
  const unsigned flags = write ? MDB_CREATE : 0;
  int rc = mdb_dbi_open(txn, "meta", flags, &meta);
  if (rc == 0) rc = mdb_dbi_open(txn, "accounts", flags, &accounts);
  if (rc == 0) rc = mdb_dbi_open(txn, "periods", flags, &periods);
  if (rc == 0) rc = mdb_dbi_open(txn, "daily", flags, &daily);
  if (rc == 0) rc = mdb_dbi_open(txn, "journal", MDB_INTEGERKEY | flags, &journal);
  // Databases added after the first release: a store written before them simply has none yet.
  const auto optional = [&](const char* name, MDB_dbi* dbi) {
    if (rc != 0) return;
    rc = mdb_dbi_open(txn, name, flags, dbi);
    if (rc == MDB_NOTFOUND && !write) {
      *dbi = 0;
      rc = 0;
    }
  };
  optional("keys", &keys);
  optional("models", &models);
  optional("model_daily", &model_daily);
  optional("key_tallies", &key_tallies);
  optional("key_daily", &key_daily);
  optional("adjustments", &adjustments);
  optional("adjustment_daily", &adjustment_daily);
  if (rc == MDB_NOTFOUND) return Code::kIncompatible;  // one of the first five is missing: not ours
  return mdb_status(rc);
}

// The format version: written by the first writer, checked by everyone.
Status Env::check_format(MDB_txn* txn, bool write) {
  MDB_val k = val(kFormatKey, std::strlen(kFormatKey)), v;
  const int rc = mdb_get(txn, meta, &k, &v);
  if (rc == MDB_NOTFOUND && write) {
    const uint32_t version = kStoreFormatVersion;
    MDB_val nv = val(&version, sizeof version);
    return mdb_status(mdb_put(txn, meta, &k, &nv, 0));
  }
  uint32_t version = 0;
  if (rc != 0 || v.mv_size != sizeof version) return Code::kIncompatible;
  std::memcpy(&version, v.mv_data, sizeof version);
  return version == kStoreFormatVersion ? Status(Code::kOk) : Status(Code::kIncompatible);
}

bool get_meta(MDB_txn* txn, const Env& env, const char* key, std::string* out) {
  MDB_val k = val(key, std::strlen(key)), v;
  if (mdb_get(txn, env.meta, &k, &v) != 0) {
    out->clear();
    return false;
  }
  out->assign(static_cast<const char*>(v.mv_data), v.mv_size);
  return true;
}

int put_meta(MDB_txn* txn, const Env& env, const char* key, std::string_view value) {
  MDB_val k = val(key, std::strlen(key)), v = val(value);
  return mdb_put(txn, env.meta, &k, &v, 0);
}

bool decode_account(const MDB_val& v, AccountValue* out) {
  *out = AccountValue{};
  if (v.mv_size == sizeof(AccountValue)) {
    std::memcpy(out, v.mv_data, sizeof *out);
  } else if (v.mv_size == kAccountValueV1Size) {
    std::memcpy(out, v.mv_data, kAccountValueV1Size);  // no key field; its flags field was reserved (0)
    out->flags = 0;
  } else {
    return false;
  }
  // Pair the read with the write: every string field is NUL-terminated within its array.
  out->parent[sizeof out->parent - 1] = out->tier[sizeof out->tier - 1] = '\0';
  return out->version >= 1 && out->version <= kAccountValueVersion && out->period >= 0 && out->period <= 3 &&
         out->limit_nanousd >= 0 && out->limit_nanousd <= kAmountNanoUsdMax;
}

void put_be64(char* out, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xFF);
    v >>= 8;
  }
}

uint64_t get_be64(const char* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(in[i]);
  return v;
}

void period_key_into(std::string* key, std::string_view account, Period kind, int64_t index) {
  key->assign(account);
  key->push_back('\0');
  key->push_back(static_cast<char>(kind));
  char number[8];
  put_be64(number, static_cast<uint64_t>(index) ^ (uint64_t{1} << 63));
  key->append(number, 8);
}

std::string period_key(std::string_view account, Period kind, int64_t index) {
  std::string key;
  period_key_into(&key, account, kind, index);
  return key;
}

void day_key_into(std::string* key, std::string_view prefix, int64_t day) {
  key->assign(prefix);
  key->push_back('\0');
  char number[8];
  put_be64(number, static_cast<uint64_t>(day) ^ (uint64_t{1} << 63));
  key->append(number, 8);
}

std::string day_key(std::string_view prefix, int64_t day) {
  std::string key;
  day_key_into(&key, prefix, day);
  return key;
}

std::string pair_key(std::string_view first, std::string_view second) {
  std::string key(first);
  key.push_back('\0');
  key.append(second);
  return key;
}

namespace {
// Blobs: u32 counts and lengths, i64 numbers, strings as u32 length + bytes.
void put_u32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
void put_i64(std::string& out, int64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
void put_str(std::string& out, std::string_view s) {
  put_u32(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}
struct Reader {
  std::string_view in;
  size_t at = 0;
  bool u32(uint32_t* v) { return raw(v, 4); }
  bool i64(int64_t* v) { return raw(v, 8); }
  bool raw(void* v, size_t n) {
    if (in.size() - at < n) return false;
    std::memcpy(v, in.data() + at, n);
    at += n;
    return true;
  }
  bool str(std::string* s) {
    uint32_t n = 0;
    if (!u32(&n) || n > 256 || in.size() - at < n) return false;
    s->assign(in.data() + at, n);
    at += n;
    return true;
  }
  bool done() const { return at == in.size(); }
};
}  // namespace

std::string encode_tiers(const std::vector<TierSpec>& tiers) {
  std::string out;
  put_u32(out, static_cast<uint32_t>(tiers.size()));
  for (const auto& t : tiers) {
    put_str(out, t.name);
    put_u32(out, t.all_models ? 1 : 0);
    put_u32(out, t.downgrade_at_percent);
    put_str(out, t.fallback);
    put_str(out, t.downgrade_to);
    put_u32(out, static_cast<uint32_t>(t.models.size()));
    for (const auto& m : t.models) put_str(out, m);
  }
  return out;
}

bool decode_tiers(std::string_view in, std::vector<TierSpec>* out) {
  Reader r{in};
  uint32_t count = 0;
  if (!r.u32(&count) || count > 64) return false;
  for (uint32_t i = 0; i < count; ++i) {
    TierSpec t;
    uint32_t all = 0, models = 0;
    if (!r.str(&t.name) || !r.u32(&all) || !r.u32(&t.downgrade_at_percent) || !r.str(&t.fallback) ||
        !r.str(&t.downgrade_to) || !r.u32(&models) || models > 1024)
      return false;
    t.all_models = all != 0;
    t.models.resize(models);
    for (auto& m : t.models)
      if (!r.str(&m)) return false;
    out->push_back(std::move(t));
  }
  return r.done();
}

std::string encode_prices(const std::vector<PriceRecord>& prices) {
  std::string out;
  put_u32(out, static_cast<uint32_t>(prices.size()));
  for (const auto& p : prices) {
    put_str(out, p.model);
    put_i64(out, p.prompt);
    put_i64(out, p.completion);
    put_i64(out, p.request);
  }
  return out;
}

std::string encode_rules(const std::vector<RulesRecord>& rules) {
  std::string out;
  put_u32(out, static_cast<uint32_t>(rules.size()));
  for (const auto& r : rules) {
    put_str(out, r.account);
    const uint32_t flags = (r.rules.soft ? 1u : 0u) | (r.rules.has_models ? 2u : 0u) | (r.rules.all_models ? 4u : 0u);
    put_u32(out, flags);
    put_u32(out, r.rules.rpm);
    put_u32(out, r.rules.tpm);
    put_u32(out, r.rules.max_concurrent);
    put_str(out, r.rules.fallback);
    put_i64(out, r.topup.amount_nanousd);
    put_i64(out, r.topup.until_unix_ms);
    put_u32(out, static_cast<uint32_t>(r.rules.models.size()));
    for (const auto& m : r.rules.models) put_str(out, m);
  }
  return out;
}

bool decode_rules(std::string_view in, std::vector<RulesRecord>* out) {
  Reader r{in};
  uint32_t count = 0;
  if (!r.u32(&count) || count > detail::kRulesMax) return false;
  for (uint32_t i = 0; i < count; ++i) {
    RulesRecord rec;
    uint32_t flags = 0, models = 0;
    if (!r.str(&rec.account) || !r.u32(&flags) || !r.u32(&rec.rules.rpm) || !r.u32(&rec.rules.tpm) ||
        !r.u32(&rec.rules.max_concurrent) || !r.str(&rec.rules.fallback) || !r.i64(&rec.topup.amount_nanousd) ||
        !r.i64(&rec.topup.until_unix_ms) || !r.u32(&models) || models > detail::kModelsMax)
      return false;
    rec.rules.soft = (flags & 1u) != 0;
    rec.rules.has_models = (flags & 2u) != 0;
    rec.rules.all_models = (flags & 4u) != 0;
    rec.rules.models.resize(models);
    for (auto& m : rec.rules.models)
      if (!r.str(&m)) return false;
    out->push_back(std::move(rec));
  }
  return r.done();
}

bool decode_prices(std::string_view in, std::vector<PriceRecord>* out) {
  Reader r{in};
  uint32_t count = 0;
  if (!r.u32(&count) || count > 1024) return false;
  for (uint32_t i = 0; i < count; ++i) {
    PriceRecord p;
    if (!r.str(&p.model) || !r.i64(&p.prompt) || !r.i64(&p.completion) || !r.i64(&p.request)) return false;
    out->push_back(std::move(p));
  }
  return r.done();
}

uint64_t next_journal_seq(MDB_txn* txn, MDB_dbi journal) {
  uint64_t last = 0;
  MDB_cursor* cursor = nullptr;
  if (mdb_cursor_open(txn, journal, &cursor) == 0) {
    MDB_val k, v;
    if (mdb_cursor_get(cursor, &k, &v, MDB_LAST) == 0 && k.mv_size == sizeof last) std::memcpy(&last, k.mv_data, sizeof last);
    mdb_cursor_close(cursor);
  }
  return last + 1;
}

}  // namespace ledger::db

namespace ledger {

using namespace db;

// ---- key bindings (provisioned and rotated keys) --------------------------------------------------

Status store_bind_key(std::string_view dir, std::string_view account, std::string_view hash, uint32_t file_mode) {
  if (!valid_account_name(account) || hash.size() > 128) return Code::kInvalidArgument;
  Env env;
  Status status = env.open(std::string(dir), true, uint64_t{1} << 30, file_mode & 0777);
  if (!status.ok()) return status;
  Txn txn;
  int rc = mdb_txn_begin(env.env, nullptr, 0, &txn.txn);
  if (rc != 0) return mdb_status(rc);
  MDB_val k = val(account), v = val(hash);
  rc = hash.empty() ? mdb_del(txn.txn, env.keys, &k, nullptr) : mdb_put(txn.txn, env.keys, &k, &v, 0);
  if (rc == MDB_NOTFOUND) rc = 0;
  if (rc == 0) rc = txn.commit();
  return mdb_status(rc);
}

Status store_key_bindings(std::string_view dir, std::vector<std::pair<std::string, std::string>>* out) {
  out->clear();
  Env env;
  Status status = env.open(std::string(dir), false, 0, 0);
  if (status.code() == Code::kNotFound) return Code::kOk;
  if (!status.ok() || env.keys == 0) return status;
  Txn txn;
  int rc = mdb_txn_begin(env.env, nullptr, MDB_RDONLY, &txn.txn);
  MDB_cursor* cursor = nullptr;
  if (rc == 0) rc = mdb_cursor_open(txn.txn, env.keys, &cursor);
  if (rc != 0) return mdb_status(rc);
  MDB_val k, v;
  for (int op = MDB_FIRST; mdb_cursor_get(cursor, &k, &v, static_cast<MDB_cursor_op>(op)) == 0; op = MDB_NEXT)
    out->emplace_back(std::string(static_cast<const char*>(k.mv_data), k.mv_size),
                      std::string(static_cast<const char*>(v.mv_data), v.mv_size));
  mdb_cursor_close(cursor);
  return Code::kOk;
}

namespace detail {
bool store_exists(const std::string& dir) {
  struct stat st {};
  return ::stat((dir + kStoreFile).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
}  // namespace detail

}  // namespace ledger
