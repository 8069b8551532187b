// private_pg.hpp — a private PostgreSQL 15 for one test or benchmark run: initdb in a temp dir, a
// Unix socket in that dir (no TCP), password authentication (scram), run as the unprivileged
// `postgres` user when run as root (initdb refuses root), stopped and removed afterwards. fsync is
// off: the tests kill and restart the server (-m immediate, a crash without losing the OS cache),
// not the machine.
//
// No test framework: a step that fails throws std::runtime_error naming the step (and, for the
// server's start, the end of its log); the directory is removed then. tests/global/pg_server.hpp
// wraps it for Catch2 (an exception fails the test case), bench/global_bench.cpp uses it as is.
// The password is given to initdb in a 0600 file and to createdb in its environment: never in
// argv, never printed.
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace ledger_support {

class PrivatePg {
 public:
  // `server_options`: more `-c name=value` settings for the server, appended to the defaults.
  explicit PrivatePg(std::string password, std::string server_options = "")
      : password_(std::move(password)), server_options_(std::move(server_options)) {
    char pattern[] = "/tmp/lpg-XXXXXX";  // short: the socket path must fit in 107 bytes
    if (::mkdtemp(pattern) == nullptr) throw std::runtime_error("private PostgreSQL: mkdtemp(/tmp/lpg-XXXXXX) failed");
    dir_ = pattern;
    try {
      bin_ = find_bindir();
      if (bin_.empty()) fail("no PostgreSQL server binaries in /usr/lib/postgresql/15/bin or /usr/lib/postgresql/16/bin");
      {
        std::ofstream pw(dir_ + "/pw", std::ios::trunc);
        pw << password_ << "\n";
        if (!pw) fail("cannot write " + dir_ + "/pw");
      }
      ::chmod((dir_ + "/pw").c_str(), 0600);
      own(dir_);
      own(dir_ + "/pw");
      if (const int rc = as_postgres({bin_ + "/initdb", "-D", data(), "-U", "ledger", "--pwfile=" + dir_ + "/pw", "-A",
                                      "scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"});
          rc != 0)
        fail("initdb exited with " + std::to_string(rc));
      start();
      if (const int rc = as_postgres({bin_ + "/createdb", "-h", dir_, "-U", "ledger", "ledger"}, true); rc != 0)
        fail("createdb ledger exited with " + std::to_string(rc));
    } catch (...) {
      if (std::filesystem::exists(data() + "/postmaster.pid"))
        (void)as_postgres({bin_ + "/pg_ctl", "-D", data(), "-m", "immediate", "-w", "stop"});
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
      throw;
    }
  }
  ~PrivatePg() {
    (void)as_postgres({bin_ + "/pg_ctl", "-D", data(), "-m", "immediate", "-w", "stop"});
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  PrivatePg(const PrivatePg&) = delete;
  PrivatePg& operator=(const PrivatePg&) = delete;

  const std::string& store_password() const { return password_; }
  // A libpq URI without the password (it goes to libpq as a parameter).
  std::string uri(const std::string& db = "ledger") const { return "postgresql:///" + db + "?host=" + dir_ + "&user=ledger"; }
  const std::string& dir() const { return dir_; }

  void start() {
    const int rc = as_postgres({bin_ + "/pg_ctl", "-D", data(), "-l", dir_ + "/server.log", "-w", "-o",
                                "-k " + dir_ + " -c listen_addresses='' -c fsync=off -c full_page_writes=off -c max_connections=60" +
                                    (server_options_.empty() ? "" : " " + server_options_),
                                "start"});
    if (rc != 0) fail("pg_ctl start exited with " + std::to_string(rc) + "; the server's log ends:\n" + log_tail());
  }
  // A crash of the server (its processes gone at once; committed data survives in the WAL).
  void restart_immediate() {
    if (const int rc = as_postgres({bin_ + "/pg_ctl", "-D", data(), "-m", "immediate", "-w", "stop"}); rc != 0)
      fail("pg_ctl stop -m immediate exited with " + std::to_string(rc));
    start();
  }
  // The whole server paused (a partition): every connection hangs until resume().
  void pause() { signal_all(SIGSTOP); }
  void resume() { signal_all(SIGCONT); }

 private:
  std::string data() const { return dir_ + "/data"; }

  [[noreturn]] static void fail(const std::string& what) { throw std::runtime_error("private PostgreSQL: " + what); }

  std::string log_tail() const {
    std::ifstream in(dir_ + "/server.log");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return text.size() > 2000 ? text.substr(text.size() - 2000) : text;
  }

  static std::string find_bindir() {
    for (const char* candidate : {"/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"})
      if (std::filesystem::exists(std::string(candidate) + "/initdb")) return candidate;
    return {};
  }
  static const struct passwd* postgres_user() { return ::geteuid() == 0 ? ::getpwnam("postgres") : nullptr; }
  void own(const std::string& path) const {
    if (const struct passwd* pg = postgres_user(); pg != nullptr && ::chown(path.c_str(), pg->pw_uid, pg->pw_gid) != 0)
      fail("cannot give " + path + " to the postgres user");
  }
  // Runs argv as the postgres user (or as ourselves when not root); the exit code.
  int as_postgres(const std::vector<std::string>& argv, bool with_password = false) const {
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (const struct passwd* pg = postgres_user()) {
        if (::setgroups(0, nullptr) != 0 || ::setgid(pg->pw_gid) != 0 || ::setuid(pg->pw_uid) != 0) ::_exit(120);
      }
      if (with_password) ::setenv("PGPASSWORD", password_.c_str(), 1);
      const int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, 1);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    if (pid < 0) return -1;
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  void signal_all(int sig) const {
    // The postmaster's pid is the first line of postmaster.pid; its backends are its children.
    std::ifstream in(data() + "/postmaster.pid");
    pid_t postmaster = 0;
    in >> postmaster;
    if (postmaster <= 0) fail("no postmaster pid in " + data() + "/postmaster.pid");
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

  std::string password_, server_options_, dir_, bin_;
};

}  // namespace ledger_support
