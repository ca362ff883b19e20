// tests/serving_bench.cc — many requests at once through the engine (a benchmark,
// not a timed test): aggregate output tokens/s and per-request inter-token times at 1, 2,
// 4, 8 and 16 concurrent requests, with speculation off, static trees and dynamic trees,
// beside the bandwidth floor; then the goals as ratios, each met or not met.
//
// Not a test: run it by hand (README, Benchmarks),
//   build/tests/serving_bench [--quick] [--target DIR --draft DIR] [--rounds R] ...
// (--help lists every flag). Default models: the demo pair of deploy/quickstart.sh,
// <build>/demo/{target,draft} (made by deploy/make_demo_models.py --out <build>/demo), f32.
//
// Method. Everything goes through engine::Engine (Create, Submit with an EventSink), no
// network. Two engines are loaded: one with --tree-policy static (speculation off: the
// request's speculation.disable; static trees: the request's expansion, one per
// --static-tree) and one with dynamic trees (the request's expansion, --tree, is the most a
// tree may hold). For each concurrency N and each of R rounds: the read bandwidth is measured,
// then every configuration in turn (the order rotates by round, so the shared machine's
// moods fall on each alike) submits N requests together, greedy, ignore_eos, max_tokens
// --output-tokens, and waits until all finish.
//  - Prompts: exactly --prompt-tokens (64) ids: BOS + the demo corpus text from the verse of
//    one line of client/data/prompts.jsonl on (its "source" names the corpus line), cut at
//    64; request i of round r takes prompt (r * N + i) mod 200, the same for every
//    configuration. Real text, so the draft is accepted as often as on real requests.
//  - Output tokens/s: the output tokens of all rounds over the sum of the rounds' wall times
//    (first Submit to the last request's final event).
//  - Inter-token time (ITL) as vllm bench serve (and specmoe-cli bench) define it: the gap
//    between consecutive token-carrying events of a request; an event carrying k tokens (one
//    verify step) is ONE gap, its k tokens share its arrival. p50 and p99 over the gaps of
//    every request of every round (pooled, as vLLM pools them). TPOT beside it: per request
//    (last arrival - first arrival) / (tokens - 1), its median over requests: the per-token
//    pace, which speculation lowers while it raises the gap between events.
//  - TTFT: Submit to the first token-carrying event, median over requests.
//  - Floor: tokens/s if each plain step read the target's weights once plus each request's
//    K/V at the mean context (prompt + output / 2) at the read bandwidth measured in the same
//    rounds (median): N * bandwidth / (weight bytes + N * K/V bytes). Speculation can pass it.
//  - tok/step: output tokens over the verify steps the engine reports; preempted: the
//    engine's counter (EngineStats::preempted) across the configuration's rounds; peak KV:
//    the most target KV blocks in use at any token event, as a share of the cache.
// Goals (on the 2-core VM): output tokens/s at 8 concurrent >= 3x at 1; dynamic
// trees >= 0.95x speculation off at every concurrency and >= 1.6x at 1; dynamic trees >= the
// best static tree at every concurrency. Printed as ratios with met / not met.
// Defaults: static trees <1,1>, <1,1,1> (the CPU's best, README Speculation) and SpecInfer's
// <1,1,3,1,1,1,1,1>, which is also the dynamic trees' maximum; 3 rounds (5 configurations x
// 31 requests x 128 tokens per round: half an hour at round-robin speed on the 2-core VM).
// --quick: concurrency 1 and 8, one round, 16 output tokens, the first static tree only (a
// smoke run of about a minute; flags given explicitly still win). Works with any engine
// behind engine.h: the figures change with the scheduler, not the program.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/loader/model_config.h"
#include "engine/loader/weights.h"
#include "engine/model/model.h"
#include "engine/serving/engine.h"
#include "engine/text/tokenizer.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"
#include "tests/bench_util.h"

namespace specmoe {
namespace {

using bench::Clock;
using bench::Median;
using bench::Percentile;
using bench::Seconds;

struct Flags {
  std::string target_dir = std::string(SPECMOE_BINARY_DIR) + "/demo/target";
  std::string draft_dir = std::string(SPECMOE_BINARY_DIR) + "/demo/draft";
  std::string prompts_file = std::string(SPECMOE_SOURCE_DIR) + "/client/data/prompts.jsonl";
  std::string corpus_file = std::string(SPECMOE_SOURCE_DIR) + "/deploy/demo/corpus.txt";
  std::string concurrency = "1,2,4,8,16";
  std::string modes = "off,static,dynamic";
  std::string tree = absl::StrJoin(engine::kDefaultExpansion, ",");  // the server's default
  // The CPU's two best (README, Speculation) and SpecInfer's default.
  std::vector<std::string> static_trees = {"1,1", "1,1,1", "1,1,3,1,1,1,1,1"};
  int rounds = 3;
  int prompt_tokens = 64;
  int output_tokens = 128;
  int threads = 0;
  int max_context = 512;
  int max_step_tokens = engine::EngineOptions().max_step_tokens;
  int kv_cache_tokens = 0;
  bool quick = false;
};

absl::StatusOr<std::vector<int>> IntList(const std::string& text, const char* flag) {
  std::vector<int> values;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int value = 0;
    if (!absl::SimpleAtoi(part, &value) || value < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": expected positive integers separated by commas, got '", text,
                       "'"));
    }
    values.push_back(value);
  }
  return values;
}

std::string Shape(const std::vector<int>& e) { return "<" + absl::StrJoin(e, ",") + ">"; }

// One way of serving the requests of a round.
struct Config {
  std::string label;               // "off", "static <1,1,1>", "dynamic <...>"
  enum class Kind { kOff, kStatic, kDynamic } kind;
  engine::Engine* engine = nullptr;
  std::vector<int> expansion;      // the request's (kStatic: the tree; kDynamic: its maximum)
};

// What one request's events showed; written by the engine's worker thread until its final
// event, read by the main thread after the round's count says it finished.
struct RequestRecord {
  Clock::time_point submitted;
  std::vector<Clock::time_point> arrivals;  // token-carrying events
  int tokens = 0;
  int verify_steps = 0;
  absl::Status status;
};

struct Round {
  std::mutex mu;
  std::condition_variable cv;
  int finished = 0;  // guarded by mu
  std::vector<RequestRecord> records;
  std::atomic<int> peak_kv_blocks{0};
};

// Everything measured for one configuration at one concurrency, over the rounds.
struct Cell {
  double seconds = 0;
  int tokens = 0;
  int verify_steps = 0;
  int preempted = 0;
  int peak_kv_blocks = 0;
  int kv_blocks = 0;
  std::vector<double> itl, tpot, ttft;
  std::vector<double> bandwidth_gbs;
  double tps() const { return seconds > 0 ? tokens / seconds : 0; }
};

// Submits `prompts.size()` requests together and waits for all of them. Adds to `cell`.
absl::Status RunRound(const Config& config, const std::vector<std::vector<int32_t>>& prompts,
                      int output_tokens, const std::string& id_prefix, Cell& cell) {
  engine::Engine& engine = *config.engine;
  const engine::EngineStats& stats = engine.stats();
  auto round = std::make_shared<Round>();  // the sinks keep it alive
  round->records.resize(prompts.size());
  const int preempted_before = stats.preempted.load(std::memory_order_relaxed);
  std::vector<std::shared_ptr<engine::RequestHandle>> handles;
  const Clock::time_point start = Clock::now();
  for (size_t i = 0; i < prompts.size(); ++i) {
    engine::GenerationRequest request;
    request.request_id = absl::StrCat(id_prefix, "-", i);
    request.prompt_ids = prompts[i];
    request.max_tokens = output_tokens;
    request.ignore_eos = true;
    request.speculation.disable = config.kind == Config::Kind::kOff;
    request.speculation.expansion = config.expansion;
    round->records[i].submitted = Clock::now();
    const engine::EngineStats* engine_stats = &stats;
    absl::StatusOr<std::shared_ptr<engine::RequestHandle>> handle = engine.Submit(
        std::move(request), [round, i, engine_stats](engine::GenerationEvent event) {
          RequestRecord& r = round->records[i];
          if (!event.token_ids.empty()) {
            r.arrivals.push_back(Clock::now());
            r.tokens += static_cast<int>(event.token_ids.size());
          }
          const int used = engine_stats->kv_blocks_used.load(std::memory_order_relaxed);
          if (used > round->peak_kv_blocks.load(std::memory_order_relaxed)) {
            round->peak_kv_blocks.store(used, std::memory_order_relaxed);
          }
          if (!event.finished) return;
          r.verify_steps = event.speculation.verify_steps;
          r.status = event.status;
          {
            std::lock_guard<std::mutex> lock(round->mu);
            ++round->finished;
          }
          round->cv.notify_all();
        });
    if (!handle.ok()) {
      return absl::Status(handle.status().code(),
                          absl::StrCat(config.label, ": Submit: ", handle.status().message()));
    }
    handles.push_back(*std::move(handle));
  }
  {
    std::unique_lock<std::mutex> lock(round->mu);
    const bool done = round->cv.wait_for(lock, std::chrono::minutes(30), [&] {
      return round->finished == static_cast<int>(prompts.size());
    });
    if (!done) {
      for (auto& h : handles) h->Cancel();
      round->cv.wait(lock, [&] { return round->finished == static_cast<int>(prompts.size()); });
      return absl::DeadlineExceededError(absl::StrCat(config.label, ": a round took 30 min"));
    }
  }
  Clock::time_point end = start;
  for (const RequestRecord& r : round->records) {
    if (!r.status.ok()) {
      return absl::Status(r.status.code(),
                          absl::StrCat(config.label, ": a request failed: ", r.status.message()));
    }
    if (r.arrivals.empty()) continue;
    end = std::max(end, r.arrivals.back());
    cell.tokens += r.tokens;
    cell.verify_steps += r.verify_steps;
    cell.ttft.push_back(Seconds(r.submitted, r.arrivals.front()));
    for (size_t k = 1; k < r.arrivals.size(); ++k) {
      cell.itl.push_back(Seconds(r.arrivals[k - 1], r.arrivals[k]));
    }
    if (r.tokens > 1) {
      cell.tpot.push_back(Seconds(r.arrivals.front(), r.arrivals.back()) / (r.tokens - 1));
    }
  }
  cell.seconds += Seconds(start, end);
  cell.preempted += stats.preempted.load(std::memory_order_relaxed) - preempted_before;
  cell.peak_kv_blocks = std::max(cell.peak_kv_blocks, round->peak_kv_blocks.load());
  cell.kv_blocks = stats.kv_blocks_used.load(std::memory_order_relaxed) +
                   stats.kv_blocks_free.load(std::memory_order_relaxed);
  return absl::OkStatus();
}

// The corpus line named by a prompts.jsonl "source" ("deploy/demo/corpus.txt line N: ...").
absl::StatusOr<std::vector<std::vector<int32_t>>> LoadPrompts(const Flags& flags,
                                                              const engine::Tokenizer& tok) {
  std::ifstream corpus_in(flags.corpus_file);
  if (!corpus_in) return absl::NotFoundError(absl::StrCat("cannot read ", flags.corpus_file));
  std::vector<std::string> corpus;
  for (std::string line; std::getline(corpus_in, line);) corpus.push_back(line);
  std::ifstream in(flags.prompts_file);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", flags.prompts_file));
  const std::regex source_line(R"(line (\d+))");
  std::vector<std::vector<int32_t>> prompts;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    std::smatch m;
    const std::string source = j.is_object() ? j.value("source", "") : "";
    if (!std::regex_search(source, m, source_line)) {
      return absl::InvalidArgumentError(
          absl::StrCat(flags.prompts_file, ": a line without \"source\": \"... line N\": ", line));
    }
    // Lines are numbered from 1; take text from there until the prompt is long enough.
    std::string text;
    std::vector<int32_t> ids;
    for (size_t n = std::stoul(m[1].str()) - 1; n < corpus.size(); ++n) {
      if (corpus[n].empty()) continue;
      absl::StrAppend(&text, text.empty() ? "" : " ", corpus[n]);
      ids = tok.Encode(text, /*add_bos=*/true);
      if (static_cast<int>(ids.size()) >= flags.prompt_tokens) break;
    }
    if (static_cast<int>(ids.size()) < flags.prompt_tokens) continue;  // near the corpus end
    ids.resize(flags.prompt_tokens);
    prompts.push_back(std::move(ids));
  }
  if (prompts.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no prompt of ", flags.prompt_tokens,
                                                   " tokens from ", flags.prompts_file));
  }
  return prompts;
}

// Weight bytes and K/V bytes per token of the target, from its own Model (the definition the
// decode benchmark uses).
struct TargetBytes {
  double weights = 0;
  double kv_per_token = 0;
};

absl::StatusOr<TargetBytes> MeasureTargetBytes(const std::string& dir) {
  absl::StatusOr<engine::ModelConfig> config = engine::LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<engine::WeightStore>> store = engine::WeightStore::Open(dir);
  if (!store.ok()) return store.status();
  absl::StatusOr<engine::ModelWeights> weights = engine::BindModelWeights(*config, **store);
  if (!weights.ok()) return weights.status();
  std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend(1);
  absl::StatusOr<std::unique_ptr<engine::Model>> model =
      engine::Model::Create(*config, *weights, backend.get(), 1);
  if (!model.ok()) return model.status();
  TargetBytes bytes{static_cast<double>((*model)->bytes_per_token()),
                    bench::KvBytesPerToken(**model)};
  model->reset();  // before the backend whose memory it holds
  return bytes;
}

const char* Met(bool met) { return met ? "met" : "NOT MET"; }

int Main(int argc, char** argv) {
  Flags flags;
  CLI::App app("Serving benchmark: concurrent requests through the engine.",
               "serving_bench");
  app.option_defaults()->always_capture_default();
  app.add_option("--target", flags.target_dir, "target model folder");
  app.add_option("--draft", flags.draft_dir, "draft model folder");
  app.add_option("--prompts", flags.prompts_file, "prompt file (JSON lines with a \"source\")");
  app.add_option("--corpus", flags.corpus_file, "the corpus the prompts' sources point into");
  CLI::Option* concurrency_opt =
      app.add_option("--concurrency", flags.concurrency, "concurrent requests, a list");
  app.add_option("--modes", flags.modes, "configurations: off,static,dynamic");
  app.add_option("--tree", flags.tree, "dynamic trees: the most a tree may hold");
  CLI::Option* static_opt =
      app.add_option("--static-tree", flags.static_trees, "static trees (repeat the flag)");
  CLI::Option* rounds_opt = app.add_option("--rounds", flags.rounds, "rounds per concurrency")
                                ->check(CLI::Range(1, 1000));
  app.add_option("--prompt-tokens", flags.prompt_tokens, "prompt length in tokens")
      ->check(CLI::Range(2, 4096));
  CLI::Option* output_opt =
      app.add_option("--output-tokens", flags.output_tokens, "output tokens per request")
          ->check(CLI::Range(2, 4096));
  app.add_option("--threads", flags.threads, "CPU threads (0: all cores)")
      ->check(CLI::Range(0, 1024));
  app.add_option("--max-context", flags.max_context, "the engines' context length")
      ->check(CLI::Range(16, 1 << 20));
  app.add_option("--max-step-tokens", flags.max_step_tokens, "the engines' step budget")
      ->check(CLI::Range(1, 32768));
  app.add_option("--kv-cache-tokens", flags.kv_cache_tokens,
                 "the engines' KV budget (0: the engine's default)")
      ->check(CLI::Range(0, 1 << 30));
  app.add_flag("--quick", flags.quick,
               "smoke run: concurrency 1,8, one round, 16 output tokens, the first static tree");
  CLI11_PARSE(app, argc, argv);
  if (flags.quick) {
    if (concurrency_opt->count() == 0) flags.concurrency = "1,8";
    if (rounds_opt->count() == 0) flags.rounds = 1;
    if (output_opt->count() == 0) flags.output_tokens = 16;
    if (static_opt->count() == 0) flags.static_trees.resize(1);
  }

  absl::StatusOr<std::vector<int>> concurrency = IntList(flags.concurrency, "--concurrency");
  absl::StatusOr<std::vector<int>> max_tree = IntList(flags.tree, "--tree");
  if (!concurrency.ok() || !max_tree.ok()) {
    std::fprintf(stderr, "%s\n",
                 std::string((concurrency.ok() ? max_tree : concurrency).status().message())
                     .c_str());
    return 2;
  }
  std::vector<std::vector<int>> static_trees;
  for (const std::string& text : flags.static_trees) {
    absl::StatusOr<std::vector<int>> tree = IntList(text, "--static-tree");
    if (!tree.ok()) {
      std::fprintf(stderr, "%s\n", std::string(tree.status().message()).c_str());
      return 2;
    }
    static_trees.push_back(*tree);
  }
  const std::vector<std::string> modes = absl::StrSplit(flags.modes, ',');
  auto wants = [&](const char* mode) {
    return std::find(modes.begin(), modes.end(), mode) != modes.end();
  };
  for (const std::string& mode : modes) {
    if (mode != "off" && mode != "static" && mode != "dynamic") {
      std::fprintf(stderr, "--modes: '%s' is none of off, static, dynamic\n", mode.c_str());
      return 2;
    }
  }
  const int max_n = *std::max_element(concurrency->begin(), concurrency->end());

  absl::StatusOr<TargetBytes> bytes = MeasureTargetBytes(flags.target_dir);
  if (!bytes.ok()) {
    std::fprintf(stderr, "%s: %s\n", flags.target_dir.c_str(),
                 std::string(bytes.status().message()).c_str());
    return 1;
  }
  engine::EngineOptions options;
  options.target_dir = flags.target_dir;
  options.draft_dir = wants("static") || wants("dynamic") ? flags.draft_dir : "";
  options.threads = flags.threads;
  options.expansion = *max_tree;
  options.max_queue = std::max(options.max_queue, max_n);
  options.max_batch = max_n;
  options.max_context = flags.max_context;
  options.max_step_tokens = flags.max_step_tokens;
  options.kv_cache_tokens = flags.kv_cache_tokens;
  std::unique_ptr<engine::Engine> static_engine, dynamic_engine;
  for (auto policy : {engine::EngineOptions::TreePolicy::kStatic,
                      engine::EngineOptions::TreePolicy::kDynamic}) {
    const bool is_static = policy == engine::EngineOptions::TreePolicy::kStatic;
    if (!(is_static ? wants("off") || wants("static") : wants("dynamic"))) continue;
    options.tree_policy = policy;
    absl::StatusOr<std::unique_ptr<engine::Engine>> made = engine::Engine::Create(options);
    if (!made.ok()) {
      std::fprintf(stderr, "%s\n", std::string(made.status().message()).c_str());
      return 1;
    }
    (is_static ? static_engine : dynamic_engine) = *std::move(made);
  }
  std::vector<Config> configs;
  if (wants("off")) configs.push_back({"off", Config::Kind::kOff, static_engine.get(), {}});
  if (wants("static")) {
    for (const std::vector<int>& tree : static_trees) {
      configs.push_back(
          {"static " + Shape(tree), Config::Kind::kStatic, static_engine.get(), tree});
    }
  }
  if (wants("dynamic")) {
    configs.push_back(
        {"dynamic " + Shape(*max_tree), Config::Kind::kDynamic, dynamic_engine.get(), *max_tree});
  }
  const engine::Engine& any_engine = static_engine ? *static_engine : *dynamic_engine;
  absl::StatusOr<std::vector<std::vector<int32_t>>> prompts =
      LoadPrompts(flags, any_engine.tokenizer());
  if (!prompts.ok()) {
    std::fprintf(stderr, "%s\n", std::string(prompts.status().message()).c_str());
    return 1;
  }

  const double context = flags.prompt_tokens + flags.output_tokens / 2.0;
  std::printf("target %s (%s): %.1f MB of weights read per token, %.1f KB of K/V per context "
              "token; draft %s\n",
              flags.target_dir.c_str(), any_engine.dtype().c_str(), bytes->weights / 1e6,
              bytes->kv_per_token / 1e3,
              options.draft_dir.empty() ? "none" : options.draft_dir.c_str());
  std::printf("%zu prompts of %d tokens (demo corpus), %d output tokens, greedy, ignore_eos; "
              "concurrency %s, %d round%s each; threads %d, max_step_tokens %d\n\n",
              prompts->size(), flags.prompt_tokens, flags.output_tokens,
              flags.concurrency.c_str(), flags.rounds, flags.rounds == 1 ? "" : "s",
              flags.threads, flags.max_step_tokens);

  // Warm-up: every configuration once (page faults of the fresh mmaps, first allocations).
  for (const Config& config : configs) {
    Cell scratch;
    absl::Status ok = RunRound(config, {prompts->front()}, 8, "warmup", scratch);
    if (!ok.ok()) {
      std::fprintf(stderr, "%s\n", std::string(ok.message()).c_str());
      return 1;
    }
  }

  // cells[config][n]
  std::vector<std::map<int, Cell>> cells(configs.size());
  for (int n : *concurrency) {
    for (int round = 0; round < flags.rounds; ++round) {
      std::vector<std::vector<int32_t>> batch;
      for (int i = 0; i < n; ++i) {
        batch.push_back((*prompts)[(static_cast<size_t>(round) * n + i) % prompts->size()]);
      }
      const double gbs = bench::ReadBandwidthGBs();
      for (size_t k = 0; k < configs.size(); ++k) {
        const size_t c = (k + round) % configs.size();
        Cell& cell = cells[c][n];
        cell.bandwidth_gbs.push_back(gbs);
        absl::Status ok = RunRound(configs[c], batch, flags.output_tokens,
                                   absl::StrCat("n", n, "-r", round), cell);
        if (!ok.ok()) {
          std::fprintf(stderr, "%s\n", std::string(ok.message()).c_str());
          return 1;
        }
      }
    }
  }

  std::printf("| configuration | concurrency | output tok/s | floor tok/s | %% of floor | "
              "p50 ITL ms | p99 ITL ms | p50 TPOT ms | p50 TTFT ms | tok/step | preempted | "
              "peak KV |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (size_t c = 0; c < configs.size(); ++c) {
    for (int n : *concurrency) {
      const Cell& cell = cells[c][n];
      const double floor_tps = n * Median(cell.bandwidth_gbs) * 1e9 /
                               (bytes->weights + n * bytes->kv_per_token * context);
      char per_step[32] = "-";
      if (cell.verify_steps > 0) {
        std::snprintf(per_step, sizeof(per_step), "%.2f",
                      static_cast<double>(cell.tokens) / cell.verify_steps);
      }
      std::printf("| %s | %d | %.1f | %.1f | %.0f%% | %.1f | %.1f | %.1f | %.1f | %s | %d | "
                  "%.0f%% |\n",
                  configs[c].label.c_str(), n, cell.tps(), floor_tps,
                  100.0 * cell.tps() / floor_tps, Percentile(cell.itl, 50) * 1e3,
                  Percentile(cell.itl, 99) * 1e3, Percentile(cell.tpot, 50) * 1e3,
                  Percentile(cell.ttft, 50) * 1e3, per_step, cell.preempted,
                  cell.kv_blocks > 0 ? 100.0 * cell.peak_kv_blocks / cell.kv_blocks : 0.0);
    }
  }

  // The issue's goals.
  auto find = [&](Config::Kind kind) -> int {
    for (size_t c = 0; c < configs.size(); ++c) {
      if (configs[c].kind == kind) return static_cast<int>(c);
    }
    return -1;
  };
  auto has_n = [&](int n) {
    return std::find(concurrency->begin(), concurrency->end(), n) != concurrency->end();
  };
  const int off = find(Config::Kind::kOff), dynamic = find(Config::Kind::kDynamic);
  std::printf("\n| goal | concurrency | ratio | bar | |\n|---|---:|---:|---:|---|\n");
  int not_met = 0;
  auto goal = [&](const std::string& what, int n, double ratio, double bar) {
    std::printf("| %s | %d | %.2fx | %.2fx | %s |\n", what.c_str(), n, ratio, bar,
                Met(ratio >= bar));
    if (ratio < bar) ++not_met;
  };
  if (has_n(1) && has_n(8)) {
    for (size_t c = 0; c < configs.size(); ++c) {
      goal(configs[c].label + ": tok/s at 8 vs at 1", 8,
           cells[c][8].tps() / cells[c][1].tps(), 3.0);
    }
  }
  if (off >= 0 && dynamic >= 0) {
    for (int n : *concurrency) {
      goal("dynamic vs off", n, cells[dynamic][n].tps() / cells[off][n].tps(),
           n == 1 ? 1.6 : 0.95);
    }
  }
  if (dynamic >= 0) {
    for (int n : *concurrency) {
      double best = 0;
      std::string best_label;
      for (size_t c = 0; c < configs.size(); ++c) {
        if (configs[c].kind == Config::Kind::kStatic && cells[c][n].tps() > best) {
          best = cells[c][n].tps();
          best_label = configs[c].label;
        }
      }
      if (best > 0) {
        goal("dynamic vs best static (" + best_label + ")", n,
             cells[dynamic][n].tps() / best, 1.0);
      }
    }
  }
  std::printf("\n%d goal row%s not met (the dynamic-vs-off bar is 1.6x at concurrency 1, "
              "0.95x elsewhere)\n",
              not_met, not_met == 1 ? "" : "s");
  return 0;
}

}  // namespace
}  // namespace specmoe

int main(int argc, char** argv) { return specmoe::Main(argc, argv); }
