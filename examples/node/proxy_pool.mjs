// The demo's Node workers: the official `openai` npm package, changed only in baseURL and apiKey
// (an "lk-..." proxy key), streaming chat completions through ledger-proxy until the user's budget
// says no (the SDK's RateLimitError, 429 with x-should-retry: false, which the SDK does not retry)
// or time is up; then one line per user, like the Python pool's.
//
//   node proxy_pool.mjs BASE_URL SECONDS USER=KEY_FILE [USER=KEY_FILE ...]
//
// The keys are read from files (never argv). Exits 1 when a request failed otherwise.
import fs from "node:fs";

import OpenAI from "openai";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function worker(baseURL, user, apiKey, until) {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 3, timeout: 30000 });
  const t = { user, done: 0, denied: false, failed: 0, chunks: 0 };
  while (Date.now() < until) {
    try {
      const stream = await client.chat.completions.create({
        model: "openai/gpt-4o-mini",
        messages: [{ role: "user", content: "summarise the ledger, as a stream" }],
        max_tokens: 64,
        stream: true,
      });
      for await (const chunk of stream) if (chunk.choices[0]?.delta?.content) ++t.chunks;
      ++t.done;
    } catch (e) {
      if (e instanceof OpenAI.RateLimitError && e.headers?.get("x-should-retry") === "false") {
        t.denied = true;  // over budget: the SDK did not retry, and neither do we
        break;
      }
      ++t.failed;
      console.error(`  node pool: ${user}: ${e?.constructor?.name}: ${e?.message}`);
      await sleep(50);
    }
  }
  return t;
}

async function main() {
  const [base, seconds, ...pairs] = process.argv.slice(2);
  if (!base || !(Number(seconds) > 0) || pairs.length === 0) {
    console.error("usage: node proxy_pool.mjs BASE_URL SECONDS USER=KEY_FILE [USER=KEY_FILE ...]");
    return 1;
  }
  const until = Date.now() + Number(seconds) * 1000;
  const users = pairs.map((p) => {
    const [user, file] = p.split("=");
    return [user, fs.readFileSync(file, "utf8").trim()];
  });
  const tallies = await Promise.all(users.flatMap(([user, key]) => [worker(base, user, key, until), worker(base, user, key, until)]));
  const byUser = new Map();
  for (const t of tallies) {
    const u = byUser.get(t.user) ?? { done: 0, denied: false, failed: 0, chunks: 0 };
    byUser.set(t.user, { done: u.done + t.done, denied: u.denied || t.denied, failed: u.failed + t.failed, chunks: u.chunks + t.chunks });
  }
  for (const [user, u] of [...byUser].sort()) {
    const state = u.denied ? "stopped by its budget (RateLimitError 429, not retried)" : "within its budget";
    console.log(`  node pool:  ${user.padEnd(6)} ${String(u.done).padStart(4)} streams answered (${u.chunks} content chunks), ${state}` +
                (u.failed ? `, ${u.failed} failed` : ""));
  }
  return tallies.some((t) => t.failed > 0) ? 1 : 0;
}

process.exitCode = await main();
