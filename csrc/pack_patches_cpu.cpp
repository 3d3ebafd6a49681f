// CPU patch gather: copies each p-element run of a spectrogram row straight to its place in the
// packed output (runs start every stride_t elements), threads splitting the (segment, frequency
// patch row) pairs between them.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "pack_patches.h"
#include "pack_patches_index.h"

namespace ek {
namespace {

// Fixed-size copies let the compiler inline the common run sizes (16 fp16 = 32 B, 16 fp32 = 64 B).
template <int64_t kBytes>
inline void copy_runs(uint8_t* dst, int64_t dst_stride, const uint8_t* src, int64_t src_stride, int64_t count,
                      int64_t) {
  for (int64_t t = 0; t < count; ++t) std::memcpy(dst + t * dst_stride, src + t * src_stride, kBytes);
}
inline void copy_runs_any(uint8_t* dst, int64_t dst_stride, const uint8_t* src, int64_t src_stride, int64_t count,
                          int64_t bytes) {
  for (int64_t t = 0; t < count; ++t)
    std::memcpy(dst + t * dst_stride, src + t * src_stride, static_cast<size_t>(bytes));
}

using CopyFn = void (*)(uint8_t*, int64_t, const uint8_t*, int64_t, int64_t, int64_t);

CopyFn pick_copy(int64_t run_bytes) {
  switch (run_bytes) {
    case 16: return copy_runs<16>;
    case 32: return copy_runs<32>;
    case 64: return copy_runs<64>;
    case 128: return copy_runs<128>;
    default: return copy_runs_any;
  }
}

}  // namespace

void pack_patches_cpu(const std::vector<GatherSource>& sources, const int32_t* cu_seqlens, const PatchGeometry& geo,
                      uint8_t* out, int32_t* freq_idx, int32_t* time_idx, int num_threads) {
  const int64_t p = geo.patch, freq_patches = geo.freq_patches;
  const int64_t run_bytes = p * geo.elem_size;                 // one patch row
  const int64_t step_bytes = geo.time_stride * geo.elem_size;  // from one token's run to the next
  const int64_t token_bytes = geo.channels * p * run_bytes;     // one output row
  const int64_t rows = static_cast<int64_t>(sources.size()) * freq_patches;
  const CopyFn copy = pick_copy(run_bytes);

  auto do_row = [&](int64_t row) {
    const int64_t s = row / freq_patches, f = row % freq_patches;
    const GatherSource& src = sources[static_cast<size_t>(s)];
    const int64_t nt = src.time_patches;
    const int64_t tok0 = cu_seqlens[s] + f * nt;
    for (int64_t c = 0; c < geo.channels; ++c) {
      for (int64_t p1 = 0; p1 < p; ++p1) {
        const uint8_t* from = src.data + ((c * geo.freq + f * geo.freq_stride + p1) * src.frames) * geo.elem_size;
        uint8_t* dst = out + tok0 * token_bytes + (c * p + p1) * run_bytes;
        copy(dst, token_bytes, from, step_bytes, nt, run_bytes);
      }
    }
    for (int64_t t = 0; t < nt; ++t) {
      freq_idx[tok0 + t] = static_cast<int32_t>(f);
      time_idx[tok0 + t] = static_cast<int32_t>(t);
    }
  };

  const int64_t total_bytes = static_cast<int64_t>(cu_seqlens[sources.size()]) * token_bytes;
  int64_t threads = num_threads > 0 ? num_threads : static_cast<int64_t>(std::thread::hardware_concurrency());
  // Below ~1 MiB per thread, starting threads costs more than it saves.
  threads = std::max<int64_t>(1, std::min({threads, rows, total_bytes / (1 << 20) + 1, int64_t{64}}));
  if (threads == 1) {
    for (int64_t row = 0; row < rows; ++row) do_row(row);
    return;
  }
  std::atomic<int64_t> next_row{0};
  auto worker = [&]() {
    for (int64_t row = next_row.fetch_add(1); row < rows; row = next_row.fetch_add(1)) do_row(row);
  };
  std::vector<std::thread> pool;
  try {
    for (int64_t k = 1; k < threads; ++k) pool.emplace_back(worker);
  } catch (const std::system_error&) {
    // out of threads (container limits): the rows are shared through next_row, so the threads
    // that did start, and this one, still cover all of them
  }
  worker();
  for (auto& th : pool) th.join();
}

void emulate_cuda_gather(const std::vector<GatherSource>& sources, const int32_t* cu_seqlens, const PatchGeometry& geo,
                         int64_t vec_bytes, uint8_t* out, int32_t* freq_idx, int32_t* time_idx) {
  const int64_t num_segments = static_cast<int64_t>(sources.size());
  const GatherShape shape = make_gather_shape(num_segments, geo.channels, geo.freq, geo.patch, geo.elem_size,
                                              geo.freq_stride, geo.time_stride, vec_bytes);
  // The device kernel reads the per-segment tables from segment_meta; here they are host arrays.
  std::vector<int64_t> time_patches, frames;
  for (const GatherSource& src : sources) {
    time_patches.push_back(src.time_patches);
    frames.push_back(src.frames);
  }
  const int64_t total_units = static_cast<int64_t>(cu_seqlens[num_segments]) * shape.units_per_token;
  for (int64_t idx = 0; idx < total_units; ++idx) {  // one iteration = one CUDA thread's work
    const UnitSource src = locate_unit(idx, shape, cu_seqlens, time_patches.data(), frames.data());
    std::memcpy(out + idx * vec_bytes, sources[static_cast<size_t>(src.segment)].data + src.byte_offset,
                static_cast<size_t>(vec_bytes));
    if (src.unit == 0) {
      freq_idx[src.token] = static_cast<int32_t>(src.freq_patch);
      time_idx[src.token] = static_cast<int32_t>(src.time_patch);
    }
  }
}

#ifndef ELASTICAST_WITH_CUDA
bool cuda_compiled() { return false; }
std::string cuda_unavailable_reason() { return "elasticast_kernels._C was built without CUDA (ELASTICAST_CUDA=0 or no nvcc)"; }
void pack_patches_cuda(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, int64_t, int64_t, const PatchGeometry&,
                       int64_t, uint64_t, int) {
  throw std::runtime_error(cuda_unavailable_reason());
}
#endif

}  // namespace ek
