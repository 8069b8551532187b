// key_days.hpp — per-key reconciliation across hosts (DESIGN 11, G5).
//
// OpenRouter's usage of a key is every host's, while a host's ledger knows only what it settled
// through the key itself. So every host publishes its per-key record (flushed, per account and UTC
// day, cumulative) to the global store every kPublishIntervalMs, from the lease worker, and the one
// reconciler compares OpenRouter with the sum over all hosts. Ordering makes it safe: the reconciler
// reads OpenRouter first, then the store's clock (T), then waits until every live host has captured
// its record after T. Spend a host settles before T is then in the sum; spend settled after the
// OpenRouter read can only make the ledger look higher (reported, never charged). A host that does
// not capture in time makes the run compare without adjusting (the next run catches up).
// Residual: a host that dies between its last capture and settling more spend through a key, and
// never comes back, has that spend charged twice (its expired lease's remainder, and the drift):
// the conservative direction, bounded by its lease.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "global/pg.hpp"
#include "ledger/ledger.hpp"
#include "ledger/store.hpp"

namespace ledger::global {

inline constexpr int64_t kPublishIntervalMs = 2000;  // how often each host captures its per-key record
inline constexpr int64_t kCaptureWaitMs = 3 * kPublishIntervalMs;  // how long the reconciler waits for them

// Flushes and publishes this host's per-key record (see publish_key_days).
bool publish_own_key_days(PgConnection& pg, Ledger& ledger, const admin::Config& config, PgError* error);

// For the reconciler: publishes this host's record, then waits (at most kCaptureWaitMs, or until
// *cancel) for every other live host to capture after the store's now; *days is the sum over all
// hosts. *complete is false when some host did not capture in time (*waiting_for says which): the
// caller must not adjust on this run.
bool pooled_key_days(PgConnection& pg, Ledger& ledger, const admin::Config& config, const std::atomic<bool>* cancel,
                     std::vector<StoredKeyDay>* days, bool* complete, std::string* waiting_for, PgError* error);

}  // namespace ledger::global
