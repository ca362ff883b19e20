// tests/model_golden_test.cc — the forward passes against references nobody here wrote.
//
// Goldens (tests/fixtures/golden, made by tests/fixtures/make_fixtures.py): full-sequence
// logits and 16 greedy tokens from Hugging Face transformers' LlamaForCausalLM (llama_*,
// GQA and rope_theta 500000 among them; the one-expert MoE through the identity
// MoE(1 expert) == LLaMA with down_proj * score_scale_factor) and from a PyTorch reference
// of engine/README.md, LLaMA-MoE (moe_tiny). Checks, per tests/README.md, Conventions:
//  - logits of every prompt position: max|out - ref| <= 1e-4 * max|ref| per position;
//  - decoding one token at a time with the KV cache gives the same logits (same tolerance);
//  - greedy tokens equal the reference's, accepting either token where its top-1/top-2 gap
//    is below epsilon, continuing from the reference's token;
//  - every storage format of the same weights (safetensors, sharded, pytorch_model.bin) gives
//    bit-identical logits.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "engine/loader/model_config.h"
#include "engine/spec/sampler.h"
#include "engine/loader/weights.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"
#include "tests/golden_util.h"

namespace specmoe::engine {
namespace {

const std::string kFixtures = FixturesDir();

// A model folder on the CPU backend with room for `slots` tokens.
std::unique_ptr<LoadedModel> Load(const std::string& dir, int slots) {
  return LoadModelOn(dir, kernels::CreateCpuBackend(2), slots);
}

std::vector<float> Forward(LoadedModel& l, const std::vector<int32_t>& tokens, int from,
                           int to) {
  return ForwardRange(l, tokens, from, to);
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, LogitsDecodeAndGreedyMatchTheReference) {
  const Golden golden = ReadGolden(GetParam());
  const auto prompt = golden.meta["prompt_ids"].get<std::vector<int32_t>>();
  const auto greedy = golden.meta["greedy_ids"].get<std::vector<int32_t>>();
  const auto gaps = golden.meta["greedy_top2_gap"].get<std::vector<double>>();
  const std::string dtype = golden.meta["dtype"].get<std::string>();
  const double tol = 1e-4;
  const double tie_eps = dtype == "f32" ? 1e-4 : 1e-2;
  const int t = static_cast<int>(prompt.size());
  const int v = golden.vocab;

  std::vector<float> first_format_logits;
  for (const std::string& dir : golden.meta["model_dirs"].get<std::vector<std::string>>()) {
    SCOPED_TRACE(dir);
    std::unique_ptr<LoadedModel> l = Load(kFixtures + "/models/" + dir, 64);
    ASSERT_NE(l, nullptr);
    ASSERT_EQ(l->model->config().vocab_size, v);

    // 1. The whole prompt in one pass.
    const std::vector<float> logits = Forward(*l, prompt, 0, t);
    for (int pos = 0; pos < t; ++pos) {
      ExpectClose(&logits[pos * v], &golden.logits[pos * v], v, tol,
                  "prompt position " + std::to_string(pos));
    }
    // 2. The same formats' weights give identical bits.
    if (first_format_logits.empty()) {
      first_format_logits = logits;
    } else {
      EXPECT_EQ(logits, first_format_logits) << "formats disagree";
    }

    // 3. One token at a time with the KV cache, then greedy continuation.
    std::vector<int32_t> seq = prompt;
    std::vector<float> last;
    for (int pos = 0; pos < t; ++pos) {
      last = Forward(*l, seq, pos, pos + 1);
      ExpectClose(last.data(), &golden.logits[pos * v], v, tol,
                  "decode position " + std::to_string(pos));
    }
    for (size_t step = 0; step < greedy.size(); ++step) {
      const int32_t got = Argmax(last.data(), v);
      if (gaps[step] >= tie_eps) {
        EXPECT_EQ(got, greedy[step]) << "greedy step " << step << " (gap " << gaps[step] << ")";
      }
      seq.push_back(greedy[step]);  // continue from the reference's token
      last = Forward(*l, seq, static_cast<int>(seq.size()) - 1, static_cast<int>(seq.size()));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenTest,
                         ::testing::Values("llama_tiny", "llama_gqa", "llama3_tiny", "llama_f16",
                                           "llama_bf16",
                                           "moe_one_expert", "moe_tiny"));

// The prefill path for long prompts (OpenBLAS above 64 rows) against decoding one token at a
// time (the small-batch kernel): the next token's logits agree within tolerance.
TEST(ModelTest, LongPrefillMatchesTokenByTokenDecode) {
  const std::string dir = kFixtures + "/models/llama_gqa";
  std::unique_ptr<LoadedModel> a = Load(dir, 160);
  std::unique_ptr<LoadedModel> b = Load(dir, 160);
  ASSERT_TRUE(a && b);
  std::vector<int32_t> tokens = {1};
  for (int i = 1; i < 150; ++i) tokens.push_back(3 + (i * 373) % 4000);
  const int prefill = 149;

  // a: one 149-token forward through a model sized for it.
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  absl::StatusOr<ModelWeights> weights = BindModelWeights(*config, *a->store);
  ASSERT_TRUE(weights.ok());
  absl::StatusOr<std::unique_ptr<Model>> wide =
      Model::Create(*config, *weights, a->backend.get(), 160);
  ASSERT_TRUE(wide.ok());
  ForwardBatch batch;
  for (int pos = 0; pos < prefill; ++pos) {
    batch.Add(tokens[pos], pos, a->cache->PhysicalSlot(a->blocks, pos), 0, pos + 1, 0);
  }
  batch.SetBlockTables({&a->blocks});
  (*wide)->Forward(batch, *a->cache, nullptr);
  // b: one token at a time.
  for (int pos = 0; pos < prefill; ++pos) Forward(*b, tokens, pos, pos + 1);

  const std::vector<float> la = Forward(*a, tokens, prefill, prefill + 1);
  const std::vector<float> lb = Forward(*b, tokens, prefill, prefill + 1);
  ExpectClose(la.data(), lb.data(), config->vocab_size, 1e-4, "after a 149-token prefill");
}

}  // namespace
}  // namespace specmoe::engine
