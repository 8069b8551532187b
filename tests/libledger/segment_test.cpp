// The segment as a file: damaged headers and words are refused or survived without a crash, pages
// are reserved at creation (a full filesystem is an error then, never a SIGBUS later), the segment
// directory is configurable and recorded for workers, admin handles have slots of their own, the
// hold policy is the segment's (every process), tombstones are bounded, and an attach-only open
// after a reboot rebuilds the segment from the store.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <filesystem>
#include <fstream>

#include "layout.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger::detail::Account;
using ledger::detail::Header;
using ledger::detail::Reservation;
using ledger_test::kUsd;
using ledger_test::ManualClock;
using ledger_test::TempDir;
using ledger_test::balance_of;
using ledger_test::utc;

namespace {

std::unique_ptr<Ledger> open_with(const std::string& dir, Options options = {}) {
  std::unique_ptr<Ledger> ledger;
  REQUIRE(Ledger::open(dir, options, &ledger) == Code::kOk);
  return ledger;
}

template <class T>
void patch(const std::string& file, size_t offset, T value) {
  const int fd = ::open(file.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, &value, sizeof value, static_cast<off_t>(offset)) == static_cast<ssize_t>(sizeof value));
  ::close(fd);
}

template <class T>
T peek(const std::string& file, size_t offset) {
  T value{};
  const int fd = ::open(file.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  REQUIRE(::pread(fd, &value, sizeof value, static_cast<off_t>(offset)) == static_cast<ssize_t>(sizeof value));
  ::close(fd);
  return value;
}

}  // namespace

TEST_CASE("every header field that computes an address or a count is checked on attach", "[segment]") {
  TempDir dir;
  { auto ledger = open_with(dir.path()); }
  const std::string segment = Ledger::segment_path(dir.path());
  // Each of these once reached an address computation or a loop bound unchecked (offset_processes
  // made ledger_open crash); now each is kIncompatible and the segment is left as it was.
  const size_t field = GENERATE(offsetof(Header, offset_processes), offsetof(Header, offset_lanes),
                                offsetof(Header, offset_tallies), offsetof(Header, offset_keys),
                                offsetof(Header, tally_mask), offsetof(Header, key_mask), offsetof(Header, process_slots),
                                offsetof(Header, key_count), offsetof(Header, model_count), offsetof(Header, header_size));
  INFO("header offset " << field);
  const uint32_t before = peek<uint32_t>(segment, field);
  patch<uint32_t>(segment, field, before ^ 0x00F00F01u);
  std::unique_ptr<Ledger> ledger;
  CHECK(Ledger::open(dir.path(), Options{}, &ledger) == Code::kIncompatible);
  CHECK(peek<uint32_t>(segment, field) == (before ^ 0x00F00F01u));
}

TEST_CASE("a damaged period word gives wrong numbers, never undefined arithmetic", "[segment]") {
  TempDir dir;
  auto ledger = open_with(dir.path());
  REQUIRE(ledger->set_budget("alice", 5 * kUsd, Period::kNone, "") == Code::kOk);
  const std::string segment = ledger->segment_file();
  const size_t word = peek<uint64_t>(segment, offsetof(Header, offset_accounts)) + offsetof(Account, words);
  const int64_t used = GENERATE(INT64_MIN, INT64_MAX, int64_t{-1});
  patch<int64_t>(segment, word, used);  // the account's word (tag 0: no period)
  Balance b;
  REQUIRE(ledger->balance("alice", &b) == Code::kOk);  // under UBSan: no signed overflow reported
  CHECK(b.limit_nanousd == 5 * kUsd);
  std::vector<AccountBalance> all;
  REQUIRE(ledger->balances(&all) == Code::kOk);
  if (used == INT64_MAX) CHECK(ledger->debit("alice", kUsd) == Code::kDeniedOverBudget);  // checked, not wrapped
  patch<int64_t>(segment, word, 0);
  CHECK(ledger->debit("alice", kUsd) == Code::kOk);
}

// Found by fuzz/fuzz_segment: the flush (and flush_pending, and balance()'s sum of holds) did its
// arithmetic on damaged words and hold amounts unchecked, a signed overflow; now it saturates as
// balances() does, and a damaged segment writes wrong numbers, never undefined behaviour.
TEST_CASE("damaged words and holds at the extremes: balance, flush_pending and flush saturate", "[segment]") {
  TempDir dir;
  auto ledger = open_with(dir.path());
  REQUIRE(ledger->set_budget("alice", 5 * kUsd, Period::kNone, "") == Code::kOk);
  REQUIRE(ledger->debit("alice", kUsd) == Code::kOk);
  REQUIRE(ledger->flush() == Code::kOk);  // the store has alice's period and day
  const std::string segment = ledger->segment_file();
  const auto offset_reservations = peek<uint64_t>(segment, offsetof(Header, offset_reservations));
  for (int i = 0; i < 10; ++i) {  // ten holds whose amounts, clamped to the largest legal one, still overflow a sum
    ReservationId id = 0;
    REQUIRE(ledger->reserve("alice", 1, 0, &id) == Code::kOk);
    const uint64_t slot = (id & 0xFFFFFFFFu) - 1;
    patch<int64_t>(segment, offset_reservations + slot * sizeof(Reservation) + offsetof(Reservation, amount_nanousd), INT64_MAX);
  }
  const size_t word = peek<uint64_t>(segment, offsetof(Header, offset_accounts)) + offsetof(Account, words);
  for (const int64_t used : {INT64_MIN, INT64_MAX, INT64_MIN}) {
    INFO("used " << used);
    patch<int64_t>(segment, word, used);
    Balance b;
    REQUIRE(ledger->balance("alice", &b) == Code::kOk);  // under UBSan: no signed overflow reported
    CHECK(b.held_nanousd == INT64_MAX);                   // saturated, like balances()
    std::vector<AccountBalance> all;
    REQUIRE(ledger->balances(&all) == Code::kOk);
    REQUIRE(all.size() == 1);
    CHECK(all[0].balance.held_nanousd == b.held_nanousd);
    uint64_t pending = 0;
    CHECK(ledger->flush_pending(&pending) == Code::kOk);
    CHECK(ledger->flush() == Code::kOk);
  }
}

// Found by fuzz/fuzz_segment: a free process slot whose lanes were damaged into ACTIVE or OWNED
// made the next handle registered there spin forever in its first operation (acquire() waits for a
// lane of its own slot to come free). Registration now repairs such lanes as it repairs a dead
// owner's, or takes another slot when it has no free lane to do that with.
TEST_CASE("a free process slot with damaged lanes: the next handle's operations never wait forever", "[segment]") {
  namespace d = ledger::detail;
  const bool every_lane = GENERATE(false, true);  // true: no lane left to repair with, so slot 1 is taken
  INFO("every lane damaged: " << every_lane);
  TempDir dir;
  {
    auto ledger = open_with(dir.path());
    REQUIRE(ledger->set_budget("alice", 5 * kUsd, Period::kNone, "") == Code::kOk);
  }
  const std::string segment = Ledger::segment_path(dir.path());
  const auto offset_lanes = peek<uint64_t>(segment, offsetof(Header, offset_lanes));
  for (uint32_t k = 0; k < d::kLanesPerProcess; ++k) {  // the lanes of process slot 0, the first a worker takes
    const uint64_t phase = every_lane || k + 1 < d::kLanesPerProcess ? d::kPhaseActive : d::kPhaseOwned;
    patch<uint64_t>(segment, offset_lanes + k * sizeof(d::Lane) + offsetof(d::LaneHeader, ctl),
                    (uint64_t{5} << 32) | (uint64_t{d::kOpReserve} << 12) | (phase << 8));
  }
  const pid_t child = ::fork();
  if (child == 0) {
    ::alarm(20);  // a regression hangs: SIGALRM fails the test instead
    std::unique_ptr<Ledger> ledger;
    if (Ledger::open(dir.path(), Options{}, &ledger) != Code::kOk) ::_exit(2);
    ReservationId id = 0;
    if (ledger->debit("alice", kUsd) != Code::kOk || ledger->reserve("alice", kUsd, 0, &id) != Code::kOk ||
        ledger->commit(id, kUsd) != Code::kOk)
      ::_exit(3);
    uint32_t reclaimed = 0;
    ::_exit(ledger->reclaim(&reclaimed) == Code::kOk ? 0 : 4);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));  // not killed by the alarm
  CHECK(WEXITSTATUS(status) == 0);
  auto ledger = open_with(dir.path());
  CHECK(balance_of(*ledger, "alice").spent_nanousd == 2 * kUsd);
}

// A hold damaged into "being expired by lane L" (kResSettling stamped with a lane whose header says
// it expires that slot) where no process will ever finish that expiry: L's process slot is free, so
// no reclaim looked at it, and once repaired L stays "resolved" while the slot never moves. A commit
// of the hold waited for that expiry forever. Now a free slot's busy lanes are repaired like a dead
// owner's, a resolved expiry counts as in progress only while its resolver is still at it, and the
// commit answers (kAlreadySettled: the hold is in no state a commit can settle).
TEST_CASE("a commit never waits forever for an expiry that no process will finish", "[segment]") {
  namespace d = ledger::detail;
  TempDir dir;
  ReservationId id = 0;
  {
    auto ledger = open_with(dir.path());
    REQUIRE(ledger->set_budget("alice", 5 * kUsd, Period::kNone, "") == Code::kOk);
    REQUIRE(ledger->reserve("alice", kUsd, 0, &id) == Code::kOk);
  }
  const std::string segment = Ledger::segment_path(dir.path());
  const uint32_t slot = static_cast<uint32_t>(id & 0xFFFFFFFFu) - 1, generation = static_cast<uint32_t>(id >> 32);
  const uint32_t lane = d::kLanesPerProcess + 1;  // the first lane of process slot 1 (free)
  const auto offset_lanes = peek<uint64_t>(segment, offsetof(Header, offset_lanes));
  const uint64_t lane_at = offset_lanes + (lane - 1) * sizeof(d::Lane);
  patch<uint64_t>(segment, lane_at + offsetof(d::LaneHeader, ctl),
                  (uint64_t{1} << 32) | (uint64_t{d::kOpExpire} << 12) | (uint64_t{d::kPhaseActive} << 8));
  patch<uint32_t>(segment, lane_at + offsetof(d::LaneHeader, reservation_slot), slot + 1);
  const auto offset_reservations = peek<uint64_t>(segment, offsetof(Header, offset_reservations));
  patch<uint64_t>(segment, offset_reservations + slot * sizeof(Reservation) + offsetof(Reservation, state),
                  (uint64_t{generation} << 32) | (uint64_t{lane} << 4) | d::kResSettling);
  const pid_t child = ::fork();
  if (child == 0) {
    ::alarm(20);  // a regression hangs: SIGALRM fails the test instead
    std::unique_ptr<Ledger> ledger;
    if (Ledger::open(dir.path(), Options{}, &ledger) != Code::kOk) ::_exit(2);
    if (ledger->commit(id, kUsd) != Code::kAlreadySettled) ::_exit(3);
    uint32_t reclaimed = 0;
    if (ledger->reclaim(&reclaimed) != Code::kOk) ::_exit(4);
    ::_exit(ledger->commit(id, kUsd) == Code::kAlreadySettled ? 0 : 5);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));  // not killed by the alarm
  CHECK(WEXITSTATUS(status) == 0);
}

// Found by fuzz/fuzz_segment: set_budget walked the account's descendants through parent links it
// had not checked (an out-of-range link: SIGSEGV), and set_tiers read tier names up to a damaged
// tier_count. A damaged chain now makes set_budget refuse (or end that walk), and the count is
// bounded by the table, as every reader of it already did.
TEST_CASE("admin calls on a damaged chain or tier table refuse or work, never crash", "[segment]") {
  namespace d = ledger::detail;
  TempDir dir;
  auto ledger = open_with(dir.path());
  REQUIRE(ledger->set_budget("org", 9 * kUsd, Period::kNone, "") == Code::kOk);     // account 0
  REQUIRE(ledger->set_budget("team", 8 * kUsd, Period::kNone, "org") == Code::kOk);  // 1
  REQUIRE(ledger->set_budget("alice", kUsd, Period::kNone, "team") == Code::kOk);    // 2
  REQUIRE(ledger->set_tiers({TierSpec{"basic", true, {}, "", 0, ""}}) == Code::kOk);
  const std::string segment = ledger->segment_file();
  const auto offset_accounts = peek<uint64_t>(segment, offsetof(Header, offset_accounts));
  const auto parent_of = [&](uint32_t account) { return offset_accounts + account * sizeof(Account) + offsetof(Account, parent); };
  patch<int32_t>(segment, parent_of(1), INT32_MAX);  // team's parent: far past the table
  CHECK(ledger->set_budget("alice", 2 * kUsd, Period::kNone, "team") == Code::kInvalidArgument);
  CHECK(ledger->set_budget("bob", kUsd, Period::kNone, "team") == Code::kInvalidArgument);
  CHECK(ledger->set_budget("org", 7 * kUsd, Period::kNone, "") == Code::kOk);  // walks up from team: ends there
  patch<int32_t>(segment, parent_of(1), 2);  // team <-> alice: a cycle
  CHECK(ledger->set_budget("bob", kUsd, Period::kNone, "alice") == Code::kInvalidArgument);
  CHECK(ledger->set_budget("org", 6 * kUsd, Period::kNone, "") == Code::kOk);
  patch<int32_t>(segment, parent_of(2), -7);
  patch<int32_t>(segment, parent_of(1), 0);
  CHECK(ledger->set_budget("org", 5 * kUsd, Period::kNone, "") == Code::kOk);
  const auto tier_count = peek<uint64_t>(segment, offsetof(Header, offset_policy)) + offsetof(d::Policy, tier_count);
  patch<uint32_t>(segment, tier_count, UINT32_MAX);
  CHECK(ledger->set_tiers({TierSpec{"basic", true, {}, "", 0, ""}}) == Code::kOk);  // found among the 64 names
  CHECK(ledger->set_tiers({TierSpec{"pro", true, {}, "", 0, ""}}) == Code::kFull);  // no room past them
  CHECK(ledger->set_account_tier("alice", "basic") == Code::kOk);
}

TEST_CASE("the segment's pages are reserved at creation", "[segment]") {
  TempDir dir;
  auto ledger = open_with(dir.path());
  struct stat st {};
  REQUIRE(::stat(ledger->segment_file().c_str(), &st) == 0);
  CHECK(static_cast<uint64_t>(st.st_size) == Ledger::segment_bytes(Limits{}));
  CHECK(static_cast<uint64_t>(st.st_blocks) * 512 >= static_cast<uint64_t>(st.st_size));  // not sparse
}

TEST_CASE("no room for the segment is kFull at creation, and nothing half-built is left", "[segment]") {
  TempDir dir;
  const std::string segment_dir = dir.path() + "/shm";
  REQUIRE(std::filesystem::create_directory(segment_dir));
  const pid_t child = ::fork();
  if (child == 0) {
    // A file size limit below the segment's size stands in for a full filesystem.
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit {4u << 20, 4u << 20};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(3);
    Options options;
    options.segment_dir = segment_dir;
    std::unique_ptr<Ledger> ledger;
    const Status status = Ledger::open(dir.path() + "/ledger", options, &ledger);
    ::_exit(status == Code::kFull ? 0 : 10 + status.value());
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(std::filesystem::is_empty(segment_dir));  // no half-built segment
  // With room, the same open works.
  Options options;
  options.segment_dir = segment_dir;
  auto ledger = open_with(dir.path() + "/ledger", options);
  CHECK(ledger->set_budget("alice", kUsd, Period::kNone, "") == Code::kOk);
}

TEST_CASE("the segment directory is configurable and recorded for workers", "[segment]") {
  TempDir dir;
  const std::string segment_dir = dir.path() + "/shm";
  REQUIRE(std::filesystem::create_directory(segment_dir));
  const std::string ledger_dir = dir.path() + "/ledger";
  Options admin;
  admin.segment_dir = segment_dir + "/";  // a trailing slash is the same directory
  auto first = open_with(ledger_dir, admin);
  REQUIRE(first->set_budget("alice", 5 * kUsd, Period::kNone, "") == Code::kOk);
  CHECK(first->segment_file().rfind(segment_dir + "/ledger-", 0) == 0);
  CHECK(Ledger::segment_path(ledger_dir) == first->segment_file());
  // A worker that knows only the directory finds the same segment.
  auto worker = open_with(ledger_dir);
  REQUIRE(worker->debit("alice", kUsd) == Code::kOk);
  CHECK(balance_of(*first, "alice").spent_nanousd == kUsd);
  // Another segment directory while this segment exists would split the ledger: refused.
  Options elsewhere;
  elsewhere.segment_dir = dir.path();
  std::unique_ptr<Ledger> other;
  CHECK(Ledger::open(ledger_dir, elsewhere, &other) == Code::kInvalidArgument);
  Options relative;
  relative.segment_dir = "shm";
  CHECK(Ledger::open(ledger_dir, relative, &other) == Code::kInvalidArgument);
  first.reset();
  worker.reset();
  REQUIRE(Ledger::destroy_segment(ledger_dir) == Code::kOk);
  CHECK(std::filesystem::is_empty(segment_dir));
}

TEST_CASE("admin handles have process slots that workers cannot take", "[segment]") {
  TempDir dir;
  Options workers;
  workers.limits.max_processes = 2;
  auto a = open_with(dir.path(), workers);
  auto b = open_with(dir.path(), workers);
  std::unique_ptr<Ledger> c;
  CHECK(Ledger::open(dir.path(), workers, &c) == Code::kFull);  // every worker slot is taken
  Options admin;
  admin.admin = true;
  std::vector<std::unique_ptr<Ledger>> admins;
  for (int i = 0; i < 4; ++i) admins.push_back(open_with(dir.path(), admin));  // the sidecar, ledgerctl...
  LedgerStats stats;
  REQUIRE(admins[0]->stats(&stats) == Code::kOk);
  CHECK(stats.processes_attached == 6);
  admins.pop_back();
  CHECK(Ledger::open(dir.path(), workers, &c) == Code::kFull);  // a free admin slot is not a worker's
  b.reset();
  CHECK(Ledger::open(dir.path(), workers, &c) == Code::kOk);
}

TEST_CASE("the hold policy is the segment's: every process's default TTL, at once", "[segment]") {
  TempDir dir;
  ManualClock clock;
  clock.now_ms = utc(2026, 11, 26, 12) * 1000;
  Options admin;
  admin.clock = clock.clock();
  admin.default_ttl_s = 30;  // what the segment starts with
  auto sidecar = open_with(dir.path(), admin);
  REQUIRE(sidecar->set_budget("alice", 5 * kUsd, Period::kNone, "") == Code::kOk);
  Options worker;  // a worker's own options (default 600 s) do not apply to an existing segment
  worker.clock = clock.clock();
  auto w = open_with(dir.path(), worker);
  ReservationId id = 0;
  REQUIRE(w->reserve("alice", kUsd, 0, &id) == Code::kOk);
  clock.now_ms += 31'000;
  uint32_t reclaimed = 0;
  REQUIRE(sidecar->reclaim(&reclaimed) == Code::kOk);
  CHECK(reclaimed == 1);
  HoldPolicy policy = sidecar->hold_policy();
  CHECK(policy.default_ttl_s == 30);
  policy.default_ttl_s = 5;
  REQUIRE(sidecar->set_hold_policy(policy) == Code::kOk);  // a reload: effective for everyone at once
  CHECK(w->hold_policy().default_ttl_s == 5);
  REQUIRE(w->reserve("alice", kUsd, 0, &id) == Code::kOk);
  clock.now_ms += 6'000;
  REQUIRE(sidecar->reclaim(&reclaimed) == Code::kOk);
  CHECK(reclaimed == 1);
  policy.default_ttl_s = 0;
  CHECK(sidecar->set_hold_policy(policy) == Code::kInvalidArgument);
  policy.default_ttl_s = 5;
  policy.tombstone_grace_s = kTombstoneGraceMaxSeconds + 1;
  CHECK(sidecar->set_hold_policy(policy) == Code::kInvalidArgument);
}

TEST_CASE("tombstones never starve live holds and are bounded", "[segment]") {
  TempDir dir;
  ManualClock clock;
  clock.now_ms = utc(2026, 11, 26, 12) * 1000;
  Options options;
  options.clock = clock.clock();
  options.limits.max_reservations = 16;
  auto ledger = open_with(dir.path(), options);
  REQUIRE(ledger->set_budget("alice", 1000 * kUsd, Period::kNone, "") == Code::kOk);
  std::vector<ReservationId> ids(16);
  for (size_t i = 0; i < ids.size(); ++i) {
    REQUIRE(ledger->reserve("alice", kUsd, 10, &ids[i]) == Code::kOk);
    clock.now_ms += 1;  // so that their grace ends in creation order
  }
  clock.now_ms += 11'000;
  uint32_t reclaimed = 0;
  REQUIRE(ledger->reclaim(&reclaimed) == Code::kOk);
  CHECK(reclaimed == 16);
  LedgerStats stats;
  REQUIRE(ledger->stats(&stats) == Code::kOk);
  CHECK(stats.reservations_expired == 8);  // at most half of max_reservations by default
  CHECK(stats.tombstones_dropped == 8);
  // The oldest were dropped: their late commits charge nothing; the kept ones still charge.
  CHECK(ledger->commit(ids[0], kUsd) == Code::kUnknownReservation);
  CHECK(ledger->commit(ids[15], kUsd) == Code::kOk);
  CHECK(balance_of(*ledger, "alice").spent_nanousd == kUsd);
  // Every slot can hold a live hold: a reserve that finds none free drops the oldest tombstone.
  HoldPolicy policy = ledger->hold_policy();
  policy.tombstones_max = 16;
  REQUIRE(ledger->set_hold_policy(policy) == Code::kOk);
  std::vector<ReservationId> live(16);
  for (auto& id : live) REQUIRE(ledger->reserve("alice", kUsd, 600, &id) == Code::kOk);
  ReservationId one_more = 0;
  CHECK(ledger->reserve("alice", kUsd, 600, &one_more) == Code::kFull);  // only live holds left
  REQUIRE(ledger->stats(&stats) == Code::kOk);
  CHECK(stats.reservations_held == 16);
  CHECK(stats.reservations_expired == 0);
  CHECK(stats.tombstones_dropped == 15);  // the 7 left, dropped one by one as slots were needed
}

TEST_CASE("an attach-only open after a reboot rebuilds the segment from the store", "[segment]") {
  TempDir dir;
  static constexpr const char* kKey = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";
  {
    Options admin;
    admin.default_ttl_s = 42;
    admin.limits.max_accounts = 100'000;  // the rebuild must not shrink the ledger
    auto ledger = open_with(dir.path(), admin);
    REQUIRE(ledger->set_budget("team", 10 * kUsd, Period::kNone, "") == Code::kOk);
    REQUIRE(ledger->set_budget("alice", 5 * kUsd, Period::kNone, "team") == Code::kOk);
    REQUIRE(ledger->set_price("vendor/model", kUsd, 2 * kUsd, 7) == Code::kOk);
    REQUIRE(ledger->bind_key("team", kKey) == Code::kOk);
    REQUIRE(ledger->debit("alice", kUsd) == Code::kOk);
    REQUIRE(ledger->flush() == Code::kOk);
  }
  REQUIRE(Ledger::destroy_segment(dir.path()) == Code::kOk);  // a reboot
  Options attach_only;
  attach_only.create_if_missing = false;
  auto ledger = open_with(dir.path(), attach_only);  // ledger_open(): no ledger_create needed
  CHECK(balance_of(*ledger, "alice").spent_nanousd == kUsd);
  CHECK(ledger->limits().max_accounts == 100'000);
  CHECK(ledger->hold_policy().default_ttl_s == 42);
  int64_t estimate = 0;
  REQUIRE(ledger->estimate("vendor/model", 1'000'000, 1'000'000, &estimate) == Code::kOk);  // prices came back
  CHECK(estimate == 3 * kUsd + 7);
  std::string key;
  REQUIRE(ledger->bound_key("team", &key) == Code::kOk);
  CHECK(key == kKey);
  // A directory without a store is still "no ledger".
  TempDir empty;
  std::unique_ptr<Ledger> none;
  CHECK(Ledger::open(empty.path(), attach_only, &none) == Code::kNotFound);
}
