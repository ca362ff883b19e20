// tests/fuzz_pickle.cc — libFuzzer target for the torch.save readers (engine/loader/torch_pickle.h):
// the input is run both as data.pkl (ParseTorchPickle) and as a whole zip archive
// (ParseTorchCheckpoint, which also exercises ParseZipDirectory). Returned tensor bytes are
// read so AddressSanitizer catches out-of-range views. Built only with -DSPECMOE_FUZZ=ON
// (clang); run by deploy/fuzz.sh with seeds from tests/fuzz_corpus/fuzz_pickle/.
#include <cstddef>
#include <cstdint>

#include "engine/loader/torch_pickle.h"
#include "tests/fuzz_touch.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)specmoe::engine::ParseTorchPickle(data, size, "fuzz/data.pkl");
  const auto tensors = specmoe::engine::ParseTorchCheckpoint(data, size, "fuzz.bin");
  if (tensors.ok()) specmoe::TouchTensorBytes(*tensors);
  return 0;
}
