// proxy_bench — what ledger-proxy costs a request, how much it serves, and what an open stream
// holds. Not a Google Benchmark: it runs the real binaries (openrouter-emulator, ledgerctl,
// ledger-proxy) on loopback and prints plain tables.
//
//   proxy_bench [--proxy PATH] [--ledgerctl PATH] [--emulator PATH] [--sections latency,throughput,memory]
//               [--runs 2] [--seconds 5] [--rates 1000,5000] [--threads 16] [--streams 100,500,1000]
//               [--max-clients 256]
//
// In a temp dir: the emulator (no artificial delays: ttft_ms 0, tokens_per_second 0; room for 4,096
// connections), an upstream key made with its management key, a config (one account with a
// $1,000,000 monthly limit, so no budget runs out; proxy.max_concurrent 1024, the default), `ledgerctl
// init`, a proxy key (`ledgerctl proxy-key create bench`) and ledger-proxy on port 0.
//
// 1. latency: open loop at each --rates for --seconds (after a 1 s warm-up run), on --threads client
//    threads with one keep-alive connection each; thread i of T sends its k-th request at
//    start + (i + k*T)/rate (its connection carries one request at a time: a request due while the
//    previous one is unanswered goes when that answer is in, and is counted late). Direct (the
//    emulator's /api/v1/chat/completions with the upstream key and the body the proxy would forward)
//    and proxied (the proxy, an lk- key, the client's body), non-streamed and `stream: true`
//    (time to the first byte of the stream's body, and to its end). Latency is taken from the
//    request's send (and, for the late ones, from its due time in a column of its own). Added =
//    proxied - direct, percentile by percentile; beside it, the proxy's own
//    ledger_proxy_added_latency_seconds histogram over the same run (difference of two /metrics
//    scrapes; quantiles interpolated inside its buckets, as Prometheus' histogram_quantile does).
// 2. throughput: closed loop, N clients (N = 1, 2, 4, ...) each sending its next request when the
//    last is answered, 0.5 s warm-up then --seconds; N doubles until requests/s has not grown 5 %
//    over the best for two steps (or --max-clients). Direct first (what the emulator alone serves on
//    this machine), then proxied; CPU per request of each process from /proc/PID/stat.
// 3. memory: a fresh proxy per K in --streams; after a warm-up, its VmRSS and Threads (/proc/PID/
//    status) idle; then K streams are opened at once (the emulator's ttft_ms set so that they stay
//    open) and, once every one has its first body byte, VmRSS and Threads again (and in_flight from
//    /metrics); per stream = (RSS_open - RSS_idle) / K. The streams are then read to their end.
//
// The client is a small raw HTTP/1.1 client (blocking sockets, TCP_NODELAY, one prebuilt request
// written with one send(), Content-Length and chunked bodies decoded in place), not libcurl: its
// cost per request is a send and a few recv()s, the same on both paths, and it sees the first body
// byte of a chunked stream exactly (libcurl's write callback would add its own buffering and
// per-transfer bookkeeping to the 2 cores the proxy and the emulator share).
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <arpa/inet.h>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ledger/ledger.hpp"
#include "bench_util.hpp"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::duration;
using std::chrono::nanoseconds;

#ifndef PROXY_PATH
#define PROXY_PATH ""
#endif
#ifndef LEDGERCTL_PATH
#define LEDGERCTL_PATH ""
#endif
#ifndef EMULATOR_PATH
#define EMULATOR_PATH ""
#endif

struct Args {
  std::string proxy = PROXY_PATH, ledgerctl = LEDGERCTL_PATH, emulator = EMULATOR_PATH;
  std::vector<std::string> sections{"latency", "throughput", "memory"};
  int runs = 2, seconds = 5, threads = 16, max_clients = 256;
  std::vector<int> rates{1000, 5000}, streams{100, 500, 1000};
};

double us(Clock::duration d) { return duration<double, std::micro>(d).count(); }

// ---------------------------------------------------------------------------------------------
// Processes and files

struct Env {
  std::string dir, ledger_dir, config, mgmt_key, upstream_key, proxy_key;
  pid_t emulator = -1, proxy = -1;
  uint16_t emulator_port = 0, proxy_port = 0;
  int proxy_starts = 0;
};
Env* g_env = nullptr;

void cleanup(Env* e, bool keep_dir) {
  if (e->proxy > 0 && ::kill(e->proxy, SIGKILL) == 0) ::waitpid(e->proxy, nullptr, 0);
  if (e->emulator > 0 && ::kill(e->emulator, SIGKILL) == 0) ::waitpid(e->emulator, nullptr, 0);
  e->proxy = e->emulator = -1;
  if (!e->ledger_dir.empty())
    if (const ledger::Status s = ledger::Ledger::destroy_segment(e->ledger_dir); !s.ok() && s.code() != ledger::Code::kNotFound)
      std::fprintf(stderr, "proxy_bench: destroy_segment(%s): %s\n", e->ledger_dir.c_str(), std::string(s.message()).c_str());
  std::error_code ec;
  if (!keep_dir) std::filesystem::remove_all(e->dir, ec);
}

[[noreturn]] void fail(const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "proxy_bench: %s\n", message.c_str());
  if (g_env != nullptr) {
    cleanup(g_env, true);
    std::fprintf(stderr, "proxy_bench: logs kept in %s\n", g_env->dir.c_str());
  }
  std::exit(1);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

using bench::spawn;

// Runs argv to its end; its exit code (-1: did not start or was killed), output in *out.
int run(const std::vector<std::string>& argv, const std::string& log_path, std::string* out) {
  std::remove(log_path.c_str());
  const pid_t pid = spawn(argv, log_path);
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return -1;
  *out = read_file(log_path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A port file's number once it is complete ("PORT\n"), 0 when the process died or 10 s passed.
uint16_t wait_for_port(const std::string& path, pid_t pid) {
  for (int i = 0; i < 1000; ++i) {
    const std::string port = read_file(path);
    if (!port.empty() && port.back() == '\n') return static_cast<uint16_t>(std::atoi(port.c_str()));
    if (::waitpid(pid, nullptr, WNOHANG) == pid) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return 0;
}

struct ProcStatus {
  long rss_kib = 0, hwm_kib = 0, threads = 0;
};

ProcStatus proc_status(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  ProcStatus s;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_kib = std::atol(line.c_str() + 6);
    if (line.rfind("VmHWM:", 0) == 0) s.hwm_kib = std::atol(line.c_str() + 6);
    if (line.rfind("Threads:", 0) == 0) s.threads = std::atol(line.c_str() + 8);
  }
  return s;
}

// utime + stime of a process, seconds.
double cpu_seconds(pid_t pid) {
  const std::string stat = read_file(pid > 0 ? "/proc/" + std::to_string(pid) + "/stat" : "/proc/self/stat");
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream in(stat.substr(paren + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && in >> field; ++i)
    if (i == 14 || i == 15) ticks += std::atof(field.c_str());
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// User and system time of every process on the machine, seconds (/proc/stat's cpu line; interrupt
// and softirq time, some of it our own loopback traffic, is left out).
double machine_busy_seconds() {
  std::istringstream in(read_file("/proc/stat"));
  std::string cpu;
  double user = 0, nice = 0, system = 0;
  in >> cpu >> user >> nice >> system;
  return (user + nice + system) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The far ends (ports) of the TCP connections to 127.0.0.1:port in /proc/net/tcp, open or in
// TIME_WAIT (a closed one stays there 60 s): a connection made between two readings is one more.
std::set<uint32_t> peers_of(uint16_t port) {
  std::ifstream in("/proc/net/tcp");
  std::set<uint32_t> peers;
  std::string line;
  std::getline(in, line);  // the header
  while (std::getline(in, line)) {
    unsigned local_port = 0, remote_port = 0, state = 0;
    char local[16], remote[16];
    if (std::sscanf(line.c_str(), " %*d: %8[0-9A-F]:%x %8[0-9A-F]:%x %x", local, &local_port, remote, &remote_port, &state) != 5) continue;
    if (state == 0x0A) continue;  // LISTEN
    if (local_port == port) peers.insert(remote_port);
    else if (remote_port == port) peers.insert(local_port);
  }
  return peers;
}

long new_peers(const std::set<uint32_t>& before, const std::set<uint32_t>& after) {
  long n = 0;
  for (const uint32_t p : after) n += before.count(p) == 0 ? 1 : 0;
  return n;
}

// Load average and CPU pressure (the share of time some runnable task waited for a CPU, last 10 s).
std::string loadavg() {
  std::string l = read_file("/proc/loadavg");
  const size_t third = l.find(' ', l.find(' ', l.find(' ') + 1) + 1);
  std::string pressure = read_file("/proc/pressure/cpu");
  const size_t at = pressure.find("avg10=");
  pressure = at == std::string::npos ? "" : ", cpu pressure " + pressure.substr(at + 6, pressure.find(' ', at) - at - 6) + " %";
  return l.substr(0, third) + pressure;
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client connection

struct Response {
  int status = 0;
  bool chunked = false, close = false, got_data = false;
  std::string body, error;  // body decoded (chunks joined)
  Clock::time_point first_data{}, done{};
};

class Conn {
 public:
  Conn() = default;
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  ~Conn() { close(); }

  bool open(uint16_t port, std::string* error) {
    close();
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      *error = std::string("connect: ") + std::strerror(errno);
      close();
      return false;
    }
    const int one = 1;
    (void)::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    in_.clear();
    pos_ = 0;
    return true;
  }
  bool is_open() const { return fd_ >= 0; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  bool send(const std::string& data, std::string* error) {
    for (size_t at = 0; at < data.size();) {
      const ssize_t n = ::send(fd_, data.data() + at, data.size() - at, MSG_NOSIGNAL);
      if (n <= 0) {
        *error = std::string("send: ") + std::strerror(errno);
        return false;
      }
      at += static_cast<size_t>(n);
    }
    return true;
  }
  // Reads a response from its start; with until_first_data, returns once its first body byte is
  // here (finish() reads the rest).
  bool read(Response* r, bool until_first_data = false) {
    *r = Response{};
    state_ = State::kHead;
    return advance(r, until_first_data);
  }
  bool finish(Response* r) { return advance(r, false); }

 private:
  enum class State { kHead, kSize, kData, kDataEnd, kTrailer, kBody, kDone };

  bool fill(Response* r) {
    if (pos_ > 0 && pos_ == in_.size()) in_.clear(), pos_ = 0;
    char buffer[65536];
    const ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
    if (n <= 0) {
      r->error = n == 0 ? "connection closed" : std::string("recv: ") + std::strerror(errno);
      return false;
    }
    in_.append(buffer, static_cast<size_t>(n));
    filled_ = Clock::now();
    return true;
  }
  size_t avail() const { return in_.size() - pos_; }
  void data_seen(Response* r) {
    if (!r->got_data) r->got_data = true, r->first_data = filled_;
  }

  enum class Step { kMore, kFailed, kReturn };
  Step more(Response* r) { return fill(r) ? Step::kMore : Step::kFailed; }

  bool advance(Response* r, bool until_first_data) {
    for (;;) {
      Step step = Step::kMore;
      switch (state_) {
        case State::kHead: step = parse_head(r); break;
        case State::kSize: step = parse_size(r); break;
        case State::kData:
        case State::kBody: step = take_data(r, until_first_data); break;
        case State::kDataEnd: step = avail() < 2 ? more(r) : (pos_ += 2, state_ = State::kSize, Step::kMore); break;
        case State::kTrailer: step = parse_trailer(r); break;
        case State::kDone:
          r->done = filled_;
          if (!r->got_data) r->first_data = filled_;
          in_.erase(0, pos_);
          pos_ = 0;
          return true;
      }
      if (step != Step::kMore) return step == Step::kReturn;
    }
  }

  Step parse_head(Response* r) {
    const size_t end = in_.find("\r\n\r\n", pos_);
    if (end == std::string::npos) return more(r);
    const std::string head = in_.substr(pos_, end - pos_);
    pos_ = end + 4;
    if (head.rfind("HTTP/1.", 0) != 0 || head.size() < 12) return r->error = "not an HTTP response", Step::kFailed;
    r->status = std::atoi(head.c_str() + 9);
    std::optional<size_t> length;
    for (size_t at = head.find("\r\n"); at != std::string::npos;) {
      const size_t next = head.find("\r\n", at + 2);
      std::string line = head.substr(at + 2, next == std::string::npos ? std::string::npos : next - at - 2);
      for (char& ch : line) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (line.rfind("content-length:", 0) == 0) length = static_cast<size_t>(std::atoll(line.c_str() + 15));
      if (line.rfind("transfer-encoding:", 0) == 0 && line.find("chunked") != std::string::npos) r->chunked = true;
      if (line.rfind("connection:", 0) == 0 && line.find("close") != std::string::npos) r->close = true;
      at = next;
    }
    if (r->chunked) state_ = State::kSize;
    else if (length && *length > 0) left_ = *length, state_ = State::kBody;
    else if (length) state_ = State::kDone;
    else return r->error = "a response without Content-Length or chunked", Step::kFailed;
    return Step::kMore;
  }

  Step parse_size(Response* r) {
    const size_t end = in_.find("\r\n", pos_);
    if (end == std::string::npos) return more(r);
    left_ = std::strtoul(in_.c_str() + pos_, nullptr, 16);
    pos_ = end + 2;
    state_ = left_ == 0 ? State::kTrailer : State::kData;
    return Step::kMore;
  }

  Step take_data(Response* r, bool until_first_data) {
    if (avail() == 0) return more(r);
    const bool first = !r->got_data;
    data_seen(r);
    const size_t take = std::min(left_, avail());
    r->body.append(in_, pos_, take);
    pos_ += take;
    left_ -= take;
    if (left_ == 0) state_ = state_ == State::kData ? State::kDataEnd : State::kDone;
    return first && until_first_data ? Step::kReturn : Step::kMore;
  }

  Step parse_trailer(Response* r) {
    const size_t end = in_.find("\r\n", pos_);
    if (end == std::string::npos) return more(r);
    state_ = end == pos_ ? State::kDone : State::kTrailer;
    pos_ = end + 2;
    return Step::kMore;
  }

  int fd_ = -1;
  std::string in_;
  size_t pos_ = 0, left_ = 0;
  State state_ = State::kDone;
  Clock::time_point filled_{};
};

std::string http_request(const std::string& method, const std::string& path, uint16_t port, const std::string& key,
                         const std::string& body) {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n";
  if (!key.empty()) r += "Authorization: Bearer " + key + "\r\n";
  if (method == "POST") r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  return r + "\r\n" + body;
}

// One request on a connection of its own.
Response http_once(uint16_t port, const std::string& method, const std::string& path, const std::string& key = "",
                   const std::string& body = "") {
  Conn c;
  Response r;
  if (!c.open(port, &r.error) || !c.send(http_request(method, path, port, key, body), &r.error)) return r;
  (void)c.read(&r);
  return r;
}

void emulator_settings(const Env& e, const std::string& json) {
  const Response r = http_once(e.emulator_port, "POST", "/__emulator/settings", "", json);
  if (r.status != 200) fail("POST /__emulator/settings " + json + ": " + std::to_string(r.status) + " " + r.error + r.body);
}

// ---------------------------------------------------------------------------------------------
// The proxy's /metrics

struct Scrape {
  std::map<double, uint64_t> added;  // cumulative count per upper bound (+Inf as infinity)
  uint64_t added_count = 0;
  double added_sum = 0;
  std::map<std::string, uint64_t> requests;  // "status code" -> count
  double in_flight = 0, holds_open = 0;
};

Scrape scrape(const Env& e) {
  const Response r = http_once(e.proxy_port, "GET", "/metrics");
  if (r.status != 200) fail("GET /metrics: " + std::to_string(r.status) + " " + r.error);
  Scrape s;
  std::istringstream in(r.body);
  const std::string bucket = "ledger_proxy_added_latency_seconds_bucket{le=\"";
  const std::string requests = "ledger_proxy_requests_total{status=\"";
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(bucket, 0) == 0) {
      const std::string le = line.substr(bucket.size(), line.find('"', bucket.size()) - bucket.size());
      const double bound = le == "+Inf" ? INFINITY : std::atof(le.c_str()) * 1e6;
      s.added[bound] = std::strtoull(line.c_str() + line.rfind(' ') + 1, nullptr, 10);
    } else if (line.rfind("ledger_proxy_added_latency_seconds_count ", 0) == 0) {
      s.added_count = std::strtoull(line.c_str() + line.rfind(' ') + 1, nullptr, 10);
    } else if (line.rfind("ledger_proxy_added_latency_seconds_sum ", 0) == 0) {
      s.added_sum = std::atof(line.c_str() + line.rfind(' ') + 1) * 1e6;
    } else if (line.rfind(requests, 0) == 0) {
      const size_t status_end = line.find('"', requests.size());
      const size_t code_at = line.find("code=\"", status_end) + 6;
      const std::string key = line.substr(requests.size(), status_end - requests.size()) + " " +
                              line.substr(code_at, line.find('"', code_at) - code_at);
      s.requests[key] = std::strtoull(line.c_str() + line.rfind(' ') + 1, nullptr, 10);
    } else if (line.rfind("ledger_proxy_in_flight ", 0) == 0) {
      s.in_flight = std::atof(line.c_str() + 23);
    } else if (line.rfind("ledger_proxy_holds_open ", 0) == 0) {
      s.holds_open = std::atof(line.c_str() + 24);
    }
  }
  return s;
}

// The proxy's added-latency histogram between two scrapes: count, mean and quantiles (µs),
// interpolated within a bucket; a quantile in the +Inf bucket is the last finite bound.
struct ProxyHistogram {
  uint64_t count = 0;
  double mean_us = 0, p50_us = 0, p99_us = 0;
};

ProxyHistogram histogram_between(const Scrape& a, const Scrape& b) {
  ProxyHistogram h;
  h.count = b.added_count - a.added_count;
  if (h.count == 0) return h;
  h.mean_us = (b.added_sum - a.added_sum) / static_cast<double>(h.count);
  const auto quantile = [&](double q) {
    const double rank = q * static_cast<double>(h.count);
    double lower = 0, below = 0;
    for (const auto& [bound, cumulative] : b.added) {
      const double in = static_cast<double>(cumulative - (a.added.count(bound) ? a.added.at(bound) : 0));
      if (in >= rank) {
        if (std::isinf(bound)) return lower;
        return lower + (bound - lower) * (in - below > 0 ? (rank - below) / (in - below) : 1.0);
      }
      lower = bound, below = in;
    }
    return lower;
  };
  h.p50_us = quantile(0.50);
  h.p99_us = quantile(0.99);
  return h;
}

// Adds what changed between two scrapes to *into (which then reads as a change from zero).
void accumulate(Scrape* into, const Scrape& a, const Scrape& b) {
  for (const auto& [bound, n] : b.added) into->added[bound] += n - (a.added.count(bound) ? a.added.at(bound) : 0);
  into->added_count += b.added_count - a.added_count;
  into->added_sum += b.added_sum - a.added_sum;
  for (const auto& [key, n] : b.requests) into->requests[key] += n - (a.requests.count(key) ? a.requests.at(key) : 0);
}

std::string requests_between(const Scrape& a, const Scrape& b) {
  std::string out;
  for (const auto& [key, n] : b.requests) {
    const uint64_t before = a.requests.count(key) ? a.requests.at(key) : 0;
    if (n == before || key.rfind("200 ", 0) == 0) continue;
    out += (out.empty() ? "" : ", ") + key + "=" + std::to_string(n - before);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Load: open and closed loops

double percentile(std::vector<double>& v, double q) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::min(v.size(), std::max<size_t>(rank, 1)) - 1];
}

struct Target {
  uint16_t port = 0;
  std::string request;  // the whole HTTP request, prebuilt
  bool stream = false;
};

struct Cell {
  size_t sent = 0, ok = 0, late = 0;
  std::map<std::string, size_t> errors;
  std::vector<double> first_us, end_us, sched_us;  // from send: first body byte, end; from the due time: the end/first
  double window_s = 0;
  double cpu_proxy = 0, cpu_emulator = 0, cpu_client = 0;  // seconds over the window
  double cpu_others = 0;                                  // other processes' user + system time
  long connects = 0;                                      // connections made to the emulator in the window
  std::string error_text() const {
    std::string out;
    for (const auto& [what, n] : errors) out += (out.empty() ? "" : "; ") + what + " x" + std::to_string(n);
    return out.empty() ? "-" : out;
  }
  size_t error_count() const {
    size_t n = 0;
    for (const auto& [what, k] : errors) n += k;
    return n;
  }
  void merge(Cell&& o) {
    sent += o.sent, ok += o.ok, late += o.late;
    window_s += o.window_s, cpu_proxy += o.cpu_proxy, cpu_emulator += o.cpu_emulator, cpu_client += o.cpu_client, connects += o.connects;
    cpu_others += o.cpu_others;
    for (const auto& [what, n] : o.errors) errors[what] += n;
    first_us.insert(first_us.end(), o.first_us.begin(), o.first_us.end());
    end_us.insert(end_us.end(), o.end_us.begin(), o.end_us.end());
    sched_us.insert(sched_us.end(), o.sched_us.begin(), o.sched_us.end());
  }
};

void sleep_until(Clock::time_point t) {
  const auto ns = std::chrono::duration_cast<nanoseconds>(t.time_since_epoch()).count();
  timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

// One request on c (reopened after an error); true when answered 200 with a whole body.
bool exchange(Conn& c, const Target& t, Cell& cell, Response* r, Clock::time_point* sent) {
  std::string error;
  if (!c.is_open() && !c.open(t.port, &error)) {
    ++cell.errors[error];
    return false;
  }
  *sent = Clock::now();
  ++cell.sent;
  if (!c.send(t.request, &error)) {
    ++cell.errors[error];
    c.close();
    return false;
  }
  if (!c.read(r)) {
    ++cell.errors[r->error.empty() ? "bad response" : r->error];
    c.close();
    return false;
  }
  if (r->close) c.close();
  if (r->status != 200) {
    const std::string code = r->body.find("\"code\":\"") != std::string::npos
                                 ? r->body.substr(r->body.find("\"code\":\"") + 8, r->body.find('"', r->body.find("\"code\":\"") + 8) -
                                                                                       r->body.find("\"code\":\"") - 8)
                                 : "";
    ++cell.errors["HTTP " + std::to_string(r->status) + (code.empty() ? "" : " " + code)];
    return false;
  }
  const bool whole = t.stream ? r->body.find("data: [DONE]") != std::string::npos : r->body.find("\"usage\"") != std::string::npos;
  if (!whole) ++cell.errors[t.stream ? "stream without [DONE]" : "reply without usage"];
  return whole;
}

struct Pids {
  pid_t proxy = -1, emulator = -1;
  uint16_t emulator_port = 0;
};

// Open loop: `threads` connections, requests due at `rate` per second in total for `seconds`.
Cell open_loop(const Target& t, int rate, int threads, double seconds, const Pids& pids) {
  std::vector<Cell> cells(static_cast<size_t>(threads));
  std::atomic<int> ready{0};
  std::vector<std::thread> workers;
  const auto start = Clock::now() + std::chrono::milliseconds(300);
  const auto end = start + std::chrono::duration_cast<Clock::duration>(duration<double>(seconds));
  for (int i = 0; i < threads; ++i)
    workers.emplace_back([&, i] {
      (void)::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
      Cell& cell = cells[static_cast<size_t>(i)];
      cell.first_us.reserve(static_cast<size_t>(seconds * rate / threads) + 16);
      cell.end_us.reserve(cell.first_us.capacity());
      cell.sched_us.reserve(cell.first_us.capacity());
      Conn c;
      std::string error;
      if (!c.open(t.port, &error)) ++cell.errors[error];
      ++ready;
      Response r;
      for (int64_t k = 0;; ++k) {
        const auto due = start + nanoseconds(static_cast<int64_t>(static_cast<double>(i + k * threads) * 1e9 / rate));
        if (due >= end) break;
        sleep_until(due);
        Clock::time_point sent;
        if (!exchange(c, t, cell, &r, &sent)) continue;
        ++cell.ok;
        if (sent - due > std::chrono::milliseconds(1)) ++cell.late;
        cell.first_us.push_back(us(r.first_data - sent));
        cell.end_us.push_back(us(r.done - sent));
        cell.sched_us.push_back(us((t.stream ? r.first_data : r.done) - due));
      }
    });
  sleep_until(start);
  const double p0 = cpu_seconds(pids.proxy), e0 = cpu_seconds(pids.emulator), c0 = cpu_seconds(0), m0 = machine_busy_seconds();
  const auto o0 = peers_of(pids.emulator_port);
  sleep_until(end);
  const double p1 = cpu_seconds(pids.proxy), e1 = cpu_seconds(pids.emulator), c1 = cpu_seconds(0), m1 = machine_busy_seconds();
  const auto o1 = peers_of(pids.emulator_port);
  for (auto& w : workers) w.join();
  Cell all;
  for (auto& c : cells) all.merge(std::move(c));
  all.window_s = seconds;
  all.cpu_proxy = pids.proxy > 0 ? p1 - p0 : 0, all.cpu_emulator = e1 - e0, all.cpu_client = c1 - c0;
  all.connects = new_peers(o0, o1);
  all.cpu_others = std::max(0.0, (m1 - m0) - all.cpu_proxy - all.cpu_emulator - all.cpu_client);
  return all;
}

// Closed loop: `clients` connections, each sending its next request when the last is answered.
Cell closed_loop(const Target& t, int clients, double warmup_s, double seconds, const Pids& pids) {
  std::vector<Cell> cells(static_cast<size_t>(clients));
  std::vector<std::thread> workers;
  const auto start = Clock::now() + std::chrono::milliseconds(200) + std::chrono::duration_cast<Clock::duration>(duration<double>(warmup_s));
  const auto end = start + std::chrono::duration_cast<Clock::duration>(duration<double>(seconds));
  for (int i = 0; i < clients; ++i)
    workers.emplace_back([&, i] {
      Cell& cell = cells[static_cast<size_t>(i)];
      Conn c;
      Response r;
      Cell warm;
      for (;;) {
        const auto now = Clock::now();
        if (now >= end) break;
        Cell& into = now >= start ? cell : warm;
        Clock::time_point sent;
        if (!exchange(c, t, into, &r, &sent)) continue;
        if (&into != &cell) continue;
        ++cell.ok;
        cell.first_us.push_back(us(r.first_data - sent));
        cell.end_us.push_back(us(r.done - sent));
      }
    });
  sleep_until(start);
  const double p0 = cpu_seconds(pids.proxy), e0 = cpu_seconds(pids.emulator), c0 = cpu_seconds(0), m0 = machine_busy_seconds();
  const auto o0 = peers_of(pids.emulator_port);
  sleep_until(end);
  const double p1 = cpu_seconds(pids.proxy), e1 = cpu_seconds(pids.emulator), c1 = cpu_seconds(0), m1 = machine_busy_seconds();
  const auto o1 = peers_of(pids.emulator_port);
  for (auto& w : workers) w.join();
  Cell all;
  for (auto& c : cells) all.merge(std::move(c));
  all.window_s = seconds;
  all.cpu_proxy = pids.proxy > 0 ? p1 - p0 : 0, all.cpu_emulator = e1 - e0, all.cpu_client = c1 - c0;
  all.connects = new_peers(o0, o1);
  all.cpu_others = std::max(0.0, (m1 - m0) - all.cpu_proxy - all.cpu_emulator - all.cpu_client);
  return all;
}

// ---------------------------------------------------------------------------------------------
// Setup

std::string json_string_after(const std::string& text, const std::string& name) {
  const std::string open = "\"" + name + "\":\"";
  const size_t at = text.find(open);
  if (at == std::string::npos) return "";
  return text.substr(at + open.size(), text.find('"', at + open.size()) - at - open.size());
}

void start_proxy(Env& e, const Args& a) {
  const std::string port_file = e.dir + "/proxy.port";
  std::remove(port_file.c_str());
  e.proxy = spawn({a.proxy, "--config", e.config, "--port-file", port_file}, e.dir + "/proxy.log");
  if (e.proxy < 0) fail("cannot start " + a.proxy);
  e.proxy_port = wait_for_port(port_file, e.proxy);
  if (e.proxy_port == 0) fail("ledger-proxy wrote no port file (see " + e.dir + "/proxy.log)");
  ++e.proxy_starts;
}

void stop_proxy(Env& e) {
  if (e.proxy <= 0) return;
  ::kill(e.proxy, SIGTERM);
  int status = 0;
  ::waitpid(e.proxy, &status, 0);
  e.proxy = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    std::printf("  ! ledger-proxy exited with status %d (see the log)\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

void prepare(Env& e, const Args& a) {
  e.emulator = spawn({a.emulator, "--management-key-file", e.dir + "/mgmt.key", "--port-file", e.dir + "/emulator.port",
                      "--max-connections", "4096"},
                     e.dir + "/emulator.log");
  if (e.emulator < 0) fail("cannot start " + a.emulator);
  e.emulator_port = wait_for_port(e.dir + "/emulator.port", e.emulator);
  if (e.emulator_port == 0) fail("the emulator wrote no port file (see " + e.dir + "/emulator.log)");
  std::ifstream(e.dir + "/mgmt.key") >> e.mgmt_key;
  const Response key = http_once(e.emulator_port, "POST", "/api/v1/keys", e.mgmt_key, R"({"name": "proxy-bench-upstream"})");
  e.upstream_key = json_string_after(key.body, "key");
  if (key.status != 201 || e.upstream_key.empty()) fail("cannot create the upstream key: " + std::to_string(key.status) + " " + key.body);
  std::ofstream(e.dir + "/upstream.key") << e.upstream_key << "\n";
  std::ofstream(e.config) << R"({"ledger": {"dir": "ledger", "max_accounts": 16, "max_reservations": 65536},)"
                          << R"( "openrouter": {"base_url": "http://127.0.0.1:)" << e.emulator_port << R"(/api/v1", "management_key_file": ")"
                          << e.dir << R"(/mgmt.key"},)"
                          << R"( "prices": {"openai/gpt-4o-mini": {"prompt_usd_per_mtok": "0.15", "completion_usd_per_mtok": "0.60"}},)"
                          << R"( "accounts": [{"id": "bench", "limit_usd": "1000000", "period": "monthly"}],)"
                          << R"( "proxy": {"listen": "127.0.0.1:0", "upstream_key_file": "upstream.key", "max_concurrent": 1024}})"
                          << "\n";
  std::string out;
  if (run({a.ledgerctl, "--config", e.config, "init"}, e.dir + "/init.log", &out) != 0) fail("ledgerctl init failed:\n" + out);
  // stdout has "bench: lk-..." (stderr, in the same file, says where its hash is kept)
  size_t at = std::string::npos;
  if (run({a.ledgerctl, "--config", e.config, "proxy-key", "create", "bench"}, e.dir + "/key.log", &out) != 0 ||
      (at = out.find("bench: lk-")) == std::string::npos)
    fail("ledgerctl proxy-key create failed:\n" + out);
  e.proxy_key = out.substr(at + 7, out.find_first_of(" \n", at + 7) - at - 7);
  emulator_settings(e, R"({"ttft_ms": 0, "tokens_per_second": 0})");
  start_proxy(e, a);
}

// The client's body, and what the proxy forwards for it (the direct path sends that).
std::string client_body(bool stream) {
  return std::string(R"({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hello there, how are you today?"}], )") +
         R"("max_tokens": 16)" + (stream ? R"(, "stream": true)" : "") + "}";
}
std::string forwarded_body(bool stream) {
  return std::string(R"({"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hello there, how are you today?"}],)") +
         R"("max_tokens":16)" + (stream ? R"(,"stream":true)" : "") + R"(,"usage":{"include":true})" +
         (stream ? R"(,"stream_options":{"include_usage":true})" : "") + R"(,"user":"bench"})";
}

Target direct_target(const Env& e, bool stream) {
  return {e.emulator_port, http_request("POST", "/api/v1/chat/completions", e.emulator_port, e.upstream_key, forwarded_body(stream)), stream};
}
Target proxied_target(const Env& e, bool stream) {
  return {e.proxy_port, http_request("POST", "/api/v1/chat/completions", e.proxy_port, e.proxy_key, client_body(stream)), stream};
}

// ---------------------------------------------------------------------------------------------
// 1. latency

struct LatencyRow {
  int run, rate;
  std::string mode;
  double direct_p50, direct_p99, proxied_p50, proxied_p99;
  ProxyHistogram hist;
};

// The share of the machine's cores that other processes used during the cell's windows.
double others_percent(const Cell& c) {
  return c.window_s > 0 ? 100.0 * c.cpu_others / (c.window_s * static_cast<double>(::sysconf(_SC_NPROCESSORS_ONLN))) : 0;
}

void print_cell_header() {
  std::printf("  %-3s %-5s %-10s %-7s %7s %7s %6s %8s %8s %8s %8s %9s %9s %6s %9s %9s %9s %6s %7s  %s\n", "run", "rate", "measure", "path",
              "sent", "ok", "err", "done/s", "p50_us", "p99_us", "p999_us", "max_us", "p99due_us", "late%", "cpu_prx", "cpu_emu",
              "cpu_cli", "oth%", "conns", "errors");
}

void print_cell(int run, int rate, const std::string& measure, const std::string& path, Cell& c, std::vector<double>& lat,
                double* p50, double* p99) {
  *p50 = percentile(lat, 0.50);
  *p99 = percentile(lat, 0.99);
  const double p999 = percentile(lat, 0.999), max = lat.empty() ? NAN : lat.back();
  const double due99 = percentile(c.sched_us, 0.99);
  const double n = static_cast<double>(std::max<size_t>(c.ok, 1));
  // CPU: microseconds of each process per answered request.
  std::printf("  %-3d %-5d %-10s %-7s %7zu %7zu %6zu %8.0f %8.1f %8.1f %8.1f %8.0f %9.1f %6.2f %9.1f %9.1f %9.1f %6.1f %7ld  %s\n", run,
              rate, measure.c_str(), path.c_str(), c.sent, c.ok, c.error_count(), static_cast<double>(c.ok) / c.window_s, *p50, *p99, p999, max,
              due99, 100.0 * static_cast<double>(c.late) / n, c.cpu_proxy * 1e6 / n, c.cpu_emulator * 1e6 / n, c.cpu_client * 1e6 / n,
              others_percent(c), c.connects, c.error_text().c_str());
}

void latency(Env& e, const Args& a) {
  std::printf("\n== 1. added latency: open loop, %d client threads (one keep-alive connection each); per cell %d slices of 1 s per\n"
              "   path, direct and proxied in turn (after 1 s of each as a warm-up), so that other load on the machine weighs on both\n",
              a.threads, a.seconds);
  std::printf("   latency from the request's send: plain = to the end of the reply; stream-ttfb = to the first byte of the stream's body;\n"
              "   stream-end = to its last chunk. p99due = p99 from the request's due time (includes waiting for the connection).\n"
              "   late%% = requests sent > 1 ms after their due time. cpu_* = CPU microseconds per request of the proxy, the emulator and\n"
              "   this client. oth%% = the share of the machine's cores that other processes used (user + system time) during the\n"
              "   windows. conns = connections made to the emulator during the window (the client's are made before it).\n");
  print_cell_header();
  std::vector<LatencyRow> rows;
  const Pids direct_pids{-1, e.emulator, e.emulator_port};
  for (int run = 1; run <= a.runs; ++run)
    for (const int rate : a.rates)
      for (const bool stream : {false, true}) {
        // Slices of 1 s, direct and proxied in turn, so that the other work on the machine weighs on both alike.
        const Pids proxied_pids{e.proxy, e.emulator, e.emulator_port};
        (void)open_loop(direct_target(e, stream), rate, a.threads, 1.0, direct_pids);
        (void)open_loop(proxied_target(e, stream), rate, a.threads, 1.0, proxied_pids);
        Cell direct, proxied;
        Scrape delta;
        for (int slice = 0; slice < a.seconds; ++slice) {
          direct.merge(open_loop(direct_target(e, stream), rate, a.threads, 1.0, direct_pids));
          const Scrape before = scrape(e);
          proxied.merge(open_loop(proxied_target(e, stream), rate, a.threads, 1.0, proxied_pids));
          accumulate(&delta, before, scrape(e));
        }
        const ProxyHistogram hist = histogram_between(Scrape{}, delta);
        LatencyRow row{run, rate, stream ? "stream-ttfb" : "plain", 0, 0, 0, 0, hist};
        print_cell(run, rate, row.mode, "direct", direct, stream ? direct.first_us : direct.end_us, &row.direct_p50, &row.direct_p99);
        print_cell(run, rate, row.mode, "proxied", proxied, stream ? proxied.first_us : proxied.end_us, &row.proxied_p50, &row.proxied_p99);
        rows.push_back(row);
        if (stream) {
          LatencyRow end{run, rate, "stream-end", 0, 0, 0, 0, ProxyHistogram{}};
          end.hist.count = 0;
          print_cell(run, rate, end.mode, "direct", direct, direct.end_us, &end.direct_p50, &end.direct_p99);
          print_cell(run, rate, end.mode, "proxied", proxied, proxied.end_us, &end.proxied_p50, &end.proxied_p99);
          rows.push_back(end);
        }
        if (const std::string other = requests_between(Scrape{}, delta); !other.empty())
          std::printf("      proxy /metrics, answers other than 200 in this cell: %s\n", other.c_str());
        std::fflush(stdout);
      }
  std::printf("\n   added = proxied - direct (difference of the two distributions' percentiles, microseconds); proxy_hist = the proxy's\n"
              "   ledger_proxy_added_latency_seconds over the same proxied cell (buckets 25/50/100/250/500/1000 us, interpolated).\n"
              "   Targets: added p50 <= 100 us, p99 <= 500 us.\n");
  std::printf("  %-3s %-5s %-11s %10s %10s %10s %10s %10s %10s  %8s %9s %9s %9s  %s\n", "run", "rate", "measure", "direct_p50", "direct_p99",
              "proxy_p50", "proxy_p99", "added_p50", "added_p99", "hist_n", "hist_mean", "hist_p50", "hist_p99", "targets (p50, p99)");
  for (const auto& r : rows) {
    const double added50 = r.proxied_p50 - r.direct_p50, added99 = r.proxied_p99 - r.direct_p99;
    std::printf("  %-3d %-5d %-11s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f  ", r.run, r.rate, r.mode.c_str(), r.direct_p50, r.direct_p99,
                r.proxied_p50, r.proxied_p99, added50, added99);
    if (r.hist.count > 0) std::printf("%8llu %9.1f %9.1f %9.1f  ", static_cast<unsigned long long>(r.hist.count), r.hist.mean_us, r.hist.p50_us, r.hist.p99_us);
    else std::printf("%8s %9s %9s %9s  ", "-", "-", "-", "-");
    std::printf("%s, %s\n", added50 <= 100 ? "met" : "MISSED", added99 <= 500 ? "met" : "MISSED");
  }
  std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------------
// 2. throughput

void throughput(Env& e, const Args& a) {
  std::printf("\n== 2. throughput: closed loop, N clients (one keep-alive connection each, the next request when the last is answered),\n"
              "   non-streamed, 0.5 s warm-up then %d s per step; N doubles until requests/s has not grown 5 %% over the best for two steps.\n"
              "   latency from send to the end of the reply; cpu_* = CPU microseconds per request; oth%% = the share of the cores\n"
              "   that other processes used; conns = connections made to the emulator during the window.\n",
              a.seconds);
  std::printf("  %-3s %-7s %5s %8s %8s %8s %8s %8s %9s %9s %9s %6s %7s  %s\n", "run", "path", "N", "req/s", "p50_us", "p99_us", "max_us", "err",
              "cpu_prx", "cpu_emu", "cpu_cli", "oth%", "conns", "errors");
  for (int run = 1; run <= a.runs; ++run)
    for (const bool proxied : {false, true}) {
      const Target t = proxied ? proxied_target(e, false) : direct_target(e, false);
      const Pids pids{proxied ? e.proxy : -1, e.emulator, e.emulator_port};
      double best = 0;
      int best_n = 0, flat = 0;
      Cell best_cell;
      for (int n = 1; n <= a.max_clients && flat < 2; n *= 2) {
        const Scrape before = proxied ? scrape(e) : Scrape{};
        Cell c = closed_loop(t, n, 0.5, a.seconds, pids);
        const double rps = static_cast<double>(c.ok) / c.window_s;
        const double p50 = percentile(c.end_us, 0.5), p99 = percentile(c.end_us, 0.99), max = c.end_us.empty() ? NAN : c.end_us.back();
        const double k = static_cast<double>(std::max<size_t>(c.ok, 1));
        std::printf("  %-3d %-7s %5d %8.0f %8.1f %8.1f %8.0f %8zu %9.1f %9.1f %9.1f %6.1f %7ld  %s\n", run, proxied ? "proxied" : "direct", n,
                    rps, p50, p99, max, c.error_count(), c.cpu_proxy * 1e6 / k, c.cpu_emulator * 1e6 / k, c.cpu_client * 1e6 / k,
                    others_percent(c), c.connects, c.error_text().c_str());
        if (proxied)
          if (const std::string other = requests_between(before, scrape(e)); !other.empty())
            std::printf("      proxy /metrics, answers other than 200 in this step: %s\n", other.c_str());
        std::fflush(stdout);
        if (rps > best * 1.05) best = rps, best_n = n, flat = 0;
        else ++flat;
      }
      std::printf("  %-3d %-7s peak: %.0f requests/s at N=%d\n", run, proxied ? "proxied" : "direct", best, best_n);
    }
  std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------------
// 3. memory per open stream

ProcStatus settle_status(pid_t pid) {  // the median of 5 readings 200 ms apart
  std::vector<ProcStatus> s;
  for (int i = 0; i < 5; ++i) s.push_back(proc_status(pid)), std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::sort(s.begin(), s.end(), [](const ProcStatus& x, const ProcStatus& y) { return x.rss_kib < y.rss_kib; });
  return s[2];
}

// 200 plain and 20 streamed requests on one connection, so that the idle reading is of a warm proxy.
void warm_up(const Env& e) {
  Conn c;
  std::string error;
  if (!c.open(e.proxy_port, &error)) fail("memory: " + error);
  const Target plain = proxied_target(e, false), streamed = proxied_target(e, true);
  Cell warm;
  Response r;
  Clock::time_point sent;
  for (int i = 0; i < 200; ++i) (void)exchange(c, plain, warm, &r, &sent);
  for (int i = 0; i < 20; ++i) (void)exchange(c, streamed, warm, &r, &sent);
  if (warm.error_count() > 0) std::printf("  ! warm-up errors: %s\n", warm.error_text().c_str());
}

// K streams held open at once: opened, each read to its first body byte (the count of those), then finish_streams().
struct OpenStreams {
  std::vector<std::unique_ptr<Conn>> conns;
  std::vector<Response> responses;
  std::map<std::string, size_t> errors;
  size_t open = 0;
};
void open_streams(const Env& e, int k, OpenStreams& s) {
  const Target t = proxied_target(e, true);
  s.responses.resize(static_cast<size_t>(k));
  for (int i = 0; i < k; ++i) {
    s.conns.push_back(std::make_unique<Conn>());
    std::string error;
    if (!s.conns.back()->open(e.proxy_port, &error) || !s.conns.back()->send(t.request, &error)) ++s.errors[error], s.conns.back()->close();
  }
  for (size_t i = 0; i < s.conns.size(); ++i) {
    Conn& c = *s.conns[i];
    Response& r = s.responses[i];
    if (!c.is_open()) continue;
    if (!c.read(&r, true)) ++s.errors[r.error], c.close();
    else if (r.status != 200) ++s.errors["HTTP " + std::to_string(r.status)], c.close();
    else ++s.open;
  }
}
size_t finish_streams(OpenStreams& s) {  // how many ended with [DONE]
  size_t ok = 0;
  for (size_t i = 0; i < s.conns.size(); ++i) {
    Conn& c = *s.conns[i];
    Response& r = s.responses[i];
    if (!c.is_open()) continue;
    if (!c.finish(&r)) ++s.errors["stream cut: " + r.error];
    else if (r.body.find("data: [DONE]") == std::string::npos) ++s.errors["stream without [DONE]"];
    else ++ok;
  }
  s.conns.clear();
  return ok;
}

void memory_cell(Env& e, const Args& a, int run, int k) {
  stop_proxy(e);
  start_proxy(e, a);
  warm_up(e);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const ProcStatus idle = settle_status(e.proxy);
  const int hold_ms = 8000 + 8 * k;
  emulator_settings(e, R"({"ttft_ms": )" + std::to_string(hold_ms) + R"(, "tokens_per_second": 0})");
  OpenStreams s;
  const auto opened = Clock::now();
  open_streams(e, k, s);
  const double open_s = duration<double>(Clock::now() - opened).count();
  const ProcStatus open = settle_status(e.proxy);
  const ProcStatus emu = proc_status(e.emulator);
  const Scrape during = scrape(e);
  const bool in_time = duration<double>(Clock::now() - opened).count() * 1000 < hold_ms;
  const size_t ok = finish_streams(s);
  emulator_settings(e, R"({"ttft_ms": 0, "tokens_per_second": 0})");
  for (int i = 0; i < 300 && scrape(e).in_flight > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const ProcStatus after = settle_status(e.proxy);
  std::string error_text;
  for (const auto& [what, n] : s.errors) error_text += (error_text.empty() ? "" : "; ") + what + " x" + std::to_string(n);
  if (!in_time) error_text += (error_text.empty() ? "" : "; ") + std::string("the readings came after ttft_ms: streams may have ended");
  if (s.open != static_cast<size_t>(k)) error_text += (error_text.empty() ? "" : "; ") + std::to_string(s.open) + " open of " + std::to_string(k);
  std::printf("  %-3d %5d %8.2f %6.1fMiB %6.1fMiB %6.1fMiB %7.1fKiB %8ld %8ld %8.0f %9.0f %6.1fMiB %10ld %9zu %7.1fMiB  %s\n", run, k,
              open_s, static_cast<double>(idle.rss_kib) / 1024, static_cast<double>(open.rss_kib) / 1024,
              static_cast<double>(after.rss_kib) / 1024, static_cast<double>(open.rss_kib - idle.rss_kib) / k, idle.threads,
              open.threads, during.in_flight, during.holds_open, static_cast<double>(emu.rss_kib) / 1024, emu.threads, ok,
              static_cast<double>(after.hwm_kib) / 1024, error_text.empty() ? "-" : error_text.c_str());
  std::fflush(stdout);
}

void memory(Env& e, const Args& a) {
  std::printf("\n== 3. memory per open stream: a fresh ledger-proxy per K (proxy.max_concurrent 1024); warm-up 200 plain + 20 streamed\n"
              "   requests; idle = median of 5 readings of /proc/PID/status; then K streams opened at once, held open by the emulator's\n"
              "   ttft_ms; open = readings once every stream has its first body byte (the emulator's ': OPENROUTER PROCESSING' comment,\n"
              "   relayed). per_stream = (RSS_open - RSS_idle) / K. after = once every stream has ended and in_flight is 0.\n");
  std::printf("  %-3s %5s %8s %9s %9s %9s %10s %8s %8s %8s %9s %9s %10s %9s %10s  %s\n", "run", "K", "open_s", "rss_idle", "rss_open", "rss_after",
              "per_stream", "thr_idle", "thr_open", "in_flight", "holds", "emu_rss", "emu_thr", "ok", "hwm", "errors");
  for (int run = 1; run <= a.runs; ++run)
    for (const int k : a.streams) memory_cell(e, a, run, k);
}

std::vector<int> parse_ints(const std::string& s) {
  std::vector<int> out;
  std::istringstream in(s);
  for (std::string part; std::getline(in, part, ',');) out.push_back(std::atoi(part.c_str()));
  return out;
}

std::optional<Args> parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return std::nullopt;
    const std::string value = argv[++i];
    if (arg == "--proxy") a.proxy = value;
    else if (arg == "--ledgerctl") a.ledgerctl = value;
    else if (arg == "--emulator") a.emulator = value;
    else if (arg == "--runs") a.runs = std::atoi(value.c_str());
    else if (arg == "--seconds") a.seconds = std::atoi(value.c_str());
    else if (arg == "--threads") a.threads = std::atoi(value.c_str());
    else if (arg == "--max-clients") a.max_clients = std::atoi(value.c_str());
    else if (arg == "--rates") a.rates = parse_ints(value);
    else if (arg == "--streams") a.streams = parse_ints(value);
    else if (arg == "--sections") {
      a.sections.clear();
      std::istringstream in(value);
      for (std::string part; std::getline(in, part, ',');) a.sections.push_back(part);
    } else return std::nullopt;
  }
  if (a.proxy.empty() || a.ledgerctl.empty() || a.emulator.empty() || a.runs < 1 || a.seconds < 1 || a.threads < 1 || a.max_clients < 1)
    return std::nullopt;
  for (const auto& s : a.sections)
    if (s != "latency" && s != "throughput" && s != "memory") return std::nullopt;
  for (const int r : a.rates)
    if (r < 1) return std::nullopt;
  for (const int k : a.streams)
    if (k < 1 || k > 1024) return std::nullopt;
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = parse_args(argc, argv);
  if (!args) {
    std::fprintf(stderr,
                 "usage: proxy_bench [--proxy PATH] [--ledgerctl PATH] [--emulator PATH] [--sections latency,throughput,memory]\n"
                 "                   [--runs 2] [--seconds 5] [--rates 1000,5000] [--threads 16] [--streams 100,500,1000 (each <= 1024)]\n"
                 "                   [--max-clients 256]\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;  // K streams: K sockets here, 2K in the proxy, K in the emulator (inherited)
    (void)::setrlimit(RLIMIT_NOFILE, &files);
  }
  char tmpl[] = "/tmp/proxy_bench.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) fail("mkdtemp failed");
  Env e;
  e.dir = tmpl;
  e.ledger_dir = e.dir + "/ledger";
  e.config = e.dir + "/ledger.json";
  g_env = &e;
  const auto t0 = Clock::now();
  std::printf("proxy_bench: %s, %ld cores, load average %s, RLIMIT_NOFILE %llu\n", read_file("/proc/sys/kernel/osrelease").substr(0, read_file("/proc/sys/kernel/osrelease").find('\n')).c_str(),
              ::sysconf(_SC_NPROCESSORS_ONLN), loadavg().c_str(), static_cast<unsigned long long>(files.rlim_cur));
  prepare(e, *args);
  std::printf("emulator on 127.0.0.1:%u (ttft_ms 0, tokens_per_second 0), ledger-proxy on 127.0.0.1:%u; account bench, $1,000,000 monthly\n",
              e.emulator_port, e.proxy_port);
  std::fflush(stdout);
  for (const auto& s : args->sections) {
    if (s == "latency") latency(e, *args);
    if (s == "throughput") throughput(e, *args);
    if (s == "memory") memory(e, *args);
    std::printf("   (load average now %s)\n", loadavg().c_str());
  }
  stop_proxy(e);
  const std::string log = read_file(e.dir + "/proxy.log");
  size_t warns = 0;
  for (const char* level : {"level=warn", "level=error"})
    for (size_t at = log.find(level); at != std::string::npos; at = log.find(level, at + 1)) ++warns;
  std::printf("\nproxy log (%d starts): %zu lines at level=warn or error (5xx answers, drain notes); %.0f s in all\n", e.proxy_starts,
              warns, duration<double>(Clock::now() - t0).count());
  cleanup(&e, false);
  return 0;
}
