// engine.cpp — the lock-free operations: debit, reserve, commit, release, expire.
//
// How an operation survives a SIGKILL between any two instructions
// ------------------------------------------------------------------
// Every change of an account's period word is a 16-byte CAS whose new value carries the writer's
// lane id ("stamp"). Before each CAS the writer records, in its lane, the word it is about to write
// and the exact value it will install (a Target entry, seqlock-guarded). Only lane L ever writes
// stamp L, so while a word still holds the value L's entry names, L's CAS has landed.
//
// Helping rule: whoever replaces a value stamped by another lane M first checks M's in-flight
// operation; if one of M's entries names exactly that word and value, it sets that entry's
// "applied" bit in M's ctl word (a CAS that also checks M's op seq). Hence, for a dead lane:
//     target j landed  <=>  word == entry j's value  OR  bit j is set
// (read the word first, then the bit). The reclaimer uses this to roll a dead lane's operation back
// (debit, reserve: admission that was never acknowledged) or forward (commit, release, expire:
// settlement that must not be lost), and never applies anything twice.
//
// Accounts keep two period words (by the parity of the period index): a rollover is one CAS on the
// other word, and the previous period's word stays in place for commits of holds made in it.
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "check.hpp"
#include "impl.hpp"

namespace ledger {

using namespace detail;

namespace {

inline uint64_t word_location(uint32_t account, uint32_t parity) {
  return uint64_t{account} * 2 + parity + 1;
}

// The admission rule for one level: the word's period (or a rollover to `tag`), then
// used + delta <= limit. False when denied. *tag becomes the period actually charged.
bool plan_admission(const Ledger::Impl& l, uint32_t index, PeriodWord current, uint32_t wanted_tag, int64_t delta,
                    int32_t delta_requests, uint32_t stamp, const Now& now, PeriodWord* desired, uint32_t* tag,
                    uint32_t* lease_seq) {
  const uint32_t found_tag = meta_tag(current.meta);
  PeriodWord base = current;
  *tag = wanted_tag;
  if (found_tag != wanted_tag) {
    const bool newer = tag_kind(found_tag) == tag_kind(wanted_tag) && tag_index(found_tag) > tag_index(wanted_tag);
    if (newer) *tag = found_tag;  // another process's clock is ahead: its period is the current one
    else base = PeriodWord{0, 0};  // rollover: this period starts empty
  }
  int64_t used;
  if (__builtin_add_overflow(base.used, delta, &used)) return false;
  if (used > l.admission_limit(index, *tag, now, lease_seq)) [[unlikely]] {
    l.note_lease_wanted(index, *tag, delta);  // global mode: the sidecar sizes the next grant by it
    return false;
  }
  *desired = PeriodWord{used, make_meta(meta_requests(base.meta) + static_cast<uint64_t>(delta_requests), *tag, stamp)};
  return true;
}

}  // namespace

bool valid_account_name(std::string_view name) {
  if (name.empty() || name.size() > kAccountNameMax) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '@' || c == '-';
    if (!ok) return false;
  }
  return true;
}

int32_t Ledger::Impl::find_index(std::string_view name) const {
  const uint32_t h = fnv1a32(name);
  for (uint32_t probe = 0; probe <= hash_mask; ++probe) {
    const uint32_t entry = load(hash[(h + probe) & hash_mask]);
    if (entry == 0) return -1;
    const uint32_t index = entry - 1;
    if (index >= max_accounts) return -1;  // damaged table: treat as absent, never index past it
    const Account& a = accounts[index];
    if (a.name_hash == h && a.name_length == name.size() &&
        std::memcmp(a.name, name.data(), name.size()) == 0)
      return static_cast<int32_t>(index);
  }
  return -1;
}

// ---- lanes and targets --------------------------------------------------------------------------

namespace {
// Which of its process's lanes a thread tries first, so threads rarely collide on a claim.
std::atomic<uint32_t> g_next_lane_hint{0};
thread_local uint32_t tl_lane_hint __attribute__((tls_model("initial-exec"))) = UINT32_MAX;
}  // namespace

Status Ledger::Impl::claim_lane(OpScope* op) {
  Status status = ensure_registered();
  if (!status.ok()) return status;
  if (tl_lane_hint == UINT32_MAX) tl_lane_hint = g_next_lane_hint.fetch_add(1, std::memory_order_relaxed);
  const uint32_t first = process_slot * kLanesPerProcess;
  for (uint32_t spins = 0;; ++spins) {
    for (uint32_t i = 0; i < kLanesPerProcess; ++i) {
      const uint32_t index = first + (tl_lane_hint + i) % kLanesPerProcess;
      LaneHeader& h = lanes[index].header;
      uint64_t ctl = load(h.ctl, memory_order_relaxed);
      const uint32_t phase = ctl_phase(ctl);
      if (phase == kPhaseActive || phase == kPhaseOwned) continue;
      if (!compare_exchange(h.ctl, ctl, make_ctl(ctl_seq(ctl), kPhaseOwned, kOpNone, 0, 0))) continue;
      op->lane_id = index + 1;
      op->lane = &lanes[index];
      op->seq = ctl_seq(ctl);
      return Code::kOk;
    }
    if (spins > 16) std::this_thread::yield();  // more threads than lanes inside operations
  }
}

void Ledger::Impl::start(OpScope* op, uint32_t kind) {
  op->seq = op->seq + 1 == 0 ? 1 : op->seq + 1;
  op->n_targets = 0;
  LaneHeader& h = op->lane->header;
  // Reset before ACTIVE is visible: a reclaimer must never read the previous op's header as ours.
  store(h.n_targets, 0u, memory_order_relaxed);
  store(h.reservation_slot, 0u, memory_order_relaxed);
  store(h.targets_expected, 0u, memory_order_relaxed);
  store(h.applied_high, make_applied_high(op->seq, 0), memory_order_relaxed);
  store(h.ctl, make_ctl(op->seq, kPhaseActive, kind, 0, 0), memory_order_release);
}

void Ledger::Impl::finish(OpScope* op) {
  store(op->lane->header.ctl, make_ctl(op->seq, kPhaseOwned, kOpNone, 0, 0), memory_order_release);
}

void Ledger::Impl::free_lane(OpScope* op) {
  store(op->lane->header.ctl, make_ctl(op->seq, kPhaseIdle, kOpNone, 0, 0), memory_order_release);
}

void Ledger::Impl::end(OpScope* op) { free_lane(op); }

namespace {
void store_spec(Target& t, const TargetSpec& spec) {
  store(t.account, spec.account, memory_order_relaxed);
  store(t.tag, spec.tag, memory_order_relaxed);
  store(t.flags, spec.flags, memory_order_relaxed);
  store(t.delta, spec.delta, memory_order_relaxed);
  store(t.delta_extra, spec.delta_extra, memory_order_relaxed);
  store(t.delta_requests, spec.delta_requests, memory_order_relaxed);
  store(t.undo_of, spec.undo_of, memory_order_relaxed);
}
}  // namespace

// Writes entry j's spec (and an empty attempt); publishes it by raising n_targets.
void Ledger::Impl::write_spec(OpScope* op, uint32_t j, const TargetSpec& spec) {
  LEDGER_CHECK(j < kTargetsMax);
  Target& t = op->lane->targets[j];
  store(t.seq, 0u, memory_order_relaxed);
  fence_release();
  store(t.account, spec.account, memory_order_relaxed);
  store(t.tag, spec.tag, memory_order_relaxed);
  store(t.flags, spec.flags, memory_order_relaxed);
  store(t.delta, spec.delta, memory_order_relaxed);
  store(t.delta_extra, spec.delta_extra, memory_order_relaxed);
  LEDGER_CRASH_POINT();  // a torn entry (seq 0)
  store(t.delta_requests, spec.delta_requests, memory_order_relaxed);
  store(t.undo_of, spec.undo_of, memory_order_relaxed);
  store(t.location, uint64_t{0}, memory_order_relaxed);
  store(t.seq, op->seq, memory_order_release);
  if (j >= op->n_targets) {
    op->n_targets = j + 1;
    store(op->lane->header.n_targets, op->n_targets, memory_order_release);
  }
}

PeriodWord* Ledger::Impl::word_at(uint64_t location) const {
  if (location == 0) return nullptr;
  if ((location & kTallyLocation) != 0) {
    const uint64_t tally = (location & ~kTallyLocation) - 1;
    return tally <= tally_mask ? &tallies[tally].word : nullptr;
  }
  if ((location & kRateLocation) != 0) {
    const uint64_t entry = (location & ~kRateLocation) - 1;
    return entry < rules_max ? &rules[entry].rate : nullptr;
  }
  const uint64_t account = (location - 1) / 2;
  return account < max_accounts ? &accounts[account].words[(location - 1) % 2] : nullptr;
}

// `current` (a value stamped by lane_id, as the caller read it) matched against the lane's entries.
// A match alone proves nothing: the caller may have read a value the lane wrote in an earlier
// operation, and the lane's new entry may name that same value again (reserve h then release h
// returns a word to where it was). So the word is read again, after the entry was seen: a value
// stamped by the lane that is in the word after the lane recorded the entry can only be that
// entry's CAS (an entry is recorded after its operation read the word, and only the lane writes
// its stamp). Only then is the bit set, with a CAS that also proves the operation is still the same.
void Ledger::Impl::help(uint32_t lane_id, uint64_t location, PeriodWord current) const {
  if (lane_id == 0 || lane_id > lanes_total()) return;
  PeriodWord* word = word_at(location);
  if (word == nullptr) return;
  Lane& other = lane_by_id(lane_id);
  uint64_t ctl = load(other.header.ctl);
  for (int guard = 0; guard < 64; ++guard) {
    if (ctl_phase(ctl) != kPhaseActive) return;
    const uint32_t seq = ctl_seq(ctl);
    const uint32_t n = std::min(load(other.header.n_targets), kTargetsMax);
    int found = -1;
    for (uint32_t j = 0; j < n && found < 0; ++j) {
      const Target& t = other.targets[j];
      if (load(t.seq) != seq) continue;
      const uint64_t loc = load(t.location, memory_order_relaxed);
      const int64_t used = load(t.new_used, memory_order_relaxed);
      const uint64_t meta = load(t.new_meta, memory_order_relaxed);
      fence_acquire();
      if (load(t.seq, memory_order_relaxed) != seq) continue;
      if (loc == location && used == current.used && meta == current.meta) found = static_cast<int>(j);
    }
    if (found < 0 || applied_bit(other, ctl, static_cast<uint32_t>(found))) return;
    if (!(period_word_load(*word) == current)) return;  // gone: whoever replaced it helped first
    if (found < 8) {
      if (compare_exchange(other.header.ctl, ctl, ctl | (uint64_t{1} << found))) return;
      continue;
    }
    uint64_t high = load(other.header.applied_high);
    if (applied_high_seq(high) != seq) return;  // the op is over
    if (compare_exchange(other.header.applied_high, high, high | (uint64_t{1} << (found - 8)))) return;
    ctl = load(other.header.ctl);
  }
}

// Records attempt `desired` at `location` in entry j before its CAS (seqlock: seq 0 while the
// attempt is rewritten). The first attempt of an admission target also writes its spec, and
// publishes it by raising n_targets, before the CAS can happen. `tag` is what the entry names as the
// period (or minute) the change went into.
void Ledger::Impl::record_attempt(OpScope* op, uint32_t j, const TargetSpec* first_spec, uint32_t tag, uint64_t location,
                                  PeriodWord desired) {
  Target& entry = op->lane->targets[j];
  store(entry.seq, 0u, memory_order_relaxed);
  fence_release();
  if (first_spec != nullptr) store_spec(entry, *first_spec);
  store(entry.tag, tag, memory_order_relaxed);
  store(entry.location, location, memory_order_relaxed);
  LEDGER_CRASH_POINT();  // attempt half-rewritten (seq 0)
  store(entry.new_used, desired.used, memory_order_relaxed);
  store(entry.new_meta, desired.meta, memory_order_relaxed);
  store(entry.seq, op->seq, memory_order_release);
  if (first_spec != nullptr && j >= op->n_targets) {
    op->n_targets = j + 1;
    store(op->lane->header.n_targets, op->n_targets, memory_order_release);
  }
  LEDGER_CRASH_POINT();  // attempt recorded, CAS not done
}

// The helping rule, then the CAS: true when `desired` landed; else `current` is the word now.
bool Ledger::Impl::cas_helping(const OpScope& op, PeriodWord& word, uint64_t location, PeriodWord& current, PeriodWord desired) {
  const uint32_t stamp = meta_lane(current.meta);
  if (stamp != 0 && stamp != op.lane_id) help(stamp, location, current);
  return period_word_cas(word, current, desired);
}

// Applies target j of `op`: a chain level's period word, a tally, or a rate word. Admission targets
// may be denied (kDeniedOverBudget, kDeniedRate); forced ones always land. *landed (admission
// only): the CAS landed but the level must be undone (a lease lowered meanwhile).
Code Ledger::Impl::apply(OpScope* op, uint32_t j, const TargetSpec& spec, const Now& now,
                         uint32_t* effective_tag, bool spec_written, bool* landed) {
  LEDGER_CHECK(j < kTargetsMax);
  if ((spec.flags & kTargetTally) != 0) return apply_tally(op, j, spec, effective_tag);
  if ((spec.flags & kTargetRate) != 0) return apply_rate(op, j, spec, now, effective_tag, spec_written);
  return apply_level(op, j, spec, now, effective_tag, spec_written, landed);
}

// A tally: one word, tag 0, never reset, never denied; its spec is always written first.
Code Ledger::Impl::apply_tally(OpScope* op, uint32_t j, const TargetSpec& spec, uint32_t* effective_tag) {
  LEDGER_CHECK((spec.flags & kTargetAdmit) == 0);  // a tally is never an admission
  if (spec.account > tally_mask) return Code::kInvalidArgument;  // a damaged lane entry: touch nothing
  PeriodWord& word = tallies[spec.account].word;
  const uint64_t location = kTallyLocation | (uint64_t{spec.account} + 1);
  PeriodWord current = period_word_guess(word);
  for (;;) {
    const uint64_t requests = meta_requests(current.meta) + static_cast<uint64_t>(static_cast<int64_t>(spec.delta_requests));
    const PeriodWord desired{add_saturating(current.used, spec.delta), make_meta(requests, 0, op->lane_id)};
    record_attempt(op, j, nullptr, spec.tag, location, desired);
    if (cas_helping(*op, word, location, current, desired)) {
      LEDGER_CRASH_POINT();
      if (effective_tag != nullptr) *effective_tag = 0;
      return Code::kOk;
    }
  }
}

// A forced change of a level (settlement, undo, repair): into the period it belongs to while its
// word still holds it; else, when it must still count (a charge, a settled request), into the
// current period. False when there is nothing left to change (the period was reset).
bool Ledger::Impl::plan_forced(const TargetSpec& spec, const Now& now, uint32_t stamp, PeriodWord** word, PeriodWord* current,
                               PeriodWord* desired, uint32_t* tag) const {
  Account& account = accounts[spec.account];
  const Period kind = static_cast<Period>(load(account.period_kind, memory_order_relaxed) & 3u);
  const auto with_requests = [&](PeriodWord base, int64_t delta, uint32_t t) {
    const uint64_t requests = meta_requests(base.meta) + static_cast<uint64_t>(static_cast<int64_t>(spec.delta_requests));
    return PeriodWord{add_saturating(base.used, delta), make_meta(requests, t, stamp)};
  };
  if (meta_tag(current->meta) == spec.tag && tag_kind(spec.tag) == kind) {
    *tag = spec.tag;
    *desired = with_requests(*current, spec.delta, spec.tag);
    return true;
  }
  if (spec.delta_extra == 0 && ((spec.flags & kTargetUndo) != 0 || spec.delta_requests == 0)) {
    *tag = spec.tag;
    return false;
  }
  // The period this change belonged to is gone from the segment: charge the current one.
  const uint32_t now_tag = (now.ms >= 0 ? now : this->now()).tag(static_cast<uint32_t>(kind));
  *word = &account.words[tag_parity(now_tag)];
  *current = period_word_guess(**word);
  const uint32_t found = meta_tag(current->meta);
  const bool newer = tag_kind(found) == kind && tag_index(found) > tag_index(now_tag);
  *tag = found == now_tag || newer ? found : now_tag;
  *desired = with_requests(*tag == found ? *current : PeriodWord{0, 0}, spec.delta_extra, *tag);
  return true;
}

// A chain level's period word: an admission (the budget or lease decides) or a forced change.
Code Ledger::Impl::apply_level(OpScope* op, uint32_t j, const TargetSpec& spec, const Now& now, uint32_t* effective_tag,
                               bool spec_written, bool* landed) {
  if (spec.account >= max_accounts) return Code::kInvalidArgument;  // a damaged lane entry
  const bool admit = (spec.flags & kTargetAdmit) != 0;
  for (;;) {
    PeriodWord* word = &accounts[spec.account].words[tag_parity(spec.tag)];
    PeriodWord current = period_word_guess(*word);
    PeriodWord desired{};
    uint32_t tag = spec.tag, lease_seq = 0;
    if (admit) {
      if (!plan_admission(*this, spec.account, current, spec.tag, spec.delta, spec.delta_requests, op->lane_id, now,
                          &desired, &tag, &lease_seq))
        return Code::kDeniedOverBudget;
    } else if (!plan_forced(spec, now, op->lane_id, &word, &current, &desired, &tag)) {
      if (effective_tag != nullptr) *effective_tag = tag;
      return Code::kOk;  // nothing left to change: the period it belonged to was reset
    }
    if (desired.used == current.used && meta_requests(desired.meta) == meta_requests(current.meta) &&
        meta_tag(desired.meta) == meta_tag(current.meta)) {
      if (effective_tag != nullptr) *effective_tag = tag;
      return Code::kOk;  // a change of nothing: no CAS, so no stamp to account for
    }
    const uint64_t location = word_location(spec.account, static_cast<uint32_t>(word - accounts[spec.account].words));
    record_attempt(op, j, spec_written ? nullptr : &spec, admit ? tag : spec.tag, location, desired);
    spec_written = true;
    LEDGER_PAUSE_POINT();
    if (!cas_helping(*op, *word, location, current, desired)) continue;
    LEDGER_CRASH_POINT();  // CAS landed, nothing else knows yet
    if (effective_tag != nullptr) *effective_tag = tag;
    // A global account's lease rewritten while this admission was in flight (a give-back or a
    // recall lowers it before the store hears of it): the level must fit the new lease, or it is
    // undone like a denial. The CAS is a full barrier: a lowering this missed was not yet published.
    if (admit && lease_seq != 0 && lease_moved(spec.account, tag, lease_seq) &&
        desired.used > lease_limit(spec.account, tag, monotonic_coarse_ms(), nullptr)) {
      if (landed != nullptr) *landed = true;
      return Code::kDeniedOverBudget;
    }
    return Code::kOk;
  }
}

// A rate word (layout.hpp, AccountRules): an admission counts a request, its tokens and, for a hold,
// a concurrent slot against the account's limits in the current minute; a forced change gives them
// back (undo, settlement, expiry). Denied: kDeniedRate, and this thread's retry hint is set.
Code Ledger::Impl::apply_rate(OpScope* op, uint32_t j, const TargetSpec& spec, const Now& now, uint32_t* effective_tag,
                              bool spec_written) {
  if (spec.account >= rules_max) return Code::kInvalidArgument;  // a damaged lane entry
  AccountRules& r = rules[spec.account];
  const bool admit = (spec.flags & kTargetAdmit) != 0;
  const uint64_t location = kRateLocation | (uint64_t{spec.account} + 1);
  PeriodWord current = period_word_guess(r.rate);
  for (;;) {
    PeriodWord desired{};
    uint32_t minute = spec.tag;
    if (admit) {
      uint32_t retry_ms = 0;
      if (!plan_rate_admission(r, current, spec, now, op->lane_id, &desired, &minute, &retry_ms)) {
        note_rate_denial(retry_ms);
        return Code::kDeniedRate;
      }
    } else {
      desired = plan_rate_forced(current, spec, op->lane_id);
    }
    if (desired.used == current.used && rate_minute(desired.meta) == rate_minute(current.meta)) {
      if (effective_tag != nullptr) *effective_tag = minute;
      return Code::kOk;  // a change of nothing: no CAS
    }
    record_attempt(op, j, spec_written ? nullptr : &spec, minute, location, desired);
    spec_written = true;
    if (cas_helping(*op, r.rate, location, current, desired)) {
      LEDGER_CRASH_POINT();  // CAS landed, nothing else knows yet
      if (effective_tag != nullptr) *effective_tag = minute;
      return Code::kOk;
    }
  }
}

// ---- admission: debit and reserve -----------------------------------------------------------------

// Resolves the chain and refuses blocked accounts before anything is touched.
static Code resolve_chain(const Ledger::Impl& l, uint32_t account, Chain* chain) {
  for (int32_t a = static_cast<int32_t>(account); a >= 0;) {
    if (chain->depth == kChainDepthMax || static_cast<uint32_t>(a) >= l.max_accounts) return Code::kInvalidArgument;
    const Account& acc = l.accounts[a];
    if (load(acc.live) == 0) return Code::kUnknownAccount;
    if (load(acc.blocked, memory_order_relaxed) != 0) return l.count_denial(Code::kDeniedBlocked);
    if (chain->key == 0) chain->key = load(acc.key, memory_order_relaxed);
    const uint32_t flags = load(acc.rules_flags, memory_order_relaxed);
    chain->flags |= flags;
    if ((flags & kRuleRate) != 0) {
      const int32_t rules = l.rules_of(static_cast<uint32_t>(a), kRuleRate);
      chain->rates[chain->depth] = rules >= 0 ? static_cast<uint32_t>(rules) + 1 : 0;
    }
    chain->accounts[chain->depth++] = static_cast<uint32_t>(a);
    a = load(acc.parent, memory_order_relaxed);
  }
  if (chain->key > l.key_mask + 1) chain->key = 0;  // a damaged word: attribute to no key
  return Code::kOk;
}

// A debit of a root account through no key is one CAS on one word: it lands or it does not, so it
// needs no intent and no lane. It writes stamp 0, which no repair ever looks for; it still helps
// the lane whose value it replaces. A process killed right after the CAS leaves the debit applied
// (not acknowledged: within the "in flight" bound, like any completed-but-unacknowledged call).
static Code debit_root(Ledger::Impl& l, uint32_t index, int64_t amount) {
  Account& account = l.accounts[index];
  // An account without a period never needs the clock (its tag is always 0).
  const bool timeless = load(account.period_kind, memory_order_relaxed) == static_cast<uint8_t>(Period::kNone);
  const Now now = timeless ? Now::unread() : l.now();
  const uint32_t wanted = timeless ? 0u : l.current_tag(account, now);
  const uint32_t parity = tag_parity(wanted);
  PeriodWord& word = account.words[parity];
  PeriodWord current = period_word_guess(word);
  for (;;) {
    PeriodWord desired{};
    uint32_t tag = wanted;
    uint32_t lease_seq = 0;
    if (!plan_admission(l, index, current, wanted, amount, 1, 0, now, &desired, &tag, &lease_seq))
      return l.count_denial(Code::kDeniedOverBudget);
    const uint32_t stamp = meta_lane(current.meta);
    if (stamp != 0) l.help(stamp, word_location(index, parity), current);
    if (period_word_cas(word, current, desired)) return Code::kOk;
  }
}

// The same one-CAS debit for a root global account, while its word carries the epoch stamp of the
// lease it is admitted against (layout.hpp, LeaseWord): a debit that read a lease the sidecar has
// rewritten since fails its CAS, because the sidecar re-stamped the word after the rewrite, and an
// older epoch's stamp never comes back. The word is read before the lease (acquire loads, and a
// failed CAS is a full barrier), so a debit that sees the old lease saw a word from before the
// re-stamp. A word of an earlier period starts this one empty (a rollover, as in plan_admission).
// False: the word is not in this lease's epoch, no lease is valid, or another process's clock is in
// a later period: the lane path decides, re-checking the lease after its CAS.
static bool debit_root_global(Ledger::Impl& l, uint32_t index, int64_t amount, Code* result) {
  Account& account = l.accounts[index];
  const Now now = l.now();
  const uint32_t tag = l.current_tag(account, now);
  PeriodWord& word = account.words[tag_parity(tag)];
  PeriodWord current = period_word_guess(word);
  for (;;) {
    int64_t limit = 0;
    uint32_t seq = 0;
    if (!l.read_lease(index, tag, now.mono_ms, &limit, &seq)) return false;
    const uint32_t stamp = epoch_stamp(seq), found = meta_tag(current.meta);
    if (meta_lane(current.meta) != stamp) return false;
    PeriodWord base = current;
    if (found != tag) {
      if (tag_kind(found) == tag_kind(tag) && tag_index(found) > tag_index(tag)) return false;
      base = PeriodWord{0, 0};
    }
    int64_t used;
    if (__builtin_add_overflow(base.used, amount, &used) || used > limit) [[unlikely]] {
      l.note_lease_wanted(index, tag, amount);
      *result = l.count_denial(Code::kDeniedOverBudget);
      return true;
    }
    LEDGER_PAUSE_POINT();  // the lease read, the CAS not done (a test lowers the lease here)
    if (period_word_cas(word, current, PeriodWord{used, make_meta(meta_requests(base.meta) + 1, tag, stamp)})) {
      // The stamp has kEpochStamps values: a debit stalled across that many lowerings of its lease
      // could find its word again as it read it. The epoch it read is re-read (the CAS was a full
      // barrier); one that moved that far means this debit may have landed against a lease lowered
      // since, and it takes itself back.
      if (((load(l.leases[index].words[tag_parity(tag)].seq) - seq) >> 1) >= kEpochStamps) [[unlikely]] {
        l.undo_fast_debit(index, tag, amount);
        *result = l.count_denial(Code::kDeniedOverBudget);
        return true;
      }
      *result = Code::kOk;
      return true;
    }
  }
}

// Takes back a fast debit of a global account (see debit_root_global): a forced change of the same
// word, rolled forward once it is recorded (a charge's rule); a process that dies between its CAS
// and this record leaves the debit standing, the one window the epoch check cannot close.
void Ledger::Impl::undo_fast_debit(uint32_t index, uint32_t tag, int64_t amount) {
  OpScope op;
  if (!begin(&op, kOpCharge).ok()) return;
  TargetSpec spec{};
  spec.account = index;
  spec.tag = tag;
  spec.delta = -amount;
  spec.delta_requests = -1;
  spec.flags = kTargetUndo;
  write_spec(&op, 0, spec);
  store(op.lane->header.targets_expected, 1u);
  LEDGER_CRASH_POINT();
  (void)apply(&op, 0, spec, Now::unread(), nullptr, true);
  end(&op);
}

uint32_t Ledger::Impl::claim_reservation_slot(const OpScope& op, uint32_t* generation) {
  // Start where this lane's share of the table begins, so lanes rarely collide on a claim.
  const uint32_t start = static_cast<uint32_t>(uint64_t{op.lane_id - 1} * max_reservations / lanes_total());
  for (uint32_t i = 0; i < max_reservations; ++i) {
    const uint32_t r = (start + i) % max_reservations;
    uint64_t state = load(reservations[r].state, memory_order_relaxed);
    if (res_status(state) != kResFree) continue;
    const uint32_t g = res_generation(state) + 1 == 0 ? 1 : res_generation(state) + 1;
    if (compare_exchange(reservations[r].state, state, make_res_state(g, kResReserving, op.lane_id))) {
      *generation = g;
      return r;
    }
  }
  return claim_oldest_tombstone(op, generation);
}

// No free slot: tombstones must not starve live holds, so the oldest one makes room.
uint32_t Ledger::Impl::claim_oldest_tombstone(const OpScope& op, uint32_t* generation) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    uint32_t oldest = UINT32_MAX;
    uint64_t oldest_state = 0;
    int64_t oldest_deadline = INT64_MAX;
    for (uint32_t r = 0; r < max_reservations; ++r) {
      const uint64_t state = load(reservations[r].state, memory_order_relaxed);
      const int64_t deadline = load(reservations[r].deadline_ms, memory_order_relaxed);
      if (res_status(state) == kResExpired && deadline < oldest_deadline) {
        oldest = r;
        oldest_state = state;
        oldest_deadline = deadline;
      }
    }
    if (oldest == UINT32_MAX) return UINT32_MAX;
    // One CAS retires the tombstone and claims the slot under a new generation.
    const uint32_t g = res_generation(oldest_state) + 1 == 0 ? 1 : res_generation(oldest_state) + 1;
    if (compare_exchange(reservations[oldest].state, oldest_state, make_res_state(g, kResReserving, op.lane_id))) {
      boost::atomics::ipc_atomic_ref<uint64_t>(header->tombstones_dropped).fetch_add(1, memory_order_relaxed);
      *generation = g;
      return oldest;
    }
  }
  return UINT32_MAX;
}

bool Ledger::Impl::write_tally(OpScope* op, uint32_t j, uint32_t account, uint32_t kind, uint32_t id, int64_t amount,
                               int32_t requests, TargetSpec* spec) {
  const int32_t tally = tally_for(account, kind, id);
  if (tally < 0) {
    boost::atomics::ipc_atomic_ref<uint64_t>(header->tallies_dropped).fetch_add(1, memory_order_relaxed);
    return false;
  }
  *spec = TargetSpec{};
  spec->account = static_cast<uint32_t>(tally);
  spec->delta = amount;
  spec->delta_requests = requests;
  spec->flags = kTargetTally;
  write_spec(op, j, *spec);
  return true;
}

// The one-CAS paths: a root debit through no key, without rate limits (a global account also
// without a soft limit: its fast path knows only its lease). True when one of them decided.
static bool debit_fast(Ledger::Impl& l, const Chain& chain, int64_t amount, Code* result) {
  if (chain.depth != 1 || chain.key != 0 || (chain.flags & kRuleRate) != 0) return false;
  const uint32_t index = chain.accounts[0];
  if (load(l.accounts[index].global, memory_order_relaxed) == 0) {
    *result = debit_root(l, index, amount);
    return true;
  }
  return (chain.flags & kRuleSoft) == 0 && debit_root_global(l, index, amount, result);
}

Status Ledger::Impl::admit(uint32_t kind, uint32_t account, int64_t amount, uint32_t ttl_s, ReservationId* id,
                           uint32_t model, uint32_t key, uint32_t tokens) {
  if (amount < 0 || amount > kAmountNanoUsdMax || account >= max_accounts) return Code::kInvalidArgument;
  if (kind == kOpReserve && ttl_s > kTtlMaxSeconds) return Code::kInvalidArgument;
  Chain chain;
  if (const Code code = resolve_chain(*this, account, &chain); code != Code::kOk) return code;
  if (key != 0) chain.key = key;
  if (Code fast = Code::kOk; kind == kOpDebit && debit_fast(*this, chain, amount, &fast)) return fast;

  const Now now = this->now();
  OpScope op;
  Status status = begin(&op, kind);
  if (!status.ok()) return status;
  uint32_t slot = UINT32_MAX, generation = 0;
  if (kind == kOpReserve) {
    slot = claim_reservation_slot(op, &generation);
    LEDGER_CRASH_POINT();  // slot claimed, not yet recorded
    if (slot == UINT32_MAX) {
      end(&op);
      return Code::kFull;
    }
    store(op.lane->header.reservation_state_to, make_res_state(generation, kResReserving, op.lane_id), memory_order_relaxed);
    store(op.lane->header.reservation_slot, slot + 1, memory_order_release);
    LEDGER_CRASH_POINT();
  }
  // The recovery table (reclaim.cpp): a reserve's slot is in its lane before any level changes.
  LEDGER_CHECK(kind != kOpReserve || load(op.lane->header.reservation_slot, memory_order_relaxed) == slot + 1);
  Admitted admitted{};
  const Code denied = admit_levels(&op, chain, kind, amount, tokens, now, &admitted);
  if (denied != Code::kOk) {
    if (slot != UINT32_MAX) store(reservations[slot].state, make_res_state(generation, kResFree, 0));
    end(&op);
    return count_denial(denied);
  }
  if (kind == kOpDebit) {
    // The debit settles at once: its key tally is one more target of this op (rolled back with it).
    TargetSpec tally{};
    if (chain.key != 0 && write_tally(&op, kUndoBase, chain.accounts[0], kTallyKey, chain.key - 1, amount, 1, &tally))
      (void)apply(&op, kUndoBase, tally, now, nullptr, true);
    LEDGER_CRASH_POINT();  // tallied, not acknowledged
  } else {
    publish_hold(slot, generation, chain, admitted, amount, tokens, ttl_s, now, model);
    *id = make_reservation_id(slot, generation);
  }
  end(&op);
  return Code::kOk;
}

namespace {
// The admission spec of lane target j: a period word of level j (< kRateTargetBase), or the rate
// word of level j - kRateTargetBase (a request, its tokens, and a concurrent slot for a hold).
TargetSpec admission_spec(const Ledger::Impl& l, const Chain& chain, uint32_t j, uint32_t kind, int64_t amount, uint32_t tokens,
                          const Now& now) {
  TargetSpec spec{};
  spec.flags = kTargetAdmit;
  if (j < kRateTargetBase) {
    spec.account = chain.accounts[j];
    spec.tag = l.current_tag(l.accounts[chain.accounts[j]], now);
    spec.delta = amount;
    spec.delta_requests = kind == kOpDebit ? 1 : 0;
    return spec;
  }
  spec.account = chain.rates[j - kRateTargetBase] - 1;
  spec.tag = now.minute();
  spec.delta = tokens;
  spec.delta_requests = 1;
  spec.delta_extra = kind == kOpReserve ? 1 : 0;
  spec.flags |= kTargetRate;
  return spec;
}

// The undo of forward entry j (admitted into *tag): the same change negated, forced.
TargetSpec undo_spec(TargetSpec forward, uint32_t j, uint32_t tag) {
  const bool rate = (forward.flags & kTargetRate) != 0;
  forward.tag = tag;
  forward.delta = -forward.delta;
  forward.delta_requests = -forward.delta_requests;
  forward.delta_extra = rate ? -forward.delta_extra : 0;  // a rate word's concurrent slot; a level's has none
  forward.flags = kTargetUndo | (rate ? kTargetRate : 0u);
  forward.undo_of = j;
  return forward;
}
}  // namespace

// Applies the admission to the chain's rate words (first: a denial there touches no budget), then
// to each level's period word; on a denial, undoes what was applied (a concurrent request may have
// seen it: a spurious denial at worst, never an overspend).
Code Ledger::Impl::admit_levels(OpScope* op, const Chain& chain, uint32_t kind, int64_t amount, uint32_t tokens,
                                const Now& now, Admitted* out) {
  uint32_t order[2 * kChainDepthMax], n = 0;
  for (uint32_t i = 0; i < chain.depth; ++i)
    if (chain.rates[i] != 0) order[n++] = kRateTargetBase + i;
  const uint32_t rate_targets = n;
  for (uint32_t i = 0; i < chain.depth; ++i) order[n++] = i;
  TargetSpec specs[2 * kChainDepthMax];
  uint32_t applied = 0;
  Code denied = Code::kOk;
  for (; applied < n; ++applied) {
    const uint32_t j = order[applied];
    specs[applied] = admission_spec(*this, chain, j, kind, amount, tokens, now);
    bool landed = false;
    const Code code = apply(op, j, specs[applied], now, &out->tags[j], false, &landed);
    if (code == Code::kOk) continue;
    denied = j >= kRateTargetBase ? Code::kDeniedRate : j == 0 ? Code::kDeniedOverBudget : Code::kDeniedParentOverBudget;
    if (landed) ++applied;  // its CAS landed: undone below with the targets before it
    break;
  }
  if (denied == Code::kOk) {
    for (uint32_t k = 0; k < rate_targets; ++k) out->rate_levels |= 1u << (order[k] - kRateTargetBase);
    return Code::kOk;
  }
  for (uint32_t k = applied; k-- > 0;) {
    const uint32_t j = order[k];
    fetch_or(op->lane->header.ctl, uint64_t{1} << j);  // it landed; we are about to overwrite it
    (void)apply(op, kUndoBase + j, undo_spec(specs[k], j, out->tags[j]), now, nullptr, false);
    LEDGER_CRASH_POINT();
  }
  return denied;
}

// Fills the claimed slot and publishes it as a live hold.
void Ledger::Impl::publish_hold(uint32_t slot, uint32_t generation, const Chain& chain, const Admitted& admitted,
                                int64_t amount, uint32_t tokens, uint32_t ttl_s, const Now& now, uint32_t model) {
  Reservation& r = reservations[slot];
  store(r.amount_nanousd, amount, memory_order_relaxed);
  for (uint32_t i = 0; i < kChainDepthMax; ++i) {
    store(r.chain[i], i < chain.depth ? static_cast<int32_t>(chain.accounts[i]) : -1, memory_order_relaxed);
    store(r.tags[i], i < chain.depth ? admitted.tags[i] : 0u, memory_order_relaxed);
  }
  const uint32_t ttl = ttl_s != 0 ? ttl_s : std::clamp(load(header->default_ttl_s, memory_order_relaxed), 1u, kTtlMaxSeconds);
  store(r.deadline_ms, now.ms + int64_t{ttl} * 1000, memory_order_relaxed);
  store(r.owner_process, static_cast<uint16_t>(process_slot), memory_order_relaxed);
  store(r.model, static_cast<uint16_t>(model), memory_order_relaxed);
  store(r.owner_generation, process_generation, memory_order_relaxed);
  store(r.key, chain.key, memory_order_relaxed);
  store(r.rate_levels, admitted.rate_levels, memory_order_relaxed);
  // As admission counted them: tokens capped like a rate word's field, each level's own minute.
  store(r.rate_tokens, admitted.rate_levels != 0 ? static_cast<uint32_t>(std::min<uint64_t>(tokens, kRateTokenMax)) : 0u,
        memory_order_relaxed);
  for (uint32_t i = 0; i < kChainDepthMax; ++i)
    store(r.rate_minutes[i], (admitted.rate_levels >> i & 1u) != 0 ? admitted.tags[kRateTargetBase + i] : 0u, memory_order_relaxed);
  LEDGER_CRASH_POINT();  // levels applied, hold not yet published
  store(r.state, make_res_state(generation, kResHeld, 0));
  LEDGER_CRASH_POINT();  // published, op not ended, id not returned
}

// ---- settlement: commit, release, expire --------------------------------------------------------

namespace {
HoldView read_hold(const Reservation& r, uint32_t max_accounts) {
  HoldView v{};
  // A damaged amount must not feed signed arithmetic: holds are within [0, kAmountNanoUsdMax].
  v.amount = std::clamp<int64_t>(load(r.amount_nanousd, memory_order_relaxed), 0, kAmountNanoUsdMax);
  for (uint32_t i = 0; i < kChainDepthMax; ++i) {
    const int32_t a = load(r.chain[i], memory_order_relaxed);
    if (a < 0 || static_cast<uint32_t>(a) >= max_accounts) break;
    v.chain[v.depth] = static_cast<uint32_t>(a);
    v.tags[v.depth] = load(r.tags[i], memory_order_relaxed);
    ++v.depth;
  }
  return v;
}
}  // namespace

Status Ledger::Impl::settle(ReservationId id, bool commit, int64_t actual, int64_t tokens) {
  if (commit && (actual < 0 || actual > kAmountNanoUsdMax)) return Code::kInvalidArgument;
  const uint64_t slot_plus_one = id & 0xFFFFFFFFu;
  const uint32_t generation = static_cast<uint32_t>(id >> 32);
  if (slot_plus_one == 0 || slot_plus_one > max_reservations || generation == 0)
    return Code::kUnknownReservation;
  const uint32_t slot = static_cast<uint32_t>(slot_plus_one - 1);
  Reservation& r = reservations[slot];
  OpScope op;
  bool in_op = false;
  const auto done = [&](Code code) -> Status {
    if (in_op) end(&op);
    return code;
  };
  for (;;) {
    const uint64_t state = load(r.state);
    if (res_generation(state) != generation) return done(Code::kUnknownReservation);
    const uint32_t status = res_status(state);
    if (commit && status == kResSettling) {
      if (expiring(res_lane(state), slot)) {
        // The hold is being expired (TTL passed): this commit is a late commit of its tombstone, so
        // wait for the expiry to end rather than lose the cost. An expiry is a few CASes; one whose
        // reclaimer died is finished by repairing it, which this thread does itself when it can.
        (void)done(Code::kOk);
        in_op = false;
        wait_for_expiry(slot, state);
        continue;
      }
      // Not being expired, or no longer: an expiry that ended since `state` was read has moved the
      // slot (to a tombstone this commit must charge), so only an unmoved slot is "already settled".
      if (load(r.state) != state) continue;
    }
    if (status == kResFree || status == kResSettling) return done(Code::kAlreadySettled);
    if (status == kResReserving) return done(Code::kUnknownReservation);  // not issued yet: nobody can hold this id
    if (status == kResExpired && !commit) {
      // Releasing a tombstone: its hold is already gone; just retire it.
      uint64_t expected = state;
      if (compare_exchange(r.state, expected, make_res_state(generation, kResFree, 0))) return done(Code::kOk);
      continue;
    }
    if (!in_op) {
      Status s = begin(&op, commit ? kOpCommit : kOpRelease);
      if (!s.ok()) return s;
      in_op = true;
    }
    if (settle_hold(&op, slot, state, commit, actual, tokens)) return done(Code::kOk);
    (void)done(Code::kOk);  // somebody else moved first: decide again, in a fresh op
    in_op = false;
  }
}

// The forced targets that give a hold's rate words back, after specs[0, n): for each level it was
// counted at, its concurrent slot (unless an expiry gave it back already) and, in the minute it was
// counted in, the difference between its tokens then and `tokens` (< 0: unchanged).
uint32_t Ledger::Impl::rate_settlement(OpScope* op, const Reservation& r, const HoldView& hold, bool expired, int64_t tokens,
                                       TargetSpec* specs, uint32_t n) {
  const uint32_t levels = load(r.rate_levels, memory_order_relaxed);
  const int64_t counted = load(r.rate_tokens, memory_order_relaxed);
  for (uint32_t i = 0; i < hold.depth; ++i) {
    const uint32_t entry = load(accounts[hold.chain[i]].rules, memory_order_relaxed);  // assigned once, never changed
    if ((levels & (1u << i)) == 0 || entry == 0 || entry > rules_max) continue;
    specs[n] = TargetSpec{.account = entry - 1, .tag = load(r.rate_minutes[i], memory_order_relaxed),  // the minute this level counted it in
                          .delta = tokens >= 0 ? tokens - counted : 0, .delta_extra = expired ? 0 : -1, .delta_requests = 0,
                          .flags = kTargetRate, .undo_of = 0};
    if (specs[n].delta == 0 && specs[n].delta_extra == 0) continue;
    write_spec(op, n, specs[n]);
    ++n;
  }
  return n;
}

// One attempt to settle the hold in `state`: the specs of every target (all levels, then the
// per-model and per-key tallies of a commit, then its rate words: forced targets of the same op, so
// they land exactly when the commit does, also across a crash), then the claim of the slot, then
// the targets. tokens: the request's real tokens (commit_usage), 0 for a release, < 0 unknown.
bool Ledger::Impl::settle_hold(OpScope* op, uint32_t slot, uint64_t state, bool commit, int64_t actual, int64_t tokens) {
  Reservation& r = reservations[slot];
  const HoldView hold = read_hold(r, max_accounts);  // stable while held: only its settler writes it
  const bool expired = res_status(state) == kResExpired;
  const uint64_t settling = make_res_state(res_generation(state), kResSettling, op->lane_id);
  LaneHeader& h = op->lane->header;
  store(h.reservation_slot, slot + 1, memory_order_relaxed);
  store(h.reservation_state_from, state, memory_order_relaxed);
  store(h.reservation_state_to, settling, memory_order_relaxed);
  // The levels, at most a model and a key tally, the rate words; each entry is filled whole first.
  static_assert(2 * kChainDepthMax + 2 <= kTargetsMax);
  TargetSpec specs[2 * kChainDepthMax + 2];
  uint32_t n = 0;
  for (; n < hold.depth; ++n) {
    specs[n] = commit ? TargetSpec{.account = hold.chain[n], .tag = hold.tags[n], .delta = expired ? actual : actual - hold.amount,
                                   .delta_extra = actual, .delta_requests = 1, .flags = 0, .undo_of = 0}
                      : TargetSpec{.account = hold.chain[n], .tag = hold.tags[n], .delta = -hold.amount, .delta_extra = 0,
                                   .delta_requests = 0, .flags = 0, .undo_of = 0};
    write_spec(op, n, specs[n]);
  }
  if (commit && hold.depth > 0) {
    const uint32_t model = load(r.model, memory_order_relaxed), key = load(r.key, memory_order_relaxed);
    if (model != 0 && model <= kModelsMax && write_tally(op, n, hold.chain[0], kTallyModel, model - 1, actual, 1, &specs[n])) ++n;
    if (key != 0 && key <= key_mask + 1 && write_tally(op, n, hold.chain[0], kTallyKey, key - 1, actual, 1, &specs[n])) ++n;
  }
  n = rate_settlement(op, r, hold, expired, commit ? tokens : 0, specs, n);
  LEDGER_CHECK(op->n_targets == n);  // the recovery table: every spec written before the slot is claimed
  LEDGER_CRASH_POINT();  // specs written, slot not claimed
  uint64_t expected = state;
  if (!compare_exchange(r.state, expected, settling)) return false;
  LEDGER_CRASH_POINT();  // claimed, no level applied
  const Now now = Now::unread();
  for (uint32_t j = 0; j < n; ++j) (void)apply(op, j, specs[j], now, nullptr, true);
  LEDGER_CRASH_POINT();  // all levels applied, slot not freed
  store(r.state, make_res_state(res_generation(state), kResFree, 0));
  LEDGER_CRASH_POINT();
  return true;
}

Status Ledger::Impl::charge(uint32_t account, int64_t amount, uint32_t key) {
  if (amount < 0 || amount > kAmountNanoUsdMax || account >= max_accounts || key > key_mask + 1)
    return Code::kInvalidArgument;
  uint32_t chain[kChainDepthMax];
  uint32_t depth = 0;
  for (int32_t a = static_cast<int32_t>(account); a >= 0; a = load(accounts[a].parent, memory_order_relaxed)) {
    if (depth == kChainDepthMax || static_cast<uint32_t>(a) >= max_accounts) return Code::kInvalidArgument;
    if (load(accounts[a].live) == 0) return Code::kUnknownAccount;
    chain[depth++] = static_cast<uint32_t>(a);
  }
  const Now now = this->now();
  OpScope op;
  Status status = begin(&op, kOpCharge);
  if (!status.ok()) return status;
  // Every spec first (the levels, the key's tally, the adjustment's own tally that the next flush
  // journals), then the count that makes the op "decided": a reclaimer rolls it forward only when
  // all specs are there (before that, nothing was applied).
  TargetSpec specs[kTargetsMax]{};
  uint32_t n = 0;
  for (; n < depth; ++n) {
    specs[n].account = chain[n];
    specs[n].tag = current_tag(accounts[chain[n]], now);
    specs[n].delta = amount;
    specs[n].delta_extra = amount;
    write_spec(&op, n, specs[n]);
  }
  if (key != 0 && write_tally(&op, n, account, kTallyKey, key - 1, amount, 0, &specs[n])) ++n;
  if (write_tally(&op, n, account, kTallyAdjustment, key == 0 ? UINT32_MAX : key - 1, amount, 1, &specs[n])) ++n;
  LEDGER_CHECK(op.n_targets == n);  // the recovery table: targets_expected is raised after the last spec
  store(op.lane->header.targets_expected, n);
  LEDGER_CRASH_POINT();
  for (uint32_t j = 0; j < n; ++j) (void)apply(&op, j, specs[j], now, nullptr, true);
  end(&op);
  return Code::kOk;
}

bool Ledger::Impl::expiring(uint32_t lane_id, uint32_t slot) const {
  if (lane_id == 0 || lane_id > lanes_total()) return false;
  const LaneHeader& h = lane_by_id(lane_id).header;
  const uint64_t ctl = load(h.ctl);
  if (ctl_kind(ctl) != kOpExpire || load(h.reservation_slot, memory_order_relaxed) != slot + 1) return false;
  if (ctl_phase(ctl) == kPhaseActive) return true;
  if (ctl_phase(ctl) != kPhaseResolved) return false;
  // Resolved by a reclaimer: in progress while that reclaimer's repair of this op runs (the repair
  // moves the slot before it ends; a reclaimer that died is itself repaired, see repair_lane).
  const uint32_t resolver = ctl_resolver(ctl);
  if (resolver == 0 || resolver > lanes_total()) return false;
  const LaneHeader& r = lane_by_id(resolver).header;
  const uint64_t rctl = load(r.ctl);
  return ctl_phase(rctl) == kPhaseActive && ctl_kind(rctl) == kOpRepair &&
         load(r.repair_lane, memory_order_relaxed) == lane_id && load(r.repair_seq, memory_order_relaxed) == ctl_seq(ctl);
}

void Ledger::Impl::wait_for_expiry(uint32_t slot, uint64_t state) {
  const uint32_t lane = res_lane(state);
  const uint32_t expirer_slot = (lane - 1) / kLanesPerProcess;
  for (uint32_t spins = 0; load(reservations[slot].state) == state; ++spins) {
    if (spins < 64) continue;
    std::this_thread::yield();
    if (spins % 1024 != 0) continue;
    if (expirer_slot != process_slot && try_lock_byte(kSlotLockBase + expirer_slot)) {
      // Its process is gone (we got its lock byte): repair it, which rolls the expiry forward.
      unlock_byte(kSlotLockBase + expirer_slot);
      (void)reclaim_dead_processes();
    }
    // Nobody is at the expiry any more (it ended, or a repair resolved it without moving the slot,
    // as for a damaged segment): the caller decides again rather than wait for nothing.
    if (!expiring(lane, slot)) return;
  }
}

// Turns a held reservation into a tombstone: its hold leaves `used`, and a late commit will still
// charge the actual cost until the grace period ends.
Status Ledger::Impl::expire_hold(uint32_t slot, uint64_t state, int64_t now) {
  Reservation& r = reservations[slot];
  OpScope op;
  Status s = begin(&op, kOpExpire);
  if (!s.ok()) return s;
  const uint32_t generation = res_generation(state);
  const HoldView hold = read_hold(r, max_accounts);
  const uint64_t settling = make_res_state(generation, kResSettling, op.lane_id);
  const int64_t grace_end = now + int64_t{load(header->tombstone_grace_s, memory_order_relaxed)} * 1000;
  LaneHeader& h = op.lane->header;
  store(h.reservation_slot, slot + 1, memory_order_relaxed);
  store(h.reservation_state_from, state, memory_order_relaxed);
  store(h.reservation_state_to, settling, memory_order_relaxed);
  store(h.tombstone_deadline_ms, grace_end, memory_order_relaxed);
  TargetSpec specs[2 * kChainDepthMax]{};
  for (uint32_t i = 0; i < hold.depth; ++i) {
    specs[i].account = hold.chain[i];
    specs[i].tag = hold.tags[i];
    specs[i].delta = -hold.amount;
    write_spec(&op, i, specs[i]);
  }
  const uint32_t n = rate_settlement(&op, r, hold, false, -1, specs, hold.depth);  // its concurrent slots come back
  LEDGER_CHECK(op.n_targets == n);  // the recovery table: every spec written before the slot is claimed
  if (!compare_exchange(r.state, state, settling)) {
    end(&op);
    return Code::kAlreadySettled;
  }
  LEDGER_CRASH_POINT();
  LEDGER_PAUSE_POINT();  // claimed, nothing applied: a commit arriving now must wait, not be lost
  const Now clock = this->now();
  for (uint32_t i = 0; i < n; ++i) (void)apply(&op, i, specs[i], clock, nullptr, true);
  store(r.deadline_ms, grace_end, memory_order_relaxed);
  LEDGER_CRASH_POINT();
  store(r.state, make_res_state(generation, kResExpired, 0));
  end(&op);
  return Code::kOk;
}

int32_t Ledger::Impl::tally_for(uint32_t account, uint32_t kind, uint32_t id) {
  const uint64_t key = make_tally_key(account, kind, id);
  const uint32_t h = static_cast<uint32_t>((key * 0x9E3779B97F4A7C15ULL) >> 32);
  for (uint32_t probe = 0; probe < kTallyProbes; ++probe) {
    const uint32_t i = (h + probe) & tally_mask;
    uint64_t found = load(tallies[i].key);
    if (found == key) return static_cast<int32_t>(i);
    if (found == 0) {
      if (compare_exchange(tallies[i].key, found, key)) return static_cast<int32_t>(i);
      if (found == key) return static_cast<int32_t>(i);  // another thread claimed it for us
    }
  }
  return -1;
}

int64_t Ledger::Impl::held_in(uint32_t account, uint32_t tag) const {
  // Held and settling slots: a settlement claims its slot before it changes the period words, so a
  // settling hold is still in them; counting it keeps used - held from reading above what was
  // settled (it reads below for an instant after the settlement's CAS, never above).
  int64_t held = 0;
  for (uint32_t i = 0; i < max_reservations; ++i) {
    const Reservation& r = reservations[i];
    const uint32_t status = res_status(load(r.state));
    if (status != kResHeld && status != kResSettling) continue;
    for (uint32_t level = 0; level < kChainDepthMax; ++level) {
      if (load(r.chain[level], memory_order_relaxed) == static_cast<int32_t>(account) &&
          load(r.tags[level], memory_order_relaxed) == tag) {
        held = add_saturating(held, load(r.amount_nanousd, memory_order_relaxed));  // as balances() sums
        break;
      }
    }
  }
  return held;
}

#ifdef LEDGER_CRASH_POINTS
namespace detail {
std::atomic<int64_t> g_crash_countdown{0};
void crash_point() {
  if (g_crash_countdown.load(std::memory_order_relaxed) > 0 &&
      g_crash_countdown.fetch_sub(1, std::memory_order_relaxed) == 1)
    ::_exit(77);
}
std::atomic<void (*)()> g_pause_hook{nullptr};
void pause_point() {
  if (auto hook = g_pause_hook.exchange(nullptr, std::memory_order_relaxed)) hook();  // once
}
}  // namespace detail
#endif

}  // namespace ledger

#ifdef LEDGER_CRASH_POINTS
// Test-only entry point (the crash-point build is a static library linked by one test).
extern "C" void ledger_test_crash_after(int64_t points) {
  ledger::detail::g_crash_countdown.store(points, std::memory_order_relaxed);
}
// The next pause point reached calls hook (once).
extern "C" void ledger_test_pause_once(void (*hook)()) {
  ledger::detail::g_pause_hook.store(hook, std::memory_order_relaxed);
}
#endif
