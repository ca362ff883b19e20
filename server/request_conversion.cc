// server/request_conversion.cc — see request_conversion.h.
#include "server/request_conversion.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <random>

#include "absl/strings/str_format.h"

namespace specmoe::server {
namespace {

int Saturate(uint32_t value) { return static_cast<int>(std::min<uint32_t>(value, INT_MAX)); }

}  // namespace

std::string NewRequestId() {
  static const uint64_t process_tag = std::random_device{}() & 0xffffffffu;
  static std::atomic<uint64_t> counter{0};
  return absl::StrFormat("cmpl-%08x-%d", process_tag, counter.fetch_add(1) + 1);
}

engine::GenerationRequest ToGenerationRequest(const specmoe::v1::CompleteRequest& request) {
  engine::GenerationRequest out;
  out.request_id = request.request_id().empty() ? NewRequestId() : request.request_id();
  out.prompt_text = request.prompt();
  out.prompt_ids.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  out.max_tokens = Saturate(request.max_tokens());
  const specmoe::v1::Sampling& sampling = request.sampling();
  out.sampling.temperature = sampling.temperature();
  out.sampling.top_p = sampling.top_p();
  out.sampling.top_k = Saturate(sampling.top_k());
  out.sampling.seed = sampling.seed();
  out.sampling.repetition_penalty = sampling.repetition_penalty();
  out.stop.assign(request.stop().begin(), request.stop().end());
  out.stop_token_ids.assign(request.stop_token_ids().begin(), request.stop_token_ids().end());
  out.ignore_eos = request.ignore_eos();
  out.logprobs = request.logprobs();
  out.top_logprobs = Saturate(request.top_logprobs());
  out.prompt_logprobs = request.prompt_logprobs();
  out.speculation.disable = request.speculation().disable();
  for (uint32_t k : request.speculation().expansion()) {
    out.speculation.expansion.push_back(Saturate(k));
  }
  return out;
}

}  // namespace specmoe::server
