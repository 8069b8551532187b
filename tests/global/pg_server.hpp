// pg_server.hpp — a private PostgreSQL 15 for one test: initdb in a temp dir, a Unix socket in that
// dir (no TCP), password authentication (scram), run as the unprivileged `postgres` user when the
// tests run as root (initdb refuses root), stopped and removed afterwards. fsync is off: the tests
// kill and restart the server (-m immediate, a crash without losing the OS cache), not the machine.
#pragma once

#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "process.hpp"

namespace ledger_test {

class PgServer {
 public:
  PgServer() {
    char pattern[] = "/tmp/lpg-XXXXXX";  // short: the socket path must fit in 107 bytes
    REQUIRE(::mkdtemp(pattern) != nullptr);
    dir_ = pattern;
    bin_ = find_bindir();
    REQUIRE_FALSE(bin_.empty());
    write_file(dir_ + "/pw", password() + "\n");
    own(dir_);
    own(dir_ + "/pw");
    REQUIRE(as_postgres({bin_ + "/initdb", "-D", data(), "-U", "ledger", "--pwfile=" + dir_ + "/pw", "-A", "scram-sha-256",
                         "--no-sync", "-E", "UTF8", "--locale=C"}) == 0);
    start();
    REQUIRE(as_postgres({bin_ + "/createdb", "-h", dir_, "-U", "ledger", "ledger"}, true) == 0);
  }
  ~PgServer() {
    (void)as_postgres({bin_ + "/pg_ctl", "-D", data(), "-m", "immediate", "-w", "stop"});
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  PgServer(const PgServer&) = delete;
  PgServer& operator=(const PgServer&) = delete;

  static std::string password() { return "pg-test-secret-3141"; }
  std::string uri(const std::string& db = "ledger") const { return "postgresql:///" + db + "?host=" + dir_ + "&user=ledger"; }
  const std::string& dir() const { return dir_; }

  void start() {
    REQUIRE(as_postgres({bin_ + "/pg_ctl", "-D", data(), "-l", dir_ + "/server.log", "-w", "-o",
                         "-k " + dir_ + " -c listen_addresses='' -c fsync=off -c full_page_writes=off -c max_connections=60",
                         "start"}) == 0);
  }
  // A crash of the server (its processes gone at once; committed data survives in the WAL).
  void restart_immediate() {
    REQUIRE(as_postgres({bin_ + "/pg_ctl", "-D", data(), "-m", "immediate", "-w", "stop"}) == 0);
    start();
  }
  // The whole server paused (a partition): every connection hangs until resume().
  void pause() { signal_all(SIGSTOP); }
  void resume() { signal_all(SIGCONT); }

 private:
  std::string data() const { return dir_ + "/data"; }

  static std::string find_bindir() {
    for (const char* candidate : {"/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"})
      if (std::filesystem::exists(std::string(candidate) + "/initdb")) return candidate;
    return {};
  }
  static const struct passwd* postgres_user() { return ::geteuid() == 0 ? ::getpwnam("postgres") : nullptr; }
  void own(const std::string& path) const {
    if (const struct passwd* pg = postgres_user()) REQUIRE(::chown(path.c_str(), pg->pw_uid, pg->pw_gid) == 0);
  }
  // Runs argv as the postgres user (or as ourselves when not root); the exit code.
  int as_postgres(const std::vector<std::string>& argv, bool with_password = false) const {
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (const struct passwd* pg = postgres_user()) {
        if (::setgroups(0, nullptr) != 0 || ::setgid(pg->pw_gid) != 0 || ::setuid(pg->pw_uid) != 0) ::_exit(120);
      }
      if (with_password) ::setenv("PGPASSWORD", password().c_str(), 1);
      const int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, 1);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  void signal_all(int sig) const {
    // The postmaster's pid is the first line of postmaster.pid; its backends are its children.
    std::ifstream in(data() + "/postmaster.pid");
    pid_t postmaster = 0;
    in >> postmaster;
    REQUIRE(postmaster > 0);
    (void)::kill(postmaster, sig);
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
      const std::string name = entry.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(entry.path() / "stat");
      std::string text;
      std::getline(stat, text);
      const size_t close = text.rfind(')');
      if (close == std::string::npos) continue;
      char state = 0;
      pid_t parent = 0;
      if (std::sscanf(text.c_str() + close + 1, " %c %d", &state, &parent) == 2 && parent == postmaster)
        (void)::kill(std::stoi(name), sig);
    }
  }

  std::string dir_, bin_;
};

}  // namespace ledger_test
