// The fused 2-D kernel's call from Python without ctypes: a small extension module (torch's
// tensor and pybind11 headers, none of libtorch's C++ API) that checks the tensors, allocates
// the output and calls the kernel of csrc/fused_warp2d.cpp through the entry points
// torchstn/sampling/_fused.py hands it once (set_kernels).
//
// Why: a batch-1 warp of a 28x28 image takes the kernel about 3 us; through ctypes, with
// the output allocated and the arguments checked in Python, torchstn.warp took 38.0 us,
// through this call 6.9 us (benchmarks/bench_call_overhead.py, docs/benchmarks.md).
//
// warp2d: the CPU implementation of the operator torchstn::warp2d (its arguments checked by
// the caller), the output in the input's memory format.
// fast_warp: the whole of torchstn.warp's common call (no gradient to record, a CPU image the
// kernel covers, Affine or Projective parameters), or None for any other call, which the
// Python path then checks, explains or runs. Every test here is one the Python path makes
// (_sample._eager_fused_warp); what _tracing.eager_tensors asks (compiling, tracing,
// torch.func, forward AD, torch function and dispatch modes, the tensors' Python types) is
// asked in Python before this call. The kernel's interface (its geometry array, its entry points' signature) is the
// one of kernel ABI kKernelAbi: set_kernels refuses another.

// The headers are the few it needs (12 s to build here; at::empty's and autocast's own
// headers would add 11 s, torch/extension.h 30 s).
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/utils/pybind.h>

#include <cstdint>
#include <optional>

namespace py = pybind11;

namespace {

template <typename T>
using Forward = int (*)(const int64_t*, const T*, const T*, double, T*);

Forward<float> forward_f32 = nullptr;
Forward<double> forward_f64 = nullptr;

constexpr int64_t kKernelAbi = 6;  // csrc/fused_warp2d.cpp's torchstn_warp2d_abi_version()
constexpr int64_t kAffine = 1, kProjective = 2;  // the kernel's location codes (_fused.LOCATIONS)
constexpr int64_t kReleaseGil = 1 << 14;  // output values from which the kernel runs without the GIL

// The output of warp2d: (B, C, oh, ow), channels_last where x is channels_last and not also
// contiguous (as _fused._new_output).
at::Tensor new_output(const at::Tensor& x, int64_t oh, int64_t ow) {
  const bool channels_last = !x.is_contiguous() && x.size(1) > 1 && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return at::detail::empty_cpu({x.size(0), x.size(1), oh, ow}, x.scalar_type(), false,
                               channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

// Runs the kernel on a contiguous loc; returns out.
at::Tensor run(const at::Tensor& x, const at::Tensor& loc, int64_t location, int64_t oh, int64_t ow, int64_t mode,
               int64_t padding, bool align_corners, double eps) {
  at::Tensor out = new_output(x, oh, ow);
  const int64_t g[19] = {location,    mode,        x.size(0),   x.size(1),   x.size(2),     x.size(3),     oh,
                         ow,          padding,     align_corners, at::get_num_threads(), x.stride(0), x.stride(1),
                         x.stride(2), x.stride(3), out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  const bool f32 = x.scalar_type() == at::kFloat;
  const Forward<float> k32 = forward_f32;  // (read with the GIL held: set_kernels writes them under it)
  const Forward<double> k64 = forward_f64;
  TORCH_CHECK(f32 ? k32 != nullptr : k64 != nullptr, "torchstn fast_call: the kernel is not set");
  int status;
  {
    // other Python threads run meanwhile, as they did during the ctypes call and do during
    // torch's own operators; not for small calls, where it would cost more than it frees
    std::optional<py::gil_scoped_release> unlocked;
    if (x.size(0) * x.size(1) * oh * ow >= kReleaseGil) unlocked.emplace();
    status = f32 ? k32(g, x.const_data_ptr<float>(), loc.const_data_ptr<float>(), eps, out.mutable_data_ptr<float>())
                 : k64(g, x.const_data_ptr<double>(), loc.const_data_ptr<double>(), eps,
                       out.mutable_data_ptr<double>());
  }
  TORCH_CHECK(status == 0, "fused warp kernel failed with status ", status);
  return out;
}

at::Tensor warp2d(const at::Tensor& x, const at::Tensor& loc, int64_t location, int64_t oh, int64_t ow, int64_t mode,
                  int64_t padding, bool align_corners, double eps) {
  return run(x, loc.contiguous(), location, oh, ow, mode, padding, align_corners, eps);
}

bool plain_cpu(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided &&
         !t.key_set().has(c10::DispatchKey::Python) && !t.is_neg() && !t.is_conj();
}

// The homographies (B, 3, 3) of Projective's parameters (B, 8), contiguous: H[2, 2] = 1
// (Projective._matrix's values).
template <typename T>
at::Tensor homographies(const at::Tensor& params) {
  const int64_t b = params.size(0);
  at::Tensor matrix = at::detail::empty_cpu({b, 3, 3}, params.scalar_type());
  const T* p = params.const_data_ptr<T>();
  T* m = matrix.mutable_data_ptr<T>();
  for (int64_t i = 0; i < b; ++i, p += 8, m += 9) {
    for (int j = 0; j < 8; ++j) m[j] = p[j];
    m[8] = T(1);
  }
  return matrix;
}

// A positive exact int, or -1.
int64_t positive_int(PyObject* value) {
  if (!PyLong_CheckExact(value)) return -1;
  const long long v = PyLong_AsLongLong(value);
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return -1;
  }
  return v > 0 ? v : -1;
}

// family: 0 Affine ((B, 6) parameters or (B, 2, 3) rows), 1 Projective ((B, 8) parameters).
// size: None (the input's) or a tuple of two positive ints. eps: Projective's guard of w.
py::object fast_warp(const at::Tensor& x, const at::Tensor& params, int64_t family, py::handle size, int64_t mode,
                     int64_t padding, py::handle align_corners, double eps) {
  if (!plain_cpu(x) || !plain_cpu(params) || x.dim() != 4 || params.scalar_type() != x.scalar_type() ||
      (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble))
    return py::none();
  if (c10::GradMode::is_enabled() && (x.requires_grad() || params.requires_grad())) return py::none();
  // autocast on the CPU: its key not excluded (at::autocast::is_autocast_enabled's own test)
  if (!c10::impl::tls_is_dispatch_key_excluded(c10::DispatchKey::AutocastCPU)) return py::none();
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  if (h <= 0 || w <= 0 || (h + 1) * x.stride(2) + (w + 1) * x.stride(3) >= (int64_t(1) << 31) || x.numel() == 0 ||
      params.dim() < 2 || params.size(0) != b)
    return py::none();
  int64_t oh = h, ow = w;
  if (!size.is_none()) {
    if (!PyTuple_CheckExact(size.ptr()) || PyTuple_GET_SIZE(size.ptr()) != 2) return py::none();
    oh = positive_int(PyTuple_GET_ITEM(size.ptr(), 0));
    ow = positive_int(PyTuple_GET_ITEM(size.ptr(), 1));
    if (oh < 0 || ow < 0) return py::none();
  }
  const int truth = PyObject_IsTrue(align_corners.ptr());
  if (truth < 0) {
    PyErr_Clear();
    return py::none();
  }
  if (family == 0) {
    const bool flat = params.dim() == 2 && params.size(1) == 6;
    const bool rows = params.dim() == 3 && params.size(1) == 2 && params.size(2) == 3;
    if (!flat && !rows) return py::none();
    return py::cast(run(x, params.contiguous(), kAffine, oh, ow, mode, padding, truth, 0.0));
  }
  if (family == 1 && params.dim() == 2 && params.size(1) == 8) {
    const at::Tensor matrix = x.scalar_type() == at::kFloat ? homographies<float>(params.contiguous())
                                                            : homographies<double>(params.contiguous());
    return py::cast(run(x, matrix, kProjective, oh, ow, mode, padding, truth, eps));
  }
  return py::none();
}

void set_kernels(uintptr_t f32, uintptr_t f64, int64_t abi) {
  TORCH_CHECK(abi == kKernelAbi, "torchstn fast_call: built for kernel ABI ", kKernelAbi, ", given ABI ", abi);
  forward_f32 = reinterpret_cast<Forward<float>>(f32);
  forward_f64 = reinterpret_cast<Forward<double>>(f64);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("abi_version", [] { return 1; });
  m.def("set_kernels", &set_kernels);
  m.def("warp2d", &warp2d);
  m.def("fast_warp", &fast_warp);
}
