// tests/decode_bench.cc — CPU decode speed at batch 1 beside its bandwidth floor (issue 2).
//
// For each model folder given (default: the demo target in f32 and f16, made by
// deploy/make_demo_models.py under <build>/demo and <build>/demo-f16), decodes 64 tokens
// plainly (no speculation) after a one-token prompt and reports tokens/s next to the floor:
// the bytes one token must read (its weights once, plus the K/V of the context) divided by
// the measured read bandwidth (kernels/cpu/bandwidth.h). Not a test: run it by hand,
//   build/tests/decode_bench [--benchmark_filter=...]   (SPECMOE_BENCH_MODELS=dir1:dir2)
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/generator.h"
#include "kernels/cpu/bandwidth.h"

namespace specmoe {
namespace {

constexpr int kDecodeTokens = 64;

double ReadBandwidthGBs() {
  static const double gbs = kernels::MeasureReadBandwidthGBs(size_t{1} << 30, 0);
  return gbs;
}

void BM_Decode(benchmark::State& state, const std::string& dir) {
  engine::EngineOptions options;
  options.target_dir = dir;
  options.max_context = 256;
  options.max_batch = 1;
  absl::StatusOr<std::unique_ptr<engine::Generator>> g = engine::Generator::Create(options);
  if (!g.ok()) {
    state.SkipWithError(std::string(g.status().message()).c_str());
    return;
  }
  engine::GenerationRequest request;
  request.prompt_ids = {1};
  request.max_tokens = kDecodeTokens;
  request.ignore_eos = true;
  int tokens = 0;
  for (auto _ : state) {
    absl::StatusOr<std::unique_ptr<engine::Sequence>> seq = (*g)->Start(request);
    while (!(*g)->Step(**seq).finished) {
    }
    tokens += kDecodeTokens;
  }
  // Bytes per token: the weights once, plus the K/V rows of the average context.
  const engine::Model& m = (*g)->target();
  const double kv_bytes = 2.0 * m.config().num_layers * m.kv_row() * sizeof(float) *
                          (kDecodeTokens / 2.0);
  const double bytes = static_cast<double>(m.bytes_per_token()) + kv_bytes;
  const double floor_tps = ReadBandwidthGBs() * 1e9 / bytes;
  state.counters["tok/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["floor_tok/s"] = floor_tps;
  state.counters["MB/token"] = bytes / 1e6;
  state.counters["read_GB/s"] = ReadBandwidthGBs();
  state.SetLabel(std::string(kernels::DTypeName(m.weights().dtype)) + " weights");
}

std::vector<std::string> ModelDirs() {
  const char* env = std::getenv("SPECMOE_BENCH_MODELS");
  std::string list = env ? env
                         : std::string(SPECMOE_BINARY_DIR) + "/demo/target:" +
                               SPECMOE_BINARY_DIR + "/demo-f16/target";
  std::vector<std::string> dirs;
  std::stringstream ss(list);
  for (std::string dir; std::getline(ss, dir, ':');) {
    if (!dir.empty()) dirs.push_back(dir);
  }
  return dirs;
}

}  // namespace
}  // namespace specmoe

int main(int argc, char** argv) {
  for (const std::string& dir : specmoe::ModelDirs()) {
    benchmark::RegisterBenchmark(("Decode/" + dir).c_str(),
                                 [dir](benchmark::State& s) { specmoe::BM_Decode(s, dir); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MinTime(2.0);
  }
  benchmark::Initialize(&argc, argv);
  std::printf("read bandwidth (streaming reduction, 1 GiB): %.1f GB/s\n",
              specmoe::ReadBandwidthGBs());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
