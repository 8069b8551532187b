// body.cpp — see body.hpp.
#include "body.hpp"

#include "ledger/ledger.hpp"
#include "ledger/money.hpp"

namespace ledger::proxy {

namespace json = boost::json;

const Endpoint* endpoint_at(const std::string& path) {
  for (const Endpoint* e : {&kChat, &kCompletions, &kEmbeddings})
    if (path == e->path) return e;
  return nullptr;
}

bool printable(const std::string& text) {
  for (const char ch : text)
    if (ch <= ' ' || ch > '~') return false;
  return true;
}

namespace {

bool fail(std::string* error, std::string text) {
  *error = std::move(text);
  return false;
}

// What is sent to the model: chat messages (an array), a prompt or an embedding input (a string or an array).
bool read_input(const json::object& body, const Endpoint& endpoint, std::string* error) {
  const json::value* v = body.if_contains(endpoint.input);
  if (std::string_view(endpoint.input) == "messages") {
    if (v == nullptr || !v->is_array()) return fail(error, "\"messages\" is required: an array of messages");
    return true;
  }
  if (v == nullptr || !(v->is_string() || v->is_array()))
    return fail(error, std::string("\"") + endpoint.input + "\" is required: a string or an array");
  return true;
}

bool read_limits(const json::object& body, const Endpoint& endpoint, BodyRequest* r, std::string* error) {
  if (const json::value* s = body.if_contains("stream"); s != nullptr && !s->is_null()) {
    if (!s->is_bool()) return fail(error, "\"stream\" must be true or false");
    r->stream = s->get_bool();
    if (r->stream && !endpoint.completes) return fail(error, "\"stream\" is not supported for embeddings");
  }
  if (!endpoint.completes) return true;  // an embedding produces no completion tokens
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    const json::value* t = body.if_contains(name);
    if (t == nullptr || t->is_null()) continue;
    if (!t->is_int64() || t->get_int64() < 1 || t->get_int64() > 10'000'000)
      return fail(error, std::string("\"") + name + "\" must be a positive integer");
    r->max_tokens = std::max(r->max_tokens, static_cast<uint32_t>(t->get_int64()));
  }
  return true;
}

}  // namespace

bool read_body(const std::string& text, const Endpoint& endpoint, BodyRequest* r, std::string* error) {
  json::parse_options options;
  options.max_depth = 64;
  std::error_code ec;
  json::value v = json::parse(text, ec, {}, options);
  if (ec || !v.is_object()) return fail(error, ec ? "the body is not valid JSON: " + ec.message() : "the body must be a JSON object");
  r->body = std::move(v.get_object());
  const json::value* model = r->body.if_contains("model");
  if (model == nullptr || !model->is_string() || model->get_string().empty())
    return fail(error, "\"model\" is required: a model id such as \"openai/gpt-4o-mini\"");
  r->model = std::string(model->get_string());
  if (r->model.size() > kModelIdMax || !printable(r->model))
    return fail(error, "\"model\" must be a model id of at most " + std::to_string(kModelIdMax) + " printable characters without spaces");
  if (!read_input(r->body, endpoint, error) || !read_limits(r->body, endpoint, r, error)) return false;
  if (const json::value* u = r->body.if_contains("user"); u != nullptr && !u->is_null()) {
    if (!u->is_string() || !valid_account_name(std::string_view(u->get_string())))
      return fail(error, "\"user\" must be an account id (1-63 characters of [A-Za-z0-9._:@-])");
    r->user = std::string(u->get_string());
  }
  return true;
}

std::string upstream_body(BodyRequest& r, const Endpoint& endpoint, const std::string& chosen, const std::string& account,
                          uint32_t max_tokens_default) {
  r.body["model"] = chosen;
  if (endpoint.completes) {
    if (r.max_tokens == 0) r.body["max_tokens"] = max_tokens_default;
    r.body["usage"] = json::object{{"include", true}};
    if (r.stream) r.body["stream_options"] = json::object{{"include_usage", true}};
  }
  r.body["user"] = account;
  return json::serialize(r.body);
}

std::optional<int64_t> usage_cost(const json::value& v) {
  const json::object* o = v.if_object();
  const json::value* usage = o != nullptr ? o->if_contains("usage") : nullptr;
  const json::value* cost = usage != nullptr && usage->is_object() ? usage->get_object().if_contains("cost") : nullptr;
  if (cost == nullptr || !cost->is_number()) return std::nullopt;
  auto n = usd_double_to_nanousd(cost->to_number<double>());
  return n && *n >= 0 ? n : std::nullopt;
}

std::optional<TokenUsage> usage_tokens(const json::value& v) {
  const json::object* o = v.if_object();
  const json::value* usage = o != nullptr ? o->if_contains("usage") : nullptr;
  if (usage == nullptr || !usage->is_object()) return std::nullopt;
  const auto count = [&](const char* key) -> std::optional<uint32_t> {
    const json::value* n = usage->get_object().if_contains(key);
    if (n == nullptr || !n->is_number()) return std::nullopt;
    const double d = n->to_number<double>();
    if (!(d >= 0) || d > 4e9) return std::nullopt;  // a lying upstream: no count rather than a wrapped one
    return static_cast<uint32_t>(d);
  };
  const auto prompt = count("prompt_tokens");
  if (!prompt) return std::nullopt;
  return TokenUsage{*prompt, count("completion_tokens").value_or(0)};
}

std::string id_of(const json::value& v) {
  const json::object* o = v.if_object();
  const json::value* id = o != nullptr ? o->if_contains("id") : nullptr;
  return id != nullptr && id->is_string() ? std::string(id->get_string()).substr(0, 128) : "";
}

}  // namespace ledger::proxy
