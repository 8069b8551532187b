// sidecar_lock.cpp — see sidecar_lock.hpp.
#include "core/sidecar_lock.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace ledger::admin {

namespace {
struct flock sidecar_byte(short type) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = kSidecarLockByte;
  fl.l_len = 1;
  return fl;
}
}  // namespace

bool SidecarLock::acquire(const std::string& dir, std::string* error) {
  fd_ = ::open((dir + "/ledger.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    *error = "cannot open " + dir + "/ledger.lock: " + std::strerror(errno);
    return false;
  }
  struct flock fl = sidecar_byte(F_WRLCK);
  if (::fcntl(fd_, F_OFD_SETLK, &fl) != 0) {
    std::string pid = "unknown";
    std::ifstream(dir + "/ledger-sidecar.pid") >> pid;
    *error = "another ledger-sidecar (pid " + pid + ") is already running for " + dir + "; stop it first";
    return false;
  }
  pid_path_ = dir + "/ledger-sidecar.pid";
  std::ofstream(pid_path_, std::ios::trunc) << ::getpid() << "\n";
  return true;
}

SidecarLock::~SidecarLock() {
  if (!pid_path_.empty()) ::unlink(pid_path_.c_str());
  if (fd_ >= 0) ::close(fd_);
}

bool sidecar_running(const std::string& dir) {
  const int fd = ::open((dir + "/ledger.lock").c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  struct flock fl = sidecar_byte(F_WRLCK);
  const bool held = ::fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
  ::close(fd);
  return held;
}

}  // namespace ledger::admin
