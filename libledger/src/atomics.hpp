// atomics.hpp — the only way code touches shared-segment memory.
//
// 32/64-bit words go through boost::atomics::ipc_atomic_ref (address-free, lock-free, valid across
// processes). The 16-byte period word uses the compiler's __sync builtin, which GCC and Clang inline
// as `lock cmpxchg16b` with -mcx16 (Boost.Atomic's 16-byte path is equivalent inline assembly that
// ThreadSanitizer cannot see, hence the explicit annotations in the TSan build below).
#pragma once

#include <boost/atomic/fences.hpp>
#include <boost/atomic/ipc_atomic_ref.hpp>
#include <cstdint>

#include "layout.hpp"

namespace ledger::detail {

using boost::memory_order;
using boost::memory_order_acq_rel;
using boost::memory_order_acquire;
using boost::memory_order_relaxed;
using boost::memory_order_release;

static_assert(boost::atomics::ipc_atomic_ref<uint64_t>::is_always_lock_free);
static_assert(boost::atomics::ipc_atomic_ref<uint32_t>::is_always_lock_free);
static_assert(boost::atomics::ipc_atomic_ref<int64_t>::is_always_lock_free);
#if !defined(__GCC_HAVE_SYNC_COMPARE_AND_SWAP_16)
#error "libledger needs a 16-byte compare-and-swap (x86-64: compile with -mcx16)"
#endif

template <class T>
inline T load(const T& object, memory_order order = memory_order_acquire) {
  return boost::atomics::ipc_atomic_ref<T>(const_cast<T&>(object)).load(order);
}
template <class T>
inline void store(T& object, T value, memory_order order = memory_order_release) {
  boost::atomics::ipc_atomic_ref<T>(object).store(value, order);
}
// On failure `expected` receives the current value.
template <class T>
inline bool compare_exchange(T& object, T& expected, T desired) {
  return boost::atomics::ipc_atomic_ref<T>(object).compare_exchange_strong(
      expected, desired, memory_order_acq_rel, memory_order_acquire);
}
template <class T>
inline T fetch_or(T& object, T bits) {
  return boost::atomics::ipc_atomic_ref<T>(object).fetch_or(bits, memory_order_acq_rel);
}
inline void fence_release() { boost::atomic_thread_fence(memory_order_release); }
inline void fence_acquire() { boost::atomic_thread_fence(memory_order_acquire); }

__extension__ typedef unsigned __int128 Word128;
inline Word128 pack(PeriodWord w) {
  return (static_cast<Word128>(w.meta) << 64) | static_cast<uint64_t>(w.used);
}
inline PeriodWord unpack(Word128 v) {
  return PeriodWord{static_cast<int64_t>(static_cast<uint64_t>(v)), static_cast<uint64_t>(v >> 64)};
}
inline bool operator==(PeriodWord a, PeriodWord b) { return a.used == b.used && a.meta == b.meta; }

// A cheap, possibly torn snapshot: good as the `expected` of a CAS (a torn value just fails it).
inline PeriodWord period_word_guess(const PeriodWord& word) {
  return PeriodWord{load(word.used, memory_order_acquire), load(word.meta, memory_order_acquire)};
}
#if defined(__SANITIZE_THREAD__)
#define LEDGER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LEDGER_TSAN 1
#endif
#endif

#if defined(LEDGER_TSAN)
// ThreadSanitizer's runtime emulates 16-byte atomics with a process-local lock, which is not atomic
// across processes. Under TSan we issue the instruction ourselves and describe its ordering to
// TSan with acquire/release annotations on the word's address.
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
inline Word128 cas128(Word128* p, Word128 expected, Word128 desired) {
  uint64_t lo = static_cast<uint64_t>(expected), hi = static_cast<uint64_t>(expected >> 64);
  __tsan_release(p);
  __asm__ __volatile__("lock cmpxchg16b %0"
                       : "+m"(*p), "+a"(lo), "+d"(hi)
                       : "b"(static_cast<uint64_t>(desired)), "c"(static_cast<uint64_t>(desired >> 64))
                       : "memory", "cc");
  __tsan_acquire(p);
  return (static_cast<Word128>(hi) << 64) | lo;
}
#else
inline Word128 cas128(Word128* p, Word128 expected, Word128 desired) {
  return __sync_val_compare_and_swap(p, expected, desired);  // lock cmpxchg16b (-mcx16)
}
#endif

// An exact snapshot (a CAS that installs the value it finds).
inline PeriodWord period_word_load(PeriodWord& word) {
  return unpack(cas128(reinterpret_cast<Word128*>(&word), Word128{0}, Word128{0}));
}
// On failure `expected` receives the current value.
inline bool period_word_cas(PeriodWord& word, PeriodWord& expected, PeriodWord desired) {
  const Word128 e = pack(expected);
  const Word128 previous = cas128(reinterpret_cast<Word128*>(&word), e, pack(desired));
  if (previous == e) return true;
  expected = unpack(previous);
  return false;
}

}  // namespace ledger::detail
