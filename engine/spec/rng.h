// engine/spec/rng.h — the engine's random number generator: xoshiro256** (Blackman & Vigna,
// "Scrambled linear pseudorandom number generators", 2018) seeded through splitmix64.
//
// Deterministic and platform-independent: the same seed gives the same sequence on every
// machine and compiler (only 64-bit integer arithmetic; Uniform() uses the top 53 bits).
// Independent streams come from Split(stream), which hashes this generator's state and
// the stream number through splitmix64 into a fresh seed. Speculative sampling needs two
// such streams per request (engine/README.md, Verification): one draws the tree's children, another
// the acceptance uniforms and bonus tokens. Tested in tests/sampler_test.cc.
#ifndef SPECMOE_ENGINE_SPEC_RNG_H_
#define SPECMOE_ENGINE_SPEC_RNG_H_

#include <cstdint>

namespace specmoe::engine {

// Stream numbers the engine uses with Rng::Split, fixed here so every caller agrees.
inline constexpr uint64_t kDraftStream = 1;   // children of sampled trees
inline constexpr uint64_t kVerifyStream = 2;  // acceptance uniforms and bonus tokens

// A value type (32 bytes); copying it forks the sequence. Not thread-safe: one owner.
// Next() costs a handful of integer operations.
class Rng {
 public:
  // Seeds the four state words with successive splitmix64 outputs of `seed` (the
  // initialisation the xoshiro authors recommend; never yields the all-zero state).
  explicit Rng(uint64_t seed) {
    uint64_t x = seed;
    for (uint64_t& word : s_) word = SplitMix64(x);
  }

  // The next 64 random bits (xoshiro256**).
  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }

  // A uniform double in [0, 1): the top 53 bits of Next() times 2^-53.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

  // A generator for stream `stream`, seeded by splitmix64 over this generator's current
  // state and `stream`. Does not advance this generator. Different stream numbers (or
  // different parent states) give unrelated sequences; Split(s) called twice in a row with
  // the same s gives the same generator.
  Rng Split(uint64_t stream) const {
    uint64_t seed = stream;
    for (uint64_t word : s_) {
      uint64_t x = seed ^ word;
      seed = SplitMix64(x);  // seed := mix(seed xor word), a chained hash of the state
    }
    return Rng(seed);
  }

 private:
  // splitmix64 (Steele, Lea & Flood, 2014): advances *x by the golden-ratio increment and
  // returns a well-mixed 64-bit value.
  static uint64_t SplitMix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

  uint64_t s_[4];
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_RNG_H_
