// tests/fuzz_safetensors.cc — libFuzzer target for ParseSafetensors (engine/loader/safetensors.h).
// Every returned tensor's bytes are read, so AddressSanitizer catches any range the parser
// lets out of the input. Built only with -DSPECMOE_FUZZ=ON (clang); run by deploy/fuzz.sh
// with seeds from tests/fuzz_corpus/fuzz_safetensors/.
#include <cstddef>
#include <cstdint>

#include "engine/loader/safetensors.h"
#include "tests/fuzz_touch.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto tensors = specmoe::engine::ParseSafetensors(data, size, "fuzz.safetensors");
  if (tensors.ok()) specmoe::TouchTensorBytes(*tensors);
  return 0;
}
