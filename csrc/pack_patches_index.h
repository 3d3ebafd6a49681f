// Address math of the CUDA patch gather, shared by the kernel and a host emulation of it
// (ek::emulate_cuda_gather), so the kernel's indexing is tested on machines without a GPU.
//
// The output is viewed as total_tokens * units_per_token copy units of `unit_bytes` each; unit
// `idx` of the flat output comes from one place in one segment's [C, F, T_s] spectrogram.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define EK_HOST_DEVICE __host__ __device__
#else
#define EK_HOST_DEVICE
#endif

namespace ek {

struct GatherShape {
  int64_t num_segments;
  int64_t channels, freq, patch, elem_size;
  int64_t freq_stride, time_stride;
  int64_t unit_bytes;       // copy unit: divides patch * elem_size and time_stride * elem_size
  int64_t units_per_run;    // patch * elem_size / unit_bytes (one p-element row of a patch)
  int64_t units_per_token;  // channels * patch * units_per_run
};

EK_HOST_DEVICE inline GatherShape make_gather_shape(int64_t num_segments, int64_t channels, int64_t freq,
                                                    int64_t patch, int64_t elem_size, int64_t freq_stride,
                                                    int64_t time_stride, int64_t unit_bytes) {
  GatherShape g{num_segments, channels, freq, patch, elem_size, freq_stride, time_stride, unit_bytes, 0, 0};
  g.units_per_run = patch * elem_size / unit_bytes;
  g.units_per_token = channels * patch * g.units_per_run;
  return g;
}

struct UnitSource {
  int64_t segment;      // which source spectrogram
  int64_t byte_offset;  // from the start of that spectrogram
  int64_t token;        // output token of this unit
  int64_t unit;         // unit index inside the token (0: the thread that also writes positions)
  int64_t freq_patch;   // f of the token
  int64_t time_patch;   // t of the token
};

// Last segment s with cu_seqlens[s] <= token (skips empty segments).
EK_HOST_DEVICE inline int64_t segment_of_token(const int32_t* cu_seqlens, int64_t num_segments, int64_t token) {
  int64_t lo = 0, hi = num_segments - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) >> 1;
    if (cu_seqlens[mid] <= token) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Where output unit `idx` comes from. time_patches[s] = T'_s, frames[s] = T_s.
EK_HOST_DEVICE inline UnitSource locate_unit(int64_t idx, const GatherShape& g, const int32_t* cu_seqlens,
                                             const int64_t* time_patches, const int64_t* frames) {
  UnitSource s;
  s.token = idx / g.units_per_token;
  s.unit = idx - s.token * g.units_per_token;
  s.segment = segment_of_token(cu_seqlens, g.num_segments, s.token);
  const int64_t nt = time_patches[s.segment];
  const int64_t k = s.token - cu_seqlens[s.segment];  // token inside its segment, frequency-major
  s.freq_patch = k / nt;
  s.time_patch = k - s.freq_patch * nt;
  const int64_t run = s.unit / g.units_per_run;  // = c * p + p1
  const int64_t in_run = s.unit - run * g.units_per_run;
  const int64_t c = run / g.patch, p1 = run - c * g.patch;
  const int64_t row = c * g.freq + s.freq_patch * g.freq_stride + p1;
  s.byte_offset = (row * frames[s.segment] + s.time_patch * g.time_stride) * g.elem_size + in_run * g.unit_bytes;
  return s;
}

}  // namespace ek
