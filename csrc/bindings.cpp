// Python bindings of elasticast_kernels._C. No torch headers: CPU data arrives through the buffer
// protocol (numpy arrays), GPU data as integer device addresses plus a CUDA stream handle, so one
// build of the module works with any torch version.
//
// C++ std::invalid_argument becomes ValueError in Python (pybind11's standard translation).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <functional>
#include <stdexcept>
#include <string>

#include "pack_patches.h"
#include "pack_plans.h"

namespace py = pybind11;

namespace {

using PlanFn = ek::Assignment (*)(const int64_t*, int64_t, int64_t);

// A 1-D, C-contiguous buffer of `itemsize`-byte items; `writable` for outputs. Never copies,
// so writes always land in the caller's memory.
py::buffer_info contiguous_buffer(const py::buffer& obj, const char* name, py::ssize_t itemsize, bool writable) {
  py::buffer_info info;
  try {
    info = obj.request(writable);
  } catch (py::error_already_set& err) {  // e.g. BufferError for a read-only array
    throw std::invalid_argument(std::string(name) + (writable ? " must be a writable buffer: " : ": ") + err.what());
  }
  if (info.itemsize != itemsize)
    throw std::invalid_argument(std::string(name) + ": expected items of " + std::to_string(itemsize) +
                                " bytes, got " + std::to_string(info.itemsize));
  py::ssize_t expected = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != expected)
      throw std::invalid_argument(std::string(name) + " must be C-contiguous");
    expected *= info.shape[d];
  }
  if (writable && info.readonly) throw std::invalid_argument(std::string(name) + " must be writable");
  return info;
}

// lengths: int64 buffer -> (order int64 [n], offsets int64 [num_packs + 1]).
py::tuple run_plan(const py::buffer& lengths, int64_t max_tokens,
                   const std::function<ek::Assignment(const int64_t*, int64_t)>& plan) {
  py::buffer_info info = contiguous_buffer(lengths, "lengths", sizeof(int64_t), false);
  if (info.ndim != 1) throw std::invalid_argument("lengths must be 1-D, got " + std::to_string(info.ndim) + " dimensions");
  if (info.format != py::format_descriptor<int64_t>::format() && info.format != "l" && info.format != "q")
    throw std::invalid_argument("lengths must be int64, got buffer format '" + info.format + "'");
  const auto* data = static_cast<const int64_t*>(info.ptr);
  const int64_t n = info.shape[0];
  ek::Assignment a;
  {
    py::gil_scoped_release release;
    a = plan(data, n);
  }
  py::array_t<int64_t> order(n), offsets(a.num_packs + 1);
  {
    py::gil_scoped_release release;
    ek::finalize_plan(a, data, max_tokens, order.mutable_data(), offsets.mutable_data());
  }
  return py::make_tuple(order, offsets);
}

// a * b, or invalid_argument naming `what` when it does not fit int64 (sizes come from Python ints).
int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product))
    throw std::invalid_argument(std::string(what) + " overflows int64 (" + std::to_string(a) + " * " +
                                std::to_string(b) + ")");
  return product;
}

ek::PatchGeometry geometry(int64_t channels, int64_t freq, int64_t patch, int64_t elem_size) {
  constexpr int64_t kMaxDim = (int64_t{1} << 31) - 1;  // token counts and indices are int32
  if (channels > kMaxDim || freq > kMaxDim || patch > kMaxDim || elem_size > 16)
    throw std::invalid_argument("channels, freq and patch_size must be < 2^31 and elem_size <= 16");
  if (channels < 1) throw std::invalid_argument("channels must be >= 1, got " + std::to_string(channels));
  if (patch < 1) throw std::invalid_argument("patch_size must be >= 1, got " + std::to_string(patch));
  if (freq < patch || freq % patch != 0)
    throw std::invalid_argument("freq (" + std::to_string(freq) + ") must be a positive multiple of patch_size (" +
                                std::to_string(patch) + ")");
  if (elem_size < 1) throw std::invalid_argument("elem_size must be >= 1, got " + std::to_string(elem_size));
  // the row and token byte sizes every later size check multiplies by must fit int64
  checked_mul(checked_mul(channels, freq, "C * F"), elem_size, "C * F * elem_size");
  checked_mul(checked_mul(checked_mul(channels, patch, "C * p"), patch, "C * p * p"), elem_size, "token bytes");
  return {channels, freq, patch, elem_size};
}

// Checked views of a CPU gather's buffers (the buffer_infos keep the memory alive).
struct CpuGather {
  ek::PatchGeometry geo;
  std::vector<py::buffer_info> infos;
  std::vector<const uint8_t*> sources;
  std::vector<int64_t> time_patches;
  const int32_t* cu_seqlens;
  uint8_t* out;
  int32_t* freq_idx;
  int32_t* time_idx;
};

// Checks every segment against its buffer and every output size before anything is written.
CpuGather prepare_cpu_gather(const py::list& sources, const py::buffer& cu_seqlens, const py::buffer& out,
                             const py::buffer& freq_idx, const py::buffer& time_idx, int64_t channels, int64_t freq,
                             int64_t patch, int64_t elem_size) {
  CpuGather g;
  g.geo = geometry(channels, freq, patch, elem_size);
  const size_t num_segments = sources.size();
  g.infos.push_back(contiguous_buffer(cu_seqlens, "cu_seqlens", sizeof(int32_t), false));
  if (g.infos.back().size != static_cast<py::ssize_t>(num_segments) + 1)
    throw std::invalid_argument("cu_seqlens must have len(sources) + 1 = " + std::to_string(num_segments + 1) +
                                " entries, got " + std::to_string(g.infos.back().size));
  g.cu_seqlens = static_cast<const int32_t*>(g.infos.back().ptr);
  if (g.cu_seqlens[0] != 0) throw std::invalid_argument("cu_seqlens[0] must be 0");

  const int64_t row_elems = channels * freq;
  for (size_t s = 0; s < num_segments; ++s) {
    const std::string name = "sources[" + std::to_string(s) + "]";
    g.infos.push_back(contiguous_buffer(sources[s].cast<py::buffer>(), name.c_str(), 1, false));
    const py::ssize_t bytes = g.infos.back().size;
    if (bytes % elem_size != 0 || (bytes / elem_size) % row_elems != 0)
      throw std::invalid_argument(name + ": byte size " + std::to_string(bytes) + " is not C * F * T elements of " +
                                  std::to_string(elem_size) + " bytes");
    const int64_t frames = bytes / elem_size / row_elems;
    if (frames % patch != 0)
      throw std::invalid_argument(name + ": T = " + std::to_string(frames) + " is not a multiple of patch_size");
    const int64_t tokens = (freq / patch) * (frames / patch);
    if (static_cast<int64_t>(g.cu_seqlens[s + 1]) - g.cu_seqlens[s] != tokens)
      throw std::invalid_argument("cu_seqlens[" + std::to_string(s + 1) + "] - cu_seqlens[" + std::to_string(s) +
                                  "] must be " + std::to_string(tokens) + " (the tokens of " + name + ")");
    g.sources.push_back(static_cast<const uint8_t*>(g.infos.back().ptr));
    g.time_patches.push_back(frames / patch);
  }
  const int64_t total_tokens = g.cu_seqlens[num_segments];
  const int64_t token_bytes = channels * patch * patch * elem_size;
  g.infos.push_back(contiguous_buffer(out, "out", 1, true));
  if (g.infos.back().size != checked_mul(total_tokens, token_bytes, "total_tokens * token bytes"))
    throw std::invalid_argument("out must hold total_tokens * C * p * p elements = " +
                                std::to_string(total_tokens * token_bytes) + " bytes, got " +
                                std::to_string(g.infos.back().size));
  g.out = static_cast<uint8_t*>(g.infos.back().ptr);
  g.infos.push_back(contiguous_buffer(freq_idx, "freq_idx", sizeof(int32_t), true));
  g.freq_idx = static_cast<int32_t*>(g.infos.back().ptr);
  const py::ssize_t freq_size = g.infos.back().size;
  g.infos.push_back(contiguous_buffer(time_idx, "time_idx", sizeof(int32_t), true));
  g.time_idx = static_cast<int32_t*>(g.infos.back().ptr);
  if (freq_size != total_tokens || g.infos.back().size != total_tokens)
    throw std::invalid_argument("freq_idx and time_idx must have total_tokens = " + std::to_string(total_tokens) +
                                " entries");
  return g;
}

void pack_patches_cpu_py(const py::list& sources, const py::buffer& cu_seqlens, const py::buffer& out,
                         const py::buffer& freq_idx, const py::buffer& time_idx, int64_t channels, int64_t freq,
                         int64_t patch, int64_t elem_size, int num_threads) {
  const CpuGather g = prepare_cpu_gather(sources, cu_seqlens, out, freq_idx, time_idx, channels, freq, patch, elem_size);
  py::gil_scoped_release release;
  ek::pack_patches_cpu(g.sources, g.time_patches, g.cu_seqlens, g.geo, g.out, g.freq_idx, g.time_idx, num_threads);
}

void emulate_cuda_gather_py(const py::list& sources, const py::buffer& cu_seqlens, const py::buffer& out,
                            const py::buffer& freq_idx, const py::buffer& time_idx, int64_t channels, int64_t freq,
                            int64_t patch, int64_t elem_size, int64_t vec_bytes) {
  const CpuGather g = prepare_cpu_gather(sources, cu_seqlens, out, freq_idx, time_idx, channels, freq, patch, elem_size);
  if (!(vec_bytes == 1 || vec_bytes == 2 || vec_bytes == 4 || vec_bytes == 8 || vec_bytes == 16) ||
      (patch * elem_size) % vec_bytes != 0)
    throw std::invalid_argument("vec_bytes must be 1, 2, 4, 8 or 16 and divide patch * elem_size");
  py::gil_scoped_release release;
  ek::emulate_cuda_gather(g.sources, g.time_patches, g.cu_seqlens, g.geo, vec_bytes, g.out, g.freq_idx, g.time_idx);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "elasticast-kernels native extension: bin-packing plans and patch gathers (CPU, CUDA)";

  const auto plan_doc =
      "(lengths: int64 1-D array, max_tokens: int) -> (order int64 [n], offsets int64 [num_packs + 1]).\n"
      "Pack p holds samples order[offsets[p]:offsets[p+1]] (ascending index). ValueError on bad input.";
  auto bind_plan = [&](const char* name, PlanFn fn) {
    m.def(
        name,
        [fn](const py::buffer& lengths, int64_t max_tokens) {
          return run_plan(lengths, max_tokens, [&](const int64_t* d, int64_t n) { return fn(d, n, max_tokens); });
        },
        py::arg("lengths"), py::arg("max_tokens"), plan_doc);
  };
  bind_plan("next_fit", &ek::next_fit);
  bind_plan("first_fit_decreasing", &ek::first_fit_decreasing);
  bind_plan("best_fit_decreasing", &ek::best_fit_decreasing);
  bind_plan("histogram", &ek::histogram);
  m.def(
      "best_fit_window",
      [](const py::buffer& lengths, int64_t max_tokens, int64_t window) {
        return run_plan(lengths, max_tokens,
                        [&](const int64_t* d, int64_t n) { return ek::best_fit_window(d, n, max_tokens, window); });
      },
      py::arg("lengths"), py::arg("max_tokens"), py::arg("window") = 256, plan_doc);

  m.def("pack_patches_cpu", &pack_patches_cpu_py, py::arg("sources"), py::arg("cu_seqlens"), py::arg("out"),
        py::arg("freq_idx"), py::arg("time_idx"), py::arg("channels"), py::arg("freq"), py::arg("patch"),
        py::arg("elem_size"), py::arg("num_threads") = 0,
        "Gather patches of contiguous [C, F, T_s] byte buffers (sources) into out [total_tokens, C*p*p] "
        "(bytes), writing freq_idx/time_idx (int32 [total_tokens]). Checks every size first.");

  m.def("emulate_cuda_gather", &emulate_cuda_gather_py, py::arg("sources"), py::arg("cu_seqlens"), py::arg("out"),
        py::arg("freq_idx"), py::arg("time_idx"), py::arg("channels"), py::arg("freq"), py::arg("patch"),
        py::arg("elem_size"), py::arg("vec_bytes"),
        "Run the CUDA kernel's per-thread address math serially on CPU buffers (same arguments as "
        "pack_patches_cpu plus the copy unit), to test the kernel's indexing without a GPU.");

  m.def(
      "pack_patches_cuda",
      [](uint64_t out, uint64_t freq_idx, uint64_t time_idx, uint64_t segment_meta, uint64_t cu_seqlens,
         int64_t num_segments, int64_t total_tokens, int64_t channels, int64_t freq, int64_t patch,
         int64_t elem_size, int64_t vec_bytes, uint64_t stream, int device) {
        const ek::PatchGeometry geo = geometry(channels, freq, patch, elem_size);
        py::gil_scoped_release release;
        ek::pack_patches_cuda(out, freq_idx, time_idx, segment_meta, cu_seqlens, num_segments, total_tokens, geo,
                              vec_bytes, stream, device);
      },
      py::arg("out"), py::arg("freq_idx"), py::arg("time_idx"), py::arg("segment_meta"), py::arg("cu_seqlens"),
      py::arg("num_segments"), py::arg("total_tokens"), py::arg("channels"), py::arg("freq"), py::arg("patch"),
      py::arg("elem_size"), py::arg("vec_bytes"), py::arg("stream"), py::arg("device"),
      "Device-address version of pack_patches_cpu: one kernel launch on `stream` (cudaStream_t as int). "
      "segment_meta: int64 [2 * num_segments] (source addresses, then T_s / p). RuntimeError without CUDA.");

  m.def("has_cuda", &ek::cuda_compiled, "True when the CUDA gather was compiled in (says nothing about a driver).");
  m.def("cuda_unavailable_reason", &ek::cuda_unavailable_reason,
        "'' when a CUDA device is usable by the extension, otherwise the reason.");
}
