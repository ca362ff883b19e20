// engine/serving/model_set.h — what the engine serves with: the backend, the tokenizer, the
// target and optional draft models with their weights and paged KV caches, loaded and
// checked at start-up (engine/README.md, Models), and the KV budget (engine/README.md, KV cache and
// preemption).
//
// The KV budget is a number of token slots per cache (`--kv-cache-tokens`, or a fraction of
// the memory left after the weights, or by default room for max_batch sequences of the
// whole context); both caches get that many slots and the memory check counts both.
// Tested by tests/weights_test.cc (load errors) and every engine test.
#ifndef SPECMOE_ENGINE_SERVING_MODEL_SET_H_
#define SPECMOE_ENGINE_SERVING_MODEL_SET_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/loader/model_config.h"
#include "engine/loader/weights.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "engine/serving/engine_options.h"
#include "engine/text/tokenizer.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// Slots past the context that a sequence may hold as tree scratch (the tree's size limit).
inline constexpr int kTreeSlots = 64;
inline constexpr int kKvBlockSize = 16;

// Contract: owns everything it holds; used by the worker thread only after Create (the
// accessors of configs and the tokenizer are safe from any thread: they never change).
struct ModelSet {
  static absl::StatusOr<std::unique_ptr<ModelSet>> Create(const EngineOptions& options);
  ~ModelSet();

  std::unique_ptr<kernels::Backend> backend;
  std::string device;  // "cpu" or "cuda": the backend taken for EngineOptions::device
  // Host copies of weights converted for EngineOptions::weight_dtype (the views point here).
  std::vector<std::unique_ptr<uint8_t[]>> converted_weights;
  std::unique_ptr<Tokenizer> tokenizer;
  ModelConfig target_config;
  ModelConfig draft_config;
  std::unique_ptr<WeightStore> target_store;
  std::unique_ptr<WeightStore> draft_store;
  std::unique_ptr<Model> target;
  std::unique_ptr<Model> draft;  // null without a draft
  std::unique_ptr<KvCache> target_cache;
  std::unique_ptr<KvCache> draft_cache;  // null without a draft
  std::vector<int32_t> eos_ids;
  int max_context = 0;
  // Slots one cache holds: a request needing more can never run.
  int kv_tokens() const { return target_cache->num_blocks() * target_cache->block_size(); }
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_MODEL_SET_H_
