// json_out.hpp — how the emulator writes JSON as OpenRouter does: money as plain numbers with up
// to 9 decimals, usage objects, error bodies. Internal to the emulator.
#pragma once

#include <boost/json.hpp>
#include <string>

#include "emulator.hpp"

namespace emulator::detail {
namespace json = boost::json;

// Money goes into the tree as a marked string and leaves serialize() as a plain JSON number with
// up to 9 decimals ("0.000325", not "3.25E-4"), like OpenRouter's own output.
inline constexpr const char* kNumberMark = "\x1fnum:";
inline std::string finish(std::string text) {
  const std::string open = std::string("\"") + "\\u001fnum:";
  for (size_t at = text.find(open); at != std::string::npos; at = text.find(open, at)) {
    const size_t end = text.find('"', at + open.size());
    if (end == std::string::npos) break;
    const std::string number = text.substr(at + open.size(), end - at - open.size());
    text.replace(at, end - at + 1, number);
    at += number.size();
  }
  return text;
}

template <class T>
inline std::string finish_json(const T& v) { return finish(boost::json::serialize(v)); }
inline json::string money(int64_t nanousd) { return json::string(std::string(kNumberMark) + usd_number(nanousd)); }

// A completion's usage, the same in a reply and in a stream's last chunk.
inline json::object usage_json(int64_t prompt_tokens, int64_t completion_tokens, int64_t cost_nanousd) {
  return json::object{{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens},
                      {"total_tokens", prompt_tokens + completion_tokens}, {"cost", money(cost_nanousd)}};
}

inline std::string error_body(int code, const std::string& message, const std::string& error_type = "") {
  json::object error;
  error["code"] = code;
  error["message"] = message;
  if (!error_type.empty()) error["metadata"] = json::object{{"error_type", error_type}};
  return finish_json(json::object{{"error", std::move(error)}});
}

inline Response error(int code, const std::string& message, const std::string& error_type = "") {
  Response r;
  r.status = code;
  r.body = error_body(code, message, error_type);
  return r;
}

}  // namespace emulator::detail
