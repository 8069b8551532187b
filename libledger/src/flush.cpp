// flush.cpp — segment -> store: snapshot, diff against the store, write, in one synced transaction.
//
// Flushes from any number of processes serialize on an OFD lock (kFlushLockByte of ledger.lock) and
// each is one synced LMDB write transaction (no MDB_NOSYNC, no MDB_WRITEMAP). The environment is
// opened per flush, so a handle carried across fork() never touches a parent's LMDB environment.
// What a flush writes, per account and period word: settled = used - live holds, and the change
// since the stored snapshot (into the UTC day's bucket and the journal); per tally: the change since
// the stored snapshot of the same segment (into per-day buckets; an adjustment tally's change also
// becomes a journal entry, in the same transaction as the totals it changed). A flusher killed
// mid-way commits nothing, so the next flush records the same change: nothing lost or counted twice.
#include <sys/random.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "impl.hpp"
#include "store_codec.hpp"

namespace ledger {

using namespace detail;
using namespace db;

namespace {

constexpr const char* kStoreIdKey = "store_id";
constexpr const char* kFlushSequenceKey = "flush_sequence";

struct TallyRow {
  uint32_t account, kind, id;
  PeriodWord word;
};

// Everything the flush writes, read from the segment before the transaction starts. Tallies are
// read first, then the accounts' words: a settlement tallies after it charged its chain, so what a
// flush records per model or key never runs ahead of what it records per account.
struct FlushSnapshot {
  std::vector<TallyRow> tallies;
  uint32_t count = 0;  // accounts [0, count)
  std::vector<PeriodWord> words;
  std::vector<int64_t> held;
  Now clock;
};

// The journal and the flush sequence of one flush transaction.
struct FlushTxn {
  const Env& env;
  MDB_txn* txn;
  uint64_t journal_next;
  Now clock;
  int64_t now_ms;
  int64_t day;
  int append_journal(const JournalValue& entry) {
    const uint64_t seq = journal_next++;
    MDB_val k = val(&seq, sizeof seq), v = val(&entry, sizeof entry);
    return mdb_put(txn, env.journal, &k, &v, MDB_APPEND);
  }
};

int64_t wrapped_requests_delta(uint64_t now, uint64_t before) {
  // Requests wrap at 2^32 in the segment: the difference modulo 2^32 is the count settled.
  int64_t delta = static_cast<int64_t>(now) - static_cast<int64_t>(before);
  if (delta < 0) delta += static_cast<int64_t>(kRequestMask) + 1;
  return delta;
}

void copy_name(char* out, size_t size, std::string_view name) {
  std::memcpy(out, name.data(), std::min(name.size(), size - 1));
}

}  // namespace

void Ledger::Impl::snapshot_words(uint32_t count, std::vector<PeriodWord>* words, std::vector<int64_t>* held) const {
  words->assign(size_t{count} * 2, PeriodWord{});
  held->assign(size_t{count} * 2, 0);
  for (uint32_t i = 0; i < count; ++i)
    for (uint32_t p = 0; p < 2; ++p) (*words)[i * 2 + p] = period_word_load(accounts[i].words[p]);
  // Holds per (account, word): one pass over the reservation table.
  for (uint32_t r = 0; r < max_reservations; ++r) {
    const Reservation& res = reservations[r];
    if (res_status(load(res.state)) != kResHeld) continue;
    const int64_t amount = std::clamp<int64_t>(load(res.amount_nanousd, memory_order_relaxed), 0, kAmountNanoUsdMax);
    for (uint32_t level = 0; level < kChainDepthMax; ++level) {
      const int32_t a = load(res.chain[level], memory_order_relaxed);
      if (a < 0 || static_cast<uint32_t>(a) >= count) break;
      const uint32_t tag = load(res.tags[level], memory_order_relaxed);
      const uint32_t w = static_cast<uint32_t>(a) * 2 + tag_parity(tag);
      if (meta_tag((*words)[w].meta) == tag) (*held)[w] = add_saturating((*held)[w], amount);
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
      const int64_t settled = sub_saturating(w.used, held[i * 2 + p]);
      const FlushCache::Totals* last = known && i < flush_cache.entries.size() ? &flush_cache.entries[i].words[p] : nullptr;
      if (last != nullptr && last->valid && last->tag == meta_tag(w.meta))
        pending += last->spent == settled && last->requests == meta_requests(w.meta) ? 0 : 1;
      else
        pending += settled != 0 || meta_requests(w.meta) != 0 ? 1 : 0;  // only holds: nothing to write yet
    }
  }
  return pending;
}

// ---- the accounts: configuration, period totals, day buckets, journal -------------------------------

using FlushCache = Ledger::Impl::FlushCache;

// Rewrites the account's record when its configuration differs from what the store holds.
static int flush_account_config(const Ledger::Impl& l, const FlushTxn& t, uint32_t i, uint32_t count, FlushCache::Entry& known) {
  const Account& a = l.accounts[i];
  const FlushCache::Config now{load(a.limit_nanousd), load(a.parent), load(a.period_kind), load(a.blocked),
                               load(a.tier), 1, load(a.key), load(a.global)};
  if (known.config == now) return 0;
  AccountValue config{};
  config.version = kAccountValueVersion;
  config.blocked = now.blocked;
  config.limit_nanousd = now.limit;
  config.period = now.period;
  config.flags = now.global != 0 ? kAccountGlobal : 0;
  if (now.parent >= 0 && static_cast<uint32_t>(now.parent) < count)
    copy_name(config.parent, sizeof config.parent, l.account_name(static_cast<uint32_t>(now.parent)));
  copy_name(config.tier, sizeof config.tier, l.tier_name(now.tier));
  const std::string key = l.key_hex(now.key);
  std::memcpy(config.key_hash, key.data(), std::min(key.size(), sizeof config.key_hash));
  const std::string_view name = l.account_name(i);
  int rc = 0;
  MDB_val k = val(name), v;
  const bool same = mdb_get(t.txn, t.env.accounts, &k, &v) == 0 && v.mv_size == sizeof config &&
                    std::memcmp(v.mv_data, &config, sizeof config) == 0;
  if (!same) {
    MDB_val nv = val(&config, sizeof config);
    rc = mdb_put(t.txn, t.env.accounts, &k, &nv, 0);
  }
  if (rc == 0) known.config = now;
  return rc;
}

// Period word p of account i: the settled total, its change into the day bucket and the journal.
static int flush_account_word(const Ledger::Impl& l, FlushTxn& t, uint32_t i, uint32_t p, PeriodWord w, int64_t held,
                              FlushCache::Entry& known, std::string* key, std::string* day_key) {
  if (w.used == 0 && meta_requests(w.meta) == 0) return 0;  // never used
  const uint32_t tag = meta_tag(w.meta);
  // Saturating, like every sum over the segment's words: a damaged word writes a wrong number.
  const TotalsValue now{sub_saturating(w.used, held), meta_requests(w.meta)};
  FlushCache::Totals& known_word = known.words[p];
  if (known_word.valid && known_word.tag == tag && known_word.spent == now.spent_nanousd && known_word.requests == now.requests)
    return 0;  // unchanged since our last flush: no read, no write
  const std::string_view name = l.account_name(i);
  period_key_into(key, name, tag_kind(tag), tag_index(tag));
  TotalsValue before{0, 0};
  if (known_word.valid && known_word.tag == tag) before = TotalsValue{known_word.spent, known_word.requests};
  else (void)get_struct(t.txn, t.env.periods, *key, &before);
  known_word = FlushCache::Totals{tag, true, now.spent_nanousd, now.requests};
  const int64_t delta = sub_saturating(now.spent_nanousd, before.spent_nanousd);
  const int64_t delta_requests = wrapped_requests_delta(now.requests, before.requests);
  if (delta == 0 && delta_requests == 0) return 0;
  MDB_val k = val(*key), v = val(&now, sizeof now);
  int rc = mdb_put(t.txn, t.env.periods, &k, &v, 0);
  // The day it was settled (flush granularity) gets the change.
  FlushCache::Totals& known_day = known.day;
  day_key_into(day_key, name, t.day);
  TotalsValue day{0, 0};
  if (known_day.valid && known_day.tag == static_cast<uint32_t>(t.day)) day = TotalsValue{known_day.spent, known_day.requests};
  else (void)get_struct(t.txn, t.env.daily, *day_key, &day);
  day.spent_nanousd = add_saturating(day.spent_nanousd, delta);
  day.requests += static_cast<uint64_t>(delta_requests);
  known_day = FlushCache::Totals{static_cast<uint32_t>(t.day), true, day.spent_nanousd, day.requests};
  MDB_val dk = val(*day_key), dv = val(&day, sizeof day);
  if (rc == 0) rc = mdb_put(t.txn, t.env.daily, &dk, &dv, 0);
  JournalValue entry{};
  entry.unix_ms = t.now_ms;
  entry.kind = static_cast<uint32_t>(JournalKind::kFlush);
  entry.period = static_cast<int32_t>(tag_kind(tag));
  entry.index = tag_index(tag);
  entry.delta_nanousd = delta;
  entry.delta_requests = delta_requests;
  copy_name(entry.account, sizeof entry.account, name);
  if (rc == 0) rc = t.append_journal(entry);
  return rc;
}

// ---- tallies: per model, per key, adjustments -----------------------------------------------------

namespace {
// The tally's change since the stored snapshot of this segment, and the new snapshot written.
int tally_delta(const FlushTxn& t, MDB_dbi snapshots, const std::string& key, uint64_t segment, PeriodWord word,
                int64_t* delta, int64_t* delta_requests) {
  const TallySnapshotValue now{segment, word.used, meta_requests(word.meta)};
  TallySnapshotValue before{0, 0, 0};
  if (!get_struct(t.txn, snapshots, key, &before) || before.segment_id != segment) before = TallySnapshotValue{segment, 0, 0};
  *delta = sub_saturating(now.spent_nanousd, before.spent_nanousd);
  *delta_requests = wrapped_requests_delta(now.requests, before.requests);
  if (*delta == 0 && *delta_requests == 0) return 0;
  MDB_val k = val(key), v = val(&now, sizeof now);
  return mdb_put(t.txn, snapshots, &k, &v, 0);
}

int add_to_day(const FlushTxn& t, MDB_dbi days, std::string_view prefix, int64_t delta, int64_t delta_requests) {
  const std::string key = day_key(prefix, t.day);
  TotalsValue day{0, 0};
  (void)get_struct(t.txn, days, key, &day);
  day.spent_nanousd = add_saturating(day.spent_nanousd, delta);
  day.requests += static_cast<uint64_t>(delta_requests);
  MDB_val k = val(key), v = val(&day, sizeof day);
  return mdb_put(t.txn, days, &k, &v, 0);
}
}  // namespace

static int flush_tally(const Ledger::Impl& l, FlushTxn& t, const TallyRow& row, uint32_t count) {
  if (row.account >= count || load(l.accounts[row.account].live) == 0) return 0;
  const uint64_t segment = load(l.header->segment_id, memory_order_relaxed);
  const std::string_view account = l.account_name(row.account);
  int64_t delta = 0, delta_requests = 0;
  if (row.kind == kTallyModel) {
    if (row.id >= kModelsMax) return 0;
    const std::string key = pair_key(account, l.model_name(row.id));
    int rc = tally_delta(t, t.env.models, key, segment, row.word, &delta, &delta_requests);
    if (rc == 0 && (delta != 0 || delta_requests != 0)) rc = add_to_day(t, t.env.model_daily, key, delta, delta_requests);
    return rc;
  }
  const std::string key_hash = row.id == UINT32_MAX ? std::string() : l.key_hex(row.id + 1);
  if (row.kind == kTallyKey) {
    if (key_hash.empty()) return 0;
    const std::string key = pair_key(key_hash, account);
    int rc = tally_delta(t, t.env.key_tallies, key, segment, row.word, &delta, &delta_requests);
    if (rc == 0 && (delta != 0 || delta_requests != 0)) rc = add_to_day(t, t.env.key_daily, key, delta, delta_requests);
    return rc;
  }
  if (row.kind != kTallyAdjustment) return 0;
  const std::string key = pair_key(account, key_hash);
  int rc = tally_delta(t, t.env.adjustments, key, segment, row.word, &delta, &delta_requests);
  if (rc != 0 || delta == 0) return rc;
  rc = add_to_day(t, t.env.adjustment_daily, key, delta, delta_requests);
  if (rc != 0) return rc;
  JournalValue entry{};
  entry.unix_ms = t.now_ms;
  entry.kind = static_cast<uint32_t>(JournalKind::kAdjustment);
  const uint32_t tag = l.current_tag(l.accounts[row.account], t.clock);
  entry.period = static_cast<int32_t>(tag_kind(tag));
  entry.index = tag_index(tag);
  entry.delta_nanousd = delta;
  copy_name(entry.account, sizeof entry.account, account);
  std::memcpy(entry.key_hash, key_hash.data(), std::min(key_hash.size(), sizeof entry.key_hash));
  return t.append_journal(entry);
}

// ---- account rules: the record a rebuild restores, and a journal entry per top-up changed ------------

static int flush_rules(const Ledger::Impl& l, FlushTxn& t, uint32_t count) {
  std::vector<RulesRecord> now;
  for (uint32_t i = 0; i < count; ++i) {
    RulesRecord r;
    if (load(l.accounts[i].live) == 0 || !l.read_rules(i, &r.rules, &r.topup)) continue;
    r.account = std::string(l.account_name(i));
    now.push_back(std::move(r));
  }
  const std::string blob = encode_rules(now);
  std::string stored;
  const bool had = get_meta(t.txn, t.env, "rules", &stored);
  if (had && stored == blob) return 0;
  std::vector<RulesRecord> before;
  if (had && !decode_rules(stored, &before)) before.clear();  // an unreadable record: every top-up is news
  std::map<std::string, Topup> known;
  for (const auto& r : before) known[r.account] = r.topup;
  for (const auto& r : now) {
    const Topup old = known.count(r.account) != 0 ? known[r.account] : Topup{};
    if (old.amount_nanousd == r.topup.amount_nanousd && old.until_unix_ms == r.topup.until_unix_ms) continue;
    JournalValue entry{};
    entry.unix_ms = t.now_ms;
    entry.kind = static_cast<uint32_t>(JournalKind::kTopup);
    entry.index = r.topup.until_unix_ms;
    entry.delta_nanousd = r.topup.amount_nanousd;
    copy_name(entry.account, sizeof entry.account, r.account);
    if (const int rc = t.append_journal(entry); rc != 0) return rc;
  }
  return put_meta(t.txn, t.env, "rules", blob);
}

// ---- meta: the policy tables, the hold policy, the limits, the flush's own record ----------------------

static int flush_meta(const Ledger::Impl& l, FlushTxn& t, uint64_t next_sequence) {
  std::vector<PriceRecord> priced;
  for (uint32_t m = 0; m < kModelsMax; ++m) {
    PriceRecord p;
    if ((load(l.prices[m].live) & kModelPriced) == 0 || !l.read_price_at(m, &p.prompt, &p.completion, &p.request)) continue;
    p.model = std::string(l.model_name(m));
    priced.push_back(std::move(p));
  }
  const HoldsValue holds{load(l.header->default_ttl_s), load(l.header->tombstone_grace_s), load(l.header->tombstones_max), 0};
  const LimitsValue limits{l.max_accounts, l.max_reservations, l.max_processes, l.rules_max};
  const std::pair<const char*, std::string> blobs[] = {
      {"tiers", encode_tiers(l.read_tiers())},
      {"prices", encode_prices(priced)},
      {"holds", std::string(reinterpret_cast<const char*>(&holds), sizeof holds)},
      {"limits", std::string(reinterpret_cast<const char*>(&limits), sizeof limits)},
      {"last_flush_ms", std::string(reinterpret_cast<const char*>(&t.now_ms), sizeof t.now_ms)},
      {kFlushSequenceKey, std::string(reinterpret_cast<const char*>(&next_sequence), sizeof next_sequence)}};
  std::string stored;
  for (const auto& [key, value] : blobs) {
    if (get_meta(t.txn, t.env, key, &stored) && stored == value) continue;  // unchanged: not rewritten
    if (const int rc = put_meta(t.txn, t.env, key, value); rc != 0) return rc;
  }
  return 0;
}

// ---- the flush ----------------------------------------------------------------------------------

namespace {
// The store's identity and its flush sequence (a store id is made on the first flush).
int store_identity(MDB_txn* txn, const Env& env, int64_t now_ms, uint64_t* store_id, uint64_t* sequence) {
  std::string value;
  if (get_meta(txn, env, kStoreIdKey, &value) && value.size() == sizeof *store_id) std::memcpy(store_id, value.data(), sizeof *store_id);
  if (get_meta(txn, env, kFlushSequenceKey, &value) && value.size() == sizeof *sequence) std::memcpy(sequence, value.data(), sizeof *sequence);
  if (*store_id != 0) return 0;
  while (*store_id == 0)
    if (::getrandom(store_id, sizeof *store_id, 0) != static_cast<ssize_t>(sizeof *store_id))
      *store_id = static_cast<uint64_t>(now_ms) ^ 0x9E3779B97F4A7C15ULL;
  return put_meta(txn, env, kStoreIdKey, std::string_view(reinterpret_cast<const char*>(store_id), sizeof *store_id));
}
}  // namespace

// The cache of our last flush is good only if nobody flushed since; from here until the commit
// succeeds it is invalid. About 90 bytes per account: beyond kFlushCacheAccountsMax the flush reads.
bool Ledger::Impl::prepare_flush_cache(uint32_t count, uint64_t store_id, uint64_t sequence) {
  FlushCache& cache = flush_cache;
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
  // In key order, so LMDB's B-tree inserts are sequential rather than scattered. Names never change,
  // so the order is sorted again only when accounts were added.
  if (cache.order_count != count) {
    cache.order.clear();
    for (uint32_t i = 0; i < count; ++i)
      if (load(accounts[i].live) != 0) cache.order.push_back(i);
    std::sort(cache.order.begin(), cache.order.end(), [&](uint32_t x, uint32_t y) { return account_name(x) < account_name(y); });
    cache.order_count = count;
  }
  return cacheable;
}

Status Ledger::Impl::flush_store() {
  // A reader open on this thread: refuse before taking any lock (waiting for the flush lock while
  // holding the store lock could deadlock with a flush in another thread waiting for the store).
  if (store_open_on_this_thread()) return Code::kInvalidArgument;
  std::lock_guard<std::mutex> local(*flush_mutex);
  lock_byte_wait(kFlushLockByte);
  struct Unlock {
    const Impl* impl;
    ~Unlock() { impl->unlock_byte(kFlushLockByte); }
  } unlock{this};
  Env env;
  Status status = env.open(dir, true, options.store_map_size_bytes, options.file_mode & 0777);
  if (!status.ok()) return status;
  // Snapshot.
  FlushSnapshot snap;
  for (uint32_t i = 0; i <= tally_mask; ++i) {
    const uint64_t key = load(tallies[i].key, memory_order_relaxed);
    if (key == 0) continue;
    const PeriodWord word = period_word_load(tallies[i].word);
    if (word.used != 0 || meta_requests(word.meta) != 0)
      snap.tallies.push_back(TallyRow{tally_key_account(key), tally_key_kind(key), tally_key_id(key), word});
  }
  snap.count = load(header->account_count);
  snapshot_words(snap.count, &snap.words, &snap.held);
  snap.clock = now();
  // Diff and write.
  Txn txn;
  int rc = mdb_txn_begin(env.env, nullptr, 0, &txn.txn);
  if (rc != 0) return mdb_status(rc);
  uint64_t store_id = 0, sequence = 0;
  rc = store_identity(txn.txn, env, snap.clock.ms, &store_id, &sequence);
  const bool cacheable = prepare_flush_cache(snap.count, store_id, sequence);
  FlushTxn t{env, txn.txn, next_journal_seq(txn.txn, env.journal), snap.clock, snap.clock.ms, snap.clock.days};
  std::string key, day_key;  // reused: no allocation per record
  for (size_t position = 0; position < flush_cache.order.size() && rc == 0; ++position) {
    const uint32_t i = flush_cache.order[position];
    if (load(accounts[i].live) == 0) continue;
    FlushCache::Entry scratch;  // knows nothing: used when the ledger is too big to remember
    FlushCache::Entry& known = cacheable ? flush_cache.entries[i] : scratch;
    rc = flush_account_config(*this, t, i, snap.count, known);
    for (uint32_t p = 0; p < 2 && rc == 0; ++p)
      rc = flush_account_word(*this, t, i, p, snap.words[i * 2 + p], snap.held[i * 2 + p], known, &key, &day_key);
  }
  for (size_t k = 0; k < snap.tallies.size() && rc == 0; ++k) rc = flush_tally(*this, t, snap.tallies[k], snap.count);
  if (rc == 0) rc = flush_rules(*this, t, snap.count);
  if (rc == 0) rc = flush_meta(*this, t, sequence + 1);
  if (rc == 0) rc = txn.commit();  // synced: durable on return
  if (rc == 0 && cacheable) {
    flush_cache.store_id = store_id;
    flush_cache.sequence = sequence + 1;  // the cache now describes the store exactly
  }
  return mdb_status(rc);
}

}  // namespace ledger
