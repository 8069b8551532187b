// completions.cpp — the emulator's billed endpoints, in OpenRouter's shapes: POST /chat/completions
// (messages), /completions (a text prompt) and /embeddings (an input), each answered whole or, for
// the first two, as a stream of server-sent events (see emulator.hpp).
//
// Tokens are deterministic: a quarter of the characters sent, plus one; a reply of 20 + (prompt
// tokens mod 40) tokens, never above max_tokens; an embedding has no completion tokens. The cost
// is rounded up to the nano-USD, charged once when the request is accepted (a stream that is cut
// later was billed all the same), and kept as a generation for /generation?id=.
#include <algorithm>
#include <boost/json.hpp>
#include <cstring>

#include "emulator.hpp"
#include "json_out.hpp"

namespace emulator {

namespace json = boost::json;
using namespace detail;

namespace {

int64_t text_chars(const json::value* v) {  // a string, or an array of strings (other items count nothing)
  if (v == nullptr) return 0;
  if (v->is_string()) return static_cast<int64_t>(v->get_string().size());
  int64_t n = 0;
  if (v->is_array())
    for (const auto& item : v->get_array())
      if (item.is_string()) n += static_cast<int64_t>(item.get_string().size());
  return n;
}

int64_t prompt_chars(const json::object& o, Kind kind) {
  if (kind == Kind::kText) return text_chars(o.if_contains("prompt"));
  if (kind == Kind::kEmbedding) return text_chars(o.if_contains("input"));
  int64_t chars = 0;
  if (const json::value* messages = o.if_contains("messages"); messages != nullptr && messages->is_array())
    for (const auto& message : messages->get_array())
      if (message.is_object())
        if (const json::value* content = message.get_object().if_contains("content"); content != nullptr && content->is_string())
          chars += static_cast<int64_t>(content->get_string().size());
  return chars;
}

// What the request must carry besides a model; "" when it is fine.
std::string shape_error(const json::object& o, Kind kind, bool stream) {
  if (kind == Kind::kChat) {
    const json::value* m = o.if_contains("messages");
    return m != nullptr && m->is_array() ? "" : "messages must be an array";
  }
  const char* field = kind == Kind::kText ? "prompt" : "input";
  const json::value* v = o.if_contains(field);
  if (v == nullptr || !(v->is_string() || v->is_array())) return std::string(field) + " must be a string or an array";
  if (kind == Kind::kEmbedding && stream) return "stream is not supported for embeddings";
  return "";
}

std::string base64(const unsigned char* data, size_t size) {
  static const char* digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < size; i += 3) {
    const uint32_t n = (uint32_t{data[i]} << 16) | (i + 1 < size ? uint32_t{data[i + 1]} << 8 : 0) | (i + 2 < size ? data[i + 2] : 0);
    out += digits[(n >> 18) & 63];
    out += digits[(n >> 12) & 63];
    out += i + 1 < size ? digits[(n >> 6) & 63] : '=';
    out += i + 2 < size ? digits[n & 63] : '=';
  }
  return out;
}

// Eight deterministic components per input, as floats or (encoding_format "base64", the openai
// SDKs' default) as the base64 of their little-endian float32 bytes.
json::array embeddings_of(const json::value& input, bool as_base64) {
  const size_t count = input.is_array() ? std::max<size_t>(1, input.get_array().size()) : 1;
  json::array data;
  for (size_t i = 0; i < count; ++i) {
    float v[8];
    for (int k = 0; k < 8; ++k) v[k] = static_cast<float>((static_cast<int>(i) * 7 + k * 3) % 11) / 10.0f - 0.5f;
    json::value embedding;
    if (as_base64) {
      unsigned char bytes[sizeof v];
      std::memcpy(bytes, v, sizeof v);  // x86-64: already little-endian
      embedding = json::string(base64(bytes, sizeof bytes));
    } else {
      json::array values;
      for (const float x : v) values.push_back(static_cast<double>(x));
      embedding = std::move(values);
    }
    data.push_back(json::object{{"object", "embedding"}, {"embedding", std::move(embedding)}, {"index", static_cast<int64_t>(i)}});
  }
  return data;
}

}  // namespace

void Emulator::keep(const Generation& g) {
  generations_[g.id] = g;
  generation_order_.push_back(g.id);
  while (generation_order_.size() > generations_kept_) {
    generations_.erase(generation_order_.front());
    generation_order_.pop_front();
  }
}

Response Emulator::completion(Key& key, const Request& request, Kind kind) {
  std::error_code ec;
  json::value v = json::parse(request.body, ec);
  if (ec || !v.is_object()) return error(400, "Invalid JSON body");
  const auto& o = v.get_object();
  const json::value* model_value = o.if_contains("model");
  const std::string model = model_value != nullptr && model_value->is_string() ? std::string(model_value->get_string()) : "";
  const ModelPrice* price = nullptr;
  for (const auto& m : models_)
    if (m.id == model) price = &m;
  if (price == nullptr) return error(400, model + " is not a valid model ID");
  // "stream" is a boolean; "stream_options" ({"include_usage": bool}) is accepted and changes
  // nothing: OpenRouter sends the usage chunk of a stream whether it was asked for or not.
  const json::value* stream_value = o.if_contains("stream");
  if (stream_value != nullptr && !stream_value->is_bool() && !stream_value->is_null()) return error(400, "stream must be a boolean");
  const bool stream = stream_value != nullptr && stream_value->is_bool() && stream_value->get_bool();
  if (const json::value* options = o.if_contains("stream_options"); options != nullptr && !options->is_null()) {
    const json::value* include = options->is_object() ? options->get_object().if_contains("include_usage") : nullptr;
    if (!options->is_object() || (include != nullptr && !include->is_bool()))
      return error(400, "stream_options must be an object such as {\"include_usage\": true}");
  }
  if (const std::string wrong = shape_error(o, kind, stream); !wrong.empty()) return error(400, wrong);
  roll_windows(key, now_ms_());
  if (key.limit && *key.limit - window_usage(key) <= 0) {
    if (limit_exceeded_status_ == 403)
      return error(403, "Key limit exceeded (total limit). Manage it using https://openrouter.ai/settings/keys", "permission_denied");
    return error(402, "This request requires more credits, or fewer max_tokens.", "payment_required");
  }
  Generation g;
  g.prompt_tokens = prompt_chars(o, kind) / 4 + 1;
  g.completion_tokens = kind == Kind::kEmbedding ? 0 : 20 + g.prompt_tokens % 40;
  if (const json::value* max = o.if_contains("max_tokens"); max != nullptr && max->is_int64() && max->get_int64() > 0)
    g.completion_tokens = std::min(g.completion_tokens, max->get_int64());
  g.cost = (g.prompt_tokens * price->prompt_nanousd_per_mtok + g.completion_tokens * price->completion_nanousd_per_mtok + 999'999) / 1'000'000 +
           price->request_nanousd;
  charge(key, g.cost);
  g.id = "gen-" + std::to_string(next_seq_++);
  g.model = model;
  g.key_hash = key.hash;
  g.created_ms = now_ms_();
  g.streamed = stream;
  g.http_referer = request.http_referer;
  if (const json::value* user = o.if_contains("user"); user != nullptr && user->is_string()) g.user = std::string(user->get_string());
  keep(g);
  return reply(g, o, kind, stream);
}

Response Emulator::reply(const Generation& g, const json::object& request, Kind kind, bool stream) const {
  const json::value usage = kind == Kind::kEmbedding
      ? json::value(json::object{{"prompt_tokens", g.prompt_tokens}, {"total_tokens", g.prompt_tokens}, {"cost", money(g.cost)}})
      : json::value(usage_json(g.prompt_tokens, g.completion_tokens, g.cost));
  json::object reply{{"id", g.id}};  // usage last, as OpenRouter orders it (a truncated reply loses it first)
  if (kind == Kind::kEmbedding) {
    const json::value* format = request.if_contains("encoding_format");
    const bool as_base64 = format != nullptr && format->is_string() && format->get_string() == "base64";
    reply["object"] = "list";
    reply["data"] = embeddings_of(*request.if_contains("input"), as_base64);
    reply["model"] = g.model;
    reply["usage"] = usage;
    return Response{200, finish_json(reply), {{"X-Generation-Id", g.id}}, 0, false};
  }
  const std::string content = "Emulated reply (" + std::to_string(g.completion_tokens) + " tokens) from " + g.model + ".";
  if (stream) return completion_stream(g, content, kind);
  json::object choice{{"index", 0}};
  if (kind == Kind::kChat) choice["message"] = json::object{{"role", "assistant"}, {"content", content}};
  else choice["text"] = content;
  choice["finish_reason"] = "stop";
  reply["object"] = kind == Kind::kChat ? "chat.completion" : "text_completion";
  reply["created"] = g.created_ms / 1000;
  reply["model"] = g.model;
  reply["choices"] = json::array{std::move(choice)};
  reply["usage"] = usage;
  return Response{200, finish_json(reply), {{"X-Generation-Id", g.id}}, 0, false};
}

// The stream of one generation, as OpenRouter sends it: a processing comment, the content in
// word-sized deltas (the first after the time to first token, the others paced at the generation
// speed), a chunk with the finish reason, the usage chunk with empty choices, then [DONE]. A text
// completion's chunks carry `text` where a chat's carry `delta`.
Response Emulator::completion_stream(const Generation& g, const std::string& content, Kind kind) const {
  std::vector<std::string> pieces;
  for (size_t at = 0; at < content.size();) {
    const size_t space = content.find(' ', at + 1);
    const size_t end = space == std::string::npos ? content.size() : space;
    pieces.push_back(content.substr(at, end - at));
    at = end;
  }
  const int64_t created_s = g.created_ms / 1000;
  const char* object = kind == Kind::kChat ? "chat.completion.chunk" : "text_completion";
  auto chunk = [&](const std::string& text, json::value finish_reason) {
    json::object choice{{"index", 0}, {"finish_reason", finish_reason}, {"native_finish_reason", finish_reason}, {"logprobs", nullptr}};
    if (kind == Kind::kChat) choice["delta"] = json::object{{"role", "assistant"}, {"content", text}};
    else choice["text"] = text;
    json::object c{{"id", g.id}, {"provider", "Emulator"}, {"model", g.model}, {"object", object},
                   {"created", created_s}, {"choices", json::array{std::move(choice)}}};
    return "data: " + finish_json(c) + "\n\n";
  };
  // Microseconds per piece at the configured speed: the whole reply takes completion_tokens / tps.
  const int64_t piece_us = tokens_per_second_ > 0
      ? static_cast<int64_t>(static_cast<double>(g.completion_tokens) * 1e6 / tokens_per_second_ / static_cast<double>(pieces.size()))
      : 0;
  Response r;
  r.stream = true;
  r.headers = {{"X-Generation-Id", g.id}, {"Cache-Control", "no-cache"}};
  r.events.push_back({": OPENROUTER PROCESSING\n\n", 0});
  for (size_t i = 0; i < pieces.size(); ++i) r.events.push_back({chunk(pieces[i], nullptr), i == 0 ? ttft_ms_ * 1000 : piece_us});
  r.events.push_back({chunk("", "stop"), 0});
  json::object last{{"id", g.id}, {"provider", "Emulator"}, {"model", g.model}, {"object", object},
                    {"created", created_s}, {"choices", json::array{}}, {"usage", usage_json(g.prompt_tokens, g.completion_tokens, g.cost)}};
  r.events.push_back({"data: " + finish_json(last) + "\n\n", 0});
  r.events.push_back({"data: [DONE]\n\n", 0});
  return r;
}

}  // namespace emulator
