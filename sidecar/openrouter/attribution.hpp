// attribution.hpp — what a request on a shared OpenRouter key carries to name its user (DESIGN 6):
// the HTTP-Referer header (the app's URL), X-OpenRouter-Title and the older X-Title
// ("<app_title>:<user>", or the user alone without an app title), and the body's "user". The
// proxy sends them on every request; a worker that calls OpenRouter itself builds them here.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ledger::openrouter {

struct Attribution {
  std::string http_referer;
  std::string title;
  std::string user;
  // The headers as "Name: value" lines, in a fixed order (empty values are left out).
  std::vector<std::string> headers() const {
    std::vector<std::string> out;
    if (!http_referer.empty()) out.push_back("HTTP-Referer: " + http_referer);
    if (!title.empty()) {
      out.push_back("X-OpenRouter-Title: " + title);
      out.push_back("X-Title: " + title);
    }
    return out;
  }
};

// REQUIRES: user is an account id (valid_account_name); app_url and app_title are printable.
inline Attribution attribution_for(std::string_view app_url, std::string_view app_title, std::string_view user) {
  Attribution a;
  a.http_referer = std::string(app_url);
  a.title = app_title.empty() ? std::string(user) : std::string(app_title) + ":" + std::string(user);
  a.user = std::string(user);
  return a;
}

}  // namespace ledger::openrouter
