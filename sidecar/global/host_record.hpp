// host_record.hpp — what each host recorded, pooled in the global store (DESIGN 11): per-key
// reconciliation by the one reconciler (G5), and reports with global totals and a host breakdown.
//
// OpenRouter's usage of a key is every host's, and a team's cost is every host's, while a host's
// ledger knows only what it settled itself. So every host publishes its record (flushed; per key,
// account and UTC day, and per account, model and day; cumulative) to the global store every
// kPublishIntervalMs, from the lease worker; only rows that changed since its last publish are sent.
//
// Reconcile ordering makes adjusting safe: the reconciler reads OpenRouter first, then the store's
// clock (T), then waits until every live host has captured its record after T. Spend a host
// settled before T is then in the sum; spend settled after the OpenRouter read can only make the
// ledger look higher (reported, never charged). A host that does not capture in time makes the run
// compare without adjusting (the next run catches up). Residual: a host that dies between its last
// capture and settling more spend through a key, and never comes back, has that spend charged
// twice (its expired lease's remainder, and the drift): the conservative direction, bounded by its
// lease.
#pragma once

#include <atomic>
#include <map>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "global/pg.hpp"
#include "global/protocol.hpp"
#include "ledger/ledger.hpp"
#include "ledger/store.hpp"
#include "reports/reports.hpp"

namespace ledger::global {

inline constexpr int64_t kPublishIntervalMs = 2000;  // how often each host captures its record
inline constexpr int64_t kCaptureWaitMs = 3 * kPublishIntervalMs;  // how long the reconciler waits for them

// Flushes and publishes this host's record (see publish_host_record); cache may be nullptr (all rows).
bool publish_own_record(PgConnection& pg, Ledger& ledger, const admin::Config& config, PublishedRows* cache, PgError* error);

// For the reconciler: publishes this host's record, then waits (at most kCaptureWaitMs, or until
// *cancel) for every other live host to capture after the store's now; *days is the sum over all
// hosts. *complete is false when some host did not capture in time (*waiting_for says which): the
// caller must not adjust on this run.
bool pooled_key_days(PgConnection& pg, Ledger& ledger, const admin::Config& config, const std::atomic<bool>* cancel,
                     std::vector<StoredKeyDay>* days, bool* complete, std::string* waiting_for, PgError* error);

// For reports in global mode: replaces the days, model days and the global accounts' periods of
// `in` (read from this host's store) with every host's, and adds each account's cost by host.
bool pooled_report_inputs(PgConnection& pg, const admin::Config& config, int64_t from_day, int64_t to_day, int64_t now_unix,
                          admin::ReportInputs* in, PgError* error);

// The team report of [from_day, to_day] in global mode: this host's record published first, then
// the global accounts' figures from every host. False with *error naming what failed.
bool build_global_report(Ledger& ledger, const admin::Config& config, int64_t from_day, int64_t to_day, int64_t now_unix,
                         admin::Report* out, std::string* error);

}  // namespace ledger::global
