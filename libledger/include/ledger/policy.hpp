// ledger/policy.hpp — which model a request may use and what an account may do beyond its budget:
// tiers (TierSpec), an account's own rules (RulesSpec: model list, soft limit, rate limits) and
// top-ups (Topup). Set by ledgerctl init from the config; Ledger::authorize applies them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ledger {

inline constexpr uint32_t kModelIdMax = 87;  // bytes of a model id (set_price, authorize)

// A tier: which models its accounts may use (DESIGN.md 6).
struct TierSpec {
  std::string name;                  // 1-63 bytes of [A-Za-z0-9._:@-]
  bool all_models = false;           // "models": null
  std::vector<std::string> models;   // the allowlist when !all_models
  std::string fallback;              // "" = deny a model outside the list
  uint32_t downgrade_at_percent = 0; // 1..100; 0 = no pressure rule
  std::string downgrade_to;          // the model used at or above downgrade_at_percent
};

// What an account sets beyond its budget and tier (DESIGN 13; Ledger::set_rules).
struct RulesSpec {
  bool soft = false;                 // its own limit never denies (its ancestors' still do)
  // Its own model list, for it and its descendants that set no tier or list of their own: it
  // replaces its tier's list and fallback. all_models = "models": null.
  bool has_models = false;
  bool all_models = false;
  std::vector<std::string> models;
  std::string fallback;              // "" = none of its own (without has_models: the tier's is replaced)
  uint32_t rpm = 0;                  // requests per minute (admissions), 0 = no limit, <= kRpmMax
  uint32_t tpm = 0;                  // tokens per minute, 0 = no limit, <= kTpmMax
  uint32_t max_concurrent = 0;       // open holds at once, 0 = no limit, <= kMaxConcurrentMax
};
inline constexpr uint32_t kRpmMax = 1'000'000;
inline constexpr uint32_t kTpmMax = 1'000'000'000;
inline constexpr uint32_t kMaxConcurrentMax = 16'383;

// A temporary raise of an account's limit (Ledger::set_topup); amount 0 = none.
struct Topup {
  int64_t amount_nanousd = 0;
  int64_t until_unix_ms = 0;  // it counts while the wall clock is before this
};

}  // namespace ledger
