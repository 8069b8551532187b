// sidecar_lock.hpp — one ledger-sidecar per ledger directory.
//
// The sidecar holds an OFD write lock on byte kSidecarLockByte of <dir>/ledger.lock for its
// lifetime (the kernel releases it when the process dies, however it dies) and writes its pid to
// <dir>/ledger-sidecar.pid for humans. libledger uses bytes 0-2 (init, admin, flush) and 64 and up
// (process slots) of the same file; byte 3 is the sidecar's.
#pragma once

#include <string>

namespace ledger::admin {

inline constexpr long kSidecarLockByte = 3;

class SidecarLock {
 public:
  SidecarLock() = default;
  SidecarLock(const SidecarLock&) = delete;
  SidecarLock& operator=(const SidecarLock&) = delete;
  ~SidecarLock();
  // False with *error (naming the running sidecar's pid) when another sidecar holds the lock.
  bool acquire(const std::string& dir, std::string* error);

 private:
  int fd_ = -1;
  std::string pid_path_;
};

// True while a sidecar holds the lock of `dir`.
bool sidecar_running(const std::string& dir);

}  // namespace ledger::admin
