// tests/chunked_prefill_test.cc — the whole CPU forward is batch-invariant (kernels/README.md): a
// 320-token prompt run whole or in chunks of 1, 7, 64 or 256 tokens gives bit-identical logits at
// every position and bit-identical K/V bytes in every layer, for f32, f16 and bf16 weights,
// GQA and the MoE draft architecture, with an f32 and with an f16 KV cache. The f16 KV
// cache's logits stay within a tolerance of the f32 cache's. (The fixtures' configs say 256
// positions; the model itself has no position limit, RoPE is computed per position, so
// 320 tokens make chunks of 256 a real split.) Label: cpu.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "engine/loader/model_config.h"
#include "engine/loader/weights.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace specmoe::engine {
namespace {

constexpr int kPromptTokens = 320;

struct Result {
  std::vector<float> logits;  // [kPromptTokens, vocab]
  std::vector<uint8_t> kv;    // every layer's K then V rows of slots [0, kPromptTokens)
};

// Runs the prompt through a fresh cache in chunks of `chunk` tokens (causal, every row's
// logits wanted), the cache holding kv_dtype.
Result RunChunked(const std::string& dir, const std::vector<int32_t>& prompt, int chunk,
                  kernels::DType kv_dtype) {
  Result result;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::Open(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  if (!config.ok() || !store.ok()) return result;
  absl::StatusOr<ModelWeights> weights = BindModelWeights(*config, **store);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return result;
  std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend(2);
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Create(*config, *weights, backend.get(), kPromptTokens);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return result;
  constexpr int kBlock = 16;
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(
      backend.get(), config->num_layers, (*model)->kv_row(), kBlock, kPromptTokens / kBlock,
      kv_dtype);
  EXPECT_TRUE(cache.ok()) << cache.status();
  if (!cache.ok()) return result;
  SequenceBlocks blocks;
  EXPECT_TRUE((*cache)->Reserve(blocks, kPromptTokens).ok());

  const int vocab = config->vocab_size;
  result.logits.resize(static_cast<size_t>(kPromptTokens) * vocab);
  for (int from = 0; from < kPromptTokens; from += chunk) {
    const int to = std::min(kPromptTokens, from + chunk);
    ForwardBatch batch;
    for (int pos = from; pos < to; ++pos) {
      batch.Add(prompt[pos], pos, (*cache)->PhysicalSlot(blocks, pos), 0, pos + 1, 0);
      batch.logit_rows.push_back(pos - from);
    }
    batch.SetBlockTables({&blocks});
    (*model)->Forward(batch, **cache, result.logits.data() + static_cast<size_t>(from) * vocab);
  }
  const size_t row_bytes = (*cache)->row_bytes();
  for (int l = 0; l < config->num_layers; ++l) {
    for (void* pool : {(*cache)->k(l), (*cache)->v(l)}) {
      for (int pos = 0; pos < kPromptTokens; ++pos) {
        const uint8_t* src = static_cast<const uint8_t*>(pool) +
                             static_cast<size_t>((*cache)->PhysicalSlot(blocks, pos)) * row_bytes;
        result.kv.insert(result.kv.end(), src, src + row_bytes);
      }
    }
  }
  (*cache)->Release(blocks);
  return result;
}

std::vector<int32_t> RandomPrompt() {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(3, 4095);
  std::vector<int32_t> prompt(kPromptTokens);
  for (int32_t& t : prompt) t = token(rng);
  return prompt;
}

std::string ModelDir(const std::string& name) {
  return std::string(SPECMOE_FIXTURES) + "/models/" + name;
}

class ChunkedPrefillTest
    : public ::testing::TestWithParam<std::tuple<std::string, kernels::DType>> {};

TEST_P(ChunkedPrefillTest, EveryChunkingGivesTheSameBits) {
  const std::string dir = ModelDir(std::get<0>(GetParam()));
  const kernels::DType kv_dtype = std::get<1>(GetParam());
  const std::vector<int32_t> prompt = RandomPrompt();

  const Result whole = RunChunked(dir, prompt, kPromptTokens, kv_dtype);
  ASSERT_FALSE(whole.logits.empty());
  ASSERT_FALSE(whole.kv.empty());
  for (int chunk : {1, 7, 64, 256}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    const Result r = RunChunked(dir, prompt, chunk, kv_dtype);
    ASSERT_EQ(r.logits.size(), whole.logits.size());
    ASSERT_EQ(r.kv.size(), whole.kv.size());
    const size_t vocab = whole.logits.size() / kPromptTokens;
    for (int pos = 0; pos < kPromptTokens; ++pos) {
      ASSERT_EQ(std::memcmp(r.logits.data() + pos * vocab, whole.logits.data() + pos * vocab,
                            vocab * sizeof(float)),
                0)
          << "logits of position " << pos;
    }
    EXPECT_EQ(std::memcmp(r.kv.data(), whole.kv.data(), r.kv.size()), 0) << "K/V bytes";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, ChunkedPrefillTest,
    ::testing::Combine(::testing::Values("llama_tiny", "llama_gqa", "llama_f16", "llama_bf16",
                                         "moe_tiny"),
                       ::testing::Values(kernels::DType::kF32, kernels::DType::kF16)));

class F16KvCacheTest : public ::testing::TestWithParam<std::string> {};

// The f16 cache holds half the bytes of the f32 one and changes the logits only by the
// rounding of K and V: every position's logits within 2e-2 * (1 + |f32 logit|), the largest
// deviation over the prompt below 1e-1, and at least one logit not bit-equal (the f16 cache
// is really in use).
TEST_P(F16KvCacheTest, LogitsWithinToleranceOfTheF32Cache) {
  const std::string dir = ModelDir(GetParam());
  const std::vector<int32_t> prompt = RandomPrompt();
  const Result f32 = RunChunked(dir, prompt, 64, kernels::DType::kF32);
  const Result f16 = RunChunked(dir, prompt, 64, kernels::DType::kF16);
  ASSERT_FALSE(f32.logits.empty());
  ASSERT_EQ(f16.logits.size(), f32.logits.size());
  EXPECT_EQ(f16.kv.size() * 2, f32.kv.size());
  double worst = 0.0;
  size_t differ = 0;
  for (size_t i = 0; i < f32.logits.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(f16.logits[i]) - f32.logits[i]);
    ASSERT_LE(diff, 2e-2 * (1.0 + std::fabs(f32.logits[i]))) << "logit " << i;
    worst = std::max(worst, diff);
    differ += f16.logits[i] != f32.logits[i];
  }
  EXPECT_LT(worst, 1e-1);
  EXPECT_GT(differ, 0u);
}

INSTANTIATE_TEST_SUITE_P(Models, F16KvCacheTest,
                         ::testing::Values("llama_tiny", "llama_gqa", "moe_tiny"));

}  // namespace
}  // namespace specmoe::engine
