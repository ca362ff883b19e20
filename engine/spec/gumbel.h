// engine/spec/gumbel.h — the drafter-invariant coupling of sampled decoding
// (engine/README.md, Verification; Daliri, Musco & Suresh 2024, "Coupling without
// communication and drafter-invariant speculative decoding"): counter-based Gumbel noise
// G(seed, position, token) and the Gumbel-max choices made with it.
//
// The token a seeded request emits at absolute position t is
//   x_t = argmax_v log p_t(v) + G(seed, t, v)      (over the ids with p_t(v) > 0),
// an exact sample of p_t (the Gumbel-max trick) whose noise is independent of every other
// position, so x_t is a deterministic function of (p_t, seed, t) alone: the same text
// whatever the batch, the tree or the draft. The draft proposes the top children of
// log q_t(v) + G(seed, t, v) with the SAME noise, so its first child equals the target's
// choice whenever q_t is close to p_t. Greedy decoding is the zero-noise case (argmax).
// Pure functions, platform-independent (64-bit integer hashing, double arithmetic).
// Tested in tests/sampler_test.cc (values, ties) and tests/verifier_stat_test.cc
// (exactness over 10^6 seeds, wrong noise keys detected).
#ifndef SPECMOE_ENGINE_SPEC_GUMBEL_H_
#define SPECMOE_ENGINE_SPEC_GUMBEL_H_

#include <cstdint>
#include <span>
#include <vector>

namespace specmoe::engine {

// A uniform double in (0, 1) from a counter-based hash of (seed, position, token):
// chained splitmix64 finalisers, the top 53 bits, offset by half a unit (never 0 or 1).
double NoiseUniform(uint64_t seed, int64_t position, int32_t token);

// Standard Gumbel noise -log(-log(u)) with u = NoiseUniform(seed, position, token).
double GumbelNoise(uint64_t seed, int64_t position, int32_t token);

// The k ids with the largest log probs[v] + GumbelNoise(seed, position, v) among the ids
// of positive mass, in descending order of that score (ties: lower id first); fewer when
// fewer than k ids have positive mass. probs need not be normalised (a constant factor
// shifts every score alike). probs: [vocab]. O(vocab + k log k).
std::vector<int32_t> GumbelTopK(std::span<const float> probs, int k, uint64_t seed,
                                int64_t position);

// GumbelTopK(probs, 1, seed, position)[0]: an exact sample of probs / sum(probs).
// probs must have positive mass.
int32_t GumbelMax(std::span<const float> probs, uint64_t seed, int64_t position);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_GUMBEL_H_
