// engine/spec/params.h — what speculation reads from a request and reports back: the
// sampling controls (server/README.md, Wire contract defaults), the sampled-verification
// mode, per-token logprobs and the per-request speculation statistics (engine/README.md,
// Verification). Plain data, shared by the sampler, the verifier and serving's request types.
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

// How sampled (temperature > 0) requests choose their tokens (engine/spec/gumbel.h,
// verifier.h). Greedy requests are the zero-noise case of kCoupled in both modes.
enum class SampledVerification {
  // Gumbel-max with noise G(seed, absolute position, token): the text is a function of the
  // seed alone (any tree, draft, batch, load, preemption); draft children are the top of
  // log q + G; verification accepts the child equal to the target's choice.
  kCoupled,
  // Recursive rejection sampling over children drawn from q (the highest acceptance; the
  // random stream, hence the text, depends on the trees the load gives).
  kRejection,
};

// One emitted token's log-probability under the target's own log-softmax at its position
// (raw logits: before penalty, temperature, top-k and top-p), and the `top` most likely
// tokens there, by logprob descending, ties lower id first.
struct TopLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;
};
struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;
  std::vector<TopLogprob> top;
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
