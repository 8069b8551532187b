// store.cpp — the LMDB durable record: flush (segment -> store) and rebuild (store -> segment).
//
// Flushes from any number of processes serialize on an OFD lock (kFlushLockByte of ledger.lock) and
// each is one synced LMDB write transaction (no MDB_NOSYNC, no MDB_WRITEMAP). The environment is
// opened per flush, so a handle carried across fork() never touches a parent's LMDB environment.
#include <lmdb.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "impl.hpp"
#include "ledger/store.hpp"

namespace ledger {

using namespace detail;

namespace {

constexpr const char* kStoreFile = "/ledger.mdb";
constexpr uint32_t kDbCount = 8;

// Records as stored (fixed layout, little-endian x86-64; the meta "format" key versions them).
struct AccountValue {
  uint32_t version;
  uint32_t blocked;
  int64_t limit_nanousd;
  int32_t period;
  uint32_t reserved;
  char parent[64];
  char tier[64];
};
static_assert(sizeof(AccountValue) == 152);

// The tier table as one blob under meta "tiers": count, then per tier its name, flags, percent,
// fallback, downgrade model and allowlist, strings as u32 length + bytes.
void put_u32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
void put_str(std::string& out, std::string_view s) {
  put_u32(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}
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
  size_t at = 0;
  auto u32 = [&](uint32_t* v) {
    if (in.size() - at < 4) return false;
    std::memcpy(v, in.data() + at, 4);
    at += 4;
    return true;
  };
  auto str = [&](std::string* s) {
    uint32_t n = 0;
    if (!u32(&n) || n > 256 || in.size() - at < n) return false;
    s->assign(in.data() + at, n);
    at += n;
    return true;
  };
  uint32_t count = 0;
  if (!u32(&count) || count > kTiersMax) return false;
  for (uint32_t i = 0; i < count; ++i) {
    TierSpec t;
    uint32_t all = 0, models = 0;
    if (!str(&t.name) || !u32(&all) || !u32(&t.downgrade_at_percent) || !str(&t.fallback) || !str(&t.downgrade_to) ||
        !u32(&models) || models > kModelsMax)
      return false;
    t.all_models = all != 0;
    t.models.resize(models);
    for (auto& m : t.models)
      if (!str(&m)) return false;
    out->push_back(std::move(t));
  }
  return at == in.size();
}
struct TotalsValue {
  int64_t spent_nanousd;
  uint64_t requests;
};
static_assert(sizeof(TotalsValue) == 16);
// The last per-model tally a flush saw, and which segment it was from: a rebuilt segment's tallies
// start again at zero, so a snapshot of another segment counts as zero.
struct ModelSnapshotValue {
  uint64_t segment_id;
  int64_t spent_nanousd;
  uint64_t requests;
};
static_assert(sizeof(ModelSnapshotValue) == 24);
struct JournalValue {
  int64_t unix_ms;
  uint32_t kind;
  int32_t period;
  int64_t index;
  int64_t delta_nanousd;
  int64_t delta_requests;
  char account[64];
};
static_assert(sizeof(JournalValue) == 104);

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

// (account, period kind, index) and (account, day) keys: name, NUL, then big-endian numbers so that
// one account's entries sort together and in time order.
// The *_into forms reuse the caller's string (no allocation once it has grown: the flush loop).
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
// (account, model) and (account, model, day) keys: the model name sits between the account and the
// day, NUL-terminated (neither name may contain a NUL).
std::string model_key(std::string_view account, std::string_view model) {
  std::string key(account);
  key.push_back('\0');
  key.append(model);
  return key;
}
void day_key_into(std::string* key, std::string_view account, int64_t day) {
  key->assign(account);
  key->push_back('\0');
  char number[8];
  put_be64(number, static_cast<uint64_t>(day) ^ (uint64_t{1} << 63));
  key->append(number, 8);
}
std::string day_key(std::string_view account, int64_t day) {
  std::string key;
  day_key_into(&key, account, day);
  return key;
}

MDB_val val(const void* data, size_t size) { return MDB_val{size, const_cast<void*>(data)}; }
MDB_val val(const std::string& s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }

// An LMDB environment with the ledger's databases, open for one flush, rebuild or read.
struct Env {
  MDB_env* env = nullptr;
  MDB_dbi meta = 0, accounts = 0, periods = 0, daily = 0, journal = 0, keys = 0, models = 0, model_daily = 0;
  ~Env() {
    if (env != nullptr) mdb_env_close(env);
  }
  Status open(const std::string& dir, bool write, uint64_t map_size, uint32_t mode) {
    const std::string path = dir + kStoreFile;
    if (!write) {
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) return Code::kNotFound;
    }
    int rc = mdb_env_create(&env);
    if (rc == 0) rc = mdb_env_set_maxdbs(env, kDbCount);
    if (rc == 0 && write) rc = mdb_env_set_mapsize(env, map_size);
    if (rc == 0) rc = mdb_env_open(env, path.c_str(), MDB_NOSUBDIR | (write ? 0 : MDB_RDONLY), mode);
    if (rc != 0) return mdb_status(rc);
    int dead = 0;
    mdb_reader_check(env, &dead);  // slots of readers that died
    MDB_txn* txn = nullptr;
    rc = mdb_txn_begin(env, nullptr, write ? 0 : MDB_RDONLY, &txn);
    if (rc != 0) return mdb_status(rc);
    const unsigned flags = write ? MDB_CREATE : 0;
    rc = mdb_dbi_open(txn, "meta", flags, &meta);
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
    if (rc != 0) {
      mdb_txn_abort(txn);
      return rc == MDB_NOTFOUND ? Status(Code::kIncompatible) : mdb_status(rc);
    }
    // Format version: written by the first writer, checked by everyone.
    const char* key = "format";
    MDB_val k = val(key, std::strlen(key)), v;
    rc = mdb_get(txn, meta, &k, &v);
    if (rc == MDB_NOTFOUND && write) {
      const uint32_t version = kStoreFormatVersion;
      MDB_val nv = val(&version, sizeof version);
      rc = mdb_put(txn, meta, &k, &nv, 0);
      if (rc == 0) rc = mdb_txn_commit(txn);
      else mdb_txn_abort(txn);
      return mdb_status(rc);
    }
    Status status = Code::kOk;
    uint32_t version = 0;
    if (rc != 0 || v.mv_size != sizeof version) status = Code::kIncompatible;
    else std::memcpy(&version, v.mv_data, sizeof version);
    if (status.ok() && version != kStoreFormatVersion) status = Code::kIncompatible;
    rc = mdb_txn_commit(txn);  // keeps the dbi handles
    return status.ok() ? mdb_status(rc) : status;
  }
};

struct Txn {
  MDB_txn* txn = nullptr;
  ~Txn() {
    if (txn != nullptr) mdb_txn_abort(txn);
  }
  int commit() {
    const int rc = mdb_txn_commit(txn);
    txn = nullptr;
    return rc;
  }
};

// The sequence number the next journal entry gets (entries are appended in key order).
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

template <class T>
bool get_struct(MDB_txn* txn, MDB_dbi dbi, const std::string& key, T* out) {
  MDB_val k = val(key), v;
  if (mdb_get(txn, dbi, &k, &v) != 0 || v.mv_size != sizeof(T)) return false;
  std::memcpy(out, v.mv_data, sizeof(T));
  return true;
}

}  // namespace

// ---- flush ----------------------------------------------------------------------------------------

void Ledger::Impl::snapshot_words(uint32_t count, std::vector<PeriodWord>* words, std::vector<int64_t>* held) const {
  words->assign(size_t{count} * 2, PeriodWord{});
  held->assign(size_t{count} * 2, 0);
  for (uint32_t i = 0; i < count; ++i)
    for (uint32_t p = 0; p < 2; ++p) (*words)[i * 2 + p] = period_word_load(accounts[i].words[p]);
  // Holds per (account, word): one pass over the reservation table.
  for (uint32_t r = 0; r < max_reservations; ++r) {
    const Reservation& res = reservations[r];
    if (res_status(load(res.state)) != kResHeld) continue;
    for (uint32_t level = 0; level < kChainDepthMax; ++level) {
      const int32_t a = load(res.chain[level], memory_order_relaxed);
      if (a < 0 || static_cast<uint32_t>(a) >= count) break;
      const uint32_t tag = load(res.tags[level], memory_order_relaxed);
      const uint32_t w = static_cast<uint32_t>(a) * 2 + tag_parity(tag);
      if (meta_tag((*words)[w].meta) == tag) (*held)[w] += load(res.amount_nanousd, memory_order_relaxed);
    }
  }
}

uint64_t Ledger::Impl::flush_pending() {
  std::lock_guard<std::mutex> local(*flush_mutex);
  const uint32_t count = load(header->account_count);
  std::vector<PeriodWord> words;
  std::vector<int64_t> held;
  snapshot_words(count, &words, &held);
  const bool known = flush_cache.sequence != 0;
  uint64_t pending = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (load(accounts[i].live) == 0) continue;
    for (uint32_t p = 0; p < 2; ++p) {
      const PeriodWord w = words[i * 2 + p];
      if (w.used == 0 && meta_requests(w.meta) == 0) continue;  // never used: nothing to write
      const int64_t settled = w.used - held[i * 2 + p];
      const FlushCache::Totals* last = known && i < flush_cache.entries.size() ? &flush_cache.entries[i].words[p] : nullptr;
      if (last != nullptr && last->valid && last->tag == meta_tag(w.meta))
        pending += last->spent == settled && last->requests == meta_requests(w.meta) ? 0 : 1;
      else
        pending += settled != 0 || meta_requests(w.meta) != 0 ? 1 : 0;  // only holds: nothing to write yet
    }
  }
  return pending;
}

Status Ledger::Impl::flush_store() {
  std::lock_guard<std::mutex> local(*flush_mutex);  // one LMDB environment per process at a time
  lock_byte_wait(kFlushLockByte);
  struct Unlock {
    const Impl* impl;
    ~Unlock() { impl->unlock_byte(kFlushLockByte); }
  } unlock{this};
  Env env;
  Status status = env.open(dir, true, options.store_map_size_bytes, options.file_mode & 0777);
  if (!status.ok()) return status;

  // Per-model tallies first, then the accounts' words: a commit tallies after it charged its chain,
  // so what this flush records per model never runs ahead of what it records per account.
  struct Tally {
    uint32_t account, model;
    PeriodWord word;
  };
  std::vector<Tally> tallies;
  for (uint32_t i = 0; i <= model_stat_mask; ++i) {
    const uint64_t key = load(model_stats[i].key, memory_order_relaxed);
    if (key == 0) continue;
    const PeriodWord word = period_word_load(model_stats[i].word);
    if (word.used != 0 || meta_requests(word.meta) != 0)
      tallies.push_back(Tally{stat_key_account(key), stat_key_model(key), word});
  }
  const uint32_t count = load(header->account_count);
  std::vector<PeriodWord> words;
  std::vector<int64_t> held;
  snapshot_words(count, &words, &held);

  const Now clock = now();
  Txn txn;
  int rc = mdb_txn_begin(env.env, nullptr, 0, &txn.txn);
  if (rc != 0) return mdb_status(rc);
  // What the store says about its own identity and the last flush: the cache of our last flush is
  // good only if nobody flushed since. From here until the commit succeeds, the cache is invalid.
  FlushCache& cache = flush_cache;
  uint64_t store_id = 0, sequence = 0;
  {
    const char* id_key = "store_id";
    const char* seq_key = "flush_sequence";
    MDB_val ik = val(id_key, std::strlen(id_key)), sk = val(seq_key, std::strlen(seq_key)), v;
    if (mdb_get(txn.txn, env.meta, &ik, &v) == 0 && v.mv_size == sizeof store_id) std::memcpy(&store_id, v.mv_data, sizeof store_id);
    if (mdb_get(txn.txn, env.meta, &sk, &v) == 0 && v.mv_size == sizeof sequence) std::memcpy(&sequence, v.mv_data, sizeof sequence);
    if (store_id == 0) {
      while (store_id == 0)
        if (::getrandom(&store_id, sizeof store_id, 0) != static_cast<ssize_t>(sizeof store_id)) store_id = static_cast<uint64_t>(clock.ms) ^ 0x9E3779B97F4A7C15ULL;
      MDB_val nv = val(&store_id, sizeof store_id);
      rc = mdb_put(txn.txn, env.meta, &ik, &nv, 0);
    }
  }
  // About 90 bytes per account: beyond kFlushCacheAccountsMax accounts the flush reads instead.
  const bool cacheable = count <= kFlushCacheAccountsMax;
  const bool known = cacheable && cache.sequence != 0 && cache.store_id == store_id && cache.sequence == sequence;
  cache.sequence = 0;
  if (!cacheable) {
    cache.entries.clear();
    cache.entries.shrink_to_fit();
  } else if (!known || cache.entries.size() < count) {
    // Keep nothing we cannot vouch for (entries of accounts created since are simply unknown).
    const size_t keep = known ? cache.entries.size() : 0;
    cache.entries.resize(std::max<size_t>(count, cache.entries.size()));
    for (size_t i = keep; i < cache.entries.size(); ++i) cache.entries[i] = FlushCache::Entry{};
  }
  uint64_t journal_next = next_journal_seq(txn.txn, env.journal);
  auto name_of = [this](uint32_t i) {
    return std::string_view(accounts[i].name, std::min<uint32_t>(accounts[i].name_length, kAccountNameMax));
  };
  // In key order, so LMDB's B-tree inserts are sequential rather than scattered. Names never change,
  // so the order is sorted again only when accounts were added.
  if (cache.order_count != count) {
    cache.order.clear();
    for (uint32_t i = 0; i < count; ++i)
      if (load(accounts[i].live) != 0) cache.order.push_back(i);
    std::sort(cache.order.begin(), cache.order.end(), [&](uint32_t x, uint32_t y) { return name_of(x) < name_of(y); });
    cache.order_count = count;
  }
  std::string record_key, day_record_key;  // reused: no allocation per record
  for (size_t position = 0; position < cache.order.size() && rc == 0; ++position) {
    const uint32_t i = cache.order[position];
    const Account& a = accounts[i];
    if (load(a.live) == 0) continue;
    FlushCache::Entry scratch;  // knows nothing: used when the ledger is too big to remember
    FlushCache::Entry& known_entry = cacheable ? cache.entries[i] : scratch;
    const std::string_view name = name_of(i);
    // Budget configuration: rewritten when it differs from what the store holds.
    const FlushCache::Config config_now{load(a.limit_nanousd), load(a.parent), load(a.period_kind), load(a.blocked), load(a.tier), 1};
    if (!(known_entry.config == config_now)) {
      AccountValue config{};
      config.version = 1;
      config.blocked = config_now.blocked;
      config.limit_nanousd = config_now.limit;
      config.period = config_now.period;
      if (config_now.parent >= 0 && static_cast<uint32_t>(config_now.parent) < count)
        std::memcpy(config.parent, accounts[config_now.parent].name, std::min<uint32_t>(accounts[config_now.parent].name_length, kAccountNameMax));
      const std::string tier = tier_name(config_now.tier);
      std::memcpy(config.tier, tier.data(), std::min<size_t>(tier.size(), kTierNameMax));
      record_key.assign(name);
      AccountValue stored{};
      if (!get_struct(txn.txn, env.accounts, record_key, &stored) || std::memcmp(&stored, &config, sizeof config) != 0) {
        MDB_val k = val(record_key), v = val(&config, sizeof config);
        rc = mdb_put(txn.txn, env.accounts, &k, &v, 0);
      }
      known_entry.config = config_now;
    }
    // Settled totals per period word, and the change since the last flush.
    for (uint32_t p = 0; p < 2 && rc == 0; ++p) {
      const PeriodWord w = words[i * 2 + p];
      if (w.used == 0 && meta_requests(w.meta) == 0) continue;  // never used
      const uint32_t tag = meta_tag(w.meta);
      const Period kind = tag_kind(tag);
      const int64_t index = tag_index(tag);
      const TotalsValue now_totals{w.used - held[i * 2 + p], meta_requests(w.meta)};
      FlushCache::Totals& known_word = known_entry.words[p];
      if (known_word.valid && known_word.tag == tag && known_word.spent == now_totals.spent_nanousd &&
          known_word.requests == now_totals.requests)
        continue;  // unchanged since our last flush: no read, no write
      period_key_into(&record_key, name, kind, index);
      TotalsValue before{0, 0};
      if (known_word.valid && known_word.tag == tag) before = TotalsValue{known_word.spent, known_word.requests};
      else (void)get_struct(txn.txn, env.periods, record_key, &before);
      known_word = FlushCache::Totals{tag, true, now_totals.spent_nanousd, now_totals.requests};
      const int64_t delta = now_totals.spent_nanousd - before.spent_nanousd;
      // Requests wrap at 2^33 in the segment: the difference modulo 2^33 is the count settled.
      int64_t delta_requests = static_cast<int64_t>(now_totals.requests) - static_cast<int64_t>(before.requests);
      if (delta_requests < 0) delta_requests += static_cast<int64_t>(kRequestMask) + 1;
      if (delta == 0 && delta_requests == 0) continue;
      MDB_val k = val(record_key), v = val(&now_totals, sizeof now_totals);
      rc = mdb_put(txn.txn, env.periods, &k, &v, 0);
      // The day it was settled (flush granularity) gets the change.
      FlushCache::Totals& known_day = known_entry.day;
      day_key_into(&day_record_key, name, clock.days);
      TotalsValue day{0, 0};
      if (known_day.valid && known_day.tag == static_cast<uint32_t>(clock.days)) day = TotalsValue{known_day.spent, known_day.requests};
      else (void)get_struct(txn.txn, env.daily, day_record_key, &day);
      day.spent_nanousd += delta;
      day.requests += static_cast<uint64_t>(delta_requests);
      known_day = FlushCache::Totals{static_cast<uint32_t>(clock.days), true, day.spent_nanousd, day.requests};
      MDB_val dk = val(day_record_key), dv = val(&day, sizeof day);
      if (rc == 0) rc = mdb_put(txn.txn, env.daily, &dk, &dv, 0);
      JournalValue entry{};
      entry.unix_ms = clock.ms;
      entry.kind = static_cast<uint32_t>(JournalKind::kFlush);
      entry.period = static_cast<int32_t>(kind);
      entry.index = index;
      entry.delta_nanousd = delta;
      entry.delta_requests = delta_requests;
      std::memcpy(entry.account, name.data(), name.size());
      const uint64_t seq = journal_next++;
      MDB_val jk = val(&seq, sizeof seq), jv = val(&entry, sizeof entry);
      if (rc == 0) rc = mdb_put(txn.txn, env.journal, &jk, &jv, MDB_APPEND);
    }
  }
  // Per-model spend: the change of each tally since the stored snapshot goes to the day's bucket.
  const uint64_t segment = load(header->segment_id, memory_order_relaxed);
  for (size_t t = 0; t < tallies.size() && rc == 0; ++t) {
    const Tally& tally = tallies[t];
    if (tally.account >= count || tally.model >= kModelsMax || load(accounts[tally.account].live) == 0) continue;
    const std::string key = model_key(name_of(tally.account), model_name(tally.model));
    const ModelSnapshotValue now_snapshot{segment, tally.word.used, meta_requests(tally.word.meta)};
    ModelSnapshotValue before{0, 0, 0};
    if (!get_struct(txn.txn, env.models, key, &before) || before.segment_id != segment) before = ModelSnapshotValue{segment, 0, 0};
    else if (before.spent_nanousd == now_snapshot.spent_nanousd && before.requests == now_snapshot.requests) continue;
    const int64_t delta = now_snapshot.spent_nanousd - before.spent_nanousd;
    int64_t delta_requests = static_cast<int64_t>(now_snapshot.requests) - static_cast<int64_t>(before.requests);
    if (delta_requests < 0) delta_requests += static_cast<int64_t>(kRequestMask) + 1;
    MDB_val k = val(key), v = val(&now_snapshot, sizeof now_snapshot);
    rc = mdb_put(txn.txn, env.models, &k, &v, 0);
    const std::string dkey = day_key(key, clock.days);
    TotalsValue day{0, 0};
    (void)get_struct(txn.txn, env.model_daily, dkey, &day);
    day.spent_nanousd += delta;
    day.requests += static_cast<uint64_t>(delta_requests);
    MDB_val dk = val(dkey), dv = val(&day, sizeof day);
    if (rc == 0 && (delta != 0 || delta_requests != 0)) rc = mdb_put(txn.txn, env.model_daily, &dk, &dv, 0);
  }
  if (rc == 0) {
    // The tier table, when it changed.
    const std::string tiers = encode_tiers(read_tiers());
    const char* key = "tiers";
    MDB_val k = val(key, std::strlen(key)), v;
    if (mdb_get(txn.txn, env.meta, &k, &v) != 0 || std::string_view(static_cast<const char*>(v.mv_data), v.mv_size) != tiers) {
      MDB_val nv = val(tiers);
      rc = mdb_put(txn.txn, env.meta, &k, &nv, 0);
    }
  }
  if (rc == 0) {
    const char* key = "last_flush_ms";
    MDB_val k = val(key, std::strlen(key)), v = val(&clock.ms, sizeof clock.ms);
    rc = mdb_put(txn.txn, env.meta, &k, &v, 0);
  }
  const uint64_t next_sequence = sequence + 1;
  if (rc == 0) {
    const char* key = "flush_sequence";
    MDB_val k = val(key, std::strlen(key)), v = val(&next_sequence, sizeof next_sequence);
    rc = mdb_put(txn.txn, env.meta, &k, &v, 0);
  }
  if (rc == 0) rc = txn.commit();  // synced: durable on return
  if (rc == 0 && cacheable) {
    cache.store_id = store_id;
    cache.sequence = next_sequence;  // the cache now describes the store exactly
  }
  return mdb_status(rc);
}

// ---- rebuild --------------------------------------------------------------------------------------

// Fills a fresh, not yet published segment from the store. REQUIRES: the init lock is held.
Status Ledger::Impl::rebuild_from_store() {
  Env env;
  Status status = env.open(dir, false, 0, 0);
  if (status.code() == Code::kNotFound) return Code::kOk;  // a new ledger: nothing to restore
  if (!status.ok()) return status;
  Txn txn;
  int rc = mdb_txn_begin(env.env, nullptr, MDB_RDONLY, &txn.txn);
  if (rc != 0) return mdb_status(rc);
  std::vector<std::pair<std::string, AccountValue>> stored;
  MDB_cursor* cursor = nullptr;
  if (mdb_cursor_open(txn.txn, env.accounts, &cursor) != 0) return Code::kIoError;
  MDB_val k, v;
  for (int op = MDB_FIRST; mdb_cursor_get(cursor, &k, &v, static_cast<MDB_cursor_op>(op)) == 0; op = MDB_NEXT) {
    const std::string name(static_cast<const char*>(k.mv_data), k.mv_size);
    if (v.mv_size != sizeof(AccountValue) || !valid_account_name(name)) {
      mdb_cursor_close(cursor);
      return Code::kIncompatible;
    }
    AccountValue a;
    std::memcpy(&a, v.mv_data, sizeof a);
    stored.emplace_back(name, a);
  }
  mdb_cursor_close(cursor);
  if (stored.size() > max_accounts) return Code::kFull;
  for (const auto& [name, a] : stored) {
    const int32_t index = create_account_record(name, a.limit_nanousd, static_cast<Period>(a.period & 3));
    if (index < 0) return Code::kFull;
    store(accounts[index].blocked, static_cast<uint8_t>(a.blocked != 0));
  }
  // Tiers first, so that no worker attaching after a reboot gets a ledger without its policy.
  {
    const char* key = "tiers";
    MDB_val tk = val(key, std::strlen(key)), tv;
    std::vector<TierSpec> tiers;
    if (mdb_get(txn.txn, env.meta, &tk, &tv) == 0) {
      if (!decode_tiers(std::string_view(static_cast<const char*>(tv.mv_data), tv.mv_size), &tiers))
        return Code::kIncompatible;
      const Status written = write_tiers(tiers);
      if (!written.ok()) return written;
    }
  }
  for (const auto& [name, a] : stored) {
    const std::string tier(a.tier, strnlen(a.tier, sizeof a.tier));
    const uint32_t count = load(policy->tier_count);
    for (uint32_t t = 0; t < count && !tier.empty(); ++t)
      if (tier_name(t + 1) == tier) store(accounts[find_index(name)].tier, static_cast<uint8_t>(t + 1));
  }
  for (const auto& [name, a] : stored) {
    const std::string parent(a.parent, strnlen(a.parent, sizeof a.parent));
    if (parent.empty()) continue;
    const int32_t p = find_index(parent);
    if (p >= 0) store(accounts[find_index(name)].parent, p);
  }
  // The current and previous period of each account get their settled totals back.
  const Now clock = now();
  for (const auto& [name, a] : stored) {
    const int32_t index = find_index(name);
    const auto kind = static_cast<Period>(a.period & 3);
    const uint32_t current = clock.tag(static_cast<uint32_t>(kind));
    for (int64_t back = 0; back < 2; ++back) {
      const int64_t period = static_cast<int64_t>(tag_index(current)) - back;
      if (period < 0 || (kind == Period::kNone && back > 0)) continue;
      TotalsValue totals{};
      if (!get_struct(txn.txn, env.periods, period_key(name, kind, period), &totals)) continue;
      const uint32_t tag = make_tag(kind, period);
      accounts[index].words[tag_parity(tag)] = PeriodWord{totals.spent_nanousd, make_meta(totals.requests, tag, 0)};
    }
  }
  return Code::kOk;
}

// ---- key bindings --------------------------------------------------------------------------------

Status store_bind_key(std::string_view dir, std::string_view account, std::string_view hash, uint32_t file_mode) {
  if (!valid_account_name(account) || hash.size() > 128) return Code::kInvalidArgument;
  Env env;
  Status status = env.open(std::string(dir), true, uint64_t{1} << 30, file_mode & 0777);
  if (!status.ok()) return status;
  Txn txn;
  int rc = mdb_txn_begin(env.env, nullptr, 0, &txn.txn);
  if (rc != 0) return mdb_status(rc);
  const std::string key(account), value(hash);
  MDB_val k = val(key), v = val(value);
  rc = hash.empty() ? mdb_del(txn.txn, env.keys, &k, nullptr) : mdb_put(txn.txn, env.keys, &k, &v, 0);
  if (rc == MDB_NOTFOUND) rc = 0;
  if (rc == 0) rc = txn.commit();
  return mdb_status(rc);
}

Status store_journal_adjustment(std::string_view dir, std::string_view account, Period period, int64_t index,
                                int64_t delta, int64_t unix_ms, uint32_t file_mode) {
  if (!valid_account_name(account)) return Code::kInvalidArgument;
  Env env;
  Status status = env.open(std::string(dir), true, uint64_t{1} << 30, file_mode & 0777);
  if (!status.ok()) return status;
  Txn txn;
  int rc = mdb_txn_begin(env.env, nullptr, 0, &txn.txn);
  if (rc != 0) return mdb_status(rc);
  const uint64_t seq = next_journal_seq(txn.txn, env.journal);
  JournalValue entry{};
  entry.unix_ms = unix_ms;
  entry.kind = static_cast<uint32_t>(JournalKind::kAdjustment);
  entry.period = static_cast<int32_t>(period);
  entry.index = index;
  entry.delta_nanousd = delta;
  std::memcpy(entry.account, account.data(), account.size());
  MDB_val k = val(&seq, sizeof seq), v = val(&entry, sizeof entry);
  rc = mdb_put(txn.txn, env.journal, &k, &v, MDB_APPEND);
  if (rc == 0) rc = txn.commit();
  return mdb_status(rc);
}

// ---- reader ---------------------------------------------------------------------------------------

struct StoreReader::Impl {
  Env env;
};

StoreReader::StoreReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StoreReader::~StoreReader() = default;

Status StoreReader::open(std::string_view dir, std::unique_ptr<StoreReader>* out) {
  if (out == nullptr || dir.empty()) return Code::kInvalidArgument;
  auto impl = std::make_unique<Impl>();
  Status status = impl->env.open(std::string(dir), false, 0, 0);
  if (!status.ok()) return status;
  out->reset(new StoreReader(std::move(impl)));
  return Code::kOk;
}

namespace {
// A read-only transaction with one cursor on `dbi`, both closed on scope exit.
struct ReadCursor {
  Txn txn;
  MDB_cursor* cursor = nullptr;
  int open(const Env& env, MDB_dbi dbi) {
    const int rc = mdb_txn_begin(env.env, nullptr, MDB_RDONLY, &txn.txn);
    return rc != 0 ? rc : mdb_cursor_open(txn.txn, dbi, &cursor);
  }
  int get(MDB_val* k, MDB_val* v, MDB_cursor_op op) { return mdb_cursor_get(cursor, k, v, op); }
  ~ReadCursor() {
    if (cursor != nullptr) mdb_cursor_close(cursor);
  }
};

template <class Fn>
Status scan(const Env& env, MDB_dbi dbi, const MDB_val* start, Fn&& fn) {
  ReadCursor c;
  if (const int rc = c.open(env, dbi); rc != 0) return mdb_status(rc);
  MDB_val k{}, v{};
  if (start != nullptr) k = *start;
  for (int rc = c.get(&k, &v, start != nullptr ? MDB_SET_RANGE : MDB_FIRST); rc == 0; rc = c.get(&k, &v, MDB_NEXT))
    if (!fn(k, v)) break;
  return Code::kOk;
}
void split_key(const MDB_val& k, size_t tail, std::string* account, const char** rest) {
  const auto* data = static_cast<const char*>(k.mv_data);
  *account = std::string(data, k.mv_size - tail - 1);
  *rest = data + k.mv_size - tail;
}
}  // namespace

Status StoreReader::accounts(std::vector<StoredAccount>* out) const {
  out->clear();
  return scan(impl_->env, impl_->env.accounts, nullptr, [&](const MDB_val& k, const MDB_val& v) {
    if (v.mv_size != sizeof(AccountValue)) return true;
    AccountValue a;
    std::memcpy(&a, v.mv_data, sizeof a);
    out->push_back(StoredAccount{std::string(static_cast<const char*>(k.mv_data), k.mv_size),
                                 std::string(a.parent, strnlen(a.parent, sizeof a.parent)), a.limit_nanousd,
                                 static_cast<Period>(a.period & 3), a.blocked != 0,
                                 std::string(a.tier, strnlen(a.tier, sizeof a.tier))});
    return true;
  });
}

Status StoreReader::periods(std::vector<StoredPeriod>* out) const {
  out->clear();
  return scan(impl_->env, impl_->env.periods, nullptr, [&](const MDB_val& k, const MDB_val& v) {
    if (v.mv_size != sizeof(TotalsValue) || k.mv_size < 11) return true;
    TotalsValue t;
    std::memcpy(&t, v.mv_data, sizeof t);
    StoredPeriod p;
    const char* rest = nullptr;
    split_key(k, 9, &p.account, &rest);
    p.period = static_cast<Period>(rest[0] & 3);
    p.index = static_cast<int64_t>(get_be64(rest + 1) ^ (uint64_t{1} << 63));
    p.spent_nanousd = t.spent_nanousd;
    p.requests = t.requests;
    out->push_back(std::move(p));
    return true;
  });
}

namespace {
// Records keyed PREFIX + big-endian number (days; period indexes), for one number range: only
// [first, last] of each prefix is visited. A skip scan: a number before the range seeks to the
// range's start in that prefix, one after it seeks to the next prefix (the prefix with its last byte
// raised by one: day keys end their prefix with NUL, period keys with the kind byte, and names are
// printable, so that sorts after the whole prefix and before any other). A report thus costs
// O(prefixes x log n + records returned), however long the history.
template <class Fn>
Status scan_number_range(const Env& env, MDB_dbi dbi, int64_t first, int64_t last, Fn&& fn) {
  ReadCursor c;
  int rc = c.open(env, dbi);
  if (rc != 0) return mdb_status(rc);
  MDB_val k{}, v{};
  std::string seek;
  for (rc = c.get(&k, &v, MDB_FIRST); rc == 0;) {
    const auto* data = static_cast<const char*>(k.mv_data);
    if (k.mv_size < 10 || static_cast<unsigned char>(data[k.mv_size - 9]) >= 0x20) {  // not ours: skip it
      rc = c.get(&k, &v, MDB_NEXT);
      continue;
    }
    const std::string_view prefix(data, k.mv_size - 8);
    const int64_t number = static_cast<int64_t>(get_be64(data + k.mv_size - 8) ^ (uint64_t{1} << 63));
    if (number < first || number > last) {
      seek.assign(prefix);
      if (number < first) {
        char encoded[8];
        put_be64(encoded, static_cast<uint64_t>(first) ^ (uint64_t{1} << 63));
        seek.append(encoded, 8);
      } else {
        seek.back() = static_cast<char>(seek.back() + 1);
      }
      k = val(seek);
      rc = c.get(&k, &v, MDB_SET_RANGE);
      continue;
    }
    if (v.mv_size == sizeof(TotalsValue)) {
      TotalsValue t;
      std::memcpy(&t, v.mv_data, sizeof t);
      fn(prefix, number, t);
    }
    rc = c.get(&k, &v, MDB_NEXT);
  }
  return rc == MDB_NOTFOUND ? Status(Code::kOk) : mdb_status(rc);
}
}  // namespace

Status StoreReader::periods_in(int64_t first_index, int64_t last_index, std::vector<StoredPeriod>* out) const {
  out->clear();
  return scan_number_range(impl_->env, impl_->env.periods, first_index, last_index,
                           [&](std::string_view prefix, int64_t index, const TotalsValue& t) {
                             // prefix = name, NUL, kind
                             if (prefix.size() < 3 || prefix[prefix.size() - 2] != '\0') return;
                             out->push_back(StoredPeriod{std::string(prefix.substr(0, prefix.size() - 2)),
                                                         static_cast<Period>(prefix.back() & 3), index, t.spent_nanousd, t.requests});
                           });
}

Status StoreReader::days(int64_t first_day, int64_t last_day, std::vector<StoredDay>* out) const {
  out->clear();
  return scan_number_range(impl_->env, impl_->env.daily, first_day, last_day, [&](std::string_view prefix, int64_t day, const TotalsValue& t) {
    out->push_back(StoredDay{std::string(prefix.substr(0, prefix.size() - 1)), day, t.spent_nanousd, t.requests});  // drop the NUL
  });
}

Status StoreReader::model_days(int64_t first_day, int64_t last_day, std::vector<StoredModelDay>* out) const {
  out->clear();
  if (impl_->env.model_daily == 0) return Code::kOk;  // a store from before per-model spend
  return scan_number_range(impl_->env, impl_->env.model_daily, first_day, last_day,
                        [&](std::string_view prefix, int64_t day, const TotalsValue& t) {
                          const std::string_view names = prefix.substr(0, prefix.size() - 1);  // drop the NUL
                          const size_t nul = names.find('\0');
                          if (nul == std::string_view::npos) return;
                          out->push_back(StoredModelDay{std::string(names.substr(0, nul)), std::string(names.substr(nul + 1)), day,
                                                        t.spent_nanousd, t.requests});
                        });
}

Status StoreReader::journal(uint64_t from_seq, size_t max_entries, std::vector<JournalEntry>* out) const {
  out->clear();
  MDB_val start = val(&from_seq, sizeof from_seq);
  return scan(impl_->env, impl_->env.journal, &start, [&](const MDB_val& k, const MDB_val& v) {
    if (v.mv_size != sizeof(JournalValue) || k.mv_size != sizeof(uint64_t)) return true;
    JournalValue j;
    std::memcpy(&j, v.mv_data, sizeof j);
    JournalEntry e;
    std::memcpy(&e.seq, k.mv_data, sizeof e.seq);
    e.unix_ms = j.unix_ms;
    e.kind = static_cast<JournalKind>(j.kind);
    e.account = std::string(j.account, strnlen(j.account, sizeof j.account));
    e.period = static_cast<Period>(j.period & 3);
    e.index = j.index;
    e.delta_nanousd = j.delta_nanousd;
    e.delta_requests = j.delta_requests;
    out->push_back(std::move(e));
    return out->size() < max_entries;
  });
}

Status store_key_bindings(std::string_view dir, std::vector<std::pair<std::string, std::string>>* out) {
  out->clear();
  Env env;
  Status status = env.open(std::string(dir), false, 0, 0);
  if (status.code() == Code::kNotFound) return Code::kOk;
  if (!status.ok()) return status;
  if (env.keys == 0) return Code::kOk;
  return scan(env, env.keys, nullptr, [&](const MDB_val& k, const MDB_val& v) {
    out->emplace_back(std::string(static_cast<const char*>(k.mv_data), k.mv_size),
                      std::string(static_cast<const char*>(v.mv_data), v.mv_size));
    return true;
  });
}

Status StoreReader::stats(StoreStats* out) const {
  Txn txn;
  int rc = mdb_txn_begin(impl_->env.env, nullptr, MDB_RDONLY, &txn.txn);
  if (rc != 0) return mdb_status(rc);
  const char* key = "last_flush_ms";
  MDB_val k = val(key, std::strlen(key)), v;
  if (mdb_get(txn.txn, impl_->env.meta, &k, &v) == 0 && v.mv_size == sizeof(int64_t))
    std::memcpy(&out->last_flush_ms, v.mv_data, sizeof(int64_t));
  MDB_stat st{};
  if (mdb_stat(txn.txn, impl_->env.journal, &st) == 0) out->journal_entries = st.ms_entries;
  MDB_envinfo info{};
  mdb_env_info(impl_->env.env, &info);
  MDB_stat env_stat{};
  mdb_env_stat(impl_->env.env, &env_stat);
  out->map_size_bytes = info.me_mapsize;
  out->used_bytes = (info.me_last_pgno + 1) * uint64_t{env_stat.ms_psize};
  return Code::kOk;
}

}  // namespace ledger
