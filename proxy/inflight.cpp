// inflight.cpp — see inflight.hpp.
#include "inflight.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/admin.hpp"

namespace ledger::proxy {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'l', 'k', 'i', 'n', 'f', 'l', 't', '1'};
constexpr const char* kSuffix = ".slots";

struct FileHead {
  char magic[8];
  uint32_t slots, slot_bytes;
  char pad[48];
};

// One open hold. Published by `reservation` (written last, 0 = free); the generation id by
// `generation_len` (written after its bytes, 0 = not named).
struct Slot {
  std::atomic<uint64_t> reservation;
  int64_t hold_nanousd;
  std::atomic<uint32_t> generation_len;
  char generation[Inflight::kGenerationMax];
};
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free);

constexpr size_t kFileBytes = sizeof(FileHead) + size_t{Inflight::kSlots} * sizeof(Slot);

Slot* slot_at(void* map, uint32_t i) {
  return reinterpret_cast<Slot*>(static_cast<char*>(map) + sizeof(FileHead) + size_t{i} * sizeof(Slot));
}

// A process's start time (clock ticks since boot), so a reused pid is not taken for the same proxy.
std::string start_time(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  std::getline(in, text);
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return "";
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i)
    if (i == 22) return field;
  return "";
}

bool running(std::string name) {  // "<pid>.<start time>", with or without the suffix
  const size_t suffix = std::strlen(kSuffix);
  if (name.size() > suffix && name.compare(name.size() - suffix, std::string::npos, kSuffix) == 0) name.resize(name.size() - suffix);
  const size_t dot = name.find('.');
  if (dot == std::string::npos) return false;
  const pid_t pid = static_cast<pid_t>(std::atol(name.substr(0, dot).c_str()));
  return pid > 0 && ::kill(pid, 0) == 0 && start_time(pid) == name.substr(dot + 1);
}

// The records of a slots file; removes the file when it holds none. A file of another shape is left alone.
void read_slots(const fs::path& path, std::vector<Inflight::Record>& out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  struct stat st {};
  void* map = ::fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) == kFileBytes
                  ? ::mmap(nullptr, kFileBytes, PROT_READ, MAP_SHARED, fd, 0)
                  : MAP_FAILED;
  ::close(fd);
  if (map == MAP_FAILED) return;
  const auto* head = static_cast<const FileHead*>(map);
  size_t found = 0;
  if (std::memcmp(head->magic, kMagic, sizeof kMagic) == 0 && head->slots == Inflight::kSlots && head->slot_bytes == sizeof(Slot)) {
    for (uint32_t i = 0; i < Inflight::kSlots && out.size() < 100'000; ++i) {
      const Slot* s = slot_at(map, i);
      const uint64_t id = s->reservation.load(std::memory_order_acquire);
      if (id == 0) continue;
      ++found;
      if (s->hold_nanousd < 0) continue;  // damaged: skipped, left in place
      const uint32_t len = s->generation_len.load(std::memory_order_acquire);
      out.push_back(Inflight::Record{id, s->hold_nanousd, len <= Inflight::kGenerationMax ? std::string(s->generation, len) : "",
                                     path.string(), i});
    }
    std::error_code ec;
    if (found == 0) fs::remove(path, ec);  // a proxy that left nothing open
  }
  ::munmap(map, kFileBytes);
}

// The records of the earlier format: a directory with one small file per hold.
void read_directory(const fs::path& dir, std::vector<Inflight::Record>& out) {
  std::error_code inner;
  for (const auto& file : fs::directory_iterator(dir, inner)) {
    if (file.path().extension() == ".tmp" || out.size() >= 100'000) continue;
    std::ifstream in(file.path());
    Inflight::Record r;
    if (!(in >> r.reservation >> r.hold_nanousd) || r.hold_nanousd < 0) continue;  // a damaged record: skipped, left in place
    in >> r.generation;
    if (r.generation.size() > Inflight::kGenerationMax) r.generation.clear();
    r.file = file.path().string();
    out.push_back(std::move(r));
  }
  if (fs::is_empty(dir, inner)) fs::remove(dir, inner);  // a proxy that left nothing open
}

}  // namespace

Inflight::Inflight(const std::string& ledger_dir)
    : root_(ledger_dir + "/proxy-inflight"), mine_(root_ + "/" + std::to_string(::getpid()) + "." + start_time(::getpid()) + kSuffix) {}

Inflight::~Inflight() {
  if (map_ == nullptr) return;
  bool empty = true;
  for (uint32_t i = 0; i < kSlots && empty; ++i) empty = slot_at(map_, i)->reservation.load() == 0;
  ::munmap(map_, kFileBytes);
  if (empty) (void)::unlink(mine_.c_str());  // nothing left open: nothing for the next proxy to read
}

bool Inflight::open(std::string* error) {
  std::error_code ec;
  fs::create_directories(root_, ec);
  if (!ec) fs::permissions(root_, fs::perms::owner_all, ec);
  const int fd = ec ? -1 : ::open(mine_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  // Sparse: only the pages of slots in use take memory or disk.
  void* map = fd >= 0 && ::ftruncate(fd, kFileBytes) == 0 ? ::mmap(nullptr, kFileBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  const int saved = errno;
  if (fd >= 0) ::close(fd);
  if (map == MAP_FAILED) {
    *error = "cannot make " + mine_ + ": " + (ec ? ec.message() : std::strerror(saved));
    return false;
  }
  auto* head = static_cast<FileHead*>(map);
  std::memcpy(head->magic, kMagic, sizeof kMagic);
  head->slots = kSlots;
  head->slot_bytes = sizeof(Slot);
  map_ = map;
  free_.reserve(kSlots);
  for (uint32_t i = kSlots; i > 0; --i) free_.push_back(i - 1);
  return true;
}

uint32_t Inflight::begin(uint64_t reservation, int64_t hold) {
  uint32_t i = UINT32_MAX;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (map_ != nullptr && !free_.empty()) {
      i = free_.back();
      free_.pop_back();
    } else if (!warned_) {
      warned_ = true;
      admin::log_line("warn", "no free in-flight slot: a request goes on without a record (a SIGKILL now would leave its hold to the sidecar)");
    }
  }
  if (i == UINT32_MAX) return i;
  Slot* s = slot_at(map_, i);
  s->hold_nanousd = hold;
  s->generation_len.store(0, std::memory_order_relaxed);
  s->reservation.store(reservation, std::memory_order_release);  // published last
  return i;
}

void Inflight::named(uint32_t slot, const std::string& generation) {
  if (slot >= kSlots || map_ == nullptr || generation.size() > kGenerationMax) return;
  Slot* s = slot_at(map_, slot);
  std::memcpy(s->generation, generation.data(), generation.size());
  s->generation_len.store(static_cast<uint32_t>(generation.size()), std::memory_order_release);  // after its bytes
}

void Inflight::end(uint32_t slot) {
  if (slot >= kSlots || map_ == nullptr) return;
  slot_at(map_, slot)->reservation.store(0, std::memory_order_release);
  std::lock_guard<std::mutex> lock(mutex_);
  free_.push_back(slot);
}

std::vector<Inflight::Record> Inflight::left_over() const {
  std::vector<Record> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root_, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().string() == mine_ || running(name)) continue;
    std::error_code inner;
    if (entry.is_directory(inner)) read_directory(entry.path(), out);
    else if (entry.path().extension() == kSuffix) read_slots(entry.path(), out);
  }
  return out;
}

void Inflight::forget(const Record& record) {
  std::error_code ec;
  if (record.slot == UINT32_MAX) {  // the earlier format
    fs::remove(record.file, ec);
    const fs::path dir = fs::path(record.file).parent_path();
    if (fs::is_empty(dir, ec)) fs::remove(dir, ec);
    return;
  }
  // Cleared in place; the next start removes the file once none is left.
  const int fd = ::open(record.file.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  const uint64_t zero = 0;
  (void)!::pwrite(fd, &zero, sizeof zero, static_cast<off_t>(sizeof(FileHead) + size_t{record.slot} * sizeof(Slot)));
  ::close(fd);
}

}  // namespace ledger::proxy
