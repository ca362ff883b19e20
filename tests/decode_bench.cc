// tests/decode_bench.cc — CPU decode beside its bandwidth floor, and where a token's time
// goes. Not a test: run it by hand,
//   build/tests/decode_bench [model_dir ...]    (default: <build>/demo/target and
//                                                 <build>/demo-f16/target)
// Prints Markdown tables:
//  1. plain batch-1 decode of 64 tokens after a one-token prompt, every model, in rounds:
//     each round measures the read bandwidth (tests/bench_util.h, 512 MiB) right before
//     decoding with each model, so each tok/s has the floor of the same moment (the machine
//     is shared); medians over the rounds. Floor = read bandwidth / (weights once + the K/V
//     of the average context).
//  2. per model: each kind of weight matrix at 1 row, timed inside walks over the whole
//     model in forward order (median of walks), unfused and fused (q/k/v, gate/up), with
//     their effective GB/s beside the read bandwidth;
//  3. n-row passes (one forward of n chain-tree tokens at context 128) beside the time of
//     reading the weights once;
//  4. a decode step at context 128, 1024 and 2000 and attention's share of it (the
//     attention op over every layer, timed alone on the same cache).
//  5. per model: a decode step at context 2000 with an f32 and with an f16 KV cache
//     (interleaved rounds, medians), attention's time in each.
// Everything warms up first (the first pass over freshly mmapped weights pays page faults).
//  6. per model: prefill passes of 1..512 tokens from an empty context (llama-bench's pp n).
// A model argument may carry a weight type to serve it in: DIR@f16, DIR@bf16 (converted at
// load). SPECMOE_BENCH_DECODE_ONLY=1 prints table 1 only, SPECMOE_BENCH_KV_ONLY=1 table 5
// only, SPECMOE_BENCH_PREFILL_ONLY=1 table 6 only (SPECMOE_BENCH_REPS=r: r timed passes per n;
// SPECMOE_BENCH_PREFILL_MAX_N=m: only n <= m; the fastest pass is printed beside the median).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tests/engine_harness.h"
#include "kernels/backend.h"
#include "tests/bench_util.h"

namespace specmoe {
namespace {

using bench::BytesPerToken;
using bench::Clock;
using bench::Median;
using bench::Seconds;
constexpr int kDecodeTokens = 64;
constexpr int kRounds = 5;

// Median seconds of fn() over `reps` runs after one warm-up run.
// Median seconds of reps calls after a warm-up call; *fastest gets the fastest call when
// not null (on a shared machine the fastest is the least disturbed).
double TimeIt(const std::function<void()>& fn, int reps, double* fastest = nullptr) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    fn();
    t.push_back(Seconds(start));
  }
  if (fastest != nullptr) *fastest = *std::min_element(t.begin(), t.end());
  return Median(t);
}

// A positive integer from the environment, or `fallback`.
int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && std::atoi(v) > 0 ? std::atoi(v) : fallback;
}

struct Loaded {
  std::string dir;
  std::unique_ptr<engine::Harness> g;
  std::vector<double> tps, floor_tps;
};

// Seconds of decoding kDecodeTokens plainly after a one-token prompt.
double DecodeSeconds(engine::Harness& g) {
  engine::GenerationRequest request;
  request.prompt_ids = {1};
  request.max_tokens = kDecodeTokens;
  request.ignore_eos = true;
  request.speculation.disable = true;
  absl::StatusOr<engine::Sequence*> seq = g.Start(request);
  if (!seq.ok()) return 0;
  const auto start = Clock::now();
  while (!g.Step(**seq).finished) {
  }
  return Seconds(start);
}

// Forward of n chain-tree tokens after `context` committed slots of `seq`.
double PassSeconds(engine::Harness& g, const engine::Sequence& seq, int context, int n,
                   int reps) {
  engine::Model& model = g.target();
  engine::KvCache& cache = g.target_cache();
  engine::ForwardBatch batch;
  uint64_t mask = 0;
  for (int i = 0; i < n; ++i) {
    mask |= uint64_t{1} << i;
    batch.Add(3 + i, context + i, cache.PhysicalSlot(seq.target_blocks, context + i), 0,
              context, mask);
    batch.logit_rows.push_back(i);
  }
  batch.tree_start = {context};
  batch.SetBlockTables({&seq.target_blocks});
  std::vector<float> logits(static_cast<size_t>(n) * model.config().vocab_size);
  return TimeIt([&] { model.Forward(batch, cache, logits.data()); }, reps);
}

// Seconds of the attention op of every layer for one query token at `context`.
double AttentionSeconds(kernels::Backend& be, engine::Harness& g, const engine::Sequence& seq,
                        int context) {
  const engine::ModelConfig& c = g.target().config();
  engine::KvCache& cache = g.target_cache();
  std::vector<float> q(c.num_heads * c.head_dim), out(q.size());
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  for (float& f : q) f = dist(rng);
  engine::ForwardBatch batch;
  batch.Add(3, context, cache.PhysicalSlot(seq.target_blocks, context), 0, context + 1, 0);
  batch.SetBlockTables({&seq.target_blocks});
  kernels::AttentionArgs a;
  a.fwd = be.BeginForward(batch.Desc());
  a.q = q.data();
  a.out = out.data();
  a.n_heads = c.num_heads;
  a.n_kv_heads = c.num_kv_heads;
  a.head_dim = c.head_dim;
  a.scale = 1.0f;
  a.block_size = cache.block_size();
  a.kv_dtype = cache.dtype();
  return TimeIt(
      [&] {
        for (int l = 0; l < c.num_layers; ++l) {
          a.k_cache = cache.k(l);
          a.v_cache = cache.v(l);
          be.Attention(a);
        }
      },
      20);
}

void Report(Loaded& m) {
  engine::Harness& g = *m.g;
  const engine::Model& model = g.target();
  const engine::ModelWeights& w = model.weights();
  const double read_gbs = bench::ReadBandwidthGBs();
  std::printf("\n### %s (%s weights), read bandwidth now %.1f GB/s\n\n", m.dir.c_str(),
              kernels::DTypeName(w.dtype), read_gbs);

  // 2. Matrices at one row, timed one by one inside a walk over the whole model in forward
  // order (timing one kind alone would keep its 8 layers in the last-level cache).
  std::unique_ptr<kernels::Backend> be = kernels::CreateCpuBackend(0);
  std::vector<float> x(static_cast<size_t>(64) * 8192, 0.01f), y(static_cast<size_t>(64) * 65536);
  std::vector<float> y2(y.size()), y3(y.size());
  const bool llama = model.config().architecture == engine::Architecture::kLlama;
  struct Kind {
    std::string name;
    std::vector<std::vector<kernels::Weight>> per_layer;  // one call per entry
    size_t bytes = 0;
    std::vector<double> seconds;  // per walk
  };
  auto kind = [&](const std::string& name, auto pick) {
    Kind k;
    k.name = name;
    for (const engine::LayerWeights& l : w.layers) {
      k.per_layer.push_back(pick(l));
      for (const kernels::Weight& wt : k.per_layer.back()) k.bytes += wt.bytes();
    }
    return k;
  };
  using L = const engine::LayerWeights&;
  std::vector<Kind> plain = {kind("q_proj", [](L l) { return std::vector{l.q_proj}; }),
                             kind("k_proj", [](L l) { return std::vector{l.k_proj}; }),
                             kind("v_proj", [](L l) { return std::vector{l.v_proj}; }),
                             kind("o_proj", [](L l) { return std::vector{l.o_proj}; })};
  std::vector<Kind> fused = {kind("q/k/v fused", [](L l) {
                               return std::vector{l.q_proj, l.k_proj, l.v_proj};
                             }),
                             kind("o_proj", [](L l) { return std::vector{l.o_proj}; })};
  if (llama) {
    plain.push_back(kind("gate_proj", [](L l) { return std::vector{l.mlp.gate}; }));
    plain.push_back(kind("up_proj", [](L l) { return std::vector{l.mlp.up}; }));
    plain.push_back(kind("down_proj", [](L l) { return std::vector{l.mlp.down}; }));
    fused.push_back(
        kind("gate/up fused", [](L l) { return std::vector{l.mlp.gate, l.mlp.up}; }));
    fused.push_back(kind("down_proj", [](L l) { return std::vector{l.mlp.down}; }));
  }
  auto walk = [&](std::vector<Kind>& kinds, bool record) {
    std::vector<double> sums(kinds.size(), 0.0);
    for (size_t layer = 0; layer < w.layers.size(); ++layer) {
      for (size_t i = 0; i < kinds.size(); ++i) {
        const std::vector<kernels::Weight>& ws = kinds[i].per_layer[layer];
        float* outs[3] = {y.data(), y2.data(), y3.data()};
        const auto start = Clock::now();
        be->MatMulMany(x.data(), 1, ws.data(), outs, static_cast<int>(ws.size()));
        sums[i] += Seconds(start);
      }
    }
    const auto start = Clock::now();
    be->MatMul(x.data(), 1, w.lm_head, y.data());
    const double head = Seconds(start);
    if (!record) return head;
    for (size_t i = 0; i < kinds.size(); ++i) kinds[i].seconds.push_back(sums[i]);
    return head;
  };
  std::vector<double> head_s;
  walk(plain, false);
  for (int rep = 0; rep < 9; ++rep) {
    head_s.push_back(walk(plain, true));
    walk(fused, true);
  }
  std::printf("| matrices at 1 row, in a walk over the model (all %d layers) | ms | GB/s | "
              "read GB/s |\n",
              model.config().num_layers);
  std::printf("|---|---:|---:|---:|\n");
  double plain_ms = 0, fused_ms = 0;
  for (std::vector<Kind>* kinds : {&plain, &fused}) {
    for (const Kind& k : *kinds) {
      const double s = Median(k.seconds);
      (kinds == &plain ? plain_ms : fused_ms) += s * 1e3;
      if (kinds == &fused && k.name.find("fused") == std::string::npos) continue;
      std::printf("| %s | %.3f | %.1f | %.1f |\n", k.name.c_str(), s * 1e3, k.bytes / s / 1e9,
                  read_gbs);
    }
  }
  const double head = Median(head_s);
  std::printf("| lm_head | %.3f | %.1f | %.1f |\n", head * 1e3, w.lm_head.bytes() / head / 1e9,
              read_gbs);
  std::printf("\nall matrices of a token: %.2f ms one by one, %.2f ms with the fused passes; "
              "reading them once at %.1f GB/s takes %.2f ms\n\n",
              plain_ms + head * 1e3, fused_ms + head * 1e3, read_gbs,
              model.bytes_per_token() / (read_gbs * 1e9) * 1e3);

  // 3. n-row passes and 4. attention at long contexts, on one sequence of 2001 tokens.
  const int max_context = std::min(g.max_context(), model.config().max_position_embeddings);
  const int long_context = std::min(2000, max_context - 72);
  engine::GenerationRequest hold;
  hold.prompt_ids.assign(long_context + 1, 5);
  hold.prompt_ids[0] = 1;
  hold.max_tokens = 64;
  hold.speculation.disable = true;
  absl::StatusOr<engine::Sequence*> seq = g.Start(hold);
  if (!seq.ok() || !g.Hold(**seq).ok()) {
    std::printf("cannot hold a context of %d: %s\n", long_context,
                std::string(seq.status().message()).c_str());
    return;
  }
  const double weights_ms = model.bytes_per_token() / (read_gbs * 1e9) * 1e3;
  std::printf("| pass of n rows at context 128 | ms | weights-once floor ms | x floor |\n");
  std::printf("|---:|---:|---:|---:|\n");
  for (int n : {1, 2, 4, 8, 16, 32, 64}) {
    const double s = PassSeconds(g, **seq, 128, n, n >= 32 ? 5 : 9);
    std::printf("| %d | %.2f | %.2f | %.2f |\n", n, s * 1e3, weights_ms, s * 1e3 / weights_ms);
  }
  std::printf("\n| decode step at context | step ms | attention ms (all layers) | share | "
              "floor ms (weights + K/V) |\n");
  std::printf("|---:|---:|---:|---:|---:|\n");
  for (int context : {128, 1024, long_context}) {
    const double step = PassSeconds(g, **seq, context, 1, 15);
    const double att = AttentionSeconds(*be, g, **seq, context);
    std::printf("| %d | %.2f | %.3f | %.1f%% | %.2f |\n", context, step * 1e3, att * 1e3,
                100.0 * att / step, BytesPerToken(model, context) / (read_gbs * 1e9) * 1e3);
  }
  g.Cancel(**seq);
}

// "DIR" or "DIR@f16" / "DIR@bf16" / "DIR@f32": the model folder and the weight type to serve
// it in (converted at load, EngineOptions::weight_dtype; as stored without a suffix).
engine::EngineOptions OptionsFor(const std::string& spec) {
  engine::EngineOptions options;
  const size_t at = spec.rfind('@');
  options.target_dir = spec.substr(0, at);
  if (at != std::string::npos) {
    const std::string dtype = spec.substr(at + 1);
    options.weight_dtype = dtype == "bf16"  ? kernels::DType::kBF16
                           : dtype == "f16" ? kernels::DType::kF16
                                            : kernels::DType::kF32;
  }
  options.max_context = 2048;
  options.max_batch = 1;
  return options;
}

// 5. A decode step at the long context with an f32 and an f16 KV cache, in interleaved rounds.
void KvDtypeTable(const std::string& dir) {
  const kernels::DType dtypes[2] = {kernels::DType::kF32, kernels::DType::kF16};
  std::unique_ptr<engine::Harness> gens[2];
  engine::Sequence* seqs[2] = {nullptr, nullptr};
  int long_context = 0;
  for (int i = 0; i < 2; ++i) {
    engine::EngineOptions options = OptionsFor(dir);
    options.kv_dtype = dtypes[i];
    absl::StatusOr<std::unique_ptr<engine::Harness>> g = engine::Harness::Create(options);
    if (!g.ok()) {
      std::printf("%s: %s\n", dir.c_str(), std::string(g.status().message()).c_str());
      return;
    }
    gens[i] = *std::move(g);
    const int max_context =
        std::min(gens[i]->max_context(), gens[i]->target().config().max_position_embeddings);
    long_context = std::min(2000, max_context - 72);
    engine::GenerationRequest hold;
    hold.prompt_ids.assign(long_context + 1, 5);
    hold.prompt_ids[0] = 1;
    hold.max_tokens = 64;
    hold.speculation.disable = true;
    absl::StatusOr<engine::Sequence*> seq = gens[i]->Start(hold);
    if (!seq.ok() || !gens[i]->Hold(**seq).ok()) {
      std::printf("cannot hold a context of %d: %s\n", long_context,
                  std::string(seq.status().message()).c_str());
      return;
    }
    seqs[i] = *std::move(seq);
  }
  std::unique_ptr<kernels::Backend> be = kernels::CreateCpuBackend(0);
  std::vector<double> step[2], att[2];
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < 2; ++i) {
      step[i].push_back(PassSeconds(*gens[i], *seqs[i], long_context, 1, 9));
      att[i].push_back(AttentionSeconds(*be, *gens[i], *seqs[i], long_context));
    }
  }
  const double read_gbs = bench::ReadBandwidthGBs();
  std::printf("\n%s, decode step at context %d | step ms (median of 5 rounds) | attention ms "
              "(all layers) | share | floor ms (weights + K/V) |\n",
              dir.c_str(), long_context);
  std::printf("|---|---:|---:|---:|---:|\n");
  for (int i = 0; i < 2; ++i) {
    const double s = Median(step[i]), a = Median(att[i]);
    std::printf("| %s KV | %.2f | %.3f | %.1f%% | %.2f |\n", kernels::DTypeName(dtypes[i]),
                s * 1e3, a * 1e3, 100.0 * a / s,
                BytesPerToken(gens[i]->target(), long_context, kernels::DTypeBytes(dtypes[i])) /
                    (read_gbs * 1e9) * 1e3);
  }
  for (int i = 0; i < 2; ++i) gens[i]->Cancel(*seqs[i]);
}

// 6. Prefill passes: one forward of n causal tokens from an empty context, the work of
// llama.cpp's `llama-bench -p n` (prompt processing), in tokens/s beside the time of reading
// the weights once.
void PrefillTable(const std::string& spec) {
  engine::EngineOptions options = OptionsFor(spec);
  options.max_step_tokens = 512;
  absl::StatusOr<std::unique_ptr<engine::Harness>> made = engine::Harness::Create(options);
  if (!made.ok()) {
    std::printf("%s: %s\n", spec.c_str(), std::string(made.status().message()).c_str());
    return;
  }
  engine::Harness& g = **made;
  engine::GenerationRequest hold;
  hold.prompt_ids.assign(513, 5);
  hold.prompt_ids[0] = 1;
  hold.max_tokens = 8;
  hold.speculation.disable = true;
  absl::StatusOr<engine::Sequence*> seq = g.Start(hold);
  if (!seq.ok() || !g.Hold(**seq).ok()) {
    std::printf("cannot hold 513 tokens: %s\n", std::string(seq.status().message()).c_str());
    return;
  }
  engine::Model& model = g.target();
  engine::KvCache& cache = g.target_cache();
  const double read_gbs = bench::ReadBandwidthGBs();
  const double weights_ms = model.bytes_per_token() / (read_gbs * 1e9) * 1e3;
  std::printf("\n%s (%s): prefill of n tokens from an empty context (llama-bench pp n), read "
              "bandwidth %.1f GB/s\n\n",
              spec.c_str(), kernels::DTypeName(model.weights().dtype), read_gbs);
  std::printf("| n | ms (median) | tokens/s | weights-once floor ms | ms (fastest) |\n"
              "|---:|---:|---:|---:|---:|\n");
  std::vector<float> logits(model.config().vocab_size);
  const int max_n = EnvInt("SPECMOE_BENCH_PREFILL_MAX_N", 512);
  for (int n : {1, 2, 4, 8, 16, 32, 64, 128, 256, 512}) {
    if (n > max_n) break;
    engine::ForwardBatch batch;
    for (int i = 0; i < n; ++i) {
      batch.Add(3 + i % 1000, i, cache.PhysicalSlot((*seq)->target_blocks, i), 0, i + 1, 0);
    }
    batch.logit_rows.push_back(n - 1);  // llama-bench keeps the last row's logits too
    batch.SetBlockTables({&(*seq)->target_blocks});
    double fastest = 0.0;
    const double sec = TimeIt([&] { model.Forward(batch, cache, logits.data()); },
                              EnvInt("SPECMOE_BENCH_REPS", n >= 128 ? 3 : 7), &fastest);
    std::printf("| %d | %.2f | %.1f | %.2f | %.2f |\n", n, sec * 1e3, n / sec, weights_ms,
                fastest * 1e3);
  }
  g.Cancel(**seq);
}

std::vector<std::string> ModelDirs(int argc, char** argv) {
  std::vector<std::string> dirs;
  for (int i = 1; i < argc; ++i) dirs.push_back(argv[i]);
  if (!dirs.empty()) return dirs;
  const char* env = std::getenv("SPECMOE_BENCH_MODELS");
  std::string list = env ? env
                         : std::string(SPECMOE_BINARY_DIR) + "/demo/target:" +
                               SPECMOE_BINARY_DIR + "/demo-f16/target";
  std::stringstream ss(list);
  for (std::string dir; std::getline(ss, dir, ':');) {
    if (!dir.empty()) dirs.push_back(dir);
  }
  return dirs;
}

int Main(int argc, char** argv) {
  // SPECMOE_BENCH_KV_ONLY=1 prints table 5 only.
  const char* kv_only = std::getenv("SPECMOE_BENCH_KV_ONLY");
  if (kv_only != nullptr && std::string(kv_only) == "1") {
    for (const std::string& dir : ModelDirs(argc, argv)) KvDtypeTable(dir);
    return 0;
  }
  // SPECMOE_BENCH_PREFILL_ONLY=1 prints table 6 only.
  const char* prefill_only = std::getenv("SPECMOE_BENCH_PREFILL_ONLY");
  if (prefill_only != nullptr && std::string(prefill_only) == "1") {
    for (const std::string& dir : ModelDirs(argc, argv)) PrefillTable(dir);
    return 0;
  }
  std::vector<Loaded> models;
  for (const std::string& dir : ModelDirs(argc, argv)) {
    absl::StatusOr<std::unique_ptr<engine::Harness>> g =
        engine::Harness::Create(OptionsFor(dir));
    if (!g.ok()) {
      std::fprintf(stderr, "%s: %s\n", dir.c_str(), std::string(g.status().message()).c_str());
      return 1;
    }
    models.push_back({dir, *std::move(g), {}, {}});
    DecodeSeconds(*models.back().g);  // warm-up: page faults of the fresh mmap
  }
  // 1. Rounds: bandwidth, then each model, so each figure has the floor of its moment.
  for (int round = 0; round < kRounds; ++round) {
    for (Loaded& m : models) {
      const double gbs = bench::ReadBandwidthGBs();
      const double s = DecodeSeconds(*m.g);
      m.tps.push_back(kDecodeTokens / s);
      m.floor_tps.push_back(gbs * 1e9 / BytesPerToken(m.g->target(), kDecodeTokens / 2.0));
    }
  }
  std::printf("| model | weights | MB/token | decode tok/s (median of %d) | floor tok/s "
              "(same rounds) | %% of floor (median of rounds) |\n",
              kRounds);
  std::printf("|---|---|---:|---:|---:|---:|\n");
  for (Loaded& m : models) {
    std::vector<double> ratio;
    for (size_t i = 0; i < m.tps.size(); ++i) ratio.push_back(m.tps[i] / m.floor_tps[i]);
    std::printf("| %s | %s | %.1f | %.1f | %.1f | %.0f%% |\n", m.dir.c_str(),
                kernels::DTypeName(m.g->target().weights().dtype),
                BytesPerToken(m.g->target(), kDecodeTokens / 2.0) / 1e6, Median(m.tps),
                Median(m.floor_tps), 100.0 * Median(ratio));
  }
  // SPECMOE_BENCH_DECODE_ONLY=1 stops after table 1 (for interleaved A/B runs of two builds).
  const char* decode_only = std::getenv("SPECMOE_BENCH_DECODE_ONLY");
  if (decode_only != nullptr && std::string(decode_only) == "1") return 0;
  for (Loaded& m : models) Report(m);
  for (Loaded& m : models) KvDtypeTable(m.dir);
  for (Loaded& m : models) PrefillTable(m.dir);
  return 0;
}

}  // namespace
}  // namespace specmoe

int main(int argc, char** argv) { return specmoe::Main(argc, argv); }
