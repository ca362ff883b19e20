// engine/loader/memory_check.cc — see memory_check.h.
#include "engine/loader/memory_check.h"

#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace specmoe::engine {
namespace {

// "13.48" for 13.48e9 bytes (decimal gigabytes, as disk sizes are quoted).
std::string Gigabytes(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f", static_cast<double>(bytes) / 1e9);
  return text;
}

}  // namespace

size_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<size_t>(pages) * static_cast<size_t>(page_size);
}

absl::Status CheckFitsInMemory(size_t weight_bytes, size_t physical_bytes,
                               const std::string& what) {
  if (weight_bytes <= physical_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      what, " does not fit in memory: its weights need ", Gigabytes(weight_bytes),
      " GB but this machine has ", Gigabytes(physical_bytes),
      " GB of physical memory (use a smaller or lower-precision checkpoint, e.g. f16)"));
}

absl::Status CheckFitsInMemory(size_t weight_bytes, const std::string& what) {
  return CheckFitsInMemory(weight_bytes, PhysicalMemoryBytes(), what);
}

}  // namespace specmoe::engine
