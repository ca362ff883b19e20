// tests/model_logits.cc — a model folder's logits for a token sequence, for tests written in
// Python (tests/gguf_import_test.py). Usage:
//   model_logits <model_dir> <ids, comma-separated> <out.f32> [text]
// Writes the causal forward's logits [T, vocab] (little-endian float32) to out.f32 on the CPU
// backend; with `text`, also loads the folder's tokenizer and prints Encode(text, false) as a
// JSON list of ids on stdout. Exit status 1 with a message on any failure.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/loader/model_config.h"
#include "engine/loader/weights.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "engine/text/tokenizer.h"
#include "kernels/backend.h"

namespace specmoe::engine {
namespace {

int Fail(const std::string& what) {
  std::cerr << "model_logits: " << what << "\n";
  return 1;
}

int Main(const std::string& dir, const std::string& ids_text, const std::string& out_path,
         const std::string* text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(ids_text, ',')) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(part, &id)) return Fail("bad id list");
    ids.push_back(id);
  }
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  if (!config.ok()) return Fail(std::string(config.status().message()));
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::Open(dir);
  if (!store.ok()) return Fail(std::string(store.status().message()));
  absl::StatusOr<ModelWeights> weights = BindModelWeights(*config, **store);
  if (!weights.ok()) return Fail(std::string(weights.status().message()));
  std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend(2);
  const int slots = static_cast<int>(ids.size());
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Create(*config, *weights, backend.get(), std::max(slots, 64));
  if (!model.ok()) return Fail(std::string(model.status().message()));
  absl::StatusOr<std::unique_ptr<KvCache>> cache =
      KvCache::Create(backend.get(), config->num_layers, (*model)->kv_row(), 16, (slots + 15) / 16);
  if (!cache.ok()) return Fail(std::string(cache.status().message()));
  SequenceBlocks blocks;
  if (absl::Status s = (*cache)->Reserve(blocks, slots); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  ForwardBatch batch;
  for (int pos = 0; pos < slots; ++pos) {
    if (ids[pos] < 0 || ids[pos] >= config->vocab_size) return Fail("id outside the vocabulary");
    batch.Add(ids[pos], pos, (*cache)->PhysicalSlot(blocks, pos), 0, pos + 1, 0);
    batch.logit_rows.push_back(pos);
  }
  batch.SetBlockTables({&blocks});
  std::vector<float> logits(static_cast<size_t>(slots) * config->vocab_size);
  (*model)->Forward(batch, **cache, logits.data());
  std::ofstream out(out_path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(float));
  if (!out.good()) return Fail("cannot write " + out_path);

  if (text != nullptr) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir);
    if (!tokenizer.ok()) return Fail(std::string(tokenizer.status().message()));
    std::cout << "[" << absl::StrJoin((*tokenizer)->Encode(*text, false), ",") << "]\n";
  }
  return 0;
}

}  // namespace
}  // namespace specmoe::engine

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: model_logits <model_dir> <ids,...> <out.f32> [text]\n");
    return 2;
  }
  const std::string text = argc == 5 ? argv[4] : "";
  return specmoe::engine::Main(argv[1], argv[2], argv[3], argc == 5 ? &text : nullptr);
}
