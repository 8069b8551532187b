// segment.cpp — creating, validating and attaching the shared segment; process slots.
//
// Creation and attach are serialized by an OFD lock on byte kInitLockByte of <dir>/ledger.lock, so a
// creator killed half-way leaves a segment without its magic, which the next opener re-initializes;
// a creation that fails (no space for the segment, a store that cannot be read) removes what it made.
// The segment's pages are reserved at creation (posix_fallocate), so a full filesystem is an error
// at create time, never a SIGBUS later. A process slot is owned while its byte (kSlotLockBase +
// slot) is OFD-locked; the kernel drops the lock when the owner dies, and that, never a pid, is how
// others learn it is dead.
//
// Where the segment lives: <segment dir>/ledger-<hash of the directory's path and inode>. The
// segment dir is Options::segment_dir, else what <dir>/ledger.segment-dir records (written by the
// creator, so that workers that open the directory without a config find it), else /dev/shm.
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>

#include "impl.hpp"
#include "store_codec.hpp"

namespace ledger {
namespace {

using namespace detail;

constexpr const char* kDefaultSegmentDir = "/dev/shm";
constexpr const char* kSegmentDirRecord = "/ledger.segment-dir";

std::atomic<uint64_t> g_fork_epoch{0};
std::once_flag g_atfork_once;
void on_fork_child() { g_fork_epoch.fetch_add(1, std::memory_order_relaxed); }

uint64_t fnv1a64(std::string_view text) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

constexpr uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

Status errno_status(int error) {
  switch (error) {
    case EACCES:
    case EPERM:
    case EROFS:
      return Code::kPermission;
    case ENOENT:
    case ENOTDIR:
      return Code::kNotFound;
    case ENOSPC:
    case EFBIG:
      return Code::kFull;  // no room for the segment where it was to be created
    default:
      return Code::kIoError;
  }
}

// Resolves dir to an absolute path and the segment's file name derived from it (path and inode, so
// a directory deleted and re-created gets a fresh segment).
Status resolve_dir(std::string_view dir, bool create, std::string* real, std::string* segment_name) {
  if (dir.empty() || dir.size() >= PATH_MAX || dir.find('\0') != std::string_view::npos)
    return Code::kInvalidArgument;
  const std::string path(dir);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT || !create) return errno_status(errno);
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) return errno_status(errno);
    if (::stat(path.c_str(), &st) != 0) return errno_status(errno);
  }
  if (!S_ISDIR(st.st_mode)) return Code::kInvalidArgument;
  char buffer[PATH_MAX];
  if (::realpath(path.c_str(), buffer) == nullptr) return errno_status(errno);
  *real = buffer;
  char name[64];
  std::snprintf(name, sizeof name, "/ledger-%016llx",
                static_cast<unsigned long long>(fnv1a64(*real) ^ (uint64_t{st.st_ino} * 0x9E3779B97F4A7C15ULL) ^ st.st_dev));
  *segment_name = name;
  return Code::kOk;
}

// The segment directory recorded by the creator; "" when there is no (readable) record.
std::string recorded_segment_dir(const std::string& dir) {
  std::ifstream in(dir + kSegmentDirRecord);
  std::string line;
  if (!in || !std::getline(in, line) || line.empty() || line[0] != '/' || line.size() >= PATH_MAX) return {};
  return line;
}

Status record_segment_dir(const std::string& dir, const std::string& segment_dir, mode_t mode) {
  const std::string path = dir + kSegmentDirRecord, temp = path + ".tmp";
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return errno_status(errno);
  const std::string text = segment_dir + "\n";
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (!written || ::rename(temp.c_str(), path.c_str()) != 0) {
    ::unlink(temp.c_str());
    return Code::kIoError;
  }
  return Code::kOk;
}

struct SegmentGeometry {
  uint64_t offset_processes, offset_lanes, offset_accounts, offset_hash, offset_reservations,
      offset_prices, offset_policy, offset_tallies, offset_keys, offset_leases, offset_rules, total;
  uint32_t hash_mask, tally_mask, key_mask, process_slots, rules_max;
};

uint32_t power_of_two_at_least(uint64_t wanted, uint32_t floor, uint32_t cap) {
  uint32_t size = floor;
  while (size < cap && size < wanted) size <<= 1;
  return size;
}

SegmentGeometry geometry_for(const Limits& limits) {
  SegmentGeometry g{};
  g.process_slots = limits.max_processes + kAdminProcessSlots;
  const uint32_t hash_size = power_of_two_at_least(uint64_t{limits.max_accounts} * 2, 1, 1u << 25);
  g.hash_mask = hash_size - 1;
  g.offset_processes = sizeof(Header);
  g.offset_lanes = align_up(g.offset_processes + uint64_t{g.process_slots} * sizeof(ProcessSlot), 64);
  g.offset_accounts = align_up(g.offset_lanes + uint64_t{g.process_slots} * kLanesPerProcess * sizeof(Lane), 64);
  g.offset_hash = align_up(g.offset_accounts + uint64_t{limits.max_accounts} * sizeof(Account), 64);
  g.offset_reservations = align_up(g.offset_hash + uint64_t{hash_size} * sizeof(uint32_t), 64);
  g.offset_prices = align_up(g.offset_reservations + uint64_t{limits.max_reservations} * sizeof(Reservation), 64);
  g.offset_policy = align_up(g.offset_prices + uint64_t{kModelsMax} * sizeof(Price), 64);
  // Tallies: four per account (a few models and a key or two each), keys: up to one per account.
  const uint32_t tallies = power_of_two_at_least(uint64_t{limits.max_accounts} * 4, 1024, kTalliesMax);
  g.tally_mask = tallies - 1;
  g.offset_tallies = align_up(g.offset_policy + sizeof(Policy), 64);
  const uint32_t keys = power_of_two_at_least(uint64_t{limits.max_accounts} * 2, 1024, kKeysMax);
  g.key_mask = keys - 1;
  g.offset_keys = align_up(g.offset_tallies + uint64_t{tallies} * sizeof(Tally), 64);
  g.offset_leases = align_up(g.offset_keys + uint64_t{keys} * sizeof(KeyEntry), 64);
  g.offset_rules = align_up(g.offset_leases + uint64_t{limits.max_accounts} * sizeof(AccountLeases), 64);
  g.rules_max = limits.max_account_rules;
  g.total = align_up(g.offset_rules + uint64_t{g.rules_max} * sizeof(AccountRules), 4096);
  return g;
}

// Every field that later computes an address or bounds a loop must be what the geometry says.
bool header_matches(const Header& h, uint64_t file_size) {
  const Limits limits{h.max_accounts, h.max_reservations, h.max_processes, h.rules_max};
  if (limits.max_accounts < 1 || limits.max_accounts > kAccountsMax || limits.max_reservations < 1 ||
      limits.max_reservations > kReservationsMax || limits.max_processes < 1 || limits.max_processes > kProcessesMax ||
      limits.max_account_rules > kRulesMax)
    return false;
  const SegmentGeometry g = geometry_for(limits);
  return h.header_size == sizeof(Header) && h.total_size == file_size && g.total == h.total_size &&
         g.offset_processes == h.offset_processes && g.offset_lanes == h.offset_lanes &&
         g.offset_accounts == h.offset_accounts && g.offset_hash == h.offset_hash &&
         g.offset_reservations == h.offset_reservations && g.offset_prices == h.offset_prices &&
         g.offset_policy == h.offset_policy && g.offset_tallies == h.offset_tallies && g.offset_keys == h.offset_keys &&
         g.offset_leases == h.offset_leases && g.offset_rules == h.offset_rules && load(h.rules_count) <= h.rules_max &&
         g.hash_mask == h.hash_mask && g.tally_mask == h.tally_mask && g.key_mask == h.key_mask &&
         g.process_slots == h.process_slots && load(h.account_count) <= limits.max_accounts &&
         load(h.key_count) <= (g.key_mask + 1) / 2 && load(h.model_count) <= kModelsMax / 2;
}

// Tells this segment's tallies apart from an earlier segment's in the store.
uint64_t random_segment_id() {
  uint64_t id = 0;
  while (id == 0) {
    if (::getrandom(&id, sizeof id, 0) != static_cast<ssize_t>(sizeof id)) {
      struct timespec ts {};
      ::clock_gettime(CLOCK_MONOTONIC, &ts);
      id = fnv1a64(std::to_string(ts.tv_nsec) + ":" + std::to_string(::getpid()) + ":" + std::to_string(ts.tv_sec));
    }
  }
  return id;
}

bool limits_valid(const Limits& l) {
  return l.max_accounts >= 1 && l.max_accounts <= kAccountsMax && l.max_reservations >= 1 &&
         l.max_reservations <= kReservationsMax && l.max_processes >= 1 &&
         l.max_processes <= kProcessesMax && l.max_account_rules <= kRulesMax;
}

bool hold_policy_valid(uint32_t default_ttl_s, uint32_t tombstone_grace_s) {
  return default_ttl_s >= 1 && default_ttl_s <= kTtlMaxSeconds && tombstone_grace_s <= kTombstoneGraceMaxSeconds;
}

struct FileCloser {
  int fd;
  ~FileCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

Ledger::Impl::~Impl() {
  if (mapping != nullptr) {
    unregister_process();
    ::munmap(mapping, size);
  }
  if (lock_fd >= 0) ::close(lock_fd);
}

namespace {
struct flock byte_range(short type, off_t byte) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  return fl;
}
}  // namespace

bool Ledger::Impl::try_lock_byte(off_t byte) const {
  struct flock fl = byte_range(F_WRLCK, byte);
  return ::fcntl(lock_fd, F_OFD_SETLK, &fl) == 0;
}

void Ledger::Impl::lock_byte_wait(off_t byte) const {
  struct flock fl = byte_range(F_WRLCK, byte);
  while (::fcntl(lock_fd, F_OFD_SETLKW, &fl) != 0 && errno == EINTR) {
  }
}

bool Ledger::Impl::byte_locked_by_other(off_t byte) const {
  struct flock fl = byte_range(F_WRLCK, byte);
  return ::fcntl(lock_fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
}

bool Ledger::Impl::admin_lock_held() const {
  return local_admin_writers.load(std::memory_order_relaxed) > 0 || byte_locked_by_other(kAdminLockByte);
}

void Ledger::Impl::unlock_byte(off_t byte) const {
  struct flock fl = byte_range(F_UNLCK, byte);
  ::fcntl(lock_fd, F_OFD_SETLK, &fl);
}

// Opens the segment file: *fresh when it had to be created (or a creator died before finishing).
Status Ledger::Impl::open_segment_file(bool create, int* fd_out, bool* fresh) {
  const mode_t mode = static_cast<mode_t>(options.file_mode & 0777);
  *fresh = false;
  int fd = ::open(segment_path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno != ENOENT) return errno_status(errno);
    if (!create) return Code::kNotFound;
    fd = ::open(segment_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) return errno_status(errno);
    *fresh = true;
  }
  *fd_out = fd;
  ::fchmod(fd, mode);  // exact mode whatever the umask
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_status(errno);
  if (*fresh) return Code::kOk;
  if (st.st_size < static_cast<off_t>(sizeof(Header))) {
    if (st.st_size != 0) return Code::kIncompatible;  // too short to be ours
    if (!create) return Code::kNotFound;
    *fresh = true;
    return Code::kOk;
  }
  void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return errno_status(errno);
  const auto* h = static_cast<const Header*>(p);
  const uint64_t magic = load(h->magic);
  if (magic == 0) {
    ::munmap(p, static_cast<size_t>(st.st_size));  // a creator died before finishing: start over
    if (!create) return Code::kNotFound;
    *fresh = true;
    return Code::kOk;
  }
  if (magic != kMagic || h->format_version != kFormatVersion || !header_matches(*h, static_cast<uint64_t>(st.st_size))) {
    ::munmap(p, static_cast<size_t>(st.st_size));
    return Code::kIncompatible;
  }
  mapping = p;
  size = static_cast<size_t>(st.st_size);
  return Code::kOk;
}

// Sizes, reserves and maps a new segment and writes its header (magic still 0).
Status Ledger::Impl::create_segment(int fd, const Limits& limits) {
  const SegmentGeometry g = geometry_for(limits);
  if (::ftruncate(fd, 0) != 0) return errno_status(errno);
  if (const int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(g.total)); rc != 0) return errno_status(rc);
  void* p = ::mmap(nullptr, g.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return errno_status(errno);
  mapping = p;
  size = g.total;
  auto* h = static_cast<Header*>(p);
  h->format_version = kFormatVersion;
  h->header_size = sizeof(Header);
  h->total_size = g.total;
  h->max_accounts = limits.max_accounts;
  h->max_reservations = limits.max_reservations;
  h->max_processes = limits.max_processes;
  h->process_slots = g.process_slots;
  h->hash_mask = g.hash_mask;
  h->offset_processes = g.offset_processes;
  h->offset_lanes = g.offset_lanes;
  h->offset_accounts = g.offset_accounts;
  h->offset_hash = g.offset_hash;
  h->offset_reservations = g.offset_reservations;
  h->offset_prices = g.offset_prices;
  h->offset_policy = g.offset_policy;
  h->offset_tallies = g.offset_tallies;
  h->tally_mask = g.tally_mask;
  h->offset_keys = g.offset_keys;
  h->key_mask = g.key_mask;
  h->offset_leases = g.offset_leases;
  h->offset_rules = g.offset_rules;
  h->rules_max = g.rules_max;
  h->segment_id = random_segment_id();
  h->default_ttl_s = options.default_ttl_s;
  h->tombstone_grace_s = options.tombstone_grace_s;
  h->tombstones_max = options.tombstones_max != 0 ? options.tombstones_max : std::max(1u, limits.max_reservations / 2);
  h->created_unix = now_ms() / 1000;
  std::snprintf(h->dir, sizeof h->dir, "%s", dir.c_str());
  auto* reservations_init = reinterpret_cast<Reservation*>(static_cast<char*>(p) + g.offset_reservations);
  for (uint32_t i = 0; i < limits.max_reservations; ++i) reservations_init[i].state = make_res_state(0, kResFree, 0);
  return Code::kOk;
}

void Ledger::Impl::map_tables() {
  header = static_cast<Header*>(mapping);
  char* b = static_cast<char*>(mapping);
  processes = reinterpret_cast<ProcessSlot*>(b + header->offset_processes);
  lanes = reinterpret_cast<Lane*>(b + header->offset_lanes);
  accounts = reinterpret_cast<Account*>(b + header->offset_accounts);
  hash = reinterpret_cast<uint32_t*>(b + header->offset_hash);
  reservations = reinterpret_cast<Reservation*>(b + header->offset_reservations);
  prices = reinterpret_cast<Price*>(b + header->offset_prices);
  policy = reinterpret_cast<Policy*>(b + header->offset_policy);
  tallies = reinterpret_cast<Tally*>(b + header->offset_tallies);
  keys = reinterpret_cast<KeyEntry*>(b + header->offset_keys);
  leases = reinterpret_cast<AccountLeases*>(b + header->offset_leases);
  rules = reinterpret_cast<AccountRules*>(b + header->offset_rules);
  rules_max = header->rules_max;
  tally_mask = header->tally_mask;
  key_mask = header->key_mask;
  max_accounts = header->max_accounts;
  max_reservations = header->max_reservations;
  max_processes = header->max_processes;
  process_slots = header->process_slots;
  hash_mask = header->hash_mask;
}

// Where the segment is: the explicit option, the creator's record, or the default.
Status Ledger::Impl::locate_segment(const std::string& segment_name) {
  const std::string recorded = recorded_segment_dir(dir);
  std::string wanted = options.segment_dir;
  while (wanted.size() > 1 && wanted.back() == '/') wanted.pop_back();
  if (!wanted.empty() && wanted[0] != '/') return Code::kInvalidArgument;
  segment_dir = !wanted.empty() ? wanted : !recorded.empty() ? recorded : kDefaultSegmentDir;
  segment_path = segment_dir + segment_name;
  if (!recorded.empty() && recorded != segment_dir) {
    // The ledger's segment is elsewhere; a second one here would split the ledger in two.
    struct stat st {};
    if (::stat((recorded + segment_name).c_str(), &st) == 0) return Code::kInvalidArgument;
  }
  return Code::kOk;
}

Status Ledger::Impl::attach(bool create, const std::string& segment_name) {
  Status status = locate_segment(segment_name);
  if (!status.ok()) return status;
  const mode_t mode = static_cast<mode_t>(options.file_mode & 0777);
  lock_fd = ::open((dir + "/ledger.lock").c_str(), O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), mode);
  if (lock_fd < 0) return errno_status(errno);
  lock_byte_wait(kInitLockByte);
  struct Unlock {
    const Impl* impl;
    ~Unlock() { impl->unlock_byte(kInitLockByte); }
  } unlock{this};
  FileCloser file{-1};
  bool fresh = false;
  status = open_segment_file(create, &file.fd, &fresh);
  if (!status.ok() || !fresh) {
    if (status.ok()) map_tables();
    return status;
  }
  // A new segment: as large as the caller asks, or as the store says the last one was.
  Limits limits = options.limits;
  store_recorded_limits(&limits);
  status = create_segment(file.fd, limits);
  if (status.ok()) {
    map_tables();
    status = rebuild_from_store();  // budgets, policy and the current periods' spend, if any
  }
  if (status.ok()) status = record_segment_dir(dir, segment_dir, mode);
  if (!status.ok()) {
    // Leave nothing half-built: the next open starts from scratch (we still hold the init lock).
    if (mapping != nullptr) ::munmap(mapping, size);
    mapping = nullptr;
    header = nullptr;
    ::unlink(segment_path.c_str());
    return status;
  }
  store(header->magic, kMagic);  // last: the segment is complete
  return Code::kOk;
}

Status Ledger::Impl::register_process() {
  std::call_once(g_atfork_once, [] { ::pthread_atfork(nullptr, nullptr, on_fork_child); });
  const uint64_t epoch = g_fork_epoch.load(std::memory_order_relaxed);
  // Admin handles try their own slots first, so that they never take one a worker could use.
  const uint32_t first = options.admin ? max_processes : 0;
  const uint32_t count = options.admin ? process_slots : max_processes;
  for (int pass = 0; pass < 2; ++pass) {
    // Pass 0: a free slot. Pass 1: adopt a slot whose owner died and nobody reclaimed yet.
    for (uint32_t k = 0; k < count; ++k) {
      const uint32_t slot = (first + k) % count;
      if (try_claim_process_slot(slot, pass == 1)) {
        fork_epoch.store(epoch, std::memory_order_release);  // last: the handle is usable now
        return Code::kOk;
      }
    }
  }
  return Code::kFull;
}

bool Ledger::Impl::try_claim_process_slot(uint32_t slot, bool adopt_dead) {
  uint64_t state = load(processes[slot].state);
  if (!adopt_dead && proc_status(state) != kProcFree) return false;
  if (!try_lock_byte(kSlotLockBase + slot)) return false;  // a live process owns it
  state = load(processes[slot].state);
  // A free slot's lanes are free. One that is not (a damaged segment: no process runs an operation
  // on it) is repaired like a dead owner's, or acquire() would wait forever for it.
  if (proc_status(state) == kProcActive || !lanes_idle(slot)) {
    // Dead owner: repair its lanes with one of its own idle lanes, then take the slot.
    if ((proc_status(state) == kProcActive && !adopt_dead) || !reclaim_dead_process(slot, nullptr)) {
      unlock_byte(kSlotLockBase + slot);
      return false;
    }
    state = load(processes[slot].state);
  }
  const uint32_t generation = proc_generation(state) + 1;
  store(processes[slot].pid, static_cast<int32_t>(::getpid()), memory_order_relaxed);
  store(processes[slot].registered_ms, now_ms(), memory_order_relaxed);
  store(processes[slot].state, make_proc_state(generation, kProcActive));
  process_slot = slot;
  process_generation = generation;
  return true;
}

void Ledger::Impl::unregister_process() {
  if (process_slot == UINT32_MAX) return;
  if (fork_epoch.load(std::memory_order_relaxed) != g_fork_epoch.load(std::memory_order_relaxed)) {
    process_slot = UINT32_MAX;  // the parent's slot: not ours to free
    return;
  }
  // A new generation marks this handle's remaining holds as those of a gone owner: the next reclaim
  // expires them into tombstones, which still accept their late commits (promise 4).
  const uint64_t state = load(processes[process_slot].state);
  store(processes[process_slot].state, make_proc_state(proc_generation(state) + 1, kProcFree));
  unlock_byte(kSlotLockBase + process_slot);
  process_slot = UINT32_MAX;
}

Status Ledger::Impl::ensure_registered() {
  if (fork_epoch.load(std::memory_order_acquire) == g_fork_epoch.load(std::memory_order_relaxed)) [[likely]]
    return Code::kOk;
  // A handle carried across fork(): get our own lock file description and process slot. Other
  // threads of the child wait until the new slot is published.
  bool expected = false;
  while (!reregistering.compare_exchange_weak(expected, true, std::memory_order_acquire)) {
    expected = false;
    std::this_thread::yield();
  }
  Status status = Code::kOk;
  if (fork_epoch.load(std::memory_order_acquire) != g_fork_epoch.load(std::memory_order_relaxed)) {
    process_slot = UINT32_MAX;
    // The child has one thread: mutexes a parent thread held at fork() are fresh here.
    admin_mutex.release();  // NOLINT: never unlock or destroy a copy that another thread held
    flush_mutex.release();  // NOLINT
    admin_mutex = std::make_unique<std::mutex>();
    flush_mutex = std::make_unique<std::mutex>();
    local_admin_writers.store(0, std::memory_order_relaxed);
    ::close(lock_fd);
    lock_fd = ::open((dir + "/ledger.lock").c_str(), O_RDWR | O_CLOEXEC);
    status = lock_fd < 0 ? errno_status(errno) : register_process();
  }
  reregistering.store(false, std::memory_order_release);
  return status;
}

Status Ledger::open(std::string_view dir, const Options& options, std::unique_ptr<Ledger>* out) {
  if (out == nullptr) return Code::kInvalidArgument;
  out->reset();
  if (!limits_valid(options.limits) || !hold_policy_valid(options.default_ttl_s, options.tombstone_grace_s) ||
      (options.file_mode & ~0777u) != 0 || options.segment_dir.size() >= PATH_MAX / 2)
    return Code::kInvalidArgument;
  // A thread that has the store open must not wait for the init lock (its holder may be waiting for
  // the store, to rebuild a segment): open ledgers before opening a StoreReader, or after closing it.
  if (db::store_open_on_this_thread()) return Code::kInvalidArgument;
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  std::string segment_name;
  Status status = resolve_dir(dir, options.create_if_missing, &impl->dir, &segment_name);
  if (!status.ok()) return status;
  // An open that finds a store but no segment (a reboot) rebuilds the segment from the store.
  const bool create = options.create_if_missing || store_exists(impl->dir);
  status = impl->attach(create, segment_name);
  if (!status.ok()) return status;
  status = impl->register_process();
  if (!status.ok()) return status;
  out->reset(new Ledger(std::move(impl)));
  return Code::kOk;
}

namespace {
// The segment file of an existing ledger directory, as its creator recorded it.
Status existing_segment_path(std::string_view dir, std::string* path) {
  std::string real, name;
  Status status = resolve_dir(dir, false, &real, &name);
  if (!status.ok()) return status;
  const std::string recorded = recorded_segment_dir(real);
  *path = (recorded.empty() ? std::string(kDefaultSegmentDir) : recorded) + name;
  return Code::kOk;
}
}  // namespace

std::string Ledger::segment_path(std::string_view dir) {
  std::string path;
  return existing_segment_path(dir, &path).ok() ? path : std::string();
}

Status Ledger::destroy_segment(std::string_view dir) {
  std::string path;
  Status status = existing_segment_path(dir, &path);
  if (!status.ok()) return status;
  if (::unlink(path.c_str()) != 0) return errno_status(errno);
  return Code::kOk;
}

uint64_t Ledger::segment_bytes(const Limits& limits) {
  return limits_valid(limits) ? geometry_for(limits).total : 0;
}

Ledger::Ledger(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Ledger::~Ledger() = default;
const std::string& Ledger::dir() const { return impl_->dir; }
Limits Ledger::limits() const {
  return Limits{impl_->max_accounts, impl_->max_reservations, impl_->max_processes, impl_->rules_max};
}
int64_t Ledger::now_ms() const { return impl_->now_ms(); }

// Both coarse clocks advance at the same kernel tick: the wall clock is read on both sides of the
// monotonic read until the two agree, so the offset is that of one tick, never of two.
int64_t Ledger::Impl::measure_wall_offset(int64_t mono_ms) const {
  const auto ns = [](const struct timespec& ts) { return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec; };
  int64_t offset_ns = 0;
  for (int attempt = 0; attempt < 8; ++attempt) {
    struct timespec before {}, mono {}, after {};
    ::clock_gettime(CLOCK_REALTIME_COARSE, &before);
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &mono);
    ::clock_gettime(CLOCK_REALTIME_COARSE, &after);
    offset_ns = ns(before) - ns(mono);
    if (ns(before) == ns(after)) break;
  }
  // Floor division: the derived wall clock is the monotonic ms plus whole ms, never ahead by one.
  const int64_t offset_ms = offset_ns >= 0 ? offset_ns / 1'000'000 : -((-offset_ns + 999'999) / 1'000'000);
  wall_offset_ms.store(offset_ms, std::memory_order_relaxed);
  wall_offset_until_ms.store(mono_ms + kWallOffsetRefreshMs, std::memory_order_release);
  return mono_ms + offset_ms;
}

}  // namespace ledger
