// pg_server.hpp — a private PostgreSQL 15 for one test (tests/support/private_pg.hpp: initdb in a
// temp dir, a Unix socket there, scram password, the `postgres` user when root, fsync off). A step
// that fails throws, which fails the test case like a REQUIRE; the password is the tests' fixed one.
#pragma once

#include <catch2/catch.hpp>
#include <string>

#include "../support/private_pg.hpp"
#include "process.hpp"

namespace ledger_test {

class PgServer : public ledger_support::PrivatePg {
 public:
  PgServer() : PrivatePg(password()) {}
  static std::string password() { return "pg-test-secret-3141"; }
};

}  // namespace ledger_test
