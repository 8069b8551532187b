// policy.cpp — model prices, worst-case estimates and authorize.
#include <cstring>

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

uint32_t model_hash(std::string_view model) {
  uint32_t h = 2166136261u;
  for (unsigned char c : model) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

// Probes the table; returns the entry for `model`, or the first free entry (nullptr when full).
Price* probe(Price* table, std::string_view model, uint32_t h, bool* found) {
  *found = false;
  for (uint32_t i = 0; i < kModelsMax; ++i) {
    Price& p = table[(h + i) % kModelsMax];
    if (load(p.live) == 0) return &p;
    if (p.name_hash == h && p.name_length == model.size() &&
        std::memcmp(p.name, model.data(), model.size()) == 0) {
      *found = true;
      return &p;
    }
  }
  return nullptr;
}

}  // namespace

bool Ledger::Impl::read_price(std::string_view model, int64_t* prompt, int64_t* completion,
                              int64_t* request) const {
  bool found = false;
  const Price* p = probe(prices, model, model_hash(model), &found);
  if (!found) return false;
  for (uint32_t spins = 0;; ++spins) {
    const uint32_t before = load(p->seq);
    // Odd: a writer is mid-update. A writer killed there leaves it odd until the next set_price, so
    // after a bounded wait take the fields as they are (each one is old or new, never torn).
    if ((before & 1u) != 0 && spins < 4096) continue;
    *prompt = load(p->prompt_nanousd_per_mtok, memory_order_relaxed);
    *completion = load(p->completion_nanousd_per_mtok, memory_order_relaxed);
    *request = load(p->request_nanousd, memory_order_relaxed);
    fence_acquire();
    if (load(p->seq, memory_order_relaxed) == before || spins >= 4096) return true;
  }
}

Status Ledger::set_price(std::string_view model, int64_t prompt, int64_t completion, int64_t request) {
  Impl& l = *impl_;
  if (!valid_model_name(model) || prompt < 0 || completion < 0 || request < 0 ||
      prompt > kAmountNanoUsdMax || completion > kAmountNanoUsdMax || request > kAmountNanoUsdMax)
    return Code::kInvalidArgument;
  Status status = l.ensure_registered();
  if (!status.ok()) return status;
  l.lock_byte_wait(kAdminLockByte);
  struct Unlock {
    const Ledger::Impl& l;
    ~Unlock() { l.unlock_byte(kAdminLockByte); }
  } unlock{l};
  const uint32_t h = model_hash(model);
  bool found = false;
  Price* p = probe(l.prices, model, h, &found);
  if (!found) {
    if (p == nullptr || load(l.header->model_count) >= kModelsMax / 2) return Code::kFull;
    std::memset(p->name, 0, sizeof p->name);
    std::memcpy(p->name, model.data(), model.size());
    p->name_length = static_cast<uint32_t>(model.size());
    p->name_hash = h;
  }
  // Seqlock write. A writer killed mid-way leaves `seq` odd; the next writer (under the admin lock)
  // rounds it up and finishes, and readers only spin while it is odd.
  const uint32_t seq = load(p->seq) | 1u;
  store(p->seq, seq, memory_order_relaxed);
  fence_release();
  store(p->prompt_nanousd_per_mtok, prompt, memory_order_relaxed);
  store(p->completion_nanousd_per_mtok, completion, memory_order_relaxed);
  store(p->request_nanousd, request, memory_order_relaxed);
  store(p->seq, seq + 1);
  if (!found) {
    store(p->live, 1u);  // release: name and price are complete
    store(l.header->model_count, load(l.header->model_count) + 1);
  }
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
  return Code::kOk;
}

Status Ledger::authorize(std::string_view account, std::string_view model, int64_t estimate_nanousd,
                         uint32_t ttl_s, std::string_view* model_out, ReservationId* id) {
  if (model_out == nullptr || id == nullptr || !valid_model_name(model)) return Code::kInvalidArgument;
  AccountRef ref;
  Status status = find(account, &ref);
  if (!status.ok()) return status;
  int64_t prompt = 0, completion = 0, request = 0;
  if (!impl_->read_price(model, &prompt, &completion, &request)) return Code::kUnknownModel;
  status = reserve(ref, estimate_nanousd, ttl_s, id);
  if (status.ok()) *model_out = model;
  return status;
}

}  // namespace ledger
