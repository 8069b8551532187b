// leases.cpp — global mode on one host (DESIGN 11): a global account admits against this host's
// lease only. The sidecar's lease worker obtains the grants from the shared store and publishes
// them here (set_lease); admission reads them lock-free (lease_limit). See layout.hpp, LeaseWord.
#include <time.h>

#include <algorithm>

#include "impl.hpp"

namespace ledger {

using namespace detail;

int64_t Ledger::monotonic_ms() { return monotonic_coarse_ms(); }

int64_t Ledger::Impl::lease_limit(uint32_t index, uint32_t tag, int64_t mono_ms, uint32_t* seq_read) const {
  const LeaseWord& w = leases[index].words[tag_parity(tag)];
  for (int attempt = 0; attempt < 16; ++attempt) {
    int64_t limit = 0;
    uint32_t seq = 0;
    if (read_lease(index, tag, mono_ms, &limit, &seq)) {
      if (seq_read != nullptr) *seq_read = seq;
      return limit;
    }
    // Being rewritten (or its writer died there): look again, then deny. Stable but for another
    // window, or lapsed: deny.
    if ((seq & 1u) == 0 && load(w.seq, memory_order_relaxed) == seq) {
      if (seq_read != nullptr) *seq_read = seq;
      return 0;
    }
  }
  if (seq_read != nullptr) *seq_read = UINT32_MAX;  // never a stable value: a re-check will look again
  return 0;  // fail closed
}

void Ledger::Impl::stamp_epoch(uint32_t index, uint32_t parity, uint32_t seq) const {
  PeriodWord& word = accounts[index].words[parity];
  const uint32_t stamp = epoch_stamp(seq);
  PeriodWord current = period_word_load(word);
  for (;;) {
    const uint32_t other = meta_lane(current.meta);
    if (other != 0 && other != stamp) help(other, uint64_t{index} * 2 + parity + 1, current);  // the helping rule
    const PeriodWord desired{current.used, make_meta(meta_requests(current.meta), meta_tag(current.meta), stamp)};
    if (period_word_cas(word, current, desired)) return;
  }
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
  // Not a lowering (the same window, a limit and a deadline no smaller: a renewal, a grant, the same
  // lease again): stored in place, in the same epoch. A reader that mixes old and new fields sees a
  // lease that was granted, and an admission that read the old one was held to less than it may, so
  // nothing needs fencing, and no reader ever finds the word odd and denies. The word gets the
  // epoch's stamp again if a lane operation replaced it (root debits take the fast path again).
  if (const uint32_t stable = load(w.seq); (stable & 1u) == 0 && load(w.tag, memory_order_relaxed) == tag &&
                                           limit_nanousd >= load(w.limit_nanousd, memory_order_relaxed) &&
                                           deadline_monotonic_ms >= load(w.deadline_ms, memory_order_relaxed)) {
    if (limit_nanousd != load(w.limit_nanousd, memory_order_relaxed)) store(w.limit_nanousd, limit_nanousd);
    if (deadline_monotonic_ms != load(w.deadline_ms, memory_order_relaxed)) store(w.deadline_ms, deadline_monotonic_ms);
    if (meta_lane(period_word_guess(l.accounts[index].words[tag_parity(tag)]).meta) != epoch_stamp(stable))
      l.stamp_epoch(static_cast<uint32_t>(index), tag_parity(tag), stable);
    return Code::kOk;
  }
  // A lowering, another window, an earlier deadline: a new epoch (seq), then the word's stamp.
  const uint32_t seq = load(w.seq) | 1u;  // odd: rewriting (rounds up after a writer that died mid-way)
  store(w.seq, seq, memory_order_relaxed);
  fence_release();
  store(w.tag, tag, memory_order_relaxed);
  store(w.limit_nanousd, limit_nanousd, memory_order_relaxed);
  store(w.deadline_ms, deadline_monotonic_ms, memory_order_relaxed);
  LEDGER_CRASH_POINT();  // a writer killed here leaves seq odd: admission denies until the next write
  store(w.seq, seq + 1);
  // Before the caller reads how much of the lease is used (to give the rest back): a lane admission
  // that lands after this point sees the new lease on its re-check (see Impl::apply), and a fast
  // debit that read the old lease can no longer land once the word carries the new epoch's stamp.
  boost::atomic_thread_fence(boost::memory_order_seq_cst);
  // A writer killed here leaves the word unstamped: a fast debit that read the old lease may still
  // land against it. That is within this host's grant, since the caller gives back nothing before
  // set_lease returns, and the next writer stamps the word (a new epoch) before it looks.
  LEDGER_CRASH_POINT();
  l.stamp_epoch(static_cast<uint32_t>(index), tag_parity(tag), seq + 1);
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
