// kernels/cpu/row_ops.h — the per-element arithmetic of the CPU backend's small ops (RMSNorm,
// SiLU-mul, rotary embedding), shared by the ops themselves (cpu_backend.cc) and by the
// places that fuse them into a MatMul's packing or epilogue (matmul.cc) or into one pass
// (RoPE with the KV write), so a fused op computes every value with the very same
// operations as the separate op: the same bits (kernels/README.md, Batch invariance).
// Compiled with -ffp-contract=off like the rest of the library. Tested through
// tests/cpu_backend_test.cc (each op against a double reference, fused against separate).
#ifndef SPECMOE_KERNELS_CPU_ROW_OPS_H_
#define SPECMOE_KERNELS_CPU_ROW_OPS_H_

#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace specmoe::kernels {

// sum_i x[i]^2 with 8 lanes (fixed order), then the tail.
inline float SumOfSquares(const float* x, int d) {
  int i = 0;
  float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= d; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  sum = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55)));
#endif
  for (; i < d; ++i) sum += x[i] * x[i];
  return sum;
}

// HF LlamaRMSNorm's scale of one row x[d]: 1 / sqrt(mean(x^2) + eps), in fp32.
inline float InvRms(const float* x, int d, float eps) {
  const float variance = SumOfSquares(x, d) / static_cast<float>(d);
  return 1.0f / std::sqrt(variance + eps);
}

// One normalized element: w * (x * inv_rms).
inline float NormScale(float w, float x, float inv_rms) { return w * (x * inv_rms); }

// silu(a) * u, silu(a) = a / (1 + exp(-a)).
inline float SiluMulOne(float a, float u) { return a / (1.0f + std::exp(-a)) * u; }

// cos and sin of position p at the rotary frequencies inv_freq[half].
inline void RopeAngles(int32_t position, const float* inv_freq, int half, float* cos_t,
                       float* sin_t) {
  const float p = static_cast<float>(position);
  for (int j = 0; j < half; ++j) {
    const float angle = p * inv_freq[j];
    cos_t[j] = std::cos(angle);
    sin_t[j] = std::sin(angle);
  }
}

// Rotates n_heads heads of head_dim (HF half split) in place:
// x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin (each product rounded, then the sum).
inline void RopeHeads(float* x, int n_heads, int head_dim, const float* cos_t, const float* sin_t) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* head = x + static_cast<int64_t>(h) * head_dim;
    for (int j = 0; j < half; ++j) {
      const float x1 = head[j];
      const float x2 = head[j + half];
      head[j] = x1 * cos_t[j] - x2 * sin_t[j];
      head[j + half] = x2 * cos_t[j] + x1 * sin_t[j];
    }
  }
}

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_CPU_ROW_OPS_H_
