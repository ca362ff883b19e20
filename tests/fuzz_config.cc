// tests/fuzz_config.cc — libFuzzer target for ParseModelConfig (engine/loader/model_config.h).
// Any input must give a config or an error, never a crash, hang or sanitizer report.
// Built only with -DSPECMOE_FUZZ=ON (clang); run by deploy/fuzz.sh with seeds from
// tests/fuzz_corpus/fuzz_config/; committed crash inputs are replayed by fuzz_regression_test.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/loader/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto config = specmoe::engine::ParseModelConfig(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
  if (config.ok() && config->architecture == specmoe::engine::Architecture::kLlamaMoe) {
    // A parsed MoE config promises size_experts is [num_layers][num_experts].
    if (config->size_experts.size() != static_cast<size_t>(config->num_layers)) __builtin_trap();
    for (const auto& row : config->size_experts) {
      if (row.size() != static_cast<size_t>(config->num_experts)) __builtin_trap();
    }
  }
  return 0;
}
