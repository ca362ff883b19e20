// kernels/cuda/cuda_backend.h — the CUDA implementation of the Backend op table
// (kernels/backend.h; kernels/README.md): device memory from plain cudaMalloc, one non-blocking
// stream, cuBLAS for the linear layers, the kernels of kernels/cuda for every other op, the
// forward's description uploaded once per forward, and recorded forwards as CUDA graphs.
// Implemented in kernels/cuda/cuda_backend.cu; tested against the CPU backend op by op by
// tests/cuda_backend_test.cc (label cuda; skips when no device is visible).
#ifndef SPECMOE_KERNELS_CUDA_CUDA_BACKEND_H_
#define SPECMOE_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace specmoe::kernels::cuda {

// A Backend (name() "cuda") on CUDA device `device`, or an error Status naming the CUDA or
// cuBLAS error when there is no such device, it cannot be made current, or the stream, the
// cuBLAS handle or the backend's fixed buffers cannot be created.
// Contract: used by one thread at a time (the engine's worker), like every Backend. Its ops
// are enqueued on its stream; CopyFromHost, CopyToHost and Upload wait for the stream, KvCompact
// waits for the upload of its slots, the logits reductions synchronize once each. Alloc,
// Upload, BeginForward and KvCompact make `device` current for the calling thread, so creating
// the backend on one thread and running it on another works. Recording (BeginRecording ..
// EndRecording) allows only device-side ops: Alloc, Free, the host copies, Upload,
// BeginForward and KvCompact abort inside a recording.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device);

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_CUDA_BACKEND_H_
