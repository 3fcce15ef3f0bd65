// Prototypes of the 2-D forward's sampling, for benchmarks/sampling_floor.py: a single pass in
// AVX2 registers (no per-block arrays), affine, bilinear, zeros padding, one float32 channel,
// NCHW, align_corners=False, without torchstn's NaN policy. `variant`: 1 hardware gathers,
// 0 scalar loads, 2 row-coherent (eight points on one input row within 16 pixels read with
// two loads per row and permutes; else gathers), 3 no input read at all (the arithmetic
// and the store alone: a floor for any kernel of this shape). Not part of the library.
#include <immintrin.h>
#include <cstdint>
#include <cmath>
extern "C" int proto_forward(const float* x, const float* theta, float* out, int64_t B, int64_t H, int64_t W,
                             int64_t Ho, int64_t Wo, int variant) {
  const float ax = W / 2.f, ay = H / 2.f;
  alignas(32) float xs[1024];
  for (int64_t j = 0; j < Wo; ++j) xs[j] = ((-1.0 + 2.0 * j / (Wo - 1)) * (Wo - 1) / Wo);
  for (int64_t j = Wo; j < Wo + 8; ++j) xs[j] = 0;
  const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
  const __m256 Wf = _mm256_set1_ps((float)W), Hf = _mm256_set1_ps((float)H);
  const __m256 W1 = _mm256_set1_ps((float)(W - 1)), H1 = _mm256_set1_ps((float)(H - 1)), m1 = _mm256_set1_ps(-1.f);
  const __m256i Wi = _mm256_set1_epi32((int)W), onei = _mm256_set1_epi32(1);
  for (int64_t b = 0; b < B; ++b) {
    const float* m = theta + b * 6;
    const float* xb = x + b * H * W;
    float* ob = out + b * Ho * Wo;
    // pixel coords: ix = (gx + 1) * ax - 0.5, gx = m0 x + m1 y + m2
    const __m256 m0 = _mm256_set1_ps(m[0] * ax), m3 = _mm256_set1_ps(m[3] * ay);
    for (int64_t i = 0; i < Ho; ++i) {
      const float y = (float)((-1.0 + 2.0 * i / (Ho - 1)) * (Ho - 1) / Ho);
      const __m256 cx = _mm256_set1_ps((m[1] * y + m[2] + 1.f) * ax - 0.5f);
      const __m256 cy = _mm256_set1_ps((m[4] * y + m[5] + 1.f) * ay - 0.5f);
      for (int64_t j = 0; j < Wo; j += 8) {
        const __m256 xv = _mm256_load_ps(xs + j);
        const __m256 ix = _mm256_fmadd_ps(m0, xv, cx), iy = _mm256_fmadd_ps(m3, xv, cy);
        const __m256 fx = _mm256_floor_ps(ix), fy = _mm256_floor_ps(iy);
        const __m256 tx = _mm256_sub_ps(ix, fx), ty = _mm256_sub_ps(iy, fy);
        const __m256 vx0 = _mm256_and_ps(_mm256_cmp_ps(fx, zero, _CMP_GE_OQ), _mm256_cmp_ps(fx, Wf, _CMP_LT_OQ));
        const __m256 vx1 = _mm256_and_ps(_mm256_cmp_ps(fx, m1, _CMP_GE_OQ), _mm256_cmp_ps(fx, W1, _CMP_LT_OQ));
        const __m256 vy0 = _mm256_and_ps(_mm256_cmp_ps(fy, zero, _CMP_GE_OQ), _mm256_cmp_ps(fy, Hf, _CMP_LT_OQ));
        const __m256 vy1 = _mm256_and_ps(_mm256_cmp_ps(fy, m1, _CMP_GE_OQ), _mm256_cmp_ps(fy, H1, _CMP_LT_OQ));
        const __m256i x0 = _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(fx, Wf), m1));
        const __m256i y0 = _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(fy, Hf), m1));
        const __m256i o = _mm256_add_epi32(_mm256_mullo_epi32(y0, Wi), x0);
        __m256 v00, v01, v10, v11;
        bool done = false;
        if (variant == 2) {
          // row-coherent: all lanes on one input row, corners within 16 pixels of lane 0's x0,
          // all corners inside: two 8-wide loads per row and permutes instead of gathers
          const __m256 inside = _mm256_and_ps(_mm256_and_ps(vx0, vx1), _mm256_and_ps(vy0, vy1));
          const __m256i ybase = _mm256_permutevar8x32_epi32(y0, _mm256_setzero_si256());
          const __m256i xbase = _mm256_permutevar8x32_epi32(x0, _mm256_setzero_si256());
          const __m256i d = _mm256_sub_epi32(x0, xbase);
          const __m256i same_row = _mm256_cmpeq_epi32(y0, ybase);
          const __m256i in_span = _mm256_and_si256(_mm256_cmpgt_epi32(d, _mm256_set1_epi32(-1)),
                                                   _mm256_cmpgt_epi32(_mm256_set1_epi32(15), d));
          const int ok = _mm256_movemask_ps(_mm256_and_ps(inside, _mm256_castsi256_ps(_mm256_and_si256(same_row, in_span))));
          const int xb0 = _mm256_extract_epi32(xbase, 0), yb0 = _mm256_extract_epi32(ybase, 0);
          if (ok == 0xff && xb0 + 16 <= W) {
            const float* r0 = xb + yb0 * W + xb0;
            const __m256 a0 = _mm256_loadu_ps(r0), b0 = _mm256_loadu_ps(r0 + 8);
            const __m256 a1 = _mm256_loadu_ps(r0 + W), b1 = _mm256_loadu_ps(r0 + W + 8);
            const __m256i d1 = _mm256_add_epi32(d, onei);
            const __m256i seven = _mm256_set1_epi32(7);
            const __m256 hi0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(d, seven)), hi1 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(d1, seven));
            // (vpermps uses the low 3 bits of each index)
            v00 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(a0, d), _mm256_permutevar8x32_ps(b0, d), hi0);
            v01 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(a0, d1), _mm256_permutevar8x32_ps(b0, d1), hi1);
            v10 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(a1, d), _mm256_permutevar8x32_ps(b1, d), hi0);
            v11 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(a1, d1), _mm256_permutevar8x32_ps(b1, d1), hi1);
            done = true;
          }
        }
        if (variant == 3) {  // no reads: the arithmetic and the store alone (a floor)
          v00 = ix; v01 = iy; v10 = _mm256_and_ps(vx0, vy1); v11 = _mm256_castsi256_ps(o);
          done = true;
        }
        if (done) {
        } else if (variant) {
          v00 = _mm256_mask_i32gather_ps(zero, xb, o, _mm256_and_ps(vx0, vy0), 4);
          v01 = _mm256_mask_i32gather_ps(zero, xb + 1, o, _mm256_and_ps(vx1, vy0), 4);
          v10 = _mm256_mask_i32gather_ps(zero, xb + W, o, _mm256_and_ps(vx0, vy1), 4);
          v11 = _mm256_mask_i32gather_ps(zero, xb + W + 1, o, _mm256_and_ps(vx1, vy1), 4);
        } else {
          alignas(32) int32_t off[8]; alignas(32) float val[4][8]; alignas(32) int32_t ok[4][8];
          _mm256_store_si256((__m256i*)off, o);
          _mm256_store_ps((float*)ok[0], _mm256_and_ps(vx0, vy0));
          _mm256_store_ps((float*)ok[1], _mm256_and_ps(vx1, vy0));
          _mm256_store_ps((float*)ok[2], _mm256_and_ps(vx0, vy1));
          _mm256_store_ps((float*)ok[3], _mm256_and_ps(vx1, vy1));
          for (int l = 0; l < 8; ++l) {
            const float* p = xb + off[l];
            val[0][l] = ok[0][l] ? p[0] : 0.f; val[1][l] = ok[1][l] ? p[1] : 0.f;
            val[2][l] = ok[2][l] ? p[W] : 0.f; val[3][l] = ok[3][l] ? p[W + 1] : 0.f;
          }
          v00 = _mm256_load_ps(val[0]); v01 = _mm256_load_ps(val[1]); v10 = _mm256_load_ps(val[2]); v11 = _mm256_load_ps(val[3]);
        }
        const __m256 top = _mm256_fmadd_ps(tx, _mm256_sub_ps(v01, v00), v00);
        const __m256 bot = _mm256_fmadd_ps(tx, _mm256_sub_ps(v11, v10), v10);
        const __m256 r = _mm256_fmadd_ps(ty, _mm256_sub_ps(bot, top), top);
        const int64_t left = Wo - j;
        if (left >= 8) _mm256_storeu_ps(ob + i * Wo + j, r);
        else _mm256_maskstore_ps(ob + i * Wo + j, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), _mm256_setr_epi32(0,1,2,3,4,5,6,7)), r);
      }
    }
  }
  return 0;
}
