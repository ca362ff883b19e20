// tests/golden_util.h — what the golden-logit tests share (model_golden_test on the CPU,
// cuda_model_test on the GPU): the goldens of tests/fixtures/golden (made by
// tests/fixtures/make_fixtures.py from transformers and a PyTorch MoE reference), a model
// folder loaded onto a backend with a one-sequence KV cache, a causal forward of a token
// range, and the per-position tolerance check of tests/README.md, Conventions.
#ifndef SPECMOE_TESTS_GOLDEN_UTIL_H_
#define SPECMOE_TESTS_GOLDEN_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "engine/loader/model_config.h"
#include "engine/loader/weights.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"

namespace specmoe::engine {

// The fixtures folder: SPECMOE_FIXTURES in the environment (deploy/gpu-check.sh runs the
// binaries in another checkout) or the build's.
inline std::string FixturesDir() {
  const char* env = std::getenv("SPECMOE_FIXTURES");
  return env != nullptr ? env : SPECMOE_FIXTURES;
}

struct Golden {
  nlohmann::json meta;
  std::vector<float> logits;  // [T, vocab]
  int vocab = 0;
};

inline Golden ReadGolden(const std::string& name) {
  Golden g;
  const std::string dir = FixturesDir() + "/golden/";
  std::ifstream meta(dir + name + ".json");
  EXPECT_TRUE(meta.good()) << name;
  g.meta = nlohmann::json::parse(meta);
  const auto shape = g.meta["logits_shape"].get<std::vector<int>>();
  g.vocab = shape[1];
  g.logits.resize(static_cast<size_t>(shape[0]) * shape[1]);
  std::ifstream raw(dir + g.meta["logits_file"].get<std::string>(), std::ios::binary);
  raw.read(reinterpret_cast<char*>(g.logits.data()), g.logits.size() * sizeof(float));
  EXPECT_TRUE(raw.good()) << name;
  return g;
}

// A model folder on `backend` (owned) with an f32 KV cache of `slots` tokens for one
// sequence and activations for max(slots, 64) tokens per forward.
struct LoadedModel {
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<WeightStore> store;
  std::unique_ptr<Model> model;
  std::unique_ptr<KvCache> cache;
  SequenceBlocks blocks;
};

inline std::unique_ptr<LoadedModel> LoadModelOn(const std::string& dir,
                                                std::unique_ptr<kernels::Backend> backend,
                                                int slots) {
  auto l = std::make_unique<LoadedModel>();
  l->backend = std::move(backend);
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::Open(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  if (!config.ok() || !store.ok() || l->backend == nullptr) return nullptr;
  l->store = *std::move(store);
  absl::StatusOr<ModelWeights> weights = BindModelWeights(*config, *l->store);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Create(*config, *weights, l->backend.get(), std::max(slots, 64));
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return nullptr;
  l->model = *std::move(model);
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(
      l->backend.get(), config->num_layers, l->model->kv_row(), 16, (slots + 15) / 16);
  EXPECT_TRUE(cache.ok());
  if (!cache.ok()) return nullptr;
  l->cache = *std::move(cache);
  EXPECT_TRUE(l->cache->Reserve(l->blocks, slots).ok());
  return l;
}

// Runs tokens[from, to) at their positions (causal) and returns their logits [to-from, vocab].
inline std::vector<float> ForwardRange(LoadedModel& l, const std::vector<int32_t>& tokens,
                                       int from, int to) {
  ForwardBatch batch;
  for (int pos = from; pos < to; ++pos) {
    batch.Add(tokens[pos], pos, l.cache->PhysicalSlot(l.blocks, pos), 0, pos + 1, 0);
    batch.logit_rows.push_back(pos - from);
  }
  batch.SetBlockTables({&l.blocks});
  std::vector<float> logits(static_cast<size_t>(to - from) * l.model->config().vocab_size);
  l.model->Forward(batch, *l.cache, logits.data());
  return logits;
}

// max|got - want| <= tol * max|want| over one row of `vocab` logits.
inline void ExpectClose(const float* got, const float* want, int vocab, double tol,
                        const std::string& where) {
  double max_ref = 0, max_err = 0;
  for (int i = 0; i < vocab; ++i) {
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
    max_err = std::max(max_err, std::fabs(static_cast<double>(got[i]) - want[i]));
  }
  EXPECT_LE(max_err, tol * max_ref) << where << ": max|out - ref| " << max_err
                                    << " vs max|ref| " << max_ref;
}

}  // namespace specmoe::engine

#endif  // SPECMOE_TESTS_GOLDEN_UTIL_H_
