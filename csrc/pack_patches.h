// Gather non-overlapping p x p patches of [C, F, T] spectrograms into one packed buffer.
//
// Segment s (a spectrogram with T_s frames) owns output tokens cu_seqlens[s] .. cu_seqlens[s+1]-1,
// (F/p) * (T_s/p) of them, frequency-major: token k has freq index k / (T_s/p) and time index
// k % (T_s/p). A token's vector has C*p*p elements flattened as (c, p1, p2):
//   out[tok, (c*p + p1)*p + p2] = spec_s[c, f*p + p1, t*p + p2].
// The copy is dtype-agnostic: only the element size in bytes matters.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ek {

struct PatchGeometry {
  int64_t channels;    // C
  int64_t freq;        // F (multiple of patch)
  int64_t patch;       // p
  int64_t elem_size;   // bytes per element
};

// The copy unit of the CUDA gather (and its host emulation): 1, 2, 4, 8 or 16 bytes, dividing a
// patch row (p * elem_size). Throws std::invalid_argument (ValueError in Python).
inline void check_copy_unit(int64_t vec_bytes, const PatchGeometry& geo) {
  const bool power = vec_bytes == 1 || vec_bytes == 2 || vec_bytes == 4 || vec_bytes == 8 || vec_bytes == 16;
  if (!power || (geo.patch * geo.elem_size) % vec_bytes != 0)
    throw std::invalid_argument("vec_bytes must be 1, 2, 4, 8 or 16 and divide patch * elem_size (" +
                                std::to_string(geo.patch * geo.elem_size) + "), got " + std::to_string(vec_bytes));
}

// CPU: sources[s] points at a contiguous [C, F, T_s] spectrogram, time_patches[s] = T_s / p.
// Multi-threaded over (segment, frequency row) pairs; num_threads <= 0 picks a default.
void pack_patches_cpu(const std::vector<const uint8_t*>& sources, const std::vector<int64_t>& time_patches,
                      const int32_t* cu_seqlens, const PatchGeometry& geo, uint8_t* out, int32_t* freq_idx,
                      int32_t* time_idx, int num_threads);

// Host emulation of the CUDA kernel: the same per-unit address math (pack_patches_index.h), run
// serially on CPU buffers, so tests check the kernel's indexing without a GPU.
void emulate_cuda_gather(const std::vector<const uint8_t*>& sources, const std::vector<int64_t>& time_patches,
                         const int32_t* cu_seqlens, const PatchGeometry& geo, int64_t vec_bytes, uint8_t* out,
                         int32_t* freq_idx, int32_t* time_idx);

// Whether the CUDA gather was compiled in.
bool cuda_compiled();
// "" when a CUDA device is usable, otherwise why not (no driver, no device, built without CUDA).
std::string cuda_unavailable_reason();

// CUDA: all pointers are device addresses. segment_meta is int64 [2 * num_segments]: source
// addresses, then T_s / p per segment. cu_seqlens is int32 [num_segments + 1]. vec_bytes (1, 2,
// 4, 8 or 16) is the copy unit; it must divide p * elem_size and every address. One launch on
// `stream` (a cudaStream_t passed as an integer) on device `device`; throws std::runtime_error.
void pack_patches_cuda(uint64_t out, uint64_t freq_idx, uint64_t time_idx, uint64_t segment_meta,
                       uint64_t cu_seqlens, int64_t num_segments, int64_t total_tokens, const PatchGeometry& geo,
                       int64_t vec_bytes, uint64_t stream, int device);

}  // namespace ek
