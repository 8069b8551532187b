// check.cpp — see check.hpp.
#include "check.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace ledger::detail {

void check_failed(const char* condition, const char* file, int line) {
  char message[512];
  const int n = std::snprintf(message, sizeof message,
                              "libledger: invariant violated: %s (%s:%d); stopping this process: its holds and unfinished "
                              "operations are repaired by the next reclaim\n",
                              condition, file, line);
  if (n > 0) (void)!::write(STDERR_FILENO, message, static_cast<size_t>(n) < sizeof message ? static_cast<size_t>(n) : sizeof message - 1);
  std::abort();
}

}  // namespace ledger::detail
