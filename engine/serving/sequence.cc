// engine/serving/sequence.cc — a request's state and the commit of its emitted tokens.
#include "engine/serving/sequence.h"

#include <algorithm>
#include <utility>

namespace specmoe::engine {

Sequence::Sequence(GenerationRequest req, EventSink event_sink, std::shared_ptr<RequestHandle> h,
                   const Tokenizer* tokenizer, bool has_draft,
                   const std::vector<int>& default_expansion)
    : request(std::move(req)),
      sink(std::move(event_sink)),
      handle(std::move(h)),
      queued_at(std::chrono::steady_clock::now()),
      tokens(request.prompt_ids),
      prompt_len(static_cast<int>(request.prompt_ids.size())),
      detok(tokenizer, request.prompt_ids),
      stops(request.stop) {
  if (has_draft && !request.speculation.disable) {
    expansion =
        request.speculation.expansion.empty() ? default_expansion : request.speculation.expansion;
  }
  // Independent random streams (engine/README.md, Verification): the tree's children, and
  // verification.
  const Rng base(request.sampling.seed);
  draft_rng = base.Split(kDraftStream);
  verify_rng = base.Split(kVerifyStream);
}

int Sequence::max_slots(int max_context, int tree_slots) const {
  return std::min(prompt_len + request.max_tokens, max_context) + tree_slots;
}

Emitted Commit(Sequence& seq, std::span<const int32_t> tokens, std::span<const int32_t> eos_ids,
               int max_context) {
  const GenerationRequest& req = seq.request;
  Emitted out;
  auto contains = [](std::span<const int32_t> ids, int32_t token) {
    return std::find(ids.begin(), ids.end(), token) != ids.end();
  };
  for (int32_t token : tokens) {
    if (contains(eos_ids, token) && !req.ignore_eos) {
      seq.finish = FinishReason::kEos;
      break;
    }
    if (contains(req.stop_token_ids, token)) {
      seq.finish = FinishReason::kStop;
      break;
    }
    const size_t held_back = seq.stops.pending_size();
    StopMatcher::Result matched = seq.stops.Push(seq.detok.Add(token));
    out.text += matched.emit;
    if (matched.stopped) {
      // server/README.md, Wire contract: the token that completed the stop string is returned (and
      // counted) only if some of its own text is, so text, token_ids and completion_tokens agree.
      if (matched.emit.size() > held_back) {
        seq.tokens.push_back(token);
        out.token_ids.push_back(token);
      }
      seq.finish = FinishReason::kStop;
      break;
    }
    seq.tokens.push_back(token);
    out.token_ids.push_back(token);
    if (seq.completion_tokens() >= req.max_tokens ||
        static_cast<int>(seq.tokens.size()) >= max_context) {
      seq.finish = FinishReason::kLength;
      break;
    }
  }
  // Text held back as a possible stop-string prefix is released when the request ends
  // for another reason.
  if (seq.finish != FinishReason::kNone && seq.finish != FinishReason::kStop) {
    out.text += seq.stops.Flush();
  }
  return out;
}

}  // namespace specmoe::engine
