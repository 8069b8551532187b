// openrouter.cpp — the libcurl client (see openrouter.hpp).
#include "openrouter/client.hpp"

#include <curl/curl.h>

#include <boost/json.hpp>
#include <chrono>
#include <mutex>
#include <thread>

#include "core/one_line.hpp"
#include "ledger/money.hpp"

namespace ledger::openrouter {
namespace json = boost::json;

namespace {

std::once_flag g_curl_init;

struct Sink {
  std::string* body;
  size_t max;
  bool too_large = false;
};

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto* sink = static_cast<Sink*>(user);
  const size_t n = size * count;
  if (sink->body->size() + n > sink->max) {
    sink->too_large = true;
    return 0;  // abort the transfer
  }
  sink->body->append(data, n);
  return n;
}

// Aborts a transfer in progress once the cancel flag is set or the deadline passes.
int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<const Client*>(user)->remaining_ms() > 0 ? 0 : 1;
}

size_t on_header(char* data, size_t size, size_t count, void* user) {
  const size_t n = size * count;
  std::string line(data, n);
  auto* retry_after = static_cast<std::optional<uint32_t>*>(user);
  const std::string name = "retry-after:";
  if (line.size() > name.size()) {
    std::string lower = line.substr(0, name.size());
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower == name) {
      try {
        const long v = std::stol(line.substr(name.size()));
        if (v >= 0 && v < 86400) *retry_after = static_cast<uint32_t>(v);
      } catch (...) {
      }
    }
  }
  return n;
}

// A USD JSON number (or numeric string) as nano-USD; nullopt when absent, null or malformed.
std::optional<int64_t> money(const json::object& o, const char* field) {
  const json::value* v = o.if_contains(field);
  if (v == nullptr || v->is_null()) return std::nullopt;
  if (v->is_double()) return usd_double_to_nanousd(v->get_double());
  if (v->is_int64()) return usd_double_to_nanousd(static_cast<double>(v->get_int64()));
  if (v->is_uint64()) return usd_double_to_nanousd(static_cast<double>(v->get_uint64()));
  if (v->is_string()) {
    if (auto exact = parse_usd(std::string(v->get_string()))) return exact;
    try {
      return usd_double_to_nanousd(std::stod(std::string(v->get_string())));
    } catch (...) {
    }
  }
  return std::nullopt;
}

std::string text(const json::object& o, const char* field) {
  const json::value* v = o.if_contains(field);
  return v != nullptr && v->is_string() ? std::string(v->get_string()) : std::string();
}

bool parse_key(const json::value& v, KeyInfo* out) {
  if (!v.is_object()) return false;
  const auto& o = v.get_object();
  KeyInfo k;
  // The id is "hash"; older internal playbooks say "key_hash": accept both.
  k.hash = text(o, "hash");
  if (k.hash.empty()) k.hash = text(o, "key_hash");
  k.name = text(o, "name");
  k.label = text(o, "label");
  k.limit_reset = text(o, "limit_reset");
  k.created_at = text(o, "created_at");
  if (const json::value* d = o.if_contains("disabled"); d != nullptr && d->is_bool()) k.disabled = d->get_bool();
  k.limit_nanousd = money(o, "limit");
  k.limit_remaining_nanousd = money(o, "limit_remaining");
  k.usage_nanousd = money(o, "usage");
  k.usage_daily_nanousd = money(o, "usage_daily");
  k.usage_weekly_nanousd = money(o, "usage_weekly");
  k.usage_monthly_nanousd = money(o, "usage_monthly");
  *out = std::move(k);
  return true;
}

// USD per token as a decimal string -> nano-USD per million tokens, exactly.
std::optional<int64_t> per_mtok(const json::object& pricing, const char* field) {
  const std::string s = text(pricing, field);
  if (s.empty()) return std::nullopt;
  // x USD/token = x * 1e15 nano-USD per Mtok. parse_usd gives 9 decimals; scale by 1e6 more.
  const size_t dot = s.find('.');
  const std::string whole = dot == std::string::npos ? s : s.substr(0, dot);
  std::string fraction = dot == std::string::npos ? "" : s.substr(dot + 1);
  if (fraction.size() > 15 || whole.empty() || whole.size() > 3) return std::nullopt;
  for (char c : whole + fraction)
    if (c < '0' || c > '9') return std::nullopt;
  fraction.resize(15, '0');
  return std::stoll(whole) * 1'000'000'000'000'000LL + std::stoll(fraction);
}

}  // namespace

std::optional<int64_t> window_spend(const KeyInfo& key, const std::string& period) {
  if (period == "daily" && key.usage_daily_nanousd) return key.usage_daily_nanousd;
  if (period == "weekly" && key.usage_weekly_nanousd) return key.usage_weekly_nanousd;
  if (period == "monthly" && key.usage_monthly_nanousd) return key.usage_monthly_nanousd;
  if (period.empty() && key.usage_nanousd) return key.usage_nanousd;  // no period: lifetime
  if (key.limit_reset == period && key.limit_nanousd && key.limit_remaining_nanousd)
    return *key.limit_nanousd - *key.limit_remaining_nanousd;
  return std::nullopt;
}

Client::Client(ClientOptions options) : options_(std::move(options)) {
  std::call_once(g_curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  curl_ = curl_easy_init();
  jitter_state_ = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) | 1;
  while (!options_.base_url.empty() && options_.base_url.back() == '/') options_.base_url.pop_back();
}

Client::~Client() {
  if (curl_ != nullptr) curl_easy_cleanup(static_cast<CURL*>(curl_));
}

int64_t Client::remaining_ms() const {
  if (options_.cancel != nullptr && options_.cancel->load(std::memory_order_relaxed)) return 0;
  if (deadline_ == std::chrono::steady_clock::time_point::max()) return INT64_MAX;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - std::chrono::steady_clock::now()).count();
  return left > 0 ? left : 0;
}

bool Client::pause(uint64_t ms) const {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < until) {
    if (remaining_ms() == 0) return false;
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(std::chrono::milliseconds(50),
                                                                             until - std::chrono::steady_clock::now()));
  }
  return remaining_ms() > 0;
}

Error Client::perform_once(const std::string& method, const std::string& path, const std::string& body, Raw* out) {
  CURL* curl = static_cast<CURL*>(curl_);
  curl_easy_reset(curl);
  const std::string url = options_.base_url + path;
  Sink sink{&out->body, options_.response_bytes_max};
  out->body.clear();
  out->retry_after_s.reset();
  curl_slist* headers = nullptr;
  const std::string auth = "Authorization: Bearer " + options_.api_key;
  headers = curl_slist_append(headers, auth.c_str());
  headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Accept: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (!body.empty() || method == "POST" || method == "PATCH") {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  // The per-request timeout, or less when the deadline is nearer (never 0: that means "none" to curl).
  const int64_t timeout_ms = std::max<int64_t>(1, std::min<int64_t>(options_.timeout_ms, remaining_ms()));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms));
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(std::min<int64_t>(timeout_ms, 5000)));
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, this);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &out->retry_after_s);
  const CURLcode rc = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  out->status = static_cast<int>(status);
  ++status_counts_[out->status];
  Error e;
  if (rc == CURLE_ABORTED_BY_CALLBACK || (rc == CURLE_OPERATION_TIMEDOUT && remaining_ms() == 0)) {
    e.kind = ErrorKind::kCancelled;
    e.message = method + " " + path + ": stopped (the cycle's deadline passed, or the sidecar is stopping)";
  } else if (sink.too_large) {
    e.kind = ErrorKind::kTooLarge;
    e.message = "OpenRouter's response to " + method + " " + path + " is larger than " +
                std::to_string(options_.response_bytes_max) + " bytes";
  } else if (rc == CURLE_OPERATION_TIMEDOUT) {
    e.kind = ErrorKind::kTimeout;
    e.message = method + " " + path + " timed out after " + std::to_string(options_.timeout_ms) + " ms";
  } else if (rc == CURLE_PARTIAL_FILE || rc == CURLE_RECV_ERROR || rc == CURLE_GOT_NOTHING) {
    e.kind = ErrorKind::kMalformed;
    e.message = method + " " + path + ": the response was cut short (" + curl_easy_strerror(rc) + ")";
  } else if (rc != CURLE_OK) {
    e.kind = ErrorKind::kNetwork;
    e.message = method + " " + path + ": " + curl_easy_strerror(rc) + " (" + options_.base_url + ")";
  }
  return e;
}

Error classify_response(int status, std::string_view body, const std::string& key_source) {
  Error e;
  e.http_status = status;
  if (status >= 200 && status < 300) return e;
  std::string message;
  std::error_code ec;
  const json::value v = json::parse(body, ec);
  if (!ec && v.is_object())
    if (const json::value* err = v.get_object().if_contains("error"); err != nullptr && err->is_object())
      message = text(err->get_object(), "message");
  // OpenRouter's own words, at most 300 bytes of them, as one printable line.
  const std::string said = message.empty() ? "" : " (\"" + ledger::admin::one_line(message, 300) + "\")";
  switch (status) {
    case 401:
      e.kind = ErrorKind::kAuth;
      e.message = "OpenRouter refused " + key_source + said + ": it is missing, wrong, disabled or deleted; "
                  "put a valid management key there";
      break;
    case 402: {
      // 402 is credits unless OpenRouter names the key limit (metadata.limit_source).
      const bool key_limit = body.find("openrouter_key_limit") != std::string_view::npos;
      e.kind = key_limit ? ErrorKind::kKeyLimit : ErrorKind::kCredits;
      e.message = key_limit ? "OpenRouter says the key's limit is exhausted" + said
                            : "OpenRouter says the account's credits are exhausted" + said + "; add credits";
      break;
    }
    case 403:
      if (message.rfind("Key limit exceeded", 0) == 0) {
        e.kind = ErrorKind::kKeyLimit;
        e.message = "OpenRouter says the key's limit is exhausted" + said;
      } else if (message.find("management key") != std::string::npos) {
        e.kind = ErrorKind::kWrongKeyType;
        e.message = key_source + " is a normal API key, but this needs a management key" + said +
                    "; create one under Settings > Management keys (older name: provisioning keys)";
      } else {
        e.kind = ErrorKind::kForbidden;
        e.message = "OpenRouter refused the request (403)" + said;
      }
      break;
    case 404:
      e.kind = ErrorKind::kNotFound;
      e.message = "not found at OpenRouter" + said;
      break;
    case 408:
    case 429:
      e.kind = status == 429 ? ErrorKind::kRateLimited : ErrorKind::kTimeout;
      e.message = status == 429 ? "OpenRouter is rate limiting us" + said + "; backing off" : "OpenRouter timed out (408)";
      break;
    default:
      e.kind = status >= 500 ? ErrorKind::kServer : ErrorKind::kBadRequest;
      e.message = "OpenRouter answered " + std::to_string(status) + said;
  }
  return e;
}

Error Client::request(const std::string& method, const std::string& path, const std::string& body, Raw* out) {
  Error last;
  for (uint32_t attempt = 0; attempt < options_.attempts_max; ++attempt) {
    if (remaining_ms() == 0)
      return Error{ErrorKind::kCancelled, 0, method + " " + path + ": not sent (the cycle's deadline passed, or the sidecar is stopping)"};
    if (attempt > 0) {
      ++retries_;
      // Full jitter over a capped exponential, or what Retry-After asks (capped).
      uint64_t cap = std::min<uint64_t>(options_.backoff_max_ms, uint64_t{options_.backoff_initial_ms} << (attempt - 1));
      jitter_state_ ^= jitter_state_ << 13;
      jitter_state_ ^= jitter_state_ >> 7;
      jitter_state_ ^= jitter_state_ << 17;
      uint64_t wait_ms = cap == 0 ? 0 : jitter_state_ % (cap + 1);
      if (out->retry_after_s) wait_ms = std::min<uint64_t>(uint64_t{*out->retry_after_s} * 1000, options_.retry_after_max_ms);
      if (!pause(wait_ms)) {
        last.kind = ErrorKind::kCancelled;
        last.message += " (stopped waiting to retry: the cycle's deadline passed, or the sidecar is stopping)";
        return last;
      }
    }
    last = perform_once(method, path, body, out);
    if (!last) {
      last = classify_response(out->status, out->body, options_.key_source);
      if (!last) {
        // A 2xx must carry JSON; a truncated or malformed one is retried like a network fault.
        std::error_code ec;
        (void)json::parse(out->body, ec);
        if (!ec) return last;
        last.kind = ErrorKind::kMalformed;
        last.http_status = out->status;
        last.message = method + " " + path + ": OpenRouter's response is not valid JSON (" + ec.message() + ")";
      }
    }
    const bool transient = last.kind == ErrorKind::kNetwork || last.kind == ErrorKind::kTimeout ||
                           last.kind == ErrorKind::kRateLimited || last.kind == ErrorKind::kServer ||
                           last.kind == ErrorKind::kMalformed;
    if (!transient) return last;
  }
  last.message += " (gave up after " + std::to_string(options_.attempts_max) + " attempts)";
  return last;
}

namespace {
// The body as JSON (a Client has already refused a 2xx that is not JSON, so only a direct caller
// of the parsers sees this error).
bool parse_json(std::string_view body, const char* what, json::value* out, Error* error) {
  std::error_code ec;
  *out = json::parse(body, ec);
  if (!ec) return true;
  *error = Error{ErrorKind::kMalformed, 0, std::string(what) + ": OpenRouter's response is not valid JSON (" + ec.message() + ")"};
  return false;
}
const json::value* data_of(const json::value& v) { return v.is_object() ? v.get_object().if_contains("data") : nullptr; }
// The response's status on a parser's error (the parsers do not know it).
Error with_status(Error e, int status) {
  if (e) e.http_status = status;
  return e;
}
}  // namespace

Error parse_keys_page(std::string_view body, std::vector<KeyInfo>* out, size_t* entries) {
  *entries = 0;
  json::value v;
  Error e;
  if (!parse_json(body, "GET /keys", &v, &e)) return e;
  const json::value* data = data_of(v);
  if (data == nullptr || !data->is_array()) return Error{ErrorKind::kMalformed, 0, "GET /keys: no \"data\" array"};
  for (const auto& item : data->get_array()) {
    KeyInfo k;
    if (parse_key(item, &k) && !k.hash.empty()) out->push_back(std::move(k));
  }
  *entries = data->get_array().size();
  return Error{};
}

Error parse_key_response(std::string_view body, const char* what, KeyInfo* out) {
  json::value v;
  Error e;
  if (!parse_json(body, what, &v, &e)) return e;
  const json::value* data = data_of(v);
  if (data == nullptr || !parse_key(*data, out) || out->hash.empty())
    return Error{ErrorKind::kMalformed, 0, std::string(what) + ": no key object in the response"};
  return Error{};
}

Error parse_created_key(std::string_view body, KeyInfo* out, std::string* secret) {
  if (Error e = parse_key_response(body, "POST /keys", out)) return e;
  json::value v;
  Error e;
  if (!parse_json(body, "POST /keys", &v, &e)) return e;
  *secret = text(v.get_object(), "key");  // an object: parse_key_response found its "data"
  if (secret->empty()) return Error{ErrorKind::kMalformed, 0, "POST /keys: the new key is missing from the response"};
  return Error{};
}

Error parse_current_key(std::string_view body, KeyInfo* out, bool* is_management) {
  json::value v;
  Error e;
  if (!parse_json(body, "GET /key", &v, &e)) return e;
  const json::value* data = data_of(v);
  if (data == nullptr || !parse_key(*data, out)) return Error{ErrorKind::kMalformed, 0, "GET /key: no key object"};
  const auto& o = data->get_object();
  const json::value* m = o.if_contains("is_management_key");
  if (m == nullptr || !m->is_bool()) m = o.if_contains("is_provisioning_key");  // the older name
  *is_management = m != nullptr && m->is_bool() && m->get_bool();
  return Error{};
}

Error parse_credits(std::string_view body, int64_t* total, int64_t* usage) {
  json::value v;
  Error e;
  if (!parse_json(body, "GET /credits", &v, &e)) return e;
  const json::value* data = data_of(v);
  if (data == nullptr || !data->is_object()) return Error{ErrorKind::kMalformed, 0, "GET /credits: no data"};
  const auto t = money(data->get_object(), "total_credits");
  const auto u = money(data->get_object(), "total_usage");
  if (!t || !u) return Error{ErrorKind::kMalformed, 0, "GET /credits: total_credits or total_usage missing"};
  *total = *t;
  *usage = *u;
  return Error{};
}

Error parse_models(std::string_view body, std::vector<ModelInfo>* out) {
  json::value v;
  Error e;
  if (!parse_json(body, "GET /models", &v, &e)) return e;
  const json::value* data = data_of(v);
  if (data == nullptr || !data->is_array()) return Error{ErrorKind::kMalformed, 0, "GET /models: no data array"};
  for (const auto& item : data->get_array()) {
    if (!item.is_object()) continue;
    ModelInfo m;
    m.id = text(item.get_object(), "id");
    if (const json::value* p = item.get_object().if_contains("pricing"); p != nullptr && p->is_object()) {
      m.prompt_nanousd_per_mtok = per_mtok(p->get_object(), "prompt");
      m.completion_nanousd_per_mtok = per_mtok(p->get_object(), "completion");
      m.request_nanousd = money(p->get_object(), "request");
    }
    if (!m.id.empty()) out->push_back(std::move(m));
  }
  return Error{};
}

Error Client::list_keys(std::vector<KeyInfo>* out) {
  out->clear();
  for (uint32_t page = 0; page < options_.key_pages_max; ++page) {
    Raw raw;
    Error e = request("GET", "/keys?include_disabled=true&offset=" + std::to_string(page * 100), "", &raw);
    if (e) return e;
    size_t entries = 0;
    e = parse_keys_page(raw.body, out, &entries);
    if (e) return with_status(e, raw.status);
    if (entries < 100) return Error{};
  }
  return Error{ErrorKind::kTooLarge, 0, "more than " + std::to_string(options_.key_pages_max * 100) + " keys"};
}

namespace {
std::string limit_json(std::optional<int64_t> limit_nanousd) {
  return limit_nanousd ? format_usd(*limit_nanousd) : std::string("null");
}
}  // namespace

Error Client::get_key(const std::string& hash, KeyInfo* out) {
  Raw raw;
  if (Error e = request("GET", "/keys/" + hash, "", &raw)) return e;
  return with_status(parse_key_response(raw.body, "GET /keys/{hash}", out), raw.status);
}

Error Client::create_key(const std::string& name, std::optional<int64_t> limit_nanousd, const std::string& reset,
                         KeyInfo* out, std::string* secret) {
  json::object body{{"name", name}};
  std::string text_body = json::serialize(body);
  text_body.pop_back();
  text_body += ",\"limit\":" + limit_json(limit_nanousd);
  text_body += reset.empty() ? "}" : ",\"limit_reset\":\"" + reset + "\"}";
  Raw raw;
  if (Error e = request("POST", "/keys", text_body, &raw)) return e;
  return with_status(parse_created_key(raw.body, out, secret), raw.status);
}

Error Client::set_limit(const std::string& hash, std::optional<int64_t> limit_nanousd, const std::string& reset, KeyInfo* out) {
  const std::string body = "{\"limit\":" + limit_json(limit_nanousd) + ",\"limit_reset\":" +
                           (reset.empty() ? std::string("null") : "\"" + reset + "\"") + "}";
  Raw raw;
  if (Error e = request("PATCH", "/keys/" + hash, body, &raw)) return e;
  return with_status(parse_key_response(raw.body, "PATCH /keys/{hash}", out), raw.status);
}

Error Client::set_disabled(const std::string& hash, bool disabled, KeyInfo* out) {
  Raw raw;
  if (Error e = request("PATCH", "/keys/" + hash, disabled ? "{\"disabled\":true}" : "{\"disabled\":false}", &raw)) return e;
  return with_status(parse_key_response(raw.body, "PATCH /keys/{hash}", out), raw.status);
}

Error Client::rename(const std::string& hash, const std::string& name, KeyInfo* out) {
  Raw raw;
  if (Error e = request("PATCH", "/keys/" + hash, json::serialize(json::object{{"name", name}}), &raw)) return e;
  return with_status(parse_key_response(raw.body, "PATCH /keys/{hash}", out), raw.status);
}

Error Client::delete_key(const std::string& hash) {
  Raw raw;
  return request("DELETE", "/keys/" + hash, "", &raw);
}

Error Client::current_key(KeyInfo* out, bool* is_management) {
  Raw raw;
  if (Error e = request("GET", "/key", "", &raw)) return e;
  return with_status(parse_current_key(raw.body, out, is_management), raw.status);
}

Error Client::credits(int64_t* total, int64_t* usage) {
  Raw raw;
  if (Error e = request("GET", "/credits", "", &raw)) return e;
  return with_status(parse_credits(raw.body, total, usage), raw.status);
}

Error Client::models(std::vector<ModelInfo>* out) {
  out->clear();
  Raw raw;
  if (Error e = request("GET", "/models", "", &raw)) return e;
  return with_status(parse_models(raw.body, out), raw.status);
}

}  // namespace ledger::openrouter
