// inflight.cpp — see inflight.hpp.
#include "inflight.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace ledger::proxy {

namespace fs = std::filesystem;

namespace {

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

bool running(const std::string& name) {  // "<pid>.<start time>"
  const size_t dot = name.find('.');
  if (dot == std::string::npos) return false;
  const pid_t pid = static_cast<pid_t>(std::atol(name.substr(0, dot).c_str()));
  return pid > 0 && ::kill(pid, 0) == 0 && start_time(pid) == name.substr(dot + 1);
}

void write_file(const std::string& path, const std::string& text) {
  const std::string temp = path + ".tmp";
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (ok) (void)::rename(temp.c_str(), path.c_str());
}

}  // namespace

Inflight::Inflight(const std::string& ledger_dir)
    : root_(ledger_dir + "/proxy-inflight"), mine_(root_ + "/" + std::to_string(::getpid()) + "." + start_time(::getpid())) {}

bool Inflight::open(std::string* error) {
  std::error_code ec;
  fs::create_directories(mine_, ec);
  if (!ec) fs::permissions(root_, fs::perms::owner_all, ec);
  if (ec) *error = "cannot make " + mine_ + ": " + ec.message();
  return !ec;
}

std::string Inflight::path_of(uint64_t reservation) const { return mine_ + "/" + std::to_string(reservation); }

void Inflight::begin(uint64_t reservation, int64_t hold) {
  write_file(path_of(reservation), std::to_string(reservation) + " " + std::to_string(hold) + "\n");
}

void Inflight::named(uint64_t reservation, int64_t hold, const std::string& generation) {
  write_file(path_of(reservation), std::to_string(reservation) + " " + std::to_string(hold) + " " + generation + "\n");
}

void Inflight::end(uint64_t reservation) { (void)::unlink(path_of(reservation).c_str()); }

std::vector<Inflight::Record> Inflight::left_over() const {
  std::vector<Record> out;
  std::error_code ec;
  for (const auto& dir : fs::directory_iterator(root_, ec)) {
    const std::string name = dir.path().filename().string();
    if (dir.path().string() == mine_ || running(name)) continue;
    std::error_code inner;
    for (const auto& file : fs::directory_iterator(dir.path(), inner)) {
      if (file.path().extension() == ".tmp" || out.size() >= 100'000) continue;
      std::ifstream in(file.path());
      Record r;
      if (!(in >> r.reservation >> r.hold_nanousd) || r.hold_nanousd < 0) continue;  // a damaged record: skipped, left in place
      in >> r.generation;
      if (r.generation.size() > 128) r.generation.clear();
      r.file = file.path().string();
      out.push_back(std::move(r));
    }
    if (fs::is_empty(dir.path(), inner)) fs::remove(dir.path(), inner);  // a proxy that left nothing open
  }
  return out;
}

void Inflight::forget(const Record& record) {
  std::error_code ec;
  fs::remove(record.file, ec);
  const fs::path dir = fs::path(record.file).parent_path();
  if (fs::is_empty(dir, ec)) fs::remove(dir, ec);
}

}  // namespace ledger::proxy
