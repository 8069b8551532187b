// layout.hpp — the shared segment's binary format (format version kFormatVersion).
//
// Process-safety rule: every field below is read and written by many processes at once, only through
// the atomic helpers in atomics.hpp (boost::atomics::ipc_atomic_ref for 32/64-bit words, cmpxchg16b for
// the 16-byte period word). Nothing is allocated in the segment after creation: every table is sized
// by the header's limits. Any process may die between any two instructions; the invariants that make
// that safe are written next to the structures they govern.
//
// Segment = Header | ProcessSlot[process_slots] | Lane[process_slots * kLanesPerProcess]
//         | Account[max_accounts] | uint32 hash[hash_mask + 1] | Reservation[max_reservations]
//         | Price[kModelsMax] | Policy | Tally[tally_mask + 1] | KeyEntry[key_mask + 1]
//         | AccountLeases[max_accounts] | AccountRules[rules_max]
// process_slots = max_processes (for workers) + kAdminProcessSlots (kept for the sidecar and
// ledgerctl, so that a pool that takes every worker slot cannot lock the admin side out).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "ledger/options.hpp"

namespace ledger::detail {

inline constexpr uint64_t kMagic = 0x3147455352444C4CULL;  // "LLDRSEG1" little-endian
// 2: per-model spend. 3: per-key spend (KeyEntry, Account::key, Reservation::key, Tally kinds),
// admin process slots, 128-byte reservations, the hold policy in the header. 4: account rules (own
// model lists, soft limits, top-ups, rate limits), lanes of 16 targets.
inline constexpr uint32_t kFormatVersion = 4;
inline constexpr uint32_t kLanesPerProcess = 8;
inline constexpr uint32_t kChainDepthMax = 4;
// Lane targets of an admission: the chain's period words at [0, 4), its rate words at [4, 8), and
// the undo of entry j (a denial, or a lease lowered meanwhile) at j + kUndoBase. A debit that was
// admitted puts its key tally at kUndoBase (it has undo entries or a tally, never both). A
// settlement's targets are listed in order from 0 (levels, tallies, rate words).
inline constexpr uint32_t kRateTargetBase = kChainDepthMax;
inline constexpr uint32_t kUndoBase = 2 * kChainDepthMax;
inline constexpr uint32_t kTargetsMax = 2 * kUndoBase;
inline constexpr uint32_t kAccountNameMax = 63;
inline constexpr uint32_t kProcessesMax = kMaxProcessesMax;  // worker process slots (Limits::max_processes)
inline constexpr uint32_t kAdminProcessSlots = 4;    // and these, for Options::admin handles only
inline constexpr uint32_t kProcessSlotsMax = kProcessesMax + kAdminProcessSlots;
inline constexpr uint32_t kAccountsMax = kMaxAccountsMax;          // options.hpp names each largest value once
inline constexpr uint32_t kReservationsMax = kMaxReservationsMax;
inline constexpr uint32_t kLaneBits = 14;
inline constexpr uint32_t kRequestBits = 32;
inline constexpr uint32_t kTagBits = 18;
static_assert(kRequestBits + kTagBits + kLaneBits == 64);
static_assert(kProcessSlotsMax * kLanesPerProcess < (1u << kLaneBits));
// Lane stamps above every lane id name no lane: they are the lease epochs of global accounts (see
// LeaseWord, "epoch stamps"). Helping and repair never look at them (no lane entry carries them).
// A power of two of them, so that the stamp of a lease is a mask, not a division, on the hot path.
inline constexpr uint32_t kEpochStamps = 4096;
inline constexpr uint32_t kEpochStampBase = (1u << kLaneBits) - kEpochStamps;
static_assert(kEpochStampBase > kProcessSlotsMax * kLanesPerProcess);

// ---------------------------------------------------------------------------------------------
// Period word: the admission word of one account for one period. 16 bytes, changed only by a
// 16-byte compare-and-swap. `used` = settled + held in that period. `meta` packs:
//   requests (32 bits, wraps) | period tag (18 bits: kind 2 | index 16) | lane stamp (14 bits).
// The lane stamp names the lane whose operation wrote the value last. Only that lane ever writes its
// own stamp, which is what lets a reclaimer decide whether a dead lane's CAS landed (see ledger.cpp,
// "Helping rule"). Each account has two words, indexed by the period index's parity, so a rollover
// is a single CAS and the previous period stays readable for late commits.
struct alignas(16) PeriodWord {
  int64_t used;
  uint64_t meta;
};
static_assert(sizeof(PeriodWord) == 16 && alignof(PeriodWord) == 16);

// ---------------------------------------------------------------------------------------------
// Account: 128 bytes, cache-line aligned. Config fields (limit, parent, period, blocked) are single
// atomic words written by admin calls under the admin lock and read lock-free by workers.
struct alignas(64) Account {
  PeriodWord words[2];
  int64_t limit_nanousd;
  int32_t parent;        // account index, -1 = none
  uint8_t period_kind;   // Period
  uint8_t blocked;       // 0/1
  uint8_t live;          // 1 once the record is complete (set before it is published in the hash)
  uint8_t tier;          // tier index + 1, 0 = inherit (policy)
  uint32_t name_length;
  uint32_t name_hash;
  uint32_t key;          // the bound OpenRouter key: KeyEntry index + 1, 0 = none (admin lock)
  uint8_t global;        // 1: a global account (global mode): admits only against this host's lease
  uint8_t rules_flags;   // RuleFlags (admin lock); what the account's AccountRules entry says
  uint16_t rules;        // AccountRules index + 1, 0 = none; assigned once (admin lock), never changed
  char name[64];
};
static_assert(sizeof(Account) == 128 && alignof(Account) == 64);
static_assert(offsetof(Account, limit_nanousd) == 32 && offsetof(Account, name) == 64);
static_assert(offsetof(Account, rules) == 62);

// ---------------------------------------------------------------------------------------------
// Reservation slot. `state` = generation (32) | lane (13, at bit 4) | status (4). The generation is
// bumped when a slot is claimed, and a reservation id is (generation << 32) | (slot + 1), so a stale
// id never reaches a new hold. Fields other than `state` are written only by the lane that owns the
// slot in a transitional status (kReserving, kSettling) and read after an acquire of `state`.
enum ReservationStatus : uint32_t {
  kResFree = 0,       // settled (commit/release) or never used; same generation => "already settled"
  kResReserving = 1,  // claimed by `lane`, levels being applied
  kResHeld = 2,       // a live hold
  kResSettling = 3,   // `lane` is committing, releasing or expiring it
  kResExpired = 4,    // tombstone: hold removed at expiry; a late commit still charges (promise 4)
};
// A tombstone is dropped (its generation bumped, so a late commit gets "unknown reservation") when
// its grace ends, when there are more than Header::tombstones_max of them (oldest first), or when a
// reserve finds no free slot (tombstones never starve live holds).
struct alignas(64) Reservation {
  uint64_t state;
  int64_t amount_nanousd;        // the hold
  int32_t chain[kChainDepthMax]; // account indices, -1 past the depth
  uint32_t tags[kChainDepthMax]; // period tag each level's hold was admitted into
  int64_t deadline_ms;           // hold expiry; for a tombstone, the end of its grace period
  uint16_t owner_process;        // process slot that reserved it (< kProcessSlotsMax)
  uint16_t model;                // model index + 1 chosen by authorize(), 0 = none (plain reserve)
  uint32_t owner_generation;     // that slot's generation; a mismatch means the owner is gone
  // Second cache line: what the settlement is attributed to besides the chain.
  uint32_t key;                  // KeyEntry index + 1 the request goes through, 0 = none
  // Rate limits (AccountRules): bit i = chain level i took a rate target at admission (its
  // concurrency is given back at settlement), its tokens then, and the minute each level counted it
  // in (levels of one admission can land on either side of a minute's boundary: each word keeps the
  // later minute another process's clock may already be in).
  uint32_t rate_levels;
  uint32_t rate_tokens;
  uint32_t rate_minutes[kChainDepthMax];
  uint8_t reserved1[36];
};
static_assert(sizeof(Reservation) == 128 && alignof(Reservation) == 64);
static_assert(offsetof(Reservation, key) == 64);

// ---------------------------------------------------------------------------------------------
// Process slot: one per registered handle. Liveness is the kernel-released OFD lock on byte
// (kSlotLockBase + index) of <dir>/ledger.lock, never the pid. state = generation (32) | status.
// Slots [0, max_processes) are for any handle; [max_processes, process_slots) for admin handles.
enum ProcessStatus : uint32_t { kProcFree = 0, kProcActive = 1 };
struct alignas(64) ProcessSlot {
  uint64_t state;
  int32_t pid;  // diagnostics only
  uint32_t reserved0;
  int64_t registered_ms;
  uint8_t reserved1[40];
};
static_assert(sizeof(ProcessSlot) == 64);

// ---------------------------------------------------------------------------------------------
// Lane: the intent record of one in-flight operation. Each process slot owns kLanesPerProcess lanes;
// lane id = slot * kLanesPerProcess + k + 1 (0 means "no lane"). ctl packs
//   seq (32, at bit 32) | resolver lane (14, at bit 16) | kind (4, at bit 12) | phase (4, at bit 8)
//   | applied bits (8).
// Entries [0, n_targets) have a complete spec (account, tag, flags, delta, delta_extra, requests,
// undo_of), written before n_targets is raised and not changed for the rest of the op. The attempt
// (location, new_used, new_meta) is valid for op `seq` only while the entry's own `seq` equals it
// (seqlock discipline: 0 while being rewritten before each CAS attempt).
// IDLE and RESOLVED lanes are free: a thread claims one with a CAS of ctl to OWNED, resets the
// header, then publishes ACTIVE for each operation. A dead process's OWNED lanes hold no operation.
enum LanePhase : uint32_t { kPhaseIdle = 0, kPhaseActive = 1, kPhaseResolved = 2, kPhaseOwned = 3 };
enum OpKind : uint32_t {
  kOpNone = 0,
  kOpDebit = 1,     // admission: rolled back if its process dies before the end
  kOpReserve = 2,   // admission
  kOpCommit = 3,    // settlement: rolled forward
  kOpRelease = 4,   // settlement
  kOpExpire = 5,    // settlement (reclaimer)
  kOpRepair = 6,    // corrective targets for a dead lane; rolled forward once its claim is proven
  kOpCharge = 7,    // a forced charge on a chain (reconciliation adjustment): rolled forward
};
// kTargetTally: `account` is a Tally index, not an account (a settlement's per-model or per-key
// tally). Tally entries of a debit sit at kChainDepthMax and above (where a denied admission puts
// its undo entries; a debit has one or the other, never both).
// kTargetRate: `account` is an account whose AccountRules rate word is the target: `delta` tokens,
// `delta_requests` requests, `delta_extra` concurrent holds (see RateWord).
enum TargetFlags : uint32_t { kTargetAdmit = 1, kTargetUndo = 2, kTargetTally = 4, kTargetRate = 8 };
struct alignas(64) Target {
  uint32_t seq;          // op seq this entry belongs to; 0 while being rewritten
  uint32_t account;
  uint32_t tag;          // spec: period tag the change belongs to
  uint32_t flags;        // TargetFlags
  int64_t delta;         // spec: change of `used` when the word still holds `tag`
  int64_t delta_extra;   // spec: a level: the change of the current period's `used` when `tag`'s word was
                         // recycled (a charge, a late commit); a rate word: the change of concurrent holds
  int32_t delta_requests;
  uint32_t undo_of;      // for kTargetUndo: index of the forward entry it undoes
  uint64_t location;     // attempt: word id (account * 2 + parity + 1, or kTallyLocation | tally + 1)
  int64_t new_used;      // attempt: the value the CAS installs
  uint64_t new_meta;
};
static_assert(sizeof(Target) == 64);
struct alignas(64) LaneHeader {
  uint64_t ctl;
  uint32_t n_targets;
  uint32_t reservation_slot;  // slot + 1, 0 = none
  uint64_t reservation_state_from;  // repair: the slot transition to apply (from -> to)
  uint64_t reservation_state_to;
  int64_t tombstone_deadline_ms;    // expire: grace end written into the slot
  uint32_t repair_lane;             // repair: the dead lane and the op it resolves
  uint32_t repair_seq;
  uint32_t targets_expected;  // charge: the number of specs; rolled forward only once all are written
  uint32_t reserved;
  // The applied bits of targets [8, 16), which ctl has no room for: op seq (32) | bits (8). Reset
  // (with the new seq) before the op is published ACTIVE; a helper sets a bit with a CAS that checks
  // the seq, exactly as for ctl's bits.
  uint64_t applied_high;
};
static_assert(sizeof(LaneHeader) == 64 && offsetof(LaneHeader, applied_high) == 56);
struct alignas(64) Lane {
  LaneHeader header;
  Target targets[kTargetsMax];
};
static_assert(sizeof(Lane) == 64 * (1 + kTargetsMax));

// ---------------------------------------------------------------------------------------------
// Model price (policy). Written only under the admin lock with a per-entry seqlock (odd `seq` while
// being rewritten), so a refresh is atomic for the lock-free readers. Entries are never removed.
inline constexpr uint32_t kModelsMax = 1024;       // table entries (kept at most half full)
inline constexpr uint32_t kModelNameMax = 87;
struct alignas(64) Price {
  uint32_t seq;
  uint32_t name_length;
  uint32_t name_hash;
  uint32_t live;
  int64_t prompt_nanousd_per_mtok;
  int64_t completion_nanousd_per_mtok;
  int64_t request_nanousd;
  char name[kModelNameMax + 1];
};
static_assert(sizeof(Price) == 128);
// Price::live bits: the model's name is registered (tiers may name it), and it has a price.
inline constexpr uint32_t kModelRegistered = 1, kModelPriced = 2;

// ---------------------------------------------------------------------------------------------
// Tiers (policy). A tier's index is fixed by its name for the life of the segment (names are never
// removed), so Account::tier (index + 1, 0 = inherit from the parent) stays valid across reloads.
// The tier table is double-buffered: a reload (admin lock) writes tables[(version + 1) & 1] and then
// bumps `version`; a reader reads tables[v & 1] and retries if the version moved at all meanwhile
// (after a publish, the next reload may start rewriting the table the reader is on). A reload killed
// half-way never touched the table readers use, so readers never wait on a dead writer.
inline constexpr uint32_t kTiersMax = 64;
inline constexpr uint32_t kTierNameMax = 63;
struct alignas(64) Tier {
  uint32_t live;                  // defined by the current config
  uint32_t all_models;            // "models": null
  uint32_t fallback;              // model index + 1, 0 = none
  uint32_t downgrade_to;          // model index + 1, 0 = none
  uint32_t downgrade_at_percent;  // 1..100, 0 = no pressure rule
  uint32_t reserved[11];
  uint64_t allowed[kModelsMax / 64];  // bit per model index
};
static_assert(sizeof(Tier) == 192);
struct alignas(64) Policy {
  uint64_t version;
  uint32_t tier_count;            // names [0, tier_count) are allocated
  uint8_t reserved[52];
  char tier_names[kTiersMax][64];
  Tier tables[2][kTiersMax];
};
static_assert(sizeof(Policy) == 64 + kTiersMax * 64 + 2 * kTiersMax * sizeof(Tier));

// ---------------------------------------------------------------------------------------------
// Tallies: what settlements added, per (account, kind, id), cumulative since the segment was created:
//   kTallyModel      (account, model): commits of authorize()d holds (per-model spend)
//   kTallyKey        (account, key):   commits, debits and adjustments that went through the key
//   kTallyAdjustment (account, key):   reconciliation adjustments (key 0 = none), for the journal
// A fixed open-addressing table (no allocation, no removal): `key` = (account + 1) << 32 | kind << 28
// | (id + 1), claimed once by a CAS from 0. `word` is a period word with tag 0 (never reset), changed
// as one more forced target of the settlement's lane op, so an operation killed half-way is rolled
// forward (or, for a debit, back) here too: a tally equals what was settled, exactly. A settlement
// that finds no entry within kTallyProbes counts in Header::tallies_dropped instead.
inline constexpr uint64_t kTallyLocation = uint64_t{1} << 62;  // Target::location namespace bit
inline constexpr uint32_t kTallyProbes = 64;
inline constexpr uint32_t kTalliesMax = 1u << 22;
enum TallyKind : uint32_t { kTallyModel = 0, kTallyKey = 1, kTallyAdjustment = 2 };
inline constexpr uint32_t kTallyIdMax = (1u << 28) - 2;
struct alignas(32) Tally {
  uint64_t key;
  uint64_t reserved;
  PeriodWord word;
};
static_assert(sizeof(Tally) == 32);

// ---------------------------------------------------------------------------------------------
// OpenRouter keys the ledger attributes spend to (by their 32-byte hash, OpenRouter's "hash" in
// hex). Registered under the admin lock, never removed; readers find them lock-free by the first
// 6 bytes (so that a unique hex prefix of >= 12 digits finds its key). `live` is stored last.
inline constexpr uint32_t kKeysMax = 1u << 21;
inline constexpr uint32_t kKeyHashBytes = 32;
struct alignas(64) KeyEntry {
  uint32_t live;
  uint32_t reserved0;
  uint8_t hash[kKeyHashBytes];
  uint8_t reserved1[24];
};
static_assert(sizeof(KeyEntry) == 64);

// ---------------------------------------------------------------------------------------------
// Leases (global mode, DESIGN 11): what this host may admit for a global account, per period word
// (by the parity of the period index, like Account::words, so the next window's lease can be in
// place before the boundary). Written by the sidecar only (it holds the one-sidecar lock) under a
// seqlock (odd `seq` while rewriting; a writer that died there leaves it odd, and the next one
// rounds it up); read lock-free by admission. A global account admits into period tag T only while
// the lease word of T's parity carries tag T and its deadline (CLOCK_MONOTONIC ms, the same clock
// for every process) has not passed; no lease, an old one, a passed deadline or a write in progress
// all deny: fail closed.
//
// Epoch stamps: the fast path of a root debit (one CAS, no lane, like a local one) must never land
// against a lease the sidecar has lowered since the debit read it. So the lease's epoch is in the
// period word itself: every rewrite of a lease word ends with the sidecar's CAS that puts the stamp
// epoch_stamp(seq) on the account's period word of that parity (changing nothing else), and the fast
// path admits only a word whose stamp is the epoch of the lease it read (word read first, then the
// lease). A fast debit writes the stamp it found; lane operations write their lane ids; so once the
// sidecar's CAS has landed, no value with an older epoch's stamp can come back (until the stamp
// wraps, after kEpochStamps rewrites), and a debit that read the old lease fails its CAS and reads
// again. Words not carrying the current epoch (after a lane operation, a new window) take the lane
// path, which re-checks the lease after its CAS; the sidecar re-stamps them on its next publish.
// Only a lowering (a smaller limit, an earlier deadline, another window) starts a new epoch (a
// renewal or a grant is stored in place: see set_lease), and a fast debit that finds, after its
// CAS, that kEpochStamps or more epochs passed since it read the lease takes itself back (its word
// may have come back to the value it read, with the same stamp).
struct alignas(32) LeaseWord {
  uint32_t seq;
  uint32_t tag;             // the period the lease is for (0 = none)
  int64_t limit_nanousd;    // this host's grants for that window, in total (its spend counts against it)
  int64_t deadline_ms;      // CLOCK_MONOTONIC: admit only before it (grant time + ttl - skew margin)
  // Outside the seqlock: the largest amount an admission wanted and was denied for want of this
  // lease (raised by admission, taken and zeroed by the sidecar, which sizes the next grant by it).
  // Zero in segments made before it was used (the field was reserved, always zero).
  int64_t wanted_nanousd;
};
static_assert(sizeof(LeaseWord) == 32);
struct alignas(64) AccountLeases {
  LeaseWord words[2];
};
static_assert(sizeof(AccountLeases) == 64);

// ---------------------------------------------------------------------------------------------
// Account rules (DESIGN 13): what an account sets beyond its budget and tier. An account gets an
// entry the first time it sets one (admin lock; Account::rules, never taken back), and
// Account::rules_flags says which parts are in force, so admission reads an entry only for the
// accounts that have one.
//   kRuleSoft    its own limit never denies (its ancestors' still do)
//   kRuleRate    rpm / tpm / max_concurrent: `rate` is a lane target of its admissions
//   kRuleModels  its own model list and/or fallback (override its tier for it and its descendants)
//   kRuleTopup   topup_nanousd raises its limit while the wall clock is before topup_until_ms
// The rate word is a period word (the same 16-byte CAS, lane stamp and helping rule) packed as
//   used: requests (20 bits) | tokens (30, at bit 20) | concurrent holds (14, at bit 50)
//   meta: minute since the epoch (32 bits) | 0 | lane stamp (14, at bit 50)
// Requests and tokens count in the minute the word carries (a later minute starts them at 0);
// concurrent holds carry over: +1 when a hold is admitted, -1 when it is settled or expires (so the
// holds of a dead process give their slots back when the reclaimer expires them). Forced changes
// saturate at 0 and at each field's maximum. The model list and fallback and the top-up are guarded
// by `seq` (odd while being rewritten under the admin lock; see Price for a writer that died).
enum RuleFlags : uint8_t { kRuleSoft = 1, kRuleRate = 2, kRuleModels = 4, kRuleTopup = 8 };
inline constexpr uint32_t kRateRequestBits = 20, kRateTokenBits = 30, kRateConcurrentBits = 14;
static_assert(kRateRequestBits + kRateTokenBits + kRateConcurrentBits == 64);
inline constexpr uint32_t kRulesMax = kMaxAccountRulesMax;
enum ModelListFlags : uint32_t { kListModels = 1, kListAllModels = 2, kListFallback = 4 };
struct alignas(64) AccountRules {
  PeriodWord rate;
  uint32_t rpm, tpm, max_concurrent;  // 0 = no such limit; each word read on its own
  uint32_t seq;
  uint32_t list_flags;                // ModelListFlags
  uint32_t fallback;                  // model index + 1
  int64_t topup_nanousd;
  int64_t topup_until_ms;
  uint8_t reserved[8];
  uint64_t allowed[kModelsMax / 64];  // bit per model index, with kListModels and not kListAllModels
};
static_assert(sizeof(AccountRules) == 192 && offsetof(AccountRules, allowed) == 64);

// ---------------------------------------------------------------------------------------------
struct alignas(64) Header {
  uint64_t magic;                // written last at creation: a segment without it is incomplete
  uint32_t format_version;
  uint32_t header_size;
  uint64_t total_size;
  uint32_t max_accounts;
  uint32_t max_reservations;
  uint32_t max_processes;
  uint32_t hash_mask;
  uint64_t offset_processes;
  uint64_t offset_lanes;
  uint64_t offset_accounts;
  uint64_t offset_hash;
  uint64_t offset_reservations;
  uint32_t account_count;        // accounts [0, account_count) have been allocated
  uint32_t tombstone_grace_s;
  int64_t created_unix;
  uint64_t offset_prices;
  uint32_t model_count;
  uint32_t reserved_pad;
  uint64_t offset_policy;
  uint8_t reserved0[8];
  char dir[512];                 // realpath of the ledger directory, for diagnostics
  uint64_t denials[8];           // by Code 1..4 (index code - 1), and kDeniedRate (index 4); on denial only
  uint64_t offset_tallies;
  uint32_t tally_mask;           // table size - 1 (a power of two)
  uint32_t reserved2;
  uint64_t tallies_dropped;      // settlements whose (account, kind, id) found no free entry
  uint64_t segment_id;           // random at creation: the store tells this segment's tallies apart
  uint64_t offset_keys;
  uint32_t key_mask;             // KeyEntry table size - 1 (a power of two, kept at most half full)
  uint32_t key_count;            // registered keys (admin lock)
  uint32_t process_slots;        // max_processes + kAdminProcessSlots
  // The hold policy (admin lock; read lock-free): every process's default TTL and tombstone rules.
  uint32_t default_ttl_s;        // a hold's TTL when the caller passes 0
  uint32_t tombstones_max;       // at most this many tombstones; the oldest beyond it are dropped
  uint32_t reserved3;
  uint64_t tombstones_dropped;   // tombstones dropped before their grace ended (count or a full table)
  uint64_t offset_leases;        // AccountLeases[max_accounts]
  uint64_t offset_rules;         // AccountRules[rules_max]
  uint32_t rules_max;            // Limits::max_account_rules
  uint32_t rules_count;          // entries [0, rules_count) are assigned to accounts (admin lock)
  uint8_t reserved1[3296];
};
static_assert(sizeof(Header) == 4096);
static_assert(offsetof(Header, dir) == 128);

static_assert(std::is_trivially_copyable_v<Header> && std::is_trivially_copyable_v<Account> && std::is_trivially_copyable_v<AccountRules> &&
              std::is_trivially_copyable_v<Reservation> && std::is_trivially_copyable_v<Lane>);

}  // namespace ledger::detail
