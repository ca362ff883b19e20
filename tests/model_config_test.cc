// tests/model_config_test.cc — ParseModelConfig / LoadModelConfig (engine/loader/model_config.h):
// defaults, GQA, eos lists, MoE sizes, and every refusal by name (engine/README.md, Models).
#include "engine/loader/model_config.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace specmoe::engine {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr char kPath[] = "/models/x/config.json";

// huggyllama/llama-7b's config.json (no rope_theta, no num_key_value_heads).
Json Llama7b() {
  return Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 11008,
    "initializer_range": 0.02, "max_position_embeddings": 2048, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "pad_token_id": 0,
    "rms_norm_eps": 1e-06, "tie_word_embeddings": false, "torch_dtype": "float16",
    "transformers_version": "4.28.0.dev0", "use_cache": true, "vocab_size": 32000})");
}

// The seed draft JuncaiL/llama-8x265m-moe (engine/README.md, LLaMA-MoE), harmless training keys
// included.
Json SeedMoe() {
  Json j = Json::parse(R"({
    "architectures": ["LlamaMoEForCausalLM"], "model_type": "llama_moe",
    "auto_map": {"AutoConfig": "configuration_llama_moe.LlamaMoEConfig"},
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 2,
    "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 8, "num_selects": 2,
    "score_scale_factor": 4.0, "gate_network": "mlp", "gate_use_softmax": true,
    "gate_use_balance": true, "gate_balance_loss_weight": 0.01, "gate_add_noise": true,
    "gate_noise_epsilon": 0.01, "multiply_gate_scores": true, "bos_token_id": 0,
    "pad_token_id": 1, "eos_token_id": 2, "vocab_size": 32000, "rms_norm_eps": 1e-05,
    "max_position_embeddings": 2048, "hidden_act": "silu", "pretraining_tp": 1,
    "tie_word_embeddings": false, "torch_dtype": "float32", "gates": "mlp",
    "gate_type": "TopKBalancedNoisyGate", "calculator_type": "UniversalCalculator",
    "add_weight_norm": false, "drop_tokens": true, "dropped_padding": "zero",
    "capacity_factor": 1.25})");
  j["size_experts"] = Json::array({Json(std::vector<int>(8, 8192)), Json(std::vector<int>(8, 8192))});
  return j;
}

absl::StatusOr<ModelConfig> Parse(const Json& j) { return ParseModelConfig(j.dump(), kPath); }

// Expects a refusal whose message names the file and contains `needle`.
void ExpectError(const Json& j, const std::string& needle) {
  const auto c = Parse(j);
  ASSERT_FALSE(c.ok()) << j.dump();
  EXPECT_THAT(c.status().message(), HasSubstr(kPath));
  EXPECT_THAT(c.status().message(), HasSubstr(needle));
}

TEST(ModelConfigTest, Llama7bDefaults) {
  const auto c = Parse(Llama7b());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->num_layers, 32);
  EXPECT_EQ(c->num_heads, 32);
  EXPECT_EQ(c->num_kv_heads, 32);  // absent: = num_attention_heads
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->intermediate_size, 11008);
  EXPECT_EQ(c->vocab_size, 32000);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c->rope_theta, 10000.0f);  // absent: 10000
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->eos_token_ids, std::vector<int>{2});
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->num_experts, 0);
}

TEST(ModelConfigTest, MinimalConfigTakesDefaults) {
  Json j = {{"model_type", "llama"}, {"hidden_size", 64}, {"num_hidden_layers", 1},
            {"num_attention_heads", 4}, {"intermediate_size", 128}, {"vocab_size", 100}};
  const auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c->rope_theta, 10000.0f);
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_EQ(c->bos_token_id, -1);
}

TEST(ModelConfigTest, GqaRopeThetaTiedEosListHeadDim) {
  Json j = Llama7b();
  j["num_key_value_heads"] = 8;
  j["rope_theta"] = 500000.0;
  j["tie_word_embeddings"] = true;
  j["eos_token_id"] = {2, 31999};
  j["rope_scaling"] = nullptr;  // null is the same as absent
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["head_dim"] = 64;  // explicit head_dim wins over hidden / heads
  const auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_FLOAT_EQ(c->rope_theta, 500000.0f);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{2, 31999}));
  EXPECT_EQ(c->head_dim, 64);
}

TEST(ModelConfigTest, SeedMoe) {
  const auto c = Parse(SeedMoe());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kLlamaMoe);
  EXPECT_EQ(c->model_type, "llama_moe");
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->num_layers, 2);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->num_kv_heads, 16);
  EXPECT_EQ(c->num_experts, 8);
  EXPECT_EQ(c->num_selects, 2);
  ASSERT_EQ(c->size_experts.size(), 2u);
  EXPECT_EQ(c->size_experts[1], std::vector<int>(8, 8192));
  EXPECT_FLOAT_EQ(c->score_scale_factor, 4.0f);
  EXPECT_TRUE(c->multiply_gate_scores);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c->rope_theta, 10000.0f);
  EXPECT_EQ(c->bos_token_id, 0);
  EXPECT_EQ(c->eos_token_ids, std::vector<int>{2});
}

TEST(ModelConfigTest, MoeUnevenExpertSizesAndDefaults) {
  Json j = SeedMoe();
  j.erase("intermediate_size");
  j.erase("score_scale_factor");
  j.erase("multiply_gate_scores");
  j.erase("gate_network");
  j.erase("gate_use_softmax");
  j["num_experts"] = 3;
  j["size_experts"] = {{1, 2, 3}, {4, 5, 6}};
  const auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->size_experts, (std::vector<std::vector<int>>{{1, 2, 3}, {4, 5, 6}}));
  EXPECT_FLOAT_EQ(c->score_scale_factor, 1.0f);
  EXPECT_TRUE(c->multiply_gate_scores);
}

// Every MoE key that changes the maths is refused by key and value
// (engine/README.md, LLaMA-MoE); the training-only keys are accepted with any value.
TEST(ModelConfigTest, RefusesMoeMathsKeysByKeyAndValue) {
  const std::vector<std::pair<const char*, Json>> refused = {
      {"multiply_gate_scores", false},
      {"calculator_type", "SwitchDropTokenCalculator"},
      {"gate_type", "SwitchBalancedGate"},
      {"gate_network", "linear"},
      {"gates", "linear"},
      {"gate_use_softmax", false},
      {"add_weight_norm", true},
  };
  for (const auto& [key, value] : refused) {
    Json j = SeedMoe();
    j[key] = value;
    const auto c = Parse(j);
    ASSERT_FALSE(c.ok()) << key;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented) << key;
    EXPECT_THAT(c.status().message(), HasSubstr(std::string("\"") + key + "\""));
    const std::string shown = value.is_string() ? "'" + value.get<std::string>() + "'"
                                                : value.dump();
    EXPECT_THAT(c.status().message(), HasSubstr(shown)) << key;
  }
  Json training = SeedMoe();
  training["gate_add_noise"] = false;
  training["gate_noise_epsilon"] = 0.5;
  training["gate_use_balance"] = false;
  training["gate_balance_loss_weight"] = 3;
  training["capacity_factor"] = 0.5;
  training["drop_tokens"] = false;
  training["dropped_padding"] = "none";
  EXPECT_TRUE(Parse(training).ok()) << Parse(training).status();
}

TEST(ModelConfigTest, RefusesUnsupportedFeaturesByName) {
  Json j = Llama7b();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ExpectError(j, "rope_scaling\" of type 'linear'");
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  ExpectError(j, "of type 'yarn'");
  j = Llama7b();
  j["attention_bias"] = true;
  ExpectError(j, "attention_bias");
  j = Llama7b();
  j["mlp_bias"] = true;
  ExpectError(j, "mlp_bias");
  j = Llama7b();
  j["hidden_act"] = "gelu";
  ExpectError(j, "hidden_act\" 'gelu'");
  j = SeedMoe();
  j["gate_network"] = "linear";
  ExpectError(j, "gate_network");
  j = SeedMoe();
  j["gate_use_softmax"] = false;
  ExpectError(j, "gate_use_softmax");
  j = Llama7b();
  j["mlp_bias"] = true;
  EXPECT_EQ(Parse(j).status().code(), absl::StatusCode::kUnimplemented);
}

TEST(ModelConfigTest, RefusesUnknownModelTypeAndArchitecture) {
  Json j = Llama7b();
  j["model_type"] = "mistral";
  ExpectError(j, "unknown model_type 'mistral'");
  j = Llama7b();
  j["architectures"] = {"MistralForCausalLM"};
  ExpectError(j, "unknown architecture 'MistralForCausalLM'");
  j = SeedMoe();
  j["architectures"] = {"LlamaForCausalLM"};  // disagrees with model_type llama_moe
  ExpectError(j, "unknown architecture 'LlamaForCausalLM'");
  j = Llama7b();
  j["architectures"] = "LlamaForCausalLM";
  ExpectError(j, "\"architectures\" must be a list");
  j = Llama7b();
  j.erase("model_type");
  ExpectError(j, "\"model_type\" is missing");
}

TEST(ModelConfigTest, RefusesMissingKeys) {
  for (const char* key : {"hidden_size", "num_hidden_layers", "num_attention_heads",
                          "vocab_size", "intermediate_size"}) {
    Json j = Llama7b();
    j.erase(key);
    ExpectError(j, std::string("\"") + key + "\" is missing");
  }
  for (const char* key : {"num_experts", "num_selects", "size_experts"}) {
    Json j = SeedMoe();
    j.erase(key);
    ExpectError(j, std::string("\"") + key + "\" is missing");
  }
}

TEST(ModelConfigTest, RefusesBadSizes) {
  Json j = Llama7b();
  j["hidden_size"] = 0;
  ExpectError(j, "\"hidden_size\" must be positive, got 0");
  j = Llama7b();
  j["vocab_size"] = -5;
  ExpectError(j, "\"vocab_size\" must be positive, got -5");
  j = Llama7b();
  j["hidden_size"] = 4100;  // 4100 % 32 != 0
  ExpectError(j, "(4100) is not divisible by num_attention_heads (32)");
  j = Llama7b();
  j["head_dim"] = 127;
  ExpectError(j, "\"head_dim\" (127) must be even for RoPE");
  j = Llama7b();
  j["num_key_value_heads"] = 5;
  ExpectError(j, "(32) is not divisible by num_key_value_heads (5)");
  j = Llama7b();
  j["hidden_size"] = 4096.5;
  ExpectError(j, "\"hidden_size\" must be an integer");
  j = Llama7b();
  j["num_hidden_layers"] = 1e12;
  ExpectError(j, "\"num_hidden_layers\" must be an integer");
  j = Llama7b();
  j["num_hidden_layers"] = 3000000000u;
  ExpectError(j, "\"num_hidden_layers\" is out of range");
  j = Llama7b();
  j["eos_token_id"] = {2, 32000};
  ExpectError(j, "\"eos_token_id\" 32000 is outside the vocabulary");
  j = Llama7b();
  j["eos_token_id"] = "</s>";
  ExpectError(j, "\"eos_token_id\" must be an integer");
  j = Llama7b();
  j["tie_word_embeddings"] = 1;
  ExpectError(j, "\"tie_word_embeddings\" must be true or false");
  j = Llama7b();
  j["rms_norm_eps"] = "1e-6";
  ExpectError(j, "\"rms_norm_eps\" must be a number");
}

TEST(ModelConfigTest, RefusesBadMoeSizes) {
  Json j = SeedMoe();
  j["num_selects"] = 9;
  ExpectError(j, "\"num_selects\" (9) exceeds num_experts (8)");
  j = SeedMoe();
  j["size_experts"] = {std::vector<int>(8, 8192)};  // one layer, config says 2
  ExpectError(j, "\"size_experts\" must be a list of num_hidden_layers (2) lists");
  j = SeedMoe();
  j["size_experts"][1] = std::vector<int>(7, 8192);
  ExpectError(j, "\"size_experts[1]\" must list num_experts (8) sizes");
  j = SeedMoe();
  j["size_experts"][0][3] = 0;
  ExpectError(j, "\"size_experts[0][3]\" must be positive, got 0");
  j = SeedMoe();
  j["size_experts"][0][3] = "big";
  ExpectError(j, "\"size_experts[0][3]\" must be an integer");
}

TEST(ModelConfigTest, BadJsonNamesFileAndPosition) {
  const auto c = ParseModelConfig("{\"model_type\": \"llama\",\n \"hidden_size\": }", kPath);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr(kPath));
  EXPECT_THAT(c.status().message(), HasSubstr("bad JSON"));
  EXPECT_THAT(c.status().message(), HasSubstr("line 2, column 17"));
  const auto not_object = ParseModelConfig("[1, 2]", kPath);
  ASSERT_FALSE(not_object.ok());
  EXPECT_THAT(not_object.status().message(), HasSubstr("not an object"));
  EXPECT_FALSE(ParseModelConfig("", kPath).ok());
}

TEST(ModelConfigTest, LoadModelConfigReadsFolder) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("model_config_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << SeedMoe().dump();
  const auto c = LoadModelConfig(dir.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_experts, 8);
  std::filesystem::remove(dir / "config.json");
  const auto missing = LoadModelConfig(dir.string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr((dir / "config.json").string()));
  std::filesystem::remove_all(dir);
}

// Meta-Llama-3.1-8B-Instruct's config.json keys that matter (tied embeddings from 3.2's).
TEST(ModelConfigTest, ReadsLlama3RopeScalingHeadDimAndEosList) {
  Json j = Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "head_dim": 128,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": true, "vocab_size": 128256})");
  const auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.factor, 8.0f);
  EXPECT_EQ(c->rope_scaling.low_freq_factor, 1.0f);
  EXPECT_EQ(c->rope_scaling.high_freq_factor, 4.0f);
  EXPECT_EQ(c->rope_scaling.original_max_position, 8192.0f);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  j["rope_scaling"].erase("original_max_position_embeddings");
  ExpectError(j, "original_max_position_embeddings");
  j["rope_scaling"]["original_max_position_embeddings"] = 8192;
  j["rope_scaling"]["high_freq_factor"] = 0.5;
  ExpectError(j, "low_freq_factor");
  j["rope_scaling"]["high_freq_factor"] = 4.0;
  j["rope_scaling"]["factor"] = 0.5;
  ExpectError(j, "factor");

  // The llama3 table: the high frequencies unchanged, the low ones divided by the factor.
  kernels::RopeScaling scaling = c->rope_scaling;
  std::vector<float> plain(64), scaled(64);
  kernels::RopeInverseFrequencies(128, 500000.0f, {}, plain.data());
  kernels::RopeInverseFrequencies(128, 500000.0f, scaling, scaled.data());
  EXPECT_EQ(scaled[0], plain[0]);
  EXPECT_EQ(scaled[63], plain[63] / 8.0f);
}

// The committed LLaMA-3-shaped fixture (tests/fixtures/make_llama3_fixture.py): config.json
// says eos 510, its generation_config.json [510, 511].
TEST(ModelConfigTest, Llama3FixtureTakesGenerationConfigEos) {
  const auto c = LoadModelConfig(SPECMOE_FIXTURES "/models/llama3_tiny");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{510, 511}));
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->rope_scaling.factor, 8.0f);
  EXPECT_EQ(c->rope_scaling.original_max_position, 64.0f);
}

TEST(ModelConfigTest, GenerationConfigEosListWins) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("model_config_gen_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << Llama7b().dump();
  std::ofstream(dir / "generation_config.json")
      << R"({"bos_token_id": 1, "eos_token_id": [2, 7], "do_sample": true})";
  auto c = LoadModelConfig(dir.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{2, 7}));
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": [2, 32000]})";
  c = LoadModelConfig(dir.string());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("generation_config.json"));
  EXPECT_THAT(c.status().message(), HasSubstr("32000 is outside the vocabulary"));
  std::ofstream(dir / "generation_config.json") << "[1, 2";
  EXPECT_THAT(LoadModelConfig(dir.string()).status().message(), HasSubstr("not a JSON object"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace specmoe::engine
