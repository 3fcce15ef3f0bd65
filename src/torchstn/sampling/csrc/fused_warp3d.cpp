// Fused 3-D warp for the CPU: trilinear or nearest sampling of a volume, the source point
// computed from the (B, 3, 4) affine rows on the fly (no grid tensor) or read from a given
// grid; the backward accumulates dL/dx and dL/dθ (or dL/dgrid) directly.
//
// Plain C++ and OpenMP with a C interface, called through ctypes from
// torchstn/sampling/_fused3d.py (built like the 2-D kernel, fused_warp2d.cpp: no torch
// headers). The arithmetic follows ATen's grid_sampler_3d (unnormalisation, border
// clipping, trilinear weights and their gradients, nearest rounding half to even;
// reflection as torchstn's reference sampler computes it), so that it agrees with
// F.grid_sample. The trilinear sub-gradient at integer voxel coordinates is the
// right-sided difference. A corner inside the volume is multiplied by its weight even when
// the weight is 0 (a NaN voxel there gives NaN, as in F.grid_sample); a corner outside is
// dropped by a select. A location that is not finite (NaN or +-Inf, before padding) gives
// NaN in every channel and a NaN location gradient, and adds nothing to dL/dx: torchstn's
// policy on every backend.
//
// Layouts (all contiguous): x (B, C, D, H, W); out / grad_out (B, C, Do, Ho, Wo);
// loc = GRID: grid (B, Do, Ho, Wo, 3) of normalised (x, y, z), grad_grid the same;
// loc = AFFINE: theta (B, 3, 4), row-major src_from_dst rows in normalised coordinates,
// grad_theta the same; xyz (Wo + Ho + Do,) the normalised output coordinates x, then y,
// then z (torchstn's base grid).
//
// Loop order: OpenMP over (sample, output slice); within a slice one output row at a time,
// in blocks of up to BLOCK voxels along W. Per block, loops that the compiler vectorises
// compute every voxel's location, padding, fractions, first corner and the corners inside
// once; then each channel reads its corners with those (channels share all per-voxel work):
// with AVX2, float32 voxels whose corners all lie inside eight at a time, each pair of
// corners along x one 8-byte load and the interpolation in vector lanes (forward 1.33x at
// 8x1x32x32x32, 1.52x at 2x1x64x64x64; AVX2's hardware gathers of the corners instead gave
// 1.04x and 0.92x: A/B of the bare kernel, bit-identical); eight voxels some of whose
// corners lie outside the same way, from addresses clamped into the volume and a select
// (those vectors, about a third at the volume's faces, took half the time one voxel at a
// time: 1.12-1.22x at 8x1x32x32x32, 1.09x at 2x1x64x64x64, 1.19-1.23x with 3 channels).
// Fusing locate()'s loops into one, or locating eight voxels at a time in registers
// (0.88x with one channel, 1.22x with three), did not pay. The
// backward's dθ is summed per (sample, output slice) in double, in a fixed order, and the
// slices are added in order: the result does not depend on the number of threads.

#include <algorithm>
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
enum Location { GRID = 0, AFFINE = 1 };
enum Mode { LINEAR = 0, NEAREST = 1 };

constexpr int64_t BLOCK = 64;
constexpr int LANES = 8;  // partial sums of the θ gradient

// One axis: normalised coordinate -> voxel coordinate, and its padding.
template <typename T>
struct Axis {
  T a, b;           // voxel = (coord + 1) * a - b
  T low, span;      // reflection: mirror at low and low + span (voxel coordinates)
  T high;           // clipping: [0, high]
  int32_t size;

  Axis(int64_t n, bool ac)
      : a(ac ? static_cast<T>(n - 1) / 2 : static_cast<T>(n) / 2),
        b(ac ? T(0) : T(0.5)),
        low(ac ? T(0) : T(-0.5)),
        span(ac ? static_cast<T>(n - 1) : static_cast<T>(n)),
        high(static_cast<T>(n - 1)),
        size(static_cast<int32_t>(n)) {}
};

// The voxel coordinate a normalised coordinate reads after padding, and its derivative
// (*grad). Reflection mirrors at both ends as the reference sampler does (flips =
// floor(|u - low| / span), the remainder by subtraction; derivative +-1, or 0 for a span
// of 0; a distance that overflowed, from a finite g, taken as a quarter of the largest T, so
// that its derivative is not NaN); border and reflection then clip to [0, high] (derivative
// 0 where clipped).
// Points far outside (or not finite) land at -100, where no corner is inside. Branch-free.
template <typename T, int PAD>
inline T voxel(T g, const Axis<T>& ax, T* grad) {
  T u = (g + 1) * ax.a - ax.b;
  T d = ax.a;
  if (PAD == REFLECTION) {
    constexpr T far = std::numeric_limits<T>::max() / 4;  // (as fused_warp2d.cpp's reflect)
    T v = u - ax.low;
    const T sign = v < 0 ? T(-1) : T(1);
    v = std::fabs(v);
    v = far < v ? far : v;
    const T flips = std::floor(v / ax.span);
    const T extra = v - flips * ax.span;
    const T half = flips * T(0.5);
    const T odd = 2 * (half - std::floor(half));  // 0 or 1
    const T mirrored = ax.low + odd * ax.span + (1 - 2 * odd) * extra;
    d *= ax.span > 0 ? sign * (1 - 2 * odd) : T(0);
    u = ax.span > 0 ? mirrored : T(0);
  }
  if (PAD != ZEROS) {
    d *= static_cast<T>((u > 0) & (u < ax.high));
    const T lower = u > 0 ? u : T(0);
    u = lower < ax.high ? lower : ax.high;
  }
  const T limit = static_cast<T>(1 << 30);
  *grad = d;
  return (u > -limit && u < limit) ? u : T(-100);
}

template <typename T>
struct Geometry {
  int64_t B, C, D, H, W, Do, Ho, Wo;
  Axis<T> ax[3];      // x, y, z
  const T* grid;      // GRID
  const T* theta;     // AFFINE
  const T *xs, *ys, *zs;
};

// per-block scratch, structure of arrays. Corner q (0..7) of a voxel is x + (q & 1),
// y + (q >> 1 & 1), z + (q >> 2), at offset off + W * (q >> 1 & 1) + HW * (q >> 2) + (q & 1)
// in a channel; it is read only if bit q of mask is set.
template <typename T>
struct Block {
  T g[3][BLOCK];         // normalised location
  T d[3][BLOCK];         // d(voxel coordinate) / d(normalised coordinate)
  T f[3][BLOCK];         // voxel coordinate, then (LINEAR) its fractional part
  T bad[BLOCK];          // 1 where the location is not finite; set only when any_bad
  int32_t any_bad;
  int32_t off[BLOCK];    // offset of corner 0 (NEAREST: of the voxel read, 0 when outside)
  int32_t low[3][BLOCK]; // LINEAR: the lower corner along x, y, z, clamped to [-2, size]
  int32_t mask[BLOCK];   // the corners inside the volume (NEAREST: bit 0)
};

constexpr int32_t ALL_CORNERS = 255;

// 0 <= v < size, in one unsigned compare
inline bool within(int32_t v, int32_t size) { return static_cast<uint32_t>(v) < static_cast<uint32_t>(size); }

// where the n voxels of the block starting at (b, k, i, j0) read (GRAD: and blk.d)
template <typename T, int LOC, int MODE, int PAD, bool GRAD>
inline void locate(const Geometry<T>& geo, int64_t b, int64_t k, int64_t i, int64_t j0, int64_t n, Block<T>& blk) {
  if (LOC == GRID) {
    const T* p = geo.grid + (((b * geo.Do + k) * geo.Ho + i) * geo.Wo + j0) * 3;
    for (int64_t t = 0; t < n; ++t) {
      blk.g[0][t] = p[3 * t];
      blk.g[1][t] = p[3 * t + 1];
      blk.g[2][t] = p[3 * t + 2];
    }
  } else {
    const T* m = geo.theta + b * 12;
    const T* xs = geo.xs + j0;
    const T y = geo.ys[i], z = geo.zs[k];
    for (int r = 0; r < 3; ++r) {
      const T* row = m + 4 * r;
      const T c = row[1] * y + row[2] * z + row[3];
      T* g = blk.g[r];
      for (int64_t t = 0; t < n; ++t) g[t] = row[0] * xs[t] + c;
    }
  }
  int32_t any_bad = 0;  // v - v is 0 for finite v only (no fast-math here); an OR vectorises
  for (int64_t t = 0; t < n; ++t) {
    any_bad |= !((blk.g[0][t] - blk.g[0][t] == 0) & (blk.g[1][t] - blk.g[1][t] == 0) &
                 (blk.g[2][t] - blk.g[2][t] == 0));
  }
  blk.any_bad = any_bad;
  for (int a = 0; a < 3; ++a) {
    const Axis<T> ax = geo.ax[a];
    if (GRAD) {
      for (int64_t t = 0; t < n; ++t) blk.f[a][t] = voxel<T, PAD>(blk.g[a][t], ax, &blk.d[a][t]);
    } else {
      T unused;
      for (int64_t t = 0; t < n; ++t) blk.f[a][t] = voxel<T, PAD>(blk.g[a][t], ax, &unused);
    }
  }
  const int32_t W = geo.ax[0].size, H = geo.ax[1].size, D = geo.ax[2].size, HW = H * W;
  if (MODE == NEAREST) {
    for (int64_t t = 0; t < n; ++t) {  // rounding half to even, as ATen's std::nearbyint
      const int32_t x0 = static_cast<int32_t>(std::nearbyint(blk.f[0][t]));
      const int32_t y0 = static_cast<int32_t>(std::nearbyint(blk.f[1][t]));
      const int32_t z0 = static_cast<int32_t>(std::nearbyint(blk.f[2][t]));
      const int32_t v = within(x0, W) & within(y0, H) & within(z0, D);
      blk.mask[t] = v;
      // 0 where outside, the coordinates selected first: a point far outside (up to 2^30)
      // would overflow the offset
      blk.off[t] = (v ? z0 : 0) * HW + (v ? y0 : 0) * W + (v ? x0 : 0);
    }
  } else {
    for (int64_t t = 0; t < n; ++t) {  // int32 throughout, so that it vectorises
      const T fx = blk.f[0][t], fy = blk.f[1][t], fz = blk.f[2][t];
      int32_t x0 = static_cast<int32_t>(fx), y0 = static_cast<int32_t>(fy), z0 = static_cast<int32_t>(fz);
      x0 -= static_cast<int32_t>(fx < static_cast<T>(x0));  // floor
      y0 -= static_cast<int32_t>(fy < static_cast<T>(y0));
      z0 -= static_cast<int32_t>(fz < static_cast<T>(z0));
      blk.f[0][t] = fx - static_cast<T>(x0);
      blk.f[1][t] = fy - static_cast<T>(y0);
      blk.f[2][t] = fz - static_cast<T>(z0);
      // clamped to [-2, size]: the same corners inside, and an offset that cannot overflow
      x0 = x0 < -2 ? -2 : (x0 > W ? W : x0);
      y0 = y0 < -2 ? -2 : (y0 > H ? H : y0);
      z0 = z0 < -2 ? -2 : (z0 > D ? D : z0);
      // corner q's bit: set where x's lower corner (odd q: its upper one) is inside, and so on
      // for y and z (this formula: 1.11-1.14x forward against the bits shifted into place)
      const int32_t mx = (within(x0, W) ? 0x55 : 0) | (within(x0 + 1, W) ? 0xAA : 0);
      const int32_t my = (within(y0, H) ? 0x33 : 0) | (within(y0 + 1, H) ? 0xCC : 0);
      const int32_t mz = (within(z0, D) ? 0x0F : 0) | (within(z0 + 1, D) ? 0xF0 : 0);
      blk.mask[t] = mx & my & mz;
      blk.off[t] = z0 * HW + y0 * W + x0;
      blk.low[0][t] = x0, blk.low[1][t] = y0, blk.low[2][t] = z0;
    }
  }
  if (!any_bad) return;
  for (int64_t t = 0; t < n; ++t) {  // a non-finite location reads no voxel (border padding clips +-Inf)
    const bool bad = !((blk.g[0][t] - blk.g[0][t] == 0) & (blk.g[1][t] - blk.g[1][t] == 0) &
                       (blk.g[2][t] - blk.g[2][t] == 0));
    blk.bad[t] = bad ? T(1) : T(0);
    blk.mask[t] = bad ? 0 : blk.mask[t];
    blk.off[t] = bad ? 0 : blk.off[t];
  }
}

// One voxel's 8 corner values, 0 for corners outside: those read offset 0 instead and
// are dropped by a select (a non-finite value there must not leak in). Branch-free: the
// voxels near the volume's faces would mispredict.
template <typename T>
inline void masked_corners(const T* xc, const Block<T>& blk, int64_t t, int32_t W, int32_t HW, T v[8]) {
  const int32_t off = blk.off[t], mask = blk.mask[t];
  for (int q = 0; q < 8; ++q) {
    const int32_t inside = (mask >> q) & 1;
    const T u = xc[inside * (off + HW * (q >> 2) + W * ((q >> 1) & 1) + (q & 1))];
    v[q] = inside ? u : T(0);
  }
}

// trilinear interpolation: along x, then y, then z, each stage a weighted sum (as
// F.grid_sample's sum of corners times weights: an infinite voxel gives an infinite output
// where its weight is positive and NaN where it is 0; the nested lerps v0 + t (v1 - v0) this
// replaced gave NaN wherever v0 was infinite, for the cost of the lerps)
template <typename V>
inline V interpolate(const V v[8], V tx, V ty, V tz) {
  const V ux = 1 - tx, uy = 1 - ty, uz = 1 - tz;
  const V c00 = v[0] * ux + v[1] * tx, c10 = v[2] * ux + v[3] * tx;
  const V c01 = v[4] * ux + v[5] * tx, c11 = v[6] * ux + v[7] * tx;
  const V c0 = c00 * uy + c10 * ty, c1 = c01 * uy + c11 * ty;
  return c0 * uz + c1 * tz;
}

// g times the interpolation's derivatives along x, y and z, added to gx, gy, gz: the
// differences along one axis weighted by the other two axes' weights
template <typename V>
inline void add_gradient(const V v[8], V tx, V ty, V tz, V g, V* gx, V* gy, V* gz) {
  const V ux = 1 - tx, uy = 1 - ty, uz = 1 - tz;
  const V dx = ((v[1] - v[0]) * uy + (v[3] - v[2]) * ty) * uz + ((v[5] - v[4]) * uy + (v[7] - v[6]) * ty) * tz;
  const V dy = ((v[2] - v[0]) * ux + (v[3] - v[1]) * tx) * uz + ((v[6] - v[4]) * ux + (v[7] - v[5]) * tx) * tz;
  const V dz = ((v[4] - v[0]) * ux + (v[5] - v[1]) * tx) * uy + ((v[6] - v[2]) * ux + (v[7] - v[3]) * tx) * ty;
  *gx = *gx + g * dx;
  *gy = *gy + g * dy;
  *gz = *gz + g * dz;
}

// One voxel's corner values: plain loads when all corners are inside (the common case;
// AVX2 gathers measured slower than these on the AMD EPYC the kernel was tuned on)
template <typename T>
inline void corners(const T* xc, const Block<T>& blk, int64_t t, int32_t W, int32_t HW, T v[8]) {
  if (blk.mask[t] != ALL_CORNERS) return masked_corners(xc, blk, t, W, HW, v);
  const T* p = xc + blk.off[t];
  v[0] = p[0], v[1] = p[1], v[2] = p[W], v[3] = p[W + 1];
  v[4] = p[HW], v[5] = p[HW + 1], v[6] = p[HW + W], v[7] = p[HW + W + 1];
}

#ifdef TORCHSTN_AVX2
// The voxels base[off[l]] and base[off[l] + 1] of eight offsets, as two vectors
inline void x_pairs(const float* base, const int32_t* off, __m256* left, __m256* right) {
  const auto pair = [&](int l) { return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(base + off[l]))); };
  const auto two = [&](int l) { return _mm_loadh_pi(pair(l), reinterpret_cast<const __m64*>(base + off[l + 1])); };
  const __m256 a = _mm256_insertf128_ps(_mm256_castps128_ps256(two(0)), two(4), 1);  // voxels 0 1 | 4 5
  const __m256 b = _mm256_insertf128_ps(_mm256_castps128_ps256(two(2)), two(6), 1);  // voxels 2 3 | 6 7
  *left = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
  *right = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
}

// The corners of eight voxels some of whose corners lie outside, 0 for those (bit q of a
// lane's mask): without a branch, each x pair read at p = clamp(x0, 0, W - 2) in the row
// and slice of its y and z clamped into the volume (every address inside), the lower
// corner being p's first voxel unless x0 = W - 1, the upper its second unless x0 = -1;
// a corner outside is dropped by a select, whatever its clamped address holds. Needs W >= 2.
inline void clamped_pairs(const float* xc, const Block<float>& blk, int64_t t, __m256i mask, int32_t W, int32_t H,
                          int32_t D, __m256 v[8]) {
  const int32_t HW = H * W;
  const auto lanes = [&](const int32_t* a) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + t)); };
  const __m256i zero = _mm256_setzero_si256();
  const __m256i x0 = lanes(blk.low[0]), y0 = lanes(blk.low[1]), z0 = lanes(blk.low[2]);
  const __m256i p = _mm256_min_epi32(_mm256_max_epi32(x0, zero), _mm256_set1_epi32(W - 2));
  const __m256 straight = _mm256_castsi256_ps(_mm256_cmpeq_epi32(x0, p));
  const __m256i y_max = _mm256_set1_epi32(H - 1), z_max = _mm256_set1_epi32(D - 1);
  for (int q = 0; q < 4; ++q) {
    const __m256i y = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(y0, _mm256_set1_epi32(q & 1)), zero), y_max);
    const __m256i z = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(z0, _mm256_set1_epi32(q >> 1)), zero), z_max);
    alignas(32) int32_t row[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(row), _mm256_add_epi32(
        _mm256_add_epi32(_mm256_mullo_epi32(z, _mm256_set1_epi32(HW)), _mm256_mullo_epi32(y, _mm256_set1_epi32(W))), p));
    __m256 first, second;
    x_pairs(xc, row, &first, &second);
    for (int h = 0; h < 2; ++h) {
      const __m256i bit = _mm256_set1_epi32(1 << (2 * q + h));
      const __m256 inside = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(mask, bit), bit));
      const __m256 value = h == 0 ? _mm256_blendv_ps(second, first, straight) : _mm256_blendv_ps(first, second, straight);
      v[2 * q + h] = _mm256_and_ps(value, inside);
    }
  }
}
#endif

// One channel of the block's output.
template <typename T, int MODE>
inline void sample_block(const T* xc, const Block<T>& blk, int64_t n, int32_t W, int32_t H, [[maybe_unused]] int32_t D,
                         T* out) {
  const int32_t HW = H * W;
  if (MODE == NEAREST) {
    for (int64_t t = 0; t < n; ++t) {
      const T u = xc[blk.off[t]];
      out[t] = blk.mask[t] != 0 ? u : T(0);
    }
    return;
  }
  int64_t t = 0;
#ifdef TORCHSTN_AVX2
  if constexpr (std::is_same_v<T, float>) {
    // eight voxels at a time (rows of 2 or more voxels; with 1, no corner pair lies inside):
    // each pair of corners along x read with one 8-byte load, from addresses clamped into
    // the volume where some corners lie outside, the interpolation in vector lanes (the same
    // operations in the same order as below, so the same values); the rest one at a time
    const int32_t step[4] = {0, W, HW, HW + W};
    const __m256i all = _mm256_set1_epi32(ALL_CORNERS);
    for (; W >= 2 && t + 8 <= n; t += 8) {
      const __m256i mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.mask + t));
      __m256 v[8];
      if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(mask, all)) == -1) {
        for (int q = 0; q < 4; ++q) x_pairs(xc + step[q], blk.off + t, &v[2 * q], &v[2 * q + 1]);
      } else if (_mm256_testz_si256(mask, mask)) {  // no corner inside: 0, as interpolate() of zeros
        _mm256_storeu_ps(out + t, _mm256_setzero_ps());
        continue;
      } else {
        clamped_pairs(xc, blk, t, mask, W, H, D, v);
      }
      const __m256 tx = _mm256_loadu_ps(blk.f[0] + t), ty = _mm256_loadu_ps(blk.f[1] + t);
      const __m256 tz = _mm256_loadu_ps(blk.f[2] + t), one = _mm256_set1_ps(1.f);
      const __m256 ux = _mm256_sub_ps(one, tx), uy = _mm256_sub_ps(one, ty), uz = _mm256_sub_ps(one, tz);
      const auto lerp = [](__m256 a, __m256 wa, __m256 b, __m256 wb) {
        return _mm256_add_ps(_mm256_mul_ps(a, wa), _mm256_mul_ps(b, wb));
      };
      const __m256 c00 = lerp(v[0], ux, v[1], tx), c10 = lerp(v[2], ux, v[3], tx);
      const __m256 c01 = lerp(v[4], ux, v[5], tx), c11 = lerp(v[6], ux, v[7], tx);
      const __m256 c0 = lerp(c00, uy, c10, ty), c1 = lerp(c01, uy, c11, ty);
      _mm256_storeu_ps(out + t, lerp(c0, uz, c1, tz));
    }
  }
#endif
  for (; t < n; ++t) {
    T v[8];
    corners(xc, blk, t, W, HW, v);
    out[t] = interpolate(v, blk.f[0][t], blk.f[1][t], blk.f[2][t]);
  }
}

// One channel of a block of the backward, trilinear: dL/d(voxel coordinate) added to gi
// (when wanted), and the weighted output gradient added to grad_x's corners (gxc, may be
// null; a scatter, one voxel at a time: two voxels may share a corner)
template <typename T>
inline void backward_block(const T* xc, const T* go, T* gxc, bool want_loc, const Block<T>& blk, int64_t n,
                           int32_t W, int32_t HW, T gi[3][BLOCK]) {
  if (want_loc) {
    for (int64_t t = 0; t < n; ++t) {
      T v[8];
      corners(xc, blk, t, W, HW, v);
      add_gradient(v, blk.f[0][t], blk.f[1][t], blk.f[2][t], go[t], &gi[0][t], &gi[1][t], &gi[2][t]);
    }
  }
  if (!gxc) return;
  for (int64_t t = 0; t < n; ++t) {
    const T tx = blk.f[0][t], ty = blk.f[1][t], tz = blk.f[2][t], g = go[t];
    const T ux = 1 - tx, uy = 1 - ty, uz = 1 - tz;
    const T wyz[4] = {uy * uz * g, ty * uz * g, uy * tz * g, ty * tz * g};  // corners by (y, z)
    const int32_t off = blk.off[t], mask = blk.mask[t];
    if (mask == ALL_CORNERS) {
      // the lower x corners, then the upper ones: adjacent updates merged into one 8-byte
      // read-modify-write stalled the next voxel's on store forwarding
      T* p = gxc + off;
      p[0] += ux * wyz[0], p[W] += ux * wyz[1], p[HW] += ux * wyz[2], p[HW + W] += ux * wyz[3];
      T* r = gxc + (off + 1);
      r[0] += tx * wyz[0], r[W] += tx * wyz[1], r[HW] += tx * wyz[2], r[HW + W] += tx * wyz[3];
    } else {
      for (int q = 0; q < 8; ++q) {
        const T w = (q & 1 ? tx : ux) * wyz[q >> 1];
        if ((mask >> q) & 1) gxc[off + HW * (q >> 2) + W * ((q >> 1) & 1) + (q & 1)] += w;
      }
    }
  }
}

template <typename T, int LOC, int MODE, int PAD>
void forward_impl(const T* x, const Geometry<T>& geo, T* out, int threads) {
  const int64_t C = geo.C, Do = geo.Do, Ho = geo.Ho, Wo = geo.Wo;
  const int64_t plane = geo.D * geo.H * geo.W, out_plane = Do * Ho * Wo;
  const int32_t W = geo.ax[0].size, H = geo.ax[1].size, D = geo.ax[2].size;
  const T nan = std::numeric_limits<T>::quiet_NaN();
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t slice = 0; slice < geo.B * Do; ++slice) {
    const int64_t b = slice / Do, k = slice % Do;
    Block<T> blk;
    for (int64_t i = 0; i < Ho; ++i) {
      for (int64_t j0 = 0; j0 < Wo; j0 += BLOCK) {
        const int64_t n = Wo - j0 < BLOCK ? Wo - j0 : BLOCK;
        locate<T, LOC, MODE, PAD, false>(geo, b, k, i, j0, n, blk);
        for (int64_t c = 0; c < C; ++c) {
          T* o = out + (b * C + c) * out_plane + (k * Ho + i) * Wo + j0;
          sample_block<T, MODE>(x + (b * C + c) * plane, blk, n, W, H, D, o);
          if (blk.any_bad) {
            for (int64_t t = 0; t < n; ++t) o[t] = blk.bad[t] != 0 ? nan : o[t];
          }
        }
      }
    }
  }
}

// One output slice (b, k) of the backward. grad_x (may be null): accumulated (the caller
// zeroed it and gives each sample to one thread). grad_loc (may be null): the grid's
// gradient (GRID) or, AFFINE, this slice's share of dθ summed into partial[12] (double).
template <typename T, int LOC, int MODE, int PAD>
void backward_slice(const T* x, const Geometry<T>& geo, const T* grad_out, T* grad_x, T* grad_loc, double* partial,
                    int64_t b, int64_t k) {
  const int64_t C = geo.C, Ho = geo.Ho, Wo = geo.Wo;
  const int64_t plane = geo.D * geo.H * geo.W, out_plane = geo.Do * Ho * Wo;
  const int32_t W = geo.ax[0].size, HW = geo.ax[1].size * W;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  Block<T> blk;
  T gi[3][BLOCK];
  for (int r = 0; r < 12; ++r) partial[r] = 0;
  for (int64_t i = 0; i < Ho; ++i) {
    for (int64_t j0 = 0; j0 < Wo; j0 += BLOCK) {
      const int64_t n = Wo - j0 < BLOCK ? Wo - j0 : BLOCK;
      locate<T, LOC, MODE, PAD, true>(geo, b, k, i, j0, n, blk);
      const int64_t padded = (n + LANES - 1) / LANES * LANES;  // what the θ sums read
      for (int a = 0; a < 3; ++a)
        for (int64_t t = 0; t < padded; ++t) gi[a][t] = 0;
      for (int64_t c = 0; c < C; ++c) {
        const T* go = grad_out + (b * C + c) * out_plane + (k * Ho + i) * Wo + j0;
        T* gxc = grad_x ? grad_x + (b * C + c) * plane : nullptr;
        if (MODE == LINEAR) {
          backward_block(x + (b * C + c) * plane, go, gxc, grad_loc != nullptr, blk, n, W, HW, gi);
        } else if (gxc) {  // nearest: the location gradient is 0
          for (int64_t t = 0; t < n; ++t) {
            if (blk.mask[t]) gxc[blk.off[t]] += go[t];
          }
        }
      }
      if (!grad_loc) continue;
      for (int a = 0; a < 3; ++a)  // dL / d(normalised location); nearest: 0
        for (int64_t t = 0; t < n; ++t) gi[a][t] *= blk.d[a][t];
      if (blk.any_bad) {  // NaN where the location is not finite
        for (int a = 0; a < 3; ++a)
          for (int64_t t = 0; t < n; ++t) gi[a][t] = blk.bad[t] != 0 ? nan : gi[a][t];
      }
      if (LOC == GRID) {
        T* q = grad_loc + (((b * geo.Do + k) * Ho + i) * Wo + j0) * 3;
        for (int64_t t = 0; t < n; ++t) {
          q[3 * t] = gi[0][t];
          q[3 * t + 1] = gi[1][t];
          q[3 * t + 2] = gi[2][t];
        }
        continue;
      }
      // dθ row r: sum over the block of dL/dp_r * (x, y, z, 1); y and z are constant along
      // the row. Lane-wise partial sums in a GCC vector of LANES (vectorised on any ISA, in
      // a fixed order), then the lanes in order.
      typedef T Vec __attribute__((vector_size(LANES * sizeof(T))));
      T xs[BLOCK];
      for (int64_t t = 0; t < BLOCK; ++t) xs[t] = t < n ? geo.xs[j0 + t] : T(0);  // gi is 0 beyond n
      Vec sx[3] = {}, s1[3] = {};
      for (int64_t t0 = 0; t0 < padded; t0 += LANES) {
        Vec xv;
        std::memcpy(&xv, xs + t0, sizeof(Vec));
        for (int a = 0; a < 3; ++a) {
          Vec gv;
          std::memcpy(&gv, gi[a] + t0, sizeof(Vec));
          sx[a] += gv * xv;
          s1[a] += gv;
        }
      }
      const double y = geo.ys[i], z = geo.zs[k];
      for (int a = 0; a < 3; ++a) {
        double tx = 0, t1 = 0;
        for (int l = 0; l < LANES; ++l) {
          tx += sx[a][l];
          t1 += s1[a][l];
        }
        partial[4 * a] += tx;
        partial[4 * a + 1] += t1 * y;
        partial[4 * a + 2] += t1 * z;
        partial[4 * a + 3] += t1;
      }
    }
  }
}

template <typename T, int LOC, int MODE, int PAD>
void backward_impl(const T* x, const Geometry<T>& geo, const T* grad_out, T* grad_x, T* grad_loc, int threads) {
  const int64_t B = geo.B, Do = geo.Do, volume = geo.C * geo.D * geo.H * geo.W;
  std::vector<double> partial(static_cast<size_t>(B * Do * 12));
  if (grad_x) {  // each sample's grad_x belongs to one thread
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t b = 0; b < B; ++b) {
      std::memset(grad_x + b * volume, 0, sizeof(T) * volume);
      for (int64_t k = 0; k < Do; ++k)
        backward_slice<T, LOC, MODE, PAD>(x, geo, grad_out, grad_x, grad_loc, &partial[(b * Do + k) * 12], b, k);
    }
  } else {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t slice = 0; slice < B * Do; ++slice)
      backward_slice<T, LOC, MODE, PAD>(x, geo, grad_out, nullptr, grad_loc, &partial[slice * 12], slice / Do,
                                        slice % Do);
  }
  if (!grad_loc || LOC == GRID) return;
  for (int64_t b = 0; b < B; ++b) {  // the slices in order
    double acc[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t k = 0; k < Do; ++k)
      for (int r = 0; r < 12; ++r) acc[r] += partial[(b * Do + k) * 12 + r];
    for (int r = 0; r < 12; ++r) grad_loc[b * 12 + r] = static_cast<T>(acc[r]);
  }
}

template <typename T, int LOC, int MODE>
int dispatch_padding(bool backward, const T* x, const Geometry<T>& geo, T* out_or_grad_out, T* grad_x, T* grad_loc,
                     int padding, int threads) {
  switch (padding) {
#define TORCHSTN_CASE(PAD)                                                                             \
  case PAD:                                                                                            \
    if (backward)                                                                                      \
      backward_impl<T, LOC, MODE, PAD>(x, geo, out_or_grad_out, grad_x, grad_loc, threads);            \
    else                                                                                               \
      forward_impl<T, LOC, MODE, PAD>(x, geo, out_or_grad_out, threads);                               \
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
int dispatch_mode(bool backward, const T* x, const Geometry<T>& geo, T* buffer, T* grad_x, T* grad_loc, int mode,
                  int padding, int threads) {
  if (mode == LINEAR)
    return dispatch_padding<T, LOC, LINEAR>(backward, x, geo, buffer, grad_x, grad_loc, padding, threads);
  if (mode == NEAREST)
    return dispatch_padding<T, LOC, NEAREST>(backward, x, geo, buffer, grad_x, grad_loc, padding, threads);
  return 4;
}

// grad_out is const in the backward; the forward writes into it as `out`
template <typename T>
int run(bool backward, int location, int mode, const T* x, const T* grid_or_theta, const T* xyz,
        const T* out_or_grad_out, T* grad_x, T* grad_loc, int64_t B, int64_t C, int64_t D, int64_t H,
        int64_t W, int64_t Do, int64_t Ho, int64_t Wo, int padding, int align_corners, int threads) {
  if (D * H * W + H * W + W >= (int64_t(1) << 31)) return 3;  // corner offsets are int32
  if (std::max({D, H, W}) > (int64_t(1) << 30)) return 3;  // (a point beyond 2^30 is taken for one far outside)
  // below ATen's grain size on the calling thread, as csrc/fused_warp2d.cpp says why (its kSerialBelow,
  // the same value): GNU OpenMP's thread team does not survive fork(), and a forked child waited forever
  constexpr int64_t kSerialBelow = 32768;
  if (B * C * Do * Ho * Wo < kSerialBelow) threads = 1;
  const bool ac = align_corners != 0;
  const Geometry<T> geo{B, C, D, H, W, Do, Ho, Wo, {Axis<T>(W, ac), Axis<T>(H, ac), Axis<T>(D, ac)},
                        location == GRID ? grid_or_theta : nullptr, location == AFFINE ? grid_or_theta : nullptr,
                        xyz, xyz ? xyz + Wo : nullptr, xyz ? xyz + Wo + Ho : nullptr};
  T* buffer = const_cast<T*>(out_or_grad_out);
  switch (location) {
    case GRID:
      return dispatch_mode<T, GRID>(backward, x, geo, buffer, grad_x, grad_loc, mode, padding, threads);
    case AFFINE:
      return dispatch_mode<T, AFFINE>(backward, x, geo, buffer, grad_x, grad_loc, mode, padding, threads);
    default:
      return 2;
  }
}

}  // namespace

extern "C" {

// Returns 0 on success; 1 unknown padding, 2 unknown location, 3 volume too large, 4 unknown mode.
#define TORCHSTN_EXPORT(NAME, T)                                                                                    \
  int NAME##_forward(int location, int mode, const T* x, const T* grid_or_theta, const T* xyz, T* out, int64_t B,   \
                     int64_t C, int64_t D, int64_t H, int64_t W, int64_t Do, int64_t Ho, int64_t Wo, int padding,   \
                     int align_corners, int threads) {                                                              \
    return run<T>(false, location, mode, x, grid_or_theta, xyz, out, nullptr, nullptr, B, C, D, H, W, Do, Ho, Wo,   \
                  padding, align_corners, threads);                                                                 \
  }                                                                                                                 \
  int NAME##_backward(int location, int mode, const T* x, const T* grid_or_theta, const T* xyz, const T* grad_out,  \
                      T* grad_x, T* grad_loc, int64_t B, int64_t C, int64_t D, int64_t H, int64_t W, int64_t Do,    \
                      int64_t Ho, int64_t Wo, int padding, int align_corners, int threads) {                        \
    return run<T>(true, location, mode, x, grid_or_theta, xyz, grad_out, grad_x, grad_loc, B, C, D, H, W, Do, Ho,   \
                  Wo, padding, align_corners, threads);                                                             \
  }

// A build may compile this file once per dtype (TORCHSTN_PART 32 or 64: two translation
// units that compile in parallel); without TORCHSTN_PART, both.
#if !defined(TORCHSTN_PART) || TORCHSTN_PART == 32
TORCHSTN_EXPORT(torchstn_warp3d_f32, float)
int torchstn_warp3d_abi_version() { return 2; }
#endif
#if !defined(TORCHSTN_PART) || TORCHSTN_PART == 64
TORCHSTN_EXPORT(torchstn_warp3d_f64, double)
#endif
#undef TORCHSTN_EXPORT

}
