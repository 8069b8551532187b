// Deterministic crash repair: a child process is killed (_exit at a crash point) at the 1st, 2nd,
// 3rd ... interesting instruction of an operation, until the operation completes; after each kill
// the parent reclaims and checks the exact outcome on a 3-level chain (tests/crash_points.hpp has
// the loop). Linked against the library built with LEDGER_CRASH_POINTS.
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <functional>
#include <thread>
#include <tuple>

#include "crash_points.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger_test::ChildEnd;
using ledger_test::for_each_crash_point;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::require_crash_or_completion;
using ledger_test::run_crashing_child;
using ledger_test::TempDir;

namespace {

struct Chain {
  int64_t org, team, alice;
  int64_t held_org, held_team, held_alice;
};

Chain read_chain(Ledger& ledger) {
  Balance o, t, a;
  REQUIRE(ledger.balance("org", &o) == Code::kOk);
  REQUIRE(ledger.balance("team", &t) == Code::kOk);
  REQUIRE(ledger.balance("alice", &a) == Code::kOk);
  return Chain{o.spent_nanousd, t.spent_nanousd, a.spent_nanousd,
               o.held_nanousd, t.held_nanousd, a.held_nanousd};
}

struct Fixture {
  TempDir dir;
  ManualClock clock;
  std::unique_ptr<Ledger> ledger;
  Fixture() {
    clock.now_ms = ::time(nullptr) * int64_t{1000};
    Options options;
    options.clock = clock.clock();
    options.tombstone_grace_s = 1;
    options.limits.max_reservations = 64;
    REQUIRE(Ledger::open(dir.path(), options, &ledger) == Code::kOk);
    REQUIRE(ledger->set_budget("org", 100000 * kUsd, Period::kNone, "") == Code::kOk);
    REQUIRE(ledger->set_budget("team", 50000 * kUsd, Period::kNone, "org") == Code::kOk);
    REQUIRE(ledger->set_budget("alice", 10000 * kUsd, Period::kNone, "team") == Code::kOk);
    REQUIRE(ledger->set_budget("bob", 100 * kUsd, Period::kNone, "team") == Code::kOk);
    REQUIRE(ledger->set_price(kModel, kUsd, kUsd, 0) == Code::kOk);
  }
  // A hold made the way workers make them (authorize), so its commit is also tallied per model.
  ReservationId authorized(int64_t amount, uint32_t ttl_s) {
    std::string_view chosen;
    ReservationId id = 0;
    REQUIRE(ledger->authorize("alice", kModel, amount, ttl_s, &chosen, &id) == Code::kOk);
    REQUIRE(chosen == kModel);
    return id;
  }
  // alice's per-model tally: every commit exactly once, ancestors untallied.
  void require_tally(int64_t spent, uint64_t requests) {
    std::vector<ModelSpend> tallies;
    REQUIRE(ledger->model_spend(&tallies) == Code::kOk);
    REQUIRE(tallies.size() == 1);
    CHECK(tallies[0].account == "alice");
    CHECK(tallies[0].model == kModel);
    REQUIRE(tallies[0].spent_nanousd == spent);
    REQUIRE(tallies[0].requests == requests);
  }
  static constexpr const char* kModel = "vendor/model-x";
  static constexpr const char* kKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
  // The team's OpenRouter key: alice's settlements go through it by the default rule.
  void bind_team_key() { REQUIRE(ledger->bind_key("team", kKey) == Code::kOk); }
  // What the ledger recorded through the team's key for alice (spent, requests, adjusted).
  std::tuple<int64_t, uint64_t, int64_t> key_tally() {
    std::vector<KeySpend> rows;
    REQUIRE(ledger->key_spend(&rows) == Code::kOk);
    std::tuple<int64_t, uint64_t, int64_t> alice{0, 0, 0};
    for (const KeySpend& row : rows) {
      REQUIRE(row.key_hash == kKey);
      if (row.account == "alice") alice = {row.spent_nanousd, row.requests, row.adjusted_nanousd};
    }
    return alice;
  }
  // Every level spent exactly `spent` (the chain has no other spender), nothing held anywhere.
  void require_chain_spent(int64_t spent) {
    const Chain c = read_chain(*ledger);
    REQUIRE(c.alice == spent);
    REQUIRE(c.team == spent);
    REQUIRE(c.org == spent);
    REQUIRE(c.held_alice + c.held_team + c.held_org == 0);
  }
  void reclaim_all() {
    uint32_t n = 0;
    REQUIRE(ledger->reclaim(&n) == Code::kOk);
    // Drop tombstones too, so slots never run out however many iterations run.
    clock.now_ms += 5000;
    REQUIRE(ledger->reclaim(&n) == Code::kOk);
  }
};

}  // namespace

TEST_CASE("a debit killed at any point is rolled back on every level", "[crash]") {
  Fixture f;
  const bool sibling_first = GENERATE(false, true);
  // Through a key, the debit also tallies per key: that tally is rolled back with the levels.
  const bool keyed = GENERATE(false, true);
  if (keyed) f.bind_team_key();
  INFO("sibling first " << sibling_first << " keyed " << keyed);
  int64_t spent = 0, bob = 0;
  const int64_t crashes = for_each_crash_point(
      [&](int64_t point) {
        return run_crashing_child(f.dir.path(), point, [](Ledger& l) { return l.debit("alice", kUsd).ok(); });
      },
      [&](int64_t, bool completed) {
        if (sibling_first) {
          // Another worker overwrites the words the dead one may have stamped: the helping rule
          // must leave enough behind for the reclaimer to still see what landed.
          REQUIRE(f.ledger->debit("bob", 7) == Code::kOk);
          bob += 7;
        }
        f.reclaim_all();
        if (completed) spent += kUsd;
        const Chain c = read_chain(*f.ledger);
        REQUIRE(c.alice == spent);
        REQUIRE(c.team == spent + bob);
        REQUIRE(c.org == spent + bob);
        REQUIRE(c.held_alice + c.held_team + c.held_org == 0);
        const auto [through_key, key_requests, adjusted] = f.key_tally();
        REQUIRE(through_key == (keyed ? spent : 0));
        REQUIRE(key_requests == (keyed && spent > 0 ? 1u : 0u));
        REQUIRE(adjusted == 0);
      });
  CHECK(crashes >= 6);  // the chain has at least two points per level
}

TEST_CASE("a denied debit killed while undoing leaves nothing behind", "[crash]") {
  Fixture f;
  REQUIRE(f.ledger->set_budget("org", 2 * kUsd, Period::kNone, "") == Code::kOk);
  const int64_t crashes = for_each_crash_point(
      [&](int64_t point) {
        return run_crashing_child(f.dir.path(), point,
                                  [](Ledger& l) { return l.debit("alice", 3 * kUsd) == Code::kDeniedParentOverBudget; });
      },
      [&](int64_t, bool) {
        f.reclaim_all();
        f.require_chain_spent(0);
      });
  CHECK(crashes >= 6);
}

TEST_CASE("a reserve killed at any point leaves no hold and no leaked slot", "[crash]") {
  Fixture f;
  const int64_t crashes = for_each_crash_point(
      [&](int64_t point) {
        return run_crashing_child(f.dir.path(), point, [](Ledger& l) {
          ReservationId id = 0;
          return l.reserve("alice", 2 * kUsd, 600, &id).ok();
        });
      },
      [&](int64_t, bool) {
        f.reclaim_all();  // a completed hold of the dead child is expired, then its tombstone dropped
        const Chain c = read_chain(*f.ledger);
        REQUIRE(c.held_alice == 0);
        REQUIRE(c.held_team == 0);
        REQUIRE(c.held_org == 0);
        REQUIRE(c.alice == 0);
        REQUIRE(c.team == 0);
        REQUIRE(c.org == 0);
      });
  CHECK(crashes >= 8);
  // Every one of the 64 slots is usable again.
  std::vector<ReservationId> ids(64);
  for (auto& id : ids) REQUIRE(f.ledger->reserve("alice", 1, 60, &id) == Code::kOk);
  for (auto id : ids) REQUIRE(f.ledger->release(id) == Code::kOk);
}

TEST_CASE("a commit killed at any point is charged exactly once", "[crash]") {
  Fixture f;
  const bool keyed = GENERATE(false, true);
  if (keyed) f.bind_team_key();
  INFO("keyed " << keyed);
  int64_t spent = 0;
  uint64_t commits = 0;
  ReservationId id = 0;
  const int64_t crashes = for_each_crash_point(
      [&](int64_t point) {
        id = f.authorized(2 * kUsd, 600);
        return run_crashing_child(f.dir.path(), point, [id](Ledger& l) { return l.commit(id, 3 * kUsd).ok(); });
      },
      [&](int64_t, bool completed) {
        f.reclaim_all();
        // Either the commit was claimed (then it is rolled forward) or it never started (retry works).
        const Status again = f.ledger->commit(id, 3 * kUsd);
        REQUIRE((again == Code::kOk || again == Code::kAlreadySettled));
        if (completed) REQUIRE(again == Code::kAlreadySettled);
        spent += 3 * kUsd;
        f.require_chain_spent(spent);
        f.require_tally(spent, ++commits);
        const auto [through_key, key_requests, adjusted] = f.key_tally();
        REQUIRE(through_key == (keyed ? spent : 0));
        REQUIRE(key_requests == (keyed ? commits : 0));
      });
  CHECK(crashes >= 8);
}

namespace {
int g_paused_fd = -1, g_resume_fd = -1;
void pause_hook() {  // runs in the helper at its first pause point: report, then wait to be resumed
  char c = 'p';
  if (::write(g_paused_fd, &c, 1) != 1 || ::read(g_resume_fd, &c, 1) != 1) ::_exit(5);
}
// Forks a child with its own handle that stops at its first pause point (writes a byte to paused_fd,
// waits for one on resume_fd) while running body; it exits 0 when body returns true.
pid_t fork_pausing(const std::string& dir, int paused_fd, int resume_fd, const std::function<bool(Ledger&)>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::unique_ptr<Ledger> l;
    if (!Ledger::open(dir, Options{}, &l).ok()) ::_exit(2);
    g_paused_fd = paused_fd;
    g_resume_fd = resume_fd;
    ledger_test_pause_once(pause_hook);
    ::_exit(body(*l) ? 0 : 1);
  }
  return pid;
}
}  // namespace

// The helping rule under ABA: a worker H reads alice's word holding value V (stamped by lane M, from
// M's release of an earlier hold) and stalls. M reserves the same amount again and releases it: its
// release's entry names V once more, and M dies before its CAS. H wakes up: the value it read matches
// M's entry, but M's CAS never landed, so H must not mark it landed, or the reclaimer would skip
// alice while rolling team and org forward.
TEST_CASE("a helper that stalled across an ABA of the word never marks a dead entry as landed", "[crash]") {
  Fixture f;
  int64_t cases = 0;
  const int64_t crashes = for_each_crash_point(
      [&](int64_t point) {  // returns M's wait status
        int to_m[2], from_m[2], to_h[2], from_h[2];
        REQUIRE((::pipe(to_m) == 0 && ::pipe(from_m) == 0 && ::pipe(to_h) == 0 && ::pipe(from_h) == 0));
        const pid_t m = ::fork();
        if (m == 0) {
          std::unique_ptr<Ledger> l;
          if (!Ledger::open(f.dir.path(), Options{}, &l).ok()) ::_exit(2);
          ReservationId id = 0;
          if (!l->reserve("alice", 3 * kUsd, 600, &id).ok() || !l->release(id).ok()) ::_exit(3);
          char c = 'r';
          if (::write(from_m[1], &c, 1) != 1 || ::read(to_m[0], &c, 1) != 1) ::_exit(4);
          if (!l->reserve("alice", 3 * kUsd, 600, &id).ok()) ::_exit(3);
          ledger_test_crash_after(point);
          ::_exit(l->release(id).ok() ? 0 : 1);
        }
        char c = 0;
        REQUIRE(::read(from_m[0], &c, 1) == 1);
        const pid_t h = fork_pausing(f.dir.path(), from_h[1], to_h[0], [](Ledger& l) { return l.debit("alice", kUsd / 100).ok(); });
        REQUIRE(::read(from_h[0], &c, 1) == 1);  // H read V and stopped before helping
        REQUIRE(::write(to_m[1], "g", 1) == 1);  // M: reserve, release, die at `point`
        int m_status = 0, h_status = 0;
        REQUIRE(::waitpid(m, &m_status, 0) == m);
        REQUIRE(::write(to_h[1], "g", 1) == 1);
        REQUIRE(::waitpid(h, &h_status, 0) == h);
        for (int fd : {to_m[0], to_m[1], from_m[0], from_m[1], to_h[0], to_h[1], from_h[0], from_h[1]}) ::close(fd);
        INFO("H: " << ledger_test::describe_wait_status(h_status));
        REQUIRE((WIFEXITED(h_status) && WEXITSTATUS(h_status) == 0));  // H's debit went through
        return m_status;
      },
      [&](int64_t, bool) {
        f.reclaim_all();
        ++cases;
        const Chain c3 = read_chain(*f.ledger);
        REQUIRE(c3.alice == cases * (kUsd / 100));  // every hold released, every debit of H kept
        REQUIRE(c3.team == c3.alice);
        REQUIRE(c3.org == c3.alice);
        REQUIRE(c3.held_alice + c3.held_team + c3.held_org == 0);
      });
  CHECK(crashes >= 7);
}

// A commit that arrives while a reclaimer is expiring its hold (TTL passed) is a late commit: it
// must wait for the expiry and then charge in full, never answer "already settled" and lose the
// cost. The reclaimer stops right after claiming the slot; it is then resumed, or killed (the
// committer repairs it itself).
TEST_CASE("a commit racing an expiry waits for it and is charged as a late commit", "[crash]") {
  Fixture f;
  const bool kill_reclaimer = GENERATE(false, true);
  const int64_t real_now = f.clock.now_ms;
  f.clock.now_ms = real_now - 3'600'000;  // reserved an hour ago with a 1 s TTL: expired now
  const ReservationId id = f.authorized(2 * kUsd, 1);
  f.clock.now_ms = real_now;
  int paused[2], resume[2];
  REQUIRE((::pipe(paused) == 0 && ::pipe(resume) == 0));
  const pid_t reclaimer = fork_pausing(f.dir.path(), paused[1], resume[0], [](Ledger& l) {
    uint32_t n = 0;
    return l.reclaim(&n).ok() && n == 1;
  });
  char c = 0;
  REQUIRE(::read(paused[0], &c, 1) == 1);  // the slot is claimed for expiry, no level changed yet
  // Catch2 is not thread-safe: the thread only records what it did, the test thread asserts.
  bool woke_reclaimer = false;
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    woke_reclaimer = kill_reclaimer ? ::kill(reclaimer, SIGKILL) == 0 : ::write(resume[1], "g", 1) == 1;
    if (!woke_reclaimer) ::kill(reclaimer, SIGKILL);  // never leave the commit waiting for a paused expiry
  });
  const Status committed = f.ledger->commit(id, kUsd);  // blocks until the expiry is over
  later.join();
  REQUIRE(woke_reclaimer);
  int status = 0;
  REQUIRE(::waitpid(reclaimer, &status, 0) == reclaimer);
  for (int fd : {paused[0], paused[1], resume[0], resume[1]}) ::close(fd);
  INFO((kill_reclaimer ? "reclaimer killed" : "reclaimer resumed") << ": " << ledger_test::describe_wait_status(status));
  if (kill_reclaimer) CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
  else CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  REQUIRE(committed == Code::kOk);
  CHECK(f.ledger->commit(id, kUsd) == Code::kAlreadySettled);
  f.reclaim_all();
  const Chain after = read_chain(*f.ledger);
  CHECK(after.alice == kUsd);  // the hold is gone, the actual cost charged once, on every level
  CHECK(after.team == kUsd);
  CHECK(after.org == kUsd);
  CHECK(after.held_alice + after.held_team + after.held_org == 0);
  f.require_tally(kUsd, 1);
}

// A reserve dies after publishing its hold but before its op ended, and its repair is delayed (a
// child it forked keeps its lock file description, so its slot still looks alive) until the hold
// has expired, its tombstone aged out and the slot was reused. The late repair must see that the
// reserve had completed and not roll it back: that would take the amount off a second time.
TEST_CASE("a reserve repaired long after its hold expired is not rolled back twice", "[crash]") {
  Fixture f;
  REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);  // orphaned grandchildren come back to us
  pid_t keeper = 0;
  const int64_t crashes = for_each_crash_point(
      [&](int64_t point) {  // returns the worker's wait status; its keeper lives on
        int pid_pipe[2];
        REQUIRE(::pipe(pid_pipe) == 0);
        const pid_t worker = ::fork();
        if (worker == 0) {
          std::unique_ptr<Ledger> l;
          if (!Ledger::open(f.dir.path(), Options{}, &l).ok()) ::_exit(2);
          const pid_t child = ::fork();  // holds the worker's lock file description (and its slot)
          if (child == 0) {
            for (;;) ::pause();
          }
          if (::write(pid_pipe[1], &child, sizeof child) != sizeof child) ::_exit(4);
          ledger_test_crash_after(point);
          ReservationId id = 0;
          ::_exit(l->reserve("alice", 2 * kUsd, 1, &id).ok() ? 0 : 1);
        }
        REQUIRE(::read(pid_pipe[0], &keeper, sizeof keeper) == sizeof keeper);
        ::close(pid_pipe[0]);
        ::close(pid_pipe[1]);
        int status = 0;
        REQUIRE(::waitpid(worker, &status, 0) == worker);
        return status;
      },
      [&](int64_t, bool) {
        // The hold (if published) expires by TTL while the worker's slot still looks alive; its
        // tombstone ages out; the slot is reused and released by another reservation.
        uint32_t n = 0;
        f.clock.now_ms += 10'000;
        REQUIRE(f.ledger->reclaim(&n) == Code::kOk);
        f.clock.now_ms += 5'000;
        REQUIRE(f.ledger->reclaim(&n) == Code::kOk);
        for (int i = 0; i < 64; ++i) {
          ReservationId other = 0;
          REQUIRE(f.ledger->reserve("bob", 1, 60, &other) == Code::kOk);
          REQUIRE(f.ledger->release(other) == Code::kOk);
        }
        // Now the worker's slot is released, and the late repair runs.
        REQUIRE(::kill(keeper, SIGKILL) == 0);
        REQUIRE(::waitpid(keeper, nullptr, 0) == keeper);
        f.reclaim_all();
        f.require_chain_spent(0);  // reserved then expired: nothing spent, on every level, whatever the point
      });
  CHECK(crashes >= 7);
  REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 0) == 0);
}

TEST_CASE("a release killed at any point frees the hold exactly once", "[crash]") {
  Fixture f;
  ReservationId id = 0;
  const int64_t crashes = for_each_crash_point(
      [&](int64_t point) {
        REQUIRE(f.ledger->reserve("alice", 2 * kUsd, 600, &id) == Code::kOk);
        return run_crashing_child(f.dir.path(), point, [id](Ledger& l) { return l.release(id).ok(); });
      },
      [&](int64_t, bool completed) {
        f.reclaim_all();
        // Either the release was claimed (then it is rolled forward) or it never started (retry works).
        const Status again = f.ledger->release(id);
        REQUIRE((again == Code::kOk || again == Code::kAlreadySettled));
        if (completed) REQUIRE(again == Code::kAlreadySettled);
        f.require_chain_spent(0);
      });
  CHECK(crashes >= 6);
}

TEST_CASE("an expiry killed at any point still yields one tombstone that charges late", "[crash]") {
  Fixture f;
  int64_t spent = 0;
  uint64_t commits = 0;
  ReservationId id = 0;
  const int64_t crashes = for_each_crash_point(
      [&](int64_t point) {
        const int64_t real_now = f.clock.now_ms;
        f.clock.now_ms = real_now - 3'600'000;  // reserve "an hour ago" with a 1 s TTL: expired now
        id = f.authorized(2 * kUsd, 1);
        f.clock.now_ms = real_now;
        return run_crashing_child(f.dir.path(), point, [](Ledger& l) {
          uint32_t n = 0;
          return l.reclaim(&n).ok() && n == 1;
        });
      },
      [&](int64_t, bool) {
        uint32_t n = 0;
        REQUIRE(f.ledger->reclaim(&n) == Code::kOk);  // finishes or redoes the expiry
        const Chain c = read_chain(*f.ledger);
        REQUIRE(c.held_alice + c.held_team + c.held_org == 0);
        REQUIRE(f.ledger->commit(id, kUsd) == Code::kOk);  // the late commit, tallied like any other
        spent += kUsd;
        f.require_tally(spent, ++commits);
        f.require_chain_spent(spent);
        f.clock.now_ms += 5000;
        REQUIRE(f.ledger->reclaim(&n) == Code::kOk);
        f.clock.now_ms = ::time(nullptr) * int64_t{1000};
      });
  CHECK(crashes >= 4);
}

// A worker dies at each point w of a commit (levels or the tally partly applied; at the last w it
// completes); for each w, a reclaimer dies at each point r of its repair, and another reclaim
// finishes the job: the commit is charged exactly once.
TEST_CASE("a reclaimer killed while repairing is itself repaired", "[crash]") {
  Fixture f;
  int64_t spent = 0;
  uint64_t commits = 0;
  const int64_t worker_crashes = for_each_crash_point(
      [&](int64_t w) {  // returns the worker's wait status (the same at every r)
        int worker = -1;
        ReservationId id = 0;
        const int64_t repair_crashes = for_each_crash_point(
            [&](int64_t r) {
              id = f.authorized(kUsd, 600);
              const int status = run_crashing_child(f.dir.path(), w, [id](Ledger& l) {
                return l.commit(id, 2 * kUsd).ok();  // settlement: must be rolled forward
              });
              INFO("worker at point " << w << ": " << ledger_test::describe_wait_status(status));
              (void)require_crash_or_completion(status);
              REQUIRE((worker == -1 || worker == status));  // deterministic: the same end at every r
              worker = status;
              return run_crashing_child(f.dir.path(), r, [](Ledger& l) {
                uint32_t n = 0;
                return l.reclaim(&n).ok();
              });
            },
            [&](int64_t, bool) {
              f.reclaim_all();
              const Status again = f.ledger->commit(id, 2 * kUsd);
              REQUIRE((again == Code::kOk || again == Code::kAlreadySettled));
              spent += 2 * kUsd;
              f.require_chain_spent(spent);
              f.require_tally(spent, ++commits);
            });
        // A dead worker's half-applied commit takes a repair, which has crash points of its own.
        if (require_crash_or_completion(worker) == ChildEnd::kCrashed) CHECK(repair_crashes >= 1);
        return worker;
      },
      [&](int64_t, bool) {});
  CHECK(worker_crashes >= 8);
}

TEST_CASE("an adjustment killed at any point lands on every level or on none", "[crash]") {
  Fixture f;
  const bool keyed = GENERATE(false, true);  // an adjustment of a key's drift also tallies the key
  if (keyed) f.bind_team_key();
  INFO("keyed " << keyed);
  int64_t spent = 0;
  const int64_t crashes = for_each_crash_point(
      [&](int64_t point) {
        return run_crashing_child(f.dir.path(), point, [keyed](Ledger& l) {
          return l.adjust("alice", 3 * kUsd, keyed ? Fixture::kKey : "").ok();
        });
      },
      [&](int64_t, bool completed) {
        f.reclaim_all();
        const Chain c = read_chain(*f.ledger);
        // Rolled forward once decided, nothing before: whole units of 3 USD, the same on every level;
        // a completed adjustment landed.
        REQUIRE(c.alice >= spent);
        REQUIRE(c.alice - spent <= 3 * kUsd);
        REQUIRE((c.alice - spent) % (3 * kUsd) == 0);
        if (completed) REQUIRE(c.alice - spent == 3 * kUsd);
        REQUIRE(c.team == c.alice);
        REQUIRE(c.org == c.alice);
        const auto [through_key, key_requests, adjusted] = f.key_tally();
        REQUIRE(through_key == (keyed ? c.alice : 0));
        REQUIRE(adjusted == (keyed ? c.alice : 0));
        REQUIRE(key_requests == 0);  // an adjustment is not a request
        spent = c.alice;
      });
  CHECK(crashes >= 4);
}

TEST_CASE("a lease writer killed mid-write leaves the account denying until the next write", "[crash][lease]") {
  Fixture f;
  REQUIRE(f.ledger->set_scope("alice", true) == Code::kOk);
  const int64_t far = Ledger::monotonic_ms() + 600'000;
  // alice has no period: her lease is for window 0.
  REQUIRE(f.ledger->set_lease("alice", 0, 20 * kUsd, far) == Code::kOk);
  REQUIRE(f.ledger->debit("alice", kUsd) == Code::kOk);
  // A lowering rewrites the word under its seqlock (a raise or renewal is stored in place).
  const int status = run_crashing_child(f.dir.path(), 1, [far](Ledger& l) { return l.set_lease("alice", 0, 10 * kUsd, far).ok(); });
  REQUIRE(require_crash_or_completion(status) == ChildEnd::kCrashed);  // died with the lease word half rewritten (its seqlock odd)
  CHECK(f.ledger->debit("alice", 1) == Code::kDeniedOverBudget);  // fail closed, not the old or a torn lease
  REQUIRE(f.ledger->set_lease("alice", 0, 10 * kUsd, far) == Code::kOk);  // the next writer rounds the seqlock up
  CHECK(f.ledger->debit("alice", 8 * kUsd) == Code::kOk);
  CHECK(f.ledger->debit("alice", 2 * kUsd) == Code::kDeniedOverBudget);  // 1 + 8 + 2 > 10
}
