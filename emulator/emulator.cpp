// emulator.cpp — request handling and state of the OpenRouter emulator (see emulator.hpp).
#include "emulator.hpp"

#include <time.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <random>

#include "json_out.hpp"
#include "ledger/money.hpp"
#include "ledger/period.hpp"

namespace emulator {
namespace json = boost::json;
using namespace detail;

namespace {

int64_t system_now_ms() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

std::string random_hex(std::mt19937_64& rng, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) s.push_back(digits[rng() % 16]);
  return s;
}

std::map<std::string, std::string> parse_query(const std::string& q) {
  std::map<std::string, std::string> out;
  size_t at = 0;
  while (at < q.size()) {
    const size_t amp = q.find('&', at);
    const std::string part = q.substr(at, amp == std::string::npos ? std::string::npos : amp - at);
    const size_t eq = part.find('=');
    out[part.substr(0, eq)] = eq == std::string::npos ? "" : part.substr(eq + 1);
    if (amp == std::string::npos) break;
    at = amp + 1;
  }
  return out;
}

// USD amount from a JSON number or decimal string into nano-USD; nullopt when malformed.
std::optional<int64_t> usd_from_json(const json::value& v) {
  if (v.is_string()) return ledger::parse_usd(std::string(v.get_string()));
  if (v.is_int64()) return ledger::usd_double_to_nanousd(static_cast<double>(v.get_int64()));
  if (v.is_uint64()) return ledger::usd_double_to_nanousd(static_cast<double>(v.get_uint64()));
  if (v.is_double()) return ledger::usd_double_to_nanousd(v.get_double());
  return std::nullopt;
}

// USD per token as OpenRouter lists it: a decimal string ("0.00000015") from nano-USD per Mtok.
std::string per_token(int64_t nanousd_per_mtok) {
  // USD per token = nanousd_per_mtok / 1e15: print with 15 decimals, then trim.
  const int64_t whole = nanousd_per_mtok / 1'000'000'000'000'000;
  const int64_t fraction = nanousd_per_mtok % 1'000'000'000'000'000;
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%lld.%015lld", static_cast<long long>(whole), static_cast<long long>(fraction));
  std::string s = buffer;
  while (!s.empty() && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

}  // namespace

std::string usd_number(int64_t nanousd) {
  std::string s = ledger::format_usd(nanousd);  // at least two decimals
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s;
}

Emulator::Emulator(std::string management_key, int64_t (*now_ms)()) : now_ms_(now_ms != nullptr ? now_ms : system_now_ms) {
  Key k;
  k.management = true;
  k.secret = std::move(management_key);
  k.name = "management";
  std::mt19937_64 rng(42);
  k.hash = random_hex(rng, 64);
  k.label = k.secret.substr(0, 12) + "..." + k.secret.substr(k.secret.size() - 4);
  k.created_at = now_iso();
  k.created_seq = next_seq_++;
  keys_.push_back(std::move(k));
  // Prices in nano-USD per million tokens (prompt, completion) and per request.
  models_ = {
      {"openai/gpt-4o-mini", 150'000'000, 600'000'000, 0},
      {"openai/gpt-4o", 2'500'000'000, 10'000'000'000, 0},
      {"anthropic/claude-3.5-sonnet", 3'000'000'000, 15'000'000'000, 0},
      {"meta-llama/llama-3.1-8b-instruct", 20'000'000, 50'000'000, 0},
      {"google/gemma-2-9b-it:free", 0, 0, 0},
      {"openai/text-embedding-3-small", 20'000'000, 0, 0},
  };
}

std::string Emulator::now_iso() const {
  const int64_t ms = now_ms_();
  const ledger::CivilDate d = ledger::civil_from_days(ms / 86'400'000);
  const int64_t in_day = (ms % 86'400'000) / 1000;
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%04d-%02u-%02uT%02lld:%02lld:%02lldZ", d.year, d.month, d.day,
                static_cast<long long>(in_day / 3600), static_cast<long long>(in_day / 60 % 60),
                static_cast<long long>(in_day % 60));
  return buffer;
}

void Emulator::roll_windows(Key& key, int64_t now_ms) {
  const int64_t s = now_ms / 1000;
  const int64_t day = ledger::period_index(ledger::Period::kDaily, s);
  const int64_t week = ledger::period_index(ledger::Period::kWeekly, s);
  const int64_t month = ledger::period_index(ledger::Period::kMonthly, s);
  if (key.day_index != day) key.usage_daily = 0, key.day_index = day;
  if (key.week_index != week) key.usage_weekly = 0, key.week_index = week;
  if (key.month_index != month) key.usage_monthly = 0, key.month_index = month;
}

void Emulator::charge(Key& key, int64_t nanousd) {
  roll_windows(key, now_ms_());
  key.usage += nanousd;
  key.usage_daily += nanousd;
  key.usage_weekly += nanousd;
  key.usage_monthly += nanousd;
}

int64_t Emulator::window_usage(const Key& key) const {
  if (key.limit_reset == "daily") return key.usage_daily;
  if (key.limit_reset == "weekly") return key.usage_weekly;
  if (key.limit_reset == "monthly") return key.usage_monthly;
  return key.usage;
}

std::string Emulator::key_json(const Key& key, bool newer_fields) const {
  json::object o;
  o["hash"] = key.hash;
  o["name"] = key.name;
  o["label"] = key.label;
  o["disabled"] = key.disabled;
  if (key.limit) o["limit"] = money(*key.limit);
  else o["limit"] = nullptr;
  o["usage"] = money(key.usage);
  o["created_at"] = key.created_at;
  if (key.updated_at.empty()) o["updated_at"] = nullptr;
  else o["updated_at"] = key.updated_at;
  if (newer_fields) {
    if (key.limit) o["limit_remaining"] = money(*key.limit - window_usage(key));
    else o["limit_remaining"] = nullptr;
    if (key.limit_reset.empty()) o["limit_reset"] = nullptr;
    else o["limit_reset"] = key.limit_reset;
    o["include_byok_in_limit"] = false;
    o["usage_daily"] = money(key.usage_daily);
    o["usage_weekly"] = money(key.usage_weekly);
    o["usage_monthly"] = money(key.usage_monthly);
    o["byok_usage"] = 0;
    o["creator_user_id"] = nullptr;
    o["workspace_id"] = "00000000-0000-4000-8000-000000000000";
  }
  if (extra_fields_) o["x_emulator_unknown_field"] = json::object{{"nested", true}};
  return finish_json(o);
}

Emulator::Key* Emulator::authenticate(const Request& request, Response* out) {
  if (request.authorization.rfind("Bearer ", 0) != 0 || request.authorization.size() <= 7) {
    *out = error(401, "No auth credentials found", "authentication");
    return nullptr;
  }
  const std::string secret = request.authorization.substr(7);
  for (Key& k : keys_)
    if (k.secret == secret) {
      if (k.disabled) break;
      return &k;
    }
  *out = error(401, "User not found.", "authentication");
  return nullptr;
}

Response Emulator::handle(const Request& request) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_served_;
  const size_t q = request.target.find('?');
  std::string path = request.target.substr(0, q);
  const auto query = parse_query(q == std::string::npos ? "" : request.target.substr(q + 1));
  if (path.size() > 1 && path.back() == '/') path.pop_back();
  if (path.rfind("/__emulator/", 0) == 0) return admin(request, path);
  // Injected faults, by path prefix (and method when given).
  for (auto it = faults_.begin(); it != faults_.end(); ++it) {
    if (path.rfind(it->path_prefix, 0) != 0 || (!it->method.empty() && it->method != request.method)) continue;
    Fault f = *it;
    if (--it->count <= 0) faults_.erase(it);
    Response r = f.status != 0 ? error(f.status, f.status == 429 ? "Rate limit exceeded" : "Injected fault " + std::to_string(f.status),
                                       f.status == 429 ? "rate_limit_exceeded" : "server")
                               : route(request, path, query);
    if (f.retry_after_s >= 0) r.headers.emplace_back("Retry-After", std::to_string(f.retry_after_s));
    r.delay_ms = f.delay_ms;
    if (f.body == "malformed") r.body = "{\"data\": [ {\"hash\": \"abc\", oops";
    if (f.body == "truncated") r.truncate = true;
    if (r.stream && !r.events.empty()) {
      // A stream is cut mid-way (no usage chunk, no [DONE], no last HTTP chunk), or one of its
      // chunks in the middle is not JSON. The generation stays recorded with its real cost.
      if (f.body == "malformed") r.events[r.events.size() / 2].data = "data: {\"id\": oops\n\n";
      if (f.body == "truncated") r.events.resize(r.events.size() / 2);
    }
    return r;
  }
  return route(request, path, query);
}

Response Emulator::route(const Request& request, const std::string& path, const std::map<std::string, std::string>& query) {
  const std::string base = "/api/v1";
  if (path.rfind(base, 0) != 0) return error(404, "Resource not found", "not_found");
  const std::string p = path.substr(base.size());
  const std::string& m = request.method;
  Response auth_error;
  Key* caller = authenticate(request, &auth_error);
  if (caller == nullptr) return auth_error;
  if ((p == "/key" || p == "/auth/key") && m == "GET") return current_key(*caller);
  if ((p == "/chat/completions" || p == "/completions" || p == "/embeddings") && m == "POST") {
    if (caller->management) return error(401, "Management keys cannot be used for completions", "authentication");
    return completion(*caller, request, p == "/chat/completions" ? Kind::kChat : p == "/completions" ? Kind::kText : Kind::kEmbedding);
  }
  if (p == "/models" && m == "GET") return models();
  if (p == "/generation" && m == "GET") return generation(query.count("id") ? query.at("id") : "");
  // Everything below is for management keys only.
  const bool admin_path = p == "/keys" || p.rfind("/keys/", 0) == 0 || p == "/credits";
  if (!admin_path) return error(404, "Resource not found", "not_found");
  if (!caller->management) return error(403, "Only management keys can perform this operation", "permission_denied");
  if (p == "/credits" && m == "GET") return credits();
  if (p == "/keys" && m == "GET") return list_keys(query);
  if (p == "/keys" && m == "POST") return create_key(request);
  if (p.rfind("/keys/", 0) == 0) return one_key(request, p.substr(6));
  return error(405, "Method not allowed");
}

Response Emulator::current_key(Key& caller) {
  roll_windows(caller, now_ms_());
  json::value data = json::parse(key_json(caller, !omit_newer_fields_));
  data.as_object()["is_management_key"] = caller.management;
  data.as_object()["is_provisioning_key"] = caller.management;
  data.as_object()["is_free_tier"] = false;
  return Response{200, finish_json(json::object{{"data", data}}), {}, 0, false};
}

Response Emulator::models() const {
  json::array data;
  for (const auto& model : models_) {
    json::object pricing{{"prompt", per_token(model.prompt_nanousd_per_mtok)},
                         {"completion", per_token(model.completion_nanousd_per_mtok)},
                         {"request", usd_number(model.request_nanousd)},
                         {"image", "0"}};
    data.push_back(json::object{{"id", model.id}, {"name", model.id}, {"pricing", std::move(pricing)}, {"context_length", 128000}});
  }
  return Response{200, finish_json(json::object{{"data", std::move(data)}}), {}, 0, false};
}

Response Emulator::generation(const std::string& id) const {
  const auto it = generations_.find(id);
  if (it == generations_.end() || now_ms_() - it->second.created_ms < generation_not_ready_ms_)
    return error(404, "Resource not found", "not_found");
  const Generation& g = it->second;
  json::object data{{"id", g.id}, {"model", g.model}, {"total_cost", money(g.cost)},
                    {"tokens_prompt", g.prompt_tokens}, {"tokens_completion", g.completion_tokens},
                    {"external_user", g.user}, {"http_referer", g.http_referer}, {"streamed", g.streamed},
                    {"cancelled", false}};
  return Response{200, finish_json(json::object{{"data", std::move(data)}}), {}, 0, false};
}

Response Emulator::credits() const {
  int64_t used = 0;
  for (const auto& k : keys_) used += k.usage;
  json::object data{{"total_credits", money(credits_total_)}, {"total_usage", money(used)}};
  return Response{200, finish_json(json::object{{"data", std::move(data)}}), {}, 0, false};
}

// GET /keys: one page of the non-management keys, most recent first.
Response Emulator::list_keys(const std::map<std::string, std::string>& query) {
  const bool include_disabled = query.count("include_disabled") && query.at("include_disabled") == "true";
  long offset = 0;
  if (query.count("offset")) {
    try {
      offset = std::stol(query.at("offset"));
    } catch (...) {
      offset = -1;
    }
    if (offset < 0) return error(400, "offset must be a non-negative integer");
  }
  std::vector<Key*> visible;
  for (auto it = keys_.rbegin(); it != keys_.rend(); ++it)
    if (!it->management && (include_disabled || !it->disabled)) visible.push_back(&*it);
  std::string body = "{\"data\":[";
  for (size_t i = static_cast<size_t>(offset), n = 0; i < visible.size() && n < static_cast<size_t>(page_size_); ++i, ++n) {
    if (n) body += ',';
    roll_windows(*visible[i], now_ms_());
    body += key_json(*visible[i], !omit_newer_fields_);
  }
  body += "]}";
  return Response{200, body, {}, 0, false};
}

Response Emulator::create_key(const Request& request) {
  std::error_code ec;
  json::value v = json::parse(request.body, ec);
  if (ec || !v.is_object()) return error(400, "Invalid JSON body");
  const auto& o = v.get_object();
  const json::value* name = o.if_contains("name");
  if (name == nullptr || !name->is_string() || name->get_string().empty()) return error(400, "name is required");
  Key k;
  k.name = std::string(name->get_string());
  if (const json::value* limit = o.if_contains("limit"); limit != nullptr && !limit->is_null()) {
    const auto nanos = usd_from_json(*limit);
    if (!nanos || *nanos < 0) return error(400, "limit must be a non-negative number");
    k.limit = *nanos;
  }
  if (const json::value* reset = o.if_contains("limit_reset"); reset != nullptr && !reset->is_null()) {
    const std::string r = reset->is_string() ? std::string(reset->get_string()) : "";
    if (r != "daily" && r != "weekly" && r != "monthly") return error(400, "limit_reset must be daily, weekly or monthly");
    k.limit_reset = r;
  }
  std::mt19937_64 rng(static_cast<uint64_t>(next_seq_) * 0x9E3779B97F4A7C15ULL ^ static_cast<uint64_t>(now_ms_()));
  k.secret = "sk-or-v1-" + random_hex(rng, 64);
  k.hash = random_hex(rng, 64);
  k.label = k.secret.substr(0, 12) + "..." + k.secret.substr(k.secret.size() - 4);
  k.created_at = now_iso();
  k.created_seq = next_seq_++;
  roll_windows(k, now_ms_());
  const std::string body = "{\"data\":" + key_json(k, !omit_newer_fields_) + ",\"key\":\"" + k.secret + "\"}";
  keys_.push_back(std::move(k));
  return Response{201, body, {}, 0, false};
}

// GET, DELETE or PATCH /keys/<hash>.
Response Emulator::one_key(const Request& request, const std::string& hash) {
  Key* key = nullptr;
  for (Key& k : keys_)
    if (k.hash == hash && !k.management) key = &k;
  if (key == nullptr) return error(404, "Resource not found", "not_found");
  roll_windows(*key, now_ms_());
  if (request.method == "GET") return Response{200, "{\"data\":" + key_json(*key, !omit_newer_fields_) + "}", {}, 0, false};
  if (request.method == "DELETE") {
    keys_.erase(keys_.begin() + (key - keys_.data()));
    return Response{200, "{\"deleted\":true}", {}, 0, false};
  }
  if (request.method == "PATCH") return patch_key(*key, request.body);
  return error(405, "Method not allowed");
}

// PATCH /keys/<hash>: name, disabled, limit, limit_reset (include_byok_in_limit accepted, ignored).
Response Emulator::patch_key(Key& key, const std::string& body) {
  std::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec || !v.is_object()) return error(400, "Invalid JSON body");
  for (const auto& [field, value] : v.get_object()) {
    if (field == "name" && value.is_string()) key.name = std::string(value.get_string());
    else if (field == "disabled" && value.is_bool()) key.disabled = value.get_bool();
    else if (field == "limit") {
      if (value.is_null()) key.limit.reset();
      else if (const auto nanos = usd_from_json(value); nanos && *nanos >= 0) key.limit = *nanos;
      else return error(400, "limit must be a non-negative number or null");
    } else if (field == "limit_reset") {
      const std::string r = value.is_string() ? std::string(value.get_string()) : "";
      if (!value.is_null() && r != "daily" && r != "weekly" && r != "monthly")
        return error(400, "limit_reset must be daily, weekly, monthly or null");
      key.limit_reset = r;
    } else if (field == "include_byok_in_limit" && value.is_bool()) {
    } else {
      return error(400, "cannot update field \"" + std::string(field) + "\"");
    }
  }
  key.updated_at = now_iso();
  return Response{200, "{\"data\":" + key_json(key, !omit_newer_fields_) + "}", {}, 0, false};
}

Response Emulator::admin(const Request& request, const std::string& path) {
  std::error_code ec;
  json::value v = request.body.empty() ? json::value(json::object{}) : json::parse(request.body, ec);
  if (ec || !v.is_object()) return error(400, "Invalid JSON body");
  const auto& o = v.get_object();
  auto integer = [&](const char* name, int64_t fallback) {
    const json::value* x = o.if_contains(name);
    return x != nullptr && x->is_int64() ? x->get_int64() : fallback;
  };
  auto text = [&](const char* name) {
    const json::value* x = o.if_contains(name);
    return x != nullptr && x->is_string() ? std::string(x->get_string()) : std::string();
  };
  if (path == "/__emulator/faults" && request.method == "POST") {
    Fault f;
    f.path_prefix = text("path");
    f.method = text("method");
    f.status = static_cast<int>(integer("status", 0));
    f.count = static_cast<int>(integer("count", 1));
    f.retry_after_s = static_cast<int>(integer("retry_after_s", -1));
    f.delay_ms = static_cast<int>(integer("delay_ms", 0));
    f.body = text("body");
    if (f.path_prefix.empty() || f.count < 1 || f.delay_ms < 0 || f.delay_ms > 600000 ||
        (f.body != "" && f.body != "truncated" && f.body != "malformed"))
      return error(400, "fault: path (prefix), count >= 1, status, retry_after_s, delay_ms, body truncated|malformed");
    faults_.push_back(f);
    return Response{200, "{\"ok\":true}", {}, 0, false};
  }
  if (path == "/__emulator/settings" && request.method == "POST") {
    page_size_ = static_cast<int>(std::clamp<int64_t>(integer("page_size", page_size_), 1, 1000));
    limit_exceeded_status_ = integer("limit_exceeded_status", limit_exceeded_status_) == 403 ? 403 : 402;
    generation_not_ready_ms_ = static_cast<int>(integer("generation_not_ready_ms", generation_not_ready_ms_));
    // Streaming pace: time to first token and tokens per second (0 = as fast as possible).
    ttft_ms_ = std::clamp<int64_t>(integer("ttft_ms", ttft_ms_), 0, 600'000);
    if (const json::value* x = o.if_contains("tokens_per_second"); x && (x->is_number()))
      tokens_per_second_ = std::clamp(x->to_number<double>(), 0.0, 1e6);
    if (const json::value* x = o.if_contains("omit_newer_fields"); x && x->is_bool()) omit_newer_fields_ = x->get_bool();
    if (const json::value* x = o.if_contains("extra_fields"); x && x->is_bool()) extra_fields_ = x->get_bool();
    generations_kept_ = static_cast<size_t>(std::clamp<int64_t>(integer("generations_kept", static_cast<int64_t>(generations_kept_)), 1, 10'000'000));
    return Response{200, "{\"ok\":true}", {}, 0, false};
  }
  if (path == "/__emulator/usage" && request.method == "POST") {
    // Spend on a key that no completion through us shows (a worker bypassing the ledger).
    const std::string hash = text("hash");
    const json::value* cost = o.if_contains("cost_usd");
    const auto nanos = cost != nullptr ? usd_from_json(*cost) : std::nullopt;
    for (Key& k : keys_)
      if (k.hash == hash && nanos && *nanos >= 0) {
        charge(k, *nanos);
        return Response{200, "{\"ok\":true}", {}, 0, false};
      }
    return error(400, "usage: hash of an existing key and cost_usd >= 0");
  }
  if (path == "/__emulator/state" && request.method == "GET") {
    json::object state{{"keys", static_cast<int64_t>(keys_.size()) - 1}, {"faults_pending", static_cast<int64_t>(faults_.size())},
                       {"requests_served", requests_served_}, {"generations", static_cast<int64_t>(generations_.size())}};
    return Response{200, finish_json(state), {}, 0, false};
  }
  return error(404, "Resource not found", "not_found");
}

}  // namespace emulator
