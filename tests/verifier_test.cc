// tests/verifier_test.cc — engine/spec/verifier.h on hand-built trees: greedy verification
// (full, partial and no acceptance, a match on a later branch), the edge cases of the
// stochastic walk whose outcome is forced whatever the uniforms are, the lazy target rows,
// the step statistics, and coupled verification (its output is plain Gumbel-max sampling of
// the target whatever the tree). Exactness in distribution is tests/verifier_stat_test.cc.
#include "engine/spec/verifier.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/spec/gumbel.h"
#include "engine/spec/rng.h"
#include "engine/spec/sampler.h"
#include "engine/spec/token_tree.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace specmoe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::FloatEq;

constexpr int kVocab = 6;

// The <2,2,1> tree used by the greedy tests (tokens in brackets):
//   0[9] -> 1[4], 2[5];  1 -> 3[6], 4[7];  2 -> 5[6], 6[8];  3 -> 7[1]; 4 -> 8[2];
//   5 -> 9[3]; 6 -> 10[0]
TokenTree GreedyTree() {
  TokenTree tree(9);
  tree.AddNode(0, 4);
  tree.AddNode(0, 5);
  tree.AddNode(1, 6);
  tree.AddNode(1, 7);
  tree.AddNode(2, 6);
  tree.AddNode(2, 8);
  tree.AddNode(3, 1);
  tree.AddNode(4, 2);
  tree.AddNode(5, 3);
  tree.AddNode(6, 0);
  return tree;
}

TEST(VerifyGreedyTest, AcceptsTheWholeDepth) {
  const TokenTree tree = GreedyTree();
  // argmax per node: root -> 4 (node 1), node 1 -> 7 (node 4), node 4 -> 2 (node 8),
  // node 8 (a leaf) -> 11, the bonus.
  const std::vector<int32_t> argmax = {4, 7, 0, 0, 2, 0, 0, 0, 11, 0, 0};
  const VerifyResult r = VerifyGreedy(tree, argmax);
  EXPECT_THAT(r.accepted_nodes, ElementsAre(1, 4, 8));
  EXPECT_EQ(r.bonus_token, 11);
}

TEST(VerifyGreedyTest, BranchInTheMiddle) {
  const TokenTree tree = GreedyTree();
  // The second root child matches, then its first child (token 6), then nothing.
  const std::vector<int32_t> argmax = {5, 0, 6, 0, 0, 13, 0, 0, 0, 0, 0};
  const VerifyResult r = VerifyGreedy(tree, argmax);
  EXPECT_THAT(r.accepted_nodes, ElementsAre(2, 5));
  EXPECT_EQ(r.bonus_token, 13);
}

TEST(VerifyGreedyTest, PartialAcceptance) {
  const TokenTree tree = GreedyTree();
  const std::vector<int32_t> argmax = {4, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const VerifyResult r = VerifyGreedy(tree, argmax);
  EXPECT_THAT(r.accepted_nodes, ElementsAre(1));
  EXPECT_EQ(r.bonus_token, 3);
}

TEST(VerifyGreedyTest, NoAcceptanceGivesJustTheBonus) {
  const TokenTree tree = GreedyTree();
  std::vector<int32_t> argmax(tree.size(), 4);
  argmax[0] = 12;
  const VerifyResult r = VerifyGreedy(tree, argmax);
  EXPECT_TRUE(r.accepted_nodes.empty());
  EXPECT_EQ(r.bonus_token, 12);
}

TEST(VerifyGreedyTest, RootOnlyTreeIsPlainDecoding) {
  const TokenTree tree(3);
  const VerifyResult r = VerifyGreedy(tree, std::vector<int32_t>{8});
  EXPECT_TRUE(r.accepted_nodes.empty());
  EXPECT_EQ(r.bonus_token, 8);
}

std::vector<float> PointMass(int id) {
  std::vector<float> v(kVocab, 0.0f);
  v[id] = 1.0f;
  return v;
}

std::vector<float> Dist(std::vector<float> v) { return v; }

// A root with children drawn from q (stored), no grandchildren.
TokenTree OneLevel(const std::vector<float>& q, const std::vector<int32_t>& children) {
  TokenTree tree(0);
  for (int32_t c : children) tree.AddNode(0, c);
  tree.q[0] = q;
  return tree;
}

TEST(VerifyStochasticTest, RootOnlyTreeSamplesTheBonusFromP) {
  const TokenTree tree(2);
  const std::vector<float> p = Dist({0.1f, 0.2f, 0.3f, 0.0f, 0.4f, 0.0f});
  for (uint64_t seed = 0; seed < 200; ++seed) {
    Rng rng(seed), same(seed);
    const VerifyResult r = VerifyStochastic(tree, std::vector<std::vector<float>>{p}, rng);
    EXPECT_TRUE(r.accepted_nodes.empty());
    EXPECT_EQ(r.bonus_token, SampleFrom(p, same));  // plain sampling, same uniform
  }
}

TEST(VerifyStochasticTest, DraftEqualToTargetIsAlwaysAccepted) {
  // p == q: the first child passes u q(x) < p(x) for every u in [0, 1).
  const std::vector<float> q = Dist({0.05f, 0.25f, 0.3f, 0.1f, 0.2f, 0.1f});
  const TokenTree tree = OneLevel(q, {2, 4, 1});
  for (uint64_t seed = 0; seed < 500; ++seed) {
    Rng rng(seed);
    const VerifyResult r = VerifyStochastic(
        tree, std::vector<std::vector<float>>{q, PointMass(3), PointMass(3), PointMass(3)}, rng);
    EXPECT_THAT(r.accepted_nodes, ElementsAre(1));
    EXPECT_EQ(r.bonus_token, 3);
  }
}

TEST(VerifyStochasticTest, ChildOutsideTheTargetSupportIsAlwaysRejected) {
  // q is a point mass on 1 (the only child), p(1) = 0: rejection is certain; the residual
  // max(0, p - q) is p itself, so the bonus is distributed as p.
  const std::vector<float> p = Dist({0.5f, 0.0f, 0.5f, 0.0f, 0.0f, 0.0f});
  const TokenTree tree = OneLevel(PointMass(1), {1});
  int zeros = 0;
  for (uint64_t seed = 0; seed < 2000; ++seed) {
    Rng rng(seed);
    const VerifyResult r =
        VerifyStochastic(tree, std::vector<std::vector<float>>{p, PointMass(5)}, rng);
    EXPECT_TRUE(r.accepted_nodes.empty());
    ASSERT_TRUE(r.bonus_token == 0 || r.bonus_token == 2);
    zeros += r.bonus_token == 0;
  }
  EXPECT_NEAR(zeros, 1000, 200);  // fixed seeds; sd 22
}

TEST(VerifyStochasticTest, TargetPointMassOutsideTheTree) {
  // p is a point mass on 5, which no child holds: every child is rejected (p(x) = 0) and
  // the residuals keep all mass on 5.
  const std::vector<float> q = Dist({0.4f, 0.3f, 0.2f, 0.1f, 0.0f, 0.0f});
  const TokenTree tree = OneLevel(q, {0, 1, 2});
  for (uint64_t seed = 0; seed < 500; ++seed) {
    Rng rng(seed);
    std::vector<std::vector<float>> p(4, PointMass(0));
    p[0] = PointMass(5);
    const VerifyResult r = VerifyStochastic(tree, p, rng);
    EXPECT_TRUE(r.accepted_nodes.empty());
    EXPECT_EQ(r.bonus_token, 5);
  }
}

TEST(VerifyStochasticTest, TargetPointMassOnALaterChild) {
  // p is a point mass on the third child's token: the first two are rejected, after which
  // the residual is still the point mass, and the third is accepted with probability 1.
  const std::vector<float> q = Dist({0.4f, 0.3f, 0.2f, 0.1f, 0.0f, 0.0f});
  TokenTree tree = OneLevel(q, {0, 1, 3});
  tree.AddNode(3, 4);  // a child of node 3 (token 3), drawn from a point mass
  tree.q[3] = PointMass(4);
  for (uint64_t seed = 0; seed < 500; ++seed) {
    Rng rng(seed);
    const std::vector<std::vector<float>> p = {PointMass(3), PointMass(1), PointMass(1),
                                               PointMass(4), PointMass(2)};
    const VerifyResult r = VerifyStochastic(tree, p, rng);
    EXPECT_THAT(r.accepted_nodes, ElementsAre(3, 4));  // node 3, then its child, node 4
    EXPECT_EQ(r.bonus_token, 2);                       // from p at the leaf
  }
}

TEST(VerifyStochasticTest, RejectionsChainTheResiduals) {
  // Root children drawn from q = [0.5, 0.5, 0, ...] in the order 0, 1; p = [0, 0.5, 0.5].
  // Child 0 is rejected (p(0) = 0); the residual max(0, p - q) = [0, 0, 0.5] is a point
  // mass on 2, so child 1 is rejected too and the bonus is always 2.
  const std::vector<float> q = Dist({0.5f, 0.5f, 0.0f, 0.0f, 0.0f, 0.0f});
  const TokenTree tree = OneLevel(q, {0, 1});
  const std::vector<float> p = Dist({0.0f, 0.5f, 0.5f, 0.0f, 0.0f, 0.0f});
  for (uint64_t seed = 0; seed < 500; ++seed) {
    Rng rng(seed);
    const VerifyResult r =
        VerifyStochastic(tree, std::vector<std::vector<float>>{p, PointMass(0), PointMass(0)}, rng);
    EXPECT_TRUE(r.accepted_nodes.empty());
    EXPECT_EQ(r.bonus_token, 2);
  }
}

TEST(VerifyStochasticTest, ReadsOnlyTheRowsOfVisitedNodes) {
  // Root rejects everything (p is a point mass on 5): only row 0 is requested.
  const std::vector<float> q = Dist({0.4f, 0.3f, 0.3f, 0.0f, 0.0f, 0.0f});
  const TokenTree tree = OneLevel(q, {0, 1});
  std::vector<int> requested;
  Rng rng(1);
  const VerifyResult r = VerifyStochastic(
      tree,
      [&requested](int node, std::vector<float>* row) {
        requested.push_back(node);
        *row = PointMass(5);
      },
      rng);
  EXPECT_THAT(requested, ElementsAre(0));
  EXPECT_EQ(r.bonus_token, 5);
}

TEST(VerifyStochasticTest, SameStreamSameResult) {
  // Same verify stream, same result and the same number of uniforms consumed.
  const std::vector<float> q = Dist({0.3f, 0.3f, 0.2f, 0.1f, 0.1f, 0.0f});
  const std::vector<float> p = Dist({0.1f, 0.2f, 0.3f, 0.1f, 0.1f, 0.2f});
  const TokenTree tree = OneLevel(q, {0, 1, 2});
  const std::vector<std::vector<float>> rows = {p, p, p, p};
  for (uint64_t seed = 0; seed < 100; ++seed) {
    Rng a(seed), b(seed);
    const VerifyResult ra = VerifyStochastic(tree, rows, a);
    const VerifyResult rb = VerifyStochastic(tree, rows, b);
    EXPECT_EQ(ra.accepted_nodes, rb.accepted_nodes);
    EXPECT_EQ(ra.bonus_token, rb.bonus_token);
    EXPECT_EQ(a.Next(), b.Next());
  }
}

TEST(VerifyStochasticDeathTest, ChildThatQCouldNotHaveDrawn) {
  const TokenTree tree = OneLevel(PointMass(1), {2});
  Rng rng(0);
  EXPECT_DEATH(
      VerifyStochastic(tree, std::vector<std::vector<float>>{PointMass(2), PointMass(2)}, rng),
      "could not have drawn");
}

TEST(StepStatsTest, DepthsReachedAndAccepted) {
  const TokenTree tree = GreedyTree();  // depth 3, every internal node has children
  VerifyResult r;
  r.accepted_nodes = {2, 5};
  StepStats s = ComputeStepStats(tree, r);
  EXPECT_EQ(s.drafted, 10);
  EXPECT_EQ(s.accepted, 2);
  EXPECT_THAT(s.reached_by_depth, ElementsAre(1, 1, 1));
  EXPECT_THAT(s.accepted_by_depth, ElementsAre(1, 1, 0));

  r.accepted_nodes = {};
  s = ComputeStepStats(tree, r);
  EXPECT_THAT(s.reached_by_depth, ElementsAre(1, 0, 0));
  EXPECT_THAT(s.accepted_by_depth, ElementsAre(0, 0, 0));

  r.accepted_nodes = {1, 4, 8};
  s = ComputeStepStats(tree, r);
  EXPECT_THAT(s.reached_by_depth, ElementsAre(1, 1, 1));
  EXPECT_THAT(s.accepted_by_depth, ElementsAre(1, 1, 1));
}

TEST(StepStatsTest, NodeWithoutChildrenEndsTheReach) {
  // Root -> 1 -> 3 (depth 2); root -> 2 has no children: accepting node 2 reaches no
  // depth-2 test.
  TokenTree tree(0);
  tree.AddNode(0, 1);
  tree.AddNode(0, 2);
  tree.AddNode(1, 3);
  VerifyResult r;
  r.accepted_nodes = {2};
  const StepStats s = ComputeStepStats(tree, r);
  EXPECT_THAT(s.reached_by_depth, ElementsAre(1, 0));
  EXPECT_THAT(s.accepted_by_depth, ElementsAre(1, 0));
}

TEST(SpeculationCounterTest, AggregatesSteps) {
  const TokenTree tree = GreedyTree();
  SpeculationCounter counter;
  VerifyResult r;
  r.accepted_nodes = {1, 4, 8};  // 3 accepted + bonus = 4 emitted
  counter.Record(ComputeStepStats(tree, r), 4);
  r.accepted_nodes = {2};  // 1 + bonus
  counter.Record(ComputeStepStats(tree, r), 2);
  r.accepted_nodes = {};  // bonus only
  counter.Record(ComputeStepStats(tree, r), 1);
  r.accepted_nodes = {1, 3};  // cut by a stop string after the first accepted token
  counter.Record(ComputeStepStats(tree, r), 1);

  const SpeculationStats stats = counter.Stats();
  EXPECT_EQ(stats.verify_steps, 4);
  EXPECT_EQ(stats.drafted_tokens, 40);
  EXPECT_EQ(stats.accepted_tokens, 3 + 1 + 0 + 1);
  EXPECT_FLOAT_EQ(stats.mean_tokens_per_step, 8.0f / 4.0f);
  // depth 1: reached 4, accepted 3; depth 2: reached 3 (steps 1, 2, 4), accepted 2;
  // depth 3: reached 2 (steps 1, 4), accepted 1.
  EXPECT_THAT(stats.acceptance_by_depth,
              ElementsAre(FloatEq(0.75f), FloatEq(2.0f / 3.0f), FloatEq(0.5f)));
  EXPECT_THAT(counter.reached_by_depth(), ElementsAre(4, 3, 2));
  EXPECT_THAT(counter.accepted_by_depth(), ElementsAre(3, 2, 1));
}

TEST(SpeculationCounterTest, EmptyAndShallowSteps) {
  SpeculationCounter counter;
  SpeculationStats stats = counter.Stats();
  EXPECT_EQ(stats.verify_steps, 0);
  EXPECT_EQ(stats.mean_tokens_per_step, 0.0f);
  EXPECT_TRUE(stats.acceptance_by_depth.empty());
  // A root-only step (speculation shrunk to plain decoding) counts one token, no depths.
  counter.Record(ComputeStepStats(TokenTree(1), VerifyResult{}), 1);
  stats = counter.Stats();
  EXPECT_EQ(stats.verify_steps, 1);
  EXPECT_EQ(stats.drafted_tokens, 0);
  EXPECT_FLOAT_EQ(stats.mean_tokens_per_step, 1.0f);
  EXPECT_TRUE(stats.acceptance_by_depth.empty());
}

// A model over kVocab tokens whose next-token distribution depends on the last token.
std::vector<std::vector<float>> RandomRows(uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<float>> rows(kVocab, std::vector<float>(kVocab));
  for (auto& row : rows) {
    double total = 0;
    for (float& v : row) total += v = static_cast<float>(std::exp(4 * rng.Uniform()));
    for (float& v : row) v = static_cast<float>(v / total);
  }
  return rows;
}

TEST(VerifyCoupledTest, EmitsPlainGumbelMaxSamplingWhateverTheTreeAndDraft) {
  const std::vector<std::vector<float>> p = RandomRows(1);  // target: p[last token]
  const std::vector<std::vector<float>> q = RandomRows(2);  // a different draft
  constexpr int kRootPos = 10;
  constexpr int32_t kRoot = 3;
  int accepted_total = 0;
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    for (const std::vector<int>& shape :
         {std::vector<int>{}, std::vector<int>{1, 1, 1}, std::vector<int>{3, 2}}) {
      TokenTree tree(kRoot);
      for (size_t level = 0; level < shape.size(); ++level) {
        const std::vector<int> frontier = tree.NodesAtDepth(static_cast<int>(level));
        std::vector<std::vector<float>> rows;
        for (int f : frontier) rows.push_back(q[tree.token[f]]);
        ExpandLevelCoupled(tree, frontier, rows, std::vector<int>(frontier.size(), shape[level]),
                           seed, kRootPos);
      }
      const VerifyResult r = VerifyCoupled(
          tree, [&](int node, std::vector<float>* row) { *row = p[tree.token[node]]; }, seed,
          kRootPos);
      accepted_total += static_cast<int>(r.accepted_nodes.size());
      std::vector<int32_t> emitted;
      for (int node : r.accepted_nodes) emitted.push_back(tree.token[node]);
      emitted.push_back(r.bonus_token);
      // Plain decoding with the same seed: token i at position kRootPos + 1 + i.
      int32_t last = kRoot;
      for (size_t i = 0; i < emitted.size(); ++i) {
        const int32_t plain = GumbelMax(p[last], seed, kRootPos + 1 + static_cast<int>(i));
        ASSERT_EQ(emitted[i], plain) << "seed " << seed << " token " << i;
        last = plain;
      }
    }
  }
  EXPECT_GT(accepted_total, 0);
}

TEST(VerifyCoupledTest, ADraftEqualToTheTargetIsAlwaysAccepted) {
  const std::vector<std::vector<float>> p = RandomRows(3);
  for (uint64_t seed = 1; seed <= 100; ++seed) {
    TokenTree tree(0);
    for (int level = 0; level < 4; ++level) {
      const std::vector<int> frontier = tree.NodesAtDepth(level);
      std::vector<std::vector<float>> rows;
      for (int f : frontier) rows.push_back(p[tree.token[f]]);
      ExpandLevelCoupled(tree, frontier, rows, std::vector<int>(frontier.size(), 1), seed, 0);
    }
    const VerifyResult r = VerifyCoupled(
        tree, [&](int node, std::vector<float>* row) { *row = p[tree.token[node]]; }, seed, 0);
    EXPECT_EQ(r.accepted_nodes.size(), 4u) << seed;
  }
}

TEST(VerifyByChoiceTest, GreedyIsTheZeroNoiseChoice) {
  const TokenTree tree = GreedyTree();
  const std::vector<int32_t> argmax = {5, 0, 8, 1, 0, 0, 1, 0, 0, 0, 0};
  const VerifyResult by_choice = VerifyByChoice(tree, [&](int node) { return argmax[node]; });
  const VerifyResult greedy = VerifyGreedy(tree, argmax);
  EXPECT_EQ(by_choice.accepted_nodes, greedy.accepted_nodes);
  EXPECT_EQ(by_choice.bonus_token, greedy.bonus_token);
  EXPECT_THAT(greedy.accepted_nodes, ElementsAre(2, 6));
  EXPECT_EQ(greedy.bonus_token, 1);
}

}  // namespace
}  // namespace specmoe::engine
