// fuzz_segment — attaching to a damaged segment (DESIGN.md 4, promise 5: bad input never corrupts).
//
// LLVMFuzzerInitialize creates one small ledger (64 accounts, 64 reservations, 4 processes) under a
// temporary directory in /dev/shm, with budgets on a 4-level chain, prices, tiers, bound keys,
// debits, live holds, a settled hold, a tombstone and an adjustment, flushes it and keeps the
// segment file's bytes (and the store's). Each input restores those bytes, damages them, opens the
// ledger and, when that succeeds, calls what workers, ledgerctl and the sidecar call: balance,
// balances, stats, model_spend, key_spend, debit, reserve, authorize, commit, release, adjust, the
// admin calls of init (set_budget, block, set_price, set_tiers, set_account_tier, bind_key),
// reclaim, flush_pending, and rarely flush (the store is restored afterwards). Wrong numbers are
// fine; a crash, undefined behaviour, a leak or a hang is not. Open must say kOk, kIncompatible,
// kNotFound or kFull (every process slot taken), nothing else.
//
// Input: byte 0 = flags, bytes 1-4 = a u32 parameter, then 13-byte patches
//   (u8 where: region in bits 0-3, width 1/2/4/8 bytes in bits 4-5, repeat in bits 6-7; u32 offset;
//   u64 value).
// A patch's offset is taken modulo its region (header, process slots, lanes, accounts, hash,
// reservations, prices, policy, tallies, keys; region >= 10 is the whole file), so that most
// patches land on the fields that matter. Repeat 1 writes the same field of the next 8 entries of
// the region's table, repeat 2 of all of them (every lane of a process slot, every hold), repeat 3
// of every other one.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "layout.hpp"
#include "ledger/ledger.hpp"

namespace {

using ledger::Code;
using ledger::Ledger;

constexpr int64_t kCreatedMs = 1'796'126'400'000;  // 2026-12-01T12:00:00Z
constexpr int64_t kDayMs = 86'400'000;
constexpr const char* kKeyA = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000";
constexpr const char* kKeyB = "bbbbbbbbbbbb1111111111111111111111111111111111111111111111111111";
constexpr const char* kModel = "openai/gpt-4o-mini";
constexpr const char* kNames[] = {"org", "team", "alice", "bob", "carol", "dave", "nobody"};

enum Flags : uint8_t {
  kCreate = 1,       // Options::create_if_missing
  kAdmin = 2,        // Options::admin
  kRaw = 4,          // the input (after byte 0) overwrites the file from offset 0 ...
  kTruncate = 8,     // ... with kRaw: is the whole file; alone: the file is cut to param % size
  kFlushA = 16,      // kFlushA | kFlushB: flush (then restore the store)
  kFlushB = 32,
  kClockShift = 6,   // bits 6-7: the clock (see clock_for)
};

struct State {
  std::string root, dir, segment_dir, segment, store;
  std::vector<char> pristine, pristine_store;
  std::vector<ledger::ReservationId> ids;  // live holds, a settled one, a tombstone
  struct Region {
    uint64_t offset, size, entry;  // entry: the size of one table entry
  } regions[10];
  int64_t now_ms = kCreatedMs;
};
State* g = nullptr;

int64_t clock_now(void*) { return g->now_ms; }

ledger::Options options(bool create, bool admin) {
  ledger::Options o;
  o.create_if_missing = create;
  o.admin = admin;
  o.limits = {64, 64, 4};
  o.segment_dir = g->segment_dir;
  o.store_map_size_bytes = uint64_t{16} << 20;
  o.clock = ledger::Clock{clock_now, nullptr};
  return o;
}

[[noreturn]] void die(const char* what, int code = -1) {
  std::fprintf(stderr, "fuzz_segment: %s (%d)\n", what, code);
  std::abort();
}

void expect_ok(ledger::Status s, const char* what) {
  if (!s.ok()) die(what, static_cast<int>(s.code()));
}

std::vector<char> read_all(const std::string& path) {
  std::vector<char> bytes;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("cannot read", errno);
  char buffer[65536];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;) bytes.insert(bytes.end(), buffer, buffer + n);
  ::close(fd);
  return bytes;
}

void write_all(const std::string& path, const char* data, size_t size) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) die("cannot write", errno);
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) die("ftruncate", errno);
  for (size_t done = 0; done < size;) {
    const ssize_t n = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (n <= 0) die("pwrite", errno);
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

// The ledger every input starts from: something in every table.
void build_pristine() {
  std::unique_ptr<Ledger> l;
  expect_ok(Ledger::open(g->dir, options(true, true), &l), "open");
  const int64_t usd = ledger::kNanoUsdPerUsd;
  expect_ok(l->set_budget("org", 100 * usd, ledger::Period::kMonthly, ""), "org");
  expect_ok(l->set_budget("team", 50 * usd, ledger::Period::kWeekly, "org"), "team");
  expect_ok(l->set_budget("alice", 10 * usd, ledger::Period::kDaily, "team"), "alice");
  expect_ok(l->set_budget("bob", 5 * usd, ledger::Period::kNone, "team"), "bob");
  expect_ok(l->set_budget("carol", 3 * usd, ledger::Period::kDaily, ""), "carol");
  expect_ok(l->set_budget("dave", 1 * usd, ledger::Period::kDaily, "alice"), "dave");
  expect_ok(l->set_price(kModel, 150'000'000, 600'000'000, 0), "price");
  expect_ok(l->set_price("openai/gpt-4o", 2'500'000'000, 10'000'000'000, 1000), "price");
  ledger::TierSpec basic{"basic", false, {kModel}, kModel, 80, kModel};
  ledger::TierSpec pro{"pro", true, {}, "", 0, ""};
  expect_ok(l->set_tiers({basic, pro}), "tiers");
  expect_ok(l->set_account_tier("alice", "basic"), "tier");
  expect_ok(l->set_account_tier("team", "pro"), "tier");
  expect_ok(l->bind_key("bob", kKeyA), "bind");
  expect_ok(l->bind_key("team", kKeyB), "bind");
  expect_ok(l->debit("alice", 1'000'000), "debit");
  expect_ok(l->debit("carol", 2'000'000), "debit");
  expect_ok(l->debit("bob", 300'000), "debit");
  ledger::ReservationId id = 0;
  expect_ok(l->reserve("alice", 5'000'000, 0, &id), "reserve");
  g->ids.push_back(id);  // live (its owner will be gone: the next reclaim expires it)
  std::string_view model;
  expect_ok(l->authorize("alice", kModel, 40'000, 0, &model, &id), "authorize");
  g->ids.push_back(id);
  expect_ok(l->authorize_via("bob", "openai/gpt-4o", 70'000, 0, "bbbbbbbbbbbb", &model, &id), "authorize_via");
  expect_ok(l->commit(id, 65'000), "commit");
  g->ids.push_back(id);  // settled
  expect_ok(l->reserve("carol", 10'000, 1, &id), "reserve");
  g->ids.push_back(id);
  g->now_ms += 2000;
  uint32_t reclaimed = 0;
  expect_ok(l->reclaim(&reclaimed), "reclaim");  // carol's hold: a tombstone
  expect_ok(l->reserve("bob", 20'000, 0, &id), "reserve");
  expect_ok(l->release(id), "release");
  g->ids.push_back(id);
  expect_ok(l->adjust("alice", 1234, kKeyA), "adjust");
  expect_ok(l->block("dave", true), "block");
  expect_ok(l->flush(), "flush");
  g->segment = l->segment_file();
  l.reset();
  g->now_ms = kCreatedMs;
}

void map_regions() {
  ledger::detail::Header h;
  std::memcpy(&h, g->pristine.data(), sizeof h);
  const uint64_t bounds[] = {0, h.offset_processes, h.offset_lanes, h.offset_accounts, h.offset_hash,
                             h.offset_reservations, h.offset_prices, h.offset_policy, h.offset_tallies,
                             h.offset_keys, h.total_size};
  namespace d = ledger::detail;
  const uint64_t entries[] = {sizeof(d::Header), sizeof(d::ProcessSlot), sizeof(d::Lane), sizeof(d::Account), sizeof(uint32_t),
                              sizeof(d::Reservation), sizeof(d::Price), sizeof(d::Tier), sizeof(d::Tally), sizeof(d::KeyEntry)};
  for (int r = 0; r < 10; ++r) g->regions[r] = {bounds[r], bounds[r + 1] - bounds[r], entries[r]};
}

int64_t clock_for(uint8_t flags, uint32_t param) {
  switch (flags >> kClockShift) {
    case 0: return kCreatedMs;
    case 1: return kCreatedMs + 2 * kDayMs;  // holds past their TTL, a new day and week
    case 2: return kCreatedMs + 40 * kDayMs;  // a new month
    default: return kCreatedMs - kDayMs + int64_t{param % (46 * 24 * 60)} * 60'000;  // a day back .. 45 ahead
  }
}

void apply_patches(std::vector<char>& file, const uint8_t* data, size_t size) {
  for (; size >= 13; data += 13, size -= 13) {
    const uint32_t region = data[0] & 0xF;
    const uint32_t width = 1u << ((data[0] >> 4) & 3);
    const uint32_t repeat = data[0] >> 6;
    uint32_t offset;
    uint64_t value;
    std::memcpy(&offset, data + 1, sizeof offset);
    std::memcpy(&value, data + 5, sizeof value);
    uint64_t base = 0, span = file.size(), entry = 8;
    if (region < 10) {
      base = g->regions[region].offset;
      span = g->regions[region].size;
      entry = g->regions[region].entry;
    }
    if (span < width || base + span > file.size()) continue;
    uint64_t at = offset % (span - width + 1);
    const uint64_t count = repeat == 0 ? 1 : repeat == 1 ? 8 : span / entry;
    const uint64_t stride = repeat == 3 ? 2 * entry : entry;
    for (uint64_t k = 0; k < count && at + width <= span; ++k, at += stride)
      std::memcpy(file.data() + base + at, &value, width);  // little-endian: the low bytes
  }
}

void exercise(Ledger& l, uint32_t param) {
  ledger::Balance b;
  for (const char* name : kNames) (void)l.balance(name, &b);
  std::vector<ledger::AccountBalance> balances;
  (void)l.balances(&balances);
  ledger::LedgerStats stats;
  (void)l.stats(&stats);
  std::vector<ledger::ModelSpend> models;
  (void)l.model_spend(&models);
  std::vector<ledger::KeySpend> keys;
  (void)l.key_spend(&keys);
  uint64_t pending = 0;
  (void)l.flush_pending(&pending);
  (void)l.hold_policy();

  (void)l.debit("alice", 1000);
  (void)l.debit("carol", 1000);  // a root without a key: the lane-less path
  (void)l.debit("bob", 1000);    // through a bound key
  (void)l.debit(ledger::AccountRef{param % 80}, 10);
  ledger::ReservationId id = 0;
  if (l.reserve("dave", 100, 0, &id).ok()) (void)l.commit(id, 50);
  if (l.reserve("carol", 5000, 0, &id).ok()) (void)l.commit(id, 7000);
  if (l.reserve("bob", 5000, 1, &id).ok()) (void)l.release(id);
  std::string_view model;
  if (l.authorize("alice", kModel, 1000, 0, &model, &id).ok()) (void)l.commit(id, 900);
  if (l.authorize_via("bob", kModel, 1000, 0, kKeyA, &model, &id).ok()) (void)l.commit(id, 1100);
  int64_t estimate = 0;
  (void)l.estimate("openai/gpt-4o", 1000, 500, &estimate);
  (void)l.adjust("team", 77, kKeyB);
  (void)l.adjust("org", 5);
  // What ledgerctl init and a SIGHUP do to an existing ledger.
  const int64_t usd = ledger::kNanoUsdPerUsd;
  (void)l.set_budget("dave", 2 * usd, ledger::Period::kWeekly, "alice");  // an existing account, re-parented
  (void)l.set_budget("alice", 9 * usd, ledger::Period::kDaily, "team");
  (void)l.set_budget("erin", usd, ledger::Period::kMonthly, "carol");     // a new one
  (void)l.block("bob", (param & 1) != 0);
  (void)l.set_price(kModel, 160'000'000, 610'000'000, 0);
  (void)l.set_tiers({ledger::TierSpec{"basic", false, {kModel, "openai/gpt-4o"}, kModel, 90, kModel}});
  (void)l.set_account_tier("carol", "basic");
  (void)l.bind_key("carol", kKeyB);
  std::string bound;
  (void)l.bound_key("bob", &bound);
  for (size_t i = 0; i < g->ids.size(); ++i) {
    if (i % 2 == 0) (void)l.commit(g->ids[i], 3000);
    else (void)l.release(g->ids[i]);
  }
  (void)l.commit((uint64_t{param} << 32) | (param % 70), 1);  // any id at all
  uint32_t reclaimed = 0;
  (void)l.reclaim(&reclaimed);
  (void)l.balances(&balances);
  (void)l.stats(&stats);
  (void)l.flush_pending(&pending);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g = new State;
  char root[] = "/dev/shm/ledger-fuzz-segment.XXXXXX";
  if (::mkdtemp(root) == nullptr) die("mkdtemp", errno);
  g->root = root;
  g->dir = g->root + "/ledger";
  g->segment_dir = g->root + "/shm";
  if (::mkdir(g->segment_dir.c_str(), 0700) != 0) die("mkdir", errno);
  build_pristine();
  g->store = g->dir + "/ledger.mdb";
  g->pristine = read_all(g->segment);
  g->pristine_store = read_all(g->store);
  if (g->pristine.size() < sizeof(ledger::detail::Header)) die("segment too small");
  map_regions();
  std::atexit([] { std::filesystem::remove_all(g->root); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 5) return 0;
  const uint8_t flags = data[0];
  uint32_t param;
  std::memcpy(&param, data + 1, sizeof param);
  std::vector<char> file = g->pristine;
  if ((flags & kRaw) != 0 && (flags & kTruncate) != 0) {
    file.assign(reinterpret_cast<const char*>(data) + 1, reinterpret_cast<const char*>(data) + size);
  } else if ((flags & kRaw) != 0) {
    std::memcpy(file.data(), data + 1, std::min(size - 1, file.size()));
  } else {
    apply_patches(file, data + 5, size - 5);
    if ((flags & kTruncate) != 0) file.resize(param % file.size());
  }
  write_all(g->segment, file.data(), file.size());
  g->now_ms = clock_for(flags, param);

  std::unique_ptr<Ledger> l;
  const ledger::Status s = Ledger::open(g->dir, options((flags & kCreate) != 0, (flags & kAdmin) != 0), &l);
  if (!s.ok()) {
    const Code c = s.code();
    if (c != Code::kIncompatible && c != Code::kNotFound && c != Code::kFull) die("open: unexpected status", static_cast<int>(c));
    if (l != nullptr) die("a handle with an error");
    return 0;
  }
  exercise(*l, param);
  const bool flush = (flags & (kFlushA | kFlushB)) == (kFlushA | kFlushB);
  if (flush) (void)l->flush();
  l.reset();
  if (flush) write_all(g->store, g->pristine_store.data(), g->pristine_store.size());
  return 0;
}
