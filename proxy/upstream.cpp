// upstream.cpp — see upstream.hpp.
#include "upstream.hpp"

#include <curl/curl.h>
#include <strings.h>

#include <boost/json.hpp>
#include <chrono>
#include <mutex>
#include <thread>

#include "ledger/money.hpp"

namespace ledger::proxy {

namespace {

constexpr size_t kReplyBytesMax = 64u << 20;  // a non-streamed answer larger than this is cut (and fails to parse)

std::mutex g_share_locks[CURL_LOCK_DATA_LAST];
void share_lock(CURL*, curl_lock_data data, curl_lock_access, void*) { g_share_locks[data].lock(); }
void share_unlock(CURL*, curl_lock_data data, void*) { g_share_locks[data].unlock(); }

struct Transfer {
  CURL* curl = nullptr;
  UpstreamReply* reply = nullptr;
  const StreamSink* sink = nullptr;
  const std::atomic<bool>* cancel = nullptr;
  bool stopped = false;
};

size_t on_body(char* data, size_t size, size_t n, void* self) {
  auto* t = static_cast<Transfer*>(self);
  const size_t bytes = size * n;
  long status = 0;
  curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
  if (t->sink != nullptr && status == 200) {
    if ((*t->sink)(data, bytes)) return bytes;
    t->stopped = true;
    return 0;  // the client went away: stop reading upstream
  }
  if (t->reply->body.size() + bytes > kReplyBytesMax) return 0;
  t->reply->body.append(data, bytes);
  return bytes;
}

size_t on_header(char* data, size_t size, size_t n, void* self) {
  auto* t = static_cast<Transfer*>(self);
  const std::string line(data, size * n);
  const auto value_of = [&](const char* name) -> std::optional<std::string> {
    const size_t len = std::char_traits<char>::length(name);
    if (line.size() <= len || strncasecmp(line.c_str(), name, len) != 0) return std::nullopt;
    std::string v = line.substr(len);
    while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' ')) v.pop_back();
    while (!v.empty() && v.front() == ' ') v.erase(v.begin());
    return v;
  };
  if (auto v = value_of("x-generation-id:")) t->reply->generation_id = v->substr(0, 128);
  if (auto v = value_of("content-type:")) t->reply->content_type = v->substr(0, 128);
  if (auto v = value_of("retry-after:")) t->reply->retry_after = v->substr(0, 32);
  if (auto v = value_of("x-should-retry:")) t->reply->should_retry = v->substr(0, 8);
  return size * n;
}

int on_progress(void* self, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  const auto* t = static_cast<Transfer*>(self);
  return t->cancel != nullptr && t->cancel->load() ? 1 : 0;
}

}  // namespace

Upstream::Upstream(UpstreamOptions options) : options_(std::move(options)) {
  CURLSH* share = curl_share_init();
  curl_share_setopt(share, CURLSHOPT_LOCKFUNC, share_lock);
  curl_share_setopt(share, CURLSHOPT_UNLOCKFUNC, share_unlock);
  curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
  curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  share_ = share;
}

Upstream::~Upstream() { curl_share_cleanup(static_cast<CURLSH*>(share_)); }

UpstreamReply Upstream::perform(const std::string& method, const std::string& path, const std::string& body, const StreamSink* sink,
                                const std::atomic<bool>* cancel) {
  UpstreamReply reply;
  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    reply.error = "cannot start an upstream request";
    return reply;
  }
  Transfer t{curl, &reply, sink, cancel, false};
  const std::string url = options_.base_url + path;
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, ("Authorization: Bearer " + options_.key).c_str());
  headers = curl_slist_append(headers, "Content-Type: application/json");
  if (!options_.app_url.empty()) headers = curl_slist_append(headers, ("HTTP-Referer: " + options_.app_url).c_str());
  if (!options_.app_title.empty()) {
    headers = curl_slist_append(headers, ("X-OpenRouter-Title: " + options_.app_title).c_str());
    headers = curl_slist_append(headers, ("X-Title: " + options_.app_title).c_str());
  }
  headers = curl_slist_append(headers, "Expect:");  // no 100-continue round trip before the body
  curl_easy_setopt(curl, CURLOPT_SHARE, static_cast<CURLSH*>(share_));
  // The shared cache keeps this many connections after use (libcurl's default is 5: with more
  // requests in flight, each one that ends closes the oldest idle connection, and the next opens anew).
  curl_easy_setopt(curl, CURLOPT_MAXCONNECTS, 1024L);
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(options_.timeout_ms));
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 10'000L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &t);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  if (method == "POST") {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  const CURLcode rc = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &reply.status);
  long connects = 0;
  curl_off_t uploaded = 0;
  curl_easy_getinfo(curl, CURLINFO_SIZE_UPLOAD_T, &uploaded);
  curl_easy_getinfo(curl, CURLINFO_NUM_CONNECTS, &connects);
  // Nothing reached OpenRouter when the connection failed before any byte of the request left.
  reply.sent = reply.status != 0 || uploaded > 0 ||
               !(rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY);
  if (rc != CURLE_OK && !t.stopped) reply.error = std::string("upstream: ") + curl_easy_strerror(rc);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return reply;
}

UpstreamReply Upstream::post(const std::string& path, const std::string& body, const StreamSink* sink, const std::atomic<bool>* cancel) {
  return perform("POST", path, body, sink, cancel);
}

UpstreamReply Upstream::get(const std::string& path_and_query, const std::atomic<bool>* cancel) {
  return perform("GET", path_and_query, "", nullptr, cancel);
}

std::optional<int64_t> Upstream::generation_cost(const std::string& id, int attempts, uint32_t interval_ms, const std::atomic<bool>* cancel) {
  if (id.empty() || id.size() > 128 || id.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != std::string::npos)
    return std::nullopt;
  for (int attempt = 0; attempt < attempts && !(cancel != nullptr && cancel->load()); ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
    const UpstreamReply r = get("/generation?id=" + id, cancel);
    if (r.status != 200) continue;  // 404 for a moment after a completion; 5xx: try again
    std::error_code ec;
    const boost::json::value v = boost::json::parse(r.body, ec);
    const auto* data = !ec && v.is_object() ? v.get_object().if_contains("data") : nullptr;
    const auto* cost = data != nullptr && data->is_object() ? data->get_object().if_contains("total_cost") : nullptr;
    if (cost == nullptr || !cost->is_number()) continue;
    if (auto n = usd_double_to_nanousd(cost->to_number<double>()); n && *n >= 0) return n;
  }
  return std::nullopt;
}

}  // namespace ledger::proxy
