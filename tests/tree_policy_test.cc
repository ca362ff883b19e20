// tests/tree_policy_test.cc — the tree policy as a pure function (engine/spec/tree_policy.h,
// engine/README.md, Tree policy), against synthetic cost curves (a memory-bound target: flat up to
// 64 tokens, then linear; a compute-bound one: linear from 1 token) and synthetic acceptance:
//   - trees shrink as the batch's base tokens grow (total nodes non-increasing over base
//     tokens 1..512), down to plain decoding where extra tokens cannot pay;
//   - no step's tree has a lower expected tokens per second (E / T recomputed here from the
//     same curves and values) than plain decoding, over thousands of random batches;
//   - the request's shape is the most a tree holds (children <= k_d, depth <= m, never more
//     than the step's token room), and the static policy returns the shape itself;
//   - for sampled requests the counts come from the inputs before drawing, and
//     ExpandLevel with counts draws exactly that many children (fewer only where q has
//     fewer non-zero ids) and keeps every drawn child in draw order;
//   - learning from outcomes: the bandit over arms converges to the arm of the best
//     realised rate at each load, explores at a bounded rate, follows a change, and every
//     arm's shape is capped by the expansion and the token room;
//   - CostCurve and AcceptanceModel arithmetic (interpolation, extrapolation, EWMA toward
//     observations, calibration with the prior).
// The exact-sampling test with dynamic trees is in tests/verifier_stat_test.cc.
#include "engine/spec/tree_policy.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "engine/spec/rng.h"
#include "engine/spec/sampler.h"
#include "engine/spec/token_tree.h"
#include "engine/spec/verifier.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace specmoe::engine {
namespace {

using ::testing::ElementsAre;

// ---------------------------------------------------------------------------------------
// Synthetic machines.

// Memory-bound target: 30 ms up to 64 tokens (reading the weights dominates), then linear
// (compute-bound) at 30 ms per 64 tokens.
CostCurve MemoryBoundTarget() { return CostCurve({{1, 0.030}, {64, 0.030}, {128, 0.060}}); }
// Compute-bound target: linear from 1 token, 5 ms fixed + 0.5 ms per token.
CostCurve ComputeBoundTarget() { return CostCurve({{1, 0.0055}, {2, 0.0060}}); }
// The memory-bound draft: 3 ms flat to 64 tokens, then linear.
CostCurve Draft() { return CostCurve({{1, 0.003}, {64, 0.003}, {128, 0.006}}); }
// The compute-bound draft: 1 ms fixed + 0.1 ms per token.
CostCurve ComputeBoundDraft() { return CostCurve({{1, 0.0011}, {2, 0.0012}}); }

// A step's stats that reached every depth 1..depths, accepting depth d iff accept[d-1].
StepStats Stats(const std::vector<int>& accept) {
  StepStats s;
  s.reached_by_depth.assign(accept.size(), 1);
  s.accepted_by_depth = accept;
  return s;
}

// A model whose rate at every depth is `accepted` / 10 with mean first q 0.6.
AcceptanceModel TrainedModel(int depths, int accepted) {
  AcceptanceModel model;
  const std::vector<float> first_q(depths, 0.6f);
  for (int step = 0; step < 10; ++step) {
    model.Record(Stats(std::vector<int>(depths, step < accepted ? 1 : 0)), first_q);
  }
  return model;
}

// ---------------------------------------------------------------------------------------
// A stand-in for the drafter: one request's shape and the draft's top probabilities at
// each of its nodes, expanded level by level with the policy's counts.

struct SimRequest {
  std::vector<int> shape;  // the maximum shape <k1..km>
  // top_q(depth, node index at that depth) -> the draft's top probabilities, descending.
  std::vector<std::vector<std::vector<float>>> top_q;  // [depth-1][node][rank]
  AcceptanceModel acceptance;
};

// What one step chose for one request: counts[d-1][f] children of frontier node f at
// depth d, and the values of the nodes taken at each depth.
struct SimTree {
  std::vector<std::vector<int>> counts;
  std::vector<std::vector<double>> values;  // [depth-1][node]
  int nodes = 0;
};

// The draft's top probabilities at one node: a random descending row (each entry takes
// 20-90% of the mass left).
std::vector<float> TopQRow(Rng& rng, int width) {
  std::vector<float> row(width);
  double mass = 1.0;
  for (int j = 0; j < width; ++j) {
    const double share = 0.2 + 0.7 * rng.Uniform();
    row[j] = static_cast<float>(mass * share);
    mass -= mass * share;
  }
  std::sort(row.begin(), row.end(), std::greater<float>());
  return row;
}

// A fixed row: 0.7, 0.15, 0.08, 0.04, ... (a confident draft).
std::vector<float> FixedTopQRow(int width) {
  std::vector<float> row(width);
  const float fixed[] = {0.7f, 0.15f, 0.08f, 0.04f, 0.02f, 0.005f, 0.003f, 0.002f};
  for (int j = 0; j < width; ++j) row[j] = fixed[j];
  return row;
}

// seed 0: every node has FixedTopQRow; else random rows.
SimRequest MakeRequest(std::vector<int> shape, AcceptanceModel acceptance, uint64_t seed) {
  SimRequest r;
  r.shape = std::move(shape);
  r.acceptance = std::move(acceptance);
  Rng rng(seed);
  int width = 1;
  for (int k : r.shape) {
    r.top_q.emplace_back();
    for (int n = 0; n < width; ++n) {
      r.top_q.back().push_back(seed == 0 ? FixedTopQRow(k) : TopQRow(rng, k));
    }
    width *= k;  // enough rows for the full shape
  }
  return r;
}

struct SimStep {
  std::vector<SimTree> trees;
  int total_nodes = 0;
};

// Runs one step: BeginStep(base, draft_base, decoding), then one Expand per depth over
// every request that still has a frontier and a level left.
SimStep Simulate(TreePolicy& policy, std::vector<SimRequest>& requests, int base_tokens,
                 int draft_base_tokens, int decoding, int token_room) {
  policy.BeginStep(base_tokens, draft_base_tokens, decoding);
  SimStep step;
  step.trees.resize(requests.size());
  std::vector<std::vector<double>> frontier(requests.size(), std::vector<double>{1.0});
  int max_depth = 0;
  for (const SimRequest& r : requests) max_depth = std::max<int>(max_depth, r.shape.size());
  for (int depth = 1; depth <= max_depth; ++depth) {
    std::vector<LevelRequest> level;
    std::vector<size_t> who;
    std::vector<std::vector<std::vector<float>>> rows;  // kept alive for the spans
    rows.reserve(requests.size());
    for (size_t r = 0; r < requests.size(); ++r) {
      SimRequest& req = requests[r];
      if (depth > static_cast<int>(req.shape.size()) || frontier[r].empty()) continue;
      rows.emplace_back(req.top_q[depth - 1].begin(),
                        req.top_q[depth - 1].begin() + frontier[r].size());
      LevelRequest lr;
      lr.max_children = req.shape[depth - 1];
      lr.depth = depth;
      lr.frontier_value = frontier[r];
      lr.frontier_top_q = rows.back();
      lr.acceptance = &req.acceptance;
      lr.last_level = depth == static_cast<int>(req.shape.size());
      level.push_back(lr);
      who.push_back(r);
    }
    if (level.empty()) break;
    const std::vector<std::vector<int>> counts =
        policy.Expand(level, token_room - step.total_nodes);
    EXPECT_EQ(counts.size(), level.size());
    // The level takes the top of the batch's ranking: every candidate taken is worth at
    // least every candidate left (a candidate: rank < k_d with q > 0).
    double min_taken = 2.0;
    double max_left = -1.0;
    for (size_t i = 0; i < level.size(); ++i) {
      const LevelRequest& lr = level[i];
      for (size_t f = 0; f < counts[i].size(); ++f) {
        const std::vector<float>& top = lr.frontier_top_q[f];
        for (int j = 0; j < lr.max_children && j < static_cast<int>(top.size()); ++j) {
          if (top[j] <= 0.0f) continue;
          const double value =
              policy.ChildValue(lr.frontier_value[f], depth, top[j], *lr.acceptance);
          if (j < counts[i][f]) {
            min_taken = std::min(min_taken, value);
          } else {
            max_left = std::max(max_left, value);
          }
        }
      }
    }
    EXPECT_GE(min_taken, max_left) << "depth " << depth;
    for (size_t i = 0; i < level.size(); ++i) {
      const size_t r = who[i];
      SimTree& tree = step.trees[r];
      std::vector<double> next;
      for (size_t f = 0; f < counts[i].size(); ++f) {
        for (int j = 0; j < counts[i][f]; ++j) {
          next.push_back(policy.ChildValue(level[i].frontier_value[f], depth,
                                           level[i].frontier_top_q[f][j], requests[r].acceptance));
        }
      }
      tree.counts.push_back(counts[i]);
      tree.values.push_back(next);
      tree.nodes += static_cast<int>(next.size());
      step.total_nodes += static_cast<int>(next.size());
      frontier[r] = std::move(next);
    }
  }
  return step;
}

// E / T of a step, recomputed from the curves: E = decoding + the values of the nodes
// taken; T = target(base + nodes) plus, when anything is drafted, the catch-up forward and
// one draft forward per level over that level's nodes that are not leaves of the shape.
double StepRate(const SimStep& step, const std::vector<SimRequest>& requests,
                const CostCurve& target, const CostCurve& draft, int base_tokens,
                int draft_base_tokens, int decoding) {
  double e = decoding;
  std::vector<int> drafted_by_depth;
  for (size_t r = 0; r < requests.size(); ++r) {
    const SimTree& tree = step.trees[r];
    for (size_t d = 0; d < tree.values.size(); ++d) {
      for (double v : tree.values[d]) e += v;
      if (d + 1 < requests[r].shape.size()) {
        drafted_by_depth.resize(std::max(drafted_by_depth.size(), d + 1), 0);
        drafted_by_depth[d] += static_cast<int>(tree.values[d].size());
      }
    }
  }
  double t = target.Seconds(base_tokens + step.total_nodes);
  if (step.total_nodes > 0) {
    t += draft.Seconds(draft_base_tokens);
    for (int n : drafted_by_depth) t += n > 0 ? draft.Seconds(n) : 0.0;
  }
  return e / t;
}

// ---------------------------------------------------------------------------------------
// (a) Trees shrink as the batch grows, down to plain decoding.

// `base` decoding requests (their roots are the base tokens), of which a fixed set of
// `speculating` ones speculate with `shape`, for base = speculating..512.
// seed 0: fixed top-q rows; else random ones (seed + r for request r).
std::vector<int> NodesOverBaseTokens(const CostCurve& target, const CostCurve& draft,
                                     const std::vector<int>& shape, int speculating,
                                     int rate_tenths, uint64_t seed) {
  std::vector<int> nodes;
  for (int base = speculating; base <= 512; ++base) {
    TreePolicy policy(TreePolicy::Kind::kDynamic, target, draft);
    std::vector<SimRequest> requests;
    const int s = speculating;
    for (int r = 0; r < s; ++r) {
      requests.push_back(MakeRequest(shape, TrainedModel(shape.size(), rate_tenths),
                                     seed == 0 ? 0 : seed + r));
    }
    const SimStep step = Simulate(policy, requests, base, /*draft_base_tokens=*/2 * s,
                                  /*decoding=*/base, /*token_room=*/4096);
    nodes.push_back(step.total_nodes);
  }
  return nodes;
}

// `pays_at_first`: the first (lightest) batch must speculate.
void ExpectShrinksToPlainDecoding(const std::vector<int>& nodes, bool pays_at_first = true) {
  if (pays_at_first) {
    EXPECT_GT(nodes.front(), 0) << "speculation must pay on a lightly loaded machine";
  }
  for (size_t b = 1; b < nodes.size(); ++b) {
    EXPECT_LE(nodes[b], nodes[b - 1]) << "base tokens: step " << b;
  }
  EXPECT_EQ(nodes.back(), 0) << "at 512 base tokens extra tokens cannot pay";
}

TEST(TreePolicyTest, TreesShrinkAsBaseTokensGrowMemoryBound) {
  for (int speculating : {1, 4, 16}) {
    for (uint64_t seed : {0, 100, 200}) {
      SCOPED_TRACE(testing::Message() << speculating << " speculating, seed " << seed);
      const std::vector<int> nodes = NodesOverBaseTokens(
          MemoryBoundTarget(), Draft(), {1, 1, 3, 1, 1, 1, 1, 1}, speculating, 8, seed);
      ExpectShrinksToPlainDecoding(nodes);
      // Flat region: with 1 confident speculating request the whole default tree pays.
      if (speculating == 1 && seed == 0) {
        EXPECT_EQ(nodes.front(), 20);
      }
      ExpectShrinksToPlainDecoding(
          NodesOverBaseTokens(MemoryBoundTarget(), Draft(), {4, 2, 2, 1}, speculating, 7, seed));
    }
  }
}

TEST(TreePolicyTest, TreesShrinkAsBaseTokensGrowComputeBound) {
  // Every node costs 0.5 ms of target time here, against 5.5 ms for the lone root: only a
  // lightly loaded machine with a confident draft speculates at all.
  for (int speculating : {1, 4, 16}) {
    for (uint64_t seed : {0, 100, 200}) {
      SCOPED_TRACE(testing::Message() << speculating << " speculating, seed " << seed);
      const bool pays = speculating == 1 && seed == 0;
      ExpectShrinksToPlainDecoding(NodesOverBaseTokens(ComputeBoundTarget(), ComputeBoundDraft(),
                                                       {1, 1, 3, 1, 1, 1, 1, 1}, speculating,
                                                       8, seed),
                                   pays);
      ExpectShrinksToPlainDecoding(NodesOverBaseTokens(ComputeBoundTarget(), ComputeBoundDraft(),
                                                       {4, 2, 2, 1}, speculating, 7, seed),
                                   pays);
    }
  }
}

TEST(TreePolicyTest, EveryRequestSpeculatingShrinksPerRequest) {
  // All `base` decoding requests speculate: the tree of each shrinks (nodes per request
  // non-increasing) and the whole batch reaches plain decoding.
  std::vector<double> per_request;
  for (int base = 1; base <= 256; ++base) {
    TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
    std::vector<SimRequest> requests;
    for (int r = 0; r < base; ++r) {
      requests.push_back(MakeRequest({1, 1, 3, 1}, TrainedModel(4, 8), 0));
    }
    const SimStep step = Simulate(policy, requests, base, 2 * base, base, 4096);
    per_request.push_back(static_cast<double>(step.total_nodes) / base);
  }
  EXPECT_GT(per_request.front(), 0.0);
  for (size_t b = 1; b < per_request.size(); ++b) {
    EXPECT_LE(per_request[b], per_request[b - 1] + 1e-12) << "requests " << b + 1;
  }
  EXPECT_EQ(per_request.back(), 0.0);
}

// ---------------------------------------------------------------------------------------
// (b) Never below plain decoding; (c) within the shape and the token room.

TEST(TreePolicyTest, NeverBelowPlainDecodingAndWithinTheShape) {
  Rng rng(2026);
  int steps_with_trees = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    // A random monotone target curve (memory- or compute-bound mix) and draft curve.
    const double flat = 0.005 + 0.05 * rng.Uniform();
    const int knee = 1 + static_cast<int>(rng.Uniform() * 128);
    const double slope = flat / knee * (0.2 + 2.0 * rng.Uniform());
    const CostCurve target({{1, flat}, {knee + 1, flat + 0.0}, {knee + 65, flat + 64 * slope}});
    const double dflat = flat * (0.02 + 0.4 * rng.Uniform());
    const CostCurve draft({{1, dflat}, {32, dflat}, {96, dflat * (1.5 + rng.Uniform())}});
    TreePolicy policy(TreePolicy::Kind::kDynamic, target, draft);
    // Some server-wide history as the prior.
    for (int s = 0; s < static_cast<int>(rng.Uniform() * 20); ++s) {
      std::vector<int> accept(6);
      for (int& a : accept) a = rng.Uniform() < 0.7 ? 1 : 0;
      policy.ObserveStep(Stats(accept), std::vector<float>(6, 0.5f));
    }
    const std::vector<std::vector<int>> shapes = {
        {1, 1, 3, 1, 1, 1, 1, 1}, {4, 2, 2, 1}, {2, 2, 2}, {8}, {1, 1, 1, 1, 1, 1}, {3, 2, 1}};
    const int speculating = 1 + static_cast<int>(rng.Uniform() * 6);
    std::vector<SimRequest> requests;
    for (int r = 0; r < speculating; ++r) {
      const std::vector<int>& shape = shapes[static_cast<size_t>(rng.Uniform() * shapes.size())];
      requests.push_back(MakeRequest(
          shape, TrainedModel(shape.size(), static_cast<int>(rng.Uniform() * 11)), rng.Next()));
    }
    const int decoding = speculating + static_cast<int>(rng.Uniform() * 40);
    const int base = decoding + static_cast<int>(rng.Uniform() * 100);  // + prompt chunks
    const int draft_base = speculating + static_cast<int>(rng.Uniform() * speculating);
    const int room = rng.Uniform() < 0.3 ? static_cast<int>(rng.Uniform() * 10) : 1000;
    const SimStep step = Simulate(policy, requests, base, draft_base, decoding, room);

    // (b) E / T from the same model, never below plain decoding's, and the policy's own
    // bookkeeping agrees with it.
    const double plain = decoding / target.Seconds(base);
    const double rate = StepRate(step, requests, target, draft, base, draft_base, decoding);
    EXPECT_GE(rate, plain * (1 - 1e-12)) << "trial " << trial;
    if (step.total_nodes > 0) {
      EXPECT_GT(rate, plain) << "trial " << trial;
      ++steps_with_trees;
    }
    EXPECT_NEAR(policy.expected_tokens() / policy.expected_seconds(), rate, 1e-9 * rate);
    EXPECT_EQ(policy.step_nodes(), step.total_nodes);
    EXPECT_EQ(policy.target_tokens(), base + step.total_nodes);

    // (c) The shape is the limit, and the room.
    EXPECT_LE(step.total_nodes, room);
    for (size_t r = 0; r < requests.size(); ++r) {
      const SimTree& tree = step.trees[r];
      ASSERT_LE(tree.counts.size(), requests[r].shape.size());
      for (size_t d = 0; d < tree.counts.size(); ++d) {
        for (int c : tree.counts[d]) {
          EXPECT_GE(c, 0);
          EXPECT_LE(c, requests[r].shape[d]);
        }
      }
    }
  }
  // The scenarios are not all plain decoding.
  EXPECT_GT(steps_with_trees, 300);
}

TEST(TreePolicyTest, CandidatesWithoutMassOrBeyondTheTopQAreNeverTaken) {
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
  policy.BeginStep(1, 1, 1);
  const AcceptanceModel none;
  const std::vector<double> values = {1.0, 1.0, 1.0};
  // Node 0: only two tokens of non-zero mass; node 1: a top-q list shorter than k;
  // node 2: one longer than k.
  const std::vector<std::vector<float>> top_q = {
      {0.5f, 0.5f, 0.0f, 0.0f}, {0.9f}, {0.3f, 0.3f, 0.2f, 0.1f, 0.1f}};
  LevelRequest lr;
  lr.max_children = 4;
  lr.depth = 1;
  lr.frontier_value = values;
  lr.frontier_top_q = top_q;
  lr.acceptance = &none;
  const std::vector<std::vector<int>> counts = policy.Expand(std::span(&lr, 1), 100);
  EXPECT_THAT(counts, ElementsAre(ElementsAre(2, 1, 4)));
}

TEST(TreePolicyTest, TokenRoomBoundsTheStepAndHighestValuesGoFirst) {
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
  policy.BeginStep(2, 2, 2);
  const AcceptanceModel none;  // values = q
  const std::vector<double> v = {1.0};
  const std::vector<std::vector<float>> a = {{0.5f, 0.3f, 0.1f}};
  const std::vector<std::vector<float>> b = {{0.4f, 0.35f, 0.2f}};
  std::vector<LevelRequest> level(2);
  for (int r = 0; r < 2; ++r) {
    level[r].max_children = 3;
    level[r].depth = 1;
    level[r].frontier_value = v;
    level[r].frontier_top_q = r == 0 ? a : b;
    level[r].acceptance = &none;
  }
  // Room for 3: 0.5 (a), 0.4 (b), 0.35 (b).
  EXPECT_THAT(policy.Expand(level, 3), ElementsAre(ElementsAre(1), ElementsAre(2)));
  EXPECT_EQ(policy.step_nodes(), 3);
  EXPECT_NEAR(policy.expected_tokens(), 2 + 0.5 + 0.4 + 0.35, 1e-6);
}

// Exploration is decided inside Expand and counted against the room with the
// chosen nodes. Over random levels (explore flags, busy and idle machines, both kinds) the
// counts never exceed the room, and every exploring request with a candidate gets a node
// while room is left.
TEST(TreePolicyTest, ExplorationAndChoicesTogetherNeverExceedTheRoom) {
  Rng rng(16);
  int explored = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const bool dynamic = trial % 4 != 0;
    TreePolicy policy(dynamic ? TreePolicy::Kind::kDynamic : TreePolicy::Kind::kStatic,
                      trial % 2 == 0 ? MemoryBoundTarget() : ComputeBoundTarget(), Draft());
    const int requests = 1 + static_cast<int>(rng.Next() % 40);
    const int base = requests + static_cast<int>(rng.Next() % 200);
    policy.BeginStep(base, requests, requests);
    const AcceptanceModel none;
    std::vector<std::vector<double>> values(requests);
    std::vector<std::vector<std::vector<float>>> top_q(requests);
    std::vector<LevelRequest> level(requests);
    for (int r = 0; r < requests; ++r) {
      const int frontier = 1 + static_cast<int>(rng.Next() % 3);
      level[r].max_children = 1 + static_cast<int>(rng.Next() % 3);
      for (int f = 0; f < frontier; ++f) {
        values[r].push_back(0.05 + 0.9 * rng.Uniform());
        std::vector<float> q;
        float left = 1.0f;
        for (int j = 0; j < level[r].max_children; ++j) {
          q.push_back(left * static_cast<float>(rng.Uniform()));
          left -= q.back();
        }
        std::sort(q.rbegin(), q.rend());
        top_q[r].push_back(q);
      }
      level[r].depth = 1 + static_cast<int>(rng.Next() % 3);
      level[r].frontier_value = values[r];
      level[r].frontier_top_q = top_q[r];
      level[r].acceptance = &none;
      level[r].explore = rng.Next() % 2 == 0;
    }
    const int room = static_cast<int>(rng.Next() % 24);
    const std::vector<std::vector<int>> counts = policy.Expand(level, room);
    int total = 0;
    for (const auto& c : counts) {
      for (int n : c) total += n;
    }
    ASSERT_LE(total, room) << "trial " << trial;
    EXPECT_EQ(policy.step_nodes(), total);
    if (!dynamic || total == room) continue;
    for (int r = 0; r < requests; ++r) {
      if (!level[r].explore || top_q[r][0][0] <= 0.0f) continue;
      int nodes = 0;
      for (int n : counts[r]) nodes += n;
      EXPECT_GE(nodes, 1) << "trial " << trial << " request " << r;
      ++explored;
    }
  }
  EXPECT_GT(explored, 100);
}

TEST(TreePolicyTest, FixedCostsSharedByManyNodesPay) {
  // 16 decoding requests speculate, memory-bound target (30 ms), draft level and catch-up
  // 3 ms each, no acceptance data (value = q = 0.5). E = 16, T = 30 ms: one node alone
  // (+0.5 tokens for +6 ms: 16.5 / 36 ms < 16 / 30 ms) does not pay, all 16 together
  // (+8 tokens for +6 ms: 24 / 36 ms > 16 / 30 ms) do. Taking candidates one at a time by
  // the marginal rule would take none.
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
  policy.BeginStep(16, 16, 16);
  const AcceptanceModel none;
  const std::vector<double> v = {1.0};
  const std::vector<std::vector<float>> top = {{0.5f}};
  std::vector<LevelRequest> level(16);
  for (LevelRequest& lr : level) {
    lr.max_children = 1;
    lr.depth = 1;
    lr.frontier_value = v;
    lr.frontier_top_q = top;
    lr.acceptance = &none;
  }
  const std::vector<std::vector<int>> counts = policy.Expand(level, 100);
  for (const std::vector<int>& c : counts) EXPECT_THAT(c, ElementsAre(1));
  EXPECT_NEAR(policy.expected_tokens(), 24.0, 1e-9);
  EXPECT_NEAR(policy.expected_seconds(), 0.036, 1e-12);

  // With 2 requests the 2 nodes (+1 token for +6 ms on 2 / 30 ms) still pay; with a
  // catch-up forward 10x dearer they do not.
  TreePolicy dear(TreePolicy::Kind::kDynamic, MemoryBoundTarget(),
                  CostCurve({{1, 0.003}, {2, 0.030}, {64, 0.030}}));
  dear.BeginStep(2, 2, 2);
  EXPECT_THAT(dear.Expand(std::span(level).first(2), 100),
              ElementsAre(ElementsAre(0), ElementsAre(0)));
  EXPECT_EQ(dear.step_nodes(), 0);
}

// ---------------------------------------------------------------------------------------
// (d) Static returns the shape.

TEST(TreePolicyTest, StaticReturnsTheShape) {
  // Even where the dynamic policy chooses plain decoding (compute-bound, 512 requests).
  for (TreePolicy::Kind kind : {TreePolicy::Kind::kStatic, TreePolicy::Kind::kDynamic}) {
    TreePolicy policy(kind, ComputeBoundTarget(), Draft());
    std::vector<SimRequest> requests = {
        MakeRequest({1, 1, 3, 1, 1, 1, 1, 1}, TrainedModel(8, 8), 1),
        MakeRequest({4, 2, 2, 1}, TrainedModel(4, 5), 2)};
    const SimStep step = Simulate(policy, requests, 512, 1024, 512, 4096);
    if (kind == TreePolicy::Kind::kDynamic) {
      EXPECT_EQ(step.total_nodes, 0);
      continue;
    }
    EXPECT_EQ(step.trees[0].nodes, ExpansionNodeCount(requests[0].shape) - 1);
    EXPECT_EQ(step.trees[1].nodes, ExpansionNodeCount(requests[1].shape) - 1);
    for (size_t r = 0; r < requests.size(); ++r) {
      ASSERT_EQ(step.trees[r].counts.size(), requests[r].shape.size());
      for (size_t d = 0; d < requests[r].shape.size(); ++d) {
        for (int c : step.trees[r].counts[d]) EXPECT_EQ(c, requests[r].shape[d]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// (e) Counts fixed before drawing; ExpandLevel with counts.

TEST(ExpandLevelCountsTest, SampledDrawsExactlyTheCountAndKeepsEveryDraw) {
  constexpr int kVocab = 16;
  std::vector<std::vector<float>> rows(4, std::vector<float>(kVocab, 0.0f));
  // Rows 0-2: 6 ids of non-zero mass; row 3: 2.
  for (int r = 0; r < 3; ++r) {
    for (int i = 0; i < 6; ++i) rows[r][(3 * r + 5 * i) % kVocab] = 1.0f + i + r;
  }
  rows[3][4] = 0.7f;
  rows[3][9] = 0.3f;
  TokenTree tree(0);
  tree.AddNode(0, 1);
  tree.AddNode(0, 2);
  tree.AddNode(0, 3);
  tree.AddNode(0, 4);
  const std::vector<int> frontier = {1, 2, 3, 4};
  const std::vector<int> counts = {3, 0, 6, 5};  // node 4 has only 2 ids of mass
  for (uint64_t seed = 0; seed < 200; ++seed) {
    TokenTree t = tree;
    Rng rng(seed);
    Rng reference(seed);
    ExpandLevel(t, frontier, rows, counts, /*greedy=*/false, rng);
    // The same draws, in order, as SampleWithoutReplacement of exactly each count.
    std::vector<int32_t> want_tokens;
    std::vector<int32_t> want_parents;
    for (size_t i = 0; i < frontier.size(); ++i) {
      if (counts[i] == 0) continue;
      for (int32_t x : SampleWithoutReplacement(rows[i], counts[i], reference)) {
        want_tokens.push_back(x);
        want_parents.push_back(frontier[i]);
      }
    }
    ASSERT_EQ(t.size(), 5 + static_cast<int>(want_tokens.size()));
    EXPECT_EQ(t.Children(1).size(), 3u);
    EXPECT_TRUE(t.Children(2).empty());
    EXPECT_EQ(t.Children(3).size(), 6u);
    EXPECT_EQ(t.Children(4).size(), 2u);  // fewer: q has 2 ids of mass
    for (size_t n = 0; n < want_tokens.size(); ++n) {
      EXPECT_EQ(t.token[5 + n], want_tokens[n]);
      EXPECT_EQ(t.parent[5 + n], want_parents[n]);
    }
    // No draw more or less than the counts: the streams are still in step.
    EXPECT_EQ(rng.Next(), reference.Next());
    EXPECT_EQ(t.q[1], rows[0]);
    EXPECT_TRUE(t.q[2].empty());  // no children, no q
    EXPECT_EQ(t.q[3], rows[2]);
    EXPECT_EQ(t.q[4], rows[3]);
  }
}

TEST(ExpandLevelCountsTest, GreedyTakesTheTopCountAndTheUniformFormAgrees) {
  constexpr int kVocab = 10;
  std::vector<float> logits(kVocab);
  for (int i = 0; i < kVocab; ++i) logits[i] = static_cast<float>((7 * i) % kVocab);
  const std::vector<std::vector<float>> rows(3, logits);
  TokenTree tree(0);
  tree.AddNode(0, 1);
  tree.AddNode(0, 2);
  tree.AddNode(0, 3);
  const std::vector<int> frontier = {1, 2, 3};
  Rng rng(0);
  TokenTree t = tree;
  ExpandLevel(t, frontier, rows, std::vector<int>{2, 0, 3}, /*greedy=*/true, rng);
  const std::vector<int32_t> top = TopKIds(logits.data(), kVocab, 3);
  ASSERT_EQ(t.size(), 4 + 5);
  EXPECT_THAT(std::vector<int32_t>(t.token.begin() + 4, t.token.end()),
              ElementsAre(top[0], top[1], top[0], top[1], top[2]));
  EXPECT_THAT(std::vector<int32_t>(t.parent.begin() + 4, t.parent.end()),
              ElementsAre(1, 1, 3, 3, 3));
  for (const std::vector<float>& q : t.q) EXPECT_TRUE(q.empty());

  TokenTree uniform = tree;
  TokenTree counted = tree;
  ExpandLevel(uniform, frontier, rows, 2, /*greedy=*/true, rng);
  ExpandLevel(counted, frontier, rows, std::vector<int>{2, 2, 2}, /*greedy=*/true, rng);
  EXPECT_EQ(uniform.token, counted.token);
  EXPECT_EQ(uniform.parent, counted.parent);
}

TEST(ExpandLevelCountsTest, SampledCountsComeFromTheInputsBeforeDrawing) {
  // The drafter's flow for a sampled request: counts from the policy on the draft's top
  // probabilities (TopProbabilities of q), then exactly that many draws. The counts depend
  // on the inputs only: the same counts whatever the draft stream's state.
  constexpr int kVocab = 12;
  std::vector<float> q(kVocab);
  for (int i = 0; i < kVocab; ++i) q[i] = static_cast<float>(i * i);
  double total = 0.0;
  for (float x : q) total += x;
  for (float& x : q) x = static_cast<float>(x / total);
  const std::vector<std::vector<float>> top = {TopProbabilities(q.data(), kVocab, 4)};
  const std::vector<double> value = {1.0};
  const AcceptanceModel none;
  std::vector<int> first_counts;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
    policy.BeginStep(1, 2, 1);
    LevelRequest lr;
    lr.max_children = 4;
    lr.depth = 1;
    lr.frontier_value = value;
    lr.frontier_top_q = top;
    lr.acceptance = &none;
    const std::vector<std::vector<int>> counts = policy.Expand(std::span(&lr, 1), 64);
    if (first_counts.empty()) first_counts = counts[0];
    EXPECT_EQ(counts[0], first_counts);
    TokenTree tree(0);
    Rng rng(seed);
    ExpandLevel(tree, std::vector<int>{0}, std::vector<std::vector<float>>{q}, counts[0],
                /*greedy=*/false, rng);
    EXPECT_EQ(static_cast<int>(tree.Children(0).size()), counts[0][0]);
  }
  EXPECT_GT(first_counts[0], 0);
}

// ---------------------------------------------------------------------------------------
// (f) CostCurve and AcceptanceModel arithmetic.

TEST(CostCurveTest, InterpolatesAndExtrapolates) {
  const CostCurve curve({{64, 3.0}, {1, 1.0}, {32, 2.0}});  // sorted on construction
  EXPECT_THAT(curve.points(), ElementsAre(std::pair(1, 1.0), std::pair(32, 2.0),
                                          std::pair(64, 3.0)));
  EXPECT_DOUBLE_EQ(curve.Seconds(0), 1.0);   // constant below the first point
  EXPECT_DOUBLE_EQ(curve.Seconds(-5), 1.0);
  EXPECT_DOUBLE_EQ(curve.Seconds(1), 1.0);
  EXPECT_DOUBLE_EQ(curve.Seconds(32), 2.0);
  EXPECT_DOUBLE_EQ(curve.Seconds(48), 2.5);  // halfway along [32, 64]
  EXPECT_DOUBLE_EQ(curve.Seconds(16), 1.0 + 15.0 / 31.0);
  EXPECT_DOUBLE_EQ(curve.Seconds(96), 4.0);  // the last slope, 1/32 s per token
  EXPECT_DOUBLE_EQ(curve.Extra(64, 32), 1.0);
  EXPECT_DOUBLE_EQ(curve.Extra(0, 1), 0.0);

  const CostCurve one({{8, 0.5}});
  EXPECT_DOUBLE_EQ(one.Seconds(1), 0.5);
  EXPECT_DOUBLE_EQ(one.Seconds(1000), 0.5);
  EXPECT_DOUBLE_EQ(CostCurve().Seconds(10), 0.0);
  EXPECT_TRUE(CostCurve().empty());

  // A decreasing curve: Extra is never negative, Seconds never below 0.
  const CostCurve down({{1, 2.0}, {2, 1.0}});
  EXPECT_DOUBLE_EQ(down.Extra(1, 1), 0.0);
  EXPECT_DOUBLE_EQ(down.Seconds(10), 0.0);
  // Duplicate token counts: the last one given wins.
  EXPECT_THAT(CostCurve({{4, 1.0}, {4, 2.0}}).points(), ElementsAre(std::pair(4, 2.0)));
}

TEST(CostCurveTest, ObserveMovesTheNearestPointsTowardTheMeasurement) {
  constexpr double a = CostCurve::kObserveWeight;
  CostCurve curve({{1, 1.0}, {33, 2.0}, {65, 3.0}});
  // On a point: that point moves by a * error.
  curve.Observe(33, 4.0);
  EXPECT_THAT(curve.points(), ElementsAre(std::pair(1, 1.0), std::pair(33, 2.0 + a * 2.0),
                                          std::pair(65, 3.0)));
  // Between points at w = 1/4: 3/4 and 1/4 of a * error.
  CostCurve between({{0, 1.0}, {4, 1.0}});
  between.Observe(1, 2.0);
  EXPECT_DOUBLE_EQ(between.points()[0].second, 1.0 + a * 0.75);
  EXPECT_DOUBLE_EQ(between.points()[1].second, 1.0 + a * 0.25);
  // Below the first point: the first point.
  CostCurve low({{10, 1.0}, {20, 2.0}});
  low.Observe(3, 0.0);
  EXPECT_DOUBLE_EQ(low.points()[0].second, 1.0 - a);
  EXPECT_DOUBLE_EQ(low.points()[1].second, 2.0);
  // Past the last: the last segment moves as a whole, keeping its slope.
  CostCurve high({{10, 1.0}, {20, 2.0}});
  high.Observe(40, 5.0);  // predicted 4.0
  EXPECT_DOUBLE_EQ(high.points()[0].second, 1.0 + a);
  EXPECT_DOUBLE_EQ(high.points()[1].second, 2.0 + a);
  EXPECT_DOUBLE_EQ(high.Seconds(40), 4.0 + a);
  // Repeated measurements converge to them (an EWMA), here on the machine becoming 2x
  // slower at 16 tokens; the points far away keep the shape.
  CostCurve live({{1, 1.0}, {16, 1.0}, {64, 4.0}});
  for (int i = 0; i < 400; ++i) live.Observe(16, 2.0);
  EXPECT_NEAR(live.Seconds(16), 2.0, 1e-9);
  EXPECT_DOUBLE_EQ(live.Seconds(1), 1.0);
  EXPECT_DOUBLE_EQ(live.Seconds(64), 4.0);
  // Seconds never go below 0.
  CostCurve floor({{1, 0.01}});
  for (int i = 0; i < 100; ++i) floor.Observe(1, -1.0);
  EXPECT_GE(floor.Seconds(1), 0.0);
}

TEST(AcceptanceModelTest, RunningMeanThenEwma) {
  AcceptanceModel model;
  const std::vector<float> q = {0.5f, 0.25f};
  // Depth 1 reached and accepted 3 times of 4; depth 2 reached twice, accepted once.
  StepStats s;
  s.reached_by_depth = {1, 1};
  s.accepted_by_depth = {1, 1};
  model.Record(s, q);
  s.accepted_by_depth = {1, 0};
  model.Record(s, q);
  s.reached_by_depth = {1, 0};
  s.accepted_by_depth = {1, 0};
  model.Record(s, std::vector<float>{0.7f, 0.0f});
  s.accepted_by_depth = {0, 0};
  model.Record(s, std::vector<float>{0.3f, 0.0f});
  EXPECT_DOUBLE_EQ(model.weight(1), 4);
  EXPECT_DOUBLE_EQ(model.rate(1), 0.75);
  EXPECT_NEAR(model.mean_q(1), (0.5 + 0.5 + 0.7 + 0.3) / 4, 1e-7);
  EXPECT_DOUBLE_EQ(model.weight(2), 2);
  EXPECT_DOUBLE_EQ(model.rate(2), 0.5);
  EXPECT_NEAR(model.mean_q(2), 0.25, 1e-7);
  EXPECT_DOUBLE_EQ(model.weight(3), 0);

  // Saturation: after kMaxWeight observations each new one has weight 1 / kMaxWeight.
  AcceptanceModel ewma;
  StepStats yes = Stats({1});
  StepStats no = Stats({0});
  for (int i = 0; i < 100; ++i) ewma.Record(yes, std::vector<float>{0.5f});
  EXPECT_DOUBLE_EQ(ewma.weight(1), AcceptanceModel::kMaxWeight);
  EXPECT_DOUBLE_EQ(ewma.rate(1), 1.0);
  ewma.Record(no, std::vector<float>{0.5f});
  EXPECT_DOUBLE_EQ(ewma.rate(1), 1.0 - 1.0 / AcceptanceModel::kMaxWeight);
}

TEST(AcceptanceModelTest, CalibrationWithThePrior) {
  const AcceptanceModel none;
  // No data anywhere: the draft's own q (clamped).
  EXPECT_DOUBLE_EQ(none.Calibrated(1, 0.3f, none), static_cast<double>(0.3f));
  EXPECT_DOUBLE_EQ(none.Calibrated(5, 1.5f, none), 1.0);

  // Prior: rate 0.8, mean q 0.4 at depth 1 (10 steps, 8 accepted, q 0.4).
  AcceptanceModel prior;
  for (int i = 0; i < 10; ++i) prior.Record(Stats({i < 8 ? 1 : 0}), std::vector<float>{0.4f});
  EXPECT_NEAR(none.Calibrated(1, 0.3f, prior), 0.3 * 0.8 / 0.4, 1e-6);  // prior alone
  EXPECT_DOUBLE_EQ(none.Calibrated(1, 0.9f, prior), 1.0);               // clamped
  EXPECT_NEAR(none.Calibrated(2, 0.3f, prior), 0.3, 1e-7);  // no prior data at depth 2

  // Own data: kPriorWeight observations at rate 0.25 with q 0.5: half own, half prior.
  AcceptanceModel own;
  for (int i = 0; i < 4; ++i) own.Record(Stats({i == 0 ? 1 : 0}), std::vector<float>{0.5f});
  ASSERT_DOUBLE_EQ(own.weight(1), AcceptanceModel::kPriorWeight);
  const double mine = 0.3 * 0.25 / 0.5;
  const double theirs = 0.3 * 0.8 / 0.4;
  EXPECT_NEAR(own.Calibrated(1, 0.3f, prior), 0.5 * mine + 0.5 * theirs, 1e-6);
  // With no prior data the default q takes the prior's place.
  EXPECT_NEAR(own.Calibrated(1, 0.3f, none), 0.5 * mine + 0.5 * 0.3, 1e-6);
  // Many own observations: the prior fades (weight kPriorWeight / (32 + kPriorWeight)).
  for (int i = 0; i < 200; ++i) own.Record(Stats({0}), std::vector<float>{0.5f});
  EXPECT_LT(own.Calibrated(1, 0.3f, prior), 0.2 * theirs);
  // Calibrated is non-decreasing in q (so a node's candidates keep their rank order).
  double last = 0.0;
  for (float q = 0.0f; q <= 1.0f; q += 0.01f) {
    const double c = own.Calibrated(1, q, prior);
    EXPECT_GE(c, last);
    last = c;
  }

  // ChildValue = parent value * calibrated, with the policy's server-wide model as prior.
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
  for (int i = 0; i < 10; ++i) {
    policy.ObserveStep(Stats({i < 8 ? 1 : 0}), std::vector<float>{0.4f});
  }
  EXPECT_NEAR(policy.ChildValue(0.5, 1, 0.3f, none), 0.5 * 0.3 * 0.8 / 0.4, 1e-6);
}

TEST(TreePolicyTest, LiveTimesMoveTheCurves) {
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
  policy.ObserveTarget(64, 0.060);
  policy.ObserveDraft(1, 0.006);
  EXPECT_NEAR(policy.target_cost().Seconds(64), 0.030 + CostCurve::kObserveWeight * 0.030, 1e-12);
  EXPECT_NEAR(policy.draft_cost().Seconds(1), 0.003 + CostCurve::kObserveWeight * 0.003, 1e-12);
}

TEST(TreePolicyTest, WorkedExample) {
  // One request, memory-bound target 30 ms, draft 3 ms, no acceptance data (value = q).
  // BeginStep(1, 2, 1): E = 1, T = 30 ms (plain decoding, 33.3 tok/s).
  // Depth 1, top q {0.6, 0.3}, not the last level:
  //   0.6: dT = 0 (target flat) + 3 ms (the level's draft forward) + 3 ms (catch-up):
  //        0.6 * 30 > 1 * 6 -> taken, E = 1.6, T = 36 ms;
  //   0.3: dT = 0 + 0 (draft flat) = 0 -> taken, E = 1.9, T = 36 ms.
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
  policy.BeginStep(1, 2, 1);
  EXPECT_DOUBLE_EQ(policy.expected_tokens(), 1.0);
  EXPECT_DOUBLE_EQ(policy.expected_seconds(), 0.030);
  const AcceptanceModel none;
  const std::vector<double> v = {1.0};
  const std::vector<std::vector<float>> top = {{0.6f, 0.3f}};
  LevelRequest lr;
  lr.max_children = 2;
  lr.depth = 1;
  lr.frontier_value = v;
  lr.frontier_top_q = top;
  lr.acceptance = &none;
  EXPECT_THAT(policy.Expand(std::span(&lr, 1), 64), ElementsAre(ElementsAre(2)));
  EXPECT_NEAR(policy.expected_tokens(), 1.9, 1e-6);
  EXPECT_NEAR(policy.expected_seconds(), 0.036, 1e-12);

  // The same on a compute-bound target at 100 base tokens: E = 100, T = 55 ms (1818
  // tok/s); the 0.6 child costs 0.5 + 3 + 3 ms: 0.6 * 55 < 100 * 6.5 -> refused, and so is
  // 0.3.
  TreePolicy busy(TreePolicy::Kind::kDynamic, ComputeBoundTarget(), Draft());
  busy.BeginStep(100, 2, 100);
  EXPECT_THAT(busy.Expand(std::span(&lr, 1), 64), ElementsAre(ElementsAre(0)));
  EXPECT_DOUBLE_EQ(busy.expected_tokens(), 100.0);
}

// The host work outside the forwards is fitted as fixed + per node from measured
// steps, and a per-node cost makes the same level take fewer nodes.
TEST(TreePolicyTest, HostWorkPerNodeIsFittedAndPricesNodes) {
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
  for (int step = 0; step < 400; ++step) {
    const int nodes = (step * 7) % 40;
    policy.ObserveOverhead(0.002 + 0.004 * nodes, nodes);
  }
  EXPECT_NEAR(policy.host_per_node_seconds(), 0.004, 1e-6);
  EXPECT_NEAR(policy.host_fixed_seconds(), 0.002, 1e-6);
  const AcceptanceModel none;
  const std::vector<double> v = {1.0};
  const std::vector<std::vector<float>> top = {{0.5f, 0.2f, 0.1f, 0.05f}};
  LevelRequest lr;
  lr.max_children = 4;
  lr.depth = 1;
  lr.frontier_value = v;
  lr.frontier_top_q = top;
  lr.acceptance = &none;
  lr.last_level = true;
  TreePolicy free_host(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
  free_host.BeginStep(1, 1, 1);
  policy.BeginStep(1, 1, 1);
  // Free host work: all four leaves (the target is flat). At 4 ms a node (E = 1, T = 32 ms
  // with the fixed 2 ms): 0.5 (+3 ms catch-up +4 ms: 1.5 / 39 ms), 0.2 (0.2 / 4 ms = 50 >
  // 38.5 tok/s: 1.7 / 43 ms), then 0.1 / 4 ms = 25 < 39.5: refused.
  EXPECT_THAT(free_host.Expand(std::span(&lr, 1), 64), ElementsAre(ElementsAre(4)));
  EXPECT_THAT(policy.Expand(std::span(&lr, 1), 64), ElementsAre(ElementsAre(2)));
}

// ---------------------------------------------------------------------------------------
// Learning from outcomes: the bandit over arms (TreePolicy::ChooseArm).

using Arm = TreePolicy::Arm;
using Rates = std::array<double, TreePolicy::kArms>;  // tokens/s per arm, in Arm order

// Steps the policy at load `decoding` (no prompt chunks) for `steps` steps; each step's
// arm realises rates[arm] tokens/s times a uniform jitter in [1 - jitter, 1 + jitter]
// (seeded), emitting 2 * decoding tokens. *chosen counts the arms of the last `tail` steps;
// the result is the tokens per second over those steps.
double RunBandit(TreePolicy& policy, int decoding, const Rates& rates, int steps, int tail,
                 std::array<int, TreePolicy::kArms>* chosen, double jitter = 0.0,
                 uint64_t seed = 1) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> noise(1.0 - jitter, 1.0 + jitter);
  chosen->fill(0);
  double tokens = 0, seconds = 0;
  for (int step = 0; step < steps; ++step) {
    const Arm arm = policy.ChooseArm(decoding);
    const int emitted = 2 * decoding;
    const double s = emitted / (rates[static_cast<int>(arm)] * noise(gen));
    policy.ObserveOutcome(decoding, emitted, s, false);
    if (step >= steps - tail) {
      ++(*chosen)[static_cast<int>(arm)];
      tokens += emitted;
      seconds += s;
    }
  }
  return tokens / seconds;
}

// A fresh dynamic policy (no draft curve: plain steps are not charged a catch-up), driven
// through its warm-up at load 1 until ChooseArm picks `arm`.
TreePolicy PolicyAt(Arm arm) {
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), CostCurve());
  for (int step = 0; policy.ChooseArm(1) != arm; ++step) {
    EXPECT_LT(step, 100) << "the warm-up never reached the arm";
    policy.ObserveOutcome(1, 1, 0.01, false);
  }
  return policy;
}

// After its warm-up the policy spends its steps on the arm of the best realised rate,
// whichever arm that is, also with 10 % noise on every step's time.
TEST(TreePolicyBanditTest, ConvergesToTheBestArm) {
  // Arm order: model, <1,1>, <1,1,1>, <2,1>, <1>, plain.
  const std::vector<std::pair<Rates, Arm>> cases = {
      {{100, 130, 120, 110, 105, 90}, Arm::kChain2},  // light load: a short chain
      {{150, 180, 200, 170, 120, 90}, Arm::kChain3},
      {{60, 70, 65, 62, 95, 100}, Arm::kPlain},  // compute-bound: plain decoding
      {{140, 100, 110, 105, 95, 80}, Arm::kModel},
  };
  for (const auto& [rates, best] : cases) {
    TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), CostCurve());
    std::array<int, TreePolicy::kArms> chosen;
    const double rate = RunBandit(policy, 4, rates, 600, 400, &chosen, 0.1);
    const double best_rate = rates[static_cast<int>(best)];
    EXPECT_GE(chosen[static_cast<int>(best)], 0.9 * 400) << static_cast<int>(best);
    // Exploring costs at most a few percent of the best arm's rate.
    EXPECT_GE(rate, 0.97 * best_rate) << static_cast<int>(best);
  }
}

// Exploration is bounded: an arm `gap` worse than the best is probed once per
// min(kMaxInterval, kProbeEvery (1 + gap / kGapScale)^2) of its steps' time once trusted
// (kTrustedSamples measurements), sooner before (each drafting
// probe after plain takes one unmeasured step more), and never abandoned; arms as good as
// the best at most once per kProbeEvery.
TEST(TreePolicyBanditTest, ExploresAtABoundedRate) {
  std::array<int, TreePolicy::kArms> chosen;
  const int plain = static_cast<int>(Arm::kPlain);
  for (double gap : {0.1, 0.2, 0.3}) {
    TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), CostCurve());
    const double worse = 100 * (1 - gap);
    RunBandit(policy, 16, {worse, worse, worse, worse, worse, 100}, 4100, 4000, &chosen);
    const double grow = 1 + gap / TreePolicy::kGapScale;
    const double interval = std::min<double>(TreePolicy::kMaxInterval,
                                             TreePolicy::kProbeEvery * grow * grow);
    for (int arm = 0; arm < TreePolicy::kArms; ++arm) {
      if (arm == plain) continue;
      // Probes are spaced in time: a step of this arm lasts 1 / (1 - gap) of plain's.
      EXPECT_GE(chosen[arm], 4000 * (1 - gap) / interval - 2) << gap << " " << arm;
      // The first kTrustedSamples probes come sooner (the gap is not trusted yet).
      EXPECT_LE(chosen[arm], 2 * (4000 / interval + 2 + TreePolicy::kTrustedSamples))
          << gap << " " << arm;
    }
  }
  TreePolicy even(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), CostCurve());
  RunBandit(even, 16, {100, 100, 100, 100, 100, 100}, 1100, 1000, &chosen);
  for (int arm = 1; arm < TreePolicy::kArms; ++arm) {
    EXPECT_LE(chosen[arm], 2 * (1000 / TreePolicy::kProbeEvery + 2)) << arm;
  }
}

// When the machine or the workload changes which arm is best, the policy follows.
TEST(TreePolicyBanditTest, FollowsAChangeOfTheBestArm) {
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), CostCurve());
  std::array<int, TreePolicy::kArms> chosen;
  RunBandit(policy, 8, {100, 130, 120, 110, 105, 90}, 400, 100, &chosen);
  EXPECT_GE(chosen[static_cast<int>(Arm::kChain2)], 85);
  RunBandit(policy, 8, {100, 100, 140, 110, 105, 90}, 300, 100, &chosen);
  EXPECT_GE(chosen[static_cast<int>(Arm::kChain3)], 85);
}

// Loads are learnt apart (decoding requests in powers of two): plain decoding at 16,
// a chain at 1, in the same policy.
TEST(TreePolicyBanditTest, EachLoadHasItsOwnBestArm) {
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), CostCurve());
  std::array<int, TreePolicy::kArms> chosen;
  for (int round = 0; round < 4; ++round) {
    RunBandit(policy, 1, {150, 180, 200, 170, 120, 90}, 150, 100, &chosen);
    RunBandit(policy, 16, {60, 70, 65, 62, 95, 100}, 150, 100, &chosen);
  }
  RunBandit(policy, 1, {150, 180, 200, 170, 120, 90}, 100, 100, &chosen);
  EXPECT_GE(chosen[static_cast<int>(Arm::kChain3)], 90);
  RunBandit(policy, 16, {60, 70, 65, 62, 95, 100}, 100, 100, &chosen);
  EXPECT_GE(chosen[static_cast<int>(Arm::kPlain)], 90);
  EXPECT_GT(policy.arm_rate(1, Arm::kChain3), policy.arm_rate(1, Arm::kPlain));
  EXPECT_LT(policy.arm_rate(16, Arm::kChain3), policy.arm_rate(16, Arm::kPlain));
}

// The warm-up measures every arm kWarmupSamples times, in Arm order; a drafting arm's first
// step after a plain one pays the draft's catch-up of the plain steps, so it is repeated
// and only the second is measured; steps with prompt chunks are not measured.
TEST(TreePolicyBanditTest, WarmUpTransitionsAndPromptChunks) {
  TreePolicy policy(TreePolicy::Kind::kDynamic, MemoryBoundTarget(), Draft());
  std::vector<Arm> order;
  for (int step = 0; step < TreePolicy::kArms * TreePolicy::kWarmupSamples; ++step) {
    order.push_back(policy.ChooseArm(2));
    policy.ObserveOutcome(2, 4, order.back() == Arm::kPlain ? 0.04 : 0.08, false);
  }
  for (int i = 0; i < static_cast<int>(order.size()); ++i) {
    EXPECT_EQ(order[i], static_cast<Arm>(i / TreePolicy::kWarmupSamples)) << i;
  }
  // Plain at 100 tokens/s (charged the deferred catch-up: 2 tokens of the draft cost 0),
  // the rest slower: plain is exploited.
  EXPECT_DOUBLE_EQ(policy.arm_rate(2, Arm::kPlain), 4 / 0.04);
  EXPECT_EQ(policy.ChooseArm(2), Arm::kPlain);
  policy.ObserveOutcome(2, 4, 0.04, true);  // a prompt chunk rode along: not measured
  EXPECT_EQ(policy.arm_samples(2, Arm::kPlain), TreePolicy::kWarmupSamples);
  // Run plain until a probe; the probe's first step is repeated, its second measured.
  Arm arm = Arm::kPlain;
  for (int step = 0; arm == Arm::kPlain && step < 2 * TreePolicy::kMaxInterval; ++step) {
    policy.ObserveOutcome(2, 4, 0.04, false);
    arm = policy.ChooseArm(2);
  }
  ASSERT_NE(arm, Arm::kPlain);
  const int samples = policy.arm_samples(2, arm);
  policy.ObserveOutcome(2, 4, 1.0, false);  // pays the catch-up: not measured
  EXPECT_EQ(policy.arm_samples(2, arm), samples);
  EXPECT_EQ(policy.ChooseArm(2), arm);
  policy.ObserveOutcome(2, 4, 0.05, false);
  EXPECT_EQ(policy.arm_samples(2, arm), samples + 1);
}

// Each arm's shape is capped by the request's expansion (the most a tree may hold), and
// under a fixed shape Expand gives every node its children within the token room.
TEST(TreePolicyBanditTest, ArmShapesRespectExpansionAndRoom) {
  const std::vector<int> specinfer = {1, 1, 3, 1, 1, 1, 1, 1};
  const std::vector<int> wide = {4};
  struct Case {
    Arm arm;
    std::vector<int> on_specinfer, on_wide;
  };
  const std::vector<Case> cases = {
      {Arm::kModel, specinfer, wide},  {Arm::kChain2, {1, 1}, {1}},
      {Arm::kChain3, {1, 1, 1}, {1}},  {Arm::kFork, {1, 1}, {2}},
      {Arm::kChain1, {1}, {1}},        {Arm::kPlain, {}, {}},
  };
  for (const Case& c : cases) {
    TreePolicy policy = PolicyAt(c.arm);
    EXPECT_EQ(policy.RequestShape(specinfer, false), c.on_specinfer) << static_cast<int>(c.arm);
    EXPECT_EQ(policy.RequestShape(wide, false), c.on_wide) << static_cast<int>(c.arm);
    EXPECT_TRUE(policy.RequestShape({}, false).empty());
    EXPECT_EQ(policy.backs_off(), c.arm == Arm::kModel);
    // Backing off drafts nothing under the cost model only.
    EXPECT_EQ(policy.RequestShape(specinfer, true).empty(),
              c.arm == Arm::kModel || c.arm == Arm::kPlain);
    if (c.arm != Arm::kModel) {
      EXPECT_EQ(policy.ExploreDepth(AcceptanceModel(), 3, true), 0);
    }
  }
  // A fixed shape at depth 1: 2 children per frontier node, in request order within a
  // room of 5 (the third request's node gets 1, the fourth none).
  TreePolicy fork = PolicyAt(Arm::kFork);
  const AcceptanceModel none;
  const std::vector<double> v = {1.0};
  const std::vector<std::vector<float>> top = {{0.05f, 0.01f}};
  std::vector<LevelRequest> level(4);
  for (LevelRequest& lr : level) {
    lr.max_children = 2;
    lr.depth = 1;
    lr.frontier_value = v;
    lr.frontier_top_q = top;
    lr.acceptance = &none;
  }
  fork.BeginStep(4, 4, 4);
  EXPECT_THAT(fork.Expand(level, 5),
              ElementsAre(ElementsAre(2), ElementsAre(2), ElementsAre(1), ElementsAre(0)));
  // A static policy keeps the expansion and never leaves kModel.
  TreePolicy fixed(TreePolicy::Kind::kStatic, CostCurve(), CostCurve());
  EXPECT_EQ(fixed.ChooseArm(4), Arm::kModel);
  EXPECT_EQ(fixed.RequestShape(specinfer, true), specinfer);
}

}  // namespace
}  // namespace specmoe::engine
