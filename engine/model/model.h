// engine/model/model.h — the LLaMA and LLaMA-MoE forward passes (engine/README.md, Models),
// composed from the Backend op table.
//
// One Forward() runs any mix of tokens: prefill chunks (causal), single decode tokens and
// token trees (root + nodes with ancestor masks), for one or several sequences, writing each
// token's K/V to the slot it is given and returning logits for the rows asked for.
// Reference: Hugging Face transformers' LlamaForCausalLM and the LLaMA-MoE maths of
// engine/README.md; tested by tests/model_golden_test.cc against goldens from transformers (and
// tests/forward_batch_test.cc for the validation of a batch before the forward).
#ifndef SPECMOE_ENGINE_MODEL_MODEL_H_
#define SPECMOE_ENGINE_MODEL_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/forward_batch.h"
#include "engine/model/kv_cache.h"
#include "engine/loader/model_config.h"
#include "engine/loader/weights.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// Contract: holds views of the weights (owned by the WeightStore kept alongside) and its own
// activation buffers for up to max_tokens tokens per Forward; used only by the worker thread.
// Cost of Forward: one read of every weight it uses plus attention over the visible cache.
class Model {
 public:
  // Makes the weights usable by `backend`: the linear ones through PrepareLinear (the CPU
  // backend repacks them into its panels), the embedding and norms through Upload. With
  // `source` (the store the host views point into), each linear weight's mapped pages are
  // dropped right after it was prepared (WeightStore::DropPages), so that loading peaks
  // near one copy of the model plus one tensor.
  static absl::StatusOr<std::unique_ptr<Model>> Create(const ModelConfig& config,
                                                       const ModelWeights& weights,
                                                       kernels::Backend* backend,
                                                       int max_tokens,
                                                       const WeightStore* source = nullptr);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Runs the tokens of `batch` (at most max_tokens) through the model, writes their K/V into
  // `cache`, and copies the logits of batch.logit_rows to `logits` (host,
  // [logit_rows.size(), vocab]).
  void Forward(const ForwardBatch& batch, KvCache& cache, float* logits);
  // The same forward, leaving the logits where the backend computed them: backend memory,
  // [logit_rows.size(), vocab], valid until the next Forward (the hot path: kernels/README.md, the
  // [tokens, vocab] block is never copied to the host). Null when no logit row is asked.
  // The batch is checked first with Validate (forward_batch.h) against max_tokens and
  // `cache`; a batch that fails is a bug in the scheduler that built it (requests are
  // validated long before), so it aborts with Validate's message (SPECMOE_CHECK) instead of
  // letting a kernel read out of bounds. The description is handed to the backend once
  // (Backend::BeginForward) and read there by every op.
  // On a backend that records (CUDA graphs; Backend::CanRecord) the batch is first padded to
  // a bucket (PadForRecording) and the layers run as one recording per bucket and cache: the
  // first forward of a bucket runs eagerly (it sizes the backend's scratch), the second
  // records, later ones replay. The recordings are keyed by this model's and the cache's
  // recording ids (never reused) and dropped when the model is destroyed.
  const float* Forward(const ForwardBatch& batch, KvCache& cache);

  // Whether forwards may be recorded and replayed where the backend can (default true).
  void set_recording(bool on) { recording_ = on; }

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  int max_tokens() const { return max_tokens_; }
  kernels::Backend* backend() const { return backend_; }
  // K/V floats per token per layer.
  int kv_row() const { return config_.num_kv_heads * config_.head_dim; }
  // Weight bytes one decode token reads (embedding row, layers with active experts, head).
  size_t bytes_per_token() const;
  // The owner id of this model's recordings (kernels::NewRecordingId: no other model of the
  // process has it, even one created at this one's address after it is destroyed).
  uint64_t recording_id() const { return recording_id_; }

 private:
  Model(const ModelConfig& config, const ModelWeights& weights, kernels::Backend* backend,
        int max_tokens);
  // x_ += FFN(xb_) for n rows (xb_: the normalized residual stream).
  void Ffn(const LayerWeights& layer, int n);
  // Every layer and the head of one forward whose description `fwd` was taken.
  void Layers(const kernels::ForwardDesc& fwd, KvCache& cache);
  absl::Status Allocate(size_t bytes, void** out);

  ModelConfig config_;
  ModelWeights weights_;
  kernels::Backend* backend_;
  int max_tokens_;

  // Activation buffers (backend memory).
  float* x_ = nullptr;       // [max_tokens, hidden] residual stream
  float* xb_ = nullptr;      // [max_tokens, hidden] normed input / branch output
  float* q_ = nullptr;       // [max_tokens, n_heads * head_dim]
  float* k_ = nullptr;       // [max_tokens, n_kv_heads * head_dim]
  float* v_ = nullptr;       // [max_tokens, n_kv_heads * head_dim]
  float* att_ = nullptr;     // [max_tokens, n_heads * head_dim]
  float* ffn_ = nullptr;     // [max_tokens, hidden] FFN output
  float* hg_ = nullptr;      // [max_tokens, intermediate] gate branch
  float* hu_ = nullptr;      // [max_tokens, intermediate] up branch
  float* gate_ = nullptr;    // [max_tokens, num_experts] MoE gate activations
  float* router_ = nullptr;  // [max_tokens, num_experts] MoE gate logits
  float* logits_ = nullptr;  // [max_tokens, vocab]
  // MoE routing (backend memory; TopKSoftmax writes it, MoeExperts reads it):
  // idx, weight, pairs [max_tokens * num_selects]; counts [num_experts];
  // offsets [num_experts + 1].
  kernels::MoeRouting routing_;
  std::vector<void*> buffers_;

  bool recording_ = true;
  const uint64_t recording_id_ = kernels::NewRecordingId();
  ForwardBatch padded_;                  // the bucket-padded batch of a recorded forward
  // Per bucket of recorded forwards (keyed by PadForRecording's key, the cache's id mixed
  // in): new, ran once eagerly (the next forward records), or never recorded (its recording
  // failed: an op that cannot be captured, EndRecording).
  enum class BucketState { kNew, kRanEagerly, kNeverRecord };
  std::unordered_map<uint64_t, BucketState> buckets_;
};

// Pads `batch` for a recorded forward of at most `max_tokens` tokens (kernels/README.md): tokens,
// sequences, block-table width and logit rows each to the next power of two (tokens and rows
// at most max_tokens), so that a few recordings serve every step. Padding tokens write no
// K/V (slot -1) and see nothing; padding sequences have no blocks; padding logit rows repeat
// the last real row. The tree mask and tree starts are always present (zeros where unused),
// so a recording's kernels see the same arrays whatever the batch. Returns the key of the
// bucket (with `salt`, the cache's recording id, mixed in).
uint64_t PadForRecording(const ForwardBatch& batch, int max_tokens, uint64_t salt,
                         ForwardBatch* padded);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_MODEL_MODEL_H_
