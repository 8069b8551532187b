// simulation.hpp — a seeded, replayable simulation of the ledger (TigerBeetle's habit): from a seed,
// a random sequence of operations on a small ledger of 4-level chains (debit, reserve, commit,
// release, adjust, reclaim, limit changes, clock jumps across day, week and month boundaries through
// the injected clock, and children killed at a chosen crash point of an operation, with the
// crash-point build of libledger) runs against the ledger and against simulation_model.hpp. After
// every step, exactly: each account's spent, held, requests and limit against the model; each
// parent's spent = its children's + its own (where they share a period kind); live holds and
// tombstones in the segment against the model (no hold leaked, no slot lost). An acknowledged commit
// or debit is in the model, so one lost or counted twice is a difference.
//
// A crashed child's operation is all-or-nothing after the reclaim that follows it: a crashed debit
// or reserve is rolled back (a reserve whose hold was published is expired instead: its process is
// dead), a crashed commit or release is retried by the parent (kOk: it had not started; "already
// settled": it was rolled forward), a crashed adjustment has landed on every level or on none.
// Everything is decided by the seed; a failure names the seed and the step, and LEDGER_SIM_SEED
// reruns exactly that sequence.
#pragma once

#include <catch2/catch.hpp>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>

#include "crash_points.hpp"
#include "simulation_model.hpp"
#include "test_util.hpp"

namespace ledger_sim {

using ledger::Ledger;
using ledger::ReservationId;

inline constexpr uint32_t kDefaultTtlS = 120;
inline constexpr uint32_t kGraceS = 900;
inline constexpr int64_t kCrashPointChosenMax = 30;  // a child dies at a point up to this (or completes)
inline constexpr size_t kSettledHoldsKept = 64;      // for second settlements
inline constexpr size_t kHoldsMax = 100;             // live + tombstones, below the segment's bounds

struct AccountSpec {
  const char* name;
  int parent;
  Period period;
  int64_t limit_nanousd;
};
// Two chains under org: team_a (daily, both children daily: parent = children + own is exact in
// every period) and the 4-level team_b -> carol (lifetime) -> dave; and solo, a root (the one-CAS debit).
inline constexpr AccountSpec kAccountSpecs[] = {
    {"org", -1, Period::kMonthly, 12'000},
    {"team_a", 0, Period::kDaily, 4'000},
    {"alice", 1, Period::kDaily, 1'500},
    {"bob", 1, Period::kDaily, 1'500},
    {"team_b", 0, Period::kWeekly, 6'000},
    {"carol", 4, Period::kNone, 3'000},
    {"dave", 5, Period::kDaily, 1'000},
    {"solo", -1, Period::kDaily, 800},
};

// What a run went through, so that a test can insist it saw the interesting cases.
struct Coverage {
  int64_t steps = 0, denials = 0, crashed = 0, completed_in_child = 0, late_commits = 0, rolled_forward = 0;
  int64_t expired = 0, dropped = 0, period_changes = 0, second_settlements = 0;
  int64_t split_commits = 0;  // see Model::split
};

enum class OpKind { kDebit,
                    kReserve,
                    kCommit,
                    kRelease,
                    kAdjust,
                    kReclaim,
                    kClock,
                    kSetLimit,
                    kCrash };

struct Op {
  OpKind kind = OpKind::kReclaim;
  OpKind child = OpKind::kDebit;  // kCrash: what the child does before it dies at crash_point
  int account = 0;
  int64_t amount = 0;  // debit, reserve, adjust; kSetLimit: the new limit; kCommit: the actual cost
  uint32_t ttl_s = 0;
  size_t hold = 0;  // kCommit, kRelease: an index into the model's holds
  int64_t crash_point = 0;
  int64_t clock_ms = 0;
  std::string text;  // what it is, for failure messages
};

class Simulation {
 public:
  explicit Simulation(uint64_t seed) : seed_(seed), rng_(seed) {
    clock_.now_ms = ledger_test::utc(2026, 1, 30, 21) * 1000 + static_cast<int64_t>(rng_() % (48 * 3'600'000));
    options_.clock = clock_.clock();
    options_.default_ttl_s = kDefaultTtlS;
    options_.tombstone_grace_s = kGraceS;
    options_.limits.max_accounts = 16;
    options_.limits.max_reservations = 256;
    options_.limits.max_processes = 8;
    REQUIRE(Ledger::open(dir_.path(), options_, &ledger_) == Code::kOk);
    for (const AccountSpec& spec : kAccountSpecs) {
      const std::string parent = spec.parent < 0 ? "" : kAccountSpecs[spec.parent].name;
      REQUIRE(ledger_->set_budget(spec.name, spec.limit_nanousd, spec.period, parent) == Code::kOk);
      model_.add_account(spec.name, spec.parent, spec.period, spec.limit_nanousd);
    }
  }

  const Coverage& coverage() const { return coverage_; }

  void run(int64_t steps) {
    for (int64_t step = 1; step <= steps; ++step) {
      const Op op = next_op();
      INFO("simulation seed " << seed_ << ", step " << step << " of " << steps << ": " << op.text
                              << "\nreplay: LEDGER_SIM_SEED=" << seed_ << " (LEDGER_SIM_STEPS=" << step
                              << " stops at this step)\nthe steps before it:\n"
                              << recent());
      apply(op);
      check();
      ++coverage_.steps;
      remember(op.text);
      model_.forget_settled(kSettledHoldsKept);
    }
  }

 private:
  // ---- the random sequence ----------------------------------------------------------------
  uint64_t pick(uint64_t n) { return rng_() % n; }
  int64_t between(int64_t low, int64_t high) { return low + static_cast<int64_t>(pick(static_cast<uint64_t>(high - low + 1))); }
  const std::string& name(int account) const { return model_.accounts()[account].name; }
  int64_t now() const { return clock_.now_ms; }

  Op next_op() {
    Op op;
    op.account = static_cast<int>(pick(std::size(kAccountSpecs)));
    op.amount = pick(8) == 0 ? 0 : between(1, 700);
    const uint64_t r = pick(100);
    if (r < 18) op.kind = OpKind::kDebit;
    else if (r < 36) op.kind = OpKind::kReserve;
    else if (r < 48) op.kind = OpKind::kCommit;
    else if (r < 55) op.kind = OpKind::kRelease;
    else if (r < 58) op.kind = OpKind::kAdjust;
    else if (r < 66) op.kind = OpKind::kReclaim;
    else if (r < 76) op.kind = OpKind::kClock;
    else if (r < 80) op.kind = OpKind::kSetLimit;
    else op.kind = OpKind::kCrash;
    if (op.kind == OpKind::kReserve && open_holds() >= kHoldsMax) op.kind = OpKind::kReclaim;
    op.ttl_s = pick(4) == 0 ? 0 : static_cast<uint32_t>(between(1, 300));
    if ((op.kind == OpKind::kCommit || op.kind == OpKind::kRelease) && !choose_hold(&op, false)) op.kind = OpKind::kReclaim;
    if (op.kind == OpKind::kAdjust) op.amount = between(1, 300);
    if (op.kind == OpKind::kSetLimit) op.amount = kAccountSpecs[op.account].limit_nanousd / 2 + between(0, kAccountSpecs[op.account].limit_nanousd);
    if (op.kind == OpKind::kClock) op.clock_ms = clock_step();
    if (op.kind == OpKind::kCrash) choose_crash(&op);
    describe(&op);
    return op;
  }
  size_t open_holds() const { return model_.count(HoldState::kLive) + model_.count(HoldState::kTombstone); }
  // A hold of the model (any state; mostly live ones and tombstones) for a commit or a release, or
  // with `live_only` a parent-owned live hold not yet due (for a child to settle); op->amount
  // becomes a commit's actual cost. False when there is none.
  bool choose_hold(Op* op, bool live_only) {
    std::vector<size_t> candidates, preferred;
    for (size_t i = 0; i < model_.holds().size(); ++i) {
      const ModelHold& h = model_.holds()[i];
      if (h.id == 0 || (live_only && (h.state != HoldState::kLive || h.deadline_ms <= now()))) continue;
      candidates.push_back(i);
      if (h.state == HoldState::kLive || h.state == HoldState::kTombstone) preferred.push_back(i);
    }
    const std::vector<size_t>& from = !preferred.empty() && pick(5) != 0 ? preferred : candidates;
    if (from.empty()) return false;
    op->hold = from[pick(from.size())];
    op->amount = between(0, 2 * model_.holds()[op->hold].amount_nanousd + 10);
    return true;
  }
  int64_t clock_step() {
    const uint64_t r = pick(10);
    if (r < 5) return between(1, 30'000);              // seconds: holds reach their TTL
    if (r < 8) return between(60'000, 6 * 3'600'000);  // minutes to hours: tombstones age out
    const int64_t day_ms = 86'400'000;                 // just past a UTC midnight, some days on
    const int64_t next_midnight = (now() / day_ms + 1 + (pick(4) == 0 ? between(0, 40) : 0)) * day_ms;
    return next_midnight + between(0, 3'000) - now();
  }
  // What a child does before it dies at a chosen crash point. An admission only where the model
  // can tell its outcome (see Model::stale_word_in_use); a settlement of a parent's live hold; else
  // a reclaimer, always well defined.
  void choose_crash(Op* op) {
    constexpr OpKind kChildOps[] = {OpKind::kDebit, OpKind::kReserve, OpKind::kCommit, OpKind::kRelease, OpKind::kAdjust, OpKind::kReclaim};
    op->child = kChildOps[pick(std::size(kChildOps))];
    op->crash_point = between(1, pick(4) == 0 ? kCrashPointChosenMax : 8);  // most operations have a few points
    if (op->child == OpKind::kAdjust) op->amount = between(1, 300);
    const bool admission = op->child == OpKind::kDebit || op->child == OpKind::kReserve;
    const bool settlement = op->child == OpKind::kCommit || op->child == OpKind::kRelease;
    if ((admission && model_.stale_word_in_use(op->account, now())) || (op->child == OpKind::kReserve && open_holds() >= kHoldsMax) ||
        (settlement && !choose_hold(op, true)))
      op->child = OpKind::kReclaim;
  }
  void describe(Op* op) const {
    static constexpr const char* kNames[] = {"debit", "reserve", "commit", "release", "adjust", "reclaim", "clock", "set_budget", "crash"};
    std::ostringstream text;
    const OpKind what = op->kind == OpKind::kCrash ? op->child : op->kind;
    if (op->kind == OpKind::kCrash) text << "child killed at crash point " << op->crash_point << " (if it gets there) of ";
    text << kNames[static_cast<int>(what)];
    if (what == OpKind::kCommit || what == OpKind::kRelease) {
      const ModelHold& h = model_.holds()[op->hold];
      static constexpr const char* kStates[] = {"live", "tombstone", "settled", "dropped"};
      text << " of hold " << h.id << " (" << name(h.account) << ", " << h.amount_nanousd << ", " << kStates[static_cast<int>(h.state)] << ")";
      if (what == OpKind::kCommit) text << " at " << op->amount;
    } else if (what == OpKind::kDebit || what == OpKind::kReserve || what == OpKind::kAdjust || what == OpKind::kSetLimit) {
      text << " " << name(op->account) << " " << op->amount;
      if (what == OpKind::kReserve) text << " ttl " << op->ttl_s;
    } else if (what == OpKind::kClock) {
      text << " +" << op->clock_ms << " ms to " << now() + op->clock_ms;
    }
    op->text = text.str();
  }

  // ---- the same operation on the ledger and on the model ------------------------------------
  void apply(const Op& op) {
    switch (op.kind) {
      case OpKind::kDebit: debit(op); break;
      case OpKind::kReserve: reserve(op); break;
      case OpKind::kCommit: settle(op, true); break;
      case OpKind::kRelease: settle(op, false); break;
      case OpKind::kAdjust:
        REQUIRE(ledger_->adjust(name(op.account), op.amount) == Code::kOk);
        model_.adjust(op.account, op.amount, now());
        break;
      case OpKind::kReclaim: reclaim_exactly(); break;
      case OpKind::kClock:
        coverage_.period_changes += (now() + op.clock_ms) / 86'400'000 != now() / 86'400'000 ? 1 : 0;
        clock_.now_ms += op.clock_ms;
        break;
      case OpKind::kSetLimit: set_limit(op); break;
      case OpKind::kCrash: crash(op); break;
    }
  }
  void debit(const Op& op) {
    const Code expected = model_.admit(op.account, op.amount, true, now(), nullptr);
    coverage_.denials += expected != Code::kOk ? 1 : 0;
    REQUIRE(ledger_->debit(name(op.account), op.amount).code() == expected);
  }
  void reserve(const Op& op) {
    std::vector<int64_t> indexes;
    const Code expected = model_.admit(op.account, op.amount, false, now(), &indexes);
    coverage_.denials += expected != Code::kOk ? 1 : 0;
    ReservationId id = 0;
    REQUIRE(ledger_->reserve(name(op.account), op.amount, op.ttl_s, &id).code() == expected);
    const int64_t ttl_ms = int64_t{op.ttl_s != 0 ? op.ttl_s : kDefaultTtlS} * 1000;
    if (expected == Code::kOk) model_.add_hold(id, op.account, op.amount, indexes, now() + ttl_ms, true);
  }
  // Commit (at op.amount) or release of a hold in any state: what the ledger answers and does.
  void settle(const Op& op, bool commit) {
    ModelHold& hold = model_.holds()[op.hold];
    const Code code = (commit ? ledger_->commit(hold.id, op.amount) : ledger_->release(hold.id)).code();
    switch (hold.state) {
      case HoldState::kLive:
      case HoldState::kTombstone:  // a late commit charges in full; a release retires it
        REQUIRE(code == Code::kOk);
        coverage_.late_commits += commit && hold.state == HoldState::kTombstone ? 1 : 0;
        if (commit) coverage_.split_commits += model_.commit(hold, op.amount, now()) ? 1 : 0;
        else model_.release(hold, now());
        break;
      case HoldState::kSettled:  // "unknown" once its slot was taken by a new hold
        REQUIRE((code == Code::kAlreadySettled || code == Code::kUnknownReservation));
        ++coverage_.second_settlements;
        break;
      case HoldState::kDropped:  // its tombstone's grace ended
        REQUIRE(code == Code::kUnknownReservation);
        ++coverage_.dropped;
        break;
    }
  }
  void reclaim_exactly() {
    uint32_t reclaimed = 0;
    REQUIRE(ledger_->reclaim(&reclaimed) == Code::kOk);
    REQUIRE(reclaimed == model_.reclaim(now(), int64_t{kGraceS} * 1000));
    coverage_.expired += reclaimed;
  }
  void set_limit(const Op& op) {
    const ModelAccount& a = model_.accounts()[op.account];
    const std::string parent = a.parent < 0 ? "" : name(a.parent);
    REQUIRE(ledger_->set_budget(a.name, op.amount, a.period, parent) == Code::kOk);
    model_.set_limit(op.account, op.amount);
  }

  // ---- a child killed at a crash point, then a reclaim ---------------------------------------
  // Runs `body` in a child armed at op.crash_point; true when it completed (it exits 0 only when
  // body returned true), false when it died at the point.
  bool in_child(const Op& op, const std::function<bool(Ledger&)>& body) {
    const int status = ledger_test::run_crashing_child(dir_.path(), options_, op.crash_point, body);
    const bool completed = ledger_test::require_crash_or_completion(status) == ledger_test::ChildEnd::kCompleted;
    ++(completed ? coverage_.completed_in_child : coverage_.crashed);
    return completed;
  }
  uint32_t reclaim() {
    uint32_t reclaimed = 0;
    REQUIRE(ledger_->reclaim(&reclaimed) == Code::kOk);
    return reclaimed;
  }
  void crash(const Op& op) {
    switch (op.child) {
      case OpKind::kDebit: crash_debit(op); break;
      case OpKind::kReserve: crash_reserve(op); break;
      case OpKind::kCommit:
      case OpKind::kRelease: crash_settle(op); break;
      case OpKind::kAdjust: crash_adjust(op); break;
      default:  // a reclaimer: whatever it did, the next reclaim finishes; the end state is exact
        (void)in_child(op, [](Ledger& l) { return l.reclaim(nullptr).ok(); });
        (void)reclaim();
        (void)model_.reclaim(now(), int64_t{kGraceS} * 1000);
    }
  }
  void crash_debit(const Op& op) {
    Model completed = model_;
    const Code expected = completed.admit(op.account, op.amount, true, now(), nullptr);
    const std::string& account = name(op.account);
    if (in_child(op, [&](Ledger& l) { return l.debit(account, op.amount).code() == expected; })) model_ = completed;
    // A root debit is one CAS: it has no crash point, and a child always completes it.
    REQUIRE(reclaim() == model_.reclaim(now(), int64_t{kGraceS} * 1000));
  }
  void crash_reserve(const Op& op) {
    Model published = model_;
    std::vector<int64_t> indexes;
    const Code expected = published.admit(op.account, op.amount, false, now(), &indexes);
    const int64_t deadline = now() + int64_t{op.ttl_s != 0 ? op.ttl_s : kDefaultTtlS} * 1000;
    if (expected == Code::kOk) published.add_hold(0, op.account, op.amount, indexes, deadline, false);
    const std::string& account = name(op.account);
    const bool completed = in_child(op, [&](Ledger& l) {
      ReservationId id = 0;
      return l.reserve(account, op.amount, op.ttl_s, &id).code() == expected;
    });
    const uint32_t reclaimed = reclaim();
    Model rolled_back = model_;
    const uint32_t without = rolled_back.reclaim(now(), int64_t{kGraceS} * 1000);
    const uint32_t with = published.reclaim(now(), int64_t{kGraceS} * 1000);
    // Its hold, once published, is expired with its dead process: a tombstone nobody can commit.
    INFO("reclaimed " << reclaimed << "; the model: " << without << " rolled back, " << with << " published");
    if (completed) REQUIRE(reclaimed == with);
    else REQUIRE((reclaimed == without || (expected == Code::kOk && reclaimed == with)));
    model_ = reclaimed == with ? published : rolled_back;
  }
  void crash_settle(const Op& op) {
    const bool commit = op.child == OpKind::kCommit;
    const ReservationId id = model_.holds()[op.hold].id;
    const bool completed = in_child(op, [&](Ledger& l) { return (commit ? l.commit(id, op.amount) : l.release(id)) == Code::kOk; });
    REQUIRE(reclaim() == model_.reclaim(now(), int64_t{kGraceS} * 1000));  // the hold is not due
    // Retried: kOk when the child had not claimed it, "already settled" when it was rolled forward.
    const Code again = (commit ? ledger_->commit(id, op.amount) : ledger_->release(id)).code();
    if (completed) REQUIRE(again == Code::kAlreadySettled);
    else REQUIRE((again == Code::kOk || again == Code::kAlreadySettled));
    coverage_.rolled_forward += !completed && again == Code::kAlreadySettled ? 1 : 0;
    ModelHold& hold = model_.holds()[op.hold];
    if (commit) coverage_.split_commits += model_.commit(hold, op.amount, now()) ? 1 : 0;
    else model_.release(hold, now());
  }
  void crash_adjust(const Op& op) {
    Model landed = model_;
    landed.adjust(op.account, op.amount, now());
    const std::string& account = name(op.account);
    const bool completed = in_child(op, [&](Ledger& l) { return l.adjust(account, op.amount).ok(); });
    REQUIRE(reclaim() == model_.reclaim(now(), int64_t{kGraceS} * 1000));
    (void)landed.reclaim(now(), int64_t{kGraceS} * 1000);
    const std::string if_landed = differences(landed), if_not = differences(model_);
    INFO("if it landed:\n"
         << if_landed << "if it did not:\n"
         << if_not);
    if (completed) REQUIRE(if_landed.empty());
    else REQUIRE((if_landed.empty() || if_not.empty()));
    coverage_.rolled_forward += !completed && if_landed.empty() ? 1 : 0;
    if (if_landed.empty()) model_ = landed;
  }

  // ---- the invariants ------------------------------------------------------------------------
  // Every account's balance against `model`: "" when they agree exactly, else what differs.
  std::string differences(const Model& model) const {
    std::ostringstream out;
    for (size_t a = 0; a < model.accounts().size(); ++a) {
      ledger::Balance b;
      if (ledger_->balance(name(static_cast<int>(a)), &b) != Code::kOk) out << name(static_cast<int>(a)) << ": no balance\n";
      const ModelBalance m = model.balance(static_cast<int>(a), now());
      if (b.spent_nanousd != m.spent_nanousd || b.held_nanousd != m.held_nanousd || static_cast<int64_t>(b.requests) != m.requests ||
          b.limit_nanousd != m.limit_nanousd || b.available_nanousd != m.limit_nanousd - m.spent_nanousd - m.held_nanousd)
        out << name(static_cast<int>(a)) << ": ledger spent " << b.spent_nanousd << " held " << b.held_nanousd << " requests " << b.requests
            << " limit " << b.limit_nanousd << " available " << b.available_nanousd << "; model spent " << m.spent_nanousd << " held "
            << m.held_nanousd << " requests " << m.requests << " limit " << m.limit_nanousd << "\n";
    }
    return out.str();
  }
  void check() const {
    const std::string differ = differences(model_);
    INFO(differ);
    REQUIRE(differ.empty());
    ledger::LedgerStats stats;
    REQUIRE(ledger_->stats(&stats) == Code::kOk);
    REQUIRE(stats.reservations_held == model_.count(HoldState::kLive));  // no hold leaked or lost
    REQUIRE(stats.reservations_expired == model_.count(HoldState::kTombstone));
    check_parents();
  }
  // Each parent whose children all share its period kind: spent = children's spent + its own, in
  // the current period (unless a split commit charged it: see Model::split).
  void check_parents() const {
    const auto& accounts = model_.accounts();
    for (size_t p = 0; p < accounts.size(); ++p) {
      int64_t children = 0;
      bool same_periods = true, any = false, split = model_.split(static_cast<int>(p), now());
      for (size_t c = 0; c < accounts.size(); ++c) {
        if (accounts[c].parent != static_cast<int>(p)) continue;
        any = true;
        same_periods = same_periods && accounts[c].period == accounts[p].period;
        split = split || model_.split(static_cast<int>(c), now());
        children += ledger_test::balance_of(*ledger_, accounts[c].name).spent_nanousd;
      }
      if (!any || !same_periods || split) continue;
      INFO("parent " << accounts[p].name);
      REQUIRE(ledger_test::balance_of(*ledger_, accounts[p].name).spent_nanousd == children + model_.own_spent(static_cast<int>(p), now()));
    }
  }

  void remember(const std::string& text) {
    recent_.push_back(text);
    if (recent_.size() > 12) recent_.pop_front();
  }
  std::string recent() const {
    std::string out;
    for (const std::string& line : recent_) out += "  " + line + "\n";
    return out;
  }

  uint64_t seed_;
  Coverage coverage_;
  std::mt19937_64 rng_;
  ledger_test::TempDir dir_;
  ledger_test::ManualClock clock_;
  ledger::Options options_;
  std::unique_ptr<Ledger> ledger_;
  Model model_;
  std::deque<std::string> recent_;
};

}  // namespace ledger_sim
