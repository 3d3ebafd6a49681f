// Python bindings of elasticast_kernels._C. No torch headers: CPU data arrives through the buffer
// protocol (numpy arrays), GPU data as integer device addresses plus a CUDA stream handle, so one
// build of the module works with any torch version.
//
// Every function here is public API. Arguments are taken as Python objects and checked in
// py_args.h (TypeError / ValueError naming the argument). What the native code indexes with
// (lengths, cu_seqlens) is copied into memory the call owns before it is validated, so a thread
// writing the caller's array during the call can neither get past the checks nor make the code
// read or write out of bounds. C++ std::invalid_argument becomes ValueError (pybind11's standard
// translation).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "pack_patches.h"
#include "pack_plans.h"
#include "py_args.h"

namespace py = pybind11;
using ek::args::int_arg;
using ek::args::kInt32Max;
using ek::args::kInt64Max;

namespace {

using PlanFn = ek::Assignment (*)(const int64_t*, int64_t, int64_t);

// (order int64 [n], offsets int64 [num_packs + 1]) of a plan over a private copy of `lengths`.
template <class Plan>
py::tuple run_plan(py::handle lengths, const Plan& plan) {
  // n < 2^31 - 1 is check_lengths' limit too; refusing earlier bounds the copy.
  const py::buffer_info info = ek::args::int_vector<int64_t>(lengths, "lengths", kInt32Max - 1);
  const int64_t n = info.shape[0];
  // The private copy lives in the `order` output, which nobody else can see yet: no extra
  // allocation (a fresh 8 MB buffer per million lengths cost more in page faults than the copy).
  // finalize_plan reads the lengths only before it overwrites them with the order.
  py::array_t<int64_t> order(n);
  int64_t* owned = order.mutable_data();
  ek::args::copy_1d(info, owned);
  ek::Assignment a;
  {
    py::gil_scoped_release release;
    a = plan(owned, n);  // validates `owned` (check_lengths) before using it
  }
  py::array_t<int64_t> offsets(a.num_packs + 1);
  {
    py::gil_scoped_release release;
    ek::finalize_plan(a, owned, owned, offsets.mutable_data());
  }
  return py::make_tuple(order, offsets);
}

int64_t max_tokens_arg(py::handle obj) { return int_arg(obj, "max_tokens", 1, kInt32Max); }

// a * b, or invalid_argument naming `what` when it does not fit int64.
int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product))
    throw std::invalid_argument(std::string(what) + " overflows int64 (" + std::to_string(a) + " * " +
                                std::to_string(b) + ")");
  return product;
}

// A stride argument: None means the patch size (non-overlapping patches).
int64_t stride_arg(py::handle obj, const char* name, int64_t patch) {
  return obj.is_none() ? patch : int_arg(obj, name, 1, kInt32Max);
}

// An axis of `extent` elements cut into patches: at least one patch, and with stride == patch
// (non-overlapping) a whole number of them, so no element is silently left out.
void check_axis(int64_t extent, int64_t patch, int64_t stride, const std::string& what) {
  const bool tiled = stride == patch;
  if (extent < patch || (tiled && extent % patch != 0))
    throw std::invalid_argument(what + " = " + std::to_string(extent) + " must be " +
                                (tiled ? "a positive multiple of patch_size (" : ">= patch_size (") +
                                std::to_string(patch) + ")");
}

ek::PatchGeometry geometry(py::handle channels_obj, py::handle freq_obj, py::handle patch_obj, py::handle elem_obj,
                           py::handle freq_stride_obj, py::handle time_stride_obj) {
  // token counts and indices are int32
  const int64_t channels = int_arg(channels_obj, "channels", 1, kInt32Max);
  const int64_t freq = int_arg(freq_obj, "freq", 1, kInt32Max);
  const int64_t patch = int_arg(patch_obj, "patch_size", 1, kInt32Max);
  const int64_t elem_size = int_arg(elem_obj, "elem_size", 1, 16);
  const int64_t freq_stride = stride_arg(freq_stride_obj, "freq_stride", patch);
  const int64_t time_stride = stride_arg(time_stride_obj, "time_stride", patch);
  check_axis(freq, patch, freq_stride, "freq");
  // the row and token byte sizes every later size check multiplies by must fit int64
  checked_mul(checked_mul(channels, freq, "C * F"), elem_size, "C * F * elem_size");
  checked_mul(checked_mul(checked_mul(channels, patch, "C * p"), patch, "C * p * p"), elem_size, "token bytes");
  checked_mul(time_stride, elem_size, "time_stride * elem_size");
  return {channels, freq, patch, elem_size, freq_stride, time_stride, ek::patches_along(freq, patch, freq_stride)};
}

// Checked views of a CPU gather's buffers. `infos` keeps the caller's sources and outputs
// exported (so they cannot be resized or freed) until the gather is done; `cu_seqlens` is a
// private, validated copy.
struct CpuGather {
  ek::PatchGeometry geo;
  std::vector<py::buffer_info> infos;
  std::vector<ek::GatherSource> sources;
  std::vector<int32_t> cu_seqlens;
  uint8_t* out = nullptr;
  int32_t* freq_idx = nullptr;
  int32_t* time_idx = nullptr;
};

// A writable, C-contiguous output buffer of `itemsize`-byte items holding exactly `items` of them.
uint8_t* output(CpuGather& g, py::handle obj, const char* name, bool int32_items, int64_t items) {
  g.infos.push_back(ek::args::request(obj, name, true));
  const py::buffer_info& info = g.infos.back();
  if (int32_items) ek::args::require_signed_int(info, name, 4);
  else if (info.itemsize != 1)
    throw py::type_error(std::string(name) + " must be a byte buffer (uint8), got " + std::to_string(info.itemsize) +
                         "-byte items");
  ek::args::require_contiguous(info, name);
  if (info.readonly) throw py::value_error(std::string(name) + " must be writable");
  if (info.size != items)
    throw py::value_error(std::string(name) + " must hold " + std::to_string(items) + (int32_items ? " int32" : " byte") +
                          " items, got " + std::to_string(info.size));
  return static_cast<uint8_t*>(info.ptr);
}

// Checks every segment against its buffer and every output size before anything is written.
CpuGather prepare_cpu_gather(py::handle sources_obj, py::handle cu_seqlens, py::handle out, py::handle freq_idx,
                             py::handle time_idx, py::handle channels, py::handle freq, py::handle patch,
                             py::handle elem_size, py::handle freq_stride, py::handle time_stride) {
  CpuGather g;
  g.geo = geometry(channels, freq, patch, elem_size, freq_stride, time_stride);
  const int64_t p = g.geo.patch, elem = g.geo.elem_size;
  // A snapshot of the sequence: buffer exporters may run Python code that changes the caller's list.
  if (!PySequence_Check(sources_obj.ptr()) || PyUnicode_Check(sources_obj.ptr()) || PyBytes_Check(sources_obj.ptr()))
    throw py::type_error("sources must be a list of byte buffers, got " + ek::args::type_name(sources_obj));
  const py::tuple sources = py::reinterpret_steal<py::tuple>(PySequence_Tuple(sources_obj.ptr()));
  if (!sources) throw py::error_already_set();
  const int64_t num_segments = static_cast<int64_t>(sources.size());
  if (num_segments >= kInt32Max) throw py::value_error("sources: too many segments");
  g.cu_seqlens = ek::args::copy_int_vector<int32_t>(cu_seqlens, "cu_seqlens", num_segments + 1);
  if (static_cast<int64_t>(g.cu_seqlens.size()) != num_segments + 1)
    throw py::value_error("cu_seqlens must have len(sources) + 1 = " + std::to_string(num_segments + 1) +
                          " entries, got " + std::to_string(g.cu_seqlens.size()));
  if (g.cu_seqlens[0] != 0) throw py::value_error("cu_seqlens[0] must be 0, got " + std::to_string(g.cu_seqlens[0]));

  const int64_t row_elems = g.geo.channels * g.geo.freq;
  for (int64_t s = 0; s < num_segments; ++s) {
    const std::string name = "sources[" + std::to_string(s) + "]";
    g.infos.push_back(ek::args::request(sources[static_cast<size_t>(s)], name, false));
    const py::buffer_info& info = g.infos.back();
    if (info.itemsize != 1)
      throw py::type_error(name + " must be a byte buffer (uint8), got " + std::to_string(info.itemsize) +
                           "-byte items");
    ek::args::require_contiguous(info, name);
    const int64_t bytes = info.size;
    if (bytes % elem != 0 || (bytes / elem) % row_elems != 0)
      throw py::value_error(name + ": byte size " + std::to_string(bytes) + " is not C * F * T elements of " +
                            std::to_string(elem) + " bytes");
    const int64_t frames = bytes / elem / row_elems;
    if (frames > 0) check_axis(frames, p, g.geo.time_stride, name + ": T");  // 0 frames: an empty segment
    const int64_t time_patches = ek::patches_along(frames, p, g.geo.time_stride);
    const int64_t tokens = checked_mul(g.geo.freq_patches, time_patches, "tokens of a source");
    const int64_t have = static_cast<int64_t>(g.cu_seqlens[static_cast<size_t>(s + 1)]) - g.cu_seqlens[static_cast<size_t>(s)];
    if (have != tokens)
      throw py::value_error("cu_seqlens[" + std::to_string(s + 1) + "] - cu_seqlens[" + std::to_string(s) +
                            "] must be " + std::to_string(tokens) + " (the tokens of " + name + "), got " +
                            std::to_string(have));
    g.sources.push_back({static_cast<const uint8_t*>(info.ptr), frames, time_patches});
  }
  // cu_seqlens[0] == 0 and every step equals a token count >= 0: it rises from 0 to total_tokens.
  const int64_t total_tokens = g.cu_seqlens[static_cast<size_t>(num_segments)];
  const int64_t token_bytes = g.geo.channels * p * p * elem;
  g.out = output(g, out, "out", false, checked_mul(total_tokens, token_bytes, "total_tokens * token bytes"));
  g.freq_idx = reinterpret_cast<int32_t*>(output(g, freq_idx, "freq_idx", true, total_tokens));
  g.time_idx = reinterpret_cast<int32_t*>(output(g, time_idx, "time_idx", true, total_tokens));
  return g;
}

void pack_patches_cpu_py(py::handle sources, py::handle cu_seqlens, py::handle out, py::handle freq_idx,
                         py::handle time_idx, py::handle channels, py::handle freq, py::handle patch,
                         py::handle elem_size, py::handle num_threads_obj, py::handle freq_stride,
                         py::handle time_stride) {
  const int num_threads = static_cast<int>(int_arg(num_threads_obj, "num_threads", -kInt32Max, kInt32Max));
  const CpuGather g = prepare_cpu_gather(sources, cu_seqlens, out, freq_idx, time_idx, channels, freq, patch, elem_size,
                                         freq_stride, time_stride);
  py::gil_scoped_release release;
  ek::pack_patches_cpu(g.sources, g.cu_seqlens.data(), g.geo, g.out, g.freq_idx, g.time_idx, num_threads);
}

void emulate_cuda_gather_py(py::handle sources, py::handle cu_seqlens, py::handle out, py::handle freq_idx,
                            py::handle time_idx, py::handle channels, py::handle freq, py::handle patch,
                            py::handle elem_size, py::handle vec_bytes_obj, py::handle freq_stride,
                            py::handle time_stride) {
  const CpuGather g = prepare_cpu_gather(sources, cu_seqlens, out, freq_idx, time_idx, channels, freq, patch, elem_size,
                                         freq_stride, time_stride);
  const int64_t vec_bytes = int_arg(vec_bytes_obj, "vec_bytes", 1, 16);
  ek::check_copy_unit(vec_bytes, g.geo);
  for (size_t s = 0; s < g.sources.size(); ++s) {  // as on the device: every row start a whole number of units
    if ((g.sources[s].frames * g.geo.elem_size) % vec_bytes != 0)
      throw py::value_error("vec_bytes = " + std::to_string(vec_bytes) + " does not divide the row bytes of sources[" +
                            std::to_string(s) + "] (T * elem_size = " +
                            std::to_string(g.sources[s].frames * g.geo.elem_size) + ")");
  }
  py::gil_scoped_release release;
  ek::emulate_cuda_gather(g.sources, g.cu_seqlens.data(), g.geo, vec_bytes, g.out, g.freq_idx, g.time_idx);
}

// Device address `name`: non-null (unless nothing is read or written) and a multiple of `align`.
uint64_t device_address(py::handle obj, const char* name, uint64_t align, bool used) {
  const uint64_t address = ek::args::address_arg(obj, name);
  if (used && address == 0) throw py::value_error(std::string(name) + " is a null device address");
  if (address % align != 0)
    throw py::value_error(std::string(name) + " = " + std::to_string(address) + " is not aligned to " +
                          std::to_string(align) + " bytes");
  return address;
}

// Every host-side check of the CUDA gather, before any CUDA call (so it runs, and is tested,
// without a GPU). The device memory behind the addresses cannot be checked from here: it is the
// caller's (pack_spectrograms allocates it from the sizes checked here).
void pack_patches_cuda_py(py::handle out, py::handle freq_idx, py::handle time_idx, py::handle segment_meta,
                          py::handle cu_seqlens, py::handle num_segments_obj, py::handle total_tokens_obj,
                          py::handle channels, py::handle freq, py::handle patch, py::handle elem_size,
                          py::handle vec_bytes_obj, py::handle stream_obj, py::handle device_obj,
                          py::handle freq_stride, py::handle time_stride) {
  const ek::PatchGeometry geo = geometry(channels, freq, patch, elem_size, freq_stride, time_stride);
  const int64_t num_segments = int_arg(num_segments_obj, "num_segments", 1, kInt32Max - 1);
  const int64_t total_tokens = int_arg(total_tokens_obj, "total_tokens", 0, kInt32Max);
  const int64_t vec_bytes = int_arg(vec_bytes_obj, "vec_bytes", 1, 16);
  ek::check_copy_unit(vec_bytes, geo);
  checked_mul(total_tokens, geo.channels * geo.patch * geo.patch * geo.elem_size, "total_tokens * token bytes");
  const bool used = total_tokens > 0;
  const uint64_t out_address = device_address(out, "out", static_cast<uint64_t>(vec_bytes), used);
  const uint64_t freq_address = device_address(freq_idx, "freq_idx", 4, used);
  const uint64_t time_address = device_address(time_idx, "time_idx", 4, used);
  const uint64_t meta_address = device_address(segment_meta, "segment_meta", 8, used);
  const uint64_t cu_address = device_address(cu_seqlens, "cu_seqlens", 4, used);
  const uint64_t stream = ek::args::address_arg(stream_obj, "stream");
  const int device = static_cast<int>(int_arg(device_obj, "device", 0, kInt32Max));
  py::gil_scoped_release release;
  ek::pack_patches_cuda(out_address, freq_address, time_address, meta_address, cu_address, num_segments,
                        total_tokens, geo, vec_bytes, stream, device);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "elasticast-kernels native extension: bin-packing plans and patch gathers (CPU, CUDA)";

  const auto plan_doc =
      "(lengths: 1-D int64 buffer (any stride), each in [1, 2**31 - 1], max_tokens: int in [1, 2**31 - 1]) -> "
      "(order int64 [n], offsets int64 [num_packs + 1]).\nPack p holds samples order[offsets[p]:offsets[p+1]] "
      "(ascending index); a sample longer than max_tokens is alone in its pack. The lengths are copied before "
      "they are checked. TypeError for a wrong buffer or argument type, ValueError "
      "for a wrong value (naming the argument and index).";
  auto bind_plan = [&](const char* name, PlanFn fn) {
    m.def(
        name,
        [fn](py::handle lengths, py::handle max_tokens_obj) {
          const int64_t max_tokens = max_tokens_arg(max_tokens_obj);
          return run_plan(lengths, [&](const int64_t* d, int64_t n) { return fn(d, n, max_tokens); });
        },
        py::arg("lengths"), py::arg("max_tokens"), plan_doc);
  };
  bind_plan("next_fit", &ek::next_fit);
  bind_plan("first_fit_decreasing", &ek::first_fit_decreasing);
  bind_plan("best_fit_decreasing", &ek::best_fit_decreasing);
  bind_plan("histogram", &ek::histogram);
  m.def(
      "best_fit_window",
      [](py::handle lengths, py::handle max_tokens_obj, py::handle window_obj) {
        const int64_t max_tokens = max_tokens_arg(max_tokens_obj);
        const int64_t window = int_arg(window_obj, "window", 1, kInt64Max);
        return run_plan(lengths, [&](const int64_t* d, int64_t n) { return ek::best_fit_window(d, n, max_tokens, window); });
      },
      py::arg("lengths"), py::arg("max_tokens"), py::arg("window") = 256,
      "Like the other plans, plus window: int in [1, 2**63 - 1] (pending samples).");

  m.def("pack_patches_cpu", &pack_patches_cpu_py, py::arg("sources"), py::arg("cu_seqlens"), py::arg("out"),
        py::arg("freq_idx"), py::arg("time_idx"), py::arg("channels"), py::arg("freq"), py::arg("patch"),
        py::arg("elem_size"), py::arg("num_threads") = 0, py::arg("freq_stride") = py::none(),
        py::arg("time_stride") = py::none(),
        "Gather the p x p patches of contiguous [C, F, T_s] byte buffers (sources: a sequence), one every "
        "freq_stride x time_stride elements (None: p, non-overlapping; then F and T_s must be multiples of p), "
        "into out [total_tokens, C*p*p] (bytes, C-contiguous, writable) in Conv2d order, writing "
        "freq_idx/time_idx (int32 [total_tokens]). cu_seqlens: 1-D int32 [len(sources) + 1], copied before it "
        "is checked. Checks every size before anything is written; TypeError / ValueError naming the argument.");

  m.def("emulate_cuda_gather", &emulate_cuda_gather_py, py::arg("sources"), py::arg("cu_seqlens"), py::arg("out"),
        py::arg("freq_idx"), py::arg("time_idx"), py::arg("channels"), py::arg("freq"), py::arg("patch"),
        py::arg("elem_size"), py::arg("vec_bytes"), py::arg("freq_stride") = py::none(),
        py::arg("time_stride") = py::none(),
        "Run the CUDA kernel's per-thread address math serially on CPU buffers (same arguments as "
        "pack_patches_cpu plus the copy unit, which must also divide every source row), to test the kernel's "
        "indexing without a GPU.");

  m.def("pack_patches_cuda", &pack_patches_cuda_py, py::arg("out"), py::arg("freq_idx"), py::arg("time_idx"),
        py::arg("segment_meta"), py::arg("cu_seqlens"), py::arg("num_segments"), py::arg("total_tokens"),
        py::arg("channels"), py::arg("freq"), py::arg("patch"), py::arg("elem_size"), py::arg("vec_bytes"),
        py::arg("stream"), py::arg("device"), py::arg("freq_stride") = py::none(), py::arg("time_stride") = py::none(),
        "Device-address version of pack_patches_cpu: one kernel launch on `stream` (cudaStream_t as int). "
        "segment_meta: int64 [3 * num_segments] (source addresses, then time patches T'_s, then frames T_s). "
        "Every argument is checked on the host first (ValueError / TypeError, also without a GPU); the device "
        "memory behind the addresses is trusted to have the sizes they imply, and vec_bytes to divide every "
        "source address and row. RuntimeError without CUDA.");

  m.def("has_cuda", &ek::cuda_compiled, "True when the CUDA gather was compiled in (says nothing about a driver).");
  m.def("cuda_unavailable_reason", &ek::cuda_unavailable_reason,
        "'' when a CUDA device is usable by the extension, otherwise the reason.");
}
