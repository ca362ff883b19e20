// tests/speculation_bench.cc — what token-tree speculation buys on the CPU.
//
// Measures, with the demo pair (deploy/make_demo_models.py; default <build>/demo):
//  1. the verify cost curve: one target pass over n tree tokens, n = 1, 2, 4, ..., 64;
//  2. the cost of one draft pass over n tokens (a tree level);
//  3. plain and speculative greedy decoding (tokens/s, mean tokens per step) for a sweep of
//     tree shapes, with the speedup those measured costs predict beside the measured one, and
//     the speedup they would give at the seed's published 3.2 tokens per step.
// Prints Markdown tables. Not a test: run it by hand,
//   build/tests/speculation_bench [target_dir draft_dir]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/engine_harness.h"
#include "engine/spec/token_tree.h"

namespace specmoe {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Median seconds of one forward of `n` chain-tree tokens after a context of `context` slots.
double ForwardCost(engine::Model& model, engine::KvCache& cache,
                   const engine::SequenceBlocks& blocks, int context, int n) {
  engine::ForwardBatch batch;
  uint64_t mask = 0;
  for (int i = 0; i < n; ++i) {
    mask |= uint64_t{1} << i;
    batch.Add(3 + i, context + i, cache.PhysicalSlot(blocks, context + i), 0, context, mask);
    batch.logit_rows.push_back(i);
  }
  batch.tree_start = {context};
  batch.SetBlockTables({&blocks});
  std::vector<float> logits(static_cast<size_t>(n) * model.config().vocab_size);
  std::vector<double> times;
  for (int rep = 0; rep < 9; ++rep) {
    const auto start = Clock::now();
    model.Forward(batch, cache, logits.data());
    times.push_back(Seconds(start));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

std::vector<std::vector<int32_t>> CorpusPrompts(const engine::Tokenizer& tokenizer) {
  std::ifstream in(std::string(SPECMOE_SOURCE_DIR) + "/deploy/demo/corpus.txt");
  std::vector<std::vector<int32_t>> prompts;
  std::string line;
  int seen = 0;
  while (std::getline(in, line) && prompts.size() < 8) {
    if (line.size() < 40 || ++seen % 97 != 0) continue;
    std::vector<int32_t> ids = tokenizer.Encode(line.substr(0, 60), true);
    prompts.push_back(ids);
  }
  if (prompts.empty()) prompts.push_back({1});
  return prompts;
}

struct Run {
  double seconds = 0;
  int tokens = 0;
  int steps = 0;
};

Run Decode(engine::Harness& g, const std::vector<std::vector<int32_t>>& prompts,
           const std::vector<int>* expansion, int max_tokens) {
  Run run;
  for (const std::vector<int32_t>& prompt : prompts) {
    engine::GenerationRequest r;
    r.prompt_ids = prompt;
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    r.speculation.disable = expansion == nullptr;
    if (expansion) r.speculation.expansion = *expansion;
    absl::StatusOr<engine::Sequence*> seq = g.Start(r);
    if (!seq.ok()) continue;
    const auto start = Clock::now();
    int steps = 1;
    engine::HarnessOutput out = g.Step(**seq);
    for (; !out.finished; ++steps) out = g.Step(**seq);
    run.seconds += Seconds(start);
    run.steps += steps;
    run.tokens += out.final_event.completion_tokens;
  }
  return run;
}

std::string Shape(const std::vector<int>& e) {
  std::string s = "<";
  for (size_t i = 0; i < e.size(); ++i) s += (i ? "," : "") + std::to_string(e[i]);
  return s + ">";
}

int Main(int argc, char** argv) {
  const std::string demo = std::string(SPECMOE_BINARY_DIR) + "/demo";
  engine::EngineOptions options;
  options.target_dir = argc > 2 ? argv[1] : demo + "/target";
  options.draft_dir = argc > 2 ? argv[2] : demo + "/draft";
  options.max_context = 512;
  options.max_batch = 1;
  absl::StatusOr<std::unique_ptr<engine::Harness>> made = engine::Harness::Create(options);
  if (!made.ok()) {
    std::fprintf(stderr, "%s\n", std::string(made.status().message()).c_str());
    return 1;
  }
  engine::Harness& g = **made;
  std::printf("target %s: %.1f MB read per token; draft %s: %.1f MB (ratio 1/%.1f)\n\n",
              options.target_dir.c_str(), g.target().bytes_per_token() / 1e6,
              options.draft_dir.c_str(), g.draft()->bytes_per_token() / 1e6,
              static_cast<double>(g.target().bytes_per_token()) / g.draft()->bytes_per_token());

  // Cost curves at a context of 128 committed tokens.
  engine::GenerationRequest hold;
  hold.prompt_ids.assign(129, 5);
  hold.prompt_ids[0] = 1;
  hold.max_tokens = 200;
  absl::StatusOr<engine::Sequence*> seq = g.Start(hold);
  if (!seq.ok() || !g.Hold(**seq).ok()) return 1;
  std::map<int, double> verify, draft;
  std::printf("| tree tokens n | target pass (ms) | x one token | draft pass (ms) |\n");
  std::printf("|---:|---:|---:|---:|\n");
  for (int n : {1, 2, 4, 8, 16, 32, 64}) {
    verify[n] = ForwardCost(g.target(), g.target_cache(), (*seq)->target_blocks, 128, n);
    draft[n] = ForwardCost(*g.draft(), *g.draft_cache(), (*seq)->draft_blocks, 128, n);
    std::printf("| %d | %.2f | %.2f | %.2f |\n", n, verify[n] * 1e3, verify[n] / verify[1],
                draft[n] * 1e3);
  }
  g.Cancel(**seq);
  auto cost = [](const std::map<int, double>& curve, int n) {
    auto hi = curve.lower_bound(n);
    if (hi == curve.end()) return curve.rbegin()->second;
    if (hi->first == n || hi == curve.begin()) return hi->second;
    auto lo = std::prev(hi);
    const double t = static_cast<double>(n - lo->first) / (hi->first - lo->first);
    return lo->second + t * (hi->second - lo->second);
  };

  const std::vector<std::vector<int32_t>> prompts = CorpusPrompts(g.tokenizer());
  const int max_tokens = 96;
  const Run plain = Decode(g, prompts, nullptr, max_tokens);
  const double plain_tps = plain.tokens / plain.seconds;
  std::printf("\nplain greedy decoding: %.1f tokens/s (%d prompts x %d tokens)\n\n",
              plain_tps, static_cast<int>(prompts.size()), max_tokens);
  std::printf("| tree | nodes | tokens/step | tokens/s | speedup measured | predicted | "
              "measured/predicted | predicted at 3.2 tokens/step |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
  const std::vector<std::vector<int>> shapes = {
      {1}, {1, 1}, {1, 1, 1}, {1, 1, 1, 1}, {1, 1, 1, 1, 1, 1}, {2, 1, 1},
      {2, 2, 1}, {4}, {2, 1, 1, 1, 1}, {1, 1, 3, 1, 1, 1, 1, 1}};
  for (const std::vector<int>& shape : shapes) {
    const Run spec = Decode(g, prompts, &shape, max_tokens);
    const double tps = spec.tokens / spec.seconds;
    const double per_step = static_cast<double>(spec.tokens) / spec.steps;
    // Step cost from the curves: draft catch-up (about 1.5 tokens on average), one draft pass
    // per non-leaf level, one target pass over root + tree.
    double step = cost(draft, 2) * 0.5 + cost(draft, 1) * 0.5;
    int width = 1, nodes = 1;
    for (size_t level = 0; level < shape.size(); ++level) {
      width *= shape[level];
      nodes += width;
      if (level + 1 < shape.size()) step += cost(draft, width);
    }
    step += cost(verify, nodes);
    const double predicted = per_step * verify[1] / step;
    std::printf("| %s | %d | %.2f | %.1f | %.2fx | %.2fx | %.0f%% | %.2fx |\n",
                Shape(shape).c_str(), nodes - 1, per_step, tps, tps / plain_tps, predicted,
                100.0 * (tps / plain_tps) / predicted, 3.2 * verify[1] / step);
  }
  return 0;
}

}  // namespace
}  // namespace specmoe

int main(int argc, char** argv) { return specmoe::Main(argc, argv); }
