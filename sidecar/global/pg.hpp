// pg.hpp — a PostgreSQL connection for global mode (libpq), bounded in time.
//
// Every call has a client-side deadline: connecting and each statement run on libpq's
// non-blocking API under poll(), so a server that is slow, stopped (SIGSTOP) or gone costs at most
// the timeout, and the connection is then dropped (and made again on the next call). A transaction
// that fails with a serialization failure or deadlock (SQLSTATE 40001, 40P01), or whose connection
// was lost, is retried from the start, a bounded number of times, so the SQL runs unchanged on
// PostgreSQL, CockroachDB or YugabyteDB. The password is given to libpq as a parameter, never put in
// the URI, a log line, an error or argv. Thread safety: a PgConnection is for one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

struct pg_conn;

namespace ledger::global {

struct PgOptions {
  std::string uri;             // a libpq URI without a password, e.g. postgresql:///ledger?host=/run/postgresql
  std::string password;        // from store_password_env / store_password_file; "" = none
  uint32_t connect_timeout_ms = 3000;
  uint32_t statement_timeout_ms = 3000;
  uint32_t attempts_max = 3;   // per transaction, first try included
};

// One row of text values (NULL is nullopt).
using PgRow = std::vector<std::optional<std::string>>;

struct PgResult {
  std::vector<PgRow> rows;
  uint64_t affected = 0;       // rows changed by INSERT/UPDATE/DELETE
};

// What went wrong, for a person: the SQLSTATE when the server sent one, and a message naming the
// store (its URI, which holds no password) and what to do.
struct PgError {
  std::string sqlstate;
  std::string message;
  bool retryable = false;      // serialization failure, deadlock, lost connection
};

class PgConnection {
 public:
  explicit PgConnection(PgOptions options);
  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  // Runs one statement with text parameters ($1, $2...). False with *error on any failure.
  bool exec(const std::string& sql, const std::vector<std::string>& params, PgResult* out, PgError* error);
  // BEGIN, body, COMMIT; the body returns false to roll back (then *error may be empty: a decision,
  // not a failure). Retried from BEGIN on retryable errors, at most attempts_max times.
  bool transaction(const std::function<bool(PgConnection&, PgError*)>& body, PgError* error);
  // Round trips of the last successful statement, for metrics.
  int64_t last_round_trip_us() const { return last_round_trip_us_; }
  const PgOptions& options() const { return options_; }

 private:
  bool ensure_connected(PgError* error);
  bool wait_result(int64_t deadline_ms, PgResult* out, PgError* error);
  void drop();

  PgOptions options_;
  pg_conn* conn_ = nullptr;
  int64_t last_round_trip_us_ = 0;
};

}  // namespace ledger::global
