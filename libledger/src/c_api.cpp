// c_api.cpp — the C ABI (ledger/c.h) over the C++ API. No exception crosses this boundary, no
// argument can make it abort: strings are read with a bound, pointers are checked.
#include "ledger/c.h"

#include <climits>
#include <cstring>
#include <new>

#include "ledger/ledger.hpp"

struct ledger_t {
  std::unique_ptr<ledger::Ledger> ledger;
};

namespace {

constexpr size_t kNameBound = 64;  // an account or model id longer than 63 bytes is invalid

// A bounded view of a C string, or nullopt-like empty + ok=false when NULL or too long.
bool bounded(const char* text, size_t bound, std::string_view* out) {
  if (text == nullptr) return false;
  const size_t length = ::strnlen(text, bound);
  if (length == bound) return false;
  *out = std::string_view(text, length);
  return true;
}

int to_int(ledger::Status status) { return status.value(); }

int open_common(const char* dir, const ledger_limits_t* limits, bool create, ledger_t** out) {
  if (out == nullptr) return LEDGER_INVALID_ARGUMENT;
  *out = nullptr;
  std::string_view path;
  if (!bounded(dir, PATH_MAX, &path) || path.empty()) return LEDGER_INVALID_ARGUMENT;
  ledger::Options options;
  options.create_if_missing = create;
  if (limits != nullptr) {
    if (limits->max_accounts != 0) options.limits.max_accounts = limits->max_accounts;
    if (limits->max_reservations != 0) options.limits.max_reservations = limits->max_reservations;
    if (limits->max_processes != 0) options.limits.max_processes = limits->max_processes;
  }
  try {
    auto handle = std::make_unique<ledger_t>();
    const ledger::Status status = ledger::Ledger::open(path, options, &handle->ledger);
    if (!status.ok()) return to_int(status);
    *out = handle.release();
    return LEDGER_OK;
  } catch (const std::bad_alloc&) {
    return LEDGER_IO_ERROR;
  }
}

}  // namespace

extern "C" {

const char* ledger_strerror(int code) {
  // code_message returns views of string literals, so data() is NUL-terminated.
  return ledger::code_message(code).data();
}

int ledger_create(const char* dir, const ledger_limits_t* limits, ledger_t** out) {
  return open_common(dir, limits, true, out);
}

int ledger_open(const char* dir, ledger_t** out) { return open_common(dir, nullptr, false, out); }

void ledger_close(ledger_t* ledger) { delete ledger; }

int ledger_set_budget(ledger_t* ledger, const char* account, int64_t limit_nanousd, int32_t period,
                      const char* parent) {
  std::string_view name, parent_name;
  if (ledger == nullptr || !bounded(account, kNameBound, &name)) return LEDGER_INVALID_ARGUMENT;
  if (parent != nullptr && !bounded(parent, kNameBound, &parent_name)) return LEDGER_INVALID_ARGUMENT;
  if (period < LEDGER_PERIOD_NONE || period > LEDGER_PERIOD_MONTHLY) return LEDGER_INVALID_ARGUMENT;
  return to_int(ledger->ledger->set_budget(name, limit_nanousd, static_cast<ledger::Period>(period),
                                           parent_name));
}

int ledger_block(ledger_t* ledger, const char* account, int32_t blocked) {
  std::string_view name;
  if (ledger == nullptr || !bounded(account, kNameBound, &name) || (blocked != 0 && blocked != 1))
    return LEDGER_INVALID_ARGUMENT;
  return to_int(ledger->ledger->block(name, blocked == 1));
}

int ledger_debit(ledger_t* ledger, const char* account, int64_t amount_nanousd) {
  std::string_view name;
  if (ledger == nullptr || !bounded(account, kNameBound, &name)) return LEDGER_INVALID_ARGUMENT;
  return to_int(ledger->ledger->debit(name, amount_nanousd));
}

int ledger_reserve(ledger_t* ledger, const char* account, int64_t amount_nanousd, uint32_t ttl_seconds,
                   uint64_t* reservation_id) {
  std::string_view name;
  if (ledger == nullptr || reservation_id == nullptr || !bounded(account, kNameBound, &name))
    return LEDGER_INVALID_ARGUMENT;
  return to_int(ledger->ledger->reserve(name, amount_nanousd, ttl_seconds, reservation_id));
}

int ledger_commit(ledger_t* ledger, uint64_t reservation_id, int64_t actual_nanousd) {
  if (ledger == nullptr) return LEDGER_INVALID_ARGUMENT;
  return to_int(ledger->ledger->commit(reservation_id, actual_nanousd));
}

int ledger_commit_usage(ledger_t* ledger, uint64_t reservation_id, int64_t actual_nanousd, uint32_t prompt_tokens,
                        uint32_t completion_tokens) {
  if (ledger == nullptr) return LEDGER_INVALID_ARGUMENT;
  return to_int(ledger->ledger->commit_usage(reservation_id, actual_nanousd, prompt_tokens, completion_tokens));
}

int ledger_retry_after_ms(ledger_t* ledger, uint32_t* retry_after_ms) {
  if (ledger == nullptr || retry_after_ms == nullptr) return LEDGER_INVALID_ARGUMENT;
  *retry_after_ms = ledger::Ledger::rate_retry_after_ms();
  return LEDGER_OK;
}

int ledger_release(ledger_t* ledger, uint64_t reservation_id) {
  if (ledger == nullptr) return LEDGER_INVALID_ARGUMENT;
  return to_int(ledger->ledger->release(reservation_id));
}

int ledger_balance(ledger_t* ledger, const char* account, ledger_balance_t* out) {
  std::string_view name;
  if (ledger == nullptr || out == nullptr || !bounded(account, kNameBound, &name))
    return LEDGER_INVALID_ARGUMENT;
  ledger::Balance b;
  const ledger::Status status = ledger->ledger->balance(name, &b);
  if (!status.ok()) return to_int(status);
  out->limit_nanousd = b.limit_nanousd;
  out->spent_nanousd = b.spent_nanousd;
  out->held_nanousd = b.held_nanousd;
  out->available_nanousd = b.available_nanousd;
  out->requests = b.requests;
  out->period = static_cast<int32_t>(b.period);
  out->blocked = b.blocked ? 1 : 0;
  out->period_start_unix = b.period_start_unix;
  return LEDGER_OK;
}

int ledger_reclaim(ledger_t* ledger, uint32_t* reclaimed) {
  if (ledger == nullptr) return LEDGER_INVALID_ARGUMENT;
  uint32_t count = 0;
  const ledger::Status status = ledger->ledger->reclaim(&count);
  if (reclaimed != nullptr) *reclaimed = count;
  return to_int(status);
}

int ledger_flush(ledger_t* ledger) {
  if (ledger == nullptr) return LEDGER_INVALID_ARGUMENT;
  return to_int(ledger->ledger->flush());
}

}  // extern "C"

extern "C" {

int ledger_set_price(ledger_t* ledger, const char* model, int64_t prompt_nanousd_per_mtok,
                     int64_t completion_nanousd_per_mtok, int64_t request_nanousd) {
  std::string_view name;
  if (ledger == nullptr || !bounded(model, 128, &name)) return LEDGER_INVALID_ARGUMENT;
  return to_int(ledger->ledger->set_price(name, prompt_nanousd_per_mtok, completion_nanousd_per_mtok,
                                          request_nanousd));
}

int ledger_estimate(ledger_t* ledger, const char* model, uint32_t prompt_tokens,
                    uint32_t max_completion_tokens, int64_t* estimate_nanousd) {
  std::string_view name;
  if (ledger == nullptr || estimate_nanousd == nullptr || !bounded(model, 128, &name))
    return LEDGER_INVALID_ARGUMENT;
  return to_int(ledger->ledger->estimate(name, prompt_tokens, max_completion_tokens, estimate_nanousd));
}

int ledger_authorize(ledger_t* ledger, const char* account, const char* model, int64_t estimate_nanousd,
                     uint32_t ttl_seconds, char* model_out, size_t model_out_size,
                     uint64_t* reservation_id) {
  return ledger_authorize_via(ledger, account, model, estimate_nanousd, ttl_seconds, nullptr, model_out,
                              model_out_size, reservation_id);
}

int ledger_authorize_via(ledger_t* ledger, const char* account, const char* model, int64_t estimate_nanousd,
                         uint32_t ttl_seconds, const char* key_hash, char* model_out, size_t model_out_size,
                         uint64_t* reservation_id) {
  std::string_view name, model_name, key;
  if (ledger == nullptr || model_out == nullptr || reservation_id == nullptr ||
      !bounded(account, kNameBound, &name) || !bounded(model, 128, &model_name))
    return LEDGER_INVALID_ARGUMENT;
  if (key_hash != nullptr && !bounded(key_hash, 65, &key)) return LEDGER_INVALID_ARGUMENT;
  // A chosen model that does not fit the buffer is refused before anything is reserved.
  if (model_out_size == 0) return LEDGER_INVALID_ARGUMENT;
  std::string_view chosen;
  const ledger::Status status = ledger->ledger->authorize_via(name, model_name, estimate_nanousd, ttl_seconds, key,
                                                              &chosen, reservation_id, model_out_size - 1);
  // On success the chosen model; on LEDGER_UNKNOWN_MODEL the model that has no price (if it fits).
  const bool tell = status.ok() || (status.code() == ledger::Code::kUnknownModel && chosen.size() < model_out_size);
  if (tell) {
    std::memcpy(model_out, chosen.data(), chosen.size());
    model_out[chosen.size()] = '\0';
  }
  return to_int(status);
}

}  // extern "C"
