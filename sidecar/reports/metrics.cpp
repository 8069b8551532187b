// metrics.cpp — see metrics.hpp.
#include "reports/metrics.hpp"

#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

namespace ledger::admin {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {
void family(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}
// A label value in the exposition format: backslash, double quote and newline escaped.
std::string label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}
void sample(std::string& out, const std::string& name, const std::string& labels, int64_t value) {
  out += name;
  if (!labels.empty()) out += "{" + labels + "}";
  out += ' ';
  out += std::to_string(value);
  out += '\n';
}
}  // namespace

// Global mode: the lease worker's work against the shared store.
static void render_global(std::string& out, const SidecarCounters& c) {
  const std::pair<const char*, uint64_t> counters[] = {
      {"ledger_global_grants_total", c.lease_grants},           {"ledger_global_grant_denials_total", c.lease_grant_denials},
      {"ledger_global_returns_total", c.lease_returns},         {"ledger_global_expiries_total", c.lease_expiries},
      {"ledger_global_recalls_total", c.lease_recalls},         {"ledger_global_store_errors_total", c.store_errors}};
  for (const auto& [name, value] : counters) {
    family(out, name, "counter", "Global mode: lease work with the shared store (see the README's global budgets).");
    sample(out, name, "", static_cast<int64_t>(value));
  }
  family(out, "ledger_global_store_round_trip_seconds", "gauge", "The last store statement's round trip.");
  out += "ledger_global_store_round_trip_seconds " + std::to_string(static_cast<double>(c.store_round_trip_us) / 1e6) + "\n";
  family(out, "ledger_global_leased_nanousd", "gauge", "This host's lease for the account's current window.");
  for (const auto& [account, leased] : c.leased_nanousd) sample(out, "ledger_global_leased_nanousd", "account=\"" + label(account) + "\"", leased);
}

// DESIGN 13: soft accounts, top-ups in force, and what rate limits counted in the current minute.
void render_rules(std::string& out, const Ledger& ledger, const std::vector<AccountBalance>& accounts) {
  family(out, "ledger_account_soft", "gauge", "1 when the account's own limit never denies (enforce: soft).");
  for (const auto& a : accounts)
    if (a.balance.soft) sample(out, "ledger_account_soft", "account=\"" + a.account + "\"", 1);
  family(out, "ledger_account_topup_nanousd", "gauge", "A top-up in force (part of ledger_account_limit_nanousd), in nano-USD.");
  for (const auto& a : accounts)
    if (a.balance.topup_nanousd != 0) sample(out, "ledger_account_topup_nanousd", "account=\"" + a.account + "\"", a.balance.topup_nanousd);
  struct Rate {
    const char* name;
    const char* help;
    uint64_t RateUsage::*field;
  };
  const Rate rates[] = {{"ledger_rate_requests", "Requests admitted in the current minute (accounts with rate limits).", &RateUsage::requests},
                        {"ledger_rate_tokens", "Tokens counted in the current minute (accounts with rate limits).", &RateUsage::tokens},
                        {"ledger_rate_concurrent", "Holds open now (accounts with rate limits).", &RateUsage::concurrent}};
  std::vector<std::pair<std::string, RateUsage>> usage;
  for (const auto& a : accounts) {
    RulesSpec rules;
    RateUsage u;
    if (ledger.rules(a.account, &rules).ok() && (rules.rpm | rules.tpm | rules.max_concurrent) != 0 && ledger.rate_usage(a.account, &u).ok())
      usage.emplace_back(a.account, u);
  }
  for (const Rate& r : rates) {
    family(out, r.name, "gauge", r.help);
    for (const auto& [account, u] : usage) sample(out, r.name, "account=\"" + account + "\"", static_cast<int64_t>(u.*(r.field)));
  }
}

std::string render_metrics(const Ledger& ledger, const SidecarCounters& c, int64_t now_unix) {
  std::string out;
  std::vector<AccountBalance> accounts;
  (void)ledger.balances(&accounts);
  struct Gauge {
    const char* name;
    const char* help;
    int64_t Balance::*field;
  };
  const Gauge gauges[] = {
      {"ledger_account_spent_nanousd", "Settled spend in the account's current period, in nano-USD.", &Balance::spent_nanousd},
      {"ledger_account_held_nanousd", "Reserved, not yet settled, in nano-USD.", &Balance::held_nanousd},
      {"ledger_account_limit_nanousd", "The account's budget for its period, in nano-USD.", &Balance::limit_nanousd},
      {"ledger_account_available_nanousd", "limit - spent - held, in nano-USD (negative after an overrun).", &Balance::available_nanousd},
  };
  for (const Gauge& g : gauges) {
    family(out, g.name, "gauge", g.help);
    for (const auto& a : accounts) sample(out, g.name, "account=\"" + a.account + "\"", a.balance.*(g.field));
  }
  family(out, "ledger_account_requests", "gauge", "Settled requests in the account's current period.");
  for (const auto& a : accounts) sample(out, "ledger_account_requests", "account=\"" + a.account + "\"", static_cast<int64_t>(a.balance.requests));
  family(out, "ledger_account_blocked", "gauge", "1 when the account is blocked.");
  for (const auto& a : accounts) sample(out, "ledger_account_blocked", "account=\"" + a.account + "\"", a.balance.blocked ? 1 : 0);
  LedgerStats s;
  (void)ledger.stats(&s);
  uint64_t pending = 0;
  (void)ledger.flush_pending(&pending);
  family(out, "ledger_denials_total", "counter", "Requests denied, by reason, since the segment was created.");
  sample(out, "ledger_denials_total", "reason=\"over_budget\"", static_cast<int64_t>(s.denied_over_budget));
  sample(out, "ledger_denials_total", "reason=\"parent_over_budget\"", static_cast<int64_t>(s.denied_parent_over_budget));
  sample(out, "ledger_denials_total", "reason=\"model\"", static_cast<int64_t>(s.denied_model));
  sample(out, "ledger_denials_total", "reason=\"blocked\"", static_cast<int64_t>(s.denied_blocked));
  sample(out, "ledger_denials_total", "reason=\"rate\"", static_cast<int64_t>(s.denied_rate));
  render_rules(out, ledger, accounts);
  struct Scalar {
    const char* name;
    const char* type;
    const char* help;
    int64_t value;
  };
  const Scalar scalars[] = {
      {"ledger_reservations_open", "gauge", "Live holds.", s.reservations_held},
      {"ledger_reservations_expired", "gauge", "Expired holds still accepting a late commit.", s.reservations_expired},
      {"ledger_reservations_capacity", "gauge", "max_reservations of the segment.", s.max_reservations},
      {"ledger_processes_attached", "gauge", "Process slots in use.", s.processes_attached},
      {"ledger_tallies_dropped_total", "counter", "Settlements not tallied per model or key (tally table crowded); still charged.",
       static_cast<int64_t>(s.tallies_dropped)},
      {"ledger_tombstones_dropped_total", "counter",
       "Expired holds dropped before their grace ended (ledger.max_tombstones, or a reserve needing the slot); their late commit is not charged.",
       static_cast<int64_t>(s.tombstones_dropped)},
      {"ledger_reclaimed_holds_total", "counter", "Holds expired or reclaimed from dead processes by this sidecar.",
       static_cast<int64_t>(c.reclaimed_holds)},
      {"ledger_flushes_total", "counter", "Successful flushes to the store.", static_cast<int64_t>(c.flushes)},
      {"ledger_flush_failures_total", "counter", "Failed flushes (see the log for why).", static_cast<int64_t>(c.flush_failures)},
      {"ledger_flush_lag_seconds", "gauge", "Seconds since the last successful flush.",
       c.last_flush_unix > 0 ? now_unix - c.last_flush_unix : -1},
      {"ledger_flush_records_pending", "gauge", "Account period records settled differently from what the last flush wrote.",
       static_cast<int64_t>(pending)},
      {"ledger_reconcile_runs_total", "counter", "Reconciliation runs.", static_cast<int64_t>(c.reconcile_runs)},
      {"ledger_reconcile_errors_total", "counter", "Reconciliation runs that failed.", static_cast<int64_t>(c.reconcile_errors)},
      {"ledger_reconcile_adjustments_total", "counter", "Adjustments charged after OpenRouter saw more spend.",
       static_cast<int64_t>(c.adjustments)},
      {"ledger_reconcile_last_success_timestamp_seconds", "gauge", "Unix time of the last successful reconciliation.",
       c.last_reconcile_success_unix},
  };
  for (const Scalar& x : scalars) {
    family(out, x.name, x.type, x.help);
    sample(out, x.name, "", x.value);
  }
  // Per (account, model): what commits of authorized holds settled since the segment was created.
  std::vector<ModelSpend> tallies;
  (void)ledger.model_spend(&tallies);
  family(out, "ledger_model_spent_nanousd_total", "counter", "Committed by authorized requests, per account and model, in nano-USD.");
  for (const auto& t : tallies)
    sample(out, "ledger_model_spent_nanousd_total", "account=\"" + label(t.account) + "\",model=\"" + label(t.model) + "\"", t.spent_nanousd);
  family(out, "ledger_model_requests_total", "counter", "Committed authorized requests, per account and model.");
  for (const auto& t : tallies)
    sample(out, "ledger_model_requests_total", "account=\"" + label(t.account) + "\",model=\"" + label(t.model) + "\"",
           static_cast<int64_t>(t.requests));
  family(out, "ledger_reconcile_drift_nanousd", "gauge",
         "Per key: OpenRouter's window spend minus what the ledger recorded through the key, at the last run.");
  for (const auto& [owner, drift] : c.drift_nanousd)
    sample(out, "ledger_reconcile_drift_nanousd", "account=\"" + owner.first + "\",key=\"" + owner.second + "\"", drift);
  if (c.global) render_global(out, c);
  family(out, "ledger_openrouter_responses_total", "counter", "OpenRouter HTTP responses by status (0 = no response).");
  for (const auto& [status, count] : c.openrouter_responses)
    sample(out, "ledger_openrouter_responses_total", "status=\"" + std::to_string(status) + "\"", static_cast<int64_t>(count));
  return out;
}

struct MetricsServer::State {
  net::io_context io;
  tcp::acceptor acceptor{io};
  std::mutex mutex;
  std::string text = "# no data yet\n";
};

MetricsServer::MetricsServer() : state_(std::make_unique<State>()) {}
MetricsServer::~MetricsServer() { stop(); }

bool MetricsServer::start(const std::string& listen, std::string* error) {
  const auto colon = listen.rfind(':');
  beast::error_code ec;
  const auto address = net::ip::make_address(listen.substr(0, colon), ec);
  if (ec || colon == std::string::npos || !address.is_loopback()) {
    *error = "metrics.listen must be a loopback HOST:PORT, got \"" + listen + "\"";
    return false;
  }
  const auto port = static_cast<unsigned short>(std::stoi(listen.substr(colon + 1)));
  tcp::acceptor& a = state_->acceptor;
  a.open(address.is_v6() ? tcp::v6() : tcp::v4(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind({address, port}, ec);
  if (!ec) a.listen(16, ec);
  if (ec) {
    *error = "cannot serve metrics on " + listen + ": " + ec.message();
    return false;
  }
  thread_ = std::thread([s = state_.get()] {
    for (;;) {
      beast::error_code aec;
      tcp::socket socket(s->io);
      s->acceptor.accept(socket, aec);
      if (aec) return;  // stopped
      beast::flat_buffer buffer;
      http::request<http::string_body> req;
      http::read(socket, buffer, req, aec);
      if (aec) continue;
      http::response<http::string_body> res{http::status::ok, req.version()};
      res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      if (req.target() == "/metrics") {
        std::lock_guard<std::mutex> lock(s->mutex);
        res.body() = s->text;
      } else {
        res.result(http::status::not_found);
        res.body() = "metrics are at /metrics\n";
      }
      res.keep_alive(false);
      res.prepare_payload();
      http::write(socket, res, aec);
      socket.shutdown(tcp::socket::shutdown_both, aec);
    }
  });
  return true;
}

void MetricsServer::publish(std::string text) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->text = std::move(text);
}

void MetricsServer::stop() {
  if (!thread_.joinable()) return;
  ::shutdown(state_->acceptor.native_handle(), SHUT_RDWR);  // wakes the blocked accept
  thread_.join();
  beast::error_code ec;
  state_->acceptor.close(ec);
}

}  // namespace ledger::admin
