// engine/loader/mapped_file.h — a read-only memory map of one file (POSIX mmap).
//
// Weights are used in place from the map (engine/README.md, Models: "Load by mmap"), so a 13.5 GB
// checkpoint costs page cache, not a copy. Tested through tests/weights_test.cc.
#ifndef SPECMOE_ENGINE_LOADER_MAPPED_FILE_H_
#define SPECMOE_ENGINE_LOADER_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace specmoe::engine {

// Owns one read-only mapping; unmaps on destruction. Immutable, so safe to read from any
// thread. Opening costs one open/fstat/mmap; pages are read lazily by the kernel.
class MappedFile {
 public:
  // Maps `path` read-only. An empty file maps to data() == nullptr, size() == 0.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_LOADER_MAPPED_FILE_H_
