// engine/spec/token_tree.cc — token-tree layout and level expansion (see token_tree.h).
#include "engine/spec/token_tree.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/spec/gumbel.h"
#include "engine/spec/sampler.h"
#include "kernels/check.h"

namespace specmoe::engine {
absl::Status ValidateExpansion(std::span<const int> expansion) {
  const std::string shape = absl::StrCat("<", absl::StrJoin(expansion, ","), ">");
  if (expansion.size() > static_cast<size_t>(kMaxTreeDepth)) {
    return absl::InvalidArgumentError(
        absl::StrCat("speculation.expansion ", shape, " has ", expansion.size(),
                     " levels; the tree depth is at most ", kMaxTreeDepth));
  }
  // nodes = 1 + k1 + k1 k2 + ...; with k_i <= 8 and m <= 16 it stays below 2^49.
  int64_t level_width = 1;
  int64_t nodes = 1;
  for (size_t i = 0; i < expansion.size(); ++i) {
    const int k = expansion[i];
    if (k < 1 || k > kMaxTreeWidth) {
      return absl::InvalidArgumentError(absl::StrCat("speculation.expansion[", i, "] = ", k, " in ",
                                                     shape, ": each entry must be between 1 and ",
                                                     kMaxTreeWidth));
    }
    level_width *= k;
    nodes += level_width;
    if (nodes > kMaxTreeNodes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "speculation.expansion[", i, "] = ", k, " in ", shape, " brings the tree to ", nodes,
          " nodes (root included); at most ", kMaxTreeNodes));
    }
  }
  return absl::OkStatus();
}

int ExpansionNodeCount(std::span<const int> expansion) {
  int level_width = 1;
  int nodes = 1;
  for (int k : expansion) {
    level_width *= k;
    nodes += level_width;
  }
  return nodes;
}

void TokenTree::Reset(int32_t root_token) {
  token.assign(1, root_token);
  parent.assign(1, -1);
  depth.assign(1, 0);
  mask.assign(1, uint64_t{1});
  q.resize(1);
  q[0].clear();
}

int TokenTree::AddNode(int parent_node, int32_t token_id) {
  const int node = size();
  SPECMOE_CHECK(node > 0, "AddNode: the tree has no root (construct it or call Reset first)");
  SPECMOE_CHECK(node < kMaxTreeNodes, "AddNode: the tree already has 64 nodes");
  SPECMOE_CHECK(parent_node >= 0 && parent_node < node, "AddNode: the parent is not a node");
  SPECMOE_CHECK(parent_node >= parent.back(),
          "AddNode: nodes must be added in breadth-first order (non-decreasing parents)");
  token.push_back(token_id);
  parent.push_back(parent_node);
  depth.push_back(depth[parent_node] + 1);
  mask.push_back(mask[parent_node] | (uint64_t{1} << node));
  q.emplace_back();
  return node;
}

std::vector<int> TokenTree::Children(int node) const {
  std::vector<int> children;
  for (int i = node + 1; i < size(); ++i) {
    if (parent[i] == node) children.push_back(i);
  }
  return children;
}

std::vector<int> TokenTree::Path(int node) const {
  std::vector<int> path;
  for (int n = node; n > 0; n = parent[n]) path.push_back(n);
  std::reverse(path.begin(), path.end());
  return path;
}

std::vector<int> TokenTree::NodesAtDepth(int d) const {
  std::vector<int> nodes;
  for (int i = 0; i < size(); ++i) {
    if (depth[i] == d) nodes.push_back(i);
  }
  return nodes;
}

int TokenTree::max_depth() const { return depth.empty() ? 0 : depth.back(); }

void TokenTree::Positions(int root_pos, int32_t* out) const {
  for (int i = 0; i < size(); ++i) out[i] = root_pos + depth[i];
}

void ExpandLevel(TokenTree& tree, std::span<const int> frontier,
                 std::span<const std::vector<float>> draft_probs_or_logits, int k, bool greedy,
                 Rng& rng) {
  const std::vector<int> counts(frontier.size(), k);
  ExpandLevel(tree, frontier, draft_probs_or_logits, counts, greedy, rng);
}

void ExpandLevel(TokenTree& tree, std::span<const int> frontier,
                 std::span<const std::vector<float>> draft_probs_or_logits,
                 std::span<const int> k, bool greedy, Rng& rng) {
  SPECMOE_CHECK(frontier.size() == draft_probs_or_logits.size(),
          "ExpandLevel: one draft row per frontier node");
  SPECMOE_CHECK(frontier.size() == k.size(), "ExpandLevel: one child count per frontier node");
  for (size_t i = 0; i < frontier.size(); ++i) {
    const int f = frontier[i];
    const std::vector<float>& row = draft_probs_or_logits[i];
    SPECMOE_CHECK(f >= 0 && f < tree.size(), "ExpandLevel: frontier node out of range");
    SPECMOE_CHECK(k[i] >= 0, "ExpandLevel: negative child count");
    if (k[i] == 0) continue;
    const std::vector<int32_t> children =
        greedy ? TopKIds(row.data(), static_cast<int>(row.size()), k[i])
               : SampleWithoutReplacement(row, k[i], rng);
    for (int32_t id : children) tree.AddNode(f, id);
    if (!greedy && !children.empty()) tree.q[f] = row;
  }
}

void ExpandLevelCoupled(TokenTree& tree, std::span<const int> frontier,
                        std::span<const std::vector<float>> draft_probs, std::span<const int> k,
                        uint64_t seed, int root_pos) {
  SPECMOE_CHECK(frontier.size() == draft_probs.size() && frontier.size() == k.size(),
                "ExpandLevelCoupled: one draft row and one child count per frontier node");
  for (size_t i = 0; i < frontier.size(); ++i) {
    const int f = frontier[i];
    SPECMOE_CHECK(f >= 0 && f < tree.size(), "ExpandLevelCoupled: frontier node out of range");
    if (k[i] <= 0) continue;
    const int64_t position = static_cast<int64_t>(root_pos) + tree.depth[f] + 1;
    for (int32_t id : GumbelTopK(draft_probs[i], k[i], seed, position)) tree.AddNode(f, id);
  }
}

}  // namespace specmoe::engine
