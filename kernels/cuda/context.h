// kernels/cuda/context.h — what every CUDA op runs with: the backend's one stream, its cuBLAS
// handle and its growing scratch buffers (kernels/README.md).
//
// Contract: one CudaContext per CudaBackend, used by the engine's worker thread only. Ops
// enqueue on `stream` and return without waiting, except those that write host memory
// (the logits reductions), which synchronize the stream once at the end. Scratch memory may
// grow only while no CUDA graph is being captured (growing frees and reallocates, which a
// capture forbids): the first forward of a shape runs eagerly and sizes it.
#ifndef SPECMOE_KERNELS_CUDA_CONTEXT_H_
#define SPECMOE_KERNELS_CUDA_CONTEXT_H_

#include <cstddef>
#include <cstdint>

#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace specmoe::kernels::cuda {

// A buffer that only grows: Get(bytes) returns at least `bytes` of device (or pinned host)
// memory, valid until the next Get with a larger size. Contract: not thread-safe; growing
// synchronizes the device (cudaFree).
class GrowingBuffer {
 public:
  explicit GrowingBuffer(bool pinned_host) : pinned_host_(pinned_host) {}
  ~GrowingBuffer();
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;

  // Aborts (SPECMOE_CHECK) when it must grow during a capture or the allocation fails.
  void* Get(size_t bytes, bool capturing);
  size_t size() const { return bytes_; }
  // Counts the reallocations: a CUDA graph recorded at an older generation points at freed
  // memory and must not be replayed.
  uint64_t generation() const { return generation_; }

 private:
  bool pinned_host_;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  uint64_t generation_ = 0;
};

struct CudaContext {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  bool capturing = false;             // a CUDA graph is being recorded on `stream`
  // Set by an op asked to run inside a capture that it cannot be part of (it must sync the
  // host, e.g. the sequential MoE); the op does nothing then, and the backend's EndRecording
  // discards the recording and reports it, so the caller runs the ops eagerly.
  bool capture_failed = false;
  GrowingBuffer scratch{false};       // device workspace of the forward's op being run
  // Device workspace of the ops that are never part of a recording (the logits reductions,
  // KvMove): growing it must not invalidate the recorded forwards, whose kernels point into
  // `scratch` (the first sampled request would otherwise discard every recording).
  GrowingBuffer side_scratch{false};
  GrowingBuffer host_staging{true};   // pinned host memory for uploads and read-backs

  // Convenience: scratch.Get / side_scratch.Get / host_staging.Get with this context's
  // capture state.
  void* Scratch(size_t bytes) { return scratch.Get(bytes, capturing); }
  void* SideScratch(size_t bytes) { return side_scratch.Get(bytes, capturing); }
  void* Staging(size_t bytes) { return host_staging.Get(bytes, capturing); }
};

// Grid size for `n` items of `threads` each: ceil(n / threads), at least 1.
inline unsigned int Blocks(size_t n, unsigned int threads) {
  const size_t b = (n + threads - 1) / threads;
  return static_cast<unsigned int>(b == 0 ? 1 : b);
}

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_CONTEXT_H_
