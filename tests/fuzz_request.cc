// tests/fuzz_request.cc — libFuzzer target for the gRPC surface without the network: bytes
// are parsed as a serialized specmoe.v1.CompleteRequest and go through the service's own
// conversion (server/request_conversion.h) and the engine's one validator
// (engine/serving/request_validator.h, with the e2e fixture's tokenizer, vocab 4096, context 256).
// Any input must be refused or give a request that keeps every promise of the validator,
// never a crash, hang or sanitizer report. Built only with -DSPECMOE_FUZZ=ON (clang); run by
// deploy/fuzz.sh with seeds from tests/fuzz_corpus/fuzz_request/.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/serving/request_validator.h"
#include "server/request_conversion.h"
#include "specmoe/v1/completion.pb.h"

namespace {

const specmoe::engine::Tokenizer& FixtureTokenizer() {
  static const specmoe::engine::Tokenizer* tokenizer =
      specmoe::engine::Tokenizer::Load(SPECMOE_FIXTURES "/models/e2e_target")->release();
  return *tokenizer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  specmoe::v1::CompleteRequest wire;
  if (!wire.ParseFromArray(data, static_cast<int>(size))) return 0;
  specmoe::engine::GenerationRequest request = specmoe::server::ToGenerationRequest(wire);
  specmoe::engine::RequestLimits limits;
  limits.default_max_tokens = 12;
  limits.max_tokens_limit = 250;
  const specmoe::engine::ModelLimits model{4096, 256, &FixtureTokenizer()};
  if (!specmoe::engine::PrepareRequest(request, limits, model).ok()) return 0;
  // The promises of a prepared request.
  if (request.prompt_ids.empty() || request.prompt_ids.size() >= 256) __builtin_trap();
  for (int32_t id : request.prompt_ids) {
    if (id < 0 || id >= 4096) __builtin_trap();
  }
  if (request.max_tokens < 1 || request.max_tokens > 250) __builtin_trap();
  const specmoe::engine::SamplingParams& s = request.sampling;
  if (!(s.temperature >= 0) || !std::isfinite(s.temperature)) __builtin_trap();
  if (!(s.top_p > 0 && s.top_p <= 1)) __builtin_trap();
  if (!(s.repetition_penalty > 0) || !std::isfinite(s.repetition_penalty)) __builtin_trap();
  if (s.top_k < 0 || s.top_k > 4096 || s.seed == 0) __builtin_trap();
  if (request.request_id.size() > 256 || request.stop.size() > 16) __builtin_trap();
  return 0;
}
