// ledger-proxy with the official `openai` npm package (tests/proxy/package.json pins it), against
// the real emulator over loopback and a real ledger: plain and streamed chat, text completions and
// embeddings, a budget denial as
// the SDK's RateLimitError that the SDK does not retry, a model outside the tier as
// PermissionDeniedError, a fallback visible as the answered model, and at the end the ledger's
// spend equal to what the emulator billed the proxy's upstream key, to the nano-USD.
//
// ctest runs it through a link in <build>/tests/node-proxy, beside the node_modules that the
// proxy_npm_install fixture installs there (`npm ci`), with `node --preserve-symlinks-main` so that
// "openai" resolves from there, and passes the binaries in the environment: PROXY (ledger-proxy),
// LEDGERCTL, LEDGER_EMULATOR. By hand, after one ctest run:
//   PROXY=... LEDGERCTL=... LEDGER_EMULATOR=... node --preserve-symlinks-main build/debug/tests/node-proxy/sdk_test.mjs
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import OpenAI from "openai";

const env = (name) => {
  const v = process.env[name] ?? "";
  if (!v || !fs.existsSync(v)) throw new Error(`set $${name} to the binary under test (got ${JSON.stringify(v)})`);
  return v;
};
const PROXY = env("PROXY"), LEDGERCTL = env("LEDGERCTL"), EMULATOR = env("LEDGER_EMULATOR");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A file's text once it ends with a newline (what the binaries write to --port-file).
async function readLine(file, what) {
  for (let i = 0; i < 1000; ++i) {
    try {
      const text = fs.readFileSync(file, "utf8");
      if (text.endsWith("\n")) return text.trim();
    } catch (e) {
      if (e.code !== "ENOENT") throw e;
    }
    await sleep(10);
  }
  throw new Error(`${what} did not start (no ${file})`);
}

function spawnLogged(argv, logFile) {
  const fd = fs.openSync(logFile, "a");
  const child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", fd, fd] });
  fs.closeSync(fd);
  child.exited = new Promise((r) => child.once("exit", (code, signal) => r({ code, signal })));
  return child;
}

async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return child ? child.exited : null;
  child.kill("SIGTERM");
  let timer;
  const done = await Promise.race([child.exited, new Promise((r) => (timer = setTimeout(r, 20000, null)))]);
  clearTimeout(timer);
  if (done) return done;
  child.kill("SIGKILL");
  return child.exited;
}

// nano-USD fields are integers in ledgerctl's JSON: exact as long as they are safe integers; summed as BigInt.
function nano(v, what) {
  assert.ok(Number.isSafeInteger(v), `${what}: ${v} is not an integer nano-USD amount`);
  return BigInt(v);
}

const s = {};  // the setup, shared by the tests below (they run in order)

function ctl(...args) {
  return execFileSync(LEDGERCTL, ["--config", s.config, ...args], { encoding: "utf8", timeout: 60000 });
}
function status() {
  return new Map(JSON.parse(ctl("status", "--json")).accounts.map((a) => [a.account, a]));
}
function billed() {  // what the emulator (OpenRouter) billed the proxy's upstream key
  const keys = JSON.parse(ctl("keys", "list", "--json")).keys.filter((k) => k.hash === s.upstreamHash);
  assert.equal(keys.length, 1, "the upstream key is listed once");
  return nano(keys[0].usage_nanousd, "usage_nanousd");
}
// Holds settle after the answer (a generation lookup may take a second or two).
async function settled() {
  for (let i = 0; i < 500; ++i) {
    if ([...status().values()].every((a) => a.held_nanousd === 0)) return;
    await sleep(20);
  }
  assert.fail("holds still open 10 s after the last answer");
}
function proxyLog() {
  return fs.readFileSync(s.log, "utf8");
}
function requestLines(re) {
  return proxyLog().split("\n").filter((l) => l.includes('msg="request"') && re.test(l));
}
async function metric(series) {
  const text = await (await fetch(`${s.base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

// A client as a worker would make one: base URL and key changed, nothing else; every HTTP attempt
// it makes is counted (retries included).
function client(apiKey, maxRetries = 3) {
  const c = new OpenAI({
    baseURL: `${s.base}/api/v1`,
    apiKey,
    maxRetries,
    timeout: 60000,
    fetch: (url, init) => {
      c.attempts = (c.attempts ?? 0) + 1;
      return fetch(url, init);
    },
  });
  c.attempts = 0;
  return c;
}

const messages = [{ role: "user", content: "hello there" }];

describe("ledger-proxy with the openai npm package", { concurrency: 1 }, () => {
  before(async () => {
    s.dir = fs.mkdtempSync(path.join(os.tmpdir(), "ledger-proxy-sdk-"));
    s.config = path.join(s.dir, "ledger.json");
    s.log = path.join(s.dir, "proxy.log");
    // The emulator, and a normal key of its own for the proxy to send upstream.
    const mgmtFile = path.join(s.dir, "mgmt.key"), emuPort = path.join(s.dir, "emulator.port");
    s.emulator = spawnLogged([EMULATOR, "--management-key-file", mgmtFile, "--port-file", emuPort], path.join(s.dir, "emulator.log"));
    const emuBase = `http://127.0.0.1:${await readLine(emuPort, "the emulator")}/api/v1`;
    const mgmt = fs.readFileSync(mgmtFile, "utf8").trim();
    const made = await fetch(`${emuBase}/keys`, {
      method: "POST",
      headers: { Authorization: `Bearer ${mgmt}`, "Content-Type": "application/json" },
      body: JSON.stringify({ name: "proxy-upstream" }),
    });
    assert.equal(made.status, 201);
    const key = await made.json();
    s.upstreamHash = key.data.hash;
    fs.writeFileSync(path.join(s.dir, "upstream.key"), key.key + "\n", { mode: 0o600 });
    fs.writeFileSync(s.config, JSON.stringify({
      ledger: { dir: "ledger", max_accounts: 64, max_reservations: 4096, max_processes: 32 },
      openrouter: { base_url: emuBase, management_key_file: mgmtFile, app_url: "https://proxy-sdk-test.example", app_title: "proxy-sdk-test" },
      tiers: {
        pro: { models: ["openai/gpt-4o-mini", "openai/gpt-4o", "openai/text-embedding-3-small"] },
        basic: { models: ["openai/gpt-4o-mini"], fallback: "openai/gpt-4o-mini" },
      },
      prices: {
        "openai/gpt-4o-mini": { prompt_usd_per_mtok: "0.15", completion_usd_per_mtok: "0.60" },
        "openai/gpt-4o": { prompt_usd_per_mtok: "2.50", completion_usd_per_mtok: "10" },
        "openai/text-embedding-3-small": { prompt_usd_per_mtok: "0.02", completion_usd_per_mtok: "0" },
      },
      accounts: [
        { id: "eng", limit_usd: "10", period: "daily" },
        { id: "alice", parent: "eng", tier: "pro", limit_usd: "5", period: "daily" },
        { id: "carol", parent: "eng", tier: "basic", limit_usd: "0.001", period: "daily" },
        { id: "other", limit_usd: "1", period: "daily" },
      ],
      proxy: { listen: "127.0.0.1:0", upstream_key_file: "upstream.key", max_tokens_default: 512, max_body_bytes: 65536 },
    }));
    ctl("init");
    const makeKey = (account) => {
      const out = ctl("proxy-key", "create", account);
      assert.ok(out.startsWith(`${account}: lk-`), out);
      return out.slice(account.length + 2).trim();
    };
    s.aliceKey = makeKey("alice");
    s.carolKey = makeKey("carol");
    const proxyPort = path.join(s.dir, "proxy.port");
    s.proxy = spawnLogged([PROXY, "--config", s.config, "--port-file", proxyPort], s.log);
    s.base = `http://127.0.0.1:${await readLine(proxyPort, "ledger-proxy")}`;
  });

  after(async () => {
    const proxy = await stop(s.proxy);
    const emulator = await stop(s.emulator);
    const log = s.log && fs.existsSync(s.log) ? proxyLog() : "";
    if (s.dir && !process.env.LEDGER_KEEP_TMP) fs.rmSync(s.dir, { recursive: true, force: true });
    else if (s.dir) console.error(`kept ${s.dir}`);
    if (emulator && (emulator.code !== 0 || emulator.signal)) console.error(`the emulator exited ${JSON.stringify(emulator)}`);
    // SIGTERM drains and exits 0 (under asan/tsan a report makes it exit otherwise).
    assert.deepEqual(proxy, { code: 0, signal: null }, `ledger-proxy's exit; its log:\n${log}`);
  });

  test("a chat completion", async () => {
    const c = client(s.aliceKey);
    const r = await c.chat.completions.create({ model: "openai/gpt-4o-mini", messages, max_tokens: 40 });
    assert.equal(r.object, "chat.completion");
    assert.equal(r.model, "openai/gpt-4o-mini");
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].message.role, "assistant");
    assert.ok(r.choices[0].message.content.length > 0);
    assert.equal(r.choices[0].finish_reason, "stop");
    assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 40, JSON.stringify(r.usage));
    assert.equal(c.attempts, 1);
    // withResponse: the raw HTTP answer is the proxy's.
    const { data, response } = await c.chat.completions.create({ model: "openai/gpt-4o-mini", messages, max_tokens: 5 }).withResponse();
    assert.equal(response.status, 200);
    assert.ok(data.id.length > 0);
    assert.equal(response.headers.get("x-generation-id"), data.id);
    // The models list is passed through.
    const models = [];
    for await (const m of c.models.list()) models.push(m.id);
    assert.ok(models.includes("openai/gpt-4o-mini"), models.join(" "));
  });

  test("a streamed chat completion: content chunks, then the end", async () => {
    const c = client(s.aliceKey);
    const stream = await c.chat.completions.create({ model: "openai/gpt-4o", messages, stream: true });
    let content = "", chunks = 0, finish = null, usage = null, id = null;
    for await (const chunk of stream) {
      assert.equal(chunk.object, "chat.completion.chunk");
      id ??= chunk.id;
      assert.equal(chunk.id, id, "one generation");
      for (const choice of chunk.choices) {
        if (choice.delta?.content) content += choice.delta.content, ++chunks;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    assert.ok(chunks > 1, `content came in ${chunks} chunk(s)`);
    assert.match(content, /openai\/gpt-4o\b/);
    assert.equal(finish, "stop");
    assert.ok(usage && usage.completion_tokens > 0, "the last chunk carries usage (the proxy asks for it)");
    // The SDK's own helper reads the same stream to its final completion.
    const helper = c.chat.completions.stream({ model: "openai/gpt-4o-mini", messages, max_tokens: 12 });
    const final = await helper.finalChatCompletion();
    assert.equal(final.choices[0].finish_reason, "stop");
    assert.ok(final.choices[0].message.content.length > 0);
  });

  test("over budget: RateLimitError 429, not retried (the proxy saw one request)", async () => {
    const c = client(s.carolKey, 3);
    const err = await c.chat.completions.create({ model: "openai/gpt-4o-mini", messages, max_tokens: 100000 }).then(
      () => assert.fail("carol's $0.001 cannot hold 100000 tokens"), (e) => e);
    assert.ok(err instanceof OpenAI.RateLimitError, `${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.status, 429);
    assert.equal(err.code, "budget_exceeded");
    assert.equal(err.type, "insufficient_quota");
    assert.match(err.message, /carol/);
    assert.equal(err.headers.get("x-should-retry"), "false");
    assert.equal(c.attempts, 1, "the SDK sent it once");
    // The proxy's side: one request with status 429, in the log and in the metrics.
    await sleep(300);
    assert.equal(requestLines(/ status=429 /).length, 1, proxyLog());
    assert.equal(await metric('ledger_proxy_requests_total{status="429",code="budget_exceeded"}'), 1);
  });

  test("a 429 without x-should-retry (OpenRouter's own, passed through) is retried: the count above can see retries", async () => {
    const emuBase = JSON.parse(fs.readFileSync(s.config, "utf8")).openrouter.base_url.replace(/\/api\/v1$/, "");
    const f = await fetch(`${emuBase}/__emulator/faults`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ path: "/api/v1/chat/completions", status: 429, count: 1 }),
    });
    assert.equal(f.status, 200);
    const c = client(s.aliceKey, 3);
    const r = await c.chat.completions.create({ model: "openai/gpt-4o-mini", messages, max_tokens: 8 });
    assert.equal(r.choices[0].finish_reason, "stop");
    assert.equal(c.attempts, 2, "one 429, then the retry answered");
    await sleep(300);
    assert.equal(requestLines(/ status=429 /).length, 2);
  });

  test("a model outside the account's tier: PermissionDeniedError 403", async () => {
    const c = client(s.aliceKey);
    const err = await c.chat.completions.create({ model: "anthropic/claude-3.5-sonnet", messages }).then(
      () => assert.fail("alice's tier has no anthropic model"), (e) => e);
    assert.ok(err instanceof OpenAI.PermissionDeniedError, `${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.status, 403);
    assert.equal(err.code, "model_not_allowed");
    assert.equal(c.attempts, 1);
  });

  test("a bad key: AuthenticationError 401", async () => {
    const c = client("lk-" + "0".repeat(48));
    const denied = await c.chat.completions.create({ model: "openai/gpt-4o-mini", messages }).then(
      () => assert.fail("an unknown key was accepted"), (e) => e);
    assert.ok(denied instanceof OpenAI.AuthenticationError, `${denied?.constructor?.name}: ${denied?.message}`);
    assert.equal(denied.code, "invalid_api_key");
    assert.ok(!denied.message.includes("lk-"), "the key is not echoed");
  });

  test("a fallback is visible as the answered model", async () => {
    const c = client(s.carolKey);
    const r = await c.chat.completions.create({ model: "openai/gpt-4o", messages, max_tokens: 5 });
    assert.equal(r.model, "openai/gpt-4o-mini", "basic's fallback answered");
    assert.match(r.choices[0].message.content, /openai\/gpt-4o-mini/);
    const stream = await c.chat.completions.create({ model: "openai/gpt-4o", messages, max_tokens: 5, stream: true });
    const models = new Set();
    for await (const chunk of stream) models.add(chunk.model);
    assert.deepEqual([...models], ["openai/gpt-4o-mini"]);
  });

  test("text completions, plain and streamed, and embeddings (the SDK's base64 default, decoded)", async () => {
    const c = client(s.aliceKey);
    const r = await c.completions.create({ model: "openai/gpt-4o-mini", prompt: "hello there", max_tokens: 12 });
    assert.equal(r.object, "text_completion");
    assert.match(r.choices[0].text, /Emulated reply/);
    assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 12, JSON.stringify(r.usage));
    const stream = await c.completions.create({ model: "openai/gpt-4o-mini", prompt: "hello there", stream: true });
    let text = "", usage = null;
    for await (const chunk of stream) {
      for (const choice of chunk.choices) text += choice.text ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    assert.match(text, /openai\/gpt-4o-mini/);
    assert.ok(usage && usage.completion_tokens > 0, "the last chunk carries usage");
    const e = await c.embeddings.create({ model: "openai/text-embedding-3-small", input: ["one text", "and another"] });
    assert.equal(e.data.length, 2);
    assert.equal(e.data[1].embedding.length, 8);
    assert.ok(e.usage.prompt_tokens > 0);
    assert.equal(c.attempts, 3);
    await sleep(300);
    assert.equal(requestLines(/ path=\/api\/v1\/embeddings status=200 account=alice /).length, 1, proxyLog());
  });

  test("the ledger's spend equals what the emulator billed the upstream key, to the nano-USD", async () => {
    await settled();
    const accounts = status();
    const roots = [...accounts.values()].filter((a) => a.parent === "");
    const spent = roots.reduce((sum, a) => sum + nano(a.spent_nanousd, `${a.account}.spent_nanousd`), 0n);
    const upstream = billed();
    assert.ok(upstream > 0n, "something was billed");
    assert.equal(spent, upstream);
    assert.equal(nano(accounts.get("eng").spent_nanousd, "eng"),
                 nano(accounts.get("alice").spent_nanousd, "alice") + nano(accounts.get("carol").spent_nanousd, "carol"));
    assert.ok(accounts.get("carol").spent_nanousd > 0, "the fallbacks were charged to carol");
    assert.equal(accounts.get("other").spent_nanousd, 0);
    // No key in the proxy's log, nor prompt text.
    const log = proxyLog();
    assert.ok(!log.includes("lk-") && !log.includes("sk-or-"), "no key in the log");
    assert.ok(!log.includes("hello there"), "no prompt text in the log");
  });
});
