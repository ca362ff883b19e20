// engine/spec/drafter.cc — drafting the trees of many sequences level by level (drafter.h).
//
// Slot layout (engine/README.md): the draft holds committed tokens at logical slots [0, r] after
// its catch-up (the root r included); tree node i is written at slot r + i. Leaves are
// never run through the draft: when the accepted path ends at a leaf, the draft catches up
// on it together with the bonus token next step.
#include "engine/spec/drafter.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "engine/spec/logits.h"
#include "engine/spec/sampler.h"
#include "kernels/check.h"

namespace specmoe::engine {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

Drafter::Drafter(Model* draft, KvCache* cache, TreePolicy* policy)
    : runner_(draft, cache),
      policy_(policy),
      backend_(draft->backend()),
      vocab_(draft->config().vocab_size) {}

void Drafter::NodeDistribution(const DraftJob& job, int node, const LogitsView& view, int row,
                               std::vector<float>* dist) const {
  const std::vector<int32_t> context = PathContext(job.tokens, job.tree, node, *job.params);
  if (job.params->greedy()) {
    RowPenalizedLogits(view, row, job.params->repetition_penalty, context, dist);
  } else {
    RowDistribution(view, row, *job.params, context, dist);
  }
}

DraftTiming Drafter::Draft(std::span<DraftJob* const> jobs, std::span<const DraftCatchUp> catch_ups,
                           int token_room) {
  DraftTiming timing;
  std::vector<Frontier> frontier(jobs.size());
  for (DraftJob* job : jobs) {
    job->tree.Reset(job->tokens.back());
    job->node_q = {1.0f};
    job->value = {1.0};
    job->non_finite.reset();
  }
  // 1. Catch-up: every job's unseen committed tokens through its root, and the chunks.
  const Clock::time_point catch_up_start = Clock::now();
  CatchUp(jobs, catch_ups, frontier, timing);
  timing.catch_up_seconds = SecondsSince(catch_up_start);
  // 2. Levels, each drafted for every job at once, until no job has a frontier left.
  const Clock::time_point levels_start = Clock::now();
  for (int level = 1; DraftLevel(level, jobs, frontier, token_room, timing); ++level) {
  }
  timing.level_seconds = SecondsSince(levels_start);
  return timing;
}

void Drafter::CatchUp(std::span<DraftJob* const> jobs, std::span<const DraftCatchUp> catch_ups,
                      std::vector<Frontier>& frontier, DraftTiming& timing) {
  struct Piece {
    const SequenceBlocks* blocks;
    std::span<const int32_t> tokens;
    int from, to;
    int job;  // -1: a prefill chunk (no logits)
  };
  std::vector<Piece> pieces;
  for (size_t j = 0; j < jobs.size(); ++j) {
    pieces.push_back({jobs[j]->blocks, jobs[j]->tokens, jobs[j]->draft_len, jobs[j]->root_pos() + 1,
                      static_cast<int>(j)});
  }
  for (const DraftCatchUp& c : catch_ups) {
    if (c.from < c.to) pieces.push_back({c.blocks, c.tokens, c.from, c.to, -1});
  }
  // One forward, or more when the pieces exceed the model's max_tokens: each root's
  // distribution is read right after the forward that holds it.
  std::vector<std::pair<int, int>> rows;  // (job, logit row) of this forward
  auto run = [&] {
    const LogitsView view{backend_, runner_.Run(), runner_.logit_rows(), vocab_};
    timing.catch_up_tokens += runner_.tokens();
    for (auto [j, row] : rows) {
      DraftJob& job = *jobs[j];
      job.non_finite = FindNonFinite(view, row, 1);
      if (job.non_finite.has_value()) continue;
      frontier[j].nodes = {0};
      frontier[j].dist.resize(1);
      NodeDistribution(job, 0, view, row, &frontier[j].dist[0]);
    }
    rows.clear();
    runner_.Clear();
  };
  runner_.Clear();
  for (const Piece& piece : pieces) {
    for (int from = piece.from; from < piece.to;) {
      if (runner_.room() == 0) run();
      const int to = std::min(piece.to, from + runner_.room());
      const bool last = to == piece.to && piece.job >= 0;
      const int row = runner_.AddCausal(*piece.blocks, piece.tokens, from, to, last);
      if (last) rows.emplace_back(piece.job, row);
      from = to;
    }
  }
  if (!runner_.empty()) run();
}

bool Drafter::DraftLevel(int level, std::span<DraftJob* const> jobs,
                         std::vector<Frontier>& frontier, int& token_room, DraftTiming& timing) {
  // The policy sets each frontier node's number of children from the draft's top
  // probabilities there, before any child is drawn.
  std::vector<int> active;
  for (size_t j = 0; j < jobs.size(); ++j) {
    if (!jobs[j]->non_finite.has_value() && !frontier[j].nodes.empty() &&
        static_cast<int>(jobs[j]->step_shape.size()) >= level) {
      active.push_back(static_cast<int>(j));
    }
  }
  if (active.empty()) return false;
  std::vector<std::vector<double>> values(active.size());
  std::vector<std::vector<std::vector<float>>> top_q(active.size());
  std::vector<LevelRequest> requests(active.size());
  for (size_t a = 0; a < active.size(); ++a) {
    const DraftJob& job = *jobs[active[a]];
    const Frontier& f = frontier[active[a]];
    const int k = job.step_shape[level - 1];
    for (size_t i = 0; i < f.nodes.size(); ++i) {
      values[a].push_back(job.value[f.nodes[i]]);
      top_q[a].push_back(job.params->greedy() ? TopSoftmaxProbabilities(f.dist[i].data(), vocab_, k)
                                              : TopProbabilities(f.dist[i].data(), vocab_, k));
    }
    requests[a] = {k,
                   level,
                   values[a],
                   top_q[a],
                   job.acceptance,
                   level == static_cast<int>(job.step_shape.size()),
                   level <= job.explore_depth};
  }
  // The policy alone decides every node (exploration included) within the room; the
  // counts are decided before drawing, from what is known now: sampled requests stay exact.
  std::vector<std::vector<int>> counts = policy_->Expand(requests, token_room);

  // Draw the children; the new nodes that are not leaves go through the draft together.
  runner_.Clear();
  std::vector<std::pair<int, int>> level_rows;  // (job, first logit row)
  for (size_t a = 0; a < active.size(); ++a) {
    const int j = active[a];
    DraftJob& job = *jobs[j];
    Frontier& f = frontier[j];
    const bool greedy = job.params->greedy();
    const int first_new = job.tree.size();
    if (!greedy && job.verification == SampledVerification::kCoupled) {
      ExpandLevelCoupled(job.tree, f.nodes, f.dist, counts[a], job.params->seed, job.root_pos());
    } else {
      ExpandLevel(job.tree, f.nodes, f.dist, counts[a], greedy, *job.rng);
    }
    // Children come in frontier order, each node's in TopKIds (greedy), score (coupled)
    // or draw order (rejection).
    std::vector<int> next;
    std::vector<int> rank(job.tree.size(), 0);
    for (int i = first_new; i < job.tree.size(); ++i) {
      const int parent = job.tree.parent[i];
      const size_t at = std::find(f.nodes.begin(), f.nodes.end(), parent) - f.nodes.begin();
      const float q = greedy ? top_q[a][at][rank[parent]++] : f.dist[at][job.tree.token[i]];
      job.node_q.push_back(q);
      job.value.push_back(policy_->ChildValue(job.value[parent], level, q, *job.acceptance));
      next.push_back(i);
    }
    token_room -= static_cast<int>(next.size());
    SPECMOE_CHECK(token_room >= 0, "Drafter: the policy's nodes exceed the step's tree room");
    f.nodes = std::move(next);
    f.dist.clear();
    if (level == static_cast<int>(job.step_shape.size()) || f.nodes.empty()) {
      f.nodes.clear();  // leaves are never run through the draft
      continue;
    }
    level_rows.emplace_back(j, runner_.AddTree(*job.blocks, job.root_pos(), job.tree.token,
                                               job.tree.depth, job.tree.mask, f.nodes));
  }
  if (runner_.empty()) return false;
  const LogitsView view{backend_, runner_.Run(), runner_.logit_rows(), vocab_};
  timing.level_tokens += runner_.tokens();
  ++timing.levels;
  for (auto [j, first_row] : level_rows) {
    DraftJob& job = *jobs[j];
    Frontier& f = frontier[j];
    const int n = static_cast<int>(f.nodes.size());
    job.non_finite = FindNonFinite(view, first_row, n);
    if (job.non_finite.has_value()) {
      f.nodes.clear();
      continue;
    }
    f.dist.assign(n, {});
    for (int i = 0; i < n; ++i) NodeDistribution(job, f.nodes[i], view, first_row + i, &f.dist[i]);
  }
  return true;
}

std::vector<float> FirstTestedQ(const DraftJob& job, const VerifyResult& result) {
  std::vector<float> first_q(job.step_shape.size(), 0.0f);
  int node = 0;
  for (size_t d = 0; d < first_q.size(); ++d) {
    const std::vector<int> children = job.tree.Children(node);
    if (children.empty()) break;
    first_q[d] = job.node_q[children[0]];
    if (d >= result.accepted_nodes.size()) break;
    node = result.accepted_nodes[d];
  }
  return first_q;
}

}  // namespace specmoe::engine
