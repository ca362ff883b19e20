// kernels/cuda/context.cu — GrowingBuffer (see context.h).
#include "kernels/cuda/context.h"

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"

namespace specmoe::kernels::cuda {

GrowingBuffer::~GrowingBuffer() {
  if (ptr_ == nullptr) return;
  if (pinned_host_) {
    cudaFreeHost(ptr_);
  } else {
    cudaFree(ptr_);
  }
}

void* GrowingBuffer::Get(size_t bytes, bool capturing) {
  if (bytes <= bytes_ && ptr_ != nullptr) return ptr_;
  SPECMOE_CHECK(!capturing, "a CUDA graph capture needs more scratch than an eager run sized");
  if (ptr_ != nullptr) {
    SPECMOE_CUDA_CHECK(pinned_host_ ? cudaFreeHost(ptr_) : cudaFree(ptr_));
    ptr_ = nullptr;
  }
  const size_t grown = bytes < 2 * bytes_ ? 2 * bytes_ : bytes;
  const size_t want = grown < 256 ? 256 : grown;
  SPECMOE_CUDA_CHECK(pinned_host_ ? cudaMallocHost(&ptr_, want) : cudaMalloc(&ptr_, want));
  bytes_ = want;
  ++generation_;
  return ptr_;
}

}  // namespace specmoe::kernels::cuda
