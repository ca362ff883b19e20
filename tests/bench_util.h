// tests/bench_util.h — what the benchmark programs share (decode_bench, serving_bench): a
// steady clock, medians and percentiles, the measured read bandwidth and the bytes a decode
// token reads, so that every "floor" figure is computed one way (kernels/README.md, CPU kernels:
// bytes a token must read over a measured READ bandwidth).
// Header-only; the benchmarks are not tests, they are run by hand (README, Benchmarks).
#ifndef SPECMOE_TESTS_BENCH_UTIL_H_
#define SPECMOE_TESTS_BENCH_UTIL_H_

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <vector>

#include "engine/model/model.h"
#include "kernels/cpu/bandwidth.h"

namespace specmoe::bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

inline double Seconds(Clock::time_point start, Clock::time_point end) {
  return std::chrono::duration<double>(end - start).count();
}

// The middle element (the upper one of an even count); 0 for an empty vector.
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// The p-th percentile (0..100), interpolating linearly between order statistics (numpy's
// default, as vllm bench serve and specmoe-cli bench report them); 0 for an empty vector.
inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (rank - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

// Read bandwidth now (GB/s): a streaming reduction over 512 MiB on all cores
// (kernels/cpu/bandwidth.h), about 6 passes over the buffer (0.2 s on the development VM).
inline double ReadBandwidthGBs() {
  return kernels::MeasureReadBandwidthGBs(size_t{512} << 20, 0);
}

// K/V bytes one token of context adds to `model`'s cache (both K and V, every layer).
inline double KvBytesPerToken(const engine::Model& m, size_t kv_bytes = sizeof(float)) {
  return 2.0 * m.config().num_layers * m.kv_row() * static_cast<double>(kv_bytes);
}

// Bytes one decode token of `model` reads: its weights once plus the K/V of `context`
// tokens.
inline double BytesPerToken(const engine::Model& m, double context,
                            size_t kv_bytes = sizeof(float)) {
  return static_cast<double>(m.bytes_per_token()) + KvBytesPerToken(m, kv_bytes) * context;
}

}  // namespace specmoe::bench

#endif  // SPECMOE_TESTS_BENCH_UTIL_H_
