// kernels/cuda/gather_rows.cu — the logit rows' gather on the device (elementwise.h
// GatherRows), the twin of the CPU backend's GatherRows: out[i, :] = x[fwd.logit_rows[i], :]
// for i < fwd.n_logit_rows (exact copies). x: device [n_tokens, cols] f32; out: device
// [n_logit_rows, cols], not aliasing x (CudaBackend gathers an aliased call through scratch).
// Grid: (ceil(cols / 256), min(n_logit_rows, 65535)), rows strided by gridDim.y. Tested
// against the CPU backend by tests/cuda_backend_test.cc.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace specmoe::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;
constexpr int kMaxRowBlocks = 65535;  // grid y limit

__global__ void GatherRowsKernel(const float* x, const int32_t* rows, int n, int cols, float* out) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  for (int i = blockIdx.y; i < n; i += gridDim.y) {
    out[static_cast<size_t>(i) * cols + c] = x[static_cast<size_t>(rows[i]) * cols + c];
  }
}

}  // namespace

void GatherRows(const float* x, const ForwardDesc& fwd, int cols, float* out, CudaContext& ctx) {
  const int n = fwd.n_logit_rows;
  if (n == 0 || cols == 0) return;
  SPECMOE_CHECK(cols > 0 && fwd.logit_rows != nullptr, "GatherRows arguments");
  const dim3 grid((cols + kThreads - 1) / kThreads, n < kMaxRowBlocks ? n : kMaxRowBlocks);
  GatherRowsKernel<<<grid, kThreads, 0, ctx.stream>>>(x, fwd.logit_rows, n, cols, out);
  SPECMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace specmoe::kernels::cuda
