// Bin-packing plans over integer sample lengths (no Python, no torch).
//
// Every strategy assigns each sample i a pack id pack_of[i] in [0, num_packs); packs are numbered
// in the order the strategy opens (or emits) them. finalize_plan() turns that assignment into a
// flat plan: `order` (sample indices, pack by pack, ascending index inside a pack: a stable order)
// and `offsets` (num_packs + 1 entries, pack p is order[offsets[p]:offsets[p+1]]).
//
// Tie rules are part of the contract because the Python fallback must give identical plans:
//   * sorting "by length, decreasing" breaks ties by ascending sample index;
//   * packs (or pack groups) with equal remaining capacity are kept in LIFO buckets: the one that
//     reached that capacity most recently is taken first.
//
// A sample longer than max_tokens ("oversize") gets a pack of its own in every strategy, at the
// place the strategy's own rule puts it: next_fit closes the open pack before it and after it;
// the decreasing strategies meet the oversize samples first (they are the longest), so they open
// the first packs, one each; best_fit_window opens a pack with it when it is the oldest pending
// sample and nothing can join; histogram leaves them out of the exact-fill patterns and gives
// each one a pack at the start of the best-fit phase.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ek {

struct Assignment {
  // [n] pack ids: of sample i, or, when by_sorted_position, of the pos-th sample in the order
  // (length descending, index ascending) -- that saves the strategies a random scatter.
  std::vector<int32_t> pack_of;
  bool by_sorted_position = false;
  // by_sorted_position only: the counting sort's largest key, max(max_tokens, longest length).
  int64_t sort_key_max = 0;
  int64_t num_packs = 0;
};

// Every strategy checks `lengths` first and then indexes tables with them: the memory must not
// change during the call (the bindings pass a private copy, never the caller's buffer). Lengths
// must be in [1, 2**31 - 1] (a pack's tokens are counted in int32); max_tokens in the same range.
// Throws std::invalid_argument (ValueError in Python) naming the argument and the index.
void check_lengths(const int64_t* lengths, int64_t n, int64_t max_tokens);

// In input order, one open pack; a new pack opens when the next sample would overflow it.
Assignment next_fit(const int64_t* lengths, int64_t n, int64_t max_tokens);
// Decreasing length; each sample goes to the first (lowest-numbered) pack it fits in. O(n log n).
Assignment first_fit_decreasing(const int64_t* lengths, int64_t n, int64_t max_tokens);
// Decreasing length; each sample goes to the pack with the least remaining room that still fits.
Assignment best_fit_decreasing(const int64_t* lengths, int64_t n, int64_t max_tokens);
// Streaming: at most `window` samples are pending; one pack is open at a time. A pack starts with
// the oldest pending sample, then repeatedly takes, among pending lengths that fit its room, the
// longest one that fills the room exactly or leaves a gap >= the shortest other pending length
// (else the longest that fits), earliest index on ties, until nothing fits; the window is topped
// up from the stream after every removal. Every sample leaves within `window` packs of arriving.
Assignment best_fit_window(const int64_t* lengths, int64_t n, int64_t max_tokens, int64_t window);
// Works on the length histogram, where packs with identical contents travel as one group (the work
// grows with the number of distinct lengths and pack patterns, not with n):
//   1. exact-fill patterns: open a pack with the longest remaining length, fill its room as fully
//      as possible by a bounded subset sum over the distinct lengths (in units of their gcd,
//      longer lengths first), then repeat that pattern as often as the counts allow;
//   2. when the subset sums would exceed a fixed work budget (or the capacity is too fine-grained),
//      best-fit decreasing over groups packs whatever is left.
Assignment histogram(const int64_t* lengths, int64_t n, int64_t max_tokens);

// order: [n], offsets: [num_packs + 1]; both preallocated by the caller. `lengths` is the
// strategy's (validated) input. It may be the same memory as `order` (the bindings keep their
// private copy of the lengths there): it is read only before `order` is written.
void finalize_plan(const Assignment& a, const int64_t* lengths, int64_t* order, int64_t* offsets);

}  // namespace ek
