// store_reader.cpp — the read side of the store (ledger/store.hpp): what reports and tools read.
#include <cstring>
#include <map>

#include "impl.hpp"
#include "store_codec.hpp"

namespace ledger {

using namespace db;

namespace {
// Splits "first\0second" (pair_key); false when there is no NUL.
bool split_pair(std::string_view names, std::string_view* first, std::string_view* second) {
  const size_t nul = names.find('\0');
  if (nul == std::string_view::npos) return false;
  *first = names.substr(0, nul);
  *second = names.substr(nul + 1);
  return true;
}
}  // namespace

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
  std::map<std::string, RulesRecord> rules;  // soft, top-ups: the meta record the flush keeps
  {
    Txn txn;
    std::string blob;
    std::vector<RulesRecord> list;
    if (mdb_txn_begin(impl_->env.env, nullptr, MDB_RDONLY, &txn.txn) == 0 && get_meta(txn.txn, impl_->env, "rules", &blob) &&
        decode_rules(blob, &list))
      for (auto& r : list) rules[r.account] = std::move(r);
  }
  const Status status = scan(impl_->env, impl_->env.accounts, nullptr, [&](const MDB_val& k, const MDB_val& v) {
    AccountValue a;
    if (!decode_account(v, &a)) return true;  // not a record we know: skipped, never misread
    out->push_back(StoredAccount{std::string(static_cast<const char*>(k.mv_data), k.mv_size),
                                 std::string(a.parent, strnlen(a.parent, sizeof a.parent)), a.limit_nanousd,
                                 static_cast<Period>(a.period & 3), a.blocked != 0,
                                 std::string(a.tier, strnlen(a.tier, sizeof a.tier)),
                                 std::string(a.key_hash, strnlen(a.key_hash, sizeof a.key_hash)),
                                 (a.flags & kAccountGlobal) != 0});
    return true;
  });
  for (StoredAccount& a : *out) {
    const auto it = rules.find(a.account);
    if (it == rules.end()) continue;
    a.soft = it->second.rules.soft;
    a.topup_nanousd = it->second.topup.amount_nanousd;
    a.topup_until_unix_ms = it->second.topup.until_unix_ms;
  }
  return status;
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
                             std::string_view account, model;
                             if (!split_pair(prefix.substr(0, prefix.size() - 1), &account, &model)) return;  // drop the NUL
                             out->push_back(StoredModelDay{std::string(account), std::string(model), day, t.spent_nanousd, t.requests});
                           });
}

Status StoreReader::key_days(int64_t first_day, int64_t last_day, std::vector<StoredKeyDay>* out) const {
  out->clear();
  if (impl_->env.key_daily == 0) return Code::kOk;  // a store from before per-key spend
  return scan_number_range(impl_->env, impl_->env.key_daily, first_day, last_day,
                           [&](std::string_view prefix, int64_t day, const TotalsValue& t) {
                             std::string_view key, account;
                             if (!split_pair(prefix.substr(0, prefix.size() - 1), &key, &account)) return;
                             out->push_back(StoredKeyDay{std::string(key), std::string(account), day, t.spent_nanousd, t.requests});
                           });
}

Status StoreReader::adjustment_days(int64_t first_day, int64_t last_day, std::vector<StoredAdjustmentDay>* out) const {
  out->clear();
  if (impl_->env.adjustment_daily == 0) return Code::kOk;  // a store from before journaled adjustments
  return scan_number_range(impl_->env, impl_->env.adjustment_daily, first_day, last_day,
                           [&](std::string_view prefix, int64_t day, const TotalsValue& t) {
                             std::string_view account, key;
                             if (!split_pair(prefix.substr(0, prefix.size() - 1), &account, &key)) return;
                             out->push_back(StoredAdjustmentDay{std::string(account), std::string(key), day, t.spent_nanousd, t.requests});
                           });
}

Status StoreReader::journal(uint64_t from_seq, size_t max_entries, std::vector<JournalEntry>* out) const {
  out->clear();
  MDB_val start = val(&from_seq, sizeof from_seq);
  return scan(impl_->env, impl_->env.journal, &start, [&](const MDB_val& k, const MDB_val& v) {
    if ((v.mv_size != sizeof(JournalValue) && v.mv_size != kJournalValueV1Size) || k.mv_size != sizeof(uint64_t)) return true;
    JournalValue j{};
    std::memcpy(&j, v.mv_data, v.mv_size);  // v1 entries have no key
    JournalEntry e;
    std::memcpy(&e.seq, k.mv_data, sizeof e.seq);
    e.unix_ms = j.unix_ms;
    e.kind = static_cast<JournalKind>(j.kind);
    e.account = std::string(j.account, strnlen(j.account, sizeof j.account));
    e.period = static_cast<Period>(j.period & 3);
    e.index = j.index;
    e.delta_nanousd = j.delta_nanousd;
    e.delta_requests = j.delta_requests;
    e.key_hash = std::string(j.key_hash, strnlen(j.key_hash, sizeof j.key_hash));
    out->push_back(std::move(e));
    return out->size() < max_entries;
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
