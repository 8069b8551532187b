// api.cpp — the public Ledger methods: admin, lookups, the worker calls and balances.
#include <algorithm>
#include <cstring>

#include "impl.hpp"

namespace ledger {

using namespace detail;

std::string_view code_message(int32_t code) {
  switch (code) {
    case 0: return "ok";
    case 1: return "denied: over budget";
    case 2: return "denied: a parent account is over budget";
    case 3: return "denied: model not allowed for the account's tier";
    case 4: return "denied: account is blocked";
    case 5: return "unknown account";
    case 6: return "unknown reservation";
    case 7: return "reservation already settled";
    case 8: return "invalid argument";
    case 9: return "ledger full: a capacity fixed at creation is used up";
    case 10: return "incompatible: segment or store of another format version, or not a ledger";
    case 11: return "I/O error";
    case 12: return "permission denied";
    case 13: return "no ledger at that path";
    case 14: return "unknown model: no price known";
    case 15: return "denied: a requests/tokens per minute or concurrency limit";
    default: return "unknown code";
  }
}

namespace {

// Number of accounts from `index` up to its root, or kChainDepthMax + 1 on a cycle or a broken link.
uint32_t chain_length(const Ledger::Impl& l, int32_t index) {
  uint32_t length = 0;
  while (index >= 0) {
    if (length > kChainDepthMax || static_cast<uint32_t>(index) >= l.max_accounts) return kChainDepthMax + 1;
    ++length;
    index = load(l.accounts[index].parent, memory_order_relaxed);
  }
  return length;
}

}  // namespace

Status Ledger::set_budget(std::string_view account, int64_t limit_nanousd, Period period,
                          std::string_view parent) {
  Impl& l = *impl_;
  if (!valid_account_name(account) || limit_nanousd < 0 || limit_nanousd > kAmountNanoUsdMax ||
      static_cast<int32_t>(period) < 0 || static_cast<int32_t>(period) > 3 ||
      (!parent.empty() && !valid_account_name(parent)) || parent == account)
    return Code::kInvalidArgument;
  Status status = l.ensure_registered();
  if (!status.ok()) return status;
  AdminGuard lock(l);
  int32_t parent_index = -1;
  if (!parent.empty()) {
    parent_index = l.find_index(parent);
    if (parent_index < 0) return Code::kUnknownAccount;
  }
  const uint32_t parent_length = parent_index < 0 ? 0 : chain_length(l, parent_index);
  // Too deep, a cycle or a link out of range (a damaged segment): no account can go below it, and
  // the walks below may follow only a chain that chain_length has checked.
  if (parent_length > kChainDepthMax) return Code::kInvalidArgument;
  int32_t index = l.find_index(account);
  if (index >= 0) {
    // The new parent must not be the account itself or one of its descendants, and every chain
    // through the account must stay within kChainDepthMax.
    for (int32_t a = parent_index; a >= 0; a = load(l.accounts[a].parent, memory_order_relaxed))
      if (a == index) return Code::kInvalidArgument;
    uint32_t below = 0;  // longest chain from a descendant up to `index`, excluding index
    const uint32_t count = load(l.header->account_count);
    for (uint32_t d = 0; d < count; ++d) {
      uint32_t steps = 0;
      // A link out of range (damaged) ends the walk: nothing above it is reached through it.
      for (int32_t a = static_cast<int32_t>(d); a >= 0 && static_cast<uint32_t>(a) < l.max_accounts && steps <= kChainDepthMax;
           a = load(l.accounts[a].parent, memory_order_relaxed), ++steps) {
        if (a == index) {
          below = std::max(below, steps);
          break;
        }
      }
    }
    if (parent_length + 1 + below > kChainDepthMax) return Code::kInvalidArgument;
    Account& a = l.accounts[index];
    store(a.limit_nanousd, limit_nanousd);
    store(a.period_kind, static_cast<uint8_t>(period));
    store(a.parent, parent_index);
    return Code::kOk;
  }
  if (parent_length + 1 > kChainDepthMax) return Code::kInvalidArgument;
  index = l.create_account_record(account, limit_nanousd, period);
  if (index < 0) return Code::kFull;
  store(l.accounts[index].parent, parent_index);
  return Code::kOk;
}

int32_t Ledger::Impl::create_account_record(std::string_view name, int64_t limit_nanousd, Period period) {
  const uint32_t count = load(header->account_count);
  if (count >= max_accounts) return -1;
  // Reserve the index first: a crash below leaks one unpublished record, never a half-visible one.
  store(header->account_count, count + 1);
  Account& a = accounts[count];
  std::memset(a.name, 0, sizeof a.name);
  std::memcpy(a.name, name.data(), name.size());
  a.name_length = static_cast<uint32_t>(name.size());
  a.name_hash = fnv1a32(name);
  store(a.limit_nanousd, limit_nanousd);
  store(a.parent, int32_t{-1});
  store(a.period_kind, static_cast<uint8_t>(period));
  store(a.blocked, uint8_t{0});
  store(a.live, uint8_t{1});
  for (uint32_t probe = 0; probe <= hash_mask; ++probe) {
    uint32_t& entry = hash[(a.name_hash + probe) & hash_mask];
    if (load(entry, memory_order_relaxed) == 0) {
      store(entry, count + 1);  // release: the record above is complete
      return static_cast<int32_t>(count);
    }
  }
  return -1;  // unreachable: the table has twice as many entries as accounts
}

Status Ledger::block(std::string_view account, bool blocked) {
  return change_account(*impl_, account, [&](uint32_t index) {
    store(impl_->accounts[index].blocked, static_cast<uint8_t>(blocked ? 1 : 0));
  });
}

Status Ledger::find(std::string_view account, AccountRef* out) const {
  if (out == nullptr || !valid_account_name(account)) return Code::kInvalidArgument;
  const int32_t index = impl_->find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  out->index = static_cast<uint32_t>(index);
  return Code::kOk;
}

Status Ledger::debit(std::string_view account, int64_t amount_nanousd) {
  AccountRef ref;
  Status status = find(account, &ref);
  if (!status.ok()) return status;
  return impl_->admit(kOpDebit, ref.index, amount_nanousd, 0, nullptr);
}

Status Ledger::debit(AccountRef account, int64_t amount_nanousd) {
  return impl_->admit(kOpDebit, account.index, amount_nanousd, 0, nullptr);
}

Status Ledger::reserve(std::string_view account, int64_t amount_nanousd, uint32_t ttl_s,
                       ReservationId* id) {
  if (id == nullptr) return Code::kInvalidArgument;
  AccountRef ref;
  Status status = find(account, &ref);
  if (!status.ok()) return status;
  return reserve(ref, amount_nanousd, ttl_s, id);
}

Status Ledger::reserve(AccountRef account, int64_t amount_nanousd, uint32_t ttl_s, ReservationId* id) {
  if (id == nullptr) return Code::kInvalidArgument;
  return impl_->admit(kOpReserve, account.index, amount_nanousd, ttl_s, id, 0, 0, take_estimate_tokens(amount_nanousd));
}

Status Ledger::commit(ReservationId id, int64_t actual_nanousd) {
  return impl_->settle(id, true, actual_nanousd);
}

Status Ledger::commit_usage(ReservationId id, int64_t actual_nanousd, uint32_t prompt_tokens, uint32_t completion_tokens) {
  return impl_->settle(id, true, actual_nanousd, int64_t{prompt_tokens} + completion_tokens);
}

Status Ledger::release(ReservationId id) { return impl_->settle(id, false, 0); }

Status Ledger::adjust(std::string_view account, int64_t amount_nanousd, std::string_view key_hash) {
  AccountRef ref;
  Status status = find(account, &ref);
  if (!status.ok()) return status;
  uint32_t key = 0;
  if (!key_hash.empty() && !(status = impl_->resolve_key(key_hash, &key)).ok()) return status;
  return impl_->charge(ref.index, amount_nanousd, key);
}

namespace {
Balance balance_of(Ledger::Impl& l, uint32_t index, const Now& now, int64_t held) {
  Account& a = l.accounts[index];
  Balance b;
  b.period = static_cast<Period>(load(a.period_kind) & 3u);
  const int64_t period = period_index(b.period, now.s);
  const uint32_t tag = make_tag(b.period, period);
  const PeriodWord word = period_word_load(a.words[tag_parity(tag)]);
  const bool current = meta_tag(word.meta) == tag;
  // Saturating: a damaged word must give a wrong number, never undefined arithmetic.
  const int64_t used = current ? word.used : 0;
  b.limit_nanousd = load(a.limit_nanousd);
  const uint8_t flags = load(a.rules_flags);
  b.soft = (flags & kRuleSoft) != 0;
  int64_t topup = 0, until_ms = 0;
  if (const int32_t entry = l.rules_of(index, kRuleTopup); entry >= 0 && load(a.global) == 0 &&
                                                           l.read_topup(static_cast<uint32_t>(entry), &topup, &until_ms) && now.ms < until_ms) {
    b.topup_nanousd = topup;  // in force: part of the limit admission applies
    b.topup_until_unix = until_ms / 1000;
    b.limit_nanousd = add_saturating(b.limit_nanousd, topup);
  }
  b.held_nanousd = held;
  b.spent_nanousd = sub_saturating(used, held);
  b.available_nanousd = sub_saturating(b.limit_nanousd, used);
  b.requests = current ? meta_requests(word.meta) : 0;
  b.blocked = load(a.blocked) != 0;
  b.period_start_unix = period_start_unix(b.period, period);
  return b;
}
}  // namespace

Status Ledger::balance(std::string_view account, Balance* out) const {
  if (out == nullptr || !valid_account_name(account)) return Code::kInvalidArgument;
  Impl& l = *impl_;
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  const Now now = l.now();
  const uint32_t tag = l.current_tag(l.accounts[index], now);
  *out = balance_of(l, static_cast<uint32_t>(index), now, l.held_in(static_cast<uint32_t>(index), tag));
  return Code::kOk;
}

Status Ledger::balances(std::vector<AccountBalance>* out) const {
  if (out == nullptr) return Code::kInvalidArgument;
  Impl& l = *impl_;
  const Now now = l.now();
  const uint32_t count = load(l.header->account_count);
  std::vector<uint32_t> tags(count);
  std::vector<int64_t> held(count, 0);
  for (uint32_t i = 0; i < count; ++i) tags[i] = l.current_tag(l.accounts[i], now);
  for (uint32_t r = 0; r < l.max_reservations; ++r) {
    const Reservation& res = l.reservations[r];
    if (res_status(load(res.state)) != kResHeld) continue;
    for (uint32_t level = 0; level < kChainDepthMax; ++level) {
      const int32_t a = load(res.chain[level], memory_order_relaxed);
      if (a < 0 || static_cast<uint32_t>(a) >= count) break;
      if (load(res.tags[level], memory_order_relaxed) == tags[a])
        held[a] = add_saturating(held[a], load(res.amount_nanousd, memory_order_relaxed));
    }
  }
  out->clear();
  for (uint32_t i = 0; i < count; ++i) {
    Account& a = l.accounts[i];
    if (load(a.live) == 0) continue;
    AccountBalance entry;
    entry.account.assign(a.name, std::min<uint32_t>(a.name_length, kAccountNameMax));
    const int32_t parent = load(a.parent);
    if (parent >= 0 && static_cast<uint32_t>(parent) < count)
      entry.parent.assign(l.accounts[parent].name, std::min<uint32_t>(l.accounts[parent].name_length, kAccountNameMax));
    entry.balance = balance_of(l, i, now, held[i]);
    out->push_back(std::move(entry));
  }
  return Code::kOk;
}

Status Ledger::stats(LedgerStats* out) const {
  if (out == nullptr) return Code::kInvalidArgument;
  const Impl& l = *impl_;
  LedgerStats s;
  s.accounts = load(l.header->account_count);
  s.max_accounts = l.max_accounts;
  s.max_reservations = l.max_reservations;
  s.max_processes = l.max_processes;
  for (uint32_t p = 0; p < l.process_slots; ++p)
    if (proc_status(load(l.processes[p].state)) == kProcActive) ++s.processes_attached;
  for (uint32_t r = 0; r < l.max_reservations; ++r) {
    const uint32_t status = res_status(load(l.reservations[r].state, memory_order_relaxed));
    s.reservations_held += status == kResHeld ? 1 : 0;
    s.reservations_expired += status == kResExpired ? 1 : 0;
  }
  s.denied_over_budget = load(l.header->denials[0], memory_order_relaxed);
  s.denied_parent_over_budget = load(l.header->denials[1], memory_order_relaxed);
  s.denied_model = load(l.header->denials[2], memory_order_relaxed);
  s.denied_blocked = load(l.header->denials[3], memory_order_relaxed);
  s.denied_rate = load(l.header->denials[4], memory_order_relaxed);
  s.max_tallies = l.tally_mask + 1;
  for (uint32_t i = 0; i <= l.tally_mask; ++i) s.tallies += load(l.tallies[i].key, memory_order_relaxed) != 0 ? 1 : 0;
  s.tallies_dropped = load(l.header->tallies_dropped, memory_order_relaxed);
  s.tombstones_dropped = load(l.header->tombstones_dropped, memory_order_relaxed);
  s.keys = load(l.header->key_count, memory_order_relaxed);
  s.max_keys = (l.key_mask + 1) / 2;
  *out = s;
  return Code::kOk;
}

Status Ledger::model_spend(std::vector<ModelSpend>* out) const {
  if (out == nullptr) return Code::kInvalidArgument;
  const Impl& l = *impl_;
  out->clear();
  const uint32_t count = load(l.header->account_count);
  for (uint32_t i = 0; i <= l.tally_mask; ++i) {
    const uint64_t key = load(l.tallies[i].key);
    if (key == 0 || tally_key_kind(key) != kTallyModel) continue;
    const uint32_t account = tally_key_account(key), model = tally_key_id(key);
    if (account >= count || model >= kModelsMax) continue;  // never written by us: skip, do not index
    const PeriodWord word = period_word_load(l.tallies[i].word);
    const Account& a = l.accounts[account];
    out->push_back(ModelSpend{std::string(a.name, std::min<uint32_t>(a.name_length, kAccountNameMax)),
                              std::string(l.model_name(model)), word.used, meta_requests(word.meta)});
  }
  return Code::kOk;
}

Status Ledger::flush_pending(uint64_t* records) const {
  if (records == nullptr) return Code::kInvalidArgument;
  *records = impl_->flush_pending();
  return Code::kOk;
}

Status Ledger::set_hold_policy(const HoldPolicy& policy) {
  Impl& l = *impl_;
  if (policy.default_ttl_s < 1 || policy.default_ttl_s > kTtlMaxSeconds || policy.tombstone_grace_s > kTombstoneGraceMaxSeconds)
    return Code::kInvalidArgument;
  Status status = l.ensure_registered();
  if (!status.ok()) return status;
  AdminGuard lock(l);
  store(l.header->default_ttl_s, policy.default_ttl_s);
  store(l.header->tombstone_grace_s, policy.tombstone_grace_s);
  store(l.header->tombstones_max, policy.tombstones_max != 0 ? policy.tombstones_max : std::max(1u, l.max_reservations / 2));
  return Code::kOk;
}

HoldPolicy Ledger::hold_policy() const {
  const Impl& l = *impl_;
  return HoldPolicy{load(l.header->default_ttl_s), load(l.header->tombstone_grace_s), load(l.header->tombstones_max)};
}

Status Ledger::set_store_map_size(uint64_t bytes) {
  Impl& l = *impl_;
  if (bytes < (uint64_t{1} << 20) || bytes > (uint64_t{1} << 40)) return Code::kInvalidArgument;
  std::lock_guard<std::mutex> local(*l.flush_mutex);
  l.options.store_map_size_bytes = bytes;
  return Code::kOk;
}

const std::string& Ledger::segment_file() const { return impl_->segment_path; }

Status Ledger::flush() {
  Status status = impl_->ensure_registered();
  return status.ok() ? impl_->flush_store() : status;
}

}  // namespace ledger
