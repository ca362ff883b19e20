// engine/loader/model_config.h — the parts of a Hugging Face config.json the engine runs on
// (engine/README.md, Models).
//
// Parsing refuses, by name, every config feature the engine does not implement (a
// rope_scaling other than LLaMA-3's "llama3", attention_bias / mlp_bias true, hidden_act
// other than silu, an unknown model_type or architecture) so that no model is ever loaded
// into silently wrong output.
// Tested by tests/model_config_test.cc and fuzzed by tests/fuzz_config.cc.
#ifndef SPECMOE_ENGINE_LOADER_MODEL_CONFIG_H_
#define SPECMOE_ENGINE_LOADER_MODEL_CONFIG_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace specmoe::engine {

enum class Architecture { kLlama, kLlamaMoe };

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string model_type;  // "llama" or "llama_moe"
  int hidden_size = 0;
  int num_layers = 0;           // num_hidden_layers
  int num_heads = 0;            // num_attention_heads
  int num_kv_heads = 0;         // num_key_value_heads (defaults to num_heads)
  int head_dim = 0;             // hidden_size / num_heads (or "head_dim" when given)
  int intermediate_size = 0;    // dense FFN (llama)
  int vocab_size = 0;
  int max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;  // absent key: 10000
  kernels::RopeScaling rope_scaling;  // rope_scaling {"rope_type": "llama3"}; factor 0: none
  bool tie_word_embeddings = false;
  // From eos_token_id (int or list); generation_config.json's, when that file has one, wins
  // (LLaMA-3 instruct models list several there). May be empty.
  std::vector<int> eos_token_ids;
  int bos_token_id = -1;           // informational only (engine/README.md, Tokenizer)

  // LLaMA-MoE (llama_moe) only.
  int num_experts = 0;             // num_experts
  int num_selects = 0;             // top-k
  std::vector<std::vector<int>> size_experts;  // [num_layers][num_experts]
  float score_scale_factor = 1.0f;
  bool multiply_gate_scores = true;
};

// Parses config.json text. `path` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, const std::string& path);

// Reads and parses `<model_dir>/config.json`, then `<model_dir>/generation_config.json` when
// present (its bos_token_id and eos_token_id, an int or a list, replace config.json's).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_LOADER_MODEL_CONFIG_H_
