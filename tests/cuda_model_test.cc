// tests/cuda_model_test.cc — whole forwards and speculation on the CUDA backend (label cuda).
//
// Skips at run time when no CUDA device is visible (kernels/README.md). On a GPU:
//  - every golden model (tests/fixtures/golden: transformers' LlamaForCausalLM and the
//    PyTorch reference of the MoE) gives the reference's logits on the CUDA backend, for the
//    whole prompt in one forward and one token at a time through the KV cache. One token at a
//    time runs the recorded path (CUDA graphs): the first forward of a bucket runs eagerly,
//    the second records, the rest replay, so the replays are checked against the reference
//    too, and against forwards with recording off;
//  - the same logits on the CUDA and on the CPU backend;
//  - the same forward twice gives the same bits (the GPU is deterministic, backend.h);
//  - a model and cache destroyed and made again on one backend record afresh (recordings are
//    keyed by never-reused ids and dropped with their model);
//  - greedy speculative output on the GPU equals plain greedy output on the GPU for several
//    tree shapes up to the first near-tie of plain's top-1/top-2 logits, and plain greedy on
//    the GPU equals the CPU's tokens wherever the CPU's top-1/top-2 margin is clear
//    (backend.h: cuBLAS is not batch-invariant, so a near-tie may go either way; the
//    comparisons stop at the first such position). Plain greedy twice gives the same tokens.
// Tolerances (max|out - ref| <= tol * max|ref| per position): 2e-4 with f32 weights (fp32
// cuBLAS, no TF32; only the order of the sums differs from the reference), 2e-2 with f16 /
// bf16 weights (the GPU rounds the activations to the weights' type before each product,
// relative error 2^-9 for bf16, through every layer).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "engine/loader/model_config.h"
#include "engine/loader/weights.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/device.h"
#include "nlohmann/json.hpp"
#include "tests/engine_harness.h"
#include "tests/golden_util.h"

namespace specmoe::engine {
namespace {

const std::string kFixtures = FixturesDir();

// A model folder on the CUDA (or the CPU) backend with an f32 KV cache of `slots` tokens.
std::unique_ptr<LoadedModel> Load(const std::string& dir, bool cuda, int slots) {
  if (!cuda) return LoadModelOn(dir, kernels::CreateCpuBackend(2), slots);
  absl::StatusOr<std::unique_ptr<kernels::Backend>> backend = kernels::cuda::CreateCudaBackend(0);
  EXPECT_TRUE(backend.ok()) << backend.status();
  if (!backend.ok()) return nullptr;
  return LoadModelOn(dir, *std::move(backend), slots);
}

std::vector<float> Forward(LoadedModel& l, const std::vector<int32_t>& tokens, int from,
                           int to) {
  return ForwardRange(l, tokens, from, to);
}

bool HaveDevice() { return kernels::cuda::DeviceCount() > 0; }

class CudaGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device: " << kernels::cuda::DeviceName();
  }
};

TEST_P(CudaGoldenTest, LogitsMatchTheReferenceAndTheCpuEagerAndRecorded) {
  const Golden golden = ReadGolden(GetParam());
  const auto prompt = golden.meta["prompt_ids"].get<std::vector<int32_t>>();
  const std::string dtype = golden.meta["dtype"].get<std::string>();
  const double tol = dtype == "f32" ? 2e-4 : 2e-2;
  const int t = static_cast<int>(prompt.size());
  const int v = golden.vocab;
  const std::string dir =
      kFixtures + "/models/" + golden.meta["model_dirs"][0].get<std::string>();
  std::unique_ptr<LoadedModel> gpu = Load(dir, true, 64);
  std::unique_ptr<LoadedModel> cpu = Load(dir, false, 64);
  ASSERT_TRUE(gpu && cpu);

  // 1. The whole prompt in one forward: the reference's logits, and the CPU's.
  const std::vector<float> logits = Forward(*gpu, prompt, 0, t);
  const std::vector<float> cpu_logits = Forward(*cpu, prompt, 0, t);
  for (int pos = 0; pos < t; ++pos) {
    ExpectClose(&logits[pos * v], &golden.logits[pos * v], v, tol,
                "prompt position " + std::to_string(pos));
    ExpectClose(&logits[pos * v], &cpu_logits[pos * v], v, tol,
                "prompt position " + std::to_string(pos) + " against the CPU");
  }
  // 2. One token at a time, recorded (eager, record, then replays), and with recording off
  // on a second cache: both give the reference's logits and agree with each other.
  std::unique_ptr<LoadedModel> eager = Load(dir, true, 64);
  ASSERT_NE(eager, nullptr);
  eager->model->set_recording(false);
  for (int pos = 0; pos < t; ++pos) {
    const std::vector<float> recorded = Forward(*gpu, prompt, pos, pos + 1);
    const std::vector<float> plain = Forward(*eager, prompt, pos, pos + 1);
    ExpectClose(recorded.data(), &golden.logits[pos * v], v, tol,
                "recorded decode position " + std::to_string(pos));
    ExpectClose(recorded.data(), plain.data(), v, 1e-5,
                "recorded against eager at position " + std::to_string(pos));
  }
  // 3. Determinism (backend.h): the same forward of the same batch gives the same bits.
  std::unique_ptr<LoadedModel> again = Load(dir, true, 64);
  ASSERT_NE(again, nullptr);
  again->model->set_recording(false);
  const std::vector<float> first = Forward(*again, prompt, 0, t);
  const std::vector<float> second = Forward(*again, prompt, 0, t);
  EXPECT_EQ(std::memcmp(first.data(), second.data(), first.size() * sizeof(float)), 0)
      << "two runs of one forward differ";
}

INSTANTIATE_TEST_SUITE_P(Models, CudaGoldenTest,
                         ::testing::Values("llama_tiny", "llama_gqa", "llama3_tiny", "llama_f16",
                                           "llama_bf16",
                                           "moe_one_expert", "moe_tiny"));

// Recordings are keyed by never-reused ids and dropped with their model: a model
// and cache destroyed and made again on the same backend (at the same host addresses, as the
// allocator hands them back, but other device buffers: a spacer holds the old ones' place)
// must record afresh, never replay a recording that points at the freed buffers.
TEST(CudaRecordingTest, AModelRecreatedOnOneBackendRecordsAfresh) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device: " << kernels::cuda::DeviceName();
  const Golden golden = ReadGolden("llama_tiny");
  const auto prompt = golden.meta["prompt_ids"].get<std::vector<int32_t>>();
  const int t = static_cast<int>(prompt.size());
  const int v = golden.vocab;
  const std::string dir =
      kFixtures + "/models/" + golden.meta["model_dirs"][0].get<std::string>();
  std::unique_ptr<LoadedModel> l = Load(dir, true, 64);
  ASSERT_NE(l, nullptr);
  const ModelConfig config = l->model->config();
  absl::StatusOr<ModelWeights> host_weights = BindModelWeights(config, *l->store);
  ASSERT_TRUE(host_weights.ok()) << host_weights.status();
  std::vector<void*> spacers;
  std::vector<uint64_t> ids;
  for (int round = 0; round < 3; ++round) {
    ids.push_back(l->model->recording_id());
    ids.push_back(l->cache->recording_id());
    // One token at a time: eager, record, then replays of the one-token bucket.
    for (int pos = 0; pos < t; ++pos) {
      const std::vector<float> logits = Forward(*l, prompt, pos, pos + 1);
      ExpectClose(logits.data(), &golden.logits[pos * v], v, 2e-4,
                  "round " + std::to_string(round) + " position " + std::to_string(pos));
    }
    l->cache.reset();
    l->model.reset();
    l->blocks = SequenceBlocks{};
    spacers.push_back(l->backend->Alloc(size_t{16} << 20));
    absl::StatusOr<std::unique_ptr<Model>> model =
        Model::Create(config, *host_weights, l->backend.get(), 64);
    ASSERT_TRUE(model.ok()) << model.status();
    l->model = *std::move(model);
    absl::StatusOr<std::unique_ptr<KvCache>> cache =
        KvCache::Create(l->backend.get(), config.num_layers, l->model->kv_row(), 16, 4);
    ASSERT_TRUE(cache.ok()) << cache.status();
    l->cache = *std::move(cache);
    ASSERT_TRUE(l->cache->Reserve(l->blocks, 64).ok());
  }
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end()) << "a recording id reused";
  for (void* p : spacers) l->backend->Free(p);
}

const std::string kTarget = kFixtures + "/models/e2e_target";
const std::string kDraft = kFixtures + "/models/e2e_draft";

std::unique_ptr<Harness> MakeHarness(const std::string& device, const std::string& draft) {
  EngineOptions options;
  options.target_dir = kTarget;
  options.draft_dir = draft;
  options.device = device;
  options.threads = 2;
  options.max_context = 256;
  options.max_batch = 3;
  options.tree_policy = EngineOptions::TreePolicy::kStatic;
  absl::StatusOr<std::unique_ptr<Harness>> h = Harness::Create(options);
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? *std::move(h) : nullptr;
}

std::vector<int32_t> Generate(Harness& h, const std::vector<int32_t>& prompt, int max_tokens,
                              bool speculate, std::vector<int> expansion = {}) {
  GenerationRequest r;
  r.prompt_ids = prompt;
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  r.speculation.disable = !speculate;
  r.speculation.expansion = std::move(expansion);
  std::vector<int32_t> ids;
  absl::StatusOr<Sequence*> seq = h.Start(std::move(r));
  EXPECT_TRUE(seq.ok()) << seq.status();
  if (!seq.ok()) return ids;
  for (int guard = 0; guard < 10000; ++guard) {
    HarnessOutput step = h.Step(**seq);
    ids.insert(ids.end(), step.token_ids.begin(), step.token_ids.end());
    if (step.finished) break;
  }
  return ids;
}

std::vector<std::vector<int32_t>> Prompts() {
  std::vector<std::vector<int32_t>> prompts;
  for (int p = 0; p < 4; ++p) {
    std::vector<int32_t> ids = {1};
    for (int i = 0; i < 1 + 9 * p; ++i) ids.push_back(3 + (p * 977 + i * 131) % 4000);
    prompts.push_back(ids);
  }
  return prompts;
}

TEST(CudaSpeculationTest, GreedySpeculativeEqualsPlainOnTheGpuAndTheCpuWhereClear) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device: " << kernels::cuda::DeviceName();
  std::unique_ptr<Harness> gpu = MakeHarness("cuda", kDraft);
  std::unique_ptr<Harness> cpu = MakeHarness("cpu", "");
  ASSERT_TRUE(gpu && cpu);
  std::unique_ptr<LoadedModel> reference = Load(kTarget, false, 128);
  ASSERT_NE(reference, nullptr);
  const int v = reference->model->config().vocab_size;
  for (const std::vector<int32_t>& prompt : Prompts()) {
    const std::vector<int32_t> plain = Generate(*gpu, prompt, 40, false);
    ASSERT_EQ(plain.size(), 40u);
    // Deterministic: the same requests on the same batches give the same tokens.
    EXPECT_EQ(Generate(*gpu, prompt, 40, false), plain) << "plain greedy twice";
    // Speculative equals plain up to the first position where plain's top-1/top-2 gap (by the
    // reference) is below 1e-2: there the verification's batched MatMuls, summed in another
    // order than the one-token decode's (cuBLAS is not batch-invariant, backend.h), may pick
    // the other token; after it the sequences may go apart.
    std::vector<int32_t> gpu_seq = prompt;
    gpu_seq.insert(gpu_seq.end(), plain.begin(), plain.end());
    const std::vector<float> plain_logits =
        Forward(*reference, gpu_seq, 0, static_cast<int>(gpu_seq.size()) - 1);
    size_t clear = 0;
    while (clear < plain.size()) {
      const float* row = &plain_logits[(prompt.size() - 1 + clear) * v];
      std::vector<float> top(row, row + v);
      std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<>());
      if (top[0] - top[1] < 1e-2f) break;
      ++clear;
    }
    const std::vector<int32_t> plain_clear(plain.begin(), plain.begin() + clear);
    for (const std::vector<int>& shape :
         std::vector<std::vector<int>>{{1, 1, 1, 1}, {2, 2, 1}, {1, 1, 3, 1, 1, 1, 1, 1}}) {
      const std::vector<int32_t> spec = Generate(*gpu, prompt, 40, true, shape);
      ASSERT_EQ(spec.size(), 40u);
      EXPECT_EQ(std::vector<int32_t>(spec.begin(), spec.begin() + clear), plain_clear)
          << "tree of depth " << shape.size() << ", prompt of " << prompt.size()
          << ", compared up to the first near-tie at " << clear;
    }
    // Plain greedy on the CPU: equal up to the first position where the CPU's own top-1/top-2
    // gap is below 1e-2 (f16 KV on the GPU), if any.
    const std::vector<int32_t> cpu_ids = Generate(*cpu, prompt, 40, false);
    std::vector<int32_t> seq = prompt;
    seq.insert(seq.end(), cpu_ids.begin(), cpu_ids.end());
    const std::vector<float> logits =
        Forward(*reference, seq, 0, static_cast<int>(seq.size()) - 1);
    for (size_t i = 0; i < cpu_ids.size(); ++i) {
      const float* row = &logits[(prompt.size() - 1 + i) * v];
      std::vector<float> sorted(row, row + v);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
      if (sorted[0] - sorted[1] < 1e-2f) break;  // a near-tie: either token is right
      ASSERT_EQ(plain[i], cpu_ids[i]) << "token " << i << ", prompt of " << prompt.size();
    }
  }
}

}  // namespace
}  // namespace specmoe::engine
