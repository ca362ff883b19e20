// engine/loader/model_config.cc — see model_config.h. The keys and defaults follow Hugging Face
// transformers' LlamaConfig (configuration_llama.py) and LLaMA-MoE's LlamaMoEConfig
// (pjlab-sys4nlp/llama-moe, configuration_llama_moe.py).
#include "engine/loader/model_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace specmoe::engine {
namespace {

using Json = nlohmann::json;

// Typed access to the top-level keys of one config.json; errors name the file and the key.
class ConfigReader {
 public:
  ConfigReader(const Json& json, const std::string& path) : json_(json), path_(path) {}

  const std::string& path() const { return path_; }

  absl::Status Error(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": \"", key, "\" ", what));
  }
  absl::Status Unsupported(absl::string_view key, absl::string_view what) const {
    return absl::UnimplementedError(
        absl::StrCat(path_, ": \"", key, "\" ", what, " is not supported by this engine"));
  }

  // The value of `key`, or null when absent (a JSON null counts as absent).
  const Json* Find(absl::string_view key) const {
    const auto it = json_.find(std::string(key));
    if (it == json_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::Status Int(absl::string_view key, bool required, int* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Error(key, "is missing") : absl::OkStatus();
    return ToInt(*v, key, out);
  }
  absl::Status PositiveInt(absl::string_view key, bool required, int* out) const {
    if (auto s = Int(key, required, out); !s.ok()) return s;
    if (Find(key) != nullptr && *out <= 0) {
      return Error(key, absl::StrCat("must be positive, got ", *out));
    }
    return absl::OkStatus();
  }
  absl::Status ToInt(const Json& v, absl::string_view key, int* out) const {
    if (!v.is_number_integer()) return Error(key, "must be an integer");
    if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
        return Error(key, "is out of range");
      }
      *out = static_cast<int>(v.get<uint64_t>());
      return absl::OkStatus();
    }
    const int64_t n = v.get<int64_t>();
    if (n < std::numeric_limits<int>::min() || n > std::numeric_limits<int>::max()) {
      return Error(key, "is out of range");
    }
    *out = static_cast<int>(n);
    return absl::OkStatus();
  }
  absl::Status Float(absl::string_view key, float* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_number()) return Error(key, "must be a number");
    const double d = v->get<double>();
    if (!std::isfinite(d) || std::fabs(d) > std::numeric_limits<float>::max()) {
      return Error(key, "must be a finite number");
    }
    *out = static_cast<float>(d);
    return absl::OkStatus();
  }
  absl::Status Bool(absl::string_view key, bool* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return Error(key, "must be true or false");
    *out = v->get<bool>();
    return absl::OkStatus();
  }
  absl::Status String(absl::string_view key, std::string* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_string()) return Error(key, "must be a string");
    *out = v->get<std::string>();
    return absl::OkStatus();
  }

 private:
  const Json& json_;
  const std::string& path_;
};

#define SPECMOE_RETURN_IF_ERROR_CFG(expr)    \
  do {                                       \
    if (absl::Status s_ = (expr); !s_.ok()) { \
      return s_;                             \
    }                                        \
  } while (0)

// Refuses the config features engine/README.md, Models lists as not implemented.
absl::Status CheckUnsupportedFeatures(const ConfigReader& r) {
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    bool bias = false;
    SPECMOE_RETURN_IF_ERROR_CFG(r.Bool(key, &bias));
    if (bias) return r.Unsupported(key, "true");
  }
  std::string act = "silu";
  SPECMOE_RETURN_IF_ERROR_CFG(r.String("hidden_act", &act));
  if (act != "silu") return r.Unsupported("hidden_act", absl::StrCat("'", act, "'"));
  return absl::OkStatus();
}

// eos_token_id: an int or a list of ints, each inside the vocabulary. Absent: `ids` unchanged.
absl::Status ReadEos(const ConfigReader& r, int vocab_size, std::vector<int>* ids) {
  const Json* eos = r.Find("eos_token_id");
  if (eos == nullptr) return absl::OkStatus();
  std::vector<int> out;
  if (eos->is_array()) {
    for (const Json& id : *eos) {
      int value = 0;
      SPECMOE_RETURN_IF_ERROR_CFG(r.ToInt(id, "eos_token_id", &value));
      out.push_back(value);
    }
  } else {
    int value = 0;
    SPECMOE_RETURN_IF_ERROR_CFG(r.ToInt(*eos, "eos_token_id", &value));
    out.push_back(value);
  }
  for (int id : out) {
    if (id < 0 || id >= vocab_size) {
      return r.Error("eos_token_id",
                     absl::StrCat(id, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  *ids = std::move(out);
  return absl::OkStatus();
}

// rope_scaling: only LLaMA-3's {"rope_type" (or "type"): "llama3", "factor",
// "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}; any other type
// is refused by name.
absl::Status ReadRopeScaling(const ConfigReader& top, const Json& json,
                             kernels::RopeScaling* out) {
  if (!json.is_object()) return top.Error("rope_scaling", "must be an object or null");
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    auto it = json.find(key);
    if (it != json.end() && it->is_string()) type = it->get<std::string>();
    if (!type.empty()) break;
  }
  if (type != "llama3") {
    return top.Unsupported("rope_scaling",
                           absl::StrCat("of type '", type, "' (only 'llama3' is implemented)"));
  }
  const std::string path = absl::StrCat(top.path(), ": rope_scaling");
  ConfigReader r(json, path);
  kernels::RopeScaling s;
  int original = 0;
  SPECMOE_RETURN_IF_ERROR_CFG(r.Float("factor", &s.factor));
  SPECMOE_RETURN_IF_ERROR_CFG(r.Float("low_freq_factor", &s.low_freq_factor));
  SPECMOE_RETURN_IF_ERROR_CFG(r.Float("high_freq_factor", &s.high_freq_factor));
  SPECMOE_RETURN_IF_ERROR_CFG(r.PositiveInt("original_max_position_embeddings", true, &original));
  if (r.Find("factor") == nullptr || !(s.factor >= 1)) {
    return top.Error("rope_scaling", "needs \"factor\" >= 1");
  }
  if (!(s.low_freq_factor > 0) || !(s.high_freq_factor > s.low_freq_factor)) {
    return top.Error("rope_scaling",
                     "needs 0 < \"low_freq_factor\" < \"high_freq_factor\"");
  }
  s.original_max_position = static_cast<float>(original);
  *out = s;
  return absl::OkStatus();
}

absl::Status ReadMoe(const ConfigReader& r, ModelConfig* c) {
  SPECMOE_RETURN_IF_ERROR_CFG(r.PositiveInt("num_experts", true, &c->num_experts));
  SPECMOE_RETURN_IF_ERROR_CFG(r.PositiveInt("num_selects", true, &c->num_selects));
  if (c->num_selects > c->num_experts) {
    return r.Error("num_selects", absl::StrCat("(", c->num_selects, ") exceeds num_experts (",
                                                c->num_experts, ")"));
  }
  SPECMOE_RETURN_IF_ERROR_CFG(r.Float("score_scale_factor", &c->score_scale_factor));
  // The keys that select the MoE's maths (engine/README.md, LLaMA-MoE), each with the one value
  // this engine implements (the seed's own); any other value is refused by key and value. Absent
  // keys take that value. Training-only keys (gate_add_noise, gate_noise_epsilon,
  // gate_use_balance, gate_balance_loss_weight, capacity_factor, drop_tokens,
  // dropped_padding) are not read: they do not change inference.
  for (const auto& [key, implemented] :
       {std::pair<const char*, const char*>{"gate_type", "TopKBalancedNoisyGate"},
        {"gate_network", "mlp"},
        {"gates", "mlp"},
        {"calculator_type", "UniversalCalculator"}}) {
    std::string value = implemented;
    SPECMOE_RETURN_IF_ERROR_CFG(r.String(key, &value));
    if (value != implemented) return r.Unsupported(key, absl::StrCat("'", value, "'"));
  }
  for (const auto& [key, implemented] :
       {std::pair<const char*, bool>{"multiply_gate_scores", true},
        {"gate_use_softmax", true},
        {"add_weight_norm", false}}) {
    bool value = implemented;
    SPECMOE_RETURN_IF_ERROR_CFG(r.Bool(key, &value));
    if (value != implemented) return r.Unsupported(key, value ? "true" : "false");
  }
  c->multiply_gate_scores = true;

  // size_experts: [num_hidden_layers][num_experts] positive ints.
  const Json* sizes = r.Find("size_experts");
  if (sizes == nullptr) return r.Error("size_experts", "is missing");
  if (!sizes->is_array() || sizes->size() != static_cast<size_t>(c->num_layers)) {
    return r.Error("size_experts", absl::StrCat("must be a list of num_hidden_layers (",
                                                c->num_layers, ") lists"));
  }
  for (size_t layer = 0; layer < sizes->size(); ++layer) {
    const Json& row = (*sizes)[layer];
    const std::string key = absl::StrCat("size_experts[", layer, "]");
    if (!row.is_array() || row.size() != static_cast<size_t>(c->num_experts)) {
      return r.Error(key, absl::StrCat("must list num_experts (", c->num_experts, ") sizes"));
    }
    std::vector<int>& out = c->size_experts.emplace_back();
    for (size_t e = 0; e < row.size(); ++e) {
      const std::string element = absl::StrCat(key, "[", e, "]");
      int size = 0;
      SPECMOE_RETURN_IF_ERROR_CFG(r.ToInt(row[e], element, &size));
      if (size <= 0) return r.Error(element, absl::StrCat("must be positive, got ", size));
      out.push_back(size);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, const std::string& path) {
  Json json;
  try {
    json = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad JSON: ", e.what()));
  }
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad JSON: not an object"));
  }
  const ConfigReader r(json, path);
  ModelConfig c;

  // Architecture: model_type picks it; "architectures", when present, must agree.
  const Json* model_type = r.Find("model_type");
  if (model_type == nullptr) return r.Error("model_type", "is missing");
  if (!model_type->is_string()) return r.Error("model_type", "must be a string");
  c.model_type = model_type->get<std::string>();
  std::string expected_architecture;
  if (c.model_type == "llama") {
    c.architecture = Architecture::kLlama;
    expected_architecture = "LlamaForCausalLM";
  } else if (c.model_type == "llama_moe") {
    c.architecture = Architecture::kLlamaMoe;
    expected_architecture = "LlamaMoEForCausalLM";
  } else {
    return absl::UnimplementedError(absl::StrCat(path, ": unknown model_type '", c.model_type,
                                                 "' (supported: llama, llama_moe)"));
  }
  if (const Json* archs = r.Find("architectures"); archs != nullptr) {
    if (!archs->is_array()) return r.Error("architectures", "must be a list of strings");
    for (const Json& arch : *archs) {
      if (!arch.is_string()) return r.Error("architectures", "must be a list of strings");
      if (arch.get<std::string>() != expected_architecture) {
        return absl::UnimplementedError(absl::StrCat(
            path, ": unknown architecture '", arch.get<std::string>(), "' for model_type '",
            c.model_type, "' (supported: ", expected_architecture, ")"));
      }
    }
  }
  SPECMOE_RETURN_IF_ERROR_CFG(CheckUnsupportedFeatures(r));

  SPECMOE_RETURN_IF_ERROR_CFG(r.PositiveInt("hidden_size", true, &c.hidden_size));
  SPECMOE_RETURN_IF_ERROR_CFG(r.PositiveInt("num_hidden_layers", true, &c.num_layers));
  SPECMOE_RETURN_IF_ERROR_CFG(r.PositiveInt("num_attention_heads", true, &c.num_heads));
  c.num_kv_heads = c.num_heads;
  SPECMOE_RETURN_IF_ERROR_CFG(r.PositiveInt("num_key_value_heads", false, &c.num_kv_heads));
  SPECMOE_RETURN_IF_ERROR_CFG(r.PositiveInt("vocab_size", true, &c.vocab_size));
  SPECMOE_RETURN_IF_ERROR_CFG(r.PositiveInt("intermediate_size",
                                            c.architecture == Architecture::kLlama,
                                            &c.intermediate_size));
  SPECMOE_RETURN_IF_ERROR_CFG(
      r.PositiveInt("max_position_embeddings", false, &c.max_position_embeddings));
  SPECMOE_RETURN_IF_ERROR_CFG(r.Float("rms_norm_eps", &c.rms_norm_eps));
  if (c.rms_norm_eps < 0) return r.Error("rms_norm_eps", "must not be negative");
  SPECMOE_RETURN_IF_ERROR_CFG(r.Float("rope_theta", &c.rope_theta));
  if (c.rope_theta <= 0) return r.Error("rope_theta", "must be positive");
  if (const Json* scaling = r.Find("rope_scaling"); scaling != nullptr) {
    SPECMOE_RETURN_IF_ERROR_CFG(ReadRopeScaling(r, *scaling, &c.rope_scaling));
  }
  SPECMOE_RETURN_IF_ERROR_CFG(r.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  SPECMOE_RETURN_IF_ERROR_CFG(r.Int("bos_token_id", false, &c.bos_token_id));
  SPECMOE_RETURN_IF_ERROR_CFG(ReadEos(r, c.vocab_size, &c.eos_token_ids));

  // Heads: head_dim = hidden / heads unless given; kv heads must divide heads (GQA groups).
  if (r.Find("head_dim") != nullptr) {
    SPECMOE_RETURN_IF_ERROR_CFG(r.PositiveInt("head_dim", false, &c.head_dim));
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return r.Error("hidden_size", absl::StrCat("(", c.hidden_size,
                                                 ") is not divisible by num_attention_heads (",
                                                 c.num_heads, ")"));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) {
    return r.Error("head_dim", absl::StrCat("(", c.head_dim, ") must be even for RoPE"));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return r.Error("num_attention_heads",
                   absl::StrCat("(", c.num_heads, ") is not divisible by num_key_value_heads (",
                                c.num_kv_heads, ")"));
  }
  if (c.architecture == Architecture::kLlamaMoe) {
    SPECMOE_RETURN_IF_ERROR_CFG(ReadMoe(r, &c));
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = absl::StrCat(model_dir, "/config.json");
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text.str(), path);
  if (!config.ok()) return config;

  // generation_config.json: the ids generation starts and stops with.
  const std::string gen_path = absl::StrCat(model_dir, "/generation_config.json");
  std::ifstream gen(gen_path, std::ios::binary);
  if (!gen) return config;
  std::ostringstream gen_text;
  gen_text << gen.rdbuf();
  const Json json = Json::parse(gen_text.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(gen_path, ": not a JSON object"));
  }
  ConfigReader r(json, gen_path);
  SPECMOE_RETURN_IF_ERROR_CFG(r.Int("bos_token_id", false, &config->bos_token_id));
  SPECMOE_RETURN_IF_ERROR_CFG(ReadEos(r, config->vocab_size, &config->eos_token_ids));
  return config;
}

}  // namespace specmoe::engine
