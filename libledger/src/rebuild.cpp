// rebuild.cpp — store -> a new segment (after a reboot, or destroy-segment).
//
// Runs while the creator holds the init lock and before the segment's magic is written, so nobody
// else sees the segment yet: fields are written directly. What comes back: accounts (budget, period,
// parent, blocked, tier, bound key), the tier table, prices, the hold policy, and the settled totals
// of each account's current and previous period. Holds are not restored: their workers died with
// the machine. Per-model and per-key tallies start again at zero (the store keeps their history).
#include <cstring>

#include "impl.hpp"
#include "store_codec.hpp"

namespace ledger {

using namespace detail;
using namespace db;

namespace {

struct StoredConfig {
  std::string name;
  AccountValue value;
};

Status read_accounts(MDB_txn* txn, const Env& env, std::vector<StoredConfig>* out) {
  MDB_cursor* cursor = nullptr;
  if (mdb_cursor_open(txn, env.accounts, &cursor) != 0) return Code::kIoError;
  MDB_val k, v;
  Status status = Code::kOk;
  for (int op = MDB_FIRST; mdb_cursor_get(cursor, &k, &v, static_cast<MDB_cursor_op>(op)) == 0; op = MDB_NEXT) {
    StoredConfig a;
    a.name.assign(static_cast<const char*>(k.mv_data), k.mv_size);
    if (!valid_account_name(a.name) || !decode_account(v, &a.value)) {
      status = Code::kIncompatible;
      break;
    }
    out->push_back(std::move(a));
  }
  mdb_cursor_close(cursor);
  return status;
}

std::string field(const char* text, size_t size) { return std::string(text, strnlen(text, size)); }

}  // namespace

void Ledger::Impl::store_recorded_limits(Limits* limits) const {
  Env env;
  if (!env.open(dir, false, 0, 0).ok()) return;
  Txn txn;
  if (mdb_txn_begin(env.env, nullptr, MDB_RDONLY, &txn.txn) != 0) return;
  std::string value;
  LimitsValue recorded{};
  if (!get_meta(txn.txn, env, "limits", &value) || value.size() != sizeof recorded) return;
  std::memcpy(&recorded, value.data(), sizeof recorded);
  // Only values a segment can have: a damaged record must not make an impossible segment.
  if (recorded.max_accounts <= kAccountsMax) limits->max_accounts = std::max(limits->max_accounts, recorded.max_accounts);
  if (recorded.max_reservations <= kReservationsMax)
    limits->max_reservations = std::max(limits->max_reservations, recorded.max_reservations);
  if (recorded.max_processes <= kProcessesMax) limits->max_processes = std::max(limits->max_processes, recorded.max_processes);
  if (recorded.max_account_rules <= kRulesMax) limits->max_account_rules = std::max(limits->max_account_rules, recorded.max_account_rules);
}

Status Ledger::Impl::rebuild_policy(MDB_txn* txn, const Env& env) {
  std::string blob;
  std::vector<TierSpec> tiers;
  if (get_meta(txn, env, "tiers", &blob)) {
    if (!decode_tiers(blob, &tiers)) return Code::kIncompatible;
    if (const Status written = write_tiers(tiers); !written.ok()) return written;
  }
  std::vector<PriceRecord> priced;
  if (get_meta(txn, env, "prices", &blob) && !decode_prices(blob, &priced)) return Code::kIncompatible;
  for (const PriceRecord& p : priced) {
    const bool valid = p.prompt >= 0 && p.completion >= 0 && p.request >= 0 && p.prompt <= kAmountNanoUsdMax &&
                       p.completion <= kAmountNanoUsdMax && p.request <= kAmountNanoUsdMax;
    const int32_t index = valid ? register_model(p.model) : -1;
    if (index < 0) return Code::kIncompatible;
    Price& price = prices[index];
    price.prompt_nanousd_per_mtok = p.prompt;
    price.completion_nanousd_per_mtok = p.completion;
    price.request_nanousd = p.request;
    store(price.live, kModelRegistered | kModelPriced);
  }
  HoldsValue holds{};
  if (get_meta(txn, env, "holds", &blob) && blob.size() == sizeof holds) {
    std::memcpy(&holds, blob.data(), sizeof holds);
    if (holds.default_ttl_s >= 1 && holds.default_ttl_s <= kTtlMaxSeconds) header->default_ttl_s = holds.default_ttl_s;
    if (holds.tombstone_grace_s <= kTombstoneGraceMaxSeconds) header->tombstone_grace_s = holds.tombstone_grace_s;
    if (holds.tombstones_max >= 1) header->tombstones_max = holds.tombstones_max;
  }
  return Code::kOk;
}

// Fills a fresh, not yet published segment from the store. REQUIRES: the init lock is held.
Status Ledger::Impl::rebuild_from_store() {
  Env env;
  Status status = env.open(dir, false, 0, 0);
  if (status.code() == Code::kNotFound) return Code::kOk;  // a new ledger: nothing to restore
  if (!status.ok()) return status;
  Txn txn;
  if (const int rc = mdb_txn_begin(env.env, nullptr, MDB_RDONLY, &txn.txn); rc != 0) return mdb_status(rc);
  std::vector<StoredConfig> stored;
  if (status = read_accounts(txn.txn, env, &stored); !status.ok()) return status;
  if (stored.size() > max_accounts) return Code::kFull;
  for (const auto& [name, a] : stored) {
    const int32_t index = create_account_record(name, a.limit_nanousd, static_cast<Period>(a.period & 3));
    if (index < 0) return Code::kFull;
    store(accounts[index].blocked, static_cast<uint8_t>(a.blocked != 0));
    // A global account comes back global, with no lease: it denies until the sidecar has leases.
    store(accounts[index].global, static_cast<uint8_t>((a.flags & kAccountGlobal) != 0));
  }
  // Policy before tiers of accounts: no worker attaching after a reboot gets a ledger without it.
  if (status = rebuild_policy(txn.txn, env); !status.ok()) return status;
  for (const auto& [name, a] : stored) {
    Account& account = accounts[find_index(name)];
    const std::string tier = field(a.tier, sizeof a.tier), parent = field(a.parent, sizeof a.parent);
    const uint32_t count = std::min(load(policy->tier_count), kTiersMax);
    for (uint32_t t = 0; t < count && !tier.empty(); ++t)
      if (tier_name(t + 1) == tier) store(account.tier, static_cast<uint8_t>(t + 1));
    if (const int32_t p = parent.empty() ? -1 : find_index(parent); p >= 0) store(account.parent, p);
    const std::string key = field(a.key_hash, sizeof a.key_hash);
    uint32_t key_index = 0;
    if (!key.empty() && (key_index = register_key_hex(key)) != 0) store(account.key, key_index);
  }
  rebuild_rules(txn.txn, env);
  rebuild_periods(txn.txn, env);
  return Code::kOk;
}

// Account rules and top-ups, as the last flush recorded them (a record that cannot be read, or a
// rule the segment cannot take, restores nothing of that account's rules: never half of them).
void Ledger::Impl::rebuild_rules(MDB_txn* txn, const Env& env) {
  std::string blob;
  std::vector<RulesRecord> rules_list;
  if (!get_meta(txn, env, "rules", &blob) || !decode_rules(blob, &rules_list)) return;
  for (const RulesRecord& r : rules_list) {
    const int32_t index = find_index(r.account);
    if (index < 0 || r.rules.rpm > kRpmMax || r.rules.tpm > kTpmMax || r.rules.max_concurrent > kMaxConcurrentMax) continue;
    if (!write_rules(static_cast<uint32_t>(index), r.rules).ok()) continue;
    if (r.topup.amount_nanousd > 0 && r.topup.amount_nanousd <= kAmountNanoUsdMax && r.topup.until_unix_ms > 0)
      (void)write_topup(static_cast<uint32_t>(index), r.topup.amount_nanousd, r.topup.until_unix_ms);
  }
}

// The current and previous period of each account get their settled totals back.
void Ledger::Impl::rebuild_periods(MDB_txn* txn, const Env& env) {
  const Now clock = now();
  const uint32_t count = load(header->account_count);
  for (uint32_t index = 0; index < count; ++index) {
    Account& account = accounts[index];
    const auto kind = static_cast<Period>(load(account.period_kind) & 3u);
    const uint32_t current = clock.tag(static_cast<uint32_t>(kind));
    for (int64_t back = 0; back < 2; ++back) {
      const int64_t period = static_cast<int64_t>(tag_index(current)) - back;
      if (period < 0 || (kind == Period::kNone && back > 0)) continue;
      TotalsValue totals{};
      if (!get_struct(txn, env.periods, period_key(account_name(index), kind, period), &totals)) continue;
      const uint32_t tag = make_tag(kind, period);
      account.words[tag_parity(tag)] = PeriodWord{totals.spent_nanousd, make_meta(totals.requests, tag, 0)};
    }
  }
}

}  // namespace ledger
