// kernels/cuda/cublas_check.h — SPECMOE_CUBLAS_CHECK: aborts naming the call, file, line and
// cuBLAS status when a cuBLAS call that cannot fail on a healthy device with valid arguments
// fails (a broken invariant; kernels/README.md, Errors). Errors a caller can cause (creating a
// handle) are returned as a Status instead (kernels/cuda/cuda_backend.cu).
#ifndef SPECMOE_KERNELS_CUDA_CUBLAS_CHECK_H_
#define SPECMOE_KERNELS_CUDA_CUBLAS_CHECK_H_

#include <cublas_v2.h>

#include <cstdio>
#include <cstdlib>

#define SPECMOE_CUBLAS_CHECK(call)                                              \
  do {                                                                          \
    cublasStatus_t specmoe_status_ = (call);                                    \
    if (specmoe_status_ != CUBLAS_STATUS_SUCCESS) {                             \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, \
                   cublasGetStatusString(specmoe_status_));                     \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

#endif  // SPECMOE_KERNELS_CUDA_CUBLAS_CHECK_H_
