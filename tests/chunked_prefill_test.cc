// tests/chunked_prefill_test.cc — the whole CPU forward is batch-invariant (DESIGN §5): a
// 256-token prompt run in chunks of 1, 7, 64 or 256 tokens gives bit-identical logits at
// every position and bit-identical K/V bytes in every layer, for f32, f16 and bf16 weights,
// GQA and the MoE draft architecture. Label: cpu.
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/weights.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace specmoe::engine {
namespace {

constexpr int kPromptTokens = 256;

struct Result {
  std::vector<float> logits;  // [kPromptTokens, vocab]
  std::vector<float> kv;      // every layer's K then V rows of slots [0, kPromptTokens)
};

// Runs the prompt through a fresh cache in chunks of `chunk` tokens (causal, every row's
// logits wanted).
Result RunChunked(const std::string& dir, const std::vector<int32_t>& prompt, int chunk) {
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
      backend.get(), config->num_layers, (*model)->kv_row(), kBlock, kPromptTokens / kBlock);
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
  const int row = (*model)->kv_row();
  for (int l = 0; l < config->num_layers; ++l) {
    for (float* pool : {(*cache)->k(l), (*cache)->v(l)}) {
      for (int pos = 0; pos < kPromptTokens; ++pos) {
        const float* src = pool + static_cast<size_t>((*cache)->PhysicalSlot(blocks, pos)) * row;
        result.kv.insert(result.kv.end(), src, src + row);
      }
    }
  }
  (*cache)->Release(blocks);
  return result;
}

class ChunkedPrefillTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ChunkedPrefillTest, EveryChunkingGivesTheSameBits) {
  const std::string dir = std::string(SPECMOE_FIXTURES) + "/models/" + GetParam();
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(3, 4095);
  std::vector<int32_t> prompt(kPromptTokens);
  for (int32_t& t : prompt) t = token(rng);

  const Result whole = RunChunked(dir, prompt, kPromptTokens);
  ASSERT_FALSE(whole.logits.empty());
  ASSERT_FALSE(whole.kv.empty());
  for (int chunk : {1, 7, 64}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    const Result r = RunChunked(dir, prompt, chunk);
    ASSERT_EQ(r.logits.size(), whole.logits.size());
    ASSERT_EQ(r.kv.size(), whole.kv.size());
    const size_t vocab = whole.logits.size() / kPromptTokens;
    for (int pos = 0; pos < kPromptTokens; ++pos) {
      ASSERT_EQ(std::memcmp(r.logits.data() + pos * vocab, whole.logits.data() + pos * vocab,
                            vocab * sizeof(float)),
                0)
          << "logits of position " << pos;
    }
    EXPECT_EQ(std::memcmp(r.kv.data(), whole.kv.data(), r.kv.size() * sizeof(float)), 0)
        << "K/V bytes";
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ChunkedPrefillTest,
                         ::testing::Values("llama_tiny", "llama_gqa", "llama_f16", "llama_bf16",
                                           "moe_tiny"));

}  // namespace
}  // namespace specmoe::engine
