// kernels/cuda/bandwidth.cu — the device's measured READ bandwidth, the GPU's roofline
// (kernels/README.md), the twin of kernels/cpu/bandwidth.cc: a streaming sum of a buffer far larger
// than L2, 16-byte loads, every byte read once per pass. Used by tests/gpu_bench.cc.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"

namespace specmoe::kernels::cuda {
namespace {

// Grid-stride sum of data[count] (float4); one partial per block in out[gridDim.x] so the
// loads cannot be optimised away.
__global__ void ReadKernel(const float4* data, size_t count, float* out) {
  float sum = 0.0f;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float4 v = __ldcs(&data[i]);  // streaming: do not keep in L2
    sum += v.x + v.y + v.z + v.w;
  }
  __shared__ float partial[256];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = 128; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

}  // namespace

double MeasureDeviceReadBandwidthGBs(size_t bytes) {
  const size_t count = bytes / sizeof(float4);
  float4* data = nullptr;
  float* out = nullptr;
  int sms = 0;
  SPECMOE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int blocks = sms * 8;
  SPECMOE_CUDA_CHECK(cudaMalloc(&data, count * sizeof(float4)));
  SPECMOE_CUDA_CHECK(cudaMalloc(&out, blocks * sizeof(float)));
  SPECMOE_CUDA_CHECK(cudaMemset(data, 0, count * sizeof(float4)));
  cudaEvent_t start, stop;
  SPECMOE_CUDA_CHECK(cudaEventCreate(&start));
  SPECMOE_CUDA_CHECK(cudaEventCreate(&stop));
  float best_ms = 1e30f;
  for (int pass = 0; pass < 6; ++pass) {  // the first pass warms up
    SPECMOE_CUDA_CHECK(cudaEventRecord(start));
    ReadKernel<<<blocks, 256>>>(data, count, out);
    SPECMOE_CUDA_CHECK(cudaGetLastError());
    SPECMOE_CUDA_CHECK(cudaEventRecord(stop));
    SPECMOE_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    SPECMOE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (pass > 0) best_ms = std::min(best_ms, ms);
  }
  SPECMOE_CUDA_CHECK(cudaEventDestroy(start));
  SPECMOE_CUDA_CHECK(cudaEventDestroy(stop));
  SPECMOE_CUDA_CHECK(cudaFree(data));
  SPECMOE_CUDA_CHECK(cudaFree(out));
  return static_cast<double>(count * sizeof(float4)) / (best_ms * 1e-3) / 1e9;
}

}  // namespace specmoe::kernels::cuda
