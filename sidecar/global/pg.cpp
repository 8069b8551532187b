// pg.cpp — see pg.hpp.
#include "global/pg.hpp"

#include <libpq-fe.h>
#include <poll.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace ledger::global {

namespace {

int64_t now_ms() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

// Waits until the connection's socket is ready for `events` or the deadline passes.
bool wait_socket(PGconn* conn, short events, int64_t deadline_ms) {
  const int fd = PQsocket(conn);
  if (fd < 0) return false;
  for (;;) {
    const int64_t left = deadline_ms - now_ms();
    if (left <= 0) return false;
    struct pollfd p {fd, events, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(left));
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return false;
  }
}

std::string first_line(const char* text) {
  std::string s = text == nullptr ? "" : text;
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

bool retryable_state(const std::string& sqlstate) {
  return sqlstate == "40001" || sqlstate == "40P01" || sqlstate.rfind("08", 0) == 0 || sqlstate == "57P01";
}

}  // namespace

PgConnection::PgConnection(PgOptions options) : options_(std::move(options)) {}

PgConnection::~PgConnection() { drop(); }

void PgConnection::drop() {
  if (conn_ != nullptr) PQfinish(conn_);
  conn_ = nullptr;
}

bool PgConnection::ensure_connected(PgError* error) {
  if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK) return true;
  drop();
  const std::string timeout = std::to_string(std::max<uint32_t>(1, (options_.connect_timeout_ms + 999) / 1000));
  const std::string statement = "-c statement_timeout=" + std::to_string(options_.statement_timeout_ms);
  const char* keys[] = {"dbname", "password", "connect_timeout", "options", "application_name", nullptr};
  const char* values[] = {options_.uri.c_str(), options_.password.empty() ? nullptr : options_.password.c_str(),
                          timeout.c_str(), statement.c_str(), "ledger", nullptr};
  conn_ = PQconnectStartParams(keys, values, /*expand_dbname=*/1);
  const int64_t deadline = now_ms() + options_.connect_timeout_ms;
  for (PostgresPollingStatusType state = PGRES_POLLING_WRITING; conn_ != nullptr;) {
    if (PQstatus(conn_) == CONNECTION_BAD) break;
    if (state == PGRES_POLLING_OK) {
      PQsetNoticeProcessor(conn_, [](void*, const char*) {}, nullptr);  // NOTICEs ("already exists, skipping") are not ours to print
      return true;
    }
    if (state == PGRES_POLLING_FAILED) break;
    if (!wait_socket(conn_, state == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline)) {
      *error = PgError{"08000", "the store did not answer within " + std::to_string(options_.connect_timeout_ms) +
                                    " ms (" + options_.uri + "): is PostgreSQL running and reachable?", true};
      drop();
      return false;
    }
    state = PQconnectPoll(conn_);
  }
  const std::string why = conn_ != nullptr ? first_line(PQerrorMessage(conn_)) : "out of memory";
  *error = PgError{"08001", "cannot connect to the store " + options_.uri + ": " + why, true};
  if (why.find("password") != std::string::npos || why.find("authentication") != std::string::npos)
    error->message += " (check the password in store_password_env or store_password_file)";
  drop();
  return false;
}

bool PgConnection::wait_result(int64_t deadline_ms, PgResult* out, PgError* error) {
  bool ok = true;
  for (;;) {
    while (PQisBusy(conn_) != 0) {
      if (!wait_socket(conn_, POLLIN, deadline_ms) || PQconsumeInput(conn_) == 0) {
        *error = PgError{"57014", "the store did not answer within " + std::to_string(options_.statement_timeout_ms) +
                                      " ms (" + options_.uri + ")", true};
        drop();  // whatever it was doing, this connection is done; the next call connects anew
        return false;
      }
    }
    PGresult* r = PQgetResult(conn_);
    if (r == nullptr) return ok;
    const ExecStatusType status = PQresultStatus(r);
    if (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK) {
      const char* affected = PQcmdTuples(r);
      out->affected = affected != nullptr && *affected != '\0' ? std::stoull(affected) : 0;
      for (int i = 0; i < PQntuples(r); ++i) {
        PgRow row;
        for (int j = 0; j < PQnfields(r); ++j)
          row.push_back(PQgetisnull(r, i, j) != 0 ? std::nullopt : std::optional<std::string>(PQgetvalue(r, i, j)));
        out->rows.push_back(std::move(row));
      }
    } else if (ok) {
      const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
      *error = PgError{state != nullptr ? state : "", "the store refused a statement: " + first_line(PQresultErrorMessage(r)), false};
      error->retryable = retryable_state(error->sqlstate);
      ok = false;
    }
    PQclear(r);
  }
}

bool PgConnection::exec(const std::string& sql, const std::vector<std::string>& params, PgResult* out, PgError* error) {
  *out = PgResult{};
  if (!ensure_connected(error)) return false;
  std::vector<const char*> values;
  for (const auto& p : params) values.push_back(p.c_str());
  const int64_t started = now_ms();
  if (PQsendQueryParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr, 0) == 0) {
    *error = PgError{"08006", "lost the connection to the store " + options_.uri + ": " + first_line(PQerrorMessage(conn_)), true};
    drop();
    return false;
  }
  const bool ok = wait_result(started + options_.statement_timeout_ms + 500, out, error);
  if (ok) last_round_trip_us_ = (now_ms() - started) * 1000;
  if (!ok && conn_ != nullptr && PQstatus(conn_) != CONNECTION_OK) drop();
  return ok;
}

bool PgConnection::transaction(const std::function<bool(PgConnection&, PgError*)>& body, PgError* error) {
  for (uint32_t attempt = 0; attempt < options_.attempts_max; ++attempt) {
    PgResult ignored;
    *error = PgError{};
    if (!exec("BEGIN", {}, &ignored, error)) {
      if (error->retryable) continue;
      return false;
    }
    if (body(*this, error) && exec("COMMIT", {}, &ignored, error)) return true;
    const PgError failure = *error;
    if (conn_ != nullptr) (void)exec("ROLLBACK", {}, &ignored, error);
    *error = failure;
    if (!failure.retryable) return false;  // the body's decision (no message), or a hard error
  }
  error->message += " (gave up after " + std::to_string(options_.attempts_max) + " attempts)";
  return false;
}

}  // namespace ledger::global
