// engine/loader/torch_pickle.h — native reader for PyTorch's pytorch_model.bin (torch.save zip format).
//
// torch.save writes a zip archive (entries STORED, i.e. uncompressed) holding
// <archive>/data.pkl, a pickle of the state dict, and <archive>/data/<key>, the raw bytes of
// each storage. This file parses the zip central directory itself (ZIP64 included: 7B shards
// exceed 4 GB) and runs a small pickle VM with only the opcodes and globals torch.save emits
// for a state dict: collections.OrderedDict, torch._utils._rebuild_tensor_v2 (and
// _rebuild_parameter) and persistent ids ('storage', torch.<Float|Half|BFloat16>Storage, key,
// location, numel). Nothing is executed: any other global is an error. Every malformed input
// is an error naming the file, never a crash, unbounded allocation or hang.
// References: PKWARE APPNOTE.TXT 4.3 (zip, ZIP64), CPython Lib/pickletools.py (opcodes),
// torch/serialization.py (_save, persistent_id), torch/_utils.py (_rebuild_tensor_v2).
// Tested by tests/weights_test.cc against torch.save fixtures; fuzzed by tests/fuzz_pickle.cc.
#ifndef SPECMOE_ENGINE_LOADER_TORCH_PICKLE_H_
#define SPECMOE_ENGINE_LOADER_TORCH_PICKLE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/loader/weights.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// One entry of a zip archive's central directory.
struct ZipEntry {
  std::string name;
  uint16_t method = 0;        // 0 = stored; anything else is compressed
  uint64_t data_offset = 0;   // offset of the entry's bytes in the archive (after the local header)
  uint64_t size = 0;          // compressed size (equals the stored size when method == 0)
};

// Parses the end-of-central-directory record (ZIP64 when present), the central directory and
// each entry's local header. Every entry's data range is checked to lie inside the archive.
absl::StatusOr<std::vector<ZipEntry>> ParseZipDirectory(const uint8_t* data, size_t size,
                                                        const std::string& file);

// One tensor of a pickled state dict, as _rebuild_tensor_v2 describes it.
struct TorchTensorRef {
  std::string name;             // state-dict key
  std::string storage_key;      // <archive>/data/<storage_key>
  kernels::DType dtype = kernels::DType::kF32;
  int64_t storage_numel = 0;    // elements in the storage
  int64_t storage_offset = 0;   // elements
  std::vector<int64_t> shape;   // contiguous (checked against the strides)
};

// Runs the pickle VM over data.pkl bytes. The result must be a dict (or OrderedDict) from
// string to tensor; tensors must be contiguous and lie inside their storage.
absl::StatusOr<std::vector<TorchTensorRef>> ParseTorchPickle(const uint8_t* data, size_t size,
                                                             const std::string& file);

// Parses a whole pytorch_model.bin image: zip directory, <archive>/data.pkl, and each
// tensor's storage entry. The returned tensors' `data` point into `data`.
absl::StatusOr<std::vector<TensorInfo>> ParseTorchCheckpoint(const uint8_t* data, size_t size,
                                                             const std::string& file);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_LOADER_TORCH_PICKLE_H_
