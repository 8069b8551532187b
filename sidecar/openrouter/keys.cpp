// keys.cpp — see keys.hpp.
#include "openrouter/keys.hpp"

#include <set>

#include "core/admin.hpp"
#include "ledger/store.hpp"

namespace ledger::admin {

const openrouter::KeyInfo* resolve_key_prefix(const std::vector<openrouter::KeyInfo>& keys, const std::string& prefix,
                                              std::string* error) {
  std::vector<const openrouter::KeyInfo*> matches;
  for (const auto& k : keys)
    if (k.hash.rfind(prefix, 0) == 0) matches.push_back(&k);
  if (matches.size() == 1) return matches.front();
  if (matches.empty()) {
    *error = "no key's hash starts with " + prefix + " (ledgerctl keys list shows them)";
    return nullptr;
  }
  std::string names;
  for (const auto* k : matches) names += (names.empty() ? "" : ", ") + k->name + " (" + k->hash.substr(0, 12) + "...)";
  *error = prefix + " is ambiguous: " + std::to_string(matches.size()) + " keys start with it: " + names + "; give more hex digits";
  return nullptr;
}

namespace {
std::string key_name(const Config& config, const std::string& account) {
  return config.openrouter.app_title.empty() ? account : config.openrouter.app_title + ":" + account;
}
std::string reset_of(Period p) { return p == Period::kNone ? "" : std::string(period_name(p)); }
}  // namespace

std::vector<NewKey> provision(const Config& config, openrouter::Client& client, std::string* error) {
  std::vector<NewKey> made;
  const auto bound = key_bindings(config);
  for (const auto& a : config.accounts) {
    if (bound.count(a.id) != 0) continue;
    openrouter::KeyInfo info;
    NewKey k;
    k.account = a.id;
    if (const openrouter::Error e = client.create_key(key_name(config, a.id), a.limit_nanousd, reset_of(a.period), &info, &k.secret)) {
      *error = "provisioning stopped at \"" + a.id + "\": " + e.message + " (" + std::to_string(made.size()) +
               " keys were made before it, and are bound)";
      return made;
    }
    k.hash = info.hash;
    if (const Status s = store_bind_key(config.ledger.dir, a.id, k.hash); !s.ok()) {
      *error = "key " + k.hash.substr(0, 12) + "... was created for \"" + a.id + "\" but could not be bound in the store (" +
               describe(s) + "); delete it with ledgerctl keys delete " + k.hash;
      made.push_back(std::move(k));
      return made;
    }
    made.push_back(std::move(k));
  }
  return made;
}

bool rotate(const Config& config, openrouter::Client& client, const std::string& account, NewKey* out, std::string* error) {
  const AccountConfig* a = nullptr;
  for (const auto& c : config.accounts)
    if (c.id == account) a = &c;
  if (a == nullptr) {
    *error = "no account \"" + account + "\" in the config";
    return false;
  }
  const auto bound = key_bindings(config);
  const auto old = bound.find(account);
  openrouter::KeyInfo info;
  out->account = account;
  if (const openrouter::Error e = client.create_key(key_name(config, account), a->limit_nanousd, reset_of(a->period), &info, &out->secret)) {
    *error = "rotation of \"" + account + "\" failed before anything changed: " + e.message;
    return false;
  }
  out->hash = info.hash;
  if (const Status s = store_bind_key(config.ledger.dir, account, out->hash); !s.ok()) {
    *error = "new key " + out->hash.substr(0, 12) + "... was created but not bound (" + describe(s) + "); \"" + account +
             "\" still uses its old key; delete the new one with ledgerctl keys delete " + out->hash;
    return false;
  }
  if (old != bound.end() && !old->second.empty()) {
    if (const openrouter::Error e = client.delete_key(old->second); e && e.kind != openrouter::ErrorKind::kNotFound) {
      *error = "\"" + account + "\" now uses the new key " + out->hash.substr(0, 12) + "..., but deleting the old key " +
               old->second.substr(0, 12) + "... failed: " + e.message + "; retry with ledgerctl keys delete " + old->second;
      return true;  // the account has a working key: the rotation itself happened
    }
  }
  return true;
}

std::vector<std::string> revoke(Ledger& ledger, const Config& config, openrouter::Client& client,
                                std::vector<std::string>* errors) {
  std::vector<std::string> done;
  std::set<std::string> configured;
  for (const auto& a : config.accounts) configured.insert(a.id);
  std::vector<std::pair<std::string, std::string>> stored;
  (void)store_key_bindings(config.ledger.dir, &stored);
  auto bindings = key_bindings(config);
  for (const auto& [account, hash] : stored) bindings[account] = hash;  // removed accounts keep theirs
  for (const auto& [account, hash] : bindings) {
    Balance b;
    const bool exists = ledger.balance(account, &b).ok();
    const bool removed = configured.count(account) == 0;
    if (!removed && !(exists && b.blocked)) continue;
    openrouter::KeyInfo info;
    const bool remove = config.openrouter.revoke == "delete";
    if (!remove) {
      if (const openrouter::Error e = client.get_key(hash, &info); !e && info.disabled) continue;  // done before
      if (const openrouter::Error e = client.set_disabled(hash, true, &info)) {
        if (e.kind != openrouter::ErrorKind::kNotFound) errors->push_back("disabling the key of \"" + account + "\": " + e.message);
        continue;
      }
      done.push_back("disabled the key " + hash.substr(0, 12) + "... of " + (removed ? "removed" : "blocked") + " account \"" + account + "\"");
    } else {
      const openrouter::Error e = client.delete_key(hash);
      if (e && e.kind != openrouter::ErrorKind::kNotFound) {
        errors->push_back("deleting the key of \"" + account + "\": " + e.message);
        continue;
      }
      (void)store_bind_key(config.ledger.dir, account, "");
      if (!e) done.push_back("deleted the key " + hash.substr(0, 12) + "... of " + (removed ? "removed" : "blocked") + " account \"" + account + "\"");
    }
  }
  return done;
}

bool follow_block(const Config& config, openrouter::Client& client, const std::string& account, bool blocked,
                  std::string* done, std::string* error) {
  done->clear();
  const auto bindings = key_bindings(config);
  const auto it = bindings.find(account);
  if (it == bindings.end()) return true;  // no key of its own
  const std::string& hash = it->second;
  const std::string which = "the key " + hash.substr(0, 12) + "... of \"" + account + "\"";
  openrouter::KeyInfo info;
  if (const openrouter::Error e = client.get_key(hash, &info)) {
    if (e.kind == openrouter::ErrorKind::kNotFound) {
      if (!blocked) {
        *error = which + " no longer exists at OpenRouter; give the account a new one with: ledgerctl keys rotate " + account;
        return false;
      }
      return true;  // blocked and gone: nothing left to revoke
    }
    *error = "cannot read " + which + ": " + e.message;
    return false;
  }
  if (blocked && config.openrouter.revoke == "delete") {
    if (const openrouter::Error e = client.delete_key(hash); e && e.kind != openrouter::ErrorKind::kNotFound) {
      *error = "cannot delete " + which + ": " + e.message;
      return false;
    }
    (void)store_bind_key(config.ledger.dir, account, "");
    *done = "deleted " + which;
    return true;
  }
  if (info.disabled == blocked) return true;  // already so
  if (const openrouter::Error e = client.set_disabled(hash, blocked, &info)) {
    *error = std::string("cannot ") + (blocked ? "disable " : "enable ") + which + ": " + e.message;
    return false;
  }
  *done = (blocked ? "disabled " : "enabled again ") + which;
  return true;
}

}  // namespace ledger::admin
