// Gather p x p patches of [C, F, T] spectrograms, taken every (stride_f, stride_t) elements, into
// one packed buffer: what a Conv2d(kernel_size=p, stride=(stride_f, stride_t)) reads, in its
// output order. Non-overlapping patches are stride = p (ElasticAST); AST uses p = 16, stride 10.
//
// Segment s (a spectrogram with T_s frames) owns output tokens cu_seqlens[s] .. cu_seqlens[s+1]-1,
// F' * T'_s of them with F' = (F - p) / stride_f + 1 and T'_s = (T_s - p) / stride_t + 1 (0 when
// T_s < p), frequency-major (time fastest): token k has freq index f = k / T'_s and time index
// t = k % T'_s. A token's vector has C*p*p elements flattened as (c, p1, p2), the Conv2d weight's
// layout:
//   out[tok, (c*p + p1)*p + p2] = spec_s[c, f*stride_f + p1, t*stride_t + p2].
// Every read is inside the source: (F' - 1) * stride_f + p <= F and (T'_s - 1) * stride_t + p <= T_s.
// The copy is dtype-agnostic: only the element size in bytes matters.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ek {

struct PatchGeometry {
  int64_t channels;     // C
  int64_t freq;         // F (>= patch; a multiple of it when freq_stride == patch)
  int64_t patch;        // p
  int64_t elem_size;    // bytes per element
  int64_t freq_stride;  // stride_f >= 1
  int64_t time_stride;  // stride_t >= 1
  int64_t freq_patches; // F' = (F - p) / stride_f + 1
};

// Patches along an axis of `extent` elements: (extent - p) / stride + 1, or 0 when extent < p.
inline int64_t patches_along(int64_t extent, int64_t patch, int64_t stride) {
  return extent < patch ? 0 : (extent - patch) / stride + 1;
}

// The copy unit of the CUDA gather (and its host emulation): 1, 2, 4, 8 or 16 bytes, dividing a
// patch row (p * elem_size) and the step between patches in time (stride_t * elem_size). Throws
// std::invalid_argument (ValueError in Python).
inline void check_copy_unit(int64_t vec_bytes, const PatchGeometry& geo) {
  const bool power = vec_bytes == 1 || vec_bytes == 2 || vec_bytes == 4 || vec_bytes == 8 || vec_bytes == 16;
  if (!power || (geo.patch * geo.elem_size) % vec_bytes != 0 || (geo.time_stride * geo.elem_size) % vec_bytes != 0)
    throw std::invalid_argument("vec_bytes must be 1, 2, 4, 8 or 16 and divide patch * elem_size (" +
                                std::to_string(geo.patch * geo.elem_size) + ") and time_stride * elem_size (" +
                                std::to_string(geo.time_stride * geo.elem_size) + "), got " + std::to_string(vec_bytes));
}

// One source of a gather: a contiguous [C, F, frames] spectrogram and its T' = time_patches.
struct GatherSource {
  const uint8_t* data;
  int64_t frames;
  int64_t time_patches;
};

// CPU: multi-threaded over (segment, frequency row) pairs; num_threads <= 0 picks a default.
void pack_patches_cpu(const std::vector<GatherSource>& sources, const int32_t* cu_seqlens, const PatchGeometry& geo,
                      uint8_t* out, int32_t* freq_idx, int32_t* time_idx, int num_threads);

// Host emulation of the CUDA kernel: the same per-unit address math (pack_patches_index.h), run
// serially on CPU buffers, so tests check the kernel's indexing without a GPU.
void emulate_cuda_gather(const std::vector<GatherSource>& sources, const int32_t* cu_seqlens, const PatchGeometry& geo,
                         int64_t vec_bytes, uint8_t* out, int32_t* freq_idx, int32_t* time_idx);

// Whether the CUDA gather was compiled in.
bool cuda_compiled();
// "" when a CUDA device is usable, otherwise why not (no driver, no device, built without CUDA).
std::string cuda_unavailable_reason();

// CUDA: all pointers are device addresses. segment_meta is int64 [3 * num_segments]: source
// addresses, then T'_s (time patches), then T_s (frames) per segment. cu_seqlens is int32
// [num_segments + 1]. vec_bytes (1, 2, 4, 8 or 16) is the copy unit; it must divide p * elem_size,
// stride_t * elem_size, every source address and every source row (T_s * elem_size). One launch
// on `stream` (a cudaStream_t passed as an integer) on device `device`; throws std::runtime_error.
void pack_patches_cuda(uint64_t out, uint64_t freq_idx, uint64_t time_idx, uint64_t segment_meta,
                       uint64_t cu_seqlens, int64_t num_segments, int64_t total_tokens, const PatchGeometry& geo,
                       int64_t vec_bytes, uint64_t stream, int device);

}  // namespace ek
