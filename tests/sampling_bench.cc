// tests/sampling_bench.cc — what coupled sampled verification (the default) costs against
// rejection sampling: tokens per verify step and output tokens/s of seeded
// sampled requests at temperatures 0.5, 0.8 and 1.0, for the static trees <1,1,3,1,1,1,1,1>
// and <2,2,1> and for dynamic trees, with plain decoding beside them.
//
// Demo pair by default (deploy/make_demo_models.py --out <build>/demo). One request at a
// time through engine::Engine (no network): --prompts prompts of client/data/prompts.jsonl,
// --tokens tokens each, ignore_eos, seed 1 + prompt index. Prints a Markdown table.
// Not a test: run it by hand,
//   build/tests/sampling_bench [--target DIR --draft DIR] [--prompts N] [--tokens N]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "engine/serving/engine.h"
#include "nlohmann/json.hpp"

namespace specmoe {
namespace {

using Clock = std::chrono::steady_clock;

// One configuration's totals over the prompts.
struct Totals {
  int tokens = 0;
  int steps = 0;
  double seconds = 0;
};

Totals RunAll(engine::Engine& engine, const std::vector<std::string>& prompts, int tokens,
              float temperature, const std::vector<int>& tree, bool speculate) {
  Totals totals;
  for (size_t i = 0; i < prompts.size(); ++i) {
    engine::GenerationRequest r;
    r.prompt_text = prompts[i];
    r.max_tokens = tokens;
    r.ignore_eos = true;
    r.sampling.temperature = temperature;
    r.sampling.seed = 1 + i;
    r.speculation.disable = !speculate;
    r.speculation.expansion = tree;
    std::promise<engine::GenerationEvent> done;
    const Clock::time_point start = Clock::now();
    auto submitted = engine.Submit(r, [&done](engine::GenerationEvent e) {
      if (e.finished) done.set_value(e);
    });
    if (!submitted.ok()) {
      std::fprintf(stderr, "submit: %s\n", submitted.status().ToString().c_str());
      return totals;
    }
    const engine::GenerationEvent last = done.get_future().get();
    totals.seconds += std::chrono::duration<double>(Clock::now() - start).count();
    totals.tokens += last.completion_tokens;
    totals.steps += speculate ? last.speculation.verify_steps : last.completion_tokens;
  }
  return totals;
}

std::unique_ptr<engine::Engine> MakeEngine(const std::string& target, const std::string& draft,
                                           engine::EngineOptions::TreePolicy policy,
                                           engine::SampledVerification mode) {
  engine::EngineOptions options;
  options.target_dir = target;
  options.draft_dir = draft;
  options.tree_policy = policy;
  options.sampled_verification = mode;
  absl::StatusOr<std::unique_ptr<engine::Engine>> engine = engine::Engine::Create(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return nullptr;
  }
  return *std::move(engine);
}

int Main(int argc, char** argv) {
  CLI::App app("coupled vs rejection sampled verification on the demo pair");
  std::string target = std::string(SPECMOE_BINARY_DIR) + "/demo/target";
  std::string draft = std::string(SPECMOE_BINARY_DIR) + "/demo/draft";
  int num_prompts = 4;
  int tokens = 48;
  app.add_option("--target", target, "target model folder");
  app.add_option("--draft", draft, "draft model folder");
  app.add_option("--prompts", num_prompts, "prompts (client/data/prompts.jsonl)");
  app.add_option("--tokens", tokens, "tokens per request");
  CLI11_PARSE(app, argc, argv);

  std::vector<std::string> prompts;
  std::ifstream in(std::string(SPECMOE_SOURCE_DIR) + "/client/data/prompts.jsonl");
  for (std::string line; std::getline(in, line) && static_cast<int>(prompts.size()) < num_prompts;) {
    prompts.push_back(nlohmann::json::parse(line)["prompt"].get<std::string>());
  }
  using Policy = engine::EngineOptions::TreePolicy;
  using Mode = engine::SampledVerification;
  struct Tree {
    const char* name;
    Policy policy;
    std::vector<int> expansion;  // empty: the engine's default (the most a dynamic tree holds)
  };
  const std::vector<Tree> trees = {{"static <1,1,3,1,1,1,1,1>", Policy::kStatic, {}},
                                   {"static <2,2,1>", Policy::kStatic, {2, 2, 1}},
                                   {"dynamic", Policy::kDynamic, {}}};
  std::printf("| T | tree | coupled tok/step | rejection tok/step | coupled tok/s | "
              "rejection tok/s | plain tok/s |\n|---:|---|---:|---:|---:|---:|---:|\n");
  for (const Tree& tree : trees) {
    auto coupled = MakeEngine(target, draft, tree.policy, Mode::kCoupled);
    auto rejection = MakeEngine(target, draft, tree.policy, Mode::kRejection);
    if (coupled == nullptr || rejection == nullptr) return 1;
    for (float t : {0.5f, 0.8f, 1.0f}) {
      const Totals plain = RunAll(*coupled, prompts, tokens, t, tree.expansion, false);
      const Totals c = RunAll(*coupled, prompts, tokens, t, tree.expansion, true);
      const Totals r = RunAll(*rejection, prompts, tokens, t, tree.expansion, true);
      std::printf("| %.1f | %s | %.2f | %.2f | %.1f | %.1f | %.1f |\n", t, tree.name,
                  static_cast<double>(c.tokens) / c.steps, static_cast<double>(r.tokens) / r.steps,
                  c.tokens / c.seconds, r.tokens / r.seconds, plain.tokens / plain.seconds);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace specmoe

int main(int argc, char** argv) { return specmoe::Main(argc, argv); }
