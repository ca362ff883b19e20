// engine/spec/token_tree.h — the speculated token tree of one request for one step
// (engine/README.md, Token trees; SpecInfer, arXiv 2305.09781 §3-4).
//
// Node 0 is the root: the last committed token, not yet in the target's KV cache. The
// other nodes are draft tokens in breadth-first order; each has a parent, a depth
// (root 0), a position (root position + depth: siblings share a position) and an ancestor
// mask of one uint64 (bit j set iff node j is the node itself or one of its ancestors),
// which is the tree-attention mask of the node over the tree part of the KV cache.
// A sampled tree also keeps, per internal node, the draft distribution q its children were
// drawn from: the verifier must use that very q (engine/README.md, Verification).
// Tested in tests/token_tree_test.cc (layouts of the guide's expansion shapes).
#ifndef SPECMOE_ENGINE_SPEC_TOKEN_TREE_H_
#define SPECMOE_ENGINE_SPEC_TOKEN_TREE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/spec/rng.h"

namespace specmoe::engine {

// Limits of an expansion <k1, ..., km> (at depth i every node of depth i-1 gets k_i
// children): the tree mask is one uint64 per node, hence 64 nodes including the root.
inline constexpr int kMaxTreeDepth = 16;
inline constexpr int kMaxTreeWidth = 8;   // the largest k_i
inline constexpr int kMaxTreeNodes = 64;  // root included

// OK when every k_i is in [1, kMaxTreeWidth], m <= kMaxTreeDepth and the full tree has at
// most kMaxTreeNodes nodes; else INVALID_ARGUMENT naming "speculation.expansion" and the
// offending entry. An empty expansion is valid: a root-only tree, i.e. plain decoding.
absl::Status ValidateExpansion(std::span<const int> expansion);

// Nodes of the full tree of `expansion`, root included: 1 + k1 + k1*k2 + ...
// (a node may get fewer children when the draft has fewer tokens of non-zero mass).
// Expects a valid expansion.
int ExpansionNodeCount(std::span<const int> expansion);

// A value type holding at most kMaxTreeNodes nodes; building and querying cost O(nodes).
// Not thread-safe (plain data). All per-node vectors have size() entries.
struct TokenTree {
  std::vector<int32_t> token;   // [nodes] token id
  std::vector<int32_t> parent;  // [nodes] parent node, -1 for the root
  std::vector<int32_t> depth;   // [nodes] root 0
  std::vector<uint64_t> mask;   // [nodes] bit j: node j is an ancestor or the node itself
  // [nodes] the draft distribution ([vocab]) the node's children were drawn from; empty
  // for leaves and for every node of a greedy tree.
  std::vector<std::vector<float>> q;

  TokenTree() = default;
  explicit TokenTree(int32_t root_token) { Reset(root_token); }

  // Clears the tree to a lone root holding `root_token` (keeps the vectors' capacity).
  void Reset(int32_t root_token);

  int size() const { return static_cast<int>(token.size()); }

  // Appends a child of `parent_node` holding `token_id` and returns its index. Nodes must
  // come in breadth-first order, i.e. parents non-decreasing: aborts when `parent_node`
  // is not an existing node, is smaller than the last node's parent, or the tree is full.
  int AddNode(int parent_node, int32_t token_id);

  // The children of `node` in insertion (= draw) order.
  std::vector<int> Children(int node) const;
  // The nodes on the path from the root to `node`, root excluded, in depth order.
  std::vector<int> Path(int node) const;
  // The nodes of depth `d`, in order (the frontier when expanding depth d + 1).
  std::vector<int> NodesAtDepth(int d) const;
  // The largest depth (0 for a root-only tree).
  int max_depth() const;

  // out[node] = root_pos + depth[node] for every node. out: [size()].
  void Positions(int root_pos, int32_t* out) const;
};

// Adds one level: for each frontier node f = frontier[i] (nodes of the current deepest
// depth, in order), appends up to k children.
//   greedy:   draft_probs_or_logits[i] are the draft's logits at f ([vocab], already with
//             the repetition penalty of f's path when the request has one); the children
//             are TopKIds(logits, k). tree.q is left empty.
//   sampling: draft_probs_or_logits[i] is the draft's processed distribution q at f
//             (ProcessLogits with the request's params and f's path); the children are
//             SampleWithoutReplacement(q, k, rng), fewer when q has fewer than k non-zero
//             ids, and tree.q[f] := q. `rng` must be the draft stream (kDraftStream),
//             independent of the verifier's.
void ExpandLevel(TokenTree& tree, std::span<const int> frontier,
                 std::span<const std::vector<float>> draft_probs_or_logits, int k, bool greedy,
                 Rng& rng);

// The same with a child count per frontier node (the tree policy's, decided before any
// child is drawn): frontier[i] gets k[i] >= 0 children, TopKIds(logits, k[i]) when greedy,
// else SampleWithoutReplacement(q, k[i], rng): exactly k[i] draws, fewer only when q has
// fewer than k[i] ids of non-zero mass, every drawn child added in draw order (none is
// ever dropped). tree.q[f] := q only when f gets children (k[i] = 0 leaves f a leaf and
// consumes no random numbers). k: [frontier].
void ExpandLevel(TokenTree& tree, std::span<const int> frontier,
                 std::span<const std::vector<float>> draft_probs_or_logits,
                 std::span<const int> k, bool greedy, Rng& rng);

// The coupled form (SampledVerification::kCoupled, engine/spec/gumbel.h): frontier[i] = f
// gets the children GumbelTopK(q, k[i], seed, root_pos + depth[f] + 1), q being
// draft_probs[i] (the draft's processed distribution at f), i.e. the top of log q + G with
// the noise of the absolute position the children occupy: fewer when q has fewer than k[i]
// ids of mass. No random stream is consumed and tree.q is left empty (verification needs
// only the target's own choice). k: [frontier].
void ExpandLevelCoupled(TokenTree& tree, std::span<const int> frontier,
                        std::span<const std::vector<float>> draft_probs, std::span<const int> k,
                        uint64_t seed, int root_pos);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_TOKEN_TREE_H_
