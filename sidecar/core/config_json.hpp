// config_json.hpp — reading config values out of Boost.JSON, strictly (internal to core/).
//
// Every reader names the key's path in its error ("accounts[2] ("bob").period: ..."), which is
// thrown as ConfigError and becomes the one-line message load_config returns.
#pragma once

#include <boost/json.hpp>
#include <initializer_list>
#include <string>
#include <vector>

namespace ledger::admin::config_json {

namespace json = boost::json;

struct ConfigError {
  std::string message;
};

[[noreturn]] void fail(const std::string& where, const std::string& what);
std::string kind_name(const json::value& v);
std::string join(const std::string& where, const std::string& key);

// The object, with every key checked against `allowed` (an unknown key is named, with the list).
const json::object& object_with(const json::value& v, const std::string& where, const std::vector<std::string>& allowed);

std::string read_string(const json::value& v, const std::string& where, size_t max_length = 4096);
uint64_t read_uint(const json::value& v, const std::string& where, uint64_t min, uint64_t max);
bool read_bool(const json::value& v, const std::string& where);
// USD as a decimal string ("12.50") or a JSON number; never negative.
int64_t read_usd(const json::value& v, const std::string& where);

// The same for an optional member of `o`: `fallback` when it is absent (an error when `required`).
std::string get_string(const json::object& o, const std::string& where, const char* key, const std::string& fallback,
                       bool required = false, size_t max_length = 4096);
uint64_t get_uint(const json::object& o, const std::string& where, const char* key, uint64_t fallback, uint64_t min, uint64_t max);

bool valid_model_id(const std::string& model);

}  // namespace ledger::admin::config_json
