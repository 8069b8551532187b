// ledger-proxy — an OpenAI-compatible endpoint on this host that budgets every request in the
// shared-memory ledger (DESIGN 12): workers in any language change only base_url and api_key.
// Its own process, so a proxy crash never stops the sidecar's flush and reclaim, nor the other
// way round. See proxy.hpp for what a request goes through, server.hpp for the limits.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include "core/admin.hpp"
#include "core/config.hpp"
#include "loops.hpp"
#include "server.hpp"

using namespace ledger;
using namespace ledger::admin;

namespace {

constexpr const char* kUsage = R"(usage: ledger-proxy --config FILE [--port-file FILE]

An OpenAI-compatible endpoint (proxy.listen, 127.0.0.1:8788 by default) for the accounts of the
config's ledger: POST /api/v1/chat/completions (also /v1/...), GET /api/v1/models, GET /healthz,
GET /metrics. Clients send "Authorization: Bearer lk-..." (ledgerctl proxy-key create ACCOUNT);
the proxy holds the OpenRouter key ($OPENROUTER_API_KEY, or proxy.upstream_key_env/_file).
SIGTERM drains the requests in flight (proxy.drain_timeout_ms) and exits; SIGHUP reloads the
config and the upstream key. --port-file writes the port it listens on (for proxy.listen
with port 0).
Exit codes: 0 success, 1 usage or config error, 2 runtime error.
)";

std::atomic<bool> g_stop{false};
std::atomic<bool> g_reload{false};

// The upstream key from the configured file or variable; "" with *error naming where it looked.
std::string upstream_key(const Config& config, std::string* error) {
  return read_secret(config.proxy.upstream_key_file, config.proxy.upstream_key_env,
                     config.proxy.upstream_key_file.empty() ? "OpenRouter key" : "upstream key", error);
}

bool load(const std::string& path, std::shared_ptr<const Config>* config, std::string* key, std::string* error) {
  auto c = load_config(path, error);
  if (!c) return false;
  if (!c->proxy.present) {
    *error = path + ": no \"proxy\" section (see the README: ledger-proxy)";
    return false;
  }
  *key = upstream_key(*c, error);
  if (key->empty()) return false;
  *config = std::make_shared<const Config>(std::move(*c));
  return true;
}

void install_signals() {
  struct sigaction stop {}, reload {}, ignore {};
  stop.sa_handler = [](int) { g_stop.store(true); };
  reload.sa_handler = [](int) { g_reload.store(true); };
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGTERM, &stop, nullptr);
  ::sigaction(SIGINT, &stop, nullptr);
  ::sigaction(SIGHUP, &reload, nullptr);
  ::sigaction(SIGPIPE, &ignore, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  std::string path, port_file;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) path = argv[++i];
    else if (arg.rfind("--config=", 0) == 0) path = arg.substr(9);
    else if (arg == "--port-file" && i + 1 < argc) port_file = argv[++i];
    else if (arg == "--help" || arg == "-h") return std::fputs(kUsage, stdout), kExitOk;
    else return std::fprintf(stderr, "ledger-proxy: unknown argument \"%s\"\n%s", arg.c_str(), kUsage), kExitUsage;
  }
  if (path.empty()) return std::fprintf(stderr, "ledger-proxy: --config FILE is required\n%s", kUsage), kExitUsage;
  std::shared_ptr<const Config> config;
  std::string key, error;
  if (!load(path, &config, &key, &error)) return std::fprintf(stderr, "ledger-proxy: %s\n", error.c_str()), kExitUsage;
  std::unique_ptr<Ledger> ledger;
  if (!open_existing_ledger(*config, &ledger, &error).ok()) return std::fprintf(stderr, "ledger-proxy: %s\n", error.c_str()), kExitRuntime;
  install_signals();
  proxy::Proxy handler(config, *ledger, key);
  if (error = handler.upstream_error(); !error.empty()) return std::fprintf(stderr, "ledger-proxy: %s\n", error.c_str()), kExitUsage;
  if (!handler.open_inflight(&error)) return std::fprintf(stderr, "ledger-proxy: %s\n", error.c_str()), kExitRuntime;
  proxy::Loops loops(proxy::Loops::default_count());
  proxy::Server server(handler, config->proxy, loops);
  if (!server.open(config->proxy.listen, &error)) return std::fprintf(stderr, "ledger-proxy: %s\n", error.c_str()), kExitRuntime;
  loops.start();
  server.start();
  // What a proxy killed before left in flight (generation lookups take seconds; the loop goes on meanwhile).
  boost::asio::co_spawn(loops.at(0), handler.settle_left_over(), boost::asio::detached);
  if (!port_file.empty()) std::ofstream(port_file) << server.port() << "\n";  // for tests and scripts that chose port 0
  log_line("info", "listening", "listen=" + config->proxy.listen.substr(0, config->proxy.listen.rfind(':')) + ":" +
                                    std::to_string(server.port()) + " dir=" + config->ledger.dir + " loops=" + std::to_string(loops.size()));
  while (!g_stop.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!g_reload.exchange(false)) continue;
    std::shared_ptr<const Config> next;
    std::string next_key, why;
    if (load(path, &next, &next_key, &why)) handler.update(next, next_key), log_line("info", "config reloaded");
    else log_line("error", "reload refused, keeping the running config: " + why);
  }
  log_line("info", "draining", "timeout_ms=" + std::to_string(config->proxy.drain_timeout_ms));
  server.drain(config->proxy.drain_timeout_ms);
  handler.cancel_all();  // (drained: only the left-over settling may still wait on OpenRouter)
  loops.finish(5'000);
  log_line("info", "stopped");
  return kExitOk;
}
