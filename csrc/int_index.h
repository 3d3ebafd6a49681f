// Small integer-keyed containers used by the packing strategies.
//
//   HierBitset     set of integers in [0, size) with next_ge / prev_le in O(log64 size).
//   DenseBuckets   LIFO buckets of item ids keyed by an integer in [0, max_key] (bitset + heads).
//   SparseBuckets  the same interface over std::map, for keys too large for a dense array.
//
// Buckets are intrusive linked lists (one `next` slot per item), so an item may be in at most one
// bucket at a time, which is how the strategies use them (a pack has one remaining capacity).
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <vector>

namespace ek {

class HierBitset {
 public:
  explicit HierBitset(int64_t size) {
    int64_t bits = size < 1 ? 1 : size;
    while (true) {
      nbits_.push_back(bits);
      words_.emplace_back(static_cast<size_t>((bits + 63) >> 6), 0ULL);
      if (bits <= 64) break;
      bits = (bits + 63) >> 6;
    }
  }

  void set(int64_t x) {
    for (size_t level = 0; level < words_.size(); ++level) {
      uint64_t& word = words_[level][static_cast<size_t>(x >> 6)];
      const bool was_empty = word == 0;
      word |= 1ULL << (x & 63);
      if (!was_empty) return;  // the levels above already know this word is non-empty
      x >>= 6;
    }
  }

  void clear(int64_t x) {
    for (size_t level = 0; level < words_.size(); ++level) {
      uint64_t& word = words_[level][static_cast<size_t>(x >> 6)];
      word &= ~(1ULL << (x & 63));
      if (word != 0) return;  // still non-empty: the summary bit above stays set
      x >>= 6;
    }
  }

  // Smallest member >= x, or -1.
  int64_t next_ge(int64_t x) const { return x < 0 ? next_ge_at(0, 0) : next_ge_at(0, x); }
  // Largest member <= x, or -1.
  int64_t prev_le(int64_t x) const {
    if (x < 0) return -1;
    if (x >= nbits_[0]) x = nbits_[0] - 1;
    return prev_le_at(0, x);
  }

 private:
  int64_t next_ge_at(size_t level, int64_t x) const {
    if (x >= nbits_[level]) return -1;
    const int64_t w = x >> 6;
    const uint64_t m = words_[level][static_cast<size_t>(w)] & (~0ULL << (x & 63));
    if (m) return (w << 6) | __builtin_ctzll(m);
    if (level + 1 == words_.size()) return -1;
    const int64_t up = next_ge_at(level + 1, w + 1);
    if (up < 0) return -1;
    return (up << 6) | __builtin_ctzll(words_[level][static_cast<size_t>(up)]);
  }

  int64_t prev_le_at(size_t level, int64_t x) const {
    const int64_t w = x >> 6;
    const int b = static_cast<int>(x & 63);
    const uint64_t mask = b == 63 ? ~0ULL : ((1ULL << (b + 1)) - 1);
    const uint64_t m = words_[level][static_cast<size_t>(w)] & mask;
    if (m) return (w << 6) | (63 - __builtin_clzll(m));
    if (w == 0 || level + 1 == words_.size()) return -1;
    const int64_t up = prev_le_at(level + 1, w - 1);
    if (up < 0) return -1;
    return (up << 6) | (63 - __builtin_clzll(words_[level][static_cast<size_t>(up)]));
  }

  std::vector<int64_t> nbits_;
  std::vector<std::vector<uint64_t>> words_;
};

// Shared item links of both bucket kinds.
class ItemLinks {
 protected:
  int32_t& link(int32_t item) {
    if (item < 0) throw std::logic_error("ek: negative bucket item");
    if (static_cast<size_t>(item) >= next_.size()) next_.resize(static_cast<size_t>(item) * 2 + 16, -1);
    return next_[static_cast<size_t>(item)];
  }
  std::vector<int32_t> next_;
};

class DenseBuckets : ItemLinks {
 public:
  explicit DenseBuckets(int64_t max_key) : head_(static_cast<size_t>(max_key + 1), -1), bits_(max_key + 1) {}

  void push(int64_t key, int32_t item) {
    check(key);
    int32_t& head = head_[static_cast<size_t>(key)];
    if (head < 0) bits_.set(key);
    link(item) = head;
    head = item;
  }
  // Precondition: bucket `key` is non-empty (callers only pop keys returned by next_ge).
  int32_t pop(int64_t key) {
    check(key);
    int32_t& head = head_[static_cast<size_t>(key)];
    if (head < 0) throw std::logic_error("ek: pop from an empty bucket");
    const int32_t item = head;
    head = link(item);
    if (head < 0) bits_.clear(key);
    return item;
  }
  int64_t next_ge(int64_t key) const { return bits_.next_ge(key); }

 private:
  void check(int64_t key) const {
    if (key < 0 || key >= static_cast<int64_t>(head_.size())) throw std::logic_error("ek: bucket key out of range");
  }
  std::vector<int32_t> head_;
  HierBitset bits_;
};

class SparseBuckets : ItemLinks {
 public:
  explicit SparseBuckets(int64_t /*max_key*/) {}

  void push(int64_t key, int32_t item) {
    auto it = head_.find(key);
    if (it == head_.end()) {
      link(item) = -1;
      head_.emplace(key, item);
    } else {
      link(item) = it->second;
      it->second = item;
    }
  }
  int32_t pop(int64_t key) {
    auto it = head_.find(key);
    if (it == head_.end()) throw std::logic_error("ek: pop from an empty bucket");
    const int32_t item = it->second;
    const int32_t next = link(item);
    if (next < 0) head_.erase(it); else it->second = next;
    return item;
  }
  int64_t next_ge(int64_t key) const {
    auto it = head_.lower_bound(key);
    return it == head_.end() ? -1 : it->first;
  }

 private:
  std::map<int64_t, int32_t> head_;
};

// Dense arrays indexed by capacity pay O(max_tokens) memory and set-up; use them when that is
// small next to the input (always for realistic token budgets).
inline bool use_dense_keys(int64_t max_tokens, int64_t n) {
  const int64_t budget = n * 8 > (int64_t{1} << 20) ? n * 8 : (int64_t{1} << 20);
  return max_tokens <= budget && max_tokens <= (int64_t{1} << 26);
}

}  // namespace ek
