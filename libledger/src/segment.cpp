// segment.cpp — creating, validating and attaching the shared segment; process slots.
//
// Creation and attach are serialized by an OFD lock on byte kInitLockByte of <dir>/ledger.lock, so a
// creator killed half-way leaves a segment without its magic, which the next opener re-initializes.
// A process slot is owned while its byte (kSlotLockBase + slot) is OFD-locked; the kernel drops the
// lock when the owner dies, and that, never a pid, is how others learn it is dead.
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "impl.hpp"

namespace ledger {
namespace {

using namespace detail;

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
    default:
      return Code::kIoError;
  }
}

// Resolves dir to an absolute path and the shm name derived from it (path and inode, so a directory
// deleted and re-created gets a fresh segment).
Status resolve_dir(std::string_view dir, bool create, std::string* real, std::string* shm_name) {
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
  *shm_name = name;
  return Code::kOk;
}

struct SegmentGeometry {
  uint64_t offset_processes, offset_lanes, offset_accounts, offset_hash, offset_reservations,
      offset_prices, offset_policy, offset_model_stats, total;
  uint32_t hash_mask, model_stat_mask;
};

SegmentGeometry geometry_for(const Limits& limits) {
  SegmentGeometry g{};
  uint32_t hash_size = 1;
  while (hash_size < limits.max_accounts * 2u) hash_size <<= 1;
  g.hash_mask = hash_size - 1;
  g.offset_processes = sizeof(Header);
  g.offset_lanes = align_up(g.offset_processes + uint64_t{limits.max_processes} * sizeof(ProcessSlot), 64);
  g.offset_accounts = align_up(
      g.offset_lanes + uint64_t{limits.max_processes} * kLanesPerProcess * sizeof(Lane), 64);
  g.offset_hash = align_up(g.offset_accounts + uint64_t{limits.max_accounts} * sizeof(Account), 64);
  g.offset_reservations = align_up(g.offset_hash + uint64_t{hash_size} * sizeof(uint32_t), 64);
  g.offset_prices = align_up(g.offset_reservations + uint64_t{limits.max_reservations} * sizeof(Reservation), 64);
  g.offset_policy = align_up(g.offset_prices + uint64_t{kModelsMax} * sizeof(Price), 64);
  // Per-model tallies: twice the accounts (most use a few models; tmpfs pages cost only when used).
  uint32_t stats = 1024;
  while (stats < kModelStatsMax && stats < limits.max_accounts * 2u) stats <<= 1;
  g.model_stat_mask = stats - 1;
  g.offset_model_stats = align_up(g.offset_policy + sizeof(Policy), 64);
  g.total = align_up(g.offset_model_stats + uint64_t{stats} * sizeof(ModelStat), 4096);
  return g;
}

// Tells this segment's per-model tallies apart from an earlier segment's in the store.
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
         l.max_processes <= kProcessesMax;
}

}  // namespace

Ledger::Impl::~Impl() {
  if (mapping != nullptr) {
    unregister_process();
    ::munmap(mapping, size);
  }
  if (lock_fd >= 0) ::close(lock_fd);
}

bool Ledger::Impl::try_lock_byte(off_t byte) const {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  return ::fcntl(lock_fd, F_OFD_SETLK, &fl) == 0;
}

void Ledger::Impl::lock_byte_wait(off_t byte) const {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  while (::fcntl(lock_fd, F_OFD_SETLKW, &fl) != 0 && errno == EINTR) {
  }
}

bool Ledger::Impl::admin_lock_held() const {
  if (local_admin_writers.load(std::memory_order_relaxed) > 0) return true;
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = kAdminLockByte;
  fl.l_len = 1;
  return ::fcntl(lock_fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
}

void Ledger::Impl::unlock_byte(off_t byte) const {
  struct flock fl {};
  fl.l_type = F_UNLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  ::fcntl(lock_fd, F_OFD_SETLK, &fl);
}

Status Ledger::Impl::attach(bool create) {
  const std::string lock_path = dir + "/ledger.lock";
  const mode_t mode = static_cast<mode_t>(options.file_mode & 0777);
  lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), mode);
  if (lock_fd < 0) return errno_status(errno);
  lock_byte_wait(kInitLockByte);
  struct Unlock {
    const Impl* impl;
    ~Unlock() { impl->unlock_byte(kInitLockByte); }
  } unlock{this};

  int fd = ::shm_open(segment_name.c_str(), O_RDWR | O_CLOEXEC, 0);
  bool fresh = false;
  if (fd < 0) {
    if (errno != ENOENT) return errno_status(errno);
    if (!create) return Code::kNotFound;
    fd = ::shm_open(segment_name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) return errno_status(errno);
    fresh = true;
  }
  struct CloseFd {
    int fd;
    ~CloseFd() { ::close(fd); }
  } close_fd{fd};
  ::fchmod(fd, mode);  // exact mode whatever the umask

  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_status(errno);
  if (!fresh && st.st_size >= static_cast<off_t>(sizeof(Header))) {
    void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return errno_status(errno);
    const auto* h = static_cast<const Header*>(p);
    const uint64_t magic = load(h->magic);
    if (magic == 0) {
      // A creator died before finishing; we hold the init lock, so start over.
      ::munmap(p, static_cast<size_t>(st.st_size));
      if (!create) return Code::kNotFound;
      fresh = true;
    } else if (magic != kMagic || h->format_version != kFormatVersion ||
               h->header_size != sizeof(Header) || h->total_size != static_cast<uint64_t>(st.st_size)) {
      ::munmap(p, static_cast<size_t>(st.st_size));
      return Code::kIncompatible;
    } else {
      mapping = p;
      size = static_cast<size_t>(st.st_size);
    }
  } else if (!fresh) {
    if (st.st_size != 0) return Code::kIncompatible;  // too short to be ours
    if (!create) return Code::kNotFound;
    fresh = true;
  }

  if (fresh) {
    const SegmentGeometry g = geometry_for(options.limits);
    if (::ftruncate(fd, 0) != 0 || ::ftruncate(fd, static_cast<off_t>(g.total)) != 0)
      return errno_status(errno);
    void* p = ::mmap(nullptr, g.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return errno_status(errno);
    mapping = p;
    size = g.total;
    auto* h = static_cast<Header*>(p);
    h->format_version = kFormatVersion;
    h->header_size = sizeof(Header);
    h->total_size = g.total;
    h->max_accounts = options.limits.max_accounts;
    h->max_reservations = options.limits.max_reservations;
    h->max_processes = options.limits.max_processes;
    h->hash_mask = g.hash_mask;
    h->offset_processes = g.offset_processes;
    h->offset_lanes = g.offset_lanes;
    h->offset_accounts = g.offset_accounts;
    h->offset_hash = g.offset_hash;
    h->offset_reservations = g.offset_reservations;
    h->offset_prices = g.offset_prices;
    h->offset_policy = g.offset_policy;
    h->offset_model_stats = g.offset_model_stats;
    h->model_stat_mask = g.model_stat_mask;
    h->segment_id = random_segment_id();
    h->account_count = 0;
    h->tombstone_grace_s = options.tombstone_grace_s;
    h->created_unix = now_ms() / 1000;
    std::snprintf(h->dir, sizeof h->dir, "%s", dir.c_str());
    auto* reservations_init = reinterpret_cast<Reservation*>(static_cast<char*>(p) + g.offset_reservations);
    for (uint32_t i = 0; i < options.limits.max_reservations; ++i)
      reservations_init[i].state = make_res_state(0, kResFree, 0);
  }

  header = static_cast<Header*>(mapping);
  // Validate the geometry before trusting any offset (a corrupted header must not send us astray).
  const Limits existing{header->max_accounts, header->max_reservations, header->max_processes};
  if (!limits_valid(existing)) return Code::kIncompatible;
  const SegmentGeometry g = geometry_for(existing);
  if (g.total != header->total_size || g.offset_accounts != header->offset_accounts ||
      g.offset_reservations != header->offset_reservations || g.offset_hash != header->offset_hash ||
      g.offset_lanes != header->offset_lanes || g.hash_mask != header->hash_mask ||
      g.offset_prices != header->offset_prices || g.offset_policy != header->offset_policy ||
      g.offset_model_stats != header->offset_model_stats || g.model_stat_mask != header->model_stat_mask ||
      load(header->account_count) > existing.max_accounts)
    return Code::kIncompatible;
  char* b = static_cast<char*>(mapping);
  processes = reinterpret_cast<ProcessSlot*>(b + header->offset_processes);
  lanes = reinterpret_cast<Lane*>(b + header->offset_lanes);
  accounts = reinterpret_cast<Account*>(b + header->offset_accounts);
  hash = reinterpret_cast<uint32_t*>(b + header->offset_hash);
  reservations = reinterpret_cast<Reservation*>(b + header->offset_reservations);
  prices = reinterpret_cast<Price*>(b + header->offset_prices);
  policy = reinterpret_cast<Policy*>(b + header->offset_policy);
  model_stats = reinterpret_cast<ModelStat*>(b + header->offset_model_stats);
  model_stat_mask = header->model_stat_mask;
  max_accounts = existing.max_accounts;
  max_reservations = existing.max_reservations;
  max_processes = existing.max_processes;
  hash_mask = header->hash_mask;
  if (fresh) {
    // A new segment: budgets and the current periods' spend come back from the store, if any.
    Status status = rebuild_from_store();
    if (!status.ok()) return status;
    store(header->magic, kMagic);  // last: the segment is complete
  }
  return Code::kOk;
}

Status Ledger::Impl::register_process() {
  std::call_once(g_atfork_once, [] { ::pthread_atfork(nullptr, nullptr, on_fork_child); });
  const uint64_t epoch = g_fork_epoch.load(std::memory_order_relaxed);
  const int64_t now = now_ms();
  // Pass 1: a free slot. Pass 2: adopt a slot whose owner died and nobody reclaimed yet.
  for (int pass = 0; pass < 2; ++pass) {
    for (uint32_t slot = 0; slot < max_processes; ++slot) {
      uint64_t state = load(processes[slot].state);
      if (pass == 0 && proc_status(state) != kProcFree) continue;
      if (!try_lock_byte(kSlotLockBase + slot)) continue;  // a live process owns it
      state = load(processes[slot].state);
      if (proc_status(state) == kProcActive) {
        if (pass == 0) {
          unlock_byte(kSlotLockBase + slot);
          continue;
        }
        // Dead owner: repair its lanes with one of its own idle lanes, then take the slot.
        if (!reclaim_dead_process(slot, 0)) {
          unlock_byte(kSlotLockBase + slot);
          continue;
        }
        state = load(processes[slot].state);
      }
      const uint32_t generation = proc_generation(state) + 1;
      store(processes[slot].pid, static_cast<int32_t>(::getpid()), memory_order_relaxed);
      store(processes[slot].registered_ms, now, memory_order_relaxed);
      store(processes[slot].state, make_proc_state(generation, kProcActive));
      process_slot = slot;
      process_generation = generation;
      fork_epoch.store(epoch, std::memory_order_release);  // last: the handle is usable now
      return Code::kOk;
    }
  }
  return Code::kFull;
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
  if (!limits_valid(options.limits) || options.default_ttl_s == 0 ||
      options.default_ttl_s > kTtlMaxSeconds || (options.file_mode & ~0777u) != 0)
    return Code::kInvalidArgument;
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  Status status = resolve_dir(dir, options.create_if_missing, &impl->dir, &impl->segment_name);
  if (!status.ok()) return status;
  status = impl->attach(options.create_if_missing);
  if (!status.ok()) return status;
  status = impl->register_process();
  if (!status.ok()) return status;
  out->reset(new Ledger(std::move(impl)));
  return Code::kOk;
}

std::string Ledger::segment_path(std::string_view dir) {
  std::string real, name;
  if (!resolve_dir(dir, false, &real, &name).ok()) return {};
  return "/dev/shm" + name;
}

Status Ledger::destroy_segment(std::string_view dir) {
  std::string real, name;
  Status status = resolve_dir(dir, false, &real, &name);
  if (!status.ok()) return status;
  if (::shm_unlink(name.c_str()) != 0) return errno_status(errno);
  return Code::kOk;
}

Ledger::Ledger(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Ledger::~Ledger() = default;
const std::string& Ledger::dir() const { return impl_->dir; }
Limits Ledger::limits() const {
  return Limits{impl_->max_accounts, impl_->max_reservations, impl_->max_processes};
}
int64_t Ledger::now_ms() const { return impl_->now_ms(); }

}  // namespace ledger
