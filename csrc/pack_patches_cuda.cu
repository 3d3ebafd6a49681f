// CUDA patch gather: one launch copies every patch of every segment into the packed output.
//
// Each thread moves one `Unit` (1..16 bytes) of one token; the token's segment comes from a binary
// search over cu_seqlens (a few cached loads), so no per-token metadata is built on the host. The
// host only copies the small segment table (source addresses, time patches, frames) and
// cu_seqlens to the device.
// The address math lives in pack_patches_index.h, shared with a host emulation that the tests run.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "pack_patches.h"
#include "pack_patches_index.h"

namespace ek {
namespace {

struct alignas(16) Vec16 { uint4 v; };
struct alignas(8) Vec8 { uint2 v; };

template <typename Unit>
__global__ void pack_patches_kernel(Unit* __restrict__ out, int32_t* __restrict__ freq_idx,
                                    int32_t* __restrict__ time_idx, const int64_t* __restrict__ segment_meta,
                                    const int32_t* __restrict__ cu_seqlens, GatherShape shape, int64_t total_units) {
  const int64_t* addresses = segment_meta;
  const int64_t* time_patches = segment_meta + shape.num_segments;
  const int64_t* frames = segment_meta + 2 * shape.num_segments;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total_units; idx += stride) {
    const UnitSource src = locate_unit(idx, shape, cu_seqlens, time_patches, frames);
    const uint8_t* base = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(addresses[src.segment]));
    out[idx] = *reinterpret_cast<const Unit*>(base + src.byte_offset);
    if (src.unit == 0) {
      freq_idx[src.token] = static_cast<int32_t>(src.freq_patch);
      time_idx[src.token] = static_cast<int32_t>(src.time_patch);
    }
  }
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state so later calls are not blamed
    throw std::runtime_error(std::string("elasticast_kernels._C: ") + what + ": " + cudaGetErrorString(err));
  }
}

template <typename Unit>
void launch(uint64_t out, uint64_t freq_idx, uint64_t time_idx, uint64_t segment_meta, uint64_t cu_seqlens,
            int64_t num_segments, int64_t total_tokens, const PatchGeometry& geo, cudaStream_t stream) {
  const GatherShape shape = make_gather_shape(num_segments, geo.channels, geo.freq, geo.patch, geo.elem_size,
                                              geo.freq_stride, geo.time_stride, static_cast<int64_t>(sizeof(Unit)));
  const int64_t total_units = total_tokens * shape.units_per_token;
  if (total_units == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total_units + threads - 1) / threads, int64_t{1} << 20);
  pack_patches_kernel<Unit><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      reinterpret_cast<Unit*>(out), reinterpret_cast<int32_t*>(freq_idx), reinterpret_cast<int32_t*>(time_idx),
      reinterpret_cast<const int64_t*>(segment_meta), reinterpret_cast<const int32_t*>(cu_seqlens), shape, total_units);
  check(cudaGetLastError(), "pack_patches_cuda launch");
}

// Restores the caller's current device when the launch is done (or throws).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
 private:
  int previous_ = 0;
};

}  // namespace

bool cuda_compiled() { return true; }

std::string cuda_unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("CUDA is not usable: ") + cudaGetErrorString(err);
  }
  if (count == 0) return "no CUDA device found";
  return "";
}

void pack_patches_cuda(uint64_t out, uint64_t freq_idx, uint64_t time_idx, uint64_t segment_meta,
                       uint64_t cu_seqlens, int64_t num_segments, int64_t total_tokens, const PatchGeometry& geo,
                       int64_t vec_bytes, uint64_t stream_handle, int device) {
  // The bindings check every argument first (py_args.h); these guard direct C++ callers.
  if (num_segments < 1 || total_tokens < 0) throw std::invalid_argument("pack_patches_cuda: empty segment table");
  check_copy_unit(vec_bytes, geo);
  if (out % static_cast<uint64_t>(vec_bytes) != 0)
    throw std::invalid_argument("pack_patches_cuda: the output address is not aligned to vec_bytes");
  const std::string why = cuda_unavailable_reason();
  if (!why.empty()) throw std::runtime_error("elasticast_kernels._C: " + why);
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(stream_handle));
  switch (vec_bytes) {
    case 16: launch<Vec16>(out, freq_idx, time_idx, segment_meta, cu_seqlens, num_segments, total_tokens, geo, stream); break;
    case 8: launch<Vec8>(out, freq_idx, time_idx, segment_meta, cu_seqlens, num_segments, total_tokens, geo, stream); break;
    case 4: launch<uint32_t>(out, freq_idx, time_idx, segment_meta, cu_seqlens, num_segments, total_tokens, geo, stream); break;
    case 2: launch<uint16_t>(out, freq_idx, time_idx, segment_meta, cu_seqlens, num_segments, total_tokens, geo, stream); break;
    default: launch<uint8_t>(out, freq_idx, time_idx, segment_meta, cu_seqlens, num_segments, total_tokens, geo, stream); break;
  }
}

}  // namespace ek
