// fuzz_config — any bytes as the text of a config file, through ledger::admin::parse_config.
//
// Never a crash, a hang, an exception or undefined behaviour. A refusal is one printable line (no
// control character, whatever the file's keys and values hold) that starts with the file's path. An accepted config keeps the promises the rest of the admin
// side builds on: valid and unique account ids, every parent known and listed before its children,
// chains of at most 4 levels, amounts in [0, kAmountNanoUsdMax], tiers that exist, absolute paths.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "core/config.hpp"
#include "ledger/ledger.hpp"
#include "ledger/money.hpp"

namespace {

constexpr const char* kPath = "/tmp/fuzz.json";

[[noreturn]] void broken(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_config: %s: %s\n", what, detail.c_str());
  std::abort();
}

bool amount_ok(int64_t nanousd) { return nanousd >= 0 && nanousd <= ledger::kAmountNanoUsdMax; }

void check_accepted(const ledger::admin::Config& c) {
  if (c.path != kPath) broken("path", c.path);
  if (c.ledger.dir.empty() || c.ledger.dir[0] != '/') broken("ledger.dir is not absolute", c.ledger.dir);
  if (c.reports.dir.empty() || c.reports.dir[0] != '/') broken("reports.dir is not absolute", c.reports.dir);
  if (c.accounts.size() > c.ledger.max_accounts) broken("more accounts than max_accounts", std::to_string(c.accounts.size()));
  std::map<std::string, int> depth;  // accounts seen so far (parents come first)
  for (const auto& t : c.tiers)
    if (!ledger::valid_account_name(t.name)) broken("tier name", t.name);
  for (const auto& p : c.prices)
    if (!amount_ok(p.prompt_nanousd_per_mtok) || !amount_ok(p.completion_nanousd_per_mtok) || !amount_ok(p.request_nanousd))
      broken("price out of range", p.model);
  for (const auto& a : c.accounts) {
    if (!ledger::valid_account_name(a.id)) broken("account id", a.id);
    if (depth.count(a.id) != 0) broken("duplicate account accepted", a.id);
    if (!amount_ok(a.limit_nanousd)) broken("limit out of range", a.id);
    if (static_cast<int>(a.period) < 0 || static_cast<int>(a.period) > 3) broken("period", a.id);
    int d = 1;
    if (!a.parent.empty()) {
      const auto parent = depth.find(a.parent);
      if (parent == depth.end()) broken("parent unknown or listed after its child", a.id + " -> " + a.parent);
      d = parent->second + 1;
    }
    if (d > 4) broken("chain deeper than 4 accepted", a.id);
    depth[a.id] = d;
    if (!a.tier.empty()) {
      bool known = false;
      for (const auto& t : c.tiers) known = known || t.name == a.tier;
      if (!known) broken("unknown tier accepted", a.tier);
    }
    if (!a.key_hash.empty() && a.key_hash.size() != 64) broken("key_hash", a.key_hash);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::string error;
  const auto config = ledger::admin::parse_config(text, kPath, &error);
  if (config) {
    if (!error.empty()) broken("accepted with an error", error);
    check_accepted(*config);
    return 0;
  }
  if (error.empty()) broken("refused without an error", "");
  if (error.rfind(std::string(kPath) + ": ", 0) != 0) broken("error does not start with the path", error);
  // One printable line: text quoted from the file has its control characters escaped.
  for (const char c : error)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) broken("error is not one printable line", error);
  return 0;
}
