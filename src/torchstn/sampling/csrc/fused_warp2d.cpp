// Fused 2-D warp for the CPU, bilinear or nearest: the sampling location is computed from
// the transformation matrix on the fly (no grid tensor), and the backward pass accumulates
// dL/dx and dL/dθ directly (no grid gradient).
//
// Plain C++ and OpenMP with a C interface, called through ctypes from
// torchstn/sampling/_fused.py: no torch headers, so the JIT build takes seconds instead
// of half a minute. The arithmetic follows ATen's GridSampler.h (unnormalisation, border
// clipping, bilinear weights and their gradients, nearest rounding half to even;
// reflection as torchstn's reference sampler computes it) so that every backend agrees
// with F.grid_sample and the reference.
// The bilinear sub-gradient at integer pixel coordinates is the right-sided difference,
// as in both. A location that is not finite (NaN or +-Inf, before padding) gives NaN in
// every channel and a NaN location gradient, and adds nothing to dL/dx: torchstn's policy
// on every backend (F.grid_sample's own handling differs between paddings).
//
// Layouts: x, out, grad_out and grad_x (B, C, H, W) with any strides (element strides
// given as (batch, channel, height, width): NCHW and channels_last are both read and
// written in place, nothing is copied); grad_x has the strides of x.
// loc = GRID: grid (B, Ho, Wo, 2) contiguous, grad_grid the same;
// loc = AFFINE: theta (B, 2, 3), PROJECTIVE: theta (B, 3, 3), contiguous row-major
// src_from_dst matrices in normalised coordinates, grad_theta of the same shape. The
// output pixels' normalised coordinates (torchstn's base grid) are computed here, as
// transforms/_base.py computes them (the exact fractions, rounded once).
//
// Vectorisation: the output points are processed a block at a time (within a row, or
// across rows for narrow outputs: see Span). Loop (A) computes the block's locations,
// padding, corner offsets and weights in plain loops the compiler vectorises; (B) reads
// the corners of every channel (where the build has AVX2, eight points at a time; else one
// point at a time, same arithmetic, same results); the backward also scatters into grad_x
// (scalar: two points may share a pixel; or, for planes of several channels under zeros
// padding, gathers it per input pixel: gather_x_gradient) and accumulates dL/dθ in vector
// lanes, summed in a fixed order (deterministic). The float32 bilinear forward of 1-4 channels from affine θ,
// a homography or a grid (unit width strides, no rows fetched ahead; channels side by side
// too) runs both loops in one pass instead (single_pass): 1.17-1.30x forward at 64x3x64x64
// and 1x3x224x224, 1.16-1.22x at 256x1x28x28 and 256x3x28x28 (rows packed into blocks);
// for homographies 1.02-1.06x at 64x3x64x64, 1.36-1.43x at 1x3x224x224, 1.30-1.44x at
// 256x1x28x28.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TORCHSTN_AVX2 1
#endif

namespace {

enum Padding { ZEROS = 0, BORDER = 1, REFLECTION = 2 };
enum Location { GRID = 0, AFFINE = 1, PROJECTIVE = 2 };
// NEAREST reads one pixel: the block holds it as corner 0 with weight 1 (no other corner
// valid) and its location gradient is 0
enum Mode { LINEAR = 0, NEAREST = 1 };

// ------------------------------------------------------------------------------------------
// SIMD: N lanes of T. The gather reads base[off] where valid != 0 and gives 0 elsewhere
// without reading (a select, not a multiplication by 0: a non-finite pixel outside the
// footprint must not turn into NaN).

#ifdef TORCHSTN_AVX2
template <typename T>
struct Simd;

template <>
struct Simd<float> {
  static constexpr int N = 8;
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float a) { return _mm256_set1_ps(a); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }  // a b + c, rounded once
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  // (AVX2's vgatherdps is slower than eight loads on the machines measured: AMD Zen 3)
  static V gather(const float* base, const int32_t* off, const float* valid) {
    const __m256 mask = _mm256_cmp_ps(_mm256_loadu_ps(valid), _mm256_setzero_ps(), _CMP_NEQ_UQ);
    const __m256 v = _mm256_setr_ps(base[off[0]], base[off[1]], base[off[2]], base[off[3]], base[off[4]],
                                    base[off[5]], base[off[6]], base[off[7]]);
    return _mm256_and_ps(v, mask);
  }
  // base[off[l]] and base[off[l] + 1] of every lane: two neighbouring pixels, read as one pair
  static void pairs(const float* base, const int32_t* off, V* left, V* right) {
    const __m128 p01 = _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(base + off[0]))),
                                    reinterpret_cast<const __m64*>(base + off[1]));
    const __m128 p23 = _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(base + off[2]))),
                                    reinterpret_cast<const __m64*>(base + off[3]));
    const __m128 p45 = _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(base + off[4]))),
                                    reinterpret_cast<const __m64*>(base + off[5]));
    const __m128 p67 = _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(base + off[6]))),
                                    reinterpret_cast<const __m64*>(base + off[7]));
    const __m256 a = _mm256_insertf128_ps(_mm256_castps128_ps256(p01), p45, 1);  // points 0 1 | 4 5
    const __m256 b = _mm256_insertf128_ps(_mm256_castps128_ps256(p23), p67, 1);  // points 2 3 | 6 7
    *left = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    *right = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  }
  // every lane of an int32 flag vector is non-zero
  static bool all(const int32_t* flags) {
    const __m256i f = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(flags));
    return _mm256_testz_si256(_mm256_cmpeq_epi32(f, _mm256_setzero_si256()), _mm256_set1_epi32(-1));
  }
  // the first `count` lanes (all for count >= N) read from / written to p, nothing past them
  // touched (a row's last vector may end past the tensor)
  static __m256i first(int64_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(count < N ? count : N)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load_upto(const float* p, int64_t count) { return count >= N ? load(p) : _mm256_maskload_ps(p, first(count)); }
  static void store_upto(float* p, V v, int64_t count) {
    if (count >= N) {
      store(p, v);
    } else {
      _mm256_maskstore_ps(p, first(count), v);
    }
  }
  // NaN where flag != 0
  static V nan_where(V v, const float* flag) {
    const __m256 mask = _mm256_cmp_ps(_mm256_loadu_ps(flag), _mm256_setzero_ps(), _CMP_NEQ_UQ);
    return _mm256_blendv_ps(v, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()), mask);
  }
};

template <>
struct Simd<double> {
  static constexpr int N = 4;
  using V = __m256d;
  static V zero() { return _mm256_setzero_pd(); }
  static V set1(double a) { return _mm256_set1_pd(a); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V div(V a, V b) { return _mm256_div_pd(a, b); }
  static V gather(const double* base, const int32_t* off, const double* valid) {
    const __m256d mask = _mm256_cmp_pd(_mm256_loadu_pd(valid), _mm256_setzero_pd(), _CMP_NEQ_UQ);
    return _mm256_and_pd(_mm256_setr_pd(base[off[0]], base[off[1]], base[off[2]], base[off[3]]), mask);
  }
  static void pairs(const double* base, const int32_t* off, V* left, V* right) {
    const __m256d a = _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(base + off[0])), _mm_loadu_pd(base + off[2]), 1);
    const __m256d b = _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(base + off[1])), _mm_loadu_pd(base + off[3]), 1);
    *left = _mm256_unpacklo_pd(a, b);
    *right = _mm256_unpackhi_pd(a, b);
  }
  static bool all(const int32_t* flags) {
    const __m128i f = _mm_loadu_si128(reinterpret_cast<const __m128i*>(flags));
    return _mm_testz_si128(_mm_cmpeq_epi32(f, _mm_setzero_si128()), _mm_set1_epi32(-1));
  }
  static __m256i first(int64_t count) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(count < N ? count : N), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static V load_upto(const double* p, int64_t count) { return count >= N ? load(p) : _mm256_maskload_pd(p, first(count)); }
  static void store_upto(double* p, V v, int64_t count) {
    if (count >= N) {
      store(p, v);
    } else {
      _mm256_maskstore_pd(p, first(count), v);
    }
  }
  static V nan_where(V v, const double* flag) {
    const __m256d mask = _mm256_cmp_pd(_mm256_loadu_pd(flag), _mm256_setzero_pd(), _CMP_NEQ_UQ);
    return _mm256_blendv_pd(v, _mm256_set1_pd(std::numeric_limits<double>::quiet_NaN()), mask);
  }
};
#else
template <typename T>
struct Simd {  // the portable build: one point at a time (loop A still vectorises, see LANES)
  static constexpr int N = 1;
  using V = T;
  static V zero() { return T(0); }
  static V set1(T a) { return a; }
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V fmadd(V a, V b, V c) { return std::fma(a, b, c); }
  static V div(V a, V b) { return a / b; }
  static V gather(const T* base, const int32_t* off, const T* valid) { return *valid != 0 ? base[*off] : T(0); }
  static void pairs(const T* base, const int32_t* off, V* left, V* right) {
    *left = base[*off];
    *right = base[*off + 1];
  }
  static bool all(const int32_t* flags) { return *flags != 0; }
  // count <= 0: a lane past the row's end (the loops run to whole vectors of LANES points)
  static V load_upto(const T* p, int64_t count) { return count > 0 ? *p : T(0); }
  static void store_upto(T* p, V v, int64_t count) {
    if (count > 0) *p = v;
  }
  static V nan_where(V v, const T* flag) { return *flag != 0 ? std::numeric_limits<T>::quiet_NaN() : v; }
};
#endif

// Vectors of T summed in double, lane by lane (the θ gradient's sums: each block's vector of
// partial sums added as it comes, times y where given), the lanes summed in a fixed order at
// the end. Per block, the lanes summed in order and added (until 2026-12-06; a serial chain of
// sixteen conversions and adds per sum) took 7% of the backward at 256x1x28x28.
template <typename T>
struct LaneSums {
  using V = typename Simd<T>::V;
#ifdef TORCHSTN_AVX2
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();  // (double: lo alone)
  static __m256d scaled(__m256d v, const double* y) { return y ? _mm256_mul_pd(v, _mm256_set1_pd(*y)) : v; }
  void add(V v, const double* y = nullptr) {
    if constexpr (std::is_same_v<T, float>) {
      lo = _mm256_add_pd(lo, scaled(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), y));
      hi = _mm256_add_pd(hi, scaled(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), y));
    } else {
      lo = _mm256_add_pd(lo, scaled(v, y));
    }
  }
  double total() const {
    alignas(32) double lanes[8];
    _mm256_store_pd(lanes, lo);
    _mm256_store_pd(lanes + 4, hi);
    double s = 0;
    for (int l = 0; l < Simd<T>::N; ++l) s += lanes[l];
    return s;
  }
#else
  double s = 0;
  void add(V v, const double* y = nullptr) { s += y ? double(v) * *y : double(v); }
  double total() const { return s; }
#endif
};

// ------------------------------------------------------------------------------------------
// padding

// Reflect u into [low, low + span] by mirroring at both ends, as the reference sampler
// (flips = floor(|u - low| / span), the remainder by subtraction); *grad is +-1, or 0 when
// span is 0 (one pixel with align_corners). Branch-free, so that the loop vectorises. A
// distance past a quarter of the largest T (a finite grid value whose pixel coordinate
// overflowed to Inf) is taken as that quarter (the reference sampler clamps it so): the
// arithmetic stays finite (Inf - Inf made the gradient NaN); a NaN stays NaN.
template <typename T>
__attribute__((always_inline)) inline T reflect(T u, T low, T span, T* grad) {
  constexpr T far = std::numeric_limits<T>::max() / 4;
  T v = u - low;
  const T sign = v < 0 ? T(-1) : T(1);
  v = std::fabs(v);
  v = far < v ? far : v;
  const T flips = std::floor(v / span);
  const T extra = v - flips * span;
  const T half = flips * T(0.5);
  const T odd = 2 * (half - std::floor(half));  // 0 or 1
  const T out = low + odd * span + (1 - 2 * odd) * extra;
  *grad = span > 0 ? sign * (1 - 2 * odd) : T(0);
  return span > 0 ? out : T(0);
}

// Clip u to [0, high]; *grad is 1 strictly inside, 0 where clipped.
template <typename T>
__attribute__((always_inline)) inline T clip(T u, T high, T* grad) {
  *grad = static_cast<T>((u > 0) & (u < high));
  const T lower = u > 0 ? u : T(0);
  return lower < high ? lower : high;
}

// ------------------------------------------------------------------------------------------
// locations

struct Strides {
  int64_t b, c, h, w;  // in elements
};

// the divisor of torchstn's base grid along an axis of n pixels: n, or max(n - 1, 1) with align_corners
inline double axis_span(int64_t n, bool align_corners) {
  return static_cast<double>(align_corners ? std::max<int64_t>(n - 1, 1) : n);
}

// torchstn's base grid along one axis of n pixels (transforms/_base.py, _linspace): (2 i + 1 - n)
// / axis_span, rounded once in double, then cast to T; padded with finite values to a whole
// number of SIMD vectors past every block
template <typename T>
std::vector<T> axis_coordinates(int64_t n, bool align_corners, int64_t pad) {
  std::vector<T> out(n + pad, T(0));
  const double span = axis_span(n, align_corners);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<double>(2 * i + 1 - n) / span);
  return out;
}

// what a point's location is computed from
template <typename T, int LOC>
struct Locator {
  const T* grid;   // GRID: (B, Ho, Wo, 2)
  const T* theta;  // AFFINE: (B, 2, 3), PROJECTIVE: (B, 3, 3)
  const T* xs;     // (Wo + padding,) normalised output x
  const T* ys;     // (Ho,) normalised output y
  T eps;           // PROJECTIVE: the guard
  int64_t Ho, Wo;
  bool packed;  // rows packed into blocks (see Span)
  // packed: the normalised x and y of every point of a sample, row after row ((Ho * Wo +
  // padding,) each; null for GRID)
  const T* px;
  const T* py;

  // sample b's matrix (AFFINE, PROJECTIVE)
  const T* matrix(int64_t b) const { return theta + b * (LOC == AFFINE ? 6 : 9); }
};

constexpr int64_t BLOCK = 64;  // a multiple of every LANES<T>
#ifdef TORCHSTN_AVX2
constexpr bool kOnePass = true;  // the backward's one pass (backward_pass) is built
#else
constexpr bool kOnePass = false;
#endif

// A block of n output points of one sample, starting at the point p0 of its rows read in
// order (p0 = i * Wo + j): within row i from column j0 or, where the output is narrower than
// a block and its rows follow each other in memory (`packed`), across rows: a 28-pixel-wide
// output then fills whole blocks instead of 28 of 32 lanes per row, and pays the per-block
// cost once per 64 points instead of once per row (the same points as 7x1x28x1024 rows ran
// 1.46x faster than as 256x1x28x28 images before; packing gave the latter 1.42x forward).
struct Span {
  int64_t p0, n;  // first point (in the sample's rows, read in order) and count
  int64_t i, j0;  // not packed: its row and first column
};

// the number of blocks of a sample's output points, and the block at index s of them (in
// order); plain loops over these keep the passes' locals in registers (a loop body in a
// lambda made the backward's scatter 0.78x: its buffers were reloaded after every store)
// (`size`: the points of a block, BLOCK or, where no pass keeps them in the Block, more)
inline int64_t block_count(int64_t Ho, int64_t Wo, bool packed, int64_t size = BLOCK) {
  return packed ? (Ho * Wo + size - 1) / size : Ho * ((Wo + size - 1) / size);
}

inline Span block_span(int64_t s, int64_t Ho, int64_t Wo, bool packed, int64_t size = BLOCK) {
  if (packed) {
    const int64_t p0 = s * size;
    return Span{p0, Ho * Wo - p0 < size ? Ho * Wo - p0 : size, -1, -1};
  }
  const int64_t per_row = (Wo + size - 1) / size, i = s / per_row, j0 = s % per_row * size;
  return Span{i * Wo + j0, Wo - j0 < size ? Wo - j0 : size, i, j0};
}

// loop A runs over this many points at a time (32 bytes of T, a multiple of Simd<T>::N):
// AVX2's width, and in the portable build a chunk the compiler vectorises for the target
template <typename T>
constexpr int LANES = 32 / sizeof(T);

// per-block scratch: structure of arrays; entries from the block's n points up to the next
// whole vector are padding: no corner valid, weight 0
template <typename T>
struct alignas(32) Block {
  T gx[BLOCK], gy[BLOCK];    // normalised location (PROJECTIVE: after the division)
  T g[BLOCK], keep[BLOCK];   // PROJECTIVE: guarded w, and 1 where the guard is off
  T dix[BLOCK], diy[BLOCK];  // d(pixel coordinate) / d(normalised coordinate)
  T tx[BLOCK], ty[BLOCK];    // fractional parts
  T bad[BLOCK];              // 1 where the location is not finite, else 0; set only when any_bad
  int32_t any_bad;           // the block has a non-finite location (rare: the common path skips bad)
  T w[4][BLOCK];             // bilinear weights (NEAREST: 1, 0, 0, 0)
  T valid[4][BLOCK];         // 1 for corners inside the image, else 0
  int32_t off[4][BLOCK];     // corner offsets in a channel (0 for corners outside)
  int32_t inner[BLOCK];      // all four corners inside (0 in the padding and at bad points)
};

template <typename T>
struct Constants {
  int64_t H, W, Ho, Wo;
  T ax, bx, ay, by;  // pixel = (coord + 1) * a - b, per axis
  bool align_corners;
  T eps;
  T low, span_x, span_y;  // reflection: mirror at low and low + span (pixel coordinates)
  int32_t sh, sw;         // the input's height and width strides
  // every row offset i * sh for i in [-8, H + 8] and column j in [-8, W + 8] is an integer below
  // 2^24, which float32 holds exactly (so an offset may be computed in float; a bordered copy,
  // whose row stride replaces sh, has planes of at most 2^14 floats)
  bool exact_offsets;

  Constants(int64_t H_, int64_t W_, int64_t Ho_, int64_t Wo_, bool ac, T eps_, const Strides& s)
      : H(H_), W(W_), Ho(Ho_), Wo(Wo_), align_corners(ac), eps(eps_) {
    ax = ac ? static_cast<T>(W - 1) / 2 : static_cast<T>(W) / 2;
    ay = ac ? static_cast<T>(H - 1) / 2 : static_cast<T>(H) / 2;
    bx = by = ac ? T(0) : T(0.5);
    low = ac ? T(0) : T(-0.5);
    span_x = ac ? static_cast<T>(W - 1) : static_cast<T>(W);
    span_y = ac ? static_cast<T>(H - 1) : static_cast<T>(H);
    sh = static_cast<int32_t>(s.h);
    sw = static_cast<int32_t>(s.w);
    exact_offsets = (H + 8) * std::abs(s.h) + (W + 8) * std::abs(s.w) < (int64_t(1) << 24);
  }
};

// The pixel coordinates (before padding) output point (i, j) of sample b reads; NaN inside
// the projective guard (for prefetching only: no padding, no exact rounding)
template <typename T, int LOC>
void pixel_at(const Locator<T, LOC>& loc, const Constants<T>& k, int64_t b, int64_t i, int64_t j, T* ix, T* iy) {
  T gx, gy;
  if (LOC == GRID) {
    const T* g = loc.grid + ((b * loc.Ho + i) * loc.Wo + j) * 2;
    gx = g[0];
    gy = g[1];
  } else {
    const T* m = loc.matrix(b);
    const T x = loc.xs[j], y = loc.ys[i];
    const T w = LOC == PROJECTIVE ? m[6] * x + m[7] * y + m[8] : T(1);
    const T nan = std::numeric_limits<T>::quiet_NaN();
    gx = std::fabs(w) > loc.eps ? (m[0] * x + m[1] * y + m[2]) / w : nan;
    gy = std::fabs(w) > loc.eps ? (m[3] * x + m[4] * y + m[5]) / w : nan;
  }
  *ix = (gx + 1) * k.ax - k.bx;
  *iy = (gy + 1) * k.ay - k.by;
}

// The offset in a channel from the pixel a point of a wide output reads to the one the point
// AHEAD output rows below reads (taken at the block's first point), for prefetching: the
// hardware prefetcher follows an output row that reads along an input row, but not one that
// reads a few pixels from each of many rows (a rotation, a shear, a thin-plate spline), and
// at 32x3x224x224 such a row took twice the time of a straight one once its input had left
// L2 (1.73x forward fetching both of the rows AHEAD output rows early, A/B of the bare
// kernel with the bench's affine matrices; 2.04x at 32x3x160x160; 1.34x backward at
// 32x3x224x224; 1.9x forward, 1.16x / 1.28x backward for the same points as a grid / a
// homography). 0 where nothing is fetched ahead: packed rows, the last rows, an output row
// that crosses less than one input row (there the prefetches only cost: 0.93x at the
// identity), an input small enough to stay in the caches between calls (`large` false: see
// kAheadFrom; 0.93x at 1x3x224x224 called again and again; false too where forward_impl fetches
// the next sample's input instead, fetch_next), or planes of 64 KiB
// or less, where the three locations per block cost more than the prefetches save (0.93x
// for a homography at 64x3x64x64). A trap for the next edit: the passes' speed depends on
// whether GCC inlines this function into each instance. Deciding the two size conditions
// once per call instead of per block changed that and ran the grid forward at 0.70x at
// 32x3x224x224; marking it noinline gave the grid backward 0.96x (A/B of the bare kernel,
// bit-identical). Measure every instance after touching it.
template <typename T>
inline bool may_fetch_ahead(const Constants<T>& k, bool packed, bool large) {
  return !packed && large && k.H * k.W * static_cast<int64_t>(sizeof(T)) > (int64_t(1) << 16);
}

template <typename T, int LOC>
int64_t rows_ahead(const Locator<T, LOC>& loc, const Constants<T>& k, int64_t b, const Span& span, bool large) {
  constexpr int64_t AHEAD = 4;
  if (!may_fetch_ahead(k, loc.packed, large) || span.i + AHEAD >= k.Ho) return 0;
  T x0, y0, x1, y1, xa, ya;
  pixel_at(loc, k, b, span.i, span.j0, &x0, &y0);
  pixel_at(loc, k, b, span.i, span.j0 + span.n - 1, &x1, &y1);
  // the input rows the output row crosses (from the block's), and NaN
  if (!(std::fabs(y1 - y0) * static_cast<T>(k.Wo) >= static_cast<T>(span.n))) return 0;
  pixel_at(loc, k, b, span.i + AHEAD, span.j0, &xa, &ya);
  const T dix = xa - x0, diy = ya - y0;
  if (!(std::fabs(dix) <= static_cast<T>(k.W) && std::fabs(diy) <= static_cast<T>(k.H))) return 0;  // (and NaN)
  return static_cast<int64_t>(std::floor(diy + T(0.5))) * k.sh + static_cast<int64_t>(std::floor(dix + T(0.5))) * k.sw;
}

// The inputs (a batch's bytes) beyond which rows are fetched ahead (see rows_ahead): a 1 MB
// L2, but 5 MiB for a float32 bilinear forward whose rows a single pass takes where no rows
// are fetched ahead (the two passes of the block where they are). Up to a few megabytes, which
// the machine's 32 MB L3 holds between calls, the single passes without prefetches ran faster
// than the block with them: forward 1.3-2.3x at 2x3x224x224, 1.5-4.1x at 8x3x224x224, 2.0-3.9x
// at 4x1x512x512, NCHW and channels_last (min times 0.39 -> 0.19, 1.74 -> 1.01, 2.54 -> 1.21 ms
// NCHW), grids 1.7-1.9x at 2x3x224x224 and 0.4-2.6x at the other two (min times 1.71 -> 1.14,
// 2.56 -> 1.90 ms); beyond 6 MiB the two were level or the block ahead (12x3x224x224
// 0.81-1.35x, 2x3x512x512 0.55-2.58x, 32x3x224x224 0.46-1.43x). AMD EPYC Zen 4, one thread,
// alternating processes, a training on the other core, 2026-12-05; with it paused: 8x3x224x224
// 1.45-1.72x, 16x3x224x224 0.73-1.04x, 24x3x224x224 1.01-1.39x, 32x3x224x224 0.95-1.06x. The
// nearest forward (its pass without the prefetches 0.20-0.87x at 8x3x224x224), the float64 one
// (no single pass) and every backward (16x3x224x224 forward+backward 0.55-0.78x without them)
// keep fetching from 1 MB on. Beyond 5 MiB the single passes take the rows of a batch of
// dense samples of 64 KiB or more again, with the next sample's input fetched ahead instead
// (fetch_next in forward_impl); one such image alone, smaller samples and other layouts keep
// the block with its rows fetched ahead.
constexpr int64_t kAheadFrom = int64_t(1) << 20, kBilinearAheadFrom = int64_t(5) << 20;

// whether a batch of B (C, H, W) inputs is larger than `bytes`
template <typename T>
inline bool exceeds(int64_t B, int64_t C, const Constants<T>& k, int64_t bytes) {
  return B * C * k.H * k.W * static_cast<int64_t>(sizeof(T)) > bytes;
}

// both rows of the corners of point t of the block, `ahead` elements on, in channel xc (to
// be read, or with WRITE, written). The address may lie outside the tensor (a prefetch does
// not fault there): it is computed as an integer, not by pointer arithmetic past the tensor
template <int WRITE = 0, typename T>
inline void fetch_ahead(const T* xc, int32_t off, int64_t ahead, int32_t sh) {
  const std::uintptr_t p = reinterpret_cast<std::uintptr_t>(xc) +
                           static_cast<std::uintptr_t>((off + ahead) * static_cast<int64_t>(sizeof(T)));
  __builtin_prefetch(reinterpret_cast<const void*>(p), WRITE);
  __builtin_prefetch(reinterpret_cast<const void*>(p + static_cast<std::uintptr_t>(sh * static_cast<int64_t>(sizeof(T)))), WRITE);
}

template <int WRITE = 0, typename T>
inline void fetch_ahead(const T* xc, const Block<T>& blk, int64_t t, int64_t ahead, int32_t sh) {
  fetch_ahead<WRITE>(xc, blk.off[0][t], ahead, sh);
}

inline int64_t whole_vectors(int64_t n, int lanes) { return (n + lanes - 1) / lanes * lanes; }

#ifdef TORCHSTN_AVX2
// loop A's stages after the normalised location, for the 8 float points at t0 of the
// block, in AVX2 (the compiler's version of the same loop takes twice the instructions):
// the same operations in the same order as the portable loop in locate, so the same
// results. Returns whether a live point's location is not finite.
namespace avx {
inline __m256 set1(float a) { return _mm256_set1_ps(a); }
inline __m256 select(__m256 mask, __m256 a, __m256 b) { return _mm256_blendv_ps(b, a, mask); }  // mask ? a : b

__attribute__((always_inline)) inline __m256 reflect(__m256 u, float low, float span, __m256* grad) {
  const __m256 one = set1(1.f), zero = _mm256_setzero_ps();
  __m256 v = _mm256_sub_ps(u, set1(low));
  const __m256 sign = select(_mm256_cmp_ps(v, zero, _CMP_LT_OQ), set1(-1.f), one);
  v = _mm256_min_ps(set1(std::numeric_limits<float>::max() / 4), _mm256_andnot_ps(set1(-0.f), v));  // (NaN stays)
  const __m256 flips = _mm256_floor_ps(_mm256_div_ps(v, set1(span)));
  const __m256 extra = _mm256_sub_ps(v, _mm256_mul_ps(flips, set1(span)));
  const __m256 half = _mm256_mul_ps(flips, set1(0.5f));
  const __m256 odd = _mm256_mul_ps(set1(2.f), _mm256_sub_ps(half, _mm256_floor_ps(half)));
  const __m256 flip = _mm256_sub_ps(one, _mm256_mul_ps(set1(2.f), odd));
  const __m256 out = _mm256_add_ps(_mm256_add_ps(set1(low), _mm256_mul_ps(odd, set1(span))), _mm256_mul_ps(flip, extra));
  *grad = span > 0 ? _mm256_mul_ps(sign, flip) : zero;
  return span > 0 ? out : zero;
}

__attribute__((always_inline)) inline __m256 clip(__m256 u, float high, __m256* grad) {
  const __m256 zero = _mm256_setzero_ps(), h = set1(high);
  const __m256 above = _mm256_cmp_ps(u, zero, _CMP_GT_OQ);
  *grad = _mm256_and_ps(_mm256_and_ps(above, _mm256_cmp_ps(u, h, _CMP_LT_OQ)), set1(1.f));
  const __m256 lower = select(above, u, zero);
  return select(_mm256_cmp_ps(lower, h, _CMP_LT_OQ), lower, h);
}

// the bilinear corners of 8 points at pixel coordinates (ix, iy) (after padding), in
// registers: fractional parts, corner validity (masks, also 0 where `use` is), corner
// offsets (clamped, so unchanged only where valid) and weights before the padding lanes'
// 0 (live lanes: w * 1, the same value)
struct Corners8 {
  __m256 tx, ty;
  __m256 v[4];
  __m256i off[4];
  __m256 w[4];
};

__attribute__((always_inline)) inline Corners8 corners8(__m256 ix, __m256 iy, __m256 use, const Constants<float>& k) {
  const __m256 zero = _mm256_setzero_ps(), one = set1(1.f), minus_one = set1(-1.f);
  const __m256 W = set1(static_cast<float>(k.W)), H = set1(static_cast<float>(k.H));
  const __m256i sh = _mm256_set1_epi32(k.sh), sw = _mm256_set1_epi32(k.sw);
  Corners8 c;
  const __m256 fx = _mm256_floor_ps(ix), fy = _mm256_floor_ps(iy);
  c.tx = _mm256_sub_ps(ix, fx);
  c.ty = _mm256_sub_ps(iy, fy);
  const __m256 W1 = _mm256_sub_ps(W, one), H1 = _mm256_sub_ps(H, one);
  const __m256 vx0 = _mm256_and_ps(_mm256_cmp_ps(fx, zero, _CMP_GE_OQ), _mm256_cmp_ps(fx, W, _CMP_LT_OQ));
  const __m256 vx1 = _mm256_and_ps(_mm256_cmp_ps(fx, minus_one, _CMP_GE_OQ), _mm256_cmp_ps(fx, W1, _CMP_LT_OQ));
  const __m256 vy0 = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(fy, zero, _CMP_GE_OQ), _mm256_cmp_ps(fy, H, _CMP_LT_OQ)), use);
  const __m256 vy1 = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(fy, minus_one, _CMP_GE_OQ), _mm256_cmp_ps(fy, H1, _CMP_LT_OQ)), use);
  c.v[0] = _mm256_and_ps(vx0, vy0);
  c.v[1] = _mm256_and_ps(vx1, vy0);
  c.v[2] = _mm256_and_ps(vx0, vy1);
  c.v[3] = _mm256_and_ps(vx1, vy1);
  // clamped to [-1, W] x [-1, H] so that the offset cannot overflow (unchanged for valid corners)
  const __m256i cx0 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(fx, minus_one), W));
  const __m256i cy0 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(fy, minus_one), H));
  const __m256i o = _mm256_add_epi32(_mm256_mullo_epi32(cy0, sh), _mm256_mullo_epi32(cx0, sw));
  c.off[0] = o;
  c.off[1] = _mm256_add_epi32(o, sw);
  c.off[2] = _mm256_add_epi32(o, sh);
  c.off[3] = _mm256_add_epi32(_mm256_add_epi32(o, sh), sw);
  const __m256 rx = _mm256_sub_ps(one, c.tx), ry = _mm256_sub_ps(one, c.ty);
  c.w[0] = _mm256_mul_ps(rx, ry);
  c.w[1] = _mm256_mul_ps(c.tx, ry);
  c.w[2] = _mm256_mul_ps(rx, c.ty);
  c.w[3] = _mm256_mul_ps(c.tx, c.ty);
  return c;
}

// whether no corner of the 8 points lies inside the image (every point outside by a pixel or
// more under zeros padding, or not live, or not finite): their values are 0 (NaN where not
// finite), read from nothing
__attribute__((always_inline)) inline bool reads_nothing(const Corners8& c) {
  const __m256 any = _mm256_or_ps(_mm256_or_ps(c.v[0], c.v[1]), _mm256_or_ps(c.v[2], c.v[3]));
  return _mm256_movemask_ps(any) == 0;
}

// where 8 points at normalised (gx, gy) read, before their corners, in registers: the
// live lanes (the first n - t0), the finite ones, the live non-finite ones (`bad`), pixel
// coordinates after padding (far outside where not finite) and their derivatives
struct Located8 {
  __m256 live, finite, bad;
  __m256 ix, iy, dx, dy;
};

template <int PAD>
__attribute__((always_inline)) inline Located8 locate8(__m256 gx, __m256 gy, int64_t t0, int64_t n,
                                                       const Constants<float>& k) {
  const __m256 zero = _mm256_setzero_ps(), one = set1(1.f);
  Located8 p;
  p.live = _mm256_cmp_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), set1(static_cast<float>(n - t0)), _CMP_LT_OQ);
  p.finite = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(gx, gx), zero, _CMP_EQ_OQ),
                           _mm256_cmp_ps(_mm256_sub_ps(gy, gy), zero, _CMP_EQ_OQ));
  p.bad = _mm256_andnot_ps(p.finite, p.live);
  __m256 ix = _mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(gx, one), set1(k.ax)), set1(k.bx));
  __m256 iy = _mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(gy, one), set1(k.ay)), set1(k.by));
  __m256 dx = set1(k.ax), dy = set1(k.ay);
  if (PAD == REFLECTION) {
    __m256 rx, ry;
    ix = reflect(ix, k.low, k.span_x, &rx);
    iy = reflect(iy, k.low, k.span_y, &ry);
    dx = _mm256_mul_ps(dx, rx);
    dy = _mm256_mul_ps(dy, ry);
  }
  if (PAD != ZEROS) {
    __m256 cx, cy;
    ix = clip(ix, static_cast<float>(k.W - 1), &cx);
    iy = clip(iy, static_cast<float>(k.H - 1), &cy);
    dx = _mm256_mul_ps(dx, cx);
    dy = _mm256_mul_ps(dy, cy);
  }
  const __m256 limit = set1(static_cast<float>(1 << 30)), far = set1(-100.f);
  const __m256 negative_limit = _mm256_sub_ps(zero, limit);
  p.ix = select(_mm256_and_ps(_mm256_cmp_ps(ix, negative_limit, _CMP_GT_OQ), _mm256_cmp_ps(ix, limit, _CMP_LT_OQ)), ix, far);
  p.iy = select(_mm256_and_ps(_mm256_cmp_ps(iy, negative_limit, _CMP_GT_OQ), _mm256_cmp_ps(iy, limit, _CMP_LT_OQ)), iy, far);
  p.dx = dx;
  p.dy = dy;
  return p;
}

// the pixel nearest reads for 8 points at pixel coordinates (ix, iy), rounded half to even as
// ATen's std::nearbyint: its offset (0 where it is not read) and, in *v, the lanes that read it
// (inside the image and in `use`); the rounded coordinates are clamped to [-1, W] x [-1, H]
// first, so that the offset cannot overflow (unchanged where valid)
__attribute__((always_inline)) inline __m256i nearest8(__m256 ix, __m256 iy, __m256 use, const Constants<float>& k,
                                                       __m256* v) {
  const __m256 zero = _mm256_setzero_ps(), minus_one = set1(-1.f);
  const __m256 W = set1(static_cast<float>(k.W)), H = set1(static_cast<float>(k.H));
  const __m256 rx = _mm256_round_ps(ix, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 ry = _mm256_round_ps(iy, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 vx = _mm256_and_ps(_mm256_cmp_ps(rx, zero, _CMP_GE_OQ), _mm256_cmp_ps(rx, W, _CMP_LT_OQ));
  const __m256 vy = _mm256_and_ps(_mm256_cmp_ps(ry, zero, _CMP_GE_OQ), _mm256_cmp_ps(ry, H, _CMP_LT_OQ));
  *v = _mm256_and_ps(_mm256_and_ps(vx, vy), use);
  const __m256i cx = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(rx, minus_one), W));
  const __m256i cy = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(ry, minus_one), H));
  const __m256i o = _mm256_add_epi32(_mm256_mullo_epi32(cy, _mm256_set1_epi32(k.sh)),
                                     _mm256_mullo_epi32(cx, _mm256_set1_epi32(k.sw)));
  return _mm256_and_si256(o, _mm256_castps_si256(*v));
}

// the located points (and, bilinear, their corners c) written into the block at t0;
// returns whether a live point's location is not finite
template <int MODE>
__attribute__((always_inline)) inline bool keep8(const Located8& p, const Corners8& c, int64_t t0,
                                                 const Constants<float>& k, Block<float>& blk) {
  const __m256 zero = _mm256_setzero_ps(), one = set1(1.f);
  _mm256_storeu_ps(blk.bad + t0, _mm256_and_ps(p.bad, one));
  _mm256_storeu_ps(blk.dix + t0, MODE == NEAREST ? zero : p.dx);
  _mm256_storeu_ps(blk.diy + t0, MODE == NEAREST ? zero : p.dy);
  const __m256 use = _mm256_and_ps(p.live, p.finite);
  if (MODE == NEAREST) {
    __m256 v;
    const __m256i o = nearest8(p.ix, p.iy, use, k, &v);
    _mm256_storeu_ps(blk.w[0] + t0, _mm256_and_ps(p.live, one));
    _mm256_storeu_ps(blk.valid[0] + t0, _mm256_and_ps(v, one));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk.off[0] + t0), o);
    for (int q = 1; q < 4; ++q) {
      _mm256_storeu_ps(blk.w[q] + t0, zero);
      _mm256_storeu_ps(blk.valid[q] + t0, zero);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk.off[q] + t0), _mm256_setzero_si256());
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk.inner + t0), _mm256_setzero_si256());
    return _mm256_movemask_ps(p.bad) != 0;
  }
  _mm256_storeu_ps(blk.tx + t0, c.tx);
  _mm256_storeu_ps(blk.ty + t0, c.ty);
  const __m256 wl = _mm256_and_ps(p.live, one);  // padding weighs nothing
  for (int q = 0; q < 4; ++q) {
    _mm256_storeu_ps(blk.w[q] + t0, _mm256_mul_ps(c.w[q], wl));
    _mm256_storeu_ps(blk.valid[q] + t0, _mm256_and_ps(c.v[q], one));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk.off[q] + t0), _mm256_and_si256(c.off[q], _mm256_castps_si256(c.v[q])));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk.inner + t0), _mm256_castps_si256(_mm256_and_ps(c.v[0], c.v[3])));
  return _mm256_movemask_ps(p.bad) != 0;
}

// Eight points at normalised (gx, gy) strictly inside [0, W - 1) x [0, H - 1) (so finite,
// unpadded by zeros or border padding, with every corner inside): their corner-0 offsets and
// corner weights without the validity, padding and far-point stages, the same values as
// locate8 and corners8 compute for them. False where a point is not inside.
struct Inside8 {
  __m256i off0;
  __m256 w[4];
  __m256 ix, iy, tx, ty;  // (for the backward: the forward leaves them to the compiler to drop)
};

// BORDER: the image has a border of BORDER zero pixels on every side in memory (a bordered
// copy, see Bordered), so that points in [-BORDER, W - 1 + BORDER) x [-BORDER, H - 1 + BORDER)
// read all four corners too, the outer ones 0 as zeros padding gives them (the same values).
// UNIT: the width stride k.sw is 1 (the caller's layout), and the offsets skip its product; with
// exact_offsets they are computed in float instead of by vpmulld (10 cycles' latency on Intel):
// backward 1.02-1.06x, forward 1.04-1.10x at 256x1x28x28, 1.00-1.02x elsewhere (AVX-512 build;
// the AVX2 build 0.97-1.08x; A/B of the bare kernel, Intel Xeon, 2026-12-03). The same in
// corners8 (the edges) gave nothing more (0.97-1.04x).
template <int BORDER = 0, bool UNIT = false>
__attribute__((always_inline)) inline bool inside8_at(__m256 gx, __m256 gy, const Constants<float>& k, Inside8* p) {
  const __m256 low = set1(static_cast<float>(-BORDER)), one = set1(1.f);
  const __m256 ix = _mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(gx, one), set1(k.ax)), set1(k.bx));
  const __m256 iy = _mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(gy, one), set1(k.ay)), set1(k.by));
  const __m256 inside = _mm256_and_ps(
      _mm256_and_ps(_mm256_cmp_ps(ix, low, _CMP_GE_OQ), _mm256_cmp_ps(ix, set1(static_cast<float>(k.W - 1 + BORDER)), _CMP_LT_OQ)),
      _mm256_and_ps(_mm256_cmp_ps(iy, low, _CMP_GE_OQ), _mm256_cmp_ps(iy, set1(static_cast<float>(k.H - 1 + BORDER)), _CMP_LT_OQ)));
  if (_mm256_movemask_ps(inside) != 0xff) return false;
  const __m256 fx = _mm256_floor_ps(ix), fy = _mm256_floor_ps(iy);
  const __m256 tx = _mm256_sub_ps(ix, fx), ty = _mm256_sub_ps(iy, fy);
  if (UNIT && k.exact_offsets) {  // fy * sh + fx in float: exact integers
    p->off0 = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(fy, set1(static_cast<float>(k.sh))), fx));
  } else {
    const __m256i cx = _mm256_cvttps_epi32(fx);
    p->off0 = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_cvttps_epi32(fy), _mm256_set1_epi32(k.sh)),
                               UNIT ? cx : _mm256_mullo_epi32(cx, _mm256_set1_epi32(k.sw)));
  }
  const __m256 rx = _mm256_sub_ps(one, tx), ry = _mm256_sub_ps(one, ty);
  p->w[0] = _mm256_mul_ps(rx, ry);
  p->w[1] = _mm256_mul_ps(tx, ry);
  p->w[2] = _mm256_mul_ps(rx, ty);
  p->w[3] = _mm256_mul_ps(tx, ty);
  p->ix = ix;
  p->iy = iy;
  p->tx = tx;
  p->ty = ty;
  return true;
}

template <int PAD, int MODE>
__attribute__((always_inline)) inline bool place8(__m256 gx, __m256 gy, int64_t t0, int64_t n,
                                                  const Constants<float>& k, Block<float>& blk) {
  const Located8 p = locate8<PAD>(gx, gy, t0, n, k);
  Corners8 c;
  if (MODE != NEAREST) c = corners8(p.ix, p.iy, _mm256_and_ps(p.live, p.finite), k);
  return keep8<MODE>(p, c, t0, k, blk);
}
}  // namespace avx
#endif

// loop A: where the n points of the block starting at (b, i, j0) read, and their corners;
// entries up to whole_vectors(n) are padding. Each stage runs over one vector of points
// at a time (a loop of a constant trip count, which the compiler turns into vector code
// without remainder loops).
template <typename T, int LOC, int PAD, int MODE>
inline void locate(const Locator<T, LOC>& loc, const Constants<T>& k, int64_t b, const Span& span, Block<T>& blk) {
  constexpr int L = LANES<T>;
  const int64_t n = span.n, nn = whole_vectors(n, L);
  if (LOC == GRID) {
    const T* p = loc.grid + (b * k.Ho * k.Wo + span.p0) * 2;
    for (int64_t t = 0; t < n; ++t) {
      blk.gx[t] = p[2 * t];
      blk.gy[t] = p[2 * t + 1];
    }
    for (int64_t t = n; t < nn; ++t) blk.gx[t] = blk.gy[t] = 0;
  }
  const T* m = LOC == GRID ? nullptr : loc.matrix(b);
  // x per point (padded: finite values up to nn); y per row, or per point where rows are packed
  const T* __restrict xs = LOC == GRID ? nullptr : loc.packed ? loc.px + span.p0 : loc.xs + span.j0;
  const T* __restrict ys = LOC == GRID || !loc.packed ? nullptr : loc.py + span.p0;
  const T y = LOC == GRID || loc.packed ? T(0) : loc.ys[span.i];
  const T cx = LOC == GRID ? T(0) : m[1] * y + m[2], cy = LOC == GRID ? T(0) : m[4] * y + m[5];
  const T cw = LOC == PROJECTIVE ? m[7] * y + m[8] : T(1), eps = loc.eps;
  const T m0 = LOC == GRID ? T(0) : m[0], m3 = LOC == GRID ? T(0) : m[3], m6 = LOC == PROJECTIVE ? m[6] : T(0);
  const T limit = static_cast<T>(1 << 30);
  const T high_x = static_cast<T>(k.W - 1), high_y = static_cast<T>(k.H - 1);
  const int32_t W32 = static_cast<int32_t>(k.W), H32 = static_cast<int32_t>(k.H), sh = k.sh, sw = k.sw;
  const int32_t live_end = static_cast<int32_t>(n);
  int32_t any_bad = 0;
#ifdef TORCHSTN_AVX2
  if constexpr (std::is_same_v<T, float> && LOC != PROJECTIVE) {
    for (int64_t t0 = 0; t0 < nn; t0 += L) {
      __m256 gx, gy;
      if (LOC == AFFINE) {
        const __m256 xv = _mm256_loadu_ps(xs + t0);
        __m256 rx = _mm256_set1_ps(cx), ry = _mm256_set1_ps(cy);  // the row's part: m1 y + m2, m4 y + m5
        if (ys) {
          const __m256 yv = _mm256_loadu_ps(ys + t0);
          rx = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(m[1]), yv), _mm256_set1_ps(m[2]));
          ry = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(m[4]), yv), _mm256_set1_ps(m[5]));
        }
        gx = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(m0), xv), rx);
        gy = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(m3), xv), ry);
      } else {
        gx = _mm256_loadu_ps(blk.gx + t0);
        gy = _mm256_loadu_ps(blk.gy + t0);
      }
      any_bad |= avx::place8<PAD, MODE>(gx, gy, t0, n, k, blk);
    }
    blk.any_bad = any_bad;
    return;
  }
#endif
  // the portable loops (and double): one stage at a time over the block, each a simple loop
  // the compiler vectorises for the target. First the row's part of each location (m1 y +
  // m2, m4 y + m5, m7 y + m8), then the column's
  if (LOC != GRID) {
    if (ys) {
      for (int64_t t = 0; t < nn; ++t) {
        blk.gx[t] = m[1] * ys[t] + m[2];
        blk.gy[t] = m[4] * ys[t] + m[5];
        if (LOC == PROJECTIVE) blk.g[t] = m[7] * ys[t] + m[8];
      }
    } else {
      for (int64_t t = 0; t < nn; ++t) {
        blk.gx[t] = cx;
        blk.gy[t] = cy;
        if (LOC == PROJECTIVE) blk.g[t] = cw;
      }
    }
  }
  if (LOC == AFFINE) {
    for (int64_t t = 0; t < nn; ++t) {
      blk.gx[t] = m0 * xs[t] + blk.gx[t];
      blk.gy[t] = m3 * xs[t] + blk.gy[t];
    }
  } else if (LOC == PROJECTIVE) {
    for (int64_t t = 0; t < nn; ++t) {
      T w = m6 * xs[t] + blk.g[t];
      // torchstn's guard: |w| >= eps, sign kept, w = 0 counts as positive
      const bool keep = !(std::fabs(w) < eps);
      w = keep ? w : (w < 0 ? -eps : eps);
      blk.keep[t] = keep ? T(1) : T(0);
      blk.g[t] = w;
      blk.gx[t] = (m0 * xs[t] + blk.gx[t]) / w;
      blk.gy[t] = (m3 * xs[t] + blk.gy[t]) / w;
    }
  }
  // v - v is 0 for finite v only (no fast-math here); a non-finite location reads no pixel
  // (border padding would clip +-Inf) and gives NaN. blk.inner holds "a live, finite point"
  // until the last stage.
  for (int64_t t = 0; t < nn; ++t) {
    const T gx = blk.gx[t], gy = blk.gy[t];
    const int32_t live = static_cast<int32_t>(t) < live_end;
    const int32_t finite = (gx - gx == 0) & (gy - gy == 0);
    const int32_t bad = live & (finite ^ 1);
    any_bad |= bad;
    blk.bad[t] = static_cast<T>(bad);
    blk.inner[t] = live & finite;
  }
  for (int64_t t = 0; t < nn; ++t) {
    T ix = (blk.gx[t] + 1) * k.ax - k.bx;
    T iy = (blk.gy[t] + 1) * k.ay - k.by;
    T dx = k.ax, dy = k.ay;
    if (PAD == REFLECTION) {
      T rx, ry;
      ix = reflect(ix, k.low, k.span_x, &rx);
      iy = reflect(iy, k.low, k.span_y, &ry);
      dx *= rx;
      dy *= ry;
    }
    if (PAD != ZEROS) {
      T clx, cly;
      ix = clip(ix, high_x, &clx);
      iy = clip(iy, high_y, &cly);
      dx *= clx;
      dy *= cly;
    }
    // far outside or not a number: a point no corner of which is inside the image
    blk.tx[t] = (ix > -limit && ix < limit) ? ix : T(-100);
    blk.ty[t] = (iy > -limit && iy < limit) ? iy : T(-100);
    blk.dix[t] = MODE == NEAREST ? T(0) : dx;
    blk.diy[t] = MODE == NEAREST ? T(0) : dy;
  }
  if (MODE == NEAREST) {
    for (int64_t t = 0; t < nn; ++t) {  // rounding half to even, as ATen's std::nearbyint
      int32_t x0 = static_cast<int32_t>(std::nearbyint(blk.tx[t]));
      int32_t y0 = static_cast<int32_t>(std::nearbyint(blk.ty[t]));
      const int32_t v = (x0 >= 0) & (x0 < W32) & (y0 >= 0) & (y0 < H32) & blk.inner[t];
      x0 = x0 < -1 ? -1 : (x0 > W32 ? W32 : x0);  // (an offset that cannot overflow)
      y0 = y0 < -1 ? -1 : (y0 > H32 ? H32 : y0);
      blk.w[0][t] = static_cast<int32_t>(t) < live_end ? T(1) : T(0);
      blk.valid[0][t] = static_cast<T>(v);
      blk.off[0][t] = v * (y0 * sh + x0 * sw);
      for (int q = 1; q < 4; ++q) {
        blk.w[q][t] = blk.valid[q][t] = T(0);
        blk.off[q][t] = 0;
      }
      blk.inner[t] = 0;
    }
    blk.any_bad = any_bad;
    return;
  }
  for (int64_t t = 0; t < nn; ++t) {  // int32 throughout, so that it vectorises
    const T ix = blk.tx[t], iy = blk.ty[t];
    int32_t x0 = static_cast<int32_t>(ix), y0 = static_cast<int32_t>(iy);
    x0 -= static_cast<int32_t>(ix < static_cast<T>(x0));  // floor
    y0 -= static_cast<int32_t>(iy < static_cast<T>(y0));
    const T tx = ix - static_cast<T>(x0), ty = iy - static_cast<T>(y0);
    blk.tx[t] = tx;
    blk.ty[t] = ty;
    const int32_t use = blk.inner[t];
    const int32_t vx0 = (x0 >= 0) & (x0 < W32), vx1 = (x0 >= -1) & (x0 < W32 - 1);
    const int32_t vy0 = ((y0 >= 0) & (y0 < H32)) & use, vy1 = ((y0 >= -1) & (y0 < H32 - 1)) & use;
    const int32_t v0 = vx0 & vy0, v1 = vx1 & vy0, v2 = vx0 & vy1, v3 = vx1 & vy1;
    // clamped to [-1, W] x [-1, H] so that the offset cannot overflow (unchanged for valid corners)
    const int32_t cx0 = x0 < -1 ? -1 : (x0 > W32 ? W32 : x0), cy0 = y0 < -1 ? -1 : (y0 > H32 ? H32 : y0);
    const int32_t o = cy0 * sh + cx0 * sw;
    const T wl = static_cast<int32_t>(t) < live_end ? T(1) : T(0);  // padding weighs nothing
    blk.w[0][t] = (1 - tx) * (1 - ty) * wl;
    blk.w[1][t] = tx * (1 - ty) * wl;
    blk.w[2][t] = (1 - tx) * ty * wl;
    blk.w[3][t] = tx * ty * wl;
    blk.valid[0][t] = static_cast<T>(v0);
    blk.valid[1][t] = static_cast<T>(v1);
    blk.valid[2][t] = static_cast<T>(v2);
    blk.valid[3][t] = static_cast<T>(v3);
    blk.off[0][t] = v0 * o;
    blk.off[1][t] = v1 * (o + sw);
    blk.off[2][t] = v2 * (o + sh);
    blk.off[3][t] = v3 * (o + sh + sw);
    blk.inner[t] = v0 & v3;
  }
  blk.any_bad = any_bad;
}

// ------------------------------------------------------------------------------------------
// the passes

// the four corner values v[q] of the vector of points at t in channel xc (0 for corners
// outside); where all of them lie inside and a row's two pixels are neighbours in memory
// (width stride 1), each row's pair is read at once
template <typename T>
inline void corners(const T* xc, const Block<T>& blk, int64_t t, int32_t sh, bool unit_stride, typename Simd<T>::V* v) {
  using S = Simd<T>;
  if (unit_stride && S::all(blk.inner + t)) {
    S::pairs(xc, &blk.off[0][t], &v[0], &v[1]);
    S::pairs(xc + sh, &blk.off[0][t], &v[2], &v[3]);
  } else {
    for (int q = 0; q < 4; ++q) v[q] = S::gather(xc, &blk.off[q][t], &blk.valid[q][t]);
  }
}

// Below this many output values (ATen's grain size, at::internal::GRAIN_SIZE) a call runs on
// the calling thread, as torch's own kernels do: an OpenMP region's fixed cost is most of a
// small call, and GNU OpenMP's thread team does not survive fork(): a process forked after a
// warp at two threads (multiprocessing's default start on Linux) waited forever in its first
// small warp, where F.grid_sample returns. (csrc/fused_warp3d.cpp has the same rule.)
constexpr int64_t kSerialBelow = 32768;

// body(i) for i in [0, n), split statically over threads; one thread enters no OpenMP
// region (its fixed cost is most of a small call)
template <typename F>
void parallel_for(int64_t n, int threads, const F& body) {
  if (threads > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

// the values of the vector of points at t in channel xc: sum_q w_q v_q over the corners, in
// this order (NEAREST: the pixel read); NaN where the location is not finite
// Every path blends a point's four corners the same way: v0 w0, then v1 w1, v2 w2 and v3 w3
// added in turn by fused multiply-adds (each product added with one rounding), so that every
// path, build and layout gives the same bits. Against a product and a sum each rounded, as
// F.grid_sample's CPU loops do (and this kernel did until 2026-12-06): outputs within 2e-7 of
// the largest value, forward 1.02-1.06x at 28-224 px and channels_last 1x3x224x224, 1.11-1.15x
// channels_last with 2 and 4 channels, the backward level (A/B of the bare kernel, 11-31
// rounds; Intel Xeon with AVX-512, 2026-12-06).
template <typename T, int MODE>
inline typename Simd<T>::V interpolate(const T* xc, const Block<T>& blk, int64_t t, int32_t sh, bool unit_stride) {
  using S = Simd<T>;
  typename S::V r;
  if (MODE == NEAREST) {
    r = S::gather(xc, &blk.off[0][t], &blk.valid[0][t]);
  } else {
    typename S::V v[4];
    corners(xc, blk, t, sh, unit_stride, v);
    r = S::mul(v[0], S::load(&blk.w[0][t]));
    for (int q = 1; q < 4; ++q) r = S::fmadd(v[q], S::load(&blk.w[q][t]), r);
  }
  return blk.any_bad ? S::nan_where(r, blk.bad + t) : r;
}

#ifdef TORCHSTN_AVX2
// The channels of a vector of eight points whose four corners all lie inside the image
// (corner-0 offsets off0, weights w): if the eight corner-0 offsets lie within 15 elements
// after the first lane's (`window`), two 8-wide loads per corner row and permutes; else pairs.
// Built with AVX-512 (where torch runs it), a corner is one two-source permute instead of
// two permutes and a blend: 1.045x forward at 1x3x224x224 and 64x3x64x64 on top of the
// 1.07-1.11x the AVX-512 build itself gives (A/B of the bare kernel, bit-identical).
// In the AVX2 build, for WIDE rows (see inside8_of), the eight offsets d in [0, 7] (a scale of
// about 1 or less along the row, no input row crossed): each corner row is read as an 8-wide
// load at the first lane's corner and one an element on, each permuted once, without the
// window's second loads and blends (the same values): 1.15-1.26x forward at 1x1x224x224 and
// 1x3x224x224, θ the identity + 0.05 N(0, 1) (A/B of the bare kernel, Zen 3). Always inlined:
// called as a function (GCC's choice until 2026-12-03), its weights went through memory and
// the call cost about as much as the reads: 1.25x forward at 1x1x224x224 and 1x3x224x224.
// Where d is 0, 1, ..., 7 (eight neighbouring pixels: a scale of 1, as at the identity or a
// translation, or near it) the loads are the corners, unpermuted: 1.05x / 1.13x at 1x1x224x224
// / 1x3x224x224 with θ the identity + 0.05 N(0, 1), 1.18x at the identity, 1.0x at 0.1 N(0, 1).
// Not in the AVX-512 build, whose two-source permute reads a window as fast: both paths there
// ran 0.88x at 64x3x64x64 and 0.96x at 1x3x224x224 (2026-12-03, Intel Xeon, bare kernel). Nor
// does a vector crossing one input row read three rows' windows there (two permutes and a
// blend per corner, instead of pairs): 0.80x at 256x1x28x28, 0.91x at 1x3x224x224. Nor, where
// the offsets span 16-31 elements (eight points two pixels apart, as at 60x60 -> 30x30), 32-float
// windows (two 16-wide loads per row, one 16-wide two-source permute per corner) instead of
// pairs: 0.90x / 0.94x at 256x1x60x60->30x30 / 256x3x60x60->30x30, 0.92x at 256x1x28x28 (the
// test's cost), the rest level (2026-12-06, Intel Xeon, bare kernel).
template <bool WIDE>
__attribute__((always_inline)) inline void inside8(const float* xb, int64_t xc_step, float* o, int64_t oc_step,
                                                   int64_t C, __m256i off0, const __m256 w[4], int64_t sh,
                                                   int64_t end) {
  using S = Simd<float>;
  const __m256i fifteen = _mm256_set1_epi32(15), one = _mm256_set1_epi32(1);
  const int32_t base = _mm256_cvtsi256_si32(off0);
  const __m256i d = _mm256_sub_epi32(off0, _mm256_set1_epi32(base)), d1 = _mm256_add_epi32(d, one);
#ifndef __AVX512VL__
  if (WIDE && _mm256_testz_si256(d, _mm256_set1_epi32(~7)) && base + sh + 9 <= end) {  // every d in [0, 7]
    // d = 0, 1, ..., 7 (eight neighbouring pixels): the loads are the corners
    const bool run = _mm256_testc_si256(_mm256_cmpeq_epi32(d, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                                        _mm256_set1_epi32(-1));
    const auto corner = [&](const float* p) {
      return run ? _mm256_loadu_ps(p) : _mm256_permutevar8x32_ps(_mm256_loadu_ps(p), d);
    };
    for (int64_t ch = 0; ch < C; ++ch) {
      const float* r = xb + ch * xc_step + base;
      const __m256 v0 = corner(r), v1 = corner(r + 1), v2 = corner(r + sh), v3 = corner(r + sh + 1);
      __m256 acc = _mm256_mul_ps(v0, w[0]);
      acc = _mm256_fmadd_ps(v1, w[1], acc);
      acc = _mm256_fmadd_ps(v2, w[2], acc);
      acc = _mm256_fmadd_ps(v3, w[3], acc);
      _mm256_storeu_ps(o + ch * oc_step, acc);
    }
    return;
  }
#endif
  const bool window = base + sh + 16 <= end &&
                      _mm256_testz_si256(_mm256_or_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), d),
                                                         _mm256_cmpgt_epi32(d1, fifteen)),
                                         _mm256_set1_epi32(-1));
#ifndef __AVX512VL__  // (the AVX2 build's blends: which lanes come from the second 8-wide load)
  const __m256i seven = _mm256_set1_epi32(7);
  const __m256 hi0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(d, seven));
  const __m256 hi1 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(d1, seven));
#endif
  alignas(32) int32_t off[8];
  if (!window) _mm256_store_si256(reinterpret_cast<__m256i*>(off), off0);
  for (int64_t ch = 0; ch < C; ++ch) {
    const float* xc = xb + ch * xc_step;
    __m256 v[4];
    if (window) {
      const float* r = xc + base;
      const __m256 a0 = _mm256_loadu_ps(r), b0 = _mm256_loadu_ps(r + 8);
      const __m256 a1 = _mm256_loadu_ps(r + sh), b1 = _mm256_loadu_ps(r + sh + 8);
#ifdef __AVX512VL__  // one two-source permute per corner (vpermt2ps reads the low 4 bits of each index)
      v[0] = _mm256_permutex2var_ps(a0, d, b0);
      v[1] = _mm256_permutex2var_ps(a0, d1, b0);
      v[2] = _mm256_permutex2var_ps(a1, d, b1);
      v[3] = _mm256_permutex2var_ps(a1, d1, b1);
#else  // (vpermps reads the low 3 bits of each index)
      v[0] = _mm256_blendv_ps(_mm256_permutevar8x32_ps(a0, d), _mm256_permutevar8x32_ps(b0, d), hi0);
      v[1] = _mm256_blendv_ps(_mm256_permutevar8x32_ps(a0, d1), _mm256_permutevar8x32_ps(b0, d1), hi1);
      v[2] = _mm256_blendv_ps(_mm256_permutevar8x32_ps(a1, d), _mm256_permutevar8x32_ps(b1, d), hi0);
      v[3] = _mm256_blendv_ps(_mm256_permutevar8x32_ps(a1, d1), _mm256_permutevar8x32_ps(b1, d1), hi1);
#endif
    } else {
      S::pairs(xc, off, &v[0], &v[1]);
      S::pairs(xc + sh, off, &v[2], &v[3]);
    }
    __m256 r = _mm256_mul_ps(v[0], w[0]);
    for (int q = 1; q < 4; ++q) r = _mm256_fmadd_ps(v[q], w[q], r);
    _mm256_storeu_ps(o + ch * oc_step, r);
  }
}

// Where a span's points sample (normalised x and y), eight at a time: from θ (`m`) and a
// row's x (`xs`) and y (ROW), from θ and each point's x and y (`xs`, `ys`: PACKED rows), or
// read from a grid's (x, y) pairs (`xs`: GRID_PAIRS, the last vector's pairs past n read as 0).
// θ is affine rows, or with LOC = PROJECTIVE a homography: its w guarded (|w| >= eps, sign
// kept, 0 counting as positive) and divided by, the same operations in the same order as
// locate's portable loop, so the same values. θ is copied into the object, which the single
// passes hold in registers (the output's float stores may alias it).
enum Source { ROW, PACKED, GRID_PAIRS };

// inside8 for the points of a span from SOURCE: wide rows (ROW, GRID_PAIRS) have it inlined,
// with its path for d in [0, 7]; packed rows, where that path rarely applies (their vectors
// span two rows), call it as a function of its own, which GCC may inline or not, as before
// (inlined with that path: 0.92x / 0.83x forward at 256x1x28x28 and 256x1x60x60->30x30)
inline void inside8_packed(const float* xb, int64_t xc_step, float* o, int64_t oc_step, int64_t C, __m256i off0,
                           const __m256 w[4], int64_t sh, int64_t end) {
  inside8<false>(xb, xc_step, o, oc_step, C, off0, w, sh, end);
}

template <int SOURCE>
__attribute__((always_inline)) inline void inside8_of(const float* xb, int64_t xc_step, float* o, int64_t oc_step,
                                                      int64_t C, __m256i off0, const __m256 w[4], int64_t sh,
                                                      int64_t end) {
  if constexpr (SOURCE == PACKED) {
    inside8_packed(xb, xc_step, o, oc_step, C, off0, w, sh, end);
  } else {
    inside8<true>(xb, xc_step, o, oc_step, C, off0, w, sh, end);
  }
}

template <int SOURCE, int LOC = AFFINE>
struct Locations8 {
  float m0, m1, m2, m3, m4, m5, m6, m7, m8, cx, cy, cw, eps;
  const float *xs, *ys;
  int64_t n;

  Locations8(const float* m, const float* xs_, const float* ys_, float y, int64_t n_, float eps_ = 0.f)
      : m0(m ? m[0] : 0.f), m1(m ? m[1] : 0.f), m2(m ? m[2] : 0.f),
        m3(m ? m[3] : 0.f), m4(m ? m[4] : 0.f), m5(m ? m[5] : 0.f),
        m6(LOC == PROJECTIVE ? m[6] : 0.f), m7(LOC == PROJECTIVE ? m[7] : 0.f), m8(LOC == PROJECTIVE ? m[8] : 1.f),
        cx(m1 * y + m2), cy(m4 * y + m5), cw(m7 * y + m8), eps(eps_), xs(xs_), ys(ys_), n(n_) {}

  // (KEEP, for the backward of a homography: also its guarded w and 1 where the guard is off;
  // AHEAD, for the forward's single passes and nearest_pass: a grid's pairs 512 points (4 KB)
  // past t0 fetched into L1, where the hardware prefetcher alone fell behind that stream once
  // the batch left L2: float32 256x1x28x28 on a grid (3.2 MB read and written) bilinear forward
  // 1.09-1.11x on an Intel Xeon with 2 MB of L2, 1.03-1.04x at 1024x1x28x28 (2 KB or 8 KB ahead
  // 1.08-1.10x at 256x1x28x28), 1.00-1.02x at the other sizes; nearest 1.24x at 256x1x28x28,
  // 1.14x at 1024x1x28x28, 1.02-1.03x at 64x1x28x28 and 64x3x64x64 (A/B of the bare kernel,
  // --grid, 2026-12-06, one training on the other core). In the backward 0.965x at
  // 256x1x28x28, so not there. The same prefetch issued by the single pass before this call
  // instead of here measured 1.01-1.03x (not understood). Other streams fetched ahead did not
  // pay: each next sample's input at its first span in the packed rows' pass (1.02x), their
  // output lines for writing 2 KB ahead (prefetchw, 0.96-0.97x at 64-256x1x28x28), the
  // backward's grad_out 4 KB ahead (0.96-0.98x at 256x1x28x28, 64x3x64x64, 1x3x224x224))
  template <bool KEEP = false, bool AHEAD = false>
  inline void at(int64_t t0, __m256* gx, __m256* gy, __m256* w_out = nullptr, __m256* keep_out = nullptr) const {
    using S = Simd<float>;
    if (SOURCE == GRID_PAIRS) {  // x0 y0 x1 y1 ... x7 y7
      if constexpr (AHEAD) _mm_prefetch(reinterpret_cast<const char*>(xs + 2 * t0 + 1024), _MM_HINT_T0);
      const __m256 a = S::load_upto(xs + 2 * t0, 2 * (n - t0)), b = S::load_upto(xs + 2 * t0 + 8, 2 * (n - t0) - 8);
#ifdef __AVX512VL__  // one two-source permute each: grids 1.00-1.04x (A/B of the bare kernel, --grid, 2026-12-03)
      *gx = _mm256_permutex2var_ps(a, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), b);
      *gy = _mm256_permutex2var_ps(a, _mm256_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15), b);
#else
      *gx = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xd8));
      *gy = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd)), 0xd8));
#endif
      return;
    }
    const __m256 xv = _mm256_loadu_ps(xs + t0);
    // the row's part, or per point where rows are packed
    __m256 rx = avx::set1(cx), ry = avx::set1(cy), rw = avx::set1(cw);
    if (SOURCE == PACKED) {
      const __m256 yv = _mm256_loadu_ps(ys + t0);
      rx = _mm256_add_ps(_mm256_mul_ps(avx::set1(m1), yv), avx::set1(m2));
      ry = _mm256_add_ps(_mm256_mul_ps(avx::set1(m4), yv), avx::set1(m5));
      if (LOC == PROJECTIVE) rw = _mm256_add_ps(_mm256_mul_ps(avx::set1(m7), yv), avx::set1(m8));
    }
    *gx = _mm256_add_ps(_mm256_mul_ps(avx::set1(m0), xv), rx);
    *gy = _mm256_add_ps(_mm256_mul_ps(avx::set1(m3), xv), ry);
    if (LOC == PROJECTIVE) {
      const __m256 raw = _mm256_add_ps(_mm256_mul_ps(avx::set1(m6), xv), rw);
      // |w| < eps (false for NaN, which stays), replaced by eps with w's sign
      const __m256 guard = _mm256_cmp_ps(_mm256_andnot_ps(avx::set1(-0.f), raw), avx::set1(eps), _CMP_LT_OQ);
      const __m256 sign = avx::select(_mm256_cmp_ps(raw, _mm256_setzero_ps(), _CMP_LT_OQ), avx::set1(-eps), avx::set1(eps));
      const __m256 w = avx::select(guard, sign, raw);
      *gx = _mm256_div_ps(*gx, w);
      *gy = _mm256_div_ps(*gy, w);
      if constexpr (KEEP) {
        *w_out = w;
        *keep_out = _mm256_andnot_ps(guard, avx::set1(1.f));
      }
    }
  }
};

#ifdef __AVX512F__
// sixteen points of a wide affine or homography row (Locations8's ROW arithmetic, inside8_at's after it)
constexpr int32_t kRows16 = 2;

struct Row16 {
  __m512 ix, iy, fx, fy;
  __m512i dx;        // each point's corner-0 column minus the leftmost's
  __m512i dy;        // each point's corner-0 row minus the topmost's
  __mmask16 lower;   // the points whose corner-0 row is below the topmost's
  int32_t span;      // the largest dy
  __mmask16 valid[4];  // (EDGE) the points whose corner 0-3 lies inside the image
  int32_t x0, y0;    // the leftmost corner-0 column, the topmost row

  // inside8_at's weights of corners 0-3
  __attribute__((always_inline)) inline void weights(__m512* w) const {
    const __m512 one = _mm512_set1_ps(1.f);
    const __m512 tx = _mm512_sub_ps(ix, fx), ty = _mm512_sub_ps(iy, fy);
    const __m512 rx = _mm512_sub_ps(one, tx), ry = _mm512_sub_ps(one, ty);
    w[0] = _mm512_mul_ps(rx, ry);
    w[1] = _mm512_mul_ps(tx, ry);
    w[2] = _mm512_mul_ps(rx, ty);
    w[3] = _mm512_mul_ps(tx, ty);
  }
};

// what row16_at and the sixteen-point paths found: the points fit, or some lie outside the
// image (zeros padding then tries the EDGE path), or they spread over too many rows or columns;
// and (locate16, zeros padding) no corner of any point inside the image: the vector is 0
enum Fit16 { FITS, OUTSIDE, SPREAD, BLANK };

// a homography row's guarded w at its points xv (Locations8's guard, sixteen wide: |w| >= eps,
// the sign kept, 0 counting as positive), from raw = m6 x + cw
__attribute__((always_inline)) inline __m512 row16_guarded(const Locations8<ROW, PROJECTIVE>& where, __m512 raw) {
  const __m512 eps = _mm512_set1_ps(where.eps);
  const __mmask16 guard = _mm512_cmp_ps_mask(_mm512_abs_ps(raw), eps, _CMP_LT_OQ);
  const __mmask16 negative = _mm512_cmp_ps_mask(raw, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_blend_ps(guard, raw, _mm512_mask_blend_ps(negative, eps, _mm512_set1_ps(-where.eps)));
}

// whether a homography row's sixteen points move monotonically, so that row16_at finds their
// extremes in the first and last lanes (an affine row's always do; a homography's up to its
// rounding, which row16_fit checks lane by lane): where its raw w keeps one
// sign over them, outside the guard (no pole between them). Homographies' rows through
// row16_at (inside16, inside16_rgb): forward 1.23x at 1x3x224x224, 1.28x channels_last, 1.30x
// at 32x3x224x224 (1.10x channels_last), 1.07-1.09x at 64x3x64x64, the affine cases level
// (0.99-1.01x; A/B of the bare kernel, the same bits, Zen 4, 2026-12-06). Their extremes found
// by reductions instead of this test ran 1.10x / 1.15x at 1x3x224x224; and the first version
// of this change, which rewrote row16_at's affine arithmetic in place, compiled the affine
// channels_last pass 0.94-0.96x slower (the same instructions, allocated otherwise).
__attribute__((always_inline)) inline bool row16_monotonic(const Locations8<ROW, PROJECTIVE>& where, __m512 raw) {
  return _mm512_cmp_ps_mask(raw, _mm512_set1_ps(where.eps), _CMP_GE_OQ) == 0xffff ||
         _mm512_cmp_ps_mask(raw, _mm512_set1_ps(-where.eps), _CMP_LE_OQ) == 0xffff;
}

// whether the sixteen points from t0 lie strictly inside [0, W - 1) x [0, H - 1) (else OUTSIDE)
// with their corner-0 pixels at most `columns` columns right of the leftmost and `rows` rows
// below the topmost (else SPREAD).
// EDGE: points anywhere within 2^30 of the image instead (finite; else SPREAD), each corner's
// validity as corners8 has it (zeros padding), the corner-0 pixels clamped to [-1, W - 1] x
// [-1, H - 1] (the clamp moves only points whose corners all lie outside) before the columns
// and rows are counted.
// row16_at is made of two steps, so that locate16 tests one location with and without EDGE:
// row16_located writes the points' ix and iy (false where a homography's row is not monotonic
// there: SPREAD), row16_fit does the rest.
template <int LOC>
__attribute__((always_inline)) inline bool row16_located(const Locations8<ROW, LOC>& where, int64_t t0,
                                                        const Constants<float>& k, Row16* r) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 xv = _mm512_loadu_ps(where.xs + t0);
  __m512 gx = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(where.m0), xv), _mm512_set1_ps(where.cx));
  __m512 gy = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(where.m3), xv), _mm512_set1_ps(where.cy));
  if constexpr (LOC == PROJECTIVE) {  // (divided by the guarded w, as Locations8 divides)
    const __m512 raw = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(where.m6), xv), _mm512_set1_ps(where.cw));
    if (!row16_monotonic(where, raw)) return false;
    const __m512 w = row16_guarded(where, raw);
    gx = _mm512_div_ps(gx, w);
    gy = _mm512_div_ps(gy, w);
  }
  r->ix = _mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(gx, one), _mm512_set1_ps(k.ax)), _mm512_set1_ps(k.bx));
  r->iy = _mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(gy, one), _mm512_set1_ps(k.ay)), _mm512_set1_ps(k.by));
  return true;
}

// the points whose ix and iy are finite and within 2^30 of the image (NaN compares false: not near)
__attribute__((always_inline)) inline __mmask16 row16_near(const Row16& r) {
  const __m512 limit = _mm512_set1_ps(static_cast<float>(1 << 30));
  return _mm512_cmp_ps_mask(_mm512_abs_ps(r.ix), limit, _CMP_LT_OQ) &
         _mm512_cmp_ps_mask(_mm512_abs_ps(r.iy), limit, _CMP_LT_OQ);
}

template <bool EDGE, int LOC>
__attribute__((always_inline)) inline Fit16 row16_fit(const Constants<float>& k, int32_t columns, int32_t rows,
                                                     Row16* r) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 W1 = _mm512_set1_ps(static_cast<float>(k.W - 1)), H1 = _mm512_set1_ps(static_cast<float>(k.H - 1));
  __m512i cx, cy;
  if constexpr (EDGE) {
    const __m512 minus_one = _mm512_set1_ps(-1.f);
    if (row16_near(*r) != 0xffff) return SPREAD;
    r->fx = _mm512_floor_ps(r->ix);
    r->fy = _mm512_floor_ps(r->iy);
    const __m512 W = _mm512_set1_ps(static_cast<float>(k.W)), H = _mm512_set1_ps(static_cast<float>(k.H));
    const __mmask16 vx0 = _mm512_cmp_ps_mask(r->fx, zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(r->fx, W, _CMP_LT_OQ);
    const __mmask16 vx1 = _mm512_cmp_ps_mask(r->fx, minus_one, _CMP_GE_OQ) & _mm512_cmp_ps_mask(r->fx, W1, _CMP_LT_OQ);
    const __mmask16 vy0 = _mm512_cmp_ps_mask(r->fy, zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(r->fy, H, _CMP_LT_OQ);
    const __mmask16 vy1 = _mm512_cmp_ps_mask(r->fy, minus_one, _CMP_GE_OQ) & _mm512_cmp_ps_mask(r->fy, H1, _CMP_LT_OQ);
    r->valid[0] = vx0 & vy0;
    r->valid[1] = vx1 & vy0;
    r->valid[2] = vx0 & vy1;
    r->valid[3] = vx1 & vy1;
    cx = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(r->fx, minus_one), W1));
    cy = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(r->fy, minus_one), H1));
  } else {
    const __mmask16 inside = _mm512_cmp_ps_mask(r->ix, zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(r->ix, W1, _CMP_LT_OQ) &
                             _mm512_cmp_ps_mask(r->iy, zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(r->iy, H1, _CMP_LT_OQ);
    if (inside != 0xffff) return OUTSIDE;
    // (at or right of 0, the floor is the truncation, and the truncation back as a float the floor)
    cx = _mm512_cvttps_epi32(r->ix);
    cy = _mm512_cvttps_epi32(r->iy);
    r->fx = _mm512_cvtepi32_ps(cx);
    r->fy = _mm512_cvtepi32_ps(cy);
  }
  // the row's points move monotonically: the first and last lanes hold the extremes
  const auto last = [](__m512i v) { return _mm_extract_epi32(_mm512_extracti32x4_epi32(v, 3), 3); };
  r->x0 = std::min(_mm_cvtsi128_si32(_mm512_castsi512_si128(cx)), last(cx));
  const int32_t first_y = _mm_cvtsi128_si32(_mm512_castsi512_si128(cy)), last_y = last(cy);
  r->y0 = std::min(first_y, last_y);
  r->span = std::max(first_y, last_y) - r->y0;
  r->dx = _mm512_sub_epi32(cx, _mm512_set1_epi32(r->x0));
  r->dy = _mm512_sub_epi32(cy, _mm512_set1_epi32(r->y0));
  r->lower = _mm512_cmp_epi32_mask(r->dy, _mm512_setzero_si512(), _MM_CMPINT_NE);
  __mmask16 beyond = _mm512_cmp_epu32_mask(r->dx, _mm512_set1_epi32(columns), _MM_CMPINT_GT);
  if constexpr (LOC == PROJECTIVE) {
    // A homography's row is monotonic, but its points' rounding need not be where the row
    // runs almost level: sixteen points' corner-0 rows may read 49, 48, 49, ... (w's and the
    // quotient's rounding), a lane above the first and last, which the windows would take
    // from the wrong row. Each lane's row is checked to lie within the extremes' (as unsigned:
    // above the topmost is beyond); the columns' check is per lane already.
    // Forward 0.97-0.98x at 64x3x64x64 (A/B of the bare kernel, 15 rounds), 0.98-1.00x at 224 px.
    beyond |= _mm512_cmp_epu32_mask(r->dy, _mm512_set1_epi32(r->span), _MM_CMPINT_GT);
  }
  const bool fits = beyond == 0 && r->span <= rows;
  return fits ? FITS : SPREAD;
}

template <bool EDGE = false, int LOC = AFFINE>
__attribute__((always_inline)) inline Fit16 row16_at(const Locations8<ROW, LOC>& where, int64_t t0,
                                                    const Constants<float>& k, int32_t columns, int32_t rows,
                                                    Row16* r) {
  return row16_located(where, t0, k, r) ? row16_fit<EDGE, LOC>(k, columns, rows, r) : SPREAD;
}

// whether sixteen neighbouring points of the row may fit row16_at's `columns` and `rows`: not
// where the row's step between points (in input pixels) spreads any sixteen of them wider, which
// row16_at would find for every vector of the row after locating it (twice, with the EDGE path)
inline bool row16_may_fit(const Locations8<ROW, AFFINE>& where, const Constants<float>& k, int32_t columns,
                          int32_t rows, int64_t n) {
  if (n < 16) return false;
  const float step = where.xs[1] - where.xs[0];
  return 15 * std::fabs(where.m0 * step * k.ax) < columns + 1 && 15 * std::fabs(where.m3 * step * k.ay) < rows + 1;
}

// the same for a homography's row: the mean step between its first and last points (a hint;
// false where they are not finite)
inline bool row16_may_fit(const Locations8<ROW, PROJECTIVE>& where, const Constants<float>& k, int32_t columns,
                          int32_t rows, int64_t n) {
  if (n < 16) return false;
  const auto at = [&](float x, float* px, float* py) {
    const float w = where.m6 * x + where.cw;
    *px = (where.m0 * x + where.cx) / w * k.ax;
    *py = (where.m3 * x + where.cy) / w * k.ay;
  };
  float x0, y0, x1, y1;
  at(where.xs[0], &x0, &y0);
  at(where.xs[n - 1], &x1, &y1);
  const float per = 15.f / static_cast<float>(n - 1);
  return per * std::fabs(x1 - x0) < columns + 1 && per * std::fabs(y1 - y0) < rows + 1;
}

// Sixteen floats from xb + from, those outside [xb, xb + end) 0 and not read (the masked-off
// lanes of an AVX-512 load do not fault): the windows of an EDGE vector along the first and
// last rows of a sample
__attribute__((always_inline)) inline __m512 load16_within(const float* xb, int64_t from, int64_t end) {
  const int64_t lo = std::max<int64_t>(0, -from), hi = std::min<int64_t>(16, end - from);
  if (hi <= lo) return _mm512_setzero_ps();
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>(((1u << hi) - 1) & ~((1u << lo) - 1)), xb + from);
}

// the corner rows of sixteen points whose corner-0 rows lie 0 to SPAN below the topmost (dy):
// each of the SPAN + 2 input rows from it read as a 32-pixel window (`row`: two 16-wide loads),
// each corner picked from each row by a two-source permute, each lane's row taken by blends
// (the rows rise along the lanes, so "dy >= s" picks row s over the rows above it)
template <int SPAN, typename Row>
__attribute__((always_inline)) inline void corners16(const Row& row, __m512i dx, __m512i dx1, const __mmask16* below,
                                                     __m512* v) {
  __m512 p[SPAN + 2], q[SPAN + 2];
  for (int s = 0; s < SPAN + 2; ++s) {
    __m512 a, b;  // the row's pixels 0-15 and 16-31 from the leftmost corner 0
    row(s, &a, &b);
    p[s] = _mm512_permutex2var_ps(a, dx, b);
    q[s] = _mm512_permutex2var_ps(a, dx1, b);
  }
  v[0] = p[0], v[1] = q[0], v[2] = p[1], v[3] = q[1];
  for (int s = 1; s <= SPAN; ++s) {
    v[0] = _mm512_mask_blend_ps(below[s], v[0], p[s]);
    v[1] = _mm512_mask_blend_ps(below[s], v[1], q[s]);
    v[2] = _mm512_mask_blend_ps(below[s], v[2], p[s + 1]);
    v[3] = _mm512_mask_blend_ps(below[s], v[3], q[s + 1]);
  }
}

// Sixteen points of a wide affine or homography row at once (the AVX-512 build, zeros or border
// padding, unit width stride): where all sixteen lie strictly inside [0, W - 1) x [0, H - 1) (as inside8_at
// tests eight) and their corner-0 pixels lie within 30 columns of the leftmost and kRows16
// rows of the topmost, each channel's corners are read from windows of its rows (corners16).
// The same operations in the same order as inside8_at and inside8 for each point, so the same
// values. Returns what row16_at found, having written nothing, for any other vector (which then
// goes eight points at a time, or with zeros padding tries EDGE). Forward 1.07-1.09x at
// 1x3x224x224 (84% of its 16-point vectors take this path), 1.00x at 64x3x64x64 (69%, 39% of
// them crossing a row), the others unchanged (A/B of the bare kernel, θ the identity + 0.05
// N(0, 1), Intel Xeon with AVX-512, 2026-12-03): the sixteen points' arithmetic is not where
// the time goes. Tried and not kept: every window read from the 32-byte boundary before it, no
// load crossing a cache line (8-wide, 0.81-0.93x); the edge vectors' corners read as 16-pixel
// windows instead of gathers (no change).
// Since 2026-12-05 (AMD EPYC Zen 4; A/B of the bare kernel against the code before, the bench's
// θ, the identity + 0.1 N(0, 1), 15 rounds, the same bits), three changes for the vectors that
// went eight points at a time (at 64x3x64x64, 21% of the 16-point vectors spanned three input
// rows and 26% crossed the image's edge):
// - vectors spanning three input rows (kRows16 = 2: a rotation's rows falling 1/15 to 2/15 of
//   a pixel per point) read four rows' windows: 1.07x at 64x3x64x64, 1.00x at 1x3x224x224 and
//   32x3x224x224 (where rows span more or fewer), against the rows up to two;
// - EDGE (zeros padding, tried where the vector is not inside): the sixteen points anywhere
//   near the image (row16_at<true>), their corners outside set to 0 after the picks (as edge8's
//   selects and masked gathers give them), the windows of a channel's first and last rows read
//   only its own floats (load16_within), a vector with no corner inside written as 0 (since
//   2026-12-06 by locate16, blank16): 1.16-1.19x
//   at 1x3x224x224 (26% of its vectors cross the edge or lie outside), 1.03x at 64x3x64x64,
//   0.985x at 32x3x224x224 (16%, more of them too steep for sixteen at once), against those
//   vectors going eight points at a time;
// - and rows whose step between points spreads sixteen of them over more than kRows16 + 1 rows
//   or 31 columns (row16_may_fit) skip these paths, which would have located each vector in
//   vain (twice with EDGE).
// Together (all affine cases, 15 rounds): 1.10x at 64x3x64x64, 1.09x at 1x3x224x224, 1.07x at
// 32x3x224x224 (0.98x in a run of the three), 1.00-1.01x at 64x8x32x32, 256x1x28x28 and
// 1x1x28x28; channels_last (row16_may_fit alone) 1.10x at 64x3x64x64, 1.06x at 1x3x224x224,
// 1.00-1.01x at 32x3x224x224, 8x2x64x64 and 4x4x64x64.
// planes16_of is the part after row16_at, so that single_pass locates the next vector before it
// samples this one (see there).
template <bool EDGE = false>
__attribute__((always_inline)) inline Fit16 planes16_of(const Row16& r, const Constants<float>& k, const float* xb,
                                                       int64_t xc_step, float* o, int64_t oc_step, int64_t C,
                                                       int64_t end) {
  // No vector reaches here without a corner inside any more (locate16's blank16 takes them
  // first, and the fallback's vectors lie inside), but without this test GCC compiles the planes'
  // pass 0.95-0.98x slower at 1x3x224x224 and 1x1x224x224 (two A/Bs of the bare kernel, 21
  // rounds, the same bits; Intel Xeon, 2026-12-06); rgb16_of's twin went without a change.
  if (EDGE && (r.valid[0] | r.valid[1] | r.valid[2] | r.valid[3]) == 0) {  // no corner inside: 0
    for (int64_t ch = 0; ch < C; ++ch) _mm512_storeu_ps(o + ch * oc_step, _mm512_setzero_ps());
    return FITS;
  }
  const int64_t sh = k.sh, base = r.y0 * sh + r.x0;
  const bool bounded = base < 0 || base + (r.span + 1) * sh + 32 > end;
  if (!EDGE && bounded) return OUTSIDE;  // (the EDGE path's loads keep to the image)
  __m512 w[4];
  r.weights(w);
  const __m512i dx = r.dx, dx1 = _mm512_add_epi32(dx, _mm512_set1_epi32(1));
  const auto channels = [&](auto span) __attribute__((always_inline)) {
    constexpr int SPAN = decltype(span)::value;
    __mmask16 below[SPAN + 1];
    for (int s = 1; s <= SPAN; ++s) below[s] = _mm512_cmp_epi32_mask(r.dy, _mm512_set1_epi32(s), _MM_CMPINT_NLT);
    for (int64_t ch = 0; ch < C; ++ch) {
      const float* xc = xb + ch * xc_step;
      const auto row = [&](int s, __m512* a, __m512* b) __attribute__((always_inline)) {
        const int64_t from = base + s * sh;
        if (EDGE && bounded) {  // (the channel's own floats only)
          *a = load16_within(xc, from, end);
          *b = load16_within(xc, from + 16, end);
        } else {
          *a = _mm512_loadu_ps(xc + from);
          *b = _mm512_loadu_ps(xc + from + 16);
        }
      };
      __m512 v[4];
      corners16<SPAN>(row, dx, dx1, below, v);
      if constexpr (EDGE) {  // corners outside: 0, as edge8's selects and masked gathers give them
        for (int q = 0; q < 4; ++q) v[q] = _mm512_maskz_mov_ps(r.valid[q], v[q]);
      }
      __m512 acc = _mm512_mul_ps(v[0], w[0]);
      acc = _mm512_fmadd_ps(v[1], w[1], acc);
      acc = _mm512_fmadd_ps(v[2], w[2], acc);
      _mm512_storeu_ps(o + ch * oc_step, _mm512_fmadd_ps(v[3], w[3], acc));
    }
  };
  if (r.span == 0) {
    channels(std::integral_constant<int, 0>());
  } else if (r.span == 1) {
    channels(std::integral_constant<int, 1>());
  } else {
    channels(std::integral_constant<int, 2>());
  }
  return FITS;
}

// row16_at and planes16_of in one call (the loop locates ahead and calls them apart; this, with EDGE,
// where planes16_of found its windows past the image's end)
template <bool EDGE, int LOC = AFFINE>
__attribute__((always_inline)) inline Fit16 inside16(const Locations8<ROW, LOC>& where, int64_t t0,
                                                    const Constants<float>& k, const float* xb, int64_t xc_step,
                                                    float* o, int64_t oc_step, int64_t C, int64_t end) {
  Row16 r;
  if (const Fit16 fit = row16_at<EDGE>(where, t0, k, 30, kRows16, &r); fit != FITS) return fit;
  return planes16_of<EDGE>(r, k, xb, xc_step, o, oc_step, C, end);
}
#endif

#ifdef __AVX512F__
// a vector of sixteen points located by row16_at ahead of its turn (the sixteen-point loops
// locate each vector before they sample the one before it); under zeros padding, a vector not
// inside located again for the EDGE path (`edge`), as inside16 and inside16_rgb would
struct Next16 {
  Row16 r;
  Fit16 fit;
  bool edge;
};

// whether none of the corners of sixteen points located by row16_at (its ix and iy) lies inside
// the image: each point left of -1 or right of W (or so above and below; its corners' validity
// as row16_at<true> and corners8 have it), all of them finite and within 2^30 (as row16_at<true>
// takes them). Such vectors are 0 under zeros padding: 9% of the bench's channels_last
// 1x3x224x224 (its θ shifts some rows wholly off the image), which located them a second time
// for the EDGE path and wrote 0 from there. With row16_fit's floor by truncation: forward
// 1.01-1.03x on the bench's θ for channels_last 1x3x224x224 (five A/Bs of the bare kernel, 21-41
// rounds), 1.02-1.03x at 1x3x224x224, the others level (0.99-1.02x; Intel Xeon, 2026-12-06, the
// same bits).
__attribute__((always_inline)) inline bool blank16(const Row16& r, const Constants<float>& k) {
  const __m512 minus_one = _mm512_set1_ps(-1.f);
  const __m512 W = _mm512_set1_ps(static_cast<float>(k.W)), H = _mm512_set1_ps(static_cast<float>(k.H));
  const __mmask16 away = _mm512_cmp_ps_mask(r.ix, minus_one, _CMP_LT_OQ) | _mm512_cmp_ps_mask(r.ix, W, _CMP_GE_OQ) |
                         _mm512_cmp_ps_mask(r.iy, minus_one, _CMP_LT_OQ) | _mm512_cmp_ps_mask(r.iy, H, _CMP_GE_OQ);
  return (row16_near(r) & away) == 0xffff;
}

template <int PAD, int LOC>
__attribute__((always_inline)) inline void locate16(const Locations8<ROW, LOC>& where, int64_t t0,
                                                   const Constants<float>& k, int32_t columns, int32_t rows,
                                                   Next16* a) {
  a->edge = false;
  if (!row16_located(where, t0, k, &a->r)) {
    a->fit = SPREAD;
    return;
  }
  a->fit = row16_fit<false, LOC>(k, columns, rows, &a->r);
  if (PAD == ZEROS && a->fit == OUTSIDE) {
    if (blank16(a->r, k)) {
      a->fit = BLANK;
      return;
    }
    a->edge = true;
    a->fit = row16_fit<true, LOC>(k, columns, rows, &a->r);
  }
}
#endif

#ifdef __AVX512F__
// output lane j of the v-th of three vectors holding sixteen points' 3 channels side by side:
// point (16 v + j) / 3, channel (16 v + j) % 3. kRgbFirst picks channels 0 and 1 from two planar
// vectors (R, G: index p, or 16 + p), kRgbSecond keeps those lanes and takes channel 2 from B.
struct alignas(64) RgbLanes {
  int32_t first[3][16], second[3][16];
};
constexpr RgbLanes rgb_lanes() {
  RgbLanes r{};
  for (int v = 0; v < 3; ++v) {
    for (int j = 0; j < 16; ++j) {
      const int p = (16 * v + j) / 3, c = (16 * v + j) % 3;
      r.first[v][j] = c == 1 ? 16 + p : p;
      r.second[v][j] = c == 2 ? 16 + p : j;
    }
  }
  return r;
}
alignas(64) constexpr RgbLanes kRgbLanes = rgb_lanes();

// inside16 for three channels side by side (channels_last RGB, OpenCV's HWC images; input and
// output rows of 3 W floats): where all sixteen points lie strictly inside [0, W - 1) x
// [0, H - 1), their corner-0 pixels in two neighbouring rows within 19 columns of the leftmost,
// each corner row is read as a 64-float window (four 16-wide loads), each channel's corners
// picked by two two-source permutes and a blend (float 3 dx + c of the window), the sixteen
// points' values blended channel by channel in registers and written side by side (two
// permutes per 16-float output vector). The same operations in the same order as
// single_pass_interleaved's pairs, so the same values. Returns what row16_at found, having
// written nothing, for any other vector. Forward 1.09-1.11x at channels_last 1x3x224x224 with θ the identity +
// 0.05 N(0, 1) (A/B of the bare kernel, 7 and 9 rounds), 0.975x at the identity itself (where
// run8_interleaved's whole loads took every vector); `torchstn bench --cases affine-b1-224-cl`
// (θ noise 0.1, fewer vectors within the window), alternating builds twice: 0.121 / 0.120 ms
// against 0.127 / 0.131 ms (Intel Xeon with AVX-512, 2026-12-03, helpers running). The
// channels of a point are still dearer side by side than in planes (0.086-0.096 ms NCHW in
// the same runs); OpenCV's warpAffine takes 0.096-0.103 ms.
// EDGE (zeros padding, tried where the vector is not inside): the sixteen points anywhere
// near the image (row16_at<true>), their corners outside set to 0 after the picks, and the
// windows of a sample's first and last rows read only its own floats (load16_within). Before,
// such a vector went point by point through the block; at the bench's θ (noise 0.1) 11% of the
// 16-point vectors of channels_last 1x3x224x224 cross the image's edge, and skipping them
// saved a third of the kernel's time. Forward 1.075-1.09x there, 1.02x at channels_last
// 64x3x64x64, the other channels_last cases 1.00x (A/B of the bare kernel, 7 rounds, the same
// bits; AMD EPYC Zen 4, 2026-12-05). Such a vector with no corner inside is written as 0 at
// once (here, until locate16's blank16 took such vectors before the EDGE path; before that
// they were picked and masked to 0 like any edge vector): 1.07x at
// channels_last 1x3x224x224, 1.03-1.04x at 32x3x224x224 and 64x3x64x64 channels_last (A/B of
// the bare kernel, 15 rounds, the same bits; Intel Xeon, 2026-12-06); on the bench's θ for
// 1x3x224x224 (its rows' shift leaves some 15 output rows wholly outside) 0.094-0.095 -> 0.089-0.091 ms.
// The picks' halves of the window told by three compares of the columns (the same masks)
// instead of six of the floats' indices, and 3 dx made by adds instead of vpmulld (10 cycles'
// latency on Intel): 1.04-1.05x at channels_last 1x3x224x224 (θ noise 0.05 and 0.1),
// 1.01-1.02x at 32x3x224x224 and 64x3x64x64 channels_last (the same A/B, 15 rounds); the
// bench's θ 0.089-0.092 -> 0.083-0.086 ms. The same for planes (inside16<true>) was first tried
// alone and not kept (1.01x at 1x3x224x224, 0.97x at 32x3x224x224); with rows too steep for
// sixteen points skipped (row16_may_fit) it is kept (see inside16). Tried and not kept on the
// same machine: these vectors' corners by masked gathers instead (0.94x at 1x3x224x224: Zen
// 4's gathers are slow), and the block's masked corner loads as AVX-512 ones instead of AVX's
// (1.00x). What the side-by-side layout
// still costs over planes is the picks and the interleave: with them replaced by plain
// arithmetic (wrong values, a probe) the kernel ran as fast as the planes' (0.081 against
// 0.109 ms; NCHW 0.080). Not kept either: each of the three output vectors located in its
// own lanes (from xs permuted to its points) and picked from its own 32-float windows, one
// permute per corner and no interleave (half the shuffles, the same bits): 0.77x, the
// location computed three times costing more than the shuffles it saved. Nor, with the location
// computed once and permuted to each output vector's lanes (its column, tx and ty; the weights'
// products in those lanes; windows of 32 floats from the vector's own first column): 0.84x,
// 0.87x with the column times 3 by adds (A/B of the bare kernel, 2026-12-05, Zen 4).
// Nor each sample taken apart into three planes first (AVX-512 permutes, a thread's buffer),
// warped by the planes' passes and put side by side again (the same bits): 0.67x at
// 1x3x224x224, 0.65-0.85x from 8x3x32x32 to 4x3x480x640; the two passes over the image
// cost more than the planes' warp saves (2026-12-06, Intel Xeon, interleaved in one process).
// rgb16_of is the part after row16_at, so that single_pass_interleaved locates the next vector
// before it samples this one (see there). Not kept either: the constants 0-5 and 9-11 read as
// memory operands instead of broadcast from a general register (vpbroadcastd r32, a
// shuffle-port uop, nine per vector): 0.98-1.01x (A/B of the bare kernel, Intel Xeon, 2026-12-06);
// the third row's windows and blends taken by every vector instead of a branch on `lower` (17%
// of the bench θ's vectors cross a row, the branch changes 0.32 times per vector): 0.89x; the
// windows read from 64-byte boundaries (a probe, wrong values): 1.01x, so the loads' split lines
// cost nothing. Fused multiply-adds in the blend (a probe: 1.07x) are taken, by every path
// (see interpolate). Tried on the bench's θ with them and not kept (A/B of the bare kernel,
// 21-31 rounds, Intel Xeon, 2026-12-06): each channel's pixels 0-20 of a window gathered into
// two vectors first (three permutes and a blend per channel and row), each corner then one
// permute of the column (no index arithmetic or half masks: 17 fewer instructions): 0.99-1.00x;
// each channel's and corner's window read from its own float (base + c, + 3: every pick by
// 3 dx, 48 loads per vector): 0.74x; the first table of each pick read again instead of
// copied (vpermt2ps overwrites it): 0.88x; the output's lines fetched for writing (prefetchw)
// 4 or 24 vectors ahead, with two output tensors in turn as a caller's fresh outputs land
// (0.0835 against 0.0786 ms for one): 0.99-1.00x; row16_fit's extremes broadcast and
// compared in vector registers instead of through general ones: 0.99x (1.04-1.05x at
// channels_last 32x3x224x224 and 8x2x64x64).
template <bool EDGE = false>
__attribute__((always_inline)) inline Fit16 rgb16_of(const Row16& r, int64_t t0, const Constants<float>& k,
                                                    const float* xb, float* o, int64_t end) {
  const __m512i dx = r.dx;
  const __mmask16 lower = r.lower;
  const int64_t sh = k.sh, base = r.y0 * sh + 3 * int64_t{r.x0}, rows = lower ? 3 : 2;
  const bool bounded = base < 0 || base + (rows - 1) * sh + 64 > end;
  if (!EDGE && bounded) return OUTSIDE;  // (the EDGE path's loads keep to the image)
  __m512 w[4];
  r.weights(w);
  const __m512 w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  struct Window {
    __m512 a, b, c, d;  // floats 0-15, 16-31, 32-47, 48-63 of a corner row from base
  };
  const auto window = [&](int64_t row) {
    const int64_t from = base + row * sh;
    if (EDGE && bounded) {
      return Window{load16_within(xb, from, end), load16_within(xb, from + 16, end),
                    load16_within(xb, from + 32, end), load16_within(xb, from + 48, end)};
    }
    const float* r = xb + from;
    return Window{_mm512_loadu_ps(r), _mm512_loadu_ps(r + 16), _mm512_loadu_ps(r + 32), _mm512_loadu_ps(r + 48)};
  };
  const auto pick = [](const Window& w, __m512i at, __mmask16 high) {  // float `at` (0-63) of the window
    return _mm512_mask_blend_ps(high, _mm512_permutex2var_ps(w.a, at, w.b), _mm512_permutex2var_ps(w.c, at, w.d));
  };
  const Window row0 = window(0), row1 = window(1);
  const Window row2 = lower ? window(2) : row1;
  const __m512i x3 = _mm512_add_epi32(_mm512_add_epi32(dx, dx), dx);
  // the picks' float 3 dx + ch (+ 3) lies in the window's second half, 32-63, from column 11
  // for channels 0 and 1 and 10 for channel 2 (+ 3: one column sooner)
  const auto from = [&](int column) { return _mm512_cmp_epi32_mask(dx, _mm512_set1_epi32(column), _MM_CMPINT_NLT); };
  const __mmask16 from9 = from(9), from10 = from(10), from11 = from(11);
  __m512 out[3];
  for (int ch = 0; ch < 3; ++ch) {
    const __m512i at0 = _mm512_add_epi32(x3, _mm512_set1_epi32(ch)), at1 = _mm512_add_epi32(at0, _mm512_set1_epi32(3));
    const __mmask16 high0 = ch == 2 ? from10 : from11, high1 = ch == 2 ? from9 : from10;
    const __m512 p0 = pick(row0, at0, high0), q0 = pick(row0, at1, high1);
    const __m512 p1 = pick(row1, at0, high0), q1 = pick(row1, at1, high1);
    __m512 v0 = p0, v1 = q0, v2 = p1, v3 = q1;
    if (lower) {
      v0 = _mm512_mask_blend_ps(lower, p0, p1);
      v1 = _mm512_mask_blend_ps(lower, q0, q1);
      v2 = _mm512_mask_blend_ps(lower, p1, pick(row2, at0, high0));
      v3 = _mm512_mask_blend_ps(lower, q1, pick(row2, at1, high1));
    }
    if constexpr (EDGE) {  // corners outside: 0, as the masked gathers and loads give them
      v0 = _mm512_maskz_mov_ps(r.valid[0], v0);
      v1 = _mm512_maskz_mov_ps(r.valid[1], v1);
      v2 = _mm512_maskz_mov_ps(r.valid[2], v2);
      v3 = _mm512_maskz_mov_ps(r.valid[3], v3);
    }
    __m512 r = _mm512_mul_ps(v0, w0);
    r = _mm512_fmadd_ps(v1, w1, r);
    r = _mm512_fmadd_ps(v2, w2, r);
    out[ch] = _mm512_fmadd_ps(v3, w3, r);
  }
  float* ot = o + 3 * t0;
  for (int v = 0; v < 3; ++v) {
    const __m512 rg = _mm512_permutex2var_ps(out[0], _mm512_load_si512(kRgbLanes.first[v]), out[1]);
    _mm512_storeu_ps(ot + 16 * v, _mm512_permutex2var_ps(rg, _mm512_load_si512(kRgbLanes.second[v]), out[2]));
  }
  return FITS;
}

// row16_at and rgb16_of in one call (as inside16)
template <bool EDGE, int LOC = AFFINE>
__attribute__((always_inline)) inline Fit16 inside16_rgb(const Locations8<ROW, LOC>& where, int64_t t0,
                                                        const Constants<float>& k, const float* xb, float* o,
                                                        int64_t end) {
  Row16 r;
  if (const Fit16 fit = row16_at<EDGE>(where, t0, k, 19, 1, &r); fit != FITS) return fit;
  return rgb16_of<EDGE>(r, t0, k, xb, o, end);
}
#endif

// single_pass's vectors that are not strictly inside (the image's edges, a row's end, points
// not finite)
template <int PAD, int SOURCE>
__attribute__((always_inline)) inline void edge8(__m256 gx, __m256 gy, int64_t t0, int64_t n, const float* xb,
                                                 int64_t xc_step, float* ob, int64_t oc_step, int64_t C,
                                                 const Constants<float>& k, int64_t end, Block<float>& blk) {
  using S = Simd<float>;
  const avx::Located8 p = avx::locate8<PAD>(gx, gy, t0, n, k);
  const avx::Corners8 c = avx::corners8(p.ix, p.iy, _mm256_and_ps(p.live, p.finite), k);
  if (_mm256_movemask_ps(_mm256_and_ps(p.live, p.finite)) != 0xff) {  // a row's end, or not finite
    const int64_t tb = t0 % BLOCK;  // (a whole row's span may be longer than the block)
    blk.any_bad = avx::keep8<LINEAR>(p, c, tb, k, blk);
    for (int64_t ch = 0; ch < C; ++ch) {
      S::store_upto(ob + ch * oc_step + t0, interpolate<float, LINEAR>(xb + ch * xc_step, blk, tb, k.sh, true), n - t0);
    }
    return;
  }
  if (_mm256_movemask_ps(_mm256_and_ps(c.v[0], c.v[3])) != 0xff) {  // corners outside: 0 there
    // (Tried and not kept for such vectors within a pixel of the image, all eight finite: each
    // corner row read as pairs from a column and rows clamped into the image, the pair's halves
    // swapped or zeroed where a corner lies outside, the same values as the masked gathers:
    // 0.90x forward at 256x1x60x60->30x30, 0.97x with 3 channels, the rest level; the gathers
    // are the faster here. Intel Xeon, A/B of the bare kernel, 2026-12-06.)
    if (PAD == ZEROS && SOURCE != PACKED && avx::reads_nothing(c)) {  // no corner inside (zeros padding): no gathers
      for (int64_t ch = 0; ch < C; ++ch) _mm256_storeu_ps(ob + ch * oc_step + t0, _mm256_setzero_ps());
      return;
    }
    // a wide row's vector whose corner-0 offsets (clamped, so in memory next to the image's
    // pixels where outside) lie in [0, 7] of the first lane's: each corner row read as in
    // inside8's one-permute path, its corners outside the image then set to 0 by a select, as
    // the masked gathers below give them
    const int32_t base = _mm256_cvtsi256_si32(c.off[0]);
    const __m256i d = _mm256_sub_epi32(c.off[0], _mm256_set1_epi32(base));
    if (SOURCE != PACKED && _mm256_testz_si256(d, _mm256_set1_epi32(~7)) && base >= 0 && base + k.sh + 9 <= end) {
      const int64_t step[4] = {0, 1, k.sh, k.sh + 1};
      for (int64_t ch = 0; ch < C; ++ch) {
        const float* r = xb + ch * xc_step + base;
        __m256 acc = _mm256_mul_ps(_mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(r), d), c.v[0]), c.w[0]);
        for (int q = 1; q < 4; ++q) {
          const __m256 v = _mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(r + step[q]), d), c.v[q]);
          acc = _mm256_fmadd_ps(v, c.w[q], acc);
        }
        _mm256_storeu_ps(ob + ch * oc_step + t0, acc);
      }
      return;
    }
    for (int64_t ch = 0; ch < C; ++ch) {
      const float* xc = xb + ch * xc_step;
      __m256 r = _mm256_mul_ps(_mm256_mask_i32gather_ps(_mm256_setzero_ps(), xc, c.off[0], c.v[0], 4), c.w[0]);
      for (int q = 1; q < 4; ++q) {
        const __m256 v = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), xc, c.off[q], c.v[q], 4);
        r = _mm256_fmadd_ps(v, c.w[q], r);
      }
      _mm256_storeu_ps(ob + ch * oc_step + t0, r);
    }
    return;
  }
  inside8_of<SOURCE>(xb, xc_step, ob + t0, oc_step, C, c.off[0], c.w, k.sh, end);
}

// edge8 out of line: the loop over the inside vectors then keeps its constants in registers
// (inlined, as until 2026-12-03, into wide rows: 0.82x; into packed rows alone: 0.87-0.91x
// at 256x1x28x28 and 256x1x60x60->30x30; A/B of the bare kernel, AVX2 build, Zen 3)
template <int PAD, int SOURCE>
__attribute__((noinline)) void edge8_call(__m256 gx, __m256 gy, int64_t t0, int64_t n, const float* xb, int64_t xc_step,
                                          float* ob, int64_t oc_step, int64_t C, const Constants<float>& k, int64_t end,
                                          Block<float>& blk) {
  edge8<PAD, SOURCE>(gx, gy, t0, n, xb, xc_step, ob, oc_step, C, k, end, blk);
}

// a vector of eight points located and tested by inside8_at ahead of its turn: single_pass and
// backward_pass locate each vector before they sample (or scatter) the one before it
struct Next8 {
  __m256 gx, gy;
  avx::Inside8 in;
  bool inside;
};

// The forward of a span of n points (float, affine or projective, bilinear, unit width
// strides; a wide output row's, or with PACKED a block of narrow rows, each point with its
// own y) in one pass, a vector of 8 points at a time, its location and corners in
// registers. Where all eight have their four corners inside the image, each channel's
// corners are read without gathers: if the eight corner-0 offsets lie within 15 elements
// after the first lane's (`window`), as they do along a row near the identity, two
// 8-wide loads per corner row and permutes; else as pairs. Other vectors (the image's
// edges) gather the valid corners; a vector with a point past the row's end or not finite
// goes through the block as in the two passes. The same operations in the same order as
// locate + interpolate, so the same values. A/B of the bare kernel, one thread, the bench's
// θ (identity + 0.1 N(0, 1)): 1.03-1.08x at 64x1x64x64 and 64x3x64x64, 1.12-1.14x at
// 1x3x224x224 (where 72% of the vectors read windows; 41% at 64x64, where more vectors
// cross an input row). Tried and not kept: edge vectors through the block (0.92-0.97x),
// gathers instead of pairs (0.84-0.87x at 64 px), a third row's window for vectors that
// cross a row (1.00-1.02x). Then, for zeros and border padding, a vector whose eight
// points lie strictly inside [0, W - 1) x [0, H - 1) skips locate8's and corners8's
// validity, padding and far-point stages (the same values for such points): a further
// 1.14x / 1.28x at 1x3x224x224 / 1x1x224x224, 1.14x / 1.28x at 64x3x64x64 / 64x1x64x64
// (zeros), 1.21-1.24x with border padding, 1.08x with three times the θ noise (more points
// near the edges); reflection does not take it (its identity is not exact in float).
// Narrow rows packed into blocks (PACKED) in the same pass: 1.22x at 256x1x28x28, 1.16x at
// 256x3x28x28 (the AVX-512 build; wide rows unchanged). Points given as a float32 grid
// (GRID_PAIRS: each vector's (x, y) pairs read and split in registers): 1.31x at
// 256x1x28x28, 1.39x at 64x3x64x64, 1.21x at 1x3x224x224, 1.02x at 32x3x224x224. A wide
// row's vector with no corner inside (zeros padding) writes 0 without its masked gathers:
// 1.13-1.30x at 1x3x224x224 (11% of the bench θ's vectors lie outside), 1.7x with three
// times the θ noise, 1.07-1.11x at 64x3x64x64, 1.01-1.04x for grids at 256x1x28x28 and
// 256x3x28x28; θ's packed rows keep the gathers (the test cost them 0.94x at 256x1x28x28).
// Homographies (LOC = PROJECTIVE: Locations8 divides by the guarded w in registers, the
// same operations as locate's portable loop, so the same bits) took the two passes until
// 2026-12-02: one pass ran their forward at 1.30-1.44x at 256x1x28x28, 1.36-1.43x at
// 1x3x224x224, 1.13-1.22x channels_last (single_pass_interleaved), 1.02-1.06x at 64x3x64x64
// (three runs of benchmarks/ab_kernel.py, the two builds in one process; θ the identity + 0.1
// N(0, 1), its perspective terms 0.03 N(0, 1)); a homography's forward went from 1.44-1.93x
// to 1.25-1.34x an affine one's time (θ noise 0.05, as the bench's). Its two-pass locate in
// AVX2 too (for the backward) was slower than the compiler's AVX-512 loop (0.90-0.92x
// at 32x3x224x224) and is not used; nor for affine rows through Locations8 (GCC then
// stopped inlining locate: 0.90x at 256x1x28x28).
template <int PAD, int SOURCE, int LOC = AFFINE, int BORDER = 0>
inline void single_pass(const float* xb, int64_t xc_step, float* ob, int64_t oc_step, int64_t C, const float* m,
                        const float* xs, const float* ys, float y, int64_t n, const Constants<float>& kref,
                        Block<float>& blk) {
  static_assert(!BORDER || PAD == ZEROS, "a zero border is zeros padding");
  // a copy, held in registers: the output's float stores may alias the caller's (1.02-1.03x)
  const Constants<float> k = kref;
  // one past the last pixel of a channel (with a BORDER, of its border)
  const int64_t sh = k.sh, end = (k.H - 1 + BORDER) * sh + k.W + BORDER;
  const Locations8<SOURCE, LOC> where(m, xs, ys, y, n, k.eps);
  const auto locate = [&](int64_t t0, Next8* a) __attribute__((always_inline)) {
    where.template at<false, true>(t0, &a->gx, &a->gy);
    // (reflection: not exact)
    a->inside = PAD != REFLECTION && t0 + 8 <= n && avx::inside8_at<BORDER, true>(a->gx, a->gy, k, &a->in);
  };
  const auto sample = [&](int64_t t0, const Next8& a) __attribute__((always_inline)) {
    if (a.inside) {
      inside8_of<SOURCE>(xb, xc_step, ob + t0, oc_step, C, a.in.off0, a.in.w, sh, end);
    } else {
      edge8_call<PAD, SOURCE>(a.gx, a.gy, t0, n, xb, xc_step, ob, oc_step, C, k, end, blk);
    }
  };
  const auto step8 = [&](int64_t t0) __attribute__((always_inline)) {
    Next8 a;
    locate(t0, &a);
    sample(t0, a);
  };
  int64_t t0 = 0;
#ifdef __AVX512F__
  if constexpr (SOURCE == ROW && LOC != GRID && PAD != REFLECTION && BORDER == 0) {
    // each vector located before the one before it is sampled (as single_pass_interleaved's):
    // forward 1.02-1.05x at 224 px, 0.99-1.01x at 64x3x64x64 and 64x8x32x32 (A/B of the bare
    // kernel, 15 rounds; three runs: 0.96-1.01x at 1x3x224x224); without it, with the eight-point
    // vectors below located ahead, 1x1x224x224 ran 0.92-0.96x (the same bits; Intel Xeon, 2026-12-06).
    // A vector not inside located ahead for the EDGE path too (locate16): a further 1.07x at
    // 64x3x64x64, 1.03-1.05x at 224 px (two runs of 15 rounds).
    const bool may_fit = row16_may_fit(where, k, 30, kRows16, n);
    Next16 next;
    if (may_fit && t0 + 16 <= n) locate16<PAD>(where, t0, k, 30, kRows16, &next);
    for (; may_fit && t0 + 16 <= n; t0 += 16) {
      const Next16 now = next;
      if (t0 + 32 <= n) locate16<PAD>(where, t0 + 16, k, 30, kRows16, &next);
      Fit16 fit = now.fit;
      if (fit == BLANK) {
        for (int64_t ch = 0; ch < C; ++ch) _mm512_storeu_ps(ob + t0 + ch * oc_step, _mm512_setzero_ps());
        continue;
      }
      if (fit == FITS) {
        fit = now.edge ? planes16_of<true>(now.r, k, xb, xc_step, ob + t0, oc_step, C, end)
                       : planes16_of(now.r, k, xb, xc_step, ob + t0, oc_step, C, end);
      }
      if (PAD == ZEROS && fit == OUTSIDE) {  // (windows past the image's end: the EDGE path is never OUTSIDE)
        fit = inside16<true>(where, t0, k, xb, xc_step, ob + t0, oc_step, C, end);
      }
      if (fit != FITS) {
        step8(t0);
        step8(t0 + 8);
      }
    }
  }
#endif
  // the rest eight points at a time, each vector located and tested before the one before it
  // is sampled (as the sixteen above): forward 1.07-1.09x at 256x1x28x28 and 256x1x60x60->30x30
  // (A/B of the bare kernel, 15 rounds, the same bits; Intel Xeon, 2026-12-06)
  if (t0 >= n) return;
  Next8 next;
  locate(t0, &next);
  for (; t0 < n; t0 += 8) {
    const Next8 now = next;
    if (t0 + 8 < n) locate(t0 + 8, &next);
    sample(t0, now);
  }
}

// The backward of a block of n points (float, affine rows, a homography (LOC = PROJECTIVE: its
// w, guard and locations kept in the block for θ's gradient) or a grid, bilinear, unit width
// strides of x and grad_out; SOURCE as single_pass's) in one pass, a vector of 8 points at a
// time, its locations, weights and corners in registers instead of the block's arrays: a
// vector whose points lie strictly inside the image takes inside8_at's short path, any other
// locate8 and corners8, as the forward's edge vectors. Adds each point's share of grad_out
// to grad_x (gxb; none if null) and, with want_loc, writes dL/d(normalised location) to gix
// and giy (0 past n up to the next whole vector; NaN where the location is not finite). The
// same operations in the same order as locate and backward_impl's two passes, so the same
// values. Both gradients: 1.09x at 256x1x28x28, 1.22-1.25x at 64x3x64x64, 64x8x32x32,
// 1x3x224x224 and 32x3x224x224 (AVX-512 build), 1.00x / 1.12-1.22x (AVX2 build); θ's alone
// 1.22-1.44x, x's alone 0.93x at 256x1x28x28 (packed rows, a third of whose vectors are edge
// vectors, each located twice; 1.00x since they read a bordered copy, see backward_impl) and
// 1.22-1.25x elsewhere (benchmarks/ab_kernel.py --bare, θ the identity + 0.05 N(0, 1), Intel
// Xeon with AVX-512, bit-identical). Read as windows
// (inside8's two loads and permutes per row) instead of pairs, the corners ran 0.95x. Tried and
// not kept: grad_x's shares added a 16-pixel window at a time (AVX-512 expands and masked
// read-add-writes, where the eight corner-0 offsets rise strictly: the same order per pixel,
// the same bits): x's gradient alone 1.40x at 1x3x224x224, but both gradients 0.92-1.00x,
// packed rows 0.90x; θ's alone of packed rows from a bordered copy of x (as the forward):
// 1.01x, grids 0.92x; a vector's shares added corner by corner (1, 0, 3, 2: the same order
// per pixel where its offsets never fall and span less than a row) instead of point by point,
// so that no point's read waits on the previous point's write of the same pixel: 0.84-0.91x;
// the pixel a point shares with the next one (its corners 1 and 3, the next one's 0 and 2)
// added once, the two shares summed in a register first (half the read-add-writes; not the
// same bits): x's gradient alone 0.90x with a branch per point, 0.81x without (a write to a
// scratch slot where no pixel is left over; 256x1x28x28, 2026-12-03); each row's two shares in
// one 8-byte read-add-write (half the reads and writes, the same adds), where no point's pair
// overlaps the previous one's by a pixel (checked per vector: a failed store forwarding
// otherwise): x's gradient alone 1.07x and both 1.03x at 256x1x60x60->30x30, both 0.92-0.96x
// at 28-224 px (the check; 2026-12-06, Intel Xeon); with 2-4 channels, every channel of a point
// before the next point (their shares kept for the vector; the same order per pixel): 0.86-0.89x
// at 64x3x64x64, 1x3x224x224, 32x3x224x224, 8x2x64x64 and 4x4x64x64 (the same machine); the
// affine rows' six sums for θ's gradient added up here, in registers, instead of by
// backward_impl's loop over gix and giy (the same operations): 0.94x at 256x1x28x28, 0.95-0.96x
// at 64x3x64x64 and 224 px, 1.01x at 256x1x60x60->30x30 (2026-12-06, Intel Xeon); in the
// AVX-512 build, sixteen points of a wide row at a time where inside16 would take them, the
// location gradient's corners picked from windows of their rows (corners16) and x's shares
// added from 16-wide stores (the same bits): θ's gradient alone 0.94-1.00x, x's 0.77-0.88x,
// both 0.83-0.91x at 64x3x64x64, 64x1x64x64 and 224 px (the same machine). Homographies:
// both gradients 1.07-1.20x.
template <int PAD, int SOURCE, int LOC = AFFINE, int MARGIN = 0>
inline void backward_pass(const float* xb, int64_t xc_step, float* gxb, const float* gb, int64_t gc_step, int64_t C,
                          const float* m, const float* xs, const float* ys, float y, int64_t n, bool want_loc,
                          int64_t ahead, const Constants<float>& kref, float* gix, float* giy, Block<float>& blk) {
  static_assert(!MARGIN || PAD == ZEROS, "a margin of zeros is zeros padding");
  using S = Simd<float>;
  const Constants<float> k = kref;  // (in registers: grad_x's stores may alias the caller's)
  const int32_t sh = k.sh;
  const Locations8<SOURCE, LOC> where(m, xs, ys, y, n, k.eps);
  const __m256 zero = _mm256_setzero_ps(), one = avx::set1(1.f);
  alignas(32) float part[4][8];
  alignas(32) int32_t off[4][8], valid[4][8];
  // the next vector's location and inside test, made before this one's shares are added (as
  // single_pass's): both gradients 1.23x at 256x1x28x28 and 1x1x224x224, 1.17x at
  // 256x1x60x60->30x30, 1.05-1.09x at 64x3x64x64, 64x8x32x32 and 3-channel 224 px, channels_last
  // (few of whose vectors come here) 1.00-1.04x; x's alone 1.23-1.24x and θ's alone 1.07x at
  // 256x1x28x28 and 60x60->30x30 (A/B of the bare kernel, 11-15 rounds, the same bits; Intel
  // Xeon, 2026-12-06). Not kept (the same machine and bits): the edge vectors' locate8 and
  // corners8 made ahead too, 0.88-0.96x (their registers held over the loop); vectors whose
  // points each lie inside or a pixel or more outside taken as inside (the outside ones placed
  // at the image's centre, not added, their corners 0: half the edge vectors at 60x60->30x30),
  // 1.01x; θ's corner pairs read by two AVX-512 gathers (vgatherdpd) instead, 0.96x; dL/dx added
  // in a thread's zeroed buffer and streamed out (grad_x written once, never read), 0.93x bare at
  // 60x60->30x30 and no clear change in the bench's call (1.70-1.77 against 1.64-1.86 ms).
  const auto locate = [&](int64_t t0, Next8* a) __attribute__((always_inline)) {
    if constexpr (LOC == PROJECTIVE) {  // (w, the guard and the location for θ's gradient, as locate keeps them)
      __m256 wv, keep;
      where.template at<true>(t0, &a->gx, &a->gy, &wv, &keep);
      _mm256_store_ps(blk.g + t0, wv);
      _mm256_store_ps(blk.keep + t0, keep);
      _mm256_store_ps(blk.gx + t0, a->gx);
      _mm256_store_ps(blk.gy + t0, a->gy);
    } else {
      where.at(t0, &a->gx, &a->gy);
    }
    // (reflection: not exact)
    a->inside = PAD != REFLECTION && t0 + 8 <= n && avx::inside8_at<MARGIN, true>(a->gx, a->gy, k, &a->in);
  };
  Next8 next;
  if (n > 0) locate(0, &next);
  for (int64_t t0 = 0; t0 < n; t0 += 8) {
    const Next8 now = next;
    if (t0 + 8 < n) locate(t0 + 8, &next);
    const __m256 gx = now.gx, gy = now.gy;
    __m256 w[4], v[4] = {}, tx, ty, dix, diy, bad = zero;
    __m256i o[4] = {};  // (o[1-3] and v: read only by vectors not inner)
    bool inner = true;
    const avx::Inside8& in = now.in;
    if (now.inside) {
      for (int q = 0; q < 4; ++q) w[q] = in.w[q];
      o[0] = in.off0;
      tx = in.tx;
      ty = in.ty;
      dix = avx::set1(k.ax);
      diy = avx::set1(k.ay);
      if (PAD == BORDER) {  // clip's derivative: 0 at the first pixel, 1 past it
        dix = _mm256_mul_ps(dix, _mm256_and_ps(_mm256_cmp_ps(in.ix, zero, _CMP_GT_OQ), one));
        diy = _mm256_mul_ps(diy, _mm256_and_ps(_mm256_cmp_ps(in.iy, zero, _CMP_GT_OQ), one));
      }
    } else {
      const avx::Located8 p = avx::locate8<PAD>(gx, gy, t0, n, k);
      const avx::Corners8 c = avx::corners8(p.ix, p.iy, _mm256_and_ps(p.live, p.finite), k);
      const __m256 wl = _mm256_and_ps(p.live, one);  // padding weighs nothing
      for (int q = 0; q < 4; ++q) {
        w[q] = _mm256_mul_ps(c.w[q], wl);
        v[q] = c.v[q];
        o[q] = _mm256_and_si256(c.off[q], _mm256_castps_si256(c.v[q]));
      }
      tx = c.tx;
      ty = c.ty;
      dix = p.dx;
      diy = p.dy;
      bad = p.bad;
      inner = _mm256_movemask_ps(_mm256_and_ps(c.v[0], c.v[3])) == 0xff;
      if (!inner) {
        for (int q = 0; q < 4; ++q) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(off[q]), o[q]);
          _mm256_store_si256(reinterpret_cast<__m256i*>(valid[q]), _mm256_castps_si256(v[q]));
        }
      }
    }
    if (inner) _mm256_store_si256(reinterpret_cast<__m256i*>(off[0]), o[0]);
    const int64_t live = n - t0 < 8 ? n - t0 : 8;
    __m256 sx = zero, sy = zero;
    for (int64_t ch = 0; ch < C; ++ch) {
      const float* xc = xb + ch * xc_step;
      if (ahead != 0) {
        if (gxb) fetch_ahead<1>(gxb + ch * xc_step, off[0][0], ahead, sh);
        if (want_loc) fetch_ahead(xc, off[0][0], ahead, sh);
      }
      const __m256 g = S::load_upto(gb + ch * gc_step + t0, n - t0);
      if (gxb) {  // scatter: two points may share a pixel, so one point at a time
        float* gxc = gxb + ch * xc_step;
        for (int q = 0; q < 4; ++q) _mm256_store_ps(part[q], _mm256_mul_ps(w[q], g));
        if (inner) {  // the corners at fixed steps (the width step k.sw, 1 here, not a constant 1: GCC
          // then made p[0] and p[1] one 8-byte read-add-write, which the next point's overlapping
          // one waits for: 0.55x at 64x3x64x64)
          const int32_t sw = k.sw;
          for (int64_t l = 0; l < live; ++l) {
            float* p = gxc + off[0][l];
            p[0] += part[0][l];
            p[sw] += part[1][l];
            p[sh] += part[2][l];
            p[sh + sw] += part[3][l];
          }
        } else {  // (a corner outside must not touch pixel 0)
          for (int64_t l = 0; l < live; ++l) {
            for (int q = 0; q < 4; ++q) {
              if (valid[q][l] != 0) gxc[off[q][l]] += part[q][l];
            }
          }
        }
      }
      if (!want_loc) continue;
      __m256 c[4];
      if (inner) {
        S::pairs(xc, off[0], &c[0], &c[1]);
        S::pairs(xc + sh, off[0], &c[2], &c[3]);
      } else {
        for (int q = 0; q < 4; ++q) c[q] = _mm256_mask_i32gather_ps(zero, xc, o[q], v[q], 4);
      }
      const __m256 dx = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(c[1], c[0]), _mm256_sub_ps(one, ty)),
                                      _mm256_mul_ps(_mm256_sub_ps(c[3], c[2]), ty));
      const __m256 dy = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(c[2], c[0]), _mm256_sub_ps(one, tx)),
                                      _mm256_mul_ps(_mm256_sub_ps(c[3], c[1]), tx));
      sx = _mm256_add_ps(sx, _mm256_mul_ps(g, dx));
      sy = _mm256_add_ps(sy, _mm256_mul_ps(g, dy));
    }
    if (!want_loc) continue;
    __m256 px = _mm256_mul_ps(sx, dix), py = _mm256_mul_ps(sy, diy);
    if (_mm256_movemask_ps(bad) != 0) {
      const __m256 nan = avx::set1(std::numeric_limits<float>::quiet_NaN());
      px = _mm256_blendv_ps(px, nan, bad);
      py = _mm256_blendv_ps(py, nan, bad);
    }
    _mm256_store_ps(gix + t0, px);
    _mm256_store_ps(giy + t0, py);
  }
}
#endif

#ifdef TORCHSTN_AVX2
// the first C of 4 lanes, for masked loads and stores
inline __m128i first_lanes(int64_t C) {
  return _mm_cmpgt_epi32(_mm_set1_epi32(static_cast<int>(C)), _mm_setr_epi32(0, 1, 2, 3));
}

// whether every corner of point t is read as a whole vector: all inside, and the vectors
// (whose lanes past C are the next pixel's) inside the sample (`last`: the last offset a
// whole vector may start at)
template <int MODE>
inline bool whole_corners(const Block<float>& blk, int64_t t, int64_t last) {
  return MODE != NEAREST && blk.inner[t] && blk.off[3][t] <= last;
}

// the channels of corner q of point t: a whole vector (see whole_corners), or a masked load,
// 0 where the corner lies outside (a select, as in Simd::gather; it reads the first pixel)
inline __m128 corner_channels(const float* xb, const Block<float>& blk, int q, int64_t t, bool whole,
                              __m128i lanes) {
  if (whole) return _mm_loadu_ps(xb + blk.off[q][t]);
  const __m128 inside = _mm_cmpneq_ps(_mm_set1_ps(blk.valid[q][t]), _mm_setzero_ps());
  return _mm_and_ps(_mm_maskload_ps(xb + blk.off[q][t], lanes), inside);
}

// the block's points where the input and the output hold a pixel's C <= 4 channels side by
// side (channels_last, OpenCV's HWC images): each corner's channels in one load, blended for
// all channels at once in the order of interpolate (so the same values as channel by
// channel), written at o, o + step, ... A point whose corners all lie inside reads whole
// vectors (the lanes past C are the next pixel's, unused; `last` keeps them inside the
// sample), the others masked ones, where a corner outside reads the first pixel masked to 0
// by its validity (a select, as in Simd::gather); a point is written as a whole vector where
// the next point overwrites the lanes past C. Masked loads and stores only (AVX's, which
// this Zen 4 runs slowly): 1.33x the channel-by-channel loop; whole ones where possible:
// 1.64x (A/B of the bare kernel on channels_last 1x3x224x224 and 32x3x64x64)
template <int MODE>
inline void interleaved_point(const float* xb, const Block<float>& blk, int64_t t, int64_t n, int64_t C, float* o,
                              int64_t step, int64_t last, __m128i lanes) {
  const bool whole = whole_corners<MODE>(blk, t, last);
  __m128 r = corner_channels(xb, blk, 0, t, whole, lanes);
  if (MODE != NEAREST) {
    r = _mm_mul_ps(r, _mm_set1_ps(blk.w[0][t]));
    for (int q = 1; q < 4; ++q) {
      r = _mm_fmadd_ps(corner_channels(xb, blk, q, t, whole, lanes), _mm_set1_ps(blk.w[q][t]), r);
    }
  }
  if (blk.any_bad && blk.bad[t] != 0) r = _mm_set1_ps(std::numeric_limits<float>::quiet_NaN());
  if (step == C && t + 1 < n) {  // a whole vector: its lanes past C fall on the next point, written next
    _mm_storeu_ps(o, r);
  } else {
    _mm_maskstore_ps(o, lanes, r);
  }
}

template <int MODE>
inline void interleaved(const float* xb, const Block<float>& blk, int64_t n, int64_t C, float* o, int64_t step,
                        int64_t last) {
  const __m128i lanes = first_lanes(C);
  for (int64_t t = 0; t < n; ++t, o += step) interleaved_point<MODE>(xb, blk, t, n, C, o, step, last, lanes);
}

// 0 in the C channels of n points `step` apart (out of line: inlined, it slowed the other
// passes compiled into the same function)
__attribute__((noinline)) void zero_points(float* o, int64_t n, int64_t C, int64_t step) {
  const __m256 zero = _mm256_setzero_ps();
  if (step == C) {  // one run of n * C floats
    int64_t i = 0;
    for (; i + 8 <= n * C; i += 8) _mm256_storeu_ps(o + i, zero);
    for (; i < n * C; ++i) o[i] = 0.f;
    return;
  }
  for (int64_t t = 0; t < n; ++t) _mm_maskstore_ps(o + t * step, first_lanes(C), _mm_setzero_ps());
}

// kSpread[C][v][j] = (8 v + j) / C: the point of lane j of the v-th of the C vectors that hold
// eight points' C channels side by side
struct alignas(32) Spread {
  int32_t lane[4][8];
};
constexpr Spread spread_of(int C) {
  Spread s{};
  for (int v = 0; v < 4; ++v) {
    for (int j = 0; j < 8; ++j) s.lane[v][j] = C > 0 ? (8 * v + j) / C : 0;
  }
  return s;
}
alignas(32) constexpr Spread kSpread[5] = {spread_of(0), spread_of(1), spread_of(2), spread_of(3), spread_of(4)};

// Eight points of a row whose corner-0 pixels are eight neighbours (offsets base + C * (0, 1,
// ..., 7), C = 2 to 4 channels side by side, all four corners inside): each corner row's 8C
// values are C whole 8-wide loads (nothing past the points' own pixels), each point's weight
// spread over its C lanes by a permute, and the 8C outputs C whole stores at o (the points
// written side by side). The same operations in the same order as the pair-at-a-time path,
// so the same values: 1.14x forward at channels_last 1x3x224x224 with θ the identity + 0.05
// N(0, 1), 1.32x at the identity, 1.18x / 1.32x with 4 / 2 channels, 0.98x with 0.1 N(0, 1)
// (fewer such vectors), 1.02x at 32x3x64x64 (A/B of the bare kernel, AVX2 build, Zen 3).
// `point[v]`: the point whose value lane j of the v-th vector holds, (8 v + j) / C (kSpread[C])
__attribute__((always_inline)) inline void run8_interleaved(const float* xb, int64_t base, const int64_t corner[4],
                                                            const __m256 w[4], int64_t C, const __m256i* point,
                                                            float* o) {
  for (int64_t v = 0; v < C; ++v) {
    const float* r = xb + base + 8 * v;
    __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(r), _mm256_permutevar8x32_ps(w[0], point[v]));
    for (int q = 1; q < 4; ++q) {
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(r + corner[q]), _mm256_permutevar8x32_ps(w[q], point[v]), acc);
    }
    _mm256_storeu_ps(o + 8 * v, acc);
  }
}

// Eight points from t0 (none past n; where: the Locations8 of a grid or of affine rows)
// for nearest's one pixel: its offset (0 where it is not read), the lanes that read it (*v) and
// the lanes whose point is not finite (*bad); locate8's coordinates, under zeros padding without
// its far-point and padding stages (a non-finite or far point is outside, and nearest8's clamp
// bounds what the offset reads). The forward's and the backward's nearest passes both locate
// through it.
template <int PAD, bool AHEAD = false, typename Where>
__attribute__((always_inline)) inline __m256i nearest_points8(const Where& where, int64_t t0, int64_t n,
                                                              const Constants<float>& k, __m256* v, __m256* bad) {
  __m256 gx, gy;
  where.template at<false, AHEAD>(t0, &gx, &gy);
  __m256 ix, iy, use;
  if constexpr (PAD == ZEROS) {
    const __m256 one = avx::set1(1.f);
    const __m256 live = _mm256_cmp_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7),
                                      avx::set1(static_cast<float>(n - t0)), _CMP_LT_OQ);
    ix = _mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(gx, one), avx::set1(k.ax)), avx::set1(k.bx));
    iy = _mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(gy, one), avx::set1(k.ay)), avx::set1(k.by));
    // (x - x) + (y - y): NaN where either is not finite
    const __m256 nonfinite = _mm256_cmp_ps(_mm256_add_ps(_mm256_sub_ps(gx, gx), _mm256_sub_ps(gy, gy)),
                                           _mm256_setzero_ps(), _CMP_UNORD_Q);
    *bad = _mm256_and_ps(nonfinite, live);
    use = _mm256_andnot_ps(nonfinite, live);
  } else {
    const avx::Located8 p = avx::locate8<PAD>(gx, gy, t0, n, k);
    ix = p.ix;
    iy = p.iy;
    *bad = p.bad;
    use = _mm256_and_ps(p.live, p.finite);
  }
  return avx::nearest8(ix, iy, use, k, v);
}

// The forward of nearest (float32, rows of unit stride) on a grid or affine rows (SOURCE as
// single_pass's; homographies stay on the block, see forward_impl), in one pass: eight points
// located in registers (nearest_points8) and rounded half to even by nearest8, as keep8 rounds
// them, each channel's pixels gathered straight into the output (a masked gather: 0 where the
// pixel lies outside, NaN where the point is not finite), not through the block, whose four
// corners' offsets, weights and validity keep8 writes for nearest's one; its spans are runs of
// 4,096 points across rows, or rows (forward_impl). The same pixels, so the same values.
// Forward of a uniform random grid, `stn.sample(..., mode="nearest", backend="fused")`,
// 1.30-1.59x (docs/benchmarks.md, 2026-12-05 17:20). Tried and not kept: sixteen points a
// gather (AVX-512, two halves): 0.93x of eight on one channel (Zen 4's 16-lane gather is not
// faster than two 8-lane ones); unmasked gathers, the lanes outside zeroed after: 1.00x. The
// gathers are 64% of this pass's samples (perf), as vgatherdps is of ATen's nearest, which
// stays ahead (0.81-0.94x).
template <int PAD, int SOURCE>
inline void nearest_pass(const float* xb, int64_t xc_step, float* ob, int64_t oc_step, int64_t C, const float* m,
                         const float* xs, const float* ys, float y, int64_t n, const Constants<float>& kref) {
  const Constants<float> k = kref;  // (in registers, as single_pass's)
  const Locations8<SOURCE> where(m, xs, ys, y, n, k.eps);  // (as single_pass's arguments)
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t t0 = 0; t0 < n; t0 += 8) {
    __m256 v, bad;
    const __m256i off = nearest_points8<PAD, true>(where, t0, n, k, &v, &bad);
    const bool any_bad = _mm256_movemask_ps(bad) != 0;
    const int64_t live = n - t0 < 8 ? n - t0 : 8;
    for (int64_t c = 0; c < C; ++c) {
      __m256 r = _mm256_mask_i32gather_ps(zero, xb + c * xc_step, off, v, 4);
      if (any_bad) r = avx::select(bad, avx::set1(NAN), r);
      Simd<float>::store_upto(ob + c * oc_step + t0, r, live);
    }
  }
}

// The backward of nearest (float32, rows of unit stride) on a grid or affine rows (SOURCE as
// nearest_pass's), in one pass as its forward: each point's output gradient added to its
// pixel's (grad_x, zeroed before; one point at a time, in the points' order, as the block's
// scatter adds them: the same bits) and, for a grid, its location's gradient written
// (grad_pairs: 0, NaN where the point is not finite), where the block path wrote nearest's one
// pixel as four corners and read them back per channel. Returns whether a point is not finite
// (affine rows: their θ's gradient is NaN then, else 0).
template <int PAD, int SOURCE>
inline bool nearest_backward_pass(float* gxb, int64_t xc_step, const float* gb, int64_t gc_step, int64_t C,
                                  const float* m, const float* xs, const float* ys, float y, float* grad_pairs,
                                  int64_t n, const Constants<float>& kref) {
  const Constants<float> k = kref;
  const Locations8<SOURCE> where(m, xs, ys, y, n, k.eps);
  alignas(32) int32_t at[8];
  bool any_bad = false;
  for (int64_t t0 = 0; t0 < n; t0 += 8) {
    __m256 v, bad;
    const __m256i off = nearest_points8<PAD>(where, t0, n, k, &v, &bad);
    const int64_t live = n - t0 < 8 ? n - t0 : 8;
    const unsigned bad_lanes = static_cast<unsigned>(_mm256_movemask_ps(bad));
    any_bad |= bad_lanes != 0;
    if (grad_pairs != nullptr) {  // x y x y ...: 0, or NaN where the point is not finite
      float* q = grad_pairs + 2 * t0;
      for (int64_t i = 0; i < 2 * live; ++i) q[i] = 0.f;
      for (unsigned lanes = bad_lanes; lanes != 0; lanes &= lanes - 1) {
        const int l = __builtin_ctz(lanes);
        q[2 * l] = q[2 * l + 1] = NAN;
      }
    }
    const unsigned reads = static_cast<unsigned>(_mm256_movemask_ps(v));
    if (gxb == nullptr || reads == 0) continue;
    _mm256_store_si256(reinterpret_cast<__m256i*>(at), off);
    for (int64_t c = 0; c < C; ++c) {
      const float* g = gb + c * gc_step + t0;  // (only lanes that are points read it)
      float* gxc = gxb + c * xc_step;
      if (reads == 0xff) {  // every point reads a pixel (the common vector): a loop of fixed length
        for (int l = 0; l < 8; ++l) gxc[at[l]] += g[l];
      } else {
        for (unsigned lanes = reads; lanes != 0; lanes &= lanes - 1) {
          const int l = __builtin_ctz(lanes);
          gxc[at[l]] += g[l];
        }
      }
    }
  }
  return any_bad;
}

// `single_pass` for channels side by side (C = 2 to 4, input and output channels_last; the
// points of a row, or of a grid: ROW or GRID_PAIRS): a vector of eight points strictly
// inside [0, W - 1) x [0, H - 1) (zeros and border padding) whose corners' whole-vector
// loads stay inside the sample has its offsets and weights computed in registers and reads
// each corner's channels with one load, as `interleaved` does (the same operations in the
// same order, so the same values); other vectors go through the block, point by point as
// in `interleaved`. Grids (GRID_PAIRS) took two passes until the locations were shared with
// `single_pass` (Locations8): 1.15-1.26x at channels_last 1x3x224x224, 32x3x64x64 and
// 8x2x64x64 (A/B of the bare kernel, AVX-512 and AVX2 builds, bit-identical). A vector with
// no corner inside (zeros padding) writes 0 instead of reading masked corners point by point:
// 1.14-1.19x at channels_last 1x3x224x224, 1.00x at 32x3x64x64. Built with AVX-512, an inside
// vector's points are written a pair at a time, their 2C values compressed together and
// stored with one masked store, instead of two overlapping 4-lane stores: 1.01-1.05x at
// channels_last 1x3x224x224, 32x3x64x64, 8x2x64x64 and 4x4x64x64. Tried and not kept: the
// AVX-512 build reading the corners of eight points whose offsets lie within a 32-float
// window of each corner row (54% of the vectors at 1x3x224x224) as two 16-wide loads per row,
// each output lane's value and weight picked by permutes, the 8C outputs as 16-wide stores:
// 0.92x (2026-12-03, Intel Xeon); the AVX-512 build taking an inside vector's points one at a
// time, each corner's 4 lanes times its weight broadcast from memory (no shuffles but the
// offsets' extracts): 0.95x (the same machine, affine and homography alike). Nor, on Zen 4
// (2026-12-06, A/B of the bare kernel, the same bits), inside16_rgb's vectors that way: each
// 16-point vector's offsets and weights stored by 16-wide stores and its points then read one
// at a time (three channels and a spare lane per corner load, the weights broadcast from the
// stores, one overlapping store per point): 0.77x at channels_last 1x3x224x224; with four
// vectors stored ahead of their points (the loads no longer waiting on the stores) and any
// vector strictly inside taken (no 19-column window): 0.87x there, 1.01x at 64x3x64x64 and
// 32x3x224x224 channels_last.
template <int PAD, int SOURCE, int LOC = AFFINE>
inline void single_pass_interleaved(const float* xb, float* o, int64_t step, int64_t C, const float* m,
                                    const float* xs, const float* ys, float y, int64_t n,
                                    const Constants<float>& kref, Block<float>& blk) {
  const Constants<float> k = kref;
  const Locations8<SOURCE, LOC> where(m, xs, ys, y, n, k.eps);
  const int64_t last = (k.H - 1) * k.sh + (k.W - 1) * k.sw + C - 4;  // the last whole-vector load
  // the largest corner-0 offset whose corner 3 is read whole inside the sample
  const __m256i last0 = _mm256_set1_epi32(static_cast<int32_t>(last - k.sh - k.sw));
  const __m128i lanes = first_lanes(C);
  const __m256i* point = reinterpret_cast<const __m256i*>(kSpread[C].lane);  // (run8_interleaved's)
#ifdef __AVX512VL__
  // a pair of points' C channels from their four lanes each, and the 2C values they make
  const __mmask8 pair_lanes = static_cast<__mmask8>(C == 2 ? 0x33 : C == 3 ? 0x77 : 0xff);
  const __mmask8 pair_store = static_cast<__mmask8>((1u << (2 * C)) - 1);
#endif
  const auto step8 = [&](int64_t t0) __attribute__((always_inline)) {
    __m256 gx, gy;
    where.template at<false, true>(t0, &gx, &gy);
    avx::Inside8 in;
    if (PAD != REFLECTION && t0 + 8 <= n && avx::inside8_at(gx, gy, k, &in) &&
        _mm256_testz_si256(_mm256_cmpgt_epi32(in.off0, last0), _mm256_set1_epi32(-1))) {
      // the offsets moved to integer registers by extracts, not through a store and eight
      // loads: 1.02-1.03x forward at channels_last 1x3x224x224 (A/B of the bare kernel, AVX2)
      const int64_t corner[4] = {0, k.sw, k.sh, k.sh + k.sw};
      if (step == C) {  // the points' own pixels side by side in the input too: whole loads (run8_interleaved)
        const int32_t base = _mm256_cvtsi256_si32(in.off0);
        const __m256i run = _mm256_add_epi32(_mm256_set1_epi32(base),
                                             _mm256_mullo_epi32(_mm256_set1_epi32(static_cast<int32_t>(C)),
                                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
        if (_mm256_testc_si256(_mm256_cmpeq_epi32(in.off0, run), _mm256_set1_epi32(-1))) {
          run8_interleaved(xb, base, corner, in.w, C, point, o + t0 * C);
          return;
        }
      }
      const __m128i lo = _mm256_castsi256_si128(in.off0), hi = _mm256_extracti128_si256(in.off0, 1);
      const int32_t off[8] = {_mm_cvtsi128_si32(lo), _mm_extract_epi32(lo, 1), _mm_extract_epi32(lo, 2),
                              _mm_extract_epi32(lo, 3), _mm_cvtsi128_si32(hi), _mm_extract_epi32(hi, 1),
                              _mm_extract_epi32(hi, 2), _mm_extract_epi32(hi, 3)};
      // Affine rows: each corner's weights of points 0-3 and of 4-7 in both halves, so that a
      // pair's are an in-lane pick (vpermilps) instead of a cross-lane one (vpermps): 1.06x
      // forward at channels_last 1x3x224x224; for homographies 0.97x, so they keep vpermps
      // (A/B of the bare kernel, AVX2, Zen 3)
      __m256 wlo[4], whi[4];
      if constexpr (LOC == AFFINE) {
        for (int q = 0; q < 4; ++q) {
          wlo[q] = _mm256_permute2f128_ps(in.w[q], in.w[q], 0x00);
          whi[q] = _mm256_permute2f128_ps(in.w[q], in.w[q], 0x11);
        }
      }
      // two points at a time: point t's channels in the low half, t + 1's in the high one
      for (int t = 0; t < 8; t += 2) {
        const int u = LOC == AFFINE ? t & 3 : t;
        const __m256i pick = _mm256_setr_epi32(u, u, u, u, u + 1, u + 1, u + 1, u + 1);
        const auto weights = [&](int q) {  // corner q's weight of point t in the low half, of t + 1 in the high
          if constexpr (LOC == AFFINE) return _mm256_permutevar_ps(t < 4 ? wlo[q] : whi[q], pick);
          else return _mm256_permutevar8x32_ps(in.w[q], pick);
        };
        const float* p0 = xb + off[t];
        const float* p1 = xb + off[t + 1];
        // (two 128-bit loads and an insert: _mm256_loadu2_m128 needs GCC 10)
        const auto both = [](const float* lo, const float* hi) {
          return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(lo)), _mm_loadu_ps(hi), 1);
        };
        __m256 r = _mm256_mul_ps(both(p0, p1), weights(0));
        for (int q = 1; q < 4; ++q) {
          const __m256 v = both(p0 + corner[q], p1 + corner[q]);
          r = _mm256_fmadd_ps(v, weights(q), r);
        }
#ifdef __AVX512VL__
        if (step == C) {  // the two points' 2C values compressed together, one masked store
          _mm256_mask_storeu_ps(o + (t0 + t) * C, pair_store, _mm256_maskz_compress_ps(pair_lanes, r));
          continue;
        }
#endif
        float* ot = o + (t0 + t) * step;
        // whole vectors where the next point overwrites the lanes past C (in this order)
        if (step == C) {
          _mm_storeu_ps(ot, _mm256_castps256_ps128(r));
        } else {
          _mm_maskstore_ps(ot, lanes, _mm256_castps256_ps128(r));
        }
        if (step == C && t0 + t + 2 < n) {
          _mm_storeu_ps(ot + step, _mm256_extractf128_ps(r, 1));
        } else {
          _mm_maskstore_ps(ot + step, lanes, _mm256_extractf128_ps(r, 1));
        }
      }
      return;
    }
    const avx::Located8 p = avx::locate8<PAD>(gx, gy, t0, n, k);
    avx::Corners8 c = avx::corners8(p.ix, p.iy, _mm256_and_ps(p.live, p.finite), k);
    if (PAD == ZEROS && _mm256_movemask_ps(p.bad) == 0 && avx::reads_nothing(c)) {  // zeros padding, all outside: 0
      zero_points(o + t0 * step, std::min<int64_t>(8, n - t0), C, step);
      return;
    }
    const int64_t r0 = t0 - t0 % BLOCK;  // the block holds points r0... (a whole row's span may be longer)
    blk.any_bad = avx::keep8<LINEAR>(p, c, t0 - r0, k, blk);
    for (int64_t t = t0; t < n && t < t0 + 8; ++t) {
      interleaved_point<LINEAR>(xb, blk, t - r0, n - r0, C, o + t * step, step, last, lanes);
    }
  };
  int64_t t0 = 0;
#ifdef __AVX512F__
  if constexpr (SOURCE == ROW && LOC != GRID && PAD != REFLECTION) {
    if (C == 3 && step == 3 && k.sw == 3) {  // RGB side by side in the input and the output
      const int64_t end = (k.H - 1) * k.sh + 3 * k.W;
      // Each vector located (row16_at) before the one before it is sampled, so that its
      // windows' addresses are known when its turn comes: forward 1.13-1.16x at channels_last
      // 1x3x224x224, 1.08-1.11x at 32x3x224x224, 1.05x at 64x3x64x64, the others level (A/B of
      // the bare kernel, 15 rounds, the same bits; Intel Xeon, 2026-12-06): a vector's ~200
      // instructions, its location's latency first, left the next vector's location beyond
      // what the core looks ahead. Two vectors ahead: 0.99-1.03x. A vector not inside located
      // ahead for the EDGE path too (locate16): a further 1.02-1.04x at 1x3x224x224. Not kept:
      // the two Next16 used in turn instead of copied (0.97-1.00x); the build with
      // -falign-loops=64 (0.98-1.02x, benchmarks/ab_flags.py --with=-falign-loops=64); a row
      // whose two ends lie more than a pixel beyond one edge written as 0 at once, here and in
      // single_pass (1.01x channels_last, 0.92-0.98x elsewhere at 64-224 px).
      const bool may_fit = row16_may_fit(where, k, 19, 1, n);
      Next16 next;
      if (may_fit && t0 + 16 <= n) locate16<PAD>(where, t0, k, 19, 1, &next);
      for (; may_fit && t0 + 16 <= n; t0 += 16) {
        const Next16 now = next;
        if (t0 + 32 <= n) locate16<PAD>(where, t0 + 16, k, 19, 1, &next);
        Fit16 fit = now.fit;
        if (fit == BLANK) {
          for (int v = 0; v < 3; ++v) _mm512_storeu_ps(o + 3 * t0 + 16 * v, _mm512_setzero_ps());
          continue;
        }
        if (fit == FITS) fit = now.edge ? rgb16_of<true>(now.r, t0, k, xb, o, end) : rgb16_of(now.r, t0, k, xb, o, end);
        if (PAD == ZEROS && fit == OUTSIDE) {  // (windows past the image's end: the EDGE path is never OUTSIDE)
          fit = inside16_rgb<true>(where, t0, k, xb, o, end);
        }
        if (fit != FITS) {
          step8(t0);
          step8(t0 + 8);
        }
      }
    }
  }
#endif
  for (; t0 < n; t0 += 8) step8(t0);
}

// the backward of the block's points where the input (and so grad_x, which has its strides)
// holds a pixel's C <= 4 channels side by side: each corner's channels in one load, as in
// `interleaved`; grad_out's C values of a point `gstep` apart in memory, its points `step`
// apart from g. Adds to grad_x (corners in the order of the channel-by-channel scatter, so
// the same sums) and, with `ix`, writes dL/d(pixel location) of each point to ix and iy
// (channels summed in order, as the channel loop sums them). grad_x is added to channel by
// channel: read-modify-writes of whole vectors ran at 0.71-0.77x the channel loop (a store
// followed by an overlapping load of the next corner is not forwarded).
template <int MODE, int C>
inline void interleaved_backward(const float* xb, float* gxb, const Block<float>& blk, int64_t n,
                                 const float* g, int64_t step, int64_t gstep, int64_t last, float* ix, float* iy) {
  const __m128i lanes = first_lanes(C);
  const __m128 one = _mm_set1_ps(1.f);
  alignas(16) float dx[4], dy[4];
  for (int64_t t = 0; t < n; ++t, g += step) {
    __m128 go;
    if (gstep == 1) {  // a whole vector where the next point follows, its lanes past C cleared
      go = t + 1 < n && step >= C ? _mm_and_ps(_mm_loadu_ps(g), _mm_castsi128_ps(lanes)) : _mm_maskload_ps(g, lanes);
    } else {
      go = _mm_setr_ps(g[0], g[gstep], C > 2 ? g[2 * gstep] : 0.f, C > 3 ? g[3 * gstep] : 0.f);
    }
    if (gxb) {
      alignas(16) float part[4];
      for (int q = 0; q < (MODE == NEAREST ? 1 : 4); ++q) {
        if (blk.valid[q][t] == 0) continue;
        _mm_store_ps(part, _mm_mul_ps(_mm_set1_ps(blk.w[q][t]), go));
        float* p = gxb + blk.off[q][t];
        for (int c = 0; c < C; ++c) p[c] += part[c];
      }
    }
    if (ix == nullptr) continue;
    if (MODE == NEAREST) {  // no location gradient
      ix[t] = iy[t] = 0.f;
      continue;
    }
    const bool whole = whole_corners<MODE>(blk, t, last);
    __m128 v[4];
    for (int q = 0; q < 4; ++q) v[q] = corner_channels(xb, blk, q, t, whole, lanes);
    const __m128 tx = _mm_set1_ps(blk.tx[t]), ty = _mm_set1_ps(blk.ty[t]);
    _mm_store_ps(dx, _mm_mul_ps(go, _mm_add_ps(_mm_mul_ps(_mm_sub_ps(v[1], v[0]), _mm_sub_ps(one, ty)),
                                               _mm_mul_ps(_mm_sub_ps(v[3], v[2]), ty))));
    _mm_store_ps(dy, _mm_mul_ps(go, _mm_add_ps(_mm_mul_ps(_mm_sub_ps(v[2], v[0]), _mm_sub_ps(one, tx)),
                                               _mm_mul_ps(_mm_sub_ps(v[3], v[1]), tx))));
    float sx = 0.f, sy = 0.f;
    for (int c = 0; c < C; ++c) {
      sx += dx[c];
      sy += dy[c];
    }
    ix[t] = sx;
    iy[t] = sy;
  }
}
#endif

#ifdef TORCHSTN_AVX2
// A sample's channels copied with a border of kBorder zero pixels on every side, kept on the
// thread for the call that made it (`call`, `b`): under zeros padding a small image's corners
// outside it are then read from memory, and single_pass takes its fast path (BORDER) for the
// vectors along the image's edges, which otherwise gather their corners masked (a third of
// the vectors of a 28x28 output). Four pixels: the bench's θ (the identity + 0.05 N(0, 1))
// moves a 28x28 image's edges by up to 2.5 pixels. Outputs of packed rows only (narrower than
// a block), where the edges are many: 1.07x forward at 1x1x28x28, 1.12x at 256x1x28x28,
// affine and projective alike (benchmarks/ab_kernel.py, 21 rounds, bit-identical); a given
// grid's since 2026-12-03: 1.13x at 256x1x28x28 (ab_kernel.py --bare --grid, AVX-512 build,
// θ's grid with noise 0.05); wide rows
// have two edge vectors each, and at 64x3x64x64 the copy cost more than it saved
// (0.89-0.94x). Read as pairs instead
// (each corner row masked by its validity), the edge vectors ran no faster than with
// AVX2's masked gathers (0.98x at 256x1x28x28, Zen 3).
constexpr int64_t kBorder = 4;

struct Bordered {
  std::vector<float> data;
  uint64_t call = 0;
  int64_t b = -1, row = 0, plane = 0, C = 0, H = 0, W = 0;  // (C, H, W: the geometry its border is zero for)

  // where pixel (0, 0) of channel 0 of sample b's copy lies (made unless this thread holds it)
  const float* of(const float* xb, const Strides& xs, int64_t C_, int64_t H_, int64_t W_, uint64_t call_, int64_t b_) {
    if (call_ != call || b_ != b) {
      if (C_ != C || H_ != H || W_ != W) {  // a new geometry: all zeros, then only the image is written
        C = H = W = 0;
        row = W_ + 2 * kBorder, plane = (H_ + 2 * kBorder) * row;
        data.assign(C_ * plane, 0.f);
        C = C_, H = H_, W = W_;
      }
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t i = 0; i < H; ++i) {
          const float* src = xb + c * xs.c + i * xs.h;
          float* dst = data.data() + c * plane + (i + kBorder) * row + kBorder;
          for (int64_t j = 0; j < W; ++j) dst[j] = src[j];  // (a short row: an inline loop, not a memcpy call)
        }
      }
      call = call_, b = b_;
    }
    return data.data() + kBorder * row + kBorder;
  }
};

// the calling thread's copy (one for every instance of the passes)
inline Bordered& bordered_copy() {
  static thread_local Bordered copy;
  return copy;
}

// the calling thread's buffer for a sample's dL/dx with the bordered copy's layout (the
// backward's: zeroed per sample, its image copied out to grad_x)
inline std::vector<float>& bordered_gradient() {
  static thread_local std::vector<float> buffer;
  return buffer;
}

// Whether forward_impl warps each sample of packed rows from a bordered copy, under zeros
// padding: small planes (a sample's copy within 64 KiB) and no more input pixels than twice
// the output's points (the copy must cost less than what it saves: at four times, 60x60 ->
// 30x30, whose packed vectors are 29% edge vectors with the bench's θ, forward 0.91x and
// backward 0.91x on one channel, 0.74x / 0.76x on three; bare kernel, 2026-12-06, Intel Xeon).
inline bool bordered_pays(int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  return C * (H + 2 * kBorder) * (W + 2 * kBorder) * int64_t(sizeof(float)) <= (int64_t(1) << 16) && H * W <= 2 * Ho * Wo;
}
// a number for each call that copies, so that a thread's copy is never taken for another call's
inline std::atomic<uint64_t> bordered_calls{1};
#endif

// whether a sample's (C, H, W) elements fill C * H * W consecutive ones (NCHW or channels_last)
inline bool dense_sample(const Strides& s, int64_t C, int64_t H, int64_t W) {
  return (s.w == 1 && s.h == W && s.c == H * W) || (s.c == 1 && s.w == C && s.h == W * C);
}

// Fetches ahead (into L2) the share of the `elems` elements at p that output points
// [p0, p0 + n) of `points` stand for: called for each span of a sample with the next sample's
// input, it fetches all of it once, in order, as the sample is warped. (prefetcht1 and
// prefetcht2 measured alike; the address is an integer, as fetch_ahead's.)
template <typename T>
inline void fetch_share(const T* p, int64_t elems, int64_t p0, int64_t n, int64_t points) {
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(p);
  const int64_t bytes = elems * static_cast<int64_t>(sizeof(T));
  // (in double: bytes * p0 overflows int64 for samples of gigabytes warped to a billion points)
  const double share = static_cast<double>(bytes) / static_cast<double>(points);
  const int64_t from = static_cast<int64_t>(share * static_cast<double>(p0));
  const int64_t to = std::min(bytes, static_cast<int64_t>(share * static_cast<double>(p0 + n)));
  for (int64_t o = from & ~int64_t(63); o < to; o += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(base + static_cast<std::uintptr_t>(o)), 0, 1);
}

template <typename T, int LOC, int PAD, int MODE>
void forward_impl(const T* x, const Strides& xs, const Locator<T, LOC>& loc, T* out, const Strides& os, int64_t B,
                  int64_t C, const Constants<T>& k, int threads) {
  using S = Simd<T>;
  const int64_t Ho = k.Ho, Wo = k.Wo;
  // a block channel by channel: 1.07-1.10x forward from 256x1x28x28 to 8x3x160x160 against
  // every channel of a vector of points before the next vector; that order was 1.13x faster
  // at 32x3x224x224 until rows were fetched ahead (rows_ahead), and since then the channel
  // order ties or wins everywhere measured: 1.00-1.18x from 1x3x224x224 and 8x32x64x64 to
  // 2x8x256x256 (A/B of the bare kernel, one thread). Tried and not kept (2026-12-05, Zen 4, the
  // bench's θ): affine rows that fetch ahead taking single_pass instead of these two passes, the
  // rows ahead fetched for each 16 points' first one: 0.84x forward at 32x3x224x224 with every
  // channel per vector, 0.47x a channel at a time (A/B of the bare kernel, 11 rounds)
  // whether block() below can take this call's rows in a single pass (its layout tests; then rows
  // are fetched ahead only from kBilinearAheadFrom on, and not at all where fetch_next fetches the
  // next sample instead: the block without the prefetches, for 5 or 8 channels, read
  // 0.88-0.98x at 4x5x224x224 and 3x8x160x160)
  bool single = false;
#ifdef TORCHSTN_AVX2
  single = std::is_same_v<T, float> && MODE == LINEAR &&
           ((xs.w == 1 && os.w == 1 && C <= 4) || (!loc.packed && xs.c == 1 && os.c == 1 && C >= 2 && C <= 4));
#endif
  const bool beyond = exceeds(B, C, k, single ? kBilinearAheadFrom : kAheadFrom);
  // Beyond that, the single passes still take the rows where each sample's input is a dense slab
  // of 64 KiB or more, with the next sample's input fetched ahead as one stream (fetch_share):
  // a rotated row reads a few pixels from each of many input rows, which the hardware
  // prefetcher does not follow, but a sample's input read in order it does, and the sample is
  // then read from the caches. Forward against the block with its rows fetched ahead (A/B of
  // the bare kernel, the same bits, the bench's θ, one thread, nothing else running, 2026-12-06):
  // 32x3x224x224 1.65x NCHW, 1.90x channels_last; 16x3x224x224 1.88x; 2x3x512x512 1.77x;
  // 16x1x512x512 2.02x; 8x4x256x256 1.53x; 96x3x96x96 1.05x, 1.42x channels_last. Samples of
  // 48 KiB and less lost 2-5% (128x3x64x64, 512x1x64x64, 2048x1x28x28: the hardware follows
  // their inputs already); below kBilinearAheadFrom (the batch in L3) it was level (0.96-1.02x).
  const int64_t sample = C * k.H * k.W;
  const bool fetch_next = single && beyond && B > 1 && dense_sample(xs, C, k.H, k.W) &&
                          sample * static_cast<int64_t>(sizeof(T)) >= (int64_t(1) << 16);
  const bool large = beyond && !fetch_next;
#ifdef TORCHSTN_AVX2
  const bool bordered = std::is_same_v<T, float> && MODE == LINEAR && PAD == ZEROS && loc.packed &&
                        bordered_pays(C, k.H, k.W, Ho, Wo);
  const uint64_t call = bordered ? bordered_calls.fetch_add(1, std::memory_order_relaxed) : 0;
#endif
  const auto block = [&](int64_t b, const Span& span) {
    Block<T> blk;
    alignas(32) T acc[BLOCK];
    const int64_t n = span.n, nn = whole_vectors(n, LANES<T>);
    const int64_t ahead = rows_ahead(loc, k, b, span, large);
    if (fetch_next && b + 1 < B) fetch_share(x + (b + 1) * xs.b, sample, span.p0, span.n, Ho * Wo);
#ifdef TORCHSTN_AVX2
    if constexpr (std::is_same_v<T, float> && MODE == LINEAR) {
      // (row_spans below repeats this test and the two of the passes that follow)
      if (xs.w == 1 && os.w == 1 && C <= 4 && ahead == 0) {  // (packed rows: a contiguous block, os.h == Wo)
        const float* m = LOC == GRID ? nullptr : loc.matrix(b);
        const float* pairs = LOC == GRID ? loc.grid + (b * k.Ho * k.Wo + span.p0) * 2 : nullptr;
        float* ob = out + b * os.b + (loc.packed ? span.p0 : span.i * os.h + span.j0);
        if constexpr (PAD == ZEROS) {
          if (bordered) {
            Bordered& copy = bordered_copy();
            const float* xp = copy.of(x + b * xs.b, xs, C, k.H, k.W, call, b);
            Constants<float> kb = k;
            kb.sh = static_cast<int32_t>(copy.row);
            if constexpr (LOC == GRID) {
              single_pass<PAD, GRID_PAIRS, AFFINE, kBorder>(xp, copy.plane, ob, os.c, C, m, pairs, nullptr, 0.f, n, kb,
                                                            blk);
            } else {
              single_pass<PAD, PACKED, LOC, kBorder>(xp, copy.plane, ob, os.c, C, m, loc.px + span.p0,
                                                     loc.py + span.p0, 0.f, n, kb, blk);
            }
            return;
          }
        }
        if constexpr (LOC == GRID) {
          single_pass<PAD, GRID_PAIRS>(x + b * xs.b, xs.c, ob, os.c, C, m, pairs, nullptr, 0.f, n, k, blk);
        } else if (loc.packed) {
          single_pass<PAD, PACKED, LOC>(x + b * xs.b, xs.c, ob, os.c, C, m, loc.px + span.p0, loc.py + span.p0, 0.f, n,
                                        k, blk);
        } else {
          single_pass<PAD, ROW, LOC>(x + b * xs.b, xs.c, ob, os.c, C, m, loc.xs + span.j0, nullptr, loc.ys[span.i], n,
                                     k, blk);
        }
        return;
      }
    }
    if constexpr (std::is_same_v<T, float> && MODE == LINEAR) {
      if (!loc.packed && xs.c == 1 && os.c == 1 && C >= 2 && C <= 4 && ahead == 0) {  // channels side by side
        float* o = out + b * os.b + span.i * os.h + span.j0 * os.w;
        if constexpr (LOC != GRID) {
          single_pass_interleaved<PAD, ROW, LOC>(x + b * xs.b, o, os.w, C, loc.matrix(b), loc.xs + span.j0, nullptr,
                                                 loc.ys[span.i], n, k, blk);
        } else {
          single_pass_interleaved<PAD, GRID_PAIRS>(x + b * xs.b, o, os.w, C, nullptr,
                                                   loc.grid + (b * k.Ho * k.Wo + span.p0) * 2, nullptr, 0.f, n, k, blk);
        }
        return;
      }
    }
    if constexpr (std::is_same_v<T, float> && MODE == NEAREST && LOC != PROJECTIVE) {  // (nearest_rows)
      if (xs.w == 1 && os.w == 1 && ahead == 0) {  // (as the bilinear single pass: rows of unit stride)
        const float* xb = x + b * xs.b;
        float* ob = out + b * os.b + (loc.packed ? span.p0 : span.i * os.h + span.j0);
        if constexpr (LOC == GRID) {
          nearest_pass<PAD, GRID_PAIRS>(xb, xs.c, ob, os.c, C, nullptr, loc.grid + (b * k.Ho * k.Wo + span.p0) * 2,
                                        nullptr, 0.f, n, k);
        } else if (loc.packed) {
          nearest_pass<PAD, PACKED>(xb, xs.c, ob, os.c, C, loc.matrix(b), loc.px + span.p0, loc.py + span.p0, 0.f, n, k);
        } else {
          nearest_pass<PAD, ROW>(xb, xs.c, ob, os.c, C, loc.matrix(b), loc.xs + span.j0, nullptr, loc.ys[span.i], n, k);
        }
        return;
      }
    }
#endif
    locate<T, LOC, PAD, MODE>(loc, k, b, span, blk);
    if (os.w == 1) {  // written where computed (a copy through a buffer stalls the loads);
      // packed rows: os.h == Wo, so the block is contiguous
      const T* xb = x + b * xs.b;
      T* ob = out + b * os.b + (loc.packed ? span.p0 : span.i * os.h + span.j0);
      for (int64_t c = 0; c < C; ++c) {
        const T* xc = xb + c * xs.c;
        T* oc = ob + c * os.c;
        for (int64_t t = 0; t < nn; t += S::N) {
          if (ahead != 0) {
            fetch_ahead(xc, blk, t, ahead, k.sh);
          } else if (t + 2 * S::N < nn) {  // the rows two vectors ahead
            const T* p = xc + blk.off[0][t + 2 * S::N];
            __builtin_prefetch(p);
            __builtin_prefetch(p + k.sh);
          }
          S::store_upto(oc + t, interpolate<T, MODE>(xc, blk, t, k.sh, xs.w == 1), n - t);
        }
      }
      return;
    }
#ifdef TORCHSTN_AVX2
    if constexpr (std::is_same<T, float>::value) {
      if (xs.c == 1 && os.c == 1 && C <= 4) {  // channels side by side (never packed)
        const int64_t last = (k.H - 1) * k.sh + (k.W - 1) * k.sw + C - 4;  // the last whole-vector load
        interleaved<MODE>(x + b * xs.b, blk, n, C, out + b * os.b + span.i * os.h + span.j0 * os.w, os.w, last);
        return;
      }
    }
#endif
    for (int64_t c = 0; c < C; ++c) {  // (never packed)
      const T* xc = x + b * xs.b + c * xs.c;
      T* oc = out + b * os.b + c * os.c + span.i * os.h + span.j0 * os.w;
      for (int64_t t = 0; t < nn; t += S::N) S::store(acc + t, interpolate<T, MODE>(xc, blk, t, k.sh, xs.w == 1));
      for (int64_t t = 0; t < n; ++t) oc[t * os.w] = acc[t];
    }
  };
  // Whole output rows as spans where every span takes one of the single passes above (which
  // read the block only for a vector at a time) and none fetches rows ahead: their per-span
  // cost (the locations' constants, the block's setup) paid once per row instead of once per
  // 64 points: 1.08-1.17x forward at 1x1x224x224 and 1x3x224x224 (A/B of the bare kernel, one
  // thread, AVX2 build, Zen 3; the single passes index the block at a vector's place in it).
  // The layout tests of `single` (above) repeat block()'s and must stay equal to them: a whole
  // row taken by the two passes would overrun the block. (As functions shared by both, they made
  // GCC compile the channels_last pass 0.87-0.96x slower: A/B of the bare kernel, the same bits.)
  bool row_spans = false, packed_runs = false;
#ifdef TORCHSTN_AVX2
  row_spans = single && !loc.packed && !may_fetch_ahead(k, loc.packed, large);
  // Packed rows the same way, in runs of kPackedRun points (a whole 28x28 or 30x30 sample):
  // forward 1.26x at 256x1x28x28, 1.15x at 256x3x28x28, 1.11-1.12x at 256x1x60x60->30x30 and
  // 1x1x28x28, 1.07x at 64x3x32x32, grids 1.07-1.22x, homographies 1.29x at 256x1x28x28; runs of
  // 4 BLOCK points: 1.08-1.16x (A/B of the bare kernel, 15 rounds, the same bits; Intel Xeon,
  // 2026-12-06)
  packed_runs = single && loc.packed && !may_fetch_ahead(k, loc.packed, large);
#endif
  constexpr int64_t kPackedRun = 16 * BLOCK;
  // The nearest pass (nearest_pass) reads no block either: its spans are rows, or where the
  // output's rows follow each other and its points are located one by one, runs of kNearestRun
  // points across them (the per-span cost paid once per 4,096 points instead of once per 64).
  constexpr int64_t kNearestRun = 4096;
  bool nearest_rows = false;
#ifdef TORCHSTN_AVX2
  // (not homographies: their nearest pass measured 0.92x of the block at 64x3x64x64, A/B of the bare kernel)
  nearest_rows = std::is_same_v<T, float> && MODE == NEAREST && LOC != PROJECTIVE && xs.w == 1 && os.w == 1 &&
                 !may_fetch_ahead(k, loc.packed, large);
#endif
  const int64_t points = Ho * Wo;
  // runs across rows where the output's rows follow each other (its row at i * os.h + j0 = p0) and
  // the points are located one by one (a grid, or the packed x and y of affine rows)
  const bool nearest_runs = nearest_rows && os.h == Wo && (LOC == GRID || loc.packed);
  // per sample; the spans are split over threads
  const int64_t spans = nearest_runs                ? (points + kNearestRun - 1) / kNearestRun
                        : nearest_rows || row_spans ? Ho
                        : packed_runs               ? block_count(Ho, Wo, true, kPackedRun)
                                                    : block_count(Ho, Wo, loc.packed);
  parallel_for(B * spans, threads, [&](int64_t index) {
    const int64_t b = index / spans, s = index % spans;
    if (nearest_runs) {
      const int64_t p0 = s * kNearestRun;
      block(b, Span{p0, points - p0 < kNearestRun ? points - p0 : kNearestRun, p0 / Wo, p0 % Wo});
    } else {
      block(b, nearest_rows || row_spans ? Span{s * Wo, Wo, s, 0}
               : packed_runs             ? block_span(s, Ho, Wo, true, kPackedRun)
                                         : block_span(s, Ho, Wo, loc.packed));
    }
  });
}

// zero sample b of a (C, H, W) tensor with strides s (dense, any order of dimensions)
template <typename T>
void zero_sample(T* p, const Strides& s, int64_t C, int64_t H, int64_t W) {
  // a dense sample, NCHW or channels_last, in one memset (channels_last element by element
  // below was a tenth of its backward of dL/dx: 64x3x64x64)
  if (dense_sample(s, C, H, W)) {
    std::memset(p, 0, sizeof(T) * C * H * W);
    return;
  }
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t h = 0; h < H; ++h) {
      T* row = p + c * s.c + h * s.h;
      if (s.w == 1) {
        std::memset(row, 0, sizeof(T) * W);
      } else {
        for (int64_t w = 0; w < W; ++w) row[w * s.w] = 0;
      }
    }
  }
}

#ifdef __AVX512F__
// dL/dx of an affine bilinear warp under zeros padding, gathered: each input pixel sums the
// shares of the output points whose corners it is, sixteen pixels of a row at a time, and is
// written once, instead of each output point adding its four shares to its corners (the
// scatter's read-add-write per share and channel, backward_pass's). In pixel coordinates the
// warp is ix = a00 j + a01 i + c0, iy = a10 j + a11 i + c1 (output column j, row i); pixel
// (px, py) takes g (1 - |ix - px|) (1 - |iy - py|) from every point within one pixel of it on
// both axes (the bilinear weight it has as one of that point's corners; zero elsewhere), and
// those points lie in the parallelogram the inverse maps that square to: columns within ej
// of j*(p) = inverse (p - c), rows within ei. Per vector of pixels: the rows any of them
// needs (i* is linear along the row, so its ends bound them), per pixel its first column,
// each row of the output gradient read as a window of 32 floats from the vector's first
// column and picked per pixel (one permute per channel and column), the weight computed from
// the point's distance (1 - min(|u|, 1)), so that points outside the square add 0. The
// weights serve up to four channels at a time. Not the scatter's bits: the distances come
// from the warp's pixel coordinates taken relative to the window's first column and row in
// double (so that the floats stay as small as the distances: a zoomed-out or sheared warp's
// a00 j alone reaches thousands of pixels), and each pixel sums its shares in another order;
// the gradient is closer to float64's than the scatter's (max error against F.grid_sample in
// float64, θ the identity + 0.05 N(0, 1): 1.8e-5 against 9.2e-5 at 4x3x224x224, 8.6e-6 against
// 1.8e-5 at 8x3x64x64, F.grid_sample in float32 1.3e-4 and 2.3e-5; zoomed out 20 times
// 1.8e-6 against 4.0e-6, sheared by 100 9.0e-6 against 1.4e-4).
// Both gradients (A/B of the bare kernel, 15 rounds, θ the identity + 0.05 N(0, 1); Intel Xeon
// with AVX-512, 2026-12-06): 1.06-1.07x at 64x3x64x64, 1.14-1.19x at 32x3x224x224, 1.20-1.22x at
// 1x3x224x224, 1.09x at 256x3x28x28 (which took the bordered copy before), 1.41x at
// 8x16x32x32; with θ noise 0.1 1.05x and 1.10x. dL/dx alone: 2.12x at 64x3x64x64, 1.47x at
// 64x1x64x64, 1.75x at 8x2x64x64. Where the scatter stays (backward_impl's `gather`): one
// or two channels when θ's gradient is wanted too (the passes have located the points
// already: 0.93x at 32x1x224x224, 0.90x at 8x2x64x64), rows under 64 pixels of one channel
// (256x1x28x28: level), images shrunk to less than half their pixels (the gather's work
// grows with the input's pixels, the scatter's with the output's points: gathered anyway,
// 256x1x60x60 -> 30x30 ran 0.49x with both gradients and 0.58x with x's alone, 64x1x64x64 ->
// 32x32 0.49x, 32x3x224x224 -> 112x112 0.81x; 2026-12-06), channels side by side, other paddings,
// homographies and grids.
struct Gathered {
  double a00d, a01d, c0d, a10d, a11d, c1d;  // pixel coordinates of output point (j, i): a00 j + a01 i + c0, ...
  float a00, a10, c0, c1;                   // the same in float, where a vector needs them
  float i00, i01, i10, i11;                 // the inverse of (a00, a01; a10, a11)
  float ej, ei;                             // the parallelogram's half-widths, plus a margin for rounding
  int nj;                                   // columns per pixel and row
};

// Whether sample (matrix m) takes the gather, and its geometry: finite and moderate
// coordinates (within 2^13 pixels, so that float rounding stays far below the margin), at
// most four columns per pixel and row, the columns of sixteen pixels within a window of 32
// floats, and at most six rows per vector (a warp that rotates or shrinks the image much
// takes the scatter).
inline bool gathered_geometry(const float* m, const Constants<float>& k, Gathered* q) {
  // (the output's base grid: x = (2 j + 1 - Wo) / span_x, as axis_coordinates)
  const double span_x = axis_span(k.Wo, k.align_corners), span_y = axis_span(k.Ho, k.align_corners);
  const double ox = (1.0 - static_cast<double>(k.Wo)) / span_x, oy = (1.0 - static_cast<double>(k.Ho)) / span_y;
  const double ax = k.ax, ay = k.ay;
  const double a00 = ax * m[0] * 2 / span_x, a01 = ax * m[1] * 2 / span_y;
  const double a10 = ay * m[3] * 2 / span_x, a11 = ay * m[4] * 2 / span_y;
  const double c0 = ax * (m[0] * ox + m[1] * oy + m[2] + 1) - k.bx;
  const double c1 = ay * (m[3] * ox + m[4] * oy + m[5] + 1) - k.by;
  constexpr double kFar = 8192, kMargin = 1.0 / 32;
  if (!(std::fabs(c0) <= kFar && std::fabs(c1) <= kFar && std::fabs(a00) <= kFar && std::fabs(a01) <= kFar &&
        std::fabs(a10) <= kFar && std::fabs(a11) <= kFar)) {
    return false;  // (and not finite)
  }
  const double det = a00 * a11 - a01 * a10;
  if (!(std::fabs(det) > 1e-3)) return false;
  const double i00 = a11 / det, i01 = -a01 / det, i10 = -a10 / det, i11 = a00 / det;
  const double ej = std::fabs(i00) + std::fabs(i01) + kMargin, ei = std::fabs(i10) + std::fabs(i11) + kMargin;
  const int nj = static_cast<int>(std::ceil(2 * ej));
  // window: the vector's columns spread by 15 |i00|, one column of slack each side
  if (nj > 4 || 15 * std::fabs(i00) + nj + 2 > 31 || 2 * ei + 15 * std::fabs(i10) > 5) return false;
  *q = Gathered{a00, a01, c0, a10, a11, c1, float(a00), float(a10), float(c0), float(c1),
                float(i00), float(i01), float(i10), float(i11), float(ej), float(ei), nj};
  return true;
}

// the float at p + n, read only where `mask` says (n may reach before p: an integer address)
inline __m512 masked_at(__mmask16 mask, const float* p, int64_t n) {
  return _mm512_maskz_loadu_ps(mask, reinterpret_cast<const float*>(reinterpret_cast<std::uintptr_t>(p) +
                                                                     static_cast<std::uintptr_t>(n * 4)));
}

// dL/dx of NC channels of one sample, written whole (rows of unit stride): gx and g at
// their channel 0, with their channel and row strides. Returns whether every value it wrote
// is finite: where it is not, an output gradient that is not finite (or sums that overflow)
// may have reached pixels that are not the corners of its point (0 times it is NaN), and the
// caller scatters the sample instead (which gives NaN to those corners only)
template <int NC>
bool gather_x_gradient(float* gx, int64_t xc, int64_t xh, const float* g, int64_t gc, int64_t gh, const Gathered& q,
                       int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  const __m512 lane = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 one = _mm512_set1_ps(1.f), a00 = _mm512_set1_ps(q.a00), a10 = _mm512_set1_ps(q.a10);
  __m512 finite = _mm512_setzero_ps();  // 0 while every sum is finite (0 times each), NaN after
  for (int64_t py = 0; py < H; ++py) {
    const float dy = static_cast<float>(py) - q.c1;
    for (int64_t px0 = 0; px0 < W; px0 += 16) {
      const int64_t nl = W - px0 < 16 ? W - px0 : 16;
      const __mmask16 live = static_cast<__mmask16>((1u << nl) - 1);
      const float dx0 = static_cast<float>(px0) - q.c0;
      const __m512 P = _mm512_add_ps(_mm512_set1_ps(static_cast<float>(px0)), lane);
      // each pixel's first column, and the window's (one column of slack for rounding)
      const __m512 js = _mm512_fmadd_ps(_mm512_set1_ps(q.i00), _mm512_sub_ps(P, _mm512_set1_ps(q.c0)),
                                        _mm512_set1_ps(q.i01 * dy));
      const __m512i first = _mm512_add_epi32(
          _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_sub_ps(js, _mm512_set1_ps(q.ej)), _MM_FROUND_TO_NEG_INF)),
          _mm512_set1_epi32(1));
      const float ja = q.i00 * dx0 + q.i01 * dy, jb = ja + q.i00 * static_cast<float>(nl - 1);
      const int64_t base = static_cast<int64_t>(std::floor(std::min(ja, jb) - q.ej));
      const float ia = q.i10 * dx0 + q.i11 * dy, ib = ia + q.i10 * static_cast<float>(nl - 1);
      const int64_t imin = std::max<int64_t>(static_cast<int64_t>(std::floor(std::min(ia, ib) - q.ei)) + 1, 0);
      const int64_t imax = std::min<int64_t>(static_cast<int64_t>(std::floor(std::max(ia, ib) + q.ei)), Ho - 1);
      // the window's floats within the output's columns [0, Wo): load16_within's masks, made
      // once per vector here rather than per load (load16_within itself: 0.86-0.94x, the same bits)
      const int64_t from = std::max<int64_t>(-base, 0), to = std::min<int64_t>(Wo - base, 32);
      const auto within = [&](int64_t at) -> __mmask16 {
        const int64_t a = std::max<int64_t>(from - at, 0), e = std::min<int64_t>(to - at, 16);
        return e <= a ? __mmask16(0) : static_cast<__mmask16>(((1u << (e - a)) - 1) << a);
      };
      const __mmask16 low = within(0), high = within(16);
      const __m512i at0 = _mm512_sub_epi32(first, _mm512_set1_epi32(static_cast<int32_t>(base)));
      // u = ix - px and v = iy - py of candidate column n in row imin, taken from the window's
      // first column and row imin in double, so that the floats stay as small as the distances
      // (a zoomed-out or sheared warp's a00 j alone reaches thousands of pixels)
      const __m512 u0 = _mm512_sub_ps(
          _mm512_set1_ps(static_cast<float>(q.a00d * base + q.a01d * imin + q.c0d - static_cast<double>(px0))), lane);
      const __m512 v0 = _mm512_set1_ps(static_cast<float>(q.a10d * base + q.a11d * imin + q.c1d - static_cast<double>(py)));
      __m512 un[4], vn[4];
      __m512i atn[4];
      for (int n = 0; n < 4; ++n) {
        atn[n] = _mm512_add_epi32(at0, _mm512_set1_epi32(n));  // (the column's float in the window)
        const __m512 j = _mm512_cvtepi32_ps(atn[n]);
        un[n] = _mm512_fmadd_ps(a00, j, u0);
        vn[n] = _mm512_fmadd_ps(a10, j, v0);
      }
      __m512 acc[NC];
      for (int c = 0; c < NC; ++c) acc[c] = _mm512_setzero_ps();
      for (int64_t r = imin; r <= imax; ++r) {
        __m512 lo[NC], hi[NC];
        for (int c = 0; c < NC; ++c) {
          const float* row = g + c * gc + r * gh;
          lo[c] = masked_at(low, row, base);
          hi[c] = masked_at(high, row, base + 16);
        }
        const __m512 ru = _mm512_set1_ps(static_cast<float>(q.a01d * static_cast<double>(r - imin)));
        const __m512 rv = _mm512_set1_ps(static_cast<float>(q.a11d * static_cast<double>(r - imin)));
        for (int n = 0; n < q.nj; ++n) {
          const __m512 u = _mm512_add_ps(un[n], ru), v = _mm512_add_ps(vn[n], rv);
          const __m512 wx = _mm512_sub_ps(one, _mm512_min_ps(_mm512_abs_ps(u), one));
          const __m512 w = _mm512_fnmadd_ps(wx, _mm512_min_ps(_mm512_abs_ps(v), one), wx);  // wx (1 - min(|v|, 1))
          for (int c = 0; c < NC; ++c) {
            acc[c] = _mm512_fmadd_ps(w, _mm512_permutex2var_ps(lo[c], atn[n], hi[c]), acc[c]);
          }
        }
      }
      for (int c = 0; c < NC; ++c) {
        _mm512_mask_storeu_ps(gx + c * xc + py * xh + px0, live, acc[c]);
        finite = _mm512_fmadd_ps(acc[c], _mm512_setzero_ps(), finite);
      }
    }
  }
  return _mm512_cmp_ps_mask(finite, finite, _CMP_UNORD_Q) == 0;
}

// dL/dx of sample b gathered (any number of channels, four at a time), if its geometry
// allows (gathered_geometry) and every value is finite; returns whether it wrote it. (Not
// inlined: in backward_impl's body the gather made GCC stop inlining the passes there, and
// the θ gradient of 256x1x28x28 ran 0.94x.)
__attribute__((noinline)) bool gathered(float* gx, const Strides& xs, const float* g, const Strides& gs, int64_t C,
                                        const float* m, const Constants<float>& k) {
  Gathered q;
  if (!gathered_geometry(m, k, &q)) return false;
  bool finite = true;
  for (int64_t c = 0; c < C; c += 4) {
    float* gxc = gx + c * xs.c;
    const float* gc = g + c * gs.c;
    switch (C - c < 4 ? C - c : 4) {
      case 1: finite &= gather_x_gradient<1>(gxc, xs.c, xs.h, gc, gs.c, gs.h, q, k.H, k.W, k.Ho, k.Wo); break;
      case 2: finite &= gather_x_gradient<2>(gxc, xs.c, xs.h, gc, gs.c, gs.h, q, k.H, k.W, k.Ho, k.Wo); break;
      case 3: finite &= gather_x_gradient<3>(gxc, xs.c, xs.h, gc, gs.c, gs.h, q, k.H, k.W, k.Ho, k.Wo); break;
      default: finite &= gather_x_gradient<4>(gxc, xs.c, xs.h, gc, gs.c, gs.h, q, k.H, k.W, k.Ho, k.Wo); break;
    }
  }
  return finite;
}
#endif

// grad_x (may be null; strides of x): zeroed and accumulated here. grad_loc (may be null):
// the grid's gradient (GRID) or the matrix's (AFFINE, PROJECTIVE). Each sample's slice of
// grad_x and of grad_theta is written by one thread only (the loop is over the batch), so
// there are no races and the matrix gradient needs no reduction across threads; it is
// summed in vector lanes per block and in double across blocks, always in the same order.
template <typename T, int LOC, int PAD, int MODE>
void backward_impl(const T* x, const Strides& xs, const Locator<T, LOC>& loc, const T* grad_out, const Strides& gs,
                   T* grad_x, T* grad_loc, int64_t B, int64_t C, const Constants<T>& k, int threads,
                   bool large_batch = false) {
  using S = Simd<T>;
  using V = typename S::V;
  const int64_t Ho = k.Ho, Wo = k.Wo;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  // (large_batch: one sample of a batch beyond kAheadFrom, whose rows are fetched ahead as the batch's)
  const bool large = large_batch || exceeds(B, C, k, kAheadFrom);
#ifdef TORCHSTN_AVX2
  // Packed rows under zeros padding with dL/dx wanted: x read from the bordered copy, as the
  // forward does, and dL/dx added into a zeroed buffer of the same layout whose image is then
  // copied out to grad_x, so that the vectors along the image's edges take the inside path
  // (the same bits: the shares the border receives are those of corners outside, which the
  // other paths drop, and each pixel's shares come in the same order). Both gradients 1.09x
  // at 256x1x28x28 and 1x1x28x28, x's alone 1.10x, homographies 1.03x, grids 1.02x
  // (ab_kernel.py --bare, AVX-512 build, θ noise 0.05); θ's alone does not take it (1.01x).
  const bool bordered = std::is_same_v<T, float> && MODE == LINEAR && PAD == ZEROS && loc.packed &&
                        grad_x != nullptr && xs.w == 1 && gs.w == 1 && bordered_pays(C, k.H, k.W, Ho, Wo);
  [[maybe_unused]] const uint64_t call = bordered ? bordered_calls.fetch_add(1, std::memory_order_relaxed) : 0;
#else
  constexpr bool bordered = false;
#endif
#ifdef __AVX512F__
  // dL/dx gathered per input pixel (gather_x_gradient) for samples whose geometry allows it
  // (gathered_geometry) and whose output gradient is finite: several channels or wide rows,
  // not shrunk much (the gather's work grows with the input's pixels, the scatter's with the
  // output's points)
  const bool gather = std::is_same_v<T, float> && MODE == LINEAR && PAD == ZEROS && LOC == AFFINE &&
                      grad_x != nullptr && (!bordered || C >= 3) && xs.w == 1 && gs.w == 1 &&
                      (C >= 3 || (grad_loc == nullptr && (C == 2 || k.W >= 64))) &&
                      k.H * k.W <= 2 * Ho * Wo && std::max(std::max(k.H, k.W), std::max(Ho, Wo)) <= 8192;
#else
  constexpr bool gather = false;
#endif
  const auto body = [&](int64_t b, auto channels) {  // channels: C, or the constant 1 (below)
    const int64_t C = channels;
#ifdef TORCHSTN_AVX2
    const float* xp = nullptr;  // bordered: the copy's pixel (0, 0), its gradient's, and the copy's strides
    float* gp = nullptr;
    int64_t plane = 0;
    Constants<T> kb = k;
    if constexpr (std::is_same_v<T, float> && MODE == LINEAR && PAD == ZEROS) {
      if (bordered) {
        Bordered& copy = bordered_copy();
        xp = copy.of(x + b * xs.b, xs, C, k.H, k.W, call, b);
        std::vector<float>& gradient = bordered_gradient();
        gradient.assign(copy.data.size(), 0.f);
        gp = gradient.data() + (xp - copy.data.data());
        plane = copy.plane;
        kb.sh = static_cast<int32_t>(copy.row);
      }
    }
#endif
    if (grad_x && !bordered) zero_sample(grad_x + b * xs.b, xs, C, k.H, k.W);
#ifdef TORCHSTN_AVX2
    if constexpr (std::is_same_v<T, float> && MODE == NEAREST && LOC != PROJECTIVE) {  // (as the forward)
      // x's rows of unit stride, the output gradient's rows following each other (an NCHW gradient: the
      // operator hands the kernel a dense one): the sample's points in one run, or affine rows one by one
      if (xs.w == 1 && gs.w == 1 && gs.h == Wo) {
        float* gxb = grad_x ? grad_x + b * xs.b : nullptr;
        const float* gb = grad_out + b * gs.b;
        bool bad = false;
        if constexpr (LOC == GRID) {
          nearest_backward_pass<PAD, GRID_PAIRS>(gxb, xs.c, gb, gs.c, C, nullptr, loc.grid + b * Ho * Wo * 2, nullptr,
                                                 0.f, grad_loc ? grad_loc + b * Ho * Wo * 2 : nullptr, Ho * Wo, k);
        } else if (loc.packed) {
          bad = nearest_backward_pass<PAD, PACKED>(gxb, xs.c, gb, gs.c, C, loc.matrix(b), loc.px, loc.py, 0.f, nullptr,
                                                   Ho * Wo, k);
        } else {
          for (int64_t i = 0; i < Ho; ++i) {
            bad |= nearest_backward_pass<PAD, ROW>(gxb, xs.c, gb + i * gs.h, gs.c, C, loc.matrix(b), loc.xs, nullptr,
                                                   loc.ys[i], nullptr, Wo, k);
          }
        }
        if (LOC == AFFINE && grad_loc != nullptr) {  // θ: 0, NaN where a point is not finite (as the block's sums)
          for (int r = 0; r < 6; ++r) grad_loc[b * 6 + r] = bad ? nan : 0.f;
        }
        return;
      }
    }
#endif
    LaneSums<T> acc[9];
    Block<T> blk;
    constexpr int64_t kPacked = 16 * BLOCK;
    alignas(32) T gix[kPacked], giy[kPacked], go[LANES<T>], part[4][LANES<T>];
    // Packed rows and rows through the one pass (affine rows or a grid: the Block unused) in blocks of
    // kPacked points, a whole 28x28 or 30x30 sample, θ's sums still made BLOCK points at a time
    // (below): the per-block cost (the pass's constants, the sums' setup) paid once per sample.
    // Both gradients 1.09x at 256x1x60x60->30x30, 1.05-1.06x at 256x1x28x28 and 1x1x28x28,
    // 1.02x at 64x3x32x32 and 256x3x28x28, grids 1.01-1.06x (0.97x at 64x3x32x32); 4 BLOCK
    // points: 1.06-1.07x (A/B of the bare kernel, 15 rounds, the same bits; Intel Xeon, 2026-12-06).
    // Wider rows of affine rows likewise a whole row per block (up to kPacked points): both
    // gradients 1.03-1.08x at 224 px, 0.99x at 64x3x64x64 (two runs; the same bits, machine and
    // day); a grid's wider rows so ran 0.92-0.95x at 32x3x224x224, so they keep BLOCK.
    const bool longer = std::is_same_v<T, float> && MODE == LINEAR && LOC != PROJECTIVE && kOnePass &&
                        xs.w == 1 && gs.w == 1;
    const int64_t size = longer && (loc.packed || LOC != GRID) ? kPacked : BLOCK;
    const int64_t blocks = block_count(Ho, Wo, loc.packed, size);
    for (int64_t index = 0; index < blocks; ++index) {
      const Span span = block_span(index, Ho, Wo, loc.packed, size);
      const int64_t n = span.n, nn = whole_vectors(n, LANES<T>);
      bool one_pass = false;
#ifdef TORCHSTN_AVX2
      if constexpr (std::is_same_v<T, float> && MODE == LINEAR) {
        if (xs.w == 1 && gs.w == 1) {  // (packed rows: a contiguous block, gs.h == Wo)
          one_pass = true;
          const int64_t ahead = rows_ahead(loc, k, b, span, large);
          const float* xb = x + b * xs.b;
          float* gxb = grad_x ? grad_x + b * xs.b : nullptr;
          const float* gb = grad_out + b * gs.b + (loc.packed ? span.p0 : span.i * gs.h + span.j0);
          const float* pairs = LOC == GRID ? loc.grid + (b * Ho * Wo + span.p0) * 2 : nullptr;
          if (PAD == ZEROS && bordered) {  // (packed rows)
            if constexpr (PAD == ZEROS && LOC == GRID) {
              backward_pass<PAD, GRID_PAIRS, AFFINE, kBorder>(xp, plane, gp, gb, gs.c, C, nullptr, pairs, nullptr, 0.f,
                                                              n, grad_loc != nullptr, 0, kb, gix, giy, blk);
            } else if constexpr (PAD == ZEROS) {
              backward_pass<PAD, PACKED, LOC, kBorder>(xp, plane, gp, gb, gs.c, C, loc.matrix(b), loc.px + span.p0,
                                                       loc.py + span.p0, 0.f, n, grad_loc != nullptr, 0, kb, gix, giy,
                                                       blk);
            }
          } else if constexpr (LOC == GRID) {
            backward_pass<PAD, GRID_PAIRS>(xb, xs.c, gxb, gb, gs.c, C, nullptr, pairs, nullptr, 0.f, n,
                                           grad_loc != nullptr, ahead, k, gix, giy, blk);
          } else if (loc.packed) {
            backward_pass<PAD, PACKED, LOC>(xb, xs.c, gxb, gb, gs.c, C, loc.matrix(b), loc.px + span.p0,
                                            loc.py + span.p0, 0.f, n, grad_loc != nullptr, ahead, k, gix, giy, blk);
          } else {
            backward_pass<PAD, ROW, LOC>(xb, xs.c, gxb, gb, gs.c, C, loc.matrix(b), loc.xs + span.j0, nullptr,
                                         loc.ys[span.i], n, grad_loc != nullptr, ahead, k, gix, giy, blk);
          }
        }
      }
#endif
      if (!one_pass) {
        locate<T, LOC, PAD, MODE>(loc, k, b, span, blk);
        bool side_by_side = false;
#ifdef TORCHSTN_AVX2
        if constexpr (std::is_same<T, float>::value) {
          if (xs.c == 1 && C > 1 && C <= 4) {  // channels_last
            side_by_side = true;
            const int64_t last = (k.H - 1) * k.sh + (k.W - 1) * k.sw + C - 4;  // the last whole vector
            const int64_t at = loc.packed ? span.p0 : span.i * gs.h + span.j0 * gs.w;
            const float* xb = x + b * xs.b;
            float* gxb = grad_x ? grad_x + b * xs.b : nullptr;
            const float* gb = grad_out + b * gs.b + at;
            const int64_t step = loc.packed ? 1 : gs.w;
            float* ix = grad_loc ? gix : nullptr;
            if (C == 2) interleaved_backward<MODE, 2>(xb, gxb, blk, n, gb, step, gs.c, last, ix, giy);
            if (C == 3) interleaved_backward<MODE, 3>(xb, gxb, blk, n, gb, step, gs.c, last, ix, giy);
            if (C == 4) interleaved_backward<MODE, 4>(xb, gxb, blk, n, gb, step, gs.c, last, ix, giy);
            for (int64_t t = n; t < nn; ++t) gix[t] = giy[t] = T(0);
          }
        }
#endif
        // every channel of a vector of points before the next vector (weights, fractions and
        // offsets stay in registers)
        const V one = S::set1(T(1));
        const int64_t ahead = side_by_side ? 0 : rows_ahead(loc, k, b, span, large);
        for (int64_t t = 0; !side_by_side && t < nn; t += S::N) {  // (side by side: done above)
          const int64_t live = n - t;  // lanes that are points (the rest is padding)
          for (int64_t c = 0; ahead != 0 && c < C; ++c) {
            if (grad_x) fetch_ahead<1>(grad_x + b * xs.b + c * xs.c, blk, t, ahead, k.sh);
            if (grad_loc && MODE == LINEAR) fetch_ahead(x + b * xs.b + c * xs.c, blk, t, ahead, k.sh);
          }
          const V w[4] = {S::load(blk.w[0] + t), S::load(blk.w[1] + t), S::load(blk.w[2] + t), S::load(blk.w[3] + t)};
          const V tx = S::load(blk.tx + t), ty = S::load(blk.ty + t);
          const bool inner = S::all(blk.inner + t);
          V sx = S::zero(), sy = S::zero();
          for (int64_t c = 0; c < C; ++c) {
            const int64_t at = loc.packed ? span.p0 + t : span.i * gs.h + (span.j0 + t) * gs.w;
            const T* goc = grad_out + b * gs.b + c * gs.c + at;
            V g;
            if (gs.w == 1) {  // read in place (a copy through a buffer stalls the loads)
              g = S::load_upto(goc, live);
            } else {
              for (int l = 0; l < S::N; ++l) go[l] = l < live ? goc[l * gs.w] : T(0);
              g = S::load(go);
            }
            if (grad_x) {  // scatter: two points may share a pixel, so one point at a time
              T* gxc = grad_x + b * xs.b + c * xs.c;
              for (int q = 0; q < 4; ++q) S::store(part[q], S::mul(w[q], g));
              const int64_t end = live < S::N ? live : S::N;
              if (inner) {  // all corners inside: no test per corner, the corners at fixed steps
                const int32_t d1 = k.sw, d2 = k.sh, d3 = k.sh + k.sw;
                for (int64_t l = 0; l < end; ++l) {
                  T* p = gxc + blk.off[0][t + l];
                  p[0] += part[0][l];
                  p[d1] += part[1][l];
                  p[d2] += part[2][l];
                  p[d3] += part[3][l];
                }
              } else {  // (a corner outside must not touch pixel 0: a chain of read-add-writes there)
                for (int64_t l = 0; l < end; ++l) {
                  for (int q = 0; q < (MODE == NEAREST ? 1 : 4); ++q) {
                    if (blk.valid[q][t + l] != 0) gxc[blk.off[q][t + l]] += part[q][l];
                  }
                }
              }
            }
            if (grad_loc && MODE == LINEAR) {  // (nearest: no location gradient)
              V v[4];
              corners(x + b * xs.b + c * xs.c, blk, t, k.sh, xs.w == 1, v);
              const V dx = S::add(S::mul(S::sub(v[1], v[0]), S::sub(one, ty)), S::mul(S::sub(v[3], v[2]), ty));
              const V dy = S::add(S::mul(S::sub(v[2], v[0]), S::sub(one, tx)), S::mul(S::sub(v[3], v[1]), tx));
              sx = S::add(sx, S::mul(g, dx));
              sy = S::add(sy, S::mul(g, dy));
            }
          }
          S::store(gix + t, sx);
          S::store(giy + t, sy);
        }
        for (int64_t t = 0; grad_loc && t < nn; ++t) {  // dL / d(normalised location); 0 in the padding
          gix[t] *= blk.dix[t];
          giy[t] *= blk.diy[t];
        }
        if (grad_loc && blk.any_bad) {  // NaN where the location is not finite
          for (int64_t t = 0; t < n; ++t) {
            gix[t] = blk.bad[t] != 0 ? nan : gix[t];
            giy[t] = blk.bad[t] != 0 ? nan : giy[t];
          }
        }
      }
      if (!grad_loc) continue;
      if (LOC == GRID) {
        T* q = grad_loc + (b * Ho * Wo + span.p0) * 2;
        for (int64_t t = 0; t < n; ++t) {
          q[2 * t] = gix[t];
          q[2 * t + 1] = giy[t];
        }
        continue;
      }
      // the matrix rows: sum over the block of dL/dp * (x, y, 1); y constant along a row, or
      // per point where rows are packed
      const T* xv = loc.packed ? loc.px + span.p0 : loc.xs + span.j0;
      const T* yv = loc.packed ? loc.py + span.p0 : nullptr;
      const T y = loc.packed ? T(0) : loc.ys[span.i];
      // summed in parts of BLOCK points, as the blocks of every other path are (a longer span of
      // packed rows gives the same sums)
      for (int64_t t0 = 0; t0 < nn; t0 += BLOCK) {
        const int64_t t1 = t0 + BLOCK < nn ? t0 + BLOCK : nn;
        V s0 = S::zero(), s2 = S::zero(), s3 = S::zero(), s5 = S::zero(), s6 = S::zero(), s8 = S::zero();
        V s1 = S::zero(), s4 = S::zero(), s7 = S::zero();  // packed: the y terms
        for (int64_t t = t0; t < t1; t += S::N) {
          const V xt = S::load(xv + t);
          const V yt = yv ? S::load(yv + t) : S::zero();
          V px = S::load(gix + t), py = S::load(giy + t);
          if (LOC == PROJECTIVE) {
            const V w = S::load(blk.g + t);
            px = S::div(px, w);
            py = S::div(py, w);
            // d(p / w) / dw = -(p / w) / w, with p / w the location itself; none inside the guard
            const V dw = S::mul(S::sub(S::zero(), S::add(S::mul(px, S::load(blk.gx + t)), S::mul(py, S::load(blk.gy + t)))),
                                S::load(blk.keep + t));
            s6 = S::add(s6, S::mul(dw, xt));
            s7 = S::add(s7, S::mul(dw, yt));
            s8 = S::add(s8, dw);
          }
          s0 = S::add(s0, S::mul(px, xt));
          s2 = S::add(s2, px);
          s3 = S::add(s3, S::mul(py, xt));
          s5 = S::add(s5, py);
          s1 = S::add(s1, S::mul(px, yt));
          s4 = S::add(s4, S::mul(py, yt));
        }
        const double row_y = y;  // (not packed: y along the row)
        const double* by = yv ? nullptr : &row_y;
        acc[0].add(s0);
        acc[1].add(yv ? s1 : s2, by);
        acc[2].add(s2);
        acc[3].add(s3);
        acc[4].add(yv ? s4 : s5, by);
        acc[5].add(s5);
        if (LOC == PROJECTIVE) {
          acc[6].add(s6);
          acc[7].add(yv ? s7 : s8, by);
          acc[8].add(s8);
        }
      }
    }
#ifdef TORCHSTN_AVX2
    if constexpr (std::is_same_v<T, float>) {
      for (int64_t c = 0; gp != nullptr && c < C; ++c) {  // the bordered gradient's image into grad_x
        for (int64_t h = 0; h < k.H; ++h) {
          std::memcpy(grad_x + b * xs.b + c * xs.c + h * xs.h, gp + c * plane + h * kb.sh, sizeof(float) * k.W);
        }
      }
    }
#endif
    if (grad_loc && LOC != GRID) {
      constexpr int entries = LOC == AFFINE ? 6 : 9;
      T* q = grad_loc + b * entries;
      for (int r = 0; r < entries; ++r) q[r] = static_cast<T>(acc[r].total());
    }
  };
  // one channel as a constant: the channel loops vanish, 1.09x (both gradients) and 1.10x
  // (θ only, the STN case) at 256x1x28x28 (A/B of the bare kernel, bit-identical)
  parallel_for(B, threads, [&](int64_t b) {
#ifdef __AVX512F__
    if constexpr (std::is_same_v<T, float> && MODE == LINEAR && PAD == ZEROS && LOC == AFFINE) {
      if (gather && gathered(grad_x + b * xs.b, xs, grad_out + b * gs.b, gs, C, loc.matrix(b), k)) {
        if (grad_loc) {  // θ's gradient: this sample alone, by the passes without their scatter
          // (a call of its own, so that the body stays the one every other sample runs; rows are
          // fetched ahead where the batch's would be)
          Locator<T, LOC> one = loc;
          one.theta = loc.matrix(b);
          backward_impl<T, LOC, PAD, MODE>(x + b * xs.b, xs, one, grad_out + b * gs.b, gs, nullptr, grad_loc + b * 6,
                                           1, C, k, 1, large);
        }
        return;
      }
    }
#endif
    if (C == 1) {
      body(b, std::integral_constant<int64_t, 1>{});
    } else {
      body(b, C);
    }
  });
}

template <typename T, int LOC, int MODE>
int dispatch_padding(bool backward, const T* x, const Strides& xs, const Locator<T, LOC>& loc, T* out_or_grad_out,
                     const Strides& os, T* grad_x, T* grad_loc, int64_t B, int64_t C, const Constants<T>& k,
                     int padding, int threads) {
  switch (padding) {
#define TORCHSTN_CASE(PAD)                                                                                     \
  case PAD:                                                                                                    \
    if (backward)                                                                                              \
      backward_impl<T, LOC, PAD, MODE>(x, xs, loc, out_or_grad_out, os, grad_x, grad_loc, B, C, k, threads);   \
    else                                                                                                       \
      forward_impl<T, LOC, PAD, MODE>(x, xs, loc, out_or_grad_out, os, B, C, k, threads);                      \
    return 0;
    TORCHSTN_CASE(ZEROS)
    TORCHSTN_CASE(BORDER)
    TORCHSTN_CASE(REFLECTION)
#undef TORCHSTN_CASE
    default:
      return 1;
  }
}

template <typename T, int LOC>
int dispatch(bool backward, const T* x, const Strides& xs, const Locator<T, LOC>& loc, T* out_or_grad_out,
             const Strides& os, T* grad_x, T* grad_loc, int64_t B, int64_t C, const Constants<T>& k, int mode,
             int padding, int threads) {
  if (mode == LINEAR)
    return dispatch_padding<T, LOC, LINEAR>(backward, x, xs, loc, out_or_grad_out, os, grad_x, grad_loc, B, C, k,
                                            padding, threads);
  if (mode == NEAREST)
    return dispatch_padding<T, LOC, NEAREST>(backward, x, xs, loc, out_or_grad_out, os, grad_x, grad_loc, B, C, k,
                                             padding, threads);
  return 4;
}

// grad_out is const in the backward; the forward writes into it as `out`
// The output points' normalised coordinates: xv (Wo + BLOCK padding), yv (Ho) and, for rows
// packed into blocks, every point's pxv, pyv (Ho Wo + BLOCK). Kept from one call to the next
// on the calling thread and remade only when the output's size, align_corners or packing
// change: making them (four allocations, Ho Wo stores when packed) was about a tenth of a
// batch-1 28x28 forward.
template <typename T>
struct OutputPoints {
  int64_t Ho = -1, Wo = -1;
  bool align_corners = false, packed = false;
  std::vector<T> xv, yv, pxv, pyv;

  void make(int64_t ho, int64_t wo, bool ac, bool pk) {
    if (ho == Ho && wo == Wo && ac == align_corners && pk == packed) return;
    Ho = -1;  // (invalid until made)
    xv = axis_coordinates<T>(wo, ac, BLOCK);
    yv = axis_coordinates<T>(ho, ac, 0);
    pxv.clear();
    pyv.clear();
    if (pk) {
      pxv.assign(ho * wo + BLOCK, T(0));
      pyv.assign(ho * wo + BLOCK, T(0));
      for (int64_t i = 0, p = 0; i < ho; ++i) {
        for (int64_t j = 0; j < wo; ++j, ++p) {
          pxv[p] = xv[j];
          pyv[p] = yv[i];
        }
      }
    }
    Ho = ho, Wo = wo, align_corners = ac, packed = pk;
  }
};

template <typename T>
int run(bool backward, int location, int mode, const T* x, const int64_t* strides, const T* grid_or_theta, double eps,
        const T* out_or_grad_out, T* grad_x, T* grad_loc, int64_t B, int64_t C, int64_t H, int64_t W, int64_t Ho,
        int64_t Wo, int padding, int align_corners, int threads) {
  const Strides xs{strides[0], strides[1], strides[2], strides[3]};
  const Strides os{strides[4], strides[5], strides[6], strides[7]};
  // corner offsets are int32: (x0, y0) in [-1, W] x [-1, H], plus a corner's step; a point beyond
  // 2^30 is taken for one far outside (locate), so no side may be longer
  if (xs.h < 0 || xs.w < 0 || (H + 1) * xs.h + (W + 1) * xs.w >= (int64_t(1) << 31)) return 3;
  if (H > (int64_t(1) << 30) || W > (int64_t(1) << 30)) return 3;
  T* buffer = const_cast<T*>(out_or_grad_out);
  if (B * C * Ho * Wo < kSerialBelow) threads = 1;
  const Constants<T> k(H, W, Ho, Wo, align_corners != 0, static_cast<T>(eps), xs);
  // rows packed into blocks: an output narrower than a block whose rows follow each other
  const bool packed = Wo < BLOCK && os.w == 1 && os.h == Wo;
  static thread_local OutputPoints<T> points;  // (the calling thread's: the workers only read it)
  if (location != GRID) points.make(Ho, Wo, align_corners != 0, packed);
  const std::vector<T>&xv = points.xv, &yv = points.yv, &pxv = points.pxv, &pyv = points.pyv;
  switch (location) {
    case GRID: {
      const Locator<T, GRID> loc{grid_or_theta, nullptr, nullptr, nullptr, 0, Ho, Wo, packed, nullptr, nullptr};
      return dispatch<T, GRID>(backward, x, xs, loc, buffer, os, grad_x, grad_loc, B, C, k, mode, padding, threads);
    }
    case AFFINE: {
      const Locator<T, AFFINE> loc{nullptr, grid_or_theta, xv.data(), yv.data(),  0,
                                   Ho,      Wo,            packed,    pxv.data(), pyv.data()};
      return dispatch<T, AFFINE>(backward, x, xs, loc, buffer, os, grad_x, grad_loc, B, C, k, mode, padding, threads);
    }
    case PROJECTIVE: {
      const Locator<T, PROJECTIVE> loc{nullptr, grid_or_theta, xv.data(),  yv.data(), static_cast<T>(eps),
                                       Ho,      Wo,            packed,     pxv.data(), pyv.data()};
      return dispatch<T, PROJECTIVE>(backward, x, xs, loc, buffer, os, grad_x, grad_loc, B, C, k, mode, padding, threads);
    }
    default:
      return 2;
  }
}

}  // namespace

extern "C" {

// Returns 0 on success, 1 for an unknown padding, 2 for an unknown location code, 3 when
// the input's pixel offsets do not fit int32, 4 for an unknown mode (0 bilinear, 1 nearest).
// geometry: 19 int64 that the caller builds once per shape and options (one argument instead
// of sixteen: each argument ctypes converts costs about 0.1 us of a batch-1 call): location,
// mode, B, C, H, W, Ho, Wo, padding, align_corners, threads, then 8 element strides, x's
// (batch, channel, height, width) and out's (forward) or grad_out's (backward).
#define TORCHSTN_EXPORT(NAME, T)                                                                                  \
  int NAME##_forward(const int64_t* g, const T* x, const T* grid_or_theta, double eps, T* out) {               \
    return run<T>(false, int(g[0]), int(g[1]), x, g + 11, grid_or_theta, eps, out, nullptr, nullptr, g[2], g[3], \
                  g[4], g[5], g[6], g[7], int(g[8]), int(g[9]), int(g[10]));                                    \
  }                                                                                                              \
  int NAME##_backward(const int64_t* g, const T* x, const T* grid_or_theta, double eps, const T* grad_out,      \
                      T* grad_x, T* grad_loc) {                                                                  \
    return run<T>(true, int(g[0]), int(g[1]), x, g + 11, grid_or_theta, eps, grad_out, grad_x, grad_loc, g[2],  \
                  g[3], g[4], g[5], g[6], g[7], int(g[8]), int(g[9]), int(g[10]));                               \
  }

// A build may compile this file once per dtype (TORCHSTN_PART 32 or 64: two translation
// units that compile in parallel); without TORCHSTN_PART, both.
#if !defined(TORCHSTN_PART) || TORCHSTN_PART == 32
TORCHSTN_EXPORT(torchstn_warp2d_f32, float)
int torchstn_warp2d_abi_version() { return 6; }
#endif
#if !defined(TORCHSTN_PART) || TORCHSTN_PART == 64
TORCHSTN_EXPORT(torchstn_warp2d_f64, double)
#endif
#undef TORCHSTN_EXPORT

}
