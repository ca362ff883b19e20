// kernels/cuda/gemm.h — the linear layer on the device: y = x . w^T with fp32 accumulation,
// through cuBLAS (cublasGemmEx), the CUDA twin of Backend::MatMul. Implemented in
// kernels/cuda/gemm.cu; tested against the CPU backend by tests/cuda_backend_test.cc.
#ifndef SPECMOE_KERNELS_CUDA_GEMM_H_
#define SPECMOE_KERNELS_CUDA_GEMM_H_

#include "kernels/backend.h"
#include "kernels/cuda/context.h"

namespace specmoe::kernels::cuda {

// y[n, w.rows] = x[n, w.cols] . w^T; x, y f32 device, row-major, leading dimensions
// ldx >= w.cols and ldy >= w.rows (in elements); w device, f32 / f16 / bf16. For f16 and bf16
// weights x is first rounded to the weight's dtype in ctx.scratch (so the tensor cores take
// both operands in one type), the product accumulates in fp32 and y is written in f32.
// Enqueued on ctx.stream.
void Gemm(const float* x, int n, int ldx, const Weight& w, float* y, int ldy, CudaContext& ctx);

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_GEMM_H_
