// Argument checks shared by the Python bindings (bindings.cpp).
//
// Every `_C` function is public API: callers may pass any object. Integers are read here from
// Python objects (not through pybind11's int64 casters, whose failure is an unreadable signature
// error), buffers are requested here, and small inputs the native code indexes with (lengths,
// cu_seqlens) are copied into memory the call owns *before* they are validated: another thread
// may write the caller's buffer at any time once the GIL is released, so a value checked in the
// caller's memory is not a value that can be trusted later.
//
// Errors: py::type_error (TypeError) for a wrong kind of object or buffer format, py::value_error
// (ValueError) for a wrong value or size; each message starts with the argument's name.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace ek::args {

namespace py = pybind11;

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

inline std::string type_name(py::handle obj) { return Py_TYPE(obj.ptr())->tp_name; }

// operator.index(obj) as a Python int (bool refused), or TypeError naming `name`.
inline py::object as_index(py::handle obj, const std::string& name) {
  if (PyBool_Check(obj.ptr())) throw py::type_error(name + " must be an int, got bool");
  PyObject* index = PyNumber_Index(obj.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    throw py::type_error(name + " must be an int, got " + type_name(obj));
  }
  return py::reinterpret_steal<py::object>(index);
}

// A Python int in [lo, hi] (any size on the Python side: too large is a ValueError, not a wrap).
inline int64_t int_arg(py::handle obj, const std::string& name, int64_t lo, int64_t hi) {
  const py::object index = as_index(obj, name);
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (value == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    overflow = 1;
  }
  if (overflow != 0 || value < lo || value > hi)
    throw py::value_error(name + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                          std::string(py::str(index)));
  return static_cast<int64_t>(value);
}

// A device address or handle: a Python int in [0, 2**64 - 1].
inline uint64_t address_arg(py::handle obj, const std::string& name) {
  const py::object index = as_index(obj, name);
  const unsigned long long value = PyLong_AsUnsignedLongLong(index.ptr());
  if (value == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error(name + " must be an address in [0, 2**64 - 1], got " + std::string(py::str(index)));
  }
  return static_cast<uint64_t>(value);
}

// The object's buffer (TypeError when it exports none). Holding the returned buffer_info keeps
// the exporter from resizing or freeing the memory (numpy refuses resize while a view exists).
inline py::buffer_info request(py::handle obj, const std::string& name, bool writable) {
  if (!PyObject_CheckBuffer(obj.ptr()))
    throw py::type_error(name + " must support the buffer protocol (e.g. a numpy array), got " + type_name(obj));
  try {
    return py::reinterpret_borrow<py::buffer>(obj).request(writable);
  } catch (py::error_already_set& err) {  // e.g. BufferError for a read-only array
    throw py::value_error(name + (writable ? " must be a writable buffer: " : ": ") + err.what());
  }
}

// True for a native-order signed integer format ('i', 'l', 'q', optionally '@'/'=', or '<' on a
// little-endian host) whose items are `bytes` wide.
inline bool is_signed_int(const py::buffer_info& info, py::ssize_t bytes) {
  std::string format = info.format;
  const uint16_t probe = 1;
  const bool little_endian = *reinterpret_cast<const uint8_t*>(&probe) == 1;
  if (!format.empty() && (format[0] == '@' || format[0] == '=' || (format[0] == '<' && little_endian)))
    format.erase(0, 1);
  return info.itemsize == bytes && format.size() == 1 && std::strchr("ilq", format[0]) != nullptr;
}

inline void require_signed_int(const py::buffer_info& info, const std::string& name, py::ssize_t bytes) {
  if (!is_signed_int(info, bytes))
    throw py::type_error(name + " must be int" + std::to_string(8 * bytes) + " (native byte order), got buffer format '" +
                         info.format + "' with " + std::to_string(info.itemsize) + "-byte items");
}

// C-contiguous (size-1 dimensions may have any stride): outputs and large inputs are used in place.
inline void require_contiguous(const py::buffer_info& info, const std::string& name) {
  py::ssize_t expected = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[static_cast<size_t>(d)] != 1 && info.strides[static_cast<size_t>(d)] != expected)
      throw py::value_error(name + " must be C-contiguous");
    expected *= info.shape[static_cast<size_t>(d)];
  }
}

// The buffer of a 1-D signed-integer input of at most `max_items` items of T.
template <class T>
py::buffer_info int_vector(py::handle obj, const std::string& name, int64_t max_items) {
  py::buffer_info info = request(obj, name, false);
  require_signed_int(info, name, sizeof(T));
  if (info.ndim != 1) throw py::value_error(name + " must be 1-D, got " + std::to_string(info.ndim) + " dimensions");
  if (info.shape[0] > max_items)
    throw py::value_error(name + ": too many items (" + std::to_string(info.shape[0]) + " > " +
                          std::to_string(max_items) + ")");
  return info;
}

// Copies the 1-D buffer `info` of T (any stride, negative and zero included) to `out`
// (info.shape[0] items).
template <class T>
void copy_1d(const py::buffer_info& info, T* out) {
  const int64_t n = info.shape[0];
  const auto* base = static_cast<const uint8_t*>(info.ptr);
  const py::ssize_t stride = info.strides[0];
  if (n > 0 && stride == static_cast<py::ssize_t>(sizeof(T))) {
    std::memcpy(out, base, static_cast<size_t>(n) * sizeof(T));
  } else {
    for (int64_t i = 0; i < n; ++i) std::memcpy(out + i, base + i * stride, sizeof(T));
  }
}

// A private copy of a 1-D signed-integer buffer `obj` of at most `max_items` items.
template <class T>
std::vector<T> copy_int_vector(py::handle obj, const std::string& name, int64_t max_items) {
  const py::buffer_info info = int_vector<T>(obj, name, max_items);
  std::vector<T> out(static_cast<size_t>(info.shape[0]));
  copy_1d(info, out.data());
  return out;
}

}  // namespace ek::args
