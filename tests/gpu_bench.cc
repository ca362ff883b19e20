// tests/gpu_bench.cc — the GPU benchmark, on random weights with the real shapes
// (no 13 GB file to carry): a LLaMA-7B target and the 8x265M MoE draft in f16 on the CUDA
// backend. Not a test: deploy/gpu-check.sh runs it on a machine with a GPU, and it prints
// Markdown tables, each figure beside its floor and its goal:
//  1. 7B decode tokens/s at batch 1 against the floor (weights + K/V a token reads over the
//     device's measured read bandwidth, kernels/cuda/bandwidth.cu); goal >= 85% of the floor;
//  2. the verify cost curve: one target forward over 1, 2, 4 .. 128 tree tokens at a 1k-token
//     context (trees of at most 64 tokens per sequence, so 128 is two sequences); goal: 32
//     tokens cost at most 1.3x one token;
//  3. the MoE layer of the seed's shapes (hidden 2048, 8 experts of 8192, top-2) at 1..64
//     tokens: fused against the floor of the selected experts' bytes (goal <= 1.25x), the
//     sequential reference beside it;
//  4. the draft's level step (2 layers, 20 tree tokens) with and without CUDA graphs;
//  5. the speedup of speculation that the measured costs predict at the seed's published
//     3.2 tokens per step (goal >= 2.5x). Random weights do not agree, so an end-to-end
//     speculative run would accept nothing; the prediction uses the costs of tables 1, 2, 4.
// Every timing is the median of several repetitions after warm-up (the first forward of a
// shape runs eagerly, the second records its CUDA graph, later ones replay it).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/loader/model_config.h"
#include "engine/loader/weights.h"
#include "engine/model/forward_batch.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "kernels/backend.h"
#include "kernels/check.h"
#include "kernels/cpu/f16.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/moe.h"
#include "tests/bench_util.h"

namespace specmoe {
namespace {

using bench::Clock;
using bench::Median;
using engine::ForwardBatch;
using engine::KvCache;
using engine::Model;
using engine::ModelConfig;
using engine::SequenceBlocks;
using kernels::DType;
using kernels::Weight;

constexpr int kBlockSize = 16;
constexpr int kContext = 1024;

ModelConfig Llama7B() {
  ModelConfig c;
  c.architecture = engine::Architecture::kLlama;
  c.model_type = "llama";
  c.hidden_size = 4096;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 32;
  c.head_dim = 128;
  c.intermediate_size = 11008;
  c.vocab_size = 32000;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5f;
  return c;
}

ModelConfig Draft8x265M() {
  ModelConfig c = Llama7B();
  c.architecture = engine::Architecture::kLlamaMoe;
  c.model_type = "llama_moe";
  c.hidden_size = 2048;
  c.num_layers = 2;
  c.num_heads = 16;
  c.num_kv_heads = 16;
  c.intermediate_size = 0;
  c.num_experts = 8;
  c.num_selects = 2;
  c.size_experts.assign(2, std::vector<int>(8, 8192));
  c.score_scale_factor = 4.0f;
  return c;
}

// Random weights of a config in f16 (norms f32 near 1): one host buffer per distinct shape,
// shared by every tensor of that shape (Model::Create uploads each into its own device
// memory, so on the device they are distinct allocations, as in a real checkpoint).
class RandomWeights {
 public:
  explicit RandomWeights(const ModelConfig& c) {
    const int64_t h = c.hidden_size, q = int64_t{c.num_heads} * c.head_dim,
                  kv = int64_t{c.num_kv_heads} * c.head_dim;
    w_.dtype = DType::kF16;
    w_.embed_tokens = Matrix(c.vocab_size, h);
    w_.lm_head = w_.embed_tokens;
    w_.norm = Norm(h);
    for (int l = 0; l < c.num_layers; ++l) {
      engine::LayerWeights layer;
      layer.input_norm = Norm(h);
      layer.post_norm = Norm(h);
      layer.q_proj = Matrix(q, h);
      layer.k_proj = Matrix(kv, h);
      layer.v_proj = Matrix(kv, h);
      layer.o_proj = Matrix(h, q);
      if (c.architecture == engine::Architecture::kLlama) {
        layer.mlp = {Matrix(c.intermediate_size, h), Matrix(c.intermediate_size, h),
                     Matrix(h, c.intermediate_size)};
      } else {
        layer.gate_w1 = Matrix(c.num_experts, h);
        layer.gate_w2 = Matrix(c.num_experts, c.num_experts);
        for (int e = 0; e < c.num_experts; ++e) {
          const int size = c.size_experts[l][e];
          layer.experts.push_back({Matrix(size, h), Matrix(size, h), Matrix(h, size)});
        }
      }
      w_.layers.push_back(std::move(layer));
    }
  }
  const engine::ModelWeights& weights() const { return w_; }

 private:
  Weight Matrix(int64_t rows, int64_t cols) {
    std::vector<uint16_t>& buf = matrices_[{rows, cols}];
    if (buf.empty()) {
      buf.resize(static_cast<size_t>(rows * cols));
      // xorshift, uniform in [-a, a) with a = sqrt(3 / cols): unit-variance outputs.
      const float a = std::sqrt(3.0f / static_cast<float>(cols));
      uint64_t s = 0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(rows * 131 + cols);
      for (uint16_t& v : buf) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        const float u = static_cast<float>(s >> 40) / 16777216.0f;  // [0, 1)
        v = kernels::F32ToF16((2.0f * u - 1.0f) * a);
      }
    }
    return Weight{buf.data(), DType::kF16, rows, cols};
  }
  Weight Norm(int64_t d) {
    std::vector<float>& buf = norms_[d];
    if (buf.empty()) buf.assign(static_cast<size_t>(d), 1.0f);
    return Weight{buf.data(), DType::kF32, 1, d};
  }

  std::map<std::pair<int64_t, int64_t>, std::vector<uint16_t>> matrices_;
  std::map<int64_t, std::vector<float>> norms_;
  engine::ModelWeights w_;
};

// A model on the CUDA backend with an f16 KV cache of `seqs` sequences of `slots` slots.
struct Loaded {
  std::unique_ptr<Model> model;
  std::unique_ptr<KvCache> cache;
  std::vector<SequenceBlocks> seqs;
};

Loaded Load(kernels::Backend* be, const ModelConfig& c, int max_tokens, int seqs, int slots) {
  Loaded l;
  RandomWeights random(c);
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Create(c, random.weights(), be, max_tokens);
  SPECMOE_CHECK(model.ok(), std::string(model.status().message()).c_str());
  l.model = *std::move(model);
  const int blocks_per_seq = (slots + kBlockSize - 1) / kBlockSize;
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(
      be, c.num_layers, l.model->kv_row(), kBlockSize, seqs * blocks_per_seq, DType::kF16);
  SPECMOE_CHECK(cache.ok(), std::string(cache.status().message()).c_str());
  l.cache = *std::move(cache);
  l.seqs.resize(seqs);
  for (SequenceBlocks& s : l.seqs) SPECMOE_CHECK(l.cache->Reserve(s, slots).ok(), "reserve");
  return l;
}

// The batch of `n` tokens at `context` of sequences 0..: each sequence gets a chain tree of
// up to 64 tokens (token i sees the prefix and tree nodes 0..i), its logits all wanted.
ForwardBatch TreeBatch(const Loaded& l, int context, int n) {
  ForwardBatch b;
  const int per_seq = std::min(n, 64);
  for (int t = 0; t < n; ++t) {
    const int s = t / per_seq, i = t % per_seq;
    const uint64_t mask = i == 63 ? ~uint64_t{0} : (uint64_t{2} << i) - 1;
    b.Add(3 + t, context + i, l.cache->PhysicalSlot(l.seqs[s], context + i), s, context, mask);
    b.logit_rows.push_back(t);
  }
  b.tree_start.assign((n + per_seq - 1) / per_seq, context);
  std::vector<const SequenceBlocks*> tables;
  for (int s = 0; s < (n + per_seq - 1) / per_seq; ++s) tables.push_back(&l.seqs[s]);
  b.SetBlockTables(tables);
  return b;
}

// Prefills `context` tokens into every sequence of `l`, in chunks of the model's max_tokens.
void Prefill(Loaded& l, int context) {
  const int chunk = l.model->max_tokens();
  for (size_t s = 0; s < l.seqs.size(); ++s) {
    for (int from = 0; from < context; from += chunk) {
      ForwardBatch b;
      for (int p = from; p < std::min(context, from + chunk); ++p) {
        b.Add(3 + p % 1000, p, l.cache->PhysicalSlot(l.seqs[s], p), 0, p + 1, 0);
      }
      b.SetBlockTables({&l.seqs[s]});
      l.model->Forward(b, *l.cache);
    }
  }
}

// Median seconds of one forward of `batch` plus the greedy argmax of its logit rows (the
// step's only read-back), after 3 warm-up runs (eager, record, replay).
double ForwardSeconds(Loaded& l, const ForwardBatch& batch, int reps) {
  kernels::Backend& be = *l.model->backend();
  const int vocab = l.model->config().vocab_size;
  std::vector<int32_t> ids(batch.logit_rows.size());
  auto run = [&] {
    const float* logits = l.model->Forward(batch, *l.cache);
    be.ArgmaxRows(logits, static_cast<int>(ids.size()), vocab, nullptr, ids.data());
  };
  for (int i = 0; i < 3; ++i) run();
  std::vector<double> s;
  for (int i = 0; i < reps; ++i) {
    const Clock::time_point start = Clock::now();
    run();
    s.push_back(bench::Seconds(start));
  }
  return Median(s);
}

struct MoeFigures {
  int n;
  double fused_us, sequential_us, floor_us;
};

// Table 3: the MoE layer alone, fused and sequential, with its own stream and cuBLAS handle.
std::vector<MoeFigures> MoeTable(double read_gbs) {
  constexpr int kHidden = 2048, kExperts = 8, kInter = 8192, kTop = 2, kMaxTokens = 64;
  kernels::cuda::CudaContext ctx;
  SPECMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamNonBlocking));
  SPECMOE_CHECK(cublasCreate(&ctx.cublas) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
  SPECMOE_CHECK(cublasSetStream(ctx.cublas, ctx.stream) == CUBLAS_STATUS_SUCCESS, "stream");
  std::vector<void*> owned;
  auto device = [&](size_t bytes, const void* host) {
    void* p = nullptr;
    SPECMOE_CUDA_CHECK(cudaMalloc(&p, bytes));
    if (host != nullptr) {
      // On ctx.stream (non-blocking: it would not wait for a legacy-stream cudaMemcpy).
      SPECMOE_CUDA_CHECK(
          cudaMemcpyAsync(p, host, bytes, cudaMemcpyHostToDevice, ctx.stream));
      SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    }
    owned.push_back(p);
    return p;
  };
  ModelConfig c = Draft8x265M();
  RandomWeights random(c);
  std::vector<kernels::ExpertWeights> experts;
  for (const kernels::ExpertWeights& e : random.weights().layers[0].experts) {
    kernels::ExpertWeights d = e;
    for (Weight* w : {&d.gate, &d.up, &d.down}) w->data = device(w->bytes(), w->data);
    experts.push_back(d);
  }
  std::vector<float> x(kMaxTokens * kHidden), gate(kMaxTokens * kExperts);
  uint64_t s = 12345;
  auto next = [&] {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(s >> 40) / 16777216.0f - 0.5f;
  };
  for (float& v : x) v = next();
  for (float& v : gate) v = 4.0f * next();
  float* dx = static_cast<float*>(device(x.size() * 4, x.data()));
  float* dgate = static_cast<float*>(device(gate.size() * 4, gate.data()));
  float* dy = static_cast<float*>(device(x.size() * 4, nullptr));
  kernels::MoeRouting r;
  r.idx = static_cast<int32_t*>(device(kMaxTokens * kTop * 4, nullptr));
  r.weight = static_cast<float*>(device(kMaxTokens * kTop * 4, nullptr));
  r.pairs = static_cast<int32_t*>(device(kMaxTokens * kTop * 4, nullptr));
  r.counts = static_cast<int32_t*>(device(kExperts * 4, nullptr));
  r.offsets = static_cast<int32_t*>(device((kExperts + 1) * 4, nullptr));
  std::unique_ptr<kernels::cuda::MoeExpertsOp> fused = kernels::cuda::CreateFusedMoeExperts();
  std::unique_ptr<kernels::cuda::MoeExpertsOp> sequential =
      kernels::cuda::CreateSequentialMoeExperts();
  auto time_us = [&](kernels::cuda::MoeExpertsOp& op, int n) {
    auto run = [&] {
      op.Run(dx, n, kHidden, r, kTop, experts.data(), kExperts, 4.0f, dy, ctx);
      SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    };
    for (int i = 0; i < 3; ++i) run();
    std::vector<double> t;
    for (int i = 0; i < 20; ++i) {
      const Clock::time_point start = Clock::now();
      run();
      t.push_back(bench::Seconds(start) * 1e6);
    }
    return Median(t);
  };
  std::vector<MoeFigures> rows;
  for (int n : {1, 2, 4, 8, 16, 32, 64}) {
    kernels::cuda::TopKSoftmax(dgate, n, kExperts, kTop, r, ctx);
    std::vector<int32_t> idx(n * kTop);
    SPECMOE_CUDA_CHECK(cudaMemcpyAsync(idx.data(), r.idx, idx.size() * 4, cudaMemcpyDeviceToHost,
                                       ctx.stream));
    SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    const std::set<int32_t> selected(idx.begin(), idx.end());
    const double bytes = static_cast<double>(selected.size()) * 3.0 * kHidden * kInter * 2.0;
    rows.push_back({n, time_us(*fused, n), time_us(*sequential, n), bytes / (read_gbs * 1e3)});
  }
  for (void* p : owned) SPECMOE_CUDA_CHECK(cudaFree(p));
  cublasDestroy(ctx.cublas);
  SPECMOE_CUDA_CHECK(cudaStreamDestroy(ctx.stream));
  return rows;
}

int Main() {
  if (kernels::cuda::DeviceCount() == 0) {
    std::printf("gpu_bench: no CUDA device (%s); nothing to measure\n",
                kernels::cuda::DeviceName().c_str());
    return 0;
  }
  std::printf("# gpu_bench on %s\n\n", kernels::cuda::DeviceName().c_str());
  const double read_gbs = kernels::cuda::MeasureDeviceReadBandwidthGBs(size_t{4} << 30);
  std::printf("device read bandwidth (4 GiB streaming sum, best of 5): %.0f GB/s\n\n", read_gbs);

  absl::StatusOr<std::unique_ptr<kernels::Backend>> made = kernels::cuda::CreateCudaBackend(0);
  SPECMOE_CHECK(made.ok(), std::string(made.status().message()).c_str());
  std::unique_ptr<kernels::Backend> be = *std::move(made);

  // 1 and 2: the 7B target.
  Loaded target = Load(be.get(), Llama7B(), 128, 2, kContext + 192);
  Prefill(target, kContext);
  const double kv_token = 2.0 * 32 * 4096 * 2;  // f16 K and V of one token, every layer
  const double weights = static_cast<double>(target.model->bytes_per_token());
  std::printf("| 7B f16 decode, batch 1 | ms/token | tokens/s | floor tokens/s | of floor "
              "(goal >= 85%%) |\n|---|---:|---:|---:|---:|\n");
  double decode_1k = 0;
  for (int context : {64, kContext}) {
    const double sec = ForwardSeconds(target, TreeBatch(target, context, 1), 30);
    const double floor = (weights + kv_token * context) / (read_gbs * 1e9);
    std::printf("| context %d | %.3f | %.1f | %.1f | %.0f%% |\n", context, sec * 1e3, 1 / sec,
                1 / floor, 100 * floor / sec);
    if (context == kContext) decode_1k = sec;
  }
  std::printf("\n| tree tokens (context %d) | ms | x one token (goal: 32 at most 1.3x) |\n"
              "|---:|---:|---:|\n",
              kContext);
  std::map<int, double> verify;
  for (int n : {1, 2, 4, 8, 16, 21, 32, 64, 128}) {
    verify[n] = ForwardSeconds(target, TreeBatch(target, kContext, n), 15);
    std::printf("| %d | %.3f | %.2f |\n", n, verify[n] * 1e3, verify[n] / verify[1]);
  }
  target = Loaded();

  // 3: the MoE layer.
  std::printf("\n| MoE layer tokens | fused us | sequential us | selected experts' floor us | "
              "fused x floor (goal <= 1.25) |\n|---:|---:|---:|---:|---:|\n");
  for (const MoeFigures& m : MoeTable(read_gbs)) {
    std::printf("| %d | %.1f | %.1f | %.1f | %.2f |\n", m.n, m.fused_us, m.sequential_us,
                m.floor_us, m.fused_us / m.floor_us);
  }

  // 4: the draft's level step, with and without CUDA graphs.
  Loaded draft = Load(be.get(), Draft8x265M(), 64, 1, kContext + 128);
  Prefill(draft, 128);
  std::map<int, double> level;
  std::printf("\n| draft forward (2 layers, context 128) | graphs ms | eager ms | eager / "
              "graphs |\n|---:|---:|---:|---:|\n");
  for (int n : {1, 3, 4, 20}) {
    draft.model->set_recording(true);
    level[n] = ForwardSeconds(draft, TreeBatch(draft, 128, n), 30);
    draft.model->set_recording(false);
    const double eager = ForwardSeconds(draft, TreeBatch(draft, 128, n), 30);
    std::printf("| %d tokens | %.3f | %.3f | %.2f |\n", n, level[n] * 1e3, eager * 1e3,
                eager / level[n]);
  }

  // 5: the predicted speedup at 3.2 tokens per step with the seed's tree <1,1,3,1,1,1,1,1>
  // (21 tree tokens with the root): a catch-up of ~4 draft tokens, 8 draft levels (1, 1, then
  // 3 nodes each), one target verify of 21 tokens; plain decoding pays one target forward
  // per token.
  const double step = verify[21] + level[4] + 2 * level[1] + 6 * level[3];
  const double speedup = 3.2 * decode_1k / step;
  std::printf("\n| at context %d | ms |\n|---|---:|\n| plain: one target token | %.3f |\n"
              "| speculative step: verify 21 + catch-up 4 + levels 1,1,3x6 | %.3f |\n"
              "| predicted speedup at 3.2 tokens/step (goal >= 2.5x) | %.2fx |\n",
              kContext, decode_1k * 1e3, step * 1e3, speedup);
  return 0;
}

}  // namespace
}  // namespace specmoe

int main() { return specmoe::Main(); }
