// tests/fuzz_pickle.cc — libFuzzer target for the torch.save readers (engine/torch_pickle.h):
// the input is run both as data.pkl (ParseTorchPickle) and as a whole zip archive
// (ParseTorchCheckpoint, which also exercises ParseZipDirectory). Returned tensor bytes are
// read so AddressSanitizer catches out-of-range views. Built only with -DSPECMOE_FUZZ=ON
// (clang); run by deploy/fuzz.sh with seeds from tests/fuzz_corpus/fuzz_pickle/.
#include <cstddef>
#include <cstdint>

#include "engine/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)specmoe::engine::ParseTorchPickle(data, size, "fuzz/data.pkl");
  const auto tensors = specmoe::engine::ParseTorchCheckpoint(data, size, "fuzz.bin");
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
