// engine/serving/model_set.cc — loading and checking both models, sizing the KV caches.
#include "engine/serving/model_set.h"

#include <algorithm>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/loader/memory_check.h"
#include "engine/spec/token_tree.h"
#include "engine/text/vocab_check.h"
#include "spdlog/spdlog.h"
#if SPECMOE_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/device.h"
#endif

namespace specmoe::engine {
namespace {

struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<WeightStore> store;
  ModelWeights weights;
};

absl::StatusOr<LoadedModel> LoadModel(const std::string& dir, const char* role) {
  LoadedModel m;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  m.config = *std::move(config);
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::Open(dir);
  if (!store.ok()) return store.status();
  m.store = *std::move(store);
  absl::Status fits = CheckFitsInMemory(m.store->total_bytes(), absl::StrCat(role, " ", dir));
  if (!fits.ok()) return fits;
  absl::StatusOr<ModelWeights> weights = BindModelWeights(m.config, *m.store);
  if (!weights.ok()) return weights.status();
  m.weights = *std::move(weights);
  return m;
}

// K and V bytes of one token slot in every layer of a model.
size_t KvBytesPerToken(const ModelConfig& c, kernels::DType dtype) {
  return static_cast<size_t>(2) * c.num_layers * c.num_kv_heads * c.head_dim *
         kernels::DTypeBytes(dtype);
}

// "13.48" for 13.48e9 bytes.
std::string Gigabytes(size_t bytes) { return absl::StrCat(bytes / 10000000 / 100.0); }

// The backend `requested` names ("cpu", "cuda" or "auto": cuda when this build has it and a
// device is visible), with its name in *device.
absl::StatusOr<std::unique_ptr<kernels::Backend>> CreateBackend(const std::string& requested,
                                                                 int threads,
                                                                 std::string* device) {
  if (requested != "cpu" && requested != "cuda" && requested != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device ", requested, ": expected cpu, cuda or auto"));
  }
#if SPECMOE_WITH_CUDA
  if (requested != "cpu" && kernels::cuda::DeviceCount() > 0) {
    *device = "cuda";
    return kernels::cuda::CreateCudaBackend(0);
  }
  if (requested == "cuda") {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device cuda: no CUDA device is visible (", kernels::cuda::DeviceName(), ")"));
  }
  if (requested == "auto") {
    spdlog::warn("--device auto: no CUDA device is visible ({}); falling back to the CPU",
                 kernels::cuda::DeviceName());
  }
#else
  if (requested == "cuda") {
    return absl::InvalidArgumentError(
        "--device cuda: this build has no CUDA backend (configure with -DSPECMOE_CUDA=ON)");
  }
  if (requested == "auto") {
    spdlog::info("--device auto: this build has no CUDA backend; running on the CPU");
  }
#endif
  *device = "cpu";
  return kernels::CreateCpuBackend(threads);
}

// The bytes the backend of `device` can hold: the device's free memory on a GPU, the
// physical memory on the CPU.
size_t BackendMemoryBytes(const std::string& device) {
#if SPECMOE_WITH_CUDA
  if (device == "cuda") return kernels::cuda::DeviceFreeBytes();
#endif
  return PhysicalMemoryBytes();
}

// Bytes of the weights as served (a tied lm_head counted once).
size_t WeightBytes(ModelWeights& weights) {
  size_t bytes = 0;
  std::set<const void*> seen;
  ForEachWeight(weights, [&](kernels::Weight& w) {
    if (seen.insert(w.data).second) bytes += w.bytes();
  });
  return bytes;
}

}  // namespace

ModelSet::~ModelSet() {
  // Models and caches free backend memory; destroy them before the backend.
  target_cache.reset();
  draft_cache.reset();
  target.reset();
  draft.reset();
}

absl::StatusOr<std::unique_ptr<ModelSet>> ModelSet::Create(const EngineOptions& options) {
  auto m = std::make_unique<ModelSet>();
  absl::Status expansion_ok = ValidateExpansion(options.expansion);
  if (!expansion_ok.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--tree: ", expansion_ok.message()));
  }
  if (options.max_step_tokens < kTreeSlots) {
    return absl::InvalidArgumentError(absl::StrCat("--max-step-tokens ", options.max_step_tokens,
                                                   ": at least ", kTreeSlots,
                                                   " (the largest tree)"));
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(options.target_dir);
  if (!tokenizer.ok()) return tokenizer.status();
  m->tokenizer = *std::move(tokenizer);

  absl::StatusOr<LoadedModel> target = LoadModel(options.target_dir, "target");
  if (!target.ok()) return target.status();
  m->target_config = target->config;
  m->target_store = std::move(target->store);
  if (m->target_config.vocab_size < m->tokenizer->vocab_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.target_dir, "/config.json: vocab_size ", m->target_config.vocab_size,
                     " is smaller than ", m->tokenizer->source(), "'s ", m->tokenizer->vocab_size(),
                     " pieces"));
  }

  std::optional<LoadedModel> draft;
  if (!options.draft_dir.empty()) {
    absl::StatusOr<LoadedModel> d = LoadModel(options.draft_dir, "draft");
    if (!d.ok()) return d.status();
    draft = *std::move(d);
    // engine/README.md, Tokenizer: same vocabulary size and, where both folders have one, the same
    // pieces.
    std::vector<std::string> target_pieces = m->tokenizer->pieces();
    std::vector<std::string> draft_pieces;
    absl::StatusOr<std::unique_ptr<Tokenizer>> draft_tok = Tokenizer::Load(options.draft_dir);
    if (!draft_tok.ok() && !absl::IsNotFound(draft_tok.status())) return draft_tok.status();
    if (draft_tok.ok()) draft_pieces = (*draft_tok)->pieces();
    absl::Status same =
        CheckSameVocabulary(m->target_config.vocab_size, draft->config.vocab_size, &target_pieces,
                            draft_tok.ok() ? &draft_pieces : nullptr);
    if (!same.ok()) return same;
  }

  absl::StatusOr<std::unique_ptr<kernels::Backend>> backend =
      CreateBackend(options.device, options.threads, &m->device);
  if (!backend.ok()) return backend.status();
  m->backend = *std::move(backend);
  if (options.weight_dtype.has_value()) {
    ConvertWeights(*options.weight_dtype, target->weights, m->converted_weights);
    if (draft.has_value()) {
      ConvertWeights(*options.weight_dtype, draft->weights, m->converted_weights);
    }
  }
  const kernels::DType kv_dtype = options.kv_dtype.value_or(
      m->device == "cuda" ? kernels::DType::kF16 : kernels::DType::kF32);
  m->max_context = options.max_context > 0
                       ? std::min(options.max_context, m->target_config.max_position_embeddings)
                       : m->target_config.max_position_embeddings;

  // The KV budget, in slots per cache, counting both caches' bytes.
  size_t weight_bytes = WeightBytes(target->weights);
  size_t kv_per_token = KvBytesPerToken(m->target_config, kv_dtype);
  if (draft.has_value()) {
    weight_bytes += WeightBytes(draft->weights);
    kv_per_token += KvBytesPerToken(draft->config, kv_dtype);
  }
  const size_t memory = BackendMemoryBytes(m->device);
  int64_t kv_tokens = options.kv_cache_tokens;
  std::string kv_source = absl::StrCat("--kv-cache-tokens ", kv_tokens);
  if (kv_tokens <= 0 && options.kv_cache_fraction > 0) {
    const size_t left = memory > weight_bytes ? memory - weight_bytes : 0;
    kv_tokens = static_cast<int64_t>(options.kv_cache_fraction * static_cast<double>(left) /
                                     static_cast<double>(kv_per_token));
    kv_source = absl::StrCat("--kv-cache-fraction ", options.kv_cache_fraction);
  }
  if (kv_tokens <= 0) {
    kv_tokens =
        static_cast<int64_t>(std::max(options.max_batch, 1)) * (m->max_context + kTreeSlots);
    kv_source = absl::StrCat(options.max_batch, " x ", m->max_context,
                             " tokens (--max-batch x --max-context)");
  }
  const int num_blocks = static_cast<int>((kv_tokens + kKvBlockSize - 1) / kKvBlockSize);
  const size_t kv_bytes = static_cast<size_t>(num_blocks) * kKvBlockSize * kv_per_token;
  const std::string lower = "(lower --kv-cache-tokens, --max-batch or --max-context)";
  if (m->device == "cuda" && weight_bytes + kv_bytes > memory) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the models (", Gigabytes(weight_bytes), " GB of weights) and a KV cache of ",
        kv_source, " (", Gigabytes(kv_bytes), " GB) do not fit in the CUDA device's ",
        Gigabytes(memory), " GB of free memory ", lower));
  }
  absl::Status fits = CheckFitsInMemory(
      weight_bytes + kv_bytes, memory,
      absl::StrCat("the models and a KV cache of ", kv_source, " ", lower));
  if (!fits.ok()) return fits;

  // Each model with its activations for one step's tokens and its cache of the budget.
  auto bind = [&](const ModelConfig& config, const ModelWeights& weights,
                  const WeightStore* store, std::unique_ptr<Model>* model,
                  std::unique_ptr<KvCache>* cache) {
    absl::StatusOr<std::unique_ptr<Model>> made =
        Model::Create(config, weights, m->backend.get(), options.max_step_tokens, store);
    if (!made.ok()) return made.status();
    *model = *std::move(made);
    absl::StatusOr<std::unique_ptr<KvCache>> pools =
        KvCache::Create(m->backend.get(), config.num_layers, (*model)->kv_row(), kKvBlockSize,
                        num_blocks, kv_dtype);
    if (!pools.ok()) return pools.status();
    *cache = *std::move(pools);
    return absl::OkStatus();
  };
  absl::Status bound = bind(m->target_config, target->weights, m->target_store.get(), &m->target,
                             &m->target_cache);
  if (!bound.ok()) return bound;
  if (draft.has_value()) {
    m->draft_config = draft->config;
    m->draft_store = std::move(draft->store);
    bound = bind(m->draft_config, draft->weights, m->draft_store.get(), &m->draft, &m->draft_cache);
    if (!bound.ok()) return bound;
  }

  // EOS from the target's config, else the tokenizer (engine/README.md, Tokenizer).
  m->eos_ids.assign(m->target_config.eos_token_ids.begin(), m->target_config.eos_token_ids.end());
  if (m->eos_ids.empty() && m->tokenizer->eos_id() >= 0) {
    m->eos_ids.push_back(m->tokenizer->eos_id());
  }
  return m;
}

}  // namespace specmoe::engine
