// kernels/cpu/f16.h — scalar IEEE half and bfloat16 <-> f32 conversions (and MulAdd).
//
// Half -> f32 and bf16 -> f32 are exact; f32 -> half / bf16 round to nearest even (as
// torch's .half() / .bfloat16() do; NaN stays NaN). The vector kernels use F16C and a
// 16-bit shift instead; these are the scalar fallbacks, tails and test helpers.
// Tested by tests/cpu_backend_test.cc (round trips and the matmul references).
#ifndef SPECMOE_KERNELS_CPU_F16_H_
#define SPECMOE_KERNELS_CPU_F16_H_

#include <cstdint>
#include <cstring>

namespace specmoe::kernels {

inline float BitsToF32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint32_t F32ToBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// a * b + c, fused (one rounding) where the CPU has FMA, else two roundings: the scalar
// tails of the kernels use it so they match their vector bodies' rounding on AVX2/FMA
// builds, without a slow software fma on builds without FMA.
inline float MulAdd(float a, float b, float c) {
#if defined(__FMA__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// bf16 is the high half of an f32.
inline float Bf16ToF32(uint16_t h) { return BitsToF32(static_cast<uint32_t>(h) << 16); }

inline uint16_t F32ToBf16(float f) {
  uint32_t bits = F32ToBits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
inline float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return BitsToF32(sign | 0x7f800000u | (mantissa << 13));
  return BitsToF32(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline uint16_t F32ToF16(float f) {
  const uint32_t bits = F32ToBits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs_bits >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: infinity
  if (abs_bits < 0x38800000u) {
    // Result is subnormal or zero: round abs * 2^24 to the nearest even integer.
    const float scaled = BitsToF32(abs_bits) * 16777216.0f;  // exact
    uint32_t q = static_cast<uint32_t>(scaled);
    const float rem = scaled - static_cast<float>(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even.
  uint32_t h = abs_bits - (112u << 23);
  h += 0xfffu + ((h >> 13) & 1u);
  return sign | static_cast<uint16_t>(h >> 13);
}

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_CPU_F16_H_
