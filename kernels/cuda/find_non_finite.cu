// kernels/cuda/find_non_finite.cu — FindNonFinite on the device (kernels/cuda/sampling.h;
// the CPU op it must match: CpuBackend::FindNonFinite, the first NaN or +-inf of a block of
// logits in row-major order).
//
// logits: device f32 [rows, vocab]; out: host. A grid-stride pass takes the smallest flat
// index i (size_t) of a non-finite value with atomicMin on a 64-bit word (initialised to
// all ones: none); a one-thread kernel then records whether logits[i] is NaN. Both words
// come back through ctx.Staging() with one stream synchronisation.
// Tested by tests/cuda_sampling_test.cc against the CPU backend (label cuda).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/sampling.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 132 * 8;
constexpr unsigned long long kNone = ~0ull;

// result[0]: the smallest flat index of a non-finite value of logits[count], or kNone.
__global__ void __launch_bounds__(kThreads)
    FirstNonFiniteKernel(const float* __restrict__ logits, size_t count,
                         unsigned long long* result) {
  unsigned long long first = kNone;
  const size_t stride = static_cast<size_t>(gridDim.x) * kThreads;
  for (size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += stride) {
    if (!isfinite(logits[i])) {
      first = i;  // the first of this thread: later ones are larger
      break;
    }
  }
  if (first != kNone) atomicMin(result, first);
}

// result[1] := 1 when the value at result[0] is NaN, else 0. One thread.
__global__ void NanFlagKernel(const float* __restrict__ logits, unsigned long long* result) {
  result[1] = (result[0] != kNone && isnan(logits[result[0]])) ? 1ull : 0ull;
}

}  // namespace

bool FindNonFinite(const float* logits, int rows, int vocab, NonFiniteValue* out,
                   CudaContext& ctx) {
  const size_t count = static_cast<size_t>(rows > 0 ? rows : 0) * (vocab > 0 ? vocab : 0);
  if (count == 0) return false;
  auto* result = static_cast<unsigned long long*>(ctx.SideScratch(2 * sizeof(unsigned long long)));
  auto* host = static_cast<unsigned long long*>(ctx.Staging(2 * sizeof(unsigned long long)));
  SPECMOE_CUDA_CHECK(cudaMemsetAsync(result, 0xff, sizeof(unsigned long long), ctx.stream));
  const unsigned blocks = std::min<unsigned>(Blocks(count, kThreads), kMaxBlocks);
  FirstNonFiniteKernel<<<blocks, kThreads, 0, ctx.stream>>>(logits, count, result);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
  NanFlagKernel<<<1, 1, 0, ctx.stream>>>(logits, result);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
  SPECMOE_CUDA_CHECK(cudaMemcpyAsync(host, result, 2 * sizeof(unsigned long long),
                                     cudaMemcpyDeviceToHost, ctx.stream));
  SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  if (host[0] == kNone) return false;
  *out = NonFiniteValue{static_cast<int>(host[0] / vocab), static_cast<int>(host[0] % vocab),
                        host[1] != 0};
  return true;
}

}  // namespace specmoe::kernels::cuda
