// The OpenRouter emulator: the API facts of openrouter-api.md (auth errors, key objects, pages,
// windows, limits, money format) and every fault it can inject; plus the real binary over loopback.
#include <catch2/catch.hpp>
#include <boost/asio.hpp>
#include <boost/json.hpp>
#include <set>
#include <thread>
#include <vector>

#include "emulator.hpp"
#include "process.hpp"
#include "test_util.hpp"

using emulator::Emulator;
using emulator::Request;
using emulator::Response;
namespace json = boost::json;

namespace {

int64_t g_now_ms = ledger_test::utc(2026, 11, 26, 12) * 1000;
int64_t test_clock() { return g_now_ms; }

const std::string kMgmt = "sk-or-v1-" + std::string(64, 'a');

struct Client {
  Emulator emu{kMgmt, &test_clock};
  Response call(const std::string& method, const std::string& target, const std::string& key = kMgmt,
                const std::string& body = "") {
    return emu.handle(Request{method, target, key.empty() ? "" : "Bearer " + key, body});
  }
  json::object created(const std::string& body) {
    const Response r = call("POST", "/api/v1/keys", kMgmt, body);
    REQUIRE(r.status == 201);
    return json::parse(r.body).as_object();
  }
};

std::string message_of(const Response& r) { return std::string(json::parse(r.body).at("error").at("message").as_string()); }

}  // namespace

TEST_CASE("auth errors are OpenRouter's", "[emulator]") {
  Client c;
  Response r = c.call("GET", "/api/v1/keys", "");
  CHECK(r.status == 401);
  CHECK(message_of(r) == "No auth credentials found");
  CHECK(json::parse(r.body).at("error").at("code").as_int64() == 401);
  r = c.call("GET", "/api/v1/keys", "sk-or-v1-nope");
  CHECK(r.status == 401);
  CHECK(message_of(r) == "User not found.");
  const auto k = c.created(R"({"name": "worker"})");
  const std::string normal(k.at("key").as_string());
  r = c.call("GET", "/api/v1/keys", normal);
  CHECK(r.status == 403);
  CHECK(message_of(r) == "Only management keys can perform this operation");
  CHECK(c.call("GET", "/api/v1/credits", normal).status == 403);
  r = c.call("POST", "/api/v1/chat/completions", kMgmt, R"({"model": "openai/gpt-4o-mini", "messages": []})");
  CHECK(r.status == 401);
  CHECK(c.call("GET", "/api/v1/key", normal).status == 200);
  CHECK(c.call("GET", "/api/v1/auth/key", normal).status == 200);  // the old alias
}

TEST_CASE("create returns the key once, top level, and a redacted label", "[emulator]") {
  Client c;
  const auto k = c.created(R"({"name": "alice", "limit": 10, "limit_reset": "daily"})");
  const std::string secret(k.at("key").as_string());
  CHECK(secret.rfind("sk-or-v1-", 0) == 0);
  CHECK(secret.size() == 9 + 64);
  const auto& data = k.at("data").as_object();
  CHECK(data.at("hash").as_string().size() == 64);
  CHECK(data.at("name").as_string() == "alice");
  CHECK(data.at("label").as_string().find(secret.substr(12)) == std::string::npos);  // redacted
  CHECK(data.at("limit").to_number<double>() == 10);
  CHECK(data.at("limit_reset").as_string() == "daily");
  CHECK(data.at("updated_at").is_null());
  CHECK(c.call("POST", "/api/v1/keys/", kMgmt, R"({"name": "trailing-slash"})").status == 201);
  CHECK(c.call("POST", "/api/v1/keys", kMgmt, R"({"limit": 5})").status == 400);  // name required
  CHECK(c.call("POST", "/api/v1/keys", kMgmt, "{oops").status == 400);
  // The secret appears nowhere but in that one create response.
  const Response list = c.call("GET", "/api/v1/keys");
  CHECK(list.body.find(secret) == std::string::npos);
}

TEST_CASE("keys come in pages of 100, newest first; disabled ones only when asked", "[emulator]") {
  Client c;
  std::vector<std::string> hashes;
  for (int i = 0; i < 250; ++i)
    hashes.emplace_back(c.created(R"({"name": "k)" + std::to_string(i) + R"("})").at("data").at("hash").as_string());
  std::set<std::string> seen;
  std::vector<size_t> sizes;
  for (int offset = 0;; offset += 100) {
    const Response r = c.call("GET", "/api/v1/keys?offset=" + std::to_string(offset));
    REQUIRE(r.status == 200);
    const json::value page = json::parse(r.body);
    const auto& data = page.at("data").as_array();
    if (offset == 0) CHECK(data[0].at("name").as_string() == "k249");  // most recent first
    for (const auto& k : data) seen.insert(std::string(k.at("hash").as_string()));
    sizes.push_back(data.size());
    if (data.size() < 100) break;
  }
  CHECK(sizes == std::vector<size_t>{100, 100, 50});
  CHECK(seen.size() == 250);
  REQUIRE(c.call("PATCH", "/api/v1/keys/" + hashes[0], kMgmt, R"({"disabled": true})").status == 200);
  CHECK(json::parse(c.call("GET", "/api/v1/keys?offset=200").body).at("data").as_array().size() == 49);
  CHECK(json::parse(c.call("GET", "/api/v1/keys?offset=200&include_disabled=true").body).at("data").as_array().size() == 50);
  CHECK(c.call("GET", "/api/v1/keys?offset=-1").status == 400);
}

TEST_CASE("completions cost money into the key's windows; limits refuse like OpenRouter", "[emulator]") {
  Client c;
  g_now_ms = ledger_test::utc(2026, 11, 26, 12) * 1000;
  const auto k = c.created(R"({"name": "alice", "limit": "0.001", "limit_reset": "daily"})");
  const std::string secret(k.at("key").as_string()), hash(k.at("data").at("hash").as_string());
  const std::string body = R"({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hello there, how are you doing today?"}], "max_tokens": 50, "user": "alice"})";
  Response r = c.call("POST", "/api/v1/chat/completions", secret, body);
  REQUIRE(r.status == 200);
  const auto reply = json::parse(r.body).as_object();
  const auto& usage = reply.at("usage").as_object();
  CHECK(usage.at("prompt_tokens").as_int64() == 10);
  CHECK(usage.at("completion_tokens").as_int64() == 30);
  // 10 x $2.50/M + 30 x $10/M = $0.000325, written as a plain decimal
  CHECK(r.body.find("\"cost\":0.000325") != std::string::npos);
  CHECK(r.headers[0] == std::make_pair(std::string("X-Generation-Id"), std::string(reply.at("id").as_string())));
  r = c.call("GET", "/api/v1/keys/" + hash);
  const auto key = json::parse(r.body).at("data").as_object();
  CHECK(r.body.find("\"usage_daily\":0.000325") != std::string::npos);
  CHECK(r.body.find("\"limit_remaining\":0.000675") != std::string::npos);
  CHECK(key.at("usage").to_number<double>() == Approx(0.000325));
  CHECK(c.call("POST", "/api/v1/chat/completions", secret, R"({"model": "no/such", "messages": []})").status == 400);

  // Bypassed spend (drift) pushes it over the limit: 402, or the 403 variant when switched.
  REQUIRE(c.call("POST", "/__emulator/usage", "", R"({"hash": ")" + hash + R"(", "cost_usd": "0.001"})").status == 200);
  r = c.call("POST", "/api/v1/chat/completions", secret, body);
  CHECK(r.status == 402);
  REQUIRE(c.call("POST", "/__emulator/settings", "", R"({"limit_exceeded_status": 403})").status == 200);
  r = c.call("POST", "/api/v1/chat/completions", secret, body);
  CHECK(r.status == 403);
  CHECK(message_of(r).rfind("Key limit exceeded", 0) == 0);
  // A new UTC day resets the daily window (and the limit with it); the month keeps counting.
  g_now_ms = ledger_test::utc(2026, 11, 27, 0, 0, 1) * 1000;
  CHECK(c.call("POST", "/api/v1/chat/completions", secret, body).status == 200);
  r = c.call("GET", "/api/v1/keys/" + hash);
  CHECK(r.body.find("\"usage_daily\":0.000325") != std::string::npos);
  CHECK(r.body.find("\"usage_monthly\":0.00165") != std::string::npos);
  // Disabled keys and deleted keys.
  REQUIRE(c.call("PATCH", "/api/v1/keys/" + hash, kMgmt, R"({"disabled": true, "limit": null})").status == 200);
  CHECK(c.call("POST", "/api/v1/chat/completions", secret, body).status == 401);
  CHECK(c.call("PATCH", "/api/v1/keys/" + hash, kMgmt, R"({"workspace_id": "x"})").status == 400);
  REQUIRE(c.call("DELETE", "/api/v1/keys/" + hash).status == 200);
  CHECK(c.call("GET", "/api/v1/keys/" + hash).status == 404);
}

TEST_CASE("models, generations, credits and older field sets", "[emulator]") {
  Client c;
  Response r = c.call("GET", "/api/v1/models");
  REQUIRE(r.status == 200);
  CHECK(r.body.find(R"("id":"openai/gpt-4o-mini","name":"openai/gpt-4o-mini","pricing":{"prompt":"0.00000015","completion":"0.0000006")") != std::string::npos);
  const auto k = c.created(R"({"name": "g"})");
  const std::string secret(k.at("key").as_string());
  REQUIRE(c.call("POST", "/__emulator/settings", "", R"({"generation_not_ready_ms": 1000})").status == 200);
  r = c.call("POST", "/api/v1/chat/completions", secret, R"({"model": "openai/gpt-4o-mini", "messages": [{"content": "hi"}], "user": "bob"})");
  const std::string id(json::parse(r.body).at("id").as_string());
  CHECK(c.call("GET", "/api/v1/generation?id=" + id, secret).status == 404);  // not ready yet
  g_now_ms += 1500;
  r = c.call("GET", "/api/v1/generation?id=" + id, secret);
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body).at("data").at("external_user").as_string() == "bob");
  CHECK(c.call("GET", "/api/v1/credits").body.find("\"total_credits\":100") != std::string::npos);
  REQUIRE(c.call("POST", "/__emulator/settings", "", R"({"omit_newer_fields": true, "extra_fields": true})").status == 200);
  r = c.call("GET", "/api/v1/keys");
  CHECK(r.body.find("limit_remaining") == std::string::npos);
  CHECK(r.body.find("usage_daily") == std::string::npos);
  CHECK(r.body.find("x_emulator_unknown_field") != std::string::npos);
  CHECK(emulator::usd_number(1536) == "0.000001536");
  CHECK(emulator::usd_number(10'000'000'000) == "10");
  CHECK(emulator::usd_number(-2'500'000'000) == "-2.5");
}

TEST_CASE("faults: statuses N times, Retry-After, malformed, truncated, delays", "[emulator]") {
  Client c;
  REQUIRE(c.call("POST", "/__emulator/faults", "", R"({"path": "/api/v1/keys", "status": 429, "retry_after_s": 2, "count": 2})").status == 200);
  for (int i = 0; i < 2; ++i) {
    const Response r = c.call("GET", "/api/v1/keys");
    CHECK(r.status == 429);
    CHECK(r.headers == std::vector<std::pair<std::string, std::string>>{{"Retry-After", "2"}});
  }
  CHECK(c.call("GET", "/api/v1/keys").status == 200);  // used up
  for (int status : {400, 401, 402, 403, 404, 408, 413, 422, 500, 502, 503, 524, 529}) {
    REQUIRE(c.call("POST", "/__emulator/faults", "", R"({"path": "/api/v1/credits", "status": )" + std::to_string(status) + "}").status == 200);
    const Response r = c.call("GET", "/api/v1/credits");
    CHECK(r.status == status);
    CHECK(json::parse(r.body).at("error").at("code").as_int64() == status);
  }
  REQUIRE(c.call("POST", "/__emulator/faults", "", R"({"path": "/api/v1/keys", "body": "malformed"})").status == 200);
  Response r = c.call("GET", "/api/v1/keys");
  CHECK(r.status == 200);
  std::error_code ec;
  (void)json::parse(r.body, ec);
  CHECK(ec);
  REQUIRE(c.call("POST", "/__emulator/faults", "", R"({"path": "/api/v1/keys", "method": "GET", "body": "truncated", "delay_ms": 250})").status == 200);
  r = c.call("GET", "/api/v1/keys");
  CHECK(r.truncate);
  CHECK(r.delay_ms == 250);
  CHECK(c.call("POST", "/__emulator/faults", "", R"({"status": 500})").status == 400);  // no path
  CHECK(c.call("POST", "/__emulator/faults", "", R"({"path": "/x", "body": "weird"})").status == 400);
}

namespace {
// The JSON chunks of a stream (the "data: " events before [DONE]); comments and [DONE] counted apart.
struct ParsedStream {
  std::vector<json::object> chunks;
  int comments = 0;
  bool done = false;      // "data: [DONE]" came last
  bool malformed = false; // a data event that is not JSON
};
ParsedStream parse_stream(const Response& r) {
  ParsedStream out;
  for (const auto& event : r.events) {
    REQUIRE(event.data.size() >= 2);
    REQUIRE(event.data.substr(event.data.size() - 2) == "\n\n");  // one whole event per chunk
    CHECK_FALSE(out.done);                                        // nothing after [DONE]
    if (event.data.rfind(": ", 0) == 0) {
      CHECK(event.data == ": OPENROUTER PROCESSING\n\n");
      ++out.comments;
      continue;
    }
    REQUIRE(event.data.rfind("data: ", 0) == 0);
    const std::string payload = event.data.substr(6, event.data.size() - 8);
    if (payload == "[DONE]") {
      out.done = true;
      continue;
    }
    std::error_code ec;
    json::value v = json::parse(payload, ec);
    if (ec || !v.is_object()) {
      out.malformed = true;
      continue;
    }
    out.chunks.push_back(v.as_object());
  }
  return out;
}
std::string streamed_content(const ParsedStream& s) {
  std::string text;
  for (const auto& c : s.chunks)
    for (const auto& choice : c.at("choices").as_array()) text += std::string(choice.at("delta").at("content").as_string());
  return text;
}
const std::string kChat = R"("model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hello there, how are you doing today?"}], "max_tokens": 50, "user": "alice")";
}  // namespace

TEST_CASE("streams: OpenRouter's chunks, the same content and usage as without, billed once, then [DONE]", "[emulator][stream]") {
  Client c;
  const auto plain_key = c.created(R"({"name": "plain"})"), stream_key = c.created(R"({"name": "stream"})");
  const Response plain = c.call("POST", "/api/v1/chat/completions", std::string(plain_key.at("key").as_string()), "{" + kChat + "}");
  REQUIRE(plain.status == 200);
  CHECK_FALSE(plain.stream);
  const auto reply = json::parse(plain.body).as_object();
  const std::string secret(stream_key.at("key").as_string()), hash(stream_key.at("data").at("hash").as_string());
  const Response r = c.call("POST", "/api/v1/chat/completions", secret,
                            "{" + kChat + R"(, "stream": true, "stream_options": {"include_usage": true}})");
  REQUIRE(r.status == 200);
  REQUIRE(r.stream);
  CHECK_FALSE(r.truncate);
  const ParsedStream s = parse_stream(r);
  CHECK(s.comments == 1);
  CHECK(s.done);
  CHECK_FALSE(s.malformed);
  REQUIRE(s.chunks.size() >= 4);
  const std::string id(s.chunks[0].at("id").as_string());
  CHECK(r.headers[0] == std::make_pair(std::string("X-Generation-Id"), id));
  for (const auto& chunk : s.chunks) {
    CHECK(chunk.at("id").as_string() == id);
    CHECK(chunk.at("object").as_string() == "chat.completion.chunk");
    CHECK(chunk.at("model").as_string() == "openai/gpt-4o");
  }
  // The pieces add up to the reply a non-streaming request gets; the finish reason comes last.
  CHECK(streamed_content(s) == reply.at("choices").at(0).at("message").at("content").as_string());
  const auto& finish = s.chunks[s.chunks.size() - 2].at("choices").at(0).as_object();
  CHECK(finish.at("finish_reason").as_string() == "stop");
  // The last chunk: empty choices and the same usage, cost written the same way, as the reply.
  const auto& last = s.chunks.back();
  CHECK(last.at("choices").as_array().empty());
  CHECK(json::serialize(last.at("usage")) == json::serialize(reply.at("usage")));
  CHECK(r.events[r.events.size() - 2].data.find("\"cost\":0.000325") != std::string::npos);
  // Counted into the key once, exactly what the non-streaming request cost.
  Response k = c.call("GET", "/api/v1/keys/" + hash);
  CHECK(k.body.find("\"usage\":0.000325,") != std::string::npos);
  CHECK(k.body.find("\"usage_daily\":0.000325,") != std::string::npos);
  k = c.call("GET", "/api/v1/generation?id=" + id, secret);
  REQUIRE(k.status == 200);
  CHECK(k.body.find("\"total_cost\":0.000325") != std::string::npos);
  CHECK(json::parse(k.body).at("data").at("streamed").as_bool());
  CHECK(json::parse(c.call("GET", "/__emulator/state").body).at("generations").as_int64() == 2);

  // include_usage false is accepted and changes nothing (OpenRouter always sends usage); a
  // stream of "false" is a plain reply; wrong types are refused before anything is billed.
  const ParsedStream quiet = parse_stream(c.call("POST", "/api/v1/chat/completions", secret,
                                                 "{" + kChat + R"(, "stream": true, "stream_options": {"include_usage": false}})"));
  CHECK(quiet.chunks.back().at("usage").at("cost").to_number<double>() == Approx(0.000325));
  CHECK_FALSE(c.call("POST", "/api/v1/chat/completions", secret, "{" + kChat + R"(, "stream": false})").stream);
  CHECK(c.call("POST", "/api/v1/chat/completions", secret, "{" + kChat + R"(, "stream": "yes"})").status == 400);
  CHECK(c.call("POST", "/api/v1/chat/completions", secret, "{" + kChat + R"(, "stream": true, "stream_options": 1})").status == 400);
  CHECK(c.call("POST", "/api/v1/chat/completions", secret,
               "{" + kChat + R"(, "stream": true, "stream_options": {"include_usage": "yes"}})").status == 400);
  CHECK(c.call("GET", "/api/v1/keys/" + hash).body.find("\"usage\":0.000975,") != std::string::npos);  // 2 streams, 1 reply
  // A stream over the key's limit is refused like any completion: an error status, no stream.
  REQUIRE(c.call("PATCH", "/api/v1/keys/" + hash, kMgmt, R"({"limit": 0.0005})").status == 200);
  const Response refused = c.call("POST", "/api/v1/chat/completions", secret, "{" + kChat + R"(, "stream": true})");
  CHECK(refused.status == 402);
  CHECK_FALSE(refused.stream);
}

TEST_CASE("streams are paced only when asked: time to first token, tokens per second", "[emulator][stream]") {
  Client c;
  const std::string secret(c.created(R"({"name": "s"})").at("key").as_string());
  const std::string body = "{" + kChat + R"(, "stream": true})";
  Response r = c.call("POST", "/api/v1/chat/completions", secret, body);
  for (const auto& event : r.events) CHECK(event.delay_us == 0);  // the default: as fast as possible
  REQUIRE(c.call("POST", "/__emulator/settings", "", R"({"ttft_ms": 250, "tokens_per_second": 100})").status == 200);
  r = c.call("POST", "/api/v1/chat/completions", secret, body);
  REQUIRE(r.events.size() > 3);
  CHECK(r.events[0].delay_us == 0);        // the processing comment at once,
  CHECK(r.events[1].delay_us == 250'000);  // the first token after 250 ms,
  int64_t rest_us = 0;
  for (size_t i = 2; i < r.events.size(); ++i) rest_us += r.events[i].delay_us;
  // ... and the whole reply (30 tokens) at 100 tokens/s: 0.3 s for all its pieces (the first
  // piece's share is inside the 250 ms), to within rounding.
  const int64_t pieces = static_cast<int64_t>(r.events.size()) - 4;
  CHECK(rest_us == Approx(300'000.0 * static_cast<double>(pieces - 1) / static_cast<double>(pieces)).margin(10));
  REQUIRE(c.call("POST", "/__emulator/settings", "", R"({"ttft_ms": 0, "tokens_per_second": 0})").status == 200);
  r = c.call("POST", "/api/v1/chat/completions", secret, body);
  for (const auto& event : r.events) CHECK(event.delay_us == 0);
}

TEST_CASE("a truncated stream stops mid-way, yet its generation keeps its real cost", "[emulator][stream]") {
  Client c;
  const auto k = c.created(R"({"name": "t"})");
  const std::string secret(k.at("key").as_string()), hash(k.at("data").at("hash").as_string());
  REQUIRE(c.call("POST", "/__emulator/faults", "", R"({"path": "/api/v1/chat/completions", "body": "truncated"})").status == 200);
  const Response r = c.call("POST", "/api/v1/chat/completions", secret, "{" + kChat + R"(, "stream": true})");
  REQUIRE(r.stream);
  CHECK(r.truncate);
  const ParsedStream s = parse_stream(r);
  CHECK_FALSE(s.done);  // no [DONE]
  REQUIRE_FALSE(s.chunks.empty());
  for (const auto& chunk : s.chunks) CHECK_FALSE(chunk.contains("usage"));  // no usage chunk
  CHECK_FALSE(streamed_content(s).empty());  // but some content came
  const std::string id(s.chunks[0].at("id").as_string());
  const Response g = c.call("GET", "/api/v1/generation?id=" + id, secret);
  REQUIRE(g.status == 200);
  CHECK(g.body.find("\"total_cost\":0.000325") != std::string::npos);
  CHECK(c.call("GET", "/api/v1/keys/" + hash).body.find("\"usage\":0.000325,") != std::string::npos);
  // The fault is used up; a malformed one breaks one chunk in the middle of the stream.
  CHECK(parse_stream(c.call("POST", "/api/v1/chat/completions", secret, "{" + kChat + R"(, "stream": true})")).done);
  REQUIRE(c.call("POST", "/__emulator/faults", "", R"({"path": "/api/v1/chat/completions", "body": "malformed"})").status == 200);
  const ParsedStream broken = parse_stream(c.call("POST", "/api/v1/chat/completions", secret, "{" + kChat + R"(, "stream": true})"));
  CHECK(broken.malformed);
  CHECK(broken.done);
}

namespace {
// The emulator binary, started in `dir`; the caller stops it (its exit status is what some tests check).
struct Spawned {
  pid_t pid = -1;
  std::string key_file, port;
};
Spawned spawn_emulator(const ledger_test::TempDir& dir) {
  Spawned e;
  e.key_file = dir.path() + "/mgmt.key";
  const std::string port_file = dir.path() + "/port";
  e.pid = ledger_test::spawn({EMULATOR_PATH, "--management-key-file", e.key_file, "--port-file", port_file}, -1, -1);
  REQUIRE(e.pid > 0);
  for (int i = 0; i < 200 && e.port.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    e.port = ledger_test::read_file(port_file);
  }
  REQUIRE_FALSE(e.port.empty());
  return e;
}
}  // namespace

namespace {
// One HTTP/1.1 exchange on a fresh connection to the emulator binary, everything it sent until EOF.
std::string raw_exchange(const std::string& port, const std::string& request) {
  namespace net = boost::asio;
  net::io_context io;
  net::ip::tcp::socket socket(io);
  socket.connect({net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(std::stoi(port))});
  net::write(socket, net::buffer(request));
  std::string response;
  boost::system::error_code ec;
  char buffer[4096];
  for (size_t n; (n = socket.read_some(net::buffer(buffer), ec)) > 0 || !ec;) response.append(buffer, n);
  return response;
}
std::string post(const std::string& path, const std::string& key, const std::string& body) {
  return "POST " + path + " HTTP/1.1\r\nHost: x\r\n" + (key.empty() ? "" : "Authorization: Bearer " + key + "\r\n") +
         "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}
}  // namespace

TEST_CASE("text completions and embeddings in OpenRouter's shapes, billed like chat", "[emulator]") {
  Client c;
  const auto k = c.created(R"({"name": "t"})");
  const std::string secret(k.at("key").as_string()), hash(k.at("data").at("hash").as_string());
  // 44 characters of prompt: 12 tokens; a reply of 20 + 12 % 40 = 32 tokens, cut to max_tokens 10.
  Response r = c.call("POST", "/api/v1/completions", secret,
                      R"({"model": "openai/gpt-4o-mini", "prompt": ["0123456789012345678901", "0123456789012345678901"], "max_tokens": 10})");
  REQUIRE(r.status == 200);
  auto v = json::parse(r.body).as_object();
  CHECK(v.at("object").as_string() == "text_completion");
  CHECK(v.at("choices").at(0).at("text").as_string().starts_with("Emulated reply"));
  CHECK(v.at("usage").at("prompt_tokens").as_int64() == 12);
  CHECK(v.at("usage").at("completion_tokens").as_int64() == 10);
  CHECK(r.body.find("\"cost\":0.0000078}") != std::string::npos);  // 12 x $0.15 + 10 x $0.60 per million tokens
  // Embeddings: no completion tokens; floats, or base64 float32 when asked (the openai SDKs' default).
  r = c.call("POST", "/api/v1/embeddings", secret, R"({"model": "openai/text-embedding-3-small", "input": ["abcdefgh", "ijkl"]})");
  REQUIRE(r.status == 200);
  v = json::parse(r.body).as_object();
  CHECK(v.at("object").as_string() == "list");
  REQUIRE(v.at("data").as_array().size() == 2);
  CHECK(v.at("data").at(1).at("embedding").as_array().size() == 8);
  CHECK(v.at("usage").at("prompt_tokens").as_int64() == 4);
  CHECK_FALSE(v.at("usage").as_object().contains("completion_tokens"));
  CHECK(r.body.find("\"cost\":0.00000008") != std::string::npos);  // 4 x $0.02 per million
  r = c.call("POST", "/api/v1/embeddings", secret, R"({"model": "openai/text-embedding-3-small", "input": "x", "encoding_format": "base64"})");
  CHECK(json::parse(r.body).at("data").at(0).at("embedding").as_string().size() == 44);  // 32 bytes
  CHECK(c.call("POST", "/api/v1/embeddings", secret, R"({"model": "openai/text-embedding-3-small", "input": "x", "stream": true})").status == 400);
  CHECK(c.call("POST", "/api/v1/completions", secret, R"({"model": "openai/gpt-4o-mini"})").status == 400);
  // A streamed text completion: text chunks, usage last.
  r = c.call("POST", "/api/v1/completions", secret, R"({"model": "openai/gpt-4o-mini", "prompt": "hello", "stream": true})");
  REQUIRE(r.stream);
  const ParsedStream s = parse_stream(r);
  CHECK(s.done);
  REQUIRE(s.chunks.size() >= 3);
  CHECK(s.chunks[0].at("object").as_string() == "text_completion");
  CHECK(s.chunks[0].at("choices").at(0).as_object().contains("text"));
  CHECK(s.chunks.back().at("usage").at("completion_tokens").as_int64() == 22);
  // Billed: 7,800 + 80 + 20 (one token, base64) + 13,500 (2 + 22 tokens) nano-USD.
  CHECK(c.call("GET", "/api/v1/keys/" + hash).body.find("\"usage\":0.0000214,") != std::string::npos);
}

TEST_CASE("generations are kept up to a bound, the oldest dropped first", "[emulator]") {
  Client c;
  const auto k = c.created(R"({"name": "g"})");
  const std::string secret(k.at("key").as_string());
  REQUIRE(c.call("POST", "/__emulator/settings", "", R"({"generations_kept": 3})").status == 200);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i)
    ids.emplace_back(json::parse(c.call("POST", "/api/v1/chat/completions", secret, "{" + kChat + "}").body).at("id").as_string());
  CHECK(c.call("GET", "/api/v1/generation?id=" + ids[0], secret).status == 404);
  CHECK(c.call("GET", "/api/v1/generation?id=" + ids[1], secret).status == 404);
  for (int i = 2; i < 5; ++i) CHECK(c.call("GET", "/api/v1/generation?id=" + ids[i], secret).status == 200);
  CHECK(json::parse(c.call("GET", "/__emulator/state").body).at("generations").as_int64() == 3);
  CHECK(emulator::Emulator::kGenerationsKept == 100'000);  // the documented default
}

TEST_CASE("the emulator binary serves real HTTP on loopback, and truncates for real", "[emulator][process]") {
  ledger_test::TempDir dir;
  const auto [pid, key_file, port] = spawn_emulator(dir);
  struct stat st {};
  REQUIRE(::stat(key_file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  const std::string key = ledger_test::read_file(key_file).substr(0, 73);
  auto raw = [&](const std::string& request) { return raw_exchange(port, request); };
  std::string r = raw("GET /api/v1/keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  CHECK(r.rfind("HTTP/1.1 401", 0) == 0);
  r = raw("GET /api/v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key + "\r\nConnection: close\r\n\r\n");
  CHECK(r.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(r.find("{\"data\":[]}") != std::string::npos);
  const std::string fault = R"({"path": "/api/v1/credits", "body": "truncated"})";
  r = raw("POST /__emulator/faults HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(fault.size()) +
          "\r\nConnection: close\r\n\r\n" + fault);
  CHECK(r.rfind("HTTP/1.1 200", 0) == 0);
  r = raw("GET /api/v1/credits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key + "\r\nConnection: close\r\n\r\n");
  const size_t header_end = r.find("\r\n\r\n");
  REQUIRE(header_end != std::string::npos);
  const size_t promised = std::stoul(r.substr(r.find("Content-Length: ") + 16));
  CHECK(r.size() - header_end - 4 < promised);  // fewer bytes than promised, then EOF
  ::kill(pid, SIGTERM);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
}


TEST_CASE("the emulator binary streams with chunked transfer, and cuts a truncated stream for real", "[emulator][process][stream]") {
  ledger_test::TempDir dir;
  const auto [pid, key_file, port] = spawn_emulator(dir);
  const std::string mgmt = ledger_test::read_file(key_file).substr(0, 73);
  std::string r = raw_exchange(port, post("/api/v1/keys", mgmt, R"({"name": "worker"})"));
  REQUIRE(r.rfind("HTTP/1.1 201", 0) == 0);
  const std::string key(json::parse(r.substr(r.find("\r\n\r\n") + 4)).at("key").as_string());
  const std::string body = "{" + kChat + R"(, "stream": true})";
  r = raw_exchange(port, post("/api/v1/chat/completions", key, body));
  REQUIRE(r.rfind("HTTP/1.1 200", 0) == 0);
  const std::string head = r.substr(0, r.find("\r\n\r\n"));
  CHECK(head.find("Content-Type: text/event-stream") != std::string::npos);
  CHECK(head.find("Transfer-Encoding: chunked") != std::string::npos);
  CHECK(head.find("X-Generation-Id: gen-") != std::string::npos);
  CHECK(r.find("\r\n19\r\n: OPENROUTER PROCESSING\n\n\r\n") != std::string::npos);  // one event, one chunk
  CHECK(r.find("\"cost\":0.000325}}\n\n\r\n") != std::string::npos);
  const std::string tail = "\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";  // [DONE], then the last chunk
  CHECK(r.size() > tail.size());
  CHECK(r.substr(r.size() - tail.size()) == tail);

  r = raw_exchange(port, post("/__emulator/faults", "", R"({"path": "/api/v1/chat/completions", "body": "truncated"})"));
  REQUIRE(r.rfind("HTTP/1.1 200", 0) == 0);
  r = raw_exchange(port, post("/api/v1/chat/completions", key, body));
  REQUIRE(r.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(r.find("\"content\":\"Emulated\"") != std::string::npos);  // content came,
  CHECK(r.find("\"usage\"") == std::string::npos);                 // then the connection closed:
  CHECK(r.find("[DONE]") == std::string::npos);                    // no usage, no [DONE],
  CHECK(r.find("\r\n0\r\n\r\n") == std::string::npos);             // no last chunk
  // A truncated plain reply still carries its headers (the generation id to look its cost up by).
  r = raw_exchange(port, post("/__emulator/faults", "", R"({"path": "/api/v1/chat/completions", "body": "truncated"})"));
  r = raw_exchange(port, post("/api/v1/chat/completions", key, "{" + kChat + "}"));
  CHECK(r.find("X-Generation-Id: gen-") != std::string::npos);
  CHECK(r.find("\"usage\"") == std::string::npos);
  ::kill(pid, SIGTERM);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
}

// Sessions run on detached threads: a SIGTERM while keep-alive connections are open (and their
// clients hang up at the same moment) must end the process cleanly, never with a session touching
// the server after main returned (ASan saw that once as a use-after-free, then a hang).
TEST_CASE("the emulator stops cleanly with keep-alive connections open", "[emulator][process]") {
  namespace net = boost::asio;
  for (int round = 0; round < 5; ++round) {
    ledger_test::TempDir dir;
    const auto [pid, key_file, port] = spawn_emulator(dir);
    net::io_context io;
    std::vector<net::ip::tcp::socket> sockets;
    for (int c = 0; c < 8; ++c) {
      sockets.emplace_back(io);
      sockets.back().connect({net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(std::stoi(port))});
      const std::string request = "GET /api/v1/models HTTP/1.1\r\nHost: x\r\n\r\n";  // keep-alive
      net::write(sockets.back(), net::buffer(request));
      char buffer[512];
      REQUIRE(sockets.back().read_some(net::buffer(buffer)) > 0);
    }
    ::kill(pid, SIGTERM);
    if (round % 2 == 1) std::this_thread::sleep_for(std::chrono::milliseconds(round));
    for (auto& s : sockets) s.close();
    int status = 0;
    pid_t done = 0;
    for (int i = 0; i < 500 && done == 0; ++i) {
      done = ::waitpid(pid, &status, WNOHANG);
      if (done == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (done == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
    INFO("round " << round);
    REQUIRE(done == pid);  // ended within 5 s
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
}
