// kernels/backend.cc — dtype helpers shared by every backend, and the recording ids.
#include "kernels/backend.h"

#include <atomic>
#include <cmath>
#include <cstring>

#include "kernels/cpu/f16.h"

namespace specmoe::kernels {

uint64_t NewRecordingId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

void RopeInverseFrequencies(int head_dim, float theta, const RopeScaling& scaling,
                            float* inv_freq) {
  const int half = head_dim / 2;
  for (int j = 0; j < half; ++j) {
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(head_dim);
    inv_freq[j] = 1.0f / std::pow(theta, exponent);
  }
  if (scaling.factor <= 0) return;
  const float low_wavelength = scaling.original_max_position / scaling.low_freq_factor;
  const float high_wavelength = scaling.original_max_position / scaling.high_freq_factor;
  constexpr float kTwoPi = static_cast<float>(2 * M_PI);
  for (int j = 0; j < half; ++j) {
    const float wavelength = kTwoPi / inv_freq[j];
    if (wavelength < high_wavelength) continue;
    if (wavelength > low_wavelength) {
      inv_freq[j] /= scaling.factor;
      continue;
    }
    const float smooth = (scaling.original_max_position / wavelength - scaling.low_freq_factor) /
                         (scaling.high_freq_factor - scaling.low_freq_factor);
    inv_freq[j] = (1 - smooth) * inv_freq[j] / scaling.factor + smooth * inv_freq[j];
  }
}

size_t DTypeBytes(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

void WidenRow(const Weight& w, int64_t r, float* out) {
  const size_t bytes = DTypeBytes(w.dtype);
  const auto* row = static_cast<const uint8_t*>(w.data) + static_cast<size_t>(r * w.cols) * bytes;
  for (int64_t i = 0; i < w.cols; ++i) {
    if (w.dtype == DType::kF32) {
      std::memcpy(&out[i], row + i * 4, 4);  // the data may be unaligned
      continue;
    }
    uint16_t h;
    std::memcpy(&h, row + i * 2, 2);
    out[i] = w.dtype == DType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
  }
}

void NarrowRow(const float* x, int64_t n, DType dtype, void* out) {
  auto* bytes = static_cast<uint8_t*>(out);
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(bytes + i * 4, &x[i], 4);
      continue;
    }
    const uint16_t h = dtype == DType::kF16 ? F32ToF16(x[i]) : F32ToBf16(x[i]);
    std::memcpy(bytes + i * 2, &h, 2);
  }
}

}  // namespace specmoe::kernels
