#pragma once
// Text from outside (config files, OpenRouter's replies) quoted in an error or a log line.
#include <cstddef>
#include <string>
#include <string_view>

namespace ledger::admin {

// `text` as one printable line: control characters become escapes (\n, \r, \t, \xHH, and \u0085
// for the C1 ones), so a quoted value cannot break or rewrite a terminal or log line. At most
// `max_bytes` of `text` are kept, cut before a UTF-8 sequence that would not fit whole.
std::string one_line(std::string_view text, size_t max_bytes = std::string_view::npos);

}  // namespace ledger::admin
