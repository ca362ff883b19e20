// tests/weights_test.cc — WeightStore / BindModelWeights (engine/loader/weights.h), the safetensors
// and torch.save readers, and the start-up checks: one test per loader
// error (missing, unexpected, wrong shape, unsupported dtype, truncated, corrupt header, bad
// JSON, unknown architecture, unsupported config feature, different vocabularies, too large
// for memory), each checking the message names the file and the tensor or field.
// Fixtures: tests/fixtures/loader/ from tests/fixtures/make_loader_fixtures.py (torch.save
// output); safetensors inputs are also written here by a small writer.
#include "engine/loader/weights.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/loader/mapped_file.h"
#include "engine/loader/memory_check.h"
#include "engine/loader/model_config.h"
#include "engine/loader/safetensors.h"
#include "engine/loader/torch_pickle.h"
#include "engine/text/tokenizer.h"
#include "engine/text/vocab_check.h"
#include "kernels/cpu/f16.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace specmoe::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using Json = nlohmann::json;
using kernels::DType;

const std::string kLoader = std::string(SPECMOE_FIXTURES) + "/loader";

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// A fresh directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("weights_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A tensor to write: dtype in safetensors spelling, shape, and the element byte size.
struct FakeTensor {
  std::string dtype = "F32";
  std::vector<int64_t> shape;
};

size_t ElementBytes(const std::string& dtype) { return dtype == "F32" ? 4 : dtype == "I64" ? 8 : 2; }

// 8-byte little-endian header length, header, buffer.
std::string HeaderThenData(const std::string& header, const std::string& buffer) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + buffer;
}

// Writes a safetensors file: 8-byte little-endian header length, JSON header, data buffer.
// Element i of each tensor holds (float)(i + 1) for F32 and its low bytes otherwise.
std::string SafetensorsBytes(const std::map<std::string, FakeTensor>& tensors) {
  Json header = Json::object();
  std::string buffer;
  for (const auto& [name, t] : tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    const size_t begin = buffer.size();
    for (int64_t i = 0; i < numel; ++i) {
      const float v = static_cast<float>(i + 1);
      char bytes[8] = {};
      std::memcpy(bytes, &v, sizeof(v));
      buffer.append(bytes, ElementBytes(t.dtype));
    }
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {begin, buffer.size()}}};
  }
  header["__metadata__"] = {{"format", "pt"}};
  return HeaderThenData(header.dump(), buffer);
}

// The tensors BindModelWeights expects for `config` (f32 everywhere).
std::map<std::string, FakeTensor> ModelTensors(const ModelConfig& c) {
  std::map<std::string, FakeTensor> t;
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  t["model.embed_tokens.weight"].shape = {c.vocab_size, h};
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t[p + "self_attn.q_proj.weight"].shape = {q, h};
    t[p + "self_attn.k_proj.weight"].shape = {kv, h};
    t[p + "self_attn.v_proj.weight"].shape = {kv, h};
    t[p + "self_attn.o_proj.weight"].shape = {h, q};
    t[p + "input_layernorm.weight"].shape = {h};
    t[p + "post_attention_layernorm.weight"].shape = {h};
    if (c.architecture == Architecture::kLlama) {
      t[p + "mlp.gate_proj.weight"].shape = {c.intermediate_size, h};
      t[p + "mlp.up_proj.weight"].shape = {c.intermediate_size, h};
      t[p + "mlp.down_proj.weight"].shape = {h, c.intermediate_size};
    } else {
      t[p + "mlp.gate.gate_network.0.weight"].shape = {c.num_experts, h};
      t[p + "mlp.gate.gate_network.2.weight"].shape = {c.num_experts, c.num_experts};
      for (int e = 0; e < c.num_experts; ++e) {
        const std::string x = p + "mlp.calculator.experts.";
        const int64_t size = c.size_experts[i][e];
        t[x + "weight_gate." + std::to_string(e)].shape = {size, h};
        t[x + "weight_up." + std::to_string(e)].shape = {size, h};
        t[x + "weight_down." + std::to_string(e)].shape = {h, size};
      }
    }
  }
  t["model.norm.weight"].shape = {h};
  if (!c.tie_word_embeddings) t["lm_head.weight"].shape = {c.vocab_size, h};
  return t;
}

Json TinyLlamaConfig() {
  return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 8},
          {"intermediate_size", 12}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
          {"num_key_value_heads", 1}, {"vocab_size", 16}};
}

Json TinyMoeConfig() {
  return {{"architectures", {"LlamaMoEForCausalLM"}}, {"model_type", "llama_moe"},
          {"hidden_size", 8}, {"num_hidden_layers", 1}, {"num_attention_heads", 2},
          {"vocab_size", 16}, {"num_experts", 2}, {"num_selects", 1},
          {"size_experts", {{4, 6}}}, {"score_scale_factor", 4.0}};
}

// Writes config.json + model.safetensors into `dir`, with `edit` applied to the tensors.
ModelConfig WriteModel(const TempDir& dir, const Json& config,
                       const std::function<void(std::map<std::string, FakeTensor>&)>& edit = {}) {
  WriteFile(dir.file("config.json"), config.dump());
  auto parsed = ParseModelConfig(config.dump(), "config.json");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  auto tensors = ModelTensors(*parsed);
  if (edit) edit(tensors);
  WriteFile(dir.file("model.safetensors"), SafetensorsBytes(tensors));
  return *parsed;
}

// Opens and binds `dir` the way the server does; returns the first error.
absl::Status LoadAndBind(const std::string& dir) {
  auto config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  auto store = WeightStore::Open(dir);
  if (!store.ok()) return store.status();
  return BindModelWeights(*config, **store).status();
}

// ---- Formats and equivalence -------------------------------------------------------------

absl::StatusOr<std::vector<TensorInfo>> ParseFile(const MappedFile& f, bool torch) {
  return torch ? ParseTorchCheckpoint(f.data(), f.size(), f.path())
               : ParseSafetensors(f.data(), f.size(), f.path());
}

// Both files hold the same names, dtypes, shapes and bytes.
void ExpectSameTensors(const std::string& bin_path, const std::string& st_path) {
  auto bin_file = MappedFile::Open(bin_path);
  auto st_file = MappedFile::Open(st_path);
  ASSERT_TRUE(bin_file.ok() && st_file.ok());
  auto bin = ParseFile(**bin_file, true);
  auto st = ParseFile(**st_file, false);
  ASSERT_TRUE(bin.ok()) << bin.status();
  ASSERT_TRUE(st.ok()) << st.status();
  std::map<std::string, const TensorInfo*> by_name;
  for (const TensorInfo& t : *st) by_name[t.name] = &t;
  ASSERT_EQ(bin->size(), st->size());
  for (const TensorInfo& t : *bin) {
    SCOPED_TRACE(t.name);
    ASSERT_TRUE(by_name.contains(t.name));
    const TensorInfo& s = *by_name[t.name];
    EXPECT_EQ(t.dtype, s.dtype);
    EXPECT_EQ(t.shape, s.shape);
    ASSERT_EQ(t.bytes, s.bytes);
    EXPECT_EQ(std::memcmp(t.data, s.data, t.bytes), 0);
    EXPECT_EQ(t.file, bin_path);
  }
}

TEST(TorchCheckpointTest, MatchesSafetensorsTwinInEveryDtype) {
  for (const char* tag : {"f32", "f16", "bf16"}) {
    SCOPED_TRACE(tag);
    const std::string dir = kLoader + "/dtype_" + tag;
    ExpectSameTensors(dir + "/pytorch_model.bin", dir + "/twin.safetensors");
  }
}

TEST(TorchCheckpointTest, F32ValuesAndStorageOffset) {
  const std::string path = kLoader + "/dtype_f32/pytorch_model.bin";
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto tensors = ParseFile(**file, true);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  std::map<std::string, TensorInfo> by_name;
  for (const TensorInfo& t : *tensors) by_name[t.name] = t;
  // matrix = arange(12) * 0.5 - 2 as [3, 4]; row2 = matrix[2], a view at storage offset 8.
  const TensorInfo& m = by_name.at("matrix");
  EXPECT_EQ(m.dtype, DType::kF32);
  EXPECT_EQ(m.shape, (std::vector<int64_t>{3, 4}));
  std::vector<float> values(12);
  std::memcpy(values.data(), m.data, 48);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(values[i], i * 0.5f - 2.0f);
  const TensorInfo& row2 = by_name.at("row2");
  EXPECT_EQ(row2.shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(static_cast<const char*>(row2.data), static_cast<const char*>(m.data) + 32);
  EXPECT_EQ(by_name.at("empty").shape, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(by_name.at("empty").bytes, 0u);
  EXPECT_EQ(by_name.at("scalar_like").shape, (std::vector<int64_t>{1, 1}));
}

TEST(TorchCheckpointTest, Zip64ArchiveReadsLikeTheOriginal) {
  ExpectSameTensors(kLoader + "/zip64/pytorch_model.bin", kLoader + "/dtype_f32/twin.safetensors");
}

TEST(TorchCheckpointTest, CompressedEntryIsRefusedByName) {
  const std::string path = kLoader + "/compressed/pytorch_model.bin";
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto tensors = ParseFile(**file, true);
  ASSERT_FALSE(tensors.ok());
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Msg(tensors.status()), HasSubstr(path));
  EXPECT_THAT(Msg(tensors.status()), HasSubstr("zip entry 'pytorch_model/data.pkl' is compressed (method 8)"));
}

TEST(TorchCheckpointTest, NonContiguousTensorIsRefused) {
  const std::string path = kLoader + "/noncontiguous/pytorch_model.bin";
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto tensors = ParseFile(**file, true);
  ASSERT_FALSE(tensors.ok());
  EXPECT_THAT(Msg(tensors.status()), HasSubstr(path));
  EXPECT_THAT(Msg(tensors.status()),
              HasSubstr("tensor 'transposed' in data.pkl is not contiguous (size [3, 2], stride [1, 3])"));
}

TEST(TorchCheckpointTest, LegacyFormatIsRefusedByName) {
  const std::string path = kLoader + "/legacy/pytorch_model.bin";
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto tensors = ParseFile(**file, true);
  ASSERT_FALSE(tensors.ok());
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Msg(tensors.status()),
              HasSubstr(path + ": legacy (pre-1.6, non-zip) torch.save format is not supported"));
}

TEST(LoaderErrorTest, UnsupportedDtypeInTorchCheckpoint) {
  const std::string path = kLoader + "/int64/pytorch_model.bin";
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto tensors = ParseFile(**file, true);
  ASSERT_FALSE(tensors.ok());
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Msg(tensors.status()), HasSubstr(path));
  EXPECT_THAT(Msg(tensors.status()),
              HasSubstr("tensor 'ids' has unsupported storage type torch.LongStorage"));
}

// The tiny LLaMA of the fixture script as .bin, sharded .bin, safetensors and sharded
// safetensors: the same tensors, bound the same way (f16 linear layers, f32 norms, GQA).
TEST(WeightStoreTest, AllFourFormatsBindToIdenticalBytes) {
  std::map<std::string, std::map<std::string, std::string>> contents;  // format -> name -> bytes
  for (const char* format : {"llama_bin", "llama_bin_sharded", "llama_st", "llama_st_sharded"}) {
    SCOPED_TRACE(format);
    const std::string dir = kLoader + "/" + format;
    auto config = LoadModelConfig(dir);
    ASSERT_TRUE(config.ok()) << config.status();
    auto store = WeightStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    auto weights = BindModelWeights(*config, **store);
    ASSERT_TRUE(weights.ok()) << weights.status();
    EXPECT_EQ(weights->dtype, DType::kF16);
    ASSERT_EQ(weights->layers.size(), 2u);
    const LayerWeights& l = weights->layers[1];
    EXPECT_EQ(l.k_proj.rows, 4);  // 1 KV head of head_dim 4
    EXPECT_EQ(l.k_proj.cols, 8);
    EXPECT_EQ(l.q_proj.rows, 8);
    EXPECT_EQ(l.mlp.down.rows, 8);
    EXPECT_EQ(l.mlp.down.cols, 12);
    EXPECT_EQ(l.input_norm.dtype, DType::kF32);
    EXPECT_EQ(l.input_norm.rows, 1);
    EXPECT_EQ(l.input_norm.cols, 8);
    EXPECT_EQ(weights->lm_head.rows, 16);
    EXPECT_NE(weights->lm_head.data, weights->embed_tokens.data);
    // 2 layers x (4 attn + 3 mlp + 2 norms + inv_freq) + embed + norm + lm_head.
    EXPECT_EQ((*store)->tensors().size(), 23u);
    for (const auto& [name, info] : (*store)->tensors()) {
      contents[format][name].assign(static_cast<const char*>(info.data), info.bytes);
    }
  }
  EXPECT_EQ(contents["llama_bin"], contents["llama_st"]);
  EXPECT_EQ(contents["llama_bin_sharded"], contents["llama_st"]);
  EXPECT_EQ(contents["llama_st_sharded"], contents["llama_st"]);
}

TEST(WeightStoreTest, PrefersSafetensorsWhenBothFormsExist) {
  TempDir dir;
  fs::copy(kLoader + "/llama_bin", dir.path(), fs::copy_options::recursive);
  fs::copy(kLoader + "/llama_st/model.safetensors", dir.file("model.safetensors"));
  auto store = WeightStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->tensors().at("lm_head.weight").file, dir.file("model.safetensors"));
  EXPECT_GT((*store)->total_bytes(), 0u);
}

TEST(WeightStoreTest, MoeCheckpointFromTorchSave) {
  const std::string dir = kLoader + "/moe_bin";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto store = WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  auto weights = BindModelWeights(*config, **store);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->dtype, DType::kF32);
  ASSERT_EQ(weights->layers.size(), 2u);
  const LayerWeights& l = weights->layers[1];
  EXPECT_EQ(l.gate_w1.rows, 3);
  EXPECT_EQ(l.gate_w1.cols, 8);
  EXPECT_EQ(l.gate_w2.rows, 3);
  EXPECT_EQ(l.gate_w2.cols, 3);
  ASSERT_EQ(l.experts.size(), 3u);
  // size_experts[1] = [16, 12, 8].
  EXPECT_EQ(l.experts[0].gate.rows, 16);
  EXPECT_EQ(l.experts[2].up.rows, 8);
  EXPECT_EQ(l.experts[2].down.rows, 8);
  EXPECT_EQ(l.experts[2].down.cols, 8);
  EXPECT_EQ(l.experts[1].down.cols, 12);
  EXPECT_EQ(l.experts[1].down.data,
            (*store)->tensors().at("model.layers.1.mlp.calculator.experts.weight_down.1").data);
}

TEST(WeightStoreTest, TiedEmbeddingsWithAndWithoutLmHead) {
  Json config = TinyLlamaConfig();
  config["tie_word_embeddings"] = true;
  TempDir without;
  WriteModel(without, config);
  EXPECT_TRUE(LoadAndBind(without.path()).ok());
  auto store = WeightStore::Open(without.path());
  ASSERT_TRUE(store.ok());
  auto weights = BindModelWeights(*ParseModelConfig(config.dump(), "c"), **store);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->lm_head.data, weights->embed_tokens.data);
  TempDir with;
  WriteModel(with, config, [](auto& t) { t["lm_head.weight"].shape = {16, 8}; });
  EXPECT_TRUE(LoadAndBind(with.path()).ok()) << LoadAndBind(with.path());
}

// --dtype: every view converted once (a tied lm_head shares the embedding's copy), each value
// rounded the way kernels/cpu/f16.h rounds, and widening back exact.
TEST(WeightStoreTest, ConvertWeightsRoundsEveryViewOnce) {
  Json config = TinyLlamaConfig();
  config["tie_word_embeddings"] = true;
  TempDir dir;
  WriteModel(dir, config);
  auto store = WeightStore::Open(dir.path());
  ASSERT_TRUE(store.ok());
  auto weights = BindModelWeights(*ParseModelConfig(config.dump(), "c"), **store);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights original = *weights;
  std::vector<std::unique_ptr<uint8_t[]>> owned;
  ConvertWeights(kernels::DType::kF16, *weights, owned);
  EXPECT_EQ(weights->dtype, kernels::DType::kF16);
  EXPECT_EQ(weights->lm_head.data, weights->embed_tokens.data);
  int views = 0;
  ForEachWeight(*weights, [&](kernels::Weight&) { ++views; });
  EXPECT_EQ(static_cast<int>(owned.size()), views - 1);  // the tied head is not copied twice

  std::vector<kernels::Weight> before, after;
  ModelWeights copy = original;
  ForEachWeight(copy, [&](kernels::Weight& w) { before.push_back(w); });
  ForEachWeight(*weights, [&](kernels::Weight& w) { after.push_back(w); });
  ASSERT_EQ(before.size(), after.size());
  for (size_t i = 0; i < before.size(); ++i) {
    ASSERT_EQ(after[i].dtype, kernels::DType::kF16);
    std::vector<float> src(before[i].cols), got(before[i].cols);
    for (int64_t r = 0; r < before[i].rows; ++r) {
      kernels::WidenRow(before[i], r, src.data());
      kernels::WidenRow(after[i], r, got.data());
      for (int64_t c = 0; c < before[i].cols; ++c) {
        const float want = kernels::F16ToF32(kernels::F32ToF16(src[c]));
        ASSERT_TRUE(std::memcmp(&got[c], &want, 4) == 0) << i << " " << r << " " << c;
      }
    }
  }
  std::vector<std::unique_ptr<uint8_t[]>> back;
  ModelWeights widened = *weights;
  ConvertWeights(kernels::DType::kF32, widened, back);
  ForEachWeight(widened, [&](kernels::Weight& w) { EXPECT_EQ(w.dtype, kernels::DType::kF32); });
}

// The file-backed resident memory of this process (RssFile of /proc/self/status), in kB.
int64_t ResidentFileKb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("RssFile:", 0) == 0) return std::stoll(line.substr(8));
  }
  return -1;
}

// The linear views (what a backend's PrepareLinear takes) are told apart from the embedding
// and norms; DropPages gives back a touched tensor's mapped pages and its data stays readable
// (re-read from the file); a range outside the store's mappings is left alone.
TEST(WeightStoreTest, LinearViewsAndDroppingMappedPages) {
  Json config = TinyLlamaConfig();
  config["vocab_size"] = 65536;  // embed_tokens and lm_head: 2 MiB each
  TempDir dir;
  WriteModel(dir, config);
  auto store = WeightStore::Open(dir.path());
  ASSERT_TRUE(store.ok());
  auto weights = BindModelWeights(*ParseModelConfig(config.dump(), "c"), **store);
  ASSERT_TRUE(weights.ok()) << weights.status();
  int linear = 0, other = 0;
  ForEachWeight(*weights,
                [&](kernels::Weight&, bool is_linear) { ++(is_linear ? linear : other); });
  EXPECT_EQ(linear, 2 * 7 + 1);  // q, k, v, o, gate, up, down per layer; lm_head
  EXPECT_EQ(other, 2 + 2 * 2);   // embedding, final norm; two norms per layer

  const kernels::Weight head = weights->lm_head;
  const float* values = static_cast<const float*>(head.data);
  const int64_t count = head.rows * head.cols;
  double sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += values[i];  // touch every page
  const int64_t before = ResidentFileKb();
  ASSERT_GT(before, 0);
  (*store)->DropPages(head.data, head.bytes());
  const int64_t after = ResidentFileKb();
  EXPECT_LE(after, before - 1900) << "RssFile " << before << " kB -> " << after << " kB";
  for (int64_t i = 0; i < count; ++i) {
    ASSERT_EQ(values[i], static_cast<float>(i + 1)) << i;  // the file's values, re-read
  }
  std::vector<float> heap(1 << 20, 3.0f);
  (*store)->DropPages(heap.data(), heap.size() * sizeof(float));
  for (float v : heap) ASSERT_EQ(v, 3.0f);
  EXPECT_GT(sum, 0);
}

TEST(WeightStoreTest, SyntheticMoeWithIgnoredBuffers) {
  TempDir dir;
  WriteModel(dir, TinyMoeConfig(), [](auto& t) {
    t["model.layers.0.mlp.gate.weight_noise.weight"].shape = {2, 8};
    t["model.layers.0.self_attn.rotary_emb.inv_freq"].shape = {2};
  });
  EXPECT_TRUE(LoadAndBind(dir.path()).ok()) << LoadAndBind(dir.path());
}

// ---- One test per loader error ------------------------------------------------------------

TEST(LoaderErrorTest, MissingTensor) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig(),
             [](auto& t) { t.erase("model.layers.1.post_attention_layernorm.weight"); });
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("model.safetensors")));
  EXPECT_THAT(Msg(s), HasSubstr(
      "missing tensor 'model.layers.1.post_attention_layernorm.weight' (expected shape [8])"));
}

TEST(LoaderErrorTest, MissingMoeExpert) {
  TempDir dir;
  WriteModel(dir, TinyMoeConfig(),
             [](auto& t) { t.erase("model.layers.0.mlp.calculator.experts.weight_down.1"); });
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("model.safetensors")));
  EXPECT_THAT(Msg(s), HasSubstr(
      "missing tensor 'model.layers.0.mlp.calculator.experts.weight_down.1' (expected shape [8, 6])"));
}

TEST(LoaderErrorTest, UnexpectedTensor) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig(),
             [](auto& t) { t["model.layers.2.self_attn.q_proj.weight"].shape = {8, 8}; });
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("model.safetensors")));
  EXPECT_THAT(Msg(s), HasSubstr("unexpected tensor 'model.layers.2.self_attn.q_proj.weight'"));
}

TEST(LoaderErrorTest, WeightNoiseIsOnlyIgnoredInMoe) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig(),
             [](auto& t) { t["model.layers.0.mlp.gate.weight_noise.weight"].shape = {2, 8}; });
  EXPECT_THAT(Msg(LoadAndBind(dir.path())),
              HasSubstr("unexpected tensor 'model.layers.0.mlp.gate.weight_noise.weight'"));
}

TEST(LoaderErrorTest, WrongShape) {
  TempDir dir;
  // GQA: k_proj must be [1 * 4, 8]; a [8, 8] k_proj is an MHA checkpoint.
  WriteModel(dir, TinyLlamaConfig(),
             [](auto& t) { t["model.layers.0.self_attn.k_proj.weight"].shape = {8, 8}; });
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("model.safetensors")));
  EXPECT_THAT(Msg(s), HasSubstr(
      "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [8, 8], expected [4, 8]"));
}

TEST(LoaderErrorTest, UnsupportedDtype) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig(),
             [](auto& t) { t["model.embed_tokens.weight"].dtype = "I64"; });
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("model.safetensors")));
  EXPECT_THAT(Msg(s), HasSubstr("tensor 'model.embed_tokens.weight' has unsupported dtype I64"));
}

TEST(LoaderErrorTest, MixedLinearDtypes) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig(),
             [](auto& t) { t["model.layers.1.mlp.up_proj.weight"].dtype = "BF16"; });
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("model.safetensors")));
  EXPECT_THAT(Msg(s), HasSubstr("tensor 'model.layers.1.mlp.up_proj.weight' has dtype BF16 but "
                                "the linear layers are F32"));
}

TEST(LoaderErrorTest, NormsMayHaveTheirOwnDtype) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig(), [](auto& t) { t["model.norm.weight"].dtype = "BF16"; });
  EXPECT_TRUE(LoadAndBind(dir.path()).ok());
}

TEST(LoaderErrorTest, TruncatedSafetensors) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig());
  const std::string bytes = ReadFile(dir.file("model.safetensors"));
  WriteFile(dir.file("model.safetensors"), bytes.substr(0, bytes.size() - 10));
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("model.safetensors")));
  // Tensors are laid out in name order: lm_head.weight is not last, model.norm.weight is.
  EXPECT_THAT(Msg(s), HasSubstr("truncated safetensors file: tensor 'model.norm.weight' ends at"));
  WriteFile(dir.file("model.safetensors"), bytes.substr(0, 5));
  EXPECT_THAT(Msg(LoadAndBind(dir.path())), HasSubstr("truncated safetensors file: 5 bytes"));
  WriteFile(dir.file("model.safetensors"), bytes.substr(0, 100));
  EXPECT_THAT(Msg(LoadAndBind(dir.path())), HasSubstr("truncated safetensors file: header of"));
}

TEST(LoaderErrorTest, TruncatedTorchCheckpoint) {
  TempDir dir;
  fs::copy(kLoader + "/llama_bin/config.json", dir.file("config.json"));
  const std::string bytes = ReadFile(kLoader + "/llama_bin/pytorch_model.bin");
  WriteFile(dir.file("pytorch_model.bin"), bytes.substr(0, bytes.size() / 2));
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("pytorch_model.bin") +
                                ": truncated or not a zip archive"));
  // Cut inside a storage but keep the central directory: the entry runs past the end.
  auto mapped = MappedFile::Open(kLoader + "/llama_bin/pytorch_model.bin");
  ASSERT_TRUE(mapped.ok());
  auto entries = ParseZipDirectory((*mapped)->data(), (*mapped)->size(), "x");
  ASSERT_TRUE(entries.ok());
  EXPECT_THAT(entries->size(), testing::Ge(23u));
  const ZipEntry& storage = (*entries)[entries->size() / 2];
  std::string cut = bytes;
  cut.erase(storage.data_offset, storage.size);
  WriteFile(dir.file("pytorch_model.bin"), cut);
  // torch.save always writes ZIP64 end records, whose offsets no longer match.
  EXPECT_THAT(Msg(LoadAndBind(dir.path())),
              HasSubstr(dir.file("pytorch_model.bin") +
                        ": corrupt zip archive: bad ZIP64 end-of-central-directory record"));
}

TEST(LoaderErrorTest, CorruptSafetensorsHeader) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig());
  const std::string path = dir.file("model.safetensors");
  const auto expect = [&](const std::string& header, const std::string& buffer,
                          const std::string& needle) {
    WriteFile(path, HeaderThenData(header, buffer));
    const absl::Status s = LoadAndBind(dir.path());
    EXPECT_THAT(Msg(s), HasSubstr(path + ": ")) << header;
    EXPECT_THAT(Msg(s), HasSubstr(needle)) << header;
  };
  const std::string buf(64, '\0');
  expect(R"({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", buf,
         "tensor 'a' has shape [2, 2] of F32 but data_offsets span 12 bytes");
  expect(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", buf,
         "tensor 'b' overlaps tensor 'a'");
  expect(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", buf,
         "tensor 'a' has data_offsets that are not 0 <= begin <= end");
  expect(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", buf,
         "tensor 'a' has a shape entry that is not a non-negative integer");
  expect(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 0]}})",
         buf, "tensor 'a' has shape [4294967296, 4294967296, 4] of F32 but data_offsets span 0");
  expect(R"({"a": {"shape": [2], "data_offsets": [0, 8]}})", buf,
         "tensor 'a' has no string \"dtype\"");
  expect(R"([1, 2])", buf, "corrupt safetensors header: not a JSON object");
  std::string huge(8, '\xff');
  WriteFile(path, huge + "{}");
  EXPECT_THAT(Msg(LoadAndBind(dir.path())), HasSubstr("exceeds the 100 MB limit"));
}

TEST(LoaderErrorTest, BadJsonInSafetensorsHeader) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig());
  WriteFile(dir.file("model.safetensors"), HeaderThenData(R"({"a": {"dtype": "F32",)", ""));
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("model.safetensors") +
                                ": corrupt safetensors header: bad JSON"));
  EXPECT_THAT(Msg(s), HasSubstr("column 23"));
}

TEST(LoaderErrorTest, BadJsonInConfig) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig());
  WriteFile(dir.file("config.json"), "{\"model_type\": \"llama\", }");
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("config.json") + ": bad JSON"));
  EXPECT_THAT(Msg(s), HasSubstr("column 25"));
}

TEST(LoaderErrorTest, BadJsonInShardIndex) {
  TempDir dir;
  fs::copy(kLoader + "/llama_st_sharded", dir.path(), fs::copy_options::recursive);
  WriteFile(dir.file("model.safetensors.index.json"), "{\"weight_map\": {\"a\": ");
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("model.safetensors.index.json") + ": bad JSON"));
}

TEST(LoaderErrorTest, ShardIndexDisagreesWithShards) {
  TempDir dir;
  fs::copy(kLoader + "/llama_bin_sharded", dir.path(), fs::copy_options::recursive);
  Json index = Json::parse(ReadFile(dir.file("pytorch_model.bin.index.json")));
  index["weight_map"]["model.norm.weight"] = "pytorch_model-00001-of-00002.bin";
  WriteFile(dir.file("pytorch_model.bin.index.json"), index.dump());
  EXPECT_THAT(Msg(LoadAndBind(dir.path())),
              HasSubstr("tensor 'model.norm.weight' is indexed in "
                        "pytorch_model-00001-of-00002.bin but that file does not hold it"));
  index["weight_map"]["model.norm.weight"] = "pytorch_model-00003-of-00002.bin";
  WriteFile(dir.file("pytorch_model.bin.index.json"), index.dump());
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("pytorch_model-00003-of-00002.bin") + ": cannot open"));
}

TEST(LoaderErrorTest, NoWeights) {
  TempDir dir;
  WriteFile(dir.file("config.json"), TinyLlamaConfig().dump());
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr(dir.path() + ": no weights found"));
}

TEST(LoaderErrorTest, UnknownArchitecture) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig());
  Json config = TinyLlamaConfig();
  config["architectures"] = {"GPTNeoXForCausalLM"};
  WriteFile(dir.file("config.json"), config.dump());
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("config.json") +
                                ": unknown architecture 'GPTNeoXForCausalLM'"));
}

TEST(LoaderErrorTest, UnsupportedConfigFeature) {
  TempDir dir;
  WriteModel(dir, TinyLlamaConfig());
  Json config = TinyLlamaConfig();
  config["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 8.0}};
  WriteFile(dir.file("config.json"), config.dump());
  const absl::Status s = LoadAndBind(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Msg(s), HasSubstr(dir.file("config.json") +
                                ": \"rope_scaling\" of type 'dynamic' (only 'llama3' is "
                                "implemented) is not supported"));
}

TEST(LoaderErrorTest, DifferentVocabularies) {
  EXPECT_TRUE(CheckSameVocabulary(32000, 32000, nullptr, nullptr).ok());
  const absl::Status sizes = CheckSameVocabulary(32000, 32001, nullptr, nullptr);
  EXPECT_EQ(sizes.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(sizes), HasSubstr("target vocab_size 32000, draft vocab_size 32001"));
  const std::vector<std::string> target = {"<unk>", "<s>", "</s>", "\xe2\x96\x81the"};
  std::vector<std::string> draft = target;
  EXPECT_TRUE(CheckSameVocabulary(4, 4, &target, &draft).ok());
  EXPECT_TRUE(CheckSameVocabulary(4, 4, &target, nullptr).ok());  // draft has no tokenizer.model
  draft[2] = "<pad>";
  EXPECT_THAT(Msg(CheckSameVocabulary(4, 4, &target, &draft)),
              HasSubstr("first at token id 2: target '</s>', draft '<pad>'"));
  draft = target;
  draft.pop_back();
  EXPECT_THAT(Msg(CheckSameVocabulary(4, 4, &target, &draft)),
              HasSubstr("target's has 4 pieces, draft's has 3"));
}

TEST(LoaderErrorTest, ModelTooLargeForMemory) {
  const absl::Status s = CheckFitsInMemory(13'476'839'424, 8'000'000'000, "target /models/llama-7b");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(s), HasSubstr("target /models/llama-7b does not fit in memory: its weights "
                                "need 13.48 GB but this machine has 8.00 GB of physical memory"));
  EXPECT_TRUE(CheckFitsInMemory(1000, 1000, "x").ok());
  EXPECT_GT(PhysicalMemoryBytes(), 0u);
  EXPECT_TRUE(CheckFitsInMemory(1 << 20, "tiny").ok());
  EXPECT_FALSE(CheckFitsInMemory(PhysicalMemoryBytes() + 1, "huge").ok());
}

// The distilled draft the quickstart serves with SmolLM2 (deploy/demo/smollm2-moe-draft,
// engine/README.md "A distilled draft for SmolLM2"): it loads as the LLaMA-MoE it claims to be,
// every tensor bound, in f16, within 40 MB, with SmolLM2's 49152-token byte-level BPE.
TEST(ShippedDraftTest, SmolLM2DraftLoads) {
  const std::string dir = std::string(SPECMOE_FIXTURES) + "/../../deploy/demo/smollm2-moe-draft";
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, Architecture::kLlamaMoe);
  EXPECT_EQ(config->num_experts, 8);
  EXPECT_EQ(config->num_selects, 2);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_EQ(config->vocab_size, 49152);
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_LE((*store)->total_bytes(), 40u * 1000 * 1000);
  absl::StatusOr<ModelWeights> weights = BindModelWeights(*config, **store);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->dtype, DType::kF16);
  EXPECT_EQ(weights->layers.size(), static_cast<size_t>(config->num_layers));
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), 49152);
}

}  // namespace
}  // namespace specmoe::engine
