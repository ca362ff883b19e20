// engine/serving/engine_options.h — how an engine is built: the model folders, the device, the
// default expansion, the queue, batch, step and KV budgets, the tree policy and the request
// limits (the server fills it from its flags, server/options.h).
#ifndef SPECMOE_ENGINE_SERVING_ENGINE_OPTIONS_H_
#define SPECMOE_ENGINE_SERVING_ENGINE_OPTIONS_H_

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/serving/request_validator.h"
#include "engine/serving/step_report.h"
#include "engine/spec/params.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// The defaults of EngineOptions, which the server's flags take too (server/options.h).
// The default expansion: SpecInfer's, 20 tree nodes under the root.
inline constexpr std::array<int, 8> kDefaultExpansion = {1, 1, 3, 1, 1, 1, 1, 1};
inline constexpr int kDefaultMaxQueue = 64;
inline constexpr int kDefaultMaxBatch = 16;
inline constexpr int kDefaultMaxStepTokens = 256;

struct EngineOptions {
  std::string target_dir;  // Hugging Face model folder (required)
  std::string draft_dir;   // optional: enables speculation
  // "cpu", "cuda", or "auto": cuda when this build has the CUDA backend and a device is
  // visible, else cpu (ModelSet::device says which was taken). The library's default is the
  // CPU, where every kernel is batch-invariant (the tests rely on it); the server's --device
  // defaults to auto.
  std::string device = "cpu";
  int threads = 0;  // 0: all cores
  // The default expansion (a request's own replaces it).
  std::vector<int> expansion{kDefaultExpansion.begin(), kDefaultExpansion.end()};
  int max_queue = kDefaultMaxQueue;  // waiting requests before RESOURCE_EXHAUSTED
  int max_batch = kDefaultMaxBatch;  // requests running at once
  int max_context = 0;               // 0: the target's max_position_embeddings
  // Tokens in one target forward: every decoding request's root + tree first, then prompt
  // chunks of prefilling requests (chunked prefill). Also the largest prefill chunk.
  int max_step_tokens = kDefaultMaxStepTokens;
  // KV budget in tokens per model (both caches get this many slots; the memory counted is
  // both). 0: kv_cache_fraction of the memory left after the weights, or, when that is 0
  // too, room for max_batch sequences of the full context.
  int kv_cache_tokens = 0;
  double kv_cache_fraction = 0;
  // kDynamic: the load-adaptive tree policy (engine/README.md, Tree policy); kStatic: every
  // request's fixed expansion.
  enum class TreePolicy { kStatic, kDynamic };
  TreePolicy tree_policy = TreePolicy::kDynamic;
  // How sampled requests choose tokens (engine/spec/params.h): kCoupled (the default) gives
  // the same text for a seed under any load, tree or draft; kRejection has the highest
  // acceptance.
  SampledVerification sampled_verification = SampledVerification::kCoupled;
  // KV cache element type of both models: kF32 (bit-exact tests) or kF16 (half the bytes).
  // Unset: kF32 on the CPU, kF16 on a GPU (where 7B's f32 KV would cost 1 MiB per token).
  std::optional<kernels::DType> kv_dtype;
  // Weight type the models are served in, converted at load (round to nearest even) when it
  // differs from the stored one. Unset: as stored.
  std::optional<kernels::DType> weight_dtype;
  // Automatic prefix caching of full blocks of committed tokens in both caches
  // (engine/README.md, Prefix cache); bit-exact, so on by default.
  bool prefix_cache = true;
  std::shared_ptr<EngineObserver> observer;  // optional
  RequestLimits limits;  // checked by Submit (engine/serving/request_validator.h)
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_ENGINE_OPTIONS_H_
