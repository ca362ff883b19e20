// tests/fuzz_regression_test.cc — replays every committed fuzz input (seeds and crashes
// found by deploy/fuzz.sh, tests/fuzz_corpus/<target>/**) through the same parse functions
// as tests/fuzz_*.cc, built normally (gcc, no sanitizer): each must return OK or an error
// whose message names the input, and never crash. Runs in the cpu test label.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/loader/model_config.h"
#include "engine/loader/safetensors.h"
#include "engine/loader/torch_pickle.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace specmoe::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const fs::path kCorpus = fs::path(SPECMOE_FIXTURES).parent_path() / "fuzz_corpus";

// Every regular file under tests/fuzz_corpus/<target>/, crashes/ included.
std::vector<fs::path> Inputs(const std::string& target) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(kCorpus / target)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  return files;
}

std::string Read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Reads every byte of the tensors a parser returned (they must lie inside the input).
uint8_t Touch(const std::vector<TensorInfo>& tensors, const std::string& input) {
  uint8_t sum = 0;
  const auto* begin = reinterpret_cast<const uint8_t*>(input.data());
  for (const TensorInfo& t : tensors) {
    const auto* bytes = static_cast<const uint8_t*>(t.data);
    EXPECT_GE(bytes, begin);
    EXPECT_LE(bytes + t.bytes, begin + input.size());
    for (size_t i = 0; i < t.bytes; ++i) sum ^= bytes[i];
  }
  return sum;
}

TEST(FuzzRegressionTest, Config) {
  const auto inputs = Inputs("fuzz_config");
  EXPECT_GE(inputs.size(), 3u);
  for (const fs::path& path : inputs) {
    SCOPED_TRACE(path.string());
    const auto config = ParseModelConfig(Read(path), path.string());
    if (!config.ok()) {
      EXPECT_THAT(config.status().message(), HasSubstr(path.string()));
    }
  }
}

TEST(FuzzRegressionTest, Safetensors) {
  const auto inputs = Inputs("fuzz_safetensors");
  EXPECT_GE(inputs.size(), 2u);
  for (const fs::path& path : inputs) {
    SCOPED_TRACE(path.string());
    const std::string bytes = Read(path);
    const auto tensors = ParseSafetensors(reinterpret_cast<const uint8_t*>(bytes.data()),
                                          bytes.size(), path.string());
    if (tensors.ok()) {
      Touch(*tensors, bytes);
    } else {
      EXPECT_THAT(tensors.status().message(), HasSubstr(path.string()));
    }
  }
}

TEST(FuzzRegressionTest, Pickle) {
  const auto inputs = Inputs("fuzz_pickle");
  EXPECT_GE(inputs.size(), 2u);
  for (const fs::path& path : inputs) {
    SCOPED_TRACE(path.string());
    const std::string bytes = Read(path);
    const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
    const auto refs = ParseTorchPickle(data, bytes.size(), path.string());
    if (!refs.ok()) {
      EXPECT_THAT(refs.status().message(), HasSubstr(path.string()));
    }
    const auto tensors = ParseTorchCheckpoint(data, bytes.size(), path.string());
    if (tensors.ok()) {
      Touch(*tensors, bytes);
    } else {
      EXPECT_THAT(tensors.status().message(), HasSubstr(path.string()));
    }
  }
}

}  // namespace
}  // namespace specmoe::engine
