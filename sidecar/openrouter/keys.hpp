// keys.hpp — the key lifecycle: which key belongs to which account, provisioning, rotation and
// revocation (DESIGN.md 7, "keys"). A new key's plaintext is returned to the caller to be shown
// once; it is never logged or stored.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "ledger/ledger.hpp"
#include "openrouter/client.hpp"

namespace ledger::admin {


// The shortest hash prefix `ledgerctl keys delete` accepts (`keys list` shows 12 hex digits).
inline constexpr size_t kKeyPrefixMin = 6;

// The key whose hash starts with `prefix` (lowercase hex), or nullptr and *error: no key has it, or
// several do (each named, with its name and 12-hex-digit prefix, so that a longer prefix can be given).
const openrouter::KeyInfo* resolve_key_prefix(const std::vector<openrouter::KeyInfo>& keys, const std::string& prefix,
                                              std::string* error);

struct NewKey {
  std::string account, hash, secret;  // secret: show once
};

// Creates a key for every configured account without one (name "<app_title>:<account>" or the
// account id; limit and reset from the account's budget), binds it in the store. Stops at the first
// OpenRouter error; keys made before it stay made and bound (*error says so).
std::vector<NewKey> provision(const Config& config, openrouter::Client& client, std::string* error);

// Creates a new key for the account, binds it, then deletes the old one. On failure the account
// keeps a working key and *error says exactly what state things are in.
bool rotate(const Config& config, openrouter::Client& client, const std::string& account, NewKey* out, std::string* error);

// Disables (or, with openrouter.revoke "delete", deletes) the keys of accounts that are blocked or
// no longer in the config. Returns one line per key acted on; errors go to *errors.
std::vector<std::string> revoke(Ledger& ledger, const Config& config, openrouter::Client& client,
                                std::vector<std::string>* errors);

// Right after `ledgerctl block` / `unblock`: the account's bound key is disabled (or deleted, with
// openrouter.revoke "delete") when blocked, and enabled again when unblocked, so OpenRouter follows
// at once instead of at the next reconcile. Returns what was done ("" = nothing to do: no key bound,
// already in that state); false with *error when OpenRouter could not be told.
bool follow_block(const Config& config, openrouter::Client& client, const std::string& account, bool blocked,
                  std::string* done, std::string* error);

}  // namespace ledger::admin
