// engine/serving/engine.h — the engine as the transport sees it: load models, take requests,
// deliver results through per-request channels (engine/README.md, One request end to end).
//
// One worker thread owns the backend, the models and the KV caches and runs the step loop;
// Submit() and Cancel() only touch a bounded request queue and an atomic flag, so the
// transport never waits on the step loop (llama.cpp's server_queue / server_response split).
#ifndef SPECMOE_ENGINE_SERVING_ENGINE_H_
#define SPECMOE_ENGINE_SERVING_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/serving/request.h"
#include "engine/serving/request_validator.h"
#include "engine/text/tokenizer.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// What one scheduler step did (engine/README.md, The step): for the observer, the metrics and the
// tests.
struct StepReport {
  int decoding = 0;        // requests that verified a tree (or decoded one token)
  int prefilling = 0;      // requests that prefilled a prompt chunk
  int prefill_tokens = 0;
  int tree_tokens = 0;     // target tokens of roots and trees
  int preempted = 0;       // requests preempted by this step
  int admitted = 0;        // requests admitted by this step (0 whenever preempted > 0)
  double draft_seconds = 0;   // the draft's catch-up and level forwards
  double target_seconds = 0;  // the one target forward
  double verify_seconds = 0;  // verification, K/V compaction and emission
};

// Called on the worker thread after events it times; must not block (the server's metrics
// implement it with atomic histogram updates).
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  // A request left the queue for the running set after `seconds` of waiting.
  virtual void OnQueueWait(double seconds) = 0;
  // One step of the whole running set.
  virtual void OnStep(const StepReport& step) = 0;
};

// Live gauges: the worker thread stores them after every change, any thread loads them
// (relaxed atomics, so reading never waits on the step loop).
struct EngineStats {
  std::atomic<int> queue_depth{0};      // requests waiting to be admitted (not preempted ones)
  std::atomic<int> running{0};          // requests generating
  std::atomic<int> preempted{0};        // preempted requests waiting to resume
  std::atomic<int64_t> preemptions_total{0};  // preemptions since start
  std::atomic<int> kv_blocks_used{0};   // target KV cache blocks (the draft's mirror them)
  std::atomic<int> kv_blocks_free{0};  // free, or cached by the prefix cache and unheld
  // Prefix cache (issue 19): prompt tokens looked up (at first admission) and supplied by the
  // cache (the sums of prompt_tokens and cached_prompt_tokens over admitted requests while it
  // is on), and cached blocks nobody holds.
  std::atomic<int64_t> prefix_cache_queries_total{0};
  std::atomic<int64_t> prefix_cache_hits_total{0};
  std::atomic<int> prefix_cache_blocks{0};
};

struct EngineOptions {
  std::string target_dir;             // Hugging Face model folder (required)
  std::string draft_dir;              // optional: enables speculation
  // "cpu", "cuda", or "auto": cuda when this build has the CUDA backend and a device is
  // visible, else cpu (ModelSet::device says which was taken).
  std::string device = "cpu";
  int threads = 0;                    // 0: all cores
  std::vector<int> expansion = {1, 1, 3, 1, 1, 1, 1, 1};  // default tree
  int max_queue = 64;                 // waiting requests before RESOURCE_EXHAUSTED
  int max_batch = 16;                 // requests running at once
  int max_context = 0;                // 0: the target's max_position_embeddings
  // Tokens in one target forward: every decoding request's root + tree first, then prompt
  // chunks of prefilling requests (chunked prefill). Also the largest prefill chunk.
  int max_step_tokens = 256;
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
  // Automatic prefix caching of full blocks of committed tokens in both caches (issue 19);
  // bit-exact, so on by default.
  bool prefix_cache = true;
  std::shared_ptr<EngineObserver> observer;  // optional
  RequestLimits limits;               // checked by Submit (engine/serving/request_validator.h)
};

// A submitted request: cancel it from any thread.
class RequestHandle {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

// Contract: Create() loads and checks both models (errors name file and tensor) and starts
// the worker. Submit/Cancel/accessors are thread-safe. Destruction stops the worker after
// finishing each queued request with CANCELLED.
class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  virtual ~Engine() = default;

  // Checks and completes the request (PrepareRequest: the one validator; a text prompt is
  // tokenized here, on the caller's thread, within the byte and token limits) and queues it;
  // the sink receives its events on the worker thread. Errors: INVALID_ARGUMENT naming the
  // field, RESOURCE_EXHAUSTED (queue full), UNAVAILABLE (shutting down). A request that
  // later fails on the models' data (a NaN logit) ends with an INTERNAL event.
  virtual absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationRequest request,
                                                                EventSink sink) = 0;
  // The Tokenize RPC: `text` within the same byte and token limits as a prompt.
  virtual absl::StatusOr<std::vector<int32_t>> Tokenize(std::string_view text,
                                                        bool add_bos) const = 0;

  virtual const Tokenizer& tokenizer() const = 0;
  virtual int vocab_size() const = 0;
  virtual int max_context() const = 0;
  virtual const std::vector<int>& default_expansion() const = 0;
  virtual std::string target_name() const = 0;
  virtual std::string draft_name() const = 0;   // empty without a draft
  virtual std::string device() const = 0;
  virtual std::string dtype() const = 0;        // of the target's weights
  // Live gauges; valid for the engine's lifetime.
  virtual const EngineStats& stats() const = 0;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_ENGINE_H_
