// tests/fuzz_touch.h — reads every byte of the tensors a reader returned, so AddressSanitizer
// catches a view that points outside the input. Shared by the fuzz targets.
#ifndef SPECMOE_TESTS_FUZZ_TOUCH_H_
#define SPECMOE_TESTS_FUZZ_TOUCH_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/loader/weights.h"

namespace specmoe {

inline void TouchTensorBytes(const std::vector<engine::TensorInfo>& tensors) {
  uint8_t sum = 0;
  for (const engine::TensorInfo& t : tensors) {
    const auto* bytes = static_cast<const uint8_t*>(t.data);
    for (size_t i = 0; i < t.bytes; ++i) sum ^= bytes[i];
  }
  volatile uint8_t sink = sum;
  (void)sink;
}

}  // namespace specmoe

#endif  // SPECMOE_TESTS_FUZZ_TOUCH_H_
