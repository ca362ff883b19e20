// engine/loader/memory_check.h — refuse at start-up a model whose weights cannot fit in RAM
// (engine/README.md, Models: "refuse clearly when a model cannot fit"). Tested by
// tests/weights_test.cc.
#ifndef SPECMOE_ENGINE_LOADER_MEMORY_CHECK_H_
#define SPECMOE_ENGINE_LOADER_MEMORY_CHECK_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"

namespace specmoe::engine {

// Physical memory of this machine in bytes (sysconf _SC_PHYS_PAGES * _SC_PAGESIZE).
size_t PhysicalMemoryBytes();

// OK when `weight_bytes` <= `physical_bytes`; otherwise ResourceExhausted saying how many GB
// `what` (e.g. "target /models/llama-7b") needs and how many the machine has.
absl::Status CheckFitsInMemory(size_t weight_bytes, size_t physical_bytes,
                               const std::string& what);

// The same against PhysicalMemoryBytes().
absl::Status CheckFitsInMemory(size_t weight_bytes, const std::string& what);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_LOADER_MEMORY_CHECK_H_
