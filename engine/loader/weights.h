// engine/loader/weights.h — model weights as the checkpoint files store them, bound to a config.
//
// WeightStore opens a Hugging Face model folder's weights by mmap: model.safetensors,
// sharded model-0000i-of-0000n.safetensors with model.safetensors.index.json, or PyTorch
// pytorch_model.bin (zip archive: a pickle of the state dict plus raw storages, read natively)
// and its sharded index variant. F32, F16 and BF16 stay in their stored dtype.
// BindModelWeights checks every tensor's name, shape and dtype against the config
// (missing, unexpected, wrong shape, unsupported dtype) and names file and tensor in errors;
// `rotary_emb.inv_freq` buffers and the MoE gate's `weight_noise` are accepted and ignored.
// Tested by tests/weights_test.cc; the readers are fuzzed by tests/fuzz_*.cc.
#ifndef SPECMOE_ENGINE_LOADER_WEIGHTS_H_
#define SPECMOE_ENGINE_LOADER_WEIGHTS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/loader/model_config.h"
#include "kernels/backend.h"

namespace specmoe::engine {

// One tensor inside a mapped file.
struct TensorInfo {
  std::string name;
  std::string file;            // path of the file holding it (for error messages)
  kernels::DType dtype = kernels::DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // points into the mmap
  size_t bytes = 0;
};

// The tensors of one model folder. Owns the mmaps; TensorInfo::data stays valid for the
// lifetime of the store. Immutable after Open(), so safe to read from any thread.
class WeightStore {
 public:
  // Opens the weights of `model_dir` (see the file comment for the formats tried, in order:
  // model.safetensors.index.json, model.safetensors, pytorch_model.bin.index.json,
  // pytorch_model.bin).
  static absl::StatusOr<std::unique_ptr<WeightStore>> Open(const std::string& model_dir);

  ~WeightStore();
  WeightStore(const WeightStore&) = delete;
  WeightStore& operator=(const WeightStore&) = delete;

  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  // Total bytes of all tensors.
  size_t total_bytes() const;

  // Tells the OS that the mapped bytes [data, data + bytes) are not needed for now
  // (madvise MADV_DONTNEED on the whole pages inside the range): their resident pages are
  // dropped and, if read again, re-read from the file, so the data stays valid. Ranges
  // outside this store's mappings (e.g. converted copies) are ignored. Used after a backend
  // copied a weight into its own layout, to keep peak memory near one copy of the model.
  void DropPages(const void* data, size_t bytes) const;

 private:
  WeightStore() = default;
  struct Mapping;
  std::vector<std::unique_ptr<Mapping>> mappings_;
  std::map<std::string, TensorInfo> tensors_;
};

// Weights of one decoder layer. For llama the FFN is `mlp`; for llama_moe it is the gate
// (gate_w1 [E, hidden], gate_w2 [E, E]) and `experts`.
struct LayerWeights {
  kernels::Weight input_norm;     // [1, hidden]
  kernels::Weight q_proj;         // [n_heads * head_dim, hidden]
  kernels::Weight k_proj;         // [n_kv_heads * head_dim, hidden]
  kernels::Weight v_proj;         // [n_kv_heads * head_dim, hidden]
  kernels::Weight o_proj;         // [hidden, n_heads * head_dim]
  kernels::Weight post_norm;      // [1, hidden]
  kernels::ExpertWeights mlp;     // llama: gate/up [intermediate, hidden], down [hidden, intermediate]
  kernels::Weight gate_w1;        // llama_moe: [E, hidden]
  kernels::Weight gate_w2;        // llama_moe: [E, E]
  std::vector<kernels::ExpertWeights> experts;  // llama_moe: E experts
};

struct ModelWeights {
  kernels::Weight embed_tokens;   // [vocab, hidden]
  std::vector<LayerWeights> layers;
  kernels::Weight norm;           // [1, hidden]
  kernels::Weight lm_head;        // [vocab, hidden] (embed_tokens when tied)
  // Dtype of the linear layers (all must agree, else an error names the odd tensor).
  kernels::DType dtype = kernels::DType::kF32;
};

// Checks the store against `config` and returns host views of every tensor.
absl::StatusOr<ModelWeights> BindModelWeights(const ModelConfig& config, const WeightStore& store);

// Calls fn(weight) for every tensor view of `weights` that is set (embedding, norms, every
// layer's matrices and experts, lm_head), in that order. A tied lm_head is visited too.
void ForEachWeight(ModelWeights& weights, const std::function<void(kernels::Weight&)>& fn);
// The same walk, telling fn whether the view is a linear layer's weight (only ever a matmul
// operand: q/k/v/o, gate/up/down, the MoE gate's w1/w2 and experts, lm_head) or not (the
// embedding table and the norms).
void ForEachWeight(ModelWeights& weights,
                   const std::function<void(kernels::Weight&, bool linear)>& fn);

// Serves `weights` in `dtype` (--dtype): every view stored in another dtype is converted
// (f16 / bf16 rounded to nearest even, widening exact) into memory appended to `owned`, and
// pointed there; ModelWeights::dtype becomes `dtype`. Cost: one pass over the converted
// weights and their bytes in host memory (the mapped files stay as they are).
void ConvertWeights(kernels::DType dtype, ModelWeights& weights,
                    std::vector<std::unique_ptr<uint8_t[]>>& owned);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_LOADER_WEIGHTS_H_
