// kernels/cuda/cuda_check.h — SPECMOE_CUDA_CHECK: aborts naming the call, file and line when
// a CUDA runtime call that cannot fail on a healthy device fails (a broken invariant).
#ifndef SPECMOE_KERNELS_CUDA_CUDA_CHECK_H_
#define SPECMOE_KERNELS_CUDA_CUDA_CHECK_H_

#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>

#define SPECMOE_CUDA_CHECK(call)                                                    \
  do {                                                                              \
    cudaError_t specmoe_err_ = (call);                                              \
    if (specmoe_err_ != cudaSuccess) {                                              \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,     \
                   cudaGetErrorString(specmoe_err_));                               \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

#endif  // SPECMOE_KERNELS_CUDA_CUDA_CHECK_H_
