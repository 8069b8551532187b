// proxy.cpp — see proxy.hpp.
#include "proxy.hpp"

#include <boost/json.hpp>

#include "core/admin.hpp"
#include "ledger/money.hpp"
#include "metrics.hpp"

namespace ledger::proxy {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kGenerationAttempts = 10;       // /generation?id= lookups, 1 s apart
constexpr uint32_t kGenerationIntervalMs = 1000;
constexpr size_t kSseLineMax = 1u << 20;      // one event of a stream; a longer one is not parsed

int64_t us_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::microseconds>(b - a).count();
}

std::string error_body(const std::string& message, const char* type, const char* code) {
  return json::serialize(json::object{{"error", json::object{{"message", message}, {"type", type}, {"code", code}}}});
}

// Answers with an OpenAI-shaped error; the outcome says which.
Outcome& refuse(Outcome& o, Client& client, int status, const char* type, const char* code, const std::string& message,
                Headers headers = {}) {
  headers.emplace_back("Content-Type", "application/json");
  o.status = status;
  o.code = code;
  (void)client.send(status, headers, error_body(message, type, code));
  return o;
}

// A model id or account id as the ledger takes them: visible ASCII, no space (so also safe in a log line).
bool printable(const std::string& text) {
  for (const char ch : text)
    if (ch <= ' ' || ch > '~') return false;
  return true;
}

struct ChatRequest {
  json::object body;
  std::string model, user;
  bool stream = false;
  uint32_t max_tokens = 0;  // 0 = not given
};

// The fields the proxy reads, with their types checked; *error names the first one that is wrong.
bool read_chat(const std::string& text, ChatRequest* c, std::string* error) {
  json::parse_options options;
  options.max_depth = 64;
  std::error_code ec;
  json::value v = json::parse(text, ec, {}, options);
  if (ec || !v.is_object()) {
    *error = ec ? "the body is not valid JSON: " + ec.message() : "the body must be a JSON object";
    return false;
  }
  c->body = std::move(v.get_object());
  const json::value* model = c->body.if_contains("model");
  if (model == nullptr || !model->is_string() || model->get_string().empty()) {
    *error = "\"model\" is required: a model id such as \"openai/gpt-4o-mini\"";
    return false;
  }
  c->model = std::string(model->get_string());
  if (c->model.size() > kModelIdMax || !printable(c->model)) {
    *error = "\"model\" must be a model id of at most " + std::to_string(kModelIdMax) + " printable characters without spaces";
    return false;
  }
  if (const json::value* m = c->body.if_contains("messages"); m == nullptr || !m->is_array()) {
    *error = "\"messages\" is required: an array of messages";
    return false;
  }
  if (const json::value* s = c->body.if_contains("stream"); s != nullptr && !s->is_null()) {
    if (!s->is_bool()) return *error = "\"stream\" must be true or false", false;
    c->stream = s->get_bool();
  }
  if (const json::value* u = c->body.if_contains("user"); u != nullptr && !u->is_null()) {
    if (!u->is_string() || !valid_account_name(std::string_view(u->get_string())))
      return *error = "\"user\" must be an account id (1-63 characters of [A-Za-z0-9._:@-])", false;
    c->user = std::string(u->get_string());
  }
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    const json::value* t = c->body.if_contains(name);
    if (t == nullptr || t->is_null()) continue;
    if (!t->is_int64() || t->get_int64() < 1 || t->get_int64() > 10'000'000)
      return *error = std::string("\"") + name + "\" must be a positive integer", false;
    c->max_tokens = std::max(c->max_tokens, static_cast<uint32_t>(t->get_int64()));
  }
  return true;
}

// True when `user` is `account` or one of its descendants in the config.
bool in_subtree(const admin::Config& config, const std::string& account, const std::string& user) {
  std::string at = user;
  for (int depth = 0; depth < 8 && !at.empty(); ++depth) {
    if (at == account) return true;
    std::string parent;
    bool found = false;
    for (const auto& a : config.accounts)
      if (a.id == at) parent = a.parent, found = true;
    if (!found) return false;
    at = parent;
  }
  return false;
}

// The estimate of `model` (0 when it has no price: authorize then says which model has none).
int64_t estimate_of(Ledger& ledger, const std::string& model, uint32_t prompt_tokens, uint32_t max_tokens) {
  int64_t e = 0;
  return ledger.estimate(model, prompt_tokens, max_tokens, &e).ok() ? e : 0;
}

// authorize() with an upper bound of the request's cost; when the model it chose (a fallback or a
// downgrade) costs more than the one asked for, the hold is taken again at the chosen model's bound.
Hold take_hold(Ledger& ledger, const std::string& account, const std::string& model, uint32_t prompt_tokens, uint32_t max_tokens,
               uint32_t ttl_s) {
  Hold h;
  h.amount = estimate_of(ledger, model, prompt_tokens, max_tokens);
  std::string_view chosen;
  h.status = ledger.authorize(account, model, h.amount, ttl_s, &chosen, &h.id, 255);
  h.chosen = std::string(chosen);
  if (!h.status.ok() || h.chosen == model) return h;
  const int64_t bound = estimate_of(ledger, h.chosen, prompt_tokens, max_tokens);
  if (bound <= h.amount) return h;
  (void)ledger.release(h.id);
  h.amount = bound;
  h.status = ledger.authorize(account, h.chosen, h.amount, ttl_s, &chosen, &h.id, 255);
  h.chosen = std::string(chosen);
  return h;
}

// A denied authorize() as the error an OpenAI SDK understands.
Outcome& refuse_hold(Outcome& o, Client& client, const Hold& h, const std::string& account, const std::string& model) {
  const Headers no_retry{{"x-should-retry", "false"}};
  switch (h.status.code()) {
    case Code::kDeniedOverBudget:
      return refuse(o, client, 429, "insufficient_quota", "budget_exceeded", "account \"" + account + "\" is over its budget", no_retry);
    case Code::kDeniedParentOverBudget:
      return refuse(o, client, 429, "insufficient_quota", "parent_budget_exceeded",
                    "a budget above account \"" + account + "\" (its team or org) is exhausted", no_retry);
    case Code::kDeniedModel:
      return refuse(o, client, 403, "permission_error", "model_not_allowed",
                    "model \"" + model + "\" is not allowed for account \"" + account + "\" (its tier) and the tier has no fallback");
    case Code::kDeniedBlocked:
      return refuse(o, client, 403, "permission_error", "account_blocked", "account \"" + account + "\" (or an ancestor) is blocked");
    case Code::kUnknownModel:
      return refuse(o, client, 400, "invalid_request_error", "model_not_priced",
                    "model \"" + h.chosen + "\" has no price in the ledger (ledgerctl init loads OpenRouter's prices)");
    case Code::kInvalidArgument:
      return refuse(o, client, 400, "invalid_request_error", "invalid_request", "the ledger refused the request's model or account");
    case Code::kUnknownAccount:
      return refuse(o, client, 401, "invalid_request_error", "invalid_api_key", "the key's account is not in the ledger");
    default:
      return refuse(o, client, 503, "server_error", "ledger_unavailable", "the ledger refused the hold: " + std::string(h.status.message()));
  }
}

// The body sent upstream: the chosen model, a max_tokens when there was none (the hold's bound),
// usage asked for, and `user` set to the account the request is charged to.
std::string upstream_body(ChatRequest& c, const std::string& chosen, const std::string& account, uint32_t max_tokens_default) {
  c.body["model"] = chosen;
  if (c.max_tokens == 0) c.body["max_tokens"] = max_tokens_default;
  c.body["usage"] = json::object{{"include", true}};
  if (c.stream) c.body["stream_options"] = json::object{{"include_usage", true}};
  c.body["user"] = account;
  return json::serialize(c.body);
}

// usage.cost of a reply or of a stream's last chunk, nano-USD; nullopt when absent.
std::optional<int64_t> usage_cost(const json::value& v) {
  const json::object* o = v.if_object();
  const json::value* usage = o != nullptr ? o->if_contains("usage") : nullptr;
  const json::value* cost = usage != nullptr && usage->is_object() ? usage->get_object().if_contains("cost") : nullptr;
  if (cost == nullptr || !cost->is_number()) return std::nullopt;
  auto n = usd_double_to_nanousd(cost->to_number<double>());
  return n && *n >= 0 ? n : std::nullopt;
}

std::string id_of(const json::value& v) {
  const json::object* o = v.if_object();
  const json::value* id = o != nullptr ? o->if_contains("id") : nullptr;
  return id != nullptr && id->is_string() ? std::string(id->get_string()).substr(0, 128) : "";
}

// Reads a stream's events as they pass: the generation id and the last usage.cost.
struct SseWatch {
  std::string line, id;
  std::optional<int64_t> cost;
  void feed(const char* data, size_t size) {
    for (size_t i = 0; i < size; ++i) {
      if (data[i] != '\n') {
        if (line.size() < kSseLineMax) line += data[i];
        continue;
      }
      if (line.rfind("data: ", 0) == 0 && line.compare(6, std::string::npos, "[DONE]") != 0) {
        std::error_code ec;
        const json::value v = json::parse(std::string_view(line).substr(6), ec);
        if (!ec) {
          if (id.empty()) id = id_of(v);
          if (auto c = usage_cost(v)) cost = c;
        }
      }
      line.clear();
    }
  }
};

}  // namespace

namespace {

// Settles the hold: the reply's cost, else the generation's, else the hold in full; released when
// OpenRouter cannot have billed anything.
void settle(Ledger& ledger, Upstream& upstream, const Hold& h, bool billable, std::optional<int64_t> cost, const std::string& generation,
            const std::atomic<bool>* cancel, Outcome& o) {
  if (!billable) {
    (void)ledger.release(h.id);
    o.settled = "released";
    return;
  }
  o.settled = "usage";
  if (!cost) {
    cost = upstream.generation_cost(generation, kGenerationAttempts, kGenerationIntervalMs, cancel);
    o.settled = "generation";
  }
  if (!cost) {
    cost = h.amount;  // never known: the hold was an upper bound of what it could cost
    o.settled = "hold";
  }
  o.cost_nanousd = *cost;
  (void)ledger.commit(h.id, *cost);
}

Headers pass_headers(const UpstreamReply& r) {
  Headers h{{"Content-Type", r.content_type.empty() ? "application/json" : r.content_type}};
  if (!r.generation_id.empty()) h.emplace_back("X-Generation-Id", r.generation_id);
  if (!r.retry_after.empty()) h.emplace_back("Retry-After", r.retry_after);  // OpenRouter's back-off, for the SDKs
  if (!r.should_retry.empty()) h.emplace_back("x-should-retry", r.should_retry);
  return h;
}

}  // namespace

Proxy::Proxy(std::shared_ptr<const admin::Config> config, Ledger& ledger, std::string upstream_key)
    : ledger_(ledger), keys_(keys_path(config->ledger.dir)), inflight_(config->ledger.dir), metrics_(std::make_unique<Metrics>()) {
  update(std::move(config), std::move(upstream_key));
}

Proxy::~Proxy() = default;

void Proxy::update(std::shared_ptr<const admin::Config> config, std::string upstream_key) {
  UpstreamOptions options{config->openrouter.base_url, std::move(upstream_key), config->openrouter.app_url, config->openrouter.app_title,
                          config->proxy.upstream_timeout_ms};
  auto upstream = std::make_shared<Upstream>(std::move(options));
  std::lock_guard<std::mutex> lock(mutex_);
  config_ = std::move(config);
  upstream_ = std::move(upstream);
}

void Proxy::record(const Outcome& outcome) { metrics_->record(outcome); }

void Proxy::settle_left_over() {
  const auto upstream = this->upstream();
  for (const Inflight::Record& r : inflight_.left_over()) {
    std::optional<int64_t> cost = upstream->generation_cost(r.generation, kGenerationAttempts, kGenerationIntervalMs, &cancel_);
    if (cancel_.load()) return;  // shutting down: the next start settles the rest
    const Status s = ledger_.commit(r.reservation, cost.value_or(r.hold_nanousd));
    admin::log_line(s.ok() || s.code() == Code::kAlreadySettled ? "info" : "warn", "settled a request a previous proxy left in flight",
                    "cost_usd=" + format_usd(cost.value_or(r.hold_nanousd)) + " how=" + (cost ? "generation" : "hold") +
                        " result=\"" + std::string(s.message()) + "\"");
    Inflight::forget(r);
  }
}

std::string Proxy::metrics_text(size_t in_flight) const { return metrics_->text(in_flight); }

std::shared_ptr<const admin::Config> Proxy::config() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return config_;
}

std::shared_ptr<Upstream> Proxy::upstream() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return upstream_;
}

Outcome Proxy::handle(const Request& request, Client& client) {
  const auto config = this->config();
  const auto upstream = this->upstream();
  Outcome o;
  std::string path = request.target.substr(0, request.target.find('?'));
  if (path.rfind("/api/v1/", 0) == 0) path = path.substr(7);
  else if (path.rfind("/v1/", 0) == 0) path = path.substr(3);
  if (request.target == "/healthz" && request.method == "GET") {
    o.status = 200;
    (void)client.send(200, {{"Content-Type", "application/json"}}, "{\"status\":\"ok\"}");
    return o;
  }
  if (request.target == "/metrics" && request.method == "GET") {
    o.status = 200;
    (void)client.send(200, {{"Content-Type", "text/plain; version=0.0.4"}}, metrics_->text(in_flight_ ? in_flight_->load() : 0));
    return o;
  }
  if (path == "/chat/completions" && request.method == "POST") return chat(request, client, *config, *upstream);
  if (path == "/models" && request.method == "GET") return models(request, client, *upstream);
  if (path == "/chat/completions" || path == "/models") return refuse(o, client, 405, "invalid_request_error", "method_not_allowed",
                                                                      request.method + " is not allowed on " + path);
  return refuse(o, client, 404, "invalid_request_error", "not_found",
                "no such endpoint: the proxy serves POST /api/v1/chat/completions, GET /api/v1/models, GET /healthz, GET /metrics");
}

Outcome Proxy::models(const Request& request, Client& client, Upstream& upstream) {
  Outcome o;
  const std::string bearer = request.authorization.rfind("Bearer ", 0) == 0 ? request.authorization.substr(7) : "";
  const auto owner = keys_.account_of(bearer);
  if (!owner) return refuse(o, client, 401, "invalid_request_error", "invalid_api_key", "a valid proxy key is required (Bearer lk-...)");
  o.account = *owner;
  const Clock::time_point start = Clock::now();
  const UpstreamReply r = upstream.get("/models", &cancel_);
  o.upstream_us = us_between(start, Clock::now());
  if (r.status == 0) return refuse(o, client, 502, "server_error", "upstream_unreachable", "OpenRouter did not answer: " + r.error);
  o.status = static_cast<int>(r.status);
  (void)client.send(o.status, pass_headers(r), r.body);
  return o;
}

Outcome Proxy::chat(const Request& request, Client& client, const admin::Config& config, Upstream& upstream) {
  Outcome o;
  const std::string bearer = request.authorization.rfind("Bearer ", 0) == 0 ? request.authorization.substr(7) : "";
  const auto owner = keys_.account_of(bearer);
  if (!owner)
    return refuse(o, client, 401, "invalid_request_error", "invalid_api_key",
                  bearer.empty() ? "no proxy key: send Authorization: Bearer lk-... (ledgerctl proxy-key create ACCOUNT)"
                                 : "the proxy key is not valid (unknown or revoked)");
  ChatRequest c;
  std::string error;
  if (!read_chat(request.body, &c, &error)) return refuse(o, client, 400, "invalid_request_error", "invalid_request", error);
  o.account = *owner;
  o.model = c.model;
  o.stream = c.stream;
  if (!c.user.empty() && !in_subtree(config, *owner, c.user))
    return refuse(o, client, 403, "permission_error", "user_not_allowed",
                  "\"user\" must name the key's account \"" + *owner + "\" or one of its descendants");
  if (!c.user.empty()) o.account = c.user;  // end-user attribution on a team's key
  const uint32_t max_tokens = c.max_tokens != 0 ? c.max_tokens : config.proxy.max_tokens_default;
  const uint32_t prompt_bound = static_cast<uint32_t>(std::min<size_t>(request.body.size(), UINT32_MAX));  // a token is >= 1 byte
  const uint32_t ttl_s = std::min<uint32_t>(kTtlMaxSeconds, config.proxy.upstream_timeout_ms / 1000 + 60);
  const Hold h = take_hold(ledger_, o.account, c.model, prompt_bound, max_tokens, ttl_s);
  o.chosen = h.chosen;
  if (!h.status.ok()) return refuse_hold(o, client, h, o.account, c.model);
  o.hold_nanousd = h.amount;
  ++metrics_->holds_open;
  const uint32_t slot = inflight_.begin(h.id, h.amount);
  struct Open {  // the hold is settled by the time this goes (every path below settles it)
    std::atomic<int64_t>& n;
    Inflight& inflight;
    uint32_t slot;
    ~Open() {
      --n;
      inflight.end(slot);
    }
  } open{metrics_->holds_open, inflight_, slot};
  const std::string body = upstream_body(c, h.chosen, o.account, config.proxy.max_tokens_default);
  const Clock::time_point sent = Clock::now();
  o.added_us = us_between(request.received, sent);
  if (c.stream) return stream(o, client, upstream, h, slot, body, sent);
  const UpstreamReply r = upstream.post("/chat/completions", body, nullptr, &cancel_);
  const Clock::time_point answered = Clock::now();
  o.upstream_us = us_between(sent, answered);
  // The client first, then the bookkeeping (a generation lookup may take seconds).
  if (r.status == 0) {
    (void)refuse(o, client, 502, "server_error", "upstream_unreachable", "OpenRouter did not answer: " + r.error);
  } else {
    o.status = static_cast<int>(r.status);
    (void)client.send(o.status, pass_headers(r), r.body);
  }
  o.added_us += us_between(answered, Clock::now());
  std::error_code ec;
  const json::value reply = r.status == 200 ? json::parse(r.body, ec) : json::value();
  // An error answer produced nothing to bill; a 200, or no answer to a request that was sent, may have.
  settle(ledger_, upstream, h, r.sent && (r.status == 200 || r.status == 0), r.status == 200 && !ec ? usage_cost(reply) : std::nullopt,
         !r.generation_id.empty() ? r.generation_id : !ec ? id_of(reply) : "", &cancel_, o);
  return o;
}

Outcome Proxy::stream(Outcome& o, Client& client, Upstream& upstream, const Hold& h, uint32_t slot, const std::string& body,
                      Clock::time_point sent) {
  SseWatch watch;
  bool started = false, client_gone = false;
  Clock::time_point first{};
  const StreamSink sink = [&](const char* data, size_t size) {
    if (!started) {
      started = true;
      first = Clock::now();
      o.upstream_us = us_between(sent, first);  // time to the first byte
      if (!client.begin_stream(200, {{"Content-Type", "text/event-stream"}, {"Cache-Control", "no-cache"}})) return !(client_gone = true);
    }
    const bool named = !watch.id.empty();
    watch.feed(data, size);
    if (!named && !watch.id.empty()) inflight_.named(slot, watch.id);  // a restart can now look it up
    if (!client.chunk(data, size)) return !(client_gone = true);  // the client went away: stop reading upstream
    return true;
  };
  const UpstreamReply r = upstream.post("/chat/completions", body, &sink, &cancel_);
  if (!started) {  // no stream came: an error answer, or none
    if (r.status == 0) (void)refuse(o, client, 502, "server_error", "upstream_unreachable", "OpenRouter did not answer: " + r.error);
    else o.status = static_cast<int>(r.status), (void)client.send(o.status, pass_headers(r), r.body);
    settle(ledger_, upstream, h, r.sent && (r.status == 200 || r.status == 0), std::nullopt, r.generation_id, &cancel_, o);
    return o;
  }
  o.status = 200;
  if (client_gone) o.code = "client_gone";
  else if (!r.error.empty()) o.code = "upstream_cut";
  if (!client_gone) (void)client.end_stream();
  settle(ledger_, upstream, h, true, watch.cost, !watch.id.empty() ? watch.id : r.generation_id, &cancel_, o);
  return o;
}

}  // namespace ledger::proxy
