// keys.cpp — OpenRouter keys in the segment: which key a settlement went through.
//
// The key table (layout.hpp, KeyEntry) holds each key's 32-byte hash. Registration happens under
// the admin lock (bind_key, or authorize_via naming a full hash the table does not have yet) and
// publishes an entry by storing `live` last; lookups are lock-free. Entries are placed by a hash of
// their first 6 bytes, so every key sharing those bytes sits in one probe run: a prefix of at
// least 12 hex digits (6 bytes) finds all its candidates there, and a unique prefix is decidable.
#include <cstring>

#include "impl.hpp"

namespace ledger {

using namespace detail;

namespace {

constexpr uint32_t kPrefixNibblesMin = 12;
constexpr uint32_t kKeyNibbles = kKeyHashBytes * 2;

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Parses up to 64 hex digits into bytes (a trailing odd digit fills a high nibble). False on a
// non-hex character or a length outside [12, 64].
bool parse_key_hex(std::string_view text, uint8_t* hash) {
  if (text.size() < kPrefixNibblesMin || text.size() > kKeyNibbles) return false;
  std::memset(hash, 0, kKeyHashBytes);
  for (size_t i = 0; i < text.size(); ++i) {
    const int v = hex_value(text[i]);
    if (v < 0) return false;
    hash[i / 2] = static_cast<uint8_t>(hash[i / 2] | (i % 2 == 0 ? v << 4 : v));
  }
  return true;
}

uint32_t prefix_hash(const uint8_t* key_bytes) {
  uint64_t prefix = 0;
  for (int i = 0; i < 6; ++i) prefix = (prefix << 8) | key_bytes[i];
  return static_cast<uint32_t>((prefix * 0x9E3779B97F4A7C15ULL) >> 32);
}

bool matches(const KeyEntry& entry, const uint8_t* key_bytes, uint32_t nibbles) {
  const uint32_t whole = nibbles / 2;
  if (std::memcmp(entry.hash, key_bytes, whole) != 0) return false;
  return nibbles % 2 == 0 || (entry.hash[whole] & 0xF0) == (key_bytes[whole] & 0xF0);
}

}  // namespace

bool valid_key_reference(std::string_view text) {
  uint8_t hash[kKeyHashBytes];
  return parse_key_hex(text, hash);
}

uint32_t Ledger::Impl::find_key(const uint8_t* key_bytes, uint32_t nibbles) const {
  assert(nibbles >= kPrefixNibblesMin && nibbles <= kKeyNibbles);
  const uint32_t start = prefix_hash(key_bytes);
  uint32_t found = 0;
  for (uint32_t probe = 0; probe <= key_mask; ++probe) {
    const uint32_t i = (start + probe) & key_mask;
    if (load(keys[i].live) == 0) break;  // the end of the run: every candidate was before it
    if (!matches(keys[i], key_bytes, nibbles)) continue;
    if (found != 0) return UINT32_MAX;  // ambiguous
    found = i + 1;
  }
  return found;
}

uint32_t Ledger::Impl::register_key(const uint8_t* key_bytes) {
  const uint32_t existing = find_key(key_bytes, kKeyNibbles);
  if (existing != 0) return existing;
  if (load(header->key_count) >= (key_mask + 1) / 2) return 0;  // kept at most half full
  const uint32_t start = prefix_hash(key_bytes);
  for (uint32_t probe = 0; probe <= key_mask; ++probe) {
    KeyEntry& entry = keys[(start + probe) & key_mask];
    if (load(entry.live) != 0) continue;
    std::memcpy(entry.hash, key_bytes, kKeyHashBytes);
    store(entry.live, 1u);  // release: the hash is complete
    store(header->key_count, load(header->key_count) + 1);
    return static_cast<uint32_t>(&entry - keys) + 1;
  }
  return 0;
}

uint32_t Ledger::Impl::register_key_hex(std::string_view hex) {
  uint8_t bytes[kKeyHashBytes];
  return hex.size() == kKeyNibbles && parse_key_hex(hex, bytes) ? register_key(bytes) : 0;
}

Status Ledger::Impl::resolve_key(std::string_view text, uint32_t* key) {
  uint8_t bytes[kKeyHashBytes];
  if (!parse_key_hex(text, bytes)) return Code::kInvalidArgument;
  const auto nibbles = static_cast<uint32_t>(text.size());
  const uint32_t found = find_key(bytes, nibbles);
  if (found == UINT32_MAX) return Code::kInvalidArgument;  // ambiguous prefix
  if (found != 0) {
    *key = found;
    return Code::kOk;
  }
  if (nibbles != kKeyNibbles) return Code::kInvalidArgument;  // a prefix of no key we know
  Status status = ensure_registered();
  if (!status.ok()) return status;
  AdminGuard lock(*this);
  *key = register_key(bytes);
  return *key == 0 ? Status(Code::kFull) : Status(Code::kOk);
}

std::string Ledger::Impl::key_hex(uint32_t key) const {
  if (key == 0 || key > key_mask + 1) return {};
  static constexpr char kDigits[] = "0123456789abcdef";
  const KeyEntry& entry = keys[key - 1];
  std::string out(kKeyNibbles, '0');
  for (uint32_t i = 0; i < kKeyHashBytes; ++i) {
    out[2 * i] = kDigits[entry.hash[i] >> 4];
    out[2 * i + 1] = kDigits[entry.hash[i] & 0xF];
  }
  return out;
}

Status Ledger::bind_key(std::string_view account, std::string_view key_hash) {
  Impl& l = *impl_;
  uint8_t hash[kKeyHashBytes];
  if (!valid_account_name(account) || (!key_hash.empty() && (key_hash.size() != kKeyNibbles || !parse_key_hex(key_hash, hash))))
    return Code::kInvalidArgument;
  Status status = l.ensure_registered();
  if (!status.ok()) return status;
  AdminGuard lock(l);
  const int32_t index = l.find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  const uint32_t key = key_hash.empty() ? 0 : l.register_key(hash);
  if (!key_hash.empty() && key == 0) return Code::kFull;
  store(l.accounts[index].key, key);
  return Code::kOk;
}

Status Ledger::bound_key(std::string_view account, std::string* key_hash) const {
  if (key_hash == nullptr || !valid_account_name(account)) return Code::kInvalidArgument;
  const int32_t index = impl_->find_index(account);
  if (index < 0) return Code::kUnknownAccount;
  *key_hash = impl_->key_hex(load(impl_->accounts[index].key));
  return Code::kOk;
}

Status Ledger::key_holds(std::vector<KeyHold>* out) const {
  if (out == nullptr) return Code::kInvalidArgument;
  const Impl& l = *impl_;
  std::vector<KeyHold> by_key(l.key_mask + 1);
  for (uint32_t r = 0; r < l.max_reservations; ++r) {
    const Reservation& res = l.reservations[r];
    const uint32_t status = res_status(load(res.state));
    const uint32_t key = load(res.key, memory_order_relaxed);
    if ((status != kResHeld && status != kResSettling) || key == 0 || key > l.key_mask + 1) continue;
    KeyHold& k = by_key[key - 1];
    k.held_nanousd = add_saturating(k.held_nanousd, std::clamp<int64_t>(load(res.amount_nanousd, memory_order_relaxed), 0, kAmountNanoUsdMax));
    ++k.holds;
  }
  out->clear();
  for (uint32_t i = 0; i <= l.key_mask; ++i) {
    if (by_key[i].holds == 0) continue;
    by_key[i].key_hash = l.key_hex(i + 1);
    out->push_back(std::move(by_key[i]));
  }
  return Code::kOk;
}

Status Ledger::key_spend(std::vector<KeySpend>* out) const {
  if (out == nullptr) return Code::kInvalidArgument;
  const Impl& l = *impl_;
  out->clear();
  const uint32_t count = load(l.header->account_count);
  std::vector<KeySpend> adjusted;  // kTallyAdjustment entries, merged below
  for (uint32_t i = 0; i <= l.tally_mask; ++i) {
    const uint64_t key = load(l.tallies[i].key);
    const uint32_t kind = tally_key_kind(key);
    if (key == 0 || (kind != kTallyKey && kind != kTallyAdjustment)) continue;
    const uint32_t account = tally_key_account(key), id = tally_key_id(key);
    if (account >= count || id > l.key_mask) continue;  // never written by us: skip, do not index
    const PeriodWord word = period_word_load(l.tallies[i].word);
    const Account& a = l.accounts[account];
    KeySpend row{std::string(a.name, std::min<uint32_t>(a.name_length, kAccountNameMax)), l.key_hex(id + 1), 0, 0, 0};
    if (kind == kTallyKey) {
      row.spent_nanousd = word.used;
      row.requests = meta_requests(word.meta);
      out->push_back(std::move(row));
    } else {
      row.adjusted_nanousd = word.used;
      adjusted.push_back(std::move(row));
    }
  }
  for (const KeySpend& a : adjusted)
    for (KeySpend& row : *out)
      if (row.account == a.account && row.key_hash == a.key_hash) row.adjusted_nanousd = a.adjusted_nanousd;
  return Code::kOk;
}

}  // namespace ledger
