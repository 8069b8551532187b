// policy.cpp — model prices, worst-case estimates and authorize.
#include <fcntl.h>

#include <cstring>
#include <thread>

#include "impl.hpp"

namespace ledger {

using namespace detail;

namespace {

bool valid_model_name(std::string_view model) {
  if (model.empty() || model.size() > kModelNameMax) return false;
  for (char c : model)
    if (c <= ' ' || c > '~') return false;  // printable ASCII, no spaces
  return true;
}

// Probes the table: the index of `model`, or (as -2 - index) the first free entry, or INT32_MIN
// when the table is full.
int32_t probe(const Price* table, std::string_view model, uint32_t h) {
  for (uint32_t i = 0; i < kModelsMax; ++i) {
    const uint32_t index = (h + i) % kModelsMax;
    const Price& p = table[index];
    if ((load(p.live) & kModelRegistered) == 0) return -2 - static_cast<int32_t>(index);
    if (p.name_hash == h && p.name_length == model.size() && std::memcmp(p.name, model.data(), model.size()) == 0)
      return static_cast<int32_t>(index);
  }
  return INT32_MIN;
}

}  // namespace

int32_t Ledger::Impl::model_index(std::string_view model) const {
  const int32_t found = probe(prices, model, fnv1a32(model));
  return found >= 0 ? found : -1;
}

std::string_view Ledger::Impl::model_name(uint32_t index) const {
  const Price& p = prices[index % kModelsMax];
  return std::string_view(p.name, std::min<uint32_t>(p.name_length, kModelNameMax));
}

int32_t Ledger::Impl::register_model(std::string_view model) {
  const uint32_t h = fnv1a32(model);
  const int32_t found = probe(prices, model, h);
  if (found >= 0) return found;
  if (found == INT32_MIN || load(header->model_count) >= kModelsMax / 2) return -1;
  Price& p = prices[-2 - found];
  std::memset(p.name, 0, sizeof p.name);
  std::memcpy(p.name, model.data(), model.size());
  p.name_length = static_cast<uint32_t>(model.size());
  p.name_hash = h;
  store(p.live, kModelRegistered);  // release: the name is complete
  store(header->model_count, load(header->model_count) + 1);
  return -2 - found;
}

bool Ledger::Impl::read_price_at(uint32_t index, int64_t* prompt, int64_t* completion, int64_t* request) const {
  const Price* p = &prices[index % kModelsMax];
  if ((load(p->live) & kModelPriced) == 0) return false;
  bool writer_dead = false;
  for (uint32_t spins = 0;; ++spins) {
    const uint32_t before = load(p->seq);
    if ((before & 1u) != 0 && !writer_dead) {
      // Odd: a writer is mid-update, under the admin lock. A preempted writer finishes; a killed one
      // leaves `seq` odd until the next set_price, and its lock released: then take the fields as
      // they are (each is old or new). Only this slow path makes a syscall.
      if (spins % 1024 == 1023) {
        writer_dead = !admin_lock_held();
        if (!writer_dead) std::this_thread::yield();
      }
      continue;
    }
    *prompt = load(p->prompt_nanousd_per_mtok, memory_order_relaxed);
    *completion = load(p->completion_nanousd_per_mtok, memory_order_relaxed);
    *request = load(p->request_nanousd, memory_order_relaxed);
    fence_acquire();
    if (load(p->seq, memory_order_relaxed) == before || writer_dead) return true;
  }
}

bool Ledger::Impl::read_price(std::string_view model, int64_t* prompt, int64_t* completion,
                              int64_t* request) const {
  const int32_t index = model_index(model);
  return index >= 0 && read_price_at(static_cast<uint32_t>(index), prompt, completion, request);
}

Status Ledger::set_price(std::string_view model, int64_t prompt, int64_t completion, int64_t request) {
  Impl& l = *impl_;
  if (!valid_model_name(model) || prompt < 0 || completion < 0 || request < 0 ||
      prompt > kAmountNanoUsdMax || completion > kAmountNanoUsdMax || request > kAmountNanoUsdMax)
    return Code::kInvalidArgument;
  Status status = l.ensure_registered();
  if (!status.ok()) return status;
  AdminGuard lock(l);
  const int32_t index = l.register_model(model);
  if (index < 0) return Code::kFull;
  Price* p = &l.prices[index];
  // Seqlock write. A writer killed mid-way leaves `seq` odd; the next writer (under the admin lock)
  // rounds it up and finishes, and readers only wait a bounded time while it is odd.
  const uint32_t seq = load(p->seq) | 1u;
  store(p->seq, seq, memory_order_relaxed);
  fence_release();
  store(p->prompt_nanousd_per_mtok, prompt, memory_order_relaxed);
  store(p->completion_nanousd_per_mtok, completion, memory_order_relaxed);
  store(p->request_nanousd, request, memory_order_relaxed);
  store(p->seq, seq + 1);
  store(p->live, kModelRegistered | kModelPriced);
  return Code::kOk;
}

Status Ledger::set_tiers(const std::vector<TierSpec>& tiers) {
  Impl& l = *impl_;
  if (tiers.size() > kTiersMax) return Code::kFull;
  for (size_t i = 0; i < tiers.size(); ++i) {
    const TierSpec& t = tiers[i];
    if (!valid_account_name(t.name)) return Code::kInvalidArgument;
    for (size_t j = 0; j < i; ++j)
      if (tiers[j].name == t.name) return Code::kInvalidArgument;
    for (const auto& m : t.models)
      if (!valid_model_name(m)) return Code::kInvalidArgument;
    if ((!t.fallback.empty() && !valid_model_name(t.fallback)) || t.downgrade_at_percent > 100 ||
        (t.downgrade_at_percent != 0) != !t.downgrade_to.empty() ||
        (!t.downgrade_to.empty() && !valid_model_name(t.downgrade_to)))
      return Code::kInvalidArgument;
  }
  Status status = l.ensure_registered();
  if (!status.ok()) return status;
  AdminGuard lock(l);
  return l.write_tiers(tiers);
}

Status Ledger::Impl::write_tiers(const std::vector<TierSpec>& tiers) {
  Policy& p = *policy;
  // Stable indices by name; then the next table, written whole; then one version bump publishes it.
  std::vector<uint32_t> index(tiers.size());
  for (size_t i = 0; i < tiers.size(); ++i) {
    const uint32_t count = std::min(load(p.tier_count), kTiersMax);  // a damaged count indexes nothing past the names
    uint32_t found = count;
    for (uint32_t k = 0; k < count && found == count; ++k)
      if (std::strncmp(p.tier_names[k], tiers[i].name.c_str(), 64) == 0) found = k;
    if (found == count) {
      if (count >= kTiersMax) return Code::kFull;
      std::memset(p.tier_names[count], 0, 64);
      std::memcpy(p.tier_names[count], tiers[i].name.data(), tiers[i].name.size());
      store(p.tier_count, count + 1);
    }
    index[i] = found;
  }
  const uint64_t version = load(p.version);
  Tier* next = p.tables[(version + 1) & 1];
  for (uint32_t k = 0; k < kTiersMax; ++k) {
    store(next[k].live, 0u, memory_order_relaxed);
    store(next[k].all_models, 0u, memory_order_relaxed);
    store(next[k].fallback, 0u, memory_order_relaxed);
    store(next[k].downgrade_to, 0u, memory_order_relaxed);
    store(next[k].downgrade_at_percent, 0u, memory_order_relaxed);
    for (auto& word : next[k].allowed) store(word, uint64_t{0}, memory_order_relaxed);
  }
  for (size_t i = 0; i < tiers.size(); ++i) {
    const TierSpec& t = tiers[i];
    Tier& out = next[index[i]];
    for (const auto& m : t.models) {
      const int32_t mi = register_model(m);
      if (mi < 0) return Code::kFull;
      fetch_or(out.allowed[mi / 64], uint64_t{1} << (mi % 64));
    }
    int32_t fallback = -1, downgrade = -1;
    if (!t.fallback.empty() && (fallback = register_model(t.fallback)) < 0) return Code::kFull;
    if (!t.downgrade_to.empty() && (downgrade = register_model(t.downgrade_to)) < 0) return Code::kFull;
    store(out.all_models, t.all_models ? 1u : 0u, memory_order_relaxed);
    store(out.fallback, static_cast<uint32_t>(fallback + 1), memory_order_relaxed);
    store(out.downgrade_to, static_cast<uint32_t>(downgrade + 1), memory_order_relaxed);
    store(out.downgrade_at_percent, t.downgrade_at_percent, memory_order_relaxed);
    store(out.live, 1u, memory_order_relaxed);
  }
  store(p.version, version + 1);  // release: the next table is complete
  return Code::kOk;
}

Status Ledger::set_account_tier(std::string_view account, std::string_view tier) {
  Impl& l = *impl_;
  if (!valid_account_name(account) || (!tier.empty() && !valid_account_name(tier))) return Code::kInvalidArgument;
  Status status = l.ensure_registered();
  if (!status.ok()) return status;
  AdminGuard lock(l);
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  uint8_t value = 0;
  if (!tier.empty()) {
    const uint32_t count = std::min(load(l.policy->tier_count), kTiersMax);
    for (uint32_t k = 0; k < count && value == 0; ++k)
      if (std::string_view(l.policy->tier_names[k], strnlen(l.policy->tier_names[k], 64)) == tier)
        value = static_cast<uint8_t>(k + 1);
    if (value == 0) return Code::kInvalidArgument;  // no such tier: set_tiers first
  }
  store(l.accounts[index].tier, value);
  return Code::kOk;
}

Status Ledger::estimate(std::string_view model, uint32_t prompt_tokens, uint32_t max_completion_tokens,
                        int64_t* estimate_nanousd) const {
  if (estimate_nanousd == nullptr || !valid_model_name(model)) return Code::kInvalidArgument;
  int64_t prompt = 0, completion = 0, request = 0;
  if (!impl_->read_price(model, &prompt, &completion, &request)) return Code::kUnknownModel;
  // Exact in 128 bits, rounded up: an estimate must never be below the real worst case.
  __extension__ using Wide = __int128;
  const Wide per_million = Wide{prompt} * prompt_tokens + Wide{completion} * max_completion_tokens;
  const Wide total = (per_million + 999'999) / 1'000'000 + request;
  if (total > kAmountNanoUsdMax) return Code::kInvalidArgument;
  *estimate_nanousd = static_cast<int64_t>(total);
  note_estimate_tokens(*estimate_nanousd, uint64_t{prompt_tokens} + max_completion_tokens);  // for tokens per minute
  return Code::kOk;
}

Status Ledger::authorize(std::string_view account, std::string_view model, int64_t estimate_nanousd,
                         uint32_t ttl_s, std::string_view* model_out, ReservationId* id, size_t model_out_max) {
  return authorize_via(account, model, estimate_nanousd, ttl_s, {}, model_out, id, model_out_max);
}

namespace {
struct TierView {
  uint32_t live = 0, all = 0, fallback = 0, downgrade_to = 0, percent = 0;
  bool allowed = false;
};
}  // namespace

// Reads tier `tier` (index + 1) from the published table, consistently: any publish during the read
// may have been followed by a writer starting on the table we read, so a moved version retries.
static TierView read_tier(const Ledger::Impl& l, uint32_t tier, int32_t model) {
  TierView v;
  for (;;) {
    const uint64_t v1 = load(l.policy->version);
    const Tier& t = l.policy->tables[v1 & 1][tier - 1];
    v.live = load(t.live, memory_order_relaxed);
    v.all = load(t.all_models, memory_order_relaxed);
    v.fallback = load(t.fallback, memory_order_relaxed);
    v.downgrade_to = load(t.downgrade_to, memory_order_relaxed);
    v.percent = load(t.downgrade_at_percent, memory_order_relaxed);
    v.allowed = model >= 0 && (load(t.allowed[model / 64], memory_order_relaxed) >> (model % 64) & 1u) != 0;
    fence_acquire();
    if (load(l.policy->version, memory_order_relaxed) == v1) return v;
  }
}

namespace {
// The level of the chain whose model rules apply (authorize's step 2): its own list (an AccountRules
// entry with kRuleModels), its tier (index + 1), both, or neither (any model).
struct Governing {
  int32_t list = -1;  // AccountRules index
  uint32_t tier = 0;
};
}  // namespace

// Steps (2) and (3) of authorize: the model the account may use, or a denial.
static Code choose_model(const Ledger::Impl& l, int32_t index, Governing g, int32_t* chosen) {
  if (g.list < 0 && (g.tier == 0 || g.tier > kTiersMax)) return Code::kOk;  // nothing on the chain: any model
  const TierView t = g.tier != 0 && g.tier <= kTiersMax ? read_tier(l, g.tier, *chosen) : TierView{};
  if (g.tier != 0 && t.live == 0) return l.count_denial(Code::kDeniedModel);  // the tier is no longer defined
  const ModelListView own = g.list >= 0 ? l.read_model_list(static_cast<uint32_t>(g.list), *chosen) : ModelListView{};
  const bool own_list = (own.flags & kListModels) != 0;
  const bool allowed = own_list ? (own.flags & kListAllModels) != 0 || own.allowed : g.tier == 0 || t.all != 0 || t.allowed;
  if (!allowed) {
    const uint32_t fallback = (own.flags & kListFallback) != 0 ? own.fallback : own_list ? 0 : t.fallback;
    if (fallback == 0 || fallback > kModelsMax) return l.count_denial(Code::kDeniedModel);
    *chosen = static_cast<int32_t>(fallback - 1);
  }
  if (t.percent != 0 && t.downgrade_to != 0 && t.downgrade_to <= kModelsMax) {
    const Account& a = l.accounts[index];
    const uint32_t tag = l.current_tag(a, l.now());
    const PeriodWord w = period_word_guess(a.words[tag_parity(tag)]);
    __extension__ using Wide = __int128;
    const Wide used = meta_tag(w.meta) == tag ? w.used : 0;
    const Wide limit = load(a.limit_nanousd, memory_order_relaxed);
    if (used * 100 >= limit * t.percent) *chosen = static_cast<int32_t>(t.downgrade_to - 1);
  }
  return Code::kOk;
}

Status Ledger::authorize_via(std::string_view account, std::string_view model, int64_t estimate_nanousd,
                             uint32_t ttl_s, std::string_view key_hash, std::string_view* model_out,
                             ReservationId* id, size_t model_out_max) {
  if (model_out == nullptr || id == nullptr || !valid_model_name(model) || !valid_account_name(account))
    return Code::kInvalidArgument;
  Impl& l = *impl_;
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  // (1) Blocked anywhere on the chain; the nearest level with a model list or a tier on the way up.
  Governing governing;
  bool found = false;
  uint32_t depth = 0;
  for (int32_t a = index; a >= 0; a = load(l.accounts[a].parent, memory_order_relaxed)) {
    if (++depth > kChainDepthMax || static_cast<uint32_t>(a) >= l.max_accounts) return Code::kInvalidArgument;
    if (load(l.accounts[a].blocked, memory_order_relaxed) != 0) return l.count_denial(Code::kDeniedBlocked);
    if (found) continue;
    // A level governs with a tier or a list of its own (a fallback alone only replaces its tier's).
    governing = Governing{l.rules_of(static_cast<uint32_t>(a), kRuleModels), load(l.accounts[a].tier, memory_order_relaxed)};
    found = governing.tier != 0 ||
            (governing.list >= 0 && (l.read_model_list(static_cast<uint32_t>(governing.list), -1).flags & kListModels) != 0);
  }
  if (!found) governing = Governing{};  // nothing on the chain: any model
  int32_t chosen = l.model_index(model);
  if (const Code code = choose_model(l, index, governing, &chosen); code != Code::kOk) return code;
  // (4) A price for the model we will use; (5) the reservation.
  int64_t prompt = 0, completion = 0, request = 0;
  if (chosen < 0 || !l.read_price_at(static_cast<uint32_t>(chosen), &prompt, &completion, &request)) {
    *model_out = chosen < 0 ? model : l.model_name(static_cast<uint32_t>(chosen));  // the one without a price
    return Code::kUnknownModel;
  }
  const std::string_view name = l.model_name(static_cast<uint32_t>(chosen));
  if (name.size() > model_out_max) return Code::kInvalidArgument;  // nothing reserved
  uint32_t key = 0;
  if (!key_hash.empty()) {
    if (const Status s = l.resolve_key(key_hash, &key); !s.ok()) return s;
  }
  const Status status = l.admit(kOpReserve, static_cast<uint32_t>(index), estimate_nanousd, ttl_s, id,
                                static_cast<uint32_t>(chosen) + 1, key, take_estimate_tokens(estimate_nanousd));
  if (status.ok()) *model_out = name;
  return status;
}

std::string Ledger::Impl::tier_name(uint32_t tier) const {
  if (tier == 0 || tier > std::min(load(policy->tier_count), kTiersMax)) return {};
  return std::string(policy->tier_names[tier - 1], strnlen(policy->tier_names[tier - 1], 64));
}

std::vector<TierSpec> Ledger::Impl::read_tiers() const {
  for (;;) {
    std::vector<TierSpec> out;
    const uint64_t version = load(policy->version);
    const Tier* table = policy->tables[version & 1];
    const uint32_t count = std::min(load(policy->tier_count), kTiersMax);
    for (uint32_t k = 0; k < count; ++k) {
      const Tier& t = table[k];
      if (load(t.live) == 0) continue;
      TierSpec spec;
      spec.name = tier_name(k + 1);
      spec.all_models = load(t.all_models) != 0;
      for (uint32_t m = 0; m < kModelsMax; ++m)
        if ((load(t.allowed[m / 64]) >> (m % 64) & 1u) != 0) spec.models.emplace_back(model_name(m));
      if (const uint32_t f = load(t.fallback); f != 0) spec.fallback = std::string(model_name(f - 1));
      if (const uint32_t d = load(t.downgrade_to); d != 0) spec.downgrade_to = std::string(model_name(d - 1));
      spec.downgrade_at_percent = load(t.downgrade_at_percent);
      out.push_back(std::move(spec));
    }
    fence_acquire();
    if (load(policy->version, memory_order_relaxed) == version) return out;  // else a reload raced us
  }
}

std::vector<std::string> Attribution::headers() const {
  std::vector<std::string> out;
  if (!http_referer.empty()) out.push_back("HTTP-Referer: " + http_referer);
  if (!title.empty()) {
    out.push_back("X-OpenRouter-Title: " + title);
    out.push_back("X-Title: " + title);
  }
  return out;
}

Attribution attribution_for(std::string_view app_url, std::string_view app_title, std::string_view user) {
  Attribution a;
  a.http_referer = std::string(app_url);
  a.title = std::string(app_title.empty() ? user : app_title) + (app_title.empty() ? "" : ":" + std::string(user));
  a.user = std::string(user);
  return a;
}

}  // namespace ledger
