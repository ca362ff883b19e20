// engine/spec/params.h — what speculation reads from a request and reports back: the
// sampling controls (server/README.md, Wire contract defaults) and the per-request speculation
// statistics (engine/README.md, Verification). Plain data, shared by the sampler, the verifier and
// serving's request types.
#ifndef SPECMOE_ENGINE_SPEC_PARAMS_H_
#define SPECMOE_ENGINE_SPEC_PARAMS_H_

#include <cstdint>
#include <vector>

namespace specmoe::engine {

// Sampling controls, already defaulted (server/README.md, Wire contract: unset wire fields mean the
// defaults).
struct SamplingParams {
  float temperature = 0.0f;         // 0: greedy
  float top_p = 1.0f;               // (0, 1]; 0 from the wire means 1
  int top_k = 0;                    // 0: no top-k
  uint64_t seed = 0;                // 0 from the wire: PrepareRequest draws one
  float repetition_penalty = 1.0f;  // 1: off (CTRL-style: logit / p if > 0 else logit * p);
                                    // 0 from the wire means 1
  bool greedy() const { return temperature == 0.0f; }
};

struct SpeculationStats {
  int verify_steps = 0;
  int drafted_tokens = 0;
  int accepted_tokens = 0;              // draft tokens accepted (bonus tokens excluded)
  float mean_tokens_per_step = 0.0f;    // emitted tokens / verify steps (bonus counted)
  std::vector<float> acceptance_by_depth;  // accepted_d / reached_d, d = 1..depth
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SPEC_PARAMS_H_
