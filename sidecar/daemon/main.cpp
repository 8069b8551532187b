// ledger-sidecar — runs beside a worker pool: flushes the ledger to LMDB, reclaims the holds of
// dead or slow workers and repairs their half-done work, reconciles with OpenRouter, writes the
// team report, serves metrics, applies config changes on SIGHUP. See daemon/sidecar.hpp for its
// shape (a local tick and a network worker) and core/sidecar_lock.hpp for "one sidecar per ledger".
#include <cstdio>
#include <string>

#include "daemon/sidecar.hpp"

using namespace ledger::admin;

namespace {

constexpr const char* kUsage = R"(usage: ledger-sidecar --config FILE [--once]

Runs beside a worker pool: every ledger.flush_interval_ms writes what was settled to the store
(<dir>/ledger.mdb); every second reclaims expired holds and the holds and half-done work of dead
workers. On its own thread, every openrouter.reconcile_interval_s it refreshes prices and
reconciles each key with OpenRouter, and every reports.interval_s it writes the team report; a
slow or rate-limiting OpenRouter never delays a flush. SIGTERM/SIGINT flush and exit; SIGHUP
reloads the config (budget changes apply, spend is kept, accounts removed from the config are
blocked).

  --once    one full cycle (apply config, reclaim, flush, reconcile, reports, flush), then exit
  --help    this text
Exit codes: 0 success, 1 usage or config error, 2 runtime error.
)";

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  bool once = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (arg.rfind("--config=", 0) == 0) {
      config_path = arg.substr(9);
    } else if (arg == "--once") {
      once = true;
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return kExitOk;
    } else {
      std::fprintf(stderr, "ledger-sidecar: unknown argument \"%s\"\n%s", arg.c_str(), kUsage);
      return kExitUsage;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "ledger-sidecar: --config FILE is required\n%s", kUsage);
    return kExitUsage;
  }
  Sidecar sidecar;
  if (const int code = sidecar.init(config_path, once); code != kExitOk) return code;
  sidecar.run();
  return sidecar.shutdown();
}
