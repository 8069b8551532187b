// leases.cpp — global mode on one host (DESIGN 11): a global account admits against this host's
// lease only. The sidecar's lease worker obtains the grants from the shared store and publishes
// them here (set_lease); admission reads them lock-free (lease_limit). See layout.hpp, LeaseWord.
#include <time.h>

#include <algorithm>

#include "impl.hpp"

namespace ledger {

using namespace detail;

int64_t Ledger::monotonic_ms() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

int64_t Ledger::Impl::lease_limit(uint32_t index, uint32_t tag, uint32_t* seq_read) const {
  const LeaseWord& w = leases[index].words[tag_parity(tag)];
  for (int attempt = 0; attempt < 16; ++attempt) {
    const uint32_t before = load(w.seq);
    if ((before & 1u) != 0) continue;  // being rewritten (or its writer died there): look again, then deny
    const uint32_t lease_tag = load(w.tag, memory_order_relaxed);
    const int64_t limit = load(w.limit_nanousd, memory_order_relaxed);
    const int64_t deadline = load(w.deadline_ms, memory_order_relaxed);
    fence_acquire();
    if (load(w.seq, memory_order_relaxed) != before) continue;
    if (seq_read != nullptr) *seq_read = before;
    if (lease_tag != tag || Ledger::monotonic_ms() >= deadline) return 0;  // no lease for this window, or lapsed
    return limit;
  }
  if (seq_read != nullptr) *seq_read = UINT32_MAX;  // never a stable value: a re-check will look again
  return 0;  // fail closed
}

void Ledger::Impl::note_lease_wanted(uint32_t index, uint32_t tag, int64_t amount) const {
  if (load(accounts[index].global, memory_order_relaxed) == 0 || amount <= 0) return;  // a local limit: nothing to ask for
  LeaseWord& w = leases[index].words[tag_parity(tag)];
  int64_t seen = load(w.wanted_nanousd, memory_order_relaxed);
  while (seen < amount && !compare_exchange(w.wanted_nanousd, seen, amount)) {
  }
}

Status Ledger::take_lease_wanted(std::string_view account, int64_t period_index, int64_t* wanted_nanousd) {
  Impl& l = *impl_;
  if (wanted_nanousd == nullptr || !valid_account_name(account) || period_index < 0) return Code::kInvalidArgument;
  *wanted_nanousd = 0;
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  const auto kind = static_cast<Period>(load(l.accounts[index].period_kind) & 3u);
  LeaseWord& w = l.leases[index].words[tag_parity(make_tag(kind, period_index))];
  int64_t seen = load(w.wanted_nanousd);
  while (seen != 0 && !compare_exchange(w.wanted_nanousd, seen, int64_t{0})) {
  }
  *wanted_nanousd = std::clamp<int64_t>(seen, 0, kAmountNanoUsdMax);  // a damaged word asks for no more than an amount can be
  return Code::kOk;
}

Status Ledger::set_scope(std::string_view account, bool global) {
  return change_account(*impl_, account, [&](uint32_t index) {
    store(impl_->accounts[index].global, static_cast<uint8_t>(global ? 1 : 0));
  });
}

Status Ledger::set_lease(std::string_view account, int64_t period_index, int64_t limit_nanousd, int64_t deadline_monotonic_ms) {
  Impl& l = *impl_;
  if (!valid_account_name(account) || period_index < 0 || limit_nanousd < 0 || limit_nanousd > kAmountNanoUsdMax)
    return Code::kInvalidArgument;
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  const auto kind = static_cast<Period>(load(l.accounts[index].period_kind) & 3u);
  if (kind == Period::kNone && period_index != 0) return Code::kInvalidArgument;
  const uint32_t tag = make_tag(kind, period_index);
  std::lock_guard<std::mutex> local(*l.admin_mutex);  // threads of the sidecar; other processes do not write leases
  LeaseWord& w = l.leases[index].words[tag_parity(tag)];
  // The same lease again (the sidecar publishes every cycle): no rewrite, so no window in which a
  // reader finds the word odd and denies.
  if ((load(w.seq) & 1u) == 0 && load(w.tag, memory_order_relaxed) == tag && load(w.limit_nanousd, memory_order_relaxed) == limit_nanousd &&
      load(w.deadline_ms, memory_order_relaxed) == deadline_monotonic_ms)
    return Code::kOk;
  const uint32_t seq = load(w.seq) | 1u;  // odd: rewriting (rounds up after a writer that died mid-way)
  store(w.seq, seq, memory_order_relaxed);
  fence_release();
  store(w.tag, tag, memory_order_relaxed);
  store(w.limit_nanousd, limit_nanousd, memory_order_relaxed);
  store(w.deadline_ms, deadline_monotonic_ms, memory_order_relaxed);
  LEDGER_CRASH_POINT();  // a writer killed here leaves seq odd: admission denies until the next write
  store(w.seq, seq + 1);
  // Before the caller reads how much of the lease is used (to give the rest back): an admission that
  // lands after this point sees the new lease on its re-check (see Impl::apply).
  boost::atomic_thread_fence(boost::memory_order_seq_cst);
  return Code::kOk;
}

Status Ledger::window_usage(std::string_view account, int64_t period_index, WindowUsage* out) const {
  const Impl& l = *impl_;
  if (out == nullptr || !valid_account_name(account) || period_index < 0) return Code::kInvalidArgument;
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  const Account& a = l.accounts[index];
  const auto kind = static_cast<Period>(load(a.period_kind) & 3u);
  const uint32_t tag = make_tag(kind, period_index);
  const PeriodWord word = period_word_guess(a.words[tag_parity(tag)]);
  *out = WindowUsage{};
  out->global = load(a.global) != 0;
  const LeaseWord& w = l.leases[index].words[tag_parity(tag)];
  if (load(w.tag) == tag) {  // a lease may be there before anything was spent (the next window's)
    out->lease_limit_nanousd = load(w.limit_nanousd);
    out->lease_deadline_ms = load(w.deadline_ms);
  }
  if (meta_tag(word.meta) != tag) return Code::kOk;  // nothing spent in that window (yet, or any more)
  out->held_nanousd = l.held_in(static_cast<uint32_t>(index), tag);
  out->used_nanousd = word.used;
  out->spent_nanousd = word.used - out->held_nanousd;
  out->requests = meta_requests(word.meta);
  return Code::kOk;
}

}  // namespace ledger
