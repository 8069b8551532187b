// proxy.cpp — see proxy.hpp.
#include "proxy.hpp"

#include <boost/asio.hpp>
#include <boost/json.hpp>
#include <cstring>

#include "body.hpp"
#include "core/admin.hpp"
#include "ledger/money.hpp"
#include "metrics.hpp"

namespace ledger::proxy {

namespace json = boost::json;
namespace net = boost::asio;
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
net::awaitable<Outcome> refuse(Outcome o, Client& client, int status, const char* type, const char* code, const std::string& message,
                               Headers headers = {}) {
  headers.emplace_back("Content-Type", "application/json");
  o.status = status;
  o.code = code;
  (void)co_await client.send(status, headers, error_body(message, type, code));
  co_return o;
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
  h.status = ledger.authorize(account, model, h.amount, ttl_s, &chosen, &h.id, 255);  // its tokens count (estimate above)
  h.chosen = std::string(chosen);
  if (h.status.code() == Code::kDeniedRate) h.retry_after_ms = Ledger::rate_retry_after_ms();  // this thread's, just set
  if (!h.status.ok() || h.chosen == model) return h;
  const int64_t bound = estimate_of(ledger, h.chosen, prompt_tokens, max_tokens);
  if (bound <= h.amount) return h;
  (void)ledger.release(h.id);
  h.amount = bound;
  (void)estimate_of(ledger, h.chosen, prompt_tokens, max_tokens);  // its tokens count again at this admission
  h.status = ledger.authorize(account, h.chosen, h.amount, ttl_s, &chosen, &h.id, 255);
  h.chosen = std::string(chosen);
  if (h.status.code() == Code::kDeniedRate) h.retry_after_ms = Ledger::rate_retry_after_ms();
  return h;
}

// A denied authorize() as the error an OpenAI SDK understands.
struct Denial {
  int status;
  const char *type, *code;
  std::string message;
  Headers headers;
};
Denial denial_of(const Hold& h, const std::string& account, const std::string& model) {
  const Headers no_retry{{"x-should-retry", "false"}};
  switch (h.status.code()) {
    case Code::kDeniedOverBudget:
      return {429, "insufficient_quota", "budget_exceeded", "account \"" + account + "\" is over its budget", no_retry};
    case Code::kDeniedParentOverBudget:
      return {429, "insufficient_quota", "parent_budget_exceeded", "a budget above account \"" + account + "\" (its team or org) is exhausted",
              no_retry};
    case Code::kDeniedModel:
      return {403, "permission_error", "model_not_allowed",
              "model \"" + model + "\" is not allowed for account \"" + account + "\" (its tier) and the tier has no fallback", {}};
    case Code::kDeniedBlocked:
      return {403, "permission_error", "account_blocked", "account \"" + account + "\" (or an ancestor) is blocked", {}};
    case Code::kDeniedRate: {  // retryable: the SDKs wait retry-after-ms (else Retry-After, seconds) and retry
      const uint32_t ms = std::max<uint32_t>(h.retry_after_ms, 1);
      return {429, "rate_limit_error", "rate_limited",
              "a requests/tokens per minute or concurrency limit of account \"" + account + "\" or an ancestor; retry in " +
                  std::to_string(ms) + " ms",
              {{"Retry-After", std::to_string((ms + 999) / 1000)}, {"retry-after-ms", std::to_string(ms)}}};
    }
    case Code::kUnknownModel:
      return {400, "invalid_request_error", "model_not_priced",
              "model \"" + h.chosen + "\" has no price in the ledger (ledgerctl init loads OpenRouter's prices)", {}};
    case Code::kInvalidArgument:
      return {400, "invalid_request_error", "invalid_request", "the ledger refused the request's model or account", {}};
    case Code::kUnknownAccount:
      return {401, "invalid_request_error", "invalid_api_key", "the key's account is not in the ledger", {}};
    default:
      return {503, "server_error", "ledger_unavailable", "the ledger refused the hold: " + std::string(h.status.message()), {}};
  }
}

// Reads a stream's events as they pass: the generation id (from the first event that names one)
// and the last usage.cost. Only those events are parsed as JSON: the content events between them
// are scanned for a newline and nothing else.
struct SseWatch {
  std::string line, id;
  std::optional<int64_t> cost;
  std::optional<TokenUsage> tokens;
  void feed(const char* data, size_t size) {
    for (size_t at = 0; at < size;) {
      const char* newline = static_cast<const char*>(std::memchr(data + at, '\n', size - at));
      const size_t end = newline != nullptr ? static_cast<size_t>(newline - data) : size;
      if (line.size() < kSseLineMax) line.append(data + at, std::min(end - at, kSseLineMax - line.size()));
      at = end + 1;
      if (newline == nullptr) break;
      event();
      line.clear();
    }
  }
  void event() {
    if (line.rfind("data: ", 0) != 0 || line.compare(6, std::string::npos, "[DONE]") == 0) return;
    if (!id.empty() && line.find("\"usage\"") == std::string::npos) return;
    std::error_code ec;
    const json::value v = json::parse(std::string_view(line).substr(6), ec);
    if (ec) return;
    if (id.empty()) id = id_of(v);
    if (auto c = usage_cost(v)) cost = c;
    if (auto t = usage_tokens(v)) tokens = t;
  }
};

// Settles the hold: the reply's cost, else the generation's, else the hold in full; released when
// OpenRouter cannot have billed anything.
net::awaitable<void> settle(Ledger& ledger, Upstream& upstream, const Hold& h, bool billable, std::optional<int64_t> cost,
                            std::optional<TokenUsage> tokens, const std::string& generation, const std::atomic<bool>* cancel,
                            Outcome& o) {
  if (!billable) {
    (void)ledger.release(h.id);
    o.settled = "released";
    co_return;
  }
  o.settled = "usage";
  if (!cost) {
    cost = co_await upstream.generation_cost(generation, kGenerationAttempts, kGenerationIntervalMs, cancel);
    o.settled = "generation";
  }
  if (!cost) {
    cost = h.amount;  // never known: the hold was an upper bound of what it could cost
    o.settled = "hold";
  }
  o.cost_nanousd = *cost;
  // With the reply's token counts, tokens-per-minute limits count those instead of the estimate's.
  if (tokens) (void)ledger.commit_usage(h.id, *cost, tokens->prompt, tokens->completion);
  else (void)ledger.commit(h.id, *cost);
}

Headers pass_headers(const UpstreamReply& r) {
  Headers h{{"Content-Type", r.content_type.empty() ? "application/json" : r.content_type}};
  if (!r.generation_id.empty()) h.emplace_back("X-Generation-Id", r.generation_id);
  if (!r.retry_after.empty()) h.emplace_back("Retry-After", r.retry_after);  // OpenRouter's back-off, for the SDKs
  if (!r.should_retry.empty()) h.emplace_back("x-should-retry", r.should_retry);
  return h;
}

std::string bearer_of(const Request& r) {
  return r.authorization.rfind("Bearer ", 0) == 0 ? r.authorization.substr(7) : "";
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

net::awaitable<void> Proxy::settle_left_over() {
  const auto upstream = this->upstream();
  for (const Inflight::Record& r : inflight_.left_over()) {
    std::optional<int64_t> cost = co_await upstream->generation_cost(r.generation, kGenerationAttempts, kGenerationIntervalMs, &cancel_);
    if (cancel_.load()) co_return;  // shutting down: the next start settles the rest
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

net::awaitable<Outcome> Proxy::handle(const Request& request, Client& client) {
  const auto config = this->config();
  const auto upstream = this->upstream();
  Outcome o;
  std::string path = request.target.substr(0, request.target.find('?'));
  if (path.rfind("/api/v1/", 0) == 0) path = path.substr(7);
  else if (path.rfind("/v1/", 0) == 0) path = path.substr(3);
  if (request.target == "/healthz" && request.method == "GET") {
    o.status = 200;
    const Headers headers{{"Content-Type", "application/json"}};  // (named: GCC 12 cannot take this list inside co_await)
    (void)co_await client.send(200, headers, "{\"status\":\"ok\"}");
    co_return o;
  }
  if (request.target == "/metrics" && request.method == "GET") {
    o.status = 200;
    const Headers headers{{"Content-Type", "text/plain; version=0.0.4"}};
    const std::string text = metrics_->text(in_flight_ ? in_flight_->load() : 0);
    (void)co_await client.send(200, headers, text);
    co_return o;
  }
  const Endpoint* endpoint = endpoint_at(path);
  if (endpoint != nullptr && request.method == "POST") co_return co_await generate(request, *endpoint, client, *config, *upstream);
  if (path == "/models" && request.method == "GET") co_return co_await models(request, client, *upstream);
  if (endpoint != nullptr || path == "/models") {
    const std::string message = request.method + " is not allowed on " + path;
    co_return co_await refuse(o, client, 405, "invalid_request_error", "method_not_allowed", message);
  }
  co_return co_await refuse(o, client, 404, "invalid_request_error", "not_found",
                            "no such endpoint: the proxy serves POST /api/v1/chat/completions, /api/v1/completions, /api/v1/embeddings, "
                            "GET /api/v1/models, GET /healthz, GET /metrics");
}

net::awaitable<Outcome> Proxy::models(const Request& request, Client& client, Upstream& upstream) {
  Outcome o;
  const auto owner = keys_.account_of(bearer_of(request));
  if (!owner)
    co_return co_await refuse(o, client, 401, "invalid_request_error", "invalid_api_key", "a valid proxy key is required (Bearer lk-...)");
  o.account = *owner;
  const UpstreamReply r = co_await upstream.get("/models", &cancel_);
  o.upstream_us = r.status != 0 ? us_between(r.written, r.answered) : 0;
  const std::string message = "OpenRouter did not answer: " + r.error;
  if (r.status == 0) co_return co_await refuse(o, client, 502, "server_error", "upstream_unreachable", message);
  o.status = static_cast<int>(r.status);
  const Headers headers = pass_headers(r);
  (void)co_await client.send(o.status, headers, r.body);
  co_return o;
}

net::awaitable<Outcome> Proxy::generate(const Request& request, const Endpoint& endpoint, Client& client, const admin::Config& config,
                                        Upstream& upstream) {
  Outcome o;
  const std::string bearer = bearer_of(request);
  const auto owner = keys_.account_of(bearer);
  // (Arguments of a co_await are named first throughout: GCC 12 mishandles temporaries made in
  // conditional expressions or brace lists inside a co_await.)
  if (!owner) {
    const std::string message = bearer.empty() ? "no proxy key: send Authorization: Bearer lk-... (ledgerctl proxy-key create ACCOUNT)"
                                               : "the proxy key is not valid (unknown or revoked)";
    co_return co_await refuse(o, client, 401, "invalid_request_error", "invalid_api_key", message);
  }
  BodyRequest b;
  std::string error;
  if (!read_body(request.body, endpoint, &b, &error)) co_return co_await refuse(o, client, 400, "invalid_request_error", "invalid_request", error);
  o.account = *owner;
  o.model = b.model;
  o.stream = b.stream;
  if (!b.user.empty() && !in_subtree(config, *owner, b.user)) {
    const std::string message = "\"user\" must name the key's account \"" + *owner + "\" or one of its descendants";
    co_return co_await refuse(o, client, 403, "permission_error", "user_not_allowed", message);
  }
  if (!b.user.empty()) o.account = b.user;  // end-user attribution on a team's key
  const uint32_t max_tokens = !endpoint.completes ? 0 : b.max_tokens != 0 ? b.max_tokens : config.proxy.max_tokens_default;
  const uint32_t prompt_bound = static_cast<uint32_t>(std::min<size_t>(request.body.size(), UINT32_MAX));  // a token is >= 1 byte
  const uint32_t ttl_s = std::min<uint32_t>(kTtlMaxSeconds, config.proxy.upstream_timeout_ms / 1000 + 60);
  const Hold h = take_hold(ledger_, o.account, b.model, prompt_bound, max_tokens, ttl_s);
  o.chosen = h.chosen;
  if (!h.status.ok()) {
    const Denial d = denial_of(h, o.account, b.model);
    co_return co_await refuse(o, client, d.status, d.type, d.code, d.message, d.headers);
  }
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
  const std::string body = upstream_body(b, endpoint, h.chosen, o.account, config.proxy.max_tokens_default);
  if (b.stream) co_await stream(o, client, upstream, endpoint, h, slot, body, request.received);
  else co_await answer(o, client, upstream, endpoint, h, body, request.received);
  co_return o;
}

net::awaitable<void> Proxy::answer(Outcome& o, Client& client, Upstream& upstream, const Endpoint& endpoint, const Hold& h,
                                   const std::string& body, Clock::time_point received) {
  const UpstreamReply r = co_await upstream.post(endpoint.path, body, nullptr, &cancel_);
  const Clock::time_point answered = r.status != 0 ? r.answered : Clock::now();
  const Clock::time_point written = r.written != Clock::time_point{} ? r.written : answered;
  // The client first, then the bookkeeping (a generation lookup may take seconds).
  if (r.status == 0) {
    const std::string message = "OpenRouter did not answer: " + r.error;
    o = co_await refuse(o, client, 502, "server_error", "upstream_unreachable", message);
  } else {
    o.status = static_cast<int>(r.status);
    const Headers headers = pass_headers(r);
    (void)co_await client.send(o.status, headers, r.body);
  }
  o.upstream_us = us_between(written, answered);
  o.added_us = us_between(received, written) + us_between(answered, Clock::now());
  std::error_code ec;
  const json::value reply = r.status == 200 ? json::parse(r.body, ec) : json::value();
  // An error answer produced nothing to bill; a 200, or no answer to a request that was sent, may have.
  const bool billable = r.sent && (r.status == 200 || r.status == 0);
  const std::optional<int64_t> cost = r.status == 200 && !ec ? usage_cost(reply) : std::nullopt;
  const std::string generation = !r.generation_id.empty() ? r.generation_id : !ec ? id_of(reply) : "";
  const std::optional<TokenUsage> tokens = r.status == 200 && !ec ? usage_tokens(reply) : std::nullopt;
  co_await settle(ledger_, upstream, h, billable, cost, tokens, generation, &cancel_, o);
}

net::awaitable<void> Proxy::stream(Outcome& o, Client& client, Upstream& upstream, const Endpoint& endpoint, const Hold& h, uint32_t slot,
                                   const std::string& body, Clock::time_point received) {
  SseWatch watch;
  bool started = false, client_gone = false;
  Clock::time_point arrived{};  // the first piece of the stream
  int64_t relay_us = 0;         // from then until it had left for the client
  const StreamSink sink = [&](const char* data, size_t size) -> net::awaitable<bool> {
    const bool first = !started;
    if (first) {
      started = true;
      arrived = Clock::now();
      const Headers headers{{"Content-Type", "text/event-stream"}, {"Cache-Control", "no-cache"}};
      if (!co_await client.begin_stream(200, headers)) co_return !(client_gone = true);
    }
    const bool named = !watch.id.empty();
    watch.feed(data, size);
    if (!named && !watch.id.empty()) inflight_.named(slot, watch.id);  // a restart can now look it up
    if (!co_await client.chunk(data, size)) co_return !(client_gone = true);  // the client went away: stop reading upstream
    if (first) relay_us = us_between(arrived, Clock::now());
    co_return true;
  };
  const UpstreamReply r = co_await upstream.post(endpoint.path, body, &sink, &cancel_);
  const Clock::time_point written = r.written != Clock::time_point{} ? r.written : Clock::now();
  o.added_us = us_between(received, written) + relay_us;
  if (!started) {  // no stream came: an error answer, or none
    const std::string message = "OpenRouter did not answer: " + r.error;
    const Headers headers = pass_headers(r);
    if (r.status == 0) {
      o = co_await refuse(o, client, 502, "server_error", "upstream_unreachable", message);
    } else {
      o.status = static_cast<int>(r.status);
      o.upstream_us = us_between(written, r.answered);
      (void)co_await client.send(o.status, headers, r.body);
    }
    const bool billable = r.sent && (r.status == 200 || r.status == 0);
    co_await settle(ledger_, upstream, h, billable, std::nullopt, std::nullopt, r.generation_id, &cancel_, o);
    co_return;
  }
  o.upstream_us = us_between(written, arrived);  // time to the first byte
  o.status = 200;
  if (client_gone) o.code = "client_gone";
  else if (!r.error.empty()) o.code = "upstream_cut";
  if (!client_gone) (void)co_await client.end_stream();
  const std::string generation = !watch.id.empty() ? watch.id : r.generation_id;
  co_await settle(ledger_, upstream, h, true, watch.cost, watch.tokens, generation, &cancel_, o);
}

}  // namespace ledger::proxy
