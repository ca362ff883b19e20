// tests/token_tree_test.cc — token-tree layout (engine/spec/token_tree.h): the
// breadth-first layouts of the expansion shapes the speculation tests use, with their
// parents, depths, positions and ancestor masks written out by hand; ValidateExpansion's
// limits and messages; level expansion for greedy and sampled trees.
#include "engine/spec/token_tree.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/spec/gumbel.h"
#include "engine/spec/rng.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace specmoe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr int kVocab = 16;

// Logits whose top-k order is 15, 14, 13, ...: greedy children of every node are the
// tokens 15, 14, ... in that order.
std::vector<float> DescendingLogits() {
  std::vector<float> logits(kVocab);
  for (int i = 0; i < kVocab; ++i) logits[i] = static_cast<float>(i);
  return logits;
}

// The full greedy tree of `expansion`, expanded level by level as the engine does.
TokenTree BuildGreedy(const std::vector<int>& expansion) {
  TokenTree tree(/*root_token=*/7);
  Rng unused(0);
  for (size_t level = 0; level < expansion.size(); ++level) {
    const std::vector<int> frontier = tree.NodesAtDepth(static_cast<int>(level));
    const std::vector<std::vector<float>> logits(frontier.size(), DescendingLogits());
    ExpandLevel(tree, frontier, logits, expansion[level], /*greedy=*/true, unused);
  }
  return tree;
}

// mask bits from a parent array, independently of TokenTree::AddNode.
uint64_t MaskFromParents(const std::vector<int32_t>& parents, int node) {
  uint64_t mask = 0;
  for (int n = node; n >= 0; n = parents[n]) mask |= uint64_t{1} << n;
  return mask;
}

std::vector<int32_t> Positions(const TokenTree& tree, int root_pos) {
  std::vector<int32_t> pos(tree.size());
  tree.Positions(root_pos, pos.data());
  return pos;
}

TEST(TokenTreeTest, RootOnly) {
  TokenTree tree(42);
  EXPECT_EQ(tree.size(), 1);
  EXPECT_THAT(tree.token, ElementsAre(42));
  EXPECT_THAT(tree.parent, ElementsAre(-1));
  EXPECT_THAT(tree.depth, ElementsAre(0));
  EXPECT_THAT(tree.mask, ElementsAre(1u));
  EXPECT_EQ(tree.max_depth(), 0);
  EXPECT_TRUE(tree.Children(0).empty());
  EXPECT_TRUE(tree.Path(0).empty());
}

TEST(TokenTreeTest, LayoutOne) {
  const TokenTree tree = BuildGreedy({1});
  EXPECT_EQ(tree.size(), 2);
  EXPECT_THAT(tree.token, ElementsAre(7, 15));
  EXPECT_THAT(tree.parent, ElementsAre(-1, 0));
  EXPECT_THAT(tree.depth, ElementsAre(0, 1));
  EXPECT_THAT(tree.mask, ElementsAre(0b1u, 0b11u));
  EXPECT_THAT(Positions(tree, 100), ElementsAre(100, 101));
  EXPECT_EQ(tree.max_depth(), 1);
}

TEST(TokenTreeTest, LayoutChainOfFour) {
  const TokenTree tree = BuildGreedy({1, 1, 1, 1});
  EXPECT_EQ(tree.size(), 5);
  EXPECT_THAT(tree.token, ElementsAre(7, 15, 15, 15, 15));
  EXPECT_THAT(tree.parent, ElementsAre(-1, 0, 1, 2, 3));
  EXPECT_THAT(tree.depth, ElementsAre(0, 1, 2, 3, 4));
  EXPECT_THAT(tree.mask, ElementsAre(0b1u, 0b11u, 0b111u, 0b1111u, 0b11111u));
  EXPECT_THAT(Positions(tree, 9), ElementsAre(9, 10, 11, 12, 13));
  EXPECT_THAT(tree.Path(4), ElementsAre(1, 2, 3, 4));
  EXPECT_EQ(tree.max_depth(), 4);
}

TEST(TokenTreeTest, LayoutTwoTwoOne) {
  const TokenTree tree = BuildGreedy({2, 2, 1});
  ASSERT_EQ(tree.size(), 11);  // 1 + 2 + 4 + 4
  EXPECT_THAT(tree.token, ElementsAre(7, 15, 14, 15, 14, 15, 14, 15, 15, 15, 15));
  EXPECT_THAT(tree.parent, ElementsAre(-1, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6));
  EXPECT_THAT(tree.depth, ElementsAre(0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
  EXPECT_THAT(tree.mask, ElementsAre(0b1u, 0b11u, 0b101u,                       // 0, 1, 2
                                     0b1011u, 0b10011u, 0b100101u, 0b1000101u,  // 3..6
                                     0b10001011u, 0b100010011u,                 // 7, 8
                                     0b1000100101u, 0b10001000101u));           // 9, 10
  EXPECT_THAT(Positions(tree, 0), ElementsAre(0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
  EXPECT_THAT(tree.Children(0), ElementsAre(1, 2));
  EXPECT_THAT(tree.Children(2), ElementsAre(5, 6));
  EXPECT_THAT(tree.Children(6), ElementsAre(10));
  EXPECT_TRUE(tree.Children(10).empty());
  EXPECT_THAT(tree.Path(9), ElementsAre(2, 5, 9));
  EXPECT_THAT(tree.NodesAtDepth(2), ElementsAre(3, 4, 5, 6));
  EXPECT_EQ(tree.max_depth(), 3);
}

TEST(TokenTreeTest, LayoutFour) {
  const TokenTree tree = BuildGreedy({4});
  ASSERT_EQ(tree.size(), 5);
  EXPECT_THAT(tree.token, ElementsAre(7, 15, 14, 13, 12));
  EXPECT_THAT(tree.parent, ElementsAre(-1, 0, 0, 0, 0));
  EXPECT_THAT(tree.depth, ElementsAre(0, 1, 1, 1, 1));
  EXPECT_THAT(tree.mask, ElementsAre(0b1u, 0b11u, 0b101u, 0b1001u, 0b10001u));
  EXPECT_THAT(Positions(tree, 31), ElementsAre(31, 32, 32, 32, 32));
  EXPECT_THAT(tree.Children(0), ElementsAre(1, 2, 3, 4));
}

TEST(TokenTreeTest, LayoutSpecInferDefault) {
  const std::vector<int> expansion = {1, 1, 3, 1, 1, 1, 1, 1};
  const TokenTree tree = BuildGreedy(expansion);
  ASSERT_EQ(tree.size(), 21);  // the root and 20 tree tokens
  EXPECT_EQ(ExpansionNodeCount(expansion), 21);
  const std::vector<int32_t> parents = {-1, 0, 1,  2,  2,  2,  3,  4,  5,  6, 7,
                                        8,  9, 10, 11, 12, 13, 14, 15, 16, 17};
  const std::vector<int32_t> depths = {0, 1, 2, 3, 3, 3, 4, 4, 4, 5, 5,
                                       5, 6, 6, 6, 7, 7, 7, 8, 8, 8};
  EXPECT_THAT(tree.parent, ElementsAreArray(parents));
  EXPECT_THAT(tree.depth, ElementsAreArray(depths));
  EXPECT_THAT(tree.Children(2), ElementsAre(3, 4, 5));
  EXPECT_THAT(std::vector<int32_t>(tree.token.begin() + 3, tree.token.begin() + 6),
              ElementsAre(15, 14, 13));
  for (int node = 0; node < tree.size(); ++node) {
    EXPECT_EQ(tree.mask[node], MaskFromParents(parents, node)) << "node " << node;
  }
  // Two nodes spelled out: 20 = root, 1, 2, 5, 8, 11, 14, 17, 20.
  EXPECT_EQ(tree.mask[20], (1u << 0) | (1u << 1) | (1u << 2) | (1u << 5) | (1u << 8) | (1u << 11) |
                               (1u << 14) | (1u << 17) | (1u << 20));
  EXPECT_EQ(tree.mask[6], 0b1001111u);
  EXPECT_THAT(tree.Path(19), ElementsAre(1, 2, 4, 7, 10, 13, 16, 19));
  std::vector<int32_t> expected_positions;
  for (int32_t d : depths) expected_positions.push_back(50 + d);
  EXPECT_THAT(Positions(tree, 50), ElementsAreArray(expected_positions));
  EXPECT_EQ(tree.max_depth(), 8);
}

TEST(TokenTreeTest, SixtyFourNodesFillTheMask) {
  // <2,2,2,2,2> has 63 nodes; one more child of the last leaf makes 64, bit 63 included.
  TokenTree tree = BuildGreedy({2, 2, 2, 2, 2});
  ASSERT_EQ(tree.size(), 63);
  const int last = tree.AddNode(62, 3);
  EXPECT_EQ(last, 63);
  EXPECT_EQ(tree.mask[63], tree.mask[62] | (uint64_t{1} << 63));
  EXPECT_DEATH(tree.AddNode(62, 4), "64 nodes");
}

TEST(TokenTreeTest, AddNodeEnforcesBreadthFirstOrder) {
  TokenTree tree(1);
  tree.AddNode(0, 2);  // node 1
  tree.AddNode(0, 3);  // node 2
  tree.AddNode(2, 4);  // node 3, a child of node 2
  EXPECT_DEATH(tree.AddNode(1, 5), "breadth-first");
  EXPECT_DEATH(tree.AddNode(9, 5), "not a node");
}

TEST(TokenTreeTest, ResetReusesTheTree) {
  TokenTree tree = BuildGreedy({2, 2});
  tree.Reset(3);
  EXPECT_EQ(tree.size(), 1);
  EXPECT_THAT(tree.token, ElementsAre(3));
  EXPECT_EQ(tree.q.size(), 1u);
  EXPECT_TRUE(tree.q[0].empty());
}

TEST(TokenTreeTest, SampledExpansionStoresQAndDrawsDistinctChildren) {
  TokenTree tree(0);
  Rng rng(1234);
  // Three tokens of non-zero mass: a request for 5 children gets 3.
  std::vector<float> q(kVocab, 0.0f);
  q[2] = 0.5f;
  q[9] = 0.25f;
  q[11] = 0.25f;
  const std::vector<int> root = {0};
  ExpandLevel(tree, root, std::vector<std::vector<float>>{q}, 5, /*greedy=*/false, rng);
  ASSERT_EQ(tree.size(), 4);
  EXPECT_THAT(tree.parent, ElementsAre(-1, 0, 0, 0));
  std::vector<int32_t> children(tree.token.begin() + 1, tree.token.end());
  std::sort(children.begin(), children.end());
  EXPECT_THAT(children, ElementsAre(2, 9, 11));
  EXPECT_EQ(tree.q[0], q);
  for (int node = 1; node < 4; ++node) EXPECT_TRUE(tree.q[node].empty());

  // Second level: each child gets 2 children from its own q; the q's are stored per node.
  std::vector<std::vector<float>> rows;
  for (int node = 1; node < 4; ++node) {
    std::vector<float> row(kVocab, 0.0f);
    row[node] = 0.75f;
    row[node + 4] = 0.25f;
    rows.push_back(row);
  }
  const std::vector<int> frontier = tree.NodesAtDepth(1);
  ExpandLevel(tree, frontier, rows, 2, /*greedy=*/false, rng);
  ASSERT_EQ(tree.size(), 10);
  EXPECT_THAT(tree.parent, ElementsAre(-1, 0, 0, 0, 1, 1, 2, 2, 3, 3));
  for (int node = 1; node < 4; ++node) {
    EXPECT_EQ(tree.q[node], rows[node - 1]);
    std::vector<int32_t> grandchildren;
    for (int c : tree.Children(node)) grandchildren.push_back(tree.token[c]);
    std::sort(grandchildren.begin(), grandchildren.end());
    EXPECT_THAT(grandchildren, ElementsAre(node, node + 4));
  }
}

TEST(TokenTreeTest, GreedyExpansionLeavesQEmpty) {
  const TokenTree tree = BuildGreedy({3, 1});
  for (const std::vector<float>& q : tree.q) EXPECT_TRUE(q.empty());
}

TEST(ValidateExpansionTest, AcceptsTheLimits) {
  EXPECT_TRUE(ValidateExpansion(std::vector<int>{}).ok());
  EXPECT_TRUE(ValidateExpansion(std::vector<int>{1}).ok());
  EXPECT_TRUE(ValidateExpansion(std::vector<int>{1, 1, 3, 1, 1, 1, 1, 1}).ok());
  EXPECT_TRUE(ValidateExpansion(std::vector<int>{8}).ok());
  EXPECT_TRUE(ValidateExpansion(std::vector<int>{2, 2, 2, 2, 2}).ok());  // 63 nodes
  EXPECT_TRUE(ValidateExpansion(std::vector<int>{7, 8}).ok());           // 1 + 7 + 56 = 64
  EXPECT_TRUE(ValidateExpansion(std::vector<int>(16, 1)).ok());          // depth 16
  EXPECT_EQ(ExpansionNodeCount(std::vector<int>{7, 8}), 64);
  EXPECT_EQ(ExpansionNodeCount(std::vector<int>{}), 1);
}

TEST(ValidateExpansionTest, RejectsWithMessagesNamingTheEntry) {
  absl::Status s = ValidateExpansion(std::vector<int>{1, 0, 2});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("speculation.expansion[1] = 0"));

  s = ValidateExpansion(std::vector<int>{9});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("speculation.expansion[0] = 9"));
  EXPECT_THAT(s.message(), HasSubstr("between 1 and 8"));

  s = ValidateExpansion(std::vector<int>{2, -1});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("speculation.expansion[1] = -1"));

  s = ValidateExpansion(std::vector<int>(17, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("speculation.expansion"));
  EXPECT_THAT(s.message(), HasSubstr("17 levels"));

  s = ValidateExpansion(std::vector<int>{8, 8});  // 1 + 8 + 64 = 73
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("speculation.expansion[1] = 8"));
  EXPECT_THAT(s.message(), HasSubstr("73 nodes"));

  s = ValidateExpansion(std::vector<int>{2, 2, 2, 2, 2, 1});  // 63 + 32 = 95
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("speculation.expansion[5] = 1"));
}

TEST(TokenTreeTest, CoupledExpansionTakesTheGumbelTopOfEachNodeAtItsPosition) {
  const std::vector<float> q = {0.05f, 0.3f, 0.0f, 0.25f, 0.4f};
  TokenTree tree(2);
  ExpandLevelCoupled(tree, std::vector<int>{0}, std::vector<std::vector<float>>{q},
                     std::vector<int>{3}, /*seed=*/11, /*root_pos=*/20);
  const std::vector<int32_t> first = GumbelTopK(q, 3, 11, 21);  // depth 1: position 21
  ASSERT_EQ(tree.size(), 4);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(tree.token[1 + i], first[i]);
  // The next level: node 1 gets 2 children, node 2 none, node 3 more than q has (4).
  ExpandLevelCoupled(tree, std::vector<int>{1, 2, 3}, std::vector<std::vector<float>>{q, q, q},
                     std::vector<int>{2, 0, 8}, 11, 20);
  const std::vector<int32_t> second = GumbelTopK(q, 8, 11, 22);  // depth 2: position 22
  ASSERT_EQ(second.size(), 4u);
  ASSERT_EQ(tree.size(), 4 + 2 + 4);
  EXPECT_EQ(tree.Children(2).size(), 0u);
  EXPECT_EQ(tree.token[4], second[0]);
  EXPECT_EQ(tree.token[5], second[1]);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(tree.token[6 + i], second[i]);
  for (const std::vector<float>& stored : tree.q) EXPECT_TRUE(stored.empty());
}

}  // namespace
}  // namespace specmoe::engine
