// reclaim.cpp — finishing or undoing the work of dead processes, expiring holds.
//
// A dead lane's operation is resolved exactly once: the reclaimer writes its corrective targets into
// its own lane (kOpRepair, naming the dead lane and op seq), then claims the dead lane with a CAS of
// its ctl to kPhaseResolved/resolver, and only then applies the corrections. A reclaimer that dies
// after the claim is itself repaired later: its claim is proven by the dead lane's ctl, so its
// corrections are rolled forward; one that dies before the claim left nothing to undo.
// Process slots are reclaimed only while holding their lock byte, so two reclaimers never work on
// the same dead process, and a reclaimer's own death releases that lock.
#include <algorithm>
#include <vector>

#include "check.hpp"
#include "impl.hpp"

namespace ledger {

using namespace detail;

bool Ledger::Impl::entry_landed(const Lane& lane, uint32_t seq, uint32_t j) const {
  const Target& t = lane.targets[j];
  if (load(t.seq) != seq) return false;
  const uint64_t location = load(t.location, memory_order_relaxed);
  if (location == 0) return false;
  PeriodWord* word = word_at(location);
  if (word == nullptr) return false;
  const PeriodWord current = period_word_load(*word);
  if (current.used == load(t.new_used, memory_order_relaxed) &&
      current.meta == load(t.new_meta, memory_order_relaxed))
    return true;
  // Read the word first, then the bit: an overwriter sets the bit before it overwrites.
  const uint64_t ctl = load(lane.header.ctl);
  return ctl_seq(ctl) == seq && applied_bit(lane, ctl, j);
}

namespace {
TargetSpec spec_of(const Target& t) {
  TargetSpec spec{};
  spec.account = load(t.account, memory_order_relaxed);
  spec.tag = load(t.tag, memory_order_relaxed);
  spec.delta = load(t.delta, memory_order_relaxed);
  spec.delta_extra = load(t.delta_extra, memory_order_relaxed);
  spec.delta_requests = load(t.delta_requests, memory_order_relaxed);
  spec.flags = load(t.flags, memory_order_relaxed);
  spec.undo_of = load(t.undo_of, memory_order_relaxed);
  return spec;
}
}  // namespace

// The corrections that roll back a dead admission: undo every landed target (a level's period word
// or a rate word) whose undo did not land, and every landed tally of a debit (a debit's tallies sit
// where a denial's undo entries would).
uint32_t Ledger::Impl::admission_rollback(const Lane& lane, uint32_t seq, uint32_t n, TargetSpec* fixes) const {
  uint32_t n_fixes = 0;
  const auto undo_of = [](TargetSpec spec, uint32_t j, uint32_t flags) {
    const bool rate = (spec.flags & kTargetRate) != 0;
    spec.delta = -spec.delta;
    spec.delta_requests = -spec.delta_requests;
    spec.delta_extra = rate ? -spec.delta_extra : 0;  // a rate word's concurrent slot
    spec.flags = flags | (rate ? kTargetRate : 0u);
    spec.undo_of = j;
    return spec;
  };
  for (uint32_t j = 0; j < n; ++j) {
    const Target& t = lane.targets[j];
    if (load(t.seq) != seq) continue;
    const uint32_t flags = load(t.flags, memory_order_relaxed);
    const bool level = j < kUndoBase && (flags & kTargetAdmit) != 0;
    const bool tally = j >= kUndoBase && (flags & kTargetTally) != 0 && (flags & kTargetUndo) == 0;
    if ((!level && !tally) || !entry_landed(lane, seq, j)) continue;
    if (level) {
      const uint32_t u = kUndoBase + j;  // where a denial put this target's undo
      const Target& undo = lane.targets[u];
      const bool undone = u < n && load(undo.seq) == seq && (load(undo.flags, memory_order_relaxed) & kTargetUndo) != 0 &&
                          load(undo.undo_of, memory_order_relaxed) == j && entry_landed(lane, seq, u);
      if (undone) continue;
      fixes[n_fixes++] = undo_of(spec_of(t), j, kTargetUndo);
    } else {
      fixes[n_fixes++] = undo_of(spec_of(t), j, kTargetTally | kTargetUndo);
    }
  }
  return n_fixes;
}

// ---- recovering a dead lane's operation -------------------------------------------------------------
//
// How each kind of operation is recovered when its process died between two of its instructions.
// This table is the crash proof's one description: the writers in engine.cpp keep to its order
// (each checks it with LEDGER_CHECK where it takes the step the proof relies on), and repair_lane
// uses it to decide.
//
//   kind     direction  decided (forward) / complete (back)                 reservation slot
//   debit    back       never: a debit not acknowledged is undone            -
//   reserve  back       complete once its slot left RESERVING (published)    RESERVING -> FREE
//   commit   forward    its slot is in the SETTLING state it claimed,        SETTLING -> FREE
//   release  forward      which it claims only after every spec is written   SETTLING -> FREE
//   expire   forward    the same                                             SETTLING -> EXPIRED
//   charge   forward    targets_expected == n_targets: all specs written     -
//   repair   forward    the dead lane it names is RESOLVED by it              as the repair recorded
//
// Back: every landed forward target whose undo did not land is undone (admission_rollback).
// Forward: every target that did not land is applied, forced (roll_forward). "Landed" is decided
// by entry_landed: the word still holds the entry's value, or its applied bit is set.
namespace {
struct DeadOp {
  uint64_t ctl = 0;
  uint32_t seq = 0, kind = 0, n = 0, slot_plus_one = 0;
  uint64_t claimed = 0;  // the reservation state the op moved its slot to (reservation_state_to)
  Reservation* res = nullptr;
  uint64_t res_state = 0;
};
}  // namespace

struct Ledger::Impl::RepairPlan {
  TargetSpec fixes[kTargetsMax]{};
  uint32_t n_fixes = 0;
  uint64_t res_from = 0, res_to = 0;  // the slot's transition (both 0: none)
  int64_t tombstone_deadline = 0;
};

void Ledger::Impl::roll_forward(const Lane& lane, uint32_t seq, uint32_t n, RepairPlan* plan) const {
  // Entries below n_targets have a complete spec (it is written before n_targets is raised and
  // never changes within the op); only the attempt part is seqlock-guarded. An entry whose attempt
  // was being rewritten (seq 0) has not landed: roll it forward like any other.
  for (uint32_t j = 0; j < n; ++j) {
    if (entry_landed(lane, seq, j)) continue;
    TargetSpec fix = spec_of(lane.targets[j]);
    fix.flags &= ~kTargetAdmit;  // roll forward: forced
    plan->fixes[plan->n_fixes++] = fix;
  }
}

// debit, reserve: an admission never acknowledged is rolled back, unless a reserve already left
// RESERVING (then it is complete, and its hold expires like any hold of a dead owner). Only the
// dead lane moves its slot out of RESERVING (to HELD, or to FREE after undoing a denial), so a slot
// in any other state or generation means just that: the hold may since have been expired,
// committed, dropped and even reused, and rolling back then would take its amount off twice.
static void plan_admission_repair(const Ledger::Impl& l, const Lane& lane, const DeadOp& d, Ledger::Impl::RepairPlan* plan) {
  const bool complete = d.kind == kOpReserve && d.res != nullptr &&
                        (res_generation(d.res_state) != res_generation(d.claimed) || res_status(d.res_state) != kResReserving);
  if (complete) return;
  plan->n_fixes = l.admission_rollback(lane, d.seq, d.n, plan->fixes);
  if (d.res != nullptr && d.res_state == d.claimed && res_status(d.claimed) == kResReserving) {
    plan->res_from = d.claimed;
    plan->res_to = make_res_state(res_generation(d.claimed), kResFree, 0);
  }
}

// commit, release, expire: decided once the slot is in the SETTLING state the op claimed.
static void plan_settlement_repair(const Ledger::Impl& l, const Lane& lane, const DeadOp& d, Ledger::Impl::RepairPlan* plan) {
  if (d.kind == kOpExpire) plan->tombstone_deadline = load(lane.header.tombstone_deadline_ms, memory_order_relaxed);
  if (d.res == nullptr || d.res_state != d.claimed) return;
  plan->res_from = d.claimed;
  plan->res_to = make_res_state(res_generation(d.claimed), d.kind == kOpExpire ? kResExpired : kResFree, 0);
  l.roll_forward(lane, d.seq, d.n, plan);
}

// charge: decided once every spec was written (targets_expected, raised after the last spec).
static void plan_charge_repair(const Ledger::Impl& l, const Lane& lane, const DeadOp& d, Ledger::Impl::RepairPlan* plan) {
  const uint32_t expected = load(lane.header.targets_expected, memory_order_relaxed);
  if (expected != 0 && expected == d.n) l.roll_forward(lane, d.seq, d.n, plan);
}

// repair: decided once the dead lane it names is RESOLVED by it (its claim landed).
static void plan_repair_repair(const Ledger::Impl& l, const Lane& lane, uint32_t dead, const DeadOp& d,
                               Ledger::Impl::RepairPlan* plan) {
  plan->tombstone_deadline = load(lane.header.tombstone_deadline_ms, memory_order_relaxed);
  const uint32_t target_lane = load(lane.header.repair_lane, memory_order_relaxed);
  const uint32_t target_seq = load(lane.header.repair_seq, memory_order_relaxed);
  if (target_lane < 1 || target_lane > l.lanes_total()) return;
  const uint64_t tctl = load(l.lane_by_id(target_lane).header.ctl);
  if (ctl_phase(tctl) != kPhaseResolved || ctl_seq(tctl) != target_seq || ctl_resolver(tctl) != dead) return;
  if (d.res != nullptr) {
    const uint64_t from = load(lane.header.reservation_state_from, memory_order_relaxed);
    if (d.res_state == from) {
      plan->res_from = from;
      plan->res_to = d.claimed;
    }
  }
  l.roll_forward(lane, d.seq, d.n, plan);
}

// The corrections for the dead lane's operation, by the table above (an unknown kind: none).
void Ledger::Impl::plan_repair(const Lane& lane, uint32_t dead, uint64_t ctl, RepairPlan* plan, uint32_t* slot_plus_one) const {
  DeadOp d;
  d.ctl = ctl;
  d.seq = ctl_seq(ctl);
  d.kind = ctl_kind(ctl);
  d.n = std::min(load(lane.header.n_targets), kTargetsMax);
  d.slot_plus_one = load(lane.header.reservation_slot, memory_order_relaxed);
  d.claimed = load(lane.header.reservation_state_to, memory_order_relaxed);
  d.res = d.slot_plus_one != 0 && d.slot_plus_one <= max_reservations ? &reservations[d.slot_plus_one - 1] : nullptr;
  d.res_state = d.res != nullptr ? load(d.res->state) : 0;
  *slot_plus_one = d.slot_plus_one;
  switch (d.kind) {
    case kOpDebit:
    case kOpReserve: return plan_admission_repair(*this, lane, d, plan);
    case kOpCommit:
    case kOpRelease:
    case kOpExpire: return plan_settlement_repair(*this, lane, d, plan);
    case kOpCharge: return plan_charge_repair(*this, lane, d, plan);
    case kOpRepair: return plan_repair_repair(*this, lane, dead, d, plan);
    default: return;  // a damaged kind: nothing to decide, only the claim (the lane is freed)
  }
}

// A dead lane RESOLVED by another lane: is that resolver still applying its corrections (it died
// too)? Then it is repaired first, under its own process's lock byte.
Ledger::Impl::Repair Ledger::Impl::repair_resolver(uint32_t dead, uint64_t ctl, OpScope* op, int depth, uint32_t held_slot) {
  const uint32_t resolver = ctl_resolver(ctl);
  if (resolver == 0 || resolver > lanes_total()) return Repair::kDone;
  Lane& r = lane_by_id(resolver);
  const uint64_t rctl = load(r.header.ctl);
  if (ctl_phase(rctl) != kPhaseActive || ctl_kind(rctl) != kOpRepair || load(r.header.repair_lane, memory_order_relaxed) != dead ||
      load(r.header.repair_seq, memory_order_relaxed) != ctl_seq(ctl))
    return Repair::kDone;
  const uint32_t rslot = (resolver - 1) / kLanesPerProcess;
  if (rslot == process_slot) return Repair::kBusy;  // another thread of ours is at it
  if (rslot == held_slot) return repair_lane(resolver, op, depth + 1, held_slot);
  if (!try_lock_byte(kSlotLockBase + rslot)) return Repair::kBusy;  // alive: it will finish
  const Repair result = repair_lane(resolver, op, depth + 1, rslot);
  unlock_byte(kSlotLockBase + rslot);
  return result;
}

// Records the corrections in our lane, claims the dead lane (false: a helper set a bit meanwhile,
// so decide again), then applies them and moves the slot.
bool Ledger::Impl::apply_repair(OpScope* op, Lane& lane, uint32_t dead, uint64_t ctl, const RepairPlan& plan, uint32_t slot_plus_one) {
  start(op, kOpRepair);
  LaneHeader& h = op->lane->header;
  const bool moves_slot = plan.res_from != 0 || plan.res_to != 0;
  store(h.repair_lane, dead, memory_order_relaxed);
  store(h.repair_seq, ctl_seq(ctl), memory_order_relaxed);
  store(h.reservation_slot, moves_slot ? slot_plus_one : 0u, memory_order_relaxed);
  store(h.reservation_state_from, plan.res_from, memory_order_relaxed);
  store(h.reservation_state_to, plan.res_to, memory_order_relaxed);
  store(h.tombstone_deadline_ms, plan.tombstone_deadline, memory_order_relaxed);
  for (uint32_t j = 0; j < plan.n_fixes; ++j) write_spec(op, j, plan.fixes[j]);
  LEDGER_CHECK(op->n_targets == plan.n_fixes);  // the proof of a repair: every correction recorded before the claim
  LEDGER_CRASH_POINT();  // corrections recorded, dead lane not claimed
  uint64_t expected = ctl;
  if (!compare_exchange(lane.header.ctl, expected, make_ctl(ctl_seq(ctl), kPhaseResolved, ctl_kind(ctl), op->lane_id, ctl_bits(ctl)))) {
    finish(op);
    return false;
  }
  LEDGER_CRASH_POINT();  // claimed, nothing applied
  const Now now = this->now();
  for (uint32_t j = 0; j < plan.n_fixes; ++j) (void)apply(op, j, plan.fixes[j], now, nullptr, true);
  LEDGER_CRASH_POINT();
  if (moves_slot && slot_plus_one != 0 && slot_plus_one <= max_reservations) {
    Reservation& res = reservations[slot_plus_one - 1];
    if (res_status(plan.res_to) == kResExpired) store(res.deadline_ms, plan.tombstone_deadline, memory_order_relaxed);
    uint64_t from = plan.res_from;
    (void)compare_exchange(res.state, from, plan.res_to);
  }
  finish(op);
  return true;
}

Ledger::Impl::Repair Ledger::Impl::repair_lane(uint32_t dead, OpScope* op, int depth, uint32_t held_slot) {
  if (depth > 4) return Repair::kBusy;  // a chain of dead resolvers this long: try again later
  Lane& lane = lane_by_id(dead);
  for (int attempt = 0; attempt < 64; ++attempt) {
    const uint64_t ctl = load(lane.header.ctl);
    if (ctl_phase(ctl) == kPhaseResolved) return repair_resolver(dead, ctl, op, depth, held_slot);
    if (ctl_phase(ctl) != kPhaseActive) return Repair::kDone;
    RepairPlan plan;
    uint32_t slot_plus_one = 0;
    plan_repair(lane, dead, ctl, &plan, &slot_plus_one);
    if (apply_repair(op, lane, dead, ctl, plan, slot_plus_one)) return Repair::kDone;
  }
  return Repair::kBusy;
}

bool Ledger::Impl::reclaim_dead_process(uint32_t slot, OpScope* op) {
  OpScope borrowed;
  if (op == nullptr) {
    // Registration adopting a dead slot: do the repairs on one of its own idle lanes.
    for (uint32_t k = 0; k < kLanesPerProcess && op == nullptr; ++k) {
      const uint32_t id = slot * kLanesPerProcess + k + 1;
      const uint64_t ctl = load(lane_by_id(id).header.ctl);
      if (ctl_phase(ctl) != kPhaseActive) {
        borrowed.lane_id = id;
        borrowed.lane = &lane_by_id(id);
        borrowed.seq = ctl_seq(ctl);
        op = &borrowed;
      }
    }
    if (op == nullptr) return false;
  }
  for (uint32_t k = 0; k < kLanesPerProcess; ++k) {
    const uint32_t id = slot * kLanesPerProcess + k + 1;
    if (id == op->lane_id) continue;
    if (repair_lane(id, op, 0, slot) != Repair::kDone) return false;
  }
  // Reservations a dead lane had claimed but not yet recorded in its intent.
  const uint32_t first = slot * kLanesPerProcess + 1, last = first + kLanesPerProcess - 1;
  for (uint32_t r = 0; r < max_reservations; ++r) {
    uint64_t state = load(reservations[r].state, memory_order_relaxed);
    if (res_status(state) == kResReserving && res_lane(state) >= first && res_lane(state) <= last &&
        res_lane(state) != op->lane_id)
      (void)compare_exchange(reservations[r].state, state,
                             make_res_state(res_generation(state), kResFree, 0));
  }
  // The dead owner's lanes hold no operation now: free the ones it (or we) left owned.
  for (uint32_t k = 0; k < kLanesPerProcess; ++k) {
    LaneHeader& h = lane_by_id(slot * kLanesPerProcess + k + 1).header;
    uint64_t ctl = load(h.ctl);
    if (ctl_phase(ctl) == kPhaseOwned)
      (void)compare_exchange(h.ctl, ctl, make_ctl(ctl_seq(ctl), kPhaseIdle, kOpNone, 0, 0));
  }
  const uint64_t state = load(processes[slot].state);
  store(processes[slot].state, make_proc_state(proc_generation(state) + 1, kProcFree));
  return true;
}

bool Ledger::Impl::lanes_idle(uint32_t slot) const {
  for (uint32_t k = 0; k < kLanesPerProcess; ++k) {
    const uint32_t phase = ctl_phase(load(lanes[slot * kLanesPerProcess + k].header.ctl));
    if (phase == kPhaseActive || phase == kPhaseOwned) return false;
  }
  return true;
}

bool Ledger::Impl::process_alive_for(uint32_t owner_slot, uint32_t owner_generation) const {
  if (owner_slot >= process_slots) return false;
  const uint64_t state = load(processes[owner_slot].state);
  return proc_status(state) == kProcActive && proc_generation(state) == owner_generation;
}

Status Ledger::Impl::reclaim_dead_processes() {
  OpScope op;
  Status status = claim_lane(&op);
  if (!status.ok()) return status;
  // A dead owner's slot; or a free slot whose lanes are busy, which no process can have left (a
  // damaged segment), repaired alike so that nothing waits for its lanes.
  const auto needs_repair = [&](uint32_t slot) {
    return proc_status(load(processes[slot].state)) == kProcActive || !lanes_idle(slot);
  };
  for (uint32_t slot = 0; slot < process_slots; ++slot) {
    if (slot == process_slot || !needs_repair(slot)) continue;
    if (!try_lock_byte(kSlotLockBase + slot)) continue;  // alive (or being reclaimed)
    if (needs_repair(slot)) (void)reclaim_dead_process(slot, &op);
    unlock_byte(kSlotLockBase + slot);
  }
  free_lane(&op);
  return Code::kOk;
}

Status Ledger::reclaim(uint32_t* reclaimed_holds) {
  Impl& l = *impl_;
  uint32_t reclaimed = 0;
  if (Status status = l.reclaim_dead_processes(); !status.ok()) return status;
  const int64_t now = l.now_ms();
  for (uint32_t r = 0; r < l.max_reservations; ++r) {
    Reservation& res = l.reservations[r];
    const uint64_t state = load(res.state);
    if (res_status(state) != kResHeld) continue;
    const bool expired = load(res.deadline_ms, memory_order_relaxed) <= now;
    if (expired || !l.process_alive_for(load(res.owner_process, memory_order_relaxed),
                                        load(res.owner_generation, memory_order_relaxed))) {
      if (l.expire_hold(r, state, now).ok()) ++reclaimed;
    }
  }
  l.drop_tombstones(now);
  if (reclaimed_holds != nullptr) *reclaimed_holds = reclaimed;
  return Code::kOk;
}

bool Ledger::Impl::drop_tombstone(uint32_t slot, uint64_t state) {
  // A new generation, so that a late commit of the dropped tombstone is told "unknown reservation"
  // rather than "already settled": it was never settled, it was given up.
  const uint32_t generation = res_generation(state) + 1 == 0 ? 1 : res_generation(state) + 1;
  return compare_exchange(reservations[slot].state, state, make_res_state(generation, kResFree, 0));
}

void Ledger::Impl::drop_tombstones(int64_t now) {
  std::vector<std::pair<int64_t, uint32_t>> kept;  // (grace end, slot) of tombstones still in grace
  for (uint32_t r = 0; r < max_reservations; ++r) {
    const uint64_t state = load(reservations[r].state);
    if (res_status(state) != kResExpired) continue;
    const int64_t grace_end = load(reservations[r].deadline_ms, memory_order_relaxed);
    if (grace_end <= now) (void)drop_tombstone(r, state);
    else kept.emplace_back(grace_end, r);
  }
  const size_t max = load(header->tombstones_max, memory_order_relaxed);
  if (kept.size() <= max) return;
  // Over the bound: the oldest go first.
  const size_t excess = kept.size() - max;
  std::nth_element(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(excess - 1), kept.end());
  for (size_t i = 0; i < excess; ++i) {
    const uint32_t r = kept[i].second;
    const uint64_t state = load(reservations[r].state);
    if (res_status(state) == kResExpired && drop_tombstone(r, state))
      boost::atomics::ipc_atomic_ref<uint64_t>(header->tombstones_dropped).fetch_add(1, memory_order_relaxed);
  }
}

}  // namespace ledger
