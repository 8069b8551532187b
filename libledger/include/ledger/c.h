/* ledger/c.h — the stable C ABI of libledger (DESIGN.md 8.1; do not change a signature or a number).
 *
 * A thin wrapper over the C++ API in ledger/ledger.hpp for other languages (Python ctypes, Rust, Go).
 * Thread safety: a ledger_t may be used by many threads at once. A ledger_t carried into a child by
 * fork() is re-registered under the child's own process slot on its first use.
 * Every function returns one of the LEDGER_* codes below and never aborts on a bad argument: NULL
 * pointers, empty or over-long strings (an account id is 1-63 bytes of [A-Za-z0-9._:@-]) and negative
 * amounts give LEDGER_INVALID_ARGUMENT. Money is integer nano-USD (1 USD = 1,000,000,000).
 * The numeric values of the codes and periods reach disk and other languages: never renumber them. */
#ifndef LEDGER_C_H_
#define LEDGER_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LEDGER_EXPORT __attribute__((visibility("default")))
#else
#define LEDGER_EXPORT
#endif

typedef struct ledger_t ledger_t;

#define LEDGER_OK                          0
#define LEDGER_DENIED_OVER_BUDGET          1  /* the account's own budget would be exceeded */
#define LEDGER_DENIED_PARENT_OVER_BUDGET   2  /* an ancestor's budget would be exceeded */
#define LEDGER_DENIED_MODEL                3  /* model not allowed for the tier, no fallback */
#define LEDGER_DENIED_BLOCKED              4  /* the account is blocked (revoked) */
#define LEDGER_UNKNOWN_ACCOUNT             5
#define LEDGER_UNKNOWN_RESERVATION         6
#define LEDGER_ALREADY_SETTLED             7
#define LEDGER_INVALID_ARGUMENT            8
#define LEDGER_FULL                        9  /* a capacity fixed at creation is used up */
#define LEDGER_INCOMPATIBLE               10  /* segment or store of another format version */
#define LEDGER_IO_ERROR                   11
#define LEDGER_PERMISSION                 12
#define LEDGER_NOT_FOUND                  13  /* no ledger at that path */
#define LEDGER_UNKNOWN_MODEL              14  /* no price known for the model */
#define LEDGER_DENIED_RATE                15  /* a requests/tokens per minute or concurrency limit */

#define LEDGER_PERIOD_NONE     0
#define LEDGER_PERIOD_DAILY    1
#define LEDGER_PERIOD_WEEKLY   2
#define LEDGER_PERIOD_MONTHLY  3

typedef struct {
  uint32_t max_accounts;       /* 0 = default (65536) */
  uint32_t max_reservations;   /* 0 = default (65536) */
  uint32_t max_processes;      /* 0 = default (256) */
} ledger_limits_t;

typedef struct {
  int64_t  limit_nanousd;
  int64_t  spent_nanousd;      /* settled in the current period */
  int64_t  held_nanousd;       /* reserved, not yet settled */
  int64_t  available_nanousd;  /* limit - spent - held; negative after an overrun */
  uint64_t requests;           /* settled debits and commits in the current period */
  int32_t  period;             /* LEDGER_PERIOD_* */
  int32_t  blocked;            /* 1 when blocked */
  int64_t  period_start_unix;  /* start of the current period, UTC seconds */
} ledger_balance_t;

/* A static, human-readable name for a code ("over budget", ...); never NULL. */
LEDGER_EXPORT const char* ledger_strerror(int code);

/* A ledger is identified by its directory (LMDB store and lock files live there). */
/* Creates the directory (one level, 0700) and the shared segment if missing, else attaches.
 * limits may be NULL (defaults); limits of an existing segment are kept. */
LEDGER_EXPORT int  ledger_create(const char* dir, const ledger_limits_t* limits, ledger_t** out); /* create or attach */
/* Attaches only: LEDGER_NOT_FOUND when no ledger exists at dir. When the store exists but the
 * segment does not (after a reboot), the segment is rebuilt from the store first: budgets, tiers,
 * prices, key bindings and the current periods' spend. */
LEDGER_EXPORT int  ledger_open(const char* dir, ledger_t** out);                                  /* attach only */
LEDGER_EXPORT void ledger_close(ledger_t* ledger);

/* Creates the account or updates its budget. A parent must exist; chains are at most 4 deep. */
LEDGER_EXPORT int ledger_set_budget(ledger_t* ledger, const char* account, int64_t limit_nanousd,
                      int32_t period, const char* parent /* NULL or "" = none */);
LEDGER_EXPORT int ledger_block(ledger_t* ledger, const char* account, int32_t blocked);
/* Check-and-debit against the account and every ancestor, all or nothing. */
LEDGER_EXPORT int ledger_debit(ledger_t* ledger, const char* account, int64_t amount_nanousd);
/* ttl_seconds 0 = the ledger's default (ledger.reservation_ttl_s, kept in the segment for every
 * process; 600 unless configured). The id is never 0. When every slot is taken the oldest expired
 * hold (tombstone) is dropped to make room; LEDGER_FULL only when every slot holds a live hold. */
LEDGER_EXPORT int ledger_reserve(ledger_t* ledger, const char* account, int64_t amount_nanousd,
                   uint32_t ttl_seconds, uint64_t* reservation_id);
/* Settles once: a second commit or release gives LEDGER_ALREADY_SETTLED (LEDGER_UNKNOWN_RESERVATION
 * once the slot was recycled). A commit after the hold expired still charges actual_nanousd while
 * its tombstone is kept (ledger.tombstone_grace_s, default 24 h, at most ledger.max_tombstones);
 * after that it gives LEDGER_UNKNOWN_RESERVATION and charges nothing. */
LEDGER_EXPORT int ledger_commit(ledger_t* ledger, uint64_t reservation_id, int64_t actual_nanousd);
/* ledger_commit with the request's real token counts (corrects tokens-per-minute accounting: the
 * tokens counted at admission are replaced by these, in the minute the hold was admitted in).
 * (DESIGN.md 8.4.) */
LEDGER_EXPORT int ledger_commit_usage(ledger_t* ledger, uint64_t reservation_id, int64_t actual_nanousd,
                                      uint32_t prompt_tokens, uint32_t completion_tokens);
/* A release gives the hold's tokens and its concurrent slot back (the request never ran). */
LEDGER_EXPORT int ledger_release(ledger_t* ledger, uint64_t reservation_id);
LEDGER_EXPORT int ledger_balance(ledger_t* ledger, const char* account, ledger_balance_t* out);
LEDGER_EXPORT int ledger_reclaim(ledger_t* ledger, uint32_t* reclaimed);  /* expired or dead holders' holds */
LEDGER_EXPORT int ledger_flush(ledger_t* ledger);                         /* durable on return */

/* Policy */
LEDGER_EXPORT int ledger_set_price(ledger_t* ledger, const char* model, int64_t prompt_nanousd_per_mtok,
                     int64_t completion_nanousd_per_mtok, int64_t request_nanousd);
LEDGER_EXPORT int ledger_estimate(ledger_t* ledger, const char* model, uint32_t prompt_tokens,
                    uint32_t max_completion_tokens, int64_t* estimate_nanousd);
/* Policy and reserve in one call (see README "Policy" for the decision order). On LEDGER_OK,
 * model_out holds the model to send (maybe a fallback or downgrade); on LEDGER_UNKNOWN_MODEL it names
 * the model that has no price (so the caller can say which configured name is missing a price).
 * The hold goes through the key of the default rule: the account's own bound key, else its nearest
 * ancestor's (ledgerctl init binds keys from the config and from provisioning). */
LEDGER_EXPORT int ledger_authorize(ledger_t* ledger, const char* account, const char* model,
                     int64_t estimate_nanousd, uint32_t ttl_seconds,
                     char* model_out, size_t model_out_size, uint64_t* reservation_id);

/* ledger_authorize, plus which OpenRouter key the request will go through: the key's hash (64 hex)
 * or a unique prefix of at least 12 hex. NULL or "" = the documented default rule (the account's
 * own bound key, else its nearest ancestor's). Reconciliation compares each key's usage with the
 * spend the ledger recorded through that key. A full hash the ledger does not know yet is
 * registered; an unknown or ambiguous prefix gives LEDGER_INVALID_ARGUMENT, a full key table
 * LEDGER_FULL, and nothing is reserved. (DESIGN.md 8.4.) */
LEDGER_EXPORT int ledger_authorize_via(ledger_t* ledger, const char* account, const char* model,
                         int64_t estimate_nanousd, uint32_t ttl_seconds, const char* key_hash,
                         char* model_out, size_t model_out_size, uint64_t* reservation_id);

/* Rate limits (config accounts[].rpm, tpm, max_concurrent) count on the whole chain at every
 * admission (debit, reserve, authorize): an admission over any of them is LEDGER_DENIED_RATE.
 * Tokens per minute count, at admission, the tokens of the ledger_estimate this thread made last
 * when estimate_nanousd is exactly its result (else none until ledger_commit_usage); a request whose
 * tokens alone exceed tpm is never admitted.
 * After LEDGER_DENIED_RATE on the calling thread, *retry_after_ms is how long until the limit that
 * denied may admit again: the rest of the minute for rpm and tpm, a short poll interval (50 ms) for
 * max_concurrent (a slot comes back when one of the account's holds settles). 0 when this thread
 * was never rate-denied. The ledger argument is only checked (the hint is per thread). */
LEDGER_EXPORT int ledger_retry_after_ms(ledger_t* ledger, uint32_t* retry_after_ms);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* LEDGER_C_H_ */
