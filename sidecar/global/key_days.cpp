// key_days.cpp — see key_days.hpp.
#include "global/key_days.hpp"

#include <chrono>
#include <thread>

#include "global/lease_worker.hpp"
#include "global/protocol.hpp"

namespace ledger::global {

namespace {

// A host that captured within this long is live: the reconciler waits for it.
int64_t live_s(const admin::Config& config) { return std::max<int64_t>(60, int64_t{config.global.lease_ttl_s} * 2); }

bool capture(Ledger& ledger, const admin::Config& config, std::vector<KeyDay>* out) {
  if (!ledger.flush().ok()) return false;  // everything settled so far, then read it (and close)
  std::unique_ptr<StoreReader> store;
  const Status opened = StoreReader::open(config.ledger.dir, &store);
  if (opened.code() == Code::kNotFound) return true;  // nothing flushed yet: nothing to publish
  if (!opened.ok()) return false;
  std::vector<StoredKeyDay> days;
  if (!store->key_days(0, INT64_MAX / 86'400'000, &days).ok()) return false;
  out->clear();
  for (auto& d : days) out->push_back(KeyDay{std::move(d.key_hash), std::move(d.account), d.day, d.spent_nanousd});
  return true;
}

}  // namespace

bool publish_own_key_days(PgConnection& pg, Ledger& ledger, const admin::Config& config, PgError* error) {
  return publish_key_days(pg, owner_id(config), [&](std::vector<KeyDay>* days) { return capture(ledger, config, days); }, error);
}

bool pooled_key_days(PgConnection& pg, Ledger& ledger, const admin::Config& config, const std::atomic<bool>* cancel,
                     std::vector<StoredKeyDay>* days, bool* complete, std::string* waiting_for, PgError* error) {
  *complete = false;
  waiting_for->clear();
  int64_t since_ms = 0;  // the caller read OpenRouter before this instant
  if (!store_now_ms(pg, &since_ms, error) || !publish_own_key_days(pg, ledger, config, error)) return false;
  const std::string own = owner_id(config);
  std::vector<std::string> stale;
  for (const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kCaptureWaitMs);;) {
    if (!stale_key_owners(pg, since_ms, live_s(config), &stale, error)) return false;
    std::erase(stale, own);
    if (stale.empty() || std::chrono::steady_clock::now() >= deadline || (cancel != nullptr && cancel->load())) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (const auto& s : stale) *waiting_for += (waiting_for->empty() ? "" : ", ") + s;
  *complete = stale.empty();
  if (!*complete) *waiting_for = "waiting for " + *waiting_for + " to publish its per-key record (every host does every " +
                                 std::to_string(kPublishIntervalMs / 1000) + " s)";
  std::vector<KeyDay> pooled;
  if (!read_key_days(pg, 0, &pooled, error)) return false;
  days->clear();
  for (auto& d : pooled) days->push_back(StoredKeyDay{std::move(d.key_hash), std::move(d.account), d.day, d.spent_nanousd, 0});
  return true;
}

}  // namespace ledger::global
