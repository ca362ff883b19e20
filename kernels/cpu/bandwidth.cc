// kernels/cpu/bandwidth.cc — see bandwidth.h.
#include "kernels/cpu/bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "kernels/cpu/thread_pool.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace specmoe::kernels {
namespace {

// Sums p[0, count) (count a multiple of 64) with 8 accumulators of 8 lanes.
float StreamSum(const float* p, int64_t count) {
#if defined(__AVX2__)
  __m256 acc[8];
  for (__m256& a : acc) a = _mm256_setzero_ps();
  for (int64_t i = 0; i < count; i += 64) {
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_add_ps(acc[j], _mm256_load_ps(p + i + 8 * j));
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc[0]);
  float sum = 0.0f;
  for (float l : lanes) sum += l;
  return sum;
#else
  float acc[64] = {};
  for (int64_t i = 0; i < count; i += 64) {
    for (int j = 0; j < 64; ++j) acc[j] += p[i + j];
  }
  float sum = 0.0f;
  for (float a : acc) sum += a;
  return sum;
#endif
}

}  // namespace

double MeasureReadBandwidthGBs(size_t bytes, int threads) {
  ThreadPool pool(threads);
  const int64_t floats_per_line = 64;  // 256 bytes: one iteration of StreamSum
  const int64_t lines = std::max<int64_t>(1, static_cast<int64_t>(bytes / 4) / floats_per_line);
  const size_t alloc_bytes = static_cast<size_t>(lines * floats_per_line) * sizeof(float);
  float* buffer = static_cast<float*>(std::aligned_alloc(64, alloc_bytes));
  if (buffer == nullptr) return 0.0;
  // First touch from the threads that will read it, with non-zero data.
  pool.ParallelFor(lines, [&](int64_t begin, int64_t end) {
    std::fill(buffer + begin * floats_per_line, buffer + end * floats_per_line, 1.0f);
  });
  std::mutex mu;
  double total = 0.0;  // keeps the reads alive
  double best_seconds = 1e30;
  for (int pass = 0; pass < 5; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(lines, [&](int64_t begin, int64_t end) {
      const float sum =
          StreamSum(buffer + begin * floats_per_line, (end - begin) * floats_per_line);
      std::lock_guard<std::mutex> lock(mu);
      total += sum;
    });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best_seconds = std::min(best_seconds, seconds);
  }
  std::free(buffer);
  // Every element is 1, so a correct pass has a positive sum.
  if (!(total > 0.0)) return 0.0;
  return static_cast<double>(alloc_bytes) / best_seconds / 1e9;
}

}  // namespace specmoe::kernels
