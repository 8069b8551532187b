// Global mode, deterministic races between a lease rewrite and an admission in flight (the
// crash-point build: a child stops at its first pause point, or dies at its Nth crash point).
//
// A root debit of a global account is one CAS (no lane), admitted against the lease it read; the
// sidecar lowers a lease before it gives the rest back to the store, so a debit that read the old
// lease must never land once the lowering is published (DESIGN 11, G1). What stops it is the epoch
// stamp set_lease puts on the period word (layout.hpp, LeaseWord).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <functional>

#include "test_util.hpp"

extern "C" void ledger_test_crash_after(int64_t points);
extern "C" void ledger_test_pause_once(void (*hook)());

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::TempDir;

namespace {

constexpr int kCrashed = 77;

int g_paused_fd = -1, g_resume_fd = -1;
void pause_hook() {  // in the child, at its first pause point: report, then wait to be resumed
  char c = 'p';
  if (::write(g_paused_fd, &c, 1) != 1 || ::read(g_resume_fd, &c, 1) != 1) ::_exit(100);
}

struct Fixture {
  TempDir dir;
  std::unique_ptr<Ledger> l;
  int64_t today = 0;
  Fixture() {
    REQUIRE(Ledger::open(dir.path(), Options{}, &l) == Code::kOk);
    REQUIRE(l->set_budget("g", 100 * kUsd, Period::kDaily, "") == Code::kOk);
    REQUIRE(l->set_scope("g", true) == Code::kOk);
    today = period_index(Period::kDaily, l->now_ms() / 1000);
  }
  Status lease(int64_t limit) { return l->set_lease("g", today, limit, Ledger::monotonic_ms() + 600'000); }
  int64_t used() {
    WindowUsage u;
    REQUIRE(l->window_usage("g", today, &u) == Code::kOk);
    return u.used_nanousd;
  }
};

// Forks a child with its own handle that runs `body` and exits with its Code; with `pause`, it stops
// at its first pause point until the parent writes a byte to `resume`.
pid_t fork_child(const std::string& dir, const int* paused, const int* resume, const std::function<Code(Ledger&)>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::unique_ptr<Ledger> l;
    if (!Ledger::open(dir, Options{}, &l).ok()) ::_exit(101);
    if (paused != nullptr) {
      g_paused_fd = paused[1];
      g_resume_fd = resume[0];
      ledger_test_pause_once(pause_hook);
    }
    ::_exit(static_cast<int>(body(*l)));
  }
  return pid;
}

int exit_code(pid_t pid) {
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

}  // namespace

TEST_CASE("a root debit that read a lease lowered since never lands against it", "[lease][crash]") {
  Fixture f;
  REQUIRE(f.lease(10 * kUsd) == Code::kOk);
  REQUIRE(f.l->debit("g", 9 * kUsd) == Code::kOk);
  REQUIRE(f.used() == 9 * kUsd);
  int paused[2], resume[2];
  REQUIRE((::pipe(paused) == 0 && ::pipe(resume) == 0));
  // The child's debit of 1 fits the lease it reads (9 + 1 <= 10); it stops before its CAS.
  const pid_t child = fork_child(f.dir.path(), paused, resume, [](Ledger& l) { return l.debit("g", kUsd).code(); });
  char c = 0;
  REQUIRE(::read(paused[0], &c, 1) == 1);
  // The sidecar lowers the lease to what is used, then sees what is used under it: the 1 it would
  // give back to the store must not be spent here as well.
  REQUIRE(f.lease(9 * kUsd) == Code::kOk);
  const int64_t used_after_lowering = f.used();
  REQUIRE(::write(resume[1], "g", 1) == 1);
  CHECK(exit_code(child) == static_cast<int>(Code::kDeniedOverBudget));
  for (int fd : {paused[0], paused[1], resume[0], resume[1]}) ::close(fd);
  CHECK(used_after_lowering == 9 * kUsd);
  CHECK(f.used() == 9 * kUsd);  // within the lowered lease: nothing landed behind the sidecar's back
  // A raise lets the same debit through (it reads the new lease).
  REQUIRE(f.lease(10 * kUsd) == Code::kOk);
  CHECK(f.l->debit("g", kUsd) == Code::kOk);
  CHECK(f.used() == 10 * kUsd);
}

TEST_CASE("a root debit in flight across a raise lands against the raised lease", "[lease][crash]") {
  Fixture f;
  REQUIRE(f.lease(10 * kUsd) == Code::kOk);
  REQUIRE(f.l->debit("g", 4 * kUsd) == Code::kOk);
  int paused[2], resume[2];
  REQUIRE((::pipe(paused) == 0 && ::pipe(resume) == 0));
  const pid_t child = fork_child(f.dir.path(), paused, resume, [](Ledger& l) { return l.debit("g", 5 * kUsd).code(); });
  char c = 0;
  REQUIRE(::read(paused[0], &c, 1) == 1);
  REQUIRE(f.lease(20 * kUsd) == Code::kOk);
  REQUIRE(f.l->debit("g", 8 * kUsd) == Code::kOk);  // 4 + 8 <= 20 (the child's 5 is not in yet)
  REQUIRE(::write(resume[1], "g", 1) == 1);
  CHECK(exit_code(child) == static_cast<int>(Code::kOk));  // it read again: 12 + 5 <= 20
  for (int fd : {paused[0], paused[1], resume[0], resume[1]}) ::close(fd);
  CHECK(f.used() == 17 * kUsd);
}

// A writer killed at any point of a lowering leaves nothing that admits above what was published
// once the next writer has written (the sidecar republishes every cycle), and the fast path comes
// back: exact totals after a debit per crash point.
TEST_CASE("a lease writer killed at any point of a lowering: the next write restores the fence", "[lease][crash]") {
  Fixture f;
  REQUIRE(f.lease(50 * kUsd) == Code::kOk);
  int64_t expected = 0;
  bool completed = false;
  for (int64_t point = 1; point <= 20 && !completed; ++point) {
    const int64_t lowered = 40 * kUsd - point * kUsd;
    const pid_t writer = fork_child(f.dir.path(), nullptr, nullptr, [&](Ledger& l) {
      ledger_test_crash_after(point);
      return l.set_lease("g", f.today, lowered, Ledger::monotonic_ms() + 600'000).code();
    });
    const int code = exit_code(writer);
    REQUIRE((code == kCrashed || code == 0));
    completed = code == 0;
    REQUIRE(f.lease(lowered) == Code::kOk);  // the next writer (the same values, or a rewrite)
    const int64_t room = lowered - expected;
    CHECK(f.l->debit("g", room + 1) == Code::kDeniedOverBudget);
    REQUIRE(f.l->debit("g", kUsd / 1000) == Code::kOk);
    expected += kUsd / 1000;
    CHECK(f.used() == expected);
  }
  CHECK(completed);  // the lowering ran to its end within the points tried
}

// The epoch stamp has kEpochStamps (4,096) values. On a word nobody debits meanwhile (an idle or
// exhausted account: exactly the one whose surplus the sidecar recalls), a paused debit could find
// its word again bit for bit once the stamp wrapped. Renewals are stored in place (no new epoch),
// and a fast debit that finds, after its CAS, that 4,096 or more epochs passed takes itself back.
// Found by a verification run: before both, 4,096 renewals after a lowering let the debit land.
TEST_CASE("a root debit paused across 4,096 lease rewrites never lands against the lease it read", "[lease][crash]") {
  const bool lowerings = GENERATE(false, true);
  const int rewrites = GENERATE(4095, 4096, 4100);
  INFO((lowerings ? "lowerings" : "renewals") << " while the debit is paused: " << rewrites);
  Fixture f;
  REQUIRE(f.lease(10 * kUsd) == Code::kOk);
  REQUIRE(f.l->debit("g", 9 * kUsd) == Code::kOk);
  int paused[2], resume[2];
  REQUIRE((::pipe(paused) == 0 && ::pipe(resume) == 0));
  // The child's debit of 1 fits the lease it reads (9 + 1 <= 10); it stops before its CAS.
  const pid_t child = fork_child(f.dir.path(), paused, resume, [](Ledger& l) { return l.debit("g", kUsd).code(); });
  char c = 0;
  REQUIRE(::read(paused[0], &c, 1) == 1);
  // The sidecar recalls the surplus (the lease down to what is used; the 1 goes back to the store),
  // then renews it every refresh, or lowers it again and again.
  REQUIRE(f.lease(9 * kUsd) == Code::kOk);
  const int64_t deadline = Ledger::monotonic_ms() + 600'000;
  for (int i = 1; i < rewrites; ++i) {
    const int64_t limit = lowerings ? 9 * kUsd - i : 9 * kUsd;
    REQUIRE(f.l->set_lease("g", f.today, limit, deadline + i) == Code::kOk);
  }
  REQUIRE(::write(resume[1], "g", 1) == 1);
  CHECK(exit_code(child) == static_cast<int>(Code::kDeniedOverBudget));
  for (int fd : {paused[0], paused[1], resume[0], resume[1]}) ::close(fd);
  CHECK(f.used() == 9 * kUsd);  // nothing landed above the lowered lease
}
