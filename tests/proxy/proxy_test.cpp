// ledger-proxy against the emulator over loopback, with a real ledger: the ledger equals what
// OpenRouter billed the upstream key to the nano-USD (plain and streamed, fallback and end-user
// attribution included); denials have the shapes the OpenAI SDKs understand; bad bodies and
// upstream faults are clear errors that leave no hold behind; a client that goes away mid-stream
// is settled by the generation's real cost; SIGTERM drains; no key reaches the log.
#include <curl/curl.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/wait.h>

#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <thread>

#include "emulator_process.hpp"
#include "ledger/ledger.hpp"
#include "ledger/money.hpp"
#include "process.hpp"
#include "test_util.hpp"

using namespace ledger;
using ledger_test::kUsd;
using ledger_test::run;

namespace {

struct Reply {
  long status = 0;
  std::string body, headers;
  bool has_header(const std::string& h) const { return headers.find(h) != std::string::npos; }
  std::string error_field(const char* name) const {
    std::error_code ec;
    const auto v = boost::json::parse(body, ec);
    if (ec || !v.is_object() || !v.as_object().contains("error")) return "";
    return std::string(v.at("error").at(name).as_string());
  }
  std::string code() const { return error_field("code"); }
  std::string message() const { return error_field("message"); }
};

size_t append(char* p, size_t s, size_t n, void* out) {
  static_cast<std::string*>(out)->append(p, s * n);
  return s * n;
}

// One request with curl; `abort_after` > 0 hangs up after that many body bytes (a client going away).
Reply http(const std::string& url, const std::string& key, const std::string& body, size_t abort_after = 0) {
  CURL* curl = curl_easy_init();
  Reply r;
  struct Sink {
    std::string* body;
    size_t limit;
  } sink{&r.body, abort_after};
  curl_slist* headers = nullptr;
  if (!key.empty()) headers = curl_slist_append(headers, ("Authorization: Bearer " + key).c_str());
  headers = curl_slist_append(headers, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  if (!body.empty()) curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, +[](char* p, size_t s, size_t n, void* out) -> size_t {
    auto* k = static_cast<Sink*>(out);
    k->body->append(p, s * n);
    return k->limit > 0 && k->body->size() >= k->limit ? 0 : s * n;
  });
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &r.headers);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, append);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 60L);
  curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return r;
}

std::string chat(const std::string& model, const std::string& extra = "") {
  return R"({"model": ")" + model + R"(", "messages": [{"role": "user", "content": "hello there"}])" + extra + "}";
}

struct Setup : ledger_test::EmulatorLedger {
  std::string upstream_hash, alice_key, eng_key, carol_key, log = dir.path() + "/proxy.log";
  pid_t proxy = -1;
  std::string base;

  // proxy_extra: more keys for the proxy section (", \"idle_timeout_ms\": 500"); base_url: another
  // upstream than the emulator.
  explicit Setup(const std::string& proxy_extra = "", const std::string& base_url = "") {
    openrouter::KeyInfo k;
    std::string secret;
    REQUIRE_FALSE(client.create_key("proxy-upstream", std::nullopt, "", &k, &secret));
    upstream_hash = k.hash;
    ledger_test::write_file(dir.path() + "/upstream.key", secret + "\n");
    ledger_test::write_file(config, R"({"ledger": {"dir": "ledger", "max_accounts": 64, "max_reservations": 4096, "max_processes": 32},
      "openrouter": {"base_url": ")" + (base_url.empty() ? emu.base() : base_url) + R"(", "management_key_file": ")" + emu.key_file() +
                                        R"(", "app_url": "https://proxy-test.example", "app_title": "proxy-test"},
      "tiers": {"pro": {"models": ["openai/gpt-4o-mini", "openai/gpt-4o"]},
                "basic": {"models": ["openai/gpt-4o-mini"], "fallback": "openai/gpt-4o-mini"}},
      "prices": {"openai/gpt-4o-mini": {"prompt_usd_per_mtok": "0.15", "completion_usd_per_mtok": "0.60"},
                 "openai/gpt-4o": {"prompt_usd_per_mtok": "2.50", "completion_usd_per_mtok": "10"},
                 "openai/text-embedding-3-small": {"prompt_usd_per_mtok": "0.02", "completion_usd_per_mtok": "0"}},
      "accounts": [{"id": "eng", "limit_usd": "10", "period": "daily"},
                   {"id": "alice", "parent": "eng", "tier": "pro", "limit_usd": "5", "period": "daily"},
                   {"id": "bob", "parent": "eng", "tier": "pro", "limit_usd": "5", "period": "daily"},
                   {"id": "carol", "parent": "eng", "tier": "basic", "limit_usd": "0.001", "period": "daily"},
                   {"id": "dan", "parent": "eng", "tier": "pro", "limit_usd": "5", "period": "daily", "rpm": 2, "tpm": 1000000},
                   {"id": "other", "limit_usd": "1", "period": "daily"}],
      "proxy": {"listen": "127.0.0.1:0", "upstream_key_file": "upstream.key", "max_tokens_default": 512,
                "max_body_bytes": 65536, "drain_timeout_ms": 10000)" + proxy_extra + R"(}})");
    REQUIRE(run({LEDGERCTL_PATH, "--config", config, "init"}).exit_code == 0);
    alice_key = make_key("alice");
    eng_key = make_key("eng");
    carol_key = make_key("carol");
    start();
  }
  ~Setup() { stop(); }
  std::string make_key(const std::string& account) {
    const auto r = run({LEDGERCTL_PATH, "--config", config, "proxy-key", "create", account});
    REQUIRE(r.exit_code == 0);
    REQUIRE(r.out.rfind(account + ": lk-", 0) == 0);
    return r.out.substr(account.size() + 2, 51);
  }
  void start() {
    const std::string port_file = dir.path() + "/proxy.port";
    std::remove(port_file.c_str());
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    proxy = ledger_test::spawn({PROXY_PATH, "--config", config, "--port-file", port_file}, fd, fd);
    ::close(fd);
    std::string port;
    for (int i = 0; i < 300 && port.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      const std::string p = ledger_test::read_file(port_file);
      if (!p.empty() && p.back() == '\n') port = p.substr(0, p.size() - 1);
    }
    REQUIRE_FALSE(port.empty());
    base = "http://127.0.0.1:" + port;
  }
  int stop() {
    if (proxy <= 0) return 0;
    ::kill(proxy, SIGTERM);
    int status = 0;
    ::waitpid(proxy, &status, 0);
    proxy = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  Reply post(const std::string& key, const std::string& body, size_t abort_after = 0, const std::string& path = "/api/v1/chat/completions") {
    return http(base + path, key, body, abort_after);
  }
  Balance balance(const std::string& account) {
    std::unique_ptr<Ledger> l;
    REQUIRE(Ledger::open(ledger_dir, Options{}, &l) == Code::kOk);
    Balance b;
    REQUIRE(l->balance(account, &b) == Code::kOk);
    return b;
  }
  int64_t billed() {  // what OpenRouter (the emulator) billed the proxy's upstream key
    openrouter::KeyInfo k;
    REQUIRE_FALSE(client.get_key(upstream_hash, &k));
    return k.usage_nanousd.value_or(-1);
  }
  // Holds settle after the answer (a generation lookup may take a second or two).
  bool settled() {
    for (int i = 0; i < 500; ++i, std::this_thread::sleep_for(std::chrono::milliseconds(20)))
      if (balance("eng").held_nanousd == 0 && balance("other").held_nanousd == 0) return true;
    return false;
  }
  void fault(const std::string& json) { emu.admin("/__emulator/faults", json); }
  void settings(const std::string& json) { emu.admin("/__emulator/settings", json); }
};

}  // namespace

TEST_CASE("through the proxy the ledger equals what OpenRouter billed, to the nano-USD", "[proxy]") {
  Setup s;
  for (int i = 0; i < 5; ++i) {
    const auto r = s.post(s.alice_key, chat("openai/gpt-4o-mini", R"(, "max_tokens": 40)"));
    INFO(r.body);
    REQUIRE(r.status == 200);
    CHECK(r.body.find("\"usage\"") != std::string::npos);
  }
  for (int i = 0; i < 3; ++i) {  // streamed: relayed as server-sent events, settled by the last chunk's usage
    const auto r = s.post(s.alice_key, chat("openai/gpt-4o", R"(, "stream": true)"));
    REQUIRE(r.status == 200);
    CHECK(r.has_header("text/event-stream"));
    CHECK(r.body.find("data: [DONE]") != std::string::npos);
  }
  // A team's key may charge one of its members (end-user attribution); the answered model is the
  // tier's fallback when the asked one is not allowed.
  const auto bob = s.post(s.eng_key, chat("openai/gpt-4o-mini", R"(, "user": "bob", "max_tokens": 10)"));
  REQUIRE(bob.status == 200);
  const auto fallback = s.post(s.carol_key, chat("openai/gpt-4o", R"(, "max_tokens": 5)"));
  REQUIRE(fallback.status == 200);
  CHECK(fallback.body.find("\"model\":\"openai/gpt-4o-mini\"") != std::string::npos);
  REQUIRE(s.settled());
  CHECK(s.balance("bob").spent_nanousd > 0);
  CHECK(s.balance("carol").spent_nanousd > 0);
  CHECK(s.balance("alice").requests == 8);
  CHECK(s.balance("eng").spent_nanousd == s.billed());  // every request, exactly what was billed
  // The models list and the health check pass; no key in the log.
  CHECK(http(s.base + "/api/v1/models", s.alice_key, "").status == 200);
  CHECK(http(s.base + "/healthz", "", "").body == "{\"status\":\"ok\"}");
  REQUIRE(s.stop() == 0);
  const std::string log = ledger_test::read_file(s.log);
  CHECK(log.find("lk-") == std::string::npos);
  CHECK(log.find("sk-or-") == std::string::npos);
  CHECK(log.find("hello there") == std::string::npos);  // nor prompt text
  CHECK(log.find("msg=\"request\" method=POST path=/api/v1/chat/completions status=200 account=bob") != std::string::npos);
}

TEST_CASE("text completions and embeddings: an upper-bound hold, then exactly what was billed", "[proxy]") {
  Setup s;
  const std::string prompt = R"({"model": "openai/gpt-4o-mini", "prompt": "hello there", "max_tokens": 20)";
  auto r = s.post(s.eng_key, prompt + "}", 0, "/api/v1/completions");
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(r.body.find("\"object\":\"text_completion\"") != std::string::npos);
  r = s.post(s.eng_key, prompt + R"(, "stream": true})", 0, "/v1/completions");
  REQUIRE(r.status == 200);
  CHECK(r.body.find("\"text\":") != std::string::npos);
  CHECK(r.body.find("data: [DONE]") != std::string::npos);
  const std::string embed = R"({"model": "openai/text-embedding-3-small", "input": ["one text", "and another"]})";
  r = s.post(s.eng_key, embed, 0, "/api/v1/embeddings");
  REQUIRE(r.status == 200);
  CHECK(boost::json::parse(r.body).at("data").as_array().size() == 2);
  // Bad bodies name the field; an embedding cannot stream.
  r = s.post(s.eng_key, R"({"model": "openai/text-embedding-3-small"})", 0, "/v1/embeddings");
  CHECK(r.status == 400);
  CHECK(r.message().find("\"input\" is required") != std::string::npos);
  r = s.post(s.eng_key, R"({"model": "openai/text-embedding-3-small", "input": "x", "stream": true})", 0, "/v1/embeddings");
  CHECK(r.status == 400);
  CHECK(r.message().find("\"stream\" is not supported for embeddings") != std::string::npos);
  r = s.post(s.eng_key, R"({"model": "openai/gpt-4o-mini", "prompt": 5})", 0, "/v1/completions");
  CHECK(r.message().find("\"prompt\" is required: a string or an array") != std::string::npos);
  REQUIRE(s.settled());
  CHECK(s.balance("eng").requests == 3);
  CHECK(s.balance("eng").spent_nanousd == s.billed());  // each exactly what the emulator billed
  REQUIRE(s.stop() == 0);
  // The embedding's hold bounded its prompt by the body's bytes and held no completion tokens.
  std::unique_ptr<Ledger> l;
  REQUIRE(Ledger::open(s.ledger_dir, Options{}, &l) == Code::kOk);
  int64_t bound = 0;
  REQUIRE(l->estimate("openai/text-embedding-3-small", static_cast<uint32_t>(embed.size()), 0, &bound) == Code::kOk);
  const std::string log = ledger_test::read_file(s.log);
  CHECK(log.find("path=/api/v1/embeddings status=200 account=eng model=openai/text-embedding-3-small hold_usd=" + format_usd(bound) + " ") !=
        std::string::npos);
  CHECK(log.find("path=/v1/completions status=200 account=eng model=openai/gpt-4o-mini stream=1") != std::string::npos);
}

TEST_CASE("denials have the shapes the OpenAI SDKs understand, and leave no hold", "[proxy]") {
  Setup s;
  auto r = s.post(s.carol_key, chat("openai/gpt-4o-mini", R"(, "max_tokens": 100000)"));  // more than carol's $0.001
  CHECK(r.status == 429);
  CHECK(r.code() == "budget_exceeded");
  CHECK(r.body.find("\"type\":\"insufficient_quota\"") != std::string::npos);
  CHECK(r.has_header("x-should-retry: false"));
  r = s.post(s.alice_key, chat("openai/gpt-4o-mini", R"(, "max_tokens": 9000000)"));  // within alice's bound? no: eng's $10 too
  CHECK(r.status == 429);
  r = s.post(s.alice_key, chat("anthropic/claude-3.5-sonnet"));
  CHECK(r.status == 403);
  CHECK(r.code() == "model_not_allowed");
  r = s.post(s.alice_key, chat("openai/gpt-4o-mini", R"(, "user": "other")"));
  CHECK(r.status == 403);
  CHECK(r.code() == "user_not_allowed");
  CHECK(s.post("", chat("openai/gpt-4o-mini")).status == 401);
  CHECK(s.post("lk-" + std::string(48, 'a'), chat("openai/gpt-4o-mini")).code() == "invalid_api_key");
  REQUIRE(run({LEDGERCTL_PATH, "--config", s.config, "block", "alice"}).exit_code == 0);
  r = s.post(s.alice_key, chat("openai/gpt-4o-mini"));
  CHECK(r.status == 403);
  CHECK(r.code() == "account_blocked");
  // A revoked key is refused at once, without a reload.
  const auto list = run({LEDGERCTL_PATH, "--config", s.config, "proxy-key", "list", "--json"});
  const auto keys = boost::json::parse(list.out).at("keys").as_array();
  REQUIRE(keys.size() == 3);
  const std::string eng_id(keys[1].at("id").as_string());
  REQUIRE(run({LEDGERCTL_PATH, "--config", s.config, "proxy-key", "revoke", eng_id.substr(0, 8)}).exit_code == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  r = s.post(s.eng_key, chat("openai/gpt-4o-mini"));
  CHECK(r.status == 401);
  CHECK(r.code() == "invalid_api_key");
  CHECK(r.body.find("lk-") == std::string::npos);  // no key echoed
  CHECK(s.balance("eng").held_nanousd == 0);
  CHECK(s.balance("eng").spent_nanousd == 0);
  CHECK(s.billed() == 0);  // nothing reached OpenRouter
}

// DESIGN 12/13: a rate denial is retryable: 429 rate_limited with Retry-After (seconds) and
// retry-after-ms, which the SDKs wait and retry after; tokens count what OpenRouter reported.
TEST_CASE("a rate limit is a retryable 429 with Retry-After, and tokens count the reply's usage", "[proxy][rules]") {
  Setup s;
  const std::string dan = s.make_key("dan");
  uint64_t tokens = 0;
  for (int i = 0; i < 2; ++i) {
    const Reply ok = s.post(dan, chat("openai/gpt-4o-mini", R"(, "max_tokens": 50)"));
    REQUIRE(ok.status == 200);
    const auto usage = boost::json::parse(ok.body).at("usage").as_object();
    tokens += static_cast<uint64_t>(usage.at("prompt_tokens").to_number<int64_t>() + usage.at("completion_tokens").to_number<int64_t>());
  }
  const Reply r = s.post(dan, chat("openai/gpt-4o-mini", R"(, "max_tokens": 50)"));  // dan's third in the minute
  CHECK(r.status == 429);
  CHECK(r.code() == "rate_limited");
  CHECK(r.body.find("\"type\":\"rate_limit_error\"") != std::string::npos);
  CHECK(r.has_header("retry-after-ms: "));
  CHECK(r.has_header("Retry-After: "));
  CHECK_FALSE(r.has_header("x-should-retry: false"));  // unlike a budget denial, worth retrying later
  REQUIRE(s.settled());
  CHECK(s.balance("dan").spent_nanousd == s.billed());  // two requests billed, the denied one never sent
  CHECK(s.balance("dan").requests == 2);
  std::unique_ptr<Ledger> l;
  REQUIRE(Ledger::open(s.ledger_dir, Options{}, &l) == Code::kOk);
  RateUsage u;
  REQUIRE(l->rate_usage("dan", &u) == Code::kOk);
  if (u.requests != 0) {  // still the same minute (else the counts already started again)
    CHECK(u.requests == 2);
    CHECK(u.tokens == tokens);  // the reply's usage replaced the estimate's upper bound
  }
  CHECK(u.concurrent == 0);
}

TEST_CASE("bad bodies are clear errors, nothing is held or sent upstream", "[proxy]") {
  Setup s;
  const std::pair<std::string, std::string> bad[] = {
      {"not json", "not valid JSON"},
      {"[1, 2]", "must be a JSON object"},
      {R"({"messages": []})", "\"model\" is required"},
      {R"({"model": 5, "messages": []})", "\"model\" is required"},
      {R"({"model": "openai/gpt-4o-mini"})", "\"messages\" is required"},
      {R"({"model": "openai/gpt-4o-mini", "messages": [], "stream": "yes"})", "\"stream\" must be true or false"},
      {R"({"model": "openai/gpt-4o-mini", "messages": [], "max_tokens": -3})", "\"max_tokens\" must be a positive integer"},
      {R"({"model": "openai/gpt-4o-mini", "messages": [], "user": 7})", "\"user\" must be an account id"},
      {R"({"model": "openai/gpt-4o-mini ", "messages": []})", "printable characters without spaces"},
      {R"({"model": "evil\nts=2026 level=info msg=\"request\"", "messages": []})", "printable characters without spaces"},
      {R"({"model": ")" + std::string(88, 'm') + R"(", "messages": []})", "at most 87"},
  };
  for (const auto& [body, says] : bad) {
    const auto r = s.post(s.alice_key, body);
    INFO(body << " -> " << r.body);
    CHECK(r.status == 400);
    CHECK(r.code() == "invalid_request");
    CHECK(r.message().find(says) != std::string::npos);
  }
  const auto huge = s.post(s.alice_key, chat("openai/gpt-4o-mini", R"(, "pad": ")" + std::string(70000, 'x') + "\""));
  CHECK(huge.status == 413);
  CHECK(huge.code() == "request_too_large");
  CHECK(http(s.base + "/api/v1/nothing", s.alice_key, "").status == 404);
  CHECK(http(s.base + "/api/v1/models", "", "").status == 401);  // the models list too needs a proxy key
  (void)s.post(s.alice_key, R"({"model": "lk-0123456789abcdef", "messages": []})");  // a key pasted in the wrong field
  REQUIRE(s.stop() == 0);
  const std::string log = ledger_test::read_file(s.log);
  CHECK(log.find("lk-") == std::string::npos);
  CHECK(log.find("ts=2026 level") == std::string::npos);  // no forged line
  CHECK(s.balance("eng").held_nanousd == 0);
  CHECK(s.balance("eng").requests == 0);
  CHECK(s.billed() == 0);
}

TEST_CASE("upstream faults: errors passed through and released, cut answers settled by the generation's cost", "[proxy]") {
  Setup s;
  s.fault(R"({"path": "/api/v1/chat/completions", "status": 500, "count": 1})");
  auto r = s.post(s.alice_key, chat("openai/gpt-4o-mini"));
  CHECK(r.status == 500);
  s.fault(R"({"path": "/api/v1/chat/completions", "status": 429, "retry_after_s": 3, "count": 1})");
  r = s.post(s.alice_key, chat("openai/gpt-4o-mini", R"(, "stream": true)"));
  CHECK(r.status == 429);
  CHECK((r.has_header("Retry-After: 3") || r.has_header("retry-after: 3")));  // OpenRouter's back-off reaches the SDK
  REQUIRE(s.settled());
  CHECK(s.balance("alice").spent_nanousd == 0);  // nothing was produced: both holds released
  // A reply cut mid-way (its generation billed): settled by /generation?id=, exactly.
  s.fault(R"({"path": "/api/v1/chat/completions", "body": "truncated", "count": 1})");
  (void)s.post(s.alice_key, chat("openai/gpt-4o-mini", R"(, "max_tokens": 30)"));
  s.fault(R"({"path": "/api/v1/chat/completions", "body": "truncated", "count": 1})");
  (void)s.post(s.alice_key, chat("openai/gpt-4o-mini", R"(, "stream": true)"));
  REQUIRE(s.settled());
  CHECK(s.balance("alice").spent_nanousd > 0);
  CHECK(s.balance("eng").spent_nanousd == s.billed());
}

namespace {

// A connection to the proxy that reads with a deadline (so that a test fails rather than hangs).
int raw_connect(const std::string& base) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(base.substr(base.rfind(':') + 1))));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  const timeval limit{5, 0};
  (void)::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  return fd;
}

// What the proxy sends until it closes the connection; "(timed out)" appended when it keeps it open 5 s.
std::string read_to_close(int fd) {
  std::string got;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n == 0) break;
    if (n < 0) return got + "(timed out)";
    got.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return got;
}

}  // namespace

TEST_CASE("deadlines: a request that does not arrive whole gets 408, an idle connection is closed", "[proxy]") {
  Setup s(R"(, "header_timeout_ms": 300, "idle_timeout_ms": 500)");
  int fd = raw_connect(s.base);
  const std::string part = "POST /api/v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Length: 100\r\n\r\n{\"model\"";
  REQUIRE(::send(fd, part.data(), part.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(part.size()));
  std::string got = read_to_close(fd);
  CHECK(got.rfind("HTTP/1.1 408", 0) == 0);
  CHECK(got.find("\"code\":\"request_timeout\"") != std::string::npos);
  fd = raw_connect(s.base);  // nothing sent: closed without a word
  CHECK(read_to_close(fd).empty());
  // A keep-alive connection serves a request, then is closed once idle.
  fd = raw_connect(s.base);
  const std::string get = "GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n";
  REQUIRE(::send(fd, get.data(), get.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(get.size()));
  got = read_to_close(fd);
  CHECK(got.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(got.find("(timed out)") == std::string::npos);
  CHECK(s.balance("eng").held_nanousd == 0);
}

namespace {

// openssl s_server on a free loopback port with a self-signed certificate for `san`; stopped (by
// its pid) when this goes.
struct TlsServer {
  pid_t pid = -1;
  uint16_t port = 0;
  std::string cert;
  TlsServer(const std::string& dir, const std::string& san) {
    cert = dir + "/tls-" + san + ".pem";
    const std::string key = dir + "/tls-" + san + ".key";
    REQUIRE(run({"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ledger-test",
                 "-addext", "subjectAltName=IP:" + san, "-keyout", key, "-out", cert}).exit_code == 0);
    const int probe = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    REQUIRE(::bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::getsockname(probe, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port = ntohs(addr.sin_port);
    ::close(probe);
    const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    pid = ledger_test::spawn({"/usr/bin/openssl", "s_server", "-quiet", "-accept", "127.0.0.1:" + std::to_string(port), "-cert", cert,
                              "-key", key, "-www"}, null, null);
    ::close(null);
    for (int i = 0; i < 300; ++i, std::this_thread::sleep_for(std::chrono::milliseconds(10))) {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      addr.sin_port = htons(port);
      const bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
      ::close(fd);
      if (up) return;
    }
    FAIL("openssl s_server did not start");
  }
  ~TlsServer() {
    if (pid > 0) ::kill(pid, SIGTERM), ::waitpid(pid, nullptr, 0);
  }
};

}  // namespace

TEST_CASE("https upstream: the certificate is verified against the system's trust store and the host name", "[proxy][tls]") {
  ledger_test::TempDir certs;
  TlsServer untrusted(certs.path(), "127.0.0.1"), other_name(certs.path(), "127.0.0.2");
  {  // a certificate no CA of the system signed: refused before anything is sent, the hold released
    Setup s("", "https://127.0.0.1:" + std::to_string(untrusted.port) + "/api/v1");
    const auto r = s.post(s.alice_key, chat("openai/gpt-4o-mini"));
    INFO(r.body);
    CHECK(r.status == 502);
    CHECK(r.code() == "upstream_unreachable");
    CHECK(r.message().find("certificate verify failed") != std::string::npos);
    CHECK(s.settled());
    CHECK(s.balance("alice").spent_nanousd == 0);
  }
  // Trusted (SSL_CERT_FILE names it, as the system's store would), but issued for another address.
  ::setenv("SSL_CERT_FILE", other_name.cert.c_str(), 1);
  Setup s("", "https://127.0.0.1:" + std::to_string(other_name.port) + "/api/v1");
  const auto r = s.post(s.alice_key, chat("openai/gpt-4o-mini"));
  ::unsetenv("SSL_CERT_FILE");
  INFO(r.body);
  CHECK(r.status == 502);
  CHECK(r.message().find("certificate verify failed") != std::string::npos);
  CHECK(s.balance("alice").spent_nanousd == 0);
}

TEST_CASE("a client that goes away mid-stream: upstream stops, the generation's real cost is charged", "[proxy]") {
  Setup s;
  s.settings(R"({"tokens_per_second": 20})");  // a slow stream: about a second for its 20 tokens
  const auto r = s.post(s.alice_key, chat("openai/gpt-4o-mini", R"(, "stream": true)"), 300);
  CHECK(r.status == 200);
  REQUIRE(s.settled());
  CHECK(s.balance("alice").spent_nanousd > 0);
  CHECK(s.balance("eng").spent_nanousd == s.billed());
  REQUIRE(s.stop() == 0);
  CHECK(ledger_test::read_file(s.log).find("code=client_gone") != std::string::npos);
}

TEST_CASE("SIGTERM drains: a stream in flight finishes and is settled, then the proxy exits 0", "[proxy]") {
  Setup s;
  s.settings(R"({"ttft_ms": 1500, "tokens_per_second": 50})");  // in flight for about 2 s
  Reply streamed;
  std::thread client([&] { streamed = s.post(s.alice_key, chat("openai/gpt-4o-mini", R"(, "stream": true)")); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(s.stop() == 0);
  client.join();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(12));
  CHECK(streamed.status == 200);
  CHECK(streamed.body.find("data: [DONE]") != std::string::npos);
  CHECK(s.balance("eng").held_nanousd == 0);
  CHECK(s.balance("eng").spent_nanousd == s.billed());
  const std::string log = ledger_test::read_file(s.log);
  const size_t draining = log.find("msg=\"draining\""), answered = log.find("stream=1");
  REQUIRE(draining != std::string::npos);
  CHECK(answered > draining);  // the stream was still in flight when SIGTERM came
}

TEST_CASE("1,000 concurrent streams: all relayed and settled, exactly what was billed", "[proxy][concurrency]") {
  Setup s;
  s.settings(R"({"ttft_ms": 1000, "tokens_per_second": 100})");  // each stream open for about 1.2 s: all at once
  constexpr int kStreams = 1000;
  std::vector<Reply> replies(kStreams);
  std::vector<std::thread> clients;
  for (int i = 0; i < kStreams; ++i)
    clients.emplace_back([&, i] { replies[i] = s.post(i % 2 ? s.alice_key : s.eng_key, chat("openai/gpt-4o-mini", R"(, "stream": true)")); });
  for (auto& t : clients) t.join();
  int ok = 0;
  for (const auto& r : replies) ok += r.status == 200 && r.body.find("data: [DONE]") != std::string::npos ? 1 : 0;
  CHECK(ok == kStreams);
  REQUIRE(s.settled());
  CHECK(s.balance("eng").requests == kStreams);
  CHECK(s.balance("eng").spent_nanousd == s.billed());
}

TEST_CASE("a proxy SIGKILLed mid-stream: the next one settles what it left, by the generation's cost, once", "[proxy][crash]") {
  Setup s;
  s.settings(R"({"tokens_per_second": 10})");  // a stream of about 2 s
  std::thread client([&] { (void)s.post(s.alice_key, chat("openai/gpt-4o-mini", R"(, "stream": true)")); });
  std::this_thread::sleep_for(std::chrono::milliseconds(600));  // the stream has started (its generation is named)
  ::kill(s.proxy, SIGKILL);
  ::waitpid(s.proxy, nullptr, 0);
  s.proxy = -1;
  client.join();
  CHECK(s.balance("alice").held_nanousd > 0);  // the dead proxy's hold
  {  // the sidecar's reclaim takes back a dead process's holds (a tombstone keeps the late commit)
    std::unique_ptr<Ledger> l;
    REQUIRE(Ledger::open(s.ledger_dir, Options{}, &l) == Code::kOk);
    uint32_t reclaimed = 0;
    REQUIRE(l->reclaim(&reclaimed) == Code::kOk);
    CHECK(reclaimed == 1);
  }
  CHECK(s.balance("alice").held_nanousd == 0);
  CHECK(s.balance("alice").spent_nanousd == 0);
  s.start();  // settles its predecessor's record: the generation's real cost, as a late commit
  bool settled = false;
  for (int i = 0; i < 500 && !settled; ++i, std::this_thread::sleep_for(std::chrono::milliseconds(20)))
    settled = s.balance("alice").spent_nanousd > 0;
  REQUIRE(settled);
  CHECK(s.balance("eng").spent_nanousd == s.billed());
  REQUIRE(s.stop() == 0);
  s.start();  // and a third start finds nothing left: nothing is charged twice
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(s.balance("eng").spent_nanousd == s.billed());
  CHECK(ledger_test::read_file(s.log).find("how=generation") != std::string::npos);
}

TEST_CASE("records of the earlier in-flight format (a file per hold) are still settled by the next proxy", "[proxy][crash]") {
  Setup s;
  REQUIRE(s.stop() == 0);
  ReservationId id = 0;
  {
    std::unique_ptr<Ledger> l;
    REQUIRE(Ledger::open(s.ledger_dir, Options{}, &l) == Code::kOk);
    std::string_view chosen;
    REQUIRE(l->authorize("alice", "openai/gpt-4o-mini", 12345, 600, &chosen, &id, 255) == Code::kOk);
  }
  // What a proxy of the earlier format left when it was killed (pid 4194303 runs nothing): the
  // hold, no generation id known, so it is charged in full.
  const std::string dir = s.ledger_dir + "/proxy-inflight/4194303.1";
  std::filesystem::create_directories(dir);
  ledger_test::write_file(dir + "/" + std::to_string(id), std::to_string(id) + " 12345\n");
  s.start();
  bool settled = false;
  for (int i = 0; i < 500 && !settled; ++i, std::this_thread::sleep_for(std::chrono::milliseconds(20)))
    settled = s.balance("alice").spent_nanousd == 12345;
  CHECK(settled);
  CHECK(s.balance("alice").held_nanousd == 0);
  REQUIRE(s.stop() == 0);
  CHECK(ledger_test::read_file(s.log).find("how=hold") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir));  // forgotten once settled
}
