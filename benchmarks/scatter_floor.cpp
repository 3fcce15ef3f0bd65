// What the backward's scatter of x's gradient costs by itself at 256x1x60x60 -> 30x30 (the bench's
// affine-60to30 case): every output point adds its four bilinear shares to grad_x, 921,600
// read-add-writes a call, with the corner offsets and shares already made (as the fused kernel
// has them in its block). Prints the best of 200 calls of each way:
//
//   0  one point at a time, four scalar read-add-writes each (the kernel's scatter)
//   1  eight points at a time, AVX-512 gathers, adds and scatters of their corners 0 and 1, then
//      2 and 3, with no check that two lanes share a pixel (wrong where they do: its sum differs)
//   2  as 1, with vpconflictd checks for every pair of corners that may meet, one point at a
//      time where they do (the same sums as 0)
//
//   g++ -O2 -march=native -o /tmp/scatter_floor benchmarks/scatter_floor.cpp
//   for way in 0 1 2; do /tmp/scatter_floor $way; done
//
// Intel Xeon with AVX-512, one thread, 2026-12-06: 0.420-0.425 ms, 0.447-0.467 ms, 0.885-0.914 ms
// (the kernel's whole backward of both gradients: 1.2 ms). The hardware scatter saves nothing:
// its sixteen stores are sixteen stores.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  const int B = 256, H = 60, W = 60, Ho = 30, Wo = 30, N = Ho * Wo;
  const int way = argc > 1 ? std::atoi(argv[1]) : 0;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 1);
  // each sample's θ: the identity plus 0.05 N(0, 1); corner 0 clamped into the image
  std::vector<int32_t> off(B * N);
  for (int b = 0; b < B; ++b) {
    float t[6];
    for (int r = 0; r < 6; ++r) t[r] = (r == 0 || r == 4 ? 1.f : 0.f) + 0.05f * normal(rng);
    for (int i = 0; i < Ho; ++i) {
      for (int j = 0; j < Wo; ++j) {
        const float gx = (2 * j + 1 - Wo) / float(Wo), gy = (2 * i + 1 - Ho) / float(Ho);
        const float sx = t[0] * gx + t[1] * gy + t[2], sy = t[3] * gx + t[4] * gy + t[5];
        const float ix = ((sx + 1) * W - 1) / 2, iy = ((sy + 1) * H - 1) / 2;
        const int x0 = std::min(std::max(int(std::floor(ix)), 0), W - 2);
        const int y0 = std::min(std::max(int(std::floor(iy)), 0), H - 2);
        off[b * N + i * Wo + j] = y0 * W + x0;
      }
    }
  }
  std::vector<float> part(B * N * 4);  // per vector of 8 points: corner 0's 8 shares, then 1, 2, 3
  for (float& p : part) p = normal(rng);
  std::vector<float> grad(B * H * W);
  const auto scalar = [&](float* g, const int32_t* o, const float* pp, int t0, int live) {
    for (int l = 0; l < live; ++l) {
      float* p = g + o[t0 + l];
      p[0] += pp[t0 * 4 + l];
      p[1] += pp[t0 * 4 + 8 + l];
      p[W] += pp[t0 * 4 + 16 + l];
      p[W + 1] += pp[t0 * 4 + 24 + l];
    }
  };
  const auto call = [&]() {
    std::memset(grad.data(), 0, grad.size() * sizeof(float));
    for (int b = 0; b < B; ++b) {
      float* g = grad.data() + b * H * W;
      const int32_t* o = off.data() + b * N;
      const float* pp = part.data() + b * N * 4;
      for (int t0 = 0; t0 < N; t0 += 8) {
        const int live = std::min(8, N - t0);
        if (way == 0 || live < 8) {
          scalar(g, o, pp, t0, live);
          continue;
        }
        const __m256i o0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o + t0));
        const auto pair = [&](int d) {  // corner 0's offsets and corner 0's plus d
          return _mm512_inserti64x4(_mm512_castsi256_si512(o0), _mm256_add_epi32(o0, _mm256_set1_epi32(d)), 1);
        };
        const __m512i top = pair(1);
        if (way == 2) {
          __m512i c = _mm512_conflict_epi32(top);
          c = _mm512_or_si512(c, _mm512_conflict_epi32(pair(W)));
          c = _mm512_or_si512(c, _mm512_conflict_epi32(pair(W - 1)));
          c = _mm512_or_si512(c, _mm512_conflict_epi32(pair(W + 1)));
          if (_mm512_test_epi32_mask(c, c) != 0) {
            scalar(g, o, pp, t0, live);
            continue;
          }
        }
        const __m512 s01 = _mm512_loadu_ps(pp + t0 * 4), s23 = _mm512_loadu_ps(pp + t0 * 4 + 16);
        _mm512_i32scatter_ps(g, top, _mm512_add_ps(_mm512_i32gather_ps(top, g, 4), s01), 4);
        _mm512_i32scatter_ps(g + W, top, _mm512_add_ps(_mm512_i32gather_ps(top, g + W, 4), s23), 4);
      }
    }
  };
  call();
  double best = 1e9;
  for (int r = 0; r < 200; ++r) {
    const auto start = std::chrono::steady_clock::now();
    call();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  double sum = 0;
  for (const float v : grad) sum += v;
  std::printf("way %d: %.3f ms a call (grad_x's sum %.6g)\n", way, best * 1e3, sum);
}
