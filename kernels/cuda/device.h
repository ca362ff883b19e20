// kernels/cuda/device.h — CUDA device discovery and the ops implemented so far.
// Tested by tests/cuda_kernels_test.cc (label cuda; skips when no device is visible).
#ifndef SPECMOE_KERNELS_CUDA_DEVICE_H_
#define SPECMOE_KERNELS_CUDA_DEVICE_H_

#include <cstddef>
#include <string>

namespace specmoe::kernels::cuda {

// Number of usable CUDA devices. Any error from the runtime (no driver: "driver version is
// insufficient", no device) counts as zero devices.
int DeviceCount();
// "NVIDIA H200 (sm_90, 139 GiB)" for device 0, or the runtime's error text.
std::string DeviceName();
// Free memory of device 0 in bytes (cudaMemGetInfo), 0 when the runtime reports an error.
size_t DeviceFreeBytes();

// y[n, d] = w[d] * x * rsqrt(mean(x^2) + eps) in fp32, on the device (device pointers; w is
// f32 [d]). One block per row; synchronous.
void RmsNorm(const float* x, int n, int d, const float* w, float eps, float* y);

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_DEVICE_H_
