// engine/loader/safetensors.cc — see safetensors.h. Format reference: the safetensors README
// ("Format" section) and safetensors/src/tensor.rs (header validation).
#include "engine/loader/safetensors.h"

#include <algorithm>
#include <limits>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace specmoe::engine {
namespace {

using Json = nlohmann::json;

// Reads a non-negative JSON integer that fits in int64; false otherwise.
bool GetNonNegativeInt(const Json& value, int64_t* out) {
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(v);
    return true;
  }
  if (value.is_number_integer()) {
    const int64_t v = value.get<int64_t>();
    if (v < 0) return false;
    *out = v;
    return true;
  }
  return false;
}

absl::Status TensorError(const std::string& file, const std::string& name,
                         absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": corrupt safetensors header: tensor '", name, "' ", what));
}

}  // namespace

absl::StatusOr<std::vector<TensorInfo>> ParseSafetensors(const uint8_t* data, size_t size,
                                                         const std::string& file) {
  if (size < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": truncated safetensors file: ", size, " bytes, need at least 8"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": corrupt safetensors header: length ",
                                                   header_len, " exceeds the 100 MB limit"));
  }
  if (header_len > size - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": truncated safetensors file: header of ", header_len,
                     " bytes but only ", size - 8, " bytes follow the length"));
  }
  const uint8_t* buffer = data + 8 + header_len;
  const uint64_t buffer_size = size - 8 - header_len;

  Json header;
  try {
    header = Json::parse(reinterpret_cast<const char*>(data + 8),
                         reinterpret_cast<const char*>(data + 8 + header_len));
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": corrupt safetensors header: bad JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": corrupt safetensors header: not a JSON object"));
  }

  std::vector<TensorInfo> tensors;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end) per tensor
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    if (!entry.is_object()) return TensorError(file, name, "is not a JSON object");
    const auto dtype_it = entry.find("dtype");
    const auto shape_it = entry.find("shape");
    const auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return TensorError(file, name, "has no string \"dtype\"");
    }
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return TensorError(file, name, "has no array \"shape\"");
    }
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
      return TensorError(file, name, "has no \"data_offsets\" [begin, end]");
    }

    TensorInfo info;
    info.name = name;
    info.file = file;
    const std::string& dtype = dtype_it->get_ref<const std::string&>();
    if (dtype == "F32") {
      info.dtype = kernels::DType::kF32;
    } else if (dtype == "F16") {
      info.dtype = kernels::DType::kF16;
    } else if (dtype == "BF16") {
      info.dtype = kernels::DType::kBF16;
    } else {
      return absl::UnimplementedError(absl::StrCat(file, ": tensor '", name,
                                                   "' has unsupported dtype ", dtype,
                                                   " (supported: F32, F16, BF16)"));
    }
    const uint64_t element_bytes = kernels::DTypeBytes(info.dtype);

    // numel = prod(shape), checked for overflow against the buffer size.
    uint64_t numel = 1;
    for (const Json& dim : *shape_it) {
      int64_t d = 0;
      if (!GetNonNegativeInt(dim, &d)) {
        return TensorError(file, name, "has a shape entry that is not a non-negative integer");
      }
      info.shape.push_back(d);
      if (d != 0 && numel > buffer_size / static_cast<uint64_t>(d)) {
        numel = buffer_size + 1;  // saturate: larger than anything the buffer can hold
      } else {
        numel *= static_cast<uint64_t>(d);
      }
    }
    int64_t begin = 0;
    int64_t end = 0;
    if (!GetNonNegativeInt((*offsets_it)[0], &begin) ||
        !GetNonNegativeInt((*offsets_it)[1], &end) || begin > end) {
      return TensorError(file, name, "has data_offsets that are not 0 <= begin <= end");
    }
    if (static_cast<uint64_t>(end) > buffer_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": truncated safetensors file: tensor '", name, "' ends at byte ", end,
          " of the data buffer but the buffer holds only ", buffer_size, " bytes"));
    }
    const uint64_t bytes = static_cast<uint64_t>(end - begin);
    if (numel > buffer_size || numel * element_bytes != bytes) {
      return TensorError(file, name,
                         absl::StrCat("has shape [", absl::StrJoin(info.shape, ", "), "] of ",
                                      dtype, " but data_offsets span ", bytes, " bytes"));
    }
    info.data = buffer + begin;
    info.bytes = static_cast<size_t>(bytes);
    ranges.emplace_back(begin, end);
    tensors.push_back(std::move(info));
  }

  // No two tensors may share bytes (empty tensors share nothing).
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  uint64_t covered_end = 0;
  size_t covered_by = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    const auto [begin, end] = ranges[order[k]];
    if (begin == end) continue;
    if (begin < covered_end) {
      return TensorError(file, tensors[order[k]].name,
                         absl::StrCat("overlaps tensor '", tensors[covered_by].name, "'"));
    }
    covered_end = end;
    covered_by = order[k];
  }
  return tensors;
}

}  // namespace specmoe::engine
