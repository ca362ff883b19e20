// kernels/cuda/device.h — CUDA device discovery. The CUDA tests (label cuda, e.g.
// tests/cuda_backend_test.cc) skip at run time when DeviceCount() is 0.
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
// Device 0's READ bandwidth in GB/s (kernels/cuda/bandwidth.cu): the best of 5 streaming
// passes over `bytes` (choose it far larger than L2, e.g. 4 GiB), bytes counted once per pass.
// Aborts when the buffer cannot be allocated (benchmarks only).
double MeasureDeviceReadBandwidthGBs(size_t bytes);

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_DEVICE_H_
