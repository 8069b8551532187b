// rules.cpp — account rules (DESIGN 13): an account's own model list and fallback, soft limits,
// top-ups and rate limits (requests and tokens per minute, concurrent holds). The entries and the
// rate word's packing are described beside AccountRules in layout.hpp; the rate word is one more
// lane target of an admission and of a settlement (engine.cpp), so it is exactly as crash-safe as
// a budget.
#include <cstring>
#include <thread>

#include "impl.hpp"

namespace ledger {

using namespace detail;

namespace {

// The hint after a LEDGER_DENIED_RATE on this thread (Ledger::rate_retry_after_ms).
thread_local uint32_t tl_retry_after_ms = 0;
// A denial by max_concurrent ends when one of the account's holds settles: poll about this often.
constexpr uint32_t kConcurrencyRetryMs = 50;

// The last estimate this thread made: its tokens count at the next admission of that amount.
struct LastEstimate {
  int64_t amount = -1;
  uint32_t tokens = 0;
};
thread_local LastEstimate tl_last_estimate;

uint64_t moved(uint64_t value, int64_t delta, uint64_t max) {
  if (delta < 0) return static_cast<uint64_t>(-delta) >= value ? 0 : value - static_cast<uint64_t>(-delta);
  return std::min(max, value + static_cast<uint64_t>(delta));
}

bool valid_model_name(std::string_view model) {
  if (model.empty() || model.size() > kModelNameMax) return false;
  for (char c : model)
    if (c <= ' ' || c > '~') return false;
  return true;
}

}  // namespace

void Ledger::Impl::note_rate_denial(uint32_t retry_ms) { tl_retry_after_ms = retry_ms; }

uint32_t Ledger::rate_retry_after_ms() { return tl_retry_after_ms; }

void note_estimate_tokens(int64_t amount, uint64_t tokens) {
  tl_last_estimate = LastEstimate{amount, static_cast<uint32_t>(std::min<uint64_t>(tokens, UINT32_MAX))};
}

uint32_t take_estimate_tokens(int64_t amount) {
  const LastEstimate last = tl_last_estimate;
  tl_last_estimate = LastEstimate{};
  return last.amount == amount ? last.tokens : 0;
}

bool Ledger::Impl::plan_rate_admission(const AccountRules& r, PeriodWord current, const TargetSpec& spec, const Now& now,
                                       uint32_t stamp, PeriodWord* desired, uint32_t* minute, uint32_t* retry_ms) const {
  const uint32_t found = rate_minute(current.meta);
  const bool fresh = found < spec.tag;  // a new minute: requests and tokens start again; holds carry over
  *minute = fresh ? spec.tag : found;   // (another process's clock may be in the next minute already)
  const uint64_t requests = (fresh ? 0 : rate_requests(current.used)) + (spec.delta_requests > 0 ? 1u : 0u);
  const uint64_t add_tokens = spec.delta > 0 ? std::min<uint64_t>(static_cast<uint64_t>(spec.delta), kRateTokenMax) : 0;
  const uint64_t tokens = (fresh ? 0 : rate_tokens(current.used)) + add_tokens;
  const uint64_t concurrent = rate_concurrent(current.used) + (spec.delta_extra > 0 ? 1u : 0u);
  const uint32_t rpm = load(r.rpm, memory_order_relaxed), tpm = load(r.tpm, memory_order_relaxed);
  const uint32_t max_concurrent = load(r.max_concurrent, memory_order_relaxed);
  const bool over_minute = (rpm != 0 && requests > rpm) || (tpm != 0 && tokens + (add_tokens == 0 ? 1 : 0) > tpm);
  const bool over_holds = max_concurrent != 0 && spec.delta_extra > 0 && concurrent > max_concurrent;
  if (over_minute || over_holds) [[unlikely]] {
    // rpm and tpm: the rest of the minute (a minute already spent denies even a request of no
    // tokens); max_concurrent: a poll interval, since a slot comes back when a hold settles.
    *retry_ms = over_minute ? static_cast<uint32_t>(std::clamp<int64_t>((int64_t{*minute} + 1) * 60'000 - now.ms, 1, 60'000))
                            : kConcurrencyRetryMs;
    return false;
  }
  *desired = PeriodWord{make_rate_used(std::min(requests, kRateRequestMax), std::min(tokens, kRateTokenMax),
                                       std::min(concurrent, kRateConcurrentMax)),
                        make_rate_meta(*minute, stamp)};
  return true;
}

// Requests and tokens change only in the minute they were counted in (a later minute started them
// again); concurrent holds always. Never below 0, never above a field's maximum.
PeriodWord Ledger::Impl::plan_rate_forced(PeriodWord current, const TargetSpec& spec, uint32_t stamp) const {
  const uint32_t minute = rate_minute(current.meta);
  const bool same = minute == spec.tag;
  const uint64_t requests = same ? moved(rate_requests(current.used), spec.delta_requests, kRateRequestMax) : rate_requests(current.used);
  const uint64_t tokens = same ? moved(rate_tokens(current.used), spec.delta, kRateTokenMax) : rate_tokens(current.used);
  const uint64_t concurrent = moved(rate_concurrent(current.used), spec.delta_extra, kRateConcurrentMax);
  return PeriodWord{make_rate_used(requests, tokens, concurrent), make_rate_meta(minute, stamp)};
}

// ---- limits: soft, top-ups ------------------------------------------------------------------------

// Reads an entry's seqlock-guarded fields consistently. A writer mid-update holds the admin lock; one
// that was killed leaves `seq` odd until the next write, and then the fields are taken as they are
// (each old or new), as for prices.
template <class Read>
void Ledger::Impl::read_guarded(const AccountRules& r, Read&& read) const {
  bool writer_dead = false;
  for (uint32_t spins = 0;; ++spins) {
    const uint32_t before = load(r.seq);
    if ((before & 1u) != 0 && !writer_dead) {
      if (spins % 1024 == 1023) {
        writer_dead = !admin_lock_held();
        if (!writer_dead) std::this_thread::yield();
      }
      continue;
    }
    read();
    fence_acquire();
    if (load(r.seq, memory_order_relaxed) == before || writer_dead) return;
  }
}

bool Ledger::Impl::read_topup(uint32_t entry, int64_t* amount, int64_t* until_ms) const {
  const AccountRules& r = rules[entry];
  read_guarded(r, [&] {
    *amount = std::clamp<int64_t>(load(r.topup_nanousd, memory_order_relaxed), 0, kAmountNanoUsdMax);
    *until_ms = load(r.topup_until_ms, memory_order_relaxed);
  });
  return *amount != 0;
}

ModelListView Ledger::Impl::read_model_list(uint32_t entry, int32_t model) const {
  const AccountRules& r = rules[entry];
  ModelListView v;
  read_guarded(r, [&] {
    v.flags = load(r.list_flags, memory_order_relaxed);
    v.fallback = load(r.fallback, memory_order_relaxed);
    v.allowed = model >= 0 && (load(r.allowed[model / 64], memory_order_relaxed) >> (model % 64) & 1u) != 0;
  });
  return v;
}

int64_t Ledger::Impl::ruled_limit(uint32_t index, uint32_t tag, const Now& now, uint32_t* lease_seq) const {
  const Account& a = accounts[index];
  *lease_seq = 0;
  if ((load(a.rules_flags, memory_order_relaxed) & kRuleSoft) != 0) return INT64_MAX;  // its own limit never denies
  if (load(a.global, memory_order_relaxed) != 0) return lease_limit(index, tag, now.mono_ms, lease_seq);
  int64_t limit = load(a.limit_nanousd, memory_order_relaxed);
  int64_t amount = 0, until_ms = 0;
  if (const int32_t entry = rules_of(index, kRuleTopup); entry >= 0 && read_topup(static_cast<uint32_t>(entry), &amount, &until_ms)) {
    const int64_t wall_ms = now.ms >= 0 ? now.ms : now_ms();
    if (wall_ms < until_ms) limit = add_saturating(limit, amount);
  }
  return limit;
}

// ---- entries --------------------------------------------------------------------------------------

AccountRules* Ledger::Impl::claim_rules(uint32_t index) {
  Account& a = accounts[index];
  const uint32_t assigned = load(a.rules);
  if (assigned != 0) return assigned <= rules_max ? &rules[assigned - 1] : nullptr;
  const uint32_t count = load(header->rules_count);
  if (count >= rules_max) return nullptr;
  // Entries at and past rules_count were never written (a claimer that died after counting leaves
  // its entry unused, never shared): the count first, then the account names it.
  store(header->rules_count, count + 1);
  LEDGER_CRASH_POINT();
  store(a.rules, static_cast<uint16_t>(count + 1));
  return &rules[count];
}

void Ledger::Impl::write_model_list(AccountRules& r, uint32_t list_flags, const std::vector<int32_t>& models, int32_t fallback) {
  const uint32_t seq = load(r.seq) | 1u;  // odd: rewriting (rounds up after a writer that died mid-way)
  store(r.seq, seq, memory_order_relaxed);
  fence_release();
  for (auto& word : r.allowed) store(word, uint64_t{0}, memory_order_relaxed);
  for (const int32_t m : models) fetch_or(r.allowed[m / 64], uint64_t{1} << (m % 64));
  store(r.list_flags, list_flags, memory_order_relaxed);
  store(r.fallback, static_cast<uint32_t>(fallback + 1), memory_order_relaxed);
  LEDGER_CRASH_POINT();
  store(r.seq, seq + 1);
}

namespace {
Status check_rules(const RulesSpec& spec) {
  if (spec.rpm > kRpmMax || spec.tpm > kTpmMax || spec.max_concurrent > kMaxConcurrentMax) return Code::kInvalidArgument;
  if (!spec.fallback.empty() && !valid_model_name(spec.fallback)) return Code::kInvalidArgument;
  if (!spec.has_models && (spec.all_models || !spec.models.empty())) return Code::kInvalidArgument;
  for (const auto& m : spec.models)
    if (!valid_model_name(m)) return Code::kInvalidArgument;
  return Code::kOk;
}
}  // namespace

Status Ledger::set_rules(std::string_view account, const RulesSpec& spec) {
  Impl& l = *impl_;
  if (!valid_account_name(account)) return Code::kInvalidArgument;
  if (const Status checked = check_rules(spec); !checked.ok()) return checked;
  if (Status s = l.ensure_registered(); !s.ok()) return s;
  AdminGuard lock(l);
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  return l.write_rules(static_cast<uint32_t>(index), spec);
}

// REQUIRES: the admin lock (or a rebuild's segment nobody sees), a checked spec.
Status Ledger::Impl::write_rules(uint32_t index, const RulesSpec& spec) {
  Account& a = accounts[index];
  const bool lists = spec.has_models || !spec.fallback.empty();
  const bool rates = spec.rpm != 0 || spec.tpm != 0 || spec.max_concurrent != 0;
  const uint8_t topup = load(a.rules_flags) & kRuleTopup;
  const uint8_t flags = static_cast<uint8_t>(topup | (spec.soft ? kRuleSoft : 0) | (rates ? kRuleRate : 0) | (lists ? kRuleModels : 0));
  if (!lists && !rates && load(a.rules) == 0) {  // nothing that needs an entry
    store(a.rules_flags, flags);
    return Code::kOk;
  }
  AccountRules* r = claim_rules(index);
  if (r == nullptr) return Code::kFull;
  std::vector<int32_t> models;
  for (const auto& m : spec.models) {
    const int32_t mi = register_model(m);
    if (mi < 0) return Code::kFull;
    models.push_back(mi);
  }
  const int32_t fallback = spec.fallback.empty() ? -1 : register_model(spec.fallback);
  if (!spec.fallback.empty() && fallback < 0) return Code::kFull;
  const uint32_t list_flags = (spec.has_models ? kListModels : 0u) | (spec.all_models ? kListAllModels : 0u) |
                              (spec.fallback.empty() ? 0u : kListFallback);
  write_model_list(*r, list_flags, models, fallback);
  store(r->rpm, spec.rpm, memory_order_relaxed);
  store(r->tpm, spec.tpm, memory_order_relaxed);
  store(r->max_concurrent, spec.max_concurrent, memory_order_relaxed);
  store(a.rules_flags, flags);  // release: the entry is complete before the flags send anyone to it
  return Code::kOk;
}

Status Ledger::set_topup(std::string_view account, int64_t amount_nanousd, int64_t until_unix_ms) {
  Impl& l = *impl_;
  if (!valid_account_name(account) || amount_nanousd < 0 || amount_nanousd > kAmountNanoUsdMax ||
      (amount_nanousd != 0 && until_unix_ms <= 0))
    return Code::kInvalidArgument;
  if (Status s = l.ensure_registered(); !s.ok()) return s;
  AdminGuard lock(l);
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  return l.write_topup(static_cast<uint32_t>(index), amount_nanousd, until_unix_ms);
}

// REQUIRES: the admin lock (or a rebuild's segment nobody sees), checked arguments.
Status Ledger::Impl::write_topup(uint32_t index, int64_t amount_nanousd, int64_t until_unix_ms) {
  Account& a = accounts[index];
  if (amount_nanousd == 0 && load(a.rules) == 0) return Code::kOk;  // no top-up, and none to remove
  AccountRules* r = claim_rules(index);
  if (r == nullptr) return Code::kFull;
  const uint32_t seq = load(r->seq) | 1u;
  store(r->seq, seq, memory_order_relaxed);
  fence_release();
  store(r->topup_nanousd, amount_nanousd, memory_order_relaxed);
  store(r->topup_until_ms, amount_nanousd != 0 ? until_unix_ms : int64_t{0}, memory_order_relaxed);
  LEDGER_CRASH_POINT();
  store(r->seq, seq + 1);
  const uint8_t flags = load(a.rules_flags);
  store(a.rules_flags, static_cast<uint8_t>(amount_nanousd != 0 ? flags | kRuleTopup : flags & ~kRuleTopup));
  return Code::kOk;
}

// ---- reading them back -----------------------------------------------------------------------------

Status Ledger::rules(std::string_view account, RulesSpec* out, Topup* topup) const {
  const Impl& l = *impl_;
  if (out == nullptr || !valid_account_name(account)) return Code::kInvalidArgument;
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  Topup unused;
  l.read_rules(static_cast<uint32_t>(index), out, topup != nullptr ? topup : &unused);
  return Code::kOk;
}

bool Ledger::Impl::read_rules(uint32_t index, RulesSpec* out, Topup* topup) const {
  const Account& a = accounts[index];
  const uint8_t flags = load(a.rules_flags);
  *out = RulesSpec{};
  *topup = Topup{};
  out->soft = (flags & kRuleSoft) != 0;
  const uint32_t entry = load(a.rules);
  if (entry == 0 || entry > rules_max) return flags != 0;
  const AccountRules& r = rules[entry - 1];
  if ((flags & kRuleRate) != 0) {
    out->rpm = load(r.rpm);
    out->tpm = load(r.tpm);
    out->max_concurrent = load(r.max_concurrent);
  }
  if ((flags & kRuleModels) != 0) read_model_names(r, out);
  if ((flags & kRuleTopup) != 0) read_topup(entry - 1, &topup->amount_nanousd, &topup->until_unix_ms);
  return true;
}

Status Ledger::rate_usage(std::string_view account, RateUsage* out) const {
  const Impl& l = *impl_;
  if (out == nullptr || !valid_account_name(account)) return Code::kInvalidArgument;
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  *out = RateUsage{};
  const Now now = l.now();
  out->minute_start_unix = int64_t{now.minute()} * 60;
  const uint32_t entry = load(l.accounts[index].rules);
  if (entry == 0 || entry > l.rules_max) return Code::kOk;
  const PeriodWord word = period_word_load(l.rules[entry - 1].rate);
  out->concurrent = rate_concurrent(word.used);
  if (rate_minute(word.meta) == now.minute()) {
    out->requests = rate_requests(word.used);
    out->tokens = rate_tokens(word.used);
  }
  return Code::kOk;
}

void Ledger::Impl::read_model_names(const AccountRules& r, RulesSpec* out) const {
  read_guarded(r, [&] {
    const uint32_t list = load(r.list_flags, memory_order_relaxed), fallback = load(r.fallback, memory_order_relaxed);
    out->has_models = (list & kListModels) != 0;
    out->all_models = (list & kListAllModels) != 0;
    out->models.clear();
    for (uint32_t m = 0; out->has_models && !out->all_models && m < kModelsMax; ++m)
      if ((load(r.allowed[m / 64], memory_order_relaxed) >> (m % 64) & 1u) != 0) out->models.emplace_back(model_name(m));
    out->fallback = (list & kListFallback) != 0 && fallback != 0 && fallback <= kModelsMax ? std::string(model_name(fallback - 1)) : "";
  });
}

}  // namespace ledger
