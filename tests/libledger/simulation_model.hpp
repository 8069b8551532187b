// simulation_model.hpp — what the ledger must answer, computed the simple way: plain integers in
// one process, no atomics, no lanes, no crashes. simulation.hpp runs the same operations on a real
// ledger and on this model and compares them after every step.
//
// The model keeps what the ledger's contract makes observable, and nothing more:
//  - per account, two period words by the period index's parity (`used` = settled + held in that
//    period, and its settled request count), as the segment does: a period's word is reused two
//    periods later, and a settlement whose period's word was reused charges the current period
//    instead (a commit: its actual cost; a release or an expiry: nothing);
//  - holds: live, tombstone (expired, a late commit still charges its actual cost until the grace
//    ends), settled, dropped (a late commit is an unknown reservation);
//  - per account and period, what was settled on the account itself (not through a child), for the
//    parent = children + own check.
// Admission: level by level from the account up, used + amount <= limit in each account's current
// period; a denial at a level undoes the levels below it (their words stay rolled over).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "ledger/ledger.hpp"

namespace ledger_sim {

using ledger::Code;
using ledger::Period;

struct ModelWord {
  int64_t index = -1;  // the period this word holds; -1: never written
  int64_t used = 0;
  int64_t requests = 0;
};

struct ModelAccount {
  std::string name;
  int parent = -1;
  Period period = Period::kNone;
  int64_t limit_nanousd = 0;
  ModelWord words[2];
};

enum class HoldState { kLive,
                       kTombstone,
                       kSettled,
                       kDropped };

struct ModelHold {
  ledger::ReservationId id = 0;  // 0: a crashed child's hold, whose id nobody learned
  int account = -1;
  int64_t amount_nanousd = 0;
  std::vector<int64_t> indexes;  // per level of the account's chain: the period it was admitted into
  int64_t deadline_ms = 0;       // live: when it expires; tombstone: when its grace ends
  bool owner_alive = true;       // false: its process is gone (reclaim expires it at once)
  HoldState state = HoldState::kLive;
};

struct ModelBalance {
  int64_t spent_nanousd = 0;
  int64_t held_nanousd = 0;
  int64_t requests = 0;
  int64_t limit_nanousd = 0;
};

class Model {
 public:
  int add_account(const std::string& name, int parent, Period period, int64_t limit_nanousd) {
    accounts_.push_back(ModelAccount{name, parent, period, limit_nanousd, {}});
    return static_cast<int>(accounts_.size()) - 1;
  }
  void set_limit(int account, int64_t limit_nanousd) { accounts_[account].limit_nanousd = limit_nanousd; }
  const std::vector<ModelAccount>& accounts() const { return accounts_; }
  std::vector<ModelHold>& holds() { return holds_; }
  const std::vector<ModelHold>& holds() const { return holds_; }

  // The account, then its ancestors up to the root.
  std::vector<int> chain(int account) const {
    std::vector<int> out;
    for (int a = account; a >= 0; a = accounts_[a].parent) out.push_back(a);
    return out;
  }
  int64_t index_at(int account, int64_t now_ms) const { return ledger::period_index(accounts_[account].period, now_ms / 1000); }

  // A debit or a reserve: the code the ledger must return; on kOk (reserve) *indexes gets the
  // period each level was admitted into.
  Code admit(int account, int64_t amount, bool debit, int64_t now_ms, std::vector<int64_t>* indexes) {
    const std::vector<int> levels = chain(account);
    const int64_t requests = debit ? 1 : 0;
    std::vector<int64_t> applied;
    for (int a : levels) {
      const int64_t index = index_at(a, now_ms);
      ModelWord& word = accounts_[a].words[index & 1];
      const ModelWord base = word.index == index ? word : ModelWord{index, 0, 0};
      if (base.used + amount > accounts_[a].limit_nanousd) break;
      word = ModelWord{index, base.used + amount, base.requests + requests};
      applied.push_back(index);
    }
    if (applied.size() == levels.size()) {
      if (debit) own_[{account, applied[0]}] += amount;
      if (indexes != nullptr) *indexes = applied;
      return Code::kOk;
    }
    for (size_t level = 0; level < applied.size(); ++level) {  // undone; the words stay rolled over
      ModelWord& word = accounts_[levels[level]].words[applied[level] & 1];
      word.used -= amount;
      word.requests -= requests;
    }
    return applied.empty() ? Code::kDeniedOverBudget : Code::kDeniedParentOverBudget;
  }

  ModelHold& add_hold(ledger::ReservationId id, int account, int64_t amount, std::vector<int64_t> indexes,
                      int64_t deadline_ms, bool owner_alive) {
    holds_.push_back(ModelHold{id, account, amount, std::move(indexes), deadline_ms, owner_alive, HoldState::kLive});
    return holds_.back();
  }

  // Settles a live hold or a tombstone with its actual cost, on every level. True when the cost
  // went into the hold's period on some levels and into the current one on others (see split()).
  bool commit(ModelHold& hold, int64_t actual, int64_t now_ms) {
    const std::vector<int> levels = chain(hold.account);
    const bool tombstone = hold.state == HoldState::kTombstone;
    std::vector<int64_t> charged(levels.size());
    bool in_hold_period = false, in_current_period = false;
    for (size_t level = 0; level < levels.size(); ++level) {
      const int64_t delta = tombstone ? actual : actual - hold.amount_nanousd;
      charged[level] = change(levels[level], hold.indexes[level], delta, actual, 1, now_ms);
      (charged[level] == hold.indexes[level] ? in_hold_period : in_current_period) = true;
      if (level == 0 && charged[level] >= 0) own_[{hold.account, charged[level]}] += actual;
    }
    hold.state = HoldState::kSettled;
    if (!in_hold_period || !in_current_period) return false;
    for (size_t level = 0; level < levels.size(); ++level) {
      split_.insert({levels[level], hold.indexes[level]});
      split_.insert({levels[level], charged[level]});
    }
    return true;
  }
  // True when a split commit charged the account's current period or its hold's: a level whose
  // word still held the hold's period took the cost there, one whose word had been reused two
  // periods later took it in the current period, so in those periods a parent's spent is not its
  // children's plus its own (over all periods it is).
  bool split(int account, int64_t now_ms) const { return split_.count({account, index_at(account, now_ms)}) != 0; }
  // A live hold's amount leaves its periods (release, expiry); a tombstone has nothing left.
  void unhold(ModelHold& hold, int64_t now_ms) {
    if (hold.state != HoldState::kLive) return;
    const std::vector<int> levels = chain(hold.account);
    for (size_t level = 0; level < levels.size(); ++level) change(levels[level], hold.indexes[level], -hold.amount_nanousd, 0, 0, now_ms);
  }
  void release(ModelHold& hold, int64_t now_ms) {
    unhold(hold, now_ms);
    hold.state = HoldState::kSettled;
  }
  // A charge without admission (an adjustment) in the current period of every level.
  void adjust(int account, int64_t amount, int64_t now_ms) {
    for (int a : chain(account)) {
      const int64_t charged = change(a, index_at(a, now_ms), amount, amount, 0, now_ms);
      if (a == account) own_[{account, charged}] += amount;
    }
  }
  // Expires live holds past their deadline or of a dead process (tombstones until grace_ms from
  // now), then drops tombstones whose grace ended. Returns how many holds it expired.
  uint32_t reclaim(int64_t now_ms, int64_t grace_ms) {
    uint32_t expired = 0;
    for (ModelHold& hold : holds_) {
      if (hold.state != HoldState::kLive || (hold.owner_alive && hold.deadline_ms > now_ms)) continue;
      unhold(hold, now_ms);
      hold.state = HoldState::kTombstone;
      hold.deadline_ms = now_ms + grace_ms;
      ++expired;
    }
    for (ModelHold& hold : holds_)
      if (hold.state == HoldState::kTombstone && hold.deadline_ms <= now_ms) hold.state = HoldState::kDropped;
    return expired;
  }

  ModelBalance balance(int account, int64_t now_ms) const {
    const ModelAccount& a = accounts_[account];
    const int64_t index = index_at(account, now_ms);
    const ModelWord& word = a.words[index & 1];
    const bool current = word.index == index;
    ModelBalance b;
    b.held_nanousd = held_in(account, index);
    b.spent_nanousd = (current ? word.used : 0) - b.held_nanousd;
    b.requests = current ? word.requests : 0;
    b.limit_nanousd = a.limit_nanousd;
    return b;
  }
  // What was settled on the account itself (not through a child) in its current period.
  int64_t own_spent(int account, int64_t now_ms) const {
    const auto it = own_.find({account, index_at(account, now_ms)});
    return it == own_.end() ? 0 : it->second;
  }
  // Keeps the `keep` most recent settled or dropped holds (for second settlements) and forgets the
  // older ones, so that a long run stays linear.
  void forget_settled(size_t keep) {
    size_t finished = 0;
    for (const ModelHold& hold : holds_) finished += hold.state == HoldState::kSettled || hold.state == HoldState::kDropped ? 1 : 0;
    for (auto it = holds_.begin(); finished > keep && it != holds_.end();) {
      if (it->state == HoldState::kSettled || it->state == HoldState::kDropped) {
        it = holds_.erase(it);
        --finished;
      } else {
        ++it;
      }
    }
  }
  size_t count(HoldState state) const {
    size_t n = 0;
    for (const ModelHold& hold : holds_) n += hold.state == state ? 1 : 0;
    return n;
  }
  // True when a word of the account holds an older period of the current one's parity that a live
  // hold or a tombstone still refers to: whether a crashed admission rolled that word over decides
  // how those holds settle later, and the model cannot know it.
  bool stale_word_in_use(int account, int64_t now_ms) const {
    for (int a : chain(account)) {
      const int64_t index = index_at(a, now_ms);
      const int64_t held = accounts_[a].words[index & 1].index;
      if (held == index || held < 0) continue;
      for (const ModelHold& hold : holds_) {
        if (hold.state != HoldState::kLive && hold.state != HoldState::kTombstone) continue;
        const std::vector<int> levels = chain(hold.account);
        for (size_t level = 0; level < levels.size(); ++level)
          if (levels[level] == a && hold.indexes[level] == held) return true;
      }
    }
    return false;
  }

 private:
  // A settlement's change of one level's word for period `index`: applied there while the word
  // still holds that period; else `fallback` (and the request count) goes to the current period.
  // Returns the period charged, -1 for none.
  int64_t change(int account, int64_t index, int64_t delta, int64_t fallback, int64_t requests, int64_t now_ms) {
    ModelWord& word = accounts_[account].words[index & 1];
    if (word.index == index) {
      word.used += delta;
      word.requests += requests;
      return index;
    }
    if (fallback == 0 && requests == 0) return -1;
    const int64_t now_index = index_at(account, now_ms);
    ModelWord& current = accounts_[account].words[now_index & 1];
    if (current.index != now_index) current = ModelWord{now_index, 0, 0};
    current.used += fallback;
    current.requests += requests;
    return now_index;
  }
  int64_t held_in(int account, int64_t index) const {
    int64_t held = 0;
    for (const ModelHold& hold : holds_) {
      if (hold.state != HoldState::kLive) continue;
      const std::vector<int> levels = chain(hold.account);
      for (size_t level = 0; level < levels.size(); ++level)
        if (levels[level] == account && hold.indexes[level] == index) held += hold.amount_nanousd;
    }
    return held;
  }

  std::vector<ModelAccount> accounts_;
  std::vector<ModelHold> holds_;
  std::map<std::pair<int, int64_t>, int64_t> own_;  // (account, period index) -> settled on it directly
  std::set<std::pair<int, int64_t>> split_;         // (account, period index) charged by a split commit
};

}  // namespace ledger_sim
