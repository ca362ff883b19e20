// tests/verifier_stat_test.cc — exactness of stochastic tree verification (engine/README.md,
// Verification).
//
// The verifier runs as a pure function on a tiny language model: 8 tokens, target and
// draft logits that depend on the last token of the context, processed by ProcessLogits
// with temperature / top-k / top-p / repetition penalty (the penalty makes each node's
// distribution depend on its whole path). Each case draws 10^6 trees with fixed seeds
// (children sampled from the draft without replacement, level by level, as the engine
// does), verifies them, and records the first two emitted tokens: the second comes from the
// tree when the step emitted two or more, else it is drawn from the target given the first
// (the next plain sampling step), so the joint target distribution is
//   P(t1, t2) = p(t1 | ctx) * p(t2 | ctx + t1).
// A chi-square test (cells with expected count < 5 pooled; any draw of a zero-probability
// token is an outright failure) must NOT reject at p = 1e-9 for the engine's verifier, for
// the first token and for the pair. The same test must reject each of the three wrong
// variants engine/README.md (Verification) warns about, kept below as deliberately wrong
// node rules. The same cases run again with dynamic trees (the tree policy's per-node
// counts, fixed before the children are drawn), and a policy that drops drawn children must
// be rejected.
// Coupled verification (the default, engine/spec/gumbel.h) gets the same first-token and
// pair tests over 10^6 seeds, with static and dynamic trees: the tree's children are the
// top of log q + G(seed, position, v), the target's choice Gumbel-max with the same noise.
// Two wrong noise keys must be rejected: noise shared across positions, and noise keyed on
// the tree depth instead of the absolute position (a token decoded in the next step then
// reuses the noise of the first).
// The chi-square survival function is the regularized upper incomplete gamma function,
// computed here (series / Legendre continued fraction) and checked on known values.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "engine/spec/gumbel.h"
#include "engine/spec/params.h"
#include "engine/spec/rng.h"
#include "engine/spec/sampler.h"
#include "engine/spec/token_tree.h"
#include "engine/spec/tree_policy.h"
#include "engine/spec/verifier.h"
#include "gtest/gtest.h"
#include "tests/stats_util.h"

namespace specmoe::engine {
namespace {

constexpr int kVocab = 8;
constexpr int64_t kTrials = 1000000;
constexpr double kAlpha = 1e-9;

TEST(ChiSquareTest, SurvivalFunctionMatchesKnownValues) {
  // Upper 5% and 0.1% points of the chi-square distribution (standard tables).
  EXPECT_NEAR(ChiSquareSurvival(3.841458820694124, 1), 0.05, 1e-12);
  EXPECT_NEAR(ChiSquareSurvival(18.307038053275146, 10), 0.05, 1e-12);
  EXPECT_NEAR(ChiSquareSurvival(29.588298445074418, 10), 0.001, 1e-14);
  EXPECT_NEAR(ChiSquareSurvival(82.52872654147721, 63), 0.05, 1e-10);
  // dof 2: Q(1, x/2) = exp(-x/2) exactly, in both branches and far in the tail.
  for (double x : {0.5, 1.9, 2.1, 10.0, 60.0, 200.0}) {
    EXPECT_NEAR(ChiSquareSurvival(x, 2) / std::exp(-x / 2), 1.0, 1e-12) << x;
  }
  EXPECT_EQ(ChiSquareSurvival(0.0, 5), 1.0);
}

TEST(ChiSquareTest, PoolsSmallCellsAndFailsOnImpossibleDraws) {
  // 100 draws over [0.5, 0.45, 0.04, 0.01]: the last two (4 and 1 expected) are pooled.
  const ChiSquareResult fit = ChiSquareTest({50, 45, 4, 1}, {0.5, 0.45, 0.04, 0.01});
  EXPECT_EQ(fit.dof, 2);
  EXPECT_NEAR(fit.statistic, 0.0, 1e-12);
  EXPECT_NEAR(fit.p_value, 1.0, 1e-12);
  const ChiSquareResult impossible = ChiSquareTest({50, 49, 1}, {0.5, 0.5, 0.0});
  EXPECT_EQ(impossible.impossible, 1);
  EXPECT_EQ(impossible.p_value, 0.0);
}

// ---------------------------------------------------------------------------------------
// The tiny language model and the distributions at every path of a tree.

// logits[last][v]: a model whose next-token logits depend on the last context token.
struct TinyModel {
  std::vector<std::vector<float>> logits;
};

TinyModel RandomModel(uint64_t seed, float scale) {
  Rng rng(seed);
  TinyModel m;
  m.logits.assign(kVocab, std::vector<float>(kVocab));
  for (auto& row : m.logits) {
    for (float& v : row) v = static_cast<float>(scale * (2.0 * rng.Uniform() - 1.0));
  }
  return m;
}

// base + noise * U(-1, 1) per logit (noise 0: the same model).
TinyModel Perturbed(const TinyModel& base, uint64_t seed, float noise) {
  Rng rng(seed);
  TinyModel m = base;
  for (auto& row : m.logits) {
    for (float& v : row) v += static_cast<float>(noise * (2.0 * rng.Uniform() - 1.0));
  }
  return m;
}

// The target's p and the draft's q for every path of length 0..depth below the root.
// Entry 0 is the root (context = prompt); child[e][t] is the entry of path(e) + t.
struct PathTable {
  std::vector<std::vector<float>> p;
  std::vector<std::vector<float>> q;
  std::vector<std::vector<int>> child;
};

PathTable BuildPathTable(const TinyModel& target, const SamplingParams& target_params,
                         const TinyModel& draft, const SamplingParams& draft_params,
                         const std::vector<int32_t>& prompt, int depth) {
  PathTable table;
  std::vector<std::vector<int32_t>> contexts = {prompt};
  for (size_t e = 0; e < contexts.size(); ++e) {
    const std::vector<int32_t> ctx = contexts[e];
    std::vector<float> p, q;
    ProcessLogits(target.logits[ctx.back()].data(), kVocab, target_params, ctx, &p);
    ProcessLogits(draft.logits[ctx.back()].data(), kVocab, draft_params, ctx, &q);
    table.p.push_back(p);
    table.q.push_back(q);
    table.child.emplace_back(kVocab, -1);
    if (ctx.size() - prompt.size() < static_cast<size_t>(depth)) {
      for (int t = 0; t < kVocab; ++t) {
        table.child[e][t] = static_cast<int>(contexts.size());
        std::vector<int32_t> next = ctx;
        next.push_back(t);
        contexts.push_back(next);
      }
    }
  }
  return table;
}

std::vector<double> Normalized(const std::vector<float>& v) {
  double total = 0.0;
  for (float x : v) total += x;
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = v[i] / total;
  return out;
}

// ---------------------------------------------------------------------------------------
// Deliberately WRONG verifiers (engine/README.md, Verification). Each is one node rule: given the
// target p and the stored draft q at a node (both normalized, modified in place) and the children's
// tokens in draw order, return the index of the accepted child or -1, leaving in p the
// distribution the bonus would be drawn from.

using NodeRule = int (*)(std::vector<double>& p, std::vector<double>& q,
                         const std::vector<int32_t>& children, Rng& rng);

// p := normalize(max(0, p - q)); unchanged when that has no mass.
void ResidualInPlace(std::vector<double>& p, const std::vector<double>& q) {
  double mass = 0.0;
  for (size_t v = 0; v < p.size(); ++v) mass += std::max(0.0, p[v] - q[v]);
  if (mass <= 0.0) return;
  for (size_t v = 0; v < p.size(); ++v) p[v] = std::max(0.0, p[v] - q[v]) / mass;
}

// q := q without x, renormalized.
void RemoveInPlace(std::vector<double>& q, int32_t x) {
  q[x] = 0.0;
  double mass = 0.0;
  for (double v : q) mass += v;
  if (mass <= 0.0) return;
  for (double& v : q) v /= mass;
}

// WRONG 1: keeps q unchanged after a rejection, although the next child was drawn without
// replacement (from q without the rejected tokens).
int WrongKeepsQ(std::vector<double>& p, std::vector<double>& q,
                const std::vector<int32_t>& children, Rng& rng) {
  for (size_t i = 0; i < children.size(); ++i) {
    const int32_t x = children[i];
    if (rng.Uniform() * q[x] < p[x]) return static_cast<int>(i);
    ResidualInPlace(p, q);
  }
  return -1;
}

// WRONG 2: removes x from q BEFORE forming the residual.
int WrongRemovesBeforeResidual(std::vector<double>& p, std::vector<double>& q,
                               const std::vector<int32_t>& children, Rng& rng) {
  for (size_t i = 0; i < children.size(); ++i) {
    const int32_t x = children[i];
    if (rng.Uniform() * q[x] < p[x]) return static_cast<int>(i);
    RemoveInPlace(q, x);
    ResidualInPlace(p, q);
  }
  return -1;
}

// WRONG 3: tests the children out of draw order (last drawn first), otherwise correct.
int WrongTestsOutOfOrder(std::vector<double>& p, std::vector<double>& q,
                         const std::vector<int32_t>& children, Rng& rng) {
  for (size_t j = children.size(); j-- > 0;) {
    const int32_t x = children[j];
    if (rng.Uniform() * q[x] < p[x]) return static_cast<int>(j);
    ResidualInPlace(p, q);
    RemoveInPlace(q, x);
  }
  return -1;
}

// The tree walk around a node rule: descend on acceptance, bonus from the final p.
VerifyResult WalkWithRule(const TokenTree& tree, std::span<const std::vector<float>> rows, Rng& rng,
                          NodeRule rule) {
  VerifyResult result;
  int node = 0;
  std::vector<double> p = Normalized(rows[0]);
  for (;;) {
    const std::vector<int> children = tree.Children(node);
    if (children.empty()) break;
    std::vector<double> q = Normalized(tree.q[node]);
    std::vector<int32_t> tokens;
    for (int c : children) tokens.push_back(tree.token[c]);
    const int accepted = rule(p, q, tokens, rng);
    if (accepted < 0) break;
    node = children[accepted];
    result.accepted_nodes.push_back(node);
    p = Normalized(rows[node]);
  }
  result.bonus_token = SampleFrom(std::span<const double>(p), rng);
  return result;
}

using Verifier = VerifyResult (*)(const TokenTree&, std::span<const std::vector<float>>, Rng&);

VerifyResult EngineVerifier(const TokenTree& tree, std::span<const std::vector<float>> p,
                            Rng& rng) {
  return VerifyStochastic(tree, p, rng);
}
VerifyResult KeepsQ(const TokenTree& tree, std::span<const std::vector<float>> p, Rng& rng) {
  return WalkWithRule(tree, p, rng, WrongKeepsQ);
}
VerifyResult RemovesBeforeResidual(const TokenTree& tree, std::span<const std::vector<float>> p,
                                   Rng& rng) {
  return WalkWithRule(tree, p, rng, WrongRemovesBeforeResidual);
}
VerifyResult TestsOutOfOrder(const TokenTree& tree, std::span<const std::vector<float>> p,
                             Rng& rng) {
  return WalkWithRule(tree, p, rng, WrongTestsOutOfOrder);
}

// ---------------------------------------------------------------------------------------
// The experiment.

struct Case {
  std::string name;
  std::vector<int> expansion;
  SamplingParams target;  // the request's params: the target's p
  SamplingParams draft;   // what the draft's q was processed with (the engine uses the
                          // request's params; other choices show exactness for any q)
  float draft_noise;      // draft logits = target logits + noise * U(-1, 1)
  uint64_t seed;
};

SamplingParams Params(float temperature, int top_k = 0, float top_p = 1.0f,
                      float repetition_penalty = 1.0f) {
  SamplingParams s;
  s.temperature = temperature;
  s.top_k = top_k;
  s.top_p = top_p;
  s.repetition_penalty = repetition_penalty;
  return s;
}

std::vector<Case> Cases() {
  const SamplingParams t1 = Params(1.0f);
  const SamplingParams t06k4 = Params(0.6f, 4);
  const SamplingParams t14p8 = Params(1.4f, 0, 0.8f);
  const SamplingParams mixed = Params(0.8f, 6, 0.9f, 1.3f);
  return {
      {"T=1 <3,2>", {3, 2}, t1, t1, 2.0f, 11},
      {"T=0.6 top-k=4 <3,2>", {3, 2}, t06k4, t06k4, 2.0f, 12},
      {"T=1.4 top-p=0.8 <3,2>", {3, 2}, t14p8, t14p8, 2.0f, 13},
      {"T=0.8 top-k=6 top-p=0.9 penalty=1.3 <3,2>", {3, 2}, mixed, mixed, 2.0f, 14},
      {"draft top-k=2: fewer children <3,2>", {3, 2}, t1, Params(1.0f, 2), 1.0f, 15},
      {"draft T=2 vs target T=0.5 <4,2>", {4, 2}, Params(0.5f), Params(2.0f), 1.0f, 16},
      {"draft = target <3,2>", {3, 2}, t14p8, t14p8, 0.0f, 17},
      {"T=0.9 top-p=0.95 <2,2,2>",
       {2, 2, 2},
       Params(0.9f, 0, 0.95f),
       Params(0.9f, 0, 0.95f),
       2.0f,
       18},
  };
}

struct Outcome {
  ChiSquareResult first;
  ChiSquareResult joint;
  double mean_emitted = 0.0;  // tokens per step, for the log
  double mean_nodes = 0.0;    // tree nodes per step (root excluded), for the log
};

// Builds one trial's tree below a root already in `tree`: entry[node] is the node's
// PathTable entry (entry[0] = 0 on entry); children drawn from the table's q with
// `draft_rng`.
using TreeBuilder = std::function<void(const PathTable& table, TokenTree& tree,
                                       std::vector<int>& entry, Rng& draft_rng)>;
// Called after each trial's verification (live statistics of the dynamic policy).
using AfterVerify = std::function<void(const TokenTree& tree, const VerifyResult& result)>;

// The static shape: level by level, every frontier node gets the expansion's k children.
TreeBuilder StaticBuilder(const Case& c) {
  return [&c](const PathTable& table, TokenTree& tree, std::vector<int>& entry, Rng& draft_rng) {
    std::vector<std::vector<float>> rows;
    for (size_t level = 0; level < c.expansion.size(); ++level) {
      const std::vector<int> frontier = tree.NodesAtDepth(static_cast<int>(level));
      rows.resize(frontier.size());
      for (size_t i = 0; i < frontier.size(); ++i) rows[i] = table.q[entry[frontier[i]]];
      const int before = tree.size();
      ExpandLevel(tree, frontier, rows, c.expansion[level], /*greedy=*/false, draft_rng);
      for (int n = before; n < tree.size(); ++n) {
        entry.push_back(table.child[entry[tree.parent[n]]][tree.token[n]]);
      }
    }
  };
}

// The chi-square tests of the observed first tokens and pairs against the target's own
// distributions (the pair's second token from the path table's child row), and the means.
Outcome Summarize(const PathTable& table, const std::vector<int64_t>& first_counts,
                  const std::vector<int64_t>& joint_counts, int64_t emitted, int64_t nodes) {
  const std::vector<double> p_root = Normalized(table.p[0]);
  std::vector<double> joint(kVocab * kVocab, 0.0);
  for (int a = 0; a < kVocab; ++a) {
    const std::vector<double> p_next = Normalized(table.p[table.child[0][a]]);
    for (int b = 0; b < kVocab; ++b) joint[a * kVocab + b] = p_root[a] * p_next[b];
  }
  Outcome out;
  out.first = ChiSquareTest(first_counts, p_root);
  out.joint = ChiSquareTest(joint_counts, joint);
  out.mean_emitted = static_cast<double>(emitted) / kTrials;
  out.mean_nodes = static_cast<double>(nodes) / kTrials;
  return out;
}

Outcome RunTrials(const Case& c, Verifier verify, const TreeBuilder& build,
                  const AfterVerify& after = nullptr) {
  const std::vector<int32_t> prompt = {3, 5, 1};  // the root token is 1
  const TinyModel target = RandomModel(1000 + c.seed, 3.0f);
  const TinyModel draft = Perturbed(target, 2000 + c.seed, c.draft_noise);
  const int depth = static_cast<int>(c.expansion.size());
  const PathTable table = BuildPathTable(target, c.target, draft, c.draft, prompt, depth);

  Rng master(c.seed);
  Rng draft_rng = master.Split(kDraftStream);
  Rng verify_rng = master.Split(kVerifyStream);
  Rng next_step_rng = master.Split(3);  // the plain step after a bonus-only verify step

  std::vector<int64_t> first_counts(kVocab, 0);
  std::vector<int64_t> joint_counts(kVocab * kVocab, 0);
  int64_t emitted = 0;
  int64_t nodes = 0;
  TokenTree tree;
  std::vector<int> entry;  // tree node -> PathTable entry
  std::vector<std::vector<float>> p_rows;
  for (int64_t trial = 0; trial < kTrials; ++trial) {
    tree.Reset(prompt.back());
    entry.assign(1, 0);
    build(table, tree, entry, draft_rng);
    nodes += tree.size() - 1;
    p_rows.resize(tree.size());
    for (int n = 0; n < tree.size(); ++n) p_rows[n] = table.p[entry[n]];

    const VerifyResult r = verify(tree, p_rows, verify_rng);
    if (after) after(tree, r);
    const size_t accepted = r.accepted_nodes.size();
    emitted += static_cast<int64_t>(accepted) + 1;
    const int32_t t1 = accepted >= 1 ? tree.token[r.accepted_nodes[0]] : r.bonus_token;
    int32_t t2;
    if (accepted >= 2) {
      t2 = tree.token[r.accepted_nodes[1]];
    } else if (accepted == 1) {
      t2 = r.bonus_token;
    } else {
      t2 = SampleFrom(table.p[table.child[0][t1]], next_step_rng);
    }
    ++first_counts[t1];
    ++joint_counts[t1 * kVocab + t2];
  }

  return Summarize(table, first_counts, joint_counts, emitted, nodes);
}

Outcome RunCase(const Case& c, Verifier verify) { return RunTrials(c, verify, StaticBuilder(c)); }

void Log(const char* verifier, const Case& c, const Outcome& o) {
  std::printf(
      "%-24s %-44s first: chi2 %12.2f dof %2d p %.3g | pair: chi2 %12.2f dof %2d p %.3g | "
      "tokens/step %.3f nodes/step %.2f\n",
      verifier, c.name.c_str(), o.first.statistic, o.first.dof, o.first.p_value, o.joint.statistic,
      o.joint.dof, o.joint.p_value, o.mean_emitted, o.mean_nodes);
  std::fflush(stdout);
}

class ExactSamplingTest : public ::testing::TestWithParam<Case> {};

TEST_P(ExactSamplingTest, FirstTwoTokensHaveTheTargetDistribution) {
  const Case& c = GetParam();
  const Outcome o = RunCase(c, EngineVerifier);
  Log("engine verifier", c, o);
  EXPECT_EQ(o.first.impossible, 0);
  EXPECT_EQ(o.joint.impossible, 0);
  EXPECT_GT(o.first.p_value, kAlpha) << "first token, chi2 " << o.first.statistic;
  EXPECT_GT(o.joint.p_value, kAlpha) << "first two tokens, chi2 " << o.joint.statistic;
}

INSTANTIATE_TEST_SUITE_P(Cases, ExactSamplingTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return "Case" + std::to_string(info.index);
                         });

// Runs `verify` on the cases in order until the chi-square test rejects (first token or
// pair); returns whether it did.
bool RejectedOnSomeCase(const char* name, Verifier verify) {
  for (const Case& c : Cases()) {
    const Outcome o = RunCase(c, verify);
    Log(name, c, o);
    if (o.first.p_value < kAlpha || o.joint.p_value < kAlpha) return true;
  }
  return false;
}

TEST(WrongVerifierTest, KeepingQAfterARejectionIsDetected) {
  EXPECT_TRUE(RejectedOnSomeCase("WRONG keeps q", KeepsQ));
}

TEST(WrongVerifierTest, RemovingXBeforeTheResidualIsDetected) {
  EXPECT_TRUE(RejectedOnSomeCase("WRONG removes x first", RemovesBeforeResidual));
}

TEST(WrongVerifierTest, TestingChildrenOutOfDrawOrderIsDetected) {
  EXPECT_TRUE(RejectedOnSomeCase("WRONG out of order", TestsOutOfOrder));
}

// ---------------------------------------------------------------------------------------
// Dynamic trees (engine/spec/tree_policy.h): each trial's shape comes from the tree policy,
// level by level, with the case's expansion as the maximum shape: the counts of a level
// from TreePolicy::Expand on the frontier's values and the draft's top probabilities
// (TopProbabilities of q), decided before any child of that level is drawn, then exactly
// that many children drawn by ExpandLevel with counts. Synthetic costs: a target flat to 12
// tokens (10 ms) then 2.5 ms per token, a 1 ms draft; the step's base tokens cycle through
// 1..13 so trees range from the full shape to root-only. The request's acceptance model and the
// server-wide prior learn from every verified trial (live calibration), so values, and
// with them shapes, change along the run. The first token and the pair must still have
// exactly the target's distribution; a policy that draws the full k_d and then drops the
// drawn children whose probability does not pay (engine/README.md, Tree policy) must be rejected.

struct DynamicState {
  TreePolicy policy{TreePolicy::Kind::kDynamic, CostCurve({{1, 0.010}, {12, 0.010}, {20, 0.030}}),
                    CostCurve({{1, 0.001}, {16, 0.001}})};
  AcceptanceModel request;
  int64_t trial = 0;
  std::set<int> sizes;  // tree sizes seen
};

constexpr int kBaseTokens[] = {1, 2, 3, 5, 8, 13};

// `drop_after_drawing`: the WRONG variant, which draws k_d children at every node the policy
// expands and keeps those whose q reaches the smallest top-q the policy took.
TreeBuilder DynamicBuilder(const Case& c, DynamicState& st, bool drop_after_drawing) {
  return [&c, &st, drop_after_drawing](const PathTable& table, TokenTree& tree,
                                       std::vector<int>& entry, Rng& draft_rng) {
    const int base = kBaseTokens[st.trial++ % std::size(kBaseTokens)];
    st.policy.BeginStep(base, /*draft_base_tokens=*/2, /*decoding=*/base);
    const int depth = static_cast<int>(c.expansion.size());
    std::vector<double> values = {1.0};  // [frontier]
    std::vector<std::vector<float>> rows, top_q;
    for (int level = 0; level < depth; ++level) {
      const std::vector<int> frontier = tree.NodesAtDepth(level);
      if (frontier.empty()) break;
      const int k = c.expansion[level];
      rows.resize(frontier.size());
      top_q.resize(frontier.size());
      for (size_t i = 0; i < frontier.size(); ++i) {
        rows[i] = table.q[entry[frontier[i]]];
        top_q[i] = TopProbabilities(rows[i].data(), kVocab, k);
      }
      LevelRequest lr;
      lr.max_children = k;
      lr.depth = level + 1;
      lr.frontier_value = values;
      lr.frontier_top_q = top_q;
      lr.acceptance = &st.request;
      lr.last_level = level + 1 == depth;
      const std::vector<int> counts =
          st.policy.Expand(std::span(&lr, 1), kMaxTreeNodes - tree.size())[0];
      const int before = tree.size();
      if (!drop_after_drawing) {
        ExpandLevel(tree, frontier, rows, counts, /*greedy=*/false, draft_rng);
      } else {
        for (size_t i = 0; i < frontier.size(); ++i) {
          if (counts[i] == 0) continue;
          const float cut = top_q[i][counts[i] - 1];
          bool any = false;
          for (int32_t x : SampleWithoutReplacement(rows[i], k, draft_rng)) {
            if (rows[i][x] < cut) continue;  // WRONG: a drawn child dropped
            tree.AddNode(frontier[i], x);
            any = true;
          }
          if (any) tree.q[frontier[i]] = rows[i];
        }
      }
      std::vector<double> next;
      for (int n = before; n < tree.size(); ++n) {
        const int parent = tree.parent[n];
        entry.push_back(table.child[entry[parent]][tree.token[n]]);
        next.push_back(st.policy.ChildValue(values[parent - frontier[0]], level + 1,
                                            tree.q[parent][tree.token[n]], st.request));
      }
      values = std::move(next);
    }
    st.sizes.insert(tree.size());
  };
}

// Live statistics: the step's acceptance by depth and the q of the first child tested at
// each depth, into the request's model and the server-wide prior.
AfterVerify DynamicFeedback(DynamicState& st) {
  return [&st](const TokenTree& tree, const VerifyResult& result) {
    const StepStats stats = ComputeStepStats(tree, result);
    std::vector<int> path = {0};
    path.insert(path.end(), result.accepted_nodes.begin(), result.accepted_nodes.end());
    std::vector<float> first_q(stats.reached_by_depth.size(), 0.0f);
    for (size_t d = 0; d < first_q.size() && d < path.size(); ++d) {
      if (stats.reached_by_depth[d] == 0) continue;
      const int node = path[d];
      const std::vector<int> children = tree.Children(node);
      if (!children.empty()) first_q[d] = tree.q[node][tree.token[children[0]]];
    }
    st.request.Record(stats, first_q);
    st.policy.ObserveStep(stats, first_q);
  };
}

Outcome RunDynamicCase(const Case& c, bool drop_after_drawing, std::set<int>* sizes = nullptr) {
  DynamicState st;
  const Outcome o = RunTrials(c, EngineVerifier, DynamicBuilder(c, st, drop_after_drawing),
                              DynamicFeedback(st));
  if (sizes != nullptr) *sizes = st.sizes;
  return o;
}

class DynamicTreeExactSamplingTest : public ::testing::TestWithParam<Case> {};

TEST_P(DynamicTreeExactSamplingTest, FirstTwoTokensHaveTheTargetDistribution) {
  const Case& c = GetParam();
  std::set<int> sizes;
  const Outcome o = RunDynamicCase(c, /*drop_after_drawing=*/false, &sizes);
  Log("dynamic trees", c, o);
  std::printf("%-24s %-44s %zu distinct tree sizes, from %d to %d nodes\n", "", c.name.c_str(),
              sizes.size(), *sizes.begin(), *sizes.rbegin());
  EXPECT_EQ(o.first.impossible, 0);
  EXPECT_EQ(o.joint.impossible, 0);
  EXPECT_GT(o.first.p_value, kAlpha) << "first token, chi2 " << o.first.statistic;
  EXPECT_GT(o.joint.p_value, kAlpha) << "first two tokens, chi2 " << o.joint.statistic;
  // The shapes did vary, root-only trees included. (In case 5 the draft is so far from
  // the target that the request's live acceptance soon makes every node worthless and it
  // decodes plainly from then on; the other cases see 3 to 5 sizes, root-only to full.)
  EXPECT_GE(sizes.size(), 2u);
  EXPECT_EQ(*sizes.begin(), 1);
}

INSTANTIATE_TEST_SUITE_P(Cases, DynamicTreeExactSamplingTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return "Case" + std::to_string(info.index);
                         });

TEST(WrongVerifierTest, DroppingDrawnChildrenThatDoNotPayIsDetected) {
  bool rejected = false;
  for (const Case& c : Cases()) {
    const Outcome o = RunDynamicCase(c, /*drop_after_drawing=*/true);
    Log("WRONG drops drawn", c, o);
    if (o.first.p_value < kAlpha || o.joint.p_value < kAlpha) {
      rejected = true;
      break;
    }
  }
  EXPECT_TRUE(rejected);
}

// ---------------------------------------------------------------------------------------
// Coupled verification: the trial's seed fixes the noise; the engine's ExpandLevelCoupled
// and VerifyCoupled build and verify the tree, and the second token, when the step emitted
// only one, comes from the next plain step (VerifyCoupled of a root-only tree one position
// further). The wrong variants key the noise of the token at depth d below a root at r on
// 0 (shared) or on d (the tree depth) instead of r + d.

enum class NoiseKey { kPosition, kShared, kDepth };

int64_t KeyedPosition(NoiseKey key, int root_pos, int depth) {
  switch (key) {
    case NoiseKey::kShared:
      return 0;
    case NoiseKey::kDepth:
      return depth;
    case NoiseKey::kPosition:
      break;
  }
  return static_cast<int64_t>(root_pos) + depth;
}

// One level of coupled children: the engine's code for the correct key, else the same
// top of log q + G with the wrong key.
void CoupledLevel(NoiseKey key, TokenTree& tree, const std::vector<int>& frontier,
                  const std::vector<std::vector<float>>& rows, const std::vector<int>& counts,
                  uint64_t seed, int root_pos) {
  if (key == NoiseKey::kPosition) {
    ExpandLevelCoupled(tree, frontier, rows, counts, seed, root_pos);
    return;
  }
  for (size_t i = 0; i < frontier.size(); ++i) {
    const int64_t position = KeyedPosition(key, root_pos, tree.depth[frontier[i]] + 1);
    for (int32_t id : GumbelTopK(rows[i], counts[i], seed, position)) tree.AddNode(frontier[i], id);
  }
}

VerifyResult CoupledVerify(NoiseKey key, const TokenTree& tree,
                           std::span<const std::vector<float>> p, uint64_t seed, int root_pos) {
  if (key == NoiseKey::kPosition) {
    return VerifyCoupled(
        tree, [p](int node, std::vector<float>* row) { *row = p[node]; }, seed, root_pos);
  }
  return VerifyByChoice(tree, [&](int node) {
    return GumbelMax(p[node], seed, KeyedPosition(key, root_pos, tree.depth[node] + 1));
  });
}

// The coupled tree of one trial; `dynamic` takes the tree policy's counts level by level
// (as DynamicBuilder), with live feedback.
struct CoupledRun {
  const Case& c;
  NoiseKey key;
  bool dynamic;
  DynamicState st;
  std::set<int> sizes;

  void Build(const PathTable& table, TokenTree& tree, std::vector<int>& entry, uint64_t seed,
             int root_pos) {
    const int depth = static_cast<int>(c.expansion.size());
    if (dynamic) {
      const int base = kBaseTokens[st.trial++ % std::size(kBaseTokens)];
      st.policy.BeginStep(base, /*draft_base_tokens=*/2, /*decoding=*/base);
    }
    std::vector<double> values = {1.0};  // [frontier]
    std::vector<std::vector<float>> rows, top_q;
    for (int level = 0; level < depth; ++level) {
      const std::vector<int> frontier = tree.NodesAtDepth(level);
      if (frontier.empty()) break;
      const int k = c.expansion[level];
      rows.resize(frontier.size());
      top_q.resize(frontier.size());
      for (size_t i = 0; i < frontier.size(); ++i) {
        rows[i] = table.q[entry[frontier[i]]];
        top_q[i] = TopProbabilities(rows[i].data(), kVocab, k);
      }
      std::vector<int> counts(frontier.size(), k);
      if (dynamic) {
        LevelRequest lr;
        lr.max_children = k;
        lr.depth = level + 1;
        lr.frontier_value = values;
        lr.frontier_top_q = top_q;
        lr.acceptance = &st.request;
        lr.last_level = level + 1 == depth;
        counts = st.policy.Expand(std::span(&lr, 1), kMaxTreeNodes - tree.size())[0];
      }
      const int before = tree.size();
      CoupledLevel(key, tree, frontier, rows, counts, seed, root_pos);
      std::vector<double> next;
      for (int n = before; n < tree.size(); ++n) {
        const int parent = tree.parent[n];
        entry.push_back(table.child[entry[parent]][tree.token[n]]);
        next.push_back(st.policy.ChildValue(values[parent - frontier[0]], level + 1,
                                            table.q[entry[parent]][tree.token[n]], st.request));
      }
      values = std::move(next);
    }
    sizes.insert(tree.size());
  }

  void Feedback(const TokenTree& tree, const std::vector<int>& entry, const VerifyResult& result,
                const PathTable& table) {
    if (!dynamic) return;
    const StepStats stats = ComputeStepStats(tree, result);
    std::vector<int> path = {0};
    path.insert(path.end(), result.accepted_nodes.begin(), result.accepted_nodes.end());
    std::vector<float> first_q(stats.reached_by_depth.size(), 0.0f);
    for (size_t d = 0; d < first_q.size() && d < path.size(); ++d) {
      if (stats.reached_by_depth[d] == 0) continue;
      const std::vector<int> children = tree.Children(path[d]);
      if (!children.empty()) first_q[d] = table.q[entry[path[d]]][tree.token[children[0]]];
    }
    st.request.Record(stats, first_q);
    st.policy.ObserveStep(stats, first_q);
  }
};

Outcome RunCoupledTrials(CoupledRun& run) {
  const Case& c = run.c;
  const std::vector<int32_t> prompt = {3, 5, 1};  // the root token is 1
  const int root_pos = static_cast<int>(prompt.size()) - 1;
  const TinyModel target = RandomModel(1000 + c.seed, 3.0f);
  const TinyModel draft = Perturbed(target, 2000 + c.seed, c.draft_noise);
  const int depth = static_cast<int>(c.expansion.size());
  const PathTable table = BuildPathTable(target, c.target, draft, c.draft, prompt, depth);

  Rng seeds(c.seed);
  std::vector<int64_t> first_counts(kVocab, 0);
  std::vector<int64_t> joint_counts(kVocab * kVocab, 0);
  int64_t emitted = 0;
  int64_t nodes = 0;
  TokenTree tree;
  TokenTree next_root;
  std::vector<int> entry;
  std::vector<std::vector<float>> p_rows;
  for (int64_t trial = 0; trial < kTrials; ++trial) {
    const uint64_t seed = seeds.Next();
    tree.Reset(prompt.back());
    entry.assign(1, 0);
    run.Build(table, tree, entry, seed, root_pos);
    nodes += tree.size() - 1;
    p_rows.resize(tree.size());
    for (int n = 0; n < tree.size(); ++n) p_rows[n] = table.p[entry[n]];
    const VerifyResult r = CoupledVerify(run.key, tree, p_rows, seed, root_pos);
    run.Feedback(tree, entry, r, table);
    const size_t accepted = r.accepted_nodes.size();
    emitted += static_cast<int64_t>(accepted) + 1;
    const int32_t t1 = accepted >= 1 ? tree.token[r.accepted_nodes[0]] : r.bonus_token;
    int32_t t2;
    if (accepted >= 2) {
      t2 = tree.token[r.accepted_nodes[1]];
    } else if (accepted == 1) {
      t2 = r.bonus_token;
    } else {  // the next step, plain decoding from a root one position further
      next_root.Reset(t1);
      const std::vector<float> row = table.p[table.child[0][t1]];
      t2 = CoupledVerify(run.key, next_root, std::span(&row, 1), seed, root_pos + 1).bonus_token;
    }
    ++first_counts[t1];
    ++joint_counts[t1 * kVocab + t2];
  }
  return Summarize(table, first_counts, joint_counts, emitted, nodes);
}

// The coupled cases: temperatures, top-k, top-p and the penalty, a draft processed
// differently from the target, a 3-level tree.
std::vector<Case> CoupledCases() {
  const std::vector<Case> all = Cases();
  return {all[0], all[3], all[5], all[7]};
}

class CoupledSamplingTest : public ::testing::TestWithParam<std::tuple<Case, bool>> {};

TEST_P(CoupledSamplingTest, FirstTwoTokensHaveTheTargetDistribution) {
  const auto& [c, dynamic] = GetParam();
  CoupledRun run{c, NoiseKey::kPosition, dynamic};
  const Outcome o = RunCoupledTrials(run);
  Log(dynamic ? "coupled, dynamic trees" : "coupled, static trees", c, o);
  EXPECT_EQ(o.first.impossible, 0);
  EXPECT_EQ(o.joint.impossible, 0);
  EXPECT_GT(o.first.p_value, kAlpha) << "first token, chi2 " << o.first.statistic;
  EXPECT_GT(o.joint.p_value, kAlpha) << "first two tokens, chi2 " << o.joint.statistic;
  EXPECT_GT(o.mean_emitted, 1.05) << "the draft's children should often be accepted";
  if (dynamic) EXPECT_GE(run.sizes.size(), 2u) << "the policy should vary the trees";
}

INSTANTIATE_TEST_SUITE_P(Cases, CoupledSamplingTest,
                         ::testing::Combine(::testing::ValuesIn(CoupledCases()),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<Case, bool>>& info) {
                           return "Case" + std::to_string(info.index / 2) +
                                  (std::get<1>(info.param) ? "Dynamic" : "Static");
                         });

// Runs the coupled cases with a wrong noise key until the chi-square test rejects.
bool CoupledRejectedOnSomeCase(const char* name, NoiseKey key) {
  for (const Case& c : CoupledCases()) {
    CoupledRun run{c, key, /*dynamic=*/false};
    const Outcome o = RunCoupledTrials(run);
    Log(name, c, o);
    if (o.first.p_value < kAlpha || o.joint.p_value < kAlpha) return true;
  }
  return false;
}

TEST(WrongCouplingTest, NoiseSharedAcrossPositionsIsDetected) {
  EXPECT_TRUE(CoupledRejectedOnSomeCase("WRONG shared noise", NoiseKey::kShared));
}

TEST(WrongCouplingTest, NoiseKeyedOnTheTreeDepthIsDetected) {
  EXPECT_TRUE(CoupledRejectedOnSomeCase("WRONG depth-keyed noise", NoiseKey::kDepth));
}

}  // namespace
}  // namespace specmoe::engine
