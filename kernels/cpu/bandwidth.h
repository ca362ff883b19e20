// kernels/cpu/bandwidth.h — measured memory READ bandwidth, the CPU's roofline (kernels/README.md).
//
// The decode bandwidth floor is (bytes a token must read) / MeasureReadBandwidthGBs(...).
// Exercised by tests/cpu_kernels_bench.cc and the decode benchmark; tested for sanity
// (positive and finite) in tests/cpu_backend_test.cc.
#ifndef SPECMOE_KERNELS_CPU_BANDWIDTH_H_
#define SPECMOE_KERNELS_CPU_BANDWIDTH_H_

#include <cstddef>

namespace specmoe::kernels {

// Allocates and fills a buffer of `bytes` (choose it far larger than the last-level cache,
// e.g. 1 GiB), then sums it as floats with 8 independent 8-lane vector accumulators per
// thread on a pool of `threads` threads (0: all cores), each thread streaming a contiguous
// slice. Returns bytes / seconds / 1e9 for the best of 5 passes (bytes counted once per
// pass). Costs about 6 passes over the buffer.
double MeasureReadBandwidthGBs(size_t bytes, int threads);

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_CPU_BANDWIDTH_H_
