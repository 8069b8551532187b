// openrouter-emulator — a real HTTP server on loopback that behaves like the parts of OpenRouter's
// API that the ledger uses (see emulator.hpp). For tests, the demo and rehearsing a budget setup.
//
//   openrouter-emulator --management-key-file FILE [--listen 127.0.0.1:0] [--port-file FILE]
//                       [--max-connections N]
//
// The management key is read from FILE (0600), or generated into it when FILE does not exist; it
// is never printed. The base URL to configure is printed on stdout: http://127.0.0.1:PORT/api/v1
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <mutex>
#include <set>
#include <thread>

#include "emulator.hpp"

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

// Connections served at once (a thread each); more are closed at once. --max-connections changes it;
// the default takes the proxy tests' 1,000 concurrent streams (one upstream connection each).
int g_connections_max = 2048;
constexpr uint64_t kBodyBytesMax = 1 << 20;
std::atomic<int> g_connections{0};
// Open sessions' sockets, so that a shutdown can wake their blocking reads before `emu` and the
// io_context go away (session threads are detached).
std::mutex g_sessions_mutex;
std::set<int> g_session_fds;

// A streamed response: the header, then each event as its own HTTP chunk once its delay has
// passed (sent as produced, no buffering), then the last chunk. A truncated stream ends without
// the last chunk and closes the connection. Returns whether the connection may be reused.
bool send_stream(tcp::socket& socket, const http::request<http::string_body>& req, const emulator::Response& r) {
  http::response<http::empty_body> res{static_cast<http::status>(r.status), req.version()};
  res.set(http::field::server, "openrouter-emulator");
  res.set(http::field::content_type, "text/event-stream");
  for (const auto& [name, value] : r.headers) res.set(name, value);
  res.keep_alive(req.keep_alive() && !r.truncate);
  res.chunked(true);
  http::response_serializer<http::empty_body> serializer{res};
  beast::error_code ec;
  http::write_header(socket, serializer, ec);
  if (ec) return false;
  for (const auto& event : r.events) {
    if (event.delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(event.delay_us));
    net::write(socket, http::make_chunk(net::buffer(event.data)), ec);
    if (ec) return false;  // the client hung up: the generation is billed all the same
  }
  if (r.truncate) return false;
  net::write(socket, http::make_chunk_last(), ec);
  return !ec && res.keep_alive();
}

void session(tcp::socket socket, emulator::Emulator& emu) {
  {
    std::lock_guard<std::mutex> lock(g_sessions_mutex);
    g_session_fds.insert(socket.native_handle());
  }
  beast::flat_buffer buffer;
  beast::error_code ec;
  // Small writes go out at once (a stream's events, one chunk each), and the client's request is
  // acknowledged at once: a client that writes its headers and its body separately (httpx does)
  // would otherwise wait out the 40 ms delayed ACK on every POST, its body held back by Nagle.
  socket.set_option(tcp::no_delay(true), ec);
  const int one = 1;
  for (;;) {
    ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);  // not sticky: each time
    http::request_parser<http::string_body> parser;
    parser.body_limit(kBodyBytesMax);
    http::read(socket, buffer, parser, ec);
    if (ec) break;
    const auto& req = parser.get();
    emulator::Request request;
    request.method = std::string(req.method_string());
    request.target = std::string(req.target());
    request.authorization = std::string(req[http::field::authorization]);
    request.body = req.body();
    request.http_referer = std::string(req["HTTP-Referer"]);
    const emulator::Response r = emu.handle(request);
    if (r.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(r.delay_ms));
    if (r.stream) {
      if (!send_stream(socket, req, r)) break;
      continue;
    }
    if (r.truncate) {
      // Promise the whole body (with the response's headers, X-Generation-Id among them), send half, hang up.
      std::string raw = "HTTP/1.1 " + std::to_string(r.status) + " X\r\nContent-Type: application/json\r\n";
      for (const auto& [name, value] : r.headers) raw += name + ": " + value + "\r\n";
      raw += "Content-Length: " + std::to_string(r.body.size()) + "\r\nConnection: close\r\n\r\n" + r.body.substr(0, r.body.size() / 2);
      net::write(socket, net::buffer(raw), ec);
      break;
    }
    http::response<http::string_body> res{static_cast<http::status>(r.status), req.version()};
    res.set(http::field::server, "openrouter-emulator");
    res.set(http::field::content_type, "application/json");
    for (const auto& [name, value] : r.headers) res.set(name, value);
    res.keep_alive(req.keep_alive());
    res.body() = r.body;
    res.prepare_payload();
    http::write(socket, res, ec);
    if (ec || !res.keep_alive()) break;
  }
  socket.shutdown(tcp::socket::shutdown_send, ec);
  {
    std::lock_guard<std::mutex> lock(g_sessions_mutex);
    g_session_fds.erase(socket.native_handle());
  }
  socket.close(ec);
  g_connections.fetch_sub(1);  // last: after this the thread touches nothing shared
}

// Wakes every session (their reads fail) and waits for them to end; a session stuck in an injected
// delay for longer than the grace gets the process ended under it, without running destructors.
void stop_sessions() {
  {
    std::lock_guard<std::mutex> lock(g_sessions_mutex);
    for (int fd : g_session_fds) ::shutdown(fd, SHUT_RDWR);
  }
  for (int i = 0; i < 200 && g_connections.load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (g_connections.load() > 0) std::_Exit(0);
}

std::string load_or_create_key(const std::string& path, std::string* error) {
  std::ifstream in(path);
  std::string key;
  if (in >> key) {
    if (key.rfind("sk-or-v1-", 0) != 0) *error = path + ": not an OpenRouter key (sk-or-v1-...)";
    return key;
  }
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd());
  key = "sk-or-v1-";
  for (int i = 0; i < 64; ++i) key.push_back("0123456789abcdef"[rng() % 16]);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0 || ::write(fd, (key + "\n").data(), key.size() + 1) != static_cast<ssize_t>(key.size() + 1)) {
    *error = path + ": cannot create the management key file";
  }
  if (fd >= 0) ::close(fd);
  return key;
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0", port_file, key_file;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--listen" && i + 1 < argc) listen = argv[++i];
    else if (arg == "--port-file" && i + 1 < argc) port_file = argv[++i];
    else if (arg == "--management-key-file" && i + 1 < argc) key_file = argv[++i];
    else if (arg == "--max-connections" && i + 1 < argc && std::atoi(argv[i + 1]) > 0) g_connections_max = std::atoi(argv[++i]);
    else {
      std::fprintf(arg == "--help" ? stdout : stderr,
                   "usage: openrouter-emulator --management-key-file FILE [--listen 127.0.0.1:0] [--port-file FILE]\n"
                   "                           [--max-connections N (2048)]\n"
                   "Serves an emulation of OpenRouter's API on loopback; faults via POST /__emulator/faults.\n");
      return arg == "--help" ? 0 : 1;
    }
  }
  if (key_file.empty()) {
    std::fprintf(stderr, "openrouter-emulator: --management-key-file FILE is required (created 0600 if missing)\n");
    return 1;
  }
  std::string error;
  const std::string key = load_or_create_key(key_file, &error);
  if (!error.empty()) {
    std::fprintf(stderr, "openrouter-emulator: %s\n", error.c_str());
    return 1;
  }
  const auto colon = listen.rfind(':');
  beast::error_code ec;
  const auto address = net::ip::make_address(listen.substr(0, colon), ec);
  if (ec || colon == std::string::npos || !address.is_loopback()) {
    std::fprintf(stderr, "openrouter-emulator: --listen must be a loopback HOST:PORT, got \"%s\"\n", listen.c_str());
    return 1;
  }
  const auto port = static_cast<unsigned short>(std::stoi(listen.substr(colon + 1)));
  emulator::Emulator emu(key);
  net::io_context io;
  tcp::acceptor acceptor(io);
  acceptor.open(address.is_v6() ? tcp::v6() : tcp::v4());
  acceptor.set_option(net::socket_base::reuse_address(true));
  acceptor.bind({address, port}, ec);
  if (ec) {
    std::fprintf(stderr, "openrouter-emulator: cannot listen on %s: %s\n", listen.c_str(), ec.message().c_str());
    return 2;
  }
  acceptor.listen();
  const unsigned short bound = acceptor.local_endpoint().port();
  if (!port_file.empty()) std::ofstream(port_file) << bound << "\n";
  std::printf("openrouter-emulator listening on http://%s:%u/api/v1\n", address.to_string().c_str(), bound);
  std::fflush(stdout);

  net::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const beast::error_code&, int) { acceptor.close(); io.stop(); });
  std::function<void()> accept = [&] {
    acceptor.async_accept([&](beast::error_code aec, tcp::socket socket) {
      if (aec) return;
      if (g_connections.fetch_add(1) >= g_connections_max) {
        g_connections.fetch_sub(1);  // over the limit: refuse this one
      } else {
        std::thread(session, std::move(socket), std::ref(emu)).detach();
      }
      accept();
    });
  };
  accept();
  io.run();
  stop_sessions();
  return 0;
}
