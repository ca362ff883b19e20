// engine/spec/drafter.cc — drafting the trees of many sequences level by level (drafter.h).
//
// Slot layout (DESIGN §4): the draft holds committed tokens at logical slots [0, r] after
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

void Drafter::NodeDistribution(const DraftJob& job, int node, const float* logits, int row,
                               std::vector<float>* dist) const {
  const LogitsView view{backend_, logits, row + 1, vocab_};
  const std::vector<int32_t> context = PathContext(job.tokens, job.tree, node, *job.params);
  if (job.params->greedy()) {
    RowPenalizedLogits(view, row, job.params->repetition_penalty, context, dist);
  } else {
    RowDistribution(view, row, *job.params, context, dist);
  }
}

DraftTiming Drafter::Draft(std::span<DraftJob* const> jobs,
                           std::span<const DraftCatchUp> catch_ups, int token_room) {
  DraftTiming timing;
  std::vector<std::vector<std::vector<float>>> frontier_dist(jobs.size());
  for (DraftJob* job : jobs) {
    job->tree.Reset(job->tokens.back());
    job->node_q = {1.0f};
    job->value = {1.0};
    job->non_finite.reset();
  }

  // 1. Catch-up: every job's unseen committed tokens through its root (logits at the root),
  // and the prefilling sequences' chunks; in as few forwards as the model's size allows.
  struct Piece {
    const SequenceBlocks* blocks;
    std::span<const int32_t> tokens;
    int from, to;
    int job;  // -1: a prefill chunk
  };
  std::vector<Piece> pieces;
  for (size_t j = 0; j < jobs.size(); ++j) {
    pieces.push_back({jobs[j]->blocks, jobs[j]->tokens, jobs[j]->draft_len,
                      jobs[j]->root_pos() + 1, static_cast<int>(j)});
  }
  for (const DraftCatchUp& c : catch_ups) {
    if (c.from < c.to) pieces.push_back({c.blocks, c.tokens, c.from, c.to, -1});
  }
  const Clock::time_point catch_up_start = Clock::now();
  std::vector<std::pair<int, int>> rows;  // (job, logit row) of this forward
  auto run_catch_up = [&] {
    const float* logits = runner_.Run();
    timing.catch_up_tokens += runner_.tokens();
    for (auto [j, row] : rows) {
      DraftJob& job = *jobs[j];
      const LogitsView view{backend_, logits, runner_.logit_rows(), vocab_};
      job.non_finite = FindNonFinite(view, row, 1);
      if (job.non_finite.has_value()) continue;
      frontier_dist[j].resize(1);
      NodeDistribution(job, 0, logits, row, &frontier_dist[j][0]);
    }
    rows.clear();
    runner_.Clear();
  };
  runner_.Clear();
  for (const Piece& piece : pieces) {
    for (int from = piece.from; from < piece.to;) {
      if (runner_.room() == 0) run_catch_up();
      const int to = std::min(piece.to, from + runner_.room());
      const bool last = to == piece.to && piece.job >= 0;
      const int row = runner_.AddCausal(*piece.blocks, piece.tokens, from, to, last);
      if (last) rows.emplace_back(piece.job, row);
      from = to;
    }
  }
  if (!runner_.empty()) run_catch_up();
  timing.catch_up_seconds = SecondsSince(catch_up_start);

  // 2. Levels: the policy sets each frontier node's children, the new nodes are drawn, and
  // (unless they are leaves) run through the draft together.
  std::vector<std::vector<int>> frontier(jobs.size(), std::vector<int>{0});
  const Clock::time_point levels_start = Clock::now();
  for (int level = 1;; ++level) {
    std::vector<int> active;
    for (size_t j = 0; j < jobs.size(); ++j) {
      const DraftJob& job = *jobs[j];
      if (!job.non_finite.has_value() && static_cast<int>(job.shape.size()) >= level &&
          !frontier[j].empty()) {
        active.push_back(static_cast<int>(j));
      }
    }
    if (active.empty()) break;
    std::vector<std::vector<double>> values(active.size());
    std::vector<std::vector<std::vector<float>>> top_q(active.size());
    std::vector<LevelRequest> requests(active.size());
    for (size_t a = 0; a < active.size(); ++a) {
      const DraftJob& job = *jobs[active[a]];
      const int k = job.shape[level - 1];
      for (size_t f = 0; f < frontier[active[a]].size(); ++f) {
        values[a].push_back(job.value[frontier[active[a]][f]]);
        const float* dist = frontier_dist[active[a]][f].data();
        top_q[a].push_back(job.params->greedy() ? TopSoftmaxProbabilities(dist, vocab_, k)
                                                : TopProbabilities(dist, vocab_, k));
      }
      requests[a] = {k, level, values[a], top_q[a], job.acceptance,
                     level == static_cast<int>(job.shape.size())};
    }
    const std::vector<std::vector<int>> counts = policy_->Expand(requests, token_room);

    runner_.Clear();
    std::vector<std::pair<int, int>> level_rows;  // (job, first logit row)
    for (size_t a = 0; a < active.size(); ++a) {
      const int j = active[a];
      DraftJob& job = *jobs[j];
      const bool greedy = job.params->greedy();
      const int first_new = job.tree.size();
      ExpandLevel(job.tree, frontier[j], frontier_dist[j], counts[a], greedy, *job.rng);
      // Children come in frontier order, each node's in TopKIds (greedy) or draw order.
      std::vector<int> next;
      std::vector<int> rank(job.tree.size(), 0);
      for (int i = first_new; i < job.tree.size(); ++i) {
        const int parent = job.tree.parent[i];
        const size_t f = std::find(frontier[j].begin(), frontier[j].end(), parent) -
                         frontier[j].begin();
        const std::vector<float>& dist = frontier_dist[j][f];
        const float q = greedy ? top_q[a][f][rank[parent]++] : dist[job.tree.token[i]];
        job.node_q.push_back(q);
        job.value.push_back(policy_->ChildValue(job.value[parent], level, q, *job.acceptance));
        next.push_back(i);
      }
      token_room -= static_cast<int>(next.size());
      frontier[j] = std::move(next);
      const bool leaves = level == static_cast<int>(job.shape.size());
      if (leaves || frontier[j].empty()) {
        frontier[j].clear();
        continue;
      }
      level_rows.emplace_back(j, runner_.AddTree(*job.blocks, job.root_pos(), job.tree.token,
                                                 job.tree.depth, job.tree.mask, frontier[j]));
    }
    if (runner_.empty()) break;
    const float* logits = runner_.Run();
    timing.level_tokens += runner_.tokens();
    ++timing.levels;
    const LogitsView view{backend_, logits, runner_.logit_rows(), vocab_};
    for (auto [j, first_row] : level_rows) {
      DraftJob& job = *jobs[j];
      const int n = static_cast<int>(frontier[j].size());
      job.non_finite = FindNonFinite(view, first_row, n);
      if (job.non_finite.has_value()) {
        frontier[j].clear();
        continue;
      }
      frontier_dist[j].assign(n, {});
      for (int f = 0; f < n; ++f) {
        NodeDistribution(job, frontier[j][f], logits, first_row + f, &frontier_dist[j][f]);
      }
    }
  }
  timing.level_seconds = SecondsSince(levels_start);
  return timing;
}

std::vector<float> FirstTestedQ(const DraftJob& job, const VerifyResult& result) {
  std::vector<float> first_q(job.shape.size(), 0.0f);
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
