// tests/cuda_kernels_test.cc — CUDA kernels against the CPU backend (label cuda).
// Skips at run time when no CUDA device is visible (DESIGN §5).
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cuda/device.h"

namespace specmoe::kernels {
namespace {

class CudaKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: " << cuda::DeviceName();
  }
};

TEST_F(CudaKernelsTest, RmsNormMatchesCpu) {
  const int n = 5, d = 4096 + 3;
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n * d), w(d), want(n * d), got(n * d);
  for (float& v : x) v = normal(gen);
  for (float& v : w) v = 1.0f + 0.1f * normal(gen);
  std::unique_ptr<Backend> cpu = CreateCpuBackend(1);
  cpu->RmsNorm(x.data(), n, d, Weight{w.data(), DType::kF32, 1, d}, 1e-5f, want.data());

  float *dx, *dw, *dy;
  ASSERT_EQ(cudaMalloc(&dx, x.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dw, w.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dy, got.size() * 4), cudaSuccess);
  cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dw, w.data(), w.size() * 4, cudaMemcpyHostToDevice);
  cuda::RmsNorm(dx, n, d, dw, 1e-5f, dy);
  cudaMemcpy(got.data(), dy, got.size() * 4, cudaMemcpyDeviceToHost);
  cudaFree(dx);
  cudaFree(dw);
  cudaFree(dy);
  for (int i = 0; i < n * d; ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-5f * (1.0f + std::fabs(want[i]))) << "at " << i;
  }
}

TEST(CudaDeviceTest, CountIsNonNegative) {
  EXPECT_GE(cuda::DeviceCount(), 0);
  EXPECT_FALSE(cuda::DeviceName().empty());
}

}  // namespace
}  // namespace specmoe::kernels
