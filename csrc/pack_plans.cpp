// Bin-packing strategies; see pack_plans.h for the rules and tie-breaking contract.
#include "pack_plans.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "int_index.h"

namespace ek {
namespace {

constexpr int64_t kMaxTokensLimit = std::numeric_limits<int32_t>::max();
// Histogram exact-fill: largest pack capacity (in units of the lengths' gcd) and the total work
// (sum of (room + 1) * candidate lengths over all subset-sum programs) it may spend.
constexpr int64_t kHistogramMaxUnits = 1 << 16;
constexpr int64_t kHistogramWorkBudget = int64_t{1} << 24;

// Samples sorted by length, longest first, ties by ascending index. `length` is that sequence of
// lengths (kept contiguous so the strategies read lengths sequentially, not by a random gather,
// which dominated the run time on a million lengths). `index` (the matching sample indices) is
// only built when asked for or when the sort is not a counting sort: with a counting sort,
// finalize_plan recovers it for free from the length histogram (see Assignment::by_sorted_position).
struct SortedLengths {
  bool dense = false;    // counting sort over [1, key_max]
  int64_t key_max = 0;   // max(max_tokens, longest length): oversize lengths are keys too
  std::vector<int32_t> index;
  std::vector<int32_t> length;
};

SortedLengths sort_by_length_desc(const int64_t* lengths, int64_t n, int64_t max_tokens, bool with_index) {
  SortedLengths out;
  out.length.resize(static_cast<size_t>(n));
  out.key_max = max_tokens;
  for (int64_t i = 0; i < n; ++i) out.key_max = std::max(out.key_max, lengths[i]);
  const int64_t key_max = out.key_max;
  out.dense = use_dense_keys(key_max, n);
  if (out.dense) {
    std::vector<int64_t> start(static_cast<size_t>(key_max + 2), 0);
    for (int64_t i = 0; i < n; ++i) ++start[static_cast<size_t>(key_max - lengths[i])];
    int64_t pos = 0;  // bucket key key_max - length puts longer samples first
    for (int64_t key = 0; key <= key_max; ++key) {
      const int64_t count = start[static_cast<size_t>(key)];
      std::fill_n(out.length.begin() + pos, count, static_cast<int32_t>(key_max - key));
      start[static_cast<size_t>(key)] = pos;
      pos += count;
    }
    if (with_index) {
      out.index.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i)
        out.index[static_cast<size_t>(start[static_cast<size_t>(key_max - lengths[i])]++)] = static_cast<int32_t>(i);
    }
  } else {
    out.index.resize(static_cast<size_t>(n));
    std::iota(out.index.begin(), out.index.end(), 0);
    std::stable_sort(out.index.begin(), out.index.end(),
                     [lengths](int32_t a, int32_t b) { return lengths[a] > lengths[b]; });
    for (int64_t pos = 0; pos < n; ++pos)
      out.length[static_cast<size_t>(pos)] = static_cast<int32_t>(lengths[out.index[static_cast<size_t>(pos)]]);
  }
  return out;
}

// Wraps packs chosen per sorted position into an Assignment: kept by sorted position after a
// counting sort (finalize_plan maps positions to samples), scattered to samples otherwise.
Assignment from_sorted(const SortedLengths& sorted, std::vector<int32_t>&& pack_sorted, int64_t num_packs) {
  Assignment a;
  a.num_packs = num_packs;
  if (sorted.dense) {
    a.pack_of = std::move(pack_sorted);
    a.by_sorted_position = true;
    a.sort_key_max = sorted.key_max;
  } else {
    a.pack_of.assign(sorted.index.size(), -1);
    for (size_t pos = 0; pos < sorted.index.size(); ++pos) a.pack_of[static_cast<size_t>(sorted.index[pos])] = pack_sorted[pos];
  }
  return a;
}

template <class Buckets>
Assignment best_fit_decreasing_impl(const int64_t* lengths, int64_t n, int64_t max_tokens) {
  const SortedLengths sorted = sort_by_length_desc(lengths, n, max_tokens, false);
  std::vector<int32_t> pack_sorted(static_cast<size_t>(n));
  int64_t num_packs = 0;
  Buckets by_room(max_tokens);  // open packs keyed by remaining room
  for (int64_t pos = 0; pos < n; ++pos) {
    const int64_t len = sorted.length[static_cast<size_t>(pos)];
    const int64_t room = by_room.next_ge(len);
    int32_t pack;
    int64_t left;
    if (room >= 0) {
      pack = by_room.pop(room);
      left = room - len;
    } else {
      pack = static_cast<int32_t>(num_packs++);
      left = max_tokens - len;
    }
    pack_sorted[static_cast<size_t>(pos)] = pack;
    if (left > 0) by_room.push(left, pack);
  }
  return from_sorted(sorted, std::move(pack_sorted), num_packs);
}

// Packs as a tree of groups: every pack of group g holds the samples of its parent group plus
// `copies` samples of the length with rank `rank` (ranks index the distinct lengths, longest
// first); `count` packs end at exactly group g.
struct PackGroup {
  int32_t parent;
  int32_t rank;
  int64_t copies;
  int64_t count;
};

class GroupList {
 public:
  int32_t add(int32_t parent, int32_t rank, int64_t copies, int64_t count) {
    if (groups_.size() >= static_cast<size_t>(std::numeric_limits<int32_t>::max()))
      throw std::length_error("histogram: too many pack groups");
    groups_.push_back({parent, rank, copies, count});
    return static_cast<int32_t>(groups_.size() - 1);
  }
  PackGroup& operator[](int32_t g) { return groups_[static_cast<size_t>(g)]; }
  size_t size() const { return groups_.size(); }

 private:
  std::vector<PackGroup> groups_;
};

// Phase 1 of the histogram packer: exact-fill patterns. Open a pack with the longest remaining
// length, fill the rest of it as fully as possible from the histogram (bounded subset sum over
// the distinct lengths in units of their gcd, longer lengths preferred), and repeat that pack
// pattern as often as the counts allow. Stops when the dynamic programs would exceed a work
// budget; whatever is left goes to phase 2. Oversize lengths (the first types) are left to phase 2.
void exact_fill_patterns(const std::vector<int64_t>& value, std::vector<int64_t>& left, int64_t max_tokens,
                         GroupList& groups) {
  const int64_t types = static_cast<int64_t>(value.size());
  int64_t first = 0;
  while (first < types && value[static_cast<size_t>(first)] > max_tokens) ++first;
  if (first == types) return;
  int64_t unit = max_tokens;
  for (int64_t t = first; t < types; ++t) unit = std::gcd(unit, value[static_cast<size_t>(t)]);
  const int64_t cap = max_tokens / unit;
  if (cap > kHistogramMaxUnits) return;
  std::vector<int64_t> size(value.size());
  for (size_t t = static_cast<size_t>(first); t < value.size(); ++t) size[t] = value[t] / unit;

  int64_t budget = kHistogramWorkBudget;
  std::vector<int32_t> reach_by(static_cast<size_t>(cap + 1));  // type that first reached a sum
  std::vector<int64_t> used(static_cast<size_t>(cap + 1));      // copies of that type on the path
  std::vector<int64_t> need(value.size(), 0);
  while (true) {
    while (first < types && left[static_cast<size_t>(first)] == 0) ++first;
    if (first == types) return;
    const int64_t room = cap - size[static_cast<size_t>(first)];
    int64_t active = 0;
    for (int64_t t = first; t < types; ++t) active += left[static_cast<size_t>(t)] > 0 && size[static_cast<size_t>(t)] <= room;
    const int64_t work = (room + 1) * active;
    if (work > budget) return;
    budget -= work;

    --left[static_cast<size_t>(first)];
    std::fill(reach_by.begin(), reach_by.begin() + room + 1, -1);
    reach_by[0] = static_cast<int32_t>(types);  // sentinel: the empty sum
    for (int64_t t = first; t < types && reach_by[static_cast<size_t>(room)] < 0; ++t) {
      const int64_t len = size[static_cast<size_t>(t)], avail = left[static_cast<size_t>(t)];
      if (avail == 0 || len > room) continue;
      for (int64_t s = len; s <= room; ++s) {
        if (reach_by[static_cast<size_t>(s)] >= 0 || reach_by[static_cast<size_t>(s - len)] < 0) continue;
        const int64_t copies = reach_by[static_cast<size_t>(s - len)] == t ? used[static_cast<size_t>(s - len)] + 1 : 1;
        if (copies <= avail) {
          reach_by[static_cast<size_t>(s)] = static_cast<int32_t>(t);
          used[static_cast<size_t>(s)] = copies;
        }
      }
    }
    ++left[static_cast<size_t>(first)];

    int64_t sum = room;
    while (reach_by[static_cast<size_t>(sum)] < 0) --sum;
    ++need[static_cast<size_t>(first)];
    for (int64_t s = sum; s > 0; s -= size[static_cast<size_t>(reach_by[static_cast<size_t>(s)])])
      ++need[static_cast<size_t>(reach_by[static_cast<size_t>(s)])];
    int64_t repeat = std::numeric_limits<int64_t>::max();
    for (int64_t t = first; t < types; ++t)
      if (need[static_cast<size_t>(t)]) repeat = std::min(repeat, left[static_cast<size_t>(t)] / need[static_cast<size_t>(t)]);
    int32_t parent = -1;
    for (int64_t t = first; t < types; ++t) {
      if (!need[static_cast<size_t>(t)]) continue;
      left[static_cast<size_t>(t)] -= repeat * need[static_cast<size_t>(t)];
      parent = groups.add(parent, static_cast<int32_t>(t), need[static_cast<size_t>(t)], 0);
      need[static_cast<size_t>(t)] = 0;
    }
    groups[parent].count = repeat;
  }
}

// Phase 2: best-fit decreasing over groups. For each length (longest first) the group whose packs
// have the least room that still fits takes as many copies per pack as fit, for as many of its
// packs as needed; packs that then differ split off as a child group. An oversize length gets one
// pack per sample.
template <class Buckets>
void group_best_fit(const std::vector<int64_t>& value, std::vector<int64_t>& left, int64_t max_tokens,
                    GroupList& groups) {
  Buckets by_room(max_tokens);  // groups keyed by the remaining room of each of their packs
  auto open = [&](int32_t parent, int32_t rank, int64_t copies, int64_t packs, int64_t room) {
    const int32_t g = groups.add(parent, rank, copies, packs);
    if (room > 0) by_room.push(room, g);
  };
  for (size_t r = 0; r < value.size(); ++r) {
    const int64_t len = value[r];
    const int32_t rank = static_cast<int32_t>(r);
    int64_t todo = left[r];
    left[r] = 0;
    if (len > max_tokens) {
      if (todo > 0) open(-1, rank, 1, todo, 0);
      continue;
    }
    while (todo > 0) {
      const int64_t room = by_room.next_ge(len);
      if (room < 0) {
        // No open pack fits: open new packs holding as many copies of this length as fit.
        const int64_t per_pack = std::min(max_tokens / len, todo);
        open(-1, rank, per_pack, todo / per_pack, max_tokens - per_pack * len);
        if (todo % per_pack) open(-1, rank, todo % per_pack, 1, max_tokens - (todo % per_pack) * len);
        break;
      }
      const int32_t g = by_room.pop(room);
      const int64_t per_pack = std::min(room / len, todo);
      const int64_t packs = std::min(groups[g].count, todo / per_pack);
      if (packs > 0) {
        groups[g].count -= packs;
        todo -= packs * per_pack;
        open(g, rank, per_pack, packs, room - per_pack * len);
      }
      if (todo > 0 && todo < per_pack && groups[g].count > 0) {
        groups[g].count -= 1;
        open(g, rank, todo, 1, room - todo * len);
        todo = 0;
      }
      if (groups[g].count > 0) by_room.push(room, g);
    }
  }
}

template <class Buckets>
Assignment histogram_impl(const int64_t* lengths, int64_t n, int64_t max_tokens) {
  const SortedLengths sorted = sort_by_length_desc(lengths, n, max_tokens, false);
  // Distinct lengths (longest first), how many samples have each, and where they start in `sorted`.
  std::vector<int64_t> value, count, begin;
  for (int64_t pos = 0; pos < n; ++pos) {
    const int64_t len = sorted.length[static_cast<size_t>(pos)];
    if (value.empty() || value.back() != len) {
      value.push_back(len);
      count.push_back(0);
      begin.push_back(pos);
    }
    ++count.back();
  }

  GroupList groups;
  std::vector<int64_t> left = count;
  exact_fill_patterns(value, left, max_tokens, groups);
  group_best_fit<Buckets>(value, left, max_tokens, groups);

  // Expand groups into packs, in group creation order; each length hands out its samples in
  // ascending index order.
  std::vector<int32_t> pack_sorted(static_cast<size_t>(n), -1);
  int64_t num_packs = 0;
  std::vector<int64_t> next = begin;
  for (int32_t g = 0; g < static_cast<int32_t>(groups.size()); ++g) {
    for (int64_t k = 0; k < groups[g].count; ++k) {
      const int32_t pack = static_cast<int32_t>(num_packs++);
      for (int32_t h = g; h >= 0; h = groups[h].parent) {
        const PackGroup& node = groups[h];
        const size_t r = static_cast<size_t>(node.rank);
        if (next[r] + node.copies > begin[r] + count[r]) throw std::logic_error("histogram: a length ran out of samples");
        for (int64_t c = 0; c < node.copies; ++c) pack_sorted[static_cast<size_t>(next[r]++)] = pack;
      }
    }
  }
  return from_sorted(sorted, std::move(pack_sorted), num_packs);
}

}  // namespace

void check_lengths(const int64_t* lengths, int64_t n, int64_t max_tokens) {
  if (max_tokens < 1 || max_tokens > kMaxTokensLimit)
    throw std::invalid_argument("max_tokens must be in [1, 2**31 - 1], got " + std::to_string(max_tokens));
  if (n < 0 || n >= std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("lengths: too many samples (" + std::to_string(n) + ")");
  for (int64_t i = 0; i < n; ++i) {
    if (lengths[i] < 1 || lengths[i] > kMaxTokensLimit)
      throw std::invalid_argument("lengths[" + std::to_string(i) + "] = " + std::to_string(lengths[i]) +
                                  " is outside [1, 2**31 - 1]");
  }
}

Assignment next_fit(const int64_t* lengths, int64_t n, int64_t max_tokens) {
  check_lengths(lengths, n, max_tokens);
  Assignment a;
  a.pack_of.resize(static_cast<size_t>(n));
  int64_t used = 0;
  int32_t pack = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (pack < 0 || used + lengths[i] > max_tokens) {
      ++pack;
      used = 0;
    }
    used += lengths[i];
    a.pack_of[static_cast<size_t>(i)] = pack;
  }
  a.num_packs = pack + 1;
  return a;
}

Assignment first_fit_decreasing(const int64_t* lengths, int64_t n, int64_t max_tokens) {
  check_lengths(lengths, n, max_tokens);
  if (n == 0) return Assignment{};
  // Max segment tree over the room of packs 0..leaves-1; unopened packs have full room, so the
  // leftmost leaf with enough room is the first pack the sample fits in (possibly a new one).
  // First fit leaves at most one pack half empty or emptier, so it never needs more than
  // 2 * ceil(sum / max_tokens) + 1 packs: a smaller tree than one leaf per sample. (Each oversize
  // sample adds one pack and more than max_tokens to the sum, so the bound holds with them.)
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) total += lengths[i];
  const int64_t max_packs = std::min(n, 2 * ((total + max_tokens - 1) / max_tokens) + 1);
  int64_t leaves = 1;
  while (leaves < max_packs) leaves <<= 1;
  std::vector<int32_t> room(static_cast<size_t>(2 * leaves), static_cast<int32_t>(max_tokens));
  const SortedLengths sorted = sort_by_length_desc(lengths, n, max_tokens, false);
  std::vector<int32_t> pack_sorted(static_cast<size_t>(n));
  int64_t num_packs = 0;
  for (int64_t pos = 0; pos < n; ++pos) {
    const int32_t len = static_cast<int32_t>(sorted.length[static_cast<size_t>(pos)]);
    size_t node = 1;
    if (len > max_tokens) {
      // Oversize: alone in the next unopened pack (the oversize samples come first, so the packs
      // before it hold one oversize sample each), which no later sample can join.
      if (num_packs >= leaves) throw std::logic_error("first_fit_decreasing: pack bound exceeded");
      node = static_cast<size_t>(leaves + num_packs);
      room[node] = 0;
    } else {
      if (room[1] < len) throw std::logic_error("first_fit_decreasing: pack bound exceeded");
      while (node < static_cast<size_t>(leaves)) node = room[2 * node] >= len ? 2 * node : 2 * node + 1;
      room[node] -= len;
    }
    const int64_t pack = static_cast<int64_t>(node) - leaves;
    pack_sorted[static_cast<size_t>(pos)] = static_cast<int32_t>(pack);
    num_packs = std::max(num_packs, pack + 1);
    for (node >>= 1; node >= 1; node >>= 1) room[node] = std::max(room[2 * node], room[2 * node + 1]);
  }
  return from_sorted(sorted, std::move(pack_sorted), num_packs);
}

Assignment best_fit_decreasing(const int64_t* lengths, int64_t n, int64_t max_tokens) {
  check_lengths(lengths, n, max_tokens);
  return use_dense_keys(max_tokens, n) ? best_fit_decreasing_impl<DenseBuckets>(lengths, n, max_tokens)
                                       : best_fit_decreasing_impl<SparseBuckets>(lengths, n, max_tokens);
}

Assignment histogram(const int64_t* lengths, int64_t n, int64_t max_tokens) {
  check_lengths(lengths, n, max_tokens);
  return use_dense_keys(max_tokens, n) ? histogram_impl<DenseBuckets>(lengths, n, max_tokens)
                                       : histogram_impl<SparseBuckets>(lengths, n, max_tokens);
}

Assignment best_fit_window(const int64_t* lengths, int64_t n, int64_t max_tokens, int64_t window) {
  check_lengths(lengths, n, max_tokens);
  if (window < 1) throw std::invalid_argument("window must be >= 1, got " + std::to_string(window));
  Assignment a;
  a.pack_of.assign(static_cast<size_t>(n), -1);
  if (n == 0) return a;

  // Work in the rank space of distinct lengths (ascending), so the pending set is a bitset over
  // at most n ranks whatever max_tokens is. by_len lists samples by (length, index).
  std::vector<int32_t> by_len = sort_by_length_desc(lengths, n, max_tokens, true).index;
  std::reverse(by_len.begin(), by_len.end());  // ascending length, but descending index in a tie
  std::vector<int64_t> value, begin;
  std::vector<int32_t> rank_of(static_cast<size_t>(n));
  for (int64_t pos = 0; pos < n; ++pos) {
    const int64_t len = lengths[by_len[static_cast<size_t>(pos)]];
    if (value.empty() || value.back() != len) {
      if (!value.empty())  // restore ascending index inside the finished tie run
        std::reverse(by_len.begin() + begin.back(), by_len.begin() + pos);
      value.push_back(len);
      begin.push_back(pos);
    }
    rank_of[static_cast<size_t>(by_len[static_cast<size_t>(pos)])] = static_cast<int32_t>(value.size() - 1);
  }
  std::reverse(by_len.begin() + begin.back(), by_len.end());

  // Pending samples of rank r are by_len[head[r] : entered[r]]: they enter and leave in index order.
  std::vector<int64_t> head = begin, entered = begin;
  HierBitset pending_ranks(static_cast<int64_t>(value.size()));
  std::vector<uint8_t> taken(static_cast<size_t>(n), 0);
  int64_t stream = 0, pending = 0, oldest = 0;

  auto top_up = [&]() {
    while (pending < window && stream < n) {
      const int32_t r = rank_of[static_cast<size_t>(stream)];
      if (entered[static_cast<size_t>(r)] == head[static_cast<size_t>(r)]) pending_ranks.set(r);
      ++entered[static_cast<size_t>(r)];
      ++stream;
      ++pending;
    }
  };
  auto take = [&](int64_t r, int32_t pack) {
    const int32_t i = by_len[static_cast<size_t>(head[static_cast<size_t>(r)]++)];
    if (head[static_cast<size_t>(r)] == entered[static_cast<size_t>(r)]) pending_ranks.clear(r);
    --pending;
    taken[static_cast<size_t>(i)] = 1;
    a.pack_of[static_cast<size_t>(i)] = pack;
    top_up();
    return lengths[i];
  };

  top_up();
  while (pending > 0) {
    const int32_t pack = static_cast<int32_t>(a.num_packs++);
    while (taken[static_cast<size_t>(oldest)]) ++oldest;  // the oldest pending sample opens the pack
    int64_t room = max_tokens - take(rank_of[static_cast<size_t>(oldest)], pack);
    while (room > 0) {
      const int64_t limit = std::upper_bound(value.begin(), value.end(), room) - value.begin() - 1;
      const int64_t longest = pending_ranks.prev_le(limit);  // longest pending length <= room
      if (longest < 0) break;
      // Gap-aware best fit: take the longest length that fills the pack exactly or leaves a gap
      // that some other pending sample can still use; a plain "longest that fits" strands gaps
      // shorter than every pending sample (about 3% of the capacity on speech lengths).
      const int64_t shortest = pending_ranks.next_ge(0);
      int64_t chosen = longest;
      for (int64_t r = longest; r >= 0; r = pending_ranks.prev_le(r - 1)) {
        const int64_t gap = room - value[static_cast<size_t>(r)];
        if (gap == 0) { chosen = r; break; }
        // Shortest pending length once this sample is gone.
        int64_t other = shortest;
        if (other == r && entered[static_cast<size_t>(r)] - head[static_cast<size_t>(r)] == 1) other = pending_ranks.next_ge(r + 1);
        if (other >= 0 && gap >= value[static_cast<size_t>(other)]) { chosen = r; break; }
      }
      room -= take(chosen, pack);
    }
  }
  return a;
}

void finalize_plan(const Assignment& a, const int64_t* lengths, int64_t* order, int64_t* offsets) {
  const size_t n = a.pack_of.size();
  std::fill(offsets, offsets + a.num_packs + 1, 0);
  for (size_t k = 0; k < n; ++k) {
    const int32_t p = a.pack_of[k];
    if (p < 0 || p >= a.num_packs) throw std::logic_error("finalize_plan: sample without a valid pack");
    ++offsets[p + 1];
  }
  for (int64_t p = 0; p < a.num_packs; ++p) offsets[p + 1] += offsets[p];
  // int32 cursors (n < 2^31): half the cache footprint of this randomly accessed array.
  std::vector<int32_t> cursor(offsets, offsets + a.num_packs);
  std::vector<int32_t> by_index;  // pack of sample i
  const int32_t* pack_of = a.pack_of.data();
  // `lengths` may alias `order` (see pack_plans.h): every read of it is in this block, above the
  // loop that writes `order`.
  if (a.by_sorted_position) {
    // Sorted position of sample i = start of its length's run + how many earlier samples share
    // the length (the counting sort's rule), so no index array was ever needed.
    const int64_t key_max = a.sort_key_max;
    std::vector<int64_t> next(static_cast<size_t>(key_max + 2), 0);
    for (size_t i = 0; i < n; ++i) ++next[static_cast<size_t>(key_max - lengths[i])];
    int64_t running = 0;
    for (auto& v : next) { const int64_t c = v; v = running; running += c; }
    by_index.resize(n);
    for (size_t i = 0; i < n; ++i) by_index[i] = a.pack_of[static_cast<size_t>(next[static_cast<size_t>(key_max - lengths[i])]++)];
    pack_of = by_index.data();
  }
  // Walking samples in index order makes the order inside each pack ascending (stable). The
  // writes land at random places in `order`; prefetching a few samples ahead hides most misses.
  constexpr size_t kAhead = 16;
  for (size_t i = 0; i < n; ++i) {
    if (i + kAhead < n) __builtin_prefetch(order + cursor[static_cast<size_t>(pack_of[i + kAhead])], 1);
    order[cursor[static_cast<size_t>(pack_of[i])]++] = static_cast<int64_t>(i);
  }
}

}  // namespace ek
