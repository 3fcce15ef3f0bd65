// Fused 2-D bilinear warp for the CPU: the sampling location is computed from the
// transformation matrix on the fly (no grid tensor), and the backward pass accumulates
// dL/dx and dL/dθ directly (no grid gradient).
//
// Plain C++ and OpenMP with a C interface, called through ctypes from
// torchstn/sampling/_fused.py: no torch headers, so the JIT build takes seconds instead
// of half a minute. The arithmetic follows ATen's GridSampler.h (unnormalisation, border
// clipping, bilinear weights and their gradients; reflection as torchstn's reference
// sampler computes it) so that every backend agrees with F.grid_sample and the reference.
// The bilinear sub-gradient at integer pixel coordinates is the right-sided difference,
// as in both. A location that is not finite (NaN or +-Inf, before padding) gives NaN in
// every channel and a NaN location gradient, and adds nothing to dL/dx: torchstn's policy
// on every backend (F.grid_sample's own handling differs between paddings).
//
// Layouts (all contiguous): x (B, C, H, W); out / grad_out (B, C, Ho, Wo);
// loc = GRID: grid (B, Ho, Wo, 2), grad_grid the same;
// loc = AFFINE: theta (B, 2, 3), PROJECTIVE: theta (B, 3, 3), row-major src_from_dst
// matrices in normalised coordinates, grad_theta of the same shape; xs (Wo,) and ys (Ho,)
// the normalised output pixel coordinates (torchstn's base grid).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace {

enum Padding { ZEROS = 0, BORDER = 1, REFLECTION = 2 };
enum Location { GRID = 0, AFFINE = 1, PROJECTIVE = 2 };

// Reflect u into [low, low + span] by mirroring at both ends, as the reference sampler
// (flips = floor(|u - low| / span), the remainder by subtraction); *grad is +-1, or 0 when
// span is 0 (one pixel with align_corners). Branch-free, so that the loop vectorises.
template <typename T>
inline T reflect(T u, T low, T span, T* grad) {
  T v = u - low;
  const T sign = v < 0 ? T(-1) : T(1);
  v = std::fabs(v);
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
inline T clip(T u, T high, T* grad) {
  *grad = static_cast<T>((u > 0) & (u < high));
  const T lower = u > 0 ? u : T(0);
  return lower < high ? lower : high;
}

// what a point's location is computed from
template <typename T, int LOC>
struct Locator {
  const T* grid;   // GRID: (B, Ho, Wo, 2)
  const T* theta;  // AFFINE: (B, 2, 3), PROJECTIVE: (B, 3, 3)
  const T* xs;     // (Wo,) normalised output x
  const T* ys;     // (Ho,) normalised output y
  T eps;           // PROJECTIVE: the guard
  int64_t Ho, Wo;
};

// Points are processed a block of one output row at a time, in loops that the compiler
// vectorises (with -mavx2 where the CPU has it): (A) locations, padding, corner offsets
// and weights for the block; (B) per channel, the gathers (in the backward also the
// scatter into grad_x, which stays scalar, and the location gradient); (C) the matrix
// gradient's sums.
constexpr int64_t BLOCK = 64;

// per-block scratch: structure of arrays
template <typename T>
struct Block {
  T gx[BLOCK], gy[BLOCK];    // normalised location (PROJECTIVE: after the division)
  T g[BLOCK], keep[BLOCK];   // PROJECTIVE: guarded w, and 1 where the guard is off
  T dix[BLOCK], diy[BLOCK];  // d(pixel coordinate) / d(normalised coordinate)
  T tx[BLOCK], ty[BLOCK];    // fractional parts
  T bad[BLOCK];              // 1 where the location is not finite, else 0; set only when any_bad
  int32_t any_bad;           // the block has a non-finite location (rare: the common path skips bad)
  T w[4][BLOCK];             // bilinear weights
  T valid[4][BLOCK];         // 1 for corners inside the image, else 0
  int32_t off[4][BLOCK];     // corner offsets in a channel (0 for corners outside)
};

template <typename T>
struct Constants {
  int64_t H, W, Ho, Wo;
  T ax, bx, ay, by;  // pixel = (coord + 1) * a - b, per axis
  bool align_corners;
  T eps;

  T low, span_x, span_y;  // reflection: mirror at low and low + span (pixel coordinates)

  Constants(int64_t H_, int64_t W_, int64_t Ho_, int64_t Wo_, bool ac, T eps_)
      : H(H_), W(W_), Ho(Ho_), Wo(Wo_), align_corners(ac), eps(eps_) {
    ax = ac ? static_cast<T>(W - 1) / 2 : static_cast<T>(W) / 2;
    ay = ac ? static_cast<T>(H - 1) / 2 : static_cast<T>(H) / 2;
    bx = by = ac ? T(0) : T(0.5);
    low = ac ? T(0) : T(-0.5);
    span_x = ac ? static_cast<T>(W - 1) : static_cast<T>(W);
    span_y = ac ? static_cast<T>(H - 1) : static_cast<T>(H);
  }
};

// loop A: where the n points of the block starting at (b, i, j0) read, and their corners
template <typename T, int LOC, int PAD>
inline void locate(const Locator<T, LOC>& loc, const Constants<T>& k, int64_t b, int64_t i, int64_t j0, int64_t n,
                   Block<T>& blk) {
  if (LOC == GRID) {
    const T* p = loc.grid + ((b * k.Ho + i) * k.Wo + j0) * 2;
    for (int64_t t = 0; t < n; ++t) {
      blk.gx[t] = p[2 * t];
      blk.gy[t] = p[2 * t + 1];
    }
  } else {
    const T* m = loc.theta + b * (LOC == AFFINE ? 6 : 9);
    const T y = loc.ys[i];
    const T* xs = loc.xs + j0;
    const T cx = m[1] * y + m[2], cy = m[4] * y + m[5];
    if (LOC == AFFINE) {
      for (int64_t t = 0; t < n; ++t) {
        blk.gx[t] = m[0] * xs[t] + cx;
        blk.gy[t] = m[3] * xs[t] + cy;
      }
    } else {
      const T cw = m[7] * y + m[8], eps = loc.eps;
      for (int64_t t = 0; t < n; ++t) {
        T w = m[6] * xs[t] + cw;
        // torchstn's guard: |w| >= eps, sign kept, w = 0 counts as positive
        const bool keep = !(std::fabs(w) < eps);
        w = keep ? w : (w < 0 ? -eps : eps);
        blk.keep[t] = keep ? T(1) : T(0);
        blk.g[t] = w;
        blk.gx[t] = (m[0] * xs[t] + cx) / w;
        blk.gy[t] = (m[3] * xs[t] + cy) / w;
      }
    }
  }
  int32_t any_bad = 0;  // v - v is 0 for finite v only (no fast-math here); an OR vectorises
  for (int64_t t = 0; t < n; ++t) any_bad |= !((blk.gx[t] - blk.gx[t] == 0) & (blk.gy[t] - blk.gy[t] == 0));
  blk.any_bad = any_bad;
  const int64_t W = k.W, H = k.H;
  const T limit = static_cast<T>(1 << 30);
  const T high_x = static_cast<T>(W - 1), high_y = static_cast<T>(H - 1);
  for (int64_t t = 0; t < n; ++t) {
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
      T cx, cy;
      ix = clip(ix, high_x, &cx);
      iy = clip(iy, high_y, &cy);
      dx *= cx;
      dy *= cy;
    }
    // far outside or not a number: a point no corner of which is inside the image
    ix = (ix > -limit && ix < limit) ? ix : T(-100);
    iy = (iy > -limit && iy < limit) ? iy : T(-100);
    blk.dix[t] = dx;
    blk.diy[t] = dy;
    blk.tx[t] = ix;
    blk.ty[t] = iy;
  }
  const int32_t W32 = static_cast<int32_t>(W), H32 = static_cast<int32_t>(H);
  for (int64_t t = 0; t < n; ++t) {  // int32 throughout, so that it vectorises
    const T ix = blk.tx[t], iy = blk.ty[t];
    int32_t x0 = static_cast<int32_t>(ix), y0 = static_cast<int32_t>(iy);
    x0 -= static_cast<int32_t>(ix < static_cast<T>(x0));  // floor
    y0 -= static_cast<int32_t>(iy < static_cast<T>(y0));
    const T tx = ix - static_cast<T>(x0), ty = iy - static_cast<T>(y0);
    blk.tx[t] = tx;
    blk.ty[t] = ty;
    const int32_t vx0 = (x0 >= 0) & (x0 < W32), vx1 = (x0 >= -1) & (x0 < W32 - 1);
    const int32_t vy0 = (y0 >= 0) & (y0 < H32), vy1 = (y0 >= -1) & (y0 < H32 - 1);
    const int32_t v0 = vx0 & vy0, v1 = vx1 & vy0, v2 = vx0 & vy1, v3 = vx1 & vy1;
    const int32_t o = y0 * W32 + x0;
    blk.w[0][t] = (1 - tx) * (1 - ty);
    blk.w[1][t] = tx * (1 - ty);
    blk.w[2][t] = (1 - tx) * ty;
    blk.w[3][t] = tx * ty;
    blk.valid[0][t] = static_cast<T>(v0);
    blk.valid[1][t] = static_cast<T>(v1);
    blk.valid[2][t] = static_cast<T>(v2);
    blk.valid[3][t] = static_cast<T>(v3);
    blk.off[0][t] = v0 * o;
    blk.off[1][t] = v1 * (o + 1);
    blk.off[2][t] = v2 * (o + W32);
    blk.off[3][t] = v3 * (o + W32 + 1);
  }
  if (!any_bad) return;
  for (int64_t t = 0; t < n; ++t) {  // a non-finite location reads no pixel (border padding clips +-Inf)
    const bool bad = !((blk.gx[t] - blk.gx[t] == 0) & (blk.gy[t] - blk.gy[t] == 0));
    blk.bad[t] = bad ? T(1) : T(0);
    for (int q = 0; q < 4; ++q) {
      blk.valid[q][t] = bad ? T(0) : blk.valid[q][t];
      blk.off[q][t] = bad ? 0 : blk.off[q][t];
    }
  }
}

template <typename T, int LOC, int PAD>
void forward_impl(const T* x, const Locator<T, LOC>& loc, T* out, int64_t B, int64_t C, const Constants<T>& k,
                  int threads) {
  const int64_t Ho = k.Ho, Wo = k.Wo, plane = k.H * k.W, out_plane = Ho * Wo;
  const T nan = std::numeric_limits<T>::quiet_NaN();
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t row = 0; row < B * Ho; ++row) {
    const int64_t b = row / Ho, i = row % Ho;
    Block<T> blk;
    for (int64_t j0 = 0; j0 < Wo; j0 += BLOCK) {
      const int64_t n = Wo - j0 < BLOCK ? Wo - j0 : BLOCK;
      locate<T, LOC, PAD>(loc, k, b, i, j0, n, blk);
      for (int64_t c = 0; c < C; ++c) {
        const T* xc = x + (b * C + c) * plane;
        T* oc = out + (b * C + c) * out_plane + i * Wo + j0;
        // a corner outside the image reads offset 0 and is dropped by a select (not a
        // multiplication by 0, which would turn a non-finite pixel there into NaN)
        T acc[BLOCK];
        for (int64_t t = 0; t < n; ++t) {
          T v[4];
          for (int q = 0; q < 4; ++q) {
            const T u = xc[blk.off[q][t]];
            v[q] = blk.valid[q][t] != 0 ? u : T(0);
          }
          acc[t] = v[0] * blk.w[0][t] + v[1] * blk.w[1][t] + v[2] * blk.w[2][t] + v[3] * blk.w[3][t];
        }
        if (blk.any_bad) {
          for (int64_t t = 0; t < n; ++t) acc[t] = blk.bad[t] != 0 ? nan : acc[t];
        }
        std::memcpy(oc, acc, sizeof(T) * n);
      }
    }
  }
}

// grad_x (may be null): zeroed and accumulated here. grad_loc (may be null): the grid's
// gradient (GRID) or the matrix's (AFFINE, PROJECTIVE). Each sample's slice of grad_x and
// of grad_theta is written by one thread only (the loop is over the batch), so there are
// no races and the matrix gradient needs no reduction across threads; it is summed in
// double per block.
template <typename T, int LOC, int PAD>
void backward_impl(const T* x, const Locator<T, LOC>& loc, const T* grad_out, T* grad_x, T* grad_loc, int64_t B,
                   int64_t C, const Constants<T>& k, int threads) {
  const int64_t Ho = k.Ho, Wo = k.Wo, plane = k.H * k.W, out_plane = Ho * Wo;
  const T nan = std::numeric_limits<T>::quiet_NaN();
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t b = 0; b < B; ++b) {
    if (grad_x) std::memset(grad_x + b * C * plane, 0, sizeof(T) * C * plane);
    double acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    Block<T> blk;
    T gix[BLOCK], giy[BLOCK];
    for (int64_t i = 0; i < Ho; ++i) {
      for (int64_t j0 = 0; j0 < Wo; j0 += BLOCK) {
        const int64_t n = Wo - j0 < BLOCK ? Wo - j0 : BLOCK;
        locate<T, LOC, PAD>(loc, k, b, i, j0, n, blk);
        for (int64_t t = 0; t < n; ++t) gix[t] = giy[t] = 0;
        for (int64_t c = 0; c < C; ++c) {
          const T* go = grad_out + (b * C + c) * out_plane + i * Wo + j0;
          if (grad_x) {  // scatter: two points may share a pixel, so not vectorised
            T* gxc = grad_x + (b * C + c) * plane;
            for (int64_t t = 0; t < n; ++t) {
              for (int q = 0; q < 4; ++q) {
                if (blk.valid[q][t] != 0) gxc[blk.off[q][t]] += blk.w[q][t] * go[t];
              }
            }
          }
          if (grad_loc) {
            const T* xc = x + (b * C + c) * plane;
            for (int64_t t = 0; t < n; ++t) {
              T v[4];
              for (int q = 0; q < 4; ++q) {
                const T u = xc[blk.off[q][t]];
                v[q] = blk.valid[q][t] != 0 ? u : T(0);
              }
              const T tx = blk.tx[t], ty = blk.ty[t];
              gix[t] += go[t] * ((v[1] - v[0]) * (1 - ty) + (v[3] - v[2]) * ty);
              giy[t] += go[t] * ((v[2] - v[0]) * (1 - tx) + (v[3] - v[1]) * tx);
            }
          }
        }
        if (!grad_loc) continue;
        for (int64_t t = 0; t < n; ++t) {  // dL / d(normalised location)
          gix[t] *= blk.dix[t];
          giy[t] *= blk.diy[t];
        }
        if (blk.any_bad) {  // NaN where the location is not finite
          for (int64_t t = 0; t < n; ++t) {
            gix[t] = blk.bad[t] != 0 ? nan : gix[t];
            giy[t] = blk.bad[t] != 0 ? nan : giy[t];
          }
        }
        if (LOC == GRID) {
          T* q = grad_loc + ((b * Ho + i) * Wo + j0) * 2;
          for (int64_t t = 0; t < n; ++t) {
            q[2 * t] = gix[t];
            q[2 * t + 1] = giy[t];
          }
          continue;
        }
        // the matrix rows: sum over the block of dL/dp * (x, y, 1), y constant along the row
        const T* xs = loc.xs + j0;
        const T y = loc.ys[i];
        T s[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
        if (LOC == PROJECTIVE) {
          for (int64_t t = 0; t < n; ++t) {
            const T dpx = gix[t] / blk.g[t], dpy = giy[t] / blk.g[t];
            // d(p / w) / dw = -(p / w) / w, with p / w the location itself; none inside the guard
            const T dw = -(dpx * blk.gx[t] + dpy * blk.gy[t]) * blk.keep[t];
            s[0] += dpx * xs[t];
            s[2] += dpx;
            s[3] += dpy * xs[t];
            s[5] += dpy;
            s[6] += dw * xs[t];
            s[8] += dw;
          }
        } else {
          for (int64_t t = 0; t < n; ++t) {
            s[0] += gix[t] * xs[t];
            s[2] += gix[t];
            s[3] += giy[t] * xs[t];
            s[5] += giy[t];
          }
        }
        acc[0] += s[0];
        acc[1] += static_cast<double>(s[2]) * y;
        acc[2] += s[2];
        acc[3] += s[3];
        acc[4] += static_cast<double>(s[5]) * y;
        acc[5] += s[5];
        acc[6] += s[6];
        acc[7] += static_cast<double>(s[8]) * y;
        acc[8] += s[8];
      }
    }
    if (grad_loc && LOC != GRID) {
      constexpr int entries = LOC == AFFINE ? 6 : 9;
      T* q = grad_loc + b * entries;
      for (int r = 0; r < entries; ++r) q[r] = static_cast<T>(acc[r]);
    }
  }
}

template <typename T, int LOC>
int dispatch(bool backward, const T* x, const Locator<T, LOC>& loc, T* out_or_grad_out, T* grad_x, T* grad_loc,
             int64_t B, int64_t C, const Constants<T>& k, int padding, int threads) {
  switch (padding) {
#define TORCHSTN_CASE(PAD)                                                                                  \
  case PAD:                                                                                                 \
    if (backward)                                                                                           \
      backward_impl<T, LOC, PAD>(x, loc, out_or_grad_out, grad_x, grad_loc, B, C, k, threads);              \
    else                                                                                                    \
      forward_impl<T, LOC, PAD>(x, loc, out_or_grad_out, B, C, k, threads);                                 \
    return 0;
    TORCHSTN_CASE(ZEROS)
    TORCHSTN_CASE(BORDER)
    TORCHSTN_CASE(REFLECTION)
#undef TORCHSTN_CASE
    default:
      return 1;
  }
}

// grad_out is const in the backward; the forward writes into it as `out`
template <typename T>
int run(bool backward, int location, const T* x, const T* grid_or_theta, const T* xs, const T* ys, double eps,
        const T* out_or_grad_out, T* grad_x, T* grad_loc, int64_t B, int64_t C, int64_t H, int64_t W, int64_t Ho,
        int64_t Wo, int padding, int align_corners, int threads) {
  if (H * W + W >= (int64_t(1) << 31)) return 3;  // corner offsets are int32
  T* buffer = const_cast<T*>(out_or_grad_out);
  const Constants<T> k(H, W, Ho, Wo, align_corners != 0, static_cast<T>(eps));
  switch (location) {
    case GRID: {
      const Locator<T, GRID> loc{grid_or_theta, nullptr, nullptr, nullptr, 0, Ho, Wo};
      return dispatch<T, GRID>(backward, x, loc, buffer, grad_x, grad_loc, B, C, k, padding, threads);
    }
    case AFFINE: {
      const Locator<T, AFFINE> loc{nullptr, grid_or_theta, xs, ys, 0, Ho, Wo};
      return dispatch<T, AFFINE>(backward, x, loc, buffer, grad_x, grad_loc, B, C, k, padding, threads);
    }
    case PROJECTIVE: {
      const Locator<T, PROJECTIVE> loc{nullptr, grid_or_theta, xs, ys, static_cast<T>(eps), Ho, Wo};
      return dispatch<T, PROJECTIVE>(backward, x, loc, buffer, grad_x, grad_loc, B, C, k, padding, threads);
    }
    default:
      return 2;
  }
}

}  // namespace

extern "C" {

// Returns 0 on success, non-zero for an unknown padding or location code.
#define TORCHSTN_EXPORT(NAME, T)                                                                                 \
  int NAME##_forward(int location, const T* x, const T* grid_or_theta, const T* xs, const T* ys, double eps,   \
                     T* out, int64_t B, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int padding,  \
                     int align_corners, int threads) {                                                          \
    return run<T>(false, location, x, grid_or_theta, xs, ys, eps, out, nullptr, nullptr, B, C, H, W, Ho, Wo,   \
                  padding, align_corners, threads);                                                             \
  }                                                                                                             \
  int NAME##_backward(int location, const T* x, const T* grid_or_theta, const T* xs, const T* ys, double eps,  \
                      const T* grad_out, T* grad_x, T* grad_loc, int64_t B, int64_t C, int64_t H, int64_t W,   \
                      int64_t Ho, int64_t Wo, int padding, int align_corners, int threads) {                    \
    return run<T>(true, location, x, grid_or_theta, xs, ys, eps, grad_out, grad_x, grad_loc, B, C, H, W, Ho,   \
                  Wo, padding, align_corners, threads);                                                         \
  }

TORCHSTN_EXPORT(torchstn_warp2d_f32, float)
TORCHSTN_EXPORT(torchstn_warp2d_f64, double)
#undef TORCHSTN_EXPORT

int torchstn_warp2d_abi_version() { return 3; }
}
