// engine/loader/safetensors.h — reader for the safetensors format (huggingface/safetensors).
//
// A file is: 8 bytes little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F16", "shape": [r, c], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {...}}, then the byte buffer the offsets index (relative to its start).
// Every malformed input is an error naming the file (and tensor), never a crash: offsets
// are checked against the buffer, against each other (no overlap) and against
// numel * dtype size. Dtypes F32, F16 and BF16 are accepted, any other is named as
// unsupported. Tested by tests/weights_test.cc; fuzzed by tests/fuzz_safetensors.cc.
#ifndef SPECMOE_ENGINE_LOADER_SAFETENSORS_H_
#define SPECMOE_ENGINE_LOADER_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/loader/weights.h"

namespace specmoe::engine {

// Largest JSON header accepted (the safetensors library itself refuses above 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100u << 20;

// Parses the safetensors image data[0, size). The returned tensors' `data` point into
// `data`, which must outlive them; `file` names the file in errors and in TensorInfo::file.
// Cost: one JSON parse of the header; no tensor bytes are read.
absl::StatusOr<std::vector<TensorInfo>> ParseSafetensors(const uint8_t* data, size_t size,
                                                         const std::string& file);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_LOADER_SAFETENSORS_H_
