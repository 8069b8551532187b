// The consumer: a budget, a debit, the balance, through the installed or exported libledger.
#include <memory>

#include "ledger/ledger.hpp"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::unique_ptr<ledger::Ledger> l;
  if (!ledger::Ledger::open(argv[1], ledger::Options{}, &l).ok()) return 1;
  ledger::Balance b;
  const bool ok = l->set_budget("alice", 10, ledger::Period::kNone, "").ok() && l->debit("alice", 3).ok() &&
                  l->balance("alice", &b).ok() && b.spent_nanousd == 3;
  l.reset();
  (void)ledger::Ledger::destroy_segment(argv[1]);
  return ok ? 0 : 1;
}
