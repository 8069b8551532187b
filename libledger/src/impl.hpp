// impl.hpp — Ledger::Impl: one process's handle on a shared segment.
//
// Process-local state only (the mapping, the lock file descriptor, the process slot this handle owns
// and the local lane bitmap). Everything shared lives in the segment (layout.hpp).
#pragma once

#include <time.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "atomics.hpp"
#include "check.hpp"
#include "layout.hpp"
#include "ledger/ledger.hpp"

// Crash points: compiled in only for the crash-repair test build (LEDGER_CRASH_POINTS), where a
// countdown makes the process _exit(77) at the Nth point reached, i.e. "killed between two
// instructions" at every interesting place, deterministically.
// Pause points (same build): a test hook may stop a process there, e.g. a helper between reading a
// word and helping, while other processes move on.
#ifdef LEDGER_CRASH_POINTS
namespace ledger::detail {

static_assert(detail::kModelNameMax == kModelIdMax, "the segment holds model ids of kModelIdMax bytes");
void crash_point();
void pause_point();
}
#define LEDGER_CRASH_POINT() ::ledger::detail::crash_point()
#define LEDGER_PAUSE_POINT() ::ledger::detail::pause_point()
#else
#define LEDGER_CRASH_POINT() ((void)0)
#define LEDGER_PAUSE_POINT() ((void)0)
#endif

namespace ledger::detail {

// FNV-1a, 32 bits: the hash of account names (hash table) and model names (price table).
inline uint32_t fnv1a32(std::string_view text) {
  uint32_t h = 2166136261u;
  for (unsigned char c : text) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

// ---- packing helpers --------------------------------------------------------------------------
inline constexpr uint64_t kRequestMask = (uint64_t{1} << kRequestBits) - 1;
inline constexpr uint32_t kTagMask = (1u << kTagBits) - 1;
inline constexpr uint32_t kLaneMask = (1u << kLaneBits) - 1;

inline uint64_t meta_requests(uint64_t meta) { return meta & kRequestMask; }
inline uint32_t meta_tag(uint64_t meta) {
  return static_cast<uint32_t>((meta >> kRequestBits) & kTagMask);
}
inline uint32_t meta_lane(uint64_t meta) {
  return static_cast<uint32_t>(meta >> (kRequestBits + kTagBits));
}
inline uint64_t make_meta(uint64_t requests, uint32_t tag, uint32_t lane) {
  return (requests & kRequestMask) | (uint64_t{tag & kTagMask} << kRequestBits) |
         (uint64_t{lane & kLaneMask} << (kRequestBits + kTagBits));
}
// Period tag: kind (2 bits) | index (16 bits). kNone is tag 0, which a fresh word also carries.
inline uint32_t make_tag(Period kind, int64_t index) {
  return (static_cast<uint32_t>(kind) << 16) | (static_cast<uint32_t>(index) & 0xFFFFu);
}
inline Period tag_kind(uint32_t tag) { return static_cast<Period>((tag >> 16) & 3u); }
inline uint32_t tag_index(uint32_t tag) { return tag & 0xFFFFu; }
inline uint32_t tag_parity(uint32_t tag) { return tag & 1u; }
// Rate words (layout.hpp, AccountRules): counts in `used`, the minute in `meta`.
inline constexpr uint64_t kRateRequestMax = (uint64_t{1} << kRateRequestBits) - 1;
inline constexpr uint64_t kRateTokenMax = (uint64_t{1} << kRateTokenBits) - 1;
inline constexpr uint64_t kRateConcurrentMax = (uint64_t{1} << kRateConcurrentBits) - 1;
inline uint64_t rate_requests(int64_t used) { return static_cast<uint64_t>(used) & kRateRequestMax; }
inline uint64_t rate_tokens(int64_t used) { return (static_cast<uint64_t>(used) >> kRateRequestBits) & kRateTokenMax; }
inline uint64_t rate_concurrent(int64_t used) { return static_cast<uint64_t>(used) >> (kRateRequestBits + kRateTokenBits); }
inline int64_t make_rate_used(uint64_t requests, uint64_t tokens, uint64_t concurrent) {
  return static_cast<int64_t>((requests & kRateRequestMax) | ((tokens & kRateTokenMax) << kRateRequestBits) |
                              ((concurrent & kRateConcurrentMax) << (kRateRequestBits + kRateTokenBits)));
}
inline uint32_t rate_minute(uint64_t meta) { return static_cast<uint32_t>(meta); }
inline uint64_t make_rate_meta(uint32_t minute, uint32_t lane) {
  return uint64_t{minute} | (uint64_t{lane & kLaneMask} << (kRequestBits + kTagBits));
}
inline constexpr uint64_t kRateLocation = uint64_t{1} << 61;  // Target::location namespace bit (rules index + 1)

// The stamp a lease epoch puts on a global account's period word (layout.hpp, LeaseWord).
inline uint32_t epoch_stamp(uint32_t lease_seq) { return kEpochStampBase | ((lease_seq >> 1) & (kEpochStamps - 1)); }

inline uint64_t make_ctl(uint32_t seq, uint32_t phase, uint32_t kind, uint32_t resolver,
                         uint32_t bits) {
  return (uint64_t{seq} << 32) | (uint64_t{resolver & kLaneMask} << 16) |
         (uint64_t{kind & 0xFu} << 12) | (uint64_t{phase & 0xFu} << 8) | (bits & 0xFFu);
}
inline uint32_t ctl_seq(uint64_t ctl) { return static_cast<uint32_t>(ctl >> 32); }
inline uint32_t ctl_resolver(uint64_t ctl) { return static_cast<uint32_t>(ctl >> 16) & kLaneMask; }
inline uint32_t ctl_kind(uint64_t ctl) { return static_cast<uint32_t>(ctl >> 12) & 0xFu; }
inline uint32_t ctl_phase(uint64_t ctl) { return static_cast<uint32_t>(ctl >> 8) & 0xFu; }
inline uint32_t ctl_bits(uint64_t ctl) { return static_cast<uint32_t>(ctl) & 0xFFu; }
// LaneHeader::applied_high: op seq (32) | the applied bits of targets [8, 16).
inline uint64_t make_applied_high(uint32_t seq, uint32_t bits) { return (uint64_t{seq} << 32) | (bits & 0xFFu); }
inline uint32_t applied_high_seq(uint64_t high) { return static_cast<uint32_t>(high >> 32); }
// Whether target j's applied bit is set for the op of `ctl` (read ctl first; for j >= 8 the bit is
// in applied_high, which counts only while it carries the same op seq).
inline bool applied_bit(const Lane& lane, uint64_t ctl, uint32_t j) {
  if (j < 8) return (ctl_bits(ctl) & (1u << j)) != 0;
  const uint64_t high = load(lane.header.applied_high);
  return applied_high_seq(high) == ctl_seq(ctl) && ((high >> (j - 8)) & 1u) != 0;
}

inline uint64_t make_res_state(uint32_t generation, uint32_t status, uint32_t lane) {
  return (uint64_t{generation} << 32) | (uint64_t{lane & kLaneMask} << 4) | (status & 0xFu);
}
inline uint32_t res_generation(uint64_t state) { return static_cast<uint32_t>(state >> 32); }
inline uint32_t res_status(uint64_t state) { return static_cast<uint32_t>(state) & 0xFu; }
inline uint32_t res_lane(uint64_t state) { return static_cast<uint32_t>(state >> 4) & kLaneMask; }
inline uint64_t make_reservation_id(uint32_t slot, uint32_t generation) {
  return (uint64_t{generation} << 32) | (uint64_t{slot} + 1);
}

// Tally::key: (account + 1) << 32 | kind << 28 | (id + 1); 0 = a free entry.
inline uint64_t make_tally_key(uint32_t account, uint32_t kind, uint32_t id) {
  return (uint64_t{account + 1} << 32) | (uint64_t{kind & 0xFu} << 28) | ((id + 1) & 0x0FFFFFFFu);
}
inline uint32_t tally_key_account(uint64_t key) { return static_cast<uint32_t>(key >> 32) - 1; }
inline uint32_t tally_key_kind(uint64_t key) { return static_cast<uint32_t>(key >> 28) & 0xFu; }
// The id (model index, key index); UINT32_MAX for "none" (an adjustment without a key).
inline uint32_t tally_key_id(uint64_t key) { return (static_cast<uint32_t>(key) & 0x0FFFFFFFu) - 1; }

// Arithmetic on values read from the segment saturates: a damaged word or hold must give a wrong
// number, never undefined behaviour. (Settlements saturate too, so INT64_MAX is a legal word.)
inline int64_t add_saturating(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}
inline int64_t sub_saturating(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) return b > 0 ? INT64_MIN : INT64_MAX;
  return r;
}

inline uint64_t make_proc_state(uint32_t generation, uint32_t status) {
  return (uint64_t{generation} << 32) | status;
}
inline uint32_t proc_generation(uint64_t state) { return static_cast<uint32_t>(state >> 32); }
inline uint32_t proc_status(uint64_t state) { return static_cast<uint32_t>(state); }

// Lock file byte ranges (OFD locks, released by the kernel when the holder dies).
inline constexpr off_t kInitLockByte = 0;
inline constexpr off_t kAdminLockByte = 1;
inline constexpr off_t kFlushLockByte = 2;
inline constexpr off_t kSidecarLockByte = 3;
inline constexpr off_t kSlotLockBase = 64;

// What one target of an operation should do (see Target in layout.hpp). An aggregate without
// member initializers, so that the settle path's array of them costs nothing until filled: declare
// one as `TargetSpec spec{}` (zeroed) or fill it whole with a designated initializer.
struct TargetSpec {
  uint32_t account;
  uint32_t tag;              // admit: the current period; forced: the period the change belongs to
  int64_t delta;
  int64_t delta_extra;         // see Target::delta_extra (layout.hpp)
  int32_t delta_requests;
  uint32_t flags;            // kTargetAdmit / kTargetUndo / kTargetTally
  uint32_t undo_of;
};

// One operation in progress on a lane of this process.
struct OpScope {
  Lane* lane = nullptr;
  uint32_t lane_id = 0;
  uint32_t seq = 0;
  uint32_t n_targets = 0;
};

// CLOCK_MONOTONIC_COARSE in ms: the clock of lease deadlines, the same for every process (a vDSO read).
inline int64_t monotonic_coarse_ms() {
  struct timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

// An account and its ancestors, account first, as an admission resolved them: the key a settlement
// goes through, each level's rate word (AccountRules index + 1, 0 = no rate limits), and the rule
// flags of the whole chain (or-ed).
struct Chain {
  uint32_t accounts[kChainDepthMax];
  uint32_t rates[kChainDepthMax] = {};
  uint32_t depth = 0;
  uint32_t key = 0;  // KeyEntry index + 1: the nearest bound key (the default rule), 0 = none
  uint32_t flags = 0;
};
// A held reservation as its settler reads it (stable while held: only its settler writes it).
struct HoldView {
  int64_t amount;
  uint32_t chain[kChainDepthMax];
  uint32_t tags[kChainDepthMax];
  uint32_t depth;
};
// An account's own model list as authorize reads it (ModelListFlags, fallback model index + 1, and
// whether the requested model is on the list).
struct ModelListView {
  uint32_t flags = 0;
  uint32_t fallback = 0;
  bool allowed = false;
};
// What an admission landed: the period (or, for a rate word, the minute) of each forward target,
// and the levels whose rate words it counted in (bit per level).
struct Admitted {
  uint32_t tags[kUndoBase] = {};
  uint32_t rate_levels = 0;
};

// The clock read once per operation: one monotonic read, and the wall clock derived from it (see
// Ledger::Impl::now). Period tags are derived on demand (tag()), since most chains use one or two
// kinds and a monthly index needs a civil-date conversion.
struct Now {
  // A settlement rarely needs the clock (only when the period it belonged to is gone), so it passes
  // an unread Now (ms < 0) and apply() reads the clock itself when it must.
  static Now unread() {
    Now n;
    n.ms = -1;
    return n;
  }
  int64_t ms = 0;       // wall clock (UTC ms): periods, hold deadlines, minutes of rate limits
  int64_t mono_ms = 0;  // CLOCK_MONOTONIC_COARSE: lease deadlines
  uint32_t minute() const { return static_cast<uint32_t>(ms / 60'000); }
  int64_t s = 0;
  int64_t days = 0;
  const std::atomic<uint64_t>* month_cache = nullptr;  // (day << 32) | month index of that day
  uint32_t tag(uint32_t kind) const;
};

inline uint32_t Now::tag(uint32_t kind) const {
  switch (static_cast<Period>(kind)) {
    case Period::kDaily:
      return make_tag(Period::kDaily, days);
    case Period::kWeekly:
      return make_tag(Period::kWeekly, (days + 3) / 7);  // Monday weeks (days >= 0)
    case Period::kMonthly: {
      const uint64_t cached = month_cache->load(std::memory_order_relaxed);
      if (cached != 0 && static_cast<int64_t>(cached >> 32) == days)
        return make_tag(Period::kMonthly, static_cast<int64_t>(cached & 0xFFFFFFFFu));
      const int64_t month = period_index(Period::kMonthly, s);
      const_cast<std::atomic<uint64_t>*>(month_cache)
          ->store((static_cast<uint64_t>(days) << 32) | static_cast<uint32_t>(month), std::memory_order_relaxed);
      return make_tag(Period::kMonthly, month);
    }
    case Period::kNone:
      break;
  }
  return 0;
}

}  // namespace ledger::detail

struct MDB_txn;
namespace ledger::db {
struct Env;
}

namespace ledger {

// estimate() notes the tokens of its result for this thread; the next admission of exactly that
// amount on the thread counts them against tokens-per-minute limits (and takes them).
void note_estimate_tokens(int64_t amount, uint64_t tokens);
uint32_t take_estimate_tokens(int64_t amount);

namespace detail {
// True when <dir>/ledger.mdb exists (a ledger was initialized there).
bool store_exists(const std::string& dir);
}  // namespace detail

struct __attribute__((visibility("hidden"))) Ledger::Impl {  // internal: not exported with Ledger
  // ---- process-local state --------------------------------------------------------------------
  std::string dir;
  std::string segment_dir;   // where the segment lives (see Options::segment_dir)
  std::string segment_path;  // segment_dir + "/ledger-<hash>"
  Options options;
  int lock_fd = -1;
  void* mapping = nullptr;
  size_t size = 0;
  detail::Header* header = nullptr;
  detail::ProcessSlot* processes = nullptr;
  detail::Lane* lanes = nullptr;
  detail::Account* accounts = nullptr;
  uint32_t* hash = nullptr;
  detail::Reservation* reservations = nullptr;
  detail::Price* prices = nullptr;
  detail::Policy* policy = nullptr;
  detail::Tally* tallies = nullptr;
  detail::KeyEntry* keys = nullptr;
  detail::AccountLeases* leases = nullptr;
  detail::AccountRules* rules = nullptr;
  uint32_t max_accounts = 0, max_reservations = 0, max_processes = 0, process_slots = 0, rules_max = 0;
  uint32_t hash_mask = 0, tally_mask = 0, key_mask = 0;

  uint32_t process_slot = UINT32_MAX;
  uint32_t process_generation = 0;
  // The fork epoch this handle registered in; published last (release), after process_slot.
  std::atomic<uint64_t> fork_epoch{UINT64_MAX};
  mutable std::atomic<uint64_t> month_cache{0};  // (day << 32) | month index of that day
  // The wall clock minus the monotonic one, and until when (monotonic ms) it is used before it is
  // measured again: an operation reads one clock (see now()).
  mutable std::atomic<int64_t> wall_offset_ms{0};
  mutable std::atomic<int64_t> wall_offset_until_ms{INT64_MIN};
  std::atomic<bool> reregistering{false};
  // OFD locks exclude other open file descriptions only; threads sharing this handle also need a
  // process-local mutex. Re-created in a forked child (a copy may be locked by a parent thread).
  std::unique_ptr<std::mutex> admin_mutex = std::make_unique<std::mutex>();
  std::unique_ptr<std::mutex> flush_mutex = std::make_unique<std::mutex>();
  std::atomic<int> local_admin_writers{0};

  // What this handle's last flush left in the store, so the next flush skips the B-tree reads of
  // records it already knows. Valid only while the store still carries the same (store id, flush
  // sequence) that this handle's last successful flush wrote: any other writer of those records
  // (another flusher) bumps the sequence, and a failed flush clears it. Guarded by flush_mutex.
  static constexpr uint32_t kFlushCacheAccountsMax = 1u << 20;
  struct FlushCache {
    struct Config {
      int64_t limit = 0;
      int32_t parent = -1;
      uint8_t period = 0, blocked = 0, tier = 0, valid = 0;
      uint32_t key = 0;
      uint8_t global = 0;
      bool operator==(const Config&) const = default;
    };
    struct Totals {
      uint32_t tag = 0;  // period tag (words) or UTC day (day bucket)
      bool valid = false;
      int64_t spent = 0;
      uint64_t requests = 0;
    };
    struct Entry {
      Config config;
      Totals words[2];
      Totals day;
    };
    uint64_t store_id = 0, sequence = 0;  // sequence 0: nothing known
    std::vector<Entry> entries;           // by account index
    std::vector<uint32_t> order;          // live accounts sorted by name (names never change)
    uint32_t order_count = 0;             // account_count the order was built for
  };
  FlushCache flush_cache;

  ~Impl();

  // ---- segment.cpp ----------------------------------------------------------------------------
  Status attach(bool create, const std::string& segment_name);
  Status locate_segment(const std::string& segment_name);
  Status open_segment_file(bool create, int* fd, bool* fresh);
  Status create_segment(int fd, const Limits& limits);
  void map_tables();
  Status register_process();
  bool try_claim_process_slot(uint32_t slot, bool adopt_dead);
  void unregister_process();
  Status ensure_registered();  // re-registers a handle carried across fork()
  bool try_lock_byte(off_t byte) const;
  void lock_byte_wait(off_t byte) const;
  void unlock_byte(off_t byte) const;
  bool byte_locked_by_other(off_t byte) const;  // by another open file description
  bool admin_lock_held() const;  // by any other open file description (a live admin writer)

  // ---- leases.cpp (global mode) ----------------------------------------------------------------
  // The limit admission applies to account `index` for period `tag`: its own limit for a local
  // account; for a global one, this host's lease for that period while it is valid, else 0.
  // *lease_seq: the lease's seqlock value read (0 for a local account), for lease_moved().
  // A soft account's own limit never denies; a top-up raises a local one while it lasts.
  int64_t admission_limit(uint32_t index, uint32_t tag, const detail::Now& now, uint32_t* lease_seq) const {
    const detail::Account& a = accounts[index];
    const uint32_t global = detail::load(a.global, detail::memory_order_relaxed);
    const uint32_t flags = detail::load(a.rules_flags, detail::memory_order_relaxed) & (detail::kRuleSoft | detail::kRuleTopup);
    if ((global | flags) == 0) [[likely]] {
      *lease_seq = 0;
      return detail::load(a.limit_nanousd, detail::memory_order_relaxed);
    }
    return ruled_limit(index, tag, now, lease_seq);
  }
  int64_t ruled_limit(uint32_t index, uint32_t tag, const detail::Now& now, uint32_t* lease_seq) const;  // rules.cpp
  // One consistent read of the lease word of (index, tag): false when it is being rewritten, is for
  // another window, or its deadline has passed at `mono_ms` (fail closed). *seq: the seqlock value.
  bool read_lease(uint32_t index, uint32_t tag, int64_t mono_ms, int64_t* limit, uint32_t* seq) const {
    const detail::LeaseWord& w = leases[index].words[detail::tag_parity(tag)];
    const uint32_t before = detail::load(w.seq);
    const uint32_t lease_tag = detail::load(w.tag, detail::memory_order_relaxed);
    *limit = detail::load(w.limit_nanousd, detail::memory_order_relaxed);
    const int64_t deadline = detail::load(w.deadline_ms, detail::memory_order_relaxed);
    detail::fence_acquire();
    *seq = before;
    return (before & 1u) == 0 && detail::load(w.seq, detail::memory_order_relaxed) == before && lease_tag == tag &&
           mono_ms < deadline;
  }
  int64_t lease_limit(uint32_t index, uint32_t tag, int64_t mono_ms, uint32_t* seq_read) const;
  // REQUIRES: the sidecar's lease writer. Puts epoch_stamp(seq) on account `index`'s word of
  // `parity` (see LeaseWord): a fast debit that read an older lease can no longer land.
  void stamp_epoch(uint32_t index, uint32_t parity, uint32_t seq) const;
  // A denied admission of a global account: raises its lease word's wanted_nanousd to `amount`.
  // Writes shared memory through the segment pointer, so callable from const paths.
  void note_lease_wanted(uint32_t index, uint32_t tag, int64_t amount) const;
  // True when the lease of (index, tag) was rewritten since it was read at `seq`.
  bool lease_moved(uint32_t index, uint32_t tag, uint32_t seq) const {
    return detail::load(leases[index].words[detail::tag_parity(tag)].seq) != seq;
  }

  // ---- keys.cpp -------------------------------------------------------------------------------
  // The key a text names (64 hex, or a unique prefix of >= 12): its index + 1 in *key. A full hash
  // not known yet is registered (admin lock). kInvalidArgument: bad text, unknown or ambiguous
  // prefix; kFull: the key table is full.
  Status resolve_key(std::string_view text, uint32_t* key);
  // Lock-free lookup: index + 1 of the unique key matching the first `nibbles` hex digits of
  // `hash`; 0 when none; UINT32_MAX when more than one matches.
  uint32_t find_key(const uint8_t* hash, uint32_t nibbles) const;
  // REQUIRES: the admin lock. Index + 1 of the key, registered if new; 0 when the table is full.
  uint32_t register_key(const uint8_t* hash);
  uint32_t register_key_hex(std::string_view hex);  // 64 hex digits; 0 when invalid or full
  std::string key_hex(uint32_t key) const;  // "" for 0 or out of range

  // ---- engine.cpp -----------------------------------------------------------------------------
  // Inline: every admission reads one clock, CLOCK_MONOTONIC_COARSE (a vDSO read, which is a third
  // of a debit's time), and derives the wall clock (CLOCK_REALTIME_COARSE) from it with an offset
  // measured again every kWallOffsetRefreshMs: a wall-clock step is seen within that time.
  static constexpr int64_t kWallOffsetRefreshMs = 250;
  int64_t wall_ms(int64_t mono_ms) const {
    if (options.clock.now_ms != nullptr) [[unlikely]] return options.clock.now_ms(options.clock.context);
    if (mono_ms >= wall_offset_until_ms.load(std::memory_order_acquire)) [[unlikely]] return measure_wall_offset(mono_ms);
    return mono_ms + wall_offset_ms.load(std::memory_order_relaxed);
  }
  int64_t measure_wall_offset(int64_t mono_ms) const;  // segment.cpp
  int64_t now_ms() const { return wall_ms(detail::monotonic_coarse_ms()); }
  detail::Now now() const {
    detail::Now n;
    n.mono_ms = detail::monotonic_coarse_ms();
    n.ms = std::max<int64_t>(wall_ms(n.mono_ms), 0);  // before 1970: not a time a ledger runs at; keeps the arithmetic simple
    n.s = n.ms / 1000;
    n.days = n.ms / 86'400'000;
    n.month_cache = &month_cache;
    return n;
  }
  uint32_t lanes_total() const { return process_slots * detail::kLanesPerProcess; }
  detail::Lane& lane_by_id(uint32_t lane_id) const {
    LEDGER_CHECK(lane_id >= 1 && lane_id <= lanes_total());
    return lanes[lane_id - 1];
  }
  int32_t find_index(std::string_view name) const;
  // Lanes are claimed and freed (ownership); holds are released (a settlement): two words.
  Status claim_lane(detail::OpScope* op);    // claims a free lane of this process (phase OWNED)
  void start(detail::OpScope* op, uint32_t kind);  // a new op seq on the owned lane (ACTIVE)
  void finish(detail::OpScope* op);          // the op is over; the lane stays owned
  void free_lane(detail::OpScope* op);       // the lane is free again (IDLE)
  Status begin(detail::OpScope* op, uint32_t kind) {
    Status status = claim_lane(op);
    if (status.ok()) start(op, kind);
    return status;
  }
  void end(detail::OpScope* op);             // finish + release in one store
  void write_spec(detail::OpScope* op, uint32_t j, const detail::TargetSpec& spec);
  // Applies target j. spec_written: the entry's spec is already in the lane (settlement, repair);
  // otherwise the first attempt writes spec and attempt in one pass (admission).
  // *landed (admission only): the CAS landed but the level must be undone (a lease lowered meanwhile).
  Code apply(detail::OpScope* op, uint32_t j, const detail::TargetSpec& spec, const detail::Now& now,
             uint32_t* effective_tag, bool spec_written, bool* landed = nullptr);
  void help(uint32_t lane_id, uint64_t location, detail::PeriodWord current) const;
  void record_attempt(detail::OpScope* op, uint32_t j, const detail::TargetSpec* first_spec, uint32_t tag, uint64_t location,
                      detail::PeriodWord desired);
  bool cas_helping(const detail::OpScope& op, detail::PeriodWord& word, uint64_t location, detail::PeriodWord& current,
                   detail::PeriodWord desired);
  Code apply_tally(detail::OpScope* op, uint32_t j, const detail::TargetSpec& spec, uint32_t* effective_tag);
  Code apply_level(detail::OpScope* op, uint32_t j, const detail::TargetSpec& spec, const detail::Now& now,
                   uint32_t* effective_tag, bool spec_written, bool* landed);
  Code apply_rate(detail::OpScope* op, uint32_t j, const detail::TargetSpec& spec, const detail::Now& now,
                  uint32_t* effective_tag, bool spec_written);
  bool plan_forced(const detail::TargetSpec& spec, const detail::Now& now, uint32_t stamp, detail::PeriodWord** word,
                   detail::PeriodWord* current, detail::PeriodWord* desired, uint32_t* tag) const;

  // ---- rules.cpp (account rules: own model lists, soft limits, top-ups, rate limits) -----------
  // The rate word after admitting spec (a request, its tokens, a concurrent hold) in now's minute;
  // false when a limit denies, with *retry_ms the hint for when it may pass.
  bool plan_rate_admission(const detail::AccountRules& r, detail::PeriodWord current, const detail::TargetSpec& spec,
                           const detail::Now& now, uint32_t stamp, detail::PeriodWord* desired, uint32_t* minute,
                           uint32_t* retry_ms) const;
  detail::PeriodWord plan_rate_forced(detail::PeriodWord current, const detail::TargetSpec& spec, uint32_t stamp) const;
  static void note_rate_denial(uint32_t retry_ms);
  template <class Read>
  void read_guarded(const detail::AccountRules& r, Read&& read) const;
  // The active or past top-up of entry `entry`; false when it has none.
  bool read_topup(uint32_t entry, int64_t* amount, int64_t* until_ms) const;
  detail::ModelListView read_model_list(uint32_t entry, int32_t model) const;
  void read_model_names(const detail::AccountRules& r, RulesSpec* out) const;
  // REQUIRES: the admin lock. Rewrites an entry's model list under its seqlock.
  void write_model_list(detail::AccountRules& r, uint32_t list_flags, const std::vector<int32_t>& models, int32_t fallback);
  // The AccountRules index of account `index` when the flag is in force, else -1.
  int32_t rules_of(uint32_t index, uint8_t flag) const {
    const detail::Account& a = accounts[index];
    if ((detail::load(a.rules_flags, detail::memory_order_relaxed) & flag) == 0) return -1;
    const uint32_t r = detail::load(a.rules, detail::memory_order_relaxed);
    return r != 0 && r <= rules_max ? static_cast<int32_t>(r - 1) : -1;
  }
  Status write_rules(uint32_t index, const RulesSpec& spec);
  Status write_topup(uint32_t index, int64_t amount_nanousd, int64_t until_unix_ms);
  // What account `index` sets (false when nothing: no flags, no entry).
  bool read_rules(uint32_t index, RulesSpec* out, Topup* topup) const;
  // REQUIRES: the admin lock. The account's entry, assigned if it has none; nullptr when full.
  detail::AccountRules* claim_rules(uint32_t index);
  // The word a Target::location names; nullptr when out of range.
  detail::PeriodWord* word_at(uint64_t location) const;
  uint32_t current_tag(const detail::Account& account, const detail::Now& now) const {
    return now.tag(detail::load(account.period_kind, detail::memory_order_relaxed) & 3u);
  }
  // model: the model index + 1 a reservation is for (authorize), 0 = none. key: the KeyEntry
  // index + 1 the request goes through, 0 = the default rule (the chain's nearest bound key).
  // tokens: what the request counts against tokens-per-minute limits at admission.
  Status admit(uint32_t kind, uint32_t account, int64_t amount, uint32_t ttl_s, ReservationId* id,
               uint32_t model = 0, uint32_t key = 0, uint32_t tokens = 0);
  Code admit_levels(detail::OpScope* op, const detail::Chain& chain, uint32_t kind, int64_t amount, uint32_t tokens,
                    const detail::Now& now, detail::Admitted* out);
  void publish_hold(uint32_t slot, uint32_t generation, const detail::Chain& chain, const detail::Admitted& admitted,
                    int64_t amount, uint32_t tokens, uint32_t ttl_s, const detail::Now& now, uint32_t model);
  // A free reservation slot claimed by `op` (kResReserving), dropping the oldest tombstone when no
  // slot is free; UINT32_MAX when every slot holds a live hold.
  uint32_t claim_reservation_slot(const detail::OpScope& op, uint32_t* generation);
  uint32_t claim_oldest_tombstone(const detail::OpScope& op, uint32_t* generation);
  void undo_fast_debit(uint32_t index, uint32_t tag, int64_t amount);
  // The Tally entry of (account, kind, id): found, or claimed when absent; -1 when none is free
  // within kTallyProbes (the caller counts it as dropped).
  int32_t tally_for(uint32_t account, uint32_t kind, uint32_t id);
  // Writes the spec of a forced tally target at index j of `op` (if the tally has an entry).
  bool write_tally(detail::OpScope* op, uint32_t j, uint32_t account, uint32_t kind, uint32_t id, int64_t amount,
                   int32_t requests, detail::TargetSpec* spec);
  // tokens: the request's real prompt + completion tokens (commit_usage), < 0 when not given.
  Status settle(ReservationId id, bool commit, int64_t actual, int64_t tokens = -1);
  // One attempt: false when the slot left `state` before this op could claim it.
  bool settle_hold(detail::OpScope* op, uint32_t slot, uint64_t state, bool commit, int64_t actual, int64_t tokens);
  uint32_t rate_settlement(detail::OpScope* op, const detail::Reservation& r, const detail::HoldView& hold, bool expired,
                           int64_t tokens, detail::TargetSpec* specs, uint32_t n);
  Status charge(uint32_t account, int64_t amount, uint32_t key);
  Status expire_hold(uint32_t slot, uint64_t state, int64_t now_ms);
  // Returns once reservation slot `slot` is no longer in `state` (an expiry in progress).
  void wait_for_expiry(uint32_t slot, uint64_t state);
  int64_t held_in(uint32_t account, uint32_t tag) const;
  // Counts a denial by its code (1..4). Denials only: the grant path never touches the counters.
  Code count_denial(Code code) const {
    const auto index = code == Code::kDeniedRate ? 4u : static_cast<uint32_t>(code) - 1;
    if (index <= 4) boost::atomics::ipc_atomic_ref<uint64_t>(header->denials[index]).fetch_add(1, detail::memory_order_relaxed);
    return code;
  }
  // Reads a model's price consistently (seqlock); false when the model has no price.
  bool read_price(std::string_view model, int64_t* prompt, int64_t* completion, int64_t* request) const;
  bool read_price_at(uint32_t model_index, int64_t* prompt, int64_t* completion, int64_t* request) const;
  // Index of a registered model in the model table, -1 when unknown.
  int32_t model_index(std::string_view model) const;
  // Registers a model name (admin lock held); -1 when the table is full.
  int32_t register_model(std::string_view model);
  std::string_view model_name(uint32_t model_index) const;
  // Writes and publishes a validated tier table. REQUIRES: the admin lock, or a segment nobody sees.
  Status write_tiers(const std::vector<TierSpec>& tiers);
  // The tier table as specs (for the store), and the name of a tier index + 1 ("" for 0).
  std::vector<TierSpec> read_tiers() const;
  std::string tier_name(uint32_t tier) const;

  // ---- flush.cpp, rebuild.cpp ------------------------------------------------------------------
  Status flush_store();
  // Sets up flush_cache for a flush of `count` accounts into the store (id, sequence); false when
  // the ledger is too large to remember what it flushed.
  bool prepare_flush_cache(uint32_t count, uint64_t store_id, uint64_t sequence);
  std::string_view account_name(uint32_t index) const {
    return std::string_view(accounts[index].name, std::min<uint32_t>(accounts[index].name_length, detail::kAccountNameMax));
  }
  // Every account word (exact) and the live holds admitted into it, for accounts [0, count).
  void snapshot_words(uint32_t count, std::vector<detail::PeriodWord>* words, std::vector<int64_t>* held) const;
  // Account period records whose settled totals differ from what this handle's last flush wrote.
  uint64_t flush_pending();
  Status rebuild_from_store();
  Status rebuild_policy(MDB_txn* txn, const db::Env& env);  // tiers, prices, hold policy
  void rebuild_periods(MDB_txn* txn, const db::Env& env);
  void rebuild_rules(MDB_txn* txn, const db::Env& env);
  // Raises *limits, per field, to what the store recorded for the last segment (if it did).
  void store_recorded_limits(Limits* limits) const;
  // Appends and publishes a new account record; -1 when max_accounts is reached.
  // REQUIRES: the admin lock (or the init lock on a segment nobody else sees yet).
  int32_t create_account_record(std::string_view name, int64_t limit_nanousd, Period period);

  // ---- reclaim.cpp ----------------------------------------------------------------------------
  enum class Repair { kDone, kBusy };
  bool entry_landed(const detail::Lane& lane, uint32_t seq, uint32_t j) const;
  uint32_t admission_rollback(const detail::Lane& lane, uint32_t seq, uint32_t n, detail::TargetSpec* fixes) const;
  // held_slot: the process slot whose lock byte the caller already holds.
  Repair repair_lane(uint32_t dead_lane, detail::OpScope* op, int depth, uint32_t held_slot);
  struct RepairPlan;  // reclaim.cpp: the corrections and slot move that resolve a dead lane's op
  void plan_repair(const detail::Lane& lane, uint32_t dead, uint64_t ctl, RepairPlan* plan, uint32_t* slot_plus_one) const;
  void roll_forward(const detail::Lane& lane, uint32_t seq, uint32_t n, RepairPlan* plan) const;
  Repair repair_resolver(uint32_t dead, uint64_t ctl, detail::OpScope* op, int depth, uint32_t held_slot);
  bool apply_repair(detail::OpScope* op, detail::Lane& lane, uint32_t dead, uint64_t ctl, const RepairPlan& plan, uint32_t slot_plus_one);
  // REQUIRES: the caller holds the slot's lock byte. op == nullptr: borrow one of its idle lanes.
  bool reclaim_dead_process(uint32_t slot, detail::OpScope* op);
  bool process_alive_for(uint32_t owner_slot, uint32_t owner_generation) const;
  // True when no lane of process slot `slot` is ACTIVE or OWNED (as every lane of a free slot is).
  bool lanes_idle(uint32_t slot) const;
  // Repairs every dead process's lanes and frees its slot (the first half of Ledger::reclaim).
  Status reclaim_dead_processes();
  // Drops tombstones past their grace, then the oldest beyond tombstones_max.
  void drop_tombstones(int64_t now_ms);
  // Retires a tombstone (its late commit will get kUnknownReservation); false if it changed.
  bool drop_tombstone(uint32_t slot, uint64_t state);
  // True while `lane_id` is expiring reservation slot `slot` (its op may be waiting for repair).
  bool expiring(uint32_t lane_id, uint32_t slot) const;
};

// Serializes admin writers: threads of this process (mutex) and other processes (OFD lock).
class AdminGuard {
 public:
  explicit AdminGuard(Ledger::Impl& impl) : impl_(impl), lock_(*impl.admin_mutex) {
    impl_.local_admin_writers.fetch_add(1, std::memory_order_relaxed);
    impl_.lock_byte_wait(detail::kAdminLockByte);
  }
  ~AdminGuard() {
    impl_.unlock_byte(detail::kAdminLockByte);
    impl_.local_admin_writers.fetch_sub(1, std::memory_order_relaxed);
  }
  AdminGuard(const AdminGuard&) = delete;
  AdminGuard& operator=(const AdminGuard&) = delete;

 private:
  Ledger::Impl& impl_;
  std::lock_guard<std::mutex> lock_;
};

// An admin change of one account's field: the name checked, the handle registered, the admin lock
// held, the account found; `change` gets its index. (block, set_scope.)
template <class Change>
Status change_account(Ledger::Impl& l, std::string_view account, Change&& change) {
  if (!valid_account_name(account)) return Code::kInvalidArgument;
  Status status = l.ensure_registered();
  if (!status.ok()) return status;
  AdminGuard lock(l);
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  change(static_cast<uint32_t>(index));
  return Code::kOk;
}

}  // namespace ledger
