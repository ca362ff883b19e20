// tests/fuzz_safetensors.cc — libFuzzer target for ParseSafetensors (engine/safetensors.h).
// Every returned tensor's bytes are read, so AddressSanitizer catches any range the parser
// lets out of the input. Built only with -DSPECMOE_FUZZ=ON (clang); run by deploy/fuzz.sh
// with seeds from tests/fuzz_corpus/fuzz_safetensors/.
#include <cstddef>
#include <cstdint>

#include "engine/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto tensors = specmoe::engine::ParseSafetensors(data, size, "fuzz.safetensors");
  if (!tensors.ok()) return 0;
  uint8_t sum = 0;
  for (const auto& t : *tensors) {
    const auto* bytes = static_cast<const uint8_t*>(t.data);
    for (size_t i = 0; i < t.bytes; ++i) sum ^= bytes[i];
  }
  volatile uint8_t sink = sum;
  (void)sink;
  return 0;
}
