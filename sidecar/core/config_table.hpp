// config_table.hpp — every key of the config, once (internal to core/).
//
// A row is a key's name, type, default, range, unit and meaning, and how it is read. The parser
// reads each section through the table (a key not in it is an unknown key), the defaults are the
// table's (the section structs in config.hpp start from them), and config_reference() prints the
// README's configuration reference from it; config_test checks the README against it. To add a key:
// a field in its section struct, a row here, and `scripts/config-reference.sh` to refresh the README.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/config_json.hpp"

namespace ledger::admin {

struct ConfigKey {
  std::string section;       // "ledger"; an entry of a list or map: "accounts[]", "tiers.NAME"
  std::string name;          // "flush_interval_ms"
  std::string default_text;  // as the reference shows it: "1000", "required", "none"
  std::string range;         // "10 - 3600000 ms", "" when none
  std::string help;
  // Reads the key's value (nullptr: absent, so the default) into the config; empty for a row that
  // only documents (entries of tiers, prices, accounts are read by their own parsers).
  std::function<void(Config&, const config_json::json::value*, const std::string& where)> read;
};

const std::vector<ConfigKey>& config_keys();

// Reads section `section` of the config through the table: unknown keys, types and ranges checked,
// every key that is absent (the whole section when `value` is nullptr) gets its default.
void read_section(const std::string& section, const config_json::json::value* value, Config& config);

}  // namespace ledger::admin
