// body.hpp — what the proxy reads from and writes into the JSON bodies of the endpoints that are
// billed: chat completions, (text) completions and embeddings, in OpenRouter's (OpenAI's) shapes.
//
// A request's fields are type-checked and an error names the first one that is wrong. What goes
// upstream is the client's body with: the chosen model, a max_tokens when it set none (so the
// hold is an upper bound; embeddings produce no completion tokens and get none), usage asked for
// (chat and completions; a stream's last chunk then carries it) and `user` set to the account the
// request is charged to. An answer's cost is its usage.cost (USD) in nano-USD.
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <optional>
#include <string>

namespace ledger::proxy {

struct Endpoint {
  const char* path;      // after /api/v1 or /v1, e.g. "/chat/completions"
  const char* input;     // the field that carries what is sent to the model: "messages", "prompt", "input"
  bool completes;        // produces completion tokens (a max_tokens bound, a stream)
};
inline constexpr Endpoint kChat{"/chat/completions", "messages", true};
inline constexpr Endpoint kCompletions{"/completions", "prompt", true};
inline constexpr Endpoint kEmbeddings{"/embeddings", "input", false};
// The endpoint served at `path` (already without /api/v1 or /v1), or nullptr.
const Endpoint* endpoint_at(const std::string& path);

struct BodyRequest {
  boost::json::object body;
  std::string model, user;
  bool stream = false;
  uint32_t max_tokens = 0;  // 0 = not given
};

// The fields the proxy reads, with their types checked; *error names the first one that is wrong.
bool read_body(const std::string& text, const Endpoint& endpoint, BodyRequest* r, std::string* error);
// The body sent upstream (see above).
std::string upstream_body(BodyRequest& r, const Endpoint& endpoint, const std::string& chosen, const std::string& account,
                          uint32_t max_tokens_default);
// usage.cost of a reply or of a stream's last chunk, nano-USD; nullopt when absent.
std::optional<int64_t> usage_cost(const boost::json::value& v);
// usage.prompt_tokens and usage.completion_tokens (0 when an embedding has none), for tokens-per-
// minute limits (Ledger::commit_usage); nullopt without prompt_tokens.
struct TokenUsage {
  uint32_t prompt = 0, completion = 0;
};
std::optional<TokenUsage> usage_tokens(const boost::json::value& v);
// The reply's (generation's) id, at most 128 bytes; "" when absent.
std::string id_of(const boost::json::value& v);
// Visible ASCII without spaces (a model id or account id as the ledger takes them; safe in a log line).
bool printable(const std::string& text);

}  // namespace ledger::proxy
