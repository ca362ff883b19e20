// engine/loader/weights.cc — see weights.h. Formats: safetensors.h, torch_pickle.h; sharded
// checkpoints follow transformers' *.index.json ({"weight_map": {tensor: shard file}}).
// Tensor names follow transformers' modeling_llama.py and LLaMA-MoE's modeling_llama_moe.py
// (engine/README.md, Models).
#include "engine/loader/weights.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/loader/mapped_file.h"
#include "engine/loader/safetensors.h"
#include "engine/loader/torch_pickle.h"
#include "nlohmann/json.hpp"

namespace specmoe::engine {

struct WeightStore::Mapping {
  std::unique_ptr<MappedFile> file;
};

namespace {

using Json = nlohmann::json;
using FileParser = std::function<absl::StatusOr<std::vector<TensorInfo>>(
    const uint8_t*, size_t, const std::string&)>;

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Reads `<dir>/<index>` and returns its weight_map (tensor name -> shard file name).
absl::StatusOr<std::map<std::string, std::string>> ReadIndex(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  Json json;
  try {
    json = Json::parse(text.str());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad JSON: ", e.what()));
  }
  const auto it = json.is_object() ? json.find("weight_map") : json.end();
  if (it == json.end() || !it->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no \"weight_map\" object"));
  }
  std::map<std::string, std::string> map;
  for (const auto& [name, shard] : it->items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": weight_map entry '", name, "' is not a file name"));
    }
    const std::string& file = shard.get_ref<const std::string&>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": weight_map entry '", name, "' names '", file, "', not a file in the folder"));
    }
    map[name] = file;
  }
  return map;
}

}  // namespace

WeightStore::~WeightStore() = default;

size_t WeightStore::total_bytes() const {
  size_t total = 0;
  for (const auto& [name, info] : tensors_) total += info.bytes;
  return total;
}

void WeightStore::DropPages(const void* data, size_t bytes) const {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = begin + bytes;
  for (const auto& m : mappings_) {
    const uintptr_t map_begin = reinterpret_cast<uintptr_t>(m->file->data());
    const uintptr_t map_end = map_begin + m->file->size();
    if (m->file->data() == nullptr || begin < map_begin || end > map_end) continue;
    // Whole pages only: a page shared with a neighbouring tensor is kept.
    const uintptr_t first = (begin + page - 1) / page * page;
    const uintptr_t last = end / page * page;
    if (first < last) {
      ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
    }
    return;
  }
}

absl::StatusOr<std::unique_ptr<WeightStore>> WeightStore::Open(const std::string& model_dir) {
  std::unique_ptr<WeightStore> store(new WeightStore());
  // Maps `path`, parses it and adds its tensors (a name in two files is an error).
  const auto add_file = [&](const std::string& path,
                            const FileParser& parse) -> absl::StatusOr<std::set<std::string>> {
    auto mapped = MappedFile::Open(path);
    if (!mapped.ok()) return mapped.status();
    auto tensors = parse((*mapped)->data(), (*mapped)->size(), path);
    if (!tensors.ok()) return tensors.status();
    std::set<std::string> names;
    for (TensorInfo& info : *tensors) {
      const auto [it, inserted] = store->tensors_.try_emplace(info.name, info);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", info.name,
                                                       "' also appears in ", it->second.file));
      }
      names.insert(info.name);
    }
    store->mappings_.push_back(std::make_unique<Mapping>(Mapping{std::move(*mapped)}));
    return names;
  };
  // Opens every shard an index names and checks each indexed tensor is where it says.
  const auto add_sharded = [&](const std::string& index_path,
                               const FileParser& parse) -> absl::Status {
    auto map = ReadIndex(index_path);
    if (!map.ok()) return map.status();
    std::map<std::string, std::set<std::string>> shards;  // file -> tensor names there
    for (const auto& [name, file] : *map) shards[file];
    for (auto& [file, names] : shards) {
      auto added = add_file(absl::StrCat(model_dir, "/", file), parse);
      if (!added.ok()) return added.status();
      names = std::move(*added);
    }
    for (const auto& [name, file] : *map) {
      if (!shards[file].contains(name)) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor '", name,
                                                       "' is indexed in ", file,
                                                       " but that file does not hold it"));
      }
    }
    return absl::OkStatus();
  };

  const std::string st_index = absl::StrCat(model_dir, "/model.safetensors.index.json");
  const std::string st_single = absl::StrCat(model_dir, "/model.safetensors");
  const std::string bin_index = absl::StrCat(model_dir, "/pytorch_model.bin.index.json");
  const std::string bin_single = absl::StrCat(model_dir, "/pytorch_model.bin");
  absl::Status status;
  if (FileExists(st_index)) {
    status = add_sharded(st_index, ParseSafetensors);
  } else if (FileExists(st_single)) {
    status = add_file(st_single, ParseSafetensors).status();
  } else if (FileExists(bin_index)) {
    status = add_sharded(bin_index, ParseTorchCheckpoint);
  } else if (FileExists(bin_single)) {
    status = add_file(bin_single, ParseTorchCheckpoint).status();
  } else {
    return absl::NotFoundError(absl::StrCat(
        model_dir, ": no weights found (looked for model.safetensors.index.json, "
                   "model.safetensors, pytorch_model.bin.index.json, pytorch_model.bin)"));
  }
  if (!status.ok()) return status;
  return store;
}

namespace {

// Binds named tensors of a store to Weights, tracking which were used. One per
// BindModelWeights call; not thread-safe; borrows the store.
class Binder {
 public:
  explicit Binder(const WeightStore& store) : store_(store) {
    std::set<std::string> files;
    for (const auto& [name, info] : store.tensors()) files.insert(info.file);
    where_ = files.empty() ? "the weight files" : absl::StrJoin(files, ", ");
  }

  // A [rows, cols] matrix (linear layer or embedding table). Linear layers must all have the
  // dtype of the first one bound.
  absl::StatusOr<kernels::Weight> Matrix(const std::string& name, int64_t rows, int64_t cols,
                                         bool linear) {
    return Bind(name, {rows, cols}, linear);
  }
  // A [hidden] vector (norm weight), as Weight [1, hidden]; any supported dtype.
  absl::StatusOr<kernels::Weight> Vector(const std::string& name, int64_t size) {
    return Bind(name, {size}, /*linear=*/false);
  }
  void MarkUsed(const std::string& name) { used_.insert(name); }
  bool Has(const std::string& name) const { return store_.tensors().contains(name); }
  bool HasLinearDtype() const { return linear_dtype_set_; }
  kernels::DType linear_dtype() const { return linear_dtype_; }

  // Every tensor not bound and not ignorable is unexpected.
  absl::Status CheckNoneLeft(bool moe) const {
    for (const auto& [name, info] : store_.tensors()) {
      if (used_.contains(name)) continue;
      if (std::string_view(name).ends_with("rotary_emb.inv_freq")) continue;
      if (moe && std::string_view(name).ends_with(".mlp.gate.weight_noise.weight")) continue;
      return absl::InvalidArgumentError(absl::StrCat(
          info.file, ": unexpected tensor '", name, "' (shape [", absl::StrJoin(info.shape, ", "),
          "]) that the config does not use"));
    }
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<kernels::Weight> Bind(const std::string& name,
                                       const std::vector<int64_t>& expected, bool linear) {
    const auto it = store_.tensors().find(name);
    if (it == store_.tensors().end()) {
      return absl::NotFoundError(absl::StrCat(where_, ": missing tensor '", name,
                                              "' (expected shape [",
                                              absl::StrJoin(expected, ", "), "])"));
    }
    const TensorInfo& info = it->second;
    if (info.shape != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          info.file, ": tensor '", name, "' has shape [", absl::StrJoin(info.shape, ", "),
          "], expected [", absl::StrJoin(expected, ", "), "]"));
    }
    if (linear) {
      if (!linear_dtype_set_) {
        linear_dtype_ = info.dtype;
        linear_dtype_set_ = true;
        linear_dtype_from_ = name;
      } else if (info.dtype != linear_dtype_) {
        return absl::InvalidArgumentError(absl::StrCat(
            info.file, ": tensor '", name, "' has dtype ", kernels::DTypeName(info.dtype),
            " but the linear layers are ", kernels::DTypeName(linear_dtype_), " (as '",
            linear_dtype_from_, "'); mixed dtypes are not supported"));
      }
    }
    used_.insert(name);
    kernels::Weight w;
    w.data = info.data;
    w.dtype = info.dtype;
    w.rows = expected.size() == 2 ? expected[0] : 1;
    w.cols = expected.back();
    return w;
  }

  const WeightStore& store_;
  std::string where_;
  std::set<std::string> used_;
  bool linear_dtype_set_ = false;
  kernels::DType linear_dtype_ = kernels::DType::kF32;
  std::string linear_dtype_from_;
};

#define SPECMOE_ASSIGN_OR_RETURN_W(lhs, expr) \
  do {                                        \
    auto r_ = (expr);                         \
    if (!r_.ok()) return r_.status();         \
    lhs = *r_;                                \
  } while (0)

}  // namespace

absl::StatusOr<ModelWeights> BindModelWeights(const ModelConfig& config,
                                              const WeightStore& store) {
  Binder b(store);
  ModelWeights m;
  const int64_t hidden = config.hidden_size;
  const int64_t q_dim = static_cast<int64_t>(config.num_heads) * config.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(config.num_kv_heads) * config.head_dim;
  const bool moe = config.architecture == Architecture::kLlamaMoe;

  // Layer 0's q_proj first, so that it sets ModelWeights::dtype.
  for (int i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    LayerWeights& l = m.layers.emplace_back();
    SPECMOE_ASSIGN_OR_RETURN_W(l.q_proj, b.Matrix(p + "self_attn.q_proj.weight", q_dim, hidden, true));
    SPECMOE_ASSIGN_OR_RETURN_W(l.k_proj, b.Matrix(p + "self_attn.k_proj.weight", kv_dim, hidden, true));
    SPECMOE_ASSIGN_OR_RETURN_W(l.v_proj, b.Matrix(p + "self_attn.v_proj.weight", kv_dim, hidden, true));
    SPECMOE_ASSIGN_OR_RETURN_W(l.o_proj, b.Matrix(p + "self_attn.o_proj.weight", hidden, q_dim, true));
    SPECMOE_ASSIGN_OR_RETURN_W(l.input_norm, b.Vector(p + "input_layernorm.weight", hidden));
    SPECMOE_ASSIGN_OR_RETURN_W(l.post_norm, b.Vector(p + "post_attention_layernorm.weight", hidden));
    if (!moe) {
      const int64_t inter = config.intermediate_size;
      SPECMOE_ASSIGN_OR_RETURN_W(l.mlp.gate, b.Matrix(p + "mlp.gate_proj.weight", inter, hidden, true));
      SPECMOE_ASSIGN_OR_RETURN_W(l.mlp.up, b.Matrix(p + "mlp.up_proj.weight", inter, hidden, true));
      SPECMOE_ASSIGN_OR_RETURN_W(l.mlp.down, b.Matrix(p + "mlp.down_proj.weight", hidden, inter, true));
      continue;
    }
    // LLaMA-MoE (engine/README.md, LLaMA-MoE): gate g = W2 tanh(W1 x), W1 [E, hidden], W2 [E, E];
    // expert e: gate/up [size_e, hidden], down [hidden, size_e].
    const int64_t experts = config.num_experts;
    SPECMOE_ASSIGN_OR_RETURN_W(l.gate_w1, b.Matrix(p + "mlp.gate.gate_network.0.weight", experts, hidden, true));
    SPECMOE_ASSIGN_OR_RETURN_W(l.gate_w2, b.Matrix(p + "mlp.gate.gate_network.2.weight", experts, experts, true));
    const std::string e_prefix = p + "mlp.calculator.experts.";
    for (int e = 0; e < config.num_experts; ++e) {
      const int64_t size = config.size_experts[i][e];
      kernels::ExpertWeights& x = l.experts.emplace_back();
      SPECMOE_ASSIGN_OR_RETURN_W(x.gate, b.Matrix(absl::StrCat(e_prefix, "weight_gate.", e), size, hidden, true));
      SPECMOE_ASSIGN_OR_RETURN_W(x.up, b.Matrix(absl::StrCat(e_prefix, "weight_up.", e), size, hidden, true));
      SPECMOE_ASSIGN_OR_RETURN_W(x.down, b.Matrix(absl::StrCat(e_prefix, "weight_down.", e), hidden, size, true));
    }
  }
  m.dtype = b.linear_dtype();
  SPECMOE_ASSIGN_OR_RETURN_W(m.embed_tokens, b.Matrix("model.embed_tokens.weight", config.vocab_size, hidden, false));
  SPECMOE_ASSIGN_OR_RETURN_W(m.norm, b.Vector("model.norm.weight", hidden));
  if (config.tie_word_embeddings) {
    m.lm_head = m.embed_tokens;
    // A tied checkpoint may still store lm_head (a copy); accept it when its shape is right.
    if (b.Has("lm_head.weight")) {
      auto stored = b.Matrix("lm_head.weight", config.vocab_size, hidden, false);
      if (!stored.ok()) return stored.status();
    }
  } else {
    SPECMOE_ASSIGN_OR_RETURN_W(m.lm_head, b.Matrix("lm_head.weight", config.vocab_size, hidden, true));
  }
  if (auto s = b.CheckNoneLeft(moe); !s.ok()) return s;
  return m;
}

void ForEachWeight(ModelWeights& weights, const std::function<void(kernels::Weight&)>& fn) {
  ForEachWeight(weights, [&](kernels::Weight& w, bool) { fn(w); });
}

void ForEachWeight(ModelWeights& weights,
                   const std::function<void(kernels::Weight&, bool linear)>& fn) {
  auto visit = [&](kernels::Weight& w, bool linear) {
    if (w.data != nullptr) fn(w, linear);
  };
  visit(weights.embed_tokens, false);
  visit(weights.norm, false);
  for (LayerWeights& layer : weights.layers) {
    visit(layer.input_norm, false);
    for (kernels::Weight* w : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj}) {
      visit(*w, true);
    }
    visit(layer.post_norm, false);
    for (kernels::Weight* w : {&layer.mlp.gate, &layer.mlp.up, &layer.mlp.down, &layer.gate_w1,
                               &layer.gate_w2}) {
      visit(*w, true);
    }
    for (kernels::ExpertWeights& e : layer.experts) {
      visit(e.gate, true);
      visit(e.up, true);
      visit(e.down, true);
    }
  }
  visit(weights.lm_head, true);
}

void ConvertWeights(kernels::DType dtype, ModelWeights& weights,
                    std::vector<std::unique_ptr<uint8_t[]>>& owned) {
  std::map<const void*, const void*> converted;  // source -> converted (a tied lm_head)
  ForEachWeight(weights, [&](kernels::Weight& w) {
    if (w.dtype == dtype) return;
    if (auto it = converted.find(w.data); it != converted.end()) {
      w.data = it->second;
      w.dtype = dtype;
      return;
    }
    const size_t count = static_cast<size_t>(w.rows * w.cols);
    auto out = std::make_unique<uint8_t[]>(count * kernels::DTypeBytes(dtype));
    std::vector<float> row(static_cast<size_t>(w.cols));
    for (int64_t r = 0; r < w.rows; ++r) {
      kernels::WidenRow(w, r, row.data());
      kernels::NarrowRow(row.data(), w.cols, dtype,
                         out.get() + static_cast<size_t>(r) * w.cols * kernels::DTypeBytes(dtype));
    }
    converted[w.data] = out.get();
    w.data = out.get();
    w.dtype = dtype;
    owned.push_back(std::move(out));
  });
  weights.dtype = dtype;
}

}  // namespace specmoe::engine
