// The fused 2-D kernel's call from Python without ctypes: a small extension module (torch's
// tensor, autograd-node and pybind11 headers, not torch/extension.h) that checks the tensors, allocates
// the output and calls the kernel of csrc/fused_warp2d.cpp through the entry points
// torchstn/sampling/_fused.py hands it once (set_kernels).
//
// Why: a batch-1 warp of a 28x28 image takes the kernel about 3 us; through ctypes, with
// the output allocated and the arguments checked in Python, torchstn.warp took 38.0 us,
// through this call 6.9 us (benchmarks/bench_call_overhead.py, docs/benchmarks.md).
//
// warp2d: the CPU implementation of the operator torchstn::warp2d (its arguments checked by
// the caller), the output in the input's memory format.
// fast_warp: the whole of torchstn.warp's common call (a CPU image the kernel covers, Affine
// parameters, or Projective ones with no gradient to record; an Affine1D signal; an Affine3D
// volume, by the 3-D kernel as fast_sample's volumes), or None for any other call, which the
// Python path then checks, explains or runs. It takes warp's own arguments and makes every
// test the Python path makes (_sample._eager_fused_warp), _tracing.eager_tensors' questions
// included (tracing, torch.func, forward AD, torch function and dispatch modes, the profiler, the tensors'
// Python types: the functions of _tracing.EAGER_QUESTIONS, handed once by set_python); only
// whether torch.compile traces is asked in Python first. Asked in Python, as until
// 2026-12-02, the same tests took 1.9 us of a 4.5 us call on a 4x4 image (timeit). The
// kernel's interface (its geometry array, its entry points' signature) is the one of kernel
// ABI kKernelAbi: set_kernels refuses another.
// fast_sample: the same for torchstn.sample's common call (a grid the kernel samples), which
// took 12-39 us where F.grid_sample takes 7-20 (batch 1 and 4, 28x28, one channel: timeit,
// 2026-12-02), nearly all of it the Python path's checks and choice of kernel; and of a volume's
// grid, which it samples with the 3-D kernel of csrc/fused_warp3d.cpp (handed over by
// _fused3d._hand_to_fast_call once both are loaded; until then the Python path samples volumes)
// through torchstn::Warp3dBackward, as torchstn::warp2d's calls go through Warp2dBackward: a
// batch-1 8x8x8 sample 0.51x -> 1.82x F.grid_sample forward, 0.47x -> 1.03x forward+backward (interleaved, one thread,
// 2026-12-05), where the ctypes call and the Python autograd formula had cost more than the kernel.
// A call that records a gradient (fast_warp's and fast_sample's, and warp2d_recorded for the
// Python path's) goes through torchstn::Warp2dBackward: torchstn::warp2d's autograd formula
// (_fused._backward) as a C++ autograd node, whose backward runs the kernel without Python.
// Against the Python autograd.Function it replaced, forward+backward of the bench's affine
// cases (python benchmarks/ab_autograd_node.py, interleaved, one thread, helpers running,
// 2026-12-04): 1.08x at 256x1x28x28, 1.06x at 256x1x60x60->30x30, 1.04x at 64x3x64x64, 1.08x
// at 32x3x224x224, 1.15-1.17x at batch 1 of 224x224 (NCHW and channels_last), 1.9-2.3x at
// batch 1 of 28x28 and batch 4 of 8x8 and 16x16 (0.056 -> 0.026 ms). The Python between the
// two kernels cost more than its instructions: after a kernel that streams a megabyte, the
// interpreter's code and data are out of cache (the same Python took 13 us after a batch-1
// kernel, 50 us after a 256x1x28x28 one).

// The headers are the few it needs (12 s to build here; at::empty's and autocast's own
// headers would add 11 s, torch/extension.h 30 s).
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/dot.h>
#include <ATen/ops/grid_sampler.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <array>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace py = pybind11;

namespace {

template <typename T>
using Forward = int (*)(const int64_t*, const T*, const T*, double, T*);

template <typename T>
using Backward = int (*)(const int64_t*, const T*, const T*, double, const T*, T*, T*);

Forward<float> forward_f32 = nullptr;
Forward<double> forward_f64 = nullptr;
Backward<float> backward_f32 = nullptr;
Backward<double> backward_f64 = nullptr;

// the 3-D kernel's (csrc/fused_warp3d.cpp): location, mode, x, grid or rows, xyz, out (grad_out, grad_x,
// grad_loc), B, C, D, H, W, Do, Ho, Wo, padding, align_corners, threads
template <typename T>
using Forward3d = int (*)(int, int, const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t,
                          int64_t, int64_t, int64_t, int, int, int);
template <typename T>
using Backward3d = int (*)(int, int, const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t,
                           int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int);

Forward3d<float> forward3d_f32 = nullptr;
Forward3d<double> forward3d_f64 = nullptr;
Backward3d<float> backward3d_f32 = nullptr;
Backward3d<double> backward3d_f64 = nullptr;

constexpr int64_t kKernelAbi = 6;  // csrc/fused_warp2d.cpp's torchstn_warp2d_abi_version()
constexpr int64_t kKernel3dAbi = 2;  // csrc/fused_warp3d.cpp's torchstn_warp3d_abi_version()
constexpr int64_t kGrid = 0, kAffine = 1, kProjective = 2;  // the kernel's location codes (_fused.LOCATIONS)
constexpr long kAtenBicubic = 2;  // torch.grid_sampler's code of bicubic (F.grid_sample's)
constexpr int64_t kReleaseGil = 1 << 14;  // output values from which the kernel runs without the GIL
// the kernel's status 3 (its own bound, also where a caller called the operator on any image)
constexpr const char* kTooLarge =
    "the image is too large for the fused kernel (a side longer than 2^30 or offsets past int32): "
    "backend='torch' samples it";

// The output of warp2d: (B, C, oh, ow), channels_last where x is channels_last and not also
// contiguous (as _fused._new_output).
at::Tensor new_output(const at::Tensor& x, int64_t oh, int64_t ow) {
  const bool channels_last = !x.is_contiguous() && x.size(1) > 1 && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return at::detail::empty_cpu({x.size(0), x.size(1), oh, ow}, x.scalar_type(), false,
                               channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

// The kernel's first argument (csrc/fused_warp2d.cpp): the options, the sizes, the threads and
// the strides of x and of buffer (the output, or the output's gradient)
struct Geometry {
  int64_t g[19];
};
Geometry geometry(const at::Tensor& x, const at::Tensor& buffer, int64_t location, int64_t mode, int64_t padding,
                  bool align_corners) {
  return Geometry{{location, mode, x.size(0), x.size(1), x.size(2), x.size(3), buffer.size(2), buffer.size(3), padding,
                   align_corners, at::get_num_threads(), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                   buffer.stride(0), buffer.stride(1), buffer.stride(2), buffer.stride(3)}};
}

// Runs the kernel on a contiguous loc; returns out.
at::Tensor run(const at::Tensor& x, const at::Tensor& loc, int64_t location, int64_t oh, int64_t ow, int64_t mode,
               int64_t padding, bool align_corners, double eps) {
  at::Tensor out = new_output(x, oh, ow);
  const Geometry geo = geometry(x, out, location, mode, padding, align_corners);
  const int64_t* g = geo.g;
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
  TORCH_CHECK_VALUE(status != 3, kTooLarge);
  TORCH_CHECK(status == 0, "fused warp kernel failed with status ", status);
  return out;
}

at::Tensor warp2d(const at::Tensor& x, const at::Tensor& loc, int64_t location, int64_t oh, int64_t ow, int64_t mode,
                  int64_t padding, bool align_corners, double eps) {
  return run(x, loc.contiguous(), location, oh, ow, mode, padding, align_corners, eps);
}

constexpr const char* kTooLarge3d =
    "the volume is too large for the fused kernel (a side longer than 2^30 or offsets past int32): "
    "backend='torch' samples it";

// Whether the 3-D kernel takes volume x (B, C, D, H, W): its run()'s bound (int32 voxel offsets,
// sides of at most 2^30), as _fused3d._within_kernel_bounds asks it
bool within_bounds3d(const at::Tensor& x) {
  const int64_t d = x.size(2), h = x.size(3), w = x.size(4);
  return std::max({d, h, w}) <= (int64_t(1) << 30) && d * h * w + h * w + w < (int64_t(1) << 31);
}

// The 3-D kernel's status: 0, or an error as _fused3d._call raises it
void check_status3d(int status) {
  TORCH_CHECK_VALUE(status != 3, kTooLarge3d);
  TORCH_CHECK(status == 0, "fused 3-D warp kernel failed with status ", status);
}

// The output voxels' normalised x (Wo values), then y (Ho), then z (Do), as _fused3d._coordinates takes
// them from torchstn's base grid (transforms._base._linspace: (2 i + 1 - n) / n, or / max(n - 1, 1) with
// align_corners, in double, rounded once): what the 3-D kernel reads to locate a voxel from affine rows
template <typename T>
std::vector<T> coordinates3d(int64_t od, int64_t oh, int64_t ow, bool align_corners) {
  std::vector<T> xyz;
  xyz.reserve(ow + oh + od);
  for (const int64_t n : {ow, oh, od}) {
    const double span = align_corners ? double(std::max<int64_t>(n - 1, 1)) : double(n);
    for (int64_t i = 0; i < n; ++i) xyz.push_back(static_cast<T>((2.0 * double(i) + 1.0 - double(n)) / span));
  }
  return xyz;
}

// Runs the 3-D kernel's forward (csrc/fused_warp3d.cpp reads x and loc contiguous, as
// _fused3d._warp3d_cpu hands them): loc a grid (B, Do, Ho, Wo, 3) (kGrid) or affine rows, (B, 3, 4)
// or Affine3D's (B, 12) (kAffine); returns out (B, C, Do, Ho, Wo)
template <typename T>
int forward3d(Forward3d<T> kernel, const at::Tensor& x, const at::Tensor& loc, int64_t location, at::Tensor& out,
              int64_t mode, int64_t padding, bool align_corners) {
  TORCH_CHECK(kernel != nullptr, "torchstn fast_call: the 3-D kernel is not set");
  const int64_t od = out.size(2), oh = out.size(3), ow = out.size(4);
  const std::vector<T> xyz = location == kAffine ? coordinates3d<T>(od, oh, ow, align_corners) : std::vector<T>();
  std::optional<py::gil_scoped_release> unlocked;  // (as run)
  if (out.numel() >= kReleaseGil) unlocked.emplace();
  return kernel(location, mode, x.const_data_ptr<T>(), loc.const_data_ptr<T>(), xyz.empty() ? nullptr : xyz.data(),
                out.mutable_data_ptr<T>(), x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), od, oh, ow, padding,
                align_corners, at::get_num_threads());
}

at::Tensor run3d(const at::Tensor& x_, const at::Tensor& loc_, int64_t location, int64_t od, int64_t oh, int64_t ow,
                 int64_t mode, int64_t padding, bool align_corners) {
  TORCH_CHECK_VALUE(within_bounds3d(x_), kTooLarge3d);  // (before a copy of a stride-0 volume)
  const at::Tensor x = x_.contiguous(), loc = loc_.contiguous();
  at::Tensor out = at::detail::empty_cpu({x.size(0), x.size(1), od, oh, ow}, x.scalar_type(), false, std::nullopt);
  check_status3d(x.scalar_type() == at::kFloat
                     ? forward3d(forward3d_f32, x, loc, location, out, mode, padding, align_corners)
                     : forward3d(forward3d_f64, x, loc, location, out, mode, padding, align_corners));
  return out;
}

bool plain_cpu(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided && !t.is_nested() &&
         !t.key_set().has(c10::DispatchKey::Python) && !t.is_neg() && !t.is_conj();
}

// _fused._node_backward: the gradients of a call the node's backward leaves to Python (set by
// set_backward_fallback)
PyObject* python_backward = nullptr;
// _fused3d._node_backward: the same for torchstn::Warp3dBackward (set by set_kernels3d)
PyObject* python_backward3d = nullptr;

// t with its negative bit applied (_fused.resolved)
at::Tensor resolved(const at::Tensor& t) { return t.is_neg() ? t.resolve_neg() : t; }

// Whether the node's backward runs the kernel on grad_out: a plain CPU tensor with memory of
// the output's dtype, outside any torch.func transform. Else (autograd's batched gradients,
// vmap, a tensor subclass) it is Python's (_tracing.batched_gradient), as under create_graph.
bool kernel_takes_gradient(const at::Tensor& grad_out, const at::Tensor& x) {
  const c10::DispatchKeySet wrapped{c10::DispatchKey::FuncTorchBatched, c10::DispatchKey::BatchedNestedTensor,
                                    c10::DispatchKey::Batched, c10::DispatchKey::FuncTorchGradWrapper};
  return grad_out.defined() && grad_out.has_storage() && grad_out.device().is_cpu() &&
         grad_out.layout() == at::kStrided && grad_out.scalar_type() == x.scalar_type() &&
         !grad_out.key_set().has(c10::DispatchKey::Python) && !grad_out.key_set().has_any(wrapped);
}

// Zeros of the saved x's and loc's shapes for the gradients asked for (an efficient zero output gradient)
void zero_gradients(const at::Tensor& x, const at::Tensor& loc, bool need_x, bool need_loc, at::Tensor& grad_x,
                    at::Tensor& grad_loc) {
  if (need_x) grad_x = at::detail::empty_cpu(x.sizes(), x.scalar_type(), false, std::nullopt).zero_();
  if (need_loc) grad_loc = at::detail::empty_cpu(loc.sizes(), loc.scalar_type(), false, std::nullopt).zero_();
}

// The gradients (x's, loc's; None for one not asked for) a Python fallback returned
void take_gradients(const py::object& result, at::Tensor& grad_x, at::Tensor& grad_loc) {
  const py::tuple both = result;
  if (!both[0].is_none()) grad_x = both[0].cast<at::Tensor>();
  if (!both[1].is_none()) grad_loc = both[1].cast<at::Tensor>();
}

// The 3-D kernel's backward (loc as forward3d's): into grad_x and grad_loc, each where defined (contiguous tensors)
template <typename T>
int backward3d(Backward3d<T> kernel, const at::Tensor& x, const at::Tensor& loc, int64_t location,
               const at::Tensor& grad_out, at::Tensor& grad_x, at::Tensor& grad_loc, int64_t mode, int64_t padding,
               bool align_corners) {
  TORCH_CHECK(kernel != nullptr, "torchstn fast_call: the 3-D kernel is not set");
  const int64_t od = grad_out.size(2), oh = grad_out.size(3), ow = grad_out.size(4);
  const std::vector<T> xyz = location == kAffine ? coordinates3d<T>(od, oh, ow, align_corners) : std::vector<T>();
  return kernel(location, mode, x.const_data_ptr<T>(), loc.const_data_ptr<T>(), xyz.empty() ? nullptr : xyz.data(),
                grad_out.const_data_ptr<T>(), grad_x.defined() ? grad_x.mutable_data_ptr<T>() : nullptr,
                grad_loc.defined() ? grad_loc.mutable_data_ptr<T>() : nullptr, x.size(0), x.size(1), x.size(2),
                x.size(3), x.size(4), od, oh, ow, padding, align_corners, at::get_num_threads());
}

// The options of a fused warp's call as the kernel's codes, its output's size ((Ho, Wo) or (Do, Ho, Wo))
struct Options {
  int64_t location = 0, mode = 0, padding = 0;
  bool align_corners = false;
  std::vector<int64_t> size;
  double eps = 0.0;
  int64_t family = 0;  // 4, 5, 6: loc holds a Translation's, Attention's or Similarity's parameters (family_rows)
};

// An output gradient as the kernel reads it: itself where dense (NCHW or channels_last), else an
// NCHW copy (_fused._dense); `.sum()`'s gradient (one value, every stride 0) written out by
// std::fill_n, where contiguous()'s copy took 1.7 of a batch-1 28x28 call's 40 us (timeit)
template <typename T>
at::Tensor dense(const at::Tensor& grad_out) {
  if (grad_out.is_contiguous() || grad_out.is_contiguous(at::MemoryFormat::ChannelsLast)) return grad_out;
  const at::IntArrayRef strides = grad_out.strides();
  if (grad_out.numel() == 0 || std::any_of(strides.begin(), strides.end(), [](int64_t s) { return s != 0; }))
    return grad_out.contiguous();
  at::Tensor out = at::detail::empty_cpu(grad_out.sizes(), grad_out.scalar_type(), false, std::nullopt);
  std::fill_n(out.mutable_data_ptr<T>(), out.numel(), *grad_out.const_data_ptr<T>());
  return out;
}

// The kernel's gradients of a 2-D warp (x, loc and grad_out resolved; each gradient where asked)
void kernel_gradients2d(const at::Tensor& x_, const at::Tensor& loc_, const at::Tensor& grad_out_, const Options& o,
                        bool need_x, bool need_loc, at::Tensor& grad_x, at::Tensor& grad_loc) {
  const at::Tensor grad_out = x_.scalar_type() == at::kFloat ? dense<float>(grad_out_) : dense<double>(grad_out_);
  // grad_x has the strides of x, which a dense x keeps (_fused._gradient_buffer)
  const at::Tensor x = need_x && !x_.is_non_overlapping_and_dense() ? x_.contiguous() : x_;
  const at::Tensor loc = loc_.contiguous();
  if (need_x) grad_x = at::detail::empty_strided_cpu(x.sizes(), x.strides(), x.scalar_type());
  if (need_loc) grad_loc = at::detail::empty_cpu(loc.sizes(), loc.scalar_type(), false, std::nullopt);
  const Geometry geo = geometry(x, grad_out, o.location, o.mode, o.padding, o.align_corners);
  int status;
  if (x.scalar_type() == at::kFloat) {
    TORCH_CHECK(backward_f32 != nullptr, "torchstn fast_call: the kernel is not set");
    status = backward_f32(geo.g, x.const_data_ptr<float>(), loc.const_data_ptr<float>(), o.eps,
                          grad_out.const_data_ptr<float>(), need_x ? grad_x.mutable_data_ptr<float>() : nullptr,
                          need_loc ? grad_loc.mutable_data_ptr<float>() : nullptr);
  } else {
    TORCH_CHECK(backward_f64 != nullptr, "torchstn fast_call: the kernel is not set");
    status = backward_f64(geo.g, x.const_data_ptr<double>(), loc.const_data_ptr<double>(), o.eps,
                          grad_out.const_data_ptr<double>(), need_x ? grad_x.mutable_data_ptr<double>() : nullptr,
                          need_loc ? grad_loc.mutable_data_ptr<double>() : nullptr);
  }
  TORCH_CHECK_VALUE(status != 3, kTooLarge);
  TORCH_CHECK(status == 0, "fused warp kernel failed with status ", status);
}

// The same for a volume
void kernel_gradients3d(const at::Tensor& x_, const at::Tensor& loc_, const at::Tensor& grad_out_, const Options& o,
                        bool need_x, bool need_loc, at::Tensor& grad_x, at::Tensor& grad_loc) {
  const at::Tensor x = x_.contiguous(), loc = loc_.contiguous(), grad_out = grad_out_.contiguous();
  // (zeroed by the kernel, as _fused3d._warp3d_backward_cpu's)
  if (need_x) grad_x = at::detail::empty_cpu(x.sizes(), x.scalar_type(), false, std::nullopt);
  if (need_loc) grad_loc = at::detail::empty_cpu(loc.sizes(), loc.scalar_type(), false, std::nullopt);
  const int64_t l = o.location, m = o.mode, p = o.padding;
  const bool ac = o.align_corners;
  check_status3d(x.scalar_type() == at::kFloat
                     ? backward3d(backward3d_f32, x, loc, l, grad_out, grad_x, grad_loc, m, p, ac)
                     : backward3d(backward3d_f64, x, loc, l, grad_out, grad_x, grad_loc, m, p, ac));
}

// A Translation's (B, 2), Attention's (B, 3) or Similarity's (B, 4) parameters (family 4, 5 or 6
// of _fused._COMPILED_FAMILIES, `params`) as the warp's node reads them: the parameters themselves,
// a contiguous copy, and for Similarity the cosine and sine of its angle, made by at::cos and
// at::sin from the same view of the angle as its _rows in transforms/_matrix.py (whose bits can
// depend on the layout: ATen's vectorised cosine is not std::cos)
struct FamilyParams {
  int64_t family;
  at::Tensor p, cos_a, sin_a;

  FamilyParams(int64_t family_, const at::Tensor& params) : family(family_), p(params.contiguous()) {
    if (family == 6) {
      const at::Tensor angle = params.select(1, 1);
      cos_a = at::cos(angle).contiguous();
      sin_a = at::sin(angle).contiguous();
    }
  }
};

// The affine rows (B, 2, 3) of a family's parameters: the values of its _rows (the same products,
// s * 1 and s * 0 included, so the same bits: tests/sampling/test_fast_call.py), in one loop
// instead of its operations (the node then takes the parameters' gradient itself:
// family_rows_gradient)
template <typename T>
at::Tensor family_rows(const FamilyParams& f) {
  const int64_t b = f.p.size(0), np = f.family - 2;
  at::Tensor rows = at::detail::empty_cpu({b, 2, 3}, f.p.scalar_type(), false, std::nullopt);
  const T* p = f.p.const_data_ptr<T>();
  T* r = rows.mutable_data_ptr<T>();
  const T* cp = f.family == 6 ? f.cos_a.const_data_ptr<T>() : nullptr;
  const T* sp = f.family == 6 ? f.sin_a.const_data_ptr<T>() : nullptr;
  for (int64_t i = 0; i < b; ++i, p += np, r += 6) {
    if (f.family == 4) {  // Translation: [I | t]
      r[0] = T(1), r[1] = T(0), r[3] = T(0), r[4] = T(1);
    } else if (f.family == 5) {  // Attention: [s I | t]
      r[0] = p[0] * T(1), r[1] = p[0] * T(0), r[3] = p[0] * T(0), r[4] = p[0] * T(1);
    } else {  // Similarity: s (cos a, -sin a; sin a, cos a) | t
      const T c = p[0] * cp[i], n = p[0] * sp[i];
      r[0] = c, r[1] = -n, r[3] = n, r[4] = c;
    }
    r[2] = p[np - 2], r[5] = p[np - 1];
  }
  return rows;
}

at::Tensor family_rows(const FamilyParams& f) {
  return f.p.scalar_type() == at::kFloat ? family_rows<float>(f) : family_rows<double>(f);
}

// The gradient of a family's parameters for its rows' gradient g (B, 2, 3): what autograd computes
// through _rows' operations, in closed form (the same products, and sums of two terms, which no
// order changes: the same bits as the Python path's; Attention's scale sums its four terms
// g00 * 1 + g01 * 0 + g10 * 0 + g11 * 1, whose order changes at most a zero's sign). The rows
// made as operations that autograd recorded (seven nodes) cost the translation, attention and
// similarity warps 1.07x, 1.15x and 1.15x the time of the same rows given to Affine; these
// loops: 0.99x, 1.01x and 1.02x (forward+backward at 256x1x28x28, 11 interleaved rounds, one
// thread, Intel Xeon, 2026-12-06; the same operations outside autograd, the rows made again for
// the backward: 1.03x, 1.11x and 1.07x).
template <typename T>
at::Tensor family_rows_gradient(const FamilyParams& f, const at::Tensor& grad_rows) {
  const int64_t b = f.p.size(0), np = f.family - 2;
  const at::Tensor g = grad_rows.contiguous();
  at::Tensor out = at::detail::empty_cpu({b, np}, f.p.scalar_type(), false, std::nullopt);
  const T* r = g.const_data_ptr<T>();
  const T* p = f.p.const_data_ptr<T>();
  T* o = out.mutable_data_ptr<T>();
  const T* cp = f.family == 6 ? f.cos_a.const_data_ptr<T>() : nullptr;
  const T* sp = f.family == 6 ? f.sin_a.const_data_ptr<T>() : nullptr;
  for (int64_t i = 0; i < b; ++i, p += np, r += 6, o += np) {
    if (f.family == 5) {
      o[0] = ((r[0] * T(1) + r[1] * T(0)) + r[3] * T(0)) + r[4] * T(1);
    } else if (f.family == 6) {  // c's two uses, n's (one negated), then s's and the angle's two terms
      const T gc = r[0] + r[4], gn = r[3] + -r[1];
      o[0] = gc * cp[i] + gn * sp[i];
      o[1] = gc * p[0] * -sp[i] + gn * p[0] * cp[i];
    }
    o[np - 2] = r[2], o[np - 1] = r[5];
  }
  return out;
}

// The gradients of x and loc (each where asked) of a warp with options o, of 2 or 3 dimensions:
// the kernel's, or (create_graph, a gradient the kernel cannot read) those of the Python
// fallback's differentiable expression (_fused._node_backward, _fused3d._node_backward), as
// the operators' Python formula (_fused.fused_backward) takes them.
template <int Dims>
torch::autograd::variable_list gradients(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& grad_out,
                                         const Options& o, bool need_x, bool need_loc) {
  at::Tensor grad_x, grad_loc;
  if (!grad_out.defined()) return {grad_x, grad_loc};  // no gradient: none, as torch's own nodes give
  if (grad_out._is_zerotensor()) {  // an efficient zero (no memory to read): zeros, as F.grid_sample gives
    zero_gradients(x, loc, need_x, need_loc, grad_x, grad_loc);
  } else if (c10::GradMode::is_enabled() || !kernel_takes_gradient(grad_out, x) || !x.device().is_cpu() ||
             !loc.device().is_cpu()) {  // (a saved-tensor hook may hand x or loc back elsewhere)
    py::gil_scoped_acquire gil;
    const py::object fallback = py::reinterpret_borrow<py::object>(Dims == 2 ? python_backward : python_backward3d);
    const py::tuple size = py::cast(o.size);
    take_gradients(o.family ? fallback(x, loc, grad_out, o.location, size, o.mode, o.padding, o.align_corners, o.eps,
                                       need_x, need_loc, o.family)
                            : fallback(x, loc, grad_out, o.location, size, o.mode, o.padding, o.align_corners, o.eps,
                                       need_x, need_loc),
                   grad_x, grad_loc);
  } else if (o.family && (need_x || need_loc)) {  // (loc: the family's parameters)
    const FamilyParams f(o.family, resolved(loc));
    kernel_gradients2d(resolved(x), family_rows(f), resolved(grad_out), o, need_x, need_loc, grad_x, grad_loc);
    if (need_loc) {
      grad_loc = f.p.scalar_type() == at::kFloat ? family_rows_gradient<float>(f, grad_loc)
                                                 : family_rows_gradient<double>(f, grad_loc);
    }
  } else if (need_x || need_loc) {
    (Dims == 2 ? kernel_gradients2d : kernel_gradients3d)(resolved(x), resolved(loc), resolved(grad_out), o, need_x,
                                                          need_loc, grad_x, grad_loc);
  }
  return {grad_x, grad_loc};
}

}  // namespace

// (in a named namespace, as the names the nodes give themselves)
namespace torchstn {

// The autograd node of a fused warp of x at loc (Dims 2: torchstn::Warp2dBackward, the formula
// of torchstn::warp2d, _fused._backward; 3: torchstn::Warp3dBackward, torchstn::warp3d's):
// its backward gives the gradients above. x and loc are saved as _fused._setup_context saves
// them (as given: with their graph, for create_graph) and made what the kernel reads when it
// reads them (a saved-tensor hook may hand them back with other strides or a negative bit; a
// first version read them as saved and gave gradients 24-79 off where one did).
//
// A plain torch::autograd::Node, as torch's generated nodes are, and not a
// torch::autograd::Function: the Function's node (CppNode: its context's map of IValues, the
// inputs' and outputs' records and checks) cost about 10 us of a batch-1 28x28 call, whose
// kernels take 6-7. A given grid's gradient alone against F.grid_sample (python
// benchmarks/bench_small_calls.py grid-grad, one thread, three alternations of the builds,
// trainings paused, 2026-12-06): 0.76-0.78x before, 0.97-1.00x with this node, 1.05-1.08x with
// `dense`'s fill as well; forward+backward of a warp (timeit, the same way) 55-56 -> 45-46 us
// at 1x1x28x28, 63-65 -> 54-55 us at 4x3x16x16.
template <int Dims>
struct WarpBackward final : public torch::autograd::Node {
  torch::autograd::SavedVariable x_, loc_;
  Options options_;

  std::string name() const override { return Dims == 2 ? "torchstn::Warp2dBackward" : "torchstn::Warp3dBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x_.reset_data();
    loc_.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return gradients<Dims>(x_.unpack(), loc_.unpack(), grads[0], options_, task_should_compute_output(0),
                           task_should_compute_output(1));
  }

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
  // Compiled autograd: the node is one opaque call in its graph (as a torch::autograd::Function's
  // node is, not traced: the kernel reads memory), of `functional` with the saved tensors and
  // the options. (The interface of torch 2.13; built against older headers, the node has none of
  // it, and compiled autograd refuses it with an error, where the Function's node ran since 2.7.)
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override {
    args.collect(x_, false), args.collect(loc_, false);
    args.collect(options_.location), args.collect(options_.mode), args.collect(options_.padding);
    args.collect(options_.align_corners), args.collect(options_.size), args.collect(options_.eps);
    args.collect(options_.family);
  }

  torch::autograd::variable_list apply_with_saved(const torch::autograd::variable_list& grads,
                                                  torch::dynamo::autograd::SwapSavedVariables& saved) override {
    namespace ca = torch::dynamo::autograd;
    saved.before(x_), saved.before(loc_);
    const Options& o = options_;
    const std::vector<c10::IValue> args{x_.unpack(), loc_.unpack(), o.location, o.mode, o.padding, o.align_corners,
                                        o.size, o.eps, task_should_compute_output(0), task_should_compute_output(1),
                                        o.family};
    std::vector<at::TypePtr> schema;
    for (const c10::IValue& arg : args) schema.push_back(arg.isTensor() ? at::TensorType::get() : arg.type());
    const auto& compiler = ca::getPyCompilerInterface();
    // (bound per trace under a numbered name, as a Function's node is: a name binds once)
    const std::string fn = compiler->bind_function(saved.get_py_compiler(), name(), functional, schema,
                                                   /*is_custom_function=*/true, /*is_traceable=*/false);
    const auto metadata = ca::IValuePacker<std::vector<std::optional<torch::autograd::InputMetadata>>>::pack(
        ca::get_input_metadata(next_edges()));
    torch::autograd::variable_list out =
        compiler->call_function(saved.get_py_compiler(), "apply_functional", fn, grads, args, metadata);
    saved.after(x_), saved.after(loc_);
    return out;
  }

  static torch::autograd::variable_list functional(const torch::autograd::variable_list& grads,
                                                   const std::vector<c10::IValue>& args) {
    const Options o{args[2].toInt(),         args[3].toInt(),    args[4].toInt(),  args[5].toBool(),
                    args[6].toIntVector(),   args[7].toDouble(), args[10].toInt()};
    return gradients<Dims>(args[0].toTensor(), args[1].toTensor(), grads[0], o, args[8].toBool(), args[9].toBool());
  }
#endif
};

}  // namespace torchstn

namespace {

// A new node of type N (torch 2.13 holds nodes by c10::intrusive_ptr, earlier ones by std::shared_ptr)
template <typename N>
auto make_node() {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, N>) {
    return c10::make_intrusive<N>();
  } else {
    return std::make_shared<N>();
  }
}

// out = the kernel's output at x and loc, recorded by a node of type N with the call's options
template <typename N>
at::Tensor recorded(const at::Tensor& out, const at::Tensor& x, const at::Tensor& loc, Options options) {
  auto node = make_node<N>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, loc));
  // an inference tensor (θ of a localisation net run under inference_mode) cannot be saved
  node->x_ = torch::autograd::SavedVariable(x.is_inference() ? x.clone() : x, false);
  node->loc_ = torch::autograd::SavedVariable(loc.is_inference() ? loc.clone() : loc, false);
  node->options_ = std::move(options);
  torch::autograd::set_history(out, node);
  return out;
}

// A Translation's, Attention's or Similarity's warp of x (family 4, 5 or 6): its rows made by
// family_rows without a record, and where a gradient is recorded, one node from the output to x
// and the parameters (whose backward makes the rows again and takes their gradient to the
// parameters: family_rows_gradient)
at::Tensor warp2d_family(const at::Tensor& x, const at::Tensor& params, int64_t family, int64_t oh, int64_t ow,
                         int64_t mode, int64_t padding, bool align_corners) {
  at::Tensor out;
  {
    const c10::AutoGradMode off(false);
    out = run(resolved(x), family_rows(FamilyParams(family, resolved(params))), kAffine, oh, ow, mode, padding,
              align_corners, 0.0);
  }
  if (!c10::GradMode::is_enabled() || !(x.requires_grad() || params.requires_grad())) return out;
  TORCH_CHECK(python_backward != nullptr, "torchstn fast_call: the backward fallback is not set");
  return recorded<torchstn::WarpBackward<2>>(out, x, params,
                                             {kAffine, mode, padding, align_corners, {oh, ow}, 0.0, family});
}

// fast_sample's and fast_warp's call of a volume: through the node where a gradient is recorded
at::Tensor warp3d_any(const at::Tensor& x, const at::Tensor& loc, int64_t location, int64_t od, int64_t oh,
                      int64_t ow, int64_t mode, int64_t padding, bool align_corners) {
  if (!c10::GradMode::is_enabled() || !(x.requires_grad() || loc.requires_grad()))
    return run3d(resolved(x), resolved(loc), location, od, oh, ow, mode, padding, align_corners);
  TORCH_CHECK(python_backward3d != nullptr, "torchstn fast_call: the 3-D backward fallback is not set");
  at::Tensor out;
  {
    const c10::AutoGradMode off(false);
    out = run3d(resolved(x), resolved(loc), location, od, oh, ow, mode, padding, align_corners);
  }
  return recorded<torchstn::WarpBackward<3>>(out, x, loc, {location, mode, padding, align_corners, {od, oh, ow}, 0.0});
}

// fast_warp's and fast_sample's call, and the Python path's where it records a gradient: through
// the node where a gradient is recorded, else the plain call's output
at::Tensor warp2d_recorded(const at::Tensor& x, const at::Tensor& loc, int64_t location, int64_t oh, int64_t ow,
                           int64_t mode, int64_t padding, bool align_corners, double eps) {
  if (!c10::GradMode::is_enabled() || !(x.requires_grad() || loc.requires_grad()))
    return warp2d(x, loc, location, oh, ow, mode, padding, align_corners, eps);
  TORCH_CHECK(python_backward != nullptr, "torchstn fast_call: the backward fallback is not set");
  at::Tensor out;
  {
    const c10::AutoGradMode off(false);
    out = run(resolved(x), resolved(loc).contiguous(), location, oh, ow, mode, padding, align_corners, eps);
  }
  return recorded<torchstn::WarpBackward<2>>(out, x, loc, {location, mode, padding, align_corners, {oh, ow}, eps});
}

// The homographies (B, 3, 3) of Projective's parameters (B, 8), contiguous: H[2, 2] = 1, and
// NaN throughout where an entry is not finite (Projective._matrix's values: each entry plus the
// sum of p - p, 0 or NaN).
template <typename T>
at::Tensor homographies(const at::Tensor& params) {
  const int64_t b = params.size(0);
  at::Tensor matrix = at::detail::empty_cpu({b, 3, 3}, params.scalar_type());
  const T* p = params.const_data_ptr<T>();
  T* m = matrix.mutable_data_ptr<T>();
  for (int64_t i = 0; i < b; ++i, p += 8, m += 9) {
    T poison = T(0);
    for (int j = 0; j < 8; ++j) poison += p[j] - p[j];
    for (int j = 0; j < 8; ++j) m[j] = p[j] + poison;
    m[8] = T(1) + poison;
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

// What fast_warp and fast_sample read of Python, handed once by set_python (_fused.fast_call), all
// held for the process: the questions of _tracing.eager_tensors (the plain tensor types, then
// no-argument functions, asked in its order) and what torchstn.warp's arguments are looked up
// in (the families by exact type, the transforms by name, the mode and padding codes).
struct Python {
  PyObject* plain[2] = {nullptr, nullptr};
  PyObject *tracing, *function_mode, *recording_function_mode, *dispatch_modes, *functorch, *forward_ad, *profiler;
  PyObject *families, *named, *name_lookup, *modes, *paddings, *backends, *auto_grid_modes;
  PyObject *level, *eps;  // interned strings
} py_state;
bool python_set = false;

// f() is true: 1, 0, or -1 with a Python error set
int asks(PyObject* f) {
  PyObject* answer = PyObject_CallNoArgs(f);
  if (answer == nullptr) return -1;
  const int truth = PyObject_IsTrue(answer);
  Py_DECREF(answer);
  return truth;
}

// _tracing.eager_tensors(x, params) but for compiling, which the Python caller asks first: 1,
// 0, or -1 with a Python error set
int eager(PyObject* x, PyObject* params) {
  const Python& p = py_state;
  for (PyObject* t : {x, params}) {
    if (Py_TYPE(t) != reinterpret_cast<PyTypeObject*>(p.plain[0]) &&
        Py_TYPE(t) != reinterpret_cast<PyTypeObject*>(p.plain[1]))
      return 0;
  }
  int answer = asks(p.tracing);
  if (answer != 0) return answer < 0 ? -1 : 0;
  answer = asks(p.function_mode);
  if (answer > 0) answer = asks(p.recording_function_mode);
  if (answer != 0) return answer < 0 ? -1 : 0;
  for (PyObject* f : {p.dispatch_modes, p.functorch}) {
    answer = asks(f);
    if (answer != 0) return answer < 0 ? -1 : 0;
  }
  PyObject* level = PyObject_GetAttr(p.forward_ad, p.level);
  if (level == nullptr) return -1;
  const long v = PyLong_AsLong(level);
  Py_DECREF(level);
  if (v == -1 && PyErr_Occurred()) return -1;
  if (v >= 0) return 0;
  answer = asks(p.profiler);  // (torch.profiler records the dispatcher's calls)
  return answer < 0 ? -1 : answer == 0;
}

// d[key] (borrowed), or nullptr for a key it lacks or cannot hash (no error left set)
PyObject* lookup(PyObject* d, PyObject* key) {
  PyObject* value = PyDict_GetItemWithError(d, key);
  if (value == nullptr) PyErr_Clear();
  return value;
}

// codes[i] = dicts[i][keys[i]] for i < n: 1, 0 where a key is missing, -1 with a Python error set
int look_up_codes(int n, PyObject* const* dicts, PyObject* const* keys, long* codes) {
  for (int i = 0; i < n; ++i) {
    PyObject* code = lookup(dicts[i], keys[i]);
    if (code == nullptr) return 0;
    codes[i] = PyLong_AsLong(code);
    if (codes[i] == -1 && PyErr_Occurred()) return -1;
  }
  return 1;
}

// `backend in _FUSED_BACKENDS` for None or a str: 1, 0 (anything else, even equal to one of
// them, is the Python path's to refuse), or -1 with a Python error set
int takes_kernel(PyObject* backend) {
  if (backend != Py_None && !PyUnicode_CheckExact(backend)) return 0;
  return PySequence_Contains(py_state.backends, backend);
}

// Plain CPU tensors x of `dims` dimensions and loc, of one dtype the kernels take (float32 or float64),
// no CPU autocast: what kernel_covers and kernel_covers3d ask first
bool plain_float_pair(const at::Tensor& x, const at::Tensor& loc, int64_t dims) {
  if (!plain_cpu(x) || !plain_cpu(loc) || x.dim() != dims || loc.scalar_type() != x.scalar_type() ||
      (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble))
    return false;
  // autocast on the CPU: its key not excluded (at::autocast::is_autocast_enabled's own test)
  return c10::impl::tls_is_dispatch_key_excluded(c10::DispatchKey::AutocastCPU);
}

// Whether the kernel covers image x (B, C, H, W) and its location tensor loc (parameters or a
// grid: its batch) in this call: plain CPU tensors of one floating dtype (float32 or float64),
// no CPU autocast, non-empty H and W of at most 2^30 pixels with int32 pixel
// offsets (_fused.fused_applies), x not empty, loc of x's batch
bool kernel_covers(const at::Tensor& x, const at::Tensor& loc) {
  if (!plain_float_pair(x, loc, 4)) return false;
  const int64_t h = x.size(2), w = x.size(3);
  const int64_t side = int64_t(1) << 30;  // (the kernel takes a point beyond 2^30 for one far outside)
  return h > 0 && w > 0 && h <= side && w <= side &&
         (h + 1) * x.stride(2) + (w + 1) * x.stride(3) < (int64_t(1) << 31) && x.numel() > 0 &&
         loc.dim() >= 1 && loc.size(0) == x.size(0);
}

// kernel_covers for a volume x (B, C, D, H, W) and its location tensor loc (a grid or affine rows): the
// same tensors and autocast, non-empty D, H and W within the 3-D kernel's bound (_fused3d.fused3d_applies),
// x not empty, loc of x's batch; and the 3-D kernel handed over (set_kernels3d)
bool kernel_covers3d(const at::Tensor& x, const at::Tensor& loc) {
  if (!plain_float_pair(x, loc, 5)) return false;
  if (forward3d_f32 == nullptr || python_backward3d == nullptr) return false;  // (the Python path builds it)
  return x.size(2) > 0 && x.size(3) > 0 && x.size(4) > 0 && within_bounds3d(x) && x.numel() > 0 && loc.dim() >= 1 &&
         loc.size(0) == x.size(0);
}

// fast_warp's Affine3D call: a volume x (B, C, D, H, W) warped by its parameters ((B, 12), or the
// (B, 3, 4) rows), as _sample._warp_general warps it (_fused3d.fused_warp3d), or None where the kernel
// does not cover the call
PyObject* fast_warp3d(const at::Tensor& x, const at::Tensor& params, PyObject* size, long mode, long padding,
                      PyObject* align_corners) {
  if (!kernel_covers3d(x, params)) Py_RETURN_NONE;
  const bool flat = params.dim() == 2 && params.size(1) == 12;
  if (!flat && !(params.dim() == 3 && params.size(1) == 3 && params.size(2) == 4)) Py_RETURN_NONE;
  int64_t sides[3] = {x.size(2), x.size(3), x.size(4)};
  if (size != Py_None) {
    if (!PyTuple_CheckExact(size) || PyTuple_GET_SIZE(size) != 3) Py_RETURN_NONE;
    for (int i = 0; i < 3; ++i) {
      sides[i] = positive_int(PyTuple_GET_ITEM(size, i));
      if (sides[i] < 0) Py_RETURN_NONE;
    }
  }
  if (!PyBool_Check(align_corners)) Py_RETURN_NONE;  // (the Python path says what it must be)
  return THPVariable_Wrap(
      warp3d_any(x, params, kAffine, sides[0], sides[1], sides[2], mode, padding, align_corners == Py_True));
}

// _grid_sample.torch_sample's call on the CPU, eager: F.grid_sample's own sampler (torch.grid_sampler,
// ATen's codes: bilinear 0, nearest 1, bicubic 2; zeros 0, border 1, reflection 2, as torchstn's),
// where its answer at a non-finite grid point is torchstn's: bilinear or bicubic with zeros padding
// and no gradient of the grid to record, or any call whose grid's sum of squares is finite (_moderate:
// no such point, none far enough out to overflow); else an undefined tensor, for torch_sample's
// careful path
at::Tensor aten_sample(const at::Tensor& x, const at::Tensor& grid, int64_t mode, int64_t padding,
                       bool align_corners) {
  const bool direct = padding == 0 && mode != 1;
  if (!direct || (c10::GradMode::is_enabled() && grid.requires_grad())) {
    const c10::AutoGradMode off(false);
    const at::Tensor flat = grid.reshape({-1});
    if (!std::isfinite(at::dot(flat, flat).item<double>())) return at::Tensor();
  }
  return at::grid_sampler(x, grid, mode, padding, align_corners);
}

// fast_warp's Affine1D call: a signal x (B, C, L) warped as an image of height 1 by the rows
// [[a, 0, b], [0, 1, 0]] of its parameters (a, b) ((B, 2), or the (B, 1, 2) rows), as
// _sample._warp_general warps it (_lift_rows_1d): the rows made by a cat, so that a gradient
// reaches a and b by slicing alone; or None where the kernel does not cover the call.
PyObject* fast_warp1d(const at::Tensor& x, const at::Tensor& params, PyObject* size, long mode, long padding,
                      PyObject* align_corners) {
  if (x.dim() != 3 || !plain_cpu(x)) Py_RETURN_NONE;
  const at::Tensor image = x.unsqueeze(2);
  if (!kernel_covers(image, params)) Py_RETURN_NONE;
  const bool flat = params.dim() == 2 && params.size(1) == 2;
  if (!flat && !(params.dim() == 3 && params.size(1) == 1 && params.size(2) == 2)) Py_RETURN_NONE;
  int64_t length = x.size(2);
  if (size != Py_None) {
    if (!PyTuple_CheckExact(size) || PyTuple_GET_SIZE(size) != 1) Py_RETURN_NONE;
    length = positive_int(PyTuple_GET_ITEM(size, 0));
    if (length < 0) Py_RETURN_NONE;
  }
  if (!PyBool_Check(align_corners)) Py_RETURN_NONE;  // (the Python path says what it must be)
  const int64_t b = params.size(0);
  const at::Tensor ab = params.reshape({b, 2});
  const at::Tensor zero = at::zeros({b, 1}, ab.options());
  const at::Tensor rows = at::cat({ab.narrow(1, 0, 1), zero, ab.narrow(1, 1, 1), zero, at::ones({b, 1}, ab.options()),
                                   zero}, 1).view({b, 2, 3});
  return THPVariable_Wrap(
      warp2d_recorded(image, rows, kAffine, 1, length, mode, padding, align_corners == Py_True, 0.0).squeeze(2));
}

// The whole of torchstn.warp's common call (_sample._compiled_warp passes warp's arguments:
// x, params, transform, size, mode, padding, align_corners, backend), or None for any other
// call. Common: Affine ((B, 6) parameters or (B, 2, 3) rows), Translation, Attention or
// Similarity ((B, 2), (B, 3), (B, 4): family_rows), Projective ((B, 8)), Affine1D
// ((B, 2) or (B, 1, 2), a signal: fast_warp1d) or Affine3D ((B, 12) or (B, 3, 4), a volume: fast_warp3d), by exact
// type or by a name _fused._named knows, a backend in _fused._FUSED_BACKENDS, a known mode and
// padding, size None or a tuple of two positive ints; eager tensors (see eager); no CPU
// autocast; a CPU float32/float64 image the kernel covers, and parameters of its dtype; for
// Projective, nothing to record a gradient for (its matrix is made here, not differentiably).
// A gradient is recorded through torchstn::Warp2dBackward. A raw METH_FASTCALL function:
// pybind11's own call of the same arguments cost about 0.3 us more.
PyObject* fast_warp(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 8) {
    PyErr_SetString(PyExc_TypeError, "fast_warp takes 8 arguments");
    return nullptr;
  }
  if (!python_set) Py_RETURN_NONE;
  const Python& p = py_state;
  PyObject *xo = args[0], *po = args[1], *transform = args[2], *size = args[3], *backend = args[7];
  py::object named_transform;  // a name's transform, held: the Python functions asked below may change _NAMED
  try {
    const int fused_backend = takes_kernel(backend);
    if (fused_backend <= 0) return fused_backend < 0 ? nullptr : Py_NewRef(Py_None);
    if (PyUnicode_CheckExact(transform)) {  // a name: its transform, _named's (which keeps it)
      PyObject* named = lookup(p.named, transform);
      if (named != nullptr) {
        named_transform = py::reinterpret_borrow<py::object>(named);
      } else {  // made (and kept, while _NAMED has room) by _named, or None for a name it refuses
        named_transform = py::reinterpret_steal<py::object>(PyObject_CallOneArg(p.name_lookup, transform));
        if (!named_transform) return nullptr;
        if (named_transform.is_none()) Py_RETURN_NONE;
      }
      transform = named_transform.ptr();
    }
    // the codes, read before any Python function runs (the dicts' values are borrowed)
    long codes[3];
    PyObject* keys[3] = {reinterpret_cast<PyObject*>(Py_TYPE(transform)), args[4], args[5]};
    PyObject* dicts[3] = {p.families, p.modes, p.paddings};
    const int found = look_up_codes(3, dicts, keys, codes);
    if (found <= 0) return found < 0 ? nullptr : Py_NewRef(Py_None);
    const long family = codes[0], mode = codes[1], padding = codes[2];
    const int is_eager = eager(xo, po);
    if (is_eager <= 0) return is_eager < 0 ? nullptr : Py_NewRef(Py_None);
    const at::Tensor& params = THPVariable_Unpack(po);
    if (family == 2) return fast_warp1d(THPVariable_Unpack(xo), params, size, mode, padding, args[6]);
    if (family == 3) return fast_warp3d(THPVariable_Unpack(xo), params, size, mode, padding, args[6]);
    const at::Tensor& x = THPVariable_Unpack(xo);
    if (!kernel_covers(x, params) || params.dim() < 2) Py_RETURN_NONE;
    int64_t oh = x.size(2), ow = x.size(3);
    if (size != Py_None) {
      if (!PyTuple_CheckExact(size) || PyTuple_GET_SIZE(size) != 2) Py_RETURN_NONE;
      oh = positive_int(PyTuple_GET_ITEM(size, 0));
      ow = positive_int(PyTuple_GET_ITEM(size, 1));
      if (oh < 0 || ow < 0) Py_RETURN_NONE;
    }
    if (!PyBool_Check(args[6])) Py_RETURN_NONE;  // (align_corners: the Python path says what it must be)
    const bool aligned = args[6] == Py_True;
    if (family == 0) {
      const bool flat = params.dim() == 2 && params.size(1) == 6;
      const bool rows = params.dim() == 3 && params.size(1) == 2 && params.size(2) == 3;
      if (!flat && !rows) Py_RETURN_NONE;
      return THPVariable_Wrap(warp2d_recorded(x, params, kAffine, oh, ow, mode, padding, aligned, 0.0));
    }
    if (family >= 4 && family <= 6) {
      if (params.dim() != 2 || params.size(1) != family - 2) Py_RETURN_NONE;  // (2, 3 or 4 parameters)
      return THPVariable_Wrap(warp2d_family(x, params, family, oh, ow, mode, padding, aligned));
    }
    if (family == 1 && params.dim() == 2 && params.size(1) == 8 &&
        !(c10::GradMode::is_enabled() && (x.requires_grad() || params.requires_grad()))) {
      PyObject* eps_value = PyObject_GetAttr(transform, p.eps);  // Projective's guard of w
      if (eps_value == nullptr) return nullptr;
      const double eps = PyFloat_AsDouble(eps_value);
      Py_DECREF(eps_value);
      if (eps == -1.0 && PyErr_Occurred()) return nullptr;
      const at::Tensor matrix = x.scalar_type() == at::kFloat ? homographies<float>(params.contiguous())
                                                              : homographies<double>(params.contiguous());
      return THPVariable_Wrap(run(x, matrix, kProjective, oh, ow, mode, padding, aligned, eps));
    }
    Py_RETURN_NONE;
  } catch (...) {  // (a failed TORCH_CHECK in run, an allocation): as torch's own bindings translate it
    torch::translate_exception_to_python(std::current_exception());
    return nullptr;
  }
}

PyMethodDef fast_warp_def = {"fast_warp", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_warp)),
                             METH_FASTCALL, "torchstn.warp's common call, or None (csrc/fast_call.cpp)"};

// The whole of torchstn.sample's common call (_sample._compiled_sample passes sample's
// arguments: x, grid, mode, padding, align_corners, backend), or None for any other call:
// an image (B, C, H, W) and a grid (B, Ho, Wo, 2) the kernel covers, a signal (B, C, L) and
// its grid (B, Lo, 1), or a volume and its grid (B, Do, Ho, Wo, 3) (kernel_covers3d; eager
// tensors, see eager), a known mode and padding, and a backend that takes the fused kernel for
// them: "fused", or "auto" (None) for the modes of _fused.AUTO_GRID_MODES, up to the number of
// grid points it gives the mode (an image's or a signal's: "auto" samples every volume with the kernel).
PyObject* fast_sample(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 6) {
    PyErr_SetString(PyExc_TypeError, "fast_sample takes 6 arguments");
    return nullptr;
  }
  if (!python_set) Py_RETURN_NONE;
  const Python& p = py_state;
  PyObject *xo = args[0], *go = args[1], *backend = args[5];
  try {
    const int fused_backend = takes_kernel(backend);
    if (fused_backend <= 0) return fused_backend < 0 ? nullptr : Py_NewRef(Py_None);
    // bicubic: no fused kernel reads it, and "auto" and "fused" sample it with ATen's (_sample._fused_sample)
    const bool bicubic = PyUnicode_CheckExact(args[2]) && PyUnicode_CompareWithASCIIString(args[2], "bicubic") == 0;
    long codes[2] = {kAtenBicubic, 0};
    PyObject* keys[2] = {args[2], args[3]};
    PyObject* dicts[2] = {p.modes, p.paddings};
    const int found = bicubic ? look_up_codes(1, dicts + 1, keys + 1, codes + 1) : look_up_codes(2, dicts, keys, codes);
    if (found <= 0) return found < 0 ? nullptr : Py_NewRef(Py_None);
    PyObject* most = nullptr;  // "auto": the mode's choice, its most points (None: any number)
    if (!bicubic && (backend == Py_None || PyUnicode_CompareWithASCIIString(backend, "fused") != 0)) {
      most = PyDict_GetItemWithError(p.auto_grid_modes, args[2]);  // (borrowed)
      if (most == nullptr) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
    }
    const int is_eager = eager(xo, go);
    if (is_eager <= 0) return is_eager < 0 ? nullptr : Py_NewRef(Py_None);
    at::Tensor x = THPVariable_Unpack(xo), grid = THPVariable_Unpack(go);
    if (x.dim() == 5) {  // a volume: "auto" takes the 3-D kernel for every grid (_sample._backend_name)
      if (bicubic || !kernel_covers3d(x, grid) || grid.dim() != 5 || grid.size(4) != 3 || grid.size(1) <= 0 ||
          grid.size(2) <= 0 || grid.size(3) <= 0 || !PyBool_Check(args[4]))
        Py_RETURN_NONE;
      const int64_t od = grid.size(1), oh = grid.size(2), ow = grid.size(3);
      return THPVariable_Wrap(warp3d_any(x, grid, kGrid, od, oh, ow, codes[0], codes[1], args[4] == Py_True));
    }
    const bool signal = x.dim() == 3;
    if (signal) {  // an image of height 1 read on its centre row, as _sample._run_kernel lifts it (y = 0 * x)
      if (!plain_cpu(x) || grid.dim() != 3 || grid.size(2) != 1) Py_RETURN_NONE;
      x = x.unsqueeze(2);
      if (!kernel_covers(x, grid)) Py_RETURN_NONE;  // (first: no cat of a float16 grid under autocast)
      grid = at::cat({grid, grid.mul(0)}, -1).unsqueeze(1);
    }
    if (!kernel_covers(x, grid) || grid.dim() != 4 || grid.size(3) != 2 || grid.size(1) <= 0 || grid.size(2) <= 0)
      Py_RETURN_NONE;
    if (!PyBool_Check(args[4])) Py_RETURN_NONE;  // (align_corners: the Python path says what it must be)
    const bool aligned = args[4] == Py_True;
    // ATen's sampler where "auto" chooses it: bicubic, and nearest beyond the mode's most points
    if (bicubic ||
        (most != nullptr && most != Py_None && grid.size(0) * grid.size(1) * grid.size(2) > PyLong_AsLongLong(most))) {
      const at::Tensor out = aten_sample(x, grid, codes[0], codes[1], aligned);
      if (!out.defined()) Py_RETURN_NONE;
      return THPVariable_Wrap(signal ? out.squeeze(2) : out);
    }
    const at::Tensor out =
        warp2d_recorded(x, grid, kGrid, grid.size(1), grid.size(2), codes[0], codes[1], aligned, 0.0);
    return THPVariable_Wrap(signal ? out.squeeze(2) : out);
  } catch (...) {  // as fast_warp
    torch::translate_exception_to_python(std::current_exception());
    return nullptr;
  }
}

PyMethodDef fast_sample_def = {
    "fast_sample", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_sample)), METH_FASTCALL,
    "torchstn.sample's common call, or None (csrc/fast_call.cpp)"};

// eager: (Tensor, Parameter, is_tracing, function mode on, a recording function mode on, the
// dispatch modes' count, functorch transforms active, torch.autograd.forward_ad, the profiler
// on); lookups:
// (the families {type: code}, the named transforms {name: transform}, the function that adds
// a name to them, the mode codes, the padding codes, the backends that may take the kernel,
// the modes "auto" samples a given grid with the kernel in, each with its most points)
void set_python(py::tuple eager_questions, py::tuple lookups) {
  TORCH_CHECK(eager_questions.size() == 9 && lookups.size() == 7, "torchstn fast_call: set_python's arguments");
  Python p;
  PyObject** e[] = {&p.plain[0], &p.plain[1], &p.tracing, &p.function_mode, &p.recording_function_mode,
                    &p.dispatch_modes, &p.functorch, &p.forward_ad, &p.profiler};
  for (size_t i = 0; i < 9; ++i) *e[i] = py::object(eager_questions[i]).release().ptr();
  PyObject** l[] = {&p.families, &p.named, &p.name_lookup, &p.modes, &p.paddings, &p.backends, &p.auto_grid_modes};
  for (size_t i = 0; i < 7; ++i) *l[i] = py::object(lookups[i]).release().ptr();
  TORCH_CHECK(PyDict_Check(p.families) && PyDict_Check(p.named) && PyDict_Check(p.modes) && PyDict_Check(p.paddings) &&
                  PyDict_Check(p.auto_grid_modes),
              "torchstn fast_call: set_python's lookups must be dicts");
  p.level = PyUnicode_InternFromString("_current_level");
  p.eps = PyUnicode_InternFromString("eps");
  if (!p.level || !p.eps) throw py::error_already_set();
  py_state = p;
  python_set = true;
}

// the kernel's entry points: forward float32, float64, backward float32, float64
void set_kernels(uintptr_t f32, uintptr_t f64, uintptr_t b32, uintptr_t b64, int64_t abi) {
  TORCH_CHECK(abi == kKernelAbi, "torchstn fast_call: built for kernel ABI ", kKernelAbi, ", given ABI ", abi);
  forward_f32 = reinterpret_cast<Forward<float>>(f32);
  forward_f64 = reinterpret_cast<Forward<double>>(f64);
  backward_f32 = reinterpret_cast<Backward<float>>(b32);
  backward_f64 = reinterpret_cast<Backward<double>>(b64);
}

void set_backward_fallback(py::object f) {
  Py_XDECREF(python_backward);  // (a second call's: the first reference is dropped)
  python_backward = f.release().ptr();
}

// the 3-D kernel's entry points (forward float32, float64, backward float32, float64) and
// _fused3d._node_backward, handed once both it and this module are loaded
void set_kernels3d(uintptr_t f32, uintptr_t f64, uintptr_t b32, uintptr_t b64, int64_t abi, py::object fallback) {
  TORCH_CHECK(abi == kKernel3dAbi, "torchstn fast_call: built for 3-D kernel ABI ", kKernel3dAbi, ", given ABI ", abi);
  Py_XDECREF(python_backward3d);
  python_backward3d = fallback.release().ptr();
  forward3d_f64 = reinterpret_cast<Forward3d<double>>(f64);
  backward3d_f32 = reinterpret_cast<Backward3d<float>>(b32);
  backward3d_f64 = reinterpret_cast<Backward3d<double>>(b64);
  forward3d_f32 = reinterpret_cast<Forward3d<float>>(f32);  // (last: kernel_covers3d asks it)
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("abi_version", [] { return 5; });
  m.def("set_kernels", &set_kernels);
  m.def("set_backward_fallback", &set_backward_fallback);
  m.def("set_kernels3d", &set_kernels3d);
  m.def("warp2d", &warp2d);
  m.def("warp2d_recorded", &warp2d_recorded);
  m.def("set_python", &set_python);
  py::object module_name = py::reinterpret_steal<py::object>(PyModule_GetNameObject(m.ptr()));
  if (!module_name) throw py::error_already_set();
  py::object fast_warp_fn =
      py::reinterpret_steal<py::object>(PyCFunction_NewEx(&fast_warp_def, nullptr, module_name.ptr()));
  if (!fast_warp_fn) throw py::error_already_set();
  m.add_object("fast_warp", fast_warp_fn);
  py::object fast_sample_fn =
      py::reinterpret_steal<py::object>(PyCFunction_NewEx(&fast_sample_def, nullptr, module_name.ptr()));
  if (!fast_sample_fn) throw py::error_already_set();
  m.add_object("fast_sample", fast_sample_fn);
}
