// config_json.cpp — see config_json.hpp.
#include "core/config_json.hpp"

#include <optional>

#include "core/one_line.hpp"
#include "ledger/money.hpp"

namespace ledger::admin::config_json {

// Keys, ids and values from the file are quoted in messages, and JSON lets them hold any character
// ("ope\nrouter"): one_line keeps a message one printable line in a terminal and in the log.

void fail(const std::string& where, const std::string& what) { throw ConfigError{one_line(where + ": " + what)}; }

std::string kind_name(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "a boolean";
    case json::kind::int64:
    case json::kind::uint64:
    case json::kind::double_: return "a number";
    case json::kind::string: return "a string";
    case json::kind::array: return "an array";
    case json::kind::object: return "an object";
  }
  return "a value";
}

std::string join(const std::string& where, const std::string& key) { return where.empty() ? key : where + "." + key; }

const json::object& object_with(const json::value& v, const std::string& where, const std::vector<std::string>& allowed) {
  if (!v.is_object()) fail(where, "expected an object, got " + kind_name(v));
  const json::object& o = v.get_object();
  for (const auto& [key, value] : o) {
    bool known = false;
    for (const auto& a : allowed) known = known || key == a;
    if (known) continue;
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    fail(join(where, std::string(key)), "unknown key (allowed here: " + list + ")");
  }
  return o;
}

std::string read_string(const json::value& v, const std::string& where, size_t max_length) {
  if (!v.is_string()) fail(where, "expected a string, got " + kind_name(v));
  const std::string s(v.get_string());
  if (s.size() > max_length) fail(where, "longer than " + std::to_string(max_length) + " bytes");
  return s;
}

uint64_t read_uint(const json::value& v, const std::string& where, uint64_t min, uint64_t max) {
  int64_t n = 0;
  if (v.is_int64()) n = v.get_int64();
  else if (v.is_uint64() && v.get_uint64() <= static_cast<uint64_t>(INT64_MAX)) n = static_cast<int64_t>(v.get_uint64());
  else fail(where, "expected a whole number, got " + kind_name(v));
  if (n < 0 || static_cast<uint64_t>(n) < min || static_cast<uint64_t>(n) > max)
    fail(where, "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " + std::to_string(n));
  return static_cast<uint64_t>(n);
}

bool read_bool(const json::value& v, const std::string& where) {
  if (!v.is_bool()) fail(where, "expected true or false, got " + kind_name(v));
  return v.get_bool();
}

int64_t read_usd(const json::value& v, const std::string& where) {
  std::optional<int64_t> nanos;
  if (v.is_string()) {
    nanos = parse_usd(std::string(v.get_string()));
    if (!nanos) fail(where, "not a USD amount: \"" + std::string(v.get_string()) + "\" (write e.g. \"12.50\", at most 9 decimals)");
  } else if (v.is_int64() || v.is_uint64()) {
    const double whole = v.is_int64() ? static_cast<double>(v.get_int64()) : static_cast<double>(v.get_uint64());
    nanos = usd_double_to_nanousd(whole);
  } else if (v.is_double()) {
    nanos = usd_double_to_nanousd(v.get_double());
  } else {
    fail(where, "expected a USD amount (string or number), got " + kind_name(v));
  }
  if (!nanos) fail(where, "amount out of range");
  if (*nanos < 0) fail(where, "must not be negative");
  return *nanos;
}

std::string get_string(const json::object& o, const std::string& where, const char* key, const std::string& fallback,
                       bool required, size_t max_length) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) {
    if (required) fail(join(where, key), "required");
    return fallback;
  }
  return read_string(*v, join(where, key), max_length);
}

uint64_t get_uint(const json::object& o, const std::string& where, const char* key, uint64_t fallback, uint64_t min, uint64_t max) {
  const json::value* v = o.if_contains(key);
  return v == nullptr ? fallback : read_uint(*v, join(where, key), min, max);
}

bool valid_model_id(const std::string& model) {
  if (model.empty() || model.size() > 87) return false;
  for (char c : model)
    if (c <= ' ' || c > '~') return false;
  return true;
}

}  // namespace ledger::admin::config_json
